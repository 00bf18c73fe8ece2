"""Multi-formation (IDC: Kim et al., ICML 2022, "Dataset Condensation via Efficient Synthetic-Data
Parameterization", Sec. 3.1): each stored image of full size ``H × W`` holds ``factor²`` smaller images.

Rendering (the reference code's ``decode_zoom``): the stored image is padded at the bottom / right to
``factor · ⌈H / factor⌉`` (only when ``factor`` does not divide the size), cut into a ``factor × factor`` grid
of tiles of ``⌈H / factor⌉ × ⌈W / factor⌉`` pixels, and every tile is upsampled back to ``H × W`` bilinearly
(half-pixel centres, PyTorch's ``align_corners=False``, which ``jax.image.resize`` computes exactly when
upsampling). ``factor = 2`` renders 4 training images per stored image at equal storage. A rendered image has
its stored image's class; the rendered set stays class-major (the ``factor²`` tiles of stored image ``s`` are
rendered images ``s·factor² … s·factor² + factor² − 1``, tiles in row-major order).

Initialisation: ``"mix"`` (IDC's default for ``factor > 1``: each tile starts as a real image of the class,
downsampled with nearest-neighbour sampling as ``F.interpolate``'s default), ``"real"`` / ``"random"`` (one real
image per stored image, IDC's ``random``) or ``"noise"``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.data.sampling import check_ipc, class_index, sample_balanced
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats
from jaxdistill.synthetic.pixels import class_major_labels
from jaxdistill.validation import check_choice, check_ints, is_number

INITS = ("mix", "real", "random", "noise")


@dataclasses.dataclass(frozen=True)
class MultiFormationConfig:
  """Multi-formation settings.

  Attributes:
    factor: tiles per side; every stored image renders ``factor²`` images (IDC: 2 for 28/32-pixel data, 3 for
      ImageNet; 1 = the identity, IDC-I).
    pad_value: value of the padding added when ``factor`` does not divide the image size, in the (normalised)
      space of the images (IDC pads its ``[0, 1]`` images with 0.5; 0 here is the normalised data's mean).
  """
  factor: int = 2
  pad_value: float = 0.0

  def validate(self):
    check_ints(self, "factor")
    if not (is_number(self.pad_value) and np.isfinite(self.pad_value)):
      raise ValueError(f"pad_value must be a finite number, got {self.pad_value!r}.")
    return self


def tile_size(size: int, factor: int) -> int:
  """Side of one tile: ``⌈size / factor⌉``."""
  return -(-int(size) // int(factor))


def decode(images, factor: int, pad_value: float = 0.0):
  """Multi-formation of ``images [n, H, W, C]``: ``[n · factor², H, W, C]`` (see module docstring).

  Tile ``(i, j)`` (row ``i``, column ``j``) of stored image ``s`` is rendered image ``s · factor² + i · factor
  + j``: the crop ``[i·t_h, (i+1)·t_h) × [j·t_w, (j+1)·t_w)`` of the padded image (``t = ⌈size / factor⌉``)
  resized bilinearly to ``H × W``. Differentiable in ``images``; ``factor = 1`` returns them unchanged.
  """
  check_ints({"factor": factor}, "factor")
  factor = int(factor)
  if factor == 1:
    return images
  n, h, w, c = images.shape
  th, tw = tile_size(h, factor), tile_size(w, factor)
  pad_h, pad_w = th * factor - h, tw * factor - w
  if pad_h or pad_w:
    images = jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=pad_value)
  tiles = images.reshape(n, factor, th, factor, tw, c).transpose(0, 1, 3, 2, 4, 5)
  tiles = tiles.reshape(n * factor * factor, th, tw, c)
  return jax.image.resize(tiles, (tiles.shape[0], h, w, c), method="bilinear")


def _nearest_resize(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """``F.interpolate(mode="nearest")`` of ``images [n, H, W, C]``: source index ``⌊dst · in / out⌋``."""
  h, w = images.shape[1:3]
  rows = np.minimum(np.floor(np.arange(out_h) * (h / out_h)).astype(int), h - 1)
  cols = np.minimum(np.floor(np.arange(out_w) * (w / out_w)).astype(int), w - 1)
  return images[:, rows][:, :, cols]


def mix_images(real: np.ndarray, factor: int) -> np.ndarray:
  """IDC's ``mix`` initialisation of stored images from ``real [n · factor², H, W, C]``: tile ``k`` (row-major)
  of stored image ``s`` is real image ``s · factor² + k`` downsampled (nearest) to the tile size, so
  :func:`decode` renders (up to interpolation) the real images; when ``factor`` does not divide the size, the
  last row / column of tiles is cropped (:func:`decode` pads it back). Returns ``[n, H, W, C]``."""
  real = np.asarray(real, np.float32)
  f2 = factor * factor
  if real.shape[0] % f2:
    raise ValueError(f"mix needs a multiple of factor² = {f2} real images, got {real.shape[0]}.")
  n, (h, w, c) = real.shape[0] // f2, real.shape[1:]
  th, tw = tile_size(h, factor), tile_size(w, factor)
  small = _nearest_resize(real, th, tw).reshape(n, factor, factor, th, tw, c)
  canvas = small.transpose(0, 1, 3, 2, 4, 5).reshape(n, factor * th, factor * tw, c)
  return np.ascontiguousarray(canvas[:, :h, :w])


def init_multi_formation(key, config: MultiFormationConfig, init: str, real_images, real_labels,
                         num_classes: int, ipc: int, *, noise_std: float = 1.0) -> SynState:
  """A multi-formation set of ``ipc`` stored images per class (the storage of ``ipc`` pixel images).

  Args:
    key: PRNG key.
    config: the :class:`MultiFormationConfig`.
    init: ``"mix"`` (``ipc · factor²`` real images per class, each downsampled into one tile), ``"real"`` /
      ``"random"`` (``ipc`` real images per class), or ``"noise"`` (``N(0, noise_std²)``).
    real_images: ``[N, H, W, C]`` normalised training images; real_labels: int ``[N]``.
    num_classes, ipc: classes and stored images per class.

  Returns:
    ``SynState(params={"images": [C·ipc, H, W, C]}, const={"labels": int32 [C·ipc]})`` (stored images and their
    classes, class-major).

  Raises:
    ValueError: an unknown ``init``, a bad config, or too few real images in a class.
  """
  config.validate()
  check_choice("init", init, INITS)
  check_ints({"ipc": ipc}, "ipc")
  real_labels = np.asarray(real_labels)
  image_shape = tuple(np.shape(real_images)[1:])
  index = class_index(real_labels, num_classes)
  f2 = config.factor ** 2
  if init == "noise":
    check_ipc(index, ipc)
    images = noise_std * jax.random.normal(key, (num_classes * ipc,) + image_shape, jnp.float32)
  elif init in ("real", "random"):
    check_ipc(index, ipc)
    pos = np.asarray(sample_balanced(key, index, ipc)).reshape(-1)
    images = jnp.asarray(np.asarray(real_images)[pos], jnp.float32)
  else:
    check_ipc(index, ipc * f2, "ipc · factor²")
    pos = np.asarray(sample_balanced(key, index, ipc * f2)).reshape(-1)
    images = jnp.asarray(mix_images(np.asarray(real_images)[pos], config.factor))
  return SynState({"images": images}, {"labels": class_major_labels(num_classes, ipc)})


def multi_formation_parameterisation(config: MultiFormationConfig) -> Parameterisation:
  """The multi-formation :class:`Parameterisation`: ``render(state)`` -> ``SyntheticBatch(images
  [C·ipc·factor², H, W, C], labels int32 [C·ipc·factor²])`` (class-major: each stored label repeated
  ``factor²`` times); ``storage(state)`` = floats of the stored images (equal to a pixel set of the same
  ``ipc``)."""
  config.validate()
  factor, pad_value = int(config.factor), float(config.pad_value)

  def render(state: SynState) -> SyntheticBatch:
    images = decode(state.params["images"], factor, pad_value)
    labels = jnp.repeat(state.const["labels"], factor * factor, axis=0)
    return SyntheticBatch(images, labels, state.params.get("lr"))

  def storage(state: SynState) -> int:
    return num_floats(state.params)

  return Parameterisation(f"multi_formation{factor}", render, storage)
