"""Set-ups of FTD, IT-GAN, KFS and GTN for the method registry (:mod:`jaxdistill.methods`; issue #18). Signatures
as :func:`jaxdistill.methods.registry.setup_pixels`; the library pieces are described in docs/ftd_itgan.md and
docs/kfs_gtn.md.

* **FTD** (``--method ftd``): MTT's trajectory set-up (:func:`jaxdistill.methods.setups.trajectory`: ``--buffer``,
  the buffer's metadata checked against the run, a learnable student lr) plus the EMA of the synthetic params
  (``LoopConfig.ema_decay``, FTD's 0.9995 unless ``--ema-decay`` says otherwise); the EMA set is what the run
  evaluates and saves. The buffer's ``sam_rho`` is recorded and a buffer of plain (not flat) experts warns.
* **IT-GAN** (``--method itgan --objective dm``): latents ``z`` of the trained generator shipped for the dataset
  (or ``--gen-checkpoint``), initialised by inverting paired real images, optimised with the run's objective plus
  IT-GAN's feature regulariser ``λ L_reg`` against those pairs (:mod:`jaxdistill.synthetic.itgan`).
* **KFS** (``--method kfs --objective dm``): codes × tiny shared decoders (:mod:`jaxdistill.synthetic.kfs`), the
  codes per class fitted to the pixel budget of ``--ipc`` unless ``--kfs-codes`` is given.
* **GTN** (``--method gtn``): GTN's meta-learning objective (``objectives.gtn.make_gtn``) on the GTN generator
  (:mod:`jaxdistill.synthetic.gtn`). The rendered set has ``inner_steps × batch_per_class`` images per class; the
  set-up makes that ``--ipc`` (``inner_steps = ipc / batch_per_class``), so the saved and evaluated set is ``ipc``
  generated images per class (from the learned curriculum ``z``, or with ``curriculum="none"`` from the fixed
  noise key stored as ``const/key``).
"""
from __future__ import annotations

import dataclasses
import os
import warnings

from jaxdistill import generators as G
from jaxdistill import objectives, synthetic
from jaxdistill.methods import generative, setups
from jaxdistill.methods.registry import Built, objective_name, setup_objective
from jaxdistill.synthetic import itgan as itgan_lib
from jaxdistill.synthetic import kfs as kfs_lib

# FTD's EMA decay: AngusDujw/FTD-distillation distill/run_distill.sh --ema_decay=0.9995 (docs/ftd_itgan.md).
FTD_EMA_DECAY = 0.9995
KFS_DECODER_LR = 0.01  # the decoders' lr when --lr-decoders is not given (HaBa's hallucinator lr; docs/kfs_gtn.md)


# -- FTD ----------------------------------------------------------------------------------------------------------

def ftd(options, data, obj_cfg, init: str, key) -> Built:
  """FTD: :func:`jaxdistill.methods.setups.trajectory` on the ``--buffer`` experts; records the buffer's
  ``sam_rho`` (``buffer_sam_rho``, ``buffer_flat``) and warns when the experts are not flat (``sam_rho`` 0: build
  them with ``python -m experiments.buffers --flat``)."""
  from jaxdistill import experts

  built = setups.trajectory(options, data, obj_cfg, init, key)
  rho = float(experts.read_metadata(obj_cfg.buffer).get("sam_rho", 0.0) or 0.0)
  if not rho:
    warnings.warn(f"--method {options.method}: the buffer {obj_cfg.buffer!r} holds plain SGD experts (sam_rho 0); "
                  "FTD matches flat experts (python -m experiments.buffers --flat).", stacklevel=2)
  return built._replace(metadata={**(built.metadata or {}), "buffer_sam_rho": rho, "buffer_flat": rho > 0})


def ftd_loop_hook(options, loop_kw):
  """FTD's EMA decay: ``--ema-decay`` or :data:`FTD_EMA_DECAY`."""
  decay = getattr(options, "ema_decay", None)
  return {"ema_decay": FTD_EMA_DECAY if decay is None else float(decay)}


def ftd_outputs(options, built: Built, syn_state):
  """Says which set ``synthetic.npz`` holds (the EMA of the synthetic params, when the loop kept one)."""
  return None, {"synthetic_set": "ema (LoopConfig.ema_decay): the exponential moving average of the synthetic "
                                 "params, saved and evaluated"}


