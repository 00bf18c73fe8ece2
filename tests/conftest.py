"""Shared fixtures: a small slice of the real Fashion-MNIST, loaded once per session.

The data is prepared by ``make data`` (``make test`` depends on it) into ``$JAXDISTILL_DATA_DIR`` (default:
``<repo>/data``). Absent data is a failure, not a skip: real data is part of the suite.
"""
from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAXDISTILL_PROGRESS", "0")
# CLIs run by the tests compile afresh (no persistent compilation cache shared with the user's runs);
# tests/test_compile_cache.py turns it on where it is the subject.
os.environ.setdefault("JAXDISTILL_COMPILE_CACHE", "off")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

FMNIST_TRAIN_SLICE = "train[:2000]"


@pytest.fixture(scope="session")
def data_dir() -> str:
  """The TFDS data directory holding the prepared Fashion-MNIST (fails with the fix if it is not there)."""
  from jaxdistill.data import offline

  path = os.path.expanduser(os.environ.get("JAXDISTILL_DATA_DIR") or str(REPO / "data"))
  if not offline.make_builder(path).is_prepared():
    pytest.fail(
        f"Fashion-MNIST is not prepared in {path!r} (JAXDISTILL_DATA_DIR). Run `make data` (it installs the "
        "Debian package dataset-fashion-mnist and builds the TFDS dataset offline), or point "
        "JAXDISTILL_DATA_DIR at a prepared data directory.", pytrace=False)
  return path


@pytest.fixture(scope="session")
def fmnist_train(data_dir):
  """``(images [2000, 28, 28, 1] float32 normalised, labels [2000] int32, spec)`` from the train split."""
  from jaxdistill import data

  return data.load("fashion_mnist", FMNIST_TRAIN_SLICE, data_dir=data_dir)


@pytest.fixture(scope="session")
def fmnist_test(data_dir):
  """The full Fashion-MNIST test split: ``(images [10000, 28, 28, 1], labels [10000], spec)``."""
  from jaxdistill import data

  return data.load("fashion_mnist", "test", data_dir=data_dir)


@pytest.fixture(scope="session")
def fmnist_subset(fmnist_train):
  """A class-balanced real subset of 10 images per class, ``(images [100, ...], labels [100])``."""
  import jax
  from jaxdistill import data

  images, labels, spec = fmnist_train
  idx = data.random_subset(jax.random.PRNGKey(0), labels, spec.num_classes, 10).reshape(-1)
  return images[idx], labels[idx]


@pytest.fixture
def rng():
  """A seeded NumPy generator (fresh per test)."""
  return np.random.default_rng(0)
