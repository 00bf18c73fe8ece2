"""GTN: Generative Teaching Networks (Such, Rawal, Lehman, Stanley & Clune, ICML 2020, arXiv 1912.07768) as a
parameterisation; its objective (the learner's real loss after ``T`` inner steps on generated batches) is
:func:`jaxdistill.objectives.gtn.make_gtn`, built on the BPTT unroll.

A generator ``G(z, y)`` (noise + label -> image) is the learned state. A fresh learner ``θ_0 ~ p(θ)`` takes ``T``
SGD steps on generated batches and is then scored on real data; the meta-gradient of that score flows back
through the whole inner training into the generator (GTN Sec. 2)::

    x_{t,i} = G(z_{t,i}, y_{t,i})                     (batch t: k images of every class)
    θ_{t+1} = θ_t − α (β v_t + ∇_θ ℓ(x_t, y_t; θ_t))   (t = 0 … T − 1)
    L(G, z, α) = E_{θ_0} [ ℓ(x_real, y_real; θ_T) ]

Curriculum (``curriculum``, GTN Sec. 3.2): ``"full"`` (the paper's best: the inputs ``z_{t,i}`` of every inner step
are themselves learned, ``params["z"]``, in a fixed order) or ``"none"`` (fresh ``z ~ N(0, I)`` every outer
iteration, from the loop's key; the evaluation sample then uses the fixed key ``const["key"]``). Labels are
class-balanced (``batch_per_class`` per class and step) instead of the paper's uniform random draw, so the
batches fit the unroll's class-major mini-batches (:func:`jaxdistill.objectives.bptt.minibatches`): image
``t·k + i`` of class ``c`` is item ``i`` of step ``t``, and the rendered set has ``T·k`` images per class.

Weight normalisation (GTN Sec. 2: "we found that weight normalization … dramatically improves the stability of
meta-training"; Salimans & Kingma 2016): every layer of the generator is ``w = g · v / ‖v‖`` (norm over all axes
but the output unit; :class:`WNDense`, :class:`WNConv`), ``g`` initialised to ``‖v‖`` (so the initial weights are
``v``; the paper's data-dependent initialisation is not used). ``weight_norm=False`` gives plain layers.

Generator architecture (:class:`Generator`): ``[z, onehot(y)]`` -> dense(``hidden``) -> leaky ReLU -> dense to a
``b × b × widths[0]`` map -> leaky ReLU -> per further width: 2× bilinear upsample, 3×3 conv, leaky ReLU -> 3×3 conv
to the image channels (``b = H / 2^(len(widths) − 1)``); the paper's MNIST generator is the same shape at
1024 / 128 units with batch norm, ours is small by default (CPU budget).

Storage: generator (+ learned ``z`` and lr) floats; GTN has no storage budget, so ``enforce_budget`` is off by
default (on: :func:`jaxdistill.synthetic.generator.check_budget` against the pixel set of ``ipc`` images per class).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.objectives.base import safe_norm
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats
from jaxdistill.synthetic.generator import check_budget
from jaxdistill.synthetic.pixels import class_major_labels
from jaxdistill.validation import (check_bools, check_choice, check_in_range, check_ints, check_network,
                                   check_nonnegative, check_positive)

CURRICULA = ("full", "none")


@dataclasses.dataclass(frozen=True)
class GTNConfig:
  """GTN settings: the generator, the curriculum and the learner's inner training.

  Attributes:
    z_dim: noise size.
    hidden: units of the first dense layer.
    widths: channels at the base map and after each 2× upsample (``H`` divisible by ``2^(len − 1)``).
    weight_norm: weight-normalised generator layers (the paper's; module docstring).
    leak: negative slope of the leaky ReLUs.
    curriculum: ``"full"`` (learned inputs per inner step) or ``"none"`` (fresh noise every outer iteration).
    inner_steps: ``T``; batch_per_class: ``k`` images of every class per inner step.
    inner_lr: the learner's SGD lr (initial value when learned); learn_lr: meta-learn it (GTN learns the
      learner's lr); lr_per_step: one learned lr per inner step instead of one scalar.
    inner_momentum: ``β`` of the learner's SGD (fixed; the paper meta-learns it too).
    arch, width, depth: the learner (:mod:`jaxdistill.models`; depth None: the default for the image size).
    num_models: fresh learners per outer iteration (mean loss).
    checkpoint: ``jax.checkpoint`` each inner step (less memory, more compute).
    enforce_budget: refuse a state over the pixel budget of the IPC it is compared with (off: GTN has none).
  """
  z_dim: int = 32
  hidden: int = 64
  widths: Tuple[int, ...] = (16, 8)
  weight_norm: bool = True
  leak: float = 0.1
  curriculum: str = "full"
  inner_steps: int = 8
  batch_per_class: int = 1
  inner_lr: float = 0.02
  learn_lr: bool = True
  lr_per_step: bool = False
  inner_momentum: float = 0.5
  arch: str = "convnet"
  width: int = 32
  depth: Optional[int] = None
  num_models: int = 1
  checkpoint: bool = False
  enforce_budget: bool = False

  def validate(self):
    check_ints(self, ("z_dim", "hidden", "inner_steps", "batch_per_class", "num_models"))
    if not isinstance(self.widths, tuple) or not self.widths:
      raise ValueError(f"widths must be a non-empty tuple of integers >= 1, got {self.widths!r}.")
    check_ints({f"widths[{i}]": w for i, w in enumerate(self.widths)},
               tuple(f"widths[{i}]" for i in range(len(self.widths))))
    check_choice("curriculum", self.curriculum, CURRICULA)
    check_bools(self, ("weight_norm", "learn_lr", "lr_per_step", "checkpoint", "enforce_budget"))
    check_nonnegative(self, "leak")
    check_positive(self, "inner_lr")
    check_in_range("inner_momentum", self.inner_momentum, 0, 1, hi_closed=False)
    check_network(self.arch, self.width, self.depth)
    return self


def images_per_class(config: GTNConfig) -> int:
  """Images per class of a rendered set: ``T · k`` (every inner step's batch)."""
  return int(config.inner_steps) * int(config.batch_per_class)


class WNDense(nn.Module):
  """Weight-normalised dense layer ``y = x (g · v / ‖v‖) + b`` (``‖v‖`` per output unit); ``g`` starts at
  ``‖v‖``. ``__call__(x [N, in]) -> [N, features]``."""
  features: int

  @nn.compact
  def __call__(self, x):
    v = self.param("v", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    g = self.param("g", lambda _: safe_norm(v, axis=0))
    b = self.param("b", nn.initializers.zeros, (self.features,))
    return x @ (v * (g / safe_norm(v, axis=0))) + b


class WNConv(nn.Module):
  """Weight-normalised 3×3 'SAME' convolution, ``v [3, 3, in, out]`` normalised over its first three axes."""
  features: int

  @nn.compact
  def __call__(self, x):
    v = self.param("v", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
    g = self.param("g", lambda _: safe_norm(v.reshape(-1, self.features), axis=0))
    b = self.param("b", nn.initializers.zeros, (self.features,))
    w = v * (g / safe_norm(v.reshape(-1, self.features), axis=0))
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


class Generator(nn.Module):
  """``__call__(z [N, z_dim], labels int [N]) -> images [N, H, W, channels]`` (module docstring)."""
  config: GTNConfig
  num_classes: int
  image_shape: Tuple[int, int, int]

  @nn.compact
  def __call__(self, z, labels):
    cfg = self.config
    dense = (lambda n, name: WNDense(n, name=name)) if cfg.weight_norm else (lambda n, name: nn.Dense(n, name=name))
    conv = ((lambda n, name: WNConv(n, name=name)) if cfg.weight_norm
            else (lambda n, name: nn.Conv(n, (3, 3), padding="SAME", name=name)))
    act = lambda x: jax.nn.leaky_relu(x, cfg.leak)
    h, w, ch = self.image_shape
    up = 2 ** (len(cfg.widths) - 1)
    bh, bw = h // up, w // up
    x = jnp.concatenate([z, jax.nn.one_hot(labels, self.num_classes, dtype=z.dtype)], -1)
    x = act(dense(cfg.hidden, "fc_0")(x))
    x = act(dense(bh * bw * cfg.widths[0], "fc_1")(x)).reshape((-1, bh, bw, cfg.widths[0]))
    for i, width in enumerate(cfg.widths[1:]):
      n, hh, ww, c = x.shape
      x = jax.image.resize(x, (n, 2 * hh, 2 * ww, c), "bilinear")
      x = act(conv(width, f"conv_{i + 1}")(x))
    return conv(ch, "to_image")(x)


def make_generator(config: GTNConfig, num_classes: int, image_shape) -> Generator:
  """The generator module for ``image_shape (H, W, ch)``.

  Raises:
    ValueError: a bad config, or ``H``, ``W`` not divisible by ``2^(len(widths) − 1)``.
  """
  config.validate()
  image_shape = tuple(int(s) for s in image_shape)
  up = 2 ** (len(config.widths) - 1)
  if len(image_shape) != 3 or image_shape[0] % up or image_shape[1] % up:
    raise ValueError(f"widths {config.widths} upsample {up}x, so the image height and width must be divisible by "
                     f"{up}; got image_shape {image_shape}.")
  return Generator(config, int(num_classes), image_shape)


def latents_and_labels(config: GTNConfig, num_classes: int, z=None, key=None):
  """The generator's inputs for one rendered set, class-major: ``(z [C·T·k, z_dim], labels int32 [C·T·k])``
  from the learned ``z [C, T·k, z_dim]`` or, when it is None, ``N(0, I)`` draws from ``key``."""
  per = images_per_class(config)
  labels = class_major_labels(num_classes, per)
  if z is None:
    z = jax.random.normal(key, (num_classes * per, config.z_dim), jnp.float32)
  return z.reshape(num_classes * per, config.z_dim), labels


def gtn_parameterisation(config: GTNConfig, num_classes: int, image_shape, name: str = "gtn") -> Parameterisation:
  """GTN's ``Parameterisation``: ``render(state[, key])`` = ``T·k`` generated images per class, class-major (image
  ``t·k + i`` of class ``c`` is item ``i`` of inner step ``t``), hard labels, the learned lr. ``curriculum="full"``:
  from the learned ``params["z"]`` (the key is ignored); ``"none"``: fresh noise from ``key``
  (``needs_key=True``), the fixed ``const["key"]`` without one. ``storage`` = all learned floats."""
  gen = make_generator(config, num_classes, image_shape)
  full = config.curriculum == "full"

  def render(state: SynState, key=None) -> SyntheticBatch:
    if full:
      z, labels = latents_and_labels(config, num_classes, z=state.params["z"])
    else:
      z, labels = latents_and_labels(config, num_classes, key=state.const["key"] if key is None else key)
    images = gen.apply(state.params["generator"], z, labels)
    return SyntheticBatch(images, labels, state.params.get("lr"))

  def storage(state: SynState) -> int:
    return num_floats(state.params)

  return Parameterisation(name, render, storage, needs_key=not full)


def init_gtn(key, config: GTNConfig, num_classes: int, image_shape, *, ipc: Optional[int] = None,
             learn_lr=None) -> SynState:
  """GTN state: ``params = {"generator": ..., "z": [C, T·k, z_dim] (curriculum "full"), "lr"}`` and ``const =
  {"key": the evaluation sample's key}``.

  Args:
    learn_lr: the learned lr's initial value (e.g. ``jaxdistill.objectives.gtn.learner_config(config)
      .initial_lr()``), None: no learned lr.
    ipc: the pixel IPC the budget is checked against (``enforce_budget``; required then).

  Raises:
    ValueError: a bad config or image shape, ``enforce_budget`` without ``ipc``, or a state over the budget.
  """
  gen = make_generator(config, num_classes, image_shape)
  k_gen, k_z, k_eval = jax.random.split(key, 3)
  z0, labels = latents_and_labels(config, num_classes, key=k_z)
  params = {"generator": gen.init(k_gen, z0[:1], labels[:1])}
  if config.curriculum == "full":
    params["z"] = z0.reshape(num_classes, images_per_class(config), config.z_dim)
  if learn_lr is not None:
    params["lr"] = jnp.asarray(np.asarray(learn_lr, np.float32))
  if config.enforce_budget:
    if ipc is None:
      raise ValueError("enforce_budget=True needs the ipc of the pixel set the GTN is compared with.")
    check_budget(num_floats({k: v for k, v in params.items() if k != "lr"}), num_classes, ipc, image_shape,
                 what="GTN (generator + learned inputs)")
  return SynState(params, {"key": k_eval})
