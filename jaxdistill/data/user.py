"""The user's own data: NumPy arrays, ``.npz`` files, folders of images, IDX files and any TFDS dataset.

:func:`from_arrays` turns arrays into what :func:`jaxdistill.data.load` returns — normalised float32 images
``[N, H, W, C]``, int32 labels ``[N]`` and a :class:`~jaxdistill.data.specs.DatasetSpec` whose per-channel
mean/std are computed from the given (training) images. Any ``H × W × C`` works; the ConvNet picks the papers'
depth from the size (:func:`jaxdistill.models.default_depth`: 3 up to 32 px, 4 at 64 px, 5 at 128 px).

Dataset names with a form prefix are accepted wherever a dataset name is (``data.load``, ``data.load_uint8``,
``data.get_spec``, ``normalise``/``denormalise`` and the CLIs' ``--dataset``):

* ``npz:PATH`` — an ``.npz`` (read without pickle) with ``x`` ``[N, H, W, C]`` (or ``[N, H, W]``) uint8, or float
  in ``[0, 1]``, and ``y`` ``[N]`` integer labels ``0 … C − 1``; optionally ``x_test`` / ``y_test``.
* ``folder:PATH`` — one sub-folder per class (class names sorted → labels ``0 … C − 1``), images (PNG, JPEG, BMP,
  GIF, TIFF, WebP) read with **Pillow directly** (no TensorFlow needed; files sorted by name). All greyscale
  images give ``C = 1``, otherwise every image is converted to RGB. Or ``PATH/train/<class>/…`` with an optional
  ``PATH/test/<class>/…`` (TFDS ImageFolder's layout).
* ``idx:PATH`` — a folder with ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (raw or ``.gz``),
  optionally ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte``: the MNIST file format of any dataset.
* ``tfds:NAME`` — any TFDS image-classification dataset (``image`` and ``label`` features, a ``train`` and a
  ``test`` split; ``NAME`` may carry a config, ``emnist/letters``), through tensorflow-datasets
  (``pip install jaxdistill[tfds]``). Its statistics are computed from the whole ``train`` split once and cached
  in ``<data_dir>/jaxdistill_stats/NAME.json`` (keyed by the dataset version).

Test split: the file's own (``x_test``/``y_test``, ``test/``, ``t10k-*``) when present; otherwise a **held-out
split**: from every class, :data:`HOLDOUT_FRACTION` (10 %, at least one image) of its images chosen by a fixed
permutation (``numpy.random.default_rng(0)``), so every class is in both splits and the split never changes. The
statistics always come from the training split. Split strings take TFDS slices (``"train[:500]"``), applied after
the split is formed.

Refused with a :class:`ValueError` that names the problem: images of mixed sizes, a single class, labels that
are not ``0 … C − 1`` with every class present, NaN / infinite or out-of-range pixels, images and labels of
different lengths, a constant channel (zero std), a missing file or key.
"""
from __future__ import annotations

import os
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from jaxdistill.data import idx
from jaxdistill.data.specs import DATASETS, DatasetSpec

FORMS = ("npz", "folder", "idx", "tfds")
HOLDOUT_FRACTION = 0.1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
STATS_DIR = "jaxdistill_stats"

# Specs of user datasets by name: from_arrays(name=...) and every dataset loaded by form (get_spec reads them).
_SPECS: Dict[str, DatasetSpec] = {}


class _Splits(NamedTuple):
  """A user dataset in memory: train/test images ``[N, H, W, C]`` (uint8, or float32 in ``[0, 1]`` when the
  source was float), int32 labels, the spec."""
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  spec: DatasetSpec


_CACHE: Dict[str, Tuple[object, _Splits]] = {}  # name -> (file stamp, splits); the latest dataset only


def parse_name(name: str) -> Optional[Tuple[str, str]]:
  """``(form, argument)`` for a name with a form prefix (``"npz:/data/x.npz"`` -> ``("npz", "/data/x.npz")``),
  None for the built-in names (``fashion_mnist``, …).

  Raises:
    ValueError: an unknown prefix or an empty argument (the message lists the accepted forms).
  """
  if not isinstance(name, str) or ":" not in name:
    return None
  form, _, arg = name.partition(":")
  if form not in FORMS or not arg:
    raise ValueError(f"Unknown dataset {name!r}; accepted: {sorted(DATASETS)}, or " + ", ".join(
        f"{f}:{'NAME' if f == 'tfds' else 'PATH'}" for f in FORMS) + ".")
  return form, arg


