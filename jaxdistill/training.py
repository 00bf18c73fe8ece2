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


def step_decay(base_lr, epoch, epochs: int):
  """The evaluation schedule: ``base_lr`` until epoch ``⌊E/2⌋``, then ``0.1 · base_lr`` (0-indexed epochs)."""
  return base_lr * jnp.where(epoch >= epochs // 2 + 1, 0.1, 1.0)


def init_state(model, key, image_shape, tx: optax.GradientTransformation) -> TrainState:
  """A freshly initialised network and optimiser state."""
  variables = models.init_variables(model, key, image_shape)
  return TrainState(variables, tx.init(variables["params"]), jnp.zeros((), jnp.int32))


def train_step(model, tx, state: TrainState, images, labels, key, weights=None,
               dsa: Optional[DSAParams] = None, op_index=None, learning_rate=None,
               return_logits: bool = False):
  """One SGD step on a batch ``images [B, H, W, C]``, ``labels [B]`` or ``[B, C]``.

  Args:
    key: randomness for per-image DSA parameters.
    weights: optional ``[B]`` loss weights (padding mask).
    dsa: augmentation parameters, or None for no augmentation.
    op_index: the DSA operation (draw it outside ``vmap`` over models so only one branch runs); drawn from
      ``key`` if None.
    learning_rate: if given, overrides the optimiser's learning rate for this step.
    return_logits: also return the logits ``[B, C]`` computed before the update.

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
    return cross_entropy(logits, labels, weights), (new_vars, logits)

  (loss, (new_vars, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.variables["params"])
  opt_state = state.opt_state
  if learning_rate is not None:  # a new state, not an in-place edit of the caller's (eager mode would see it)
    opt_state = opt_state._replace(
        hyperparams={**opt_state.hyperparams, "learning_rate": jnp.asarray(learning_rate, jnp.float32)})
  updates, opt_state = tx.update(grads, opt_state, state.variables["params"])
  params = optax.apply_updates(state.variables["params"], updates)
  new_state = TrainState({**new_vars, "params": params}, opt_state, state.step + 1)
  if return_logits:
    return new_state, loss, logits
  return new_state, loss


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
