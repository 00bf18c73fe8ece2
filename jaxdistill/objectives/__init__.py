"""Distillation objectives, registered by name so the CLI, tests and benchmarks treat methods alike.

``make_objective(name, config, num_classes=, image_shape=, ipc=)`` builds an :class:`Objective`;
``default_config(name)`` gives the paper configuration and ``METHOD_DEFAULTS[name]`` the image-optimiser
settings (lr_img, iterations, real images per class, initialisation) of the paper.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, NamedTuple

from jaxdistill.objectives.base import Objective, RealBatch, per_class, siamese_augment
from jaxdistill.objectives.distribution_matching import (DISTANCES, DistributionMatchingConfig,
                                                         make_distribution_matching, mean_embedding_distance)
from jaxdistill.objectives.gradient_matching import (METRICS, GMState, GradientMatchingConfig, default_loops,
                                                     make_gradient_matching, match_distance)


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


def make_objective(name: str, config=None, *, num_classes: int, image_shape, ipc: int) -> Objective:
  """Builds the objective of method ``name`` (config defaults to :func:`default_config`)."""
  entry = _entry(name)
  config = entry.config() if config is None else config
  return entry.factory(config, num_classes=num_classes, image_shape=image_shape, ipc=ipc, name=name)


__all__ = ["DISTANCES", "DistributionMatchingConfig", "GMState", "GradientMatchingConfig", "METHODS",
           "METRICS", "MethodDefaults", "Objective", "REGISTRY", "RealBatch", "default_config", "default_loops",
           "make_objective", "match_distance", "mean_embedding_distance", "method_defaults", "per_class",
           "register", "siamese_augment"]
