"""Speed where users wait, side by side with the reference PyTorch figures (issue "speed where users wait").

Every row times one unit of work at the reference's settings (Fashion-MNIST, ConvNet-3 width 128, DSA) and prints
the reference figure measured with the authors' code on this kind of 2-core machine (PyTorch 2.14 CPU), the ratio
ours / reference, the FLOPs XLA counts for the compiled programs (``cost_analysis``) and the fraction of the
machine's fp32 peak (≈ 157 GFLOP/s on these 2 cores) that the row reaches:

* ``eval``: one ConvNet-128 trained on an IPC-10 set (a class-balanced random subset) for 300 epochs with DSA by
  the reference schedule (301 epochs, lr decay), then tested on all 10 000 test images — wall time of
  ``jaxdistill.evaluate.evaluate`` from the call to the result, compilation included (reference ≈ 89 s);
* ``dm256`` / ``dm64``: one DM iteration (IPC 10, 256 / 64 real images per class, DSA) of the distillation loop,
  steady state after compilation (reference 3.85 s / 0.86–0.9 s; bar 0.6 × / 0.8 ×);
* ``dc1``: one DC iteration at IPC 1 (64 real images per class; an outer iteration = one image update and the
  inner network training), steady state (reference 2.4 s).

* ``dc10``: one DC outer iteration at IPC 10 (outer loop 10 image updates / inner 50, 64 real images per class),
  steady state (reference ≈ 217 s);
* ``mtt10``: one MTT iteration (IPC 10, N 20, M 2, batch_syn 100, ConvNet-128 student, DSA), steady state, on a
  one-expert buffer of the student's initial parameters (the time does not depend on the values; reference
  ≈ 28 s);
* ``expert_epoch``: one MTT expert epoch (ConvNet-128, SGD, DSA, batch 256) on all 60 000 training images,
  wall time of ``experts.train_experts`` for one expert and one epoch, compilation and the two test passes
  included (reference ≈ 4.8 min);
* ``startup``: seconds from the command ``python -m experiments.distill --method dm --ipc 10`` (256 real/class)
  to the end of its first distillation step (``startup_seconds`` of metrics.json: interpreter, imports, data,
  set-up, compilation, the step), run twice against one persistent compilation cache folder: ``cold`` (empty
  folder, the first run on a machine) and ``warm`` (the second run; the row's seconds). No reference figure:
  the bar is 30 s (issue), held by both.

* ``eval20`` (accelerators only): the evaluation of 20 such networks in one program (the vmapped strategy),
  with the fraction of the GPU's fp32 and TF32 tensor-core peaks (model-FLOP utilisation).

On a GPU (``benchmarks/gpu.sh``) the fractions use the device's datasheet peaks (:data:`GPU_PEAKS_GFLOPS`) and
the reference ratios compare a GPU with the reference's 2-core CPU (informative only). Run it alone on an idle machine (``python -m benchmarks.run --only speed``): the rows record the load average.
"""
from __future__ import annotations

import time

from benchmarks import common

PEAK_GFLOPS = 157.0  # fp32 peak of the 2-core benchmark machine (issue "speed where users wait")
# Dense fp32 (non-tensor-core) and TF32 tensor-core peaks of the GPUs the device tool lends (NVIDIA H100 SXM /
# H200 datasheets: 67 TFLOP/s FP32, 494.7 TFLOP/s TF32 without sparsity); XLA uses TF32 for float32 matmuls and
# convolutions at JAX's default precision, so the row prints the fraction of both.
GPU_PEAKS_GFLOPS = {"H100": (67_000.0, 494_700.0), "H200": (67_000.0, 494_700.0)}
EVAL_MODELS_ACCELERATOR = 20


def peak_gflops():
  """``(fp32 peak, tensor-core peak or None)`` in GFLOP/s of the default device: the CPU figure above, a known GPU's
  datasheet figures, or ``(None, None)`` for an unknown accelerator."""
  import jax
  device = jax.devices()[0]
  if device.platform == "cpu":
    return PEAK_GFLOPS, None
  kind = getattr(device, "device_kind", "")
  for name, peaks in GPU_PEAKS_GFLOPS.items():
    if name in kind:
      return peaks
  return None, None
REFERENCE = {"eval": 89.0, "dm256": 3.85, "dm64": 0.88, "dc1": 2.4, "dc10": 217.0, "mtt10": 28.0,
             "expert_epoch": 288.0}
