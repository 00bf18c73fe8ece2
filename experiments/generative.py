"""CLI hooks of the generative / factorised parameterisations for :mod:`experiments.distill`.

    python -m experiments.distill --method glad --objective dm --ipc 10 --glad-layer 2 --out runs/glad
    python -m experiments.distill --method gendm --objective dm --ipc 10 --out runs/gendm
    python -m experiments.distill --method latentdd --objective dm --ipc 10 \
        --gen-checkpoint runs/gendm/synthetic.npz --out runs/latentdd
    python -m experiments.distill --method haba --objective dm --ipc 10 --haba-bases 9 --out runs/haba

``--method`` picks the parameterisation, ``--objective`` any registered objective (dm, dc, mtt, ...: objectives
only see images). ``synthetic.npz`` holds the rendered images plus the parameterisation's state (learnable
arrays under their names, e.g. ``features``/``codes``/``bases``/``generator/...``, fixed ones under
``const/...``) and its config in the metadata; a GenDM run's file is also a generator checkpoint
(:func:`jaxdistill.generators.load_generator`). ``metrics.json`` reports ``storage_floats``.
"""
from __future__ import annotations

import copy
import dataclasses
import os

from experiments import names
from experiments.cli import lazy

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
flax = lazy("flax")
jax = lazy("jax")
np = lazy("numpy")
G = lazy("jaxdistill.generators")
objectives = lazy("jaxdistill.objectives")
synthetic = lazy("jaxdistill.synthetic")
glad = lazy("jaxdistill.synthetic.glad")
haba = lazy("jaxdistill.synthetic.haba")

METHODS = names.PARAMETERISATIONS
RANDOM = "random"  # --gen-checkpoint value for a randomly initialised generator
# Generator sizes when no --gen-* flag is given: GLaD's style generator (a random one is stored as a seed),
# and GenDM's decoder small enough for the IPC-1 budget of a 28×28×1 set (7 840 floats).
DEFAULT_GEN = {"glad": ("style", {"widths": (64, 32, 16), "z_dim": 64, "w_dim": 64}),
               "gendm": ("decoder", {"widths": (8, 8, 4), "z_dim": 8, "embed_dim": 4})}


# GLaD's learning rates per objective, (F_n, W+ codes): its --lr_img (the lr of the feature map) and --lr_w in
# GeorgeCazenavette/glad distill_dm.py (10, 0.01), distill_dc.py (1, 0.001; a DSA run) and distill_mtt.py
# (1e4, 10). In each the F_n lr is 10x the pixel lr of the method it wraps (DM 1, DSA 0.1, MTT 1000) and the codes'
# is 0.001x the F_n lr; other objectives get the same ratios (glad_lrs).
GLAD_LRS = {"dm": (10.0, 0.01), "dc": (1.0, 0.001), "dsa": (1.0, 0.001), "mtt": (1e4, 10.0), "tesla": (1e4, 10.0)}
GLAD_CODE_RATIO = 1e-3  # codes lr / F_n lr in every GLAD_LRS entry
GLAD_LAYER = 2   # --glad-layer default
GLAD_CHUNK = 10  # --glad-chunk default


def glad_lrs(objective: str, image_lr: float, lr_features=None, lr_codes=None):
  """GLaD's ``(F_n lr, codes lr)`` for ``objective``: explicit values win; else :data:`GLAD_LRS` (GLaD's code)
  for its objectives, ``10 x image_lr`` for the others; the codes default to ``0.001 x`` the F_n lr."""
  if lr_features is None:
    lr_features = GLAD_LRS[objective][0] if objective in GLAD_LRS else 10.0 * float(image_lr)
  if lr_codes is None:
    lr_codes = GLAD_CODE_RATIO * float(lr_features)
  return float(lr_features), float(lr_codes)


def _ints(text: str):
  return tuple(int(t) for t in text.split(",") if t.strip())


