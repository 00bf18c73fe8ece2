"""Expert trajectory buffers for trajectory matching (MTT, Cazenavette et al., CVPR 2022, Sec. 3.1; TESLA).

An *expert* is a network trained on the real data with plain SGD (MTT: lr 0.01, no momentum, no weight
decay, batch 256, DSA with per-image parameters); its flattened parameters ``θ*_0 … θ*_T`` (initialisation
and the end of every epoch) form one trajectory. :func:`train_experts` trains the experts of a shard in one
compiled program (``vmap`` over experts; each has its own initialisation, data order and augmentation
parameters, the DSA *operation* of a step is shared so only one branch runs) and writes each shard as soon as
it is done, so at most one shard is ever held in memory.

On-disk format (``FORMAT = "jaxdistill-expert-buffer"``, ``BUFFER_VERSION = 1``), a folder holding

* ``buffer.json`` — metadata: ``format``, ``version``, ``dataset``, ``split``, ``arch``, ``model_kwargs``,
  ``image_shape``, ``num_classes``, ``epochs``, ``lr``, ``batch_size``, ``momentum`` (0), ``weight_decay``
  (0), ``sam_rho``, ``sam_alpha``, ``sam_adaptive`` (FTD's flat experts; ``sam_rho`` 0 = plain SGD, and a
  ``buffer.json`` without the field reads as 0), ``dsa``, ``dsa_strategy``, ``zca``, ``zca_reg``, ``seed``,
  ``num_params`` ``P``, ``layout`` (the ``[path, shape]`` of every parameter array in flattening order,
  :func:`param_layout`), ``num_experts``,
  ``shards`` (``[{"file", "experts", "test_accuracy": [experts][epochs + 1]}]``) and ``test_accuracy_mean``
  per epoch; written last, so a folder without it is an unfinished buffer;
* ``shard_00000.npz`` … — arrays ``epoch_0000`` … ``epoch_T``, each float32 ``[experts_in_shard, P]`` (the
  parameters of every expert of the shard after that epoch; ``epoch_0000`` the initialisation), and
  ``test_accuracy`` ``[experts_in_shard, T + 1]``; saved with :func:`jaxdistill.io.save_npz` (no pickle).
  One array per epoch lets :func:`load_buffer` read only the epochs distillation needs.

Loading (:func:`load_buffer`) checks the metadata against what the distillation expects
(:func:`check_metadata`) and refuses a mismatch with an error naming every differing field.
"""
from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxdistill import backend, io, models, sharding, training
from jaxdistill.augment import DEFAULT_STRATEGY, DSAParams, choose_op
from jaxdistill.progress import progress_bar
from jaxdistill.validation import (check_bools, check_dsa_strategy, check_in_range, check_ints, check_network,
                                   check_nonnegative, check_positive)

