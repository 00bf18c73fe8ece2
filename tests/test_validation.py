"""The shared argument checks (jaxdistill.validation) and every config's use of them."""
import dataclasses
import pathlib
import re

import numpy as np
import pytest

from jaxdistill import augment, models, validation as V
from jaxdistill.apps.continual import ContinualConfig
from jaxdistill.apps.nas import Arch
from jaxdistill.coreset import FeatureNetConfig
from jaxdistill.evaluate import EvalConfig
from jaxdistill.experts import ExpertConfig
from jaxdistill.generators.decoder import ConvDecoderConfig
from jaxdistill.generators.stylegan import StyleGeneratorConfig
from jaxdistill.kernels import KernelConfig
from jaxdistill.loop import LoopConfig
from jaxdistill.models import layers
from jaxdistill.objectives.bptt import BPTTConfig
from jaxdistill.objectives.distribution_matching import DistributionMatchingConfig
from jaxdistill.objectives.frepo import FRePoConfig
from jaxdistill.objectives.gradient_matching import GradientMatchingConfig
from jaxdistill.objectives.kip import KIPConfig
from jaxdistill.objectives.rfad import RFADConfig
from jaxdistill.objectives.trajectory_matching import TrajectoryMatchingConfig
from jaxdistill.synthetic.generator import GenDMConfig
from jaxdistill.synthetic.glad import GLaDConfig
from jaxdistill.synthetic.haba import HaBaConfig


@dataclasses.dataclass(frozen=True)
class _Cfg:
  a: object = 1
  b: object = 2


# ---------------------------------------------------------------------------------------------------- helpers


def test_check_choice_names_argument_and_accepted_values():
  V.check_choice("norm", "none", ("instancenorm", "none"))
  with pytest.raises(ValueError, match=re.escape("norm must be one of ['instancenorm', 'none'], got 'inst'.")):
    V.check_choice("norm", "inst", ("instancenorm", "none"))
  assert layers.check_choice is V.check_choice  # still importable from its old home


@pytest.mark.parametrize("value", [1, 7, np.int32(3), np.int64(1)])
def test_check_ints_accepts_integers(value):
  V.check_ints(_Cfg(a=value), "a")
  V.check_ints({"a": value}, ["a"])


@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, 2.5, "3", None, np.float32(2), np.bool_(True)])
def test_check_ints_refuses_non_integers(value):
  with pytest.raises(ValueError, match=re.escape(f"a must be an integer >= 1, got {value!r}.")):
    V.check_ints(_Cfg(a=value), "a")


def test_check_ints_minimum_optional_note_and_order():
  V.check_ints(_Cfg(a=0), "a", minimum=0)
  V.check_ints(_Cfg(a=None), "a", optional=True)
  with pytest.raises(ValueError, match=re.escape("a must be an integer >= 0 (0 = off), got -1.")):
    V.check_ints(_Cfg(a=-1), "a", minimum=0, note="0 = off")
  with pytest.raises(ValueError, match=re.escape("a must be None or an integer >= 1, got 0.")):
    V.check_ints(_Cfg(a=0), "a", optional=True)
  with pytest.raises(ValueError, match=re.escape("a must be None or an integer >= 1, got True.")):
    V.check_ints(_Cfg(a=True), "a", optional=True)
  with pytest.raises(ValueError, match="^b must be"):  # the first bad field is named
    V.check_ints(_Cfg(a=1, b=0), ("a", "b"))


@pytest.mark.parametrize("value", [1e-9, 3, 0.5, np.float32(0.1), np.asarray(2.0), float("inf")])
def test_check_positive_accepts_positive_numbers(value):
  V.check_positive(_Cfg(a=value), "a")
  V.check_nonnegative(_Cfg(a=value), "a")


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), True, "1", None, np.zeros(2)])
def test_check_positive_refuses(value):
  with pytest.raises(ValueError, match=r"^a must be a number > 0, got "):
    V.check_positive(_Cfg(a=value), "a")