def is_user_dataset(name) -> bool:
  """True for names with a form prefix of :data:`FORMS` (``npz:…``, ``folder:…``, ``idx:…``, ``tfds:…``)."""
  return isinstance(name, str) and ":" in name and name.partition(":")[0] in FORMS


def registered_spec(name: str) -> Optional[DatasetSpec]:
  """The spec registered under ``name`` by :func:`from_arrays` or an earlier load, or None."""
  return _SPECS.get(name)


# ----------------------------------------------------------------------------------------------- validation


def _as_images(x, what: str) -> np.ndarray:
  """``x`` as uint8 ``[N, H, W, C]`` (or float32 in [0, 1] kept as float); checks rank, values and NaNs."""
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[0] == 0 or min(x.shape[1:]) < 1:
    raise ValueError(f"{what} must be images [N, H, W, C] (or [N, H, W]) with N >= 1, got shape {x.shape}.")
  if x.dtype == np.uint8:
    return x
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    if x.min() < 0 or x.max() > 255:
      raise ValueError(f"{what}: integer pixels must lie in 0 … 255, got range {x.min()} … {x.max()}.")
    return x.astype(np.uint8)
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"{what} must be uint8 (0 … 255) or float (0 … 1) pixels, got dtype {x.dtype}.")
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.isfinite(x)))
    raise ValueError(f"{what} holds {bad} NaN or infinite values.")
  lo, hi = float(x.min()), float(x.max())
  if lo < 0.0 or hi > 1.0:
    raise ValueError(f"{what}: float pixels must lie in [0, 1] (divide uint8-range values by 255), got range "
                     f"{lo:g} … {hi:g}.")
  return x.astype(np.float32)