FORMAT = "jaxdistill-expert-buffer"
BUFFER_VERSION = 1
METADATA_FILE = "buffer.json"
# Fields compared by :func:`check_metadata` when distillation states what it expects.
CHECKED_FIELDS = ("dataset", "arch", "model_kwargs", "image_shape", "num_classes", "zca", "zca_reg", "lr",
                  "num_params")


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
  """How experts are trained (MTT defaults; CIFAR in the paper: 100 experts × 50 epochs with ZCA).

  Attributes:
    arch, width, depth: the expert network (ConvNet-128, depth from the image size when None). Only networks
      without batch-norm statistics are supported (their parameters are the whole state).
    num_experts: E, the number of trajectories.
    experts_per_shard: experts trained together (one ``vmap``) and stored per file; bounds memory.
    epochs: T, epochs per expert (T + 1 snapshots per trajectory).
    lr: SGD learning rate (no momentum, no weight decay), 0.01 in MTT.
    batch_size: minibatch size (256).
    dsa, dsa_strategy: per-image DSA during training (on in MTT; no flip for digits).
    zca, zca_reg: ZCA-whiten train and test images (MTT on RGB data, reg 0.1) before training; recorded so a
      distillation on un-whitened data refuses the buffer.
    seed: base seed (expert ``i``'s randomness derives from it and ``i`` only, so shards are reproducible).
    sam_rho: ρ of sharpness-aware expert training (FTD's "flat" experts, Du et al., CVPR 2023; its
      ``buffer/run_buffer.sh`` uses 0.01): every step follows :func:`jaxdistill.training.sam_gradient`. 0 (the
      default) = plain SGD, the same trajectories as without the option. Part of the buffer's identity.
    sam_alpha, sam_adaptive: GSAM's α and ASAM's element-wise scaling of that step (used only when
      ``sam_rho > 0``); the defaults 0.4 and True are FTD's (``buffer/buffer_FTD.py`` argparse defaults).
    vmap_experts: step a shard's experts in one batched program (True) or one expert at a time (False); None =
      the backend's choice (:mod:`jaxdistill.backend`: one at a time on CPU, batched elsewhere; always batched
      with a device ``mesh``). Speed only: not part of a buffer's identity (a resume may change it).
  """
  arch: str = "convnet"
  width: int = 128
  depth: Optional[int] = None
  num_experts: int = 100
  experts_per_shard: int = 10
  epochs: int = 50
  lr: float = 0.01
  batch_size: int = 256
  dsa: bool = True
  dsa_strategy: Tuple[str, ...] = DEFAULT_STRATEGY
  zca: bool = False
  zca_reg: float = 0.1
  seed: int = 0
  sam_rho: float = 0.0
  sam_alpha: float = 0.4
  sam_adaptive: bool = True
  vmap_experts: Optional[bool] = None

  def validate(self):
    check_network(self.arch, self.width, self.depth)
    if self.arch.endswith("_bn"):
      raise ValueError(f"arch must be a network without batch-norm statistics for expert buffers, got "
                       f"{self.arch!r}; accepted: "
                       f"{[a for a in models.ARCHITECTURES if not a.endswith('_bn')]}.")
    check_ints(self, ("num_experts", "experts_per_shard", "epochs", "batch_size"))
    check_positive(self, ("lr", "zca_reg"))
    check_nonnegative(self, "sam_rho", note="0 = plain SGD")
    check_in_range("sam_alpha", self.sam_alpha, 0, 1)
    check_bools(self, "sam_adaptive")
    check_dsa_strategy(self.dsa_strategy)
    if not (self.vmap_experts is None or isinstance(self.vmap_experts, bool)):
      raise ValueError(f"vmap_experts must be None, True or False, got {self.vmap_experts!r}.")
    return self

  def model_kwargs(self) -> Dict[str, Any]:
    """Keyword arguments of :func:`jaxdistill.models.get_model` for the expert network."""
    kwargs: Dict[str, Any] = {"width": int(self.width)} if self.arch in ("convnet", "mlp") else {}
    if self.depth is not None:
      kwargs["depth"] = int(self.depth)
    return kwargs

  def sam(self) -> Optional[training.SAM]:
    """The :class:`jaxdistill.training.SAM` of every expert step, or None for plain SGD (``sam_rho == 0``)."""
    if not self.sam_rho:
      return None
    return training.SAM(float(self.sam_rho), float(self.sam_alpha), bool(self.sam_adaptive))


def model_kwargs(arch: str, width: int, depth: Optional[int]) -> Dict[str, Any]:
  """The ``get_model`` keyword arguments for ``arch`` / ``width`` / ``depth`` as stored in buffer metadata."""
  return ExpertConfig(arch=arch, width=width, depth=depth).model_kwargs()


def param_layout(params) -> List[List[Any]]:
  """``[[path, shape], …]`` of the arrays of a parameter pytree in the order :func:`flatten` uses."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return [[jax.tree_util.keystr(path), list(np.shape(x))] for path, x in leaves]


def flatten(params):
  """``(flat [P], unflatten)``: the parameters as one float32 vector and its inverse
  (``jax.flatten_util.ravel_pytree``; order = :func:`param_layout`)."""
  return ravel_pytree(params)


def unflattener(model, image_shape) -> Tuple[Callable, int, List[List[Any]]]:
  """``(unflatten, P, layout)`` for ``model``'s parameters on inputs of ``image_shape`` (no data needed)."""
  params = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), image_shape))["params"]
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  flat, unflat = ravel_pytree(zeros)
  return unflat, int(flat.size), param_layout(zeros)