def add_args(parser):
  """Flags of glad / gendm / latentdd / haba."""
  g = parser.add_argument_group("generative parameterisations (glad, gendm, latentdd, haba)")
  g.add_argument("--objective", default=None, choices=sorted(names.OBJECTIVES),
                 help="objective for a parameterisation method (dm, dc, mtt, ...)")
  g.add_argument("--gen-arch", default=None, choices=names.GENERATOR_ARCHS,
                 help="generator (glad: style, gendm: decoder)")
  g.add_argument("--gen-widths", type=_ints, default=None, help="generator widths, e.g. 64,32,16")
  g.add_argument("--gen-z-dim", type=int, default=None, help="latent size z")
  g.add_argument("--gen-w-dim", type=int, default=None, help="style code size w (style generator)")
  g.add_argument("--gen-mapping-layers", type=int, default=None, help="mapping-network layers (style)")
  g.add_argument("--gen-embed-dim", type=int, default=None, help="class-embedding size (decoder)")
  g.add_argument("--gen-checkpoint", default=None,
                 help="generator .npz (save_generator, or a gendm run's synthetic.npz), or 'random' for a randomly "
                      "initialised G; default for glad / latentdd: the trained prior shipped for --dataset if any "
                      "and no --gen-* shape flag is given, else a random G")
  g.add_argument("--gen-seed", type=int, default=None, help="seed of a random generator (default --seed)")
  g.add_argument("--glad-space", default="features", choices=names.GLAD_SPACES, help="GLaD latent space")
  g.add_argument("--glad-layer", type=int, default=None,
                 help=f"GLaD layer n of the feature map F_n (default {GLAD_LAYER})")
  g.add_argument("--glad-init", default="random", choices=names.GLAD_INITS, help="GLaD latent init")
  g.add_argument("--glad-chunk", type=int, default=None,
                 help=f"images per chunk of the decoupled backward (default {GLAD_CHUNK})")
  g.add_argument("--no-decoupled", action="store_true", help="plain autodiff through G (more memory)")
  g.add_argument("--lr-features", type=float, default=None,
                 help="lr of F_n (glad default: GLaD's for the objective, dm 10 / dc, dsa 1 / mtt, tesla 1e4, "
                      "other objectives 10 x their image lr; latentdd: the image lr)")
  g.add_argument("--lr-codes", type=float, default=None,
                 help="lr of the codes (glad default: 0.001 x the F_n lr, or the F_n lr when the codes are all "
                      "that is learned; latentdd: 0.01 x the image lr)")
  g.add_argument("--gen-train-per-class", type=int, default=None, help="GenDM images/class per step (IPC)")
  g.add_argument("--gen-samples-per-class", type=int, default=None,
                 help="GenDM images/class sampled for evaluation (default IPC)")
  g.add_argument("--truncation", type=float, default=1.0, help="GenDM evaluation truncation psi")
  g.add_argument("--ignore-budget", action="store_true", help="allow storage above C x IPC x H x W x ch")
  g.add_argument("--haba-bases", type=int, default=None, help="HaBa bases per class (default: fits budget)")
  g.add_argument("--haba-hallucinators", type=int, default=5, help="HaBa hallucinators H")
  g.add_argument("--haba-width", type=int, default=8, help="HaBa hallucinator width")
  g.add_argument("--haba-basis-size", type=int, default=0, help="HaBa basis side (0: image size)")
  g.add_argument("--lr-hallucinators", type=float, default=None, help="HaBa hallucinator lr (default 0.01)")
  g.add_argument("--haba-pairs", default="sampled", choices=names.HABA_PAIRS,
                 help="HaBa training images: 'sampled' (two random distinct hallucinators per basis) or 'all' "
                      "(every basis x hallucinator pair)")
  g.add_argument("--haba-contrastive", type=float, default=0.1,
                 help="HaBa adversarial contrastive weight lambda_club (0: off)")
  g.add_argument("--haba-extractor-width", type=int, default=128,
                 help="HaBa contrastive feature extractor width (ConvNet, depth 3)")


