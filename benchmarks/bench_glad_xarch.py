"""GLaD's claim, tested here: a set distilled through a learned generator transfers better to other architectures.

Two Fashion-MNIST IPC-10 sets made with the generative benchmark's DM budget (:mod:`benchmarks.bench_generative`:
60 iterations, 16 real images per class, ConvNet-32 embedding): pixel DM (``dm``) and GLaD through the trained
prior (``glad_prior``). Each is evaluated on five architectures — ConvNet-128, MLP, LeNet, AlexNet, VGG11
(ResNet18 is in :data:`ARCHS_ALL` but not run by default, for CPU time) — with the same protocol for both sets: ``MODELS[arch]`` fresh networks, ``EPOCHS[arch]`` epochs (the DC
code's cross-architecture protocol, 300 epochs, for the small networks — at 20 epochs LeNet and the MLP are far
from fitted, see ``benchmarks/xarch_epochs.py`` — and 100 epochs of one network for AlexNet, VGG11 and ResNet18,
for CPU time), SGD 0.01 momentum 0.9, weight decay 5e-4, lr / 10 at half, DSA, all 10 000 test
images. Rows are ``<set>@<arch>`` with ``arch``, ``set`` and the set's ConvNet distillation budget.
"""
from __future__ import annotations

import sys
import time

import jax

from benchmarks import common
from benchmarks.bench_generative import distill_set
from jaxdistill import evaluate
from jaxdistill.augment import default_params

SETS = ("dm", "glad_prior")
# ResNet18 (≈ 1 GFLOP per 28 px image forward, several times VGG11) is in EPOCHS / MODELS but not run by default:
# one network of 100 epochs would take well over 10 min per set on the 2-core CPU. ARCHS_ALL includes it.
ARCHS_ALL = ("convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18")
ARCHS = ARCHS_ALL[:5]
# 300 epochs (the DC code's cross-architecture protocol) and 2 networks where the CPU allows; AlexNet, VGG11 and
# ResNet18 (≈ 10-30× a ConvNet's FLOPs per image here; AlexNet at 300 epochs took > 13 min for 2 networks) train
# 100 epochs, one network each.
EPOCHS = {"convnet": 300, "mlp": 300, "lenet": 300, "alexnet": 100, "vgg11": 100, "resnet18": 100}
MODELS = {"convnet": 2, "mlp": 2, "lenet": 2, "alexnet": 1, "vgg11": 1, "resnet18": 1}


def _settings(quick: bool):
  if quick:
    return dict(archs=("convnet", "mlp"), models={"convnet": 1, "mlp": 1}, epochs={"convnet": 2, "mlp": 2})
  return dict(archs=ARCHS, models=MODELS, epochs=EPOCHS)


def run(quick: bool = False, select=None):
  """Yields one row per (set, architecture) at IPC 10 (quick: IPC 1, two architectures, 2 epochs)."""
  s = _settings(quick)
  ipc = 1 if quick else 10
  data = common.load_data(quick)
  for name in SETS:
    if select is not None and not any(select(f"{name}@{a}", ipc) for a in s["archs"]):
      continue
    made = distill_set(name, ipc, data, quick)
    if made is None:  # no trained prior for the dataset
      continue
    batch, desc = made["batch"], made["protocol"]
    for i, arch in enumerate(s["archs"]):
      method = f"{name}@{arch}"
      if select is not None and not select(method, ipc):
        continue
      start = time.perf_counter()
      res = evaluate.evaluate(batch.images, batch.labels, arch, jax.random.PRNGKey(100 + i), num_models=s["models"][arch],
                              epochs=s["epochs"][arch], test_images=data.test_x, test_labels=data.test_y,
                              num_classes=data.num_classes, dsa=default_params(digits=data.digits), progress=False)
      yield common.row(
          "glad_xarch", method, ipc, result=res, seconds_per_iteration=made["seconds_per_iteration"],
          protocol=desc, set=name, arch=arch, storage_floats=made["storage_floats"],
          eval_protocol=(f"eval: {s['models'][arch]} x {arch} (default width), {s['epochs'][arch]} epochs, SGD 0.01 mom 0.9 wd "
                         f"5e-4, DSA, test images {'all 10000' if data.test_x.shape[0] == 10000 else 'first 500'}"),
          eval_wall_seconds=time.perf_counter() - start)


if __name__ == "__main__":
  import json
  for r in run(quick="--quick" in sys.argv):
    print(json.dumps(r))