def prepare_images(config: ExpertConfig, train_x, test_x, pixel_mean=None, pixel_std=None):
  """``(train, test, zca_or_None)``: with ``config.zca`` both splits whitened by a ZCA fitted on ``train_x``
  (:func:`jaxdistill.data.fit_zca`, ``reg = config.zca_reg``), else unchanged. ``pixel_mean`` / ``pixel_std``:
  the normalisation constants of the images; given, the ZCA is fitted on the ``[0, 1]`` images as MTT does
  (:func:`train_experts` passes the dataset's when it knows them)."""
  if not config.zca:
    return train_x, test_x, None
  from jaxdistill.data import fit_zca
  zca = fit_zca(train_x, reg=config.zca_reg, pixel_mean=pixel_mean, pixel_std=pixel_std)
  return (np.asarray(zca.apply(np.asarray(train_x, np.float32)), np.float32),
          np.asarray(zca.apply(np.asarray(test_x, np.float32)), np.float32), zca)


def _pixel_stats(dataset: str, channels: int):
  """``(mean, std)`` of a known dataset (:mod:`jaxdistill.data.specs`) with ``channels`` channels, else None
  (user data: the ZCA is then fitted on the images as given)."""
  from jaxdistill.data.specs import DATASETS
  spec = DATASETS.get(dataset)
  if spec is None or len(spec.mean) != channels:
    return None
  return np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)


def _make_epoch_fn(model, tx, n: int, batch_size: int, dsa: Optional[DSAParams], vmap_experts: bool = True,
                   sam: Optional[training.SAM] = None):
  """``epoch(states, data_keys, shared_key, epoch, images, labels) -> (states, mean losses [E])``: one epoch
  of every expert of a shard; the steps are a host loop of one jitted step (XLA:CPU runs convolutions inside a
  compiled ``lax.scan`` ~12x slower; same computation either way).

  ``vmap_experts``: one program steps every expert of the shard (``vmap``; accelerators, and what a device
  mesh shards), else one expert at a time through an un-batched step (faster on XLA:CPU, whose batched
  convolutions over per-expert weights take a slow grouped-convolution path: measured 0.225 vs 0.143 s per
  ConvNet-32 expert step of 256 images, 1.18 vs 0.83 s for ConvNet-128). Same trajectories either way (the
  DSA operation of step ``s`` is shared by the shard's experts in both), up to float summation order.
  """
  steps = training.epoch_steps(n, batch_size)[0]

  def order_one(data_key, epoch):
    return training.epoch_batches(jax.random.fold_in(data_key, epoch), n, batch_size)

  def step_one(state, data_key, batches, shared_key, epoch, s, images, labels):
    ek = jax.random.fold_in(data_key, epoch)
    sk = jax.random.fold_in(shared_key, epoch)
    op = None if dsa is None else choose_op(jax.random.fold_in(sk, s), dsa)
    return training.batch_step(model, tx, state, images, labels, batches, s, ek, dsa=dsa, op_index=op, sam=sam)

  orders = jax.jit(jax.vmap(order_one, in_axes=(0, None)))
  if vmap_experts:
    step = jax.jit(jax.vmap(step_one, in_axes=(0, 0, 0, None, None, None, None, None)))
  else:
    step = jax.jit(step_one)

  def epoch_fn(states, data_keys, shared_key, epoch, images, labels):
    epoch = jnp.asarray(epoch, jnp.int32)
    batches = orders(data_keys, epoch)
    if vmap_experts:
      losses = []
      for s in range(steps):
        states, loss = step(states, data_keys, batches, shared_key, epoch, jnp.asarray(s, jnp.int32), images,
                            labels)
        losses.append(loss)
      return states, jnp.mean(jnp.stack(losses), axis=0)
    finished, means = [], []
    for e in range(data_keys.shape[0]):
      state, order = jax.tree_util.tree_map(lambda a: a[e], (states, batches))
      losses = []
      for s in range(steps):
        state, loss = step(state, data_keys[e], order, shared_key, epoch, jnp.asarray(s, jnp.int32), images, labels)
        losses.append(loss)
      finished.append(state)
      means.append(jnp.mean(jnp.stack(losses)))
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *finished), jnp.stack(means)

  return epoch_fn


