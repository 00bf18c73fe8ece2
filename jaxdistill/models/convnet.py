"""The ConvNet of the DC/DSA/DM/MTT papers, an MLP, LeNet and AlexNet (Flax linen)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxdistill.models.layers import activation, conv, dense, norm, pool


class ConvNet(nn.Module):
  """``depth`` blocks of [3×3 conv (``width``) → norm → activation → 2×2 pool], then one linear layer.

  A 1-channel first layer pads by 3 so 28×28 inputs are seen as 32×32 (as in the reference code).
  ``__call__(x [N, H, W, C], train) -> logits [N, num_classes]``; with ``embed=True`` it returns the flattened
  features before the classifier, ``[N, width · (32 / 2^depth)^2]`` for 28–32 px inputs (2048 for depth 3).
  Each block's output after its activation (before pooling) is sown into the ``intermediates`` collection as
  ``"block_features"`` (stored only when that collection is mutable; :func:`jaxdistill.models.layer_features`).
  """
  num_classes: int
  width: int = 128
  depth: int = 3
  norm: str = "instancenorm"
  activation: str = "relu"
  pooling: str = "avg"
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False, embed: bool = False):
    for d in range(self.depth):
      padding = 3 if (d == 0 and x.shape[-1] == 1 and x.shape[1] == 28) else 1
      x = conv(x, self.width, 3, padding=padding, init=self.init_scheme)
      x = norm(x, self.norm, train)
      x = activation(x, self.activation)
      self.sow("intermediates", "block_features", x)
      x = pool(x, self.pooling)
    x = x.reshape(x.shape[0], -1)
    if embed:
      return x
    return dense(x, self.num_classes, init=self.init_scheme)


class MLP(nn.Module):
  """Flatten → [dense(``width``) → activation] × ``depth`` → dense(num_classes). Default 2 × 128, ReLU."""
  num_classes: int
  width: int = 128
  depth: int = 2
  activation: str = "relu"
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False, embed: bool = False):
    x = x.reshape(x.shape[0], -1)
    for _ in range(self.depth):
      x = activation(dense(x, self.width, init=self.init_scheme), self.activation)
    if embed:
      return x
    return dense(x, self.num_classes, init=self.init_scheme)


class LeNet(nn.Module):
  """LeNet-5 as in the DC benchmark: conv5(6) → pool → conv5(16) → pool → 120 → 84 → classes.

  1-channel inputs are padded by 2 in the first conv (28 → 32 effective).
  """
  num_classes: int
  activation: str = "relu"
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False, embed: bool = False):
    x = conv(x, 6, 5, padding=2 if x.shape[-1] == 1 else 0, init=self.init_scheme)
    x = pool(activation(x, self.activation), "max")
    x = conv(x, 16, 5, padding=0, init=self.init_scheme)
    x = pool(activation(x, self.activation), "max")
    x = x.reshape(x.shape[0], -1)
    x = activation(dense(x, 120, init=self.init_scheme), self.activation)
    x = activation(dense(x, 84, init=self.init_scheme), self.activation)
    if embed:
      return x
    return dense(x, self.num_classes, init=self.init_scheme)


class AlexNet(nn.Module):
  """The small AlexNet of the DC benchmark: five convs (128, 192, 256, 192, 192) with three max-pools."""
  num_classes: int
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False, embed: bool = False):
    x = conv(x, 128, 5, padding=4 if x.shape[-1] == 1 else 2, init=self.init_scheme)
    x = pool(nn.relu(x), "max")
    x = pool(nn.relu(conv(x, 192, 5, padding=2, init=self.init_scheme)), "max")
    x = nn.relu(conv(x, 256, 3, padding=1, init=self.init_scheme))
    x = nn.relu(conv(x, 192, 3, padding=1, init=self.init_scheme))
    x = pool(nn.relu(conv(x, 192, 3, padding=1, init=self.init_scheme)), "max")
    x = x.reshape(x.shape[0], -1)
    if embed:
      return x
    return dense(x, self.num_classes, init=self.init_scheme)


def mean_pool(x):
  """Global average pool of NHWC ``x`` → ``[N, C]``."""
  return jnp.mean(x, axis=(1, 2))
