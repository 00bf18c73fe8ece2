"""Model zoo: shapes for every architecture, ConvNet options, PyTorch-style init, batch-norm state, gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import models
from jaxdistill.models.layers import ACTIVATIONS, NORMS

SHAPES = [(28, 28, 1), (32, 32, 3)]
_SMALL = {"convnet": dict(width=8), "convnet_bn": dict(width=8), "mlp": dict(width=8)}


def _build(name, shape, num_classes=10, seed=0, **kwargs):
  model = models.get_model(name, num_classes, shape, **{**_SMALL.get(name, {}), **kwargs})
  return model, models.init_variables(model, jax.random.PRNGKey(seed), shape)


def _tree_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _x(shape, n=2, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (n,) + shape)


@pytest.mark.parametrize("shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_every_architecture_gives_logits(name, shape):
  model, variables = _build(name, shape, num_classes=7)
  x = _x(shape)
  logits, same = models.apply(model, variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  assert same is variables
  feats, _ = models.apply(model, variables, x, embed=True)
  assert feats.ndim == 2 and feats.shape[0] == 2
  assert ("batch_stats" in variables) == name.endswith("_bn")
  if name.endswith("_bn"):  # train mode differs from eval mode only with batch norm
    train_logits, new_vars = models.apply(model, variables, x, train=True)
    assert train_logits.shape == (2, 7)
    assert set(new_vars) == set(variables)
    assert not _tree_equal(new_vars["batch_stats"], variables["batch_stats"])


@pytest.mark.parametrize("shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_convnet_embed_dim(shape, depth):
  """width · (32 / 2^depth)^2: a 1-channel 28 px input is padded to 32 px in the first conv."""
  model, variables = _build("convnet", shape, width=16, depth=depth)
  feats, _ = models.apply(model, variables, _x(shape), embed=True)
  assert feats.shape == (2, 16 * (32 // 2 ** depth) ** 2)
  assert variables["params"]["Dense_0"]["kernel"].shape == (16 * (32 // 2 ** depth) ** 2, 10)


def test_convnet_default_is_the_reference_convnet():
  model, variables = _build("convnet", (32, 32, 3), width=128)
  assert (model.width, model.depth, model.norm, model.activation, model.pooling) == (
      128, 3, "instancenorm", "relu", "avg")
  feats, _ = models.apply(model, variables, _x((32, 32, 3)), embed=True)
  assert feats.shape == (2, 2048)
  p = variables["params"]
  assert [k for k in p if k.startswith("Conv")] == ["Conv_0", "Conv_1", "Conv_2"]
  assert p["Conv_0"]["kernel"].shape == (3, 3, 3, 128)
  # Instance norm = group norm with one channel per group, affine.
  assert p["GroupNorm_0"]["scale"].shape == (128,) and p["GroupNorm_0"]["bias"].shape == (128,)


@pytest.mark.parametrize("size,depth", [(16, 3), (32, 3), (64, 4), (128, 5)])
def test_default_depth(size, depth):
  assert models.default_depth(size) == depth
  assert models.get_model("convnet", 10, (size, size, 3)).depth == depth


def test_instancenorm_normalises_each_image_and_channel():
  """After the first block's norm, every (image, channel) has mean ≈ bias and std ≈ scale (= 0, 1 at init)."""
  model, variables = _build("convnet", (32, 32, 3), depth=1, pooling="none", activation="sigmoid")
  _, state = model.apply(variables, _x((32, 32, 3), n=3) * 5 + 2, capture_intermediates=True,
                         mutable=["intermediates"])
  h = np.asarray(state["intermediates"]["GroupNorm_0"]["__call__"][0])  # [3, 32, 32, 8]
  np.testing.assert_allclose(h.mean(axis=(1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(h.std(axis=(1, 2)), 1.0, atol=1e-3)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_convnet_norm_activation_choices(norm, activation):
  model, variables = _build("convnet", (28, 28, 1), width=4, depth=2, norm=norm, activation=activation)
  out, new_vars = models.apply(model, variables, _x((28, 28, 1)), train=True)
  assert out.shape == (2, 10) and np.all(np.isfinite(np.asarray(out)))
  assert ("batch_stats" in new_vars) == (norm == "batchnorm")


@pytest.mark.parametrize("pooling,side", [("avg", 8), ("max", 8), ("none", 32)])
def test_convnet_pooling_choices(pooling, side):
  model, variables = _build("convnet", (28, 28, 1), width=4, depth=2, pooling=pooling)
  feats, _ = models.apply(model, variables, _x((28, 28, 1)), embed=True)
  assert feats.shape == (2, 4 * side * side)


def test_max_and_avg_pooling_differ():
  x = _x((32, 32, 3))
  outs = [models.apply(*_build("convnet", (32, 32, 3), width=4, depth=1, pooling=p), x, embed=True)[0]
          for p in ("avg", "max")]
  assert not np.allclose(outs[0], outs[1])
  assert np.all(np.asarray(outs[1]) >= np.asarray(outs[0]) - 1e-6)  # max ≥ mean over each window


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="resnet50"), "arch"),
    (dict(name="convnet", norm="instance"), "norm"),
    (dict(name="convnet", activation="tanh"), "activation"),
    (dict(name="convnet", pooling="min"), "pooling"),
    (dict(name="convnet", init_scheme="kaiming"), "init_scheme"),
    (dict(name="mlp", init_scheme="xavier"), "init_scheme"),
])
def test_bad_options_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.get_model(num_classes=10, image_shape=(32, 32, 3), **kwargs)


