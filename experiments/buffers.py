"""Train expert trajectories for trajectory matching (MTT / TESLA) and write an expert buffer folder.

    python -m experiments.buffers --dataset fashion_mnist --experts 10 --experts-per-shard 5 --epochs 20 \
        --out buffers/fmnist_convnet

    python -m experiments.buffers --preset cpu --out buffers/fmnist_cpu   # the recipe of the cpu MTT preset

    python -m experiments.buffers --flat --out buffers/fmnist_flat   # FTD's flat experts (GSAM, rho 0.01)

Experts: ConvNet (``--arch``/``--width``/``--depth``), SGD ``--lr`` 0.01 without momentum or weight decay,
batch 256, per-image DSA (``--no-dsa`` to turn off), optional ``--zca``; ``--flat`` / ``--sam-rho RHO`` train
FTD's flat experts (sharpness-aware steps, GSAM α 0.4 with ASAM scaling as FTD's ``buffer_FTD.py``; ρ 0.01 for
``--flat``, docs/ftd_itgan.md); ``--preset paper|cpu`` fills the flags
not given from ``jaxdistill/presets/buffers/experts.json`` (every value with its source, kept in buffer.json);
every shard of ``--experts-per-shard`` experts is trained in one vmapped program on accelerators (split across
the ``--devices`` mesh, ``--distributed`` as the other CLIs) and one expert after another on CPU, where that is
faster (``--vmap-experts/--no-vmap-experts`` to choose; same trajectories), and written when done (format: :mod:`jaxdistill.experts`). Prints the experts' test accuracy after every
epoch; ``buffer.json`` keeps them (``test_accuracy_mean`` per epoch and per expert in ``shards``).
"""
from __future__ import annotations

import argparse
import sys
import time

from experiments import cli, common, names

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
experts = cli.lazy("jaxdistill.experts")
io = cli.lazy("jaxdistill.io")
augment = cli.lazy("jaxdistill.augment")
data_lib = cli.lazy("jaxdistill.data")


# The recipe when neither a flag nor --preset sets an option (MTT's buffer.py defaults, as ExpertConfig).
DEFAULTS = {"num_experts": 100, "experts_per_shard": 10, "epochs": 50, "lr": 0.01, "batch_size": 256,
            "width": 128, "depth": None, "dsa": True, "zca": False, "zca_reg": 0.1, "train_size": None}
# --flat: FTD's rho (AngusDujw/FTD-distillation buffer/run_buffer.sh: --rho_max=0.01 --rho_min=0.01). Kept here,
# not read from jaxdistill.experts, so --help answers without importing JAX.
FLAT_SAM_RHO = 0.01


