"""Loading datasets through tensorflow-datasets as normalised NumPy arrays.

``load(name, split)`` returns ``(images, labels, spec)`` with ``images`` float32 ``[N, H, W, C]`` in normalised
space (per-channel mean/std of :mod:`jaxdistill.data.specs`) and ``labels`` int32 ``[N]``.
Fashion-MNIST is prepared offline from Debian's ``dataset-fashion-mnist`` package (see
:mod:`jaxdistill.data.offline`); the other datasets use TFDS's own builders and need internet once.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Tuple

import numpy as np

from jaxdistill.data import offline
from jaxdistill.data.normalise import normalise
from jaxdistill.data.specs import SPLITS, DatasetSpec, get_spec

_SPLIT_RE = re.compile(r"^(train|test)(\[[^\]]*\])?$")
_READ_BATCH = 10000  # examples per tf.data batch when reading a split


def default_data_dir() -> str:
  """``$JAXDISTILL_DATA_DIR`` if set, else TFDS's default ``~/tensorflow_datasets``."""
  return os.path.expanduser(os.environ.get("JAXDISTILL_DATA_DIR", "~/tensorflow_datasets"))


def _check_split(split: str) -> None:
  if not isinstance(split, str) or not _SPLIT_RE.match(split):
    raise ValueError(
        f"Unknown split {split!r}; accepted values: {list(SPLITS)}, optionally with a TFDS slice "
        "such as 'train[:1000]'.")


def load_uint8(name: str, split: str, data_dir: Optional[str] = None,
               download: bool = True) -> Tuple[np.ndarray, np.ndarray, DatasetSpec]:
  """Loads raw pixels: uint8 ``[N, H, W, C]`` images, int32 ``[N]`` labels and the dataset spec.

  Args:
    name: one of :data:`jaxdistill.data.specs.DATASETS`.
    split: ``"train"`` or ``"test"`` (a TFDS slice like ``"train[:10%]"`` is allowed).
    data_dir: TFDS data directory; defaults to :func:`default_data_dir`.
    download: for datasets other than Fashion-MNIST, let TFDS download and prepare them when absent.

  Raises:
    ValueError: unknown name or split, or the data is absent and cannot be prepared (the message says how).
  """
  spec = get_spec(name)
  _check_split(split)
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  import tensorflow_datasets as tfds

  if name == "fashion_mnist":
    builder = offline.make_builder(data_dir)
    if not builder.is_prepared():
      builder = offline.prepare_fashion_mnist(data_dir)
  else:
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      if not download:
        raise ValueError(f"Dataset {name!r} is not prepared in {data_dir!r} and download=False.")
      try:
        builder.download_and_prepare()
      except Exception as e:  # Network errors surface in many forms; name the fix.
        raise ValueError(
            f"Could not download/prepare {name!r} into {data_dir!r} ({type(e).__name__}: {e}). "
            "This needs internet once; Fashion-MNIST alone works offline.") from e
  # Fixed-size batches, not batch_size=-1: TFDS batches the latter by the split size in the dataset metadata,
  # and where that is unknown (e.g. under tfds.testing.mock_data) the batch is sys.maxsize and tf.data aborts.
  batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=_READ_BATCH, as_supervised=True)))
  if not batches:
    raise ValueError(f"{name}/{split} holds no examples.")
  images = np.concatenate([np.asarray(b[0], np.uint8) for b in batches])
  labels = np.concatenate([np.asarray(b[1]) for b in batches])
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[1:] != spec.image_shape:
    raise ValueError(f"{name}/{split}: expected images {spec.image_shape}, got {images.shape[1:]}.")
  return images, np.asarray(labels, np.int32), spec


def load(name: str, split: str, data_dir: Optional[str] = None,
         download: bool = True) -> Tuple[np.ndarray, np.ndarray, DatasetSpec]:
  """Loads a split as normalised float32 images ``[N, H, W, C]``, int32 labels ``[N]`` and the spec.

  Example:
    >>> x, y, spec = load("fashion_mnist", "test")   # x: (10000, 28, 28, 1) float32
  """
  images, labels, spec = load_uint8(name, split, data_dir=data_dir, download=download)
  return normalise(images.astype(np.float32) / 255.0, name).astype(np.float32), labels, spec
