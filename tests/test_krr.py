"""Kernel methods: the KRR solver and losses, the neural-tangents twins, RFAD features, KIP / RFAD / FRePo.

NT-dependent tests skip (with the import error as reason) where neural-tangents cannot be imported.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from x64compat import enable_x64

from jaxdistill import loop, objectives, synthetic
from jaxdistill.objectives import RealBatch, krr
from jaxdistill.objectives.frepo import FRePoConfig, make_frepo
from jaxdistill.objectives.kip import KIPConfig, krr_test_accuracy, make_kip
from jaxdistill.objectives.rfad import RFADConfig, feature_kernel, make_rfad, random_features


def _nt_or_skip():
  from jaxdistill import kernels
  try:
    kernels.require_neural_tangents()
  except ImportError as e:
    pytest.skip(str(e))
  return kernels


def _psd(rng, n, d=5):
  a = rng.standard_normal((n, d))
  return a @ a.T


# ---------------------------------------------------------------------------------------------------- KRR core


def test_krr_matches_numpy_closed_form(rng):
  n, m, c = 12, 7, 3
  x = rng.standard_normal((n + m, 4))
  k = np.exp(-0.5 * ((x[:, None] - x[None]) ** 2).sum(-1))  # RBF: positive definite
  k_ss, k_ts = k[:n, :n], k[n:, :n]
  y = rng.standard_normal((n, c))
  reg = 1e-3
  expected = k_ts @ np.linalg.solve(k_ss + reg * np.trace(k_ss) / n * np.eye(n), y)
  got = krr.krr_predict(jnp.asarray(k_ts, jnp.float32), jnp.asarray(k_ss, jnp.float32),
                        jnp.asarray(y, jnp.float32), reg)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-3, atol=2e-3)
  # The regulariser scales with tr(K)/n: scaling the kernel by 100 leaves the prediction unchanged.
  got_scaled = krr.krr_predict(jnp.asarray(100 * k_ts, jnp.float32), jnp.asarray(100 * k_ss, jnp.float32),
                               jnp.asarray(y, jnp.float32), reg)
  np.testing.assert_allclose(np.asarray(got_scaled), np.asarray(got), rtol=1e-3, atol=1e-3)
  # float64 path: exact to 1e-9 on a rank-deficient kernel with a tiny regulariser.
  k_low = _psd(rng, n, 4)
  y_low = rng.standard_normal((n, c))
  with enable_x64():
    got64 = krr.krr_predict(jnp.asarray(k_low), jnp.asarray(k_low), jnp.asarray(y_low), 1e-8, dtype="float64")
    assert got64.dtype == jnp.float64
  exp64 = k_low @ np.linalg.solve(k_low + 1e-8 * np.trace(k_low) / n * np.eye(n), y_low)
  # (cond(K + λI) ~ 1e8: 1e-5 still separates float64 from float32, whose error here is ~1e-1; jax 0.11 is off
  # by 1.4e-6 at one entry)
  np.testing.assert_allclose(np.asarray(got64), exp64, rtol=1e-5, atol=1e-7)


def test_krr_errors_are_clear():
  k = -jnp.eye(4)  # not positive semi-definite: the factorisation fails
  with pytest.raises(FloatingPointError, match="Increase reg.*float64"):
    krr.krr_predict(k, k, jnp.ones((4, 2)))
  with pytest.raises(ValueError, match="jax_enable_x64"):
    krr.krr_solve(jnp.eye(3), jnp.ones((3, 2)), dtype="float64")
  with pytest.raises(ValueError, match="reg must be > 0"):
    krr.krr_solve(jnp.eye(3), jnp.ones((3, 2)), reg=0.0)
  with pytest.raises(ValueError, match="loss must be one of"):
    krr.krr_loss(jnp.ones((2, 2)), jnp.ones((2, 2)), "hinge")
  # Inside jit the failure cannot raise: it surfaces as a non-finite loss (the loop stops on it).
  bad = jax.jit(lambda k: krr.mse_loss(krr.krr_predict(k, k, jnp.ones((4, 2))), jnp.ones((4, 2))))(k)
  assert not np.isfinite(float(bad))


def test_platt_cross_entropy_and_temperature(rng):
  pred = jnp.asarray(rng.standard_normal((50, 4)) * 0.1, jnp.float32)
  labels = jnp.asarray(np.argmax(np.asarray(pred) + 0.05 * rng.standard_normal((50, 4)), -1), jnp.int32)
  t = 0.3
  logp = np.asarray(jax.nn.log_softmax(np.asarray(pred) / t, -1))
  expected = -np.mean(logp[np.arange(50), np.asarray(labels)])
  np.testing.assert_allclose(float(krr.platt_cross_entropy(pred, labels, t)), expected, rtol=1e-5)
  onehot = jax.nn.one_hot(labels, 4)
  np.testing.assert_allclose(float(krr.platt_cross_entropy(pred, onehot, t)), expected, rtol=1e-5)
  # The temperature is learnable (non-zero gradient) and the fitted one is a stationary point that beats τ=1.
  g = jax.grad(krr.platt_cross_entropy, argnums=2)(pred, labels, 1.0)
  assert abs(float(g)) > 1e-4
  tau = krr.fit_temperature(pred, labels)
  assert float(krr.platt_cross_entropy(pred, labels, tau)) < float(krr.platt_cross_entropy(pred, labels, 1.0))
  assert abs(float(jax.grad(krr.platt_cross_entropy, argnums=2)(pred, labels, tau))) < 1e-3
  value, fitted = krr.krr_loss(pred, labels, "platt")
  np.testing.assert_allclose(float(fitted), float(tau), rtol=1e-6)


# ------------------------------------------------------------------------------------- neural-tangents twins


@pytest.mark.slow
def test_nt_convnet_kernel_matches_wide_finite_network():
  kernels = _nt_or_skip()
  from neural_tangents import empirical_ntk_fn
  cfg = kernels.KernelConfig(arch="convnet", depth=2, width=512)
  init_fn, apply_fn, kernel_fn = kernels.stax_network(cfg, 1, (8, 8, 1))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  analytic = np.asarray(kernel_fn(x, None, "ntk"))
  _, params = init_fn(jax.random.PRNGKey(1), x.shape)
  empirical = np.asarray(empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0)(x, None, params))
  rel = np.linalg.norm(empirical - analytic) / np.linalg.norm(analytic)
  assert rel < 0.2, rel
  # make_kernel_fn is the same kernel (no padding at 8x8) and differentiable.
  k = kernels.make_kernel_fn(cfg, 1, (8, 8, 1))
  np.testing.assert_allclose(np.asarray(k(x, x)), analytic, rtol=1e-5)
  g = jax.grad(lambda a: jnp.sum(k(a, x)))(x)
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0


def test_stax_convnet_is_the_flax_convnet_without_norm():
  """Same weights -> same outputs, on 28x28x1 (checks the twin's input padding = the Flax first-conv pad 3)."""
  kernels = _nt_or_skip()
  from jaxdistill import models
  cfg = kernels.KernelConfig(arch="convnet", width=8, W_std=1.3, b_std=0.2)
  init_fn, apply_fn, _ = kernels.stax_network(cfg, 10, (28, 28, 1))
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 28, 28, 1))
  xp = kernels.prepare_inputs(x, cfg)
  _, params = init_fn(jax.random.PRNGKey(3), xp.shape)
  out_nt = apply_fn(params, xp)
  model = models.get_model("convnet", 10, (28, 28, 1), width=8, norm="none")
  convs = [p for p in params if isinstance(p, tuple) and len(p) == 2 and p[0].ndim == 4]
  dense_w, dense_b = [p for p in params if isinstance(p, tuple) and len(p) == 2 and p[0].ndim == 2][0]
  flax_params = {}
  for i, (w, b) in enumerate(convs):  # NTK parameterisation: W · W_std / sqrt(fan_in), b · b_std
    fan_in = w.shape[0] * w.shape[1] * w.shape[2]
    flax_params[f"Conv_{i}"] = {"kernel": w * cfg.W_std / np.sqrt(fan_in), "bias": b.reshape(-1) * cfg.b_std}
  flax_params["Dense_0"] = {"kernel": dense_w * cfg.W_std / np.sqrt(dense_w.shape[0]),
                            "bias": dense_b.reshape(-1) * cfg.b_std}
  out_flax = model.apply({"params": flax_params}, x)
  np.testing.assert_allclose(np.asarray(out_flax), np.asarray(out_nt), rtol=1e-4, atol=1e-5)