def _identity_config(config: ExpertConfig) -> Dict[str, Any]:
  """The configuration fields that define a buffer's trajectories (recorded per shard, compared on resume):
  every field except the speed-only ``vmap_experts``. The SAM fields count only when ``sam_rho > 0`` (a plain
  buffer keeps the identity it had before they existed, so its shards still resume; a flat one differs from it
  and from one of another ``sam_rho``, ``sam_alpha`` or ``sam_adaptive``)."""
  fields = dataclasses.asdict(config)
  fields.pop("vmap_experts")
  if not config.sam_rho:
    for k in ("sam_rho", "sam_alpha", "sam_adaptive"):
      fields.pop(k)
  return io._jsonable(fields)


def _shard_sizes(config: ExpertConfig) -> List[int]:
  e, k = int(config.num_experts), int(config.experts_per_shard)
  return [min(k, e - s) for s in range(0, e, k)]


def shard_file(i: int) -> str:
  return f"shard_{i:05d}.npz"


def train_experts(config: ExpertConfig, train_x, train_y, test_x, test_y, num_classes: int, out_dir: str, *,
                  dataset: str, split: str = "train", progress: bool = True,
                  log: Optional[Callable[[str], None]] = None, mesh=None, resume: bool = False,
                  deadline: Optional[float] = None,
                  extra_metadata: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """Trains ``config.num_experts`` experts and writes the buffer folder ``out_dir`` (format: module docstring).

  Args:
    train_x: ``[N, H, W, C]`` normalised training images; train_y int ``[N]``.
    test_x, test_y: the test split, for per-epoch expert accuracy.
    dataset, split: recorded in the metadata (checked when distilling).
    log: optional callback receiving one line per shard and epoch (expert test accuracy).
    mesh: optional :class:`jax.sharding.Mesh`: a shard's experts are split across its devices
      (:func:`jaxdistill.sharding.model_mesh`); same trajectories as on one device.
    resume: keep the shards already in ``out_dir`` that were written by the same configuration, dataset and
      split (each shard records them), train only the missing ones; a shard from another configuration is
      refused with a ValueError.
    deadline: optional ``time.monotonic()`` value: no new shard starts after it; the call then returns
      ``{"complete": False, "shards_done": k, "shards": n}`` without writing ``buffer.json`` (resume later).
    extra_metadata: more JSON-able fields for ``buffer.json`` (e.g. the CLI's preset and its sources).

  Returns:
    The metadata written to ``buffer.json`` (``test_accuracy_mean`` per epoch, seconds, …), with
    ``"complete": True``.
  """
  config.validate()
  stats = _pixel_stats(dataset, np.shape(train_x)[-1]) if config.zca else None
  train_x, test_x, _ = prepare_images(config, np.asarray(train_x, np.float32), np.asarray(test_x, np.float32),
                                      *(stats or (None, None)))
  train_y = np.asarray(train_y, np.int32)
  image_shape = tuple(train_x.shape[1:])
  kwargs = config.model_kwargs()
  model = models.get_model(config.arch, num_classes, image_shape, **kwargs)
  tx = training.sgd(config.lr, momentum=0.0, weight_decay=0.0)
  dsa = DSAParams(strategy=tuple(config.dsa_strategy)) if config.dsa else None
  n = train_x.shape[0]
  vmapped = True if mesh is not None else backend.choose(config.vmap_experts, cpu=False, accelerator=True)
  epoch_fn = _make_epoch_fn(model, tx, n, config.batch_size, dsa, vmap_experts=vmapped, sam=config.sam())
  init_fn = jax.jit(jax.vmap(lambda k: training.init_state(model, k, image_shape, tx)))
  flat_fn = jax.jit(jax.vmap(lambda v: ravel_pytree(v["params"])[0]))
  acc_fn = jax.jit(jax.vmap(lambda v, x, y: training.accuracy(model, v, x, y), in_axes=(0, None, None)))
  _, num_params, layout = unflattener(model, image_shape)
  images, labels = jnp.asarray(train_x), jnp.asarray(train_y)
  timages, tlabels = jnp.asarray(test_x), jnp.asarray(np.asarray(test_y, np.int32))
  os.makedirs(out_dir, exist_ok=True)
  base = jax.random.PRNGKey(config.seed)
  shards, start, first = [], time.perf_counter(), 0
  sizes = _shard_sizes(config)
  with progress_bar(total=len(sizes) * config.epochs, desc="experts", disable=not progress,
                    unit="epoch") as bar:
    for si, size in enumerate(sizes):
      ids = np.arange(first, first + size)
      identity = {"config": _identity_config(config), "dataset": dataset, "split": split,
                  "num_train": int(n)}
      done = _finished_shard(out_dir, si, identity) if resume else None
      if done is not None:
        shards.append({"file": shard_file(si), "experts": size, "test_accuracy": done.tolist()})
        bar.update(config.epochs)
        first += size
        continue
      if deadline is not None and time.monotonic() >= deadline:
        return {"complete": False, "shards_done": si, "shards": len(sizes), "out_dir": out_dir}
      keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(ids))
      init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
      data_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
      shared = jax.random.fold_in(jax.random.fold_in(base, 2 ** 30), si)
      states = init_fn(init_keys)
      if mesh is not None:
        states, data_keys = sharding.shard_leading((states, data_keys), sharding.model_mesh(mesh, size))
      arrays = {"epoch_0000": np.asarray(flat_fn(states.variables), np.float32)}
      accs = [np.asarray(acc_fn(states.variables, timages, tlabels))]
      for epoch in range(config.epochs):
        states, losses = epoch_fn(states, data_keys, shared, epoch, images, labels)
        losses = np.asarray(losses)
        if not np.all(np.isfinite(losses)):
          raise FloatingPointError(f"expert training loss became non-finite in shard {si}, epoch {epoch}.")
        arrays[f"epoch_{epoch + 1:04d}"] = np.asarray(flat_fn(states.variables), np.float32)
        accs.append(np.asarray(acc_fn(states.variables, timages, tlabels)))
        bar.update(1)
        bar.set_postfix(shard=si, acc=f"{100 * accs[-1].mean():.1f}%")
        if log is not None:
          log(f"shard {si} epoch {epoch + 1}: loss {losses.mean():.4f}, expert test accuracy "
              f"{100 * accs[-1].mean():.2f} % (per expert {np.round(100 * accs[-1], 2).tolist()})")
      acc = np.stack(accs, 1).astype(np.float32)  # [experts, epochs + 1]
      arrays["test_accuracy"] = acc
      io.save_npz(os.path.join(out_dir, shard_file(si)), arrays,
                  {"format": FORMAT, "version": BUFFER_VERSION, "shard": si, "experts": size,
                   "expert_ids": ids.tolist(), "epochs": config.epochs, "num_params": num_params, **identity})
      shards.append({"file": shard_file(si), "experts": size, "test_accuracy": acc.tolist()})
      del arrays, states  # one shard in memory at a time
      first += size
  all_acc = np.concatenate([np.asarray(s["test_accuracy"]) for s in shards])
  meta = {"format": FORMAT, "version": BUFFER_VERSION, "dataset": dataset, "split": split,
          "num_train": int(n), "arch": config.arch, "model_kwargs": kwargs, "image_shape": list(image_shape),
          "num_classes": int(num_classes), "epochs": int(config.epochs), "lr": float(config.lr),
          "batch_size": int(config.batch_size), "momentum": 0.0, "weight_decay": 0.0,
          "sam_rho": float(config.sam_rho), "sam_alpha": float(config.sam_alpha),
          "sam_adaptive": bool(config.sam_adaptive), "dsa": bool(config.dsa),
          "dsa_strategy": list(config.dsa_strategy), "zca": bool(config.zca), "zca_reg": float(config.zca_reg),
          "zca_fitted_on": (None if not config.zca else "[0, 1] images (MTT)" if stats else "the given images"),
          "seed": int(config.seed), "num_params": num_params, "layout": layout,
          "num_experts": int(config.num_experts), "experts_per_shard": int(config.experts_per_shard),
          "vmap_experts": bool(vmapped),
          "shards": shards, "test_accuracy_mean": all_acc.mean(0).tolist(),
          "test_accuracy_std": all_acc.std(0).tolist(), "seconds": time.perf_counter() - start,
          **dict(extra_metadata or {})}
  io.save_json(os.path.join(out_dir, METADATA_FILE), meta)
  return {**meta, "complete": True}


