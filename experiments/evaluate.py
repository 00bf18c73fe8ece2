"""Evaluate a saved synthetic set across architectures.

    python -m experiments.evaluate --synthetic runs/dm/synthetic.npz \
        --arch convnet,mlp,lenet,alexnet,vgg11,resnet18 --eval-models 5 --eval-epochs 300 --out runs/dm_xarch

Trains ``--eval-models`` fresh networks of each architecture on the set (vmapped) with the evaluation protocol of
the method that made the set (its metadata's ``method``; ``--eval-protocol`` picks another): epochs, DSA, label
rule, and the set's learned lr only where that method evaluates with it (MTT/TESLA; ``--eval-learned-lr`` opts in) and writes ``results.json``, ``table.md`` (accuracy mean ± std per
architecture) and ``heatmap.png``.
"""
from __future__ import annotations

import argparse
import os

from experiments import cli, common, names

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
jax = cli.lazy("jax")
np = cli.lazy("numpy")
io = cli.lazy("jaxdistill.io")
evaluation = cli.lazy("jaxdistill.evaluate")
data_lib = cli.lazy("jaxdistill.data")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--synthetic", required=True, help="a synthetic.npz written by a jaxdistill CLI")
  parser.add_argument("--arch", default="convnet", help="comma-separated names from " +
                      ",".join(names.ARCHITECTURES))
  common.add_common_args(parser, ipc_required=False)
  parser.set_defaults(dataset=None)
  return parser


def parse_archs(text: str):
  """Splits ``"convnet,mlp"`` and checks every name; ``ValueError`` names the accepted values."""
  archs = [a.strip() for a in text.split(",") if a.strip()]
  if not archs:
    raise ValueError(f"--arch must name at least one of {list(names.ARCHITECTURES)}.")
  for a in archs:
    if a not in names.ARCHITECTURES:
      raise ValueError(f"--arch entries must be in {list(names.ARCHITECTURES)}, got {a!r}.")
  return archs


def save_heatmap(path: str, results, title: str) -> str:
  """A one-row heat map of mean accuracy (%) per architecture, annotated with mean ± std."""
  names = list(results)
  means = np.array([[100 * results[a].mean for a in names]])
  fig, ax = io.new_figure((1.4 * len(names) + 1.5, 2.2))
  im = ax.imshow(means, cmap="viridis", aspect="auto", vmin=0, vmax=100)
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_yticks([0], ["accuracy"])
  for j, a in enumerate(names):
    ax.text(j, 0, f"{100 * results[a].mean:.1f}\n±{100 * results[a].std:.1f}", ha="center", va="center",
            color="white" if means[0, j] < 60 else "black", fontsize=9)
  fig.colorbar(im, ax=ax, label="test accuracy (%)")
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  return io.save_figure(path, fig)


def main(argv=None) -> dict:
  args = build_parser().parse_args(argv)
  archs = parse_archs(args.arch)
  saved = io.load_synthetic(args.synthetic)
  meta = saved["metadata"]
  args.dataset = args.dataset or meta.get("dataset")
  if not args.dataset:
    raise ValueError(f"{args.synthetic!r} has no dataset in its metadata; pass --dataset.")
  spec = data_lib.get_spec(args.dataset)
  io.validate_synthetic(saved, spec.image_shape, spec.num_classes, repr(args.synthetic), args.dataset)
  common.setup_devices(args)  # --distributed / --devices: evaluation networks split across devices
  io.prepare_out_dir(args.out, overwrite=args.overwrite)
  data = common.load_dataset(args)
  common.resolve_eval(args, meta.get("method"))
  lr = saved["lr"] if (args.eval_learned_lr and saved["lr"] is not None) else None
  keys = jax.random.split(jax.random.PRNGKey(args.seed), len(archs))
  results = {a: common.evaluate_set(args, data, saved["images"], saved["labels"], k, lr=lr, arch=a)
             for a, k in zip(archs, keys)}
  title = f"{meta.get('method', '?')} · {args.dataset} · ipc {meta.get('ipc', '?')}"
  table = evaluation.results_table(results)
  io.save_text(os.path.join(args.out, "table.md"), f"# {title}\n\n{table}\n")
  save_heatmap(os.path.join(args.out, "heatmap.png"), results, title)
  payload = {"synthetic": os.path.abspath(args.synthetic), "source_metadata": meta, "dataset": args.dataset,
             "eval_models": args.eval_models, "eval_epochs": args.eval_epochs, "eval_dsa": bool(args.eval_dsa),
             "eval_protocol": args.eval_protocol, "eval_labels": args.eval_labels,
             "learned_lr": None if lr is None else np.asarray(lr).tolist(),
             "results": {a: r.to_dict() for a, r in results.items()}, "device": common.device_summary()}
  io.save_json(os.path.join(args.out, "results.json"), payload)
  print(table)
  return payload


if __name__ == "__main__":
  cli.run(main)
