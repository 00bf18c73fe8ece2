"""Back-propagation through time: the original Dataset Distillation (DD, Wang, Zhu, Torralba & Efros 2018),
its momentum variant (the BPTT of "Remember the Past", RTP, Deng & Russakovsky 2022) and Label Distillation
(LD, Bohdal, Yang & Hospedales 2020).

The synthetic set ``S = (x̃, ỹ)`` and the inner learning rate ``α`` are learned so that a network trained on
``S`` from a *fresh random initialisation* ``θ_0 ~ p(θ)`` (a new draw every outer iteration, from the key)
classifies real data well (DD Eq. 6 / Alg. 1):

    θ_{t+1} = θ_t − α_t · v_{t+1},   v_{t+1} = β · v_t + ∇_θ ℓ(x̃_{b(t)}, ỹ_{b(t)}; θ_t) + λ · θ_t,   v_0 = 0
    L(x̃, ỹ, α) = E_{θ_0} [ ℓ(x_real, y_real; θ_T) ]

with ``β = 0`` (plain SGD, DD) or ``β > 0`` (SGD with momentum, the inner optimiser of RTP), ``ℓ`` the softmax
cross-entropy (soft targets allowed) and ``b(t) = t mod S`` the mini-batch of step ``t``: the synthetic set is
cut into ``S = ipc / batch_per_class`` fixed class-balanced mini-batches (``batch_per_class`` images of every
class), so ``T`` steps are ``T / S`` inner epochs over the set — DD's "steps × epochs" structure where each step
has its own images; ``batch_per_class = 0`` uses the whole set every step. The ``T`` steps are one
``lax.scan``; its gradient is exact BPTT (second order through every inner gradient). With ``checkpoint``
each step is wrapped in ``jax.checkpoint``: the backward pass stores only the carried parameters of each step
and recomputes the step's activations — memory ``O(T · |θ|)`` instead of ``O(T · activations)``.

The learned ``α`` is ``SyntheticBatch.lr`` (``params["lr"]`` of :func:`jaxdistill.synthetic.init_pixels` with
``learn_lr=config.initial_lr()``), stored in the parameter space of ``config.lr_param``: as DD's code
(SsnL/dataset-distillation ``train_distilled_image.py``) by default, one raw value per inner step with
``α_t = softplus(raw_t)``, initialised to ``softplus⁻¹(inner_lr) = log(expm1(inner_lr))`` — positive for any raw
value, and each step free to learn its own rate; ``lr_param="identity"`` learns ``α`` itself (a scalar when
``lr_per_step`` is off). Without a learned ``α`` ``config.inner_lr`` is used. :func:`step_sizes` maps the
stored values to the ``[T]`` rates.
Learned soft labels (``params["labels"]``) are the targets of the inner cross-entropy (``label_transform``
``"raw"``: ``−Σ_c ỹ_c log p_c`` as in LD's code, or ``"softmax"`` of the label vector). LD is this objective
with the images fixed (the ``labels_only`` parameterisation, :mod:`jaxdistill.synthetic.labels`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import backend, models, training
from jaxdistill import unroll as inner_unroll
from jaxdistill.models.layers import check_choice
from jaxdistill.objectives.base import Objective, RealBatch
from jaxdistill.synthetic.labels import LABEL_PROJECTIONS, LABEL_STARTS
from jaxdistill.unroll import InnerState, sgd_step  # noqa: F401  (the shared unroll's step, re-exported)
from jaxdistill.validation import (check_bools, check_in_range, check_ints, check_network, check_nonnegative,
                                   check_positive)

LABEL_TRANSFORMS = ("raw", "softmax")
LR_PARAMS = ("softplus", "identity")
NETWORKS = ("fresh", "persistent")


@dataclasses.dataclass(frozen=True)
class BPTTConfig:
  """DD / LD settings (defaults: the DD paper's unroll of 10 steps × 3 epochs with ``α_0 = 0.02``).

  Attributes:
    arch, width, depth: the inner network (ConvNet-128; depth from the image size when None).
    inner_steps: ``T``, SGD steps unrolled per outer iteration.
    batch_per_class: images of each class per inner step (0: the whole synthetic set every step); must
      divide the IPC.
    inner_lr: the inner learning rate when the synthetic set carries no learned one.
    inner_momentum: ``β`` of the inner SGD (0: plain SGD as in DD; e.g. 0.9 for RTP-style momentum).
    weight_decay: ``λ``, L2 coefficient of the inner SGD.
    num_models: fresh initialisations per outer iteration (the loss is their mean; vmapped).
    checkpoint: ``jax.checkpoint`` each inner step (recompute activations in the backward pass).
    scan_unroll: inner steps per iteration of the compiled scan (:func:`unroll`); XLA:CPU runs convolutions
      inside loop bodies far slower than in straight-line code (measured ~20× for a ConvNet-32 step), so a
      partial unroll trades compile time for speed; 1 = a plain rolled scan. None (default): the backend's
      choice (:mod:`jaxdistill.backend`): ``min(inner_steps, 10)`` on CPU, 1 on accelerators.
    label_transform: how soft labels become targets: ``"raw"`` or ``"softmax"``; hard labels are one-hot.
    learn_lr: the synthetic set carries a learnable ``α`` initialised to ``inner_lr`` (DD: yes; LD: no).
    lr_per_step: one learned rate per inner step (``T`` of them, DD's code) instead of one scalar.
    lr_param: how the stored value maps to ``α``: ``"softplus"`` (DD's code: ``α = softplus(raw)``, always
      positive) or ``"identity"``.
    learn_labels: learnable soft labels (always on for LD), initialised by ``label_start`` (``"one_hot"`` or
      ``"uniform"``, the LD code's start) times ``label_scale``.
    label_projection: what the loop does to learned labels after every update (through the
      parameterisation, :func:`jaxdistill.synthetic.labels.label_projection`): ``"simplex"`` (LD's code:
      clip to [0, 1] and renormalise each row; needs ``label_transform="raw"`` and ``label_scale=1``) or
      ``"none"`` (unconstrained, DD's default).
    lr_lr, lr_labels: the outer learning rates of ``α`` and of the soft labels (None: the image lr);
      :meth:`param_lrs` hands them to :attr:`jaxdistill.loop.LoopConfig.param_lrs`.
    network: ``"fresh"`` (DD: every outer iteration unrolls from a new random initialisation) or
      ``"persistent"`` (LD's code, ``label_distillation_or2.py``: one network kept across outer iterations —
      the unroll starts from it, on a random mini-batch of the set, and after each outer step it takes one
      Adam step (lr ``online_lr``) on that mini-batch's loss, re-initialised every ``reset_every`` steps).
    online_lr, reset_every: the persistent network's Adam lr (LD: PyTorch's default 1e-3) and its
      re-initialisation period in outer steps (LD resets by early stopping on a 50-step moving average of the
      target error; a fixed period stands in for it here).
  """
  arch: str = "convnet"
  width: int = 128
  depth: Optional[int] = None
  inner_steps: int = 30
  batch_per_class: int = 0
  inner_lr: float = 0.02
  inner_momentum: float = 0.0
  weight_decay: float = 0.0
  num_models: int = 1
  checkpoint: bool = False
  scan_unroll: Optional[int] = None
  label_transform: str = "raw"
  learn_lr: bool = True
  lr_per_step: bool = True
  lr_param: str = "softplus"
  learn_labels: bool = False
  label_start: str = "one_hot"
  label_scale: float = 1.0
  label_projection: str = "none"
  lr_lr: Optional[float] = None
  lr_labels: Optional[float] = None
  network: str = "fresh"
  online_lr: float = 1e-3
  reset_every: int = 200

  def validate(self):
    check_network(self.arch, self.width, self.depth)
    check_choice("label_transform", self.label_transform, LABEL_TRANSFORMS)
    check_choice("label_start", self.label_start, LABEL_STARTS)
    check_choice("label_projection", self.label_projection, LABEL_PROJECTIONS)
    check_choice("lr_param", self.lr_param, LR_PARAMS)
    check_choice("network", self.network, NETWORKS)
    check_bools(self, ("checkpoint", "learn_lr", "learn_labels", "lr_per_step"))
    check_ints(self, ("inner_steps", "num_models", "reset_every"))
    check_ints(self, ("scan_unroll",), optional=True)
    check_ints(self, "batch_per_class", minimum=0, note="0 = whole set")
    check_positive(self, ("inner_lr", "online_lr"))
    check_in_range("inner_momentum", self.inner_momentum, 0, 1, hi_closed=False)
    check_nonnegative(self, "weight_decay")
    check_positive(self, ("lr_lr", "lr_labels"), optional=True, note="None: the image lr")
    check_positive(self, "label_scale")
    if self.label_projection == "simplex" and (self.label_transform != "raw" or self.label_scale != 1):
      raise ValueError("label_projection='simplex' keeps labels as probability vectors: it needs "
                       f"label_transform='raw' (got {self.label_transform!r}) and label_scale=1 (got "
                       f"{self.label_scale!r}); use label_projection='none' otherwise.")
    return self

  def initial_lr(self):
    """The initial value of the learned ``α`` as stored in the synthetic set (``init_pixels(learn_lr=...)``):
    ``[T]`` (``lr_per_step``) or a scalar, in ``lr_param``'s space (softplus: ``log(expm1(inner_lr))``);
    None when ``learn_lr`` is off."""
    if not self.learn_lr:
      return None
    value = float(np.log(np.expm1(self.inner_lr))) if self.lr_param == "softplus" else float(self.inner_lr)
    return np.full((int(self.inner_steps),), value, np.float32) if self.lr_per_step else np.float32(value)

  def param_lrs(self):
    """Outer learning rates of the learned lr and labels, ``{"lr": lr_lr, "labels": lr_labels}`` (entries
    left at None are omitted: they follow the image lr)."""
    out = {}
    if self.lr_lr is not None:
      out["lr"] = float(self.lr_lr)
    if self.lr_labels is not None:
      out["labels"] = float(self.lr_labels)
    return out or None


def unroll(loss_fn: Callable, params, batches_x, batches_y, lrs, *, extra=None, momentum: float = 0.0,
           weight_decay: float = 0.0, checkpoint: bool = False, scan_unroll: int = 1, batch_offset=0):
  """``T = len(lrs)`` inner steps (:func:`sgd_step`) in one ``lax.scan``; step ``t`` uses mini-batch
  ``(t + batch_offset) mod S`` (``batch_offset`` an int or a traced int32 scalar).

  Args:
    loss_fn: ``loss_fn(params, extra, x, y) -> (loss, new_extra)``.
    params: initial parameters ``θ_0`` (pytree).
    batches_x: ``[S, B, ...]`` mini-batches of inputs; batches_y: ``[S, B]`` int or ``[S, B, C]`` soft targets.
    lrs: ``[T]`` step sizes.
    extra: other carried model state (default: ``{}``).
    checkpoint: wrap each step in ``jax.checkpoint`` (rematerialise its activations in the backward pass).
    scan_unroll: steps per iteration of the compiled loop (``lax.scan(unroll=)``; ``T``: straight-line code,
      faster on XLA:CPU, whose convolutions inside loop bodies are much slower, at a longer compile).

  Returns:
    ``(InnerState after T steps, losses [T])`` — ``losses[t]`` is the mini-batch loss at ``θ_t``.
  """
  num_batches = batches_x.shape[0]
  init = inner_unroll.init_state(params, momentum, extra)

  def step(state, inp):
    t, lr = inp
    if num_batches == 1:
      x, y = batches_x[0], batches_y[0]
    else:
      b = (t + batch_offset) % num_batches
      x = jax.lax.dynamic_index_in_dim(batches_x, b, keepdims=False)
      y = jax.lax.dynamic_index_in_dim(batches_y, b, keepdims=False)
    return sgd_step(loss_fn, state, x, y, lr, momentum, weight_decay)

  steps = jnp.arange(lrs.shape[0], dtype=jnp.int32)
  return inner_unroll.scan_steps(step, init, (steps, lrs), checkpoint="step" if checkpoint else "none",
                                 scan_unroll=scan_unroll)


def minibatches(images, labels, num_classes: int, batch_per_class: int):
  """Cuts a class-major set ``images [C·ipc, ...]`` / ``labels [C·ipc(, C)]`` into ``S = ipc / k`` class-balanced
  mini-batches ``[S, C·k, ...]`` (batch ``s`` holds images ``s·k … s·k + k − 1`` of every class); ``k = 0``: one
  batch of the whole set.

  Raises:
    ValueError: ``k`` does not divide the IPC, or the set is not ``num_classes · ipc`` images.
  """
  n = images.shape[0]
  if n % num_classes:
    raise ValueError(f"{n} synthetic images are not a class-major set of {num_classes} classes.")
  ipc = n // num_classes
  k = batch_per_class or ipc
  if ipc % k:
    raise ValueError(f"batch_per_class must divide the images per class ({ipc}), got {batch_per_class}.")
  s = ipc // k

  def cut(a):
    a = a.reshape((num_classes, s, k) + a.shape[1:])
    return jnp.swapaxes(a, 0, 1).reshape((s, num_classes * k) + a.shape[3:])

  return cut(images), cut(labels)


def step_sizes(lr, default: float, steps: int, dtype=jnp.float32, lr_param: str = "identity"):
  """``[T]`` step sizes from a learned ``lr`` (None -> ``default``; scalar -> repeated; ``[T]`` -> per step),
  mapped through ``lr_param`` (``"softplus"``: ``α = softplus(lr)``, DD's code; ``"identity"``: ``α = lr``).

  Raises:
    ValueError: a vector of the wrong length, or an unknown ``lr_param``.
  """
  check_choice("lr_param", lr_param, LR_PARAMS)
  if lr is None:
    return jnp.full((steps,), default, dtype)
  lr = jnp.asarray(lr)
  if lr.ndim == 0:
    lr = jnp.broadcast_to(lr, (steps,))
  elif lr.shape != (steps,):
    raise ValueError(f"a learned lr must be a scalar or one per inner step [{steps}], got shape {lr.shape}.")
  lr = lr.astype(dtype)
  return jax.nn.softplus(lr) if lr_param == "softplus" else lr


def _model(config: BPTTConfig, num_classes: int, image_shape):
  kwargs = {"width": config.width} if config.arch in ("convnet", "convnet_bn", "mlp") else {}
  if config.depth is not None:
    kwargs["depth"] = config.depth
  return models.get_model(config.arch, num_classes, tuple(image_shape), **kwargs)


class InnerTrainer(NamedTuple):
  """The inner loop of an objective, usable on its own (evaluation in DD's protocol, tests).

  ``train(images, labels, lr, key) -> (variables, inner_losses [T])``: a fresh network from ``key`` trained
  by the unroll (parameters in the images' dtype); ``model`` the Flax module; ``num_steps`` ``T``;
  ``train_from(variables, images, labels, lr, batch_offset=0)`` the same unroll from given variables (LD's
  persistent network), starting at mini-batch ``batch_offset``; ``targets(labels, dtype)`` the inner
  cross-entropy's targets ``[N, C]``.
  """
  train: Callable
  model: Any
  num_steps: int
  train_from: Optional[Callable] = None
  targets: Optional[Callable] = None


def make_inner_trainer(config: BPTTConfig, *, num_classes: int, image_shape) -> InnerTrainer:
  """The differentiable inner training of :func:`make_bptt` (see the module docstring)."""
  config.validate()
  image_shape = tuple(image_shape)
  model = _model(config, num_classes, image_shape)

  def loss_fn(params, extra, x, y):
    logits, new_vars = models.apply(model, {**extra, "params": params}, x, train=True)
    return training.cross_entropy(logits, y), {k: v for k, v in new_vars.items() if k != "params"}

  def targets(labels, dtype):
    if labels.ndim == 1:
      return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    labels = labels.astype(dtype)
    return jax.nn.softmax(labels, axis=-1) if config.label_transform == "softmax" else labels

  def train_from(variables, images, labels, lr, batch_offset=0):
    dtype = images.dtype
    variables = jax.tree_util.tree_map(
        lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, variables)
    params = variables["params"]
    extra = {k: v for k, v in variables.items() if k != "params"}
    lrs = step_sizes(lr, config.inner_lr, config.inner_steps, dtype, config.lr_param)
    bx, by = minibatches(images, targets(labels, dtype), num_classes, config.batch_per_class)
    state, losses = unroll(loss_fn, params, bx, by, lrs, extra=extra, momentum=config.inner_momentum,
                           weight_decay=config.weight_decay, checkpoint=config.checkpoint,
                           scan_unroll=backend.choose(config.scan_unroll, cpu=min(int(config.inner_steps), 10),
                                                       accelerator=1), batch_offset=batch_offset)
    return {**state.extra, "params": state.params}, losses

  def train(images, labels, lr, key):
    return train_from(models.init_variables(model, key, image_shape), images, labels, lr)

  return InnerTrainer(train, model, int(config.inner_steps), train_from, targets)


class PersistentNet(NamedTuple):
  """LD's persistent network (``network="persistent"``): its ``variables``, the Adam state of its online
  training, and ``age`` (int32 scalar, online steps since its last (re-)initialisation)."""
  variables: Any
  opt_state: Any
  age: jnp.ndarray


def make_bptt(config: BPTTConfig, *, num_classes: int, image_shape, ipc: int, name: str = "dd") -> Objective:
  """Builds the DD / LD objective (stateless: every loss draws ``num_models`` fresh networks from its key).

  ``loss(state, syn, real, key)``: ``syn`` class-major ``[C·ipc, ...]`` with hard or soft labels and optional
  learned ``lr``; ``real`` a :class:`RealBatch` ``[C, n, ...]`` (flattened to ``C·n`` images). Returns the
  mean real cross-entropy of the unrolled networks and aux ``{"inner_loss": [num_models] synthetic loss at
  θ_{T−1}, "real_accuracy": [num_models]}``.

  Raises:
    ValueError: invalid config, or ``batch_per_class`` not dividing ``ipc``.
  """
  config.validate()
  k = config.batch_per_class or ipc
  if ipc % k:
    raise ValueError(f"batch_per_class must divide the images per class ({ipc}), got "
                     f"{config.batch_per_class}.")
  trainer = make_inner_trainer(config, num_classes=num_classes, image_shape=image_shape)
  persistent = config.network == "persistent"
  num_batches = ipc // k
  online = optax.adam(config.online_lr)

  def fresh(key):
    variables = models.init_variables(trainer.model, key, tuple(image_shape))
    return PersistentNet(variables, online.init(variables["params"]), jnp.zeros((), jnp.int32))

  def init(key):
    return fresh(key) if persistent else {}

  def offset(key):
    """The persistent unroll's first mini-batch: random per outer step (LD samples its inner batch)."""
    return jax.random.randint(jax.random.fold_in(key, 17), (), 0, num_batches)

  def loss(state, syn, real: RealBatch, key):
    rx = real.images.reshape((-1,) + real.images.shape[2:]).astype(syn.images.dtype)
    ry = real.labels.reshape(-1)

    def one(k):
      if persistent:
        variables, inner = trainer.train_from(state.variables, syn.images, syn.labels, syn.lr, offset(key))
      else:
        variables, inner = trainer.train(syn.images, syn.labels, syn.lr, k)
      logits, _ = models.apply(trainer.model, variables, rx, train=True)
      return (training.cross_entropy(logits, ry), inner[-1],
              jnp.mean((jnp.argmax(logits, -1) == ry).astype(jnp.float32)))

    keys = jax.random.split(key, config.num_models)
    if config.num_models == 1 or persistent:  # no vmap: batched parameters make grouped convolutions (slow)
      losses, inner, acc = jax.tree_util.tree_map(lambda v: v[None], one(keys[0]))
    else:
      losses, inner, acc = jax.vmap(one)(keys)
    return jnp.mean(losses), {"inner_loss": inner, "real_accuracy": acc}

  def update(state: PersistentNet, syn, key):
    """LD's online step: one Adam step of the persistent network on the loss of the mini-batch its unroll
    started from (the labels as they are now; no gradient to the set), re-initialised every
    ``reset_every`` steps."""
    images = jax.lax.stop_gradient(syn.images)
    labels = jax.lax.stop_gradient(syn.labels)
    bx, by = minibatches(images, trainer.targets(labels, images.dtype), num_classes, config.batch_per_class)
    b = offset(key)
    x = jax.lax.dynamic_index_in_dim(bx, b, keepdims=False)
    y = jax.lax.dynamic_index_in_dim(by, b, keepdims=False)
    params = state.variables["params"]
    extra = {n: v for n, v in state.variables.items() if n != "params"}

    def batch_loss(p):
      logits, new_vars = models.apply(trainer.model, {**extra, "params": p}, x, train=True)
      return training.cross_entropy(logits, y), {n: v for n, v in new_vars.items() if n != "params"}

    grads, new_extra = jax.grad(batch_loss, has_aux=True)(params)
    updates, opt_state = online.update(grads, state.opt_state, params)
    trained = PersistentNet({**new_extra, "params": optax.apply_updates(params, updates)}, opt_state,
                            state.age + 1)
    reset = trained.age >= config.reset_every
    new = fresh(jax.random.fold_in(key, 29))
    return jax.tree_util.tree_map(lambda a, b: jnp.where(reset, a, b), new, trained)

  return Objective(name, init, loss, update if persistent else None, config)


def unrolled_accuracy(config: BPTTConfig, batch, key, test_images, test_labels, num_classes: int,
                      num_models: int = 5, batch_size: int = 1000) -> np.ndarray:
  """DD's own evaluation: ``num_models`` fresh networks trained by the ``T``-step unroll on ``batch`` (a
  :class:`~jaxdistill.synthetic.SyntheticBatch`, learned lr included), then tested.

  Returns:
    Test accuracies ``[num_models]`` (fractions).
  """
  images = jnp.asarray(batch.images, jnp.float32)
  trainer = make_inner_trainer(config, num_classes=num_classes, image_shape=images.shape[1:])
  lr = None if batch.lr is None else jnp.asarray(batch.lr, jnp.float32)

  @jax.jit
  def one(k, x, y):
    variables, _ = trainer.train(images, jnp.asarray(batch.labels), lr, k)
    return training.accuracy(trainer.model, variables, x, y, batch_size)

  x, y = jnp.asarray(test_images, jnp.float32), jnp.asarray(test_labels)
  # One compiled program, called per model from the host (a loop inside jit would slow XLA:CPU's convolutions).
  return np.asarray([float(one(k, x, y)) for k in jax.random.split(key, num_models)])
