"""The one generic distillation loop (ARCHITECTURE.md): every method is a (parameterisation, objective) pair.

One jitted step: sample a class-balanced real batch (:func:`jaxdistill.data.sample_balanced`), render the
synthetic set, ``jax.value_and_grad`` of the objective w.r.t. the learnable parameters, an optax update
(SGD momentum 0.5 by default, as in DC/DSA/DM), the parameterisation's ``project`` (if any, e.g. LD's labels
onto the simplex), then the objective's ``update`` hook (DC's inner network training). Around it, on the
host: the loss log, evaluation every ``eval_every`` iterations, checkpoints (``.npz`` via
:mod:`jaxdistill.io`, no pickle), a progress bar and, with ``metrics_path``, a JSON-lines stream of each
iteration's loss, time and the objective's auxiliary outputs. The host waits for the device only when it
fetches losses (every ``log_every`` iterations), so steps are dispatched back to back in between.

Randomness: the key of iteration ``t`` is ``fold_in(key, t)``, so a run resumed from a checkpoint at
iteration ``t`` with the same ``key`` continues bit-for-bit like the uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import io, orbax_checkpoint, sharding
from jaxdistill.data.sampling import check_ipc, class_index, sample_balanced
from jaxdistill.objectives.base import Objective, RealBatch
from jaxdistill.progress import progress_bar
from jaxdistill.synthetic.base import Parameterisation, SynState
from jaxdistill.validation import check_choice, check_in_range, check_ints, check_positive, is_number

OPTIMIZERS = ("sgd", "adam", "lamb")
LR_SCHEDULES = ("constant", "cosine")
CHECKPOINT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Outer-loop settings.

  Attributes:
    iterations: image updates (DC/DSA 1000, DM 20 000).
    real_per_class: real images per class per iteration (256 in DC/DSA/DM).
    lr_img: image learning rate (DC/DSA 0.1, DM 1.0).
    optimizer: ``"sgd"`` (with ``momentum``, 0.5 in the papers), ``"adam"`` or ``"lamb"`` (FRePo).
    lr_schedule: ``"constant"`` or ``"cosine"`` (the learning rates decay over ``iterations`` image updates
      to ``lr_final_fraction`` of their value with ``optax.cosine_decay_schedule``, as FRePo's image optimiser).
    lr_final_fraction: where the cosine decay ends, as a fraction of the initial lr (FRePo: 0.1).
    eval_every: evaluate every this many iterations (0: only when the caller evaluates at the end).
    checkpoint_every: write the checkpoint every this many iterations (0: only at the end).
    param_lrs: optional ``{name: lr}`` for top-level entries of the synthetic ``params`` that need their own
      learning rate (e.g. MTT's learnable student lr ``{"lr": 1e-5}``); they get the same optimiser kind and
      momentum as the images. None / empty: one learning rate ``lr_img`` for everything.
    ema_decay: optional ``d`` in [0, 1): keep an exponential moving average of the synthetic ``params``
      (FTD, Du et al. CVPR 2023: ``distill/distill_FTD.py``, ``ModelEmaV2`` of ``distill/model_ema.py``; 0.999
      by default there, 0.9995 in ``run_distill.sh``), started at the initial params and updated after every
      image update (after ``project``): ``ema ← d · ema + (1 − d) · params`` (no bias correction, as FTD).
      Evaluation during the run uses the EMA; it is checkpointed with the state (:attr:`LoopState.ema`) and
      returned as :attr:`DistillResult.ema`. None (default): no EMA, the loop as without the option.
  """
  iterations: int = 1000
  real_per_class: int = 256
  lr_img: float = 0.1
  optimizer: str = "sgd"
  lr_schedule: str = "constant"
  lr_final_fraction: float = 0.0
  momentum: float = 0.5
  eval_every: int = 0
  checkpoint_every: int = 0
  param_lrs: Optional[Mapping[str, float]] = None
  ema_decay: Optional[float] = None

  def validate(self):
    check_choice("optimizer", self.optimizer, OPTIMIZERS)
    check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
    check_in_range("lr_final_fraction", self.lr_final_fraction, 0, 1)
    check_ints(self, ("iterations", "real_per_class"))
    check_ints(self, ("eval_every", "checkpoint_every"), minimum=0, note="0 = off")
    check_positive(self, "lr_img")
    check_in_range("momentum", self.momentum, 0, 1, hi_closed=False)
    for name, lr in dict(self.param_lrs or {}).items():
      if not isinstance(name, str) or not (is_number(lr) and lr > 0):
        raise ValueError(f"param_lrs must map parameter names to numbers > 0, got {name!r}: {lr!r}.")
    if self.ema_decay is not None:
      check_in_range("ema_decay", self.ema_decay, 0, 1, hi_closed=False, note="None = no EMA")
    return self


