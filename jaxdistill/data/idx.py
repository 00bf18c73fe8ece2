"""Fashion-MNIST and MNIST straight from their IDX files with NumPy alone (no TensorFlow, no TFDS).

The four standard files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each raw or gzipped with ``.gz``) are looked up in, first match wins:

1. the ``idx_dir`` argument;
2. ``$JAXDISTILL_IDX_DIR``;
3. for ``fashion_mnist`` Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``),
   for ``mnist`` ``/usr/share/datasets/mnist`` where it exists.

A chosen folder may hold the files itself or in a sub-folder named after the dataset (``<dir>/fashion_mnist``),
so one ``$JAXDISTILL_IDX_DIR`` can serve both datasets. Files are checked thoroughly (magic number, element
type, dimensions, exact length, label range, example counts of the dataset spec, and the mean
pixel, so MNIST files are not read as Fashion-MNIST); a bad file raises ``ValueError`` naming it.

Examples come in file order, which is also the order of the prepared TFDS datasets of
:mod:`jaxdistill.data.offline` (built with ``disable_shuffling``), and split strings follow TFDS's slicing
semantics (``"train[:2000]"``, ``"train[100:200]"``, ``"test[:10%]"``, ``"train[-1000:]"``), so both
backends return the same arrays.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from typing import NamedTuple, Optional, Tuple

import numpy as np

from jaxdistill.data.offline import DEBIAN_PACKAGE, SOURCE_DIRS, has_idx_files
from jaxdistill.data.specs import SPLITS, DatasetSpec, get_spec

IDX_DATASETS = ("fashion_mnist", "mnist")
IDX_DIR_ENV = "JAXDISTILL_IDX_DIR"
DEFAULT_DIRS = SOURCE_DIRS
# split -> (images file, labels file), without the optional ".gz".
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX element-type byte -> big-endian NumPy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
# A split's mean [0, 1] pixel may differ from the spec's training mean by this much (the test splits differ by
# < 0.002); MNIST and Fashion-MNIST differ by 0.155, so swapped folders are caught.
_MEAN_TOLERANCE = 0.02

_SPLIT_RE = re.compile(r"^(?P<name>[\w-]+)(\[(?P<selector>[\d\w%:.-]+)\])?$")
_BOUND_RE = re.compile(r"^((?P<val>-?[\d_.]+)(?P<unit>%|shard)?)?$")


class SplitSlice(NamedTuple):
  """A parsed split string: ``name`` (``"train"``/``"test"``), TFDS-style bounds and their unit.

  Attributes:
    name: the split name.
    start: lower bound or None (an int for ``"abs"``/``"shard"``, a float for ``"%"``).
    stop: upper bound or None.
    unit: ``"abs"`` (example indices), ``"%"`` (percent of the split) or ``"shard"`` (TFDS shards).
  """
  name: str
  start: Optional[float]
  stop: Optional[float]
  unit: str


def _split_error(split, detail: str = "") -> ValueError:
  return ValueError(
      f"Unknown split {split!r}{detail}; accepted values: {list(SPLITS)}, optionally with a TFDS slice "
      "such as 'train[:1000]', 'train[100:200]' or 'test[:10%]'.")


def parse_split(split: str) -> SplitSlice:
  """Parses ``"train"``, ``"test"`` or a TFDS slice of one (the grammar of ``tfds.core.ReadInstruction``).

  Raises:
    ValueError: ``split`` is not a string of that form (the message names ``split`` and the accepted values).
  """
  match = _SPLIT_RE.match(split) if isinstance(split, str) else None
  if not match or match["name"] not in SPLITS:
    raise _split_error(split)
  selector = match["selector"]
  if selector is None:
    return SplitSlice(match["name"], None, None, "abs")
  bounds = [_BOUND_RE.match(part) for part in selector.split(":")]
  if len(bounds) != 2 or not all(bounds) or not any(b.group(0) for b in bounds):
    raise _split_error(split, " (a slice is [start:stop], each bound optional, not both empty)")
  unit = bounds[0]["unit"] or bounds[1]["unit"] or "abs"
  try:
    start, stop = (None if b["val"] is None else (float if unit == "%" else int)(b["val"]) for b in bounds)
  except ValueError:
    raise _split_error(split, " (bounds are integers, or numbers followed by %)") from None
  if unit == "%" and any(v is not None and abs(v) > 100 for v in (start, stop)):
    raise _split_error(split, " (percent bounds lie in [-100, 100])")
  return SplitSlice(match["name"], start, stop, unit)


def split_bounds(split: str, num_examples: int) -> Tuple[int, int]:
  """``(start, stop)`` example indices (``0 <= start``, ``stop <= num_examples``) that ``split`` selects.

  Same arithmetic as TFDS: percent bounds round to the closest example (``round(p * n / 100)``); negative
  bounds count from the end; a bound beyond the split size is an error; ``start >= stop`` selects nothing.

  Raises:
    ValueError: malformed ``split``, a bound outside ``[-num_examples, num_examples]``, or a ``shard`` unit
      (shards are a TFDS file-layout notion and mean nothing here).
  """
  sl = parse_split(split)
  if sl.unit == "shard":
    raise ValueError(f"split {split!r}: shard slicing is only supported by the TFDS backend; use example "
                     "indices or percentages, e.g. 'train[:1000]' or 'train[:10%]'.")
  if sl.unit == "%":
    start = 0 if sl.start is None else int(round(sl.start * num_examples / 100.0))
    stop = num_examples if sl.stop is None else int(round(sl.stop * num_examples / 100.0))
  else:
    start = 0 if sl.start is None else int(sl.start)
    stop = num_examples if sl.stop is None else int(sl.stop)
  if abs(start) > num_examples or abs(stop) > num_examples:
    raise ValueError(f"split {split!r}: slice [{start}:{stop}] is incompatible with {num_examples} examples.")
  start = start + num_examples if start < 0 else start
  stop = stop + num_examples if stop < 0 else stop
  return start, max(start, stop)


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (raw, or gzip-compressed: detected from its first bytes) into a native-endian array.

  The format: two zero bytes, an element-type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
  0x0E float64), a byte ``d`` = number of dimensions, ``d`` big-endian uint32 sizes, then the elements.

  Returns:
    an array of shape ``[size_1, ..., size_d]``.

  Raises:
    ValueError: the file is missing, not IDX, truncated, longer than its header says, or a corrupt gzip
      stream; the message names ``path``.
  """
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
      raw = gzip.decompress(raw)
  except FileNotFoundError:
    raise ValueError(f"IDX file {path!r} does not exist.") from None
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise ValueError(f"IDX file {path!r} is a corrupt or truncated gzip file ({type(e).__name__}: {e}).") from e
  if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"IDX file {path!r} has no IDX magic number (got {raw[:4].hex() or 'an empty file'}; "
                     "expected 0000 then a type byte in 08/09/0b/0c/0d/0e and the number of dimensions).")
  dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(raw) < header:
    raise ValueError(f"IDX file {path!r}: truncated header ({len(raw)} bytes for {ndim} dimensions).")
  shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  expected = header + math.prod(shape) * dtype.itemsize
  if len(raw) != expected:
    kind = "truncated" if len(raw) < expected else "longer than its header says"
    raise ValueError(f"IDX file {path!r} is {kind}: {len(raw)} bytes, the header {shape} of {dtype.name} "
                     f"needs {expected}.")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _check_name(name: str) -> DatasetSpec:
  spec = get_spec(name)
  if name not in IDX_DATASETS:
    raise ValueError(f"Dataset {name!r} has no IDX files; the IDX backend accepts {list(IDX_DATASETS)} "
                     "(other datasets need TFDS: pip install jaxdistill[tfds]).")
  return spec


