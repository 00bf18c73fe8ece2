"""Benchmarks of the matching methods (DC, DSA, DM, DM-L1) on Fashion-MNIST with a ConvNet.

Rows (``run(quick)`` yields them): IPC 1 and 10, each method distilled with a reduced CPU protocol (stated in
``protocol``) next to a random real subset under the same evaluation (:data:`benchmarks.common.EVAL`).
:func:`dm_speed` (used by :mod:`benchmarks.bench_dm_speed`) times a DM step at the paper's settings.
"""
from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import common
from jaxdistill import loop, models, objectives, synthetic
from jaxdistill.data import load, random_subset
from jaxdistill.data.sampling import class_index, sample_balanced

REFERENCE_DM_SECONDS = 3.85


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
    return dict(width=16, real_per_class=16, ipcs=(1,), iters={1: {"dc": 2, "dsa": 2, "dm": 5, "dm_l1": 5}})
  return dict(width=128, real_per_class=64, ipcs=(1, 10),
              iters={1: {"dm": 100, "dm_l1": 100, "dsa": 50, "dc": 50},
                     10: {"dm": 100, "dm_l1": 100, "dsa": 10, "dc": 10}},
              # DC/DSA start from noise in the papers; 10 image updates cannot train 100 images from noise.
              init={10: {"dc": "real", "dsa": "real"}},
              # DC/DSA's inner network training as a host loop of jitted SGD steps (same computation; XLA:CPU
              # runs the convolutions of the compiled inner loop ~12x slower).
              config={ipc: {"dc": {"host_inner": True}, "dsa": {"host_inner": True}} for ipc in (1, 10)})


def run(quick: bool = False, select=None):
  """Yields the accuracy rows (see module docstring); the DM speed row is :mod:`benchmarks.bench_dm_speed`.
  ``select(method, ipc) -> bool`` (None: all) picks the rows to measure."""
  p = _protocol(quick)
  select = select or (lambda method, ipc: True)
  data = common.load_data(quick)
  x, y, nc = data.train_x, data.train_y, data.num_classes
  evaluator = common.make_evaluator(data, quick)
  eval_desc = common.eval_protocol(quick).describe()
  for ipc in p["ipcs"]:
    key = jax.random.PRNGKey(ipc)
    if select("random", ipc):
      pos = random_subset(key, y, nc, ipc).reshape(-1)
      res = evaluator(synthetic.SyntheticBatch(x[pos], y[pos]), jax.random.fold_in(key, 1))
      yield common.row("matching", "random", ipc, result=res, protocol=eval_desc, eval_protocol=eval_desc)
    for method, iters in p["iters"][ipc].items():
      if not select(method, ipc):
        continue
      d = objectives.method_defaults(method)
      over = p.get("config", {}).get(ipc, {}).get(method, {})
      cfg = objectives.default_config(method, width=p["width"], **over)
      obj = objectives.make_objective(method, cfg, num_classes=nc, image_shape=x.shape[1:], ipc=ipc)
      init = p.get("init", {}).get(ipc, {}).get(method, d.init)
      syn = synthetic.init_pixels(key, init, x, y, nc, ipc)
      lc = loop.LoopConfig(iterations=iters, real_per_class=p["real_per_class"], lr_img=d.lr_img)
      out = loop.distill(obj, synthetic.PIXELS, syn, x, y, nc, key, lc, progress=False)
      res = evaluator(synthetic.PIXELS.render(out.state.syn), jax.random.fold_in(key, 2))
      loops = ""
      if method in ("dc", "dsa"):
        outer, inner = cfg.loops(ipc)
        loops = f" image updates (outer/inner loops {outer}/{inner})"
      yield common.row(
          "matching", method, ipc, result=res, seconds_per_iteration=out.seconds_per_iteration,
          published=common.published(method, ipc), eval_protocol=eval_desc,
          protocol=(f"{method}: {iters} iterations, ConvNet-{p['width']} matching net, {p['real_per_class']} "
                    f"real/class, init {init}, lr_img {d.lr_img}{loops}; {eval_desc}"))


if __name__ == "__main__":
  import json
  if len(sys.argv) > 1 and sys.argv[1] == "speed":
    print(json.dumps(dm_speed(repeats=3)))
  else:
    for r in run(quick="--quick" in sys.argv):
      print(json.dumps(r))
