"""Class-indexed sampling that jits cleanly.

A :class:`ClassIndex` lists, for each class, the positions of its examples, padded to a common length so that
per-class sampling is one ``vmap`` over the class axis instead of a Python loop.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ClassIndex(NamedTuple):
  """Per-class example positions.

  Attributes:
    indices: int32 ``[C, max_n]``; row ``c`` holds the positions of class ``c``, padded with 0.
    counts: int32 ``[C]``; how many entries of each row are real.
  """
  indices: jnp.ndarray
  counts: jnp.ndarray


def class_index(labels, num_classes: int) -> ClassIndex:
  """Builds the :class:`ClassIndex` of int ``labels [N]`` (host-side, once)."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be int [N], got shape {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}].")
  rows = [np.flatnonzero(labels == c) for c in range(num_classes)]
  counts = np.array([len(r) for r in rows], np.int32)
  width = max(int(counts.max()), 1)
  indices = np.zeros((num_classes, width), np.int32)
  for c, r in enumerate(rows):
    indices[c, :len(r)] = r
  return ClassIndex(jnp.asarray(indices), jnp.asarray(counts))


def sample_class(key, index: ClassIndex, c, n: int):
  """``n`` distinct random positions of class ``c`` (traceable ``c``); int32 ``[n]``.

  Sampling without replacement by Gumbel top-k over the valid entries of the class row. If the class has
  fewer than ``n`` examples the result repeats padding; callers check sizes with :func:`check_ipc`.
  """
  row = index.indices[c]
  valid = jnp.arange(row.shape[0]) < index.counts[c]
  scores = jnp.where(valid, jax.random.gumbel(key, row.shape), -jnp.inf)
  _, pos = jax.lax.top_k(scores, n)
  return row[pos]


def sample_balanced(key, index: ClassIndex, n: int):
  """``n`` distinct random positions per class: int32 ``[C, n]`` (row ``c`` is class ``c``)."""
  num_classes = index.indices.shape[0]
  keys = jax.random.split(key, num_classes)
  return jax.vmap(lambda k, c: sample_class(k, index, c, n))(keys, jnp.arange(num_classes))


def check_ipc(index: ClassIndex, ipc: int, name: str = "ipc") -> None:
  """Raises ``ValueError`` unless ``1 <= ipc <=`` the size of the smallest class."""
  smallest = int(np.min(np.asarray(index.counts)))
  if not isinstance(ipc, (int, np.integer)) or ipc < 1 or ipc > smallest:
    raise ValueError(
        f"{name} must be an integer in [1, {smallest}] (the smallest class has {smallest} examples), "
        f"got {ipc!r}.")


def random_subset(key, labels, num_classes: int, ipc: int) -> np.ndarray:
  """A random class-balanced subset: positions int32 ``[C, ipc]`` of ``ipc`` distinct examples per class."""
  index = class_index(labels, num_classes)
  check_ipc(index, ipc)
  return np.asarray(sample_balanced(key, index, ipc))
