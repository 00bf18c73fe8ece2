"""The method registry (jaxdistill.methods) is the one place that knows the ``--method`` names, their families,
objectives, set-ups and flags: the distill CLI's choices and flags equal it, no CLI module keeps a method table of
its own, flags are derived from the config dataclasses, and adding a method is one ``register`` call."""
import argparse
import dataclasses
import importlib
import pathlib
import sys
import types
from typing import NamedTuple, Optional

import jax
import numpy as np
import pytest

from experiments import distill, names
from jaxdistill import loop, methods, objectives, synthetic
from jaxdistill.data import get_spec
from jaxdistill.methods import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
NC = 10


class TinyData(NamedTuple):
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  spec: object


def _tiny_data(per_class=3):
  """Random normalised 28x28x1 images, ``per_class`` per class, with the Fashion-MNIST spec."""
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(NC), per_class).astype(np.int32)
  x = rng.normal(size=(len(y), 28, 28, 1)).astype(np.float32)
  return TinyData(x, y, x[:NC], y[:NC], get_spec("fashion_mnist"))


@pytest.fixture
def scratch_registry(monkeypatch):
  """The registry's tables replaced by copies for one test (registrations made in it are dropped after)."""
  monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
  monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))


def _method_action(parser):
  return next(a for a in parser._actions if a.dest == "method")


# -- one source of names and flags ---------------------------------------------------------------------------------

def test_every_registry_method_is_a_method_choice_and_vice_versa():
  choices = tuple(_method_action(distill.build_parser()).choices)
  assert set(choices) == set(methods.names())
  assert choices == methods.names() == names.DISTILL_METHODS == distill.method_choices()
  for name in choices:  # each resolves to a method whose objective is registered (or comes from --objective)
    m = methods.get(name)
    assert m.name == name and m.family in {f.name for f in methods.families()}
    assert m.objective is None or m.objective in objectives.REGISTRY
  assert set(objectives.METHODS) <= set(choices)  # every registered objective is a method


def test_light_copies_equal_the_registry():
  """experiments/names.py copies the registry so --help needs no JAX; the copies must stay equal."""
  assert names.METHOD_FLAGS == methods.flag_table()
  assert set(names.PARAMETERISATIONS) == {n for n in methods.names() if methods.takes_objective(n)}
  assert names.OBJECTIVES == tuple(objectives.METHODS)


def test_the_distill_parser_adds_exactly_the_registry_flags(monkeypatch):
  parser = distill.build_parser()
  by_dest = {a.dest: a for a in parser._actions}
  for f in methods.flags():
    action = by_dest[f.dest]
    assert f.option in action.option_strings, f
    assert action.default == f.default and action.help == f.help, f
    assert (None if action.choices is None else tuple(action.choices)) == f.choices, f
  monkeypatch.setattr(names, "METHOD_FLAGS", ())
  bare = {a.dest for a in distill.build_parser()._actions}
  assert set(by_dest) - bare == {f.dest for f in methods.flags()}  # no family flag is declared by the CLI


def test_no_cli_module_keeps_a_method_table():
  """No module of experiments/ (but the light copy names.py) holds a method table as its own attribute: a dict
  keyed by method names (two or more; library constants it re-exports aside) whose values are set-ups / hooks or
  loop settings / flag values (a table of published accuracies is data, not a registry), a list of flag hooks, or
  one of the old registry names."""
  method_names = set(methods.names())
  settings = {f.name for f in dataclasses.fields(loop.LoopConfig)} | {f.dest for f in methods.flags()}

  def is_setting(value):
    return callable(value) or (isinstance(value, dict) and bool(settings & set(value)))

  old = {"ARG_HOOKS", "BUILDERS", "HOOK_FIELDS", "LOOP_HOOKS", "OUTPUT_HOOKS", "LOOP_DEFAULTS"}
  modules = [importlib.import_module(f"experiments.{p.stem}") for p in sorted((REPO / "experiments").glob("*.py"))
             if p.stem not in ("__init__", "names")]
  library = {id(v) for n, m in list(sys.modules.items()) if n.split(".")[0] == "jaxdistill" for v in vars(m).values()}
  assert len(modules) > 5
  for module in modules:
    own = vars(module)
    assert not old & set(own), (module.__name__, old & set(own))
    for attr, value in own.items():
      if isinstance(value, (dict, types.MappingProxyType)) and id(value) not in library:
        keyed = [k for k, v in value.items() if k in method_names and is_setting(v)]
        assert len(keyed) < 2, (module.__name__, attr, keyed)
      if isinstance(value, list):
        assert not any(callable(v) for v in value), (module.__name__, attr)


def test_old_registry_names_are_read_only_views_of_the_registry():
  assert set(distill.BUILDERS) == {n for n in methods.names() if methods.get(n).setup is not None}
  assert distill.LOOP_DEFAULTS["frepo"] == dict(methods.get("frepo").loop_defaults)
  with pytest.raises(TypeError):
    distill.BUILDERS["dm"] = None
  with pytest.raises(AttributeError):
    distill.NO_SUCH_NAME


