"""Trajectory matching: Dataset Distillation by Matching Training Trajectories (MTT, Cazenavette et al.,
CVPR 2022), TESLA's constant-memory gradient (Cui et al., ICML 2023), and the L1 / parameter-pruning variants.

Loss (MTT Eq. 2 / Alg. 1): take the next expert trajectory ``θ*`` of a shuffled pass over the buffer (flattened
parameters ``[T + 1, P]``, one row per epoch, :mod:`jaxdistill.experts`; the objective's state holds the order,
its ``update`` advances it, as the reference walks a shuffled buffer) and a start epoch ``t ∈ {0, …, T⁺ − 1}`` (``randint(0, T⁺)`` as in the
reference code). A student starts at ``θ̂_0 = θ*_t`` and takes ``N`` SGD steps on synthetic mini-batches
``b_i`` (a fresh mini-batch and a fresh per-image DSA draw every step) with the learnable learning rate ``α``:

    θ̂_{i+1} = θ̂_i − α ∇_θ ℓ(A_i(X_{b_i}); θ̂_i)                                     (MTT Eq. 1)
    L = ‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²                                      (MTT Eq. 2)

(``distance="l1"``: ``‖·‖₁ / ‖·‖₁``, the generative-distillation thesis' variant). The gradient w.r.t. the
images and ``α`` goes through the whole unroll (``lax.scan``); ``checkpoint=True`` re-materialises it in
segments of ``k ≈ √N`` steps (``jax.checkpoint`` on segments and steps), so backward memory holds ``O(N/k + k)``
parameter vectors and one step's activations instead of ``N`` steps' activations.

TESLA (``gradient="tesla"``, Cui et al. Sec. 4.1): writing ``θ̂_N = θ̂_0 − α Σ_i g_i`` with
``g_i = ∇_θ ℓ(A_i(X_{b_i}); θ̂_i)``, the gradient is computed in two passes — pass 1 runs the student to
``θ̂_N`` keeping nothing; pass 2 re-runs it and accumulates ``−α λᵀ ∂g_i/∂X`` and ``−λᵀ g_i`` (for ``α``) with
``λ = ∂L/∂θ̂_N`` fixed — so memory does not depend on ``N``. This treats each ``θ̂_i`` as a constant (TESLA's
Eq. 5–6): it equals the full-unroll gradient exactly for ``N = 1``, and for ``N > 1`` it equals the full-unroll
gradient of the same loss with ``θ̂_i`` stopped at the input of each step (``first_order=True`` in
:func:`student_unroll`); the terms it drops, ``Σ_{j>i} ∂g_j/∂θ ∂θ̂_j/∂X_{b_i}``, are ``O(α)`` relative to the
kept ones. ``soft_labels``: TESLA's labels assigned by an expert (:func:`expert_soft_labels`).

The pure loss :func:`loss` (``loss(student_step, start, target, syn, lr, n_steps)``) runs any student step
from any expert parameters (pytrees); the registered objective samples the expert segment and calls it (also
importable as :mod:`jaxdistill.objectives.trajectory`).

Parameter pruning (``prune = p > 0``, from the generative-distillation thesis / "Dataset Distillation using
Parameter Pruning"): in each iteration the fraction ``p`` of parameters hardest to match — the largest
``|θ̂_N − θ*_{t+M}|`` — is dropped from numerator and denominator (threshold = the ``1 − p`` quantile,
computed on stopped values).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Optional, Tuple

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from jaxdistill import backend, experts, models, training
from jaxdistill import unroll as inner_unroll
from jaxdistill.unroll import segment_length  # noqa: F401  (re-exported: the √N checkpoint segments)
from jaxdistill.augment import DEFAULT_STRATEGY, DSAParams, apply_op, choose_op
from jaxdistill.models.layers import check_choice
from jaxdistill.objectives.base import Objective, RealBatch
from jaxdistill.validation import check_dsa_strategy, check_in_range, check_ints, check_network, check_positive

DISTANCES = ("l2", "l1")
GRADIENTS = ("unroll", "tesla")


@dataclasses.dataclass(frozen=True)
class TrajectoryMatchingConfig:
  """MTT / TESLA settings (defaults: MTT's CIFAR-10 IPC 10 values, METHODS.md).

  Attributes:
    buffer: folder of the expert buffer (:mod:`jaxdistill.experts`); the factory loads and checks it unless
      trajectories are passed to it directly.
    dataset: if set, the buffer's dataset must be this one.
    arch, width, depth: the student network; must be the experts' network (checked against the buffer).
    syn_steps: N, student steps per iteration (paper 20–80; CIFAR-10: 50 / 30 / 30 at IPC 1 / 10 / 50).
    expert_epochs: M, expert epochs matched (2–3).
    max_start_epoch: T⁺, start epochs ``0 … T⁺ − 1`` (CIFAR-10: 2 / 20 / 40).
    num_experts: load only the first this many trajectories (None: all).
    batch_syn: synthetic mini-batch per student step (None: the whole set).
    lr_init: α₀ = 0.01, the student learning rate used when the synthetic set has no learned ``lr``.
    lr_lr: learning rate of α (1e-5 … 1e-7); the distillation loop applies it to ``params["lr"]``
      (:meth:`param_lrs`).
    distance: ``"l2"`` (MTT) or ``"l1"``.
    gradient: ``"unroll"`` (back-propagation through the ``lax.scan``) or ``"tesla"`` (two passes).
    checkpoint: with ``"unroll"``, re-materialise steps (√N segments) to cut memory.
    unroll: trace the N student steps as straight-line code instead of a rolled ``lax.scan`` (every path:
      plain, checkpointed, TESLA's two passes). Same values and gradients; on XLA:CPU several times faster
      (convolutions inside a compiled loop body are emitted as slow loop fusions), at a longer compile. None
      (default): the backend's choice (:mod:`jaxdistill.backend`): on for CPU, off for accelerators.
    prune: fraction of parameters (hardest to match) dropped from the loss each iteration, in [0, 1).
    soft_labels, label_temperature, label_epoch: TESLA's expert soft labels (used by the set builder,
      :func:`expert_soft_labels`; ``label_epoch`` None = the experts' last epoch).
    zca: the buffer's ZCA flag must equal this (ZCA on for RGB data in MTT).
    dsa, dsa_strategy: per-step DSA of the student's mini-batches (on in MTT; no flip for digits).
  """
  buffer: Optional[str] = None
  dataset: Optional[str] = None
  arch: str = "convnet"
  width: int = 128
  depth: Optional[int] = None
  syn_steps: int = 30
  expert_epochs: int = 2
  max_start_epoch: int = 20
  num_experts: Optional[int] = None
  batch_syn: Optional[int] = None
  lr_init: float = 0.01
  lr_lr: float = 1e-5
  distance: str = "l2"
  gradient: str = "unroll"
  checkpoint: bool = False
  unroll: Optional[bool] = None
  prune: float = 0.0
  soft_labels: bool = False
  label_temperature: float = 1.0
  label_epoch: Optional[int] = None
  zca: bool = False
  dsa: bool = True
  dsa_strategy: Tuple[str, ...] = DEFAULT_STRATEGY

  def validate(self):
    check_network(self.arch, self.width, self.depth)
    check_choice("distance", self.distance, DISTANCES)
    check_choice("gradient", self.gradient, GRADIENTS)
    check_ints(self, ("syn_steps", "expert_epochs", "max_start_epoch"))
    check_ints(self, ("num_experts", "batch_syn"), optional=True)
    check_ints(self, "label_epoch", minimum=0, optional=True)
    check_positive(self, ("lr_init", "lr_lr", "label_temperature"))
    check_in_range("prune", self.prune, 0, 1, hi_closed=False, note="fraction of parameters dropped")
    if self.checkpoint and self.gradient == "tesla":
      raise ValueError("checkpoint applies to gradient='unroll'; gradient='tesla' already uses constant "
                       "memory (set checkpoint=False).")
    check_dsa_strategy(self.dsa_strategy)
    return self

  def model_kwargs(self) -> Dict[str, Any]:
    return experts.model_kwargs(self.arch, self.width, self.depth)

  def max_epoch(self) -> int:
    """The last expert epoch distillation reads: ``T⁺ − 1 + M``."""
    return int(self.max_start_epoch) - 1 + int(self.expert_epochs)

  def param_lrs(self) -> Dict[str, float]:
    """Per-parameter learning rates for the distillation loop: ``{"lr": lr_lr}`` (α's own optimiser)."""
    return {"lr": float(self.lr_lr)}


class Student(NamedTuple):
  """The student of one objective: ``step(θ [P], i, images, labels, lr, key) -> θ'`` (one SGD step on the
  ``i``-th mini-batch, MTT Eq. 1) and ``unflatten`` (flat vector -> Flax params)."""
  step: Any
  unflatten: Any
  num_params: int
  model: Any


def make_student(model, image_shape, num_images: int, batch_syn: Optional[int],
                 dsa: Optional[DSAParams]) -> Student:
  """Builds the student step for a synthetic set of ``num_images`` images.

  Mini-batches as the MTT reference (distill.py: ``indices_chunks = list(torch.split(torch.randperm(n),
  batch_syn))``, one chunk ``pop()``-ed per step): with ``k_steps, k_perm = split(key)``, pass ``p`` shuffles
  the set (:func:`jaxdistill.training.epoch_batches` with ``fold_in(k_perm, p)``) and cuts it into
  ``per_pass = ⌈n / batch_syn⌉`` chunks, the last partial one kept (its padding masked out of the loss); the
  steps of a pass take the chunks from the end, as ``pop()`` does, so the partial chunk comes first. Step ``i``
  draws a DSA operation and per-image parameters from ``fold_in(k_steps, i)``.
  """
  unflatten, num_params, _ = experts.unflattener(model, image_shape)
  n = int(num_images)
  per_pass, bs = training.epoch_steps(n, n if batch_syn is None else int(batch_syn))

  def ce(theta, x, y, weights):
    logits, _ = models.apply(model, {"params": unflatten(theta)}, x, train=True)
    return training.cross_entropy(logits, y, weights)

  def step(theta, i, images, labels, lr, key):
    k_steps, k_perm = jax.random.split(key)
    k_aug = jax.random.fold_in(k_steps, i)
    if per_pass == 1:
      x, y, w = images, labels, None
    else:
      batches = training.epoch_batches(jax.random.fold_in(k_perm, i // per_pass), n, bs)
      chunk = per_pass - 1 - i % per_pass  # pop(): the last chunk first
      idx = batches.order[chunk]
      w = None if batches.mask is None else batches.mask[chunk]
      x, y = images[idx], labels[idx]
    if dsa is not None:
      k_op, k_par = jax.random.split(k_aug)
      x = apply_op(choose_op(k_op, dsa), k_par, x, dsa, per_image=True)
    # The shared inner step (jaxdistill.unroll.sgd_step): plain SGD, θ − α ∇θ ℓ.
    return inner_unroll.sgd_step(lambda p, e, xb, yb: (ce(p, xb, yb, w), e), inner_unroll.InnerState(theta, None, {}),
                                 x, y, lr)[0].params

  return Student(step, unflatten, num_params, model)


def student_unroll(student: Student, theta0, images, labels, lr, key, num_steps: int,
                   checkpoint: bool = False, first_order: bool = False, unroll: bool = False):
  """``θ̂_N`` after ``num_steps`` student steps from ``theta0 [P]`` (``lax.scan``; differentiable).

  Args:
    checkpoint: re-materialise in segments of :func:`segment_length` steps (``jax.checkpoint`` on segments
      and on steps): same values and gradients, memory sub-linear in ``num_steps``.
    first_order: stop the gradient through ``θ̂_i`` at the input of each step (keeping the direct
      ``θ̂_{i+1} = θ̂_i + Δ_i`` path): the quantity TESLA's two-pass gradient computes.
    unroll: straight-line code instead of rolled scans (same result; faster on XLA:CPU).
  """
  return _unroll_steps(lambda theta, i: student.step(theta, i, images, labels, lr, key), theta0, num_steps,
                       checkpoint, first_order, unroll)


def _unroll_steps(step, theta0, num_steps: int, checkpoint: bool = False, first_order: bool = False,
                  unroll: bool = False):
  """``θ̂_N`` after ``num_steps`` applications of ``step(θ, i) -> θ`` from ``theta0`` (any pytree); options as
  :func:`student_unroll`, run by the shared :func:`jaxdistill.unroll.scan_steps` (√N checkpoint segments)."""
  return inner_unroll.scan_steps(lambda theta, i: (step(theta, i), None), theta0, jnp.arange(int(num_steps)),
                                 checkpoint="segments" if checkpoint else "none",
                                 scan_unroll=_unroll(unroll, num_steps), first_order=first_order)[0]


def _unroll(unroll: bool, length: int) -> int:
  """``lax.scan``'s ``unroll`` argument: the whole length (straight-line code) or 1 (a rolled loop)."""
  return max(1, int(length)) if unroll else 1


def _zero_cotangent(x):
  if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
    return jnp.zeros_like(x)
  return np.zeros(jnp.shape(x), jax.dtypes.float0)


def tesla_unroll(student: Student, num_steps: int, unroll: bool = False):
  """``f(theta0, images, labels, lr, key) -> θ̂_N`` whose VJP is TESLA's two-pass gradient (module
  docstring): forward keeps only the inputs; backward re-runs the student and accumulates, per step, the VJP
  of ``Δ_i = step(θ̂_i) − θ̂_i`` w.r.t. ``(images, labels, lr)`` with the cotangent ``λ = ∂L/∂θ̂_N`` (memory
  independent of ``num_steps``). The cotangent of ``theta0`` is ``λ`` (first order)."""
  f = _tesla_steps(lambda theta, i, syn, lr, key: student.step(theta, i, syn[0], syn[1], lr, key), num_steps,
                   unroll)
  return lambda theta0, images, labels, lr, key: f(theta0, (images, labels), lr, key)


def _tesla_steps(step, num_steps: int, unroll: bool = False):
  """TESLA's two-pass unroll for a generic ``step(θ, i, syn, lr, key) -> θ``: ``f(theta0, syn, lr, key)``.

  ``syn`` is any pytree; its floating-point leaves get the accumulated cotangents, the others (hard labels)
  zero (``float0``) ones; ``θ`` may be any pytree."""
  n = int(num_steps)

  def forward(theta0, syn, lr, key):
    body = lambda th, i: (step(th, i, syn, lr, key), None)
    return jax.lax.scan(body, theta0, jnp.arange(n), unroll=_unroll(unroll, n))[0]

  @jax.custom_vjp
  def f(theta0, syn, lr, key):
    return forward(theta0, syn, lr, key)

  def fwd(theta0, syn, lr, key):
    return forward(theta0, syn, lr, key), (theta0, syn, lr, key)

  def bwd(res, lam):
    theta0, syn, lr, key = res
    leaves, treedef = jax.tree_util.tree_flatten(syn)
    diff = [jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) for x in leaves]

    def merge(float_leaves):
      it = iter(float_leaves)
      return jax.tree_util.tree_unflatten(treedef, [next(it) if d else x for x, d in zip(leaves, diff)])

    def body(carry, i):
      theta, g_syn, g_lr = carry
      new, vjp = jax.vjp(lambda xs, a: step(theta, i, merge(xs), a, key),
                         [x for x, d in zip(leaves, diff) if d], lr)
      d_syn, d_lr = vjp(lam)
      return (new, [g + d for g, d in zip(g_syn, d_syn)], g_lr + d_lr), None

    init = (theta0, [jnp.zeros_like(x) for x, d in zip(leaves, diff) if d], jnp.zeros_like(lr))
    (_, g_syn, g_lr), _ = jax.lax.scan(body, init, jnp.arange(n), unroll=_unroll(unroll, n))
    it = iter(g_syn)
    g_all = jax.tree_util.tree_unflatten(treedef, [next(it) if d else _zero_cotangent(x)
                                                   for x, d in zip(leaves, diff)])
    return (lam, g_all, g_lr, jax.tree_util.tree_map(_zero_cotangent, key))

  f.defvjp(fwd, bwd)
  return f


def _flat(params):
  """A parameter pytree as one flat vector (a flat ``[P]`` array is returned as it is)."""
  if isinstance(params, (jax.Array, np.ndarray)) and np.ndim(params) == 1:
    return params
  return jax.flatten_util.ravel_pytree(params)[0]


def loss(student_step, start, target, syn, lr, n_steps: int, *, key=None, distance: str = "l2",
         prune: float = 0.0, gradient: str = "unroll", checkpoint: bool = False, unroll: bool = False):
  """The trajectory-matching loss (MTT Eq. 2): ``‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²``, a scalar.

  A student starts at ``θ̂_0 = start`` and takes ``n_steps`` steps ``θ̂_{i+1} = student_step(θ̂_i, i, syn, lr,
  key)`` (MTT Eq. 1: typically ``θ − lr · ∇_θ ℓ(minibatch_i(syn); θ)``); the result is compared with ``target``.
  Pure: ``jit``, ``grad`` (w.r.t. ``syn``'s floating-point leaves and ``lr``) and ``vmap`` apply.

  Args:
    student_step: ``(params, i, syn, lr, key) -> params``; ``i`` is the int32 step index (pick mini-batch
      ``i`` and fold ``i`` into ``key`` for per-step augmentation inside it).
    start: the expert's parameters at epoch ``t`` (any pytree, e.g. a flat ``[P]`` vector or Flax params).
    target: the expert's parameters at epoch ``t + M`` (same structure and shapes).
    syn: what the step trains on, e.g. ``(images [N, ...], labels [N])``; any pytree.
    lr: the student learning rate α (scalar; learnable in MTT).
    n_steps: N ≥ 1 student steps.
    key: passed unchanged to every ``student_step`` call (None when the step needs no randomness).
    distance: ``"l2"`` (MTT) or ``"l1"`` (ratio of L1 norms).
    prune: fraction in ``[0, 1)`` of the worst-matched parameters dropped (:func:`trajectory_distance`).
    gradient: ``"unroll"`` (back-propagation through the steps) or ``"tesla"`` (TESLA's two-pass gradient,
      memory independent of ``n_steps``; first order in the student states, see the module docstring).
    checkpoint: with ``"unroll"``, re-materialise the steps in √N segments (same values, less memory).
    unroll: straight-line code instead of a rolled ``lax.scan`` (same values; faster on XLA:CPU).

  Returns:
    The scalar loss (parameters flattened to one vector for the distance).

  Raises:
    ValueError: bad options, or ``start`` and ``target`` of different structures or shapes.
  """
  check_choice("distance", distance, DISTANCES)
  check_choice("gradient", gradient, GRADIENTS)
  check_ints({"n_steps": n_steps}, "n_steps")
  check_in_range("prune", prune, 0, 1, hi_closed=False)
  if checkpoint and gradient == "tesla":
    raise ValueError("checkpoint applies to gradient='unroll'; gradient='tesla' already uses constant memory.")
  chex.assert_trees_all_equal_shapes(start, target, exception_type=ValueError,
                                     custom_message="start and target must be parameters of the same network")
  if gradient == "tesla":
    theta_n = _tesla_steps(student_step, n_steps, unroll)(start, syn, lr, key)
  else:
    theta_n = _unroll_steps(lambda theta, i: student_step(theta, i, syn, lr, key), start, n_steps, checkpoint,
                            unroll=unroll)
  return trajectory_distance(_flat(theta_n), _flat(start), _flat(target), distance, prune)


def trajectory_distance(theta_n, start, target, distance: str = "l2", prune: float = 0.0):
  """``‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²`` (MTT Eq. 2) of flat ``[P]`` vectors, or with
  ``distance="l1"`` the ratio of L1 norms; ``prune`` drops the fraction of coordinates with the largest
  ``|θ̂_N − θ*_{t+M}|`` from both (threshold on stopped values). Returns a scalar."""
  check_choice("distance", distance, DISTANCES)
  diff = theta_n - target
  ref = start - target
  f = jnp.square if distance == "l2" else jnp.abs
  num, den = f(diff), f(ref)
  if prune > 0:
    err = jax.lax.stop_gradient(jnp.abs(diff))
    keep = err <= jnp.quantile(err, 1.0 - prune)
    num, den = jnp.where(keep, num, 0.0), jnp.where(keep, den, 0.0)
  return jnp.sum(num) / jnp.maximum(jnp.sum(den), 1e-12)


def expert_soft_labels(model, unflatten, theta, images, temperature: float = 1.0, batch_size: int = 500):
  """TESLA's soft labels: ``softmax(f_θ(images) / temperature)`` of an expert ``θ [P]`` for ``images
  [N, H, W, C]``; ``[N, C]`` float32."""
  logits = training.predict_batched(model, {"params": unflatten(jnp.asarray(theta))}, jnp.asarray(images),
                                    batch_size)
  return jax.nn.softmax(logits / temperature, axis=-1)


def buffer_expectations(config: TrajectoryMatchingConfig, num_classes: int, image_shape) -> Dict[str, Any]:
  """Buffer metadata the objective requires (checked by :func:`jaxdistill.experts.load_buffer`)."""
  out = {"arch": config.arch, "model_kwargs": config.model_kwargs(), "image_shape": list(image_shape),
         "num_classes": int(num_classes), "zca": bool(config.zca)}
  if config.dataset is not None:
    out["dataset"] = config.dataset
  return out


def load_trajectories(config: TrajectoryMatchingConfig, num_classes: int, image_shape) -> experts.Buffer:
  """Loads ``config.buffer`` (epochs ``0 … T⁺ − 1 + M``, ``config.num_experts`` experts) after checking its
  metadata against the configuration.

  Raises:
    ValueError: no buffer configured, or a missing / mismatching / too short one.
  """
  if not config.buffer:
    raise ValueError("trajectory matching needs an expert buffer: set buffer='DIR' (--buffer DIR), created "
                     "by `python -m experiments.buffers`.")
  return experts.load_buffer(config.buffer, max_epoch=config.max_epoch(), num_experts=config.num_experts,
                             expected=buffer_expectations(config, num_classes, image_shape))


def make_trajectory_matching(config: TrajectoryMatchingConfig, *, num_classes: int, image_shape, ipc: int,
                             name: str = "mtt", buffer=None) -> Objective:
  """Builds the MTT / TESLA objective.

  Args:
    buffer: expert trajectories float32 ``[E, T' + 1, P]`` (an array or a :class:`jaxdistill.experts.Buffer`;
      ``T' ≥ T⁺ − 1 + M``), or None to load ``config.buffer``.

  Returns:
    An :class:`Objective` with ``data = {"trajectories": [E, T' + 1, P]}``; ``loss(state, syn, real, key,
    data) -> (L, {"expert", "start_epoch", "lr"})`` (``real`` is unused).
  """
  config.validate()
  image_shape = tuple(image_shape)
  model = models.get_model(config.arch, num_classes, image_shape, **config.model_kwargs())
  if buffer is None:
    buffer = load_trajectories(config, num_classes, image_shape)
  traj = np.asarray(buffer.params if isinstance(buffer, experts.Buffer) else buffer, np.float32)
  dsa = DSAParams(strategy=tuple(config.dsa_strategy)) if config.dsa else None
  student = make_student(model, image_shape, num_classes * ipc, config.batch_syn, dsa)
  if traj.ndim != 3 or traj.shape[2] != student.num_params:
    raise ValueError(f"expert trajectories must be [experts, epochs, {student.num_params}] for this "
                     f"{config.arch} student, got shape {traj.shape}.")
  if traj.shape[1] < config.max_epoch() + 1:
    raise ValueError(f"the trajectories have {traj.shape[1]} epochs; max_start_epoch {config.max_start_epoch} "
                     f"and expert_epochs {config.expert_epochs} need {config.max_epoch() + 1}.")
  n_steps, m, t_max = int(config.syn_steps), int(config.expert_epochs), int(config.max_start_epoch)

  def step(theta, i, syn_pair, lr, key):
    return student.step(theta, i, syn_pair[0], syn_pair[1], lr, key)

  num_experts = int(traj.shape[0])

  def init(key):
    """The expert order: a shuffled pass over the buffer (``{"expert_order" [E], "expert_pos" []}``)."""
    return {"expert_order": jax.random.permutation(key, num_experts).astype(jnp.int32),
            "expert_pos": jnp.zeros((), jnp.int32)}

  def update(state, syn, key, data=None):
    """Moves to the next expert of the pass; after the last one, a new shuffled pass (the reference walks a
    shuffled buffer, ``random.shuffle(buffer)``, one expert per iteration, without replacement)."""
    pos = state["expert_pos"] + 1
    wrap = pos >= num_experts
    order = jnp.where(wrap, jax.random.permutation(key, num_experts).astype(jnp.int32), state["expert_order"])
    return {"expert_order": order, "expert_pos": jnp.where(wrap, 0, pos).astype(jnp.int32)}

  def objective_loss(state, syn, real: RealBatch, key, data):
    """MTT Eq. 2 for the current expert of ``state`` (:func:`init`; an empty state ``{}``, as a caller of the
    pure loss may pass, draws the expert from ``key`` instead) and a random start epoch;
    ``syn.images [C·ipc, H, W, C]``, ``syn.lr`` α or None."""
    trajectories = data["trajectories"]
    k_e, k_t, k_run = jax.random.split(key, 3)
    if state and "expert_order" in state:
      e = state["expert_order"][state["expert_pos"]]
    else:
      e = jax.random.randint(k_e, (), 0, trajectories.shape[0])
    t = jax.random.randint(k_t, (), 0, t_max)
    start = trajectories[e, t]
    target = trajectories[e, t + m]
    lr = jnp.asarray(config.lr_init if syn.lr is None else syn.lr, jnp.float32)
    value = loss(step, start, target, (syn.images, syn.labels), lr, n_steps, key=k_run, distance=config.distance,
                 prune=config.prune, gradient=config.gradient, checkpoint=config.checkpoint,
                 unroll=backend.choose(config.unroll, cpu=True, accelerator=False))
    return value, {"expert": e, "start_epoch": t, "lr": lr}

  return Objective(name, init, objective_loss, update, config, {"trajectories": jnp.asarray(traj)})


def soft_labels_from_buffer(config: TrajectoryMatchingConfig, images, num_classes: int, image_shape,
                            expert: int = 0):
  """TESLA's label assignment for a synthetic set: soft labels ``[N, C]`` from expert ``expert`` of
  ``config.buffer`` at ``config.label_epoch`` (default its last epoch), temperature
  ``config.label_temperature``; reads one shard."""
  meta = experts.read_metadata(config.buffer)
  experts.check_metadata(meta, buffer_expectations(config, num_classes, image_shape))
  epoch = meta["epochs"] if config.label_epoch is None else int(config.label_epoch)
  model = models.get_model(config.arch, num_classes, tuple(image_shape), **config.model_kwargs())
  unflatten, _, _ = experts.unflattener(model, tuple(image_shape))
  seen = 0
  for _, params, _ in experts.iter_shards(config.buffer, [epoch]):
    if expert < seen + params.shape[0]:
      theta = params[expert - seen, 0]
      break
    seen += params.shape[0]
  else:
    raise ValueError(f"expert {expert} is not in the buffer ({seen} experts).")
  return expert_soft_labels(model, unflatten, theta, images, config.label_temperature)
