"""Coreset baselines from the command line.

    python -m experiments.coreset --method herding --dataset fashion_mnist --ipc 10 \
        --eval-models 5 --eval-epochs 300 --out runs/herding_ipc10

Selects ``ipc`` real images per class (random, herding, k-center or forgetting), evaluates them with the
standard protocol and writes ``synthetic.npz``, ``metrics.json`` and ``grid.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import time

from experiments import cli, common, names

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
jax = cli.lazy("jax")
coreset = cli.lazy("jaxdistill.coreset")
io = cli.lazy("jaxdistill.io")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--method", required=True, choices=names.CORESET_METHODS)
  parser.add_argument("--feature-width", type=common.positive_int, default=names.FEATURE_WIDTH,
                      help="width of the ConvNet trained for features / forgetting statistics")
  parser.add_argument("--feature-epochs", type=common.positive_int, default=names.FEATURE_EPOCHS)
  parser.add_argument("--feature-examples", type=common.positive_int, default=None,
                      help="train the feature network on a random subset of this many examples")
  return common.add_common_args(parser)


def main(argv=None) -> dict:
  args = build_parser().parse_args(argv)
  io.prepare_out_dir(args.out, overwrite=args.overwrite)
  start = time.perf_counter()
  data = common.load_dataset(args)
  key = jax.random.PRNGKey(args.seed)
  k_sel, k_eval = jax.random.split(key)
  config = coreset.FeatureNetConfig(width=args.feature_width, epochs=args.feature_epochs,
                                    max_examples=args.feature_examples)
  positions = coreset.select(args.method, k_sel, data.train_x, data.train_y, data.spec.num_classes, args.ipc,
                             config=config, progress=not args.quiet).reshape(-1)
  select_seconds = time.perf_counter() - start
  images, labels = data.train_x[positions], data.train_y[positions]
  result = common.evaluate_set(args, data, images, labels, k_eval)
  metadata = {"method": args.method, "dataset": args.dataset, "ipc": args.ipc, "seed": args.seed,
              "kind": "coreset", "train_positions": positions.tolist()}
  if args.method != "random":
    metadata["feature_net"] = {"width": config.width, "epochs": config.epochs,
                               "max_examples": config.max_examples}
  metrics = {**common.eval_metrics(args, result), "selection_seconds": select_seconds,
             "seconds": time.perf_counter() - start, "device": common.device_summary()}
  payload = common.write_outputs(args.out, data, images, labels, metrics, metadata)
  print(f"{args.method} ipc={args.ipc}: {result}  -> {args.out}")
  return payload


if __name__ == "__main__":
  cli.run(main)
