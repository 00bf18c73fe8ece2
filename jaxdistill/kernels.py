"""Infinite-width kernels (neural-tangents ``stax``) of the FC net and the ConvNet, for KIP and evaluation.

The ``stax`` networks here are the infinite-width twins of the Flax models in :mod:`jaxdistill.models`:

* ``fc``: Flatten → [Dense(width) → ReLU] × depth → Dense(C)  (the :class:`~jaxdistill.models.MLP`);
* ``convnet``: [Conv 3×3 'SAME' (width) → ReLU → 2×2 average pool] × depth → Flatten → Dense(C)  (the
  :class:`~jaxdistill.models.ConvNet` with ``norm="none"``; a 1-channel 28×28 input is zero-padded by 2 first,
  which with the 'SAME' padding of the first conv is the Flax model's padding 3, i.e. the 32×32 view).

Instance norm, the default of the finite ConvNet, has no infinite-width kernel (normalising over space only does
not converge; neural-tangents rejects it), so the twin is the un-normalised ConvNet, as in KIP-ConvNet.
Weights are in the NTK parameterisation with ``W_std = √2`` and ``b_std = 0.1`` (the KIP defaults).

neural-tangents is imported lazily: only the functions of this module need it, and where it cannot be imported
(e.g. a JAX version it does not support) they raise :class:`ImportError` naming the reason. The rest of
jaxdistill (RFAD's random features, FRePo, the matching methods) never needs it.

Costs: the FC kernel is ``O(n₁ n₂ D)``; the ConvNet kernel with pooling tracks the full spatial covariance,
``O(n₁ n₂ (HW)²)`` memory and time per layer — over ten seconds per 10×10 block of 28×28 images on two CPU
cores — so large target batches go through :func:`batched_kernel_fn` (``nt.batch``) or ``target_chunk``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.validation import check_choice, check_ints, check_network, check_nonnegative, check_positive

ARCHS = ("fc", "convnet")
KINDS = ("ntk", "nngp")
POOLINGS = ("avg", "none")


def require_neural_tangents():
  """``(neural_tangents, neural_tangents.stax)``.

  Raises:
    ImportError: neural-tangents is not installed or cannot be imported with this JAX; the message names the
      underlying error.
  """
  try:
    import neural_tangents as nt
    from neural_tangents import stax
  except Exception as e:  # noqa: BLE001 — any import-time failure (missing module, removed JAX API) counts.
    raise ImportError(
        f"neural-tangents is needed for the infinite-width NTK/NNGP kernels (KIP) but could not be imported "
        f"with jax {jax.__version__}: {type(e).__name__}: {e}. Install the extra (pip install "
        "jaxdistill[kernels]: neural-tangents 0.6.5, which needs jax<=0.5.3), or use the methods that need no "
        "neural-tangents (rfad, frepo)."
    ) from e
  return nt, stax


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """An infinite-width kernel.

  Attributes:
    arch: ``"fc"`` or ``"convnet"`` (the twins above).
    kind: ``"ntk"`` (neural tangent kernel) or ``"nngp"`` (Gaussian-process kernel of the outputs at init).
    depth: hidden layers (fc, default 3 — KIP's FC3) or conv blocks (convnet, default from the image size: 3
      for ≤ 32 px).
    W_std, b_std: weight and bias standard deviations (NTK parameterisation).
    pooling: convnet pooling, ``"avg"`` (the ConvNet) or ``"none"`` (cheaper: no spatial covariance needed
      beyond the diagonal).
    width: only used for the finite ``stax`` networks (``init_fn``/``apply_fn``), not the kernels.
  """
  arch: str = "fc"
  kind: str = "ntk"
  depth: Optional[int] = None
  W_std: float = float(np.sqrt(2.0))
  b_std: float = 0.1
  pooling: str = "avg"
  width: int = 1024

  def validate(self):
    check_network(self.arch, self.width, self.depth, archs=ARCHS)
    check_choice("kind", self.kind, KINDS)
    check_choice("pooling", self.pooling, POOLINGS)
    check_positive(self, "W_std")
    check_nonnegative(self, "b_std")
    return self

  def resolved_depth(self, image_shape) -> int:
    if self.depth is not None:
      return int(self.depth)
    if self.arch == "fc":
      return 3
    from jaxdistill.models import default_depth
    return default_depth(int(image_shape[0]))


def input_padding(image_shape) -> int:
  """Zero padding added to each side of the input before the ConvNet twin: 2 for 1-channel 28×28 images
  (the Flax ConvNet's first conv pads 3 there), else 0."""
  h, _, c = image_shape
  return 2 if (c == 1 and h == 28) else 0


def prepare_inputs(x, config: KernelConfig):
  """The network input for ``x [N, H, W, C]``: padded for the ConvNet twin (:func:`input_padding`)."""
  if config.arch == "convnet":
    p = input_padding(x.shape[1:])
    if p:
      x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  return x


def stax_network(config: KernelConfig, num_classes: int, image_shape) -> Tuple[Callable, Callable, Callable]:
  """The ``stax`` twin ``(init_fn, apply_fn, kernel_fn)`` of ``config.arch`` (inputs prepared by
  :func:`prepare_inputs`).

  Raises:
    ImportError: neural-tangents unavailable (:func:`require_neural_tangents`).
  """
  config.validate()
  _, stax = require_neural_tangents()
  depth = config.resolved_depth(image_shape)
  w, b, width = config.W_std, config.b_std, int(config.width)
  layers = []
  if config.arch == "fc":
    layers.append(stax.Flatten())
    for _ in range(depth):
      layers += [stax.Dense(width, W_std=w, b_std=b), stax.Relu()]
  else:
    for _ in range(depth):
      layers += [stax.Conv(width, (3, 3), padding="SAME", W_std=w, b_std=b), stax.Relu()]
      if config.pooling == "avg":
        layers.append(stax.AvgPool((2, 2), strides=(2, 2)))
    layers.append(stax.Flatten())
  layers.append(stax.Dense(num_classes, W_std=w, b_std=b))
  return stax.serial(*layers)


def make_kernel_fn(config: KernelConfig, num_classes: int = 10, image_shape=(28, 28, 1),
                   target_chunk: int = 0) -> Callable:
  """A pure, differentiable ``k(x1 [n1, H, W, C], x2 [n2, H, W, C]) -> [n1, n2]`` of the ``config.kind``
  kernel (jit-able; inputs in the library's image space, padding applied here).

  ``target_chunk > 0`` computes the rows of ``x1`` in chunks of that size with ``lax.map`` (``n1`` must be a
  multiple), bounding the memory of the ConvNet kernel while staying inside one jitted, differentiable program.
  """
  _, _, kernel_fn = stax_network(config, num_classes, image_shape)
  kind = config.kind

  def k(x1, x2):
    return kernel_fn(prepare_inputs(x1, config), prepare_inputs(x2, config), kind)

  if not target_chunk:
    return k

  def chunked(x1, x2):
    n1 = x1.shape[0]
    if n1 <= target_chunk:
      return k(x1, x2)
    if n1 % target_chunk:
      raise ValueError(f"target_chunk={target_chunk} must divide the number of rows {n1}.")
    xs = x1.reshape((n1 // target_chunk, target_chunk) + x1.shape[1:])
    return jax.lax.map(lambda a: k(a, x2), xs).reshape(n1, x2.shape[0])

  return chunked


def batched_kernel_fn(config: KernelConfig, num_classes: int = 10, image_shape=(28, 28, 1),
                      batch_size: int = 100, store_on_device: bool = False) -> Callable:
  """``k(x1, x2) -> np.ndarray [n1, n2]`` computed block by block with neural-tangents' batching
  (``nt.batch``, each ``batch_size × batch_size`` block one jitted call; the result is gathered in host memory
  unless ``store_on_device``). For evaluation (large test sets), not for differentiation. Inputs are padded to
  multiples of ``batch_size`` (as ``nt.batch`` requires) and the padding is cut off the result.
  """
  nt, _ = require_neural_tangents()
  _, _, kernel_fn = stax_network(config, num_classes, image_shape)
  check_ints({"batch_size": batch_size}, "batch_size")
  bs = int(batch_size)
  batched = nt.batch(kernel_fn, batch_size=bs, device_count=0, store_on_device=store_on_device)

  def pad_to(x):
    n = x.shape[0]
    extra = (-n) % bs
    if extra:
      x = jnp.concatenate([x, jnp.zeros((extra,) + x.shape[1:], x.dtype)])
    return x

  def k(x1, x2):
    n1, n2 = x1.shape[0], x2.shape[0]
    a = pad_to(prepare_inputs(jnp.asarray(x1, jnp.float32), config))
    b = pad_to(prepare_inputs(jnp.asarray(x2, jnp.float32), config))
    return np.asarray(batched(a, b, config.kind))[:n1, :n2]

  return k


__all__ = ["ARCHS", "KINDS", "KernelConfig", "POOLINGS", "batched_kernel_fn", "input_padding", "make_kernel_fn",
           "prepare_inputs", "require_neural_tangents", "stax_network"]
