"""Loading datasets as normalised NumPy arrays, through tensorflow-datasets or straight from IDX files.

``load(name, split)`` returns ``(images, labels, spec)`` with ``images`` float32 ``[N, H, W, C]`` in normalised
space (per-channel mean/std of :mod:`jaxdistill.data.specs`) and ``labels`` int32 ``[N]``.

Two backends, chosen by ``backend=`` or ``$JAXDISTILL_DATA_BACKEND`` (:data:`BACKENDS`):

* ``tfds``: tensorflow-datasets (``pip install jaxdistill[tfds]``). Fashion-MNIST is prepared offline from
  Debian's ``dataset-fashion-mnist`` package and MNIST from local IDX files where present (see
  :mod:`jaxdistill.data.offline`; both in file order); the other datasets use TFDS's own builders and need
  internet once.
* ``idx``: NumPy only, for Fashion-MNIST and MNIST (:mod:`jaxdistill.data.idx`); needs no TensorFlow.
* ``auto`` (default): ``tfds`` when tensorflow-datasets can be imported, else ``idx`` for Fashion-MNIST and
  MNIST and an error naming ``pip install jaxdistill[tfds]`` for the others.

Both backends return the same arrays (pixels, labels, order) for the same split string.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from jaxdistill.data import idx, offline, user
from jaxdistill.data.normalise import normalise
from jaxdistill.data.specs import DatasetSpec, get_spec

BACKEND_ENV = "JAXDISTILL_DATA_BACKEND"
BACKENDS = ("auto", "tfds", "idx")
_READ_BATCH = 10000  # examples per tf.data batch when reading a split


def default_data_dir() -> str:
  """``$JAXDISTILL_DATA_DIR`` if set, else TFDS's default ``~/tensorflow_datasets``."""
  return os.path.expanduser(os.environ.get("JAXDISTILL_DATA_DIR", "~/tensorflow_datasets"))


def _check_split(split: str, spec: DatasetSpec) -> None:
  """Raises ``ValueError`` for a malformed split, or a slice that is out of range or selects nothing.

  The range check uses the spec's split sizes (shard slices are left to TFDS), so both backends fail alike.
  """
  sl = idx.parse_split(split)  # ValueError naming the split and the accepted values.
  if sl.unit != "shard":
    start, stop = idx.split_bounds(split, spec.num_train if sl.name == "train" else spec.num_test)
    if start == stop:
      raise ValueError(f"{spec.name}/{split} holds no examples.")


def tfds_available() -> bool:
  """True when tensorflow-datasets (and so TensorFlow) can be imported."""
  try:
    offline.require_tfds()
  except ImportError:
    return False
  return True


def resolve_backend(name: str, backend: Optional[str] = None) -> str:
  """The backend that loads ``name``: ``"tfds"`` or ``"idx"``.

  Args:
    name: a dataset of :data:`jaxdistill.data.specs.DATASETS`.
    backend: one of :data:`BACKENDS`; defaults to ``$JAXDISTILL_DATA_BACKEND``, else ``"auto"``.

  Raises:
    ValueError: an unknown backend, or ``"idx"`` for a dataset without IDX files.
    offline.MissingExtraError: ``"auto"`` for a dataset other than Fashion-MNIST/MNIST while
      tensorflow-datasets cannot be imported (the message says ``pip install jaxdistill[tfds]``).
  """
  from_env = backend is None
  backend = (os.environ.get(BACKEND_ENV) or "auto") if from_env else backend
  if backend not in BACKENDS:
    where = f"${BACKEND_ENV}" if from_env else "backend"
    raise ValueError(f"Unknown data backend {where}={backend!r}; accepted values: {list(BACKENDS)}.")
  if backend == "idx" and name not in idx.IDX_DATASETS:
    raise ValueError(f"The 'idx' data backend reads only {list(idx.IDX_DATASETS)}, not {name!r}; use "
                     "backend 'tfds' or 'auto' (pip install jaxdistill[tfds]).")
  if backend != "auto":
    return backend
  if tfds_available():
    return "tfds"
  if name in idx.IDX_DATASETS:
    return "idx"
  offline.require_tfds()  # Raises MissingExtraError naming the extra.
  raise AssertionError("unreachable: require_tfds() succeeded after failing")


