"""Dataset loading (real Fashion-MNIST and TFDS-mocked datasets), specs and normalisation."""
from __future__ import annotations

import numpy as np
import pytest

from jaxdistill import data
from jaxdistill.data import offline
from jaxdistill.data.specs import DATASETS

# METHODS.md, "Data": name -> (train, test, shape, mean, std).
PUBLISHED = {
    "mnist": (60000, 10000, (28, 28, 1), (0.1307,), (0.3081,)),
    "fashion_mnist": (60000, 10000, (28, 28, 1), (0.2861,), (0.3530,)),
    "svhn_cropped": (73257, 26032, (32, 32, 3), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": (50000, 10000, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": (50000, 10000, (32, 32, 3), (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
}


# --- specs -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_spec_matches_published_facts(name):
  num_train, num_test, shape, mean, std = PUBLISHED[name]
  spec = data.get_spec(name)
  assert spec.name == name
  assert (spec.num_train, spec.num_test, spec.image_shape) == (num_train, num_test, shape)
  np.testing.assert_allclose(spec.mean, mean)
  np.testing.assert_allclose(spec.std, std)
  assert len(spec.mean) == len(spec.std) == shape[-1]
  assert spec.num_classes == (100 if name == "cifar100" else 10)


def test_digit_flags():
  assert {n for n, s in DATASETS.items() if s.digits} == {"mnist", "svhn_cropped"}


def test_unknown_dataset_name_raises():
  with pytest.raises(ValueError, match="Unknown dataset"):
    data.get_spec("imagenet")
  with pytest.raises(ValueError, match="Unknown dataset"):
    data.load("imagenet", "train")
  with pytest.raises(ValueError, match="Unknown dataset"):
    data.normalise(np.zeros((1, 28, 28, 1)), "fashionmnist")


@pytest.mark.parametrize("split", ["validation", "TRAIN", "train[:10", "train;test", "", None])
def test_bad_split_raises(split, tmp_path):
  with pytest.raises(ValueError, match="split"):
    data.load("fashion_mnist", split, data_dir=str(tmp_path))


def test_default_data_dir_follows_env(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXDISTILL_DATA_DIR", str(tmp_path))
  assert data.default_data_dir() == str(tmp_path)
  monkeypatch.delenv("JAXDISTILL_DATA_DIR")
  assert data.default_data_dir().endswith("tensorflow_datasets")
  assert "~" not in data.default_data_dir()


# --- normalisation ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_normalise_closed_form_and_round_trip(name, rng):
  spec = data.get_spec(name)
  x = rng.random((3,) + spec.image_shape).astype(np.float32)
  z = data.normalise(x, name)
  expected = (x - np.asarray(spec.mean)) / np.asarray(spec.std)
  np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(data.denormalise(z, name), x, atol=1e-6)
  np.testing.assert_allclose(data.denormalise(z, name, clip=False), x, atol=1e-6)


def test_denormalise_clips_only_when_asked():
  z = np.full((1, 28, 28, 1), 10.0, np.float32)  # far above 1 in pixel space
  assert float(data.denormalise(z, "fashion_mnist").max()) == 1.0
  assert float(data.denormalise(z, "fashion_mnist", clip=False).max()) > 1.0
  assert float(data.denormalise(-z, "fashion_mnist").min()) == 0.0


def test_normalise_round_trip_on_jax_arrays(rng):
  import jax.numpy as jnp

  x = jnp.asarray(rng.random((2, 32, 32, 3)), jnp.float32)
  back = data.denormalise(data.normalise(x, "cifar10"), "cifar10")
  assert isinstance(back, jnp.ndarray)
  np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-6)


# --- real Fashion-MNIST ----------------------------------------------------------------------------------------

def test_fashion_mnist_slice_shapes_and_normalisation(fmnist_train):
  images, labels, spec = fmnist_train
  assert spec == data.get_spec("fashion_mnist")
  assert images.shape == (2000, 28, 28, 1) and images.dtype == np.float32
  assert labels.shape == (2000,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10
  assert set(np.unique(labels)) == set(range(10))
  # The published mean/std are those of the training set: normalised images are ~N(0, 1) overall.
  assert abs(float(images.mean())) < 0.05
  assert abs(float(images.std()) - 1.0) < 0.05
  # Pixel 0 maps to -mean/std, pixel 255 to (1 - mean)/std.
  np.testing.assert_allclose(images.min(), -0.2861 / 0.3530, rtol=1e-5)
  np.testing.assert_allclose(images.max(), (1 - 0.2861) / 0.3530, rtol=1e-5)


def test_fashion_mnist_load_is_normalised_uint8(data_dir):
  raw, raw_labels, _ = data.load_uint8("fashion_mnist", "test[:64]", data_dir=data_dir)
  images, labels, _ = data.load("fashion_mnist", "test[:64]", data_dir=data_dir)
  assert raw.dtype == np.uint8 and raw.shape == (64, 28, 28, 1)
  np.testing.assert_array_equal(labels, raw_labels)
  np.testing.assert_allclose(images, (raw / 255.0 - 0.2861) / 0.3530, rtol=1e-5, atol=1e-6)


def test_fashion_mnist_test_split(fmnist_test):
  images, labels, _ = fmnist_test
  assert images.shape == (10000, 28, 28, 1)
  assert labels.shape == (10000,)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 1000))  # balanced test set


def test_fashion_mnist_full_train_split(data_dir):
  images, labels, spec = data.load_uint8("fashion_mnist", "train", data_dir=data_dir)
  assert images.shape == (spec.num_train, 28, 28, 1) == (60000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 6000))
  x = images.astype(np.float64) / 255.0
  # The constants in the spec are the training set's own statistics (to the 4 digits published).
  assert abs(x.mean() - 0.2861) < 5e-4
  assert abs(x.std() - 0.3530) < 5e-4


def test_slices_are_consistent(data_dir):
  a, la, _ = data.load_uint8("fashion_mnist", "test[:30]", data_dir=data_dir)
  b, lb, _ = data.load_uint8("fashion_mnist", "test[10:20]", data_dir=data_dir)
  np.testing.assert_array_equal(a[10:20], b)
  np.testing.assert_array_equal(la[10:20], lb)


def test_ipc_too_large_raises(fmnist_train):
  _, labels, spec = fmnist_train
  index = data.class_index(labels, spec.num_classes)
  smallest = int(np.asarray(index.counts).min())
  data.check_ipc(index, smallest)  # the largest accepted value
  with pytest.raises(ValueError, match="ipc"):
    data.check_ipc(index, smallest + 1)


def test_missing_idx_files_name_the_debian_package(tmp_path):
  source = tmp_path / "empty"
  source.mkdir()
  with pytest.raises(ValueError, match="dataset-fashion-mnist") as err:
    offline.prepare_fashion_mnist(str(tmp_path / "data"), source_dir=str(source))
  assert str(source) in str(err.value)


def test_unprepared_dataset_without_download_raises(tmp_path):
  with pytest.raises(ValueError, match="not prepared"):
    data.load("mnist", "train", data_dir=str(tmp_path), download=False)


# --- other datasets through TFDS's mock data ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "svhn_cropped"])
def test_mocked_tfds_datasets(name, tmp_path):
  import tensorflow_datasets as tfds

  spec = data.get_spec(name)
  with tfds.testing.mock_data(num_examples=12):
    images, labels, got_spec = data.load(name, "train", data_dir=str(tmp_path))
    raw, raw_labels, _ = data.load_uint8(name, "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not prepared"):
      data.load(name, "train", data_dir=str(tmp_path), download=False)
  assert got_spec == spec
  assert images.shape == (12,) + spec.image_shape and images.dtype == np.float32
  assert labels.shape == (12,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < spec.num_classes
  assert raw.dtype == np.uint8 and raw.shape == images.shape
  np.testing.assert_array_equal(labels, raw_labels)  # mock data is deterministic
  expected = (raw / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)
  np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)
