"""KIP and RFAD losses against closed forms (NumPy) on tiny problems, label centring, the float64 solve, ZCA."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from x64compat import enable_x64

from jaxdistill import objectives
from jaxdistill.objectives import RealBatch, kip, krr
from jaxdistill.objectives.kip import KIPConfig, make_kip
from jaxdistill.objectives.rfad import RFADConfig, feature_kernel, make_rfad, random_features


def _nt_or_skip():
  from jaxdistill import kernels
  try:
    kernels.require_neural_tangents()
  except ImportError as e:
    pytest.skip(str(e))


def _np_krr(k_ts, k_ss, y_s, reg):
  n = k_ss.shape[0]
  a = k_ss + reg * np.trace(k_ss) / n * np.eye(n)
  return k_ts @ np.linalg.solve(a, y_s)


def _tiny(seed=0, n=4, m=6, d=5, c=3):
  r = np.random.RandomState(seed)
  return (r.randn(n, d).astype(np.float32), r.randn(n, c).astype(np.float32), r.randn(m, d).astype(np.float32),
          r.randn(m, c).astype(np.float32))


def test_kip_pure_loss_equals_numpy_krr_closed_form():
  x_s, y_s, x_t, y_t = _tiny()
  kfn = lambda a, b: (a @ b.T + 1.0) ** 2  # a simple polynomial kernel
  x64 = [np.asarray(v, np.float64) for v in (x_s, y_s, x_t, y_t)]
  pred = _np_krr((x64[2] @ x64[0].T + 1) ** 2, (x64[0] @ x64[0].T + 1) ** 2, x64[1], 1e-2)
  want = 0.5 * np.mean(np.sum((pred - x64[3]) ** 2, -1))
  got = float(kip.loss(kfn, jnp.asarray(x_s), jnp.asarray(y_s), jnp.asarray(x_t), jnp.asarray(y_t), 1e-2))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # ... and its image gradient against central finite differences (in float64).
  with enable_x64():
    f = lambda xs: kip.loss(kfn, xs, jnp.asarray(x64[1]), jnp.asarray(x64[2]), jnp.asarray(x64[3]), 1e-2,
                            dtype="float64")
    xs = jnp.asarray(x64[0])
    g = np.asarray(jax.grad(f)(xs))
    e = np.zeros_like(x64[0])
    e[1, 2] = 1e-6
    fd = (float(f(xs + e)) - float(f(xs - e))) / 2e-6
  np.testing.assert_allclose(g[1, 2], fd, rtol=1e-4, atol=1e-8)


def test_kip_objective_centres_labels_and_matches_closed_form():
  _nt_or_skip()
  r = np.random.RandomState(1)
  c, n = 3, 2
  real = RealBatch(jnp.asarray(r.randn(c, n, 4, 4, 1), jnp.float32),
                   jnp.broadcast_to(jnp.arange(c)[:, None], (c, n)))
  syn = types.SimpleNamespace(images=jnp.asarray(r.randn(c, 4, 4, 1), jnp.float32), labels=jnp.arange(c))
  cfg = KIPConfig(depth=1, reg=1e-3)
  kfn = __import__("jaxdistill.kernels", fromlist=["make_kernel_fn"]).make_kernel_fn(cfg.kernel(), c, (4, 4, 1))
  xt = real.images.reshape(c * n, 4, 4, 1)
  k_ss, k_ts = np.asarray(kfn(syn.images, syn.images), np.float64), np.asarray(kfn(xt, syn.images), np.float64)
  onehot_s, onehot_t = np.eye(c), np.repeat(np.eye(c), n, axis=0)
  values = {}
  for centred in (True, False):
    obj = make_kip(KIPConfig(depth=1, reg=1e-3, centre_labels=centred), num_classes=c, image_shape=(4, 4, 1),
                   ipc=1)
    shift = 1.0 / c if centred else 0.0
    pred = _np_krr(k_ts, k_ss, onehot_s - shift, 1e-3)
    want = 0.5 * np.mean(np.sum((pred - (onehot_t - shift)) ** 2, -1))
    values[centred] = float(obj.loss({}, syn, real, jax.random.PRNGKey(0))[0])
    np.testing.assert_allclose(values[centred], want, rtol=2e-3)
  assert abs(values[True] - values[False]) > 1e-3 * abs(values[False])  # centring changes the loss


def test_rfad_loss_equals_closed_form_on_its_features_and_centres_labels():
  r = np.random.RandomState(2)
  c, n = 3, 4
  real = RealBatch(jnp.asarray(r.randn(c, n, 8, 8, 1), jnp.float32),
                   jnp.broadcast_to(jnp.arange(c)[:, None], (c, n)))
  syn = types.SimpleNamespace(images=jnp.asarray(r.randn(c, 8, 8, 1), jnp.float32), labels=jnp.arange(c))
  key = jax.random.PRNGKey(3)
  for centred in (True, False):
    cfg = RFADConfig(num_models=2, width=8, depth=2, loss="mse", centre_labels=centred)
    obj = make_rfad(cfg, num_classes=c, image_shape=(8, 8, 1), ipc=1)
    xt = real.images.reshape(c * n, 8, 8, 1)
    phi = np.asarray(random_features(key, jnp.concatenate([syn.images, xt]), cfg), np.float64)
    k = phi @ phi.T + cfg.b_std ** 2
    shift = 1.0 / c if centred else 0.0
    pred = _np_krr(k[c:, :c], k[:c, :c], np.eye(c) - shift, cfg.reg)
    want = 0.5 * np.mean(np.sum((pred - (np.repeat(np.eye(c), n, axis=0) - shift)) ** 2, -1))
    got = float(obj.loss({}, syn, real, key)[0])
    np.testing.assert_allclose(got, want, rtol=2e-3)
  # The features estimate the kernel with the authors' scaling: K = 2/(M·D) Σ φφᵀ + 0.01 (W_std² = 2).
  np.testing.assert_allclose(np.asarray(feature_kernel(jnp.ones((1, 4)), jnp.ones((1, 4)), 0.1)), [[4.01]],
                             rtol=1e-6)


def test_rfad_unpadded_28px_features_floor_pooling():
  cfg = RFADConfig(num_models=1, width=4)
  phi = random_features(jax.random.PRNGKey(0), jnp.ones((2, 28, 28, 1)), cfg)
  assert phi.shape == (2, 4 * 3 * 3)  # 28 -> 14 -> 7 -> 3, as RFAD's ConvNet_wide on unpadded inputs
  padded = random_features(jax.random.PRNGKey(0), jnp.ones((2, 28, 28, 1)), RFADConfig(num_models=1, width=4,
                                                                                         pad_input=True))
  assert padded.shape == (2, 4 * 4 * 4)
  assert RFADConfig().reg == 5e-3 and RFADConfig().width == 256 and RFADConfig().centre_labels


def test_float64_solve_path_is_more_accurate_and_needs_x64():
  r = np.random.RandomState(4)
  a = r.randn(40, 3)
  k = a @ a.T  # rank 3: the solve is ill-conditioned at a tiny reg
  y = r.randn(40, 2)
  want = np.linalg.solve(k + 1e-6 * np.trace(k) / 40 * np.eye(40), y)
  with pytest.raises(ValueError, match="jax_enable_x64"):
    krr.krr_solve(jnp.asarray(k, jnp.float32), jnp.asarray(y, jnp.float32), 1e-6, "float64")
  with enable_x64():
    got64 = np.asarray(krr.krr_solve(jnp.asarray(k), jnp.asarray(y), 1e-6, "float64"))
    cfg = RFADConfig(num_models=1, width=4, depth=1, dtype="float64")
    obj = make_rfad(cfg, num_classes=2, image_shape=(4, 4, 1), ipc=1)
    real = RealBatch(jnp.asarray(r.randn(2, 2, 4, 4, 1), jnp.float32), jnp.asarray([[0, 0], [1, 1]]))
    syn = types.SimpleNamespace(images=jnp.asarray(r.randn(2, 4, 4, 1), jnp.float32), labels=jnp.arange(2))
    value = jax.jit(lambda im: obj.loss({}, types.SimpleNamespace(images=im, labels=syn.labels), real,
                                        jax.random.PRNGKey(0))[0])(syn.images)
    assert np.isfinite(float(value))
  err64 = np.abs(got64 - want).max() / np.abs(want).max()
  assert err64 < 1e-3, err64
  with pytest.raises(ValueError, match="dtype"):
    RFADConfig(dtype="float16").validate()


def test_kip_zca_is_required_and_honoured():
  _nt_or_skip()
  from jaxdistill.data.zca import fit_zca
  shape = (4, 4, 3)
  with pytest.raises(ValueError, match="fitted ZCA"):
    objectives.make_objective("kip", KIPConfig(depth=1, zca=True), num_classes=2, image_shape=shape, ipc=1)
  r = np.random.RandomState(5)
  train = r.randn(64, *shape).astype(np.float32) * np.linspace(0.2, 3, 48).reshape(shape).astype(np.float32)
  zca = fit_zca(train, 0.1, relative=True)
  obj = objectives.make_objective("kip", KIPConfig(depth=1, zca=True), num_classes=2, image_shape=shape, ipc=1,
                                  zca=zca)
  assert obj.data is not None
  real = RealBatch(jnp.asarray(train[:4].reshape(2, 2, *shape)), jnp.asarray([[0, 0], [1, 1]]))
  syn = types.SimpleNamespace(images=jnp.asarray(train[10:12]), labels=jnp.arange(2))
  with pytest.raises(ValueError, match="whitening data"):
    obj.loss({}, syn, real, jax.random.PRNGKey(0))
  white = float(obj.loss({}, syn, real, jax.random.PRNGKey(0), obj.data)[0])
  plain = make_kip(KIPConfig(depth=1, zca=False), num_classes=2, image_shape=shape, ipc=1)
  raw = float(plain.loss({}, syn, real, jax.random.PRNGKey(0))[0])
  assert abs(white - raw) > 1e-4 * abs(raw)  # the whitening changes the kernel, hence the loss
  with pytest.raises(ValueError, match="does not whiten"):
    make_kip(KIPConfig(depth=1, zca=False), num_classes=2, image_shape=shape, ipc=1, zca=zca)


def test_cli_kip_writes_krr_and_finite_accuracy_and_solves_in_float64_only_while_distilling(tmp_path):
  _nt_or_skip()
  import json

  from experiments import distill
  cfg = tmp_path / "cfg.json"
  cfg.write_text(json.dumps({"depth": 1, "dtype": "float64", "krr_test_size": 100}))
  out = tmp_path / "run"
  payload = distill.main(["--method", "kip", "--iterations", "2", "--out", str(out), "--ipc", "1",
                          "--real-per-class", "4", "--eval-models", "1", "--eval-epochs", "2", "--eval-width", "8",
                          "--test-size", "200", "--eval-dsa", "--eval-every", "1", "--quiet", "--config", str(cfg),
                          "--learn-labels"])
  assert not jax.config.jax_enable_x64  # turned off again before evaluation
  # the evaluations during the run (with DSA, whose ops once mixed float64 and float32 there) run in float32
  assert [e["iteration"] for e in payload["evaluations"]] == [1, 2]
  saved = json.loads((out / "metrics.json").read_text())
  assert 0.0 <= saved["krr_test_accuracy"] <= 1.0 and saved["krr_test_size"] == 100
  assert 0.0 <= saved["test_accuracy_mean"] <= 1.0
  assert payload["objective_config"]["dtype"] == "float64"
  syn = np.load(out / "synthetic.npz")
  assert syn["images"].dtype == np.float32
  np.testing.assert_allclose(np.asarray(syn["labels"]).sum(-1), 0.0, atol=0.2)  # centred labels, barely moved
