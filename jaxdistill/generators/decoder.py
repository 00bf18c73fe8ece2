"""A plain class-conditional convolutional decoder ``(z, c) → image`` (DCGAN-style, no styles, no noise).

``z [N, z_dim]`` is concatenated with a learned class embedding ``[N, embed_dim]``, a dense layer maps it to a
``[b, b, widths[0]]`` feature map (``b = resolution / 2^(len(widths)-1)``), then per further width a 2× bilinear
upsample → 3×3 conv → ReLU, and a final 3×3 conv to ``channels``. Small enough to fit the storage budget of a
pixel set (GenDM), and every operation is per image.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.generators.stylegan import check_widths
from jaxdistill.validation import check_ints


@dataclasses.dataclass(frozen=True)
class ConvDecoderConfig:
  """Decoder settings.

  Attributes:
    num_classes, resolution (28 / 32), channels: as for the style generator.
    z_dim: latent size; embed_dim: class-embedding size (0: unconditional).
    widths: channels at the base resolution and after each 2× upsample.
  """
  num_classes: int = 10
  resolution: int = 28
  channels: int = 1
  z_dim: int = 16
  embed_dim: int = 8
  widths: Tuple[int, ...] = (16, 8, 8)

  def validate(self):
    check_ints(self, ("num_classes", "resolution", "channels", "z_dim"))
    check_ints(self, "embed_dim", minimum=0)
    check_widths(self.widths, self.resolution)
    return self

  @property
  def base(self) -> int:
    return self.resolution // 2 ** (len(self.widths) - 1)


class ConvDecoder(nn.Module):
  """``__call__(z [N, z_dim], labels int [N]) -> images [N, R, R, channels]``."""
  config: ConvDecoderConfig

  @nn.compact
  def __call__(self, z, labels):
    cfg = self.config
    x = z
    if cfg.embed_dim:
      emb = nn.Embed(cfg.num_classes, cfg.embed_dim, embedding_init=nn.initializers.normal(1.0),
                     name="class_embed")(labels)
      x = jnp.concatenate([z, emb], -1)
    b, w0 = cfg.base, cfg.widths[0]
    x = nn.Dense(b * b * w0, name="project")(x).reshape((-1, b, b, w0))
    x = jax.nn.relu(x)
    for i, w in enumerate(cfg.widths[1:]):
      n, h, wd, c = x.shape
      x = jax.image.resize(x, (n, 2 * h, 2 * wd, c), "bilinear")
      x = jax.nn.relu(nn.Conv(w, (3, 3), padding="SAME", name=f"conv_{i + 1}")(x))
    return nn.Conv(cfg.channels, (3, 3), padding="SAME", name="to_image")(x)
