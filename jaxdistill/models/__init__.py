"""Model zoo and the two functions every trainer uses: :func:`init_variables` and :func:`apply`.

Models are Flax linen modules called as ``model.apply(variables, x, train=..., embed=...)``; batch-norm models
carry a ``batch_stats`` collection that :func:`apply` updates in train mode.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.models.convnet import MLP, AlexNet, ConvNet, LeNet
from jaxdistill.models.deep import VGG, ResNet18
from jaxdistill.models.layers import ACTIVATIONS, INITS, NORMS, POOLINGS, check_choice

ARCHITECTURES = ("convnet", "convnet_bn", "mlp", "lenet", "alexnet", "vgg11", "vgg11_bn", "resnet18",
                 "resnet18_bn", "resnet18_ap")


def default_depth(image_size: int) -> int:
  """ConvNet depth for a given image side: 3 for ≤ 32 px, 4 for 64 px, 5 for 128 px."""
  if image_size <= 32:
    return 3
  if image_size <= 64:
    return 4
  return 5


def get_model(name: str, num_classes: int, image_shape=(32, 32, 3), **kwargs) -> nn.Module:
  """Builds a model by name.

  Args:
    name: one of :data:`ARCHITECTURES`. ``convnet`` accepts ``width``, ``depth`` (default from the image
      size), ``norm``, ``activation``, ``pooling``; ``*_bn`` variants use batch norm; ``resnet18_ap`` is the
      average-pool-downsampling ResNet18 used for condensation.
    num_classes: output classes.
    image_shape: ``(H, W, C)``, used for depth defaults.
    **kwargs: forwarded to the module (e.g. ``width=16``, ``init_scheme="flax"``).

  Raises:
    ValueError: unknown name, or a bad option value.
  """
  check_choice("arch", name, ARCHITECTURES)
  if "init_scheme" in kwargs:
    check_choice("init_scheme", kwargs["init_scheme"], INITS)
  if "norm" in kwargs:
    check_choice("norm", kwargs["norm"], NORMS)
  if "activation" in kwargs:
    check_choice("activation", kwargs["activation"], ACTIVATIONS)
  if "pooling" in kwargs:
    check_choice("pooling", kwargs["pooling"], POOLINGS)
  if name in ("convnet", "convnet_bn"):
    kwargs.setdefault("depth", default_depth(image_shape[0]))
    if name == "convnet_bn":
      kwargs["norm"] = "batchnorm"
    return ConvNet(num_classes, **kwargs)
  if name == "mlp":
    return MLP(num_classes, **kwargs)
  if name == "lenet":
    return LeNet(num_classes, **kwargs)
  if name == "alexnet":
    return AlexNet(num_classes, **kwargs)
  if name in ("vgg11", "vgg11_bn"):
    if name == "vgg11_bn":
      kwargs["norm"] = "batchnorm"
    return VGG(num_classes, **kwargs)
  if name == "resnet18_ap":
    kwargs["avg_pool_down"] = True
  if name == "resnet18_bn":
    kwargs["norm"] = "batchnorm"
  return ResNet18(num_classes, **kwargs)


def init_variables(model: nn.Module, key, image_shape) -> Dict[str, Any]:
  """Initial variables (``params`` and, for batch norm, ``batch_stats``) for inputs ``[1, H, W, C]``."""
  return model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)


def apply(model: nn.Module, variables, x, train: bool = False, embed: bool = False
          ) -> Tuple[jnp.ndarray, Dict[str, Any]]:
  """Runs ``model`` on ``x [N, H, W, C]``; returns ``(output, variables)``.

  The output is logits ``[N, num_classes]`` (or features ``[N, D]`` with ``embed=True``). In train mode
  batch-norm statistics are updated in the returned variables; otherwise they come back unchanged.
  """
  if train and "batch_stats" in variables:
    out, updates = model.apply(variables, x, train=True, embed=embed, mutable=["batch_stats"])
    return out, {**variables, **updates}
  return model.apply(variables, x, train=train, embed=embed), variables


def layer_features(model: nn.Module, variables, x, train: bool = False) -> List[jnp.ndarray]:
  """Per-layer features of a :class:`ConvNet` (``convnet`` / ``convnet_bn``) on ``x [N, H, W, C]``.

  Returns ``depth + 1`` arrays: the output of every block after its activation and before its pooling,
  ``[N, H_d, W_d, width]`` for blocks ``d = 1 … depth`` (28 px inputs are seen as 32 px: 32, 16, 8 for depth 3),
  then the flattened embedding before the classifier, ``[N, D]`` (what ``apply(..., embed=True)`` gives). The
  layers CAFE aligns (:mod:`jaxdistill.objectives.cafe`). In train mode batch norm uses the batch's statistics;
  the updated running statistics are discarded.

  Raises:
    ValueError: ``model`` is not a ConvNet.
  """
  if not isinstance(model, ConvNet):
    raise ValueError(f"layer_features needs a ConvNet (arch 'convnet' or 'convnet_bn'), got {type(model).__name__}.")
  mutable = ["intermediates"] + (["batch_stats"] if train and "batch_stats" in variables else [])
  embedding, state = model.apply(variables, x, train=train, embed=True, mutable=mutable)
  return list(state["intermediates"]["block_features"]) + [embedding]


def num_params(params) -> int:
  """Number of scalars in a pytree."""
  return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


__all__ = ["ARCHITECTURES", "AlexNet", "ConvNet", "LeNet", "MLP", "ResNet18", "VGG", "apply",
           "default_depth", "get_model", "init_variables", "layer_features", "num_params"]
