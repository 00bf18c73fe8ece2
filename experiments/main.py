"""The main job of ``make run``: distill Fashion-MNIST with DM at IPC 10 and evaluate it next to a random subset.

    python -m experiments.main --out runs/main            # the reduced CPU protocol below (~15 min on 2 cores)
    python -m experiments.main --full --out runs/full     # the paper protocol: DC, DSA, DM, MTT at IPC 1/10/50,
                                                          # in resumable chunks (experiments.full; GPU-sized)

Reduced CPU protocol (stated in ``summary.json``): DM with a ConvNet-3 (width 128) embedding network,
``--iterations`` (200) image updates with ``--real-per-class`` (64) real images per class, initialised from
real images; both the distilled set and a class-balanced random subset of the same size are evaluated by
training ``--eval-models`` (3) fresh ConvNet-128s for ``--eval-epochs`` (100) epochs with DSA, on the whole
test split. Writes ``OUT/dm/`` and ``OUT/random/`` (each: ``synthetic.npz``, ``metrics.json``, ``grid.png``;
DM also ``loss.png``) and ``OUT/summary.json``, and prints both accuracies.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from experiments import cli, common, coreset, distill

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
io = cli.lazy("jaxdistill.io")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="output folder (must be new or empty)")
  p.add_argument("--ipc", type=common.positive_int, default=10)
  p.add_argument("--iterations", type=common.positive_int, default=200)
  p.add_argument("--real-per-class", type=common.positive_int, default=64)
  p.add_argument("--width", type=common.positive_int, default=128, help="width of DM's embedding ConvNet")
  p.add_argument("--eval-models", type=common.positive_int, default=3)
  p.add_argument("--eval-epochs", type=common.positive_int, default=100)
  p.add_argument("--full", action="store_true",
                 help="the paper protocol for DC, DSA, DM and MTT at IPC 1/10/50 in resumable chunks "
                      "(python -m experiments.full --help lists its flags)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--quiet", action="store_true")
  p.add_argument("--extra", default="", help="more flags for both sub-runs, e.g. '--test-size 500 --width 8'")
  return cli.add_debug_flag(p)


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--full" in argv:  # the paper protocol has its own runner and flags
    from experiments import full
    return full.main([a for a in argv if a != "--full"])
  args = build_parser().parse_args(argv)
  io.prepare_out_dir(args.out, overwrite=args.overwrite)
  shared = ["--dataset", "fashion_mnist", "--ipc", str(args.ipc), "--eval-models", str(args.eval_models),
            "--eval-epochs", str(args.eval_epochs), "--seed", str(args.seed)] + args.extra.split()
  if args.quiet:
    shared.append("--quiet")
  if args.overwrite:
    shared.append("--overwrite")
  start = time.perf_counter()
  dm = distill.main(["--method", "dm", "--iterations", str(args.iterations), "--real-per-class",
                     str(args.real_per_class), "--width", str(args.width), "--checkpoint-every", "50",
                     "--out", os.path.join(args.out, "dm")] + shared)
  rnd = coreset.main(["--method", "random", "--out", os.path.join(args.out, "random")] + shared)
  protocol = (f"DM, ConvNet-3 (width {args.width}) embedding, {args.iterations} iterations, {args.real_per_class} real images/class, "
              f"init real; evaluation: {args.eval_models} fresh ConvNets x {args.eval_epochs} epochs, DSA, "
              f"SGD 0.01 momentum 0.9; reduced CPU protocol")
  summary = {"dataset": "fashion_mnist", "ipc": args.ipc, "protocol": protocol,
             "dm_accuracy_mean": dm["test_accuracy_mean"], "dm_accuracy_std": dm["test_accuracy_std"],
             "random_accuracy_mean": rnd["test_accuracy_mean"], "random_accuracy_std": rnd["test_accuracy_std"],
             "dm_seconds_per_iteration": dm["seconds_per_iteration"], "seconds": time.perf_counter() - start,
             "device": common.device_summary()}
  io.save_json(os.path.join(args.out, "summary.json"), summary)
  print(f"\nFashion-MNIST, IPC {args.ipc} ({protocol}):\n"
        f"  DM distilled set: {100 * dm['test_accuracy_mean']:.2f} ± {100 * dm['test_accuracy_std']:.2f} %\n"
        f"  random subset:    {100 * rnd['test_accuracy_mean']:.2f} ± {100 * rnd['test_accuracy_std']:.2f} %\n"
        f"  images and metrics in {args.out}/ ({summary['seconds']:.0f} s)")
  return summary


if __name__ == "__main__":
  cli.run(main)
