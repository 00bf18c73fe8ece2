"""Pieces every benchmark module shares: the reduced CPU evaluation protocol, data loading, row schema.

A benchmark module ``benchmarks/bench_<name>.py`` defines ``run(quick: bool) -> list[dict]``; each row has
at least the keys of :func:`row`. ``python -m benchmarks.run`` writes ``benchmarks/results/<name>.json``
and regenerates ``benchmarks/README.md`` from every JSON file there (:mod:`benchmarks.report`).

The CPU protocol is *reduced* (the papers' 1000/300-epoch evaluations and 1k–20k distillation iterations do
not fit a 2-core machine): every module evaluates with :data:`EVAL` so rows at the same IPC are comparable,
and states its own distillation budget in the row's ``protocol``.
"""
from __future__ import annotations

import os
import platform
from typing import Any, Dict, NamedTuple, Optional

import jax
import numpy as np

from experiments import common as experiment_common
from jaxdistill import loop
from jaxdistill.augment import default_params
from jaxdistill.data import load

DATASET = "fashion_mnist"


class EvalProtocol(NamedTuple):
  """The shared reduced evaluation: ``models`` fresh ConvNets of ``width``, ``epochs`` epochs (lr decay at
  half), DSA during training, accuracy on the first ``test_size`` test images (None: all 10 000)."""
  arch: str
  width: int
  models: int
  epochs: int
  test_size: Optional[int]

  def describe(self) -> str:
    test = "all 10000" if self.test_size is None else f"first {self.test_size}"
    return (f"eval: {self.models} x {self.arch}-{self.width}, {self.epochs} epochs, SGD 0.01 mom 0.9 wd 5e-4, "
            f"DSA, test images {test}")


EVAL = EvalProtocol("convnet", 128, 3, 100, None)
EVAL_QUICK = EvalProtocol("convnet", 16, 2, 10, 500)


def eval_protocol(quick: bool) -> EvalProtocol:
  return EVAL_QUICK if quick else EVAL


class Data(NamedTuple):
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  digits: bool


def load_data(quick: bool, train_size: Optional[int] = None) -> Data:
  """Fashion-MNIST (real, offline): the whole train split (quick: the first 2000 images, or ``train_size``)
  and the test split cut to the protocol's ``test_size``."""
  n = train_size if train_size is not None else (2000 if quick else None)
  x, y, spec = load(DATASET, "train" if n is None else f"train[:{n}]")
  tx, ty, _ = load(DATASET, "test")
  size = eval_protocol(quick).test_size
  if size:
    tx, ty = tx[:size], ty[:size]
  return Data(x, y, tx, ty, spec.num_classes, spec.digits)


def make_evaluator(data: Data, quick: bool, method: Optional[str] = None, **rule):
  """``evaluator(SyntheticBatch, key) -> EvalResult`` under the shared protocol, with ``method``'s label and
  learned-lr rule (:func:`jaxdistill.evaluate.protocol`; ``learned_lr=`` / ``label_rule=`` override)."""
  p = eval_protocol(quick)
  return loop.make_evaluator(data.test_x, data.test_y, data.num_classes, p.arch, p.models, p.epochs,
                             dsa=default_params(digits=data.digits), model_kwargs={"width": p.width},
                             method=method, **rule)


def machine() -> str:
  """What the numbers were measured on, e.g. ``cpu x1 (2 cores, x86_64), jax 0.5.3``."""
  d = jax.devices()
  return (f"{d[0].platform} x{len(d)} ({d[0].device_kind}; {os.cpu_count()} cores, {platform.machine()}), "
          f"jax {jax.__version__}")


def load_average() -> Optional[float]:
  """1-minute load average (other work sharing the CPU distorts timings; rows record it)."""
  try:
    return float(os.getloadavg()[0])
  except OSError:
    return None


def row(benchmark: str, method: str, ipc: Optional[int], *, result=None, seconds_per_iteration=None,
        protocol: str = "", published: Optional[float] = None, eval_protocol: Optional[str] = None,
        **extra) -> Dict[str, Any]:
  """One benchmark row. ``result`` is an :class:`~jaxdistill.evaluate.EvalResult` (or None for speed-only
  rows); ``published`` the paper's full-protocol accuracy (%) for the same method/IPC, shown beside ours;
  ``eval_protocol`` the evaluation's description (default ``EVAL.describe()`` when ``result`` is given): the
  report compares a method only with reference rows evaluated the same way."""
  if result is not None and eval_protocol is None:
    eval_protocol = EVAL.describe()
  out = {"eval_protocol": eval_protocol, "benchmark": benchmark, "method": method, "dataset": DATASET, "ipc": ipc,
         "test_accuracy_mean": None if result is None else float(result.mean),
         "test_accuracy_std": None if result is None else float(result.std),
         "eval_seconds": None if result is None else float(result.seconds),
         "seconds_per_iteration": seconds_per_iteration, "peak_memory_mb": experiment_common.peak_memory_mb(),
         "protocol": protocol, "published": published, "machine": machine(), "load_average": load_average()}
  out.update(extra)
  return out


def published(method: str, ipc: int) -> Optional[float]:
  """The paper's full-protocol Fashion-MNIST accuracy (%) (:mod:`experiments.published`); the random subset's
  published figure is not shown (our random rows are measured under the same evaluation as each method)."""
  from experiments.published import published as _published
  return None if method == "random" else _published(method, ipc)
