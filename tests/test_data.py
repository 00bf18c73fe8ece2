"""Dataset loading (Fashion-MNIST via TFDS and from IDX files, TFDS-mocked datasets), specs, normalisation."""
from __future__ import annotations

import numpy as np
import pytest

from jaxdistill import data
from jaxdistill.data import idx, offline
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


# --- the NumPy IDX backend (no TensorFlow) and its agreement with TFDS --------------------------------------------

def _write_idx(path, array, type_byte=0x08, compress=False):
  """Writes ``array`` as an IDX file (big-endian sizes), gzipped when ``compress``; returns ``path``."""
  import gzip
  import struct

  array = np.asarray(array)
  raw = (bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
         + array.astype(array.dtype.newbyteorder(">")).tobytes())
  path.write_bytes(gzip.compress(raw) if compress else raw)
  return str(path)


@pytest.mark.parametrize("split", ["train", "test", "train[100:2100]", "test[:10%]", "test[-7.5%:]"])
def test_idx_backend_equals_tfds_backend(data_dir, split):
  x_tfds, y_tfds, spec = data.load_uint8("fashion_mnist", split, data_dir=data_dir, backend="tfds")
  x_idx, y_idx, spec_idx = data.load_uint8("fashion_mnist", split, backend="idx")
  assert spec_idx == spec and x_idx.dtype == np.uint8 and y_idx.dtype == np.int32
  np.testing.assert_array_equal(x_idx, x_tfds)
  np.testing.assert_array_equal(y_idx, y_tfds)


def test_prepared_tfds_dataset_is_in_file_order(data_dir):
  builder = offline.make_builder(data_dir)
  assert builder.is_prepared() and offline.is_ordered(builder.data_path)
  images = idx.read_idx(f"{offline.DEBIAN_DIR}/t10k-images-idx3-ubyte.gz")
  labels = idx.read_idx(f"{offline.DEBIAN_DIR}/t10k-labels-idx1-ubyte.gz")
  x, y, _ = data.load_uint8("fashion_mnist", "test[:50]", data_dir=data_dir, backend="tfds")
  np.testing.assert_array_equal(x[..., 0], images[:50])
  np.testing.assert_array_equal(y, labels[:50])


@pytest.mark.slow
def test_hashed_order_dataset_is_prepared_again(data_dir, tmp_path):
  import json
  import shutil

  old = tmp_path / "data"
  shutil.copytree(f"{data_dir}/fashion_mnist", old / "fashion_mnist")
  info_path = old / "fashion_mnist" / "3.0.1" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info.pop("disableShuffling")  # what older jaxdistill (and stock TFDS) wrote: records in hashed order
  info_path.write_text(json.dumps(info))
  assert not offline.make_builder(str(old)).is_prepared()
  x, y, _ = data.load_uint8("fashion_mnist", "test[:100]", data_dir=str(old), backend="tfds")
  assert offline.make_builder(str(old)).is_prepared()
  x_idx, y_idx, _ = data.load_uint8("fashion_mnist", "test[:100]", backend="idx")
  np.testing.assert_array_equal(x, x_idx)
  np.testing.assert_array_equal(y, y_idx)


@pytest.mark.parametrize("split,bounds", [
    ("train", (0, 60000)), ("train[:2000]", (0, 2000)), ("train[100:200]", (100, 200)),
    ("test[:10%]", (0, 1000)), ("test[-1000:]", (9000, 10000)), ("test[:-10%]", (0, 9000)),
    ("test[12.5%:87.5%]", (1250, 8750)), ("test[0.005%:]", (0, 10000)), ("test[70%:30%]", (7000, 7000)),
    ("train[:1_000]", (0, 1000)),
])
def test_split_bounds(split, bounds):
  n = 60000 if split.startswith("train") else 10000
  assert idx.split_bounds(split, n) == bounds


@pytest.mark.parametrize("split", ["test[:10001]", "test[-10001:]", "test[:1shard]"])
def test_split_bounds_rejects(split):
  with pytest.raises(ValueError, match="split"):
    idx.split_bounds(split, 10000)


@pytest.mark.parametrize("split", ["test[5]", "test[1.5:]", "test[:101%]", "test[:]", "test[::2]", "val[:5]"])
def test_parse_split_rejects(split):
  with pytest.raises(ValueError, match="split"):
    idx.parse_split(split)


@pytest.mark.parametrize("backend", ["tfds", "idx"])
@pytest.mark.parametrize("split", ["test[70%:30%]", "test[:-10000]", "test[:10001]"])
def test_empty_or_out_of_range_slices_raise_alike(data_dir, backend, split):
  with pytest.raises(ValueError, match="no examples|incompatible"):
    data.load_uint8("fashion_mnist", split, data_dir=data_dir, backend=backend)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
  a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  np.testing.assert_array_equal(idx.read_idx(_write_idx(tmp_path / "a", a, compress=compress)), a)
  b = np.array([-1, 70000, 3], np.int32)
  got = idx.read_idx(_write_idx(tmp_path / "b", b, type_byte=0x0C, compress=compress))
  assert got.dtype == np.int32 and got.dtype.isnative
  np.testing.assert_array_equal(got, b)


