"""Backend-aware defaults: one place that turns "the backend's choice" (a config field left at None) into a value.

Some settings change only speed, never values or gradients, and the fastest choice depends on the backend:
XLA:CPU emits convolutions inside a compiled loop or conditional body as slow loop fusions (an order of magnitude
slower than the same convolution dispatched on its own), while accelerators run compiled loops at full speed and
compile rolled loops much faster. Those fields default to None and are resolved here:

* ``GradientMatchingConfig.host_inner`` — DC/DSA's inner network training as a host loop of jitted steps: on CPU.
* ``TrajectoryMatchingConfig.unroll`` — the MTT/TESLA student steps as straight-line code: on CPU.
* ``BPTTConfig.scan_unroll`` — DD/LD inner steps per compiled loop iteration: ``min(T, 10)`` on CPU, 1 elsewhere.

A value set explicitly (``True``/``False``/an int) is always kept.
"""
from __future__ import annotations

from typing import Optional, TypeVar

T = TypeVar("T")


def name() -> str:
  """The default JAX backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
  import jax
  return jax.default_backend()


def on_cpu() -> bool:
  """True when JAX's default backend is the CPU."""
  return name() == "cpu"


def choose(value: Optional[T], *, cpu: T, accelerator: T) -> T:
  """``value`` when it is set, else the backend's choice: ``cpu`` on XLA:CPU, ``accelerator`` elsewhere."""
  if value is not None:
    return value
  return cpu if on_cpu() else accelerator
