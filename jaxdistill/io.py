"""Saving and loading results: synthetic sets (``.npz`` + JSON metadata), metrics JSON, image grids, curves.

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so a crash (even
``kill -9``) never leaves half a file; loading never unpickles (``allow_pickle=False``) and a file that is not a
complete ``.npz`` / JSON is a ``ValueError`` naming it. Output folders are never overwritten unasked, and one run
at a time writes into a folder (:func:`prepare_out_dir`, :func:`lock_out_dir`). In a multi-process JAX job
(``jax.distributed``) only process 0 writes (:func:`is_writer`); the other processes' writes do nothing.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import socket
import sys
import tempfile
import time
import zipfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

FORMAT_VERSION = 1
_META_KEY = "__metadata__"
LOCK_FILE = ".jaxdistill.lock"
_TEMP_FILE = re.compile(r"^\..+\.[^.]+\.tmp$")  # _atomic_write's temporary files: .NAME.RANDOM.tmp
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an .npz), or an empty one
_LOCK_GRACE_SECONDS = 10.0  # an empty lock file younger than this is being written by its owner
_held_locks: Dict[str, str] = {}  # output folder -> its lock file, for the locks this process holds


def is_writer() -> bool:
  """True unless this is a process other than process 0 of a multi-process JAX job (``jax.distributed``
  initialised): only process 0 writes files, so several processes never race on the same outputs. Does not
  import JAX."""
  jax = sys.modules.get("jax")
  if jax is None:
    return True
  try:
    return not jax.distributed.is_initialized() or jax.process_index() == 0
  except Exception:  # a JAX without is_initialized, or half torn down at exit
    return True


def _atomic_write(path: str, write_fn, mode: str = "wb") -> str:
  """Calls ``write_fn(file)`` on a temporary file next to ``path``, flushes it to disk and renames it to
  ``path``. Nothing is written in processes other than process 0 of a multi-process job (:func:`is_writer`)."""
  if not is_writer():
    return path
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, mode) as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def save_text(path: str, text: str) -> str:
  """Writes ``text`` to ``path`` atomically (temporary file + rename). Returns ``path``."""
  return _atomic_write(path, lambda f: f.write(text), mode="w")


def _jsonable(obj):
  """Converts NumPy/JAX scalars and arrays inside ``obj`` to plain Python for ``json``."""
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
    return obj.tolist()
  if isinstance(obj, float) and not np.isfinite(obj):
    return str(obj)
  return obj


def save_json(path: str, obj: Mapping[str, Any]) -> str:
  """Writes ``obj`` as indented JSON atomically; NumPy values become lists/scalars. Returns ``path``."""
  text = json.dumps(_jsonable(obj), indent=2, sort_keys=False)
  return _atomic_write(path, lambda f: f.write(text + "\n"), mode="w")


def load_json(path: str) -> Dict[str, Any]:
  """Reads a JSON file written by :func:`save_json`.

  Raises:
    ValueError: the file does not exist or is not valid JSON (e.g. cut short); the message names it.
  """
  if not os.path.isfile(path):
    raise ValueError(f"No such file: {path!r}.")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path!r} is not valid JSON (truncated or corrupt?): {e}.") from e


def save_npz(path: str, arrays: Mapping[str, Any], metadata: Optional[Mapping[str, Any]] = None) -> str:
  """Saves named arrays and a JSON ``metadata`` dict in one ``.npz`` atomically. Returns ``path``.

  Raises:
    ValueError: an array name collides with the reserved metadata key or is not a string.
  """
  out = {}
  for name, value in arrays.items():
    if not isinstance(name, str) or name == _META_KEY:
      raise ValueError(f"array names must be strings other than {_META_KEY!r}, got {name!r}.")
    out[name] = np.asarray(value)
  meta = dict(metadata or {})
  meta.setdefault("format_version", FORMAT_VERSION)
  out[_META_KEY] = np.asarray(json.dumps(_jsonable(meta)))
  return _atomic_write(path, lambda f: np.savez(f, **out))


def check_npz(path: str) -> None:
  """Raises ``ValueError`` naming ``path`` unless it is a file that starts like an ``.npz`` (a zip archive):
  missing, a folder, empty, or another kind of file (e.g. a ``.npy``, a pickle, text)."""
  if not os.path.exists(path):
    raise ValueError(f"No such file: {path!r}.")
  if not os.path.isfile(path):
    raise ValueError(f"{path!r} is not a file.")
  with open(path, "rb") as f:
    head = f.read(4)
  if not head:
    raise ValueError(f"{path!r} is empty: not an .npz file.")
  if head not in _ZIP_MAGIC:
    kind = " (it is a .npy array)" if head.startswith(b"\x93NUM") else ""
    raise ValueError(f"{path!r} is not an .npz file{kind}: it does not start like one (a zip archive).")


def load_npz(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """Loads ``(arrays, metadata)`` from a file written by :func:`save_npz` (never unpickles).

  Raises:
    ValueError: the file does not exist, is not an ``.npz``, is truncated or corrupt (every array is read and
      its checksum checked), or holds pickled (object) arrays; the message names the file.
  """
  check_npz(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: np.asarray(data[k]) for k in data.files if k != _META_KEY}
      meta = json.loads(str(data[_META_KEY])) if _META_KEY in data.files else {}
  except ValueError as e:
    if "allow_pickle" in str(e) or "pickled" in str(e):
      raise ValueError(f"{path!r} holds pickled (object) arrays, which jaxdistill never loads.") from e
    raise ValueError(f"{path!r} is truncated or corrupt ({e}).") from e
  except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
    raise ValueError(f"{path!r} is truncated or corrupt ({type(e).__name__}: {e}).") from e
  if not isinstance(meta, dict):
    raise ValueError(f"{path!r}: its metadata is not a JSON object.")
  return arrays, meta


def save_synthetic(path: str, images, labels, metadata: Optional[Mapping[str, Any]] = None,
                   lr=None, extra: Optional[Mapping[str, Any]] = None) -> str:
  """Saves a synthetic set: ``images [N, H, W, C]`` (normalised space), ``labels`` int ``[N]`` or soft
  ``[N, C]``, an optional learned learning rate, any ``extra`` arrays (e.g. a parameterisation's state) and
  ``metadata`` (dataset, method, ipc, ...)."""
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}.")
  if labels.shape[0] != images.shape[0]:
    raise ValueError(f"labels has {labels.shape[0]} entries for {images.shape[0]} images.")
  arrays = {"images": images, "labels": labels}
  if lr is not None:
    arrays["lr"] = np.asarray(lr, np.float32)
  for k, v in (extra or {}).items():
    if k in arrays:
      raise ValueError(f"extra array name {k!r} is reserved.")
    arrays[k] = v
  return save_npz(path, arrays, metadata)


def load_synthetic(path: str) -> Dict[str, Any]:
  """Loads a set saved by :func:`save_synthetic`: ``{"images", "labels", "lr" (or None), "metadata", ...}``.

  Raises:
    ValueError: missing file, or the file lacks ``images``/``labels``.
  """
  arrays, meta = load_npz(path)
  for k in ("images", "labels"):
    if k not in arrays:
      raise ValueError(f"{path!r} is not a synthetic set: it has no {k!r} array (found {sorted(arrays)}).")
  out = dict(arrays)
  out.setdefault("lr", None)
  out["metadata"] = meta
  return out


def _shape_text(shape) -> str:
  return "x".join(str(int(d)) for d in shape)


def synthetic_problems(saved: Mapping[str, Any], image_shape: Sequence[int], num_classes: int) -> list:
  """What is wrong with a loaded synthetic set (:func:`load_synthetic`) for a dataset of ``image_shape``
  ``(H, W, C)`` images and ``num_classes`` classes, as sentences (empty: nothing). Checked: the images' rank,
  size, dtype (float, normalised space) and finiteness; the labels' length, dtype and range (hard labels
  ``0 … C−1``), or for soft labels ``[N, C]`` their width, finiteness and a positive entry per row; the class
  count in the metadata; a learned lr (finite, > 0)."""
  images, labels = np.asarray(saved["images"]), np.asarray(saved["labels"])
  want = tuple(int(d) for d in image_shape)
  problems = []
  if images.ndim != 4:
    problems.append(f"images must be [N, H, W, C], got shape {list(images.shape)}")
  elif images.shape[0] < 1:
    problems.append("it holds no images")
  elif tuple(images.shape[1:]) != want:
    problems.append(f"images are {_shape_text(images.shape[1:])} (H x W x channels), the dataset's are "
                    f"{_shape_text(want)}")
  if images.dtype.kind != "f":
    problems.append(f"images are {images.dtype}, expected float32 in the dataset's normalised space")
  elif images.size and not np.all(np.isfinite(images)):
    problems.append("images contain NaN or infinite values")
  n = images.shape[0] if images.ndim else 0
  if labels.ndim not in (1, 2) or labels.shape[0] != n:
    problems.append(f"labels must be [N] or [N, classes] for its {n} images, got shape {list(labels.shape)}")
  elif labels.ndim == 1:
    if labels.dtype.kind not in "iu":
      problems.append(f"hard labels must be integers, got {labels.dtype}")
    elif labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      problems.append(f"labels range {int(labels.min())}..{int(labels.max())}, the dataset has {num_classes} "
                      f"classes (labels 0..{num_classes - 1})")
  else:
    if labels.shape[1] != num_classes:
      problems.append(f"soft labels have {labels.shape[1]} columns, the dataset has {num_classes} classes")
    elif labels.dtype.kind != "f" or not np.all(np.isfinite(labels)):
      problems.append("soft labels must be finite floats")
    elif not np.all(labels.max(axis=1) > 0):
      bad = int(np.argmin(labels.max(axis=1) > 0))
      problems.append(f"soft-label row {bad} has no positive entry (it names no class)")
  meta_classes = dict(saved.get("metadata") or {}).get("num_classes")
  if isinstance(meta_classes, int) and meta_classes != num_classes:
    problems.append(f"its metadata says {meta_classes} classes, the dataset has {num_classes}")
  lr = saved.get("lr")
  if lr is not None:
    lr = np.asarray(lr)
    if lr.dtype.kind not in "fiu" or not np.all(np.isfinite(lr)) or not np.all(lr > 0):
      problems.append(f"its learned learning rate must be finite and > 0, got {lr.tolist()}")
  return problems


def validate_synthetic(saved: Mapping[str, Any], image_shape: Sequence[int], num_classes: int,
                       source: str = "the synthetic set", dataset: str = "the dataset") -> None:
  """Raises ``ValueError`` naming ``source`` and everything :func:`synthetic_problems` finds, so a set that does
  not fit ``dataset`` is refused before any work (instead of failing inside JAX or training to NaN)."""
  problems = synthetic_problems(saved, image_shape, num_classes)
  if problems:
    raise ValueError(f"{source} does not fit {dataset} ({_shape_text(image_shape)} images, {num_classes} "
                     f"classes): " + "; ".join(problems) + ".")


def _process_start(pid: int) -> Optional[str]:
  """The start time of process ``pid`` (``/proc/PID/stat`` field 22), or None where unavailable; with the pid
  it identifies a process even after its pid is reused."""
  try:
    with open(f"/proc/{int(pid)}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError, ValueError):
    return None


def _lock_owner() -> Dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
          "command": " ".join(sys.argv)}


def _read_lock(lock: str) -> Optional[Dict[str, Any]]:
  """The owner recorded in a lock file; None when it is empty or unreadable (being written, or garbage)."""
  try:
    with open(lock) as f:
      info = json.load(f)
  except (OSError, ValueError):
    return None
  return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _owner_alive(info: Mapping[str, Any]) -> bool:
  """Whether the process that wrote a lock still runs. A lock from another host cannot be checked: alive."""
  if info.get("host") != socket.gethostname():
    return True
  try:
    os.kill(int(info["pid"]), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  start = _process_start(int(info["pid"]))
  return info.get("start") is None or start is None or start == info.get("start")


def _is_mine(info: Optional[Mapping[str, Any]]) -> bool:
  mine = _lock_owner()
  return bool(info) and all(info.get(k) == mine[k] for k in ("pid", "host", "start"))


def lock_out_dir(path: str) -> str:
  """Takes the lock of the output folder ``path`` for this process: a file ``LOCK_FILE`` created exclusively,
  holding the pid, host, process start time and command. A lock whose process has ended (killed, crashed) is
  stale and taken over; calling again from the same process is a no-op. Released when the process exits
  (:func:`release_locks`). Returns the lock file's path.

  Raises:
    ValueError: another running process holds the lock (even ``--overwrite`` does not take it), or the
      folder is not writable.
  """
  folder = os.path.abspath(path)
  if folder in _held_locks:
    return _held_locks[folder]
  lock = os.path.join(folder, LOCK_FILE)
  for _ in range(5):
    try:
      fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      info = _read_lock(lock)
      if _is_mine(info):
        _held_locks[folder] = lock
        return lock
      if info is None:
        try:
          young = time.time() - os.path.getmtime(lock) < _LOCK_GRACE_SECONDS
        except OSError:
          continue  # removed meanwhile: try again
        if young:
          info = {"pid": "?", "host": "?", "command": "?"}
      if info is not None and (info.get("pid") == "?" or _owner_alive(info)):
        raise ValueError(
            f"--out {path!r} is in use by another run (pid {info.get('pid')} on {info.get('host')}: "
            f"{info.get('command')}); two runs never write into one folder, even with --overwrite. Wait for it "
            f"or choose another folder (if no such run exists, delete {lock}).")
      aside = f"{lock}.stale.{os.getpid()}"
      try:  # rename first: of several processes finding the stale lock, one takes it over
        os.rename(lock, aside)
        os.remove(aside)
      except FileNotFoundError:
        pass
      continue
    except OSError as e:
      raise ValueError(f"--out {path!r} is not writable ({e.strerror}); choose another folder.") from e
    with os.fdopen(fd, "w") as f:
      json.dump(_lock_owner(), f)
    if not _held_locks:
      atexit.register(release_locks)
    _held_locks[folder] = lock
    return lock
  raise ValueError(f"--out {path!r}: could not take the lock {lock} (other processes keep replacing it).")


def release_locks() -> None:
  """Removes the output-folder locks this process holds (registered with :mod:`atexit`)."""
  for folder, lock in list(_held_locks.items()):
    if _is_mine(_read_lock(lock)):
      try:
        os.remove(lock)
      except OSError:
        pass
    del _held_locks[folder]


def _release(folder: str) -> None:
  lock = _held_locks.pop(os.path.abspath(folder), None)
  if lock and _is_mine(_read_lock(lock)):
    os.remove(lock)


def _results_in(path: str) -> list:
  """The entries of ``path`` other than its lock and leftover temporary files."""
  return [n for n in os.listdir(path) if n != LOCK_FILE and not _TEMP_FILE.match(n)]


def prepare_out_dir(path: str, overwrite: bool = False, resume: bool = False) -> str:
  """Creates the output folder ``path`` and takes its lock (:func:`lock_out_dir`) before any work: refuses a
  folder another run is writing into (whatever the flags), an unwritable one, and a non-empty one unless
  ``overwrite`` or ``resume``. Removes temporary files a killed run left behind. In processes other than process
  0 of a multi-process job (:func:`is_writer`) it only checks ``path``.

  Raises:
    ValueError: ``path`` is a file, cannot be created or written, is locked by another running process, or is
      a non-empty folder and neither flag is set.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--out {path!r} exists and is not a folder.")
  if not is_writer():
    return path
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create --out {path!r} ({e.strerror}); choose another folder.") from e
  held = os.path.abspath(path) in _held_locks
  lock_out_dir(path)
  if _results_in(path) and not (overwrite or resume):
    if not held:
      _release(path)
    raise ValueError(
        f"--out {path!r} is not empty; refusing to overwrite results. Pass --resume to continue a run "
        "there, --overwrite to replace it, or choose another folder.")
  for name in os.listdir(path):
    if _TEMP_FILE.match(name):
      try:
        os.remove(os.path.join(path, name))
      except OSError:
        pass
  return path


