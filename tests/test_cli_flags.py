"""The CLIs' flags come from the library, so they cannot drift: every ``choices`` list of every parser in
experiments/ equals the library constant it stands for (``--init`` once missed ``forgetting``); the expert-buffer
CLI takes ``--devices`` / ``--distributed`` from experiments.common like the others and splits its experts over
the mesh (two forced host devices, in a fresh interpreter); ``--init forgetting`` runs end to end."""
import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import buffers, common, distill, names

REPO = pathlib.Path(__file__).resolve().parents[1]
# Every module of experiments/ with a build_parser() (the CLIs); a new CLI fails test_every_cli_is_listed.
CLI_MODULES = ("buffers", "continual", "coreset", "distill", "evaluate", "full", "main", "nas", "notebooks",
               "train_generator")


def _expected_choices():
  """``{(module, dest): the library constant}`` for every flag with ``choices``."""
  from jaxdistill import coreset, generators, models, objectives, presets, synthetic
  from jaxdistill.synthetic import glad, haba, itgan

  arch = tuple(models.ARCHITECTURES)
  common_flags = {"eval_arch": arch}
  return {
      "buffers": {"arch": arch, "preset": tuple(presets.buffer_presets())},
      "continual": dict(common_flags),
      "coreset": {**common_flags, "method": tuple(coreset.METHODS)},
      "distill": {**common_flags, "init": tuple(synthetic.INITS), "preset": tuple(presets.names()),
                  # every registered objective, every generator parameterisation (jaxdistill.synthetic) and every
                  # method of the registry (jaxdistill.methods: itgan, kfs)
                  "method": tuple(sorted(set(objectives.METHODS) | set(synthetic.FACTORIES)
                                         | set(importlib.import_module("jaxdistill.methods").names()))),
                  "objective": tuple(sorted(objectives.METHODS)), "gen_arch": tuple(generators.ARCHS),
                  "glad_space": tuple(glad.SPACES), "glad_init": tuple(glad.INITS),
                  "haba_pairs": tuple(haba.PAIRS),
                  "itgan_init": tuple(itgan.INITS),  # --method itgan (jaxdistill.methods)
                  # the loop checkpoint's two writers (jaxdistill.loop.save_checkpoint: .npz or orbax folder)
                  "checkpoint_format": ("npz", "orbax")},
      "evaluate": dict(common_flags),
      "full": {},
      "main": {},
      "nas": dict(common_flags),
      "notebooks": {},
      "train_generator": {"gen_arch": tuple(generators.ARCHS)},
  }


def _choices(parser):
  return {a.dest: tuple(a.choices) for a in parser._actions if a.choices is not None}


def _dests(parser):
  return {a.dest for a in parser._actions}


def test_every_cli_is_listed():
  found = sorted(p.stem for p in (REPO / "experiments").glob("*.py")
                 if "def build_parser" in p.read_text() or "ArgumentParser(" in p.read_text())
  assert [m for m in found if m != "cli"] == sorted(CLI_MODULES)  # cli.py only patches ArgumentParser.error


@pytest.mark.parametrize("module", CLI_MODULES)
def test_choices_equal_the_library_constants(module):
  parser = importlib.import_module(f"experiments.{module}").build_parser()
  assert _choices(parser) == _expected_choices()[module]


def test_list_flags_and_defaults_are_library_names():
  """Comma-separated flags (checked after parsing) accept exactly the library's names; the fixed subsets the
  CLIs default to are names the library knows."""
  from jaxdistill import models, objectives
  from jaxdistill.apps import continual as continual_lib
  from jaxdistill.models import layers
  from experiments import evaluate, full, nas

  assert names.INITS == tuple(importlib.import_module("jaxdistill.synthetic").INITS)
  assert names.GLAD_INITS == tuple(importlib.import_module("jaxdistill.synthetic.glad").INITS)
  assert evaluate.parse_archs(",".join(models.ARCHITECTURES)) == list(models.ARCHITECTURES)
  with pytest.raises(ValueError, match="--arch entries"):
    evaluate.parse_archs("convnet,nope")
  assert names.CONTINUAL_METHODS == tuple(continual_lib.METHODS)
  assert (nas.ACTIVATIONS, nas.NORMS, nas.POOLINGS) == (layers.ACTIVATIONS, layers.NORMS, layers.POOLINGS)
  assert set(nas.build_parser().get_default("norms").split(",")) <= set(layers.NORMS)
  assert set(full.METHODS) <= set(objectives.METHODS)


@pytest.mark.parametrize("module", ["buffers", "distill", "evaluate", "coreset", "continual"])
def test_device_flags_come_from_common(module):
  """The device flags are experiments.common.add_device_args' own, in every CLI that shards work."""
  reference = _dests(common.add_device_args(argparse.ArgumentParser())) - {"help"}
  assert reference == {"devices", "distributed", "coordinator_address", "num_processes", "process_id",
                       "compile_cache"}
  parser = importlib.import_module(f"experiments.{module}").build_parser()
  assert reference <= _dests(parser)


def test_buffers_parser_accepts_devices_and_distributed():
  args = buffers.build_parser().parse_args(["--out", "x", "--devices", "2", "--distributed",
                                            "--coordinator-address", "h:1", "--num-processes", "2",
                                            "--process-id", "0"])
  assert (args.devices, args.distributed, args.coordinator_address, args.num_processes, args.process_id) == (
      "2", True, "h:1", 2, 0)
  args = buffers.build_parser().parse_args(["--out", "x"])
  assert args.devices == "1" and not args.distributed
  with pytest.raises(SystemExit):
    buffers.build_parser().parse_args(["--out", "x", "--arch", "nope"])


