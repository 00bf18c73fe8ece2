"""Differentiable Siamese Augmentation (Zhao & Bilen, 2021) in JAX.

One operation is drawn per call from the strategy (default ``color, crop, cutout, flip, scale, rotate``;
"color" is brightness → saturation → contrast in sequence). Its parameters are either shared by the whole
batch (``per_image=False``: the *siamese* mode used when matching, where the real and synthetic batch of a class
are augmented with the same key and so the same transform) or drawn per image (``per_image=True``: training
networks). Everything is a pure function of the key, differentiable w.r.t. the images and jit/vmap-safe.

Ranges, with u ~ U[0, 1) and strength s (s = 1 is the published setting, s = 0 the identity):
brightness ``x + s(u − 0.5)`` · saturation ``(x − m_c)(1 + s(2u − 1)) + m_c`` · contrast
``(x − m)(1 + s(u − 0.5)) + m`` · crop: integer shift in ``[−r, r]``, ``r = ⌊0.125 s H + 0.5⌋``, zero fill ·
cutout: zero square of side ``⌊0.5 s H + 0.5⌋`` · flip with probability ``0.5 s`` · scale: ``sx, sy`` ~
U(1/1.2, 1.2) (interpolated towards 1 by s) · rotate: angle ~ U(−15°, 15°)·s; scale and rotate resample
bilinearly with zero padding (``align_corners=True`` convention of the reference code).
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = OPS
DIGIT_STRATEGY = ("color", "crop", "cutout", "scale", "rotate")


@dataclasses.dataclass(frozen=True)
class DSAParams:
  """DSA ranges (the published defaults) and an overall ``strength`` in [0, 1]."""
  strategy: Tuple[str, ...] = DEFAULT_STRATEGY
  strength: float = 1.0
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5
  crop_ratio: float = 0.125
  cutout_ratio: float = 0.5
  flip_prob: float = 0.5
  scale_ratio: float = 1.2
  rotate_degrees: float = 15.0

  def __post_init__(self):
    if not self.strategy:
      raise ValueError("strategy must name at least one of " + str(list(OPS)) + ".")
    for op in self.strategy:
      if op not in OPS:
        raise ValueError(f"strategy entries must be in {list(OPS)}, got {op!r}.")
    if not 0.0 <= self.strength <= 1.0:
      raise ValueError(f"strength must be in [0, 1], got {self.strength}.")


def default_params(digits: bool = False, strategy=None) -> DSAParams:
  """Published DSA settings; no flip for digit datasets."""
  if strategy is None:
    strategy = DIGIT_STRATEGY if digits else DEFAULT_STRATEGY
  elif isinstance(strategy, str):
    strategy = tuple(s for s in strategy.replace(",", "_").split("_") if s)
  return DSAParams(strategy=tuple(strategy))


def _uniform(key, n, per_image):
  """u ~ U[0, 1): shape ``[n]`` per image, or one value broadcast to ``[n]`` (siamese)."""
  if per_image:
    return jax.random.uniform(key, (n,))
  return jnp.broadcast_to(jax.random.uniform(key, ()), (n,))


def _randint(key, n, low, high, per_image):
  """Integers in [low, high): ``[n]`` per image, or one shared value."""
  if per_image:
    return jax.random.randint(key, (n,), low, high)
  return jnp.broadcast_to(jax.random.randint(key, (), low, high), (n,))


def _bilinear(image, ys, xs):
  """Samples ``image [H, W, C]`` at float pixel coordinates ``ys, xs [H, W]``; zero outside."""
  h, w, _ = image.shape
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  wy, wx = ys - y0, xs - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

  def tap(yi, xi):
    valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    v = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
    return v * valid[..., None].astype(image.dtype)

  return (tap(y0, x0) * ((1 - wy) * (1 - wx))[..., None] + tap(y0, x0 + 1) * ((1 - wy) * wx)[..., None]
          + tap(y0 + 1, x0) * (wy * (1 - wx))[..., None] + tap(y0 + 1, x0 + 1) * (wy * wx)[..., None])


def _affine(x, theta):
  """Resamples ``x [N, H, W, C]`` through per-image affine maps ``theta [N, 2, 3]`` acting on normalised
  output coordinates in [−1, 1] (``align_corners=True``), as ``affine_grid`` + ``grid_sample`` do."""
  _, h, w, _ = x.shape
  gy, gx = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
  grid = jnp.stack([gx, gy, jnp.ones_like(gx)], -1)  # [H, W, 3] as (x, y, 1)

  def one(img, th):
    src = grid @ th.T  # [H, W, 2] as (x, y)
    xs = (src[..., 0] + 1.0) * 0.5 * (w - 1)
    ys = (src[..., 1] + 1.0) * 0.5 * (h - 1)
    return _bilinear(img, ys, xs)

  return jax.vmap(one)(x, theta)


def _shift(x, dy, dx):
  """Integer translation of ``x [N, H, W, C]`` by ``dy, dx [N]`` with zero fill."""
  _, h, w, _ = x.shape
  gy, gx = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")

  def one(img, sy, sx):
    yi, xi = gy + sy, gx + sx
    valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    return img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)] * valid[..., None].astype(img.dtype)

  return jax.vmap(one)(x, dy, dx)


def color(key, x, p: DSAParams, per_image: bool):
  """Brightness, saturation and contrast in sequence, each with its own draw."""
  n, s = x.shape[0], p.strength
  kb, ks, kc = jax.random.split(key, 3)
  u = _uniform(kb, n, per_image)[:, None, None, None]
  x = x + s * (u - 0.5) * p.brightness
  u = _uniform(ks, n, per_image)[:, None, None, None]
  m = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - m) * (1.0 + s * (u * p.saturation - 1.0)) + m
  u = _uniform(kc, n, per_image)[:, None, None, None]
  m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - m) * (1.0 + s * (u + p.contrast - 1.0)) + m


def crop(key, x, p: DSAParams, per_image: bool):
  """Random integer translation with zero fill (the reference "crop")."""
  n, h, w = x.shape[:3]
  ry = int(p.crop_ratio * p.strength * h + 0.5)
  rx = int(p.crop_ratio * p.strength * w + 0.5)
  ky, kx = jax.random.split(key)
  return _shift(x, _randint(ky, n, -ry, ry + 1, per_image), _randint(kx, n, -rx, rx + 1, per_image))


def cutout(key, x, p: DSAParams, per_image: bool):
  """Zeroes a square of side ``⌊0.5 s H + 0.5⌋`` at a uniformly drawn centre."""
  n, h, w = x.shape[:3]
  sh = int(p.cutout_ratio * p.strength * h + 0.5)
  sw = int(p.cutout_ratio * p.strength * w + 0.5)
  if sh == 0 or sw == 0:
    return x
  ky, kx = jax.random.split(key)
  cy = _randint(ky, n, 0, h + (1 - sh % 2), per_image)
  cx = _randint(kx, n, 0, w + (1 - sw % 2), per_image)
  ys = jnp.arange(h)[None, :] - (cy[:, None] - sh // 2)
  xs = jnp.arange(w)[None, :] - (cx[:, None] - sw // 2)
  inside = ((ys >= 0) & (ys < sh))[:, :, None] & ((xs >= 0) & (xs < sw))[:, None, :]
  return x * (1.0 - inside[..., None].astype(x.dtype))


def flip(key, x, p: DSAParams, per_image: bool):
  """Horizontal flip with probability ``0.5 s``."""
  do = _uniform(key, x.shape[0], per_image) < p.flip_prob * p.strength
  return jnp.where(do[:, None, None, None], x[:, :, ::-1, :], x)


def scale(key, x, p: DSAParams, per_image: bool):
  """Independent x/y scaling by factors in U(1/ratio, ratio) (moved towards 1 by the strength)."""
  n = x.shape[0]
  kx, ky = jax.random.split(key)
  lo, hi = 1.0 / p.scale_ratio, p.scale_ratio
  sx = 1.0 + p.strength * (lo + (hi - lo) * _uniform(kx, n, per_image) - 1.0)
  sy = 1.0 + p.strength * (lo + (hi - lo) * _uniform(ky, n, per_image) - 1.0)
  zero = jnp.zeros_like(sx)
  theta = jnp.stack([jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], 1)
  return _affine(x, theta)


def rotate(key, x, p: DSAParams, per_image: bool):
  """Rotation by an angle in U(−15°, 15°) (times the strength)."""
  n = x.shape[0]
  angle = (_uniform(key, n, per_image) - 0.5) * 2.0 * p.rotate_degrees * p.strength * jnp.pi / 180.0
  c, s, zero = jnp.cos(angle), jnp.sin(angle), jnp.zeros_like(angle)
  theta = jnp.stack([jnp.stack([c, s, zero], -1), jnp.stack([-s, c, zero], -1)], 1)
  return _affine(x, theta)


_OP_FNS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


def choose_op(key, params: DSAParams):
  """Index (int32 scalar) of the operation drawn for one call, in ``params.strategy``."""
  return jax.random.randint(key, (), 0, len(params.strategy))


def apply_op(op_index, key, x, params: DSAParams, per_image: bool = False):
  """Applies the ``op_index``-th operation of the strategy to ``x [N, H, W, C]`` with randomness ``key``.

  Keep ``op_index`` un-batched under ``vmap`` (compute it outside) so that only one branch runs.
  """
  branches = [lambda k, v, f=_OP_FNS[name]: f(k, v, params, per_image) for name in params.strategy]
  if len(branches) == 1:
    return branches[0](key, x)
  return jax.lax.switch(op_index, branches, key, x)


def augment(key, x, params: DSAParams = DSAParams(), per_image: bool = False):
  """DSA of ``x [N, H, W, C]``: draws one operation and its parameters from ``key``.

  Siamese use: call with the same ``key`` on the real and the synthetic batch of a class.

  Returns:
    Augmented images, same shape and dtype as ``x``.
  """
  k_op, k_param = jax.random.split(key)
  return apply_op(choose_op(k_op, params), k_param, x, params, per_image)
