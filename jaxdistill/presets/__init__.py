"""Named hyperparameter presets (``paper``, ``cpu``) per method, stored as reviewed data with a source per value.

One JSON file per method family in this folder (``dc.json``, ``mtt.json``, ...; format in ``docs/presets.md``)::

    {"methods": ["mtt", "tesla", "mtt_l1"],
     "note": "what stands in for what (e.g. CIFAR-10 settings for Fashion-MNIST), what is not supported",
     "presets": {"paper": [{"dataset": "*", "ipc": "*",  "options": {"iterations": {"value": 5000,
                                                                                    "source": "..."}}},
                           {"dataset": "*", "ipc": 1, "options": {...}}, ...],
                 "cpu": [...]}}

An entry selects by ``dataset`` (a name, a list of names or ``"*"``), ``ipc`` (an integer, a range ``"lo-hi"``
/ ``"lo-"`` or ``"*"``), optionally ``objective`` (only for the parameterisation methods glad / gendm / latentdd /
haba, which run any objective) and ``methods`` (a subset of the file's methods). :func:`resolve` merges the
matching entries from the least to the most specific — the dataset counts most, then the IPC (exact > range >
``"*"``), then the objective, then the method — so the most specific entry wins per option.

Option keys (checked by :func:`validate`): fields of the method's objective config
(:func:`jaxdistill.objectives.default_config`), fields of :class:`jaxdistill.loop.LoopConfig`, ``init``, the
evaluation keys :data:`EVAL_KEYS` and, for parameterisation methods, the CLI flags of
:data:`PARAMETERISATION_OPTIONS`. Units: for DC / DSA (gradient matching) ``iterations`` counts outer iterations
(each a fresh network and ``outer_loop`` image updates), as in the papers; for every other method, image updates.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

PRESET_DIR = os.path.dirname(os.path.abspath(__file__))

# Evaluation keys a preset may set, with their type (the CLI fills them into args where no flag was given).
EVAL_KEYS: Dict[str, type] = {"eval_epochs": int, "eval_dsa": bool, "eval_models": int, "eval_learned_lr": bool,
                              "eval_protocol": str}
# CLI flag destinations of the parameterisation methods (experiments/generative.py) a preset may set. All of them
# default to None on the command line, so the CLI can tell "not given" from an explicit flag.
PARAMETERISATION_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "glad": ("lr_features", "lr_codes", "gen_widths", "gen_z_dim", "gen_w_dim", "gen_mapping_layers", "glad_layer",
             "glad_chunk"),
    "latentdd": ("lr_features", "lr_codes"),
    "gendm": ("gen_widths", "gen_z_dim", "gen_w_dim", "gen_embed_dim", "gen_train_per_class",
              "gen_samples_per_class"),
    "haba": ("haba_bases", "lr_hallucinators"),
    "itgan": (),
    "kfs": ("kfs_codes", "lr_decoders"),
}
_ENTRY_KEYS = {"dataset", "ipc", "objective", "methods", "options"}
_RANGE = re.compile(r"^(\d+)-(\d*)$")


class Preset(NamedTuple):
  """A resolved preset: option values and, for each option, where its value comes from."""
  values: Dict[str, Any]
  sources: Dict[str, str]


class _File(NamedTuple):
  name: str
  methods: Tuple[str, ...]
  note: str
  presets: Mapping[str, List[dict]]


def _fail(where: str, message: str):
  raise ValueError(f"preset file {where}: {message}")


def _check_ipc(ipc, where: str) -> None:
  if ipc == "*" or (isinstance(ipc, int) and not isinstance(ipc, bool) and ipc >= 1):
    return
  if isinstance(ipc, str):
    m = _RANGE.match(ipc)
    if m and int(m.group(1)) >= 1 and (not m.group(2) or int(m.group(2)) >= int(m.group(1))):
      return
  _fail(where, f"ipc must be an integer >= 1, a range 'lo-hi' / 'lo-' or '*', got {ipc!r}.")


def _check_entry(entry, methods, where: str, parameterisation: bool) -> None:
  """Structure of one entry (selectors and ``{"value", "source"}`` options; keys are checked by
  :func:`validate`)."""
  if not isinstance(entry, dict) or "options" not in entry:
    _fail(where, "each entry must be an object with 'options' (and 'dataset', 'ipc', ...).")
  extra = sorted(set(entry) - _ENTRY_KEYS)
  if extra:
    _fail(where, f"unknown entry field(s) {extra}; accepted: {sorted(_ENTRY_KEYS)}.")
  dataset = entry.get("dataset", "*")
  names = dataset if isinstance(dataset, list) else [dataset]
  if not names or not all(isinstance(n, str) and n for n in names):
    _fail(where, f"dataset must be a name, a list of names or '*', got {dataset!r}.")
  _check_ipc(entry.get("ipc", "*"), where)
  if "objective" in entry and not parameterisation:
    _fail(where, "'objective' selects entries only in files of parameterisation methods "
          f"{sorted(PARAMETERISATION_OPTIONS)}.")
  sub = entry.get("methods")
  if sub is not None and (not isinstance(sub, list) or not set(sub) <= set(methods) or not sub):
    _fail(where, f"entry 'methods' must be a non-empty subset of {list(methods)}, got {sub!r}.")
  options = entry["options"]
  if not isinstance(options, dict) or not options:
    _fail(where, "'options' must be a non-empty object.")
  for key, spec in options.items():
    if not isinstance(spec, dict) or set(spec) != {"value", "source"}:
      _fail(where, f"option {key!r} must be {{'value': ..., 'source': '...'}}, got {spec!r}.")
    if not isinstance(spec["source"], str) or not spec["source"].strip():
      _fail(where, f"option {key!r} needs a non-empty source.")


def _read(path: str) -> _File:
  """Reads and structurally checks one preset file."""
  where = os.path.basename(path)
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict) or set(data) - {"methods", "note", "presets"} or "presets" not in data:
    _fail(where, "must be an object with 'methods', 'presets' and an optional 'note'.")
  methods = data.get("methods")
  if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
    _fail(where, f"'methods' must be a non-empty list of method names, got {methods!r}.")
  note = data.get("note", "")
  if isinstance(note, list):
    note = " ".join(note)
  if not isinstance(note, str):
    _fail(where, "'note' must be a string or a list of strings.")
  presets = data["presets"]
  if not isinstance(presets, dict) or not presets:
    _fail(where, "'presets' must map preset names to lists of entries.")
  parameterisation = all(m in PARAMETERISATION_OPTIONS for m in methods)
  for name, entries in presets.items():
    if not isinstance(entries, list) or not entries:
      _fail(where, f"preset {name!r} must be a non-empty list of entries.")
    for i, entry in enumerate(entries):
      _check_entry(entry, methods, f"{where} [{name} #{i}]", parameterisation)
  return _File(where, tuple(methods), note, presets)


@functools.lru_cache(maxsize=None)
def _files() -> Dict[str, _File]:
  """``{method: _File}`` over every ``*.json`` file of :data:`PRESET_DIR` (a method in two files is an error)."""
  out: Dict[str, _File] = {}
  for fname in sorted(os.listdir(PRESET_DIR)):
    if not fname.endswith(".json"):
      continue
    pf = _read(os.path.join(PRESET_DIR, fname))
    for method in pf.methods:
      if method in out:
        _fail(fname, f"method {method!r} is already covered by {out[method].name}.")
      out[method] = pf
  return out


def methods() -> Tuple[str, ...]:
  """The methods that have presets (sorted)."""
  return tuple(sorted(_files()))


def names() -> Tuple[str, ...]:
  """Every preset name used by some method (sorted), e.g. ``("cpu", "paper")``."""
  return tuple(sorted({name for pf in _files().values() for name in pf.presets}))


def _file(method: str) -> _File:
  files = _files()
  if method not in files:
    raise ValueError(f"no presets for method {method!r}; accepted methods: {sorted(files)}.")
  return files[method]


def _applies(entry: dict, method: str) -> bool:
  sub = entry.get("methods")
  return sub is None or method in sub


def available(method: str) -> Tuple[str, ...]:
  """The preset names with at least one entry for ``method`` (sorted), e.g. ``("cpu", "paper")``."""
  pf = _file(method)
  return tuple(sorted(n for n, entries in pf.presets.items() if any(_applies(e, method) for e in entries)))


def note(method: str) -> str:
  """The file note of ``method``: which dataset's settings stand in where the papers give none, and which
  published knobs have no counterpart here."""
  return _file(method).note


def _ipc_level(ipc, value: int) -> Optional[int]:
  """2 for an exact match, 1 for a range containing ``value``, 0 for ``"*"``, None if it does not match."""
  if ipc == "*":
    return 0
  if isinstance(ipc, int):
    return 2 if ipc == value else None
  lo, hi = _RANGE.match(ipc).groups()
  return 1 if int(lo) <= value and (not hi or value <= int(hi)) else None


def _rank(entry: dict, method: str, dataset: str, ipc: int, objective: Optional[str]):
  """The entry's specificity ``(dataset, ipc, objective, method)`` if it matches, else None."""
  ds = entry.get("dataset", "*")
  names = ds if isinstance(ds, list) else [ds]
  if ds != "*" and dataset not in names:
    return None
  level = _ipc_level(entry.get("ipc", "*"), ipc)
  if level is None:
    return None
  obj = entry.get("objective", "*")
  if obj != "*" and obj != objective:
    return None
  if not _applies(entry, method):
    return None
  return (int(ds != "*"), level, int(obj != "*"), int(entry.get("methods") is not None))