def find_idx_dir(name: str, idx_dir: Optional[str] = None) -> Optional[str]:
  """The folder holding ``name``'s four IDX files (lookup order in the module docstring), or None.

  Within a candidate folder, ``<folder>/<name>`` wins over ``<folder>`` itself when it holds the files.
  An explicit ``idx_dir`` or ``$JAXDISTILL_IDX_DIR`` is returned even when incomplete (reading then names the
  missing file); the default folders only when complete.

  Raises:
    ValueError: ``name`` is not one of :data:`IDX_DATASETS`.
  """
  _check_name(name)
  explicit = idx_dir or os.environ.get(IDX_DIR_ENV) or None
  if explicit:
    explicit = os.path.expanduser(explicit)
    nested = os.path.join(explicit, name)
    return nested if has_idx_files(nested) else explicit
  return DEFAULT_DIRS[name] if has_idx_files(DEFAULT_DIRS[name]) else None


def _missing_dir_error(name: str) -> ValueError:
  install = (f" Install Debian's originals offline with `apt-get install -y {DEBIAN_PACKAGE}` (or `make data`)."
             if name == "fashion_mnist" else "")
  return ValueError(
      f"No IDX files for {name!r}: pass idx_dir=, or set ${IDX_DIR_ENV} to a folder holding "
      f"{[s for pair in FILES.values() for s in pair]} (raw or .gz; the folder or its sub-folder {name!r}), "
      f"default {DEFAULT_DIRS[name]!r}.{install}")


