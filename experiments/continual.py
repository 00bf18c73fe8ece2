"""Class-incremental learning with a condensed memory (GDumb-style), from the command line.

    python -m experiments.continual --methods dm,herding,random --seeds 0,1,2 --ipc 10 \
        --dm-iterations 200 --dm-real-per-class 64 --eval-epochs 300 --out runs/continual

Fashion-MNIST arrives in 5 steps of 2 classes (order drawn from each seed); each step condenses the new
classes into ``--ipc`` images per class (DM, herding or random) and retrains ``--eval-models`` ConvNets from
scratch on the whole memory (:mod:`jaxdistill.apps.continual`). Writes ``results.json`` (per seed and step:
classes, memory size, accuracies over the seen classes; per method: mean ± std over seeds), ``accuracy.png``
and ``table.md``.
"""
from __future__ import annotations

import argparse
import os
import time

from experiments import cli, common, names

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
io = cli.lazy("jaxdistill.io")
continual = cli.lazy("jaxdistill.apps.continual")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--methods", default="dm,herding,random",
                      help="comma-separated from " + ",".join(names.CONTINUAL_METHODS))
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (class order and randomness)")
  parser.add_argument("--num-steps", type=common.positive_int, default=5)
  parser.add_argument("--classes-per-step", type=common.positive_int, default=2)
  parser.add_argument("--dm-iterations", type=common.positive_int, default=200,
                      help="DM iterations per step (paper 20000; reduced default)")
  parser.add_argument("--dm-real-per-class", type=common.positive_int, default=64)
  parser.add_argument("--dm-width", type=common.positive_int, default=128)
  parser.add_argument("--feature-epochs", type=common.positive_int, default=3,
                      help="epochs of the herding feature network (on the step's data)")
  parser.add_argument("--feature-max-examples", type=common.positive_int, default=None)
  parser.add_argument("--train-size", type=common.positive_int, default=None,
                      help="use the first N training images (default: all)")
  common.add_common_args(parser, ipc_required=False)
  parser.set_defaults(ipc=10, eval_epochs=300, eval_models=5)  # the apps' own (shorter) evaluation
  return parser


def parse_list(text: str, kind, name: str, accepted=None):
  values = [kind(v.strip()) for v in text.split(",") if v.strip()]
  if not values:
    raise ValueError(f"--{name} must name at least one value.")
  if accepted is not None:
    for v in values:
      if v not in accepted:
        raise ValueError(f"--{name} entries must be in {list(accepted)}, got {v!r}.")
  return values


def main(argv=None) -> dict:
  args = common.resolve_eval(build_parser().parse_args(argv), "dm")
  methods = parse_list(args.methods, str, "methods", names.CONTINUAL_METHODS)
  seeds = parse_list(args.seeds, int, "seeds")
  mesh = common.setup_devices(args)
  io.prepare_out_dir(args.out, overwrite=args.overwrite)
  data = common.load_dataset(args)
  train_x, train_y = data.train_x, data.train_y
  if args.train_size:
    train_x, train_y = train_x[:args.train_size], train_y[:args.train_size]
  start = time.perf_counter()
  runs, summaries = {}, {}
  for method in methods:
    cfg = continual.ContinualConfig(
        method=method, memory_per_class=args.ipc, num_steps=args.num_steps,
        classes_per_step=args.classes_per_step, dm_iterations=args.dm_iterations,
        dm_real_per_class=args.dm_real_per_class, dm_width=args.dm_width, feature_epochs=args.feature_epochs,
        feature_max_examples=args.feature_max_examples, eval_arch=args.eval_arch, eval_width=args.eval_width,
        eval_models=args.eval_models, eval_epochs=args.eval_epochs, eval_dsa=not args.no_eval_dsa).validate()
    results = [continual.run_continual(s, train_x, train_y, data.test_x, data.test_y, data.spec.num_classes,
                                       cfg, digits=data.spec.digits, mesh=mesh, progress=not args.quiet,
                                       log=None if args.quiet else print) for s in seeds]
    runs[method] = [r.to_dict() for r in results]
    summaries[method] = continual.summarize(results)
  title = f"class-incremental {args.dataset}, {args.ipc} images/class"
  continual.save_plot(os.path.join(args.out, "accuracy.png"), summaries, title)
  header = "| method | " + " | ".join(f"step {t + 1}" for t in range(args.num_steps)) + " |"
  lines = [header, "|---" * (args.num_steps + 1) + "|"]
  for m, s in summaries.items():
    lines.append(f"| {m} | " + " | ".join(f"{100 * a:.2f} ± {100 * d:.2f}" for a, d in zip(s["mean"], s["std"]))
                 + " |")
  table = "\n".join(lines)
  io.save_text(os.path.join(args.out, "table.md"), f"# {title}\n\n{table}\n")
  payload = {"dataset": args.dataset, "memory_per_class": args.ipc, "num_steps": args.num_steps,
             "classes_per_step": args.classes_per_step, "seeds": seeds, "methods": methods,
             "dm_iterations": args.dm_iterations, "dm_real_per_class": args.dm_real_per_class,
             "dm_width": args.dm_width, "eval_arch": args.eval_arch, "eval_width": args.eval_width,
             "eval_models": args.eval_models, "eval_epochs": args.eval_epochs, "eval_dsa": not args.no_eval_dsa,
             "train_size": len(train_y), "test_size": len(data.test_y), "summary": summaries, "runs": runs,
             "seconds": time.perf_counter() - start, "device": common.device_summary()}
  io.save_json(os.path.join(args.out, "results.json"), payload)
  print(table)
  return payload


if __name__ == "__main__":
  cli.run(main)
