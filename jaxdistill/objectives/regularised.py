"""An objective plus a regulariser of the synthetic set that has its own trained state.

A :class:`Regulariser` is a small ``(init, loss, update)`` triple over its own pytree state, e.g. HaBa's
adversarial contrastive term (:func:`jaxdistill.synthetic.haba.contrastive_regulariser`: a feature extractor
trained to tell hallucinators apart, whose similarity the synthetic set is pushed to lower):

* ``init(key) -> reg_state``;
* ``loss(reg_state, syn, key) -> (scalar, aux dict)`` — added to the objective's loss, differentiable w.r.t.
  ``syn.images`` (the regulariser's own parameters held fixed);
* ``update(reg_state, syn, key) -> reg_state`` — run after each image update, like an objective's ``update``.

:func:`with_regulariser` wraps any :class:`~jaxdistill.objectives.base.Objective` so the distillation loop
runs both: state ``{"objective": inner_state, "regulariser": reg_state}``, loss ``inner + reg`` (the
regulariser's aux under ``"<name>/<key>"``), update ``inner update`` then ``reg.update``. The inner objective
gets ``fold_in(key, 0)`` and the regulariser ``fold_in(key, 1)`` of every key the loop passes.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax

from jaxdistill.objectives.base import Objective

INNER, REGULARISER = "objective", "regulariser"


class Regulariser(NamedTuple):
  """A regulariser of the synthetic set with its own state (module docstring).

  Attributes:
    init: ``key -> state``.
    loss: ``(state, syn: SyntheticBatch, key) -> (scalar, aux dict)``.
    update: ``(state, syn: SyntheticBatch, key) -> state``.
    name: prefix of its aux entries in the wrapped objective's aux.
  """
  init: Callable
  loss: Callable
  update: Callable
  name: str = "reg"


def _keys(key):
  """``(inner key, regulariser key)``: distinct keys for the two parts."""
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def merge_aux(inner_aux, reg_aux, prefix: str) -> dict:
  """The wrapped aux: ``inner_aux`` (a mapping, kept as is; anything else under ``"objective"``) plus
  ``reg_aux`` entries renamed ``"<prefix>/<key>"``."""
  if isinstance(inner_aux, Mapping):
    out = dict(inner_aux)
  else:
    out = {} if inner_aux is None else {INNER: inner_aux}
  out.update({f"{prefix}/{k}": v for k, v in dict(reg_aux or {}).items()})
  return out


def with_regulariser(objective: Objective, reg: Regulariser) -> Objective:
  """``objective`` with ``reg`` added (module docstring).

  The wrapped objective keeps the inner one's ``name``, ``config`` and ``data`` (passed on to the inner
  ``loss``/``update``/``host_update`` exactly as before; the regulariser does not see it). With an inner
  ``host_update`` the wrapped ``host_update`` runs it and then a jitted ``reg.update``; ``update`` is always
  set (the in-step version: inner ``update``, if any, then ``reg.update``).

  Returns:
    An :class:`Objective` whose state is ``{"objective": inner_state, "regulariser": reg_state}``.

  Raises:
    ValueError: ``objective`` is not an Objective or ``reg`` not a Regulariser.
  """
  if not isinstance(objective, Objective):
    raise ValueError(f"objective must be a jaxdistill.objectives.Objective, got {type(objective).__name__}.")
  if not isinstance(reg, Regulariser):
    raise ValueError(f"reg must be a Regulariser, got {type(reg).__name__}.")

  def init(key):
    k_in, k_reg = _keys(key)
    return {INNER: objective.init(k_in), REGULARISER: reg.init(k_reg)}

  def loss(state, syn, real, key, *data):
    k_in, k_reg = _keys(key)
    inner_loss, inner_aux = objective.loss(state[INNER], syn, real, k_in, *data)
    reg_loss, reg_aux = reg.loss(state[REGULARISER], syn, k_reg)
    return inner_loss + reg_loss, merge_aux(inner_aux, reg_aux, reg.name)

  def update(state, syn, key, *data):
    k_in, k_reg = _keys(key)
    inner = state[INNER]
    if objective.update is not None:
      inner = objective.update(inner, syn, k_in, *data)
    return {INNER: inner, REGULARISER: reg.update(state[REGULARISER], syn, k_reg)}

  host_update = None
  if objective.host_update is not None:
    reg_update = jax.jit(reg.update)

    def host_update(state, syn, key, *data):
      k_in, k_reg = _keys(key)
      inner = objective.host_update(state[INNER], syn, k_in, *data)
      return {INNER: inner, REGULARISER: reg_update(state[REGULARISER], syn, k_reg)}

  return Objective(objective.name, init, loss, update, objective.config, objective.data, host_update)