def checkpoint_path(args, method):
  """The generator file a run loads: ``--gen-checkpoint``; without it, for glad / latentdd the trained prior
  shipped for ``--dataset`` (:func:`jaxdistill.generators.trained_prior`); None for a random generator (also
  ``--gen-checkpoint random``, GLaD's ablation)."""
  if args.gen_checkpoint == RANDOM:
    return None
  if args.gen_checkpoint:
    return args.gen_checkpoint
  if method in ("glad", "latentdd") and not _arch_flags(args):
    return G.trained_prior(args.dataset)
  return None


def _arch_flags(args):
  """The --gen-* architecture flags given explicitly (they ask for a random generator of that shape)."""
  return [f for f in ("gen_arch", "gen_widths", "gen_z_dim", "gen_w_dim", "gen_mapping_layers", "gen_embed_dim")
          if getattr(args, f) is not None]


def _generator(args, spec, method):
  """``(Generator, params, from_file, source)`` from the flags: ``--gen-checkpoint``, else (glad / latentdd) the
  shipped GLaD prior of the dataset, else a generator of the flags' shape — for gendm initialised from the
  shipped prior of exactly that shape if there is one (:func:`jaxdistill.generators.trained_prior` with
  ``gen``; ``--gen-checkpoint random`` opts out), otherwise random (``--gen-seed``)."""
  path = checkpoint_path(args, method)
  if path:
    gen, params, _ = G.load_generator(path)
    return gen, params, True, _shipped(path) if not args.gen_checkpoint else path
  if method == "latentdd":
    raise ValueError("--method latentdd needs --gen-checkpoint (a trained generator, e.g. a gendm run's "
                     f"synthetic.npz); no trained prior ships for {args.dataset!r} (those that do: "
                     f"{list(G.trained_priors())}).")
  arch, cfg = DEFAULT_GEN["glad" if method == "glad" else "gendm"]
  arch = args.gen_arch or arch
  if args.gen_arch and args.gen_arch != DEFAULT_GEN["glad" if method == "glad" else "gendm"][0]:
    cfg = {}
  cfg = dict(cfg)
  for flag, field in (("gen_widths", "widths"), ("gen_z_dim", "z_dim"), ("gen_w_dim", "w_dim"),
                      ("gen_mapping_layers", "mapping_layers"), ("gen_embed_dim", "embed_dim")):
    if getattr(args, flag) is not None:
      cfg[field] = getattr(args, flag)
  h, w, c = spec.image_shape
  gen = G.make_generator(arch, num_classes=spec.num_classes, resolution=h, channels=c, **cfg)
  if method == "gendm" and args.gen_checkpoint != RANDOM:
    prior = G.trained_prior(args.dataset, gen)
    if prior:
      return gen, G.load_generator(prior)[1], False, _shipped(prior)
  seed = args.seed if args.gen_seed is None else args.gen_seed
  return gen, G.init_generator(gen, jax.random.PRNGKey(seed)), False, f"random (seed {seed})"


def _shipped(path):
  return f"trained prior shipped with jaxdistill (jaxdistill/generators/priors/{os.path.basename(path)})"


def _objective(dist, args, data, obj_cfg, init, key, ipc):
  """The ``--objective`` for ``ipc`` training images per class (what the parameterisation renders in a step)
  and, for objectives with their own builder (MTT: expert buffer, learnable lr), the learnable-lr initial value
  it asks for (the builder then sees ``args.ipc = ipc``)."""
  name = dist.objective_name(args)
  spec = data.spec
  if name in dist.BUILDERS:
    if ipc != args.ipc:
      args = copy.copy(args)
      args.ipc = ipc
    objective, _, pix = dist.BUILDERS[name](args, data, obj_cfg, init, key)
    lr = pix.params.get("lr")
    return objective, None if lr is None else float(lr)
  return objectives.make_objective(name, obj_cfg, num_classes=spec.num_classes, image_shape=spec.image_shape,
                                   ipc=ipc), None