def test_check_positive_optional_and_nonnegative():
  V.check_positive(_Cfg(a=None), "a", optional=True)
  with pytest.raises(ValueError, match=re.escape("a must be None or a number > 0 (None: x), got -1.")):
    V.check_positive(_Cfg(a=-1), "a", optional=True, note="None: x")
  V.check_nonnegative({"a": 0.0}, "a")
  with pytest.raises(ValueError, match=re.escape("a must be a number >= 0, got -0.5.")):
    V.check_nonnegative({"a": -0.5}, "a")
  with pytest.raises(ValueError, match="a must be a number >= 0"):
    V.check_nonnegative({"a": False}, "a")


def test_check_bools():
  V.check_bools(_Cfg(a=True, b=np.bool_(False)), ("a", "b"))
  for bad in (1, 0, "yes", None):
    with pytest.raises(ValueError, match=re.escape(f"a must be True or False, got {bad!r}.")):
      V.check_bools(_Cfg(a=bad), "a")


def test_check_in_range():
  V.check_in_range("m", 0, 0, 1, hi_closed=False)
  V.check_in_range("m", 1.0, 0, 1)
  V.check_in_range("m", np.float32(0.5), 0, 1)
  with pytest.raises(ValueError, match=re.escape("m must be a number in [0, 1), got 1.0.")):
    V.check_in_range("m", 1.0, 0, 1, hi_closed=False)
  with pytest.raises(ValueError, match=re.escape("m must be a number in (0, 1] (why), got 0.")):
    V.check_in_range("m", 0, 0, 1, lo_closed=False, note="why")
  for bad in ("0.5", None, True, float("nan"), -0.1):
    with pytest.raises(ValueError, match=r"^m must be a number in \[0, 1\]"):
      V.check_in_range("m", bad, 0, 1)


def test_check_network():
  V.check_network("convnet", 128, None, "instancenorm")
  V.check_network("resnet18", np.int64(64), 3)
  V.check_network(None, 8)  # fixed-architecture configs
  for a in models.ARCHITECTURES:
    V.check_network(a, 1)
  with pytest.raises(ValueError, match=re.escape(f"arch must be one of {list(models.ARCHITECTURES)}, "
                                                 "got 'transformer'.")):
    V.check_network("transformer", 128)
  with pytest.raises(ValueError, match=re.escape("width must be an integer >= 1, got 0.")):
    V.check_network("convnet", 0)
  with pytest.raises(ValueError, match=re.escape("width must be an integer >= 1, got True.")):
    V.check_network("convnet", True)
  with pytest.raises(ValueError, match=re.escape("depth must be None or an integer >= 1, got 0.")):
    V.check_network("convnet", 8, 0)
  with pytest.raises(ValueError, match=re.escape(f"norm must be one of {list(layers.NORMS)}, got 'bn'.")):
    V.check_network("convnet", 8, 2, "bn")
  with pytest.raises(ValueError, match="arch must be one of \\['fc'\\]"):
    V.check_network("convnet", 8, archs=("fc",))
  with pytest.raises(ValueError, match="norm must be one of \\['none'\\]"):
    V.check_network(None, 8, norm="batchnorm", norms=("none",))
  with pytest.raises(ValueError, match="^eval_width must be an integer >= 1"):
    V.check_network("convnet", 0, prefix="eval_")


def test_check_dsa_strategy():
  V.check_dsa_strategy(augment.OPS)
  V.check_dsa_strategy(augment.DIGIT_STRATEGY)
  V.check_dsa_strategy(())
  with pytest.raises(ValueError, match=re.escape(f"dsa_strategy entries must be in {list(augment.OPS)}, "
                                                 "got 'blur'.")):
    V.check_dsa_strategy(("color", "blur"))
  with pytest.raises(ValueError, match="^strategy entries"):
    V.check_dsa_strategy(("blur",), name="strategy")


