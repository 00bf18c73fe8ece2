"""Benchmarks of the matching methods (DC, DSA, DM, DM-L1) on Fashion-MNIST with a ConvNet.

Rows (``run(quick) -> list[dict]``):

* accuracy rows: IPC 1 and 10, each method distilled with a reduced CPU protocol (stated in ``protocol``)
  next to a random real subset under the same evaluation;
* a DM speed row at the paper's per-iteration settings (IPC 10, 256 real images per class, DSA, ConvNet-128):
  steady-state seconds per iteration (after compilation) vs the reference PyTorch 3.85 s/iter measured on the
  same kind of 2-core machine, and the share of the step spent in the embedding network's forward on the real
  batch (convolutions dominate it).
"""
from __future__ import annotations

import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import loop, models, objectives, synthetic
from jaxdistill.augment import default_params
from jaxdistill.data import load, random_subset
from jaxdistill.data.sampling import class_index, sample_balanced

REFERENCE_DM_SECONDS = 3.85


def _peak_mb() -> float:
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def _time(fn, repeats: int):
  jax.block_until_ready(fn())  # compile
  t = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t) / repeats


def dm_speed(ipc: int = 10, real_per_class: int = 256, width: int = 128, repeats: int = 5, train_size=None):
  """Steady-state seconds per DM iteration and seconds of the real-batch embedding forward alone."""
  split = "train" if train_size is None else f"train[:{train_size}]"
  x, y, spec = load("fashion_mnist", split)
  nc = spec.num_classes
  cfg = objectives.default_config("dm", width=width)
  obj = objectives.make_objective("dm", cfg, num_classes=nc, image_shape=x.shape[1:], ipc=ipc)
  key = jax.random.PRNGKey(0)
  syn = synthetic.init_pixels(key, "real", x, y, nc, ipc)
  lc = loop.LoopConfig(iterations=1, real_per_class=real_per_class, lr_img=1.0)
  index = class_index(y, nc)
  step = loop.make_step(obj, synthetic.PIXELS, lc, index, nc)
  state = loop.init_state(obj, syn, key, lc)
  real_x = jnp.asarray(x)
  holder = [state]

  def one_step():
    holder[0], loss = step(holder[0], key, real_x)
    return loss

  seconds = _time(one_step, repeats)
  model = models.get_model("convnet", nc, x.shape[1:], width=width)
  variables = models.init_variables(model, key, x.shape[1:])
  pos = sample_balanced(key, index, real_per_class).reshape(-1)
  batch = real_x[pos]
  fwd = jax.jit(lambda v, b: model.apply(v, b, train=True, embed=True))
  fwd_seconds = _time(lambda: fwd(variables, batch), repeats)
  return {"seconds_per_iteration": seconds, "real_embed_forward_seconds": fwd_seconds,
          "conv_forward_share": fwd_seconds / seconds}


def _protocol(quick: bool):
  if quick:
    return dict(train_size=2000, test_size=500, width=16, eval_width=16, eval_models=3, eval_epochs=20,
                real_per_class=16, ipcs=(1,), iters={"dc": 2, "dsa": 2, "dm": 5, "dm_l1": 5})
  return dict(train_size=None, test_size=None, width=128, eval_width=128, eval_models=3, eval_epochs=300,
              real_per_class=64, ipcs=(1, 10), iters={"dc": 100, "dsa": 100, "dm": 200, "dm_l1": 200})


def run(quick: bool = False):
  """Benchmark rows (see module docstring)."""
  p = _protocol(quick)
  split = "train" if p["train_size"] is None else f"train[:{p['train_size']}]"
  x, y, spec = load("fashion_mnist", split)
  tx, ty, _ = load("fashion_mnist", "test")
  if p["test_size"]:
    tx, ty = tx[:p["test_size"]], ty[:p["test_size"]]
  nc = spec.num_classes
  dsa = default_params(digits=spec.digits)
  evaluator = loop.make_evaluator(tx, ty, nc, "convnet", p["eval_models"], p["eval_epochs"], dsa=dsa,
                                  model_kwargs={"width": p["eval_width"]})
  rows = []
  for ipc in p["ipcs"]:
    key = jax.random.PRNGKey(ipc)
    pos = random_subset(key, y, nc, ipc).reshape(-1)
    res = evaluator(synthetic.SyntheticBatch(x[pos], y[pos]), jax.random.fold_in(key, 1))
    base = {"benchmark": "matching", "dataset": "fashion_mnist", "ipc": ipc}
    eval_desc = (f"eval ConvNet-{p['eval_width']} x{p['eval_models']} models, {p['eval_epochs']} epochs, DSA, "
                 f"test {len(ty)}")
    rows.append({**base, "method": "random", "test_accuracy_mean": res.mean, "test_accuracy_std": res.std,
                 "seconds_per_iteration": None, "peak_memory_mb": _peak_mb(), "protocol": eval_desc})
    for method, iters in p["iters"].items():
      d = objectives.method_defaults(method)
      cfg = objectives.default_config(method, width=p["width"])
      obj = objectives.make_objective(method, cfg, num_classes=nc, image_shape=x.shape[1:], ipc=ipc)
      syn = synthetic.init_pixels(key, d.init, x, y, nc, ipc)
      lc = loop.LoopConfig(iterations=iters, real_per_class=p["real_per_class"], lr_img=d.lr_img)
      out = loop.distill(obj, synthetic.PIXELS, syn, x, y, nc, key, lc, progress=False)
      res = evaluator(synthetic.PIXELS.render(out.state.syn), jax.random.fold_in(key, 2))
      rows.append({**base, "method": method, "test_accuracy_mean": res.mean, "test_accuracy_std": res.std,
                   "seconds_per_iteration": out.seconds_per_iteration, "peak_memory_mb": _peak_mb(),
                   "protocol": (f"{iters} iterations, ConvNet-{p['width']} matching net, {p['real_per_class']} "
                                f"real/class, init {d.init}, lr_img {d.lr_img}; {eval_desc}")})
  speed = dm_speed(width=16 if quick else 128, real_per_class=16 if quick else 256,
                   repeats=2 if quick else 5, train_size=p["train_size"])
  rows.append({"benchmark": "matching_speed", "method": "dm", "dataset": "fashion_mnist", "ipc": 10,
               "test_accuracy_mean": None, "test_accuracy_std": None,
               "seconds_per_iteration": speed["seconds_per_iteration"], "peak_memory_mb": _peak_mb(),
               "reference_seconds_per_iteration": None if quick else REFERENCE_DM_SECONDS,
               "real_embed_forward_seconds": speed["real_embed_forward_seconds"],
               "conv_forward_share": speed["conv_forward_share"],
               "protocol": ("DM step at paper settings: IPC 10, 256 real/class, DSA, ConvNet-128, steady state "
                            "after compile, mean of 5 steps" if not quick else "quick: width 16, 16 real/class")})
  return rows


if __name__ == "__main__":
  import json
  if len(sys.argv) > 1 and sys.argv[1] == "speed":
    print(json.dumps(dm_speed(repeats=3)))
  else:
    for r in run(quick="--quick" in sys.argv):
      print(json.dumps(r))
