"""Types shared by every parameterisation of a synthetic set."""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

import jax


class SyntheticBatch(NamedTuple):
  """What objectives and evaluation see.

  Attributes:
    images: ``[N, H, W, C]`` float32 in normalised space, class-major (``N = C_cls · ipc``; image ``i`` belongs
      to class ``i // ipc`` for hard labels).
    labels: int32 ``[N]`` or soft float32 ``[N, C_cls]``.
    lr: optional learned learning rate (scalar) or None.
  """
  images: Any
  labels: Any
  lr: Optional[Any] = None


class SynState(NamedTuple):
  """A synthetic set's state: ``params`` (dict of learnable arrays, what the image optimiser updates) and
  ``const`` (dict of fixed arrays, e.g. hard labels). Both are pytrees; the whole state is checkpointed."""
  params: Dict[str, Any]
  const: Dict[str, Any]


class Parameterisation(NamedTuple):
  """A parameterisation: ``render(state) -> SyntheticBatch`` (pure, differentiable in ``state.params``) and
  ``storage(state) -> int`` (number of stored floats, for budget comparisons).

  ``needs_key``: the render is stochastic during training (GenDM draws fresh latents every step); the loop then
  calls ``render(state, key)`` with a per-iteration key, and ``render(state)`` (no key) gives the fixed sample
  used for evaluation and saving.

  ``project``: optional ``params -> params`` applied by the loop after every optimiser update (a projection
  onto the feasible set, e.g. LD's soft labels back onto the probability simplex); None: unconstrained."""
  name: str
  render: Callable[..., SyntheticBatch]
  storage: Callable[[SynState], int]
  needs_key: bool = False
  project: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None


def num_floats(tree) -> int:
  """Number of scalars in a pytree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
