"""Distillation objectives, registered by name so the CLI, tests and benchmarks treat methods alike.

``make_objective(name, config, num_classes=, image_shape=, ipc=)`` builds an :class:`Objective`;
``default_config(name)`` gives the paper configuration and ``METHOD_DEFAULTS[name]`` the image-optimiser
settings (lr_img, iterations, real images per class, initialisation) of the paper.

Pure losses over arrays and functions (the registered objectives call them; use them with your own network):

* ``distribution_matching.loss(embed_fn, real [C, n, ...], syn [C, m, ...], distance="l2")``
* ``gradient_matching.loss(loss_fn, params, real, syn, metric="ours")`` (class-major arrays with implicit
  labels, or ``(images, labels)`` pairs)
* ``kip.loss(kernel_fn, x_s, y_s, x_t, y_t, reg)``, ``frepo.loss(feature_fn, x_s, y_s, x_t, y_t, reg)``
* ``trajectory.loss(student_step, start, target, syn, lr, n_steps)``

:func:`with_regulariser` adds a :class:`Regulariser` with its own trained state (e.g. HaBa's contrastive term,
:func:`jaxdistill.synthetic.haba.contrastive_regulariser`) to any objective.

Class-major means row ``c`` of ``[C, n, ...]`` holds class ``c``; :func:`group_by_class` turns a flat batch with
labels into that layout.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, NamedTuple

from jaxdistill.objectives import (distribution_matching, frepo, gradient_matching, kip, trajectory,
                                   trajectory_matching)
from jaxdistill.objectives.base import (Objective, RealBatch, check_class_order, class_major_real,
                                        group_by_class, per_class, siamese_augment)
from jaxdistill.objectives.distribution_matching import (DISTANCES, DistributionMatchingConfig,
                                                         make_distribution_matching, mean_embedding_distance)
from jaxdistill.objectives.gradient_matching import (METRICS, GMState, GradientMatchingConfig, default_loops,
                                                     make_gradient_matching, match_distance)
from jaxdistill.objectives.trajectory_matching import (TrajectoryMatchingConfig, make_trajectory_matching,
                                                      trajectory_distance)
from jaxdistill.objectives.frepo import FRePoConfig, PoolState, make_frepo
from jaxdistill.objectives.kip import KIPConfig, make_kip
from jaxdistill.objectives.rfad import RFADConfig, make_rfad
from jaxdistill.objectives.bptt import BPTTConfig, make_bptt, unrolled_accuracy
from jaxdistill.objectives.regularised import Regulariser, with_regulariser
from jaxdistill.objectives import cafe
from jaxdistill.objectives.cafe import CAFEConfig, make_cafe


class MethodDefaults(NamedTuple):
  """The papers' outer settings of a method: image lr, iterations, real images per class, init."""
  lr_img: float
  iterations: int
  real_per_class: int
  init: str


class _Entry(NamedTuple):
  config: Callable[[], object]
  factory: Callable[..., Objective]
  defaults: MethodDefaults


REGISTRY: Dict[str, _Entry] = {}


def register(name: str, config_fn: Callable[[], object], factory: Callable[..., Objective],
             defaults: MethodDefaults) -> None:
  """Registers a method: ``config_fn()`` -> default config, ``factory(config, num_classes=, image_shape=,
  ipc=, name=)`` -> Objective."""
  REGISTRY[name] = _Entry(config_fn, factory, defaults)


register("dc", GradientMatchingConfig, make_gradient_matching, MethodDefaults(0.1, 1000, 256, "noise"))
register("dsa", lambda: GradientMatchingConfig(dsa=True), make_gradient_matching,
         MethodDefaults(0.1, 1000, 256, "real"))
register("dm", DistributionMatchingConfig, make_distribution_matching, MethodDefaults(1.0, 20000, 256, "real"))
register("dm_l1", lambda: DistributionMatchingConfig(distance="l1"), make_distribution_matching,
         MethodDefaults(1.0, 20000, 256, "real"))
register("dm_bn", lambda: DistributionMatchingConfig(batchnorm=True), make_distribution_matching,
         MethodDefaults(1.0, 20000, 256, "real"))
