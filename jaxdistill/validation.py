"""Argument checks shared by every config's ``validate()``: one vocabulary, one message per kind of mistake.

Each helper is a pure function that returns ``None`` or raises ``ValueError`` naming the argument, what it
accepts and the value it got, e.g. ``width must be an integer >= 1, got 0.`` or
``arch must be one of ['convnet', ...], got 'resnet50'.``. The network vocabulary (``arch``, ``width``,
``depth``, ``norm``: :func:`check_network`) and the augmentation vocabulary (:func:`check_dsa_strategy`) are
checked here once for every config that declares them.

Conventions: an *integer* is a Python ``int`` or a NumPy integer, never a ``bool``; a *number* is a real Python
or NumPy scalar (or a 0-d array), never a ``bool`` or a string. ``names`` arguments take a field name or a
sequence of them, read from a config (attributes) or a mapping (keys).
"""
from __future__ import annotations

import numbers
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

Names = Union[str, Sequence[str]]


def _names(names: Names) -> tuple:
  return (names,) if isinstance(names, str) else tuple(names)


def _get(config_or_mapping, name: str):
  if isinstance(config_or_mapping, Mapping):
    return config_or_mapping[name]
  return getattr(config_or_mapping, name)


def _note(note: Optional[str]) -> str:
  return f" ({note})" if note else ""