def _as_labels(y, n: int, what: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or y.shape[0] != n:
    raise ValueError(f"{what} must be integer labels [N] with N = {n} (one per image), got shape {y.shape}.")
  if not np.issubdtype(y.dtype, np.integer):
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
      y = y.astype(np.int64)
    else:
      raise ValueError(f"{what} must be integer class labels 0 … C-1, got dtype {y.dtype}.")
  return y.astype(np.int32)


def _check_classes(y: np.ndarray, what: str) -> int:
  """The number of classes ``C`` of training labels ``y``: must be ``0 … C − 1``, all present, ``C ≥ 2``."""
  if y.min() < 0:
    raise ValueError(f"{what}: labels must be 0 … C-1, got {int(y.min())}.")
  num_classes = int(y.max()) + 1
  counts = np.bincount(y, minlength=num_classes)
  if num_classes < 2:
    raise ValueError(f"{what}: one class only (label {int(y.max())}); distillation needs at least two classes.")
  missing = np.flatnonzero(counts == 0)
  if missing.size:
    raise ValueError(f"{what}: labels must be 0 … C-1 with every class present; labels span 0 … {num_classes - 1} "
                     f"but classes {missing.tolist()[:20]} have no image (relabel to consecutive integers).")
  return num_classes


def _to_unit(x: np.ndarray) -> np.ndarray:
  """Pixels in ``[0, 1]`` as float32 (uint8 / 255; floats as they are)."""
  return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def channel_statistics(x, what: str = "x") -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """Per-channel mean and standard deviation of ``[0, 1]`` images ``[N, H, W, C]`` (uint8 / 255 or float),
  accumulated in float64.

  Raises:
    ValueError: a channel with zero standard deviation (constant images cannot be normalised).
  """
  x = np.asarray(x)
  c = x.shape[-1]
  total = np.zeros(c)
  total_sq = np.zeros(c)
  count = 0
  for start in range(0, x.shape[0], 4096):  # bounded float64 temporaries
    chunk = x[start:start + 4096].reshape(-1, c).astype(np.float64)
    if x.dtype == np.uint8:
      chunk /= 255.0
    total += chunk.sum(0)
    total_sq += np.square(chunk).sum(0)
    count += chunk.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  if np.any(std == 0):
    raise ValueError(f"{what}: channel(s) {np.flatnonzero(std == 0).tolist()} are constant (std 0); they cannot "
                     "be normalised.")
  return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# ------------------------------------------------------------------------------------------------ from arrays


def from_arrays(x, y, name: str = "arrays", *, spec: Optional[DatasetSpec] = None, digits: bool = False,
                class_names: Sequence[str] = ()) -> Tuple[np.ndarray, np.ndarray, DatasetSpec]:
  """The user's arrays as ``(images, labels, spec)``, the same triple as :func:`jaxdistill.data.load`.

  Args:
    x: images ``[N, H, W, C]`` or ``[N, H, W]``: uint8 (0 … 255) or float in ``[0, 1]``; any size.
    y: integer labels ``[N]`` in ``0 … C − 1`` (every class present, ``C ≥ 2``).
    name: the dataset's name; its spec is registered under it, so ``get_spec(name)``,
      ``normalise(…, name)`` and ``denormalise(…, name)`` work afterwards. Not a built-in name.
    spec: normalise with this spec instead of computing one (e.g. the test split with the training split's
      spec: ``from_arrays(x_test, y_test, spec=train_spec)``); images must have its shape, labels lie in
      ``0 … spec.num_classes − 1`` (classes may be missing).
    digits: stored in the spec: True turns DSA's flip off (digits, text).
    class_names: optional names of the classes, stored in the spec.

  Returns:
    ``images`` float32 ``[N, H, W, C]`` normalised by the per-channel mean/std of ``x`` (or of ``spec``),
    ``labels`` int32 ``[N]`` and the :class:`DatasetSpec` (``num_train = N``, ``num_test = 0``).

  Raises:
    ValueError: bad shapes, NaN / out-of-range pixels, labels not ``0 … C − 1``, one class, a constant channel,
      or a built-in ``name``.

  Example:
    >>> images, labels, spec = from_arrays(x_uint8, y, name="my_data")
    >>> test_images, test_labels, _ = from_arrays(x_test, y_test, spec=spec)
  """
  images = _as_images(x, "x")
  labels = _as_labels(y, images.shape[0], "y")
  if spec is None:
    if name in DATASETS:
      raise ValueError(f"name {name!r} is a built-in dataset; choose another name for your arrays.")
    num_classes = _check_classes(labels, "y")
    if class_names and len(class_names) != num_classes:
      raise ValueError(f"class_names has {len(class_names)} entries for {num_classes} classes.")
    mean, std = channel_statistics(images, "x")
    spec = DatasetSpec(name, tuple(int(s) for s in images.shape[1:]), num_classes, mean, std,
                       int(images.shape[0]), 0, bool(digits), tuple(str(c) for c in class_names))
    _SPECS[name] = spec
  else:
    if tuple(images.shape[1:]) != tuple(spec.image_shape):
      raise ValueError(f"x: images of shape {images.shape[1:]} do not match the spec's {spec.image_shape}.")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
      raise ValueError(f"y: labels must lie in 0 … {spec.num_classes - 1} (the spec's classes), got "
                       f"{int(labels.min())} … {int(labels.max())}.")
  return normalise_with(_to_unit(images), spec), labels, spec


def normalise_with(images01, spec: DatasetSpec) -> np.ndarray:
  """``(images01 − mean) / std`` with ``spec``'s per-channel statistics, float32."""
  mean = np.asarray(spec.mean, np.float32)
  std = np.asarray(spec.std, np.float32)
  return ((np.asarray(images01, np.float32) - mean) / std).astype(np.float32)


# ------------------------------------------------------------------------------------------------ file forms


def _holdout(labels: np.ndarray, num_classes: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
  """Boolean masks ``(train, test)``: per class ``max(1, round(HOLDOUT_FRACTION · n_c))`` images to the test
  split, chosen by ``default_rng(0)``."""
  rng = np.random.default_rng(0)
  test = np.zeros(labels.shape[0], bool)
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if members.size < 2:
      raise ValueError(f"{what}: class {c} has {members.size} image(s); a held-out test split needs at least 2 "
                       "per class (or give a test split).")
    k = max(1, int(round(HOLDOUT_FRACTION * members.size)))
    test[rng.permutation(members)[:k]] = True
  return ~test, test


def _stamp(paths: Sequence[str]):
  """What identifies the files' current contents cheaply: ``(path, size, mtime)`` of each."""
  out = []
  for p in paths:
    st = os.stat(p)
    out.append((p, st.st_size, st.st_mtime_ns))
  return tuple(out)


def _finish(name: str, train_x, train_y, test_x, test_y, what: str, class_names=()) -> _Splits:
  """Checks the arrays, forms the held-out split when there is no test split, computes the spec."""
  train_x = _as_images(train_x, f"{what}: training images")
  train_y = _as_labels(train_y, train_x.shape[0], f"{what}: training labels")
  num_classes = _check_classes(train_y, f"{what}: training labels")
  if test_x is None:
    keep, held = _holdout(train_y, num_classes, what)
    train_x, train_y, test_x, test_y = train_x[keep], train_y[keep], train_x[held], train_y[held]
  else:
    test_x = _as_images(test_x, f"{what}: test images")
    test_y = _as_labels(test_y, test_x.shape[0], f"{what}: test labels")
    if test_x.shape[1:] != train_x.shape[1:]:
      raise ValueError(f"{what}: test images {test_x.shape[1:]} and training images {train_x.shape[1:]} differ "
                       "in size.")
    if test_y.min() < 0 or test_y.max() >= num_classes:
      raise ValueError(f"{what}: test labels must lie in 0 … {num_classes - 1} (the training classes), got "
                       f"{int(test_y.min())} … {int(test_y.max())}.")
  if (train_x.dtype == np.uint8) != (test_x.dtype == np.uint8):  # one kind per dataset: float [0, 1] if mixed
    train_x, test_x = _to_unit(train_x), _to_unit(test_x)
  mean, std = channel_statistics(train_x, f"{what}: training images")
  spec = DatasetSpec(name, tuple(int(s) for s in train_x.shape[1:]), num_classes, mean, std,
                     int(train_x.shape[0]), int(test_x.shape[0]), False, tuple(class_names))
  return _Splits(train_x, train_y, test_x, test_y, spec)


def _read_npz(name: str, path: str) -> _Splits:
  what = f"npz file {path!r}"
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except FileNotFoundError:
    raise ValueError(f"{what} does not exist.") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"{what} cannot be read as an .npz without pickle ({type(e).__name__}: {e}).") from e
  missing = [k for k in ("x", "y") if k not in arrays]
  if missing:
    raise ValueError(f"{what} needs arrays 'x' [N, H, W, C] and 'y' [N] (optional 'x_test', 'y_test'); missing "
                     f"{missing}, found {sorted(arrays)}.")
  if ("x_test" in arrays) != ("y_test" in arrays):
    raise ValueError(f"{what}: give both 'x_test' and 'y_test' or neither.")
  return _finish(name, arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test"), what)


def _read_idx(name: str, folder: str) -> _Splits:
  what = f"IDX folder {folder!r}"
  if not os.path.isdir(folder):
    raise ValueError(f"{what} does not exist.")
  found = {}
  for split, stems in idx.FILES.items():
    paths = [os.path.join(folder, s) for s in stems]
    paths = [p if os.path.exists(p) else p + ".gz" for p in paths]
    present = [os.path.exists(p) for p in paths]
    if all(present):
      found[split] = [idx.read_idx(p) for p in paths]
    elif any(present) or split == "train":
      raise ValueError(f"{what}: needs {' and '.join(stems)} (raw or .gz); missing "
                       f"{[os.path.basename(p) for p, ok in zip(paths, present) if not ok]}.")
  train_x, train_y = found["train"]
  test_x, test_y = found.get("test", (None, None))
  return _finish(name, train_x, train_y, test_x, test_y, what)


def _image_files(folder: str):
  return sorted(f for f in os.listdir(folder)
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(folder, f)))


def _subfolders(folder: str):
  return sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def _folder_files(root: str):
  """``{split: [(class_name, path), ...]}`` and the class names of the training split."""
  if not os.path.isdir(root):
    raise ValueError(f"image folder {root!r} does not exist.")
  subs = _subfolders(root)
  split_layout = "train" in subs and set(subs) <= {"train", "test"} and bool(_subfolders(os.path.join(root, "train")))
  splits = {"train": os.path.join(root, "train")} if split_layout else {"train": root}
  if split_layout and "test" in subs:
    splits["test"] = os.path.join(root, "test")
  files = {}
  for split, folder in splits.items():
    classes = _subfolders(folder)
    entries = []
    for c in classes:
      names = _image_files(os.path.join(folder, c))
      if not names and split == "train":
        raise ValueError(f"image folder {os.path.join(folder, c)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
      entries += [(c, os.path.join(folder, c, n)) for n in names]
    files[split] = (classes, entries)
  classes = files["train"][0]
  if len(classes) < 2:
    raise ValueError(f"image folder {splits['train']!r} needs one sub-folder per class and at least two classes; "
                     f"found {classes}.")
  return files, classes


def _read_folder(name: str, root: str) -> _Splits:
  try:
    from PIL import Image
  except ImportError as e:
    raise ImportError("folder:PATH datasets are read with Pillow: pip install pillow.") from e
  files, classes = _folder_files(root)
  index = {c: i for i, c in enumerate(classes)}
  test_classes = files.get("test", ([], []))[0]
  unknown = sorted(set(test_classes) - set(classes))
  if unknown:
    raise ValueError(f"image folder {root!r}: test classes {unknown} are not training classes {classes}.")
  modes, sizes = {}, {}
  for _, entries in files.values():  # headers only: sizes and modes before decoding anything
    for _, path in entries:
      try:
        with Image.open(path) as im:
          modes[path], sizes[path] = im.mode, im.size
      except OSError as e:
        raise ValueError(f"image file {path!r} cannot be read by Pillow ({e}).") from e
  all_paths = list(sizes)
  distinct = sorted(set(sizes.values()))
  if len(distinct) > 1:
    first = {s: next(p for p in all_paths if sizes[p] == s) for s in distinct[:2]}
    raise ValueError(f"image folder {root!r} holds images of different sizes, e.g. {distinct[0][0]}x"
                     f"{distinct[0][1]} ({first[distinct[0]]!r}) and {distinct[1][0]}x{distinct[1][1]} "
                     f"({first[distinct[1]]!r}); resize them to one size first.")
  grey = all(m in ("L", "1") for m in modes.values())

  def arrays(entries):
    if not entries:
      return None, None
    width, height = distinct[0]
    x = np.empty((len(entries), height, width) + (() if grey else (3,)), np.uint8)
    for i, (_, path) in enumerate(entries):
      with Image.open(path) as im:
        x[i] = np.asarray(im.convert("L" if grey else "RGB"), np.uint8)
    return x, np.asarray([index[c] for c, _ in entries], np.int32)

  train_x, train_y = arrays(files["train"][1])
  test_x, test_y = arrays(files.get("test", ([], []))[1])
  return _finish(name, train_x, train_y, test_x, test_y, f"image folder {root!r}", classes)


def _folder_stamp(root: str):
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    paths += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
  return _stamp(paths)


def _splits(name: str) -> _Splits:
  """The whole dataset of a file form (``npz``, ``folder``, ``idx``), cached while its files are unchanged."""
  form, arg = parse_name(name)
  path = os.path.abspath(os.path.expanduser(arg))
  if form == "folder":
    stamp = _folder_stamp(path) if os.path.isdir(path) else None
  elif form == "npz":
    stamp = _stamp([path]) if os.path.isfile(path) else None
  else:
    stamp = _stamp(sorted(os.path.join(path, f) for f in os.listdir(path))) if os.path.isdir(path) else None
  cached = _CACHE.get(name)
  if cached is not None and stamp is not None and cached[0] == stamp:
    return cached[1]
  reader = {"npz": _read_npz, "folder": _read_folder, "idx": _read_idx}[form]
  splits = reader(name, path)
  _CACHE.clear()
  _CACHE[name] = (stamp, splits)
  _SPECS[name] = splits.spec
  return splits


# ------------------------------------------------------------------------------------------------------ TFDS


def _stats_path(data_dir: str, name: str) -> str:
  safe = name.replace("/", "__").replace(":", "_")
  return os.path.join(data_dir, STATS_DIR, f"{safe}.json")


def _tfds_spec(name: str, data_dir: str, download: bool) -> DatasetSpec:
  """The spec of TFDS dataset ``name``: shapes and classes from its metadata, mean/std from the ``train``
  split, cached in :func:`_stats_path` for the builder's version."""
  from jaxdistill.data import datasets, offline
  from jaxdistill import io

  key = f"tfds:{name}"
  if key in _SPECS:
    return _SPECS[key]
  offline.require_tfds()
  try:
    builder = datasets._tfds_builder(name, data_dir, None, download)
  except Exception as e:  # DatasetNotFoundError (its message lists every TFDS dataset), download errors, ...
    first = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"tfds:{name}: no such TFDS dataset, or it cannot be prepared in {data_dir!r} "
                     f"({type(e).__name__}: {first})") from e
  info = builder.info
  features = info.features
  if "image" not in features or "label" not in features:
    raise ValueError(f"tfds:{name} is not an image-classification dataset with 'image' and 'label' features "
                     f"(features: {list(features)}).")
  if "train" not in info.splits or "test" not in info.splits:
    raise ValueError(f"tfds:{name} needs a 'train' and a 'test' split; it has {sorted(info.splits)}.")
  num_classes = int(features["label"].num_classes)
  version = str(info.version)
  path = _stats_path(data_dir, key)
  if os.path.exists(path):
    cached = io.load_json(path)
    if cached.get("version") == version:
      spec = DatasetSpec(key, tuple(cached["image_shape"]), int(cached["num_classes"]), tuple(cached["mean"]),
                         tuple(cached["std"]), int(cached["num_train"]), int(cached["num_test"]), False,
                         tuple(cached.get("class_names", ())))
      _SPECS[key] = spec
      return spec
  images, labels = _tfds_arrays(name, "train", data_dir, download)
  what = f"tfds:{name}/train"
  labels = _as_labels(labels, images.shape[0], what)
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"{what}: labels outside 0 … {num_classes - 1}.")
  mean, std = channel_statistics(images, what)
  names = tuple(str(n) for n in (features["label"].names or ()))
  spec = DatasetSpec(key, tuple(int(s) for s in images.shape[1:]), num_classes, mean, std,
                     int(info.splits["train"].num_examples), int(info.splits["test"].num_examples), False, names)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  io.save_json(path, {"name": key, "version": version, "image_shape": list(spec.image_shape),
                      "num_classes": num_classes, "mean": list(mean), "std": list(std),
                      "num_train": spec.num_train, "num_test": spec.num_test, "class_names": list(names),
                      "computed_from": "train"})
  _SPECS[key] = spec
  return spec


