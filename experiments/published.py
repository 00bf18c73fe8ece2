"""Published full-protocol accuracies (%) on Fashion-MNIST, ConvNet, IPC 1 / 10 / 50 (METHODS.md, from the
papers' tables). Shown beside our figures for orientation; ``None`` where a paper reports no Fashion-MNIST
result (DM's paper has none)."""
from __future__ import annotations

from typing import Optional

FASHION_MNIST = {
    "random": {1: 51.4, 10: 73.8, 50: 82.5},
    "herding": {1: 67.0, 10: 71.1, 50: 71.9},
    "dc": {1: 70.5, 10: 82.3, 50: 83.6},
    "dsa": {1: 70.6, 10: 84.6, 50: 88.7},
    "dm": {1: None, 10: None, 50: None},
    "mtt": {1: 75.1, 10: 87.2, 50: 88.3},
    "kip": {1: 73.5, 10: 86.8, 50: 88.0},
    "frepo": {1: 75.6, 10: 86.2, 50: 89.6},
    "rfad": {1: 78.6, 10: 87.0, 50: 88.8},
}
WHOLE_DATASET = 93.5


def published(method: str, ipc: int) -> Optional[float]:
  """The published Fashion-MNIST accuracy (%) of ``method`` at ``ipc``, or None."""
  return FASHION_MNIST.get(method, {}).get(int(ipc))
