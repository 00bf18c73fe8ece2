"""``loop.distill(metrics_path=...)``: one JSON line per iteration (loss, seconds, the objective's aux), written
every ``log_every`` iterations, and a resumed run keeping exactly the lines its checkpoint covers."""
import json

import jax
import numpy as np
import pytest

from jaxdistill import loop, objectives, synthetic


def _setup(fmnist_subset):
  x, y = fmnist_subset
  cfg = objectives.default_config("dm", width=4, depth=1, dsa=False)
  obj = objectives.make_objective("dm", cfg, num_classes=10, image_shape=x.shape[1:], ipc=1)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, 10, 1)
  return obj, syn, x, y


def _rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_lines_hold_loss_seconds_and_aux(tmp_path, fmnist_subset):
  obj, syn, x, y = _setup(fmnist_subset)
  path = tmp_path / "m.jsonl"
  seen = []
  lc = loop.LoopConfig(iterations=7, real_per_class=2, lr_img=1.0)
  out = loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, jax.random.PRNGKey(1), lc, progress=False,
                     metrics_path=str(path), log_every=3, log=lambda i, v: seen.append(i))
  rows = _rows(path)
  assert [r["iteration"] for r in rows] == list(range(1, 8)) and seen == list(range(1, 8))
  np.testing.assert_array_equal([r["loss"] for r in rows], out.losses)
  for r in rows:
    assert set(r) == {"iteration", "loss", "seconds", "per_class"} and len(r["per_class"]) == 10
    assert sum(r["per_class"]) == pytest.approx(r["loss"], rel=1e-5)
  # Fetched together every 3 iterations (3, 6, then the end): lines of one fetch share their time.
  assert rows[0]["seconds"] == rows[2]["seconds"] and rows[3]["seconds"] == rows[5]["seconds"]
  assert rows[6]["seconds"] >= rows[5]["seconds"] >= rows[2]["seconds"] > 0
  assert np.isfinite(out.seconds_per_iteration) and out.seconds_per_iteration > 0
  with pytest.raises(ValueError, match="log_every"):
    loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, jax.random.PRNGKey(1), lc, progress=False, log_every=0)


def test_resumed_run_keeps_the_lines_its_checkpoint_covers(tmp_path, fmnist_subset):
  obj, syn, x, y = _setup(fmnist_subset)
  key = jax.random.PRNGKey(2)
  path, ckpt = tmp_path / "m.jsonl", str(tmp_path / "ckpt.npz")
  whole = loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, key,
                       loop.LoopConfig(iterations=6, real_per_class=2, lr_img=1.0), progress=False)
  loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, key, loop.LoopConfig(iterations=4, real_per_class=2, lr_img=1.0),
               progress=False, checkpoint_path=ckpt, metrics_path=str(path))
  with open(path, "a") as f:  # an iteration past the checkpoint, as an interrupted run leaves it, and a cut line
    f.write(json.dumps({"iteration": 5, "loss": -1.0, "seconds": 0.0}) + "\n{\"iteration\": 6, \"lo")
  loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, key, loop.LoopConfig(iterations=6, real_per_class=2, lr_img=1.0),
               progress=False, checkpoint_path=ckpt, resume=True, metrics_path=str(path))
  rows = _rows(path)
  assert [r["iteration"] for r in rows] == list(range(1, 7))
  np.testing.assert_array_equal([r["loss"] for r in rows], whole.losses)
  # A fresh (not resumed) run starts the file anew.
  loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, key, loop.LoopConfig(iterations=2, real_per_class=2, lr_img=1.0),
               progress=False, metrics_path=str(path))
  assert [r["iteration"] for r in _rows(path)] == [1, 2]