def _tfds_arrays(name: str, split: str, data_dir: str, download: bool) -> Tuple[np.ndarray, np.ndarray]:
  from jaxdistill.data import datasets
  try:
    images, labels = datasets._load_tfds(name, split, data_dir, None, download)
  except ValueError as e:  # a bad split or an empty one: already says which
    raise ValueError(f"tfds:{name}: {e}") from e
  except Exception as e:  # tf.data refuses to batch images of different sizes
    raise ValueError(f"tfds:{name}/{split} cannot be read as one array of images (different sizes?): "
                     f"{type(e).__name__}: {str(e)[:300]}") from e
  if images.ndim == 3:
    images = images[..., None]
  return _as_images(images, f"tfds:{name}/{split}"), np.asarray(labels)


# ------------------------------------------------------------------------------------------------- the API


def spec_of(name: str, data_dir: Optional[str] = None, download: bool = True) -> DatasetSpec:
  """The :class:`DatasetSpec` of a user dataset (a form name or a name registered by :func:`from_arrays`);
  reads (and for ``tfds:`` caches) the data the first time.

  Raises:
    ValueError: an unknown name, or the data cannot be read (the message says why).
  """
  if name in _SPECS and parse_name(name) is None:
    return _SPECS[name]
  parsed = parse_name(name)
  if parsed is None:
    raise ValueError(f"Unknown dataset {name!r}; accepted: {sorted(DATASETS)}, a name registered by "
                     "data.from_arrays, or " + ", ".join(f"{f}:{'NAME' if f == 'tfds' else 'PATH'}" for f in FORMS)
                     + ".")
  form, arg = parsed
  if form == "tfds":
    from jaxdistill.data.datasets import default_data_dir
    return _tfds_spec(arg, os.path.expanduser(data_dir or default_data_dir()), download)
  return _splits(name).spec


