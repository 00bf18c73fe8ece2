"""CAFE (jaxdistill.objectives.cafe): the pure loss against NumPy and hand computations, gradients against finite
differences, the ConvNet's per-layer features (models.layer_features), the config and registry, the bi-level
schedules (jitted update = host loop, fresh networks on the watcher rule) and a short run on Fashion-MNIST."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from x64compat import enable_x64

from experiments import names
from jaxdistill import loop, models, objectives, synthetic
from jaxdistill.objectives import RealBatch, cafe

C, N, M, SHAPE = 3, 4, 2, (8, 8, 1)


def _arrays(seed=0, dtype=np.float32):
  rng = np.random.RandomState(seed)
  return rng.randn(C, N, *SHAPE).astype(dtype), rng.randn(C, M, *SHAPE).astype(dtype)


def _two_layer(w1, w2):
  """features_fn with two layers: ``tanh(x W1)`` [k, 5] and ``relu(h W2)`` [k, 2, 2] (flattened for the logits)."""
  def fn(x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ w1)
    return [h, jax.nn.relu(h @ w2).reshape(x.shape[0], 2, 2)]
  return fn


def _numpy_terms(real, syn, w1, w2):
  def feats(x):
    h = np.tanh(x.reshape(x.shape[0], -1).astype(np.float64) @ w1)
    return [h, np.maximum(h @ w2, 0.0)]
  fr = feats(real.reshape((C * N,) + SHAPE))
  fs = feats(syn.reshape((C * M,) + SHAPE))
  align = [np.sum((a.reshape(C, N, -1).mean(1) - b.reshape(C, M, -1).mean(1)) ** 2) for a, b in zip(fr, fs)]
  centres = fs[-1].reshape(C, M, -1).mean(1)
  logits = fr[-1] @ centres.T
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1, keepdims=True)) - logits.max(
      1, keepdims=True)
  labels = np.repeat(np.arange(C), N)
  return np.asarray(align), -np.sum(logp[np.arange(C * N), labels])


def _weights(seed=3):
  rng = np.random.RandomState(seed)
  return (rng.randn(int(np.prod(SHAPE)), 5) * 0.3).astype(np.float32), (rng.randn(5, 4)).astype(np.float32)


def test_loss_equals_numpy_reference():
  real, syn = _arrays()
  w1, w2 = _weights()
  fn = _two_layer(jnp.asarray(w1), jnp.asarray(w2))
  align, disc = cafe.terms(fn, real, syn)
  want_align, want_disc = _numpy_terms(real, syn, w1, w2)
  np.testing.assert_allclose(np.asarray(align), want_align, rtol=1e-5)
  np.testing.assert_allclose(float(disc), want_disc, rtol=1e-5)
  got = cafe.loss(fn, real, syn, layer_weights=(0.3, 2.0), inner_weight=0.05)
  np.testing.assert_allclose(float(got), 0.3 * want_align[0] + 2.0 * want_align[1] + 0.05 * want_disc, rtol=1e-5)
  # Default weights: every layer 1, discrimination 0.01 (the code's inner_weight).
  np.testing.assert_allclose(float(cafe.loss(fn, real, syn)), want_align.sum() + 0.01 * want_disc, rtol=1e-5)
  assert float(jax.jit(lambda r, s: cafe.loss(fn, r, s))(real, syn)) == pytest.approx(float(cafe.loss(fn, real, syn)),
                                                                                      rel=1e-5)


def test_alignment_is_zero_when_features_agree():
  """Same per-class mean features (the real set itself, its images permuted within each class) -> no alignment
  term at any layer; the discrimination term stays."""
  real, _ = _arrays(1)
  w1, w2 = _weights()
  fn = _two_layer(jnp.asarray(w1), jnp.asarray(w2))
  permuted = real[:, ::-1]
  align, disc = cafe.terms(fn, real, permuted)
  np.testing.assert_allclose(np.asarray(align), 0.0, atol=1e-10)
  assert float(disc) > 0
  np.testing.assert_allclose(float(cafe.loss(fn, real, permuted, inner_weight=0.0)), 0.0, atol=1e-10)


def test_discrimination_by_hand():
  """Two classes, identity features on 2-pixel "images": centres s0 = (1, 0), s1 = (0, 2)."""
  real = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]], np.float32)  # [C=2, n=2, 2]
  syn = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 3.0]]], np.float32)
  _, disc = cafe.terms(lambda x: [x], real, syn)
  # logits: (1, 0), (0, 0) for class 0; (0, 2), (1, 2) for class 1.
  want = np.log1p(np.exp(-1.0)) + np.log(2.0) + np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))
  assert float(disc) == pytest.approx(want, rel=1e-6)


def test_gradient_matches_finite_differences_and_real_is_stopped():
  with enable_x64():
    model = models.get_model("convnet", C, SHAPE, width=8, depth=2)
    variables = models.init_variables(model, jax.random.PRNGKey(0), SHAPE)
    fn = lambda x: models.layer_features(model, variables, x, train=True)
    real, syn = (jnp.asarray(a) for a in _arrays(2, np.float64))
    f = lambda s: cafe.loss(fn, real, s, layer_weights=(0.1, 1.0, 2.0), inner_weight=0.5)
    assert f(syn).dtype == jnp.float64
    g = np.asarray(jax.grad(f)(syn)).reshape(-1)
    rng = np.random.RandomState(0)
    eps = 1e-6
    for flat in rng.choice(syn.size, 6, replace=False):
      e = np.zeros(syn.size)
      e[flat] = eps
      e = jnp.asarray(e.reshape(syn.shape))
      fd = (float(f(syn + e)) - float(f(syn - e))) / (2 * eps)
      np.testing.assert_allclose(g[flat], fd, rtol=1e-4, atol=1e-8)
    assert float(jnp.max(jnp.abs(jax.grad(lambda r: cafe.loss(fn, r, syn))(real)))) == 0.0


def test_bad_inputs_are_refused():
  real, syn = _arrays()
  fn = lambda x: [x.reshape(x.shape[0], -1)]
  with pytest.raises(ValueError, match="class-major"):
    cafe.loss(fn, real.reshape((C * N,) + SHAPE), syn)
  with pytest.raises(ValueError, match="layer_weights"):
    cafe.loss(fn, real, syn, layer_weights=(1.0, 1.0))
  with pytest.raises(ValueError, match="list of per-layer"):
    cafe.loss(lambda x: x.reshape(x.shape[0], -1), real, syn)
  with pytest.raises(ValueError, match="batch axis"):
    cafe.loss(lambda x: [x.reshape(-1)], real, syn)


def test_convnet_layer_features():
  """Blocks after activation (before pooling) and the embedding; the last block pooled is the embedding; init
  stores nothing extra; other architectures are refused."""
  model = models.get_model("convnet", 10, (28, 28, 1), width=8)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (28, 28, 1))
  assert set(variables) == {"params"}
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 28, 28, 1))
  feats = models.layer_features(model, variables, x)
  assert [f.shape for f in feats] == [(3, 32, 32, 8), (3, 16, 16, 8), (3, 8, 8, 8), (3, 128)]
  np.testing.assert_allclose(np.asarray(feats[-1]), np.asarray(models.apply(model, variables, x, embed=True)[0]),
                             rtol=1e-6)
  pooled = np.asarray(feats[2]).reshape(3, 4, 2, 4, 2, 8).mean((2, 4)).reshape(3, -1)
  np.testing.assert_allclose(pooled, np.asarray(feats[-1]), rtol=1e-5, atol=1e-6)
  assert float(jnp.min(feats[0])) >= 0.0  # after the ReLU
  bn = models.get_model("convnet_bn", 10, (28, 28, 1), width=8, depth=2)
  bn_vars = models.init_variables(bn, jax.random.PRNGKey(0), (28, 28, 1))
  assert [f.shape for f in models.layer_features(bn, bn_vars, x, train=True)] == [(3, 32, 32, 8), (3, 16, 16, 8),
                                                                                  (3, 512)]
  mlp = models.get_model("mlp", 10, (28, 28, 1), width=8)
  with pytest.raises(ValueError, match="ConvNet"):
    models.layer_features(mlp, models.init_variables(mlp, jax.random.PRNGKey(0), (28, 28, 1)), x)


def test_config_validation():
  assert cafe.CAFEConfig().validate() is not None
  for bad, match in ((dict(arch="mlp"), "arch"), (dict(schedule="adaptive"), "schedule"),
                     (dict(inner_weight=-1.0), "inner_weight"), (dict(lambda_1=0.0), "lambda_1"),
                     (dict(window=0), "window"), (dict(layer_weights=(1.0, -1.0)), "layer_weights"),
                     (dict(layer_weights="abc"), "layer_weights"), (dict(lr_net=0), "lr_net"),
                     (dict(dsa_strategy=("blur",)), "dsa_strategy"), (dict(outer_loop=0), "outer_loop")):
    with pytest.raises(ValueError, match=match):
      cafe.CAFEConfig(**bad).validate()
  with pytest.raises(ValueError, match="unknown option"):
    objectives.default_config("cafe", lambda1=0.1)
  cfg = objectives.default_config("cafe", width=8, schedule="fixed", layer_weights=(1.0, 1.0))
  with pytest.raises(ValueError, match="depth \\+ 1 = 4"):
    objectives.make_objective("cafe", cfg, num_classes=C, image_shape=(28, 28, 1), ipc=1)
  cfg = objectives.default_config("cafe", width=8)
  with pytest.raises(ValueError, match="probe"):
    objectives.make_objective("cafe", cfg, num_classes=C, image_shape=SHAPE, ipc=1)
  with pytest.raises(ValueError, match="probe must be"):
    objectives.make_objective("cafe", cfg, num_classes=C, image_shape=SHAPE, ipc=1,
                              probe=np.zeros((C + 1, 2) + SHAPE, np.float32))


def test_registry_defaults_are_the_codes():
  assert "cafe" in objectives.METHODS and "cafe" in names.OBJECTIVES
  assert objectives.method_defaults("cafe") == objectives.MethodDefaults(0.1, 2000, 256, "noise")
  cfg = objectives.default_config("cafe")
  assert (cfg.arch, cfg.width, cfg.inner_weight, cfg.lr_net, cfg.batch_train) == ("convnet", 128, 0.01, 0.01, 256)
  assert (cfg.schedule, cfg.lambda_1, cfg.lambda_2, cfg.window, cfg.probe_per_class) == ("dynamic", 0.04, 0.03, 10,
                                                                                          128)
  assert not cfg.dsa and cfg.layer_weights is None
  assert cafe.default_layer_weights(3) == (0.1, 0.1, 1.0, 2.0) == cafe.LAYER_WEIGHTS_DEPTH3
  assert cfg.loops(10) == (10, 50)  # the fixed schedule: DC's get_loops


def test_watcher():
  accs, filled = jnp.zeros((3,), jnp.float32), jnp.zeros((), jnp.int32)
  spans = []
  for a in (0.5, 0.7, 0.6, 0.65):
    accs, filled, span = cafe.watch(accs, filled, jnp.float32(a))
    spans.append(float(span))
  np.testing.assert_allclose(np.asarray(accs), [0.7, 0.6, 0.65])
  assert int(filled) == 3
  np.testing.assert_allclose(spans, [-1.0, -1.0, 0.2, 0.1], atol=1e-6)


def _problem(**overrides):
  rng = np.random.RandomState(0)
  real = jnp.asarray(rng.randn(C, 6, *SHAPE), jnp.float32)
  probe = jnp.asarray(rng.randn(C, 5, *SHAPE), jnp.float32)
  syn = synthetic.SyntheticBatch(jnp.asarray(rng.randn(C * 2, *SHAPE), jnp.float32),
                                 jnp.repeat(jnp.arange(C, dtype=jnp.int32), 2))
  cfg = objectives.default_config("cafe", **{**dict(width=8, depth=2, window=2, max_inner_epochs=3,
                                                    probe_per_class=4, batch_train=4), **overrides})
  return cfg, real, probe, syn


def test_objective_loss_is_the_pure_loss():
  cfg, real, probe, syn = _problem(host_inner=False)
  obj = objectives.make_objective("cafe", cfg, num_classes=C, image_shape=SHAPE, ipc=2, probe=probe)
  state = obj.init(jax.random.PRNGKey(0))
  value, aux = obj.loss(state, syn, RealBatch(real, jnp.broadcast_to(jnp.arange(C)[:, None], (C, 6))),
                        jax.random.PRNGKey(1), obj.data)
  model = models.get_model(cfg.arch, C, SHAPE, width=cfg.width, depth=cfg.depth)
  fn = lambda x: models.layer_features(model, state.net.variables, x, train=True)
  want = cafe.loss(fn, real, syn.images.reshape((C, 2) + SHAPE), layer_weights=cafe.default_layer_weights(2))
  np.testing.assert_allclose(float(value), float(want), rtol=1e-5)
  assert aux["alignment"].shape == (3,) and np.isfinite(float(aux["discrimination"]))


def _leaves_close(a, b, tol=1e-5):
  return max(float(jnp.max(jnp.abs(p - q))) for p, q in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))) < tol


def test_dynamic_update_host_equals_jitted_and_renews_on_a_flat_watcher():
  """The inner training runs (the network changes), jitted and host forms agree, and with lambda_1 above any
  possible span the second update (a full watcher of 2) draws a fresh network."""
  cfg, _, probe, syn = _problem(lambda_1=2.0)
  obj_a = objectives.make_objective("cafe", dataclasses.replace(cfg, host_inner=False), num_classes=C,
                                    image_shape=SHAPE, ipc=2, probe=probe)
  obj_b = objectives.make_objective("cafe", dataclasses.replace(cfg, host_inner=True), num_classes=C,
                                    image_shape=SHAPE, ipc=2, probe=probe)
  assert obj_a.host_update is None and obj_b.host_update is not None
  s0 = obj_a.init(jax.random.PRNGKey(0))
  a = jax.jit(obj_a.update)(s0, syn, jax.random.PRNGKey(1), probe)
  b = obj_b.host_update(s0, syn, jax.random.PRNGKey(1), probe)
  assert not _leaves_close(s0.net.variables, a.net.variables, 1e-4)  # trained
  assert _leaves_close(a, b) and int(a.filled) == int(b.filled) == 1 and int(a.count) == 1
  a2 = jax.jit(obj_a.update)(a, syn, jax.random.PRNGKey(2), probe)
  b2 = obj_b.host_update(b, syn, jax.random.PRNGKey(2), probe)
  fresh = obj_a.init(jax.random.split(jax.random.PRNGKey(2), 3)[1])
  assert _leaves_close(a2, fresh, 1e-6) and _leaves_close(b2, fresh, 1e-6)
  assert int(a2.filled) == 0


def test_fixed_schedule_trains_then_renews():
  cfg, _, _, syn = _problem(schedule="fixed", outer_loop=2, inner_loop=1, host_inner=False)
  obj = objectives.make_objective("cafe", cfg, num_classes=C, image_shape=SHAPE, ipc=2)
  assert obj.data is None
  s0 = obj.init(jax.random.PRNGKey(0))
  s1 = jax.jit(obj.update)(s0, syn, jax.random.PRNGKey(1))
  assert int(s1.count) == 1 and not _leaves_close(s0.net.variables, s1.net.variables, 1e-4)
  s2 = jax.jit(obj.update)(s1, syn, jax.random.PRNGKey(2))
  assert _leaves_close(s2, obj.init(jax.random.split(jax.random.PRNGKey(2), 3)[1]), 1e-6)


def test_two_iterations_on_fashion_mnist(fmnist_train):
  x, y, spec = fmnist_train
  probe = cafe.make_probe(jax.random.PRNGKey(5), x, y, spec.num_classes, 8)
  assert probe.shape == (10, 8, 28, 28, 1)
  cfg = objectives.default_config("cafe", width=8, window=2, max_inner_epochs=2, probe_per_class=4)
  obj = objectives.make_objective("cafe", cfg, num_classes=10, image_shape=x.shape[1:], ipc=1, probe=probe)
  init = synthetic.init_pixels(jax.random.PRNGKey(0), "noise", x, y, 10, 1)
  lc = loop.LoopConfig(iterations=2, real_per_class=4, lr_img=0.1)
  out = loop.distill(obj, synthetic.PIXELS, init, x, y, 10, jax.random.PRNGKey(1), lc, progress=False)
  assert out.losses.shape == (2,) and np.all(np.isfinite(out.losses))
  images = np.asarray(out.state.syn.params["images"])
  assert np.all(np.isfinite(images)) and not np.allclose(images, np.asarray(init.params["images"]))
  assert int(out.state.obj_state.filled) in (0, 2)  # a full watcher of 2, or emptied by a fresh network
