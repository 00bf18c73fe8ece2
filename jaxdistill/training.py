"""Training networks: the loss, the optimiser and one SGD step, shared by evaluation, experts and objectives.

All functions are pure; a :class:`TrainState` is a pytree so many networks can be trained at once under
``vmap`` (see :mod:`jaxdistill.evaluate`).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxdistill import models
from jaxdistill.augment import DSAParams, apply_op


class TrainState(NamedTuple):
  """Variables (``params`` and maybe ``batch_stats``), optimiser state and step counter."""
  variables: Any
  opt_state: Any
  step: jnp.ndarray


LOSSES = ("cross_entropy", "mse")


def mse(logits, targets, weights=None):
  """Squared error ``½ · Σ_c (logits − targets)²`` per example, averaged over the batch: the loss FRePo's
  evaluation (``script/eval.py``, ``loss='mse'``; ``metrics.mean_squared_loss``) trains finite networks with on
  learned regression targets ``[N, C]``, and KIP's transfer on centred one-hot labels; ``weights [N]`` make it
  a weighted mean."""
  losses = 0.5 * jnp.sum(jnp.square(logits - targets), axis=-1)
  if weights is None:
    return jnp.mean(losses)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def classification_loss(logits, labels, weights=None, loss: str = "cross_entropy"):
  """:func:`cross_entropy` or :func:`mse` by name (one of :data:`LOSSES`)."""
  if loss == "mse":
    return mse(logits, labels, weights)
  if loss != "cross_entropy":
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}.")
  return cross_entropy(logits, labels, weights)


def cross_entropy(logits, labels, weights=None):
  """Mean softmax cross-entropy of ``logits [N, C]`` against int labels ``[N]`` or soft labels ``[N, C]``.

  ``weights [N]`` (e.g. a 0/1 padding mask) turn it into a weighted mean.
  """
  if labels.ndim == logits.ndim:
    losses = optax.softmax_cross_entropy(logits, labels)
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return jnp.mean(losses)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def sgd(learning_rate, momentum: float = 0.9, weight_decay: float = 5e-4) -> optax.GradientTransformation:
  """PyTorch-style SGD (weight decay added to the gradient before momentum) whose learning rate lives in the
  optimiser state (``opt_state.hyperparams["learning_rate"]``) so it can be scheduled or learned."""

  def make(learning_rate):
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum if momentum else None))

  return optax.inject_hyperparams(make)(learning_rate=learning_rate)


def reference_schedule(epochs: int):
  """``(epochs_run, decay_epoch)`` of the reference ``evaluate_synset`` (DC/DSA/DM/MTT code) for a nominal
  ``epochs = E``: it loops ``for ep in range(E + 1)`` (so ``E + 1`` epochs run) and, right after training epoch
  ``⌊E/2⌋ + 1``, multiplies the lr by 0.1 and re-creates the SGD optimiser (momentum buffers reset), so epochs
  ``≥ ⌊E/2⌋ + 2`` (0-indexed) train at a tenth of the lr from a zero momentum buffer. For ``E = 300``: 301 epochs,
  lr drops from epoch 152 on."""
  epochs = int(epochs)
  return epochs + 1, epochs // 2 + 2


def step_decay(base_lr, epoch, epochs: int):
  """The evaluation lr of 0-indexed ``epoch`` for nominal ``epochs`` (:func:`reference_schedule`): ``base_lr``
  until epoch ``⌊E/2⌋ + 1``, then ``0.1 · base_lr``."""
  return base_lr * jnp.where(epoch >= reference_schedule(epochs)[1], 0.1, 1.0)


def reset_momentum(tx: optax.GradientTransformation, state: "TrainState") -> "TrainState":
  """``state`` with a freshly initialised optimiser state (momentum buffers zero) for its parameters — the
  reference re-creates its SGD optimiser at the lr decay. The learning rate hyperparameter is kept."""
  fresh = tx.init(state.variables["params"])
  if hasattr(state.opt_state, "hyperparams") and hasattr(fresh, "hyperparams"):
    fresh = fresh._replace(hyperparams=state.opt_state.hyperparams)
  return state._replace(opt_state=fresh)


def init_state(model, key, image_shape, tx: optax.GradientTransformation) -> TrainState:
  """A freshly initialised network and optimiser state."""
  variables = models.init_variables(model, key, image_shape)
  return TrainState(variables, tx.init(variables["params"]), jnp.zeros((), jnp.int32))


class SAM(NamedTuple):
  """Sharpness-aware minimisation settings of a training step (:func:`sam_gradient`).

  Attributes:
    rho: ρ > 0, the radius of the weight perturbation.
    alpha: GSAM's α (Zhuang et al., ICLR 2022): the share of the first gradient's component orthogonal to the
      perturbed gradient that is subtracted (0 = plain SAM).
    adaptive: ASAM's element-wise scaling (Kwon et al., ICML 2021): perturbation ``ρ |θ|² ⊙ g / ‖|θ| ⊙ g‖``.
    eps: added to the norms in the denominators (1e-12 as the GSAM code).

  FTD's expert training (``buffer/buffer_FTD.py`` of AngusDujw/FTD-distillation) uses GSAM with ``alpha=0.4``
  and ``adaptive=True`` (its argparse defaults) and ``rho=0.01`` (``buffer/run_buffer.sh``).
  """
  rho: float
  alpha: float = 0.0
  adaptive: bool = False
  eps: float = 1e-12


def _tree_dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def sam_gradient(loss_fn, params, sam: SAM):
  """The (G/A)SAM update direction of ``loss_fn(params) -> (scalar, aux)`` at ``params`` (a pytree).

  With ``g = ∇L(θ)`` and ``n = ‖g‖`` (``‖|θ| ⊙ g‖`` when adaptive; norms over the whole pytree):

      ε = ρ g / (n + eps)              (adaptive: ε = ρ |θ|² ⊙ g / (n + eps))
      g_p = ∇L(θ + ε)
      v = g − cos(g, g_p) ‖g‖ g_p / (‖g_p‖ + eps),   cos = ⟨g, g_p⟩ / (‖g‖ ‖g_p‖ + eps)
      d = g_p − α v

  (plain SAM: ``α = 0``, ``d = g_p``). ``ε`` is a constant of the second gradient (no gradient through it).

  Returns:
    ``((L(θ), aux at θ), d)``: the value and auxiliary outputs of the first, unperturbed pass.
  """
  (value, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
  tmap = jax.tree_util.tree_map
  scaled = tmap(lambda gi, p: jnp.abs(p) * gi, g, params) if sam.adaptive else g
  norm = jnp.sqrt(_tree_dot(scaled, scaled))
  scale = sam.rho / (norm + sam.eps)
  eps_w = tmap(lambda gi, p: scale * gi * (jnp.square(p) if sam.adaptive else 1.0), g, params)
  eps_w = jax.lax.stop_gradient(eps_w)
  g_p = jax.grad(lambda p: loss_fn(p)[0])(tmap(jnp.add, params, eps_w))
  if not sam.alpha:
    return (value, aux), g_p
  g_norm = jnp.sqrt(_tree_dot(g, g))
  gp_norm = jnp.sqrt(_tree_dot(g_p, g_p))
  cosine = _tree_dot(g, g_p) / (g_norm * gp_norm + sam.eps)
  coef = cosine * g_norm / (gp_norm + sam.eps)
  return (value, aux), tmap(lambda a, b: b - sam.alpha * (a - coef * b), g, g_p)


def train_step(model, tx, state: TrainState, images, labels, key, weights=None,
               dsa: Optional[DSAParams] = None, op_index=None, learning_rate=None,
               return_logits: bool = False, loss: str = "cross_entropy", sam: Optional[SAM] = None):
  """One SGD step on a batch ``images [B, H, W, C]``, ``labels [B]`` or ``[B, C]``.

  Args:
    key: randomness for per-image DSA parameters.
    weights: optional ``[B]`` loss weights (padding mask).
    dsa: augmentation parameters, or None for no augmentation.
    op_index: the DSA operation (draw it outside ``vmap`` over models so only one branch runs); drawn from
      ``key`` if None.
    learning_rate: if given, overrides the optimiser's learning rate for this step.
    return_logits: also return the logits ``[B, C]`` computed before the update.
    loss: ``"cross_entropy"`` (int or soft labels) or ``"mse"`` (regression targets ``[B, C]``).
    sam: optional :class:`SAM`: the optimiser steps along :func:`sam_gradient` (two forward/backward passes
      on the same augmented batch; ``batch_stats`` and logits from the first) instead of ``∇L(θ)``. None (the
      default): the plain step.

  Returns:
    ``(new_state, loss)``, or ``(new_state, loss, logits)`` with ``return_logits``.
  """
  if dsa is not None:
    k_op, k_aug = jax.random.split(key)
    if op_index is None:
      op_index = jax.random.randint(k_op, (), 0, len(dsa.strategy))
    images = apply_op(op_index, k_aug, images, dsa, per_image=True)

  def loss_fn(params):
    logits, new_vars = models.apply(model, {**state.variables, "params": params}, images, train=True)
    return classification_loss(logits, labels, weights, loss), (new_vars, logits)

  if sam is None:
    (value, (new_vars, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.variables["params"])
  else:
    (value, (new_vars, logits)), grads = sam_gradient(loss_fn, state.variables["params"], sam)
  opt_state = state.opt_state
  if learning_rate is not None:  # a new state, not an in-place edit of the caller's (eager mode would see it)
    opt_state = opt_state._replace(
        hyperparams={**opt_state.hyperparams, "learning_rate": jnp.asarray(learning_rate, jnp.float32)})
  updates, opt_state = tx.update(grads, opt_state, state.variables["params"])
  params = optax.apply_updates(state.variables["params"], updates)
  new_state = TrainState({**new_vars, "params": params}, opt_state, state.step + 1)
  if return_logits:
    return new_state, value, logits
  return new_state, value


class EpochBatches(NamedTuple):
  """One epoch's minibatches over ``n`` examples, the last one kept whole by padding (as PyTorch's DataLoader
  keeps its last partial batch).

  Attributes:
    order: int ``[steps, bs]`` example indices, a random permutation of ``0..n-1`` read row by row; the padded
      tail of the last row holds index 0.
    mask: float ``[steps, bs]``, 1 for real entries and 0 for the padding; None when ``bs`` divides ``n`` (no
      padding, so the step's loss is a plain mean).
  """
  order: jnp.ndarray
  mask: Optional[jnp.ndarray]


def epoch_steps(n: int, batch_size: int):
  """``(steps, bs)`` of an epoch over ``n`` examples in batches of ``batch_size`` (``bs = min(batch_size, n)``,
  ``steps = ⌈n / bs⌉``: the last partial batch is kept)."""
  n, batch_size = int(n), int(batch_size)
  if n < 1 or batch_size < 1:
    raise ValueError(f"an epoch needs n >= 1 examples and batch_size >= 1, got n={n}, batch_size={batch_size}.")
  bs = min(batch_size, n)
  return -(-n // bs), bs


def epoch_batches(key, n: int, batch_size: int) -> EpochBatches:
  """The :class:`EpochBatches` of one epoch: ``permutation(key, n)`` cut into :func:`epoch_steps` rows."""
  steps, bs = epoch_steps(n, batch_size)
  pad = steps * bs - n
  perm = jax.random.permutation(key, n)
  if not pad:
    return EpochBatches(perm.reshape(steps, bs), None)
  order = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(steps, bs)
  mask = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)]).reshape(steps, bs)
  return EpochBatches(order, mask)


def batch_step(model, tx, state: TrainState, images, labels, batches: EpochBatches, s, key, **step_kwargs):
  """:func:`train_step` on minibatch ``s`` of ``batches`` (its padding masked out of the loss).

  ``key`` is the epoch's key, the one :func:`epoch_batches` permuted with: the step draws its augmentation from
  ``fold_in(key, s + 1)``. ``step_kwargs`` go to :func:`train_step` (``dsa``, ``op_index``,
  ``learning_rate``, ``loss``, ``return_logits``, ``sam``). The one minibatch step of every training loop: evaluation,
  expert training, DC's inner network training and the forgetting-score network.
  """
  idx = batches.order[s]
  weights = None if batches.mask is None else batches.mask[s]
  return train_step(model, tx, state, images[idx], labels[idx], jax.random.fold_in(key, s + 1), weights=weights,
                    **step_kwargs)


def train_epoch(model, tx, state: TrainState, images, labels, key, batch_size: int, **step_kwargs):
  """One epoch of :func:`batch_step` over ``images [N, ...]`` / ``labels [N]`` or ``[N, C]`` inside the graph
  (``lax.fori_loop``; differentiable with respect to nothing but traceable, jit/vmap-safe): the permutation is
  ``permutation(key, N)`` and step ``s`` augments with ``fold_in(key, s + 1)``. Returns the new state.

  Host-looped callers (evaluation and expert training dispatch one compiled step at a time, faster on XLA:CPU)
  use :func:`epoch_batches` and :func:`batch_step` directly with the same keys, so either way computes the same
  epoch.
  """
  batches = epoch_batches(key, images.shape[0], batch_size)
  body = lambda s, st: batch_step(model, tx, st, images, labels, batches, s, key, **step_kwargs)[0]
  return jax.lax.fori_loop(0, batches.order.shape[0], body, state)


def predict_batched(model, variables, images, batch_size: int = 1000):
  """Logits for ``images [N, H, W, C]`` in batches of ``batch_size`` (eval mode); ``[N, C]``."""
  n = images.shape[0]
  bs = min(batch_size, n)
  num = -(-n // bs)
  pad = num * bs - n
  padded = jnp.concatenate([images, jnp.zeros((pad,) + images.shape[1:], images.dtype)]) if pad else images
  batches = padded.reshape((num, bs) + images.shape[1:])
  logits = jax.lax.map(lambda xb: models.apply(model, variables, xb, train=False)[0], batches)
  return logits.reshape((num * bs,) + logits.shape[2:])[:n]


def accuracy(model, variables, images, labels, batch_size: int = 1000):
  """Top-1 accuracy (float scalar in [0, 1]) of the network on ``images [N, ...]``, int ``labels [N]``."""
  logits = predict_batched(model, variables, images, batch_size)
  return jnp.mean(jnp.argmax(logits, -1) == labels)
