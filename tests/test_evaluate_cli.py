"""The cross-architecture report ``experiments.evaluate`` on a tiny real set: table.md, heatmap.png and
results.json per architecture; bad architecture names are rejected."""
import jax
import numpy as np
import pytest

from experiments import evaluate as cli
from jaxdistill import data, io


def test_evaluate_cli_writes_table_and_heatmap(tmp_path, fmnist_train):
  x, y, spec = fmnist_train
  pos = data.random_subset(jax.random.PRNGKey(0), y, spec.num_classes, 2).reshape(-1)
  path = str(tmp_path / "synthetic.npz")
  io.save_synthetic(path, x[pos], y[pos], {"dataset": "fashion_mnist", "method": "random", "ipc": 2})
  out = tmp_path / "xarch"
  payload = cli.main(["--synthetic", path, "--arch", "convnet,mlp", "--eval-models", "2", "--eval-epochs", "2",
                      "--eval-width", "8", "--test-size", "200", "--no-eval-dsa", "--quiet", "--out", str(out)])
  assert (out / "heatmap.png").stat().st_size > 0
  table = (out / "table.md").read_text()
  for arch in ("convnet", "mlp"):
    r = payload["results"][arch]
    assert len(r["accuracies"]) == 2 and 0.0 <= r["test_accuracy_mean"] <= 1.0
    assert r["test_accuracy_std"] == pytest.approx(np.std(r["accuracies"]))
    assert f"| {arch} | {100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f} |" in table
  saved = io.load_json(str(out / "results.json"))
  assert saved["dataset"] == "fashion_mnist" and set(saved["results"]) == {"convnet", "mlp"}


def test_evaluate_cli_rejects_unknown_arch(tmp_path, fmnist_subset):
  x, y = fmnist_subset
  path = str(tmp_path / "s.npz")
  io.save_synthetic(path, x, y, {"dataset": "fashion_mnist"})
  with pytest.raises(ValueError, match="--arch entries"):
    cli.main(["--synthetic", path, "--arch", "convnet,transformer", "--out", str(tmp_path / "o")])