BAR = {"eval": 0.8, "dm256": 0.6, "dm64": 0.8, "dc1": 0.8, "dc10": 0.8, "mtt10": 0.8, "expert_epoch": 0.8}
ROWS = tuple(REFERENCE)


def _flops(fn, *args) -> float:
  """FLOPs XLA counts for the compiled ``jax.jit(fn)(*args)``."""
  import jax
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


def eval_row(quick: bool, num_models: int = 1):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdistill import data, evaluate, models, training
  from jaxdistill.augment import default_params

  width, epochs, test = (16, 4, 500) if quick else (128, 300, None)
  x, y, spec = data.load(common.DATASET, "train")
  tx, ty, _ = data.load(common.DATASET, "test")
  if test:
    tx, ty = tx[:test], ty[:test]
  pos = np.asarray(data.random_subset(jax.random.PRNGKey(0), y, spec.num_classes, 10)).reshape(-1)
  images, labels = x[pos], y[pos]
  dsa = default_params()
  start = time.perf_counter()
  result = evaluate.evaluate(images, labels, "convnet", jax.random.PRNGKey(1), num_models=num_models, epochs=epochs,
                             test_images=tx, test_labels=ty, num_classes=spec.num_classes, dsa=dsa,
                             model_kwargs={"width": width}, progress=False)
  seconds = time.perf_counter() - start
  model = models.get_model("convnet", spec.num_classes, x.shape[1:], width=width)
  tx_ = training.sgd(0.01)
  state = training.init_state(model, jax.random.PRNGKey(0), x.shape[1:], tx_)
  step_flops = _flops(lambda s, a, b, k: training.train_step(model, tx_, s, a, b, k, dsa=dsa, op_index=0)[0],
                      state, jnp.asarray(images), jnp.asarray(labels), jax.random.PRNGKey(0))
  test_flops = _flops(lambda v, a, b: training.accuracy(model, v, a, b), state.variables, jnp.asarray(tx),
                      jnp.asarray(ty))
  runs, _ = training.reference_schedule(epochs)
  flops = (runs * step_flops + test_flops) * num_models  # 100 images: one step per epoch
  what = (f"one ConvNet-{width}" if num_models == 1
          else f"{num_models} ConvNet-{width}s (one program on accelerators)")
  return seconds, flops, {"test_accuracy_mean": result.mean,
                          "protocol": f"{what}, IPC-10 random subset, {epochs} epochs (+1) with DSA, "
                                      f"reference schedule, test on {len(ty)} images; wall time incl. compile"}


def loop_row(method: str, real_per_class: int, ipc: int, quick: bool):
  import jax
  import jax.numpy as jnp

  from jaxdistill import data, loop, objectives, synthetic
  from jaxdistill.objectives import RealBatch

  width = 16 if quick else 128
  x, y, spec = data.load(common.DATASET, "train[:2000]" if quick else "train")
  nc = spec.num_classes
  cfg = objectives.default_config(method, width=width)
  obj = objectives.make_objective(method, cfg, num_classes=nc, image_shape=x.shape[1:], ipc=ipc)
  key = jax.random.PRNGKey(0)
  syn = synthetic.init_pixels(key, "real", x, y, nc, ipc)
  iterations = 3 if quick else 6
  lc = loop.LoopConfig(iterations=iterations, real_per_class=real_per_class,
                       lr_img=objectives.method_defaults(method).lr_img)
  result = loop.distill(obj, synthetic.PIXELS, syn, x, y, nc, jax.random.PRNGKey(1), lc, progress=False)
  per_update = result.seconds_per_iteration
  updates = 1
  if method in ("dc", "dsa"):
    updates = objectives.gradient_matching.default_loops(ipc)[0] if cfg.outer_loop is None else cfg.outer_loop
  real = RealBatch(jnp.zeros((nc, real_per_class) + x.shape[1:]),
                   jnp.broadcast_to(jnp.arange(nc)[:, None], (nc, real_per_class)))
  batch = synthetic.PIXELS.render(syn)
  state = obj.init(key)
  flops = _flops(lambda images: jax.grad(lambda im: obj.loss(state, batch._replace(images=im), real, key)[0])(images),
                 batch.images) * updates
  return per_update * updates, flops, {
      "protocol": f"{method} IPC {ipc}, {real_per_class} real/class, ConvNet-{width}, "
                  f"{'DSA' if getattr(cfg, 'dsa', False) else 'no augmentation'}, one iteration "
                  f"({updates} image update(s){' + inner training' if method == 'dc' else ''}), steady state, "
                  f"mean of {iterations - 1} after compile; FLOPs: the image-gradient program"
                  f"{' (inner training excluded)' if method == 'dc' else ''}"}


