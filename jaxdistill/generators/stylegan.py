"""A small class-conditional style-based generator for 28–32 px images (StyleGAN2-style, Karras et al. 2020).

Structure (``L = 1 + 2·(len(widths) − 1)`` convolution layers, ``L + 1`` codes):

* mapping ``(z, c) → w``: ``z [N, z_dim]`` and a learned class embedding, each normalised to unit second moment
  (StyleGAN2 Eq. "pixel norm"), concatenated, then ``mapping_layers`` dense layers with leaky ReLU;
* synthesis: a learned constant input ``[b, b, widths[0]]`` (``b = resolution / 2^(len(widths)-1)``), layer 1
  a modulated 3×3 conv at ``b``, then per block a 2× bilinear upsample followed by two modulated 3×3 convs;
  every conv layer adds per-pixel noise scaled by a learned strength, a bias and ``√2 · leaky_relu(0.2)``;
  finally a modulated 1×1 "toRGB" conv without demodulation.
* modulated/demodulated conv (StyleGAN2 Eq. 1–3): ``s = A(w)`` (affine, bias 1), ``w'_ijk = s_i · w_ijk``,
  ``w''_ijk = w'_ijk / sqrt(Σ_{i,k} w'_ijk² + ε)``, computed as input scaling + shared conv + output scaling
  (mathematically identical to per-sample weights).

The per-layer codes W⁺ are ``ws [N, L + 1, w_dim]``: ``ws[:, l]`` modulates conv layer ``l + 1`` (``l < L``)
and ``ws[:, L]`` the toRGB layer. "The feature map after layer n" is the input of conv layer ``n + 1``:
``n = 0`` is the (broadcast) constant, ``n = L`` the last conv output. :meth:`StyleGenerator.synthesis`
runs layers ``start+1 … stop`` from any such feature map, so GLaD can read ``F_n`` (``stop = n``) and write
it (``start = n``). Every operation is per image, so chunks of a batch render exactly like the whole batch.

Noise: ``noise_keys [N]`` (one PRNG key per image, drawn per layer with ``fold_in``) or ``None`` (no noise).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.validation import check_ints, is_int

SQRT2 = math.sqrt(2.0)


def check_widths(widths, resolution: int) -> None:
  """Raises ``ValueError`` unless ``widths`` is a non-empty tuple of integers >= 1 and ``resolution`` is a
  multiple of ``2^(len(widths) - 1)`` (one 2x upsampling per extra width). Shared by both generators."""
  if len(widths) < 1 or any(not is_int(w) or w < 1 for w in widths):
    raise ValueError(f"widths must be a non-empty tuple of integers >= 1, got {widths!r}.")
  up = 2 ** (len(widths) - 1)
  if resolution % up:
    raise ValueError(f"resolution must be a multiple of 2^(len(widths)-1) = {up}, got {resolution}.")


@dataclasses.dataclass(frozen=True)
class StyleGeneratorConfig:
  """Style generator settings.

  Attributes:
    num_classes: conditioning classes.
    resolution: output side (28 or 32 px; any multiple of ``2^(len(widths)-1)``).
    channels: image channels (1 grey, 3 RGB).
    z_dim, w_dim: latent and intermediate-latent sizes.
    mapping_layers: dense layers of the mapping network (StyleGAN2: 8; small here).
    widths: feature channels at the base resolution and after each 2× upsampling block.
    noise_strength: initial per-layer noise strength (StyleGAN2 initialises it to 0).
  """
  num_classes: int = 10
  resolution: int = 28
  channels: int = 1
  z_dim: int = 64
  w_dim: int = 64
  mapping_layers: int = 2
  widths: Tuple[int, ...] = (64, 32, 16)
  noise_strength: float = 0.1

  def validate(self):
    check_ints(self, ("num_classes", "resolution", "channels", "z_dim", "w_dim"))
    check_ints(self, "mapping_layers", minimum=0)
    check_widths(self.widths, self.resolution)
    return self

  @property
  def base(self) -> int:
    return self.resolution // 2 ** (len(self.widths) - 1)

  @property
  def num_layers(self) -> int:
    """Conv layers ``L`` (the toRGB layer excluded)."""
    return 1 + 2 * (len(self.widths) - 1)

  @property
  def num_ws(self) -> int:
    """Per-layer codes in W⁺: one per conv layer plus toRGB."""
    return self.num_layers + 1

  def layer_specs(self):
    """``[(width, upsample_before)]`` of conv layers 1 … L."""
    specs = [(self.widths[0], False)]
    for w in self.widths[1:]:
      specs += [(w, True), (w, False)]
    return specs

  def feature_shape(self, n: int) -> Tuple[int, int, int]:
    """``(h, w, channels)`` of the feature map after layer ``n`` (``0 ≤ n ≤ L``)."""
    check_layer(self, n)
    size, ch = self.base, self.widths[0]
    for width, up in self.layer_specs()[:n]:
      size = size * 2 if up else size
      ch = width
    return (size, size, ch)


def check_layer(config: StyleGeneratorConfig, n: int) -> None:
  if not is_int(n) or not 0 <= n <= config.num_layers:
    raise ValueError(f"layer must be an integer in [0, {config.num_layers}] for widths {config.widths}, "
                     f"got {n!r}.")


def normalize_2nd_moment(x, eps: float = 1e-8):
  """``x / sqrt(mean(x², -1) + eps)`` (StyleGAN's pixel norm of latents)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def lrelu(x):
  """``√2 · leaky_relu(x, 0.2)`` (variance-preserving gain, StyleGAN)."""
  return SQRT2 * jax.nn.leaky_relu(x, 0.2)


class ModConv(nn.Module):
  """Modulated (and optionally demodulated) ``kernel × kernel`` convolution (StyleGAN2 Eq. 1–3).

  ``__call__(x [N, H, W, Cin], w [N, w_dim]) -> [N, H, W, features]``.
  """
  features: int
  kernel: int = 3
  demodulate: bool = True

  @nn.compact
  def __call__(self, x, w):
    cin = x.shape[-1]
    style = nn.Dense(cin, kernel_init=nn.initializers.normal(1.0 / math.sqrt(w.shape[-1])),
                     bias_init=nn.initializers.ones, name="affine")(w)  # [N, Cin]
    weight = self.param("kernel", nn.initializers.normal(1.0), (self.kernel, self.kernel, cin, self.features))
    weight = weight / math.sqrt(self.kernel * self.kernel * cin)  # equalised learning rate
    y = jax.lax.conv_general_dilated(x * style[:, None, None, :], weight, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.demodulate:
      # Σ_{k,i} (s_i w_kio)² = Σ_i s_i² Σ_k w_kio²  -> [N, Cout]
      d = jax.lax.rsqrt(jnp.square(style) @ jnp.sum(jnp.square(weight), axis=(0, 1)) + 1e-8)
      y = y * d[:, None, None, :]
    return y


class StyleLayer(nn.Module):
  """One synthesis layer: [2× upsample] → modulated conv → noise → bias → √2·lrelu."""
  features: int
  upsample: bool
  noise_strength: float = 0.1

  @nn.compact
  def __call__(self, x, w, noise_key=None):
    if self.upsample:
      n, h, wd, c = x.shape
      x = jax.image.resize(x, (n, 2 * h, 2 * wd, c), "bilinear")
    x = ModConv(self.features, 3, True, name="conv")(x, w)
    strength = self.param("noise_strength", nn.initializers.constant(self.noise_strength), ())
    if noise_key is not None:
      shape = x.shape[1:3] + (1,)
      noise = jax.vmap(lambda k: jax.random.normal(k, shape, x.dtype))(noise_key)
      x = x + strength * noise
    x = x + self.param("bias", nn.initializers.zeros, (self.features,))
    return lrelu(x)


class StyleGenerator(nn.Module):
  """The class-conditional style-based generator (see module docstring).

  Methods (use ``module.apply(params, ..., method=...)``):
    ``mapping(z [N, z_dim], labels int [N]) -> w [N, w_dim]``;
    ``synthesis(ws [N, L+1, w_dim], noise_keys=None, start=0, stop=None, features=None)`` -> images
      ``[N, R, R, channels]`` (``stop=None``) or the feature map after layer ``stop`` (``0 ≤ stop ≤ L``);
    ``__call__(z, labels, noise_keys=None) -> images``.
  """
  config: StyleGeneratorConfig

  def setup(self):
    cfg = self.config
    self.class_embed = nn.Embed(cfg.num_classes, cfg.z_dim, embedding_init=nn.initializers.normal(1.0))
    self.mapping_net = [nn.Dense(cfg.w_dim, kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
                                 name=f"mapping_{i}") for i in range(cfg.mapping_layers)]
    self.const = self.param("const", nn.initializers.normal(1.0), (cfg.base, cfg.base, cfg.widths[0]))
    self.layers = [StyleLayer(w, up, cfg.noise_strength, name=f"layer_{i + 1}")
                   for i, (w, up) in enumerate(cfg.layer_specs())]
    self.to_rgb = ModConv(cfg.channels, 1, False, name="to_rgb")
    self.rgb_bias = self.param("rgb_bias", nn.initializers.zeros, (cfg.channels,))

  def mapping(self, z, labels):
    x = jnp.concatenate([normalize_2nd_moment(z), normalize_2nd_moment(self.class_embed(labels))], -1)
    for dense in self.mapping_net:
      x = lrelu(dense(x))
    if not self.mapping_net:
      x = x[:, :self.config.w_dim] if x.shape[-1] >= self.config.w_dim else jnp.pad(
          x, ((0, 0), (0, self.config.w_dim - x.shape[-1])))
    return x

  def synthesis(self, ws, noise_keys=None, start: int = 0, stop: Optional[int] = None, features=None):
    cfg = self.config
    to_image = stop is None
    stop = cfg.num_layers if stop is None else stop
    if features is None:
      if start != 0:
        raise ValueError("synthesis from start > 0 needs the feature map after layer `start`.")
      features = jnp.broadcast_to(self.const, (ws.shape[0],) + self.const.shape)
    x = features
    for i in range(start, stop):
      keys = None if noise_keys is None else jax.vmap(lambda k: jax.random.fold_in(k, i))(noise_keys)
      x = self.layers[i](x, ws[:, i], keys)
    if not to_image:
      return x
    return self.to_rgb(x, ws[:, cfg.num_layers]) + self.rgb_bias

  def __call__(self, z, labels, noise_keys=None):
    w = self.mapping(z, labels)
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], self.config.num_ws, w.shape[-1]))
    return self.synthesis(ws, noise_keys)
