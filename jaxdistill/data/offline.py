"""Fashion-MNIST (and MNIST) as real TFDS datasets in file order, built from the original IDX files.

TFDS cannot download in an offline workplace, and Debian re-compresses the original ``.gz`` files so TFDS's
checksums fail. These builders subclass TFDS's own Fashion-MNIST / MNIST builders (same features, same version,
same on-disk names ``fashion_mnist`` / ``mnist``) and change two things:

* where the split files come from: local IDX files (for Fashion-MNIST Debian's ``dataset-fashion-mnist``),
  gunzipped into ``<data_dir>/downloads/<name>_idx``; MNIST without local files is downloaded as usual;
* the order: the datasets are prepared with ``disable_shuffling=True``, so the records are the IDX files'
  examples in file order (TFDS would otherwise order them by a hash of their index). This is what lets
  :mod:`jaxdistill.data.idx` read the same arrays without TensorFlow.

A dataset prepared by an older jaxdistill (or by stock TFDS), i.e. in hashed order, does not count as prepared
(:func:`is_ordered`) and is prepared again, in place, by :func:`prepare`. The records written are
byte-for-byte the original pixels.

TensorFlow and tensorflow-datasets are optional (``pip install jaxdistill[tfds]``); they are imported only
inside these functions, through :func:`require_tfds`.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
from typing import Optional

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
MNIST_DIR = "/usr/share/datasets/mnist"
# Where each dataset's IDX files are looked for by default (MNIST's only if present).
SOURCE_DIRS = {"fashion_mnist": DEBIAN_DIR, "mnist": MNIST_DIR}
ORDERED_DATASETS = tuple(SOURCE_DIRS)
_FILES = {
    "train_data": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_data": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class MissingExtraError(ImportError, ValueError):
  """An optional dependency group of jaxdistill is not installed; the message names the ``pip install``.

  Both an :class:`ImportError` and a :class:`ValueError`, so callers catching either see it.
  """


def require_tfds():
  """Returns the ``tensorflow_datasets`` module.

  Raises:
    MissingExtraError: TensorFlow / tensorflow-datasets cannot be imported; the message says
      ``pip install jaxdistill[tfds]`` and that Fashion-MNIST/MNIST load without them.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise MissingExtraError(
        f"tensorflow-datasets (with TensorFlow) is needed here but cannot be imported ({e}). Install the "
        "extra: pip install jaxdistill[tfds]. Fashion-MNIST and MNIST load without it from their IDX files "
        "(JAXDISTILL_DATA_BACKEND=idx, see jaxdistill.data.idx).") from e
  return tfds


def _check_name(name: str) -> None:
  if name not in ORDERED_DATASETS:
    raise ValueError(f"Unknown dataset {name!r} for the offline builder; accepted values: "
                     f"{list(ORDERED_DATASETS)}.")


def _missing_files_error(source_dir: str) -> ValueError:
  return ValueError(
      f"Fashion-MNIST IDX files not found in {source_dir!r}. Install them offline with "
      f"`apt-get update && apt-get install -y {DEBIAN_PACKAGE}` (or `make data`), or pass "
      "source_dir= pointing at a folder with the four original *-ubyte(.gz) files.")


def has_idx_files(source_dir: Optional[str]) -> bool:
  """True when ``source_dir`` holds all four IDX files, raw or ``.gz``."""
  return bool(source_dir) and all(
      os.path.exists(os.path.join(source_dir, stem)) or os.path.exists(os.path.join(source_dir, stem + ".gz"))
      for stem in _FILES.values())


def default_source_dir(name: str) -> Optional[str]:
  """The default IDX folder of ``name``: Debian's for Fashion-MNIST; MNIST's only where it holds the files."""
  _check_name(name)
  source = SOURCE_DIRS[name]
  return source if name == "fashion_mnist" or has_idx_files(source) else None