def non_negative_float(text: str) -> float:
  """argparse type: a float >= 0."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
  if not value >= 0:
    raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
  return value


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--preset", default=None, choices=names.BUFFER_PRESETS,
                 help="a buffer recipe from jaxdistill/presets/buffers/experts.json: 'paper' (MTT: 100 ConvNet-128 "
                      "experts x 50 epochs) or 'cpu' (a buffer 2 cores build in one benchmark run); explicit flags "
                      "win over it")
  p.add_argument("--train-size", type=common.positive_int, default=None,
                 help="train on the first N training images (default: the whole split)")
  p.add_argument("--test-size", type=common.positive_int, default=None,
                 help="report accuracy on the first N test images (default: all)")
  p.add_argument("--experts", dest="num_experts", type=common.positive_int, default=None,
                 help=f"number of expert trajectories (default {DEFAULTS['num_experts']})")
  p.add_argument("--experts-per-shard", type=common.positive_int, default=None,
                 help=f"experts trained together and stored per file (default {DEFAULTS['experts_per_shard']})")
  p.add_argument("--vmap-experts", action=argparse.BooleanOptionalAction, default=None,
                 help="step a shard's experts in one vmapped program (default: on accelerators and with "
                      "--devices; one expert at a time on CPU, measured faster there; same trajectories)")
  p.add_argument("--epochs", type=common.positive_int, default=None,
                 help=f"epochs per expert (default {DEFAULTS['epochs']})")
  p.add_argument("--lr", type=float, default=None, help="expert SGD learning rate, no momentum (default 0.01)")
  p.add_argument("--batch-size", type=common.positive_int, default=None, help="default 256")
  p.add_argument("--arch", default="convnet", choices=names.ARCHITECTURES,
                 help="expert network (not a batch-norm one: jaxdistill.experts.ExpertConfig)")
  p.add_argument("--width", type=common.positive_int, default=None, help="default 128")
  p.add_argument("--depth", type=common.positive_int, default=None)
  p.add_argument("--no-dsa", dest="dsa", action="store_const", const=False, default=None,
                 help="train experts without augmentation")
  p.add_argument("--zca", dest="zca", action="store_const", const=True, default=None,
                 help="ZCA-whiten the data (MTT on RGB datasets), fitted on the [0, 1] images as MTT")
  p.add_argument("--zca-reg", type=float, default=None, help="default 0.1")
  p.add_argument("--flat", action="store_true",
                 help=f"FTD's flat experts: sharpness-aware (GSAM) steps with rho {FLAT_SAM_RHO} unless --sam-rho "
                      "says otherwise (docs/ftd_itgan.md)")
  p.add_argument("--sam-rho", type=non_negative_float, default=None,
                 help="rho of sharpness-aware expert training (FTD: 0.01; 0 = plain SGD, the default without "
                      "--flat); a buffer of another rho is another buffer")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="buffer folder (must be new or empty)")
  p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
  p.add_argument("--resume", action="store_true",
                 help="keep the shards already in --out (same flags required) and train the missing ones")
  p.add_argument("--time-budget", type=float, default=None,
                 help="start no new shard after this many seconds; run again with --resume to continue")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $JAXDISTILL_DATA_DIR)")
  p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
  common.add_device_args(p)  # a shard's experts split across the --devices mesh
  return cli.add_debug_flag(p)


def resolve_recipe(args) -> dict:
  """Fills the recipe options left unset (None) from ``--preset`` (:func:`jaxdistill.presets.resolve_buffer`),
  then from :data:`DEFAULTS`; explicit flags win. Returns ``{option: source}`` of the preset values used."""
  sources = {}
  if args.preset is not None:
    from jaxdistill import presets
    preset = presets.resolve_buffer(args.preset, args.dataset)
    for key, value in preset.values.items():
      if getattr(args, key) is None:
        setattr(args, key, value)
        sources[key] = preset.sources[key]
  for key, value in DEFAULTS.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return sources


def sam_rho(args) -> float:
  """``--sam-rho`` if given, else :data:`FLAT_SAM_RHO` with ``--flat``, else 0 (plain SGD)."""
  if args.sam_rho is not None:
    return float(args.sam_rho)
  return FLAT_SAM_RHO if args.flat else 0.0


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  mesh = common.setup_devices(args)  # --distributed first (before JAX starts), then the --devices mesh
  spec = data_lib.get_spec(args.dataset)
  sources = resolve_recipe(args)
  config = experts.ExpertConfig(
      arch=args.arch, width=args.width, depth=args.depth, num_experts=args.num_experts,
      experts_per_shard=args.experts_per_shard, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
      dsa=args.dsa, dsa_strategy=augment.DIGIT_STRATEGY if spec.digits else augment.DEFAULT_STRATEGY,
      zca=args.zca, zca_reg=args.zca_reg, seed=args.seed, sam_rho=sam_rho(args),
      vmap_experts=args.vmap_experts).validate()
  if args.time_budget is not None and not args.time_budget > 0:
    raise ValueError(f"--time-budget must be > 0 seconds, got {args.time_budget}.")
  deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
  io.prepare_out_dir(args.out, overwrite=args.overwrite, resume=args.resume)
  split = "train" if args.train_size is None else f"train[:{args.train_size}]"
  backend = common.data_backend(args)
  train_x, train_y, _ = data_lib.load(args.dataset, split, data_dir=args.data_dir, backend=backend)
  test_x, test_y, _ = data_lib.load(args.dataset, "test", data_dir=args.data_dir, backend=backend)
  if args.test_size is not None:
    test_x, test_y = test_x[:args.test_size], test_y[:args.test_size]
  try:
    meta = experts.train_experts(config, train_x, train_y, test_x, test_y, spec.num_classes, args.out,
                                 dataset=args.dataset, split=split, progress=not args.quiet,
                                 log=None if args.quiet else print, mesh=mesh, resume=args.resume,
                                 deadline=deadline,
                                 extra_metadata={"preset": args.preset, "preset_sources": sources})
  except KeyboardInterrupt as e:  # Ctrl-C: the finished shards stay; say how to continue
    e.kept = f"the finished shards in {args.out}"
    e.resume_command = cli.resume_command("experiments.buffers", argv)
    raise
  if not meta["complete"]:
    print(f"stopped at the time budget: {meta['shards_done']} of {meta['shards']} shards in {args.out}; "
          "continue with the same command and --resume.")
    return meta
  accs = ", ".join(f"{100 * a:.2f}" for a in meta["test_accuracy_mean"])
  print(f"{meta['num_experts']} experts x {meta['epochs']} epochs ({meta['seconds']:.0f} s) -> {args.out}\n"
        f"mean expert test accuracy per epoch (%), epoch 0 = initialisation: {accs}")
  return meta


if __name__ == "__main__":
  cli.run(main)
