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


def train_step(model, tx, state: TrainState, images, labels, key, weights=None,
               dsa: Optional[DSAParams] = None, op_index=None, learning_rate=None,
               return_logits: bool = False, loss: str = "cross_entropy"):
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

  (value, (new_vars, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.variables["params"])
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