def resolve(method: str, name: str, dataset: str, ipc: int, objective: Optional[str] = None) -> Preset:
  """The preset ``name`` of ``method`` for ``dataset`` at ``ipc`` images per class.

  Args:
    method: a method with presets (:func:`methods`).
    name: a preset of it (:func:`available`), e.g. ``"paper"`` or ``"cpu"``.
    dataset: the dataset name (e.g. ``"fashion_mnist"``).
    ipc: images per class (>= 1).
    objective: for the parameterisation methods (glad, gendm, latentdd, haba), the objective they run.

  Returns:
    :class:`Preset` ``(values, sources)``, merged from the matching entries, most specific last.

  Raises:
    ValueError: unknown method or preset, a bad ``ipc``, no entry matching, or two equally specific entries
      giving one option different values.
  """
  pf = _file(method)
  if name not in available(method):
    raise ValueError(f"unknown preset {name!r} for method {method!r}; accepted: {list(available(method))}.")
  if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
    raise ValueError(f"ipc must be an integer >= 1, got {ipc!r}.")
  matches = []
  for i, entry in enumerate(pf.presets[name]):
    rank = _rank(entry, method, dataset, ipc, objective)
    if rank is not None:
      matches.append((rank, i, entry))
  if not matches:
    objs = sorted({e.get("objective", "*") for e in pf.presets[name]})
    extra = f" (objective {objective!r}; entries cover objectives {objs})" if objective is not None else ""
    raise ValueError(f"preset {name!r} of {method!r} has no entry for dataset {dataset!r}, ipc {ipc}{extra}.")
  values: Dict[str, Any] = {}
  sources: Dict[str, str] = {}
  ranks: Dict[str, tuple] = {}
  for rank, _, entry in sorted(matches, key=lambda m: (m[0], m[1])):
    for key, spec in entry["options"].items():
      if ranks.get(key) == rank and values[key] != spec["value"]:
        raise ValueError(f"preset {name!r} of {method!r} ({pf.name}): two equally specific entries give "
                         f"{key!r} different values ({values[key]!r}, {spec['value']!r}) for dataset "
                         f"{dataset!r}, ipc {ipc}.")
      values[key], sources[key], ranks[key] = spec["value"], spec["source"], rank
  return Preset(values, sources)


