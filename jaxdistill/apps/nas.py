"""Neural architecture search with a condensed proxy set (DC Sec. 4.3, DSA Sec. 4.4, DM Sec. 4.4).

A search space of ConvNets (:class:`Arch`: width, depth, normalisation, activation, pooling — the options of
:class:`jaxdistill.models.ConvNet`) is ranked twice: by validation accuracy after training on a cheap
*proxy* (a distilled set, a random real subset, or the whole data for a few epochs) and after training on the
full data (the ground truth, here a reduced budget). The papers' NAS tables report the Spearman rank
correlation between the two rankings, the ground-truth accuracy of the architecture each proxy picks (its
top-1) and the time each costs.

Every architecture is trained with :func:`jaxdistill.evaluate.evaluate` (``num_models`` networks of the
architecture in one vmapped program); :func:`spearman` handles ties with average ranks (as
``scipy.stats.spearmanr``).
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

from jaxdistill.evaluate import EvalConfig, evaluate
from jaxdistill.models.layers import ACTIVATIONS, NORMS, POOLINGS, check_choice
from jaxdistill.validation import check_ints, check_network


@dataclasses.dataclass(frozen=True)
class Arch:
  """One ConvNet of the search space (``depth`` blocks of conv(``width``) → norm → activation → pool)."""
  width: int
  depth: int
  norm: str
  activation: str
  pooling: str

  def validate(self):
    check_ints(self, "depth")  # a search-space point names its depth (no image-size default)
    check_network(None, self.width, self.depth, self.norm)
    check_choice("activation", self.activation, ACTIVATIONS)
    check_choice("pooling", self.pooling, POOLINGS)
    return self

  @property
  def name(self) -> str:
    return f"w{self.width}-d{self.depth}-{self.norm}-{self.activation}-{self.pooling}"

  def model_kwargs(self) -> Dict:
    """Keyword arguments of :func:`jaxdistill.models.get_model` ``("convnet", ...)``."""
    return {"width": self.width, "depth": self.depth, "norm": self.norm, "activation": self.activation,
            "pooling": self.pooling}


def search_space(widths: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (1, 2, 3, 4),
                 norms: Sequence[str] = NORMS, activations: Sequence[str] = ACTIVATIONS,
                 poolings: Sequence[str] = POOLINGS) -> List[Arch]:
  """The product of the options (defaults: the DC paper's 720-architecture space)."""
  return [Arch(*c).validate() for c in itertools.product(widths, depths, norms, activations, poolings)]


def sample_architectures(key, space: Sequence[Arch], n: int) -> List[Arch]:
  """``n`` distinct architectures of ``space`` drawn uniformly without replacement with ``key``.

  Raises:
    ValueError: ``n`` outside ``[1, len(space)]``.
  """
  if not 1 <= n <= len(space):
    raise ValueError(f"n must be in [1, {len(space)}], got {n}.")
  idx = np.asarray(jax.random.choice(key, len(space), (n,), replace=False))
  return [space[int(i)] for i in idx]


def rankdata(x) -> np.ndarray:
  """Ranks ``1..n`` of ``x [n]`` with ties given their average rank (``scipy.stats.rankdata``)."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.arange(1, len(x) + 1)
  for v in np.unique(x):
    tie = x == v
    if tie.sum() > 1:
      ranks[tie] = ranks[tie].mean()
  return ranks


def spearman(a, b) -> float:
  """Spearman's rank correlation: the Pearson correlation of the (average-tie) ranks of ``a`` and ``b``
  (equal to ``1 − 6 Σ d² / (n (n² − 1))`` without ties). NaN when a ranking is constant.

  Raises:
    ValueError: different lengths or fewer than 2 values.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
    raise ValueError(f"need two 1-D sequences of equal length >= 2, got shapes {a.shape} and {b.shape}.")
  ra, rb = rankdata(a) - (len(a) + 1) / 2, rankdata(b) - (len(b) + 1) / 2
  den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
  return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


class TrainSet(NamedTuple):
  """A training set for the search: ``images [N, H, W, C]``, labels and the epochs to train on it."""
  images: np.ndarray
  labels: np.ndarray
  epochs: int


class ArchScores(NamedTuple):
  """Validation accuracy (mean over ``num_models`` networks) and training seconds of every architecture."""
  accuracies: np.ndarray
  stds: np.ndarray
  seconds: np.ndarray


def score_architectures(archs: Sequence[Arch], train: TrainSet, key, *, val_images, val_labels,
                        num_classes: int, num_models: int = 1, dsa=None, batch_size: int = 256,
                        mesh=None, log=None) -> ArchScores:
  """Trains ``num_models`` fresh networks of each architecture on ``train`` (:func:`evaluate`) and returns
  their validation accuracies and the wall-clock seconds each architecture took (compile included)."""
  keys = jax.random.split(key, len(archs))
  accs, stds, secs = [], [], []
  config = EvalConfig(batch_size=batch_size)
  for arch, k in zip(archs, keys):
    arch.validate()
    t0 = time.perf_counter()
    res = evaluate(train.images, train.labels, "convnet", k, num_models, train.epochs, test_images=val_images,
                   test_labels=val_labels, num_classes=num_classes, dsa=dsa, config=config,
                   model_kwargs=arch.model_kwargs(), progress=False, mesh=mesh)
    secs.append(time.perf_counter() - t0)
    accs.append(res.mean)
    stds.append(res.std)
    if log is not None:
      log(f"{arch.name}: {100 * res.mean:.2f} % ({secs[-1]:.1f} s)")
  return ArchScores(np.asarray(accs), np.asarray(stds), np.asarray(secs))


class ProxyReport(NamedTuple):
  """How well a proxy ranks the architectures: Spearman correlation with the full-data ranking, the
  architecture it picks (highest proxy accuracy), that architecture's full-data accuracy and rank (1 =
  best), and the proxy's total seconds (plus those of building the proxy, e.g. distillation)."""
  name: str
  spearman: float
  top1: str
  top1_full_accuracy: float
  top1_full_rank: int
  seconds: float


def compare(archs: Sequence[Arch], proxy: Dict[str, ArchScores], full: ArchScores,
            extra_seconds: Optional[Dict[str, float]] = None) -> List[ProxyReport]:
  """One :class:`ProxyReport` per proxy (and one for the full data itself, Spearman 1)."""
  extra_seconds = extra_seconds or {}
  full_rank = len(archs) + 1 - rankdata(full.accuracies)
  out = []
  for name, s in list(proxy.items()) + [("full", full)]:
    best = int(np.argmax(s.accuracies))
    out.append(ProxyReport(name, spearman(s.accuracies, full.accuracies), archs[best].name,
                           float(full.accuracies[best]), int(np.floor(full_rank[best])),
                           float(np.sum(s.seconds)) + float(extra_seconds.get(name, 0.0))))
  return out


def report_table(reports: Sequence[ProxyReport]) -> str:
  """Markdown table of :func:`compare`'s reports."""
  rows = ["| proxy | Spearman ρ | top-1 architecture | its full-data accuracy (%) | its full-data rank | "
          "seconds |", "|---|---|---|---|---|---|"]
  for r in reports:
    rows.append(f"| {r.name} | {r.spearman:.3f} | {r.top1} | {100 * r.top1_full_accuracy:.2f} | "
                f"{r.top1_full_rank} | {r.seconds:.1f} |")
  return "\n".join(rows)


def run_search(archs: Sequence[Arch], proxies: Dict[str, TrainSet], full: TrainSet, key, *, val_images,
               val_labels, num_classes: int, num_models: int = 1, dsa=None, mesh=None,
               extra_seconds: Optional[Dict[str, float]] = None, log=None
               ) -> Tuple[Dict[str, ArchScores], ArchScores, List[ProxyReport]]:
  """Scores ``archs`` on every proxy and on ``full``; returns ``(proxy_scores, full_scores, reports)``.

  Raises:
    ValueError: fewer than 2 architectures or duplicates.
  """
  if len(archs) < 2 or len(set(archs)) != len(archs):
    raise ValueError(f"need at least 2 distinct architectures, got {len(archs)} ({len(set(archs))} distinct).")
  kw = dict(val_images=val_images, val_labels=val_labels, num_classes=num_classes, num_models=num_models,
            dsa=dsa, mesh=mesh, log=log)
  names = list(proxies)
  keys = jax.random.split(key, len(names) + 1)
  scores = {n: score_architectures(archs, proxies[n], k, **kw) for n, k in zip(names, keys[1:])}
  full_scores = score_architectures(archs, full, keys[0], **kw)
  return scores, full_scores, compare(archs, scores, full_scores, extra_seconds)


__all__ = ["Arch", "ArchScores", "ProxyReport", "TrainSet", "compare", "rankdata", "report_table", "run_search",
           "sample_architectures", "score_architectures", "search_space", "spearman"]