# ---------------------------------------------------------------------------------------------------- configs

_ARCH = Arch(width=32, depth=3, norm="instancenorm", activation="relu", pooling="avg")
# (config with defaults, one integer field >= 1 of it, its network fields' prefix)
CONFIGS = [
    (ContinualConfig(), "num_steps", "eval_"), (_ARCH, "depth", ""), (FeatureNetConfig(), "epochs", ""),
    (EvalConfig(), "epochs", ""), (ExpertConfig(), "num_experts", ""), (ConvDecoderConfig(), "z_dim", ""),
    (StyleGeneratorConfig(), "w_dim", ""), (KernelConfig(), "width", ""), (LoopConfig(), "iterations", ""),
    (BPTTConfig(), "inner_steps", ""), (DistributionMatchingConfig(), "width", ""),
    (FRePoConfig(), "pool_size", ""), (GradientMatchingConfig(), "batch_train", ""),
    (KIPConfig(), "krr_test_size", ""), (RFADConfig(), "num_models", ""),
    (TrajectoryMatchingConfig(), "syn_steps", ""), (GenDMConfig(), "mean_samples", ""),
    (GLaDConfig(), "chunk", ""), (HaBaConfig(), "hallucinators", ""),
]
_IDS = [type(c).__name__ for c, _, _ in CONFIGS]


def _fields(config):
  return {f.name for f in dataclasses.fields(config)}


@pytest.mark.parametrize("config,int_field,prefix", CONFIGS, ids=_IDS)
def test_config_defaults_validate_and_share_messages(config, int_field, prefix):
  assert config.validate() is config
  fields = _fields(config)
  minimum = 0 if int_field == "krr_test_size" else 1
  for bad in (minimum - 1, True, 2.0):
    with pytest.raises(ValueError, match=re.escape(f"{int_field} must be an integer >= {minimum}")):
      dataclasses.replace(config, **{int_field: bad}).validate()
  if f"{prefix}width" in fields:
    with pytest.raises(ValueError, match=re.escape(f"{prefix}width must be an integer >= 1, got 0.")):
      dataclasses.replace(config, **{f"{prefix}width": 0}).validate()
  if f"{prefix}arch" in fields:
    with pytest.raises(ValueError, match=f"^{prefix}arch must be one of \\["):
      dataclasses.replace(config, **{f"{prefix}arch": "transformer"}).validate()
  if "depth" in fields:
    with pytest.raises(ValueError, match="depth must be (None or )?an integer >= 1, got 0."):
      dataclasses.replace(config, depth=0).validate()
  if "norm" in fields:
    with pytest.raises(ValueError, match="^norm must be one of"):
      dataclasses.replace(config, norm="bn").validate()
  if "dsa_strategy" in fields:
    with pytest.raises(ValueError, match=re.escape(f"dsa_strategy entries must be in {list(augment.OPS)}")):
      dataclasses.replace(config, dsa_strategy=("color", "blur")).validate()


def test_kip_kernel_width_is_checked_through_its_kernel():
  with pytest.raises(ValueError, match="arch must be one of \\['fc', 'convnet'\\]"):
    KIPConfig(arch="resnet18").validate()
  with pytest.raises(ValueError, match=re.escape("width must be an integer >= 1, got 0.")):
    KernelConfig(width=0).validate()


def test_integer_message_is_written_once():
  """The literal lives in jaxdistill/validation.py only. presets/ is excluded: its messages check JSON preset
  files (prefixed by the file and entry, ``ipc`` also accepting ranges / '*'), not configs."""
  root = pathlib.Path(__file__).resolve().parents[1] / "jaxdistill"
  holders = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                   if "presets" not in p.relative_to(root).parts
                   and "must be an integer >= 1" in p.read_text(encoding="utf-8"))
  assert holders == ["validation.py"]
