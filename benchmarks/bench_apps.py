"""Benchmarks of the applications: class-incremental learning, the NAS proxy and a cross-architecture table.

Rows (``run(quick) -> list[dict]``), all on real Fashion-MNIST with reduced CPU budgets stated in each row's
``protocol`` (the papers' 1000-epoch learners and 20 000-iteration DM runs do not fit a shared 2-core machine;
on it XLA compilation of each new network program dominates, so the number of distinct programs is kept small):

* ``continual``: one row per memory method (DM, herding, random), k = 10 images per class, 5 steps of 2
  classes, 3 seeds (class orders); accuracy on the seen classes after the last step (mean ± std over seeds) and
  every step's mean ± std in ``per_step`` (also ``table.md`` and ``accuracy.png`` under
  ``benchmarks/results/apps_continual/``).
* ``nas``: 24 ConvNets sampled from width × depth × norm × activation × pooling, trained on proxies (a DM
  IPC-10 set and a random IPC-10 subset) and on a reduced "full" training set; per proxy the Spearman rank
  correlation with the full-data ranking, its top-1 architecture and that architecture's full-data accuracy
  and rank, and the seconds it cost (DM distillation included for the DM proxy); ``table.md`` and
  ``scatter.png`` under ``benchmarks/results/apps_nas/``.
* ``xarch``: the DM IPC-10 set evaluated on several architectures with ``python -m experiments.evaluate``
  (``table.md`` and ``heatmap.png`` under ``benchmarks/results/apps_xarch/``).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import DATASET, load_data, row
from jaxdistill import io, loop, objectives, synthetic
from jaxdistill.apps import continual, nas
from jaxdistill.data import random_subset

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _protocol(quick: bool):
  if quick:
    return dict(train_size=2000, test_size=500, seeds=(0,), k=2, cl_steps=2, dm_iters=5, dm_width=8,
                dm_real=16, feat_epochs=1, feat_max=500, cl_width=8, cl_epochs=5, cl_dsa=False,
                nas_archs=24, nas_widths=(8,), nas_depths=(1, 2), nas_pools=("avg", "max"), nas_proxy_epochs=3,
                nas_full_size=500, nas_full_epochs=1, nas_val=300, nas_quick_archs=3,
                x_ipc=2, x_iters=5, x_width=8, x_real=16, x_archs="convnet,mlp", x_models=1, x_epochs=3,
                x_eval_width=8, x_dsa=True)
  # Sized for a 2-core machine shared with several other jobs (~0.2 of a core): about 8 CPU-minutes.
  return dict(train_size=None, test_size=1000, seeds=(0, 1, 2), k=10, cl_steps=5, dm_iters=10, dm_width=8,
              dm_real=16, feat_epochs=1, feat_max=500, cl_width=8, cl_epochs=10, cl_dsa=False,
              nas_archs=24, nas_widths=(8,), nas_depths=(1, 2, 3), nas_pools=("avg", "max"),
              nas_proxy_epochs=10, nas_full_size=500, nas_full_epochs=2, nas_val=500, nas_quick_archs=None,
              x_ipc=10, x_iters=20, x_width=16, x_real=16, x_archs="convnet,mlp,lenet", x_models=2,
              # 300 epochs (the DC code's cross-architecture protocol): at 20 epochs an IPC-10 set gives LeNet and
              # the MLP 20 SGD steps, which left LeNet near chance (benchmarks/xarch_epochs.py).
              x_epochs=300, x_eval_width=16, x_dsa=False)


def _enable_compile_cache():
  """Reuse XLA programs across identical shapes (seeds of one step, the two NAS proxies): a persistent
  compilation cache in the temp folder, unless the caller configured one."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "jaxdistill_jit_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def distill_dm(x, y, nc, ipc, iters, width, real, key):
  """A DM pixel set (init real, lr 1.0, DSA) with ``iters`` iterations; returns (images, labels, seconds)."""
  t0 = time.perf_counter()
  cfg = objectives.default_config("dm", width=width)
  obj = objectives.make_objective("dm", cfg, num_classes=nc, image_shape=x.shape[1:], ipc=ipc)
  syn = synthetic.init_pixels(key, "real", x, y, nc, ipc)
  out = loop.distill(obj, synthetic.PIXELS, syn, x, y, nc, key,
                     loop.LoopConfig(iterations=iters, real_per_class=real, lr_img=1.0), progress=False)
  batch = synthetic.PIXELS.render(out.state.syn)
  return np.asarray(batch.images), np.asarray(batch.labels), time.perf_counter() - t0


