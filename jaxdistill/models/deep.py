"""VGG11 and ResNet18 as used for cross-architecture evaluation in the condensation papers."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from jaxdistill.models.layers import conv, dense, norm, pool
from jaxdistill.models.convnet import mean_pool

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
  """VGG with 3×3 convs, ``norm`` after each conv, ReLU, 2×2 max-pools; then one linear layer.

  A 1-channel 28×28 input is padded by 3 in the first conv (seen as 32×32, as in the reference code).
  """
  num_classes: int
  cfg: Sequence = VGG11_CFG
  norm: str = "instancenorm"
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False, embed: bool = False):
    first = True
    for v in self.cfg:
      if v == "M":
        x = pool(x, "max")
        continue
      padding = 3 if (first and x.shape[-1] == 1 and x.shape[1] == 28) else 1
      first = False
      x = nn.relu(norm(conv(x, v, 3, padding=padding, init=self.init_scheme), self.norm, train))
    x = x.reshape(x.shape[0], -1)
    if embed:
      return x
    return dense(x, self.num_classes, init=self.init_scheme)


class BasicBlock(nn.Module):
  """ResNet basic block; ``avg_pool_down`` replaces strided convs by 2×2 average pooling (ResNet18AP)."""
  features: int
  stride: int = 1
  norm: str = "instancenorm"
  avg_pool_down: bool = False
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    down = self.stride != 1
    conv_stride = 1 if self.avg_pool_down else self.stride
    y = conv(x, self.features, 3, stride=conv_stride, padding=1, init=self.init_scheme, use_bias=False)
    y = nn.relu(norm(y, self.norm, train))
    if down and self.avg_pool_down:  # the reference BasicBlock_AP pools after conv → norm → ReLU
      y = pool(y, "avg")
    y = norm(conv(y, self.features, 3, padding=1, init=self.init_scheme, use_bias=False), self.norm, train)
    shortcut = x
    if down or x.shape[-1] != self.features:
      shortcut = conv(x, self.features, 1, stride=conv_stride, padding=0, init=self.init_scheme, use_bias=False)
      if down and self.avg_pool_down:
        shortcut = pool(shortcut, "avg")
      shortcut = norm(shortcut, self.norm, train)
    return nn.relu(y + shortcut)


class ResNet18(nn.Module):
  """ResNet-18 for 28–32 px inputs: 3×3 stem (64), four stages of two basic blocks (64, 128, 256, 512),
  global average pool, linear classifier. ``avg_pool_down`` is the condensation papers' ResNet-18-AP
  (``networks.py`` ``ResNet_AP``): stride-1 convs with 2×2 average pooling after the first conv's norm and ReLU
  (and in the shortcut after its 1×1 conv), and no global pooling — the final feature map is flattened."""
  num_classes: int
  norm: str = "instancenorm"
  avg_pool_down: bool = False
  init_scheme: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False, embed: bool = False):
    x = nn.relu(norm(conv(x, 64, 3, padding=1, init=self.init_scheme, use_bias=False), self.norm, train))
    for i, features in enumerate((64, 128, 256, 512)):
      for j in range(2):
        stride = 2 if (i > 0 and j == 0) else 1
        x = BasicBlock(features, stride, self.norm, self.avg_pool_down, self.init_scheme)(x, train)
    if self.avg_pool_down:  # ResNet_AP: avg_pool2d(kernel 1) is the identity, the whole map is flattened
      x = x.reshape((x.shape[0], -1))  # 512·4·4 at 32 px, 512·3·3 at 28 px
    else:
      x = mean_pool(x)
    if embed:
      return x
    return dense(x, self.num_classes, init=self.init_scheme)
