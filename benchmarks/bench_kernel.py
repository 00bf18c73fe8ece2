"""Benchmarks of the kernel / meta-model methods (KIP, RFAD, FRePo) on Fashion-MNIST.

Rows (``run(quick)`` yields them as they are measured):

* accuracy rows, IPC 1 and 10: each method distilled with a reduced CPU budget (stated in ``protocol``), then
  evaluated with the shared protocol :data:`benchmarks.common.EVAL` (3 ConvNet-128 × 300 epochs, DSA) so the
  numbers sit next to the matching methods' rows; the sets' labels are used by each method's label rule
  (:func:`jaxdistill.evaluate.protocol`: MSE targets for KIP and FRePo, projected soft labels for RFAD). KIP rows also carry
  ``krr_test_accuracy`` (KRR with its FC NTK on the whole test split), with the same number for the
  random real subset it started from (``krr_test_accuracy_init``);
* kernel-time rows: seconds to evaluate ``K_ts`` for a support set of 100 images against growing target batches,
  for the FC NTK (analytic, one jitted call), RFAD's random-feature NNGP (4 random ConvNet-64, linear in the
  target batch) and the ConvNet NTK (neural-tangents, ``nt.batch`` blocks; support 10 — it is ~10³ times costlier).
"""
from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import common
from jaxdistill import kernels, loop, objectives, synthetic
from jaxdistill.objectives.kip import krr_test_accuracy
from jaxdistill.objectives.rfad import RFADConfig, feature_kernel, random_features

BENCH = "kernel"


def _protocol(quick: bool):
  """Reduced distillation budgets (the papers run 1k–500k Adam steps with 1000+ targets on accelerators)."""
  if quick:
    return dict(ipcs=(1,), lr_img=0.01, methods={
        "kip": dict(iterations=5, real_per_class=10, config=dict(depth=1)),
        "rfad": dict(iterations=3, real_per_class=4, config=dict(num_models=2, width=8)),
        "frepo": dict(iterations=3, real_per_class=4, config=dict(width=8, pool_size=2, max_online_updates=2)),
    }, targets={"fc": (100, 200), "rfad": (100, 200), "convnet": ()}, rfad_time=dict(num_models=2, width=8))
  return dict(ipcs=(1, 10), lr_img=0.01, methods={
      "kip": dict(iterations=1000, real_per_class=100, config=dict()),
      "rfad": dict(iterations=200, real_per_class=10, config=dict(num_models=2, width=32)),
      "frepo": dict(iterations=300, real_per_class=10, config=dict(width=32, pool_size=10, max_online_updates=50)),
  }, targets={"fc": (100, 500, 1000, 2000, 5000), "rfad": (100, 500, 1000, 2000), "convnet": (10, 20)},
      rfad_time=dict(num_models=4, width=64))


def _describe(method, spec, lr_img):
  cfg = ", ".join(f"{k}={v}" for k, v in spec["config"].items()) or "paper config"
  return (f"{spec['iterations']} Adam steps lr {lr_img}, {spec['real_per_class']} real/class targets, "
          f"init real, learned labels={spec['learn_labels']}, {method} {cfg}")


def _emit(row):
  """Prints a finished row at once (long runs on a shared machine: partial results show in the log)."""
  print("ROW " + json.dumps(row), flush=True)
  return row


def _time(fn, repeats: int = 2) -> float:
  jax.block_until_ready(fn())  # compile
  t = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t) / repeats