def _file(folder: str, stem: str) -> str:
  raw, gz = os.path.join(folder, stem), os.path.join(folder, stem + ".gz")
  if os.path.exists(raw):
    return raw
  if os.path.exists(gz):
    return gz
  raise ValueError(f"IDX file {raw!r} (or {gz!r}) does not exist.")


def read_split(name: str, split_name: str, folder: str) -> Tuple[np.ndarray, np.ndarray]:
  """Reads and checks one whole split from ``folder``: uint8 images ``[N, H, W, 1]`` and int32 labels ``[N]``.

  Raises:
    ValueError: a missing or malformed file, images and labels that disagree with each other or with the
      dataset spec (count, shape, label range, mean pixel); the message names the file.
  """
  spec = _check_name(name)
  if split_name not in FILES:
    raise _split_error(split_name)
  image_path, label_path = (_file(folder, stem) for stem in FILES[split_name])
  images, labels = read_idx(image_path), read_idx(label_path)
  count = spec.num_train if split_name == "train" else spec.num_test
  if images.dtype != np.uint8 or images.shape != (count,) + spec.image_shape[:2]:
    raise ValueError(f"IDX file {image_path!r}: expected uint8 images {(count,) + spec.image_shape[:2]} for "
                     f"{name}/{split_name}, got {images.dtype.name} {images.shape}.")
  if labels.dtype != np.uint8 or labels.shape != (count,):
    raise ValueError(f"IDX file {label_path!r}: expected {count} uint8 labels for {name}/{split_name}, got "
                     f"{labels.dtype.name} {labels.shape}.")
  if int(labels.max()) >= spec.num_classes:
    raise ValueError(f"IDX file {label_path!r}: label {int(labels.max())} is outside [0, {spec.num_classes}).")
  mean = float(images.mean()) / 255.0
  if abs(mean - spec.mean[0]) > _MEAN_TOLERANCE:
    raise ValueError(f"IDX file {image_path!r}: mean pixel {mean:.4f}, but {name}'s is about {spec.mean[0]}; "
                     "these look like another dataset's files.")
  return images[..., None], labels.astype(np.int32)


def load_uint8(name: str, split: str, idx_dir: Optional[str] = None
               ) -> Tuple[np.ndarray, np.ndarray, DatasetSpec]:
  """Loads ``name``/``split`` from IDX files: uint8 images ``[N, H, W, 1]``, int32 labels ``[N]``, the spec.

  Args:
    name: ``"fashion_mnist"`` or ``"mnist"``.
    split: ``"train"``, ``"test"`` or a TFDS slice of one (``"train[:2000]"``, ``"test[:10%]"``).
    idx_dir: folder with the IDX files; defaults to the lookup of :func:`find_idx_dir`.

  Raises:
    ValueError: unknown name or split, no folder found, bad files, or a slice that selects nothing.
  """
  _check_name(name)
  sl = parse_split(split)
  folder = find_idx_dir(name, idx_dir)
  if folder is None:
    raise _missing_dir_error(name)
  images, labels = read_split(name, sl.name, folder)
  start, stop = split_bounds(split, len(labels))
  if start == stop:
    raise ValueError(f"{name}/{split} holds no examples.")
  # Copies, so a small slice does not keep the whole split alive.
  return images[start:stop].copy(), labels[start:stop].copy(), get_spec(name)


__all__ = ["FILES", "IDX_DATASETS", "IDX_DIR_ENV", "SplitSlice", "find_idx_dir", "load_uint8", "parse_split",
           "read_idx", "read_split", "split_bounds"]
