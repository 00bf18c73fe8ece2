"""ZCA whitening: closed forms of the fitted transform."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import data

SHAPE = (4, 4, 2)  # D = 32 features


@pytest.fixture(scope="module")
def images():
  """Correlated, non-centred Gaussian images [3000, 4, 4, 2] with eigenvalues well above the regulariser."""
  r = np.random.default_rng(0)
  d = int(np.prod(SHAPE))
  q, _ = np.linalg.qr(r.normal(size=(d, d)))  # random rotation: correlated features
  scales = np.sqrt(np.linspace(0.5, 5.0, d))  # covariance eigenvalues in [0.5, 5]
  x = (r.normal(size=(3000, d)) * scales) @ q.T + r.normal(size=d) * 3.0
  return x.reshape((-1,) + SHAPE).astype(np.float32)


def _cov(x):
  flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  return np.cov(flat, rowvar=False)


def test_whitened_covariance_is_identity(images):
  s = np.linalg.eigvalsh(_cov(images))
  assert s.min() > 0.3  # the regulariser below is negligible against every eigenvalue
  zca = data.fit_zca(images, reg=1e-6)
  white = zca.apply(images)
  assert white.shape == images.shape
  np.testing.assert_allclose(white.reshape(len(images), -1).mean(0), 0.0, atol=1e-3)
  np.testing.assert_allclose(_cov(white), np.eye(s.size), atol=1e-3)


@pytest.mark.parametrize("relative", [False, True])
def test_regularised_covariance_closed_form(images, relative):
  """With regulariser eps the whitened covariance is U diag(s / (s + eps)) U^T."""
  reg = 0.5
  cov = _cov(images)
  s, u = np.linalg.eigh(cov)
  eps = reg * s.mean() if relative else reg
  zca = data.fit_zca(images, reg=reg, relative=relative)
  expected = (u * (s / (s + eps))) @ u.T
  np.testing.assert_allclose(_cov(zca.apply(images)), expected, atol=2e-3)


def test_whiten_is_symmetric_and_unwhiten_is_its_inverse(images):
  zca = data.fit_zca(images, reg=0.1)
  np.testing.assert_allclose(zca.whiten, zca.whiten.T, atol=1e-5)
  np.testing.assert_allclose(zca.whiten @ zca.unwhiten, np.eye(zca.whiten.shape[0]), atol=1e-4)
  assert zca.image_shape == SHAPE


def test_invert_undoes_apply(images):
  zca = data.fit_zca(images, reg=0.1)
  x = images[:50]
  np.testing.assert_allclose(zca.invert(zca.apply(x)), x, rtol=1e-4, atol=1e-3)


def test_apply_on_jax_arrays_matches_numpy(images):
  zca = data.fit_zca(images, reg=0.1)
  x = images[:8]
  out = zca.apply(jnp.asarray(x))
  assert isinstance(out, jnp.ndarray)
  np.testing.assert_allclose(np.asarray(out), zca.apply(x), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(zca.invert(out)), x, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("reg", [0.0, -0.1])
def test_nonpositive_reg_raises(images, reg):
  with pytest.raises(ValueError, match="reg"):
    data.fit_zca(images, reg=reg)


def test_bad_image_shapes_raise(images):
  with pytest.raises(ValueError):
    data.fit_zca(images[:1])  # one image has no covariance
  with pytest.raises(ValueError):
    data.fit_zca(images[:, :, :, 0])  # not [N, H, W, C]


def test_fit_on_unit_range_images_as_mtt(images):
  """With the normalisation constants, the fit (and reg) are those of the [0, 1] images, and the transform maps
  normalised images to the whitening of their [0, 1] version (MTT: kornia ZCAWhitening(eps=0.1) on ToTensor())."""
  mean, std = np.array([0.3, 0.6]), np.array([0.25, 0.5])
  x01 = images * 0.05 + 0.5  # a [0, 1]-like range, per-channel statistics below
  normalised = (x01 - mean) / std
  want = data.fit_zca(x01, reg=0.1).apply(x01)
  zca = data.fit_zca(normalised, reg=0.1, pixel_mean=mean, pixel_std=std)
  np.testing.assert_allclose(zca.apply(normalised), want, rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(zca.invert(zca.apply(normalised)), normalised, atol=2e-3)
  # Without the constants the fit is on the normalised images: a different (less regularised) transform here.
  assert not np.allclose(data.fit_zca(normalised, reg=0.1).apply(normalised), want, atol=1e-2)


def test_grayscale_unit_range_fit_is_a_rescaled_regulariser(images):
  """One channel: fitting [0, 1] images with eps equals fitting the normalised ones with eps / std²."""
  gray = images[..., :1] * 0.05 + 0.5
  mean, std = 0.4, 0.3
  normalised = (gray - mean) / std
  a = data.fit_zca(normalised, reg=0.1, pixel_mean=[mean], pixel_std=[std]).apply(normalised)
  b = data.fit_zca(normalised, reg=0.1 / std ** 2).apply(normalised)
  np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


def test_pixel_stats_must_come_together(images):
  with pytest.raises(ValueError, match="pixel_mean and pixel_std"):
    data.fit_zca(images, pixel_mean=[0.5, 0.5])
  with pytest.raises(ValueError, match="pixel_std must be > 0"):
    data.fit_zca(images, pixel_mean=[0.5, 0.5], pixel_std=[0.5, 0.0])