def kernel_times(x, quick: bool, select=None):
  """Rows of kernel-evaluation seconds vs target batch size (support 100; ConvNet NTK support 10)."""
  p = _protocol(quick)
  xs = jnp.asarray(x[:100])
  fc = jax.jit(kernels.make_kernel_fn(kernels.KernelConfig(arch="fc"), 10, x.shape[1:]))
  rcfg = RFADConfig(**p["rfad_time"])
  rf = jax.jit(lambda a, b: feature_kernel(random_features(jax.random.PRNGKey(0), a, rcfg),
                                           random_features(jax.random.PRNGKey(0), b, rcfg), rcfg.b_std))
  conv = kernels.batched_kernel_fn(kernels.KernelConfig(arch="convnet"), 10, x.shape[1:], batch_size=10)
  for name, fn, targets, support, desc in (
      ("fc_ntk", fc, p["targets"]["fc"], xs, "FC3 NTK (neural-tangents), one jitted call"),
      ("rfad_nngp", rf, p["targets"]["rfad"], xs,
       f"RFAD random-feature NNGP, {rcfg.num_models} ConvNet-{rcfg.width} (vmapped), features + K_ts"),
      ("convnet_ntk", conv, p["targets"]["convnet"], xs[:10],
       "ConvNet-3 NTK with avg pooling (neural-tangents, nt.batch 10x10 blocks)")):
    if select is not None and not select(name, None):
      continue
    for m in targets:
      xt = jnp.asarray(x[:m])
      seconds = _time(lambda: fn(xt, support), repeats=1)
      yield _emit(common.row(f"{BENCH}_time", name, None, seconds_per_iteration=None, kernel_seconds=seconds,
                             target_batch=int(m), support=int(support.shape[0]),
                             protocol=f"{desc}; steady state after compile, support {support.shape[0]}"))


def run(quick: bool = False, select=None):
  """Yields the benchmark rows (see module docstring); ``select(method, ipc)`` (None: all) picks rows."""
  p = _protocol(quick)
  select = select or (lambda method, ipc: True)
  data = common.load_data(quick)
  ev = common.eval_protocol(quick)
  nc, shape = data.num_classes, data.train_x.shape[1:]
  yield from (r for r in kernel_times(data.train_x, quick, select) if select(r["method"], r["ipc"]))
  for ipc in p["ipcs"]:
    key = jax.random.PRNGKey(100 + ipc)
    for method, spec in p["methods"].items():
      if not select(method, ipc):
        continue
      cfg = objectives.default_config(method, **spec["config"])
      spec = {**spec, "learn_labels": cfg.learn_labels}
      obj = objectives.make_objective(method, cfg, num_classes=nc, image_shape=shape, ipc=ipc)
      syn = synthetic.init_pixels(key, "real", data.train_x, data.train_y, nc, ipc,
                                  learn_labels=cfg.learn_labels, label_scale=cfg.label_scale)
      lc = loop.LoopConfig(iterations=spec["iterations"], real_per_class=spec["real_per_class"],
                           lr_img=p["lr_img"], optimizer="adam")
      t0 = time.perf_counter()
      out = loop.distill(obj, synthetic.PIXELS, syn, data.train_x, data.train_y, nc, key, lc, progress=False)
      distill_seconds = time.perf_counter() - t0
      batch = synthetic.PIXELS.render(out.state.syn)
      evaluator = common.make_evaluator(data, quick, method)  # the method's label rule (jaxdistill.evaluate)
      res = evaluator(synthetic.SyntheticBatch(batch.images, batch.labels), jax.random.fold_in(key, 7))
      extra = {}
      if method == "kip":
        init_batch = synthetic.PIXELS.render(syn)
        extra["krr_test_accuracy"] = krr_test_accuracy(cfg, batch.images, batch.labels, data.test_x, data.test_y,
                                                       nc, batch_size=100)
        extra["krr_test_accuracy_init"] = krr_test_accuracy(cfg, init_batch.images, init_batch.labels,
                                                            data.test_x, data.test_y, nc, batch_size=100)
      yield _emit(common.row(
          BENCH, method, ipc, result=res, seconds_per_iteration=out.seconds_per_iteration,
          protocol=_describe(method, spec, p["lr_img"]), eval_protocol=ev.describe(),
          published=None if quick else common.published(method, ipc), distill_seconds=distill_seconds,
          final_loss=float(out.losses[-1]), first_loss=float(out.losses[0]), **extra))


if __name__ == "__main__":
  for _ in run(quick="--quick" in sys.argv):
    pass
