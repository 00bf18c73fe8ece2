"""Dataset distillation from the command line (DC, DSA, DM, DM-L1, DM-BN on the one generic loop).

    python -m experiments.distill --method dm --dataset fashion_mnist --ipc 10 --iterations 200 \
        --real-per-class 64 --eval-models 3 --eval-epochs 300 --out runs/dm_ipc10

Writes ``synthetic.npz``, ``metrics.json`` (the coreset CLI's keys plus ``iterations``,
``seconds_per_iteration``, ``peak_memory_mb`` and the loss curve), ``grid.png``, ``loss.png`` and, written as
the run goes, ``metrics.jsonl`` (one JSON line per iteration: loss, seconds, the objective's aux) to ``--out``;
``--resume`` continues an interrupted run from ``--out/checkpoint.npz`` (``--checkpoint-format orbax``:
``--out/checkpoint.orbax/``, an orbax-checkpoint folder) with the same seed and flags, bit-for-bit.
``--config FILE`` is a JSON object of option overrides: keys of the method's objective config (e.g.
``width``, ``metric``, ``outer_loop``) and of :class:`jaxdistill.loop.LoopConfig` (e.g. ``momentum``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import types

from experiments import cli, common, names

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
jax = cli.lazy("jax")
presets = cli.lazy("jaxdistill.presets")
np = cli.lazy("numpy")
io = cli.lazy("jaxdistill.io")
loop = cli.lazy("jaxdistill.loop")
data_lib = cli.lazy("jaxdistill.data")
objectives = cli.lazy("jaxdistill.objectives")
augment = cli.lazy("jaxdistill.augment")
methods = cli.lazy("jaxdistill.methods")  # the method registry: set-ups, families, flags

# How the flag types of jaxdistill.methods.Flag are read (the flags themselves: names.METHOD_FLAGS, a JAX-free
# copy of jaxdistill.methods.flag_table()).
FLAG_ACTIONS = {"bool": argparse.BooleanOptionalAction, "switch": "store_true"}


def _ints(text: str):
  """argparse type: comma-separated integers, e.g. ``64,32,16``."""
  return tuple(int(t) for t in text.split(",") if t.strip())


FLAG_CONVERTERS = {"str": None, "int": int, "float": float, "positive_int": common.positive_int, "ints": _ints}


def add_method_flags(parser: argparse.ArgumentParser, table=None) -> argparse.ArgumentParser:
  """Adds every method family's flags (:func:`jaxdistill.methods.flag_table`; by default its copy
  ``names.METHOD_FLAGS``), one argument group per titled family."""
  for title, rows in names.METHOD_FLAGS if table is None else table:
    group = parser.add_argument_group(title) if title else parser
    for option, dest, kind, default, choices, text in rows:
      kwargs = dict(dest=dest, default=default, help=text)
      if kind == "true":
        kwargs.update(action="store_const", const=True)
      elif kind in FLAG_ACTIONS:
        kwargs["action"] = FLAG_ACTIONS[kind]
      elif FLAG_CONVERTERS[kind] is not None:
        kwargs["type"] = FLAG_CONVERTERS[kind]
      if choices is not None:
        kwargs["choices"] = choices
      group.add_argument(option, **kwargs)
  return parser


def objective_name(args) -> str:
  """The registered objective a run optimises (:func:`jaxdistill.methods.objective_name`): ``--method`` itself,
  or for parameterisation methods the ``--objective`` flag."""
  return methods.objective_name(args)


def method_choices():
  """The ``--method`` values: every method of :mod:`jaxdistill.methods` (without importing the library: its copy
  :data:`experiments.names.DISTILL_METHODS`)."""
  return names.DISTILL_METHODS


class ListPresets(argparse.Action):
  """``--list-presets [METHOD]``: prints :func:`jaxdistill.presets.describe` (every preset value with its source)
  and exits 0 before the required flags are checked, like ``--help``."""

  def __init__(self, option_strings, dest, **kwargs):
    super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, metavar="METHOD", **kwargs)

  def __call__(self, parser, namespace, values, option_string=None):
    try:
      text = presets.describe(values)
    except ValueError as e:
      parser.error(str(e))
    sys.stdout.write(text)
    sys.stdout.flush()
    parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--method", required=True, choices=method_choices())
  parser.add_argument("--preset", default=None, choices=names.PRESETS,
                      help="hyperparameters for (method, dataset, IPC) from jaxdistill/presets: 'paper' (published, "
                           "each value with its source) or 'cpu' (the benchmarks' reduced protocol); --config and "
                           "explicit flags override it (default: the registry's defaults)")
  parser.add_argument("--list-presets", action=ListPresets,
                      help="print every preset value with its source (optionally of one METHOD) and exit")
  parser.add_argument("--iterations", type=common.positive_int, default=None,
                      help="iterations (default: the paper's, DC/DSA 1000, DM 20000); for DC/DSA an iteration is "
                           "an outer iteration (a fresh network, outer_loop image updates), for the rest one "
                           "image update")
  parser.add_argument("--eval-every", type=int, default=0, help="evaluate every N iterations (0: only at end)")
  parser.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N iterations")
  parser.add_argument("--resume", action="store_true",
                      help="continue from the checkpoint in --out (checkpoint.npz, or checkpoint.orbax/)")
  parser.add_argument("--checkpoint-format", default="npz", choices=("npz", "orbax"),
                      help="loop checkpoint as one --out/checkpoint.npz written by process 0 (default), or an "
                           "orbax-checkpoint folder --out/checkpoint.orbax/ saved by every process (multi-host "
                           "jobs); synthetic.npz is the portable result either way")
  parser.add_argument("--time-budget", type=float, default=None,
                      help="stop after this many seconds (checkpoint written, no evaluation); run again with "
                           "--resume to continue — long paper runs in chunks")
  parser.add_argument("--config", default=None, help="JSON file of objective / loop option overrides")
  parser.add_argument("--real-per-class", type=common.positive_int, default=None,
                      help="real images per class per iteration (default 256)")
  parser.add_argument("--lr-img", type=float, default=None, help="image learning rate (DC/DSA 0.1, DM 1.0)")
  parser.add_argument("--init", default=None, choices=names.INITS,
                      help="initialisation: random real images (real / random), noise, or a coreset selection "
                           "(herding, kcenter, forgetting; jaxdistill.coreset.select) (default: DC noise, DSA/DM "
                           "real images)")
  parser.add_argument("--width", type=common.positive_int, default=None,
                      help="width of the matching / embedding ConvNet (default 128)")
  add_method_flags(parser)
  return common.add_common_args(parser)


def apply_preset(args) -> dict:
  """Resolves ``--preset`` (:func:`jaxdistill.presets.resolve` for the method, ``--dataset``, ``--ipc`` and, for
  parameterisation methods, ``--objective``) and returns its objective / loop / ``init`` values, which the caller
  puts under the ``--config`` overrides. Its evaluation keys (``eval_epochs``, ``eval_dsa``, ``eval_models``,
  ``eval_learned_lr``) and parameterisation flags (e.g. ``lr_features``) are set on ``args`` only where they are
  None (no flag given). Records ``args.preset_sources`` (``{option: source}``; empty without a preset)."""
  args.preset_sources = {}
  name = getattr(args, "preset", None)
  if not name:
    return {}
  objective = objective_name(args) if methods.takes_objective(args.method) else None
  preset = presets.resolve(args.method, name, args.dataset, args.ipc, objective=objective)
  args.preset_sources = dict(preset.sources)
  flags = set(presets.EVAL_KEYS) | set(presets.PARAMETERISATION_OPTIONS.get(args.method, ()))
  for key in sorted(flags & set(preset.values)):
    if getattr(args, key, None) is None:
      value = preset.values[key]
      setattr(args, key, tuple(value) if isinstance(value, list) else value)
  return {k: v for k, v in preset.values.items() if k not in flags}


def build_configs(args, spec):
  """``(objective_config, loop_config, init)`` from the flags, the ``--config`` JSON, the ``--preset`` and the
  paper defaults (precedence, lowest first: registry defaults, preset, ``--config``, explicit flags).

  Raises:
    ValueError: unknown keys in ``--config``, an unknown preset for the method, or invalid values.
  """
  method = objective_name(args)
  defaults = objectives.method_defaults(method)
  base = objectives.default_config(method)
  obj_fields = {f.name for f in dataclasses.fields(base)}
  loop_fields = {f.name for f in dataclasses.fields(loop.LoopConfig)}
  config_json = io.load_json(args.config) if args.config else {}
  if not isinstance(config_json, dict):
    raise ValueError(f"--config {args.config!r} must hold a JSON object.")
  unknown = sorted(set(config_json) - obj_fields - loop_fields - {"init"})
  if unknown:
    raise ValueError(f"--config: unknown option(s) {unknown}; accepted: {sorted(obj_fields | loop_fields)} "
                     "and 'init'.")
  overrides = {**apply_preset(args), **config_json}  # registry defaults < preset < --config < flags
  obj_over = {k: v for k, v in overrides.items() if k in obj_fields}
  if "dsa_strategy" in obj_over:
    obj_over["dsa_strategy"] = tuple(obj_over["dsa_strategy"])
  elif spec.digits and "dsa_strategy" in obj_fields:
    obj_over["dsa_strategy"] = augment.DIGIT_STRATEGY
  if args.width is not None:
    obj_over["width"] = args.width
  for name in sorted(methods.objective_fields() & obj_fields):  # e.g. --syn-steps -> syn_steps
    if getattr(args, name, None) is not None:
      obj_over[name] = getattr(args, name)
  obj_cfg = objectives.default_config(method, **obj_over)
  loop_kw = dict(iterations=defaults.iterations, real_per_class=defaults.real_per_class,
                 lr_img=defaults.lr_img)
  if hasattr(obj_cfg, "param_lrs"):
    loop_kw["param_lrs"] = obj_cfg.param_lrs()
  loop_kw = methods.loop_settings(args, loop_kw)  # the objective's loop defaults, then the method's loop hook
  loop_kw.update({k: v for k, v in overrides.items() if k in loop_fields})
  for flag, field in (("iterations", "iterations"), ("real_per_class", "real_per_class"),
                      ("lr_img", "lr_img"), ("eval_every", "eval_every"), ("checkpoint_every", "checkpoint_every")):
    if getattr(args, flag) is not None:
      loop_kw[field] = getattr(args, flag)
  loop_cfg = loop.LoopConfig(**loop_kw).validate()
  init = args.init or overrides.get("init") or defaults.init
  return obj_cfg, loop_cfg, init


def updates_per_iteration(obj_cfg, ipc: int) -> int:
  """Image updates in one reported iteration. DC/DSA (any gradient-matching objective): ``outer_loop``, because
  in the papers and their code one iteration is one *outer* iteration — a fresh network, then ``outer_loop`` ×
  (match every class, one image update, ``inner_loop`` network epochs). Every other method: 1."""
  from jaxdistill.objectives.gradient_matching import GradientMatchingConfig
  if isinstance(obj_cfg, GradientMatchingConfig):
    return obj_cfg.loops(ipc)[0]
  return 1


def in_image_updates(loop_cfg, per_iteration: int):
  """``loop_cfg`` with its iteration counts (``iterations``, ``eval_every``, ``checkpoint_every``) converted
  from reported iterations to the loop's unit, image updates."""
  if per_iteration == 1:
    return loop_cfg
  return dataclasses.replace(loop_cfg, iterations=loop_cfg.iterations * per_iteration,
                             eval_every=loop_cfg.eval_every * per_iteration,
                             checkpoint_every=loop_cfg.checkpoint_every * per_iteration)


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  if args.time_budget is not None and not args.time_budget > 0:
    raise ValueError(f"--time-budget must be > 0 seconds, got {args.time_budget}.")
  # Flags, --config and --preset are checked before anything is written or loaded.
  obj_cfg, loop_cfg, init = build_configs(args, data_lib.get_spec(args.dataset))
  common.resolve_eval(args, args.method)
  mesh = common.setup_devices(args)  # --distributed / --devices (jaxdistill.sharding)
  io.prepare_out_dir(args.out, overwrite=args.overwrite, resume=args.resume)
  start, start_monotonic = time.perf_counter(), time.monotonic()
  data = common.load_dataset(args)
  spec = data.spec
  per_iteration = updates_per_iteration(obj_cfg, args.ipc)
  iterations = loop_cfg.iterations
  loop_cfg = in_image_updates(loop_cfg, per_iteration)
  key = jax.random.PRNGKey(args.seed)
  k_init, k_loop, k_eval = jax.random.split(key, 3)
  built = methods.setup(args, data, obj_cfg, init, k_init)
  objective, param, syn = built.objective, built.param, built.syn
  x64 = built.x64 and not jax.config.jax_enable_x64  # KIP / RFAD's float64 solve: only the distillation in x64
  if x64:
    jax.config.update("jax_enable_x64", True)

  def evaluator(batch, k):
    """The evaluation during the run, in float32 (x64 is switched off around it, then back on)."""
    images, labels = np.asarray(batch.images, np.float32), np.asarray(batch.labels)
    lr = None if batch.lr is None else np.asarray(batch.lr, np.float32)
    if x64:
      jax.config.update("jax_enable_x64", False)
    try:
      return common.evaluate_set(args, data, images, labels, k, lr=lr)
    finally:
      if x64:
        jax.config.update("jax_enable_x64", True)
  ckpt = os.path.join(args.out, "checkpoint.orbax" if args.checkpoint_format == "orbax" else "checkpoint.npz")
  stream = os.path.join(args.out, "metrics.jsonl") if io.is_writer() else None  # process 0 writes files
  try:
    result = loop.distill(objective, param, syn, data.train_x, data.train_y, spec.num_classes, k_loop,
                          loop_cfg, evaluator=evaluator if loop_cfg.eval_every else None,
                          checkpoint_path=ckpt, resume=args.resume,
                          progress=not args.quiet, mesh=mesh, metrics_path=stream,
                          deadline=None if args.time_budget is None else start_monotonic + args.time_budget)
  except loop.Interrupted as e:  # Ctrl-C: the checkpoint is written; say how to continue
    e.resume_command = cli.resume_command("experiments.distill", argv)
    raise
  finally:
    if x64:  # the final evaluation and everything after run in float32
      jax.config.update("jax_enable_x64", False)
  if not result.complete:
    done = len(result.losses)
    status = {"complete": False, "method": args.method, "ipc": args.ipc, "image_updates_done": done,
              "image_updates": loop_cfg.iterations, "iterations_done": done // per_iteration,
              "iterations": iterations, "seconds": time.perf_counter() - start, "checkpoint": ckpt}
    io.save_json(os.path.join(args.out, "progress.json"), status)
    print(f"{args.method} ipc={args.ipc}: stopped at the time budget after {done} of {loop_cfg.iterations} image "
          f"updates; checkpoint {ckpt}. Continue with the same command and --resume.")
    return status
  final_syn = result.state.syn if result.ema is None else result.ema  # FTD: the EMA set (LoopConfig.ema_decay)
  batch = param.render(final_syn)
  distill_seconds = time.perf_counter() - start
  final = common.evaluate_set(args, data, np.asarray(batch.images), np.asarray(batch.labels), k_eval,
                              lr=batch.lr)
  its = np.arange(1, len(result.losses) + 1)
  io.save_curve(os.path.join(args.out, "loss.png"), {args.method: (its, result.losses)}, "iteration",
                "matching loss", title=f"{args.method} ipc={args.ipc}")
  metadata = {"method": args.method, "dataset": args.dataset, "ipc": args.ipc, "seed": args.seed,
              "kind": "distilled", "init": init, "parameterisation": param.name,
              "storage_floats": int(param.storage(final_syn)), "objective_config": dataclasses.asdict(obj_cfg),
              "loop_config": dataclasses.asdict(loop_cfg), "resumed_from": result.start_iteration // per_iteration,
              "resumed_from_image_update": result.start_iteration,
              "preset": getattr(args, "preset", None), "preset_sources": getattr(args, "preset_sources", {})}
  metrics = {**common.eval_metrics(args, final), "iterations": iterations, "image_updates": loop_cfg.iterations,
             "image_updates_per_iteration": per_iteration,
             "seconds_per_iteration": result.seconds_per_iteration * per_iteration,
             "seconds_per_image_update": result.seconds_per_iteration, "peak_memory_mb": common.peak_memory_mb(),
             "loss_curve": [float(v) for v in result.losses],
             "evaluations": [{"iteration": i, **r.to_dict()} for i, r in result.evals],
             "distill_seconds": distill_seconds, "seconds": time.perf_counter() - start,
             "startup_seconds": common.startup_seconds(result.first_step_time),
             "device": common.device_summary()}
  extra, more = methods.outputs(args, built, final_syn)  # a parameterisation's state, KIP's KRR accuracy
  metadata.update(more)
  saved_lr = batch.lr
  if saved_lr is not None and hasattr(obj_cfg, "lr_param"):  # DD: store the rates alpha_t, not their raw values
    from jaxdistill.objectives import bptt
    saved_lr = bptt.step_sizes(saved_lr, obj_cfg.inner_lr, obj_cfg.inner_steps, lr_param=obj_cfg.lr_param)
    metadata["lr_note"] = f"lr holds the {obj_cfg.inner_steps} learned inner step sizes alpha_t"
  payload = common.write_outputs(args.out, data, batch.images, batch.labels, metrics, metadata, lr=saved_lr,
                                 extra=extra)
  print(f"{args.method} ipc={args.ipc} iterations={iterations} ({loop_cfg.iterations} image updates): {final}  "
        f"({result.seconds_per_iteration * per_iteration:.3f} s/it) -> {args.out}")
  return payload


def __getattr__(name):
  """Read-only views of :mod:`jaxdistill.methods` under the names of the registries this module once kept, for
  callers written against them: ``BUILDERS`` (the methods with a set-up of their own -> set-up) and
  ``LOOP_DEFAULTS`` (methods -> their loop defaults). New code: ``jaxdistill.methods.get(name)``."""
  if name == "BUILDERS":
    found = {n: methods.get(n).setup for n in methods.names()}
    return types.MappingProxyType({n: f for n, f in found.items() if f is not None})
  if name == "LOOP_DEFAULTS":
    found = {n: dict(methods.get(n).loop_defaults) for n in methods.names()}
    return types.MappingProxyType({n: d for n, d in found.items() if d})
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
  cli.run(main)
