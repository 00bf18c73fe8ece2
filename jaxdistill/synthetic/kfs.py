"""KFS: latent codes × tiny shared decoders (Lee, Lee & Hwang, "Dataset Condensation with Latent Space Knowledge
Factorization and Sharing", arXiv 2208.10494, 2022).

The stored set is ``B_c`` latent codes per class ``[C·B_c, h_z, w_z, c_z]`` (class-major, ``h_z = ⌈H / s⌉`` for
a downsampling factor ``s``: a code is a fraction of an image) and ``D`` tiny decoders shared by all classes.
Every (code, decoder) pair renders an image, so ``C·B_c·D`` images cost only the codes and ``D`` small networks.
Decoder ``j`` (:class:`Decoder`) maps a code to an image::

    u = resize_bilinear(z, H × W)                  [H, W, c_z]   (parameter-free, shared by every decoder)
    e = relu(conv3x3_j(u))                           [H, W, width]
    x_j(z) = u[..., :ch] + conv3x3'_j(e)             [H, W, ch]

The residual ``u[..., :ch]`` is ours (as in :mod:`jaxdistill.synthetic.haba`): with codes initialised from
downsampled real images (``init="real"``, their channels tiled to ``c_z``) every decoded image starts as a blurred
real one; ``init="noise"`` draws the codes from N(0, 1).

The rendering, pair sampling and budget are HaBa's, shared with :mod:`jaxdistill.synthetic.haba`: ``render(state,
key)`` (training, ``pairs="sampled"``) gives two distinct random decoders per code (``[C·B_c·2, ...]``, image
``(c·B_c + i)·2 + v``), ``render(state)`` every pair (``[C·B_c·D, ...]``, image ``(c·B_c + i)·D + j`` =
``x_j(z_{c,i})``); storage = codes + decoder floats, held to the budget ``C·IPC·H·W·ch`` of the pixel set it
replaces (:func:`jaxdistill.synthetic.generator.check_budget`).

No public code of KFS could be found (searched: code, pages, docs, issues), so this is built from the paper's
description (abstract: "learnable codes defined in a compact latent space followed by a set of tiny decoders
which maps them differently to the original input space"). The decoder architecture, the residual, the code
initialisation and the regulariser are our choices; :func:`contrastive_regulariser` offers HaBa's adversarial
contrastive term (off by default, ``contrastive=0``) as a diversity term between the decoders, not a term taken
from the KFS paper. See docs/kfs_gtn.md.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.data.sampling import check_ipc, class_index, sample_balanced
from jaxdistill.objectives.regularised import Regulariser
from jaxdistill.synthetic import haba
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats
from jaxdistill.synthetic.generator import check_budget
from jaxdistill.validation import check_bools, check_choice, check_ints, check_nonnegative, check_positive

CODE_INITS = ("real", "noise")
PAIRS = haba.PAIRS


@dataclasses.dataclass(frozen=True)
class KFSConfig:
  """KFS settings.

  Attributes:
    codes_per_class: ``B_c``, latent codes per class.
    decoders: ``D``, tiny decoders shared by all classes (evaluation images per class ``B_c · D``; at least 2
      with ``pairs="sampled"`` or ``contrastive > 0``).
    latent_channels: ``c_z``, channels of a code.
    downsample: ``s``, a code is ``⌈H / s⌉ × ⌈W / s⌉ × c_z``.
    width: hidden channels of each decoder.
    init: ``"real"`` (downsampled real images of each class, channels tiled to ``c_z``) or ``"noise"``.
    enforce_budget: refuse codes + decoders over the pixel budget of the IPC they replace.
    pairs: ``"sampled"`` (training render: two distinct random decoders per code) or ``"all"``.
    contrastive: weight of HaBa's adversarial contrastive term between decoders (0: off; the KFS paper's own
      regulariser is not reproduced, module docstring).
    extractor_width, extractor_lr: the contrastive term's feature extractor (:mod:`jaxdistill.synthetic.haba`).
  """
  codes_per_class: int = 4
  decoders: int = 4
  latent_channels: int = 1
  downsample: int = 2
  width: int = 8
  init: str = "real"
  enforce_budget: bool = True
  pairs: str = "sampled"
  contrastive: float = 0.0
  extractor_width: int = 128
  extractor_lr: float = 0.001

  def validate(self):
    check_ints(self, ("codes_per_class", "decoders", "latent_channels", "downsample", "width",
                      "extractor_width"))
    check_choice("init", self.init, CODE_INITS)
    check_choice("pairs", self.pairs, PAIRS)
    check_bools(self, "enforce_budget")
    check_nonnegative(self, "contrastive", note="0: off")
    check_positive(self, "extractor_lr")
    if self.decoders < 2 and (self.pairs == "sampled" or self.contrastive > 0):
      raise ValueError(f"decoders must be an integer >= 2 with pairs='sampled' or contrastive > 0 (two distinct "
                       f"decoders per code), got {self.decoders}; use pairs='all' and contrastive=0 for one.")
    return self


def code_shape(config: KFSConfig, image_shape):
  """``(⌈H / s⌉, ⌈W / s⌉, c_z)``: the shape of one code for images ``(H, W, ch)``."""
  s = config.downsample
  return (math.ceil(image_shape[0] / s), math.ceil(image_shape[1] / s), config.latent_channels)


class Decoder(nn.Module):
  """``__call__(u [N, H, W, c_z]) -> images [N, H, W, channels]`` with ``u`` the upsampled codes (module
  docstring); the output convolution starts at zero, so a fresh decoder returns ``u[..., :channels]`` (codes
  with ``c_z < channels`` are tiled first)."""
  channels: int
  width: int

  @nn.compact
  def __call__(self, u):
    e = jax.nn.relu(nn.Conv(self.width, (3, 3), padding="SAME", name="conv")(u))
    out = nn.Conv(self.channels, (3, 3), padding="SAME", kernel_init=nn.initializers.zeros, name="to_image")(e)
    return tile_channels(u, self.channels) + out


def tile_channels(x, channels: int):
  """``x [..., c]`` with its channels repeated cyclically (or cut) to ``channels``: ``[..., channels]``."""
  c = x.shape[-1]
  reps = -(-channels // c)
  return jnp.tile(x, (1,) * (x.ndim - 1) + (reps,))[..., :channels]


def upsample(codes, image_shape):
  """Codes ``[N, h_z, w_z, c_z]`` resized bilinearly to ``[N, H, W, c_z]``."""
  h, w = int(image_shape[0]), int(image_shape[1])
  if codes.shape[1:3] == (h, w):
    return codes
  return jax.image.resize(codes, (codes.shape[0], h, w, codes.shape[-1]), "bilinear")


def decode_all(config: KFSConfig, codes, decoders, image_shape):
  """Every decoder on every code: ``[C·B_c, D, *image_shape]`` (a static loop over the ``D`` decoders; vmapping
  their weights would make grouped convolutions, slow on CPU)."""
  dec = Decoder(int(image_shape[-1]), config.width)
  u = upsample(codes, image_shape)
  return jnp.stack([dec.apply(jax.tree_util.tree_map(lambda a, j=j: a[j], decoders), u)
                    for j in range(config.decoders)], axis=1)


def kfs_parameterisation(config: KFSConfig, num_classes: int, image_shape, name: str = "kfs") -> Parameterisation:
  """KFS's ``Parameterisation``: ``render(state)`` all ``B_c × D`` (code, decoder) images per class, class-major,
  image ``(c·B_c + i)·D + j`` = ``x_j(z_{c,i})``; ``render(state, key)`` with ``pairs="sampled"`` two distinct
  random decoders per code (``[C·B_c·2, ...]``, ``needs_key=True``). ``storage`` = codes + decoder floats (+ a
  learned lr)."""
  config.validate()
  image_shape = tuple(int(s) for s in image_shape)
  sampled = config.pairs == "sampled"

  def render(state: SynState, key=None) -> SyntheticBatch:
    out = decode_all(config, state.params["codes"], state.params["decoders"], image_shape)
    return haba.views_batch(out, key if sampled else None, config.codes_per_class, num_classes, image_shape,
                            state.params.get("lr"))

  def storage(state: SynState) -> int:
    return num_floats(state.params)

  return Parameterisation(name, render, storage, needs_key=sampled)


def train_images_per_class(config: KFSConfig) -> int:
  """Images per class of the training render: ``2·B_c`` (``pairs="sampled"``) or ``B_c·D`` (``"all"``)."""
  return config.codes_per_class * (2 if config.pairs == "sampled" else config.decoders)


def storage_floats(config: KFSConfig, num_classes: int, image_shape) -> int:
  """Floats KFS stores (without a learned lr), from the configuration alone: ``C·B_c·h_z·w_z·c_z`` codes plus
  ``D`` decoders of ``9·c_z·width + width`` (first conv) and ``9·width·ch + ch`` (output conv) floats."""
  h, w, c = code_shape(config, image_shape)
  ch = int(image_shape[-1])
  per_decoder = 9 * c * config.width + config.width + 9 * config.width * ch + ch
  return num_classes * config.codes_per_class * h * w * c + config.decoders * per_decoder


def contrastive_regulariser(config: KFSConfig, num_classes: int, image_shape,
                            augment: Optional[Callable] = None) -> Regulariser:
  """HaBa's adversarial contrastive term (:func:`jaxdistill.synthetic.haba.contrastive_regulariser`) on KFS's
  training render: the two decoded views of every code play HaBa's two hallucinated views of a basis; weight
  ``config.contrastive``.

  Raises:
    ValueError: a bad ``config`` or fewer than 2 decoders.
  """
  config.validate()
  hcfg = haba.HaBaConfig(bases_per_class=config.codes_per_class, hallucinators=config.decoders,
                         width=config.width, pairs=config.pairs, contrastive=config.contrastive,
                         extractor_width=config.extractor_width, extractor_lr=config.extractor_lr)
  return haba.contrastive_regulariser(hcfg, num_classes, image_shape, augment)


def init_kfs(key, config: KFSConfig, real_images, real_labels, num_classes: int, ipc: int, *,
             learn_lr: float = None) -> SynState:
  """Codes (downsampled real images of each class with channels tiled to ``c_z``, or N(0, 1) noise) and ``D``
  randomly initialised decoders, for a set replacing ``ipc`` pixel images per class.

  Args:
    real_images: ``[N, H, W, ch]`` (only its shape is used with ``init="noise"``); real_labels: int ``[N]``.

  Returns:
    ``SynState(params={"codes": [C·B_c, h_z, w_z, c_z], "decoders": stacked [D, ...] [, "lr"]}, const={})``.

  Raises:
    ValueError: too few real images per class, or (``enforce_budget``) storage over ``C·ipc·H·W·ch``.
  """
  config.validate()
  image_shape = tuple(int(s) for s in np.shape(real_images)[1:])
  if len(image_shape) != 3:
    raise ValueError(f"real_images must be [N, H, W, channels], got shape {tuple(np.shape(real_images))}.")
  shape = code_shape(config, image_shape)
  n = num_classes * config.codes_per_class
  k_code, k_dec = jax.random.split(key)
  if config.init == "real":
    index = class_index(np.asarray(real_labels), num_classes)
    check_ipc(index, config.codes_per_class, "codes_per_class")
    pos = np.asarray(sample_balanced(k_code, index, config.codes_per_class)).reshape(-1)
    x = jnp.asarray(np.asarray(real_images)[pos], jnp.float32)
    if shape[:2] != image_shape[:2]:
      x = jax.image.resize(x, (n,) + shape[:2] + image_shape[2:], "linear", antialias=True)
    codes = tile_channels(x, shape[2])
  else:
    codes = jax.random.normal(k_code, (n,) + shape, jnp.float32)
  dec = Decoder(image_shape[-1], config.width)
  u = jnp.zeros((1,) + image_shape[:2] + (shape[2],), jnp.float32)
  decoders = jax.vmap(lambda k: dec.init(k, u))(jax.random.split(k_dec, config.decoders))
  params = {"codes": codes, "decoders": decoders}
  if learn_lr is not None:
    params["lr"] = jnp.asarray(learn_lr, jnp.float32)
  if config.enforce_budget:
    check_budget(num_floats({k: v for k, v in params.items() if k != "lr"}), num_classes, ipc, image_shape,
                 what="KFS set (codes + decoders)")
  return SynState(params, {})
