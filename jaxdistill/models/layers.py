"""Layers shared by the model zoo: convolutions/dense layers with a choice of initialisation, norms, activations.

``init="torch"`` reproduces PyTorch's default initialisation (kaiming-uniform with ``a = sqrt(5)``, i.e. weights
and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))) that the published results were obtained with; ``init="flax"``
uses Flax's defaults (LeCun-normal weights, zero biases).
"""
from __future__ import annotations

from typing import Callable, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.validation import check_choice  # noqa: F401  (moved to jaxdistill.validation; re-exported)

INITS = ("torch", "flax")
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTIVATIONS = ("relu", "sigmoid", "leakyrelu")
POOLINGS = ("avg", "max", "none")


def _uniform(bound: float) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def initialisers(init: str, fan_in: int):
  """``(kernel_init, bias_init)`` for a layer with ``fan_in`` inputs per output unit."""
  check_choice("init", init, INITS)
  if init == "torch":
    bound = 1.0 / float(fan_in) ** 0.5
    return _uniform(bound), _uniform(bound)
  return nn.initializers.lecun_normal(), nn.initializers.zeros


def conv(x, features: int, kernel: int = 3, stride: int = 1, padding: Union[int, str] = 1,
         init: str = "torch", use_bias: bool = True, name=None):
  """A 2-D convolution on NHWC ``x`` with symmetric integer ``padding`` (a Flax ``nn.Conv``: parameters
  ``kernel [k, k, C, O]`` and ``bias [O]``).

  Padding wider than half the kernel (the ConvNet's first layer pads 28 px images by 3 to see them as 32 px) is
  applied with ``jnp.pad`` before a VALID convolution: the same function, but XLA:CPU computes the kernel
  gradient of a convolution padded beyond ``k − 1`` on a slow path (ConvNet-128's first layer, 100 images:
  1.85 s against 0.14 s with the explicit pad, measured under load; the whole network's gradient 2.7 s → 1.5 s).
  """
  fan_in = x.shape[-1] * kernel * kernel
  k_init, b_init = initialisers(init, fan_in)
  if isinstance(padding, int) and padding > kernel // 2:
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    padding = 0
  pad = [(padding, padding)] * 2 if isinstance(padding, int) else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, use_bias=use_bias,
                 kernel_init=k_init, bias_init=b_init, name=name)(x)


def dense(x, features: int, init: str = "torch", name=None):
  """A dense layer on the last axis of ``x``."""
  k_init, b_init = initialisers(init, x.shape[-1])
  return nn.Dense(features, kernel_init=k_init, bias_init=b_init, name=name)(x)


def norm(x, kind: str, train: bool, name=None):
  """Normalisation of NHWC ``x``: instance (= group norm with one channel per group, affine), batch,
  layer (over C, H, W), group (4 groups) or none."""
  check_choice("norm", kind, NORMS)
  channels = x.shape[-1]
  if kind == "instancenorm":
    return nn.GroupNorm(num_groups=channels, epsilon=1e-5, name=name)(x)
  if kind == "groupnorm":
    return nn.GroupNorm(num_groups=min(4, channels), epsilon=1e-5, name=name)(x)
  if kind == "batchnorm":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)(x)
  if kind == "layernorm":
    axes = tuple(range(1, x.ndim))
    return nn.LayerNorm(epsilon=1e-5, reduction_axes=axes, feature_axes=axes, name=name)(x)
  return x


def activation(x, kind: str):
  """ReLU, sigmoid or leaky ReLU (slope 0.01)."""
  check_choice("activation", kind, ACTIVATIONS)
  if kind == "relu":
    return nn.relu(x)
  if kind == "sigmoid":
    return nn.sigmoid(x)
  return nn.leaky_relu(x, 0.01)


def pool(x, kind: str, window: int = 2):
  """2×2 average or max pooling with stride 2, or none."""
  check_choice("pooling", kind, POOLINGS)
  if kind == "avg":
    return nn.avg_pool(x, (window, window), strides=(window, window))
  if kind == "max":
    return nn.max_pool(x, (window, window), strides=(window, window))
  return x


def spatial_after(size: int, depth: int, pooling: str) -> int:
  """Spatial side after ``depth`` pooling stages."""
  return size if pooling == "none" else size // (2 ** depth)


Shape = Tuple[int, int, int]