def _finished_shard(out_dir: str, si: int, identity: Mapping[str, Any]) -> Optional[np.ndarray]:
  """The test accuracies ``[experts, epochs + 1]`` of shard ``si`` if its file exists and was written with the
  same ``identity`` (configuration, dataset, split); None if absent. A shard written otherwise, or unreadable,
  is a ValueError naming the file (resuming into another buffer would mix trajectories)."""
  path = os.path.join(out_dir, shard_file(si))
  if not os.path.exists(path):
    return None
  try:
    arrays, meta = io.load_npz(path)
  except Exception as e:  # truncated or foreign file
    raise ValueError(f"cannot resume the expert buffer: {path!r} is unreadable ({e}); delete it to retrain "
                     "that shard.") from e
  theirs = {k: meta.get(k) for k in identity}
  if _normal(theirs) != _normal(dict(identity)):
    raise ValueError(f"cannot resume the expert buffer: {path!r} was written by another configuration or "
                     f"dataset ({theirs} vs {dict(identity)}); use a new --out.")
  return np.asarray(arrays["test_accuracy"])


def read_metadata(buffer_dir: str) -> Dict[str, Any]:
  """The ``buffer.json`` of a buffer folder, after checking its format and version.

  Raises:
    ValueError: no buffer there, an unfinished one, another format or an unsupported version.
  """
  path = os.path.join(buffer_dir, METADATA_FILE)
  if not os.path.isdir(buffer_dir):
    raise ValueError(f"expert buffer folder {buffer_dir!r} does not exist; create it with "
                     "`python -m experiments.buffers --out DIR`.")
  if not os.path.exists(path):
    raise ValueError(f"{buffer_dir!r} has no {METADATA_FILE}: not an expert buffer, or its training did not "
                     "finish.")
  meta = io.load_json(path)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path!r} is not a {FORMAT} (format {meta.get('format')!r}).")
  if meta.get("version") != BUFFER_VERSION:
    raise ValueError(f"{path!r} has buffer version {meta.get('version')!r}; this jaxdistill reads version "
                     f"{BUFFER_VERSION}. Re-create the buffer.")
  meta.setdefault("sam_rho", 0.0)  # written before flat (SAM) experts existed: plain SGD
  return meta


