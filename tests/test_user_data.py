"""The user's own data (jaxdistill.data.user): arrays, npz:, folder:, idx: and tfds: datasets made in the test from
the real Fashion-MNIST arrays, their statistics, held-out split and refusals; the distill CLI on an npz file and the
metrics it streams."""
import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxdistill import data, models
from jaxdistill.data import user

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


@pytest.fixture(scope="module")
def raw(data_dir):
  """uint8 Fashion-MNIST ``[600, 28, 28, 1]`` and int32 labels (the first 600 training images)."""
  x, y, _ = data.load_uint8("fashion_mnist", "train[:600]", data_dir=data_dir)
  return x, y


def _np_stats(x01):
  return x01.reshape(-1, x01.shape[-1]).mean(0), x01.reshape(-1, x01.shape[-1]).std(0)


# ------------------------------------------------------------------------------------------------- from_arrays


def test_from_arrays_computes_statistics_and_normalises(raw):
  x, y = raw
  images, labels, spec = data.from_arrays(x, y, name="fmnist_600")
  mean, std = _np_stats(x.astype(np.float64) / 255.0)
  np.testing.assert_allclose(spec.mean, mean, rtol=1e-9)
  np.testing.assert_allclose(spec.std, std, rtol=1e-9)
  assert images.dtype == np.float32 and images.shape == x.shape and labels.dtype == np.int32
  np.testing.assert_allclose(images.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(images.std(), 1.0, atol=1e-4)
  assert spec.num_classes == 10 and spec.num_train == 600 and spec.image_shape == (28, 28, 1)
  # The name is registered: get_spec / denormalise work with it, and a float [0, 1] copy gives the same result.
  assert data.get_spec("fmnist_600") == spec
  np.testing.assert_allclose(data.denormalise(images, "fmnist_600", clip=False), x / 255.0, atol=1e-6)
  same, _, _ = data.from_arrays(x.astype(np.float32) / 255.0, y, name="fmnist_600_float")
  np.testing.assert_allclose(same, images, atol=1e-5)
  # The test split with the training spec: its own statistics are not used.
  tx, ty, tspec = data.from_arrays(x[:50], y[:50], spec=spec)
  np.testing.assert_allclose(tx, images[:50])
  assert tspec is spec


def test_from_arrays_any_size_and_channels_picks_the_papers_depth(raw):
  x, y = raw
  rgb = np.concatenate([x[:, :20, :24], x[:, 4:24, 2:26], x[:, 8:, 4:]], axis=-1)  # [N, 20, 24, 3], real pixels
  images, _, spec = data.from_arrays(rgb, y, name="fmnist_rgb")
  assert images.shape == (600, 20, 24, 3) and len(spec.mean) == 3
  big = np.pad(np.kron(x[:40], np.ones((1, 2, 2, 1), np.uint8)), ((0, 0), (4, 4), (4, 4), (0, 0)))  # 64 px
  _, _, spec64 = data.from_arrays(big, y[:40], name="fmnist_64")
  assert spec64.image_shape == (64, 64, 1)
  assert models.get_model("convnet", spec64.num_classes, spec64.image_shape).depth == 4
  huge = np.kron(big[:12], np.ones((1, 2, 2, 1), np.uint8))  # 128 px
  _, _, spec128 = data.from_arrays(huge, np.arange(12) % 3, name="fmnist_128")
  assert models.get_model("convnet", 3, spec128.image_shape).depth == 5


@pytest.mark.parametrize("case, match", [
    ("nan", "NaN"), ("one_class", "one class"), ("gap", r"classes \[3\] have no image"),
    ("negative", "labels must be 0"), ("float_range", r"\[0, 1\]"), ("length", "one per image"),
    ("float_labels", "integer class labels"), ("constant", "constant"), ("builtin", "built-in"),
    ("rank", "images \\[N, H, W, C\\]")])
def test_from_arrays_refuses_bad_input(raw, case, match):
  x, y = raw[0][:100].copy(), raw[1][:100].copy()
  name = "bad"
  if case == "nan":
    x = x.astype(np.float32) / 255.0
    x[3, 4, 5, 0] = np.nan
  elif case == "one_class":
    y = np.zeros_like(y)
  elif case == "gap":
    y = np.where(y == 3, 4, y)
  elif case == "negative":
    y = y - 1
  elif case == "float_range":
    x = x.astype(np.float32)
  elif case == "length":
    y = y[:-1]
  elif case == "float_labels":
    y = y + 0.5
  elif case == "constant":
    x = np.full_like(x, 7)
  elif case == "builtin":
    name = "mnist"
  elif case == "rank":
    x = x[:, :, 0, 0]
  with pytest.raises(ValueError, match=match):
    data.from_arrays(x, y, name=name)


# --------------------------------------------------------------------------------------------------------- npz


def test_npz_with_held_out_split(tmp_path, raw):
  x, y = raw[0][:500], raw[1][:500]
  path = tmp_path / "fm.npz"
  np.savez(path, x=x, y=y)
  name = f"npz:{path}"
  tx, ty, spec = data.load(name, "train")
  ex, ey, _ = data.load(name, "test")
  # Per class 10 % (at least one) held out; together they are exactly the file's images.
  counts = np.bincount(y, minlength=10)
  np.testing.assert_array_equal(np.bincount(ey, minlength=10), np.maximum(1, np.round(0.1 * counts)).astype(int))
  assert len(ty) + len(ey) == 500 and spec.num_train == len(ty) and spec.num_test == len(ey)
  raw_train, raw_labels, _ = data.load_uint8(name, "train")
  mean, std = _np_stats(raw_train.astype(np.float64) / 255.0)  # statistics of the training part only
  np.testing.assert_allclose(spec.mean, mean, rtol=1e-9)
  np.testing.assert_allclose(spec.std, std, rtol=1e-9)
  np.testing.assert_allclose(tx, (raw_train / 255.0 - mean) / std, atol=1e-5)
  rows = {r.tobytes() for r in x}
  assert all(r.tobytes() in rows for r in raw_train) and set(np.unique(raw_labels)) == set(range(10))
  # The split is fixed (same images on every load, and in file order), slices apply to it.
  again, _, _ = data.load_uint8(name, "test")
  np.testing.assert_array_equal(again, data.load_uint8(name, "test")[0])
  np.testing.assert_array_equal(data.load_uint8(name, "train[:7]")[0], raw_train[:7])
  assert data.get_spec(name) == spec


def test_npz_with_its_own_test_split_and_float_pixels(tmp_path, raw):
  x, y = raw
  path = tmp_path / "fm_split.npz"
  np.savez(path, x=x[:400].astype(np.float32) / 255.0, y=y[:400].astype(np.int64), x_test=x[400:, ..., 0] / 255.0,
           y_test=y[400:])
  name = f"npz:{path}"
  tx, ty, spec = data.load(name, "train")
  ex, ey, _ = data.load(name, "test")
  assert spec.num_train == 400 and spec.num_test == 200 and ex.shape == (200, 28, 28, 1)
  np.testing.assert_array_equal(ey, y[400:])
  mean, std = _np_stats(x[:400].astype(np.float64) / 255.0)
  np.testing.assert_allclose(ex, (x[400:] / 255.0 - mean) / std, atol=1e-5)
  bad = tmp_path / "bad.npz"
  np.savez(bad, x=x[:100], y=y[:100], x_test=x[100:120])
  with pytest.raises(ValueError, match="both 'x_test' and 'y_test'"):
    data.load(f"npz:{bad}", "train")
  np.savez(bad, images=x[:100], y=y[:100])
  with pytest.raises(ValueError, match=r"needs arrays 'x'"):
    data.load(f"npz:{bad}", "train")
  with pytest.raises(ValueError, match="does not exist"):
    data.load(f"npz:{tmp_path / 'missing.npz'}", "train")
  with pytest.raises(ValueError, match="Unknown dataset"):
    data.get_spec(f"zip:{path}")


# ------------------------------------------------------------------------------------------------------ folder


def _write_pngs(root, x, y, mode="L"):
  from PIL import Image
  for i, (img, label) in enumerate(zip(x, y)):
    folder = root / f"{label:02d}_{NAMES[label]}"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = img[..., 0]
    im = Image.fromarray(pixels)
    if mode == "RGB":
      im = Image.merge("RGB", (im, Image.fromarray(255 - pixels), im))
    im.save(folder / f"{i:04d}.png")


def test_folder_of_pngs(tmp_path, raw):
  x, y = raw[0][:200], raw[1][:200]
  root = tmp_path / "imgs"
  _write_pngs(root, x, y)
  (root / "00_tshirt" / "notes.txt").write_text("not an image")  # ignored
  ux, uy, spec = data.load_uint8(f"folder:{root}", "train")
  ex, ey, _ = data.load_uint8(f"folder:{root}", "test")
  assert spec.class_names == tuple(f"{c:02d}_{n}" for c, n in enumerate(NAMES))
  assert spec.image_shape == (28, 28, 1) and len(uy) + len(ey) == 200
  # Pixels and labels survive the PNG round trip: each loaded image is one of the originals with its label.
  lookup = {img.tobytes(): label for img, label in zip(x, y)}
  assert all(lookup[img.tobytes()] == label for img, label in zip(np.concatenate([ux, ex]), np.concatenate([uy, ey])))
  # TFDS ImageFolder's layout (train/ and test/) and RGB images.
  split_root = tmp_path / "split"
  _write_pngs(split_root / "train", x[:150], y[:150], mode="RGB")
  _write_pngs(split_root / "test", x[150:], y[150:], mode="RGB")
  sx, sy, sspec = data.load(f"folder:{split_root}", "train")
  tx, ty, _ = data.load(f"folder:{split_root}", "test")
  assert sx.shape == (150, 28, 28, 3) and tx.shape == (50, 28, 28, 3) and sspec.num_test == 50
  np.testing.assert_array_equal(np.sort(ty), np.sort(y[150:]))


def test_folder_refusals(tmp_path, raw):
  from PIL import Image
  x, y = raw[0][:40], raw[1][:40]
  mixed = tmp_path / "mixed"
  _write_pngs(mixed, x, y)
  Image.fromarray(np.zeros((32, 32), np.uint8) + 9).save(mixed / "00_tshirt" / "zz_big.png")
  with pytest.raises(ValueError, match="different sizes"):
    data.load(f"folder:{mixed}", "train")
  single = tmp_path / "single"
  _write_pngs(single, x[y == 0], y[y == 0])
  with pytest.raises(ValueError, match="at least two classes"):
    data.load(f"folder:{single}", "train")
  empty = tmp_path / "empty"
  _write_pngs(empty, x, y)
  (empty / "10_unused").mkdir()
  with pytest.raises(ValueError, match="holds no images"):
    data.load(f"folder:{empty}", "train")


# --------------------------------------------------------------------------------------------------------- IDX


def _write_idx(path, array, gz=False):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
  raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
  if gz:
    path = str(path) + ".gz"
    raw = gzip.compress(raw)
  with open(path, "wb") as f:
    f.write(raw)


def test_idx_directory(tmp_path, raw):
  x, y = raw
  folder = tmp_path / "idx"
  folder.mkdir()
  _write_idx(folder / "train-images-idx3-ubyte", x[:500, ..., 0], gz=True)
  _write_idx(folder / "train-labels-idx1-ubyte", y[:500])
  name = f"idx:{folder}"
  ux, uy, spec = data.load_uint8(name, "train")
  assert spec.num_train + spec.num_test == 500 and spec.image_shape == (28, 28, 1)  # held-out split
  _write_idx(folder / "t10k-images-idx3-ubyte", x[500:, ..., 0])
  _write_idx(folder / "t10k-labels-idx1-ubyte", y[500:])
  ux, uy, spec = data.load_uint8(name, "train")  # the new files are seen: the cache follows the folder
  ex, ey, _ = data.load_uint8(name, "test")
  np.testing.assert_array_equal(ux, x[:500])
  np.testing.assert_array_equal(ey, y[500:])
  assert spec.num_train == 500 and spec.num_test == 100
  os.remove(folder / "t10k-labels-idx1-ubyte")
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
    data.load_uint8(name, "train")


# -------------------------------------------------------------------------------------------------------- TFDS


def test_tfds_name_statistics_computed_and_cached(data_dir, tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  cache = os.path.join(data_dir, user.STATS_DIR, "tfds_fashion_mnist.json")
  if os.path.exists(cache):
    os.remove(cache)
  user._SPECS.pop("tfds:fashion_mnist", None)
  spec = user.spec_of("tfds:fashion_mnist", data_dir=data_dir)
  # Computed from the whole training split: the constants the reference code uses (METHODS.md).
  assert spec.mean[0] == pytest.approx(0.2861, abs=2e-4) and spec.std[0] == pytest.approx(0.3530, abs=2e-4)
  assert spec.num_train == 60000 and spec.num_test == 10000 and spec.num_classes == 10
  assert spec.class_names[0] == "T-shirt/top"
  saved = json.loads(open(cache).read())
  assert saved["computed_from"] == "train" and saved["mean"] == list(spec.mean)
  # A new process reads the cache, not the split.
  user._SPECS.pop("tfds:fashion_mnist")
  monkeypatch.setattr(user, "_tfds_arrays", lambda *a, **k: pytest.fail("statistics recomputed"))
  assert user.spec_of("tfds:fashion_mnist", data_dir=data_dir) == spec
  monkeypatch.undo()
  x, y, s = data.load("tfds:fashion_mnist", "test[:100]", data_dir=data_dir)
  ref, ref_y, _ = data.load("fashion_mnist", "test[:100]", data_dir=data_dir)
  np.testing.assert_array_equal(y, ref_y)
  np.testing.assert_allclose(x, ref, atol=2e-3)  # computed vs published constants
  with pytest.raises(ValueError, match="tfds:no_such_dataset_xyz"):
    data.load("tfds:no_such_dataset_xyz", "train", data_dir=str(tmp_path), download=False)


# ------------------------------------------------------------------------------------------- CLI end to end


def test_distill_cli_on_an_npz_file_streams_metrics(tmp_path, raw, data_dir):
  x, y = raw
  path = tmp_path / "mine.npz"
  np.savez(path, x=x[:500], y=y[:500])
  out = tmp_path / "run"
  env = {**os.environ, "JAXDISTILL_DATA_DIR": data_dir, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "experiments.distill", "--method", "dm", "--dataset", f"npz:{path}", "--ipc", "1",
         "--iterations", "12", "--real-per-class", "4", "--width", "8", "--eval-models", "1", "--eval-epochs", "2",
         "--eval-width", "8", "--no-eval-dsa", "--quiet", "--out", str(out)]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["dataset"] == f"npz:{path}" and 0.0 <= metrics["test_accuracy_mean"] <= 1.0
  held_out = sum(max(1, round(0.1 * c)) for c in np.bincount(y[:500], minlength=10))
  assert metrics["test_size"] == held_out  # the held-out split: 10 % of each class of the 500 images
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert [r["iteration"] for r in rows] == list(range(1, 13))
  np.testing.assert_allclose([r["loss"] for r in rows], metrics["loss_curve"], rtol=1e-6)
  assert all(len(r["per_class"]) == 10 and r["seconds"] >= 0 for r in rows)
  assert rows[-1]["seconds"] >= rows[0]["seconds"]
  np.testing.assert_allclose([sum(r["per_class"]) for r in rows], [r["loss"] for r in rows], rtol=1e-4)
  assert (out / "grid.png").stat().st_size > 0
