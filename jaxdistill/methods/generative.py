"""Set-ups of the generative / factorised parameterisation methods: GLaD, GenDM, LatentDD and HaBa.

Each takes ``--objective`` (any registered objective: objectives only see images). The set-up records the
parameterisation's config, the generator and the storage budget in ``Built.metadata``; :func:`outputs` stores
the parameterisation's state in ``synthetic.npz`` (learnable arrays under their names, e.g. ``features`` /
``codes`` / ``bases`` / ``generator/...``, fixed ones under ``const/...``), so a GenDM run's file is also a
generator checkpoint (:func:`jaxdistill.generators.load_generator`). The flags they read are the
``"generative"`` family's (:mod:`jaxdistill.methods`).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from jaxdistill import generators as G
from jaxdistill import objectives, synthetic
from jaxdistill.methods.registry import Built, objective_name, setup_objective
from jaxdistill.synthetic import glad, haba

METHODS = ("glad", "gendm", "latentdd", "haba")
RANDOM = "random"  # gen_checkpoint value for a randomly initialised generator
# Generator sizes when no --gen-* flag is given: GLaD's style generator (a random one is stored as a seed),
# and GenDM's decoder small enough for the IPC-1 budget of a 28×28×1 set (7 840 floats).
DEFAULT_GEN = {"glad": ("style", {"widths": (64, 32, 16), "z_dim": 64, "w_dim": 64}),
               "gendm": ("decoder", {"widths": (8, 8, 4), "z_dim": 8, "embed_dim": 4})}
# The --gen-* flags and the generator config field each sets (an explicit one asks for a random G of that shape).
ARCH_FLAGS = (("gen_widths", "widths"), ("gen_z_dim", "z_dim"), ("gen_w_dim", "w_dim"),
              ("gen_mapping_layers", "mapping_layers"), ("gen_embed_dim", "embed_dim"))

# GLaD's learning rates per objective, (F_n, W+ codes): its --lr_img (the lr of the feature map) and --lr_w in
# GeorgeCazenavette/glad distill_dm.py (10, 0.01), distill_dc.py (1, 0.001; a DSA run) and distill_mtt.py
# (1e4, 10). In each the F_n lr is 10x the pixel lr of the method it wraps (DM 1, DSA 0.1, MTT 1000) and the codes'
# is 0.001x the F_n lr; other objectives get the same ratios (glad_lrs).
GLAD_LRS = {"dm": (10.0, 0.01), "dc": (1.0, 0.001), "dsa": (1.0, 0.001), "mtt": (1e4, 10.0), "tesla": (1e4, 10.0)}
GLAD_CODE_RATIO = 1e-3  # codes lr / F_n lr in every GLAD_LRS entry


def glad_lrs(objective: str, image_lr: float, lr_features=None, lr_codes=None):
  """GLaD's ``(F_n lr, codes lr)`` for ``objective``: explicit values win; else :data:`GLAD_LRS` (GLaD's code)
  for its objectives, ``10 x image_lr`` for the others; the codes default to ``0.001 x`` the F_n lr."""
  if lr_features is None:
    lr_features = GLAD_LRS[objective][0] if objective in GLAD_LRS else 10.0 * float(image_lr)
  if lr_codes is None:
    lr_codes = GLAD_CODE_RATIO * float(lr_features)
  return float(lr_features), float(lr_codes)


def arch_flags(options):
  """The --gen-* architecture flags given explicitly (they ask for a random generator of that shape)."""
  return [f for f in ("gen_arch",) + tuple(flag for flag, _ in ARCH_FLAGS) if getattr(options, f) is not None]


def checkpoint_path(options, method):
  """The generator file a run loads: ``gen_checkpoint``; without it, for glad / latentdd the trained prior shipped
  for ``dataset`` (:func:`jaxdistill.generators.trained_prior`); None for a random generator (also
  ``gen_checkpoint="random"``, GLaD's ablation)."""
  if options.gen_checkpoint == RANDOM:
    return None
  if options.gen_checkpoint:
    return options.gen_checkpoint
  if method in ("glad", "latentdd") and not arch_flags(options):
    return G.trained_prior(options.dataset)
  return None


def _shipped(path):
  return f"trained prior shipped with jaxdistill (jaxdistill/generators/priors/{os.path.basename(path)})"


def generator(options, spec, method):
  """``(Generator, params, from_file, source)`` from the options: ``gen_checkpoint``, else (glad / latentdd) the
  shipped GLaD prior of the dataset, else a generator of the flags' shape — for gendm initialised from the
  shipped prior of exactly that shape if there is one (:func:`jaxdistill.generators.trained_prior` with
  ``gen``; ``gen_checkpoint="random"`` opts out), otherwise random (``gen_seed``, default ``seed``)."""
  path = checkpoint_path(options, method)
  if path:
    gen, params, _ = G.load_generator(path)
    return gen, params, True, _shipped(path) if not options.gen_checkpoint else path
  if method == "latentdd":
    raise ValueError("--method latentdd needs --gen-checkpoint (a trained generator, e.g. a gendm run's "
                     f"synthetic.npz); no trained prior ships for {options.dataset!r} (those that do: "
                     f"{list(G.trained_priors())}).")
  default_arch, cfg = DEFAULT_GEN["glad" if method == "glad" else "gendm"]
  arch = options.gen_arch or default_arch
  cfg = dict(cfg) if arch == default_arch else {}
  for flag, field in ARCH_FLAGS:
    if getattr(options, flag) is not None:
      cfg[field] = getattr(options, flag)
  h, w, c = spec.image_shape
  gen = G.make_generator(arch, num_classes=spec.num_classes, resolution=h, channels=c, **cfg)
  if method == "gendm" and options.gen_checkpoint != RANDOM:
    prior = G.trained_prior(options.dataset, gen)
    if prior:
      return gen, G.load_generator(prior)[1], False, _shipped(prior)
  seed = options.seed if options.gen_seed is None else options.gen_seed
  return gen, G.init_generator(gen, jax.random.PRNGKey(seed)), False, f"random (seed {seed})"


def glad_config(options, method, count_generator: bool) -> glad.GLaDConfig:
  """GLaD's config from the options (latentdd: the ``z`` space unless ``glad_space`` says otherwise); unset
  ``glad_layer`` / ``glad_chunk`` keep :class:`jaxdistill.synthetic.glad.GLaDConfig`'s defaults."""
  space = options.glad_space if (method == "glad" or options.glad_space != "features") else "z"
  given = {"layer": options.glad_layer, "chunk": options.glad_chunk}
  return glad.GLaDConfig(space=space, init=options.glad_init, decoupled=not options.no_decoupled,
                         count_generator=count_generator, **{k: v for k, v in given.items() if v is not None})


def gendm_config(options) -> synthetic.GenDMConfig:
  """GenDM's config; training and evaluation images per class default to the IPC."""
  return synthetic.GenDMConfig(train_per_class=options.gen_train_per_class or options.ipc,
                               samples_per_class=options.gen_samples_per_class or options.ipc,
                               truncation=options.truncation, enforce_budget=not options.ignore_budget)


def haba_config(options, spec) -> haba.HaBaConfig:
  """HaBa's config; without ``haba_bases`` the most bases per class that fit the budget with the hallucinators
  (at least 1)."""
  base = haba.HaBaConfig(hallucinators=options.haba_hallucinators, width=options.haba_width,
                         basis_size=options.haba_basis_size, enforce_budget=not options.ignore_budget,
                         pairs=options.haba_pairs, contrastive=options.haba_contrastive,
                         extractor_width=options.haba_extractor_width).validate()
  if options.haba_bases:
    return dataclasses.replace(base, bases_per_class=options.haba_bases)
  return dataclasses.replace(base, bases_per_class=max_bases(base, spec.num_classes, options.ipc,
                                                             spec.image_shape))


def max_bases(cfg: haba.HaBaConfig, num_classes: int, ipc: int, image_shape) -> int:
  """The most bases per class such that bases + ``cfg.hallucinators`` hallucinators fit ``C · ipc · H · W · ch``
  floats (at least 1). The contrastive extractor is a training aid, not stored, so it does not count."""
  h, w, c = image_shape
  side = cfg.basis_size or h
  basis = side * (side * w // h) * c
  hal = cfg.hallucinators * (9 * c * cfg.width + cfg.width + 2 * cfg.width + 9 * cfg.width * c + c)
  budget = synthetic.storage_budget(num_classes, ipc, image_shape)
  return max(1, (budget - hal) // (num_classes * basis))


def _dsa_of(obj_cfg):
  """The objective's DSA settings (its ``dsa`` / ``dsa_strategy`` fields: dm, dc/dsa, mtt, ...), or None when it
  has none or has DSA off: HaBa's contrastive extractor then sees un-augmented pairs."""
  if not getattr(obj_cfg, "dsa", False) or getattr(obj_cfg, "dsa_strategy", None) is None:
    return None
  from jaxdistill.augment import DSAParams
  return DSAParams(strategy=tuple(obj_cfg.dsa_strategy))


def setup(options, data, obj_cfg, init: str, key) -> Built:
  """The set-up of ``options.method`` (glad, gendm, latentdd or haba) wrapping the run's objective (built by
  :func:`jaxdistill.methods.registry.setup_objective` for the images the parameterisation renders per step)."""
  method = options.method
  spec = data.spec
  nc = spec.num_classes
  record = {"objective": objective_name(options),
            "storage_budget_floats": synthetic.storage_budget(nc, options.ipc, spec.image_shape)}
  if method in ("glad", "latentdd", "gendm"):
    gen, gparams, from_ckpt, source = generator(options, spec, method)
    record.update(generator=G.config_dict(gen), generator_source=source, generator_floats=G.num_params(gparams))
  if method in ("glad", "latentdd"):
    cfg = glad_config(options, method, from_ckpt or method == "latentdd")
    record["parameterisation_config"] = dataclasses.asdict(cfg)
    objective, lr, x64 = setup_objective(options, data, obj_cfg, init, key, options.ipc)
    param = (synthetic.glad_parameterisation(gen, cfg) if method == "glad"
             else synthetic.latentdd_parameterisation(gen, cfg))
    syn = synthetic.init_glad(key, gen, gparams, cfg, nc, options.ipc, learn_lr=lr)
    return Built(objective, param, syn, record, x64)
  if method == "gendm":
    cfg = gendm_config(options)
    record["parameterisation_config"] = dataclasses.asdict(cfg)
    objective, lr, x64 = setup_objective(options, data, obj_cfg, init, key, cfg.train_per_class)
    syn = synthetic.init_gendm(key, gen, cfg, nc, options.ipc, spec.image_shape, gparams=gparams, learn_lr=lr)
    return Built(objective, synthetic.gendm_parameterisation(gen, cfg, nc), syn, record, x64)
  if method != "haba":
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}.")
  cfg = haba_config(options, spec)
  record["parameterisation_config"] = dataclasses.asdict(cfg)
  objective, lr, x64 = setup_objective(options, data, obj_cfg, init, key, synthetic.train_images_per_class(cfg))
  if cfg.contrastive > 0:
    dsa = _dsa_of(objective.config)
    record["contrastive_augment"] = list(dsa.strategy) if dsa is not None else None
    reg = synthetic.contrastive_regulariser(cfg, nc, spec.image_shape,
                                            augment=None if dsa is None else haba.dsa_augment(dsa))
    objective = objectives.with_regulariser(objective, reg)
  syn = synthetic.init_haba(key, cfg, data.train_x, data.train_y, nc, options.ipc, learn_lr=lr)
  return Built(objective, synthetic.haba_parameterisation(cfg, nc, spec.image_shape), syn, record, x64)


def loop_hook(options, loop_kw):
  """Loop settings of the method layered over the objective's (flags and ``--config`` still win): GLaD's F_n /
  code lrs (:func:`glad_lrs`), LatentDD's (features: the image lr, codes: 0.01 x it), GenDM's Adam at 1e-3,
  HaBa's hallucinator lr (0.01)."""
  method = options.method
  lr_img = getattr(options, "lr_img", None)
  lr = float(lr_img if lr_img is not None else loop_kw["lr_img"])  # the effective image lr
  lrs = dict(loop_kw.get("param_lrs") or {})
  if method == "glad":
    lrs["features"], lrs["codes"] = glad_lrs(objective_name(options), lr, options.lr_features, options.lr_codes)
    if options.glad_space != "features" and options.lr_codes is None:
      lrs["codes"] = lrs["features"]  # codes alone: GLaD optimises them with --lr_img (get_optimizer_img)
    return {"param_lrs": lrs}
  if method == "latentdd":
    lrs["codes"] = options.lr_codes if options.lr_codes is not None else 0.01 * lr
    lrs["features"] = options.lr_features if options.lr_features is not None else lr
    return {"param_lrs": lrs}
  if method == "gendm":
    return {"optimizer": "adam", "lr_img": 1e-3}
  lrs["hallucinators"] = options.lr_hallucinators if options.lr_hallucinators is not None else 0.01
  return {"param_lrs": lrs}


def _flatten(tree, prefix=""):
  flat = traverse_util.flatten_dict(unfreeze(dict(tree)), sep="/")
  return {prefix + k: np.asarray(v) for k, v in flat.items()}


def outputs(options, built: Built, syn_state):
  """The parameterisation's state for ``synthetic.npz``: learnable arrays by name (not the lr), fixed ones under
  ``const/`` (not the labels); the set-up's record is already in ``built.metadata``."""
  arrays = _flatten({k: v for k, v in syn_state.params.items() if k != "lr"})
  arrays.update(_flatten({k: v for k, v in syn_state.const.items() if k != "labels"}, "const/"))
  return arrays, {}
