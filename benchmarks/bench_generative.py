"""Generative and factorised parameterisations on Fashion-MNIST (ConvNet, DM objective).

Rows (``run(quick)`` yields them as they are measured), IPC 1 and 10, held to the storage of the IPC-``k`` pixel
set (``C · k · 28 · 28`` floats; ``storage_floats`` in each row) except ``glad_prior``:

* ``dm`` — pixels (real init);
* ``glad_dm`` — GLaD through a *random* style generator (stored as a seed, so only latents count): the
  feature map after layer 1 (7×7×8) plus the 5 W⁺ codes after it (w 64) = 712 floats per image (GLaD's ablation);
* ``glad_prior`` — GLaD through the GAN-trained prior shipped in ``jaxdistill/generators/priors`` (F_1 7×7×64 +
  5 W⁺ codes, :data:`GLAD_PRIOR`); storage counts the latents and the generator, which is not held to the
  budget (GLaD's claim is accuracy and transfer through a shared prior, not storage);
* ``gendm`` — a conv decoder within the budget, started from the GAN-trained decoder of that shape shipped in
  the priors folder, trained with DM on fresh z each step and evaluated on :func:`gendm_samples` ``× k``
  sampled images per class (same storage: the generator);
* ``haba_dm`` — bases + hallucinators (IPC 1: 14×14 bases, 3 per class, 5 hallucinators; IPC 10: full-size
  bases, 9 per class, 2 hallucinators so the evaluated set stays within one batch), trained as HaBa's code does
  (two distinct hallucinators per basis per step, the adversarial contrastive term with a ConvNet-128
  extractor), all ``B × H`` images evaluated.

All use the same reduced distillation budget (stated in ``protocol``) and are evaluated under
:data:`benchmarks.common.EVAL`; seconds per iteration are steady-state (after compilation) on this machine.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys

import jax

from benchmarks import common
from experiments.generative import max_bases
from jaxdistill import generators as G
from jaxdistill import loop, objectives, synthetic
from jaxdistill.augment import default_params

SHAPE = (28, 28, 1)


def _settings(quick: bool):
  if quick:
    return dict(ipcs=(1,), iterations=3, real_per_class=8, width=8, train_size=2000)
  return dict(ipcs=(1, 10), iterations=60, real_per_class=16, width=32, train_size=None)


def _gendm_generator(ipc: int):
  if ipc < 10:
    return G.make_generator("decoder", widths=(8, 8, 4), z_dim=8, embed_dim=4)
  return G.make_generator("decoder", widths=(32, 32, 24), z_dim=16, embed_dim=8)


# GLaD through the trained prior (`--method glad --preset cpu`; jaxdistill/presets/glad.json cites these).
# F_1 with lr 1 / 0.01: at IPC 1 the best of the pilot in benchmarks/results/glad_prior_pilot (GLaD's DM lr 10
# for F_n: 65.7 %, lr 1: 69.3 %; W+ codes alone: 67.3 %; F_2: 64.3 %).
GLAD_PRIOR = {"space": "features", "layer": 1, "lr_features": 1.0, "lr_codes": 0.01}
UNBUDGETED = ("glad_prior",)
# GenDM draws gendm_samples(ipc) x IPC images per class per step and is evaluated on as many samples (the same
# storage: the generator). IPC 1: 10x (1x: 49.9 %, 10x: 67.7 %, benchmarks/results/gendm_ablation); IPC 10: 3x
# (1x: 72.5 %; 10x would train the evaluation networks on 1 000 images, ~20 min per row here).
def gendm_samples(ipc: int) -> int:
  return 10 if ipc < 10 else 3
NAMES = ("dm", "glad_dm", "glad_prior", "gendm", "haba_dm")  # the rows, in order  # rows whose storage includes a shared trained generator


def _with_contrastive(hcfg, num_classes, digits, objective):
  """``objective`` plus HaBa's adversarial contrastive term (DSA on the extractor's pairs, as the reference)."""
  aug = synthetic.haba.dsa_augment(default_params(digits=digits))
  return objectives.with_regulariser(objective, synthetic.contrastive_regulariser(hcfg, num_classes, SHAPE, aug))


def _glad_space(gen, cfg) -> str:
  if cfg.space != "features":
    return f"{cfg.space} codes"
  h, w, c = gen.config.feature_shape(cfg.layer)
  return f"F_{cfg.layer} {h}x{w}x{c} + {gen.config.num_ws - cfg.layer} W+ codes"


def _methods(ipc: int, data, key, only=None):
  """``[(name, parameterisation, state, loop overrides, description)]`` for one IPC (``only``: just that row's
  entry, the others are not built)."""
  x, y, nc = data.train_x, data.train_y, data.num_classes
  out = []
  want = lambda name: only in (None, name)  # noqa: E731
  if want("dm"):
    syn = synthetic.init_pixels(key, "real", x, y, nc, ipc)
    out.append(("dm", synthetic.PIXELS, syn, {}, "pixels, real init, lr 1"))
  if want("glad_dm"):
    gen = G.make_generator("style", widths=(8, 32, 16), z_dim=64, w_dim=64)
    gparams = G.init_generator(gen, jax.random.fold_in(key, 7))
    cfg = synthetic.GLaDConfig(space="features", layer=1, chunk=50)
    syn = synthetic.init_glad(key, gen, gparams, cfg, nc, ipc)
    out.append(("glad_dm", synthetic.glad_parameterisation(gen, cfg), syn,
                {"param_lrs": {"features": 1.0, "codes": 0.01}},
                "GLaD, random style G widths (8,32,16) w64, F_1 7x7x8 + 5 W+ codes, lr F 1 / codes 0.01"))
  if want("glad_prior"):
    prior = G.trained_prior(common.DATASET)
    if prior:
      gen, gparams, _ = G.load_generator(prior)
      cfg = synthetic.GLaDConfig(space=GLAD_PRIOR["space"], layer=GLAD_PRIOR["layer"], chunk=50, count_generator=True)
      syn = synthetic.init_glad(key, gen, gparams, cfg, nc, ipc)
      lrs = {"features": GLAD_PRIOR["lr_features"], "codes": GLAD_PRIOR["lr_codes"]}
      out.append(("glad_prior", synthetic.glad_parameterisation(gen, cfg), syn, {"param_lrs": lrs},
                  f"GLaD, the trained prior (jaxdistill/generators/priors/{common.DATASET}.npz, "
                  f"{G.num_params(gparams)} floats), {_glad_space(gen, cfg)}, lr F {lrs['features']:g} / codes "
                  f"{lrs['codes']:g}; storage counts latents + G (not held to the pixel budget)"))
  if want("gendm"):
    dec = _gendm_generator(ipc)
    prior = G.trained_prior(common.DATASET, dec)  # the GAN-trained decoder of this shape (priors/README.md)
    k = gendm_samples(ipc)
    gcfg = synthetic.GenDMConfig(train_per_class=k * ipc, samples_per_class=k * ipc)
    syn = synthetic.init_gendm(key, dec, gcfg, nc, ipc, SHAPE,
                               gparams=None if prior is None else G.load_generator(prior)[1])
    lr = 1e-3 if prior else 1e-2
    start = f"from the GAN-trained prior {os.path.basename(prior)}" if prior else "from a random init"
    out.append(("gendm", synthetic.gendm_parameterisation(dec, gcfg, nc), syn,
                {"optimizer": "adam", "lr_img": lr, "objective_ipc": gcfg.train_per_class},
                f"GenDM, decoder widths {dec.config.widths} z{dec.config.z_dim} {start}, Adam {lr:g}, "
                f"{gcfg.train_per_class}/class per step, eval on {gcfg.samples_per_class}/class sampled"))
  if want("haba_dm"):
    hals = 5 if ipc < 10 else 2  # keeps the evaluated set within one 256-image batch (CPU evaluation cost)
    hcfg = synthetic.HaBaConfig(hallucinators=hals, width=8, basis_size=14 if ipc < 10 else 0)
    hcfg = dataclasses.replace(hcfg, bases_per_class=max_bases(hcfg, nc, ipc, SHAPE))
    syn = synthetic.init_haba(key, hcfg, x, y, nc, ipc)
    wrap = functools.partial(_with_contrastive, hcfg, nc, data.digits)
    out.append(("haba_dm", synthetic.haba_parameterisation(hcfg, nc, SHAPE), syn,
                {"param_lrs": {"hallucinators": 0.01}, "wrap": wrap, "objective_ipc": synthetic.train_images_per_class(hcfg)},
                f"HaBa, {hcfg.bases_per_class} bases/class of {hcfg.basis_size or 28}px x {hals} hallucinators "
                f"(width 8), {hcfg.pairs} pairs (2 distinct hallucinators per basis per step), adversarial "
                f"contrastive term {hcfg.contrastive:g} (extractor ConvNet-{hcfg.extractor_width}, DSA), lr bases 1 / "
                "hallucinators 0.01"))
  return out


def distill_set(name: str, ipc: int, data, quick: bool = False, key=None):
  """Distils the ``name`` row's set at ``ipc`` (the row's parameterisation and budget; key ``PRNGKey(ipc)``
  by default): ``{"batch", "state", "param", "seconds_per_iteration", "storage_floats", "final_loss",
  "protocol"}``, or None when ``name`` has no entry (e.g. ``glad_prior`` without a trained prior)."""
  s = _settings(quick)
  key = jax.random.PRNGKey(ipc) if key is None else key
  budget = synthetic.storage_budget(data.num_classes, ipc, SHAPE)
  for entry, param, syn, over, desc in _methods(ipc, data, key, only=name):
    if entry != name:
      continue
    storage = int(param.storage(syn))
    assert storage <= budget or name in UNBUDGETED, (name, storage, budget)
    over = dict(over)
    wrap = over.pop("wrap", None)
    obj = objectives.make_objective("dm", objectives.default_config("dm", width=s["width"]),
                                    num_classes=data.num_classes, image_shape=SHAPE,
                                    ipc=over.pop("objective_ipc", ipc))
    if wrap is not None:
      obj = wrap(obj)
    lc = loop.LoopConfig(**{**dict(iterations=s["iterations"], real_per_class=s["real_per_class"], lr_img=1.0),
                            **over})
    out = loop.distill(obj, param, syn, data.train_x, data.train_y, data.num_classes, key, lc, progress=False)
    return {"batch": param.render(out.state.syn), "state": out.state.syn, "param": param,
            "seconds_per_iteration": out.seconds_per_iteration, "storage_floats": storage,
            "final_loss": float(out.losses[-1]),
            "protocol": (f"{desc}; DM objective, ConvNet-{s['width']} embedding, {s['iterations']} iterations, "
                         f"{s['real_per_class']} real/class, SGD mom 0.5 unless stated")}
  return None


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
    for name in NAMES:
      if not select(name, ipc):
        continue
      made = distill_set(name, ipc, data, quick, key)
      if made is None:
        continue
      batch = made["batch"]
      res = evaluator(batch, jax.random.fold_in(key, 2))
      yield common.row(
          "generative", name, ipc, result=res, seconds_per_iteration=made["seconds_per_iteration"],
          protocol=made["protocol"], eval_protocol=eval_desc, storage_floats=made["storage_floats"],
          storage_budget_floats=budget, eval_images=int(batch.images.shape[0]), final_loss=made["final_loss"])


if __name__ == "__main__":
  import json
  for r in run(quick="--quick" in sys.argv):
    print(json.dumps(r))
