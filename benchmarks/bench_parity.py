"""Parity with the authors' PyTorch code on this kind of machine (the R1 protocol of METHODS.md).

The reference code (VICO-UoE/DatasetCondensation ``main.py`` / ``main_DM.py`` / ``utils.evaluate_synset``) was run
on the same kind of 2-core CPU machine with a reduced budget: Fashion-MNIST, ConvNet-3 width 128 with instance
norm, 64 real images per class per iteration, evaluation by 3 fresh ConvNet-128s × 300 epochs (its
``evaluate_synset``: 301 epochs, lr ×0.1 and a new optimiser after epoch 151), with DSA for DM and the random
subset, without augmentation for DC. Its figures:

  DM IPC 10 (200 iterations) 81.0 % · DM IPC 1 (200 iterations) 70.7 % · DC IPC 1 (noise init, 100 iterations)
  70.2 % · random real subset IPC 10 75.5 %.

This module runs exactly those settings through the user-facing CLIs (``experiments.distill`` and
``experiments.coreset``) and records both columns. The bar (issue "faithful"): ours ≥ reference − one standard
deviation of our own networks. Cost on 2 cores: ≈ 40 min.
"""
from __future__ import annotations

import os
import tempfile

from benchmarks import common

# (method, ipc, reference accuracy %, the reference's distillation budget); the reference figures were measured
# with the authors' code on this kind of machine (METHODS.md, "Measured on this kind of 2-core machine").
REFERENCE = (
    ("dm", 10, 81.0, 200),
    ("dm", 1, 70.7, 200),
    ("dc", 1, 70.2, 100),
    ("random", 10, 75.5, None),
)
EVAL_MODELS, EVAL_EPOCHS, REAL_PER_CLASS, WIDTH = 3, 300, 64, 128


def _argv(method: str, ipc: int, iterations, out: str, quick: bool):
  models, epochs = (1, 3) if quick else (EVAL_MODELS, EVAL_EPOCHS)
  argv = ["--dataset", common.DATASET, "--ipc", str(ipc), "--eval-models", str(models), "--eval-epochs",
          str(epochs), "--eval-width", str(16 if quick else WIDTH), "--seed", "0", "--quiet", "--out", out]
  if quick:
    argv += ["--test-size", "500"]
  if method == "random":
    return ["--method", "random"] + argv
  argv += ["--method", method, "--iterations", str(2 if quick else iterations), "--real-per-class",
           str(8 if quick else REAL_PER_CLASS), "--width", str(16 if quick else WIDTH), "--checkpoint-every",
           "1000"]
  if method == "dc":
    argv += ["--init", "noise"]
  return argv


def _eval_description(method: str, quick: bool) -> str:
  models, epochs = (1, 3) if quick else (EVAL_MODELS, EVAL_EPOCHS)
  aug = "no augmentation" if method == "dc" else "DSA"
  return (f"eval: {models} x convnet-{16 if quick else WIDTH}, {epochs} epochs (+1, reference schedule), SGD 0.01 "
          f"mom 0.9 wd 5e-4, {aug}, test images {'first 500' if quick else 'all 10000'}")


def run(quick: bool = False, select=None):
  from experiments import coreset, distill

  root = tempfile.mkdtemp(prefix="parity-")
  for method, ipc, reference, iterations in REFERENCE:
    if select is not None and not select(method, ipc):
      continue
    out = os.path.join(root, f"{method}_ipc{ipc}")
    argv = _argv(method, ipc, iterations, out, quick)
    if method == "random":
      m = coreset.main(argv + ["--eval-protocol", "dm"])
    else:
      m = distill.main(argv)
    mean, std = 100 * m["test_accuracy_mean"], 100 * m["test_accuracy_std"]
    budget = ("a class-balanced random subset of real images" if method == "random" else
              f"{m['iterations']} iterations ({m['image_updates']} image updates), {REAL_PER_CLASS} real/class, "
              f"ConvNet-3 width {WIDTH} instance norm, init {m.get('init')}, lr_img {m['loop_config']['lr_img']}")
    yield common.row(
        "parity", method, ipc, protocol=f"R1 (reference code on this machine): {budget}",
        eval_protocol=_eval_description(method, quick), reference_code_accuracy=reference / 100,
        test_accuracy_mean=mean / 100, test_accuracy_std=std / 100, accuracies=m["test_accuracies"],
        parity_bar=round(reference - std, 2), meets_parity=bool(mean >= reference - std),
        seconds_per_iteration=m.get("seconds_per_iteration"), eval_seconds=m["eval_seconds"],
        total_seconds=m["seconds"], quick=quick)