def test_read_idx_rejects_corrupt_files(tmp_path):
  good = (tmp_path / "good")
  _write_idx(good, np.zeros((4, 5), np.uint8))
  raw = good.read_bytes()
  cases = {
      "truncated": raw[:-1], "longer than": raw + b"\0", "magic": b"\x08\x03" + raw[2:],
      "truncated header": raw[:6], "corrupt or truncated gzip": __import__("gzip").compress(raw)[:-9],
  }
  for match, content in cases.items():
    path = tmp_path / match.replace(" ", "_")
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
      idx.read_idx(str(path))
    assert str(path) in str(err.value)
  with pytest.raises(ValueError, match="does not exist"):
    idx.read_idx(str(tmp_path / "absent"))


def _idx_folder(folder, train=(60, 10), test=(10, 10), label=3, images_dtype=np.uint8, fill=73):
  """Writes the four Fashion-MNIST file names with ``train``/``test`` = (examples, side) into ``folder``."""
  folder.mkdir(parents=True, exist_ok=True)
  for split, (n, side) in (("train", train), ("t10k", test)):
    _write_idx(folder / f"{split}-images-idx3-ubyte", np.full((n, side, side), fill, images_dtype))
    _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.full(n, label, np.uint8), compress=True)
  return str(folder)


def test_idx_files_must_match_the_spec(tmp_path):
  folder = _idx_folder(tmp_path / "small")
  with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*expected uint8 images"):
    idx.load_uint8("fashion_mnist", "test", idx_dir=folder)
  # Fashion-MNIST's real files do not pass as MNIST: the mean pixel gives them away.
  with pytest.raises(ValueError, match="another dataset"):
    idx.load_uint8("mnist", "test[:10]", idx_dir=offline.DEBIAN_DIR)
  with pytest.raises(ValueError, match="does not exist"):
    idx.load_uint8("fashion_mnist", "test", idx_dir=str(tmp_path / "nowhere"))


def test_idx_labels_are_range_checked(tmp_path):
  folder = _idx_folder(tmp_path / "f", train=(60000, 28), test=(10000, 28), label=10)
  with pytest.raises(ValueError, match="label 10"):
    idx.load_uint8("fashion_mnist", "test", idx_dir=folder)


def test_idx_dir_lookup_order(tmp_path, monkeypatch):
  monkeypatch.delenv(idx.IDX_DIR_ENV, raising=False)
  assert idx.find_idx_dir("fashion_mnist") == offline.DEBIAN_DIR
  monkeypatch.setenv(idx.IDX_DIR_ENV, str(tmp_path))
  assert idx.find_idx_dir("fashion_mnist") == str(tmp_path)
  nested = _idx_folder(tmp_path / "fashion_mnist")
  assert idx.find_idx_dir("fashion_mnist") == nested  # <dir>/<name> wins when it holds the files
  assert idx.find_idx_dir("mnist") == str(tmp_path)
  assert idx.find_idx_dir("fashion_mnist", idx_dir=offline.DEBIAN_DIR) == offline.DEBIAN_DIR
  with pytest.raises(ValueError, match="IDX backend accepts"):
    idx.find_idx_dir("cifar10")


def test_idx_load_follows_env_dir(tmp_path, monkeypatch):
  import shutil

  for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte",
               "train-labels-idx1-ubyte"):
    shutil.copy(f"{offline.DEBIAN_DIR}/{stem}.gz", tmp_path / f"{stem}.gz")
  monkeypatch.setenv(idx.IDX_DIR_ENV, str(tmp_path))
  x, y, _ = data.load_uint8("fashion_mnist", "test[:20]", backend="idx")
  x_deb, y_deb, _ = data.load_uint8("fashion_mnist", "test[:20]", backend="idx", idx_dir=offline.DEBIAN_DIR)
  np.testing.assert_array_equal(x, x_deb)
  np.testing.assert_array_equal(y, y_deb)


def test_backend_selection(monkeypatch):
  from jaxdistill.data import datasets

  monkeypatch.setenv(datasets.BACKEND_ENV, "idx")
  assert datasets.resolve_backend("fashion_mnist") == "idx"
  assert datasets.resolve_backend("fashion_mnist", "tfds") == "tfds"  # the argument wins over the variable
  with pytest.raises(ValueError, match="'idx' data backend reads only"):
    datasets.resolve_backend("cifar10")
  monkeypatch.setenv(datasets.BACKEND_ENV, "numpy")
  with pytest.raises(ValueError, match="JAXDISTILL_DATA_BACKEND='numpy'.*accepted values"):
    data.load("fashion_mnist", "test[:10]")
  monkeypatch.delenv(datasets.BACKEND_ENV)
  assert datasets.resolve_backend("fashion_mnist") == "tfds"  # auto: TFDS is importable in this venv
  assert datasets.resolve_backend("cifar10", "auto") == "tfds"
  with pytest.raises(ValueError, match="accepted values"):
    datasets.resolve_backend("mnist", "TFDS")


def test_load_idx_backend_is_normalised(monkeypatch):
  monkeypatch.setenv("JAXDISTILL_DATA_BACKEND", "idx")
  raw, raw_labels, _ = data.load_uint8("fashion_mnist", "test[:64]")
  images, labels, _ = data.load("fashion_mnist", "test[:64]")
  np.testing.assert_array_equal(labels, raw_labels)
  np.testing.assert_allclose(images, (raw / 255.0 - 0.2861) / 0.3530, rtol=1e-5, atol=1e-6)
