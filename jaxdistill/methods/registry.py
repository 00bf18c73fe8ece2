"""The machinery of the method registry: flags as data, families, methods, and the set-up of a run.

The catalogue (which methods exist) and how to add one are in :mod:`jaxdistill.methods`.

A *method* is what ``--method`` names: a **family** (which extra flags it reads), an **objective** (a registered
:mod:`jaxdistill.objectives` name, or None when the run's ``--objective`` picks it), a **set-up**
``setup(options, data, obj_cfg, init, key) -> Built`` (the objective plus an initialised parameterisation),
and optionally loop defaults, a loop hook and an output hook. Every registered objective without an entry of
its own is a method of the flag-less ``"pixels"`` family with :func:`setup_pixels`.

``options`` is any object with the attributes ``method``, ``ipc``, ``dataset``, ``seed`` and the ``dest`` of
every family flag (an ``argparse.Namespace`` from the distill CLI, or :func:`options`); ``data`` anything with
``train_x`` ``[N, H, W, ch]``, ``train_y`` ``[N]``, ``test_x``, ``test_y`` and ``spec``
(:class:`jaxdistill.data.DatasetSpec`).
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Union

from jaxdistill import objectives, synthetic
from jaxdistill.validation import check_choice

# How a flag's value is read (Flag.type): plain values, ``positive_int`` (>= 1), ``ints`` (comma-separated
# integers, e.g. 64,32,16), ``bool`` (--x / --no-x, absent None), ``true`` (--x sets True, absent None) and
# ``switch`` (--x sets True, absent False).
FLAG_TYPES = ("str", "int", "positive_int", "float", "ints", "bool", "true", "switch")
PIXELS_FAMILY = "pixels"
_SAME = "<the method's name>"  # register(objective=...) default: the objective registered under the method's name


class Flag(NamedTuple):
  """One command-line flag of a method family, as data (a parser is built from :meth:`row`).

  Attributes:
    option: the flag, e.g. ``"--syn-steps"``.
    dest: the options attribute it sets, e.g. ``"syn_steps"``.
    type: one of :data:`FLAG_TYPES`.
    default: the value when the flag is absent (None: the config's or the method's own default applies).
    choices: the accepted values, or None.
    help: the ``--help`` text.
    objective: True when the flag overrides the field ``dest`` of the objective config of whatever objective the
      run optimises (``--syn-steps`` also reaches ``--method glad --objective mtt``); False when the method's
      set-up or loop hook reads it.
  """
  option: str
  dest: str
  type: str
  default: Any
  choices: Optional[Tuple[Any, ...]]
  help: str
  objective: bool = False

  def row(self) -> tuple:
    """``(option, dest, type, default, choices, help)``: what a parser needs (copied in experiments/names.py)."""
    return (self.option, self.dest, self.type, self.default, self.choices, self.help)


class Family(NamedTuple):
  """A group of methods sharing extra flags.

  Attributes:
    name: the family's name, e.g. ``"trajectory"``.
    title: the ``--help`` group title, shown with the family's methods appended (``"trajectory matching (mtt,
      tesla, mtt_l1)"``); None lists the flags with the main options.
    flags: the family's :class:`Flag` s.
  """
  name: str
  title: Optional[str] = None
  flags: Tuple[Flag, ...] = ()


class Built(NamedTuple):
  """What a set-up returns.

  Attributes:
    objective: the :class:`jaxdistill.objectives.Objective` to optimise.
    param: the :class:`jaxdistill.synthetic.Parameterisation`.
    syn: its initial :class:`jaxdistill.synthetic.SynState`.
    metadata: extra metadata for ``synthetic.npz`` (a parameterisation's config, generator, storage budget).
    x64: the distillation asks for ``jax_enable_x64`` (KIP / RFAD ``dtype="float64"``; the caller turns it on
      after the set-up and off before evaluation).
    context: what the method's output hook needs (KIP: ``(data, obj_cfg, zca)``).
  """
  objective: Any
  param: Any
  syn: Any
  metadata: Optional[Dict[str, Any]] = None
  x64: bool = False
  context: Any = None


class Method(NamedTuple):
  """A registered ``--method``.

  Attributes:
    name: the ``--method`` value.
    family: the name of its :class:`Family`.
    objective: the registered objective it optimises, or None when the run's ``--objective`` chooses it.
    setup: ``setup(options, data, obj_cfg, init, key) -> Built``; None: :func:`setup_pixels`.
    loop_defaults: :class:`jaxdistill.loop.LoopConfig` fields the method sets (e.g. ``{"optimizer": "adam"}``),
      also whenever a parameterisation method optimises this method's objective; ``--config`` and flags win.
    loop_hook: ``hook(options, loop_kw) -> dict`` of LoopConfig fields derived from the method's flags (per-
      parameter learning rates of a parameterisation), applied after ``loop_defaults``; or None.
    outputs: ``outputs(options, built, syn_state) -> (arrays or None, metadata)`` stored in ``synthetic.npz``
      beside the rendered images; or None.
  """
  name: str
  family: str
  objective: Optional[str]
  setup: Optional[Callable[..., Built]] = None
  loop_defaults: Mapping[str, Any] = types.MappingProxyType({})
  loop_hook: Optional[Callable[..., Dict[str, Any]]] = None
  outputs: Optional[Callable[..., Tuple[Any, Dict[str, Any]]]] = None


_FAMILIES: Dict[str, Family] = {}
_METHODS: Dict[str, Method] = {}


# -- flags as data ------------------------------------------------------------------------------------------------

def flag(option: str, help: str, *, type: str = "str", default=None, choices=None, dest: Optional[str] = None,
         objective: bool = False) -> Flag:
  """A :class:`Flag`; ``dest`` defaults to the option without dashes (``--gen-seed`` -> ``gen_seed``)."""
  check_choice("type", type, FLAG_TYPES)
  if not option.startswith("--"):
    raise ValueError(f"option must start with '--', got {option!r}.")
  if type == "switch" and default is not False:
    raise ValueError(f"a 'switch' flag defaults to False, got default={default!r} for {option}.")
  dest = dest or option[2:].replace("-", "_")
  return Flag(option, dest, type, default, None if choices is None else tuple(choices), help, objective)


def _field(config, name: str) -> dataclasses.Field:
  fields = {f.name: f for f in dataclasses.fields(config)}
  if name not in fields:
    raise ValueError(f"{config.__name__} has no field {name!r}; fields: {sorted(fields)}.")
  return fields[name]


def _field_type(config, name: str) -> str:
  """The flag type of a config field from its annotation (``Optional[int]`` -> ``"int"``)."""
  hint = typing.get_type_hints(config)[name]
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  if typing.get_origin(hint) is Union and len(args) == 1:
    hint = args[0]
  kinds = {bool: "bool", int: "int", float: "float", str: "str"}
  if hint not in kinds:
    raise ValueError(f"{config.__name__}.{name} ({hint}) has no flag type of its own; pass type= (one of "
                     f"{list(FLAG_TYPES)}).")
  return kinds[hint]


def objective_flag(config, field: str, help: str, *, option: Optional[str] = None,
                   type: Optional[str] = None) -> Flag:
  """A flag overriding the objective-config field ``field`` of ``config`` (a config dataclass declaring it):
  dest ``field``, option ``--field-name`` unless given, type from the field's annotation unless given, default
  None (the config's own value applies when the flag is absent)."""
  _field(config, field)
  return flag(option or "--" + field.replace("_", "-"), help, type=type or _field_type(config, field),
              dest=field, objective=True)


def config_flag(config, field: str, option: str, help: str, *, type: Optional[str] = None, default=_SAME,
                choices=None) -> Flag:
  """A flag of a set-up config's field (e.g. ``HaBaConfig.hallucinators`` as ``--haba-hallucinators``): type
  from the field's annotation and default from the field's default unless given (``default=None`` means "the
  set-up picks", e.g. a value derived from the IPC)."""
  f = _field(config, field)
  if default is _SAME:
    if f.default is dataclasses.MISSING:
      raise ValueError(f"{config.__name__}.{field} has no default; pass default=.")
    default = f.default
  return flag(option, help, type=type or _field_type(config, field), default=default, choices=choices)


# -- registration -------------------------------------------------------------------------------------------------

def register_family(family: Family) -> Family:
  """Registers ``family`` (its options and dests must be new). Returns it."""
  if family.name in _FAMILIES:
    raise ValueError(f"family {family.name!r} is already registered.")
  taken = {f.option: fam.name for fam in _FAMILIES.values() for f in fam.flags}
  taken.update({f.dest: fam.name for fam in _FAMILIES.values() for f in fam.flags})
  for f in family.flags:
    check_choice("type", f.type, FLAG_TYPES)
    for key in (f.option, f.dest):
      if key in taken:
        raise ValueError(f"flag {key!r} of family {family.name!r} is already declared by family {taken[key]!r}.")
      taken[key] = family.name
    if f.objective and f.default is not None:
      raise ValueError(f"objective flag {f.option} must default to None (the config's value), got {f.default!r}.")
  _FAMILIES[family.name] = family
  return family


def register(name: str, *, family: Union[str, Family] = PIXELS_FAMILY, objective: Optional[str] = _SAME,
             setup: Optional[Callable[..., Built]] = None, loop_defaults: Optional[Mapping[str, Any]] = None,
             loop_hook: Optional[Callable] = None, outputs: Optional[Callable] = None) -> Method:
  """Registers the ``--method`` ``name`` (see :class:`Method` for the arguments). ``family`` is a registered
  family's name or a new :class:`Family` (registered with it); ``objective`` defaults to ``name`` (which must
  then be a registered objective); None makes it a parameterisation method that takes ``--objective``."""
  if name in _METHODS:
    raise ValueError(f"method {name!r} is already registered.")
  objective = name if objective is _SAME else objective
  if objective is not None:
    check_choice("objective", objective, sorted(objectives.REGISTRY))
  if isinstance(family, Family):
    family = register_family(family).name
  check_choice("family", family, sorted(_FAMILIES))
  method = Method(name, family, objective, setup, types.MappingProxyType(dict(loop_defaults or {})), loop_hook,
                  outputs)
  _METHODS[name] = method
  return method


register_family(Family(PIXELS_FAMILY))


# -- look-up ------------------------------------------------------------------------------------------------------

def names() -> Tuple[str, ...]:
  """Every ``--method`` value, sorted: the registered methods and every registered objective."""
  return tuple(sorted(set(_METHODS) | set(objectives.REGISTRY)))


def get(name: str) -> Method:
  """The method ``name``: its registered entry, or for a registered objective without one, the pixel method
  optimising it. ``ValueError`` naming the accepted values otherwise."""
  if name in _METHODS:
    return _METHODS[name]
  check_choice("method", name, names())
  return Method(name, PIXELS_FAMILY, name)


def families() -> Tuple[Family, ...]:
  """The registered families, in registration order."""
  return tuple(_FAMILIES.values())


def members(family: str) -> Tuple[str, ...]:
  """The methods registered in ``family``, in registration order (the pixels family: also every objective without
  an entry)."""
  check_choice("family", family, sorted(_FAMILIES))
  found = tuple(m.name for m in _METHODS.values() if m.family == family)
  if family == PIXELS_FAMILY:
    found += tuple(n for n in objectives.METHODS if n not in _METHODS)
  return found


def flags() -> Tuple[Flag, ...]:
  """Every family's flags, in registration order."""
  return tuple(f for fam in _FAMILIES.values() for f in fam.flags)


def flag_table() -> Tuple[Tuple[Optional[str], Tuple[tuple, ...]], ...]:
  """``((group title, (Flag.row(), ...)), ...)`` for every family with flags: what the distill CLI's parser is
  built from (experiments/names.py keeps this copy so ``--help`` needs no JAX; a test checks they are equal)."""
  table = []
  for fam in _FAMILIES.values():
    if fam.flags:
      title = f"{fam.title} ({', '.join(members(fam.name))})" if fam.title else None
      table.append((title, tuple(f.row() for f in fam.flags)))
  return tuple(table)


def objective_fields() -> frozenset:
  """The dests of the flags that override the objective config's field of the same name."""
  return frozenset(f.dest for f in flags() if f.objective)


def takes_objective(method: str) -> bool:
  """Whether ``method`` optimises the objective named by ``--objective`` (a parameterisation method)."""
  return get(method).objective is None


def objective_name(options) -> str:
  """The registered objective a run optimises: the method's own, or ``options.objective`` for a
  parameterisation method."""
  method = get(options.method)
  if method.objective is not None:
    return method.objective
  name = getattr(options, "objective", None)
  if name is None:
    raise ValueError(f"--method {options.method} needs --objective (one of {sorted(objectives.REGISTRY)}).")
  check_choice("objective", name, sorted(objectives.REGISTRY))
  return name


def options(method: str, *, ipc: int, dataset: str = "fashion_mnist", seed: int = 0, **values):
  """The options object a set-up reads, outside the CLI: every family flag at its default, then ``values`` (by
  dest, e.g. ``objective="dm", glad_layer=3``). Unknown names -> ``ValueError`` naming the accepted ones."""
  get(method)
  defaults = {f.dest: f.default for f in flags()}
  unknown = sorted(set(values) - set(defaults))
  if unknown:
    raise ValueError(f"unknown option(s) {unknown}; accepted: {sorted(defaults)}.")
  return types.SimpleNamespace(method=method, ipc=ipc, dataset=dataset, seed=seed, **{**defaults, **values})


# -- set-up -------------------------------------------------------------------------------------------------------

def setup_pixels(options, data, obj_cfg, init: str, key) -> Built:
  """The default set-up: the method's objective on a pixel set of ``options.ipc`` images per class initialised
  with ``init`` (:func:`jaxdistill.synthetic.init_pixels`)."""
  spec = data.spec
  objective = objectives.make_objective(objective_name(options), obj_cfg, num_classes=spec.num_classes,
                                        image_shape=spec.image_shape, ipc=options.ipc)
  syn = synthetic.init_pixels(key, init, data.train_x, data.train_y, spec.num_classes, options.ipc)
  return Built(objective, synthetic.PIXELS, syn)


def setup(options, data, obj_cfg, init: str, key) -> Built:
  """Builds the run of ``options.method``: its objective (``obj_cfg`` is that objective's config) and its
  parameterisation, initialised with ``init`` and ``key``."""
  method = get(options.method)
  return (method.setup or setup_pixels)(options, data, obj_cfg, init, key)


def setup_objective(options, data, obj_cfg, init: str, key, ipc: int):
  """``(objective, learnable-lr initial value or None, x64)`` of the run's objective for ``ipc`` training images
  per class, for a parameterisation method that wraps it: an objective with a set-up of its own (MTT: expert
  buffer, learnable student lr; KIP: ZCA, float64) is built by that set-up (seeing ``options.ipc = ipc``)."""
  name = objective_name(options)
  spec = data.spec
  own = get(name).setup
  if own is None:
    return objectives.make_objective(name, obj_cfg, num_classes=spec.num_classes, image_shape=spec.image_shape,
                                     ipc=ipc), None, False
  if ipc != options.ipc:
    options = copy.copy(options)
    options.ipc = ipc
  built = own(options, data, obj_cfg, init, key)
  lr = built.syn.params.get("lr")
  return built.objective, None if lr is None else float(lr), built.x64


def loop_settings(options, loop_kw: Mapping[str, Any]) -> Dict[str, Any]:
  """``loop_kw`` (LoopConfig fields) updated with the loop defaults of the run's objective's method (KIP's Adam also
  under ``--method glad --objective kip``), then the method's own (when it optimises another method's objective),
  then what the method's loop hook derives from its flags."""
  kw = dict(loop_kw)
  method = get(options.method)
  kw.update(get(objective_name(options)).loop_defaults)
  if method.name != objective_name(options):
    kw.update(method.loop_defaults)
  hook = method.loop_hook
  if hook is not None:
    kw.update(hook(options, dict(kw)))
  return kw


def outputs(options, built: Built, syn_state) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
  """``(extra arrays or None, extra metadata)`` for ``synthetic.npz``: the set-up's metadata, then the method's
  output hook's (``syn_state`` is the final state)."""
  metadata = dict(built.metadata or {})
  hook = get(options.method).outputs
  if hook is None:
    return None, metadata
  arrays, more = hook(options, built, syn_state)
  metadata.update(more)
  return arrays, metadata
