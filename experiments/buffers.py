"""Train expert trajectories for trajectory matching (MTT / TESLA) and write an expert buffer folder.

    python -m experiments.buffers --dataset fashion_mnist --experts 10 --experts-per-shard 5 --epochs 20 \
        --out buffers/fmnist_convnet

Experts: ConvNet (``--arch``/``--width``/``--depth``), SGD ``--lr`` 0.01 without momentum or weight decay,
batch 256, per-image DSA (``--no-dsa`` to turn off), optional ``--zca``; every shard of ``--experts-per-shard``
experts is trained in one vmapped program, split across the ``--devices`` mesh (``--distributed`` as the other
CLIs), and written when done (format: :mod:`jaxdistill.experts`). Prints the experts' test accuracy after every
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


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--train-size", type=common.positive_int, default=None,
                 help="train on the first N training images (default: the whole split)")
  p.add_argument("--test-size", type=common.positive_int, default=None,
                 help="report accuracy on the first N test images (default: all)")
  p.add_argument("--experts", type=common.positive_int, default=100, help="number of expert trajectories")
  p.add_argument("--experts-per-shard", type=common.positive_int, default=10,
                 help="experts trained together (vmap) and stored per file")
  p.add_argument("--epochs", type=common.positive_int, default=50, help="epochs per expert")
  p.add_argument("--lr", type=float, default=0.01, help="expert SGD learning rate (no momentum)")
  p.add_argument("--batch-size", type=common.positive_int, default=256)
  p.add_argument("--arch", default="convnet", choices=names.ARCHITECTURES,
                 help="expert network (not a batch-norm one: jaxdistill.experts.ExpertConfig)")
  p.add_argument("--width", type=common.positive_int, default=128)
  p.add_argument("--depth", type=common.positive_int, default=None)
  p.add_argument("--no-dsa", action="store_true", help="train experts without augmentation")
  p.add_argument("--zca", action="store_true", help="ZCA-whiten the data (MTT on RGB datasets)")
  p.add_argument("--zca-reg", type=float, default=0.1)
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


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  mesh = common.setup_devices(args)  # --distributed first (before JAX starts), then the --devices mesh
  spec = data_lib.get_spec(args.dataset)
  config = experts.ExpertConfig(
      arch=args.arch, width=args.width, depth=args.depth, num_experts=args.experts,
      experts_per_shard=args.experts_per_shard, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
      dsa=not args.no_dsa, dsa_strategy=augment.DIGIT_STRATEGY if spec.digits else augment.DEFAULT_STRATEGY,
      zca=args.zca, zca_reg=args.zca_reg, seed=args.seed).validate()
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
                                 deadline=deadline)
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