def _glad_config(args, method, from_checkpoint):
  space = args.glad_space if (method == "glad" or args.glad_space != "features") else "z"
  layer = GLAD_LAYER if args.glad_layer is None else args.glad_layer
  chunk = GLAD_CHUNK if args.glad_chunk is None else args.glad_chunk
  return glad.GLaDConfig(space=space, layer=layer, init=args.glad_init, chunk=chunk,
                         decoupled=not args.no_decoupled, count_generator=from_checkpoint)


def make_builder(dist, method, record):
  """``build(args, data, obj_cfg, init, key)`` of ``method`` for :data:`experiments.distill.BUILDERS`;
  ``record`` (a dict) receives the metadata the output hook writes."""

  def build(args, data, obj_cfg, init, key):
    spec = data.spec
    nc = spec.num_classes
    record.clear()
    record["objective"] = dist.objective_name(args)
    record["storage_budget_floats"] = synthetic.storage_budget(nc, args.ipc, spec.image_shape)
    if method in ("glad", "latentdd", "gendm"):
      gen, gparams, from_ckpt, source = _generator(args, spec, method)
      record.update(generator=G.config_dict(gen), generator_source=source,
                    generator_floats=G.num_params(gparams))
    if method in ("glad", "latentdd"):
      cfg = _glad_config(args, method, from_ckpt or method == "latentdd")
      record["parameterisation_config"] = dataclasses.asdict(cfg)
      objective, lr = _objective(dist, args, data, obj_cfg, init, key, args.ipc)
      param = (synthetic.glad_parameterisation(gen, cfg) if method == "glad"
               else synthetic.latentdd_parameterisation(gen, cfg))
      syn = synthetic.init_glad(key, gen, gparams, cfg, nc, args.ipc, learn_lr=lr)
      return objective, param, syn
    if method == "gendm":
      cfg = synthetic.GenDMConfig(train_per_class=args.gen_train_per_class or args.ipc,
                                  samples_per_class=args.gen_samples_per_class or args.ipc,
                                  truncation=args.truncation, enforce_budget=not args.ignore_budget)
      record["parameterisation_config"] = dataclasses.asdict(cfg)
      objective, lr = _objective(dist, args, data, obj_cfg, init, key, cfg.train_per_class)
      syn = synthetic.init_gendm(key, gen, cfg, nc, args.ipc, spec.image_shape, gparams=gparams, learn_lr=lr)
      return objective, synthetic.gendm_parameterisation(gen, cfg, nc), syn
    cfg = haba_config(args, spec)
    record["parameterisation_config"] = dataclasses.asdict(cfg)
    objective, lr = _objective(dist, args, data, obj_cfg, init, key, synthetic.train_images_per_class(cfg))
    if cfg.contrastive > 0:
      dsa = _dsa_of(objective.config)
      record["contrastive_augment"] = list(dsa.strategy) if dsa is not None else None
      reg = synthetic.contrastive_regulariser(cfg, nc, spec.image_shape,
                                              augment=None if dsa is None else haba.dsa_augment(dsa))
      objective = objectives.with_regulariser(objective, reg)
    syn = synthetic.init_haba(key, cfg, data.train_x, data.train_y, nc, args.ipc, learn_lr=lr)
    return objective, synthetic.haba_parameterisation(cfg, nc, spec.image_shape), syn

  return build


def _dsa_of(obj_cfg):
  """The objective's DSA settings (its ``dsa`` / ``dsa_strategy`` fields: dm, dc/dsa, mtt, ...), or None when
  it has none or has DSA off: HaBa's contrastive extractor then sees un-augmented pairs."""
  if not getattr(obj_cfg, "dsa", False) or getattr(obj_cfg, "dsa_strategy", None) is None:
    return None
  from jaxdistill.augment import DSAParams
  return DSAParams(strategy=tuple(obj_cfg.dsa_strategy))