def mtt_row(quick: bool):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdistill import data, experts, loop, models, synthetic
  from jaxdistill.objectives import RealBatch
  from jaxdistill.objectives import trajectory_matching as tm

  width, steps, ipc, batch_syn = (16, 4, 2, 10) if quick else (128, 20, 10, 100)
  x, y, spec = data.load(common.DATASET, "train[:2000]" if quick else "train[:10000]")
  nc, shape = spec.num_classes, x.shape[1:]
  cfg = tm.TrajectoryMatchingConfig(arch="convnet", width=width, syn_steps=steps, expert_epochs=2,
                                    max_start_epoch=1, batch_syn=batch_syn)
  model = models.get_model("convnet", nc, shape, width=width)
  theta = experts.flatten(models.init_variables(model, jax.random.PRNGKey(0), shape)["params"])[0]
  traj = np.stack([theta, theta * 0.99, theta * 0.98])[None].astype(np.float32)  # [1 expert, 3 epochs, P]
  obj = tm.make_trajectory_matching(cfg, num_classes=nc, image_shape=shape, ipc=ipc, buffer=traj)
  syn = synthetic.init_pixels(jax.random.PRNGKey(1), "real", x, y, nc, ipc, learn_lr=cfg.lr_init)
  iterations = 3 if quick else 4
  lc = loop.LoopConfig(iterations=iterations, real_per_class=1, lr_img=1000.0, param_lrs=cfg.param_lrs())
  result = loop.distill(obj, synthetic.PIXELS, syn, x, y, nc, jax.random.PRNGKey(2), lc, progress=False)
  batch = synthetic.PIXELS.render(syn)
  state, key = obj.init(jax.random.PRNGKey(3)), jax.random.PRNGKey(4)
  real = RealBatch(jnp.zeros((nc, 1) + shape), jnp.broadcast_to(jnp.arange(nc)[:, None], (nc, 1)))
  flops = _flops(lambda images: jax.grad(lambda im: obj.loss(state, batch._replace(images=im), real, key,
                                                             obj.data)[0])(images), batch.images)
  return result.seconds_per_iteration, flops, {
      "protocol": f"MTT IPC {ipc}, N {steps}, M 2, batch_syn {batch_syn}, ConvNet-{width} student, DSA, unroll "
                  f"{'straight-line' if cfg.unroll in (None, True) else 'scan'} (the CPU default), steady state, "
                  f"mean of {iterations - 1} after compile"}


