"""Running distillation and evaluation over several devices with :mod:`jax.sharding` (and several hosts).

Everything here is *opt-in* and *semantics-preserving*: a :class:`jax.sharding.Mesh` is passed to
:func:`jaxdistill.loop.distill` / :func:`jaxdistill.evaluate.evaluate` (``mesh=``); arrays are placed with
:class:`~jax.sharding.NamedSharding` and the one jitted program is partitioned by XLA (GSPMD). The computation
is the same program as on one device, so results equal the single-device path up to the order of
floating-point reductions.

* Distillation step (DM / DC / any matching objective): the class-balanced real batch ``[C, n, H, W, Ch]`` is
  split across devices along the per-class batch axis ``n`` (or, when ``n`` does not divide, along the class
  axis ``C``) — :func:`constrain_real_batch`. The synthetic set, optimiser and objective states are
  replicated; gradients are all-reduced by XLA.
* Evaluation / expert training (many independent networks in one ``vmap``): the stacked network states, their
  keys and learning rates are split along the leading *model* axis (:func:`shard_leading`), the training set
  is replicated (:func:`replicate`). :func:`model_mesh` picks the largest sub-mesh whose size divides the
  number of networks.
* Multi-host: :func:`initialize_distributed` calls :func:`jax.distributed.initialize`; afterwards
  :func:`make_mesh` spans the devices of every process (``jax.devices()``) and :func:`replicate` /
  :func:`shard_leading` build global arrays from each process's full host copy of the data
  (:func:`jax.make_array_from_callback`), so the same code runs on one or many hosts (``docs/scale.md``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, local_device_ids=None) -> int:
  """Joins a multi-process JAX job (:func:`jax.distributed.initialize`); returns ``jax.process_count()``.

  With all arguments None JAX detects the cluster (SLURM, Open MPI, Kubernetes/TPU pods, or the
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` environment variables read by
  :func:`cluster_from_env`). Call it once per process, before any other JAX call touches a device.

  Raises:
    ValueError: only some of ``coordinator_address`` / ``num_processes`` / ``process_id`` are given, or
      ``process_id`` is outside ``[0, num_processes)``.
  """
  env = cluster_from_env()
  coordinator_address = coordinator_address or env.get("coordinator_address")
  num_processes = env.get("num_processes") if num_processes is None else num_processes
  process_id = env.get("process_id") if process_id is None else process_id
  given = [coordinator_address is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise ValueError("coordinator_address, num_processes and process_id must be given together (or none of "
                     "them, for automatic cluster detection); got "
                     f"{coordinator_address!r}, {num_processes!r}, {process_id!r}.")
  if num_processes is not None:
    if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
      raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
                       f"num_processes={num_processes!r}, process_id={process_id!r}.")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                               process_id=int(process_id), local_device_ids=local_device_ids)
  else:
    jax.distributed.initialize(local_device_ids=local_device_ids)
  return jax.process_count()


def cluster_from_env(environ=None) -> dict:
  """``{coordinator_address, num_processes, process_id}`` from ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (only the keys that are set)."""
  import os
  environ = os.environ if environ is None else environ
  out = {}
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    out["coordinator_address"] = environ["JAX_COORDINATOR_ADDRESS"]
  for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if environ.get(name, "") != "":
      out[key] = int(environ[name])
  return out


def make_mesh(devices: Union[None, int, str, Sequence] = None, axis: str = DATA_AXIS) -> Mesh:
  """A 1-D mesh named ``axis``.

  Args:
    devices: None or ``"all"`` — every device of the job (all processes after
      :func:`initialize_distributed`); an int ``k`` — the first ``k`` of them; or a sequence of devices.

  Raises:
    ValueError: ``k`` < 1 or more than the devices available.
  """
  available = jax.devices()
  if devices is None or (isinstance(devices, str) and devices == "all"):
    chosen = list(available)
  elif isinstance(devices, (int, np.integer)):
    if not 1 <= int(devices) <= len(available):
      raise ValueError(f"devices must be between 1 and the {len(available)} available "
                       f"({available[0].platform}), got {devices}.")
    chosen = list(available[:int(devices)])
  elif isinstance(devices, str):
    raise ValueError(f"devices must be 'all', an integer or a list of devices, got {devices!r}.")
  else:
    chosen = list(devices)
    if not chosen:
      raise ValueError("devices must not be empty.")
  return Mesh(np.array(chosen), (axis,))


def mesh_from_flag(value: Union[None, int, str]) -> Optional[Mesh]:
  """The CLI's ``--devices``: ``1`` / None -> None (the plain single-device path), ``all`` or ``k >= 2`` ->
  :func:`make_mesh`."""
  if value is None:
    return None
  if isinstance(value, str):
    if value != "all":
      try:
        value = int(value)
      except ValueError:
        raise ValueError(f"--devices must be 'all' or an integer >= 1, got {value!r}.") from None
  if value == 1:
    return None
  if value != "all" and value < 1:
    raise ValueError(f"--devices must be 'all' or an integer >= 1, got {value!r}.")
  return make_mesh(value)


def _put(x, sharding: NamedSharding):
  """Places ``x`` with ``sharding``; with several processes the global array is built from this process's
  full host copy (every process must hold the same ``x``)."""
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and x.is_fully_addressable is False:
    return jax.device_put(x, sharding)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate(tree, mesh: Mesh):
  """Every leaf of ``tree`` fully replicated over ``mesh``."""
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(lambda x: _put(x, sharding), tree)


def shard_leading(tree, mesh: Mesh, axis: Optional[str] = None):
  """Every leaf of ``tree`` split along its leading axis over the mesh axis ``axis`` (default: the mesh's
  first axis); the rest replicated. Used for stacked networks ``[num_models, ...]`` (evaluation, experts).

  Raises:
    ValueError: a leaf's leading size is not a multiple of the mesh size.
  """
  axis = axis or mesh.axis_names[0]
  size = mesh.shape[axis]

  def put(x):
    if np.ndim(x) == 0 or np.shape(x)[0] % size:
      raise ValueError(f"cannot split an array of shape {np.shape(x)} over {size} devices: its leading axis "
                       f"must be a multiple of {size}.")
    return _put(x, NamedSharding(mesh, PartitionSpec(axis)))

  return jax.tree_util.tree_map(put, tree)


def model_mesh(mesh: Mesh, num_models: int) -> Mesh:
  """The first ``d`` devices of ``mesh`` where ``d`` is the largest divisor of ``num_models`` not above the
  mesh size, so ``num_models`` networks split evenly (e.g. 5 models on 4 devices -> 1 device, 6 -> 3)."""
  devices = list(mesh.devices.reshape(-1))
  d = max(k for k in range(1, len(devices) + 1) if num_models % k == 0)
  return Mesh(np.array(devices[:d]), (mesh.axis_names[0],))


def real_batch_spec(shape, mesh: Mesh) -> PartitionSpec:
  """How a real batch ``[C, n, ...]`` is split: along ``n`` when the mesh size divides it, else along ``C``.

  Raises:
    ValueError: neither ``n`` (real images per class) nor ``C`` is a multiple of the mesh size.
  """
  axis = mesh.axis_names[0]
  size = mesh.shape[axis]
  rest = (None,) * (len(shape) - 2)
  if shape[1] % size == 0:
    return PartitionSpec(None, axis, *rest)
  if shape[0] % size == 0:
    return PartitionSpec(axis, None, *rest)
  raise ValueError(f"cannot split a real batch of {shape[0]} classes x {shape[1]} images over {size} devices: "
                   f"choose real_per_class (now {shape[1]}) as a multiple of {size}.")


def constrain_real_batch(real, mesh: Mesh):
  """Inside a jitted step: annotates ``real.images [C, n, H, W, Ch]`` and ``real.labels [C, n]`` (a
  :class:`~jaxdistill.objectives.RealBatch`) to be split across ``mesh`` (:func:`real_batch_spec`)."""
  spec = real_batch_spec(real.images.shape, mesh)
  images = jax.lax.with_sharding_constraint(real.images, NamedSharding(mesh, spec))
  labels = jax.lax.with_sharding_constraint(real.labels, NamedSharding(mesh, PartitionSpec(*spec[:2])))
  return real._replace(images=images, labels=labels)


def to_host(x) -> np.ndarray:
  """``x`` as a NumPy array on this host. A global array split across processes (several ``jax.distributed``
  processes, e.g. evaluation networks split along the model axis) is gathered first
  (:func:`jax.experimental.multihost_utils.process_allgather`; every process must call this); local and fully
  replicated arrays are read directly."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def mesh_size(mesh: Optional[Mesh]) -> int:
  """Number of devices of ``mesh`` (1 for None)."""
  return 1 if mesh is None else int(math.prod(mesh.devices.shape))


__all__ = ["DATA_AXIS", "cluster_from_env", "constrain_real_batch", "initialize_distributed", "make_mesh",
           "mesh_from_flag", "mesh_size", "model_mesh", "real_batch_spec", "replicate", "shard_leading", "to_host"]
