"""Foundation benchmark: random real subsets (IPC 1 / 10 / 50), the whole-training-set upper bound, and the
speed-up of the vmapped evaluation over training the same networks one after another.

Reduced CPU protocol (the papers evaluate ConvNet-128 for 300–1000 epochs; IPC 50 alone would take over an
hour here): evaluation networks are ConvNet-3 of **width 32** (instance norm, ReLU, avg-pool), **5 models**,
**300 epochs** at IPC 1 / 10 and **100 epochs** at IPC 50, SGD 0.01 momentum 0.9 wd 5e-4, lr × 0.1 at half,
batch 256, DSA, whole test split. The upper bound trains 2 such networks on all 60 000 training images for
**2 epochs** (lr decay at half). The
speed-up row trains 4 networks on a random IPC-10 set for 50 epochs, once as one vmapped program and once as
4 single-network programs (both compiled first; steady-state wall times compared).
"""
from __future__ import annotations

import time

import jax

from benchmarks import common
from jaxdistill import models
from jaxdistill.augment import default_params
from jaxdistill.data import random_subset
from jaxdistill.evaluate import EvalConfig, evaluate, train_models

WIDTH = 32


def _protocol(quick: bool):
  if quick:
    return dict(width=8, models=2, epochs={1: 4, 10: 4}, whole_epochs=1, whole_models=1, whole_size=2000,
                speed_models=2, speed_epochs=2)
  return dict(width=WIDTH, models=5, epochs={1: 300, 10: 300, 50: 100}, whole_epochs=2, whole_models=2,
              whole_size=None, speed_models=4, speed_epochs=50)


def _timed_training(images, labels, model, key, num_models, epochs, dsa, strategy="auto"):
  cfg = EvalConfig(epochs=epochs)
  start = time.perf_counter()
  jax.block_until_ready(train_models(images, labels, model, key, num_models, cfg, dsa, progress=False,
                                     strategy=strategy))
  return time.perf_counter() - start


def vmap_speedup(data, width, num_models, epochs, dsa):
  """Seconds to train ``num_models`` networks in one vmapped program vs one after another (each path run
  twice; the second, compiled, run is timed)."""
  pos = random_subset(jax.random.PRNGKey(7), data.train_y, data.num_classes, 10).reshape(-1)
  x, y = data.train_x[pos], data.train_y[pos]
  model = models.get_model("convnet", data.num_classes, x.shape[1:], width=width)
  key = jax.random.PRNGKey(3)
  for timed in (False, True):
    vm = _timed_training(x, y, model, key, num_models, epochs, dsa, strategy="vmap")
    seq = _timed_training(x, y, model, key, num_models, epochs, dsa, strategy="sequential")
  return vm, seq


def run(quick: bool = False):
  """Yields the rows (see module docstring)."""
  p = _protocol(quick)
  data = common.load_data(quick)
  dsa = default_params(digits=data.digits)
  kw = dict(test_images=data.test_x, test_labels=data.test_y, num_classes=data.num_classes, dsa=dsa,
            model_kwargs={"width": p["width"]}, progress=False)
  vm, seq = vmap_speedup(data, p["width"], p["speed_models"], p["speed_epochs"], dsa)
  yield common.row("foundation", "vmap_speedup", 10,
                   protocol=(f"{p['speed_models']} ConvNet-3 width {p['width']} on a random IPC-10 set, "
                             f"{p['speed_epochs']} epochs, DSA: one vmapped program vs one network at a "
                             "time (compiled; second run timed)"),
                   vmapped_seconds=vm, sequential_seconds=seq, speedup=seq / vm)
  for ipc, epochs in p["epochs"].items():
    protocol = (f"{p['models']} x ConvNet-3 width {p['width']}, {epochs} epochs, SGD 0.01 mom 0.9 wd 5e-4, "
                f"DSA, test {len(data.test_y)} images")
    key = jax.random.PRNGKey(100 + ipc)
    pos = random_subset(key, data.train_y, data.num_classes, ipc).reshape(-1)
    res = evaluate(data.train_x[pos], data.train_y[pos], "convnet", jax.random.fold_in(key, 1), p["models"],
                   epochs, **kw)
    yield common.row("foundation", "random", ipc, result=res, protocol=protocol,
                     eval_protocol=protocol, models_per_second=p["models"] / res.seconds)
  n = p["whole_size"] or len(data.train_y)
  res = evaluate(data.train_x[:n], data.train_y[:n], "convnet", jax.random.PRNGKey(9), p["whole_models"],
                 p["whole_epochs"], **kw)
  yield common.row("foundation", "whole_dataset", None, result=res,
                   protocol=(f"upper bound: {p['whole_models']} x ConvNet-3 width {p['width']} on all {n} "
                             f"training images, {p['whole_epochs']} epochs, DSA"),
                   eval_protocol="whole", models_per_second=p["whole_models"] / res.seconds)