def make_optimizer(config: LoopConfig) -> optax.GradientTransformation:
  """The image optimiser: ``optax.sgd(lr_img, momentum)`` (PyTorch-style momentum), ``optax.adam`` or
  ``optax.lamb``, each at a constant rate or on a cosine decay to 0 over ``config.iterations``
  (``config.lr_schedule``).

  With ``config.param_lrs`` (``{name: lr}``), ``optax.multi_transform`` gives each named top-level entry of
  the ``params`` dict the same kind of optimiser with its own learning rate (MTT's α: SGD lr_lr, momentum 0.5)
  and everything else ``lr_img``.
  """
  def make(lr):
    if config.lr_schedule == "cosine":
      lr = optax.cosine_decay_schedule(float(lr), int(config.iterations), alpha=float(config.lr_final_fraction))
    if config.optimizer == "sgd":
      return optax.sgd(lr, momentum=config.momentum or None)
    if config.optimizer == "lamb":
      return optax.lamb(lr)
    return optax.adam(lr)

  param_lrs = dict(config.param_lrs or {})
  if not param_lrs:
    return make(config.lr_img)
  transforms = {"__default__": make(config.lr_img)}
  transforms.update({f"param:{k}": make(float(v)) for k, v in param_lrs.items()})

  def labels(params):
    return {k: jax.tree_util.tree_map(lambda _, k=k: f"param:{k}" if k in param_lrs else "__default__", v)
            for k, v in params.items()}

  return optax.multi_transform(transforms, labels)


class LoopState(NamedTuple):
  """Everything that changes during distillation: the synthetic state, the image optimiser's state, the
  objective's state, the iteration counter (int32 scalar) and, with ``LoopConfig.ema_decay``, the exponential
  moving average of ``syn.params`` (same structure; None without it, adding no checkpoint arrays)."""
  syn: SynState
  opt_state: Any
  obj_state: Any
  step: jnp.ndarray
  ema: Any = None


def ema_update(ema, params, decay: float):
  """One EMA step over matching pytrees: ``decay · ema + (1 − decay) · params`` (each leaf keeps its dtype)."""
  return jax.tree_util.tree_map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)


def ema_syn(state: LoopState) -> SynState:
  """The synthetic state to evaluate and save: ``state.syn`` with the EMA params if the loop keeps an EMA,
  else ``state.syn`` itself."""
  return state.syn if state.ema is None else state.syn._replace(params=state.ema)


class DistillResult(NamedTuple):
  """Outcome of :func:`distill`: final state, ``losses [iterations]`` (float), evaluations
  ``[(iteration, EvalResult)]``, steady-state seconds per iteration (compile and evaluation excluded),
  the iteration the run started from (> 0 after a resume), whether all ``config.iterations`` ran (False when
  a ``deadline`` stopped it; the checkpoint holds the state to resume from) and ``first_step_time``, the wall-clock
  time (``time.time()``) at which this call's first step had finished (compilation included; None if no step
  ran) — start-up cost is ``first_step_time`` minus the process's start. ``ema``: with
  ``LoopConfig.ema_decay``, the synthetic state holding the EMA params (:func:`ema_syn`; what was evaluated and
  what to save, as FTD), else None."""
  state: LoopState
  losses: np.ndarray
  evals: List[Any]
  seconds_per_iteration: float
  start_iteration: int
  complete: bool = True
  first_step_time: Optional[float] = None
  ema: Optional[SynState] = None