def accepted_keys(method: str, objective: Optional[str] = None) -> frozenset:
  """Option keys a preset entry of ``method`` may set (``objective``: the entry's objective for the
  parameterisation methods; None there = objective-independent keys only)."""
  from jaxdistill import loop, objectives

  keys = {f.name for f in dataclasses.fields(loop.LoopConfig)} | {"init"} | set(EVAL_KEYS)
  if method in PARAMETERISATION_OPTIONS:
    keys |= set(PARAMETERISATION_OPTIONS[method])
    config_method = objective
  else:
    config_method = method
  if config_method is not None:
    keys |= {f.name for f in dataclasses.fields(objectives.default_config(config_method))}
  return frozenset(keys)


def _check_value(key: str, value, where: str) -> None:
  kind = EVAL_KEYS.get(key)
  if kind is bool and not isinstance(value, bool):
    _fail(where, f"{key} must be true or false, got {value!r}.")
  if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
    _fail(where, f"{key} must be an integer >= 1, got {value!r}.")
  if kind is str:
    from jaxdistill.evaluate import PROTOCOLS
    if value not in PROTOCOLS:
      _fail(where, f"{key} must be one of {sorted(PROTOCOLS)}, got {value!r}.")


def validate(method: Optional[str] = None) -> None:
  """Checks every entry of ``method``'s file (None: every file): option keys accepted for the method (and the
  entry's objective), known dataset names, evaluation value types. Raises ValueError naming the file."""
  from jaxdistill import objectives
  from jaxdistill.data.specs import DATASETS

  files = _files()
  todo = [method] if method is not None else sorted(files)
  for m in todo:
    pf = _file(m)
    for name, entries in pf.presets.items():
      for i, entry in enumerate(entries):
        if not _applies(entry, m):
          continue
        where = f"{pf.name} [{name} #{i}]"
        ds = entry.get("dataset", "*")
        for d in ds if isinstance(ds, list) else [ds]:
          if d != "*" and d not in DATASETS:
            _fail(where, f"unknown dataset {d!r}; accepted: {sorted(DATASETS)} or '*'.")
        obj = entry.get("objective")
        if obj is not None and obj not in objectives.REGISTRY:
          _fail(where, f"unknown objective {obj!r}; accepted: {sorted(objectives.REGISTRY)}.")
        accepted = accepted_keys(m, obj)
        unknown = sorted(set(entry["options"]) - accepted)
        if unknown:
          _fail(where, f"option(s) {unknown} not accepted for method {m!r}"
                + (f" with objective {obj!r}" if obj else "") + f"; accepted: {sorted(accepted)}.")
        for key, spec in entry["options"].items():
          _check_value(key, spec["value"], where)