def load_uint8(name: str, split: str, data_dir: Optional[str] = None, download: bool = True
               ) -> Tuple[np.ndarray, np.ndarray, DatasetSpec]:
  """Raw pixels of a user dataset: uint8 images ``[N, H, W, C]``, int32 labels ``[N]``, the spec.

  Args:
    name: ``npz:PATH``, ``folder:PATH``, ``idx:PATH`` or ``tfds:NAME`` (module docstring).
    split: ``"train"`` or ``"test"``, optionally sliced (``"train[:500]"``, ``"test[:10%]"``).
    data_dir: TFDS data directory (``tfds:`` only; also where its statistics are cached).
    download: ``tfds:`` only: let TFDS download and prepare the dataset when absent.

  Float sources are rounded to uint8 here; :func:`load` keeps them float.

  Raises:
    ValueError: unknown form, bad split, unreadable or invalid data (the message says which and why).
  """
  form, arg = parse_name(name) or (None, None)
  if form is None:
    raise ValueError(f"{name!r} is not a user dataset name (forms: {', '.join(f + ':' for f in FORMS)}).")
  idx.parse_split(split)  # ValueError naming the accepted splits before reading anything
  if form == "tfds":
    from jaxdistill.data.datasets import default_data_dir
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    spec = _tfds_spec(arg, data_dir, download)
    images, labels = _tfds_arrays(arg, split, data_dir, download)
    if images.shape[1:] != spec.image_shape:
      raise ValueError(f"{name}/{split}: images {images.shape[1:]}, but the training split's are "
                       f"{spec.image_shape}.")
    labels = _as_labels(labels, images.shape[0], f"{name}/{split}")
    return images, labels, spec
  x, y, spec = _file_split(name, split)
  if x.dtype != np.uint8:
    x = np.round(x * 255.0).astype(np.uint8)
  return x, y, spec