@pytest.mark.parametrize("name", ["convnet", "mlp", "lenet"])
def test_torch_init_bounds(name):
  """PyTorch's default: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  _, variables = _build(name, (32, 32, 3), init_scheme="torch")
  layers = {k: v for k, v in variables["params"].items() if k.startswith(("Conv", "Dense"))}
  assert layers
  for layer, p in layers.items():
    kernel, bias = np.asarray(p["kernel"]), np.asarray(p["bias"])
    fan_in = int(np.prod(kernel.shape[:-1]))
    bound = 1.0 / np.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound, layer
    assert np.abs(bias).max() <= bound, layer
    if kernel.size >= 200:  # the range is used, not just bounded
      assert np.abs(kernel).max() > 0.9 * bound, layer
      np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.15, err_msg=layer)


def test_flax_init_zero_biases():
  _, variables = _build("convnet", (32, 32, 3), init_scheme="flax")
  for layer, p in variables["params"].items():
    if layer.startswith(("Conv", "Dense")):
      assert not np.any(np.asarray(p["bias"])), layer
  _, torch_vars = _build("convnet", (32, 32, 3), init_scheme="torch")
  assert np.any(np.asarray(torch_vars["params"]["Conv_0"]["bias"]))


def test_init_depends_on_key():
  _, a = _build("convnet", (28, 28, 1), seed=0)
  _, b = _build("convnet", (28, 28, 1), seed=0)
  _, c = _build("convnet", (28, 28, 1), seed=1)
  np.testing.assert_array_equal(a["params"]["Conv_0"]["kernel"], b["params"]["Conv_0"]["kernel"])
  assert not np.allclose(a["params"]["Conv_0"]["kernel"], c["params"]["Conv_0"]["kernel"])


def test_batchnorm_stats_update_in_train_mode_only():
  shape = (28, 28, 1)
  model, variables = _build("convnet_bn", shape, width=4, depth=2)
  x = _x(shape, n=4)
  stats0 = variables["batch_stats"]["BatchNorm_0"]
  np.testing.assert_array_equal(stats0["mean"], 0.0)
  np.testing.assert_array_equal(stats0["var"], 1.0)

  _, same = models.apply(model, variables, x, train=False)
  np.testing.assert_array_equal(same["batch_stats"]["BatchNorm_0"]["mean"], 0.0)

  _, new_vars = models.apply(model, variables, x, train=True)
  assert jax.tree_util.tree_structure(new_vars) == jax.tree_util.tree_structure(variables)
  # Closed form for the first layer: running mean = 0.9 · 0 + 0.1 · batch mean of the conv output.
  _, inter = model.apply(variables, x, train=True, capture_intermediates=True,
                         mutable=["batch_stats", "intermediates"])
  conv_out = np.asarray(inter["intermediates"]["Conv_0"]["__call__"][0])
  np.testing.assert_allclose(new_vars["batch_stats"]["BatchNorm_0"]["mean"],
                             0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new_vars["batch_stats"]["BatchNorm_0"]["var"],
                             0.9 + 0.1 * conv_out.var(axis=(0, 1, 2)), rtol=1e-4)
  # Parameters are untouched by a forward pass; eval mode then uses the running averages.
  np.testing.assert_array_equal(new_vars["params"]["Conv_0"]["kernel"], variables["params"]["Conv_0"]["kernel"])
  out_old, _ = models.apply(model, variables, x)
  out_new, _ = models.apply(model, new_vars, x)
  assert not np.allclose(out_old, out_new)


def test_train_and_eval_agree_without_batchnorm():
  model, variables = _build("convnet", (28, 28, 1))
  x = _x((28, 28, 1))
  np.testing.assert_allclose(models.apply(model, variables, x, train=True)[0],
                             models.apply(model, variables, x, train=False)[0], rtol=1e-6, atol=1e-6)


def test_input_gradient_matches_finite_differences():
  """d<w, f(x)>/dx from jax.grad equals a central finite difference along a random direction."""
  shape = (28, 28, 1)
  model, variables = _build("convnet", shape, width=4, depth=2, activation="sigmoid")
  x = _x(shape, n=2)
  w = jax.random.normal(jax.random.PRNGKey(5), (2, 10))
  v = jax.random.normal(jax.random.PRNGKey(6), x.shape)

  def f(x):
    return jnp.sum(models.apply(model, variables, x)[0] * w)

  eps = 1e-2  # float32: a larger step keeps round-off small; the network is smooth (sigmoid)
  fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
  g = jax.grad(f)(x)
  assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
  np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=1e-2)


def test_parameter_gradients_reach_every_layer():
  model, variables = _build("convnet", (28, 28, 1), width=4)
  x = _x((28, 28, 1))

  def loss(params):
    return jnp.sum(models.apply(model, {**variables, "params": params}, x)[0] ** 2)

  grads = jax.grad(loss)(variables["params"])
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(np.asarray(g))), path
    assert np.any(np.asarray(g) != 0), path


def test_num_params():
  model, variables = _build("mlp", (28, 28, 1), width=8, depth=2)
  assert models.num_params(variables["params"]) == (784 * 8 + 8) + (8 * 8 + 8) + (8 * 10 + 10)


@pytest.mark.parametrize("padding, kernel", [(3, 3), (2, 3), (4, 5)])
def test_wide_padding_is_the_same_convolution(padding, kernel):
  """conv() applies padding wider than half the kernel with jnp.pad + a VALID convolution (XLA:CPU's kernel
  gradient of a conv padded beyond k - 1 is slow): same outputs and gradients as lax's padded convolution."""
  import flax.linen as nn

  from jaxdistill.models import layers

  class One(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.conv(x, 8, kernel, padding=padding)

  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (3, 10, 10, 2))
  m = One()
  v = m.init(key, x)
  assert v["params"]["Conv_0"]["kernel"].shape == (kernel, kernel, 2, 8)  # the usual nn.Conv parameters

  def reference(params, x):
    out = jax.lax.conv_general_dilated(x, params["Conv_0"]["kernel"], (1, 1), [(padding, padding)] * 2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + params["Conv_0"]["bias"]

  got = m.apply(v, x)
  want = reference(v["params"], x)
  assert got.shape == (3, 10 + 2 * padding - kernel + 1, 10 + 2 * padding - kernel + 1, 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  f = lambda p, x: jnp.sum(jnp.sin(m.apply({"params": p}, x)))
  r = lambda p, x: jnp.sum(jnp.sin(reference(p, x)))
  for a, b in zip(jax.tree_util.tree_leaves(jax.grad(f, argnums=(0, 1))(v["params"], x)),
                  jax.tree_util.tree_leaves(jax.grad(r, argnums=(0, 1))(v["params"], x))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