def _normal(v):
  """JSON-comparable form (tuples -> lists, numpy scalars -> Python)."""
  return io._jsonable(v)


def check_metadata(meta: Mapping[str, Any], expected: Mapping[str, Any], source: str = "buffer") -> None:
  """Raises ``ValueError`` naming every field where ``meta`` differs from ``expected`` (fields absent from
  ``expected`` are not checked; floats compare with a relative tolerance of 1e-9)."""
  bad = []
  for k, want in expected.items():
    have = meta.get(k)
    if isinstance(want, float) and isinstance(have, (int, float)):
      same = abs(float(have) - want) <= 1e-9 * max(1.0, abs(want))
    else:
      same = _normal(have) == _normal(want)
    if not same:
      bad.append(f"{k}: {source} has {have!r}, distillation expects {_normal(want)!r}")
  if bad:
    raise ValueError(f"expert {source} does not match the distillation configuration: " + "; ".join(bad)
                     + ". Train a matching buffer (python -m experiments.buffers) or change the configuration.")


def iter_shards(buffer_dir: str, epochs: Optional[Sequence[int]] = None
                ) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
  """Yields ``(shard_index, params [experts, len(epochs), P], test_accuracy [experts, T + 1])`` one shard at a
  time (only the requested ``epochs``, default all, are read from the file)."""
  meta = read_metadata(buffer_dir)
  epochs = list(range(meta["epochs"] + 1)) if epochs is None else [int(e) for e in epochs]
  for e in epochs:
    if not 0 <= e <= meta["epochs"]:
      raise ValueError(f"epoch {e} is not in the buffer (epochs 0..{meta['epochs']}).")
  for si, shard in enumerate(meta["shards"]):
    path = os.path.join(buffer_dir, shard["file"])
    if not os.path.exists(path):
      raise ValueError(f"expert buffer shard {path!r} is missing.")
    params, acc = _read_shard(path, epochs)
    if params.shape != (shard["experts"], len(epochs), meta["num_params"]):
      raise ValueError(f"shard {path!r} holds parameters of shape {params.shape}, the metadata says "
                       f"{(shard['experts'], len(epochs), meta['num_params'])}.")
    yield si, params, acc