def _tfds_builder(name: str, data_dir: str, idx_dir: Optional[str], download: bool):
  """A prepared TFDS builder of ``name``, prepared first when absent (or in hashed order) and allowed.

  Fashion-MNIST is always prepared (offline, from its IDX files); the others only with ``download``.
  """
  tfds = offline.require_tfds()
  ordered = name in offline.ORDERED_DATASETS
  source = idx.find_idx_dir(name, idx_dir) if ordered else None
  builder = offline.make_builder(data_dir, source, name) if ordered else tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  if name == "fashion_mnist":
    return offline.prepare(name, data_dir, source)
  if not download:
    raise ValueError(f"Dataset {name!r} is not prepared in {data_dir!r} and download=False.")
  try:
    if ordered:
      return offline.prepare(name, data_dir, source)
    builder.download_and_prepare()
    return builder
  except Exception as e:  # Network errors surface in many forms; name the fix.
    raise ValueError(
        f"Could not download/prepare {name!r} into {data_dir!r} ({type(e).__name__}: {e}). "
        "This needs internet once; Fashion-MNIST alone works offline.") from e


def _load_tfds(name: str, split: str, data_dir: str, idx_dir: Optional[str], download: bool
               ) -> Tuple[np.ndarray, np.ndarray]:
  """uint8 images ``[N, H, W, C]`` (or ``[N, H, W]``) and labels ``[N]`` of ``name``/``split`` via TFDS."""
  tfds = offline.require_tfds()
  builder = _tfds_builder(name, data_dir, idx_dir, download)
  # Fixed-size batches, not batch_size=-1: TFDS batches the latter by the split size in the dataset metadata,
  # and where that is unknown (e.g. under tfds.testing.mock_data) the batch is sys.maxsize and tf.data aborts.
  batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=_READ_BATCH, as_supervised=True)))
  if not batches:
    raise ValueError(f"{name}/{split} holds no examples.")
  images = np.concatenate([np.asarray(b[0], np.uint8) for b in batches])
  labels = np.concatenate([np.asarray(b[1]) for b in batches])
  return images, labels


def load_uint8(name: str, split: str, data_dir: Optional[str] = None, download: bool = True,
               backend: Optional[str] = None, idx_dir: Optional[str] = None
               ) -> Tuple[np.ndarray, np.ndarray, DatasetSpec]:
  """Loads raw pixels: uint8 ``[N, H, W, C]`` images, int32 ``[N]`` labels and the dataset spec.

  Args:
    name: one of :data:`jaxdistill.data.specs.DATASETS`.
    split: ``"train"`` or ``"test"``, optionally with a TFDS slice (``"train[:2000]"``, ``"train[100:200]"``,
      ``"test[:10%]"``); both backends slice alike.
    data_dir: TFDS data directory; defaults to :func:`default_data_dir` (unused by the ``idx`` backend).
    download: for datasets other than Fashion-MNIST, let TFDS download and prepare them when absent.
    backend: ``"auto"``, ``"tfds"`` or ``"idx"`` (:func:`resolve_backend`); defaults to
      ``$JAXDISTILL_DATA_BACKEND``, else ``"auto"``.
    idx_dir: folder of the IDX files of Fashion-MNIST/MNIST (:func:`jaxdistill.data.idx.find_idx_dir`); the
      ``tfds`` backend prepares from it too.

  User datasets (``npz:PATH``, ``folder:PATH``, ``idx:PATH``, ``tfds:NAME``) are read by
  :func:`jaxdistill.data.user.load_uint8` (``backend``/``idx_dir`` do not apply).

  Raises:
    ValueError: unknown name, split or backend, or the data is absent and cannot be prepared (the message
      says how).
    offline.MissingExtraError: (also a ValueError) TFDS is needed but not installed.
  """
  if user.is_user_dataset(name):
    return user.load_uint8(name, split, data_dir=data_dir, download=download)
  spec = get_spec(name)
  _check_split(split, spec)
  if resolve_backend(name, backend) == "idx":
    return idx.load_uint8(name, split, idx_dir)
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  images, labels = _load_tfds(name, split, data_dir, idx_dir, download)
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[1:] != spec.image_shape:
    raise ValueError(f"{name}/{split}: expected images {spec.image_shape}, got {images.shape[1:]}.")
  return images, np.asarray(labels, np.int32), spec


def load(name: str, split: str, data_dir: Optional[str] = None, download: bool = True,
         backend: Optional[str] = None, idx_dir: Optional[str] = None
         ) -> Tuple[np.ndarray, np.ndarray, DatasetSpec]:
  """Loads a split as normalised float32 images ``[N, H, W, C]``, int32 labels ``[N]`` and the spec.

  Arguments as :func:`load_uint8`.

  Example:
    >>> x, y, spec = load("fashion_mnist", "test")   # x: (10000, 28, 28, 1) float32
    >>> x, y, spec = load("npz:my_data.npz", "train")  # your arrays; see jaxdistill.data.user
  """
  if user.is_user_dataset(name):
    return user.load(name, split, data_dir=data_dir, download=download)
  images, labels, spec = load_uint8(name, split, data_dir=data_dir, download=download, backend=backend,
                                    idx_dir=idx_dir)
  return normalise(images.astype(np.float32) / 255.0, name).astype(np.float32), labels, spec