def _log(message):
  print(f"[apps {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _write(path, text):
  io.save_text(path, text)


def _out_dir(name, quick):
  path = tempfile.mkdtemp(prefix=name + "_") if quick else os.path.join(RESULTS_DIR, name)
  os.makedirs(path, exist_ok=True)
  return path


def bench_continual(d, p, quick):
  out = _out_dir("apps_continual", quick)
  rows, summaries = [], {}
  for method in continual.METHODS:
    cfg = continual.ContinualConfig(
        method=method, memory_per_class=p["k"], num_steps=p["cl_steps"], classes_per_step=2,
        dm_iterations=p["dm_iters"], dm_real_per_class=p["dm_real"], dm_width=p["dm_width"],
        feature_width=p["dm_width"], feature_epochs=p["feat_epochs"], feature_max_examples=p["feat_max"],
        eval_width=p["cl_width"], eval_models=1, eval_epochs=p["cl_epochs"], eval_dsa=p["cl_dsa"])
    t0 = time.perf_counter()
    results = [continual.run_continual(s, d.train_x, d.train_y, d.test_x, d.test_y, d.num_classes, cfg,
                                       digits=d.digits, log=_log) for s in p["seeds"]]
    s = continual.summarize(results)
    protocol = (f"class-incremental {p['cl_steps']} steps x 2 classes, k={p['k']}/class, seeds {list(p['seeds'])} "
                f"(class order per seed); condense: " +
                {"dm": f"DM {p['dm_iters']} it, ConvNet-{p['dm_width']}, {p['dm_real']} real/class, DSA",
                 "herding": f"herding on ConvNet-{p['dm_width']} features ({p['feat_epochs']} epoch on "
                            f"<= {p['feat_max']} step images)",
                 "random": "random real images"}[method] +
                f"; learner: 1 x ConvNet-{p['cl_width']} from scratch on the memory, {p['cl_epochs']} epochs, "
                f"no DSA; test: seen classes within the first {len(d.test_y)} test images")
    per_step = " -> ".join(f"{100 * a:.1f}±{100 * e:.1f}" for a, e in zip(s["mean"], s["std"]))
    r = row("continual", f"continual_{method}", p["k"], protocol=protocol, eval_protocol="apps:continual",
            seconds=time.perf_counter() - t0, per_step=per_step, per_step_mean=s["mean"], per_step_std=s["std"],
            per_seed=s["per_seed"], memory_sizes=s["memory_sizes"], class_orders=[r.order.tolist() for r in results])
    r["test_accuracy_mean"], r["test_accuracy_std"] = s["mean"][-1], s["std"][-1]
    rows.append(r)
    summaries[method] = s
  continual.save_plot(os.path.join(out, "accuracy.png"), summaries,
                      f"class-incremental Fashion-MNIST, k={p['k']}/class, {len(p['seeds'])} seeds")
  lines = ["| method | " + " | ".join(f"step {t + 1}" for t in range(p["cl_steps"])) + " |",
           "|---" * (p["cl_steps"] + 1) + "|"]
  lines += [f"| {m} | " + " | ".join(f"{100 * a:.2f} ± {100 * e:.2f}" for a, e in zip(s["mean"], s["std"])) + " |"
            for m, s in summaries.items()]
  _write(os.path.join(out, "table.md"), "# Class-incremental Fashion-MNIST (accuracy on seen classes, %)\n\n"
         + "\n".join(lines) + "\n\nProtocols:\n" + "".join(f"- {r['method']}: {r['protocol']}\n" for r in rows))
  return rows


def bench_nas(d, p, dm_set, dm_seconds, quick):
  key = jax.random.PRNGKey(7)
  k_arch, k_sub, k_full, k_search = jax.random.split(key, 4)
  space = nas.search_space(p["nas_widths"], p["nas_depths"], ("instancenorm", "batchnorm", "none"),
                           ("relu", "sigmoid", "leakyrelu"), p["nas_pools"])
  archs = nas.sample_architectures(k_arch, space, p["nas_archs"])
  if p["nas_quick_archs"]:
    archs = archs[:p["nas_quick_archs"]]
  ipc = dm_set[0].shape[0] // d.num_classes
  pos = random_subset(k_sub, d.train_y, d.num_classes, ipc).reshape(-1)
  proxies = {"dm": nas.TrainSet(dm_set[0], dm_set[1], p["nas_proxy_epochs"]),
             "random": nas.TrainSet(d.train_x[pos], d.train_y[pos], p["nas_proxy_epochs"])}
  idx = np.sort(np.asarray(jax.random.permutation(k_full, len(d.train_y))[:p["nas_full_size"]]))
  full = nas.TrainSet(d.train_x[idx], d.train_y[idx], p["nas_full_epochs"])
  val_x, val_y = d.test_x[:p["nas_val"]], d.test_y[:p["nas_val"]]
  scores, full_scores, reports = nas.run_search(archs, proxies, full, k_search, val_images=val_x,
                                                val_labels=val_y, num_classes=d.num_classes, num_models=1,
                                                extra_seconds={"dm": dm_seconds}, log=_log)
  table = nas.report_table(reports)
  rows = []
  for rep in reports:
    r = row("nas", f"nas_{rep.name}", ipc if rep.name != "full" else None, eval_protocol="apps:nas",
            protocol=(f"{len(archs)} ConvNets sampled from a {len(space)}-arch space (width {list(p['nas_widths'])}"
                      f" x depth {list(p['nas_depths'])} x norm {{in, bn, none}} x act {{relu, sigmoid, leaky}} x "
                      f"pool {list(p['nas_pools'])}); 1 network each, no DSA; proxies "
                      f"{p['nas_proxy_epochs']} epochs on "
                      f"IPC-{ipc} sets; 'full' (ground truth) = {p['nas_full_size']} real images x "
                      f"{p['nas_full_epochs']} epochs; validation = first {len(val_y)} test images; "
                      "top1_full_accuracy = full-data accuracy of the proxy's top-1 architecture; seconds include "
                      "DM distillation for the dm proxy"),
            spearman=rep.spearman, top1=rep.top1, top1_full_rank=rep.top1_full_rank, seconds=rep.seconds,
            archs=[a.name for a in archs],
            proxy_accuracies=(scores[rep.name] if rep.name != "full" else full_scores).accuracies.tolist(),
            top1_full_accuracy=rep.top1_full_accuracy)
    rows.append(r)
  out = _out_dir("apps_nas", quick)
  _write(os.path.join(out, "table.md"), f"# NAS proxies ({len(archs)} architectures)\n\n{table}\n\n"
         f"Protocol: {rows[0]['protocol']}\n")
  from experiments.nas import save_scatter
  save_scatter(os.path.join(out, "scatter.png"), archs, scores, full_scores,
               f"{len(archs)} ConvNets: proxy vs full-data accuracy")
  return rows


def bench_xarch(d, p, dm_set, quick):
  from experiments import evaluate as evaluate_cli

  out = _out_dir("apps_xarch", quick)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "synthetic.npz")
    io.save_synthetic(path, dm_set[0], dm_set[1], {"dataset": DATASET, "method": "dm", "ipc": p["x_ipc"]})
    argv = ["--synthetic", path, "--arch", p["x_archs"], "--eval-models", str(p["x_models"]), "--eval-epochs",
            str(p["x_epochs"]), "--eval-width", str(p["x_eval_width"]), "--quiet", "--overwrite", "--out", out]
    if p["test_size"]:
      argv += ["--test-size", str(p["test_size"])]
    if not p["x_dsa"]:
      argv += ["--no-eval-dsa"]
    payload = evaluate_cli.main(argv)
  rows = []
  for arch, res in payload["results"].items():
    r = row("xarch", f"dm_xarch_{arch}", p["x_ipc"], eval_protocol=f"apps:xarch:{arch}",
            protocol=(f"DM IPC-{p['x_ipc']} ({p['x_iters']} it, ConvNet-{p['x_width']}, {p['x_real']} real/class, "
                      f"DSA) evaluated by experiments.evaluate: {p['x_models']} x {arch} (ConvNet/MLP width "
                      f"{p['x_eval_width']}), {p['x_epochs']} epochs, {'DSA' if p['x_dsa'] else 'no DSA'}, "
                      "test images "
                      f"{p['test_size'] or 'all'}"),
            arch=arch, accuracies=res["accuracies"], report_dir=out)
    r["test_accuracy_mean"], r["test_accuracy_std"] = res["test_accuracy_mean"], res["test_accuracy_std"]
    r["eval_seconds"] = res["seconds"]
    rows.append(r)
  return rows


