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
# Kernel / meta-model methods: Adam on the support set (the CLI's LOOP_DEFAULTS), real_per_class = target batch
# / C (1000 targets). lr: KIP 0.01, RFAD 1e-3, FRePo 3e-4 (LAMB in FRePo); iterations: FRePo's 500k, KIP / RFAD
# 1000 (ours; the papers train until the KRR accuracy plateaus). See docs/kernel_methods.md.
register("kip", KIPConfig, make_kip, MethodDefaults(0.01, 1000, 100, "real"))
register("rfad", RFADConfig, make_rfad, MethodDefaults(1e-3, 1000, 100, "real"))
register("frepo", FRePoConfig, make_frepo, MethodDefaults(3e-4, 500000, 100, "real"))
# BPTT (docs/bptt.md): DD — noise init, Adam 0.01 on images (the CLI's LOOP_DEFAULTS), 1024 real images per
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
           "trajectory_matching", "Regulariser", "with_regulariser"]
