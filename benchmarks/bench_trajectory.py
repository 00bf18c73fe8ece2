"""Benchmarks of trajectory matching (MTT, TESLA) on Fashion-MNIST with a ConvNet.

Rows (``run(quick)`` yields them as they are measured), in the order they are computed:

* ``trajectory_memory``: for N = 10, 20, 40 student steps and each gradient — full unroll, checkpointed unroll
  (√N segments) and TESLA's two passes — the memory XLA plans for the compiled loss-and-gradient program
  (``jax.jit(...).lower(...).compile().memory_analysis()``: temporaries + arguments + outputs, MiB) and the
  seconds one call of it takes. This is the point of TESLA: its memory stays flat in N, the unroll's grows
  linearly, the checkpointed one sub-linearly.
* ``trajectory_experts``: the expert buffer (reduced: a few experts, a few epochs on a slice of the training
  set), with the experts' mean test accuracy per epoch.
* ``trajectory``: MTT distilled at IPC 1 and 10 with a reduced budget (stated in ``protocol``) and evaluated
  with the shared :data:`benchmarks.common.EVAL` protocol using the learned student lr α; the random-subset
  and DM rows under the same evaluation come from ``bench_matching``.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import common
from jaxdistill import experts, loop, synthetic
from jaxdistill.augment import DEFAULT_STRATEGY
from jaxdistill.objectives import trajectory_matching as tm

MIB = 1024.0 * 1024.0


def _protocol(quick: bool):
  if quick:
    return dict(train_size=300, width=8, experts=2, epochs=2, syn_steps=2, expert_epochs=1, max_start=1,
                iterations={1: 2}, batch_syn={1: None}, lr_img=100.0, lr_lr=1e-5, memory_steps=(2, 4),
                memory_ipc=1)
  return dict(train_size=3000, width=32, experts=3, epochs=3, syn_steps=10, expert_epochs=2, max_start=1,
              iterations={1: 50, 10: 30}, batch_syn={1: None, 10: 20}, lr_img=100.0, lr_lr=1e-5,
              memory_steps=(10, 20, 40), memory_ipc=1)


def _config(p, **kw):
  base = dict(arch="convnet", width=p["width"], syn_steps=p["syn_steps"], expert_epochs=p["expert_epochs"],
              max_start_epoch=p["max_start"], lr_lr=p["lr_lr"], dataset=common.DATASET,
              dsa_strategy=DEFAULT_STRATEGY)
  base.update(kw)
  return tm.TrajectoryMatchingConfig(**base).validate()


def memory_and_speed(trajectories, data: common.Data, p, steps, gradient: str, checkpoint: bool, ipc: int):
  """Compiles ``value_and_grad`` of the MTT loss w.r.t. (images, α) for ``steps`` student steps and returns
  ``(planned MiB, temp MiB, seconds per call)``; the call runs the already compiled program once."""
  cfg = _config(p, syn_steps=steps, gradient=gradient, checkpoint=checkpoint, batch_syn=p["batch_syn"].get(ipc))
  obj = tm.make_trajectory_matching(cfg, num_classes=data.num_classes, image_shape=data.train_x.shape[1:],
                                    ipc=ipc, buffer=trajectories)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", data.train_x, data.train_y, data.num_classes, ipc,
                              learn_lr=cfg.lr_init)

  def f(params, key, traj):
    def loss(params):
      return obj.loss({}, synthetic.PIXELS.render(syn._replace(params=params)), None, key, traj)[0]
    return jax.value_and_grad(loss)(params)

  args = (syn.params, jax.random.PRNGKey(1), obj.data)
  compiled = jax.jit(f).lower(*args).compile()
  stats = compiled.memory_analysis()
  temp = planned = float("nan")
  if stats is not None:
    temp = stats.temp_size_in_bytes / MIB
    planned = (stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes) / MIB
  t = time.perf_counter()
  value, grads = compiled(*args)
  jax.block_until_ready(grads)
  seconds = time.perf_counter() - t
  if not np.isfinite(float(value)):
    raise FloatingPointError(f"non-finite MTT loss at N={steps}, {gradient}, checkpoint={checkpoint}.")
  return planned, temp, seconds


def run(quick: bool = False, select=None):
  """Yields the benchmark rows (module docstring) as each is ready; ``select(method, ipc)`` (None: all) picks
  the rows to measure (the expert buffer is always trained: every MTT row needs it)."""
  p = _protocol(quick)
  select = select or (lambda method, ipc: True)
  data = common.load_data(quick, train_size=p["train_size"])
  evaluator = common.make_evaluator(data, quick, "mtt")  # MTT evaluates with its learned lr
  ev = common.eval_protocol(quick)
  tmp = tempfile.mkdtemp(prefix="jaxdistill_buffer_")
  cfg_e = experts.ExpertConfig(arch="convnet", width=p["width"], num_experts=p["experts"],
                               experts_per_shard=p["experts"], epochs=p["epochs"], lr=0.01)
  meta = experts.train_experts(cfg_e, data.train_x, data.train_y, data.test_x, data.test_y, data.num_classes, tmp,
                               dataset=common.DATASET, split=f"train[:{p['train_size']}]", progress=False)
  expert_desc = (f"{p['experts']} experts ConvNet-{p['width']} x {p['epochs']} epochs, SGD 0.01 no momentum, "
                 f"DSA, batch 256, first {p['train_size']} training images")
  experts_row = common.row("trajectory_experts", "experts", None, protocol=expert_desc,
                           expert_test_accuracy_per_epoch=[round(100 * a, 2) for a in meta["test_accuracy_mean"]],
                           expert_seconds=meta["seconds"])
  buf = experts.load_buffer(tmp, expected={"dataset": common.DATASET, "arch": "convnet", "zca": False})

  if select("experts", None):
    yield experts_row
  for steps in p["memory_steps"]:
    for gradient, ckpt, label in (("unroll", False, "mtt"), ("unroll", True, "mtt_checkpoint"),
                                  ("tesla", False, "tesla")):
      if not select(label, p["memory_ipc"]):
        continue
      planned, temp, seconds = memory_and_speed(buf.params, data, p, steps, gradient, ckpt, p["memory_ipc"])
      yield common.row("trajectory_memory", label, p["memory_ipc"], seconds_per_iteration=seconds,
                     syn_steps=steps, compiled_memory_mb=planned, compiled_temp_mb=temp,
                     protocol=(f"loss+gradient of one MTT iteration, N={steps}, IPC {p['memory_ipc']}, "
                               f"ConvNet-{p['width']} student, whole set per step, DSA; memory = XLA "
                               "memory_analysis of the compiled program (temp + args + outputs); seconds = "
                               "one call of the compiled program"))

  for ipc, iters in p["iterations"].items():
    if not select("mtt", ipc):
      continue
    # Straight-line student unroll (same values as the scan; several times faster on XLA:CPU).
    cfg = _config(p, batch_syn=p["batch_syn"].get(ipc), unroll=True)
    obj = tm.make_trajectory_matching(cfg, num_classes=data.num_classes, image_shape=data.train_x.shape[1:],
                                      ipc=ipc, buffer=buf)
    key = jax.random.PRNGKey(ipc)
    syn = synthetic.init_pixels(key, "real", data.train_x, data.train_y, data.num_classes, ipc,
                                learn_lr=cfg.lr_init)
    lc = loop.LoopConfig(iterations=iters, real_per_class=1, lr_img=p["lr_img"], param_lrs=cfg.param_lrs())
    out = loop.distill(obj, synthetic.PIXELS, syn, data.train_x, data.train_y, data.num_classes, key, lc,
                       progress=False)
    batch = synthetic.PIXELS.render(out.state.syn)
    res = evaluator(batch, jax.random.fold_in(key, 2))
    yield common.row("trajectory", "mtt", ipc, result=res, seconds_per_iteration=out.seconds_per_iteration,
                   eval_protocol=ev.describe(),
                   published=None if quick else common.published("mtt", ipc), learned_lr=float(batch.lr),
                   loss_first=float(out.losses[0]), loss_last=float(np.mean(out.losses[-5:])),
                   protocol=(f"{iters} iterations, N={cfg.syn_steps}, M={cfg.expert_epochs}, "
                             f"T+={cfg.max_start_epoch}, batch_syn {cfg.batch_syn or 'all'}, straight-line "
                             f"unroll, lr_img {p['lr_img']} (SGD mom 0.5), lr_lr {p['lr_lr']}, alpha0 0.01, real init; "
                             f"buffer: {expert_desc}; {ev.describe()} with the learned alpha"))


if __name__ == "__main__":
  for r in run(quick="--quick" in sys.argv):
    print(json.dumps(r), flush=True)
