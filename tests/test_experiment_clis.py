"""The coreset CLI, the ``make run`` main job and the benchmark report, on tiny settings."""
import json

import numpy as np
import pytest

from experiments import coreset as coreset_cli
from experiments import main as main_cli
from jaxdistill import io

TINY = ["--eval-models", "1", "--eval-epochs", "2", "--eval-width", "8", "--test-size", "200", "--no-eval-dsa",
        "--quiet"]


@pytest.mark.parametrize("method", ["random", "herding"])
def test_coreset_cli_outputs(tmp_path, method):
  out = tmp_path / method
  extra = ["--feature-width", "8", "--feature-epochs", "1", "--feature-examples", "300"]
  payload = coreset_cli.main(["--method", method, "--ipc", "2", "--out", str(out), *TINY, *extra])
  for name in ("synthetic.npz", "metrics.json", "grid.png"):
    assert (out / name).stat().st_size > 0
  m = io.load_json(str(out / "metrics.json"))
  for k in ("method", "dataset", "ipc", "test_accuracy_mean", "test_accuracy_std", "eval_models", "eval_epochs",
            "seconds"):
    assert k in m, k
  assert m["method"] == method and m["ipc"] == 2 and payload["eval_models"] == 1
  syn = io.load_synthetic(str(out / "synthetic.npz"))
  assert syn["images"].shape == (20, 28, 28, 1)
  np.testing.assert_array_equal(np.sort(syn["labels"]), np.repeat(np.arange(10), 2))
  with pytest.raises(ValueError, match="not empty"):
    coreset_cli.main(["--method", method, "--ipc", "2", "--out", str(out), *TINY, *extra])


def test_main_job_writes_both_runs_and_summary(tmp_path, capsys):
  out = tmp_path / "main"
  summary = main_cli.main(["--out", str(out), "--ipc", "1", "--iterations", "3", "--real-per-class", "4",
                           "--eval-models", "1", "--eval-epochs", "2", "--quiet", "--width", "8",
                           "--extra", "--eval-width 8 --test-size 200 --no-eval-dsa"])
  for sub in ("dm", "random"):
    assert (out / sub / "metrics.json").exists() and (out / sub / "grid.png").exists()
  assert (out / "dm" / "loss.png").exists()
  saved = json.loads((out / "summary.json").read_text())
  assert saved["dm_accuracy_mean"] == summary["dm_accuracy_mean"]
  assert 0.0 <= saved["random_accuracy_mean"] <= 1.0
  assert "reduced CPU" in saved["protocol"]
  printed = capsys.readouterr().out
  assert "DM distilled set" in printed and "random subset" in printed


def test_benchmark_report_from_rows(tmp_path):
  from benchmarks import common, report
  ev = common.EVAL.describe()
  rows = [
      {"method": "random", "ipc": 10, "test_accuracy_mean": 0.75, "test_accuracy_std": 0.01, "eval_protocol": ev,
       "protocol": ev, "machine": "cpu"},
      {"method": "dm", "ipc": 10, "test_accuracy_mean": 0.81, "test_accuracy_std": 0.005, "eval_protocol": ev,
       "protocol": "dm 200 its; " + ev, "seconds_per_iteration": 0.9, "peak_memory_mb": 1500.0,
       "published": None, "machine": "cpu", "base_hard_labels_accuracy_mean": 0.7,
       "base_hard_labels_accuracy_std": 0.02, "krr_test_accuracy": 0.85},
      {"method": "dm", "ipc": 10, "test_accuracy_mean": None, "seconds_per_iteration": 2.5,
       "conv_forward_share": 0.4, "protocol": "speed", "machine": "cpu"},
  ]
  io.save_json(str(tmp_path / "matching.json"), {"benchmark": "matching", "quick": False, "seconds": 10.0,
                                                  "rows": rows})
  io.save_json(str(tmp_path / "smoke.json"), {"benchmark": "smoke", "quick": True, "seconds": 1.0,
                                               "rows": [dict(rows[1], method="dc")]})
  path = report.write_report(str(tmp_path), str(tmp_path / "README.md"))
  text = open(path).read()
  assert "| dm | 10 | 81.0 ± 0.5 | 75.0 ± 1.0 |" in text  # the random reference under the same evaluation
  assert "conv_forward_share" in text and "0.4" in text
  assert "base_hard_labels_accuracy 70.0 ± 2.0; krr_test_accuracy 85.0 |" in text  # the row's other accuracies
  assert "quick smoke settings" in text
  summary = text.split("## Summary")[1].split("\n## ")[0]
  assert "| dc |" not in summary  # quick runs never enter the summary


def test_benchmark_run_reruns_selected_rows_and_keeps_the_others(tmp_path, monkeypatch):
  import sys
  import types
  from benchmarks import run as bench_run

  calls = []

  def fake_run(quick=False, select=None):
    calls.append(select)
    for method, ipc in (("a", 1), ("b", 1), ("a", 10), ("b", 10)):
      if select is None or select(method, ipc):
        yield {"method": method, "ipc": ipc, "seconds_per_iteration": 2.0}

  monkeypatch.setitem(sys.modules, "benchmarks.bench_fake", types.SimpleNamespace(run=fake_run))
  path = bench_run.run_one("fake", False, str(tmp_path))
  assert [r["seconds_per_iteration"] for r in json.load(open(path))["rows"]] == [2.0] * 4
  rows = json.load(open(path))["rows"]
  for r in rows:
    r["seconds_per_iteration"] = 1.0
  io.save_json(path, {"benchmark": "fake", "quick": False, "seconds": 1.0, "rows": rows})
  bench_run.run_one("fake", False, str(tmp_path), bench_run.make_select(["b"], [10]))
  got = {(r["method"], r["ipc"]): r["seconds_per_iteration"] for r in json.load(open(path))["rows"]}
  assert got == {("a", 1): 1.0, ("b", 1): 1.0, ("a", 10): 1.0, ("b", 10): 2.0}  # only (b, 10) re-measured
  assert bench_run.make_select(None, None) is None
  monkeypatch.setitem(sys.modules, "benchmarks.bench_old", types.SimpleNamespace(run=lambda quick=False: []))
  with pytest.raises(ValueError, match="measures all its rows"):
    bench_run.run_one("old", False, str(tmp_path), bench_run.make_select(["a"], None))