def haba_config(args, spec) -> haba.HaBaConfig:
  """HaBa's config; without ``--haba-bases`` the most bases per class that fit the budget with the
  hallucinators (at least 1)."""
  base = haba.HaBaConfig(hallucinators=args.haba_hallucinators, width=args.haba_width,
                         basis_size=args.haba_basis_size, enforce_budget=not args.ignore_budget,
                         pairs=args.haba_pairs, contrastive=args.haba_contrastive,
                         extractor_width=args.haba_extractor_width).validate()
  if args.haba_bases:
    return dataclasses.replace(base, bases_per_class=args.haba_bases)
  return dataclasses.replace(base, bases_per_class=max_bases(base, spec.num_classes, args.ipc, spec.image_shape))


def max_bases(cfg: haba.HaBaConfig, num_classes: int, ipc: int, image_shape) -> int:
  """The most bases per class such that bases + ``cfg.hallucinators`` hallucinators fit
  ``C · ipc · H · W · ch`` floats (at least 1). The contrastive extractor is a training aid, not stored, so it
  does not count."""
  h, w, c = image_shape
  side = cfg.basis_size or h
  basis = side * (side * w // h) * c
  hal = cfg.hallucinators * (9 * c * cfg.width + cfg.width + 2 * cfg.width + 9 * cfg.width * c + c)
  budget = synthetic.storage_budget(num_classes, ipc, image_shape)
  return max(1, (budget - hal) // (num_classes * basis))


def loop_defaults(dist, method):
  """Loop settings of ``method`` layered over the objective's defaults (flags and --config still win)."""

  def defaults(args, loop_kw):
    lr = float(args.lr_img if args.lr_img is not None else loop_kw["lr_img"])  # the effective image lr
    lrs = dict(loop_kw.get("param_lrs") or {})
    if method == "glad":
      lrs["features"], lrs["codes"] = glad_lrs(dist.objective_name(args), lr, args.lr_features, args.lr_codes)
      if args.glad_space != "features" and args.lr_codes is None:
        lrs["codes"] = lrs["features"]  # codes alone: GLaD optimises them with --lr_img (get_optimizer_img)
      return {"param_lrs": lrs}
    if method == "latentdd":
      lrs["codes"] = args.lr_codes if args.lr_codes is not None else 0.01 * lr
      lrs["features"] = args.lr_features if args.lr_features is not None else lr
      return {"param_lrs": lrs}
    if method == "gendm":
      return {"optimizer": "adam", "lr_img": 1e-3}
    lrs["hallucinators"] = args.lr_hallucinators if args.lr_hallucinators is not None else 0.01
    return {"param_lrs": lrs}

  return defaults


def _flatten(tree, prefix=""):
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(tree)), sep="/")
  return {prefix + k: np.asarray(v) for k, v in flat.items()}


def outputs(record):
  """``(extra arrays, extra metadata)`` for ``synthetic.npz``: the parameterisation's state (learnable arrays
  by name, fixed ones under ``const/``) and what the builder recorded (config, generator, budget)."""

  def out(args, param, syn):
    arrays = _flatten({k: v for k, v in syn.params.items() if k != "lr"})
    arrays.update(_flatten({k: v for k, v in syn.const.items() if k != "labels"}, "const/"))
    return arrays, dict(record)

  return out


def install(dist) -> None:
  """Registers the flags, builders, loop defaults and output hooks in the :mod:`experiments.distill` module
  ``dist``."""
  dist.ARG_HOOKS.append(add_args)
  for method in METHODS:
    record = {}
    dist.BUILDERS[method] = make_builder(dist, method, record)
    dist.LOOP_HOOKS[method] = loop_defaults(dist, method)
    dist.OUTPUT_HOOKS[method] = outputs(record)