def describe(method: Optional[str] = None) -> str:
  """A plain-text table of the presets of ``method`` (None: all), one row per option —
  ``method  preset  dataset  ipc  [objective]  option = value  (source)`` — followed by each file's note."""
  files = _files()
  todo = [method] if method is not None else sorted(files)
  rows, notes = [], []
  for m in todo:
    pf = _file(m)
    for name in sorted(pf.presets):
      for entry in pf.presets[name]:
        if not _applies(entry, m):
          continue
        ds = entry.get("dataset", "*")
        ds = ",".join(ds) if isinstance(ds, list) else ds
        obj = entry.get("objective")
        for key, spec in entry["options"].items():
          rows.append((m, name, ds, str(entry.get("ipc", "*")), f"objective={obj}" if obj else "",
                       f"{key} = {json.dumps(spec['value'])}", f"({spec['source']})"))
    if pf.note and all(pf.name != n for n, _, _ in notes):
      notes.append((pf.name, ", ".join(x for x in pf.methods if x in todo), pf.note))
  header = ("method", "preset", "dataset", "ipc", "objective", "option = value", "(source)")
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(6)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in [header] + rows]
  lines.append("")
  lines += [f"note ({ms}; {fname}): {text}" for fname, ms, text in notes]
  return "\n".join(line.rstrip() for line in lines) + "\n"


