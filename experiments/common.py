"""Pieces every experiment CLI shares: common flags, dataset loading, evaluation and writing results.

A run folder holds ``synthetic.npz`` (images, labels, optional learned lr, JSON metadata), ``metrics.json``
and ``grid.png`` (the set, denormalised, one row per class).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from typing import Any, Dict, NamedTuple, Optional

from experiments import names
from experiments.cli import add_debug_flag, lazy

# Imported on first use, so --help and argument errors answer before JAX (experiments.cli).
jax = lazy("jax")
np = lazy("numpy")
io = lazy("jaxdistill.io")
augment = lazy("jaxdistill.augment")
data_lib = lazy("jaxdistill.data")
evaluation = lazy("jaxdistill.evaluate")


class Data(NamedTuple):
  """A dataset in memory: normalised float32 NHWC images, int32 labels, and its spec."""
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  spec: data_lib.DatasetSpec


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
  return value


def add_common_args(parser: argparse.ArgumentParser, ipc_required: bool = True) -> argparse.ArgumentParser:
  """Adds the flags shared by the coreset / distill CLIs."""
  parser.add_argument("--dataset", default="fashion_mnist",
                      help="fashion_mnist (offline), mnist, cifar10, cifar100, svhn_cropped, or your data: "
                           "npz:PATH (x [N,H,W,C], y [N]; optional x_test/y_test), folder:PATH (one sub-folder per "
                           "class), idx:PATH (MNIST-format files), tfds:NAME (jaxdistill.data.user)")
  parser.add_argument("--ipc", type=positive_int, required=ipc_required, help="images per class")
  g = parser.add_argument_group(
      "evaluation (defaults: the method's own protocol, jaxdistill.evaluate.PROTOCOLS: DC 300 epochs without "
      "augmentation; DSA, DM, MTT and the rest 1000 epochs with DSA; MTT/TESLA with their learned lr)")
  g.add_argument("--eval-models", type=positive_int, default=None,
                 help="networks trained at once (vmap; default 5)")
  g.add_argument("--eval-epochs", type=positive_int, default=None,
                 help="nominal training epochs E per network (E + 1 run, as the reference; default: the method's)")
  g.add_argument("--eval-arch", default="convnet", choices=names.ARCHITECTURES, help="evaluation architecture")
  g.add_argument("--eval-width", type=positive_int, default=128, help="ConvNet/MLP width for evaluation")
  g.add_argument("--eval-dsa", dest="eval_dsa", action="store_const", const=True, default=None,
                 help="train evaluation networks with DSA (default: the method's protocol)")
  g.add_argument("--no-eval-dsa", dest="eval_dsa", action="store_const", const=False,
                 help="train evaluation networks without DSA")
  g.add_argument("--eval-learned-lr", dest="eval_learned_lr", action=argparse.BooleanOptionalAction,
                 default=None, help="train with the set's learned lr (default: only MTT/TESLA)")
  g.add_argument("--eval-protocol", default=None,
                 help="take the evaluation defaults of this method instead of the run's own (e.g. dm)")
  parser.add_argument("--test-size", type=int, default=None,
                      help="evaluate on the first N test images (default: the whole test split)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True, help="output folder (must be new or empty)")
  parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
  parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $JAXDISTILL_DATA_DIR)")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  add_device_args(parser)
  return add_debug_flag(parser)


def add_device_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds ``--devices`` and the ``--distributed`` flags (read by :func:`setup_devices`); every CLI that shards
  work takes them from here."""
  parser.add_argument("--devices", default="1",
                      help="devices to shard over (jaxdistill.sharding): 1 (default, single device), an "
                           "integer k, or 'all'")
  parser.add_argument("--distributed", action="store_true",
                      help="multi-host: call jax.distributed.initialize first (docs/scale.md)")
  parser.add_argument("--coordinator-address", default=None, help="with --distributed: host:port of process 0")
  parser.add_argument("--num-processes", type=int, default=None, help="with --distributed: number of processes")
  parser.add_argument("--process-id", type=int, default=None, help="with --distributed: this process's index")
  parser.add_argument("--compile-cache", default=None,
                      help=f"folder of JAX's persistent compilation cache, shared by runs (default: "
                           f"${COMPILE_CACHE_ENV} or {DEFAULT_COMPILE_CACHE}); 'off' disables it")
  return parser