def is_int(value) -> bool:
  """Whether ``value`` is an integer: a Python ``int`` or a NumPy integer, not a ``bool``."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
  """Whether ``value`` is a real number: an ``int``/``float``/NumPy scalar or a 0-d real array, not a ``bool``
  or a string."""
  if isinstance(value, (bool, np.bool_, str, bytes)):
    return False
  if isinstance(value, numbers.Real):
    return True
  try:
    return np.ndim(value) == 0 and np.asarray(value).dtype.kind in "iuf"
  except Exception:  # noqa: BLE001 — anything that is not array-like is not a number.
    return False


def check_choice(name: str, value, accepted: Sequence[str]) -> None:
  """Raises ``ValueError`` unless ``value`` is one of ``accepted``, naming the argument and the accepted values.

  >>> check_choice("norm", "instance", ("instancenorm", "none"))
  Traceback (most recent call last):
  ValueError: norm must be one of ['instancenorm', 'none'], got 'instance'.
  """
  if value not in accepted:
    raise ValueError(f"{name} must be one of {list(accepted)}, got {value!r}.")


def check_ints(config_or_mapping, names: Names, minimum: int = 1, optional: bool = False,
               note: Optional[str] = None) -> None:
  """Raises ``ValueError`` unless each field ``names`` of ``config_or_mapping`` is an integer >= ``minimum``
  (``optional``: or None).

  The message is ``"width must be an integer >= 1, got 0."`` (``optional``: ``"depth must be None or an
  integer >= 1, got 0."``); ``note`` is added in parentheses after the condition (e.g. ``"0 = off"``).
  """
  for name in _names(names):
    v = _get(config_or_mapping, name)
    if optional and v is None:
      continue
    if not is_int(v) or v < minimum:
      what = f"None or an integer >= {minimum}" if optional else f"an integer >= {minimum}"
      raise ValueError(f"{name} must be {what}{_note(note)}, got {v!r}.")


def _check_numbers(config, names: Names, ok, condition: str, optional: bool, note: Optional[str]) -> None:
  for name in _names(names):
    v = _get(config, name)
    if optional and v is None:
      continue
    if not (is_number(v) and ok(v)):
      what = f"None or a number {condition}" if optional else f"a number {condition}"
      raise ValueError(f"{name} must be {what}{_note(note)}, got {v!r}.")


def check_positive(config, names: Names, optional: bool = False, note: Optional[str] = None) -> None:
  """Raises ``ValueError`` unless each field ``names`` of ``config`` (object or mapping) is a number > 0
  (``optional``: or None); NaN is refused. Message: ``"lr must be a number > 0, got 0.0."``."""
  _check_numbers(config, names, lambda v: v > 0, "> 0", optional, note)


def check_nonnegative(config, names: Names, optional: bool = False, note: Optional[str] = None) -> None:
  """Raises ``ValueError`` unless each field ``names`` of ``config`` (object or mapping) is a number >= 0
  (``optional``: or None); NaN is refused. Message: ``"b_std must be a number >= 0, got -1.0."``."""
  _check_numbers(config, names, lambda v: v >= 0, ">= 0", optional, note)


def check_bools(config, names: Names) -> None:
  """Raises ``ValueError`` unless each field ``names`` of ``config`` (object or mapping) is ``True`` or
  ``False`` (a Python or NumPy bool; ``0``/``1`` are refused). Message: ``"checkpoint must be True or False,
  got 1."``."""
  for name in _names(names):
    v = _get(config, name)
    if not isinstance(v, (bool, np.bool_)):
      raise ValueError(f"{name} must be True or False, got {v!r}.")


def check_in_range(name: str, value, lo: float, hi: float, *, lo_closed: bool = True, hi_closed: bool = True,
                   note: Optional[str] = None) -> None:
  """Raises ``ValueError`` unless ``value`` is a number in the interval from ``lo`` to ``hi`` (each end closed
  or open). Message: ``"momentum must be a number in [0, 1), got 1.5."``."""
  ok = is_number(value) and ((lo <= value) if lo_closed else (lo < value)) and (
      (value <= hi) if hi_closed else (value < hi))
  if not ok:
    interval = f"{'[' if lo_closed else '('}{lo}, {hi}{']' if hi_closed else ')'}"
    raise ValueError(f"{name} must be a number in {interval}{_note(note)}, got {value!r}.")


def check_network(arch: Optional[str], width, depth=None, norm: Optional[str] = None, *,
                  archs: Optional[Sequence[str]] = None, norms: Optional[Sequence[str]] = None,
                  prefix: str = "") -> None:
  """Checks the network vocabulary every config shares: ``arch`` one of ``archs`` (default
  :data:`jaxdistill.models.ARCHITECTURES`; None: a config whose architecture is fixed, not checked), ``width``
  an integer >= 1, ``depth`` None (the default for the image size) or an integer >= 1, ``norm`` None (not set)
  or one of ``norms`` (default :data:`jaxdistill.models.layers.NORMS`).

  ``prefix`` is put before each argument's name in the messages (``prefix="eval_"``: ``eval_width must be ...``).

  Raises:
    ValueError: the first bad argument, named, with the accepted values.
  """
  if arch is not None or archs is not None:
    if archs is None:
      from jaxdistill import models  # lazy: jaxdistill.models.layers imports this module.
      archs = models.ARCHITECTURES
    check_choice(f"{prefix}arch", arch, archs)
  values = {f"{prefix}width": width, f"{prefix}depth": depth}
  check_ints(values, f"{prefix}width")
  check_ints(values, f"{prefix}depth", optional=True)
  if norm is not None:
    if norms is None:
      from jaxdistill.models.layers import NORMS
      norms = NORMS
    check_choice(f"{prefix}norm", norm, norms)


def check_dsa_strategy(strategy: Iterable[str], name: str = "dsa_strategy") -> None:
  """Raises ``ValueError`` unless every entry of ``strategy`` is a DSA operation
  (:data:`jaxdistill.augment.OPS`). Message: ``"dsa_strategy entries must be in ['color', ...], got 'blur'."``."""
  from jaxdistill.augment import OPS  # lazy, as check_network.

  for op in strategy:
    if op not in OPS:
      raise ValueError(f"{name} entries must be in {list(OPS)}, got {op!r}.")


__all__ = ["check_bools", "check_choice", "check_dsa_strategy", "check_in_range", "check_ints",
           "check_network", "check_nonnegative", "check_positive", "is_int", "is_number"]
