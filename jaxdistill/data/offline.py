"""Offline Fashion-MNIST as a real TFDS dataset, built from Debian's ``dataset-fashion-mnist`` IDX files.

TFDS cannot download in an offline workplace, and Debian re-compresses the original ``.gz`` files so TFDS's
checksums fail. This builder subclasses TFDS's own Fashion-MNIST builder (same features, same version, same
on-disk name ``fashion_mnist``) and only changes where the split files come from: the IDX files gunzipped
into ``<data_dir>/downloads/fashion_mnist_idx``. The records written are byte-for-byte the original pixels.
"""
from __future__ import annotations

import gzip
import os
import shutil

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
_FILES = {
    "train_data": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_data": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _missing_files_error(source_dir: str) -> ValueError:
  return ValueError(
      f"Fashion-MNIST IDX files not found in {source_dir!r}. Install them offline with "
      f"`apt-get update && apt-get install -y {DEBIAN_PACKAGE}` (or `make data`), or pass "
      "source_dir= pointing at a folder with the four original *-ubyte(.gz) files.")


def _unpack(source_dir: str, dest_dir: str) -> dict:
  """Gunzips (or copies) the four IDX files into ``dest_dir``; returns their paths by role."""
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


def make_builder(data_dir: str, source_dir: str = DEBIAN_DIR):
  """Returns a TFDS builder for ``fashion_mnist`` reading the local IDX files in ``source_dir``."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import mnist as tfds_mnist

  unpack_dir = os.path.join(data_dir, "downloads", "fashion_mnist_idx")

  class LocalFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
    """TFDS Fashion-MNIST whose split files are the local IDX files, not a download."""
    name = "fashion_mnist"

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing is downloaded.
      files = _unpack(source_dir, unpack_dir)
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

  return LocalFashionMNIST(data_dir=data_dir)


def prepare_fashion_mnist(data_dir: str, source_dir: str = DEBIAN_DIR):
  """Prepares ``fashion_mnist`` in ``data_dir`` from local IDX files (idempotent); returns the builder."""
  import tensorflow_datasets as tfds

  builder = make_builder(data_dir, source_dir)
  if not builder.is_prepared():
    if not any(os.path.exists(os.path.join(source_dir, s + ext))
               for s in _FILES.values() for ext in ("", ".gz")):
      raise _missing_files_error(source_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
