"""Expert trajectory buffers: vmapped expert training is plain SGD, shards are independent of grouping, the
on-disk format (versioned, metadata checked on load, epochs read selectively) and the buffers CLI."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import experts, models, training

NC = 10
SHAPE = (28, 28, 1)


def _cfg(**kw):
  base = dict(arch="mlp", width=16, num_experts=3, experts_per_shard=2, epochs=2, batch_size=100, dsa=False,
              lr=0.2)
  base.update(kw)
  return experts.ExpertConfig(**base)


@pytest.fixture(scope="module")
def small(fmnist_train):
  x, y, _ = fmnist_train
  return x[:100], y[:100], x[1000:1200], y[1000:1200]


@pytest.fixture(scope="module")
def buffer(small, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("buf"))
  lines = []
  meta = experts.train_experts(_cfg(), *small, NC, out, dataset="fashion_mnist", split="train[:100]",
                               progress=False, log=lines.append)
  return out, meta, lines


def test_buffer_files_metadata_and_accuracy(buffer):
  out, meta, lines = buffer
  assert sorted(os.listdir(out)) == ["buffer.json", "shard_00000.npz", "shard_00001.npz"]
  assert meta["format"] == experts.FORMAT and meta["version"] == experts.BUFFER_VERSION
  for k, v in {"dataset": "fashion_mnist", "arch": "mlp", "model_kwargs": {"width": 16}, "epochs": 2,
               "lr": 0.2, "momentum": 0.0, "weight_decay": 0.0, "zca": False, "num_experts": 3,
               "image_shape": [28, 28, 1], "num_classes": 10}.items():
    assert meta[k] == v, k
  assert [s["experts"] for s in meta["shards"]] == [2, 1]
  # P matches the network and the layout lists every parameter array.
  model = models.get_model("mlp", NC, SHAPE, width=16)
  params = models.init_variables(model, jax.random.PRNGKey(0), SHAPE)["params"]
  assert meta["num_params"] == models.num_params(params)
  assert sum(int(np.prod(s)) for _, s in meta["layout"]) == meta["num_params"]
  # Expert test accuracy per epoch (epoch 0 = initialisation), per expert and averaged; logged every epoch.
  assert len(meta["test_accuracy_mean"]) == 3 and all(0 <= a <= 1 for a in meta["test_accuracy_mean"])
  assert np.asarray(meta["shards"][0]["test_accuracy"]).shape == (2, 3)
  assert meta["test_accuracy_mean"][-1] > meta["test_accuracy_mean"][0] + 0.05
  assert len(lines) == 2 * 2 and "expert test accuracy" in lines[0]


def test_expert_epoch_is_plain_sgd_and_trajectory_loads(buffer, small):
  out, meta, _ = buffer
  buf = experts.load_buffer(out)
  assert buf.params.shape == (3, 3, meta["num_params"]) and buf.params.dtype == np.float32
  assert buf.test_accuracy.shape == (3, 3)
  # One epoch with batch = all 100 images and no DSA is one step θ1 = θ0 − lr ∇CE(θ0) (lr 0.2 here).
  model = models.get_model("mlp", NC, SHAPE, width=16)
  unflat, p, _ = experts.unflattener(model, SHAPE)
  x, y = jnp.asarray(small[0]), jnp.asarray(small[1])
  for e in range(3):
    theta0 = jnp.asarray(buf.params[e, 0])
    g = jax.grad(lambda t: training.cross_entropy(model.apply({"params": unflat(t)}, x), y))(theta0)
    np.testing.assert_allclose(buf.params[e, 1], theta0 - 0.2 * g, rtol=1e-4, atol=1e-6)
  # Experts differ from each other (own initialisation).
  assert not np.allclose(buf.params[0, 0], buf.params[1, 0])


def test_grouping_into_shards_does_not_change_trajectories(buffer, small, tmp_path):
  """Expert i depends only on (seed, i): vmapping it with another expert or alone gives the same trajectory."""
  out, _, _ = buffer
  alone = str(tmp_path / "alone")
  experts.train_experts(_cfg(num_experts=3, experts_per_shard=3), *small, NC, alone, dataset="fashion_mnist",
                        progress=False)
  np.testing.assert_allclose(experts.load_buffer(alone).params, experts.load_buffer(out).params, rtol=1e-5,
                             atol=1e-6)


def test_experts_one_at_a_time_equal_the_batched_program_and_resume_across(small, tmp_path):
  """``vmap_experts`` is speed only: a ConvNet with DSA trained one expert at a time gives the batched program's
  trajectories (and the first shard of one resumes into the other, the choice not being part of the identity)."""
  cfg = dict(arch="convnet", width=8, num_experts=2, experts_per_shard=2, epochs=1, batch_size=50, dsa=True,
             lr=0.05)
  batched, single = str(tmp_path / "batched"), str(tmp_path / "single")
  experts.train_experts(_cfg(**cfg, vmap_experts=True), *small, NC, batched, dataset="fashion_mnist",
                        progress=False)
  experts.train_experts(_cfg(**cfg, vmap_experts=False), *small, NC, single, dataset="fashion_mnist",
                        progress=False)
  a, b = experts.load_buffer(batched).params, experts.load_buffer(single).params
  assert np.abs(a[:, 1] - a[:, 0]).max() > 1e-3  # the experts moved
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  os.remove(os.path.join(single, "shard_00000.npz"))
  meta = experts.train_experts(_cfg(**cfg, vmap_experts=True), *small, NC, single, dataset="fashion_mnist",
                               progress=False, resume=True)
  assert meta["complete"]
  with pytest.raises(ValueError, match="vmap_experts"):
    _cfg(vmap_experts=1).validate()


def test_selective_loading_and_shard_iteration(buffer):
  out, meta, _ = buffer
  full = experts.load_buffer(out)
  part = experts.load_buffer(out, max_epoch=1, num_experts=2)
  assert part.params.shape == (2, 2, meta["num_params"])
  np.testing.assert_array_equal(part.params, full.params[:2, :2])
  shards = list(experts.iter_shards(out, [2]))
  assert [s[1].shape[0] for s in shards] == [2, 1] and shards[1][1].shape[1] == 1
  np.testing.assert_array_equal(shards[1][1][0, 0], full.params[2, 2])
  with pytest.raises(ValueError, match="epochs 0..2"):
    experts.load_buffer(out, max_epoch=3)
  with pytest.raises(ValueError, match="num_experts"):
    experts.load_buffer(out, num_experts=4)


def test_metadata_mismatch_version_and_missing_files_are_refused(buffer, tmp_path):
  out, _, _ = buffer
  with pytest.raises(ValueError, match="dataset: buffer has 'fashion_mnist'.*'cifar10'.*zca"):
    experts.load_buffer(out, expected={"dataset": "cifar10", "arch": "mlp", "zca": True})
  experts.load_buffer(out, expected={"dataset": "fashion_mnist", "model_kwargs": {"width": 16}, "lr": 0.2})
  bad = tmp_path / "bad"
  bad.mkdir()
  with pytest.raises(ValueError, match="no buffer.json"):
    experts.read_metadata(str(bad))
  meta = json.loads(open(os.path.join(out, "buffer.json")).read())
  (bad / "buffer.json").write_text(json.dumps({**meta, "version": 99}))
  with pytest.raises(ValueError, match="version 99"):
    experts.read_metadata(str(bad))
  (bad / "buffer.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="missing"):
    experts.load_buffer(str(bad))
  with pytest.raises(ValueError, match="does not exist"):
    experts.read_metadata(str(tmp_path / "nowhere"))


def test_config_validation():
  with pytest.raises(ValueError, match="epochs"):
    _cfg(epochs=0).validate()
  with pytest.raises(ValueError, match="batch-norm"):
    _cfg(arch="convnet_bn").validate()
  with pytest.raises(ValueError, match="arch"):
    _cfg(arch="transformer").validate()
  with pytest.raises(ValueError, match="zca_reg"):
    _cfg(zca_reg=0.0).validate()


def test_zca_option_whitens_both_splits(small):
  x, _, tx, _ = small
  train, test, zca = experts.prepare_images(_cfg(zca=True), x, tx)
  assert zca is not None and train.shape == x.shape and test.shape == tx.shape
  np.testing.assert_allclose(test, np.asarray(zca.apply(tx)), rtol=1e-5, atol=1e-5)
  same = experts.prepare_images(_cfg(zca=False), x, tx)
  assert same[0] is x and same[2] is None


def test_zca_buffer_is_fitted_on_unit_range_images_of_a_known_dataset(small, tmp_path):
  x, y, tx, ty = small
  meta = experts.train_experts(_cfg(zca=True, num_experts=1, epochs=1), x, y, tx, ty, NC, str(tmp_path / "z"),
                               dataset="fashion_mnist", split="train[:100]", progress=False)
  assert meta["zca"] and meta["zca_fitted_on"] == "[0, 1] images (MTT)"
  mean, std = experts._pixel_stats("fashion_mnist", 1)
  from jaxdistill import data
  spec = data.get_spec("fashion_mnist")
  np.testing.assert_allclose(mean, spec.mean) and np.testing.assert_allclose(std, spec.std)
  assert experts._pixel_stats("my_own_data", 1) is None  # user data: fitted on the images as given
  meta = experts.train_experts(_cfg(num_experts=1, epochs=1), x, y, tx, ty, NC, str(tmp_path / "p"),
                               dataset="fashion_mnist", split="train[:100]", progress=False)
  assert meta["zca_fitted_on"] is None


@pytest.mark.slow
def test_buffers_cli_convnet_with_dsa(tmp_path):
  from experiments import buffers
  out = tmp_path / "buf"
  meta = buffers.main(["--train-size", "200", "--test-size", "200", "--experts", "2", "--experts-per-shard", "2",
                       "--epochs", "1", "--width", "8", "--batch-size", "100", "--out", str(out), "--quiet"])
  assert meta["arch"] == "convnet" and meta["dsa"] and meta["split"] == "train[:200]"
  assert experts.load_buffer(str(out)).params.shape == (2, 2, meta["num_params"])
  with pytest.raises(ValueError, match="not empty"):
    buffers.main(["--experts", "1", "--epochs", "1", "--out", str(out), "--quiet"])
