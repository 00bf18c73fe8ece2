"""The ``experiments.distill`` CLI on tiny runs: outputs, metrics keys, refusal to overwrite, resume."""
import json

import numpy as np
import pytest

from experiments import distill
from jaxdistill import io

TINY = ["--ipc", "1", "--real-per-class", "4", "--width", "8", "--eval-models", "1", "--eval-epochs", "2",
        "--eval-width", "8", "--test-size", "200", "--no-eval-dsa", "--quiet"]


def _args(out, method="dm", iterations=3, *extra):
  return ["--method", method, "--iterations", str(iterations), "--out", str(out), *TINY, *extra]


def test_cli_writes_outputs_and_refuses_non_empty_out(tmp_path):
  out = tmp_path / "run"
  payload = distill.main(_args(out))
  for name in ("synthetic.npz", "metrics.json", "grid.png", "loss.png"):
    assert (out / name).stat().st_size > 0, name
  metrics = io.load_json(str(out / "metrics.json"))
  for k in ("method", "dataset", "ipc", "test_accuracy_mean", "test_accuracy_std", "eval_models", "eval_epochs",
            "iterations", "seconds_per_iteration", "peak_memory_mb", "loss_curve"):
    assert k in metrics, k
  assert metrics["method"] == "dm" and metrics["ipc"] == 1 and metrics["iterations"] == 3
  assert len(metrics["loss_curve"]) == 3 and metrics["peak_memory_mb"] > 0
  assert metrics["startup_seconds"] > 0  # in-process here: the age of the test session at the first step
  assert 0.0 <= metrics["test_accuracy_mean"] <= 1.0
  syn = io.load_synthetic(str(out / "synthetic.npz"))
  assert syn["images"].shape == (10, 28, 28, 1)
  np.testing.assert_array_equal(syn["labels"], np.arange(10))
  assert payload["method"] == "dm"
  with pytest.raises(ValueError, match="not empty"):
    distill.main(_args(out))


def test_cli_resume_continues_and_config_file(tmp_path):
  out = tmp_path / "run"
  cfg = tmp_path / "cfg.json"
  cfg.write_text(json.dumps({"outer_loop": 2, "inner_loop": 1, "momentum": 0.5}))
  distill.main(_args(out, "dc", 2, "--config", str(cfg)))
  metrics = distill.main(_args(out, "dc", 4, "--config", str(cfg), "--resume"))
  # DC counts outer iterations (2 image updates each here): resumed after 2 iterations = 4 image updates; the loss
  # curve has one entry per image update.
  assert metrics["resumed_from"] == 2 and metrics["resumed_from_image_update"] == 4
  assert len(metrics["loss_curve"]) == 8 and metrics["image_updates"] == 8
  assert metrics["objective_config"]["outer_loop"] == 2


def test_cli_orbax_checkpoint_resumes(tmp_path):
  out = tmp_path / "run"
  first = distill.main(_args(out, "dm", 2, "--checkpoint-format", "orbax"))
  assert (out / "checkpoint.orbax" / "step_00000002").is_dir() and not (out / "checkpoint.npz").exists()
  metrics = distill.main(_args(out, "dm", 3, "--checkpoint-format", "orbax", "--resume"))
  assert metrics["resumed_from"] == 2 and len(metrics["loss_curve"]) == 3
  assert metrics["loss_curve"][:2] == first["loss_curve"]
  assert sorted(p.name for p in (out / "checkpoint.orbax").iterdir()) == ["step_00000003"]


def test_cli_rejects_unknown_config_keys(tmp_path):
  cfg = tmp_path / "cfg.json"
  cfg.write_text(json.dumps({"learning_rate_of_everything": 3}))
  with pytest.raises(ValueError, match="unknown option"):
    distill.main(_args(tmp_path / "run", "dm", 1, "--config", str(cfg)))


def test_startup_seconds_counts_from_the_command():
  import subprocess
  import sys
  code = ("import time; time.sleep(1.0); from experiments import common; "
          "print(common.startup_seconds(time.time()))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
  startup = float(out.strip().splitlines()[-1])
  assert 1.0 <= startup < 20.0  # the sleep and the interpreter's start, measured from the process's own start