def _read_shard(path: str, epochs: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
  """``(params [experts, len(epochs), P], test_accuracy)`` of one shard file, reading only those epochs.

  Raises:
    ValueError: naming the file when it is not an ``.npz``, is truncated or corrupt (checksums are checked as the
      arrays are read), or lacks an epoch or the accuracies.
  """
  io.check_npz(path)
  names = [f"epoch_{e:04d}" for e in epochs] + ["test_accuracy"]
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [n for n in names if n not in f.files]
      if not missing:
        params = np.stack([np.asarray(f[n], np.float32) for n in names[:-1]], 1)
        acc = np.asarray(f["test_accuracy"])
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise ValueError(f"expert buffer shard {path!r} is truncated or corrupt ({type(e).__name__}: {e}); "
                     "re-create the buffer (or delete the shard and resume its training).") from e
  if missing:
    raise ValueError(f"expert buffer shard {path!r} lacks {missing[:3]}; re-create the buffer.")
  return params, acc


class Buffer(NamedTuple):
  """Expert trajectories in memory: ``params`` float32 ``[E, T' + 1, P]`` (epochs ``0 … T'``), the folder's
  metadata and the expert test accuracy ``[E, T + 1]``."""
  params: np.ndarray
  metadata: Dict[str, Any]
  test_accuracy: np.ndarray


def load_buffer(buffer_dir: str, *, max_epoch: Optional[int] = None, num_experts: Optional[int] = None,
                expected: Optional[Mapping[str, Any]] = None) -> Buffer:
  """Loads the first ``num_experts`` trajectories (default all), epochs ``0 … max_epoch`` (default all),
  into one preallocated array, reading one shard at a time.

  Args:
    expected: metadata the distillation requires (e.g. ``{"dataset": "fashion_mnist", "arch": "convnet",
      "zca": False}``); any difference raises (:func:`check_metadata`).

  Raises:
    ValueError: missing / unfinished / mismatching buffer, or more epochs or experts asked than stored.
  """
  meta = read_metadata(buffer_dir)
  if expected:
    check_metadata(meta, expected)
  max_epoch = meta["epochs"] if max_epoch is None else int(max_epoch)
  if not 0 <= max_epoch <= meta["epochs"]:
    raise ValueError(f"the buffer has epochs 0..{meta['epochs']}; distillation needs epoch {max_epoch} "
                     "(max_start_epoch + expert_epochs). Train longer experts or lower those settings.")
  total = int(meta["num_experts"])
  e = total if num_experts is None else int(num_experts)
  if not 1 <= e <= total:
    raise ValueError(f"num_experts must be in [1, {total}] for this buffer, got {num_experts!r}.")
  out = np.empty((e, max_epoch + 1, int(meta["num_params"])), np.float32)
  accs = []
  done = 0
  for _, params, acc in iter_shards(buffer_dir, range(max_epoch + 1)):
    take = min(params.shape[0], e - done)
    out[done:done + take] = params[:take]
    accs.append(acc[:take])
    done += take
    del params
    if done >= e:
      break
  return Buffer(out, meta, np.concatenate(accs))