# -- flags derived from the configs --------------------------------------------------------------------------------

def test_objective_flags_override_a_field_of_a_registered_objective_config():
  fields = {f.name for n in objectives.METHODS for f in dataclasses.fields(objectives.default_config(n))}
  for f in methods.flags():
    if f.objective:
      assert f.dest in fields and f.default is None, f
  assert methods.objective_fields() == {f.dest for f in methods.flags() if f.objective}
  assert {"syn_steps", "learn_labels", "checkpoint"} <= methods.objective_fields()


def test_config_flags_take_type_and_default_from_the_field():
  @dataclasses.dataclass(frozen=True)
  class Toy:
    steps: int = 7
    rate: float = 0.5
    name: str = "a"
    cap: Optional[int] = None
    on: bool = True

  assert methods.config_flag(Toy, "steps", "--toy-steps", "h") == methods.Flag("--toy-steps", "toy_steps", "int", 7,
                                                                               None, "h")
  assert methods.config_flag(Toy, "rate", "--toy-rate", "h").row()[2:4] == ("float", 0.5)
  assert methods.config_flag(Toy, "name", "--toy-name", "h", choices=("a", "b")).choices == ("a", "b")
  assert methods.config_flag(Toy, "cap", "--toy-cap", "h").row()[2:4] == ("int", None)
  assert methods.config_flag(Toy, "steps", "--toy-steps", "h", default=None).default is None
  over = methods.objective_flag(Toy, "on", "h")
  assert (over.option, over.dest, over.type, over.default, over.objective) == ("--on", "on", "bool", None, True)
  with pytest.raises(ValueError, match="Toy has no field 'nope'"):
    methods.config_flag(Toy, "nope", "--nope", "h")
  with pytest.raises(ValueError, match="type must be one of"):
    methods.flag("--x", "h", type="list")
  # the registry's own set-up flags carry the set-up configs' defaults
  table = {f.dest: f for f in methods.flags()}
  assert table["haba_hallucinators"].default == synthetic.HaBaConfig().hallucinators
  assert table["truncation"].default == synthetic.GenDMConfig().truncation
  assert table["glad_space"].default == synthetic.GLaDConfig().space


def test_parser_types_read_the_flag_types():
  table = (("toy (t)", (("--a", "a", "positive_int", None, None, "h"), ("--b", "b", "ints", None, None, "h"),
                        ("--c", "c", "bool", None, None, "h"), ("--d", "d", "true", None, None, "h"),
                        ("--e", "e", "switch", False, None, "h"), ("--f", "f", "str", "x", ("x", "y"), "h"),
                        ("--g", "g", "float", 1.0, None, "h"))),)
  parser = distill.add_method_flags(argparse.ArgumentParser(), table)
  args = parser.parse_args(["--a", "3", "--b", "1,2", "--no-c", "--d", "--e", "--f", "y", "--g", "2"])
  assert vars(args) == {"a": 3, "b": (1, 2), "c": False, "d": True, "e": True, "f": "y", "g": 2.0}
  assert vars(parser.parse_args([])) == {"a": None, "b": None, "c": None, "d": None, "e": False, "f": "x",
                                         "g": 1.0}
  for bad in (["--a", "0"], ["--f", "z"]):
    with pytest.raises(SystemExit):
      parser.parse_args(bad)


# -- look-up and set-up --------------------------------------------------------------------------------------------

def test_lookup_objective_and_options():
  dm = methods.get("dm")
  assert (dm.family, dm.objective, dm.setup) == ("pixels", "dm", None)
  assert methods.get("mtt").family == "trajectory" and methods.get("glad").objective is None
  with pytest.raises(ValueError, match="method must be one of"):
    methods.get("no_such_method")
  opts = methods.options("glad", ipc=2, objective="mtt", glad_layer=3)
  assert methods.objective_name(opts) == "mtt" and opts.glad_layer == 3 and opts.haba_width == 8
  with pytest.raises(ValueError, match="needs --objective"):
    methods.objective_name(methods.options("glad", ipc=1))
  assert methods.objective_name(methods.options("kip", ipc=1)) == "kip"
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['glad_layr'\]"):
    methods.options("glad", ipc=1, glad_layr=3)