def _part_rows(p):
  """``{part: [(method, ipc), ...]}``: the rows each part measures (for ``select``)."""
  return {"xarch": [(f"dm_xarch_{a}", p["x_ipc"]) for a in p["x_archs"].split(",")],
          "nas": [("nas_dm", p["x_ipc"]), ("nas_random", p["x_ipc"]), ("nas_full", None)],
          "continual": [(f"continual_{m}", 10) for m in ("dm", "herding", "random")]}


def run(quick: bool = False, select=None):
  """Benchmark rows (see module docstring); ``select(method, ipc)`` (None: all) runs only the parts (xarch, nas,
  continual) with a selected row, e.g. ``--methods dm_xarch_convnet,dm_xarch_mlp,dm_xarch_lenet``."""
  _enable_compile_cache()
  p = _protocol(quick)
  parts = {part for part, names in _part_rows(p).items()
           if select is None or any(select(m, i) for m, i in names)}
  d = load_data(quick, train_size=p["train_size"])
  if p["test_size"] and len(d.test_y) > p["test_size"]:
    d = d._replace(test_x=d.test_x[:p["test_size"]], test_y=d.test_y[:p["test_size"]])
  rows = []
  if parts & {"xarch", "nas"}:
    dm_set = distill_dm(d.train_x, d.train_y, d.num_classes, p["x_ipc"], p["x_iters"], p["x_width"], p["x_real"],
                        jax.random.PRNGKey(10))
    _log(f"DM IPC-{p['x_ipc']} set distilled in {dm_set[2]:.0f} s")
    if "xarch" in parts:
      rows += bench_xarch(d, p, dm_set[:2], quick)
    if "nas" in parts:
      rows += bench_nas(d, p, dm_set[:2], dm_set[2], quick)
  if "continual" in parts:
    rows += bench_continual(d, p, quick)
  return [r for r in rows if select is None or select(r["method"], r.get("ipc"))]


if __name__ == "__main__":
  import json
  for r in run(quick="--quick" in sys.argv):
    print(json.dumps(r))
