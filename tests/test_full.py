"""The paper-protocol runner (experiments.full): its plan, the time budget that splits long runs into chunks, resume,
and its wiring end to end on CPU with a tiny budget and TensorFlow hidden (as on the GPU machine)."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from experiments import full

TINY = ("--iterations 2 --real-per-class 4 --width 8 --eval-models 1 --eval-epochs 1 --eval-width 8 "
        "--test-size 100 --syn-steps 2 --expert-epochs 1 --max-start-epoch 1 --batch-syn 10")
TINY_BUFFER = "--experts 1 --experts-per-shard 1 --epochs 2 --width 8 --train-size 300 --test-size 100"


def test_plan_order_and_selection():
  names = [j.name for j in full.plan()]
  assert names[:3] == ["dm_ipc1", "dm_ipc10", "dm_ipc50"]
  assert names.index("buffer") < names.index("mtt_ipc1")
  assert len(names) == 13  # 4 methods x 3 IPCs + the buffer
  assert [j.name for j in full.plan(("dc",), (10,))] == ["dc_ipc10"]
  with pytest.raises(ValueError, match="--methods"):
    full.main(["--out", "/tmp/unused-full", "--methods", "dd"])


def test_refuses_a_foreign_folder(tmp_path):
  (tmp_path / "mine.txt").write_text("results")
  with pytest.raises(ValueError, match="not a full run"):
    full.main(["--out", str(tmp_path), "--methods", "dm", "--ipcs", "1"])


def test_loop_deadline_checkpoints_and_resumes_bit_for_bit(fmnist_subset, tmp_path):
  """A run stopped by its deadline after one iteration, then resumed, equals the uninterrupted run."""
  from jaxdistill import loop, objectives, synthetic
  x, y = fmnist_subset
  obj = objectives.make_objective("dm", objectives.default_config("dm", width=8), num_classes=10,
                                  image_shape=x.shape[1:], ipc=1)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, 10, 1)
  cfg = loop.LoopConfig(iterations=4, real_per_class=4, lr_img=1.0)
  key = jax.random.PRNGKey(2)
  ckpt = str(tmp_path / "ck.npz")
  first = loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, key, cfg, checkpoint_path=ckpt, progress=False,
                       deadline=0.0)
  assert not first.complete and len(first.losses) == 1
  rest = loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, key, cfg, checkpoint_path=ckpt, resume=True,
                      progress=False)
  whole = loop.distill(obj, synthetic.PIXELS, syn, x, y, 10, key, cfg, progress=False)
  assert rest.complete and rest.start_iteration == 1
  np.testing.assert_array_equal(np.asarray(rest.state.syn.params["images"]),
                                np.asarray(whole.state.syn.params["images"]))
  np.testing.assert_allclose(rest.losses, whole.losses)


def test_expert_buffer_resumes_by_shard(fmnist_subset, fmnist_test, tmp_path):
  from jaxdistill import experts
  x, y = fmnist_subset
  cfg = experts.ExpertConfig(width=8, num_experts=2, experts_per_shard=1, epochs=1)
  kw = dict(dataset="fashion_mnist", progress=False)
  tx, ty = fmnist_test[0][:100], fmnist_test[1][:100]
  part = experts.train_experts(cfg, x, y, tx, ty, 10, str(tmp_path / "b"), deadline=0.0, **kw)
  assert part == {"complete": False, "shards_done": 0, "shards": 2, "out_dir": str(tmp_path / "b")}
  # Train shard 0 only, by running the whole thing, deleting shard 1 and the metadata, then resuming.
  whole = experts.train_experts(cfg, x, y, tx, ty, 10, str(tmp_path / "b"), **kw)
  os.remove(tmp_path / "b" / experts.shard_file(1))
  os.remove(tmp_path / "b" / experts.METADATA_FILE)
  resumed = experts.train_experts(cfg, x, y, tx, ty, 10, str(tmp_path / "b"), resume=True, **kw)
  assert resumed["complete"] and resumed["test_accuracy_mean"] == whole["test_accuracy_mean"]
  other = experts.ExpertConfig(width=16, num_experts=2, experts_per_shard=1, epochs=1)
  with pytest.raises(ValueError, match="another configuration"):
    experts.train_experts(other, x, y, tx, ty, 10, str(tmp_path / "b"), resume=True, **kw)


@pytest.mark.slow
def test_full_runs_in_chunks_without_tensorflow(tmp_path):
  """`experiments.main --full` with TensorFlow hidden: a first call whose budget stops DM inside its
  distillation, then a second call that resumes it and finishes DM, the buffer and MTT at IPC 1."""
  from test_data_without_tf import _run
  out = tmp_path / "full"
  extra = TINY.replace("--iterations 2", "--iterations 400")
  base = ["-m", "experiments.main", "--full", "--out", str(out), "--methods", "dm,mtt", "--ipcs", "1",
          "--quiet", "--buffer-extra", TINY_BUFFER]
  _run(tmp_path, base + ["--budget-seconds", "4", "--eval-reserve", "0", "--extra", extra])
  status = json.loads((out / "status.json").read_text())
  assert not status["complete"] and status["jobs"][0]["state"] == "partial"
  progress = json.loads((out / "dm_ipc1" / "progress.json").read_text())
  assert 1 <= progress["iterations_done"] < 400
  proc = _run(tmp_path, base + ["--budget-seconds", "500", "--extra", extra])
  status = json.loads((out / "status.json").read_text())
  assert status["complete"], proc.stdout[-2000:]
  assert [j["state"] for j in status["jobs"]] == ["done", "done", "done"]
  dm = json.loads((out / "dm_ipc1" / "metrics.json").read_text())
  assert dm["resumed_from_image_update"] == progress["image_updates_done"] and len(dm["loss_curve"]) == 400
  assert dm["preset"] == "paper" and dm["eval_dsa"] is True
  mtt = json.loads((out / "mtt_ipc1" / "metrics.json").read_text())
  assert mtt["eval_learned_lr"] is True
  for job in ("dm_ipc1", "mtt_ipc1"):
    assert (out / job / "grid.png").exists() and (out / job / "synthetic.npz").exists()
  table = (out / "table.md").read_text()
  assert "| dm_ipc1 | done |" in table and "| mtt_ipc1 | done |" in table and "75.1" in table
