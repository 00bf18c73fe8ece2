"""Parameterisations of a synthetic set: how it is stored and learned (see ARCHITECTURE.md).

A parameterisation is a small set of pure functions over a :class:`SynState` pytree:
``init(key, ...) -> SynState``, ``render(state) -> SyntheticBatch`` and ``storage(state) -> floats``.
The distillation loop differentiates ``render`` only through ``state.params`` (the learnable leaves);
``state.const`` holds what is fixed (e.g. hard labels).
"""
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch
from jaxdistill.synthetic.pixels import INITS, PIXELS, init_pixels, render_pixels, storage_pixels

PARAMETERISATIONS = {"pixels": PIXELS}


def get_parameterisation(name: str) -> Parameterisation:
  """The parameterisation registered as ``name``; ``ValueError`` naming the accepted values otherwise."""
  if name not in PARAMETERISATIONS:
    raise ValueError(f"parameterisation must be one of {sorted(PARAMETERISATIONS)}, got {name!r}.")
  return PARAMETERISATIONS[name]


__all__ = ["INITS", "PARAMETERISATIONS", "PIXELS", "Parameterisation", "SynState", "SyntheticBatch",
           "get_parameterisation", "init_pixels", "render_pixels", "storage_pixels"]