def image_grid(images01, rows: int, pad: int = 1) -> np.ndarray:
  """Tiles ``images01 [N, H, W, C]`` (values in [0, 1]) into a ``[rows·(H+pad), cols·(W+pad), C]`` array,
  filling row by row (so a class-major set with ``rows = num_classes`` gives one row per class)."""
  images01 = np.asarray(images01, np.float32)
  n, h, w, c = images01.shape
  if rows < 1 or n == 0:
    raise ValueError(f"need rows >= 1 and at least one image, got rows={rows}, {n} images.")
  cols = -(-n // rows)
  grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, q = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = images01[i]
  return grid


def save_image_grid(path: str, images01, rows: int, scale: int = 2) -> str:
  """Writes :func:`image_grid` as a PNG (nearest-neighbour upscaled by ``scale``). Returns ``path``."""
  from PIL import Image

  grid = np.clip(image_grid(images01, rows), 0.0, 1.0)
  pixels = (grid * 255.0 + 0.5).astype(np.uint8)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  img = Image.fromarray(pixels)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  return _atomic_write(path, lambda f: img.save(f, format="PNG"))


def save_curve(path: str, series: Mapping[str, Tuple[Sequence[float], Sequence[float]]], xlabel: str,
               ylabel: str, title: str = "", logy: bool = False) -> str:
  """Plots named ``(x, y)`` series as lines into a PNG. Returns ``path``."""
  fig, ax = new_figure((6, 4))
  for name, (xs, ys) in series.items():
    ax.plot(np.asarray(xs), np.asarray(ys), label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if logy:
    ax.set_yscale("log")
  if title:
    ax.set_title(title)
  if len(series) > 1:
    ax.legend()
  fig.tight_layout()
  return save_figure(path, fig)


def new_figure(figsize: Tuple[float, float]):
  """``(figure, axes)``: a matplotlib figure outside pyplot, drawn by the Agg renderer, for files written by the
  library and the CLIs. It leaves pyplot's backend and figure list alone (switching the global backend to Agg
  would stop ``plt.show()`` from drawing in the caller's notebook)."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize)
  return fig, fig.add_subplot()


def save_figure(path: str, fig, dpi: int = 100) -> str:
  """Saves a matplotlib figure as PNG atomically (and closes it if pyplot manages it). Returns ``path``."""
  try:
    return _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
  finally:
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: release it
      import matplotlib.pyplot as plt
      plt.close(fig)