__all__ = ["EVAL_KEYS", "PARAMETERISATION_OPTIONS", "PRESET_DIR", "Preset", "accepted_keys", "available",
           "describe", "methods", "names", "note", "resolve", "validate"]


# --- expert-buffer recipes (``python -m experiments.buffers --preset NAME``) -----------------------------------

BUFFER_FILE = os.path.join(PRESET_DIR, "buffers", "experts.json")
# Options a buffer preset may set: the fields of jaxdistill.experts.ExpertConfig a recipe chooses, and the
# training-set size (None: the whole split).
BUFFER_KEYS: Dict[str, type] = {"num_experts": int, "experts_per_shard": int, "epochs": int, "lr": float,
                                "batch_size": int, "width": int, "depth": int, "dsa": bool, "zca": bool,
                                "zca_reg": float, "train_size": int}


@functools.lru_cache(maxsize=None)
def _buffer_file() -> Dict[str, List[dict]]:
  """The checked ``presets`` of :data:`BUFFER_FILE` (entries select by ``dataset`` only)."""
  from jaxdistill.data.specs import DATASETS
  where = os.path.join("buffers", os.path.basename(BUFFER_FILE))
  with open(BUFFER_FILE, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict) or set(data) - {"note", "presets"} or not isinstance(data.get("presets"), dict):
    _fail(where, "must be an object with 'presets' and an optional 'note'.")
  for name, entries in data["presets"].items():
    if not isinstance(entries, list) or not entries:
      _fail(where, f"preset {name!r} must be a non-empty list of entries.")
    for i, entry in enumerate(entries):
      at = f"{where} [{name} #{i}]"
      if not isinstance(entry, dict) or set(entry) - {"dataset", "options"} or "options" not in entry:
        _fail(at, "each entry must be an object with 'options' and an optional 'dataset'.")
      ds = entry.get("dataset", "*")
      for d in ds if isinstance(ds, list) else [ds]:
        if d != "*" and d not in DATASETS:
          _fail(at, f"unknown dataset {d!r}; accepted: {sorted(DATASETS)} or '*'.")
      for key, spec in entry["options"].items():
        if key not in BUFFER_KEYS:
          _fail(at, f"option {key!r} is not a buffer option; accepted: {sorted(BUFFER_KEYS)}.")
        if not isinstance(spec, dict) or set(spec) != {"value", "source"} or not str(spec["source"]).strip():
          _fail(at, f"option {key!r} must be {{'value': ..., 'source': '...'}} with a non-empty source.")
        kind, value = BUFFER_KEYS[key], spec["value"]
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, int) and not isinstance(value, bool) and value >= 1 if kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
        if not ok:
          _fail(at, f"option {key!r} must be a {'boolean' if kind is bool else 'positive ' + kind.__name__}, "
                f"got {value!r}.")
  return data["presets"]


def buffer_presets() -> Tuple[str, ...]:
  """The expert-buffer preset names (sorted), e.g. ``("cpu", "paper")``."""
  return tuple(sorted(_buffer_file()))


def resolve_buffer(name: str, dataset: str) -> Preset:
  """The expert-buffer recipe ``name`` for ``dataset`` (:data:`BUFFER_KEYS` options with sources; entries naming
  the dataset win over ``"*"``).

  Raises:
    ValueError: an unknown preset name.
  """
  presets = _buffer_file()
  if name not in presets:
    raise ValueError(f"unknown buffer preset {name!r}; accepted: {sorted(presets)}.")
  values: Dict[str, Any] = {}
  sources: Dict[str, str] = {}
  for level in (0, 1):
    for entry in presets[name]:
      ds = entry.get("dataset", "*")
      hit = (ds == "*") if level == 0 else (ds != "*" and dataset in (ds if isinstance(ds, list) else [ds]))
      if hit:
        for key, spec in entry["options"].items():
          values[key], sources[key] = spec["value"], spec["source"]
  return Preset(values, sources)
