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

from experiments import cli, common, names

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
jax = cli.lazy("jax")
presets = cli.lazy("jaxdistill.presets")
np = cli.lazy("numpy")
io = cli.lazy("jaxdistill.io")
loop = cli.lazy("jaxdistill.loop")
data_lib = cli.lazy("jaxdistill.data")
objectives = cli.lazy("jaxdistill.objectives")
synthetic = cli.lazy("jaxdistill.synthetic")
augment = cli.lazy("jaxdistill.augment")

# Per-method hooks, so every method runs through this one CLI:
#   ARG_HOOKS: functions ``add(parser)`` adding a method family's flags (e.g. ``--buffer`` for MTT);
#   BUILDERS[method]: ``build(args, data, obj_cfg, init, key) -> (Objective, Parameterisation, SynState)``
#     for methods that need more than "pixels initialised by ``init`` + the registered objective"
#     (expert buffers, learnable labels / lr, generator parameterisations). Methods without an entry use
#     :func:`build_pixels`.
ARG_HOOKS = []
BUILDERS = {}
#   HOOK_FIELDS: flag destinations added by hooks that override the objective-config field of the same name
#     (e.g. ``--syn-steps`` -> ``syn_steps``); an objective config with a ``param_lrs()`` method supplies
#     :attr:`jaxdistill.loop.LoopConfig.param_lrs` (MTT's lr of the learnable student lr).
HOOK_FIELDS = set()
#   LOOP_HOOKS[method]: ``hook(args, loop_kw) -> dict`` of LoopConfig fields a parameterisation method derives
#     from its flags (e.g. Adam for a generator, per-parameter learning rates), applied before --config/flags;
#   OUTPUT_HOOKS[method]: ``out(args, param, syn_state) -> (extra arrays, extra metadata)`` stored in
#     ``synthetic.npz`` beside the rendered images (a parameterisation's own state and config).
LOOP_HOOKS = {}
OUTPUT_HOOKS = {}
#   LOOP_DEFAULTS[method]: LoopConfig fields a method family sets by default (e.g. ``{"optimizer": "adam"}`` for
#     the kernel methods), applied before ``--config`` and flags.
LOOP_DEFAULTS = {}


def build_pixels(args, data, obj_cfg, init, key):
  """The default builder: the registered objective on a pixel set initialised with ``init``."""
  spec = data.spec
  objective = objectives.make_objective(objective_name(args), obj_cfg, num_classes=spec.num_classes,
                                        image_shape=spec.image_shape, ipc=args.ipc)
  syn = synthetic.init_pixels(key, init, data.train_x, data.train_y, spec.num_classes, args.ipc)
  return objective, synthetic.PIXELS, syn


def objective_name(args) -> str:
  """The registered objective a run optimises: ``--method`` itself, or for parameterisation methods (which
  have a builder but no objective of their own) the ``--objective`` flag their hook adds."""
  if args.method in objectives.REGISTRY:
    return args.method
  name = getattr(args, "objective", None)
  if name is None:
    raise ValueError(f"--method {args.method} needs --objective (one of {sorted(objectives.REGISTRY)}).")
  return name