def init_state(objective: Objective, syn: SynState, key, config: LoopConfig) -> LoopState:
  """The loop state at iteration 0; ``key`` initialises the objective (``fold_in(key, -1)`` is not used by
  steps, which use ``fold_in(key, t)``)."""
  tx = make_optimizer(config.validate())
  obj_state = objective.init(jax.random.fold_in(jax.random.fold_in(key, 2 ** 31 - 1), 0))
  ema = None if config.ema_decay is None else jax.tree_util.tree_map(jnp.array, syn.params)  # a copy
  return LoopState(syn, tx.init(syn.params), obj_state, jnp.zeros((), jnp.int32), ema)


def make_step(objective: Objective, param: Parameterisation, config: LoopConfig, index, num_classes: int,
              mesh=None, with_aux: bool = False):
  """The jitted step ``(state, key, real_x) -> (state, loss)`` (``with_aux``: ``(state, loss, aux)``, ``aux``
  the objective's auxiliary outputs of that step's loss).

  ``real_x [N, H, W, C]`` is passed as an argument (not baked into the program); ``index`` is the
  :class:`~jaxdistill.data.ClassIndex` of the real labels. With a ``mesh`` (:mod:`jaxdistill.sharding`) the
  real batch is split across its devices (same result as one device). An objective with a ``host_update``
  has it run after the jitted step (with the key and rendered set the in-step ``update`` would get).
  """
  tx = make_optimizer(config)
  n = int(config.real_per_class)

  with_data = objective.data is not None

  def step(state: LoopState, key, real_x, index, data):
    k = jax.random.fold_in(key, state.step)
    k_real, k_loss, k_upd = jax.random.split(k, 3)
    pos = sample_balanced(k_real, index, n)  # [C, n]
    real = RealBatch(real_x[pos], jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32)[:, None],
                                                   pos.shape))
    if mesh is not None:
      real = sharding.constrain_real_batch(real, mesh)

    # Stochastic renders (GenDM's fresh latents) get their own per-iteration key; the split above is unchanged.
    render = (lambda s: param.render(s, jax.random.fold_in(k, 3))) if param.needs_key else param.render

    def loss_fn(params):
      syn = render(state.syn._replace(params=params))
      if with_data:
        return objective.loss(state.obj_state, syn, real, k_loss, data)
      return objective.loss(state.obj_state, syn, real, k_loss)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.syn.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.syn.params)
    params = optax.apply_updates(state.syn.params, updates)
    syn = state.syn._replace(params=params if param.project is None else param.project(params))
    obj_state = state.obj_state
    if objective.update is not None and objective.host_update is None:
      extra = (data,) if with_data else ()
      obj_state = objective.update(obj_state, render(syn), k_upd, *extra)
    ema = None if config.ema_decay is None else ema_update(state.ema, syn.params, float(config.ema_decay))
    return LoopState(syn, opt_state, obj_state, state.step + 1, ema), loss, aux

  jitted = jax.jit(step)
  data = objective.data
  if mesh is not None:  # global copies, so the same code runs with several processes (jax.distributed)
    index, data = sharding.replicate((index, data), mesh)
  if objective.host_update is None:
    if with_aux:
      return lambda state, key, real_x: jitted(state, key, real_x, index, data)
    return lambda state, key, real_x: jitted(state, key, real_x, index, data)[:2]

  @jax.jit
  def update_inputs(syn, key, step):
    """The rendered (updated) set and the update key of the step that has just run (as in ``step``)."""
    k = jax.random.fold_in(key, step)
    batch = param.render(syn, jax.random.fold_in(k, 3)) if param.needs_key else param.render(syn)
    return batch, jax.random.split(k, 3)[2]

  def run(state, key, real_x):
    new, loss, aux = jitted(state, key, real_x, index, data)
    batch, k_upd = update_inputs(new.syn, key, state.step)
    extra = (data,) if with_data else ()
    new = new._replace(obj_state=objective.host_update(new.obj_state, batch, k_upd, *extra))
    return (new, loss, aux) if with_aux else (new, loss)

  return run


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during :func:`distill`: the loop wrote its checkpoint first. ``checkpoint`` is its path (None when
  the run has none or the interrupt left no consistent state to write), ``iteration`` / ``total`` the image
  updates done / asked; a CLI may set ``resume_command`` (the line that continues the run)."""

  def __init__(self, checkpoint: Optional[str], iteration: int, total: int):
    super().__init__(f"interrupted at image update {iteration} of {total}")
    self.checkpoint, self.iteration, self.total = checkpoint, iteration, total
    self.resume_command: Optional[str] = None


def _timing(meta: Optional[Mapping[str, Any]]):
  """``(timed iterations, their seconds)`` recorded in a checkpoint's metadata (0, 0.0 if absent), so the
  seconds per iteration of a resumed run include the earlier chunks."""
  meta = meta or {}
  return int(meta.get("timed_iterations", 0)), float(meta.get("timed_seconds", 0.0))


def _save_interrupted(path: Optional[str], state: LoopState, key, losses: List[float], pending, metadata):
  """The checkpoint written on Ctrl-C: ``state`` with exactly its ``state.step`` losses (those fetched, then the
  pending ones; the newest may belong to a step whose state was not stored yet and is dropped). Returns the
  path, or None without a path (or, defensively, when fewer losses than steps are known)."""
  if not path:
    return None
  step = int(np.asarray(state.step))
  kept = list(losses)
  if len(kept) < step and pending:
    kept += [float(v) for v in np.asarray(jax.device_get([v for v, _ in pending])).reshape(-1)]
  if len(kept) < step:
    return None
  save_checkpoint(path, state, key, kept[:step], metadata)
  return path


@contextlib.contextmanager
def _checkpoint_on_interrupt(save: Callable[[], Optional[str]], done: Callable[[], int], total: int):
  """Turns Ctrl-C inside the block into :class:`Interrupted` after ``save()`` wrote the checkpoint."""
  try:
    yield
  except Interrupted:
    raise
  except KeyboardInterrupt as e:
    path = save()
    raise Interrupted(path, done(), total) from e


@contextlib.contextmanager
def _deferred_sigint():
  """Ctrl-C inside the block only sets a flag; yields ``pending() -> bool``, which the loop checks between
  steps, so the interrupt never lands inside JAX's internals (a ``KeyboardInterrupt`` raised there, e.g. while
  a dispatch holds a lock, could leave the process hanging instead of checkpointing). A second Ctrl-C raises at
  once. Outside the main thread (no signal handlers there) it does nothing."""
  if threading.current_thread() is not threading.main_thread():
    yield lambda: False
    return
  hit = []
  previous = signal.getsignal(signal.SIGINT)

  def handler(signum, frame):
    if hit:
      raise KeyboardInterrupt
    hit.append(signum)

  signal.signal(signal.SIGINT, handler)
  try:
    yield lambda: bool(hit)
  finally:
    signal.signal(signal.SIGINT, previous)


def _key_data(key) -> np.ndarray:
  try:
    return np.asarray(jax.random.key_data(key))
  except (TypeError, ValueError):
    return np.asarray(key)


def save_checkpoint(path: str, state: LoopState, key, losses, metadata: Optional[Dict] = None) -> str:
  """Writes the loop state (flattened pytree leaves ``leaf_00000`` …), the key and the loss history to an
  ``.npz`` (no pickle; process 0 writes), or — for a ``path`` not ending in ``.npz`` — to an orbax checkpoint
  directory (:mod:`jaxdistill.orbax_checkpoint`: every process takes part, multi-host safe). Returns ``path``."""
  leaves = jax.tree_util.tree_leaves(state)
  arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
  arrays["key"] = _key_data(key)
  arrays["losses"] = np.asarray(losses, np.float32)
  meta = {"checkpoint_version": CHECKPOINT_VERSION, "num_leaves": len(leaves),
          "step": int(np.asarray(state.step)), **(metadata or {})}
  if orbax_checkpoint.is_orbax_path(path):
    return orbax_checkpoint.save(path, arrays, meta)
  return io.save_npz(path, arrays, meta)


def load_checkpoint(path: str, template: LoopState, key):
  """Restores a :class:`LoopState` saved by :func:`save_checkpoint` (``.npz`` or orbax directory, by ``path``)
  into the structure of ``template``.

  Returns:
    ``(state, losses, metadata)``.

  Raises:
    ValueError: the file is missing, truncated or not a checkpoint, its leaves do not match ``template``
      (another method/config) or it was written with a different key; the message names the file.
  """
  arrays, meta = orbax_checkpoint.load(path) if orbax_checkpoint.is_orbax_path(path) else io.load_npz(path)
  leaves, treedef = jax.tree_util.tree_flatten(template)
  if "checkpoint_version" not in meta:
    raise ValueError(f"{path!r} is not a jaxdistill checkpoint (no checkpoint_version in its metadata).")
  if meta.get("num_leaves") != len(leaves):
    raise ValueError(f"checkpoint {path!r} has {meta.get('num_leaves')} arrays, the current configuration "
                     f"needs {len(leaves)}; was it written by another method or configuration?")
  missing = [k for k in ("key", "losses", *(f"leaf_{i:05d}" for i in range(len(leaves)))) if k not in arrays]
  if missing:
    raise ValueError(f"checkpoint {path!r} is incomplete: it lacks {missing[:3]}; delete it to start afresh.")
  if not np.array_equal(arrays["key"], _key_data(key)):
    raise ValueError(f"checkpoint {path!r} was written with a different key (seed); resume with the same "
                     "seed.")
  new = []
  for i, ref in enumerate(leaves):
    a = arrays[f"leaf_{i:05d}"]
    ref = np.asarray(ref)
    if a.shape != ref.shape or a.dtype != ref.dtype:
      raise ValueError(f"checkpoint {path!r}: array {i} is {a.dtype}{list(a.shape)}, expected "
                       f"{ref.dtype}{list(ref.shape)}.")
    new.append(jnp.asarray(a))
  return jax.tree_util.tree_unflatten(treedef, new), arrays["losses"].tolist(), meta


def make_evaluator(test_images, test_labels, num_classes: int, arch: str = "convnet", num_models: int = 5,
                   epochs: int = 1000, dsa=None, model_kwargs=None, progress: bool = False,
                   mesh=None, method: Optional[str] = None, learned_lr: Optional[bool] = None,
                   label_rule: Optional[str] = None) -> Callable:
  """``evaluator(batch: SyntheticBatch, key) -> EvalResult`` with :func:`jaxdistill.evaluate.evaluate`.

  The set's labels and learned lr are used the way ``method``'s paper evaluates its sets
  (:func:`jaxdistill.evaluate.protocol`: soft labels projected onto the simplex for cross-entropy, or MSE
  targets; the learned lr only for MTT/TESLA); ``learned_lr`` / ``label_rule`` override it."""
  from jaxdistill.evaluate import evaluate, protocol

  proto = protocol(method)
  use_lr = proto.learned_lr if learned_lr is None else bool(learned_lr)
  rule = label_rule or proto.labels

  def evaluator(batch, key):
    lr = batch.lr if (use_lr and batch.lr is not None) else None
    lr = float(lr) if lr is not None and np.ndim(lr) == 0 else lr  # a [T] vector: evaluate() says why not
    return evaluate(np.asarray(batch.images), np.asarray(batch.labels), arch, key, num_models, epochs,
                    test_images=test_images, test_labels=test_labels, num_classes=num_classes, dsa=dsa,
                    lr=lr, model_kwargs=model_kwargs, progress=progress, mesh=mesh, label_rule=rule)
  return evaluator


def _jsonable(value):
  """An auxiliary output (array / scalar / nested dict or sequence of them) as JSON-ready Python values."""
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  a = np.asarray(value)
  if a.dtype.kind in "biuf":
    return a.item() if a.ndim == 0 else a.tolist()
  return str(value)


def _start_metrics(path: str, start: int) -> None:
  """Prepares the JSON-lines metrics file: a fresh run (``start == 0``) starts it empty; a resumed run keeps the
  lines of iterations ``<= start`` (later ones belong to steps the checkpoint does not hold)."""
  kept = []
  if start > 0 and os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          if int(json.loads(line)["iteration"]) <= start:
            kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
          continue  # a line cut short by an interrupted write
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def distill(objective: Objective, param: Parameterisation, syn: SynState, real_images, real_labels,
            num_classes: int, key, config: LoopConfig, *, evaluator: Optional[Callable] = None,
            checkpoint_path: Optional[str] = None, resume: bool = False, progress: bool = True,
            log: Optional[Callable[[int, float], None]] = None, mesh=None,
            deadline: Optional[float] = None, metrics_path: Optional[str] = None,
            log_every: int = 10) -> DistillResult:
  """Runs ``config.iterations`` image updates of ``syn`` under ``objective``.

  Args:
    objective: the loss (and update hook) — see :mod:`jaxdistill.objectives`.
    param: the parameterisation (``render``).
    syn: initial synthetic state (``param``'s ``init``).
    real_images: ``[N, H, W, C]`` normalised training images; real_labels: int ``[N]``.
    key: PRNG key; iteration ``t`` uses ``fold_in(key, t)``.
    evaluator: ``(SyntheticBatch, key) -> EvalResult``, called every ``config.eval_every`` iterations.
    checkpoint_path: where to write the checkpoint (every ``checkpoint_every`` iterations and at the end): a
      ``.npz`` file, or any other path for an orbax checkpoint directory (multi-host safe; :func:`save_checkpoint`).
    resume: continue from ``checkpoint_path`` if it exists (same key and configuration required).
    log: optional ``log(iteration, loss)`` callback, called whenever losses are fetched.
    mesh: optional :class:`jax.sharding.Mesh` (:func:`jaxdistill.sharding.make_mesh`): the step runs over its
      devices, the real batch split across them, the state replicated.
    deadline: optional ``time.monotonic()`` value: once an iteration ends past it, the loop writes the
      checkpoint and returns with ``complete=False`` (at least one iteration runs), so long runs can be done in
      chunks of bounded wall time (``--time-budget`` of the CLIs, ``experiments.full``).
    metrics_path: optional JSON-lines file, one line per iteration written as the run goes (every
      ``log_every`` iterations): ``{"iteration", "loss", "seconds", **aux}`` — ``seconds`` is the wall time since
      this call started when the iteration's values reached the host (shared by the iterations fetched
      together), ``aux`` the objective's auxiliary outputs (e.g. DM's ``per_class`` distances, KIP's
      ``accuracy``). A fresh run starts the file empty; a resumed one keeps its lines up to the checkpoint.
    log_every: fetch losses (and sync with the device, and time the steps) every this many iterations.

  Returns:
    A :class:`DistillResult`; ``seconds_per_iteration`` is measured between these syncs, from the end of the
    first (compiling) step of this call, evaluation and checkpoint writing excluded; after a resume the timed
    steps of the earlier calls (kept in the checkpoint) count too, and with no timed step at all it is this
    call's wall time per iteration.

  Raises:
    Interrupted: on Ctrl-C (``KeyboardInterrupt``), after writing the checkpoint of the last finished step.
  """
  check_ints({"log_every": log_every}, "log_every")
  config.validate()
  real_labels = np.asarray(real_labels)
  index = class_index(real_labels, num_classes)
  check_ipc(index, config.real_per_class, "real_per_class")
  real_x = jnp.asarray(real_images, jnp.float32)
  state = init_state(objective, syn, key, config)
  losses: List[float] = []
  resumed = {}
  if resume and checkpoint_path and os.path.exists(checkpoint_path):
    state, losses, resumed = load_checkpoint(checkpoint_path, state, key)
    losses = losses[:int(state.step)]
  start = int(state.step)
  if mesh is not None:
    state, real_x = sharding.replicate((state, real_x), mesh)
  step = make_step(objective, param, config, index, num_classes, mesh=mesh, with_aux=True)
  step_key = key if mesh is None else sharding.replicate(key, mesh)
  eval_key = jax.random.fold_in(key, 2 ** 31 - 2)
  evals = []
  pending = []
  timed, timed_seconds = _timing(resumed)
  complete = True
  first_step_time = None
  t_begin = time.perf_counter()
  sync = {"time": None, "steps": 0}  # the last host-device sync after compilation, steps dispatched since
  if metrics_path:
    _start_metrics(metrics_path, start)

  def synced():
    """Books the steps run since the last sync (their device time included) and restarts the clock."""
    nonlocal timed, timed_seconds
    now = time.perf_counter()
    if sync["time"] is not None:
      timed += sync["steps"]
      timed_seconds += now - sync["time"]
    sync["time"], sync["steps"] = now, 0

  def restart_clock():
    """Evaluation and checkpoint writing are not timed."""
    if sync["time"] is not None:
      sync["time"] = time.perf_counter()

  def flush():
    if not pending:
      return
    vals, auxs = jax.device_get((jnp.stack([v for v, _ in pending]), [a for _, a in pending]))
    synced()
    vals = np.asarray(vals)
    first = len(losses) + 1
    fetched = [float(v) for v in vals]
    losses.extend(fetched)  # one call: an interrupt never leaves part of a fetch in `losses`
    pending.clear()
    if log is not None:
      for i, v in enumerate(fetched):
        log(first + i, v)
    if metrics_path:
      seconds = time.perf_counter() - t_begin
      with open(metrics_path, "a") as f:
        for i, (v, aux) in enumerate(zip(vals, auxs)):
          row = {"iteration": first + i, "loss": float(v), "seconds": round(seconds, 4)}
          row.update(_jsonable(aux) if isinstance(aux, Mapping) else {"aux": _jsonable(aux)})
          f.write(json.dumps(row) + "\n")
    if len(vals) and not np.isfinite(vals[-1]):
      raise FloatingPointError(f"distillation loss became non-finite at iteration {len(losses)}.")

  def save_interrupted():
    return _save_interrupted(checkpoint_path, state, key, losses, pending,
                             {"timed_iterations": timed, "timed_seconds": timed_seconds})

  with progress_bar(total=config.iterations, desc=f"distill {objective.name}", disable=not progress,
                    unit="it", initial=start) as bar, \
      _checkpoint_on_interrupt(save_interrupted, lambda: int(np.asarray(state.step)), config.iterations), \
      _deferred_sigint() as interrupt_pending:
    for it in range(start, config.iterations):
      if interrupt_pending():
        raise KeyboardInterrupt
      new_state, loss, aux = step(state, step_key, real_x)
      pending.append((loss, aux))
      state = new_state  # after the append: an interrupt never leaves a state without its loss
      done = it + 1
      if it == start:  # the first step of this call includes compilation: wait for it, then start the clock
        jax.block_until_ready(loss)
        sync["time"] = time.perf_counter()
        first_step_time = time.time()
      else:
        sync["steps"] += 1
      if done % log_every == 0 or done == config.iterations:
        flush()
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
      bar.update(1)
      if config.eval_every and evaluator is not None and done % config.eval_every == 0:
        flush()
        result = evaluator(param.render(ema_syn(state)), jax.random.fold_in(eval_key, done))
        evals.append((done, result))
        bar.write(f"iteration {done}: {result}")
        restart_clock()
      if checkpoint_path and config.checkpoint_every and done % config.checkpoint_every == 0 \
          and done != config.iterations:
        flush()
        save_checkpoint(checkpoint_path, state, key, losses,
                        {"timed_iterations": timed, "timed_seconds": timed_seconds})
        restart_clock()
      if deadline is not None and done < config.iterations and time.monotonic() >= deadline:
        complete = False
        break
  flush()
  if checkpoint_path:
    save_checkpoint(checkpoint_path, state, key, losses, {"timed_iterations": timed, "timed_seconds": timed_seconds})
  ran = len(losses) - start
  # No step timed yet (a run of one iteration): the whole call per iteration, compilation included.
  spi = timed_seconds / timed if timed else ((time.perf_counter() - t_begin) / ran if ran > 0 else float("nan"))
  return DistillResult(state, np.asarray(losses, np.float64), evals, spi, start, complete, first_step_time,
                       None if state.ema is None else ema_syn(state))
