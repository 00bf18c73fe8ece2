"""The differentiable inner-SGD unroll shared by back-propagation through time (DD, LD, GTN-style objectives,
:mod:`jaxdistill.objectives.bptt`) and the trajectory-matching student (MTT, FTD,
:mod:`jaxdistill.objectives.trajectory_matching`).

Two pieces:

* :func:`sgd_step` — one step ``θ ← θ − α (β v + ∇θ ℓ(θ; x, y) + λ θ)`` (PyTorch-style momentum and weight decay;
  plain SGD for ``β = λ = 0``), differentiable in ``θ``, the batch and ``α``.
* :func:`scan_steps` — ``carry, y_t = step(carry, x_t)`` over the leading axis of ``xs`` in one ``lax.scan``,
  with the memory/speed choices every unroll needs: ``checkpoint="step"`` (``jax.checkpoint`` on each step: the
  backward pass keeps the carry of every step and recomputes activations), ``checkpoint="segments"`` (steps grouped
  in :func:`segment_length` ``k ≈ √T`` segments, each segment and each step checkpointed: memory ``O(T/k + k)``
  carries), ``scan_unroll`` (steps per iteration of the compiled loop; ``T`` gives straight-line code, which
  XLA:CPU runs several times faster for convolutions at a longer compile) and ``first_order`` (the gradient through
  the carry's input to each step stopped, keeping the direct ``θ_{t+1} = θ_t + Δ_t`` path: what TESLA's two-pass
  gradient computes).

Every option changes memory or speed only, never values or gradients (``first_order`` excepted, by design).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxdistill.validation import check_choice, check_ints

CHECKPOINTS = ("none", "step", "segments")


class InnerState(NamedTuple):
  """The carry of an SGD unroll: ``params`` (the trained pytree), ``velocity`` (momentum buffer, None for plain
  SGD) and ``extra`` (other model collections, e.g. batch-norm statistics; may be an empty dict)."""
  params: Any
  velocity: Any
  extra: Any


def init_state(params, momentum: float = 0.0, extra=None) -> InnerState:
  """The :class:`InnerState` at ``params`` (zero velocity when ``momentum`` is on)."""
  velocity = jax.tree_util.tree_map(jnp.zeros_like, params) if momentum else None
  return InnerState(params, velocity, {} if extra is None else extra)


def sgd_step(loss_fn: Callable, state: InnerState, x, y, lr, momentum: float = 0.0,
             weight_decay: float = 0.0):
  """One inner step ``θ ← θ − α (β v + ∇θ ℓ(θ; x, y) + λ θ)`` (PyTorch-style momentum, DD Eq. 6 for β = 0).

  Args:
    loss_fn: ``loss_fn(params, extra, x, y) -> (loss, new_extra)``.
    state: the current :class:`InnerState` (``velocity`` None when ``momentum == 0``).
    lr: scalar step size ``α`` (traced: differentiable).

  Returns:
    ``(new_state, loss)`` with the loss before the update.
  """
  (loss, extra), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.extra, x, y)
  if weight_decay:
    g = jax.tree_util.tree_map(lambda gi, p: gi + weight_decay * p, g, state.params)
  velocity = None
  if momentum:
    velocity = jax.tree_util.tree_map(lambda v, gi: momentum * v + gi, state.velocity, g)
    g = velocity
  params = jax.tree_util.tree_map(lambda p, gi: p - lr * gi, state.params, g)
  return InnerState(params, velocity, extra), loss


def segment_length(n: int) -> int:
  """Checkpoint segment length for ``n`` steps: the largest divisor of ``n`` not above ``√n``."""
  limit = max(1, int(math.isqrt(int(n))))
  return max(d for d in range(1, limit + 1) if n % d == 0)


def _length(xs) -> int:
  leaves = jax.tree_util.tree_leaves(xs)
  if not leaves:
    raise ValueError("scan_steps needs xs with a leading step axis (e.g. jnp.arange(num_steps)).")
  return int(leaves[0].shape[0])


def scan_steps(step: Callable, carry, xs, *, checkpoint: str = "none", scan_unroll: int = 1,
               first_order: bool = False):
  """``carry_T, ys = scan(step, carry, xs)`` with the unroll's memory and speed options (module docstring).

  Args:
    step: ``step(carry, x_t) -> (carry, y_t)``; ``y_t`` may be None.
    carry: the initial carry (any pytree; with ``first_order`` its leaves must be floating point).
    xs: per-step inputs, a pytree of arrays with leading axis ``T`` (the number of steps).
    checkpoint: one of :data:`CHECKPOINTS`.
    scan_unroll: steps per iteration of each compiled loop (clipped to the loop's length; ``T`` or more:
      straight-line code).
    first_order: stop the gradient through each step's input carry, keeping ``carry + (step(carry) − carry)``.

  Returns:
    ``(carry_T, ys)`` with ``ys`` stacked over the ``T`` steps.
  """
  check_choice("checkpoint", checkpoint, CHECKPOINTS)
  check_ints({"scan_unroll": scan_unroll}, "scan_unroll")
  length = _length(xs)
  body = step
  if first_order:
    def body(c, x):
      fixed = jax.lax.stop_gradient(c)
      new, y = step(fixed, x)
      return jax.tree_util.tree_map(lambda ci, ni, fi: ci + (ni - fi), c, new, fixed), y

  unroll = lambda n: max(1, min(int(scan_unroll), int(n)))
  if checkpoint == "none":
    return jax.lax.scan(body, carry, xs, unroll=unroll(length))
  inner = jax.checkpoint(body, prevent_cse=False)
  if checkpoint == "step":
    return jax.lax.scan(inner, carry, xs, unroll=unroll(length))
  k = segment_length(length)
  segments = jax.tree_util.tree_map(lambda a: a.reshape((length // k, k) + a.shape[1:]), xs)

  def segment(c, seg_xs):
    return jax.lax.scan(inner, c, seg_xs, unroll=unroll(k))

  carry, ys = jax.lax.scan(jax.checkpoint(segment, prevent_cse=False), carry, segments,
                           unroll=unroll(length // k))
  return carry, jax.tree_util.tree_map(lambda a: a.reshape((length,) + a.shape[2:]), ys)
