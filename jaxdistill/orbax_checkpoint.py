"""Loop checkpoints through orbax-checkpoint: multi-host-safe saving of the same content as the ``.npz`` checkpoint.

:func:`jaxdistill.loop.save_checkpoint` writes a single ``.npz`` from process 0 (portable, the default). A
checkpoint path that does not end in ``.npz`` is an orbax directory instead, written by
``orbax.checkpoint.StandardCheckpointer`` — every process of a ``jax.distributed`` job takes part in the save, as
orbax requires, and orbax commits a save by renaming its temporary folder, so a crash never leaves a half-written
checkpoint. Layout::

    DIR/step_00000100/   one orbax checkpoint per save: {"arrays": {name: array}, "metadata": uint8 JSON bytes}
    DIR/step_00000200/   a new save goes to a new folder; older ones are deleted once it is committed

The arrays and metadata are exactly those of the ``.npz`` checkpoint, so :func:`jaxdistill.loop.load_checkpoint`
checks both formats the same way. The synthetic set itself is always saved as ``synthetic.npz`` (portable).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Dict, Mapping, Tuple

import numpy as np

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def is_orbax_path(path: str) -> bool:
  """True for a checkpoint path that names an orbax directory (anything not ending in ``.npz``)."""
  return not str(path).endswith(".npz")


def _ocp():
  try:
    import orbax.checkpoint as ocp
  except ImportError as e:  # pragma: no cover - orbax is in the pinned set
    raise ValueError("an orbax checkpoint directory needs orbax-checkpoint (pip install orbax-checkpoint); "
                     "or give a checkpoint path ending in .npz.") from e
  return ocp


def _is_primary() -> bool:
  import jax
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def _steps(directory: str):
  if not os.path.isdir(directory):
    return []
  return sorted(int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(directory)) if m)


def save(directory: str, arrays: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
  """Saves ``arrays`` (name -> array) and JSON ``metadata`` (must hold an int ``step``) as
  ``directory/step_NNNNNNNN`` and removes the older saves once it is committed. Returns ``directory``."""
  ocp = _ocp()
  step = int(metadata["step"])
  target = os.path.join(os.path.abspath(directory), f"step_{step:08d}")
  tree = {"arrays": {k: np.asarray(v) for k, v in arrays.items()},
          "metadata": np.frombuffer(json.dumps(dict(metadata), sort_keys=True).encode(), np.uint8).copy()}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, tree, force=True)
  checkpointer.wait_until_finished()
  if _is_primary():
    for old in _steps(directory):
      if old != step:
        shutil.rmtree(os.path.join(directory, f"step_{old:08d}"), ignore_errors=True)
  return directory


def load(directory: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """``(arrays, metadata)`` of the newest committed save in ``directory``.

  Raises:
    ValueError: ``directory`` holds no committed save (missing, empty or not a jaxdistill orbax checkpoint).
  """
  steps = _steps(directory)
  if not steps:
    raise ValueError(f"{directory!r} holds no orbax checkpoint (no step_NNNNNNNN folder); delete it to start "
                     "afresh.")
  target = os.path.join(os.path.abspath(directory), f"step_{steps[-1]:08d}")
  try:
    tree = _ocp().StandardCheckpointer().restore(target)
  except Exception as e:  # orbax raises several kinds for a damaged folder
    raise ValueError(f"checkpoint {target!r} could not be read ({type(e).__name__}: {e}).") from e
  try:
    meta = json.loads(np.asarray(tree["metadata"], np.uint8).tobytes().decode())
    arrays = {k: np.asarray(v) for k, v in tree["arrays"].items()}
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{target!r} is not a jaxdistill checkpoint ({e}).") from e
  return arrays, meta