def _unpack(source_dir: str, dest_dir: str) -> dict:
  """Gunzips (or copies) the four IDX files into ``dest_dir`` (each written atomically); paths by role."""
  os.makedirs(dest_dir, exist_ok=True)
  paths = {}
  for role, stem in _FILES.items():
    out = os.path.join(dest_dir, stem)
    paths[role] = out
    if os.path.exists(out):
      continue
    gz, raw = os.path.join(source_dir, stem + ".gz"), os.path.join(source_dir, stem)
    tmp = out + ".tmp"
    if os.path.exists(gz):
      with gzip.open(gz, "rb") as f_in, open(tmp, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    elif os.path.exists(raw):
      shutil.copyfile(raw, tmp)
    else:
      raise _missing_files_error(source_dir)
    os.replace(tmp, out)
  return paths


def is_ordered(data_path) -> bool:
  """True when the prepared dataset in ``data_path`` (``<data_dir>/<name>/<version>``) is in file order.

  Reads ``dataset_info.json`` directly: the builder's in-memory ``info`` takes ``disable_shuffling`` from the
  code, not from the files on disk.
  """
  try:
    with open(os.path.join(os.fspath(data_path), "dataset_info.json")) as f:
      return bool(json.load(f).get("disableShuffling", False))
  except (OSError, ValueError):
    return False


def make_builder(data_dir: str, source_dir: Optional[str] = None, name: str = "fashion_mnist"):
  """Returns an ordered TFDS builder for ``name`` (``"fashion_mnist"`` or ``"mnist"``) in ``data_dir``.

  Args:
    data_dir: the TFDS data directory.
    source_dir: folder of the four IDX files; defaults to :func:`default_source_dir`. For MNIST, None means
      downloading the files through TFDS.
    name: the dataset.

  Its ``is_prepared()`` is True only for a dataset prepared in file order (:func:`is_ordered`).

  Raises:
    MissingExtraError: tensorflow-datasets is not installed.
    ValueError: ``name`` is not one of :data:`ORDERED_DATASETS`.
  """
  _check_name(name)
  tfds = require_tfds()
  from tensorflow_datasets.image_classification import mnist as tfds_mnist

  base = tfds_mnist.FashionMNIST if name == "fashion_mnist" else tfds_mnist.MNIST
  source = source_dir if source_dir is not None else default_source_dir(name)
  unpack_dir = os.path.join(data_dir, "downloads", f"{name}_idx")
  dataset_name = name

  class LocalOrderedIDX(base, skip_registration=True):
    """TFDS Fashion-MNIST / MNIST in IDX file order, from local IDX files where given."""
    name = dataset_name

    def _info(self):
      info = super()._info()
      return tfds.core.DatasetInfo(
          builder=self, description=info.description, features=info.features,
          supervised_keys=info.supervised_keys, disable_shuffling=True, homepage=info.homepage,
          citation=info.citation)

    def is_prepared(self) -> bool:
      return super().is_prepared() and is_ordered(self.data_path)

    def _split_generators(self, dl_manager):
      if source is None:  # MNIST without local files: TFDS downloads them.
        return super()._split_generators(dl_manager)
      files = _unpack(source, unpack_dir)
      return [
          tfds.core.SplitGenerator(
              name=tfds.Split.TRAIN,
              gen_kwargs=dict(num_examples=60000, data_path=files["train_data"],
                              label_path=files["train_labels"])),
          tfds.core.SplitGenerator(
              name=tfds.Split.TEST,
              gen_kwargs=dict(num_examples=10000, data_path=files["test_data"],
                              label_path=files["test_labels"])),
      ]

  LocalOrderedIDX.__name__ = LocalOrderedIDX.__qualname__ = (
      "LocalFashionMNIST" if name == "fashion_mnist" else "LocalMNIST")
  return LocalOrderedIDX(data_dir=data_dir)


def prepare(name: str, data_dir: str, source_dir: Optional[str] = None):
  """Prepares ``name`` in file order in ``data_dir`` (idempotent); returns the prepared builder.

  A dataset already there in hashed order (older jaxdistill, stock TFDS) is deleted and prepared again.

  Raises:
    MissingExtraError: tensorflow-datasets is not installed.
    ValueError: Fashion-MNIST's IDX files are missing (the message names the Debian package), or ``name``
      is not one of :data:`ORDERED_DATASETS`.
  """
  tfds = require_tfds()
  builder = make_builder(data_dir, source_dir, name)
  if builder.is_prepared():
    return builder
  source = source_dir if source_dir is not None else default_source_dir(name)
  if name == "fashion_mnist" and not has_idx_files(source):
    raise _missing_files_error(source)
  # REUSE_CACHE_IF_EXISTS deletes a stale (hashed-order) dataset of the same version before preparing.
  stale = os.path.exists(os.fspath(builder.data_path))
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if stale
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  # try_download_gcs=False: a pre-built copy from Google's bucket would be in hashed order.
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False, download_mode=mode))
  return make_builder(data_dir, source_dir, name)  # a fresh builder reads the new dataset_info.json


def prepare_fashion_mnist(data_dir: str, source_dir: str = DEBIAN_DIR):
  """Prepares ``fashion_mnist`` in ``data_dir`` from local IDX files (idempotent); returns the builder."""
  return prepare("fashion_mnist", data_dir, source_dir)