TINY_BUFFER = ["--train-size", "200", "--test-size", "200", "--experts", "2", "--experts-per-shard", "2",
               "--epochs", "1", "--arch", "mlp", "--width", "8", "--batch-size", "100", "--no-dsa", "--quiet"]


def test_buffers_cli_on_two_devices_equals_one(tmp_path, data_dir):
  """``--devices 2`` under two forced host devices: the mesh reaches train_experts, the buffer is written, and
  its trajectories equal a one-device run's."""
  from jaxdistill import experts

  spy = textwrap.dedent("""
      import sys
      import jaxdistill.experts as experts
      from experiments import buffers, cli
      train = experts.train_experts
      def spy(*args, **kwargs):
        mesh = kwargs.get("mesh")
        print("MESH", 0 if mesh is None else mesh.size, flush=True)
        return train(*args, **kwargs)
      experts.train_experts = spy
      cli.run(buffers.main, sys.argv[1:])
  """)
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
  env.update(PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
             XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             JAXDISTILL_DATA_DIR=data_dir, JAXDISTILL_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="3")
  two = tmp_path / "two"
  proc = subprocess.run([sys.executable, "-c", spy, *TINY_BUFFER, "--devices", "2", "--out", str(two)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "MESH 2" in proc.stdout, proc.stdout[-2000:]
  assert json.loads((two / "buffer.json").read_text())["num_experts"] == 2
  sharded = experts.load_buffer(str(two))
  assert sharded.params.shape[:2] == (2, 2)

  one = tmp_path / "one"
  buffers.main([*TINY_BUFFER, "--out", str(one)])
  single = experts.load_buffer(str(one))
  np.testing.assert_allclose(sharded.params, single.params, rtol=1e-5, atol=1e-6)


def test_distill_init_forgetting_end_to_end(tmp_path, data_dir, monkeypatch):
  """``--init forgetting`` (once refused by the parser) initialises through jaxdistill.coreset.select."""
  from jaxdistill import coreset, data

  x, y, _ = data.load_uint8("fashion_mnist", "train[:300]", data_dir=data_dir)
  path = tmp_path / "small.npz"
  np.savez(path, x=x, y=y)
  calls = []
  select = coreset.select

  def spy(method, *args, **kwargs):
    calls.append(method)
    # A small feature network: the default one (ConvNet-64, 3 epochs) takes minutes on a loaded CPU, as its
    # training convolves inside lax.scan (README, "On CPU").
    kwargs.setdefault("config", coreset.FeatureNetConfig(width=8, epochs=1))
    return select(method, *args, **kwargs)

  monkeypatch.setattr(coreset, "select", spy)
  out = tmp_path / "run"
  payload = distill.main(["--method", "dm", "--init", "forgetting", "--dataset", f"npz:{path}", "--ipc", "1",
                          "--iterations", "2", "--real-per-class", "4", "--width", "8", "--eval-models", "1",
                          "--eval-epochs", "2", "--eval-width", "8", "--no-eval-dsa", "--quiet", "--out", str(out)])
  assert calls == ["forgetting"]
  assert payload["init"] == "forgetting"
  assert json.loads((out / "metrics.json").read_text())["init"] == "forgetting"
  assert (out / "synthetic.npz").stat().st_size > 0


def test_buffer_presets_resolve_with_sources_and_refuse_unknown_names():
  from jaxdistill import presets
  assert presets.buffer_presets() == ("cpu", "paper")
  paper = presets.resolve_buffer("paper", "fashion_mnist")
  assert (paper.values["num_experts"], paper.values["epochs"], paper.values["width"]) == (100, 50, 128)
  assert paper.values["zca"] is False and presets.resolve_buffer("paper", "cifar10").values["zca"] is True
  assert all(paper.sources[k].strip() for k in paper.values)
  assert set(presets.resolve_buffer("cpu", "fashion_mnist").values) <= set(presets.BUFFER_KEYS)
  with pytest.raises(ValueError, match="unknown buffer preset 'fast'.*cpu.*paper"):
    presets.resolve_buffer("fast", "fashion_mnist")


def test_buffers_preset_fills_only_the_flags_not_given(data_dir, tmp_path):
  from jaxdistill import presets
  cpu = presets.resolve_buffer("cpu", "fashion_mnist").values
  args = buffers.build_parser().parse_args(["--out", "x", "--preset", "cpu", "--epochs", "1", "--no-dsa"])
  sources = buffers.resolve_recipe(args)
  assert args.epochs == 1 and args.dsa is False  # explicit flags win
  assert args.num_experts == cpu["num_experts"] and args.width == cpu["width"] and "width" in sources
  assert "epochs" not in sources and "dsa" not in sources
  plain = buffers.build_parser().parse_args(["--out", "x"])
  assert buffers.resolve_recipe(plain) == {} and vars(plain)["num_experts"] == buffers.DEFAULTS["num_experts"]
  # The preset and its sources are kept in buffer.json.
  out = tmp_path / "buf"
  meta = buffers.main(["--data-dir", data_dir, "--preset", "cpu", *TINY_BUFFER, "--out", str(out)])
  saved = json.loads((out / "buffer.json").read_text())
  assert saved["preset"] == "cpu" and meta["num_experts"] == 2 and saved["epochs"] == 1
  assert set(saved["preset_sources"]) == set(cpu) - {"num_experts", "experts_per_shard", "epochs", "batch_size",
                                                     "width", "dsa", "train_size"}
