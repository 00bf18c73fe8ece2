"""DD's own evaluation of a DD run against a random subset (the closing measurement of the DD IPC-10 row).

The shared evaluation trains ConvNet-128s for 100 epochs with DSA at lr 0.01; DD's code evaluates its set the way
it was learned: fresh networks of the distillation architecture trained by the ``T``-step unroll with the set's
learned step sizes (:func:`jaxdistill.objectives.bptt.unrolled_accuracy`). This script scores, under that protocol
(10 networks, all 10 000 test images):

* the DD set with its learned rates, and with the initial rate ``α₀ = 0.02``;
* the random subset (``experiments.coreset --method random``) with ``α₀`` and with the DD set's learned rates.

Usage (run folders of ``experiments.distill --method dd`` and ``experiments.coreset --method random``, e.g. the
presets benchmark's, same IPC)::

    python -m benchmarks.dd_own_protocol --dd RUN/dd_ipc10 --random RUN/random_ipc10 \\
        --out benchmarks/results/dd_own_protocol.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time


def measure(dd_dir: str, random_dir: str, num_models: int = 10, seed: int = 123) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdistill import data, io, objectives, synthetic
  from jaxdistill.objectives import bptt

  metrics = io.load_json(os.path.join(dd_dir, "metrics.json"))
  if metrics.get("method") != "dd":
    raise ValueError(f"--dd {dd_dir!r} is a {metrics.get('method')!r} run, not dd.")
  test_x, test_y, spec = data.load(metrics["dataset"], "test")
  cfg = objectives.default_config("dd", **metrics["objective_config"])
  cfg = dataclasses.replace(cfg, lr_param="identity")  # synthetic.npz stores the rates themselves
  dd = io.load_synthetic(os.path.join(dd_dir, "synthetic.npz"))
  rnd = io.load_synthetic(os.path.join(random_dir, "synthetic.npz"))
  alpha0 = np.full(np.shape(dd["lr"]), cfg.inner_lr, np.float32)
  key = jax.random.PRNGKey(seed)
  rows = {}
  for name, s, lr in (("dd_set_learned_rates", dd, dd["lr"]), ("dd_set_alpha0", dd, alpha0),
                      ("random_subset_alpha0", rnd, alpha0), ("random_subset_dd_rates", rnd, dd["lr"])):
    order = np.argsort(np.asarray(s["labels"]), kind="stable")  # class-major: step t takes image t of each class
    batch = synthetic.SyntheticBatch(jnp.asarray(s["images"])[order], jnp.asarray(s["labels"])[order],
                                     jnp.asarray(lr, jnp.float32))
    acc = bptt.unrolled_accuracy(cfg, batch, key, test_x, test_y, spec.num_classes, num_models=num_models)
    rows[name] = {"mean": round(100 * float(acc.mean()), 2), "std": round(100 * float(acc.std()), 2)}
  return {"protocol": f"DD's own: {num_models} fresh {cfg.arch}-{cfg.width} trained by the T={cfg.inner_steps} "
                      f"unroll (batch_per_class {cfg.batch_per_class}), tested on all {len(test_y)} test images",
          "dd_run": dd_dir, "random_run": random_dir, "shared_evaluation_dd": metrics["test_accuracy_mean"],
          "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
          "load_average": os.getloadavg()[0]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dd", required=True, help="run folder of experiments.distill --method dd")
  p.add_argument("--random", required=True, help="run folder of experiments.coreset --method random")
  p.add_argument("--models", type=int, default=10)
  p.add_argument("--out", default=None, help="write the result JSON here")
  args = p.parse_args(argv)
  result = measure(args.dd, args.random, args.models)
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    from jaxdistill import io
    io.save_text(args.out, text + "\n")
  return result


if __name__ == "__main__":
  main()
