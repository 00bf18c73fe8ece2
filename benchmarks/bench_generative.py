"""Generative and factorised parameterisations at equal storage on Fashion-MNIST (ConvNet, DM objective).

Rows (``run(quick)`` yields them as they are measured), IPC 1 and 10, every method held to the storage of the IPC-``k`` pixel
set (``C · k · 28 · 28`` floats; ``storage_floats`` in each row):

* ``dm`` — pixels (real init);
* ``glad_dm`` — GLaD through a *random* style generator (stored as a seed, so only latents count): the
  feature map after layer 1 (7×7×8) plus the 5 W⁺ codes after it (w 64) = 712 floats per image;
* ``gendm`` — a small conv decoder trained with DM (fresh z each step), evaluated on ``k`` sampled images
  per class;
* ``haba_dm`` — bases + hallucinators (IPC 1: 14×14 bases, 3 per class, 5 hallucinators; IPC 10: full-size
  bases, 9 per class, 2 hallucinators so the evaluated set stays within one batch), all ``B × H`` images
  evaluated.

All use the same reduced distillation budget (stated in ``protocol``) and are evaluated under
:data:`benchmarks.common.EVAL`; seconds per iteration are steady-state (after compilation) on this machine.
"""
from __future__ import annotations

import dataclasses
import sys

import jax

from benchmarks import common
from experiments.generative import max_bases
from jaxdistill import generators as G
from jaxdistill import loop, objectives, synthetic

SHAPE = (28, 28, 1)


def _settings(quick: bool):
  if quick:
    return dict(ipcs=(1,), iterations=3, real_per_class=8, width=8, train_size=2000)
  return dict(ipcs=(1, 10), iterations=60, real_per_class=16, width=32, train_size=None)


def _gendm_generator(ipc: int):
  if ipc < 10:
    return G.make_generator("decoder", widths=(8, 8, 4), z_dim=8, embed_dim=4)
  return G.make_generator("decoder", widths=(24, 24, 16), z_dim=16, embed_dim=8)


def _methods(ipc: int, data, key):
  """``[(name, parameterisation, state, loop overrides, description)]`` for one IPC."""
  x, y, nc = data.train_x, data.train_y, data.num_classes
  out = []
  syn = synthetic.init_pixels(key, "real", x, y, nc, ipc)
  out.append(("dm", synthetic.PIXELS, syn, {}, "pixels, real init, lr 1"))
  gen = G.make_generator("style", widths=(8, 32, 16), z_dim=64, w_dim=64)
  gparams = G.init_generator(gen, jax.random.fold_in(key, 7))
  cfg = synthetic.GLaDConfig(space="features", layer=1, chunk=50)
  syn = synthetic.init_glad(key, gen, gparams, cfg, nc, ipc)
  out.append(("glad_dm", synthetic.glad_parameterisation(gen, cfg), syn,
              {"param_lrs": {"features": 1.0, "codes": 0.01}},
              "GLaD, random style G widths (8,32,16) w64, F_1 7x7x8 + 5 W+ codes, lr F 1 / codes 0.01"))
  dec = _gendm_generator(ipc)
  gcfg = synthetic.GenDMConfig(train_per_class=ipc, samples_per_class=ipc)
  syn = synthetic.init_gendm(key, dec, gcfg, nc, ipc, SHAPE)
  out.append(("gendm", synthetic.gendm_parameterisation(dec, gcfg, nc), syn,
              {"optimizer": "adam", "lr_img": 1e-2},
              f"GenDM, decoder widths {dec.config.widths} z{dec.config.z_dim}, Adam 1e-2, {ipc}/class per step, "
              f"eval on {ipc}/class sampled"))
  hals = 5 if ipc < 10 else 2  # keeps the evaluated set within one 256-image batch (CPU evaluation cost)
  hcfg = synthetic.HaBaConfig(hallucinators=hals, width=8, basis_size=14 if ipc < 10 else 0)
  hcfg = dataclasses.replace(hcfg, bases_per_class=max_bases(hcfg, nc, ipc, SHAPE))
  syn = synthetic.init_haba(key, hcfg, x, y, nc, ipc)
  out.append(("haba_dm", synthetic.haba_parameterisation(hcfg, nc, SHAPE), syn,
              {"param_lrs": {"hallucinators": 0.01}},
              f"HaBa, {hcfg.bases_per_class} bases/class of {hcfg.basis_size or 28}px x {hals} hallucinators "
              "(width 8), lr bases 1 / hallucinators 0.01"))
  return out


def run(quick: bool = False, select=None):
  """Yields the benchmark rows (see module docstring); ``select(method, ipc)`` (None: all) picks rows."""
  s = _settings(quick)
  select = select or (lambda method, ipc: True)
  data = common.load_data(quick, s["train_size"])
  evaluator = common.make_evaluator(data, quick)
  eval_desc = common.eval_protocol(quick).describe()
  for ipc in s["ipcs"]:
    key = jax.random.PRNGKey(ipc)
    budget = synthetic.storage_budget(data.num_classes, ipc, SHAPE)
    for name, param, syn, over, desc in _methods(ipc, data, key):
      if not select(name, ipc):
        continue
      storage = int(param.storage(syn))
      assert storage <= budget, (name, storage, budget)
      obj = objectives.make_objective("dm", objectives.default_config("dm", width=s["width"]),
                                      num_classes=data.num_classes, image_shape=SHAPE, ipc=ipc)
      lc = loop.LoopConfig(**{**dict(iterations=s["iterations"], real_per_class=s["real_per_class"], lr_img=1.0),
                              **over})
      out = loop.distill(obj, param, syn, data.train_x, data.train_y, data.num_classes, key, lc, progress=False)
      batch = param.render(out.state.syn)
      res = evaluator(batch, jax.random.fold_in(key, 2))
      yield common.row(
          "generative", name, ipc, result=res, seconds_per_iteration=out.seconds_per_iteration,
          protocol=(f"{desc}; DM objective, ConvNet-{s['width']} embedding, {s['iterations']} iterations, "
                    f"{s['real_per_class']} real/class, SGD mom 0.5 unless stated"), eval_protocol=eval_desc,
          storage_floats=storage, storage_budget_floats=budget, eval_images=int(batch.images.shape[0]),
          final_loss=float(out.losses[-1]))


if __name__ == "__main__":
  import json
  for r in run(quick="--quick" in sys.argv):
    print(json.dumps(r))
