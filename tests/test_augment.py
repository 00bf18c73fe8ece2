"""Differentiable siamese augmentation: siamese sharing, per-image draws, closed forms, gradients, identity."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import augment
from jaxdistill.augment import OPS, DSAParams, apply_op

SHAPE = (12, 12, 3)

# The full augment is a lax.switch over the strategy's ops; run eagerly it re-traces and re-compiles on every
# call, so tests use one jitted instance (compiled once per input shape).
_augment = jax.jit(augment.augment, static_argnums=(2, 3))


def _images(n=4, seed=0, shape=SHAPE):
  return jax.random.normal(jax.random.PRNGKey(seed), (n,) + shape)


def _single(op, **kwargs):
  return DSAParams(strategy=(op,), **kwargs)


def _op(op, key, x, per_image=False, **kwargs):
  return apply_op(0, key, x, _single(op, **kwargs), per_image=per_image)


def _shift(x, dy, dx):
  """Reference zero-fill translation: out[i, j] = x[i + dy, j + dx]."""
  x = np.asarray(x)
  out = np.zeros_like(x)
  h, w = x.shape[1:3]
  for i in range(h):
    for j in range(w):
      if 0 <= i + dy < h and 0 <= j + dx < w:
        out[:, i, j] = x[:, i + dy, j + dx]
  return out


# --- parameters ------------------------------------------------------------------------------------------------

def test_default_params():
  assert augment.default_params().strategy == OPS == ("color", "crop", "cutout", "flip", "scale", "rotate")
  digits = augment.default_params(digits=True)
  assert "flip" not in digits.strategy and set(digits.strategy) == set(OPS) - {"flip"}
  assert augment.default_params(strategy="color_crop_cutout").strategy == ("color", "crop", "cutout")
  assert augment.default_params(strategy="color,rotate").strategy == ("color", "rotate")
  p = DSAParams()
  assert (p.strength, p.brightness, p.saturation, p.contrast, p.crop_ratio, p.cutout_ratio, p.flip_prob,
          p.scale_ratio, p.rotate_degrees) == (1.0, 1.0, 2.0, 0.5, 0.125, 0.5, 0.5, 1.2, 15.0)


@pytest.mark.parametrize("kwargs", [
    dict(strategy=("color", "blur")), dict(strategy=()), dict(strength=1.5), dict(strength=-0.1)])
def test_bad_params_raise(kwargs):
  with pytest.raises(ValueError):
    DSAParams(**kwargs)


def test_bad_strategy_string_raises():
  with pytest.raises(ValueError):
    augment.default_params(strategy="color_jitter")


def test_choose_op_covers_strategy():
  p = augment.default_params(digits=True)
  ops = {int(augment.choose_op(jax.random.PRNGKey(s), p)) for s in range(60)}
  assert ops == set(range(len(p.strategy)))


# --- siamese (shared) draws ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_siamese_same_key_same_transform_across_batches(op):
  """per_image=False: one draw for the whole batch, so augmenting two batches with one key equals augmenting
  their concatenation (every op is per image given its parameters; color's means are per image/pixel)."""
  a, b = _images(3, seed=1), _images(5, seed=2)
  key = jax.random.PRNGKey(11)
  joint = _op(op, key, jnp.concatenate([a, b]))
  np.testing.assert_allclose(joint[:3], _op(op, key, a), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(joint[3:], _op(op, key, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
def test_siamese_identical_images_identical_outputs(op):
  img = _images(1, seed=3)
  x = jnp.concatenate([img] * 6)
  out = np.asarray(_op(op, jax.random.PRNGKey(5), x))
  for i in range(1, 6):
    np.testing.assert_array_equal(out[i], out[0])


def test_siamese_augment_full_strategy():
  """The full augment (op drawn by the key) is siamese too, and the key decides the op."""
  a, b = _images(2, seed=1), _images(3, seed=2)
  p = augment.default_params()
  outs = set()
  for s in range(8):
    key = jax.random.PRNGKey(s)
    joint = _augment(key, jnp.concatenate([a, b]), p, False)
    np.testing.assert_allclose(joint[:2], _augment(key, a, p, False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(joint[2:], _augment(key, b, p, False), rtol=1e-5, atol=1e-5)
    outs.add(np.asarray(joint).tobytes())
  assert len(outs) > 1


def test_augment_jit_and_vmap_match_eager():
  x = _images(3)
  p = augment.default_params()
  key = jax.random.PRNGKey(4)
  eager = augment.augment(key, x, p)
  jitted = _augment(key, x, p, False)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  # vmap over classes with one shared op (the DM/DSA pattern): op index computed outside.
  keys = jax.random.split(key, 2)
  op = augment.choose_op(key, p)
  xs = jnp.stack([x, x + 1.0])
  batched = jax.jit(jax.vmap(lambda k, v: apply_op(op, k, v, p)))(keys, xs)
  single = jax.jit(lambda k, v: apply_op(op, k, v, p))
  for c in range(2):
    np.testing.assert_allclose(batched[c], single(keys[c], xs[c]), rtol=1e-5, atol=1e-5)


# --- per-image draws -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", OPS)
def test_per_image_draws_differ(op):
  img = _images(1, seed=3)
  x = jnp.concatenate([img] * 16)
  out = np.asarray(_op(op, jax.random.PRNGKey(5), x, per_image=True))
  distinct = {o.tobytes() for o in out}
  assert len(distinct) > 1
  shared = np.asarray(_op(op, jax.random.PRNGKey(5), x, per_image=False))
  assert len({o.tobytes() for o in shared}) == 1


# --- identity at strength 0 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("op", OPS)
def test_strength_zero_is_identity(op, per_image):
  x = _images(3)
  for s in range(3):
    out = _op(op, jax.random.PRNGKey(s), x, per_image=per_image, strength=0.0)
    np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)
  out = _augment(jax.random.PRNGKey(0), x, DSAParams(strength=0.0), per_image)
  np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)


# --- closed forms ----------------------------------------------------------------------------------------------

def test_flip_is_horizontal_mirror():
  x = _images(3)
  np.testing.assert_array_equal(_op("flip", jax.random.PRNGKey(0), x, flip_prob=1.0), x[:, :, ::-1])
  np.testing.assert_array_equal(_op("flip", jax.random.PRNGKey(0), x, flip_prob=0.0), x)
  flipped = [bool(np.array_equal(_op("flip", jax.random.PRNGKey(s), x), x[:, :, ::-1])) for s in range(40)]
  assert 5 < sum(flipped) < 35  # probability 0.5


def test_crop_is_a_bounded_zero_fill_shift():
  x = _images(2, shape=(28, 28, 1))
  r = int(0.125 * 28 + 0.5)  # 4
  seen = set()
  for s in range(12):
    out = np.asarray(_op("crop", jax.random.PRNGKey(s), x))
    match = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
             if np.array_equal(out, _shift(x, dy, dx))]
    assert match, f"key {s}: not a shift within ±{r}"
    seen.add(match[0])
  assert len(seen) > 3


def test_cutout_zeroes_one_square():
  h = 28
  side = int(0.5 * h + 0.5)  # 14
  x = jnp.ones((2, h, h, 1))
  for s in range(10):
    mask = np.asarray(_op("cutout", jax.random.PRNGKey(s), x))[..., 0]
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask[0], mask[1])  # shared draw
    rows, cols = np.nonzero(mask[0] == 0)
    assert rows.size > 0
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    assert rows.size == (r1 - r0 + 1) * (c1 - c0 + 1)  # a filled rectangle
    # A side-14 square clipped by the border: full length unless it touches the image edge.
    for lo, hi in ((r0, r1), (c0, c1)):
      length = hi - lo + 1
      assert length <= side
      assert length == side or lo == 0 or hi == h - 1
  # Other pixels keep their values.
  y = _images(1, shape=(h, h, 1))
  out = np.asarray(_op("cutout", jax.random.PRNGKey(0), y))
  kept = out != 0
  np.testing.assert_array_equal(out[kept], np.asarray(y)[kept])


def test_color_on_grey_images_closed_form():
  """Saturation does nothing to a 1-channel image, so color = contrast(brightness(x)): the output minus its
  mean is k·(x − mean x) with k = u + 0.5 ∈ [0.5, 1.5), and the mean moves by u' − 0.5 ∈ [−0.5, 0.5)."""
  x = np.asarray(_images(3, shape=(10, 10, 1)))
  ks = []
  for s in range(10):
    out = np.asarray(_op("color", jax.random.PRNGKey(s), jnp.asarray(x)))
    xc = x - x.mean(axis=(1, 2, 3), keepdims=True)
    oc = out - out.mean(axis=(1, 2, 3), keepdims=True)
    k = (oc * xc).sum(axis=(1, 2, 3)) / (xc * xc).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(oc, k[:, None, None, None] * xc, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(k, k[0], rtol=1e-5)  # one draw for the batch
    assert 0.5 <= k[0] < 1.5
    shift = out.mean(axis=(1, 2, 3)) - x.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(shift, shift[0], atol=1e-5)
    assert -0.5 - 1e-6 <= shift[0] < 0.5 + 1e-6
    ks.append(k[0])
  assert np.ptp(ks) > 0.1


def test_color_keeps_grey_rgb_images_grey():
  grey = jnp.repeat(_images(2, shape=(8, 8, 1)), 3, axis=-1)
  out = np.asarray(_op("color", jax.random.PRNGKey(0), grey))
  np.testing.assert_allclose(out[..., 1], out[..., 0], atol=1e-6)
  np.testing.assert_allclose(out[..., 2], out[..., 0], atol=1e-6)
  colour = _images(2, shape=(8, 8, 3))
  assert not np.allclose(_op("color", jax.random.PRNGKey(0), colour), colour)


@pytest.mark.parametrize("op", ["scale", "rotate"])
def test_scale_and_rotate_fix_the_centre(op):
  x = _images(3, shape=(9, 9, 2))  # odd size: the centre is a pixel
  for s in range(5):
    out = np.asarray(_op(op, jax.random.PRNGKey(s), x, per_image=True))
    np.testing.assert_allclose(out[:, 4, 4], np.asarray(x)[:, 4, 4], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, x)


def test_rotate_preserves_a_centred_disc():
  """Rotation about the centre maps a radially symmetric image onto itself (away from the border)."""
  n = 21
  yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
  radius = np.hypot(yy, xx)
  img = np.exp(-(radius / 4.0) ** 2)[None, :, :, None].astype(np.float32)
  out = np.asarray(_op("rotate", jax.random.PRNGKey(0), jnp.asarray(img)))
  inside = radius < 8
  np.testing.assert_allclose(out[0, inside, 0], img[0, inside, 0], atol=0.03)
  # …whereas an off-centre image moves.
  bar = np.zeros_like(img)
  bar[0, 2, :, 0] = 1.0
  assert not np.allclose(_op("rotate", jax.random.PRNGKey(0), jnp.asarray(bar)), bar, atol=1e-2)


# --- gradients -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("op", OPS)
def test_gradients_flow_and_match_finite_differences(op, per_image):
  x = _images(2)
  w = jax.random.normal(jax.random.PRNGKey(7), x.shape)
  v = jax.random.normal(jax.random.PRNGKey(8), x.shape)
  key = jax.random.PRNGKey(2)

  def f(x):
    return jnp.sum(_op(op, key, x, per_image=per_image) * w)

  g = jax.grad(f)(x)
  assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
  # Every op is affine in the images for a fixed key, so a central difference is exact up to round-off.
  eps = 0.5
  fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
  np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=1e-3, atol=1e-3)
  # And the plain sum has a finite, nonzero gradient too.
  g_sum = jax.grad(lambda x: jnp.sum(_op(op, key, x, per_image=per_image)))(x)
  assert np.all(np.isfinite(np.asarray(g_sum))) and np.any(np.asarray(g_sum) != 0)


def test_augment_gradient_through_switch():
  x = _images(2)
  p = augment.default_params()
  grad = jax.jit(jax.grad(lambda k, x: jnp.sum(augment.augment(k, x, p) ** 2), argnums=1))
  for s in range(3):
    g = grad(jax.random.PRNGKey(s), x)
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


def test_output_shape_and_dtype():
  x = _images(3, shape=(32, 32, 3))
  for s in range(4):
    out = _augment(jax.random.PRNGKey(s), x, DSAParams(), True)
    assert out.shape == x.shape and out.dtype == x.dtype