def test_batched_kernel_equals_direct_kernel_with_padding():
  kernels = _nt_or_skip()
  cfg = kernels.KernelConfig(arch="fc", depth=1)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (12, 28, 28, 1)))
  direct = np.asarray(kernels.make_kernel_fn(cfg)(x[:7], x[7:]))
  batched = kernels.batched_kernel_fn(cfg, batch_size=4)(x[:7], x[7:])  # 7 and 5 rows: padded to 8
  assert batched.shape == (7, 5)
  np.testing.assert_allclose(batched, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_rfad_features_approach_the_nngp():
  kernels = _nt_or_skip()
  x = jax.random.normal(jax.random.PRNGKey(4), (6, 8, 8, 1))
  nngp = np.asarray(kernels.make_kernel_fn(kernels.KernelConfig(arch="convnet", kind="nngp", depth=2), 1,
                                           (8, 8, 1))(x, x))
  errors = []
  for m in (1, 64):
    cfg = RFADConfig(num_models=m, width=16, depth=2)
    rel = []
    for seed in range(3):
      phi = random_features(jax.random.PRNGKey(10 + seed), x, cfg)
      k = np.asarray(feature_kernel(phi, phi, cfg.b_std))
      rel.append(np.linalg.norm(k - nngp) / np.linalg.norm(nngp))
    errors.append(np.mean(rel))
  assert errors[1] < 0.5 * errors[0], errors
  assert errors[1] < 0.1, errors


# ------------------------------------------------------------------------------------------------ objectives


def _real_batch(images, labels, num_classes, n):
  xs = np.stack([images[labels == c][:n] for c in range(num_classes)])
  return RealBatch(jnp.asarray(xs), jnp.broadcast_to(jnp.arange(num_classes)[:, None], (num_classes, n)))


def _objective_cases():
  return [
      ("kip_fc", lambda s: make_kip(KIPConfig(depth=1), num_classes=10, image_shape=s, ipc=1), True),
      ("kip_conv_nngp", lambda s: make_kip(KIPConfig(arch="convnet", kind="nngp", depth=1, pooling="none",
                                                     loss="platt"), num_classes=10, image_shape=s, ipc=1), False),
      ("rfad", lambda s: make_rfad(RFADConfig(num_models=2, width=8), num_classes=10, image_shape=s, ipc=1),
       False),
      ("frepo", lambda s: make_frepo(FRePoConfig(width=8, pool_size=2), num_classes=10, image_shape=s, ipc=1),
       True),
  ]


@pytest.mark.parametrize("case", [c[0] for c in _objective_cases()])
def test_objective_loss_finite_and_image_gradient_nonzero(case, fmnist_train):
  name, build, learn = {c[0]: c for c in _objective_cases()}[case]
  if name.startswith("kip"):
    _nt_or_skip()
  images, labels, spec = fmnist_train
  if name == "kip_conv_nngp":  # the ConvNet kernel is costly on CPU: a 12x12 crop keeps it to seconds
    images = images[:, 8:20, 8:20]
  shape = images.shape[1:]
  obj = build(shape)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", images, labels, 10, 1, learn_labels=learn)
  real = _real_batch(images, labels, 10, 3)
  state = obj.init(jax.random.PRNGKey(1))
  extra = (obj.data,) if obj.data is not None else ()

  def f(params):
    return obj.loss(state, synthetic.render_pixels(syn._replace(params=params)), real, jax.random.PRNGKey(2),
                    *extra)

  (value, aux), grads = jax.value_and_grad(f, has_aux=True)(syn.params)
  assert np.isfinite(float(value)) and float(value) > 0
  assert 0.0 <= float(aux["accuracy"]) <= 1.0
  g = np.asarray(grads["images"])
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  if learn:
    assert np.abs(np.asarray(grads["labels"])).max() > 0


def test_kip_label_learning_changes_labels_with_adam(fmnist_train):
  _nt_or_skip()
  images, labels, _ = fmnist_train
  obj = objectives.make_objective("kip", KIPConfig(depth=1), num_classes=10, image_shape=images.shape[1:], ipc=1)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", images, labels, 10, 1, learn_labels=True)
  cfg = loop.LoopConfig(iterations=4, real_per_class=10, lr_img=0.01, optimizer="adam")
  out = loop.distill(obj, synthetic.PIXELS, syn, images, labels, 10, jax.random.PRNGKey(1), cfg, progress=False)
  new = np.asarray(out.state.syn.params["labels"])
  old = np.asarray(syn.params["labels"])
  assert new.shape == (10, 10) and np.abs(new - old).max() > 1e-3
  assert out.losses[-1] < out.losses[0]
  # Frozen labels stay the hard labels.
  syn_hard = synthetic.init_pixels(jax.random.PRNGKey(0), "real", images, labels, 10, 1)
  out_hard = loop.distill(obj, synthetic.PIXELS, syn_hard, images, labels, 10, jax.random.PRNGKey(1),
                          dataclasses.replace(cfg, iterations=2), progress=False)
  np.testing.assert_array_equal(np.asarray(synthetic.PIXELS.render(out_hard.state.syn).labels), np.arange(10))
  # Learned labels become distributions under the cross-entropy rule of evaluation.
  from jaxdistill.evaluate import prepare_labels
  p = prepare_labels(new - 0.5, 10, "cross_entropy")
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
  assert p.min() >= 0


def test_kip_krr_test_accuracy(fmnist_train, fmnist_test):
  _nt_or_skip()
  images, labels, _ = fmnist_train
  test_x, test_y, _ = fmnist_test
  support = np.concatenate([np.where(labels == c)[0][:10] for c in range(10)])
  acc = krr_test_accuracy(KIPConfig(depth=1), images[support], labels[support], test_x[:300], test_y[:300], 10,
                          batch_size=50)
  assert 0.5 < acc <= 1.0, acc  # 10 real images per class: chance is 0.1


def test_configs_validate_with_clear_messages():
  with pytest.raises(ValueError, match="arch must be one of"):
    KIPConfig(arch="resnet").validate()
  with pytest.raises(ValueError, match="loss must be one of"):
    RFADConfig(loss="hinge").validate()
  with pytest.raises(ValueError, match="model_chunk"):
    RFADConfig(num_models=8, model_chunk=3).validate()
  with pytest.raises(ValueError, match="pool_size"):
    FRePoConfig(pool_size=0).validate()
  for name in ("kip", "rfad", "frepo"):
    assert name in objectives.REGISTRY
    assert objectives.method_defaults(name).init == "real"


@pytest.mark.slow
def test_cli_kernel_method_uses_adam_and_learned_labels(tmp_path):
  import json

  from experiments import distill
  from jaxdistill import io
  cfg = tmp_path / "cfg.json"
  cfg.write_text(json.dumps({"num_models": 2}))
  out = tmp_path / "run"
  payload = distill.main(["--method", "rfad", "--iterations", "2", "--out", str(out), "--ipc", "1",
                          "--real-per-class", "4", "--width", "8", "--eval-models", "1", "--eval-epochs", "2",
                          "--eval-width", "8", "--test-size", "200", "--no-eval-dsa", "--quiet", "--config", str(cfg),
                          "--learn-labels"])
  assert payload["loop_config"]["optimizer"] == "adam"
  assert payload["objective_config"]["learn_labels"] is True and payload["objective_config"]["num_models"] == 2
  assert len(payload["loss_curve"]) == 2 and all(np.isfinite(payload["loss_curve"]))
  syn = io.load_synthetic(str(out / "synthetic.npz"))
  assert syn["labels"].shape == (10, 10)