# -- IT-GAN -------------------------------------------------------------------------------------------------------

def itgan_config(options) -> itgan_lib.ITGANConfig:
  """IT-GAN's config from the ``--itgan-*`` flags (the rest: :class:`~jaxdistill.synthetic.itgan.ITGANConfig`)."""
  return itgan_lib.ITGANConfig(reg_weight=options.itgan_weight, init=options.itgan_init,
                               inversion_steps=options.itgan_inversion_steps, width=options.itgan_width).validate()


def itgan(options, data, obj_cfg, init: str, key) -> Built:
  """IT-GAN: the trained generator (``--gen-checkpoint``, else the prior shipped for ``--dataset``), latents from
  the inversion of ``ipc`` paired real images per class, the run's objective plus ``λ L_reg`` (skipped at λ 0).
  ``init`` (the pixel init) is not used: IT-GAN's init is ``--itgan-init``."""
  spec = data.spec
  nc = spec.num_classes
  path = options.gen_checkpoint or G.trained_prior(options.dataset)
  if not path or options.gen_checkpoint == generative.RANDOM:
    raise ValueError(f"--method itgan needs a trained generator: --gen-checkpoint FILE, or a --dataset with a "
                     f"shipped prior (those that have one: {list(G.trained_priors())}); got dataset "
                     f"{options.dataset!r}, gen_checkpoint {options.gen_checkpoint!r}.")
  gen, gparams, _ = G.load_generator(path)
  cfg = itgan_config(options)
  objective, lr, x64 = setup_objective(options, data, obj_cfg, init, key, options.ipc)
  syn, paired = itgan_lib.init_itgan(key, gen, gparams, data.train_x, data.train_y, nc, options.ipc, cfg,
                                     learn_lr=lr)
  if cfg.reg_weight:
    objective = objectives.with_regulariser(objective,
                                            itgan_lib.itgan_regulariser(paired, nc, spec.image_shape, cfg))
  record = {"objective": objective_name(options),
            "storage_budget_floats": synthetic.storage_budget(nc, options.ipc, spec.image_shape),
            "generator": G.config_dict(gen), "generator_floats": G.num_params(gparams),
            "generator_source": (path if options.gen_checkpoint else
                                 f"trained prior shipped with jaxdistill (jaxdistill/generators/priors/"
                                 f"{os.path.basename(path)})"),
            "parameterisation_config": dataclasses.asdict(cfg)}
  return Built(objective, itgan_lib.itgan_parameterisation(gen, cfg), syn, record, x64)


# -- KFS ----------------------------------------------------------------------------------------------------------

