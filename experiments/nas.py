"""Architecture search with proxy training sets, from the command line.

    python -m experiments.nas --synthetic runs/dm_ipc10/synthetic.npz --num-archs 24 --ipc 10 \
        --proxy-epochs 300 --early-epochs 1 --full-size 10000 --full-epochs 5 --val-size 2000 --out runs/nas

Samples ``--num-archs`` ConvNets from the space ``--widths × --depths × --norms × --activations ×
--poolings`` and ranks them by validation accuracy after training on each proxy — the distilled set
(``--synthetic``, optional), a random real subset of ``--ipc`` images per class, and the whole training data
for ``--early-epochs`` — and on the full data (``--full-size`` images, ``--full-epochs``; the ground truth).
Validation images are the first ``--val-size`` test images. Writes ``results.json`` (every architecture's
accuracies and seconds; per proxy the Spearman correlation with the ground truth, its top-1 pick and time),
``table.md`` and ``scatter.png`` (:mod:`jaxdistill.apps.nas`).
"""
from __future__ import annotations

import argparse
import os
import time

from experiments import cli, common
from experiments.names import ACTIVATIONS, NORMS, POOLINGS

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
jax = cli.lazy("jax")
np = cli.lazy("numpy")
io = cli.lazy("jaxdistill.io")
nas = cli.lazy("jaxdistill.apps.nas")
augment = cli.lazy("jaxdistill.augment")
data_lib = cli.lazy("jaxdistill.data")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--synthetic", default=None, help="a distilled synthetic.npz to use as a proxy")
  parser.add_argument("--num-archs", type=common.positive_int, default=24)
  parser.add_argument("--widths", default="16,32,64")
  parser.add_argument("--depths", default="1,2,3")
  parser.add_argument("--norms", default="instancenorm,batchnorm,none")
  parser.add_argument("--activations", default=",".join(ACTIVATIONS))
  parser.add_argument("--poolings", default=",".join(POOLINGS))
  parser.add_argument("--proxy-epochs", type=common.positive_int, default=300,
                      help="epochs on the small proxies (distilled / random subset)")
  parser.add_argument("--early-epochs", type=int, default=1,
                      help="epochs of the whole-data proxy (0: no such proxy)")
  parser.add_argument("--full-size", type=common.positive_int, default=None,
                      help="training images of the ground truth (default: all)")
  parser.add_argument("--full-epochs", type=common.positive_int, default=5)
  parser.add_argument("--val-size", type=common.positive_int, default=2000)
  parser.add_argument("--models-per-arch", type=common.positive_int, default=1,
                      help="networks per architecture (vmapped)")
  common.add_common_args(parser, ipc_required=False)
  parser.set_defaults(ipc=10, eval_epochs=300, eval_models=5)  # the apps' own (shorter) evaluation
  return parser


def _split(text, kind, name, accepted=None):
  values = [kind(v.strip()) for v in text.split(",") if v.strip()]
  if not values:
    raise ValueError(f"--{name} must name at least one value.")
  for v in values:
    if accepted is not None and v not in accepted:
      raise ValueError(f"--{name} entries must be in {list(accepted)}, got {v!r}.")
  return values


def save_scatter(path, archs, proxy_scores, full_scores, title=""):
  """Proxy vs full-data accuracy (%) of every architecture, one marker per proxy."""
  fig, ax = io.new_figure((5.5, 4.5))
  for name, s in proxy_scores.items():
    rho = nas.spearman(s.accuracies, full_scores.accuracies)
    ax.scatter(100 * s.accuracies, 100 * full_scores.accuracies, s=18, label=f"{name} (ρ={rho:.2f})")
  ax.set_xlabel("proxy validation accuracy (%)")
  ax.set_ylabel("full-data validation accuracy (%)")
  ax.set_title(title or f"{len(archs)} architectures", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return io.save_figure(path, fig)


def main(argv=None) -> dict:
  args = common.resolve_eval(build_parser().parse_args(argv), "dm")
  space = nas.search_space(_split(args.widths, int, "widths"), _split(args.depths, int, "depths"),
                           _split(args.norms, str, "norms", NORMS),
                           _split(args.activations, str, "activations", ACTIVATIONS),
                           _split(args.poolings, str, "poolings", POOLINGS))
  saved = None
  if args.synthetic:  # checked against the dataset before any work
    saved = io.load_synthetic(args.synthetic)
    spec = data_lib.get_spec(args.dataset)
    io.validate_synthetic(saved, spec.image_shape, spec.num_classes, repr(args.synthetic), args.dataset)
  mesh = common.setup_devices(args)
  io.prepare_out_dir(args.out, overwrite=args.overwrite)
  data = common.load_dataset(args)
  nc = data.spec.num_classes
  key = jax.random.PRNGKey(args.seed)
  k_arch, k_sub, k_full, k_search = jax.random.split(key, 4)
  archs = nas.sample_architectures(k_arch, space, args.num_archs)
  val_x, val_y = data.test_x[:args.val_size], data.test_y[:args.val_size]
  proxies = {}
  if saved is not None:
    proxies["distilled"] = nas.TrainSet(saved["images"], saved["labels"], args.proxy_epochs)
  pos = data_lib.random_subset(k_sub, data.train_y, nc, args.ipc).reshape(-1)
  proxies["random"] = nas.TrainSet(data.train_x[pos], data.train_y[pos], args.proxy_epochs)
  if args.full_size and args.full_size < len(data.train_y):
    idx = np.sort(np.asarray(jax.random.permutation(k_full, len(data.train_y))[:args.full_size]))
    full_x, full_y = data.train_x[idx], data.train_y[idx]
  else:
    full_x, full_y = data.train_x, data.train_y
  if args.early_epochs > 0:
    proxies["early"] = nas.TrainSet(full_x, full_y, args.early_epochs)
  full = nas.TrainSet(full_x, full_y, args.full_epochs)
  dsa = None if args.no_eval_dsa else augment.default_params(digits=data.spec.digits)
  start = time.perf_counter()
  scores, full_scores, reports = nas.run_search(
      archs, proxies, full, k_search, val_images=val_x, val_labels=val_y, num_classes=nc,
      num_models=args.models_per_arch, dsa=dsa, mesh=mesh, log=None if args.quiet else print)
  table = nas.report_table(reports)
  io.save_text(os.path.join(args.out, "table.md"), f"# NAS proxies, {len(archs)} architectures\n\n{table}\n")
  save_scatter(os.path.join(args.out, "scatter.png"), archs, scores, full_scores)
  payload = {
      "dataset": args.dataset, "num_archs": len(archs), "space_size": len(space),
      "architectures": [a.name for a in archs], "val_size": len(val_y), "full_size": len(full_y),
      "full_epochs": args.full_epochs, "proxy_epochs": args.proxy_epochs, "early_epochs": args.early_epochs,
      "ipc": args.ipc, "models_per_arch": args.models_per_arch, "dsa": dsa is not None,
      "synthetic": None if not args.synthetic else os.path.abspath(args.synthetic),
      "scores": {n: {"accuracies": s.accuracies.tolist(), "seconds": s.seconds.tolist()}
                 for n, s in [*scores.items(), ("full", full_scores)]},
      "reports": [r._asdict() for r in reports], "seconds": time.perf_counter() - start,
      "device": common.device_summary()}
  io.save_json(os.path.join(args.out, "results.json"), payload)
  print(table)
  return payload


if __name__ == "__main__":
  cli.run(main)