COMPILE_CACHE_ENV = "JAXDISTILL_COMPILE_CACHE"
DEFAULT_COMPILE_CACHE = "~/.cache/jaxdistill/xla"
COMPILE_CACHE_OFF = ("off", "0", "none", "")


def enable_compile_cache(setting: Optional[str] = None) -> Optional[str]:
  """Turns on JAX's persistent compilation cache so a program compiled by one run is loaded by the next (the
  same distillation or evaluation started again, a resumed run, a sweep over seeds) instead of compiled again.

  ``setting``: a folder, or ``"off"``; None reads ``$JAXDISTILL_COMPILE_CACHE`` and falls back to
  :data:`DEFAULT_COMPILE_CACHE`. A cache folder chosen already through JAX's own configuration
  (``JAX_COMPILATION_CACHE_DIR``) is kept. JAX stores only programs that took at least
  ``jax_persistent_cache_min_compile_time_secs`` (1 s) to compile. Returns the folder in use, or None.
  Measured on this CPU (benchmarks/bench_speed.py, row ``startup``): see benchmarks/README.md."""
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if setting is None:
    setting = os.environ.get(COMPILE_CACHE_ENV, DEFAULT_COMPILE_CACHE)
  if setting.strip().lower() in COMPILE_CACHE_OFF:
    return None
  folder = os.path.abspath(os.path.expanduser(setting))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    print(f"compilation cache disabled: cannot create {folder!r} ({e})", file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  return folder


def setup_devices(args):
  """Turns on the persistent compilation cache (``--compile-cache``, :func:`enable_compile_cache`), runs
  ``jax.distributed.initialize`` under ``--distributed`` and returns the ``--devices`` mesh (None for the
  single-device path); also stored as ``args.mesh`` for :func:`evaluate_set`."""
  from jaxdistill import sharding
  args.compile_cache_dir = enable_compile_cache(getattr(args, "compile_cache", None))
  if getattr(args, "distributed", False):
    enable_cpu_collectives()
    sharding.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  args.mesh = sharding.mesh_from_flag(getattr(args, "devices", None))
  return args.mesh


def enable_cpu_collectives() -> None:
  """Cross-process collectives for CPU devices (gloo), so a ``--distributed`` job also runs on CPU-only hosts
  (the default CPU client has none). No effect on GPU/TPU devices; a choice made already (e.g. ``mpi``) is kept."""
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def data_backend(args) -> Optional[str]:
  """The data backend for ``args.dataset``: ``"idx"`` when it is Fashion-MNIST / MNIST with its IDX files on
  this machine, unless ``$JAXDISTILL_DATA_BACKEND`` or ``--data-dir`` asks otherwise; else None (the library's
  choice, :func:`jaxdistill.data.resolve_backend`).

  The TFDS dataset of these two is prepared from the same IDX files in file order, so both backends give the same
  arrays (tests/test_data_without_tf.py); NumPy alone spares TensorFlow's import and its tf.data pipeline (about
  0.9 GB resident and seconds per run)."""
  if os.environ.get(data_lib.datasets.BACKEND_ENV) or getattr(args, "data_dir", None):
    return None
  idx = data_lib.idx
  if args.dataset not in idx.IDX_DATASETS:
    return None
  return "idx" if idx.find_idx_dir(args.dataset) else None


def load_dataset(args) -> Data:
  """Loads the train and test splits named by ``args.dataset`` (``args.test_size`` limits the test split).

  CLIs that did not call :func:`setup_devices` yet get it here (``--distributed`` / ``--devices``)."""
  if not hasattr(args, "mesh") and hasattr(args, "devices"):
    setup_devices(args)
  if not data_lib.user.is_user_dataset(args.dataset):  # npz:/folder:/idx:/tfds: names are checked as they load
    data_lib.get_spec(args.dataset)  # ValueError for unknown names before touching TFDS.
  backend = data_backend(args)
  train_x, train_y, spec = data_lib.load(args.dataset, "train", data_dir=args.data_dir, backend=backend)
  test_x, test_y, _ = data_lib.load(args.dataset, "test", data_dir=args.data_dir, backend=backend)
  size = getattr(args, "test_size", None)
  if size is not None:
    if size < 1:
      raise ValueError(f"--test-size must be >= 1, got {size}.")
    test_x, test_y = test_x[:size], test_y[:size]
  return Data(train_x, train_y, test_x, test_y, spec)


def eval_model_kwargs(args) -> Dict[str, Any]:
  """Model options for the evaluation architecture (the width applies to ConvNet and MLP)."""
  if args.eval_arch in ("convnet", "convnet_bn", "mlp"):
    return {"width": args.eval_width}
  return {}


def resolve_eval(args, method: Optional[str]):
  """Fills the evaluation flags left unset (None) from the protocol of ``--eval-protocol`` or ``method``
  (:func:`jaxdistill.evaluate.protocol`): ``eval_epochs``, ``eval_dsa``, ``eval_models`` (5),
  ``eval_learned_lr``; stores the label rule as ``args.eval_labels`` and the protocol's name as
  ``args.eval_protocol``. Explicit flags (and presets, applied before) win. Returns ``args``."""
  from jaxdistill.evaluate import PROTOCOLS, protocol
  name = getattr(args, "eval_protocol", None) or method
  if getattr(args, "eval_protocol", None) and args.eval_protocol not in PROTOCOLS:
    raise ValueError(f"--eval-protocol must be one of {sorted(PROTOCOLS)}, got {args.eval_protocol!r}.")
  proto = protocol(name)
  if getattr(args, "eval_epochs", None) is None:
    args.eval_epochs = proto.epochs
  if getattr(args, "eval_dsa", None) is None:
    args.eval_dsa = proto.dsa
  if getattr(args, "eval_models", None) is None:
    args.eval_models = 5
  if getattr(args, "eval_learned_lr", None) is None:
    args.eval_learned_lr = proto.learned_lr
  args.eval_labels = proto.labels
  args.eval_protocol = name if name in PROTOCOLS else "dsa"
  args.no_eval_dsa = not args.eval_dsa  # the older attribute, still read by some CLIs
  return args


def evaluate_set(args, data: Data, images, labels, key, lr=None,
                 arch: Optional[str] = None) -> evaluation.EvalResult:
  """Evaluates a (synthetic) set with the resolved protocol (:func:`resolve_eval`): ``args.eval_models`` fresh
  networks, ``args.eval_epochs`` epochs, DSA if ``args.eval_dsa``, the method's label rule, and the learned
  ``lr`` only when ``args.eval_learned_lr``."""
  if getattr(args, "eval_epochs", None) is None or getattr(args, "eval_dsa", None) is None:
    resolve_eval(args, getattr(args, "method", None))
  arch = arch or args.eval_arch
  dsa = augment.default_params(digits=data.spec.digits) if args.eval_dsa else None
  kwargs = eval_model_kwargs(args) if arch == args.eval_arch else {}
  use_lr = lr if (lr is not None and args.eval_learned_lr) else None
  config = evaluation.EvalConfig(
      test_batch_size=eval_test_batch(args.eval_models, kwargs.get("width", 128), data.spec.image_shape))
  return evaluation.evaluate(
      images, labels, arch, key, args.eval_models, args.eval_epochs, test_images=data.test_x,
      test_labels=data.test_y, num_classes=data.spec.num_classes, dsa=dsa, lr=use_lr, config=config,
      model_kwargs=kwargs, progress=not args.quiet, mesh=eval_mesh(getattr(args, "mesh", None), args.eval_models),
      label_rule=getattr(args, "eval_labels", "cross_entropy"))


def eval_mesh(mesh, num_models: int):
  """The mesh to split ``num_models`` evaluation networks over: ``mesh`` itself, unless the devices the networks
  would use (:func:`jaxdistill.sharding.model_mesh`) leave out a process of a multi-process job (e.g. 5 networks
  on 2 processes use 1 device); then None: every process trains all networks itself, the same ones (the same
  program on the same inputs), with no collective to wait for."""
  if mesh is None or jax.process_count() == 1:
    return mesh
  from jaxdistill import sharding
  used = {d.process_index for d in sharding.model_mesh(mesh, int(num_models)).devices.flat}
  return mesh if len(used) == jax.process_count() else None


def eval_test_batch(num_models: int, width: int, image_shape, budget_floats: int = 2 ** 26,
                    most: int = 1000) -> int:
  """Test images per batch when ``num_models`` networks of ``width`` channels are tested at once: the largest
  batch (at most ``most``) whose first activation, ``num_models x batch x width x H x W`` floats, stays within
  ``budget_floats`` (256 MiB). The accuracy does not depend on it; the memory does: 3 ConvNet-128s on batches of
  1000 Fashion-MNIST images held 5.5 GB, on batches of 222 under 1.9 GB."""
  h, w = int(image_shape[0]), int(image_shape[1])
  per_image = max(1, int(num_models) * max(1, int(width)) * h * w)
  return int(max(1, min(most, budget_floats // per_image)))


def eval_metrics(args, result: evaluation.EvalResult) -> Dict[str, Any]:
  """The evaluation keys of ``metrics.json``."""
  from jaxdistill.training import reference_schedule
  return {"test_accuracy_mean": result.mean, "test_accuracy_std": result.std,
          "test_accuracies": [float(a) for a in result.accuracies], "eval_models": args.eval_models,
          "eval_epochs": args.eval_epochs, "eval_epochs_run": reference_schedule(args.eval_epochs)[0],
          "eval_lr_decay_epoch": reference_schedule(args.eval_epochs)[1], "eval_arch": args.eval_arch,
          "eval_dsa": bool(args.eval_dsa), "eval_labels": getattr(args, "eval_labels", "cross_entropy"),
          "eval_learned_lr": bool(getattr(args, "eval_learned_lr", False)),
          "eval_protocol": getattr(args, "eval_protocol", None),
          "eval_seconds": result.seconds, "test_size": int(result_test_size(args))}


def result_test_size(args) -> int:
  return args.test_size if getattr(args, "test_size", None) else data_lib.get_spec(args.dataset).num_test


def peak_memory_mb() -> float:
  """Peak resident memory of this process so far, in MiB.

  On Linux this is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this process's own address space.
  ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used there because Linux carries it across ``execve``: a command
  started by ``subprocess`` from a large parent (a pytest session, a notebook) reports the *parent's* peak
  (measured: 2887 MiB in a child that used 11 MiB). Elsewhere ``ru_maxrss`` is the fallback.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def process_start_time() -> Optional[float]:
  """Wall-clock time (``time.time()`` scale) at which this process started — the moment the command was run,
  before the interpreter, the imports and the data — from ``/proc/self/stat`` (its start in clock ticks after
  boot) and ``/proc/uptime``; None where ``/proc`` is not available."""
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5), after "pid (comm)"
    return time.time() - (uptime - started_after_boot)
  except (OSError, ValueError, IndexError):
    return None


def startup_seconds(first_step_time: Optional[float]) -> Optional[float]:
  """Seconds from the command's start to the end of its first distillation step (interpreter and imports, data,
  set-up, compilation and the step itself); None when either end is unknown."""
  begin = process_start_time()
  if begin is None or first_step_time is None:
    return None
  return round(first_step_time - begin, 3)


def class_major(images, labels):
  """Reorders a set so classes come in order (stable); soft labels are ordered by their argmax."""
  labels = np.asarray(labels)
  hard = labels.argmax(-1) if labels.ndim == 2 else labels
  order = np.argsort(hard, kind="stable")
  return np.asarray(images)[order], labels[order]


def write_outputs(out: str, data: Data, images, labels, metrics: Dict[str, Any], metadata: Dict[str, Any],
                  lr=None, extra=None) -> Dict[str, Any]:
  """Writes ``out/synthetic.npz``, ``out/grid.png`` and ``out/metrics.json`` (= metadata + metrics)."""
  images = np.asarray(images, np.float32)
  io.save_synthetic(os.path.join(out, "synthetic.npz"), images, labels, metadata, lr=lr, extra=extra)
  shown, _ = class_major(images, labels)
  io.save_image_grid(os.path.join(out, "grid.png"), data_lib.denormalise(shown, data.spec.name),
                     rows=data.spec.num_classes)
  payload = {**metadata, **metrics}
  io.save_json(os.path.join(out, "metrics.json"), payload)
  return payload


def device_summary() -> str:
  """The JAX backend and devices, e.g. ``cpu x1``."""
  devs = jax.devices()
  return f"{devs[0].platform} x{len(devs)} ({devs[0].device_kind})"
