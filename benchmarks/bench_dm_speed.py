"""DM speed at the paper's per-iteration settings: IPC 10, 256 real images per class, DSA, ConvNet-3 width 128.

Steady-state seconds per iteration of the jitted loop step (after compilation, mean of 5 steps) vs the
reference PyTorch DM, 3.85 s per iteration on the same kind of 2-core machine (DEVELOPERS.md), and the share of
the step spent in the embedding network's forward pass on the 2560 real images alone (convolutions dominate
it; it is the part no implementation can skip). Run it on an otherwise idle machine: the row records the load
average.
"""
from __future__ import annotations

from benchmarks import common
from benchmarks.bench_matching import REFERENCE_DM_SECONDS, dm_speed


def run(quick: bool = False):
  speed = dm_speed(width=16 if quick else 128, real_per_class=16 if quick else 256, repeats=2 if quick else 5,
                   train_size=2000 if quick else None)
  yield common.row(
      "dm_speed", "dm", 10, seconds_per_iteration=speed["seconds_per_iteration"],
      reference_seconds_per_iteration=None if quick else REFERENCE_DM_SECONDS,
      real_embed_forward_seconds=speed["real_embed_forward_seconds"],
      conv_forward_share=speed["conv_forward_share"],
      protocol=("DM step at paper settings: IPC 10, 256 real/class, DSA, ConvNet-3 width 128, steady state after "
                "compile, mean of 5 steps; reference: PyTorch DM on the same kind of 2-core machine"
                if not quick else "quick: width 16, 16 real/class"))
