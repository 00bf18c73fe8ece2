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


def fit_zca(images, reg: float = 0.1, relative: bool = False, pixel_mean=None, pixel_std=None) -> ZCA:
  """Fits ZCA whitening on ``images [N, H, W, C]``.

  Args:
    images: the fitting set (e.g. the training split).
    reg: eigenvalue regulariser; MTT whitens with ``reg = 0.1``.
    relative: if True, ``reg`` is scaled by the mean eigenvalue (``tr(Σ)/D``) as in KIP.
    pixel_mean, pixel_std: per-channel constants ``[C]`` the images were normalised with (``(x01 − mean) /
      std``). When given, the covariance and ``reg`` are those of the ``[0, 1]`` images ``x01`` — MTT's ZCA
      (kornia ``ZCAWhitening(eps=0.1)`` fitted on ``ToTensor()`` images, before any normalisation); the
      returned transform still takes the normalised images and outputs ``ZCA_01(x01)``. Without them the fit is
      on ``images`` as given (for grayscale this equals the ``[0, 1]`` fit with ``reg`` scaled by ``std²``).

  Raises:
    ValueError: ``reg`` not positive, fewer than two images, or only one of ``pixel_mean`` / ``pixel_std``.
  """
  if reg <= 0:
    raise ValueError(f"reg must be > 0, got {reg}.")
  images = np.asarray(images, np.float64)
  if images.ndim != 4 or images.shape[0] < 2:
    raise ValueError(f"images must be [N >= 2, H, W, C], got shape {images.shape}.")
  if (pixel_mean is None) != (pixel_std is None):
    raise ValueError("pixel_mean and pixel_std must be given together (the normalisation constants), or neither.")
  scale = None
  if pixel_std is not None:
    channels = images.shape[-1]
    pixel_mean = np.broadcast_to(np.asarray(pixel_mean, np.float64), (channels,))
    pixel_std = np.broadcast_to(np.asarray(pixel_std, np.float64), (channels,))
    if not np.all(pixel_std > 0):
      raise ValueError(f"pixel_std must be > 0, got {pixel_std.tolist()}.")
    images = images * pixel_std + pixel_mean  # back to [0, 1]
    scale = np.broadcast_to(pixel_std, images.shape[1:]).reshape(-1)  # d x01 / d x_normalised, per feature
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
  if scale is not None:
    # x01 − mean01 = (x_n − mean_n) · std: fold the scale in, so apply() takes the normalised images.
    mean = (mean - np.broadcast_to(pixel_mean, images.shape[1:]).reshape(-1)) / scale
    whiten = scale[:, None] * whiten
    unwhiten = unwhiten / scale[None, :]
  return ZCA(mean.astype(np.float32), whiten.astype(np.float32), unwhiten.astype(np.float32),
             tuple(images.shape[1:]))