# Trajectory matching: no real batch is used (1 image per class keeps the loop's sampler cheap); lr_img 1000 and
# 5000 iterations as in MTT (CIFAR-10); the student lr α has its own lr (config.lr_lr, via LoopConfig.param_lrs).
register("mtt", TrajectoryMatchingConfig, make_trajectory_matching, MethodDefaults(1000.0, 5000, 1, "real"))
register("tesla", lambda: TrajectoryMatchingConfig(gradient="tesla"), make_trajectory_matching,
         MethodDefaults(1000.0, 5000, 1, "real"))
register("mtt_l1", lambda: TrajectoryMatchingConfig(distance="l1"), make_trajectory_matching,
         MethodDefaults(1000.0, 5000, 1, "real"))
# Kernel / meta-model methods: Adam on the support set (jaxdistill.methods), real_per_class = target batch
# / C (1000 targets). lr: KIP 0.01, RFAD 1e-3, FRePo 3e-4 (LAMB in FRePo); iterations: FRePo's 500k, KIP / RFAD
# 1000 (ours; the papers train until the KRR accuracy plateaus). See docs/kernel_methods.md.
register("kip", KIPConfig, make_kip, MethodDefaults(0.01, 1000, 100, "real"))
register("rfad", RFADConfig, make_rfad, MethodDefaults(1e-3, 1000, 100, "real"))
register("frepo", FRePoConfig, make_frepo, MethodDefaults(3e-4, 500000, 100, "real"))
# BPTT (docs/bptt.md): DD — noise init, Adam 0.01 on images (jaxdistill.methods), 1024 real images per
# iteration (~100 per class), 400 epochs over the 60k training images (~23 400 iterations), α learned from 0.02 by
# the same Adam (lr_lr None); T = 30 inner steps (DD's 10 steps × 3 epochs, one image per class per step).
# LD — fixed real base images, labels from uniform, projected onto the simplex after every update, Adam 1e-3
# (PyTorch's default, as in the LD code), inner SGD lr 0.1 (fixed; LD's code takes one 0.01 step of a network
# it keeps training, here T steps start from a fresh network, and 0.01 left it too untrained to give the labels
# a useful meta-gradient: docs/bptt.md), 400 epochs of 1024-image batches over LD's 50k split (~19 600
# iterations).
register("dd", lambda: BPTTConfig(batch_per_class=1), make_bptt, MethodDefaults(0.01, 23400, 100, "noise"))
register("ld", lambda: BPTTConfig(inner_lr=0.1, learn_lr=False, learn_labels=True, label_start="uniform",
                                  label_projection="simplex"),
         make_bptt, MethodDefaults(1e-3, 19600, 100, "real"))
# IDC (docs/idc_dcc.md; snu-mllab/Efficient-Dataset-Condensation argument.py + misc/reproduce.py): the matching
# net is trained on real data (n_data 500, batch 64, SGD 0.01 / momentum 0.9 / wd 5e-4) and re-initialised every
# outer iteration of 100 image updates; L1 on the conv-kernel gradients; color_crop_cutout applied in sequence;
# 2000 outer iterations, 64 real images per class, "mix" init of the multi-formation parameterisation (factor 2,
# jaxdistill.synthetic.multi_formation). lr_img: their Fashion-MNIST l1 rate 1e-4 at IPC 10 for normalised
# images (gradient_matching.idc_image_lr; scale with IPC as it says).
register("idc", lambda: GradientMatchingConfig(metric="l1", layers="conv", dsa=True,
                                               dsa_strategy=("color", "crop", "cutout"), dsa_sequential=True,
                                               inner_data="real", real_train_size=500, batch_train=64,
                                               net_momentum=0.9, net_weight_decay=5e-4, outer_loop=100,
                                               inner_loop=1),
         make_gradient_matching,
         MethodDefaults(gradient_matching.idc_image_lr(1e-4, 10, 28, (0.3530,)), 2000, 64, "mix"))
# DCC (Saehyung-Lee/DCC main.py): DC with class-collaborative matching after the bi-level warm-up (outer 250,
# inner 10), DCC's loops table, lr_img 0.1, 1000 outer iterations, batch_real 256, real init.
register("dcc", lambda: GradientMatchingConfig(class_collaborative=True, warmup_outer=250, warmup_inner=10),
         make_gradient_matching, MethodDefaults(0.1, 1000, 256, "real"))