def test_loop_settings_layer_the_objective_defaults_and_the_method_hook():
  base = {"lr_img": 1.0, "iterations": 5}
  assert methods.loop_settings(methods.options("dm", ipc=1), base) == base
  assert methods.loop_settings(methods.options("kip", ipc=1), base)["optimizer"] == "adam"
  assert methods.loop_settings(methods.options("frepo", ipc=1), base)["optimizer"] == "lamb"
  # a parameterisation wrapping KIP gets KIP's Adam, then GLaD's lrs (10x the image lr for an objective GLaD's
  # code has no entry for, codes 1e-3 x that)
  kw = methods.loop_settings(methods.options("glad", ipc=1, objective="kip"), {"lr_img": 0.04})
  assert kw["optimizer"] == "adam"
  assert kw["param_lrs"] == pytest.approx({"features": 0.4, "codes": 4e-4})
  assert methods.loop_settings(methods.options("gendm", ipc=1, objective="dm"), base)["optimizer"] == "adam"


def test_pixel_setup_builds_the_objective_and_an_initialised_set():
  data = _tiny_data()
  cfg = objectives.default_config("dm", width=8)
  built = methods.setup(methods.options("dm", ipc=2), data, cfg, "real", jax.random.PRNGKey(0))
  assert built.objective.name == "dm" and built.param is synthetic.PIXELS and not built.x64
  images = np.asarray(built.syn.params["images"])
  assert images.shape == (NC * 2, 28, 28, 1)
  for i, img in enumerate(images):  # "real": each image is a training image of its class
    match = np.flatnonzero((data.train_x == img).all(axis=(1, 2, 3)))
    assert match.size and data.train_y[match[0]] == i // 2
  assert methods.outputs(methods.options("dm", ipc=2), built, built.syn) == (None, {})


def test_rfad_float64_is_asked_for_not_switched_on():
  cfg = objectives.default_config("rfad", dtype="float64", num_models=1, width=8, depth=1)
  before = bool(jax.config.jax_enable_x64)
  built = methods.setup(methods.options("rfad", ipc=1), _tiny_data(), cfg, "real", jax.random.PRNGKey(0))
  assert built.x64 and bool(jax.config.jax_enable_x64) == before  # the caller decides (the CLI: only the loop)


def test_haba_records_its_config_and_stores_its_state():
  data = _tiny_data()
  opts = methods.options("haba", ipc=1, objective="dm", haba_hallucinators=2, haba_width=4, haba_basis_size=14,
                         haba_contrastive=0.0)
  built = methods.setup(opts, data, objectives.default_config("dm", width=8), "real", jax.random.PRNGKey(0))
  meta = built.metadata
  assert meta["objective"] == "dm" and meta["storage_budget_floats"] == NC * 28 * 28
  assert meta["parameterisation_config"]["hallucinators"] == 2
  arrays, more = methods.outputs(opts, built, built.syn)
  assert more == meta and arrays["bases"].shape[0] == NC * meta["parameterisation_config"]["bases_per_class"]


# -- adding a method is one call -----------------------------------------------------------------------------------

def test_one_register_call_adds_a_method_with_its_flags(scratch_registry):
  calls = []

  def toy_setup(options, data, obj_cfg, init, key):
    calls.append((options.method, options.toy_copies, methods.objective_name(options)))
    return registry.setup_pixels(options, data, obj_cfg, init, key)

  methods.register("toy", objective="dm", setup=toy_setup, loop_defaults={"optimizer": "adam"},
                   family=methods.Family("toy", "toy parameterisation", (
                       methods.flag("--toy-copies", "copies per image", type="positive_int", default=2),)))
  assert "toy" in methods.names() and methods.members("toy") == ("toy",)
  assert methods.flag_table()[-1] == ("toy parameterisation (toy)",
                                      (("--toy-copies", "toy_copies", "positive_int", 2, None, "copies per image"),))
  parser = distill.add_method_flags(argparse.ArgumentParser(), methods.flag_table())
  assert parser.parse_args(["--toy-copies", "3"]).toy_copies == 3
  opts = methods.options("toy", ipc=1, toy_copies=3)
  assert methods.loop_settings(opts, {"lr_img": 1.0})["optimizer"] == "adam"
  built = methods.setup(opts, _tiny_data(), objectives.default_config("dm", width=8), "noise", jax.random.PRNGKey(0))
  assert calls == [("toy", 3, "dm")] and built.syn.params["images"].shape == (NC, 28, 28, 1)


def test_register_refuses_duplicates_and_unknown_names(scratch_registry):
  with pytest.raises(ValueError, match="method 'mtt' is already registered"):
    methods.register("mtt", family="trajectory")
  with pytest.raises(ValueError, match="family must be one of"):
    methods.register("toy", family="no_such_family", objective="dm")
  with pytest.raises(ValueError, match="objective must be one of"):
    methods.register("toy")  # no objective of that name: objective= or a registered objective is needed
  clash = methods.Family("toy", "toy", (methods.flag("--syn-steps", "again", type="int"),))
  with pytest.raises(ValueError, match="already declared by family 'trajectory'"):
    methods.register("toy", objective="dm", family=clash)
  with pytest.raises(ValueError, match="must default to None"):
    methods.register_family(methods.Family("toy2", None, (methods.flag("--k", "h", default=1, objective=True),)))
  assert "toy" not in methods.names()
