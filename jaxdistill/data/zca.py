"""ZCA whitening as a fitted transform (KIP, MTT on RGB data).

``fit_zca(images, reg)`` computes ``W = U diag((s + reg)^-1/2) U^T`` from the eigendecomposition
``U diag(s) U^T`` of the feature covariance of the flattened training images; ``apply`` whitens,
``invert`` maps whitened images back (for display).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ZCA(NamedTuple):
  """A fitted ZCA transform on images of shape ``image_shape`` (``D = H·W·C`` features).

  Attributes:
    mean: ``[D]`` feature mean of the fitting set.
    whiten: ``[D, D]`` whitening matrix.
    unwhiten: ``[D, D]`` its inverse.
    image_shape: ``(H, W, C)``.
  """
  mean: np.ndarray
  whiten: np.ndarray
  unwhiten: np.ndarray
  image_shape: tuple

  def apply(self, images):
    """Whitens ``[N, H, W, C]`` images (NumPy or JAX arrays)."""
    n = images.shape[0]
    flat = images.reshape(n, -1) - self.mean
    return (flat @ self.whiten).reshape((n,) + tuple(self.image_shape))

  def invert(self, images):
    """Undoes :meth:`apply` on ``[N, H, W, C]`` images."""
    n = images.shape[0]
    flat = images.reshape(n, -1) @ self.unwhiten + self.mean
    return flat.reshape((n,) + tuple(self.image_shape))


def fit_zca(images, reg: float = 0.1, relative: bool = False) -> ZCA:
  """Fits ZCA whitening on ``images [N, H, W, C]``.

  Args:
    images: the fitting set (e.g. the training split).
    reg: eigenvalue regulariser; MTT whitens with ``reg = 0.1``.
    relative: if True, ``reg`` is scaled by the mean eigenvalue (``tr(Σ)/D``) as in KIP.

  Raises:
    ValueError: ``reg`` not positive, or fewer than two images.
  """
  if reg <= 0:
    raise ValueError(f"reg must be > 0, got {reg}.")
  images = np.asarray(images, np.float64)
  if images.ndim != 4 or images.shape[0] < 2:
    raise ValueError(f"images must be [N >= 2, H, W, C], got shape {images.shape}.")
  n = images.shape[0]
  flat = images.reshape(n, -1)
  mean = flat.mean(0)
  centred = flat - mean
  cov = centred.T @ centred / (n - 1)
  s, u = np.linalg.eigh(cov)
  s = np.clip(s, 0.0, None)
  eps = reg * (s.mean() if relative else 1.0)
  whiten = (u * (1.0 / np.sqrt(s + eps))) @ u.T
  unwhiten = (u * np.sqrt(s + eps)) @ u.T
  return ZCA(mean.astype(np.float32), whiten.astype(np.float32), unwhiten.astype(np.float32),
             tuple(images.shape[1:]))
