"""Benchmarks of BPTT distillation (DD, Wang et al. 2018) and label distillation (LD, Bohdal et al. 2020) on
Fashion-MNIST with a ConvNet.

Rows (``run(quick)`` yields them as they are measured):

* accuracy rows, IPC 1 and 10: DD (pixels + learned inner lr) and LD (learned soft labels of fixed real
  images; ``ld`` from uniform labels as in LD, ``ld_one_hot`` from the images' one-hot labels), each
  distilled with a reduced CPU budget stated in ``protocol`` and evaluated under the shared
  :data:`benchmarks.common.EVAL` protocol (lr 0.01 as for every method, so rows are comparable; the learned α
  only drives the inner unroll). ``unrolled_accuracy_mean`` adds DD's own protocol: fresh networks trained
  by the learned ``T``-step unroll (learned α), tested on the same test images. LD rows also give
  ``base_hard_labels_accuracy_*``: LD's baseline, the same base images with their hard labels under the same
  evaluation;
* speed rows (``bptt_speed``): steady-state seconds per distillation iteration at IPC 10 and the compiled
  program's temporary memory (XLA's memory analysis of the jitted step), with and without ``jax.checkpoint``
  on the inner steps, for T = 10 and T = 30.
"""
from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from jaxdistill import loop, objectives, synthetic
from jaxdistill.data.sampling import class_index
from jaxdistill.objectives import bptt


def _protocol(quick: bool):
  if quick:
    return dict(width=8, inner_steps=3, real_per_class=8, ipcs=(1,), iterations=3, speed_steps=(3,), speed_real=8,
                repeats=2)
  return dict(width=32, inner_steps=10, real_per_class=32, ipcs=(1, 10), iterations=60, speed_steps=(10, 30),
              speed_real=32, repeats=3)


# Reduced-budget outer settings (Adam, as in DD/LD): DD lr 0.01 (the paper's), LD 0.01 (10× its paper lr, to
# move labels within the short budget); DD starts from real images here (the paper: noise) so that a short run
# yields a usable set. ``ld`` starts from uniform labels (LD's start: the labels must discover every class from
# the meta-gradient), ``ld_one_hot`` from the base images' one-hot labels (a short run refines them).
LR_IMG = 0.01
INIT = "real"
# (row name, objective, config overrides)
ROWS = (("dd", "dd", {}), ("ld", "ld", {}), ("ld_one_hot", "ld", {"label_start": "one_hot"}))


def _config(method: str, p, ipc: int, **kw):
  # One image per class per inner step (DD's structure): IPC 10 -> 10 steps = one epoch over the set.
  per_class = {"batch_per_class": 1} if method == "dd" else {}
  return objectives.default_config(method, width=p["width"], inner_steps=p["inner_steps"],
                                   scan_unroll=p["inner_steps"], **per_class, **kw)


def _init(method, cfg, key, data, ipc):
  if method == "ld":
    syn = synthetic.init_labels(key, INIT, data.train_x, data.train_y, data.num_classes, ipc,
                                label_start=cfg.label_start)
    return synthetic.labels_only(cfg.label_projection), syn
  return synthetic.PIXELS, synthetic.init_pixels(key, INIT, data.train_x, data.train_y, data.num_classes,
                                                 ipc, learn_lr=cfg.initial_lr())


def speed(data, ipc: int, inner_steps: int, checkpoint: bool, width: int, real_per_class: int, repeats: int):
  """Seconds per DD iteration (the loop's jitted step, after compilation) and XLA's temporary memory of the
  compiled step (MiB; None where the backend gives no memory analysis)."""
  nc = data.num_classes
  cfg = objectives.default_config("dd", width=width, inner_steps=inner_steps, scan_unroll=min(inner_steps, 10),
                                  checkpoint=checkpoint, batch_per_class=1)
  obj = objectives.make_objective("dd", cfg, num_classes=nc, image_shape=data.train_x.shape[1:], ipc=ipc)
  key = jax.random.PRNGKey(0)
  syn = synthetic.init_pixels(key, "real", data.train_x, data.train_y, nc, ipc, learn_lr=cfg.initial_lr())
  lc = loop.LoopConfig(iterations=1, real_per_class=real_per_class, lr_img=0.01, optimizer="adam")
  index = class_index(data.train_y, nc)
  step = loop.make_step(obj, synthetic.PIXELS, lc, index, nc)
  state = loop.init_state(obj, syn, key, lc)
  real_x = jnp.asarray(data.train_x)
  t0 = time.perf_counter()
  state, loss = step(state, key, real_x)
  jax.block_until_ready(loss)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(repeats):
    state, loss = step(state, key, real_x)
  jax.block_until_ready(loss)
  seconds = (time.perf_counter() - t0) / repeats
  temp_mb = None
  try:  # the gradient of the loss alone, compiled once more for its memory analysis
    real = obj_real_batch(data, real_per_class)
    grad = jax.jit(jax.grad(lambda p: obj.loss({}, synthetic.PIXELS.render(syn._replace(params=p)), real,
                                                key)[0]))
    analysis = grad.lower(syn.params).compile().memory_analysis()
    if analysis is not None:
      temp_mb = float(analysis.temp_size_in_bytes) / 2 ** 20
  except (AttributeError, NotImplementedError):
    pass
  return {"seconds_per_iteration": seconds, "compile_seconds": compile_s, "compiled_temp_mb": temp_mb}