def method_choices():
  """The ``--method`` values: every registered objective and every method with a builder (without importing
  the library: :mod:`experiments.names`)."""
  return tuple(sorted(set(names.OBJECTIVES) | set(BUILDERS)))


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
  for add in ARG_HOOKS:
    add(parser)
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
  objective = objective_name(args) if args.method in presets.PARAMETERISATION_OPTIONS else None
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
  for name in sorted(HOOK_FIELDS & obj_fields):
    if getattr(args, name, None) is not None:
      obj_over[name] = getattr(args, name)
  obj_cfg = objectives.default_config(method, **obj_over)
  loop_kw = dict(iterations=defaults.iterations, real_per_class=defaults.real_per_class,
                 lr_img=defaults.lr_img)
  if hasattr(obj_cfg, "param_lrs"):
    loop_kw["param_lrs"] = obj_cfg.param_lrs()
  loop_kw.update(LOOP_DEFAULTS.get(method, {}))
  if args.method in LOOP_HOOKS:
    loop_kw.update(LOOP_HOOKS[args.method](args, dict(loop_kw)))
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
  objective, param, syn = BUILDERS.get(args.method, build_pixels)(args, data, obj_cfg, init, k_init)
  x64 = getattr(args, "x64_for_solve", False)  # KIP / RFAD's float64 solve: only the distillation runs in x64

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
  batch = param.render(result.state.syn)
  distill_seconds = time.perf_counter() - start
  final = common.evaluate_set(args, data, np.asarray(batch.images), np.asarray(batch.labels), k_eval,
                              lr=batch.lr)
  its = np.arange(1, len(result.losses) + 1)
  io.save_curve(os.path.join(args.out, "loss.png"), {args.method: (its, result.losses)}, "iteration",
                "matching loss", title=f"{args.method} ipc={args.ipc}")
  metadata = {"method": args.method, "dataset": args.dataset, "ipc": args.ipc, "seed": args.seed,
              "kind": "distilled", "init": init, "parameterisation": param.name,
              "storage_floats": int(param.storage(result.state.syn)), "objective_config": dataclasses.asdict(obj_cfg),
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
  extra = None
  if args.method in OUTPUT_HOOKS:
    extra, more = OUTPUT_HOOKS[args.method](args, param, result.state.syn)
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


def _add_trajectory_args(parser):
  """Flags of the trajectory-matching methods (mtt, tesla, mtt_l1)."""
  g = parser.add_argument_group("trajectory matching (mtt, tesla, mtt_l1)")
  g.add_argument("--buffer", default=None, help="expert buffer folder (python -m experiments.buffers)")
  g.add_argument("--syn-steps", type=common.positive_int, default=None, help="N, student steps (MTT 20-80)")
  g.add_argument("--expert-epochs", type=common.positive_int, default=None, help="M, expert epochs (2-3)")
  g.add_argument("--max-start-epoch", type=common.positive_int, default=None, help="T+, start epochs 0..T+-1")
  g.add_argument("--num-experts", type=common.positive_int, default=None, help="use the first N experts")
  g.add_argument("--batch-syn", type=common.positive_int, default=None, help="synthetic mini-batch per step")
  g.add_argument("--lr-init", type=float, default=None, help="initial learnable student lr (0.01)")
  g.add_argument("--lr-lr", type=float, default=None, help="learning rate of the student lr (1e-5)")
  g.add_argument("--checkpoint-unroll", dest="checkpoint", action="store_const", const=True, default=None,
                 help="re-materialise the student unroll (less memory, more compute)")


ARG_HOOKS.append(_add_trajectory_args)
HOOK_FIELDS.update({"buffer", "syn_steps", "expert_epochs", "max_start_epoch", "num_experts", "batch_syn",
                    "lr_init", "lr_lr", "checkpoint"})


def build_trajectory(args, data, obj_cfg, init, key):
  """MTT / TESLA: the objective on the ``--buffer`` trajectories (metadata checked against the dataset,
  network and ZCA setting; a mismatch is refused) and a pixel set with a learnable student lr ``α₀``
  (stored with the set and used by evaluation); TESLA's ``soft_labels`` come from an expert."""
  from jaxdistill.objectives import trajectory_matching as tm

  spec = data.spec
  if not obj_cfg.buffer:
    raise ValueError(f"--method {args.method} needs --buffer DIR (an expert buffer from "
                     "`python -m experiments.buffers`).")
  if obj_cfg.zca:
    raise ValueError("zca=True: this CLI loads un-whitened data; distil ZCA buffers from Python with "
                     "ZCA-whitened images (jaxdistill.experts.prepare_images).")
  obj_cfg = dataclasses.replace(obj_cfg, dataset=args.dataset)
  objective = tm.make_trajectory_matching(obj_cfg, num_classes=spec.num_classes, image_shape=spec.image_shape,
                                          ipc=args.ipc, name=args.method)
  syn = synthetic.init_pixels(key, init, data.train_x, data.train_y, spec.num_classes, args.ipc,
                              learn_lr=obj_cfg.lr_init)
  if obj_cfg.soft_labels:
    soft = tm.soft_labels_from_buffer(obj_cfg, syn.params["images"], spec.num_classes, spec.image_shape)
    syn = syn._replace(const={**syn.const, "labels": soft})
  return objective, synthetic.PIXELS, syn


for _name in ("mtt", "tesla", "mtt_l1"):
  BUILDERS[_name] = build_trajectory


def _add_kernel_args(parser):
  try:
    parser.add_argument("--learn-labels", dest="learn_labels", action=argparse.BooleanOptionalAction,
                        default=None, help="kip/rfad/frepo (and other learned-label methods): learn soft labels "
                        "(default: the method's)")
  except argparse.ArgumentError:  # another method family already added the flag
    pass


ARG_HOOKS.append(_add_kernel_args)
HOOK_FIELDS.add("learn_labels")


def build_kernel(args, data, obj_cfg, init, key):
  """KIP / RFAD / FRePo: a pixel set with learnable soft labels when ``learn_labels`` (``label_scale ·
  one_hot`` at init); KIP on RGB data with ``zca`` gets a ZCA transform fitted on (up to 10 000) training images,
  applied inside its kernel."""
  spec = data.spec
  zca = None
  if args.method == "kip" and obj_cfg.zca and spec.image_shape[-1] == 3:
    from jaxdistill.data.zca import fit_zca
    zca = fit_zca(data.train_x[:10000], obj_cfg.zca_reg, relative=True)
  kwargs = {"zca": zca} if zca is not None else {}
  factory = objectives.REGISTRY[args.method].factory
  objective = factory(obj_cfg, num_classes=spec.num_classes, image_shape=spec.image_shape, ipc=args.ipc,
                      name=args.method, **kwargs)
  syn = synthetic.init_pixels(key, init, data.train_x, data.train_y, spec.num_classes, args.ipc,
                              learn_labels=obj_cfg.learn_labels, label_scale=obj_cfg.label_scale)
  if args.method == "frepo":  # FRePo's centred (and for K != 10 scaled) initial labels
    syn = objectives.frepo.centre_labels(syn, spec.num_classes, obj_cfg.label_scale)
  if args.method in ("kip", "rfad"):
    syn = _kernel_labels_and_precision(args, data, obj_cfg, syn, zca)
  return objective, synthetic.PIXELS, syn


def _kernel_labels_and_precision(args, data, obj_cfg, syn, zca):
  """KIP / RFAD: learned labels start centred (``label_scale · (one_hot − 1/C)``, KIP.ipynb / RFAD's code) when
  ``centre_labels``; ``dtype="float64"`` turns on ``jax_enable_x64`` for the distillation only (the images and
  data stay float32; :func:`main` turns it off before evaluation); KIP's KRR test accuracy is written to
  ``metrics.json`` (``krr_test_accuracy``) by an output hook."""
  if obj_cfg.centre_labels and "labels" in syn.params:
    labels = syn.params["labels"] - obj_cfg.label_scale / data.spec.num_classes
    syn = syn._replace(params={**syn.params, "labels": labels})
  if obj_cfg.dtype == "float64" and not jax.config.jax_enable_x64:
    jax.config.update("jax_enable_x64", True)
    args.x64_for_solve = True
  args.kernel_eval = (data, obj_cfg, zca)
  return syn


def _kip_output(args, param, syn_state):
  """KIP's own evaluation beside the finite networks: KRR test accuracy with its kernel (``metrics.json``)."""
  data, obj_cfg, zca = args.kernel_eval
  batch = param.render(syn_state)
  n = int(obj_cfg.krr_test_size) or len(data.test_y)
  acc = objectives.kip.krr_test_accuracy(obj_cfg, np.asarray(batch.images, np.float32), np.asarray(batch.labels),
                                         data.test_x[:n], data.test_y[:n], data.spec.num_classes, zca=zca)
  print(f"kip ipc={args.ipc}: KRR test accuracy {acc:.4f} ({n} test images)")
  return None, {"krr_test_accuracy": float(acc), "krr_test_size": n}


OUTPUT_HOOKS["kip"] = _kip_output


for _name in ("kip", "rfad", "frepo"):
  BUILDERS[_name] = build_kernel
  LOOP_DEFAULTS[_name] = {"optimizer": "adam"}
LOOP_DEFAULTS["frepo"] = {"optimizer": "lamb", "lr_schedule": "cosine", "lr_final_fraction": 0.1}  # FRePo: LAMB, cosine to 0.1 lr


def build_bptt(args, data, obj_cfg, init, key):
  """DD / LD (BPTT, :mod:`jaxdistill.objectives.bptt`): DD learns pixels (and the inner lr α, initialised to
  ``inner_lr``, and soft labels with ``--learn-labels``); LD learns the soft labels of fixed real base images
  (``labels_only``), with α learned only when ``learn_lr`` is set. Learned labels are projected as
  ``label_projection`` says (LD: onto the simplex, as LD's code)."""
  from jaxdistill.synthetic.labels import initial_labels

  spec = data.spec
  objective = objectives.make_objective(args.method, obj_cfg, num_classes=spec.num_classes,
                                        image_shape=spec.image_shape, ipc=args.ipc)
  lr = obj_cfg.initial_lr()  # DD: T raw rates, alpha_t = softplus(raw_t) (None when alpha is not learned)
  if args.method == "ld":
    syn = synthetic.init_labels(key, init, data.train_x, data.train_y, spec.num_classes, args.ipc,
                                label_scale=obj_cfg.label_scale, label_start=obj_cfg.label_start, learn_lr=lr)
    return objective, synthetic.labels_only(obj_cfg.label_projection), syn
  syn = synthetic.init_pixels(key, init, data.train_x, data.train_y, spec.num_classes, args.ipc, learn_lr=lr)
  if obj_cfg.learn_labels:
    labels = initial_labels(syn.const["labels"], spec.num_classes, obj_cfg.label_start, obj_cfg.label_scale)
    syn = syn._replace(params={**syn.params, "labels": labels})
    return objective, synthetic.PIXELS._replace(project=synthetic.label_projection(obj_cfg.label_projection)), syn
  return objective, synthetic.PIXELS, syn


for _name in ("dd", "ld"):
  BUILDERS[_name] = build_bptt
  LOOP_DEFAULTS[_name] = {"optimizer": "adam"}  # DD and LD optimise with Adam


from experiments import generative as _generative  # noqa: E402  (glad, gendm, latentdd, haba)

_generative.install(sys.modules[__name__])


if __name__ == "__main__":
  cli.run(main)