# CAFE (docs/cafe_inits.md): the authors' distill.py defaults — lr_img 0.1 (SGD momentum 0.5), --Iteration 2000
# (each a fresh network with >= 10 image updates in the code; the loop counts image updates), batch_real 256,
# init noise. The dynamic schedule needs make_objective("cafe", ..., probe=cafe.make_probe(...)).
register("cafe", CAFEConfig, make_cafe, MethodDefaults(0.1, 2000, 256, "noise"))
# FTD (docs/ftd_itgan.md; AngusDujw/FTD-distillation distill/run_distill.sh, CIFAR-10 IPC 10): MTT's loss on a
# buffer of flat experts (experiments.buffers --flat: GSAM, rho 0.01) with an EMA of the images (LoopConfig
# ema_decay 0.9995); syn_steps 30, expert_epochs 2, max_start_epoch 20, lr_teacher 0.001, lr_lr 1e-5, lr_img 100,
# 5000 iterations.
register("ftd", lambda: TrajectoryMatchingConfig(syn_steps=30, expert_epochs=2, max_start_epoch=20, lr_init=0.001,
                                                 lr_lr=1e-5),
         make_trajectory_matching, MethodDefaults(100.0, 5000, 1, "real"))
# GTN (docs/kfs_gtn.md; jaxdistill.objectives.gtn): the meta-gradient through T learner steps into GTN's generator
# (jaxdistill.synthetic.gtn) -- only `--method gtn` (jaxdistill.methods) runs it, with inner_steps = IPC / k. Adam
# 1e-3 (loop default of the method), 2000 outer iterations, 64 real images per class scored per iteration: ours
# (CPU scale; the paper's values were not checked here). Lazy: the synthetic package imports this one.


def _gtn_config():
  from jaxdistill.synthetic.gtn import GTNConfig
  return GTNConfig()


def _make_gtn(config, **kwargs):
  from jaxdistill.objectives.gtn import make_gtn
  return make_gtn(config, **kwargs)


register("gtn", _gtn_config, _make_gtn, MethodDefaults(1e-3, 2000, 64, "noise"))

METHODS = tuple(REGISTRY)


def _entry(name: str) -> _Entry:
  if name not in REGISTRY:
    raise ValueError(f"method must be one of {sorted(REGISTRY)}, got {name!r}.")
  return REGISTRY[name]


def default_config(name: str, **overrides):
  """The paper configuration of method ``name`` with ``overrides`` (unknown fields -> ValueError)."""
  config = _entry(name).config()
  fields = {f.name for f in dataclasses.fields(config)}
  bad = sorted(set(overrides) - fields)
  if bad:
    raise ValueError(f"unknown option(s) {bad} for method {name!r}; accepted: {sorted(fields)}.")
  return dataclasses.replace(config, **overrides).validate()


def method_defaults(name: str) -> MethodDefaults:
  """Image lr, iterations, real batch per class and init of method ``name`` (the papers' values)."""
  return _entry(name).defaults


def make_objective(name: str, config=None, *, num_classes: int, image_shape, ipc: int, **factory_kwargs) -> Objective:
  """Builds the objective of method ``name`` (config defaults to :func:`default_config`); ``factory_kwargs``
  go to the method's factory (e.g. ``zca=`` a fitted ZCA for KIP on RGB data)."""
  entry = _entry(name)
  config = entry.config() if config is None else config
  return entry.factory(config, num_classes=num_classes, image_shape=image_shape, ipc=ipc, name=name,
                       **factory_kwargs)


__all__ = ["DISTANCES", "DistributionMatchingConfig", "GMState", "GradientMatchingConfig", "METHODS",
           "METRICS", "MethodDefaults", "Objective", "REGISTRY", "RealBatch", "default_config", "default_loops",
           "make_objective", "match_distance", "mean_embedding_distance", "method_defaults", "per_class",
           "register", "siamese_augment", "TrajectoryMatchingConfig", "make_trajectory_matching",
           "trajectory_distance", "FRePoConfig", "KIPConfig", "PoolState", "RFADConfig", "make_frepo", "make_kip",
           "make_rfad", "BPTTConfig", "make_bptt", "unrolled_accuracy", "check_class_order", "class_major_real",
           "distribution_matching", "frepo", "gradient_matching", "group_by_class", "kip", "trajectory",
           "trajectory_matching", "Regulariser", "with_regulariser", "CAFEConfig", "cafe", "make_cafe"]