def obj_real_batch(data, n: int):
  """The first ``n`` training images of every class as a :class:`RealBatch` ``[C, n, ...]``."""
  idx = np.stack([np.flatnonzero(data.train_y == c)[:n] for c in range(data.num_classes)])
  return objectives.RealBatch(jnp.asarray(data.train_x[idx]),
                              jnp.broadcast_to(jnp.arange(data.num_classes, dtype=jnp.int32)[:, None], idx.shape))


def run(quick: bool = False, select=None):
  """Benchmark rows (see module docstring); ``select(method, ipc)`` (None: all) picks rows (speed rows are
  ``("dd", 10)``)."""
  select = select or (lambda method, ipc: True)
  p = _protocol(quick)
  ev = common.eval_protocol(quick)
  data = common.load_data(quick)
  evaluator = common.make_evaluator(data, quick)
  nc = data.num_classes
  hard_cache = {}
  for ipc in p["ipcs"]:
    for name, method, overrides in ROWS:
      if not select(name, ipc):
        continue
      key = jax.random.PRNGKey(100 + ipc)
      cfg = _config(method, p, ipc, **overrides)
      obj = objectives.make_objective(method, cfg, num_classes=nc, image_shape=data.train_x.shape[1:], ipc=ipc)
      param, syn = _init(method, cfg, key, data, ipc)
      iters = p["iterations"]
      lc = loop.LoopConfig(iterations=iters, real_per_class=p["real_per_class"], lr_img=LR_IMG,
                           optimizer="adam")
      out = loop.distill(obj, param, syn, data.train_x, data.train_y, nc, key, lc, progress=False)
      batch = param.render(out.state.syn)
      res = evaluator(synthetic.SyntheticBatch(batch.images, batch.labels), jax.random.fold_in(key, 2))
      unrolled = bptt.unrolled_accuracy(cfg, batch, jax.random.fold_in(key, 3), data.test_x, data.test_y, nc,
                                        num_models=3 if quick else 5)
      # LD's own baseline: the same base images (same key for both LD rows) with their hard labels, evaluated
      # the same way.
      hard = None
      if method == "ld":
        if ipc not in hard_cache:
          hard_cache[ipc] = evaluator(synthetic.SyntheticBatch(syn.const["images"], syn.const["labels"]),
                                      jax.random.fold_in(key, 2))
        hard = hard_cache[ipc]
      learned = "pixels + inner lr" if method == "dd" else "soft labels of fixed real images"
      yield common.row(
          "bptt", name, ipc, result=res, seconds_per_iteration=out.seconds_per_iteration,
          published=common.published(method, ipc),
          unrolled_accuracy_mean=float(np.mean(unrolled)), unrolled_accuracy_std=float(np.std(unrolled)),
          learned_lr=None if batch.lr is None else float(batch.lr),
          loss_first=float(out.losses[0]), loss_last=float(np.mean(out.losses[-5:])),
          base_hard_labels_accuracy_mean=None if hard is None else hard.mean,
          base_hard_labels_accuracy_std=None if hard is None else hard.std,
          protocol=(f"{method.upper()} learns {learned}; {iters} iterations, Adam lr {LR_IMG}, "
                    f"{p['real_per_class']} real/class, init {INIT}, inner ConvNet-{p['width']}, "
                    f"T={cfg.inner_steps} SGD steps (batch_per_class {cfg.batch_per_class or 'all'}, "
                    f"alpha0 {cfg.inner_lr}"
                    + (f", labels from {cfg.label_start}, projection {cfg.label_projection}"
                       if method == "ld" else "")
                    + f"); {ev.describe()} (lr 0.01, not the learned alpha)"))
  if not select("dd", 10 if not quick else 1):
    return
  for steps in p["speed_steps"]:
    for ckpt in (False, True):
      s = speed(data, 10 if not quick else 1, steps, ckpt, p["width"], p["speed_real"], p["repeats"])
      yield common.row(
          "bptt_speed", "dd", 10 if not quick else 1, seconds_per_iteration=s["seconds_per_iteration"],
          compile_seconds=s["compile_seconds"], compiled_temp_mb=s["compiled_temp_mb"], checkpoint=ckpt,
          inner_steps=steps,
          protocol=(f"DD step, inner ConvNet-{p['width']}, T={steps}, one image per class per step, "
                    f"{p['speed_real']} real/class, jax.checkpoint {'on' if ckpt else 'off'}; steady state "
                    f"after compile, mean of {p['repeats']} steps; memory: XLA temp buffers of the "
                    "compiled meta-gradient"))


if __name__ == "__main__":
  import json
  for r in run(quick="--quick" in sys.argv):
    print(json.dumps(r))
