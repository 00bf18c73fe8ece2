"""Objectives: the DC distance, DM loss, meta-gradients vs finite differences, registry and configs."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from x64compat import enable_x64

from jaxdistill import loop, objectives, synthetic
from jaxdistill.objectives import RealBatch, match_distance
from jaxdistill.objectives.gradient_matching import default_loops

SHAPE = (12, 12, 1)  # tiny images keep second-order gradients cheap


def _grad_tree(seed, scale=1.0):
  rng = np.random.RandomState(seed)
  return {"conv": {"kernel": rng.randn(3, 3, 2, 4) * scale, "bias": rng.randn(4)},
          "norm": {"scale": rng.randn(4), "bias": rng.randn(4)},
          "dense": {"kernel": rng.randn(16, 5), "bias": rng.randn(5)}}


def _np_ours(ga, gb):
  """Plain NumPy DC distance in PyTorch layout: [out, in, kh, kw] / [out, in]; 1-D tensors skipped."""
  total = 0.0
  for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 1:
      continue
    if a.ndim == 4:  # Flax [kh, kw, in, out] -> torch [out, in, kh, kw]
      a, b = a.transpose(3, 2, 0, 1), b.transpose(3, 2, 0, 1)
    else:  # [in, out] -> [out, in]
      a, b = a.T, b.T
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    for i in range(a.shape[0]):
      total += 1.0 - np.dot(a[i], b[i]) / (np.linalg.norm(a[i]) * np.linalg.norm(b[i]) + 1e-6)
  return total


def _np_flat(g):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(g)])


def test_dc_distance_zero_for_identical_gradients():
  g = _grad_tree(0)
  assert abs(float(match_distance(g, g, "ours"))) < 1e-5
  assert abs(float(match_distance(g, g, "cos"))) < 1e-6
  assert float(match_distance(g, g, "mse")) == 0.0


def test_dc_distance_invariant_to_positive_per_channel_scaling():
  ga, gb = _grad_tree(1), _grad_tree(2)
  rng = np.random.RandomState(3)
  scaled = jax.tree_util.tree_map(lambda x: x * rng.uniform(0.1, 10.0, size=x.shape[-1]), gb)
  d0, d1 = float(match_distance(ga, gb)), float(match_distance(ga, scaled))
  assert d0 > 1.0
  assert abs(d0 - d1) < 1e-4 * d0
  # A negative scale of one channel must change it (the test can fail).
  flipped = {**gb, "dense": {**gb["dense"], "kernel": gb["dense"]["kernel"] * np.r_[-1.0, np.ones(4)]}}
  assert abs(float(match_distance(ga, flipped)) - d0) > 1e-3


def test_dc_distance_matches_numpy():
  for seed in range(3):
    ga, gb = _grad_tree(10 + seed), _grad_tree(20 + seed, scale=0.5)
    np.testing.assert_allclose(float(match_distance(ga, gb, "ours")), _np_ours(ga, gb), rtol=1e-5)
    a, b = _np_flat(ga), _np_flat(gb)
    np.testing.assert_allclose(float(match_distance(ga, gb, "mse")), np.sum((a - b) ** 2), rtol=1e-5)
    np.testing.assert_allclose(float(match_distance(ga, gb, "cos")),
                               1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-6), rtol=1e-5)


def test_dc_distance_ignores_biases_and_norm_params():
  ga, gb = _grad_tree(4), _grad_tree(5)
  other = jax.tree_util.tree_map(lambda x: x if x.ndim > 1 else x * -7.0 + 3.0, gb)
  assert float(match_distance(ga, gb)) == pytest.approx(float(match_distance(ga, other)), rel=1e-6)
  # ... but the weights do count.
  other_w = jax.tree_util.tree_map(lambda x: x[::-1] if x.ndim > 1 else x, gb)
  assert float(match_distance(ga, other_w)) != pytest.approx(float(match_distance(ga, gb)), rel=1e-3)


def test_dc_distance_gradient_finite_at_zero_gradient():
  ga = _grad_tree(6)
  zero = jax.tree_util.tree_map(np.zeros_like, ga)
  g = jax.grad(lambda b: match_distance(ga, b))(zero)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g))


def _problem(method, ipc=2, n=3, seed=0, dtype=jnp.float32, **cfg):
  nc = 3
  key = jax.random.PRNGKey(seed)
  k1, k2 = jax.random.split(key)
  real = RealBatch(jax.random.normal(k1, (nc, n) + SHAPE, dtype),
                   jnp.broadcast_to(jnp.arange(nc, dtype=jnp.int32)[:, None], (nc, n)))
  syn_x = jax.random.normal(k2, (nc * ipc,) + SHAPE, dtype)
  labels = jnp.repeat(jnp.arange(nc, dtype=jnp.int32), ipc)
  cfg.setdefault("width", 4)
  cfg.setdefault("depth", 2)
  config = objectives.default_config(method, **cfg)
  obj = objectives.make_objective(method, config, num_classes=nc, image_shape=SHAPE, ipc=ipc)
  return obj, real, syn_x, labels


def test_dm_loss_zero_when_synthetic_equals_real():
  for method, shared in (("dm", False), ("dm_bn", True)):
    obj, real, _, _ = _problem(method, ipc=3, n=3, shared_op=shared)
    syn = synthetic.SyntheticBatch(real.images.reshape((-1,) + SHAPE), real.labels.reshape(-1))
    state = obj.init(jax.random.PRNGKey(1))
    loss, aux = obj.loss(state, syn, real, jax.random.PRNGKey(2))
    assert abs(float(loss)) < 1e-4, method
    assert aux["per_class"].shape == (3,)
    other = synthetic.SyntheticBatch(syn.images + 0.5, syn.labels)
    assert float(obj.loss(state, other, real, jax.random.PRNGKey(2))[0]) > 1e-3


def test_gm_loss_zero_when_synthetic_equals_real():
  obj, real, _, _ = _problem("dsa", ipc=3, n=3)
  syn = synthetic.SyntheticBatch(real.images.reshape((-1,) + SHAPE), real.labels.reshape(-1))
  loss, aux = obj.loss(obj.init(jax.random.PRNGKey(1)), syn, real, jax.random.PRNGKey(2))
  assert abs(float(loss)) < 1e-3
  assert aux["per_class"].shape == (3,)


@pytest.mark.parametrize("method", [pytest.param("dc", marks=pytest.mark.slow),
                                    pytest.param("dsa", marks=pytest.mark.slow), "dm", "dm_l1",
                                    pytest.param("dm_bn", marks=pytest.mark.slow)])
def test_meta_gradient_matches_finite_differences(method):
  with enable_x64():
    extra = {"metric": "ours"} if method in ("dc", "dsa") else {}
    obj, real, syn_x, labels = _problem(method, dtype=jnp.float64, **extra)
    real = RealBatch(real.images.astype(jnp.float64), real.labels)
    # Network parameters in float64 too, so the (second-order) gradients are computed in float64.
    state = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x,
                                   obj.init(jax.random.PRNGKey(3)))
    key = jax.random.PRNGKey(4)

    def f(x):
      return obj.loss(state, synthetic.SyntheticBatch(x, labels), real, key)[0]

    g = jax.grad(f)(syn_x)
    assert g.dtype == jnp.float64
    for seed in range(2):
      v = jax.random.normal(jax.random.PRNGKey(10 + seed), syn_x.shape, jnp.float64)
      eps = 1e-6  # small: ReLU'(.) makes gradient-matching losses piecewise smooth (jumps at kinks)
      fd = (f(syn_x + eps * v) - f(syn_x - eps * v)) / (2 * eps)
      an = jnp.vdot(g, v)
      assert abs(float(an)) > 1e-8
      np.testing.assert_allclose(float(an), float(fd), rtol=1e-5, atol=1e-9)


def test_dc_real_gradients_are_stopped():
  obj, real, syn_x, labels = _problem("dc")
  state = obj.init(jax.random.PRNGKey(0))
  g_real = jax.grad(lambda r: obj.loss(state, synthetic.SyntheticBatch(syn_x, labels),
                                       RealBatch(r, real.labels), jax.random.PRNGKey(1))[0])(real.images)
  assert float(jnp.max(jnp.abs(g_real))) == 0.0


def test_dc_update_trains_then_reinitialises_every_outer_loop():
  obj, real, syn_x, labels = _problem("dc", ipc=2, outer_loop=3, inner_loop=2)
  syn = synthetic.SyntheticBatch(syn_x, labels)
  s0 = obj.init(jax.random.PRNGKey(0))
  leaf = lambda s: np.asarray(jax.tree_util.tree_leaves(s.net.variables["params"])[-1])
  s1 = obj.update(s0, syn, jax.random.PRNGKey(1))
  s2 = obj.update(s1, syn, jax.random.PRNGKey(2))
  s3 = obj.update(s2, syn, jax.random.PRNGKey(3))
  assert int(s1.count) == 1 and int(s3.count) == 3
  assert not np.allclose(leaf(s0), leaf(s1)) and not np.allclose(leaf(s1), leaf(s2))
  fresh = obj.init(jax.random.split(jax.random.PRNGKey(3))[0])
  # After outer_loop updates the network is a fresh one drawn from the key (not trained further).
  np.testing.assert_array_equal(leaf(s3), leaf(fresh))


def test_registry_and_config_validation():
  assert set(objectives.METHODS) >= {"dc", "dsa", "dm", "dm_l1", "dm_bn"}
  assert objectives.method_defaults("dm").lr_img == 1.0
  assert objectives.method_defaults("dm").iterations == 20000
  assert objectives.method_defaults("dc").lr_img == 0.1 and objectives.method_defaults("dc").init == "noise"
  assert objectives.default_config("dsa").dsa and not objectives.default_config("dc").dsa
  assert objectives.default_config("dm_l1").distance == "l1"
  assert default_loops(1) == (1, 1) and default_loops(10) == (10, 50) and default_loops(50) == (50, 10)
  with pytest.raises(ValueError, match="method"):
    objectives.default_config("nope")
  with pytest.raises(ValueError, match="metric"):
    objectives.default_config("dc", metric="l7")
  with pytest.raises(ValueError, match="distance"):
    objectives.default_config("dm", distance="l3")
  with pytest.raises(ValueError, match="unknown option"):
    objectives.default_config("dm", lr=3)
  with pytest.raises(ValueError, match="outer_loop"):
    objectives.default_config("dc", outer_loop=0)
  with pytest.raises(ValueError, match="dsa_strategy"):
    objectives.default_config("dm", dsa_strategy=("color", "warp"))


def test_gm_class_batch_matches_vmap():
  obj_a, real, syn_x, labels = _problem("dc", seed=5)
  obj_b = objectives.make_objective("dc", dataclasses.replace(obj_a.config, class_batch=1), num_classes=3,
                                    image_shape=SHAPE, ipc=2)
  st = obj_a.init(jax.random.PRNGKey(0))
  syn = synthetic.SyntheticBatch(syn_x, labels)
  la = obj_a.loss(st, syn, real, jax.random.PRNGKey(1))[0]
  lb = obj_b.loss(st, syn, real, jax.random.PRNGKey(1))[0]
  np.testing.assert_allclose(float(la), float(lb), rtol=1e-5)


def test_dc_host_inner_training_equals_the_jitted_update_and_loop(fmnist_train):
  """``host_inner``: the host loop of jitted SGD steps computes DC's jitted inner training (updates, reset to a
  fresh network every ``outer_loop``), and the loop using it gives the same synthetic images."""
  obj_a, real, syn_x, labels = _problem("dsa", ipc=2, outer_loop=3, inner_loop=2, batch_train=4, host_inner=False)
  obj_b = objectives.make_objective("dsa", dataclasses.replace(obj_a.config, host_inner=True), num_classes=3,
                                    image_shape=SHAPE, ipc=2)
  assert obj_a.host_update is None and obj_b.host_update is not None
  syn = synthetic.SyntheticBatch(syn_x, labels)
  a = b = s0 = obj_a.init(jax.random.PRNGKey(0))
  leaves = lambda s: jax.tree_util.tree_leaves(s.net.variables)
  for k in (1, 2, 3):
    a = jax.jit(obj_a.update)(a, syn, jax.random.PRNGKey(k))
    b = obj_b.host_update(b, syn, jax.random.PRNGKey(k))
    if k == 1:  # 2 epochs x 2 minibatches of 4 actually trained it
      assert max(float(jnp.max(jnp.abs(p - q))) for p, q in zip(leaves(s0), leaves(a))) > 1e-4
    assert max(float(jnp.max(jnp.abs(p - q))) for p, q in zip(leaves(a), leaves(b))) < 1e-5
    assert int(a.count) == int(b.count) == k
  # The third update drew a fresh network in both.
  for p, q in zip(leaves(b), leaves(obj_a.init(jax.random.split(jax.random.PRNGKey(3))[0]))):
    np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
  # In the loop (DC on real Fashion-MNIST, IPC 2, outer 2 / inner 2): same images either way.
  x, y, spec = fmnist_train
  out = []
  for host in (False, True):
    cfg = objectives.default_config("dc", width=8, outer_loop=2, inner_loop=2, host_inner=host)
    obj = objectives.make_objective("dc", cfg, num_classes=10, image_shape=x.shape[1:], ipc=2)
    init = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, 10, 2)
    lc = loop.LoopConfig(iterations=3, real_per_class=4, lr_img=0.1)
    out.append(loop.distill(obj, synthetic.PIXELS, init, x, y, 10, jax.random.PRNGKey(1), lc, progress=False))
  np.testing.assert_allclose(np.asarray(out[0].state.syn.params["images"]),
                             np.asarray(out[1].state.syn.params["images"]), atol=1e-5)
  np.testing.assert_allclose(out[0].losses, out[1].losses, rtol=1e-4)
  assert int(out[1].state.obj_state.count) == 3