def _file_split(name: str, split: str):
  """``(images, labels, spec)`` of a split (sliced) of a file form; images as stored (uint8 or float)."""
  sl = idx.parse_split(split)
  splits = _splits(name)
  x, y = (splits.train_x, splits.train_y) if sl.name == "train" else (splits.test_x, splits.test_y)
  start, stop = idx.split_bounds(split, len(y))
  if start == stop:
    raise ValueError(f"{name}/{split} holds no examples.")
  return x[start:stop].copy(), y[start:stop].copy(), splits.spec


def load(name: str, split: str, data_dir: Optional[str] = None, download: bool = True
         ) -> Tuple[np.ndarray, np.ndarray, DatasetSpec]:
  """A split of a user dataset as :func:`jaxdistill.data.load` returns it: normalised float32 images
  ``[N, H, W, C]`` (the training split's per-channel statistics), int32 labels ``[N]``, the spec. Float sources
  keep their precision (:func:`load_uint8` rounds them). Arguments as :func:`load_uint8`."""
  form, _ = parse_name(name) or (None, None)
  if form == "tfds":
    images, labels, spec = load_uint8(name, split, data_dir, download)
  elif form is not None:
    images, labels, spec = _file_split(name, split)
  else:
    raise ValueError(f"{name!r} is not a user dataset name (forms: {', '.join(f + ':' for f in FORMS)}).")
  return normalise_with(_to_unit(images), spec), labels, spec


__all__ = ["FORMS", "HOLDOUT_FRACTION", "IMAGE_EXTENSIONS", "channel_statistics", "from_arrays", "is_user_dataset",
           "load", "load_uint8", "normalise_with", "parse_name", "registered_spec", "spec_of"]