def max_codes(cfg: kfs_lib.KFSConfig, num_classes: int, ipc: int, image_shape) -> int:
  """The most codes per class such that the codes and ``cfg.decoders`` decoders fit ``C · ipc · H · W · ch``
  floats (:func:`jaxdistill.synthetic.kfs.storage_floats`), at least 1."""
  one = dataclasses.replace(cfg, codes_per_class=1)
  decoders = kfs_lib.storage_floats(dataclasses.replace(one, codes_per_class=0), num_classes, image_shape)
  per_class = kfs_lib.storage_floats(one, num_classes, image_shape) - decoders
  budget = synthetic.storage_budget(num_classes, ipc, image_shape)
  return max(1, (budget - decoders) // per_class)


def kfs_config(options, spec) -> kfs_lib.KFSConfig:
  """KFS's config from the ``--kfs-*`` flags; without ``--kfs-codes`` the most codes per class that fit the
  budget (:func:`max_codes`)."""
  base = kfs_lib.KFSConfig(decoders=options.kfs_decoders, latent_channels=options.kfs_latent_channels,
                           downsample=options.kfs_downsample, width=options.kfs_width,
                           enforce_budget=not options.ignore_budget).validate()
  codes = options.kfs_codes or max_codes(base, spec.num_classes, options.ipc, spec.image_shape)
  return dataclasses.replace(base, codes_per_class=int(codes)).validate()


def kfs(options, data, obj_cfg, init: str, key) -> Built:
  """KFS: codes (real images of each class, downsampled; ``--init noise``: N(0, 1)) × shared decoders, the run's
  objective on the training render (two decoders per code); storage and budget recorded."""
  spec = data.spec
  nc = spec.num_classes
  cfg = kfs_config(options, spec)
  if init == "noise":
    cfg = dataclasses.replace(cfg, init="noise")
  objective, lr, x64 = setup_objective(options, data, obj_cfg, init, key, kfs_lib.train_images_per_class(cfg))
  syn = synthetic.init_kfs(key, cfg, data.train_x, data.train_y, nc, options.ipc, learn_lr=lr)
  budget = synthetic.storage_budget(nc, options.ipc, spec.image_shape)
  stored = kfs_lib.storage_floats(cfg, nc, spec.image_shape)
  record = {"objective": objective_name(options), "storage_budget_floats": budget,
            "kfs_storage_floats": stored, "within_budget": stored <= budget,
            "images_per_class": cfg.codes_per_class * cfg.decoders,
            "parameterisation_config": dataclasses.asdict(cfg)}
  return Built(objective, synthetic.kfs_parameterisation(cfg, nc, spec.image_shape), syn, record, x64)


def kfs_loop_hook(options, loop_kw):
  """The decoders' lr: ``--lr-decoders`` or :data:`KFS_DECODER_LR` (the codes take the image lr)."""
  lrs = dict(loop_kw.get("param_lrs") or {})
  lrs["decoders"] = options.lr_decoders if options.lr_decoders is not None else KFS_DECODER_LR
  return {"param_lrs": lrs}


# -- GTN ----------------------------------------------------------------------------------------------------------

def gtn_config(cfg, ipc: int):
  """``cfg`` (a :class:`~jaxdistill.synthetic.gtn.GTNConfig`) with ``inner_steps = ipc / batch_per_class``, so the
  rendered set has ``ipc`` images per class. ``ValueError`` when ``batch_per_class`` does not divide ``ipc``."""
  k = int(cfg.batch_per_class)
  if ipc % k:
    raise ValueError(f"--method gtn renders inner_steps x batch_per_class images per class = --ipc; batch_per_class "
                     f"{k} does not divide ipc {ipc}.")
  return dataclasses.replace(cfg, inner_steps=ipc // k).validate()


def gtn(options, data, obj_cfg, init: str, key) -> Built:
  """GTN: the generator (+ learned curriculum ``z`` and learner lr) trained by the meta-gradient through
  ``inner_steps`` learner steps (:func:`gtn_config` sets them from ``--ipc``). ``init`` is not used (the generator
  starts random from ``key``). Only ``--method gtn`` runs the ``gtn`` objective."""
  from jaxdistill.objectives import gtn as gtn_objective
  from jaxdistill.synthetic import gtn as gtn_lib

  if options.method != "gtn":
    raise ValueError(f"the gtn objective trains GTN's generator: run --method gtn, not --method {options.method} "
                     f"--objective gtn.")
  spec = data.spec
  nc = spec.num_classes
  cfg = gtn_config(obj_cfg, options.ipc)
  objective = gtn_objective.make_gtn(cfg, num_classes=nc, image_shape=spec.image_shape, ipc=options.ipc)
  lr = gtn_objective.learner_config(cfg).initial_lr() if cfg.learn_lr else None
  syn = gtn_lib.init_gtn(key, cfg, nc, spec.image_shape, ipc=options.ipc, learn_lr=lr)
  noise = ("the learned curriculum z (params z, one per image)" if cfg.curriculum == "full" else
           "N(0, I) noise from the fixed key const/key (split from the --seed key at init)")
  record = {"gtn_config": dataclasses.asdict(cfg), "gtn_inner_steps": cfg.inner_steps,
            "gtn_eval_images_per_class": options.ipc,
            "gtn_eval_set": f"{options.ipc} images per class (inner_steps {cfg.inner_steps} x batch_per_class "
                            f"{cfg.batch_per_class}) rendered by the trained generator from {noise}",
            "storage_budget_floats": synthetic.storage_budget(nc, options.ipc, spec.image_shape),
            "lr_note": "lr holds the learner's learned lr in softplus space (alpha = softplus(lr)); the evaluation "
                       "uses the protocol's lr"}
  return Built(objective, gtn_lib.gtn_parameterisation(cfg, nc, spec.image_shape), syn, record)


__all__ = ["FTD_EMA_DECAY", "KFS_DECODER_LR", "ftd", "ftd_loop_hook", "ftd_outputs", "gtn", "gtn_config", "itgan",
           "itgan_config", "kfs", "kfs_config", "kfs_loop_hook", "max_codes"]