def expert_epoch_row(quick: bool):
  import tempfile

  import jax
  import jax.numpy as jnp

  from jaxdistill import data, experts, models, training
  from jaxdistill.augment import default_params

  width, split = (16, "train[:2000]") if quick else (128, "train")
  x, y, spec = data.load(common.DATASET, split)
  tx, ty, _ = data.load(common.DATASET, "test")
  cfg = experts.ExpertConfig(arch="convnet", width=width, num_experts=1, experts_per_shard=1, epochs=1)
  with tempfile.TemporaryDirectory(prefix="jaxdistill_expert_epoch_") as out:
    meta = experts.train_experts(cfg, x, y, tx, ty, spec.num_classes, out, dataset=common.DATASET, split=split,
                                 progress=False)
  model = models.get_model("convnet", spec.num_classes, x.shape[1:], width=width)
  sgd = training.sgd(0.01, momentum=0.0, weight_decay=0.0)
  state = training.init_state(model, jax.random.PRNGKey(0), x.shape[1:], sgd)
  bs = cfg.batch_size
  step_flops = _flops(lambda s, a, b, k: training.train_step(model, sgd, s, a, b, k, dsa=default_params(),
                                                             op_index=0)[0],
                      state, jnp.asarray(x[:bs]), jnp.asarray(y[:bs]), jax.random.PRNGKey(0))
  test_flops = _flops(lambda v, a, b: training.accuracy(model, v, a, b), state.variables, jnp.asarray(tx),
                      jnp.asarray(ty))
  steps = -(-len(y) // bs)
  return meta["seconds"], steps * step_flops + 2 * test_flops, {
      "protocol": f"one expert ConvNet-{width}, one epoch of {len(y)} images, SGD 0.01 no momentum, batch {bs}, "
                  f"DSA; wall time of experts.train_experts incl. compile and the test passes at epochs 0 and 1",
      "expert_test_accuracy": meta["test_accuracy_mean"][-1]}


STARTUP_BAR_SECONDS = 30.0


def startup_row(quick: bool):
  """Cold and warm start-up of the DM CLI against one compilation-cache folder (module docstring)."""
  import json
  import os
  import subprocess
  import sys
  import tempfile

  real = 16 if quick else 256
  with tempfile.TemporaryDirectory(prefix="jaxdistill_startup_") as tmp:
    cache = os.path.join(tmp, "xla")
    seconds = {}
    for run in ("cold", "warm"):
      out = os.path.join(tmp, run)
      cmd = [sys.executable, "-m", "experiments.distill", "--method", "dm", "--ipc", "10", "--iterations", "2",
             "--real-per-class", str(real), "--eval-models", "1", "--eval-epochs", "1", "--test-size", "100",
             "--quiet", "--compile-cache", cache, "--out", out]
      if quick:
        cmd += ["--width", "16"]
      subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
      with open(os.path.join(out, "metrics.json")) as f:
        seconds[run] = json.load(f)["startup_seconds"]
    entries = len(os.listdir(cache))
  return seconds["warm"], float("nan"), {
      "startup_cold_seconds": seconds["cold"], "startup_warm_seconds": seconds["warm"],
      "compile_cache_entries": entries,
      "protocol": f"python -m experiments.distill --method dm --ipc 10 --real-per-class {real} (ConvNet-"
                  f"{16 if quick else 128}, DSA): command to the end of the first distillation step, cold (empty "
                  f"compilation cache) {seconds['cold']:.1f} s, warm (second run, same cache) "
                  f"{seconds['warm']:.1f} s; bar {STARTUP_BAR_SECONDS:.0f} s"}


def run(quick: bool = False, select=None):
  import jax
  on_cpu = jax.default_backend() == "cpu"
  peak, tensor_peak = peak_gflops()
  for name in ROWS + ("startup", "eval20"):
    if select is not None and not select(name, None):
      continue
    if name == "eval20" and on_cpu:
      continue  # 20 networks one after another on 2 cores: 40 min of the same work the eval row times
    if name == "eval":
      seconds, flops, extra = eval_row(quick)
    elif name == "eval20":
      seconds, flops, extra = eval_row(quick, num_models=EVAL_MODELS_ACCELERATOR)
      yield common.row("speed", name, None, seconds_per_iteration=seconds, reference_seconds=None,
                       ratio_to_reference=None, gflop=round(flops / 1e9, 1),
                       fraction_of_peak=None if peak is None else round(flops / 1e9 / seconds / peak, 3),
                       fraction_of_tensor_peak=(None if tensor_peak is None
                                                else round(flops / 1e9 / seconds / tensor_peak, 4)),
                       quick=quick, **extra)
      continue
    elif name in ("dm256", "dm64"):
      seconds, flops, extra = loop_row("dm", 16 if quick else int(name[2:]), 10, quick)
    elif name in ("dc1", "dc10"):
      seconds, flops, extra = loop_row("dc", 16 if quick else 64, int(name[2:]), quick)
    elif name == "mtt10":
      seconds, flops, extra = mtt_row(quick)
    elif name == "startup":
      seconds, _, extra = startup_row(quick)
      yield common.row("speed", name, None, seconds_per_iteration=seconds, reference_seconds=None,
                       ratio_to_reference=None, bar_seconds=STARTUP_BAR_SECONDS,
                       meets_bar=bool(max(extra["startup_cold_seconds"], seconds) <= STARTUP_BAR_SECONDS),
                       quick=quick, **extra)
      continue
    else:
      seconds, flops, extra = expert_epoch_row(quick)
    ratio = seconds / REFERENCE[name]
    if not on_cpu:
      extra = dict(extra, fraction_of_tensor_peak=(None if tensor_peak is None
                                                   else round(flops / 1e9 / seconds / tensor_peak, 4)))
    yield common.row("speed", name, None, seconds_per_iteration=seconds,
                     reference_seconds=None if quick else REFERENCE[name],
                     ratio_to_reference=None if quick else round(ratio, 3),
                     bar_ratio=BAR[name], meets_bar=None if quick else bool(ratio <= BAR[name]),
                     gflop=round(flops / 1e9, 1),
                     fraction_of_peak=None if peak is None else round(flops / 1e9 / seconds / peak, 3),
                     quick=quick, **extra)
