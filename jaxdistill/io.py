"""Saving and loading results: synthetic sets (``.npz`` + JSON metadata), metrics JSON, image grids, curves.

Every file is written to a temporary name in the same folder and renamed, so a crash never leaves half a file;
loading never unpickles (``allow_pickle=False``). Output folders are never overwritten unasked
(:func:`prepare_out_dir`).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

FORMAT_VERSION = 1
_META_KEY = "__metadata__"


def _atomic_write(path: str, write_fn, mode: str = "wb") -> str:
  """Calls ``write_fn(file)`` on a temporary file next to ``path`` and renames it to ``path``."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, mode) as f:
      write_fn(f)
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
  """Reads a JSON file written by :func:`save_json`."""
  with open(path) as f:
    return json.load(f)


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


def load_npz(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """Loads ``(arrays, metadata)`` from a file written by :func:`save_npz` (never unpickles).

  Raises:
    ValueError: the file does not exist.
  """
  if not os.path.exists(path):
    raise ValueError(f"No such file: {path!r}.")
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: np.asarray(data[k]) for k in data.files if k != _META_KEY}
    meta = json.loads(str(data[_META_KEY])) if _META_KEY in data.files else {}
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


def prepare_out_dir(path: str, overwrite: bool = False, resume: bool = False) -> str:
  """Creates the output folder ``path``; refuses a non-empty one unless ``overwrite`` or ``resume``.

  Raises:
    ValueError: ``path`` is a file, or a non-empty folder and neither flag is set.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--out {path!r} exists and is not a folder.")
  if os.path.isdir(path) and os.listdir(path) and not (overwrite or resume):
    raise ValueError(
        f"--out {path!r} is not empty; refusing to overwrite results. Pass --resume to continue a run "
        "there, --overwrite to replace it, or choose another folder.")
  os.makedirs(path, exist_ok=True)
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
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
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


def save_figure(path: str, fig, dpi: int = 100) -> str:
  """Saves a matplotlib figure as PNG atomically and closes it. Returns ``path``."""
  import matplotlib.pyplot as plt
  try:
    return _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
  finally:
    plt.close(fig)
