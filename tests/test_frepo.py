"""FRePo against its authors' code (yongchao97/FRePo): the loss against closed forms and finite differences,
centred labels and the label-margin term, the pool network (width doubling, no norm, Flax init) and the pool's
re-initialisation schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import synthetic
from jaxdistill.objectives import frepo
from jaxdistill.objectives.base import RealBatch
from jaxdistill.objectives.frepo import FRePoConfig, FRePoConvNet, make_frepo
from x64compat import enable_x64


def _np_krr_pred(f_s, y_s, f_t, reg):
  """KRR by hand: F_t F_sᵀ (F_s F_sᵀ + λ·tr/n·I)⁻¹ y_s, in float64."""
  f_s, f_t, y_s = (np.asarray(a, np.float64) for a in (f_s, f_t, y_s))
  k_ss = f_s @ f_s.T
  n = len(f_s)
  return (f_t @ f_s.T) @ np.linalg.solve(k_ss + reg * np.trace(k_ss) / n * np.eye(n), y_s)


def _np_margin(y):
  y = np.sort(np.asarray(y, np.float64), axis=-1)
  return -np.mean(np.minimum(y[:, -1] - y[:, -2], 1.0 / y.shape[-1]))


def _centred(labels, k):
  return np.eye(k)[labels] - 1.0 / k


def _sets(seed=0, n=6, m=9, d=5, k=4, dtype=np.float32):
  rng = np.random.RandomState(seed)
  x_s, x_t = rng.randn(n, d).astype(dtype), rng.randn(m, d).astype(dtype)
  y_s = (_centred(rng.randint(0, k, n), k) + 0.1 * rng.randn(n, k)).astype(dtype)  # learned-label-like
  y_t = _centred(rng.randint(0, k, m), k).astype(dtype)
  return x_s, y_s, x_t, y_t


# ------------------------------------------------------------------------------------------------ the loss


def test_loss_with_linear_features_equals_hand_computed_krr():
  x_s, y_s, x_t, y_t = _sets()
  w = np.random.RandomState(1).randn(5, 7).astype(np.float32)
  pred = _np_krr_pred(x_s @ w, y_s, x_t @ w, 1e-3)
  want = 0.5 * np.mean(np.sum((pred - y_t) ** 2, -1))
  got = frepo.loss(lambda x: x @ jnp.asarray(w), x_s, y_s, x_t, y_t, 1e-3)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  value, pred_j = frepo.loss_and_predictions(lambda x: x @ jnp.asarray(w), x_s, y_s, x_t, y_t, 1e-3)
  np.testing.assert_allclose(np.asarray(pred_j), pred, rtol=1e-3, atol=1e-5)
  # The regulariser is relative to tr(K)/n: scaling the features leaves the loss unchanged.
  np.testing.assert_allclose(float(frepo.loss(lambda x: 10.0 * x @ jnp.asarray(w), x_s, y_s, x_t, y_t, 1e-3)),
                             want, rtol=1e-3)


def test_loss_with_more_features_than_support_interpolates_the_support():
  # D ≥ n and tiny λ: the KRR read-out reproduces the support labels, so scoring on the support gives ~0.
  x_s, y_s, _, _ = _sets(2, n=4, d=8)
  assert float(frepo.loss(lambda x: x, x_s, y_s, x_s, y_s, 1e-7)) < 1e-6


def test_loss_gradients_match_central_finite_differences():
  with enable_x64():
    x_s, y_s, x_t, y_t = _sets(3, dtype=np.float64)
    w = jnp.asarray(np.random.RandomState(4).randn(5, 8))
    feat = lambda x: jnp.tanh(x @ w)
    for arg, f in ((x_s, lambda x: frepo.loss(feat, x, y_s, x_t, y_t, 1e-2, dtype="float64")),
                   (y_s, lambda y: frepo.loss(feat, x_s, y, x_t, y_t, 1e-2, dtype="float64"))):
      arg = jnp.asarray(arg)
      grad = np.asarray(jax.grad(f)(arg))
      eps = 1e-6
      fd = np.zeros(arg.size)
      for j in range(arg.size):
        e = np.zeros(arg.size)
        e[j] = eps
        e = jnp.asarray(e.reshape(arg.shape))
        fd[j] = (float(f(arg + e)) - float(f(arg - e))) / (2 * eps)
      np.testing.assert_allclose(grad.reshape(-1), fd, rtol=1e-5, atol=1e-9)
      assert np.abs(fd).max() > 1e-3  # a real check, not zeros against zeros


def test_target_features_are_stopped():
  # FRePo differentiates only through the support features: d/dx_t of the loss is zero through F_t.
  x_s, y_s, x_t, y_t = _sets(5)
  g = jax.grad(lambda xt: frepo.loss(lambda x: jnp.tanh(x), x_s, y_s, xt, y_t, 1e-3))(jnp.asarray(x_t))
  assert np.all(np.asarray(g) == 0)


# ------------------------------------------------------------------------------------ labels and margin


def test_support_targets_are_centred_and_scaled_like_init_proto():
  labels = jnp.asarray([0, 2, 1])
  y = np.asarray(frepo.support_targets(labels, 10))
  np.testing.assert_allclose(y, np.eye(10)[[0, 2, 1]] - 0.1, atol=1e-7)
  np.testing.assert_allclose(y.sum(-1), 0.0, atol=1e-6)
  assert y[0, 0] == pytest.approx(0.9) and y[0, 1] == pytest.approx(-0.1)
  y100 = np.asarray(frepo.support_targets(labels, 100))  # (one_hot - 1/K) / sqrt(K/10)
  np.testing.assert_allclose(y100, (np.eye(100)[[0, 2, 1]] - 0.01) / np.sqrt(10.0), atol=1e-7)
  soft = jnp.asarray(np.random.RandomState(0).randn(3, 10), jnp.float32)  # learned labels: as they are
  np.testing.assert_array_equal(np.asarray(frepo.support_targets(soft, 10)), np.asarray(soft))


def test_centre_labels_resets_learned_labels_of_a_pixel_set(fmnist_train):
  images, labels, _ = fmnist_train
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", images, labels, 10, 2, learn_labels=True)
  np.testing.assert_allclose(np.asarray(syn.params["labels"]).sum(-1), 1.0)  # plain one-hot before
  out = frepo.centre_labels(syn, 10)
  np.testing.assert_allclose(np.asarray(out.params["labels"]), _centred(np.repeat(np.arange(10), 2), 10),
                             atol=1e-7)
  np.testing.assert_array_equal(np.asarray(out.params["images"]), np.asarray(syn.params["images"]))
  hard = synthetic.init_pixels(jax.random.PRNGKey(0), "real", images, labels, 10, 1)
  assert frepo.centre_labels(hard, 10) is hard  # nothing to centre


def test_label_margin_loss_closed_form_and_gradient():
  y = np.asarray([[1.0, 0.0, 0.0], [0.5, 0.4, 0.1], [0.2, 0.6, 0.55]], np.float32)
  # margins: min(1, 1/3) = 1/3, min(0.1, 1/3) = 0.1, min(0.05, 1/3) = 0.05
  want = -(1 / 3 + 0.1 + 0.05) / 3
  assert float(frepo.label_margin_loss(jnp.asarray(y))) == pytest.approx(want, rel=1e-6)
  assert float(frepo.label_margin_loss(jnp.asarray(y))) == pytest.approx(_np_margin(y), rel=1e-6)
  g = np.asarray(jax.grad(frepo.label_margin_loss)(jnp.asarray(y)))
  # saturated row: no gradient; others: -1/n on the top entry, +1/n on the runner-up
  np.testing.assert_allclose(g, [[0, 0, 0], [-1 / 3, 1 / 3, 0], [0, -1 / 3, 1 / 3]], atol=1e-7)
  with pytest.raises(ValueError, match="K >= 2"):
    frepo.label_margin_loss(jnp.ones((3,)))


# -------------------------------------------------------------------------------------------- the network


def test_pool_network_doubles_width_has_no_norm_and_flax_init():
  model = FRePoConvNet(10, width=128, depth=3)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  assert sorted(params) == ["Conv_0", "Conv_1", "Conv_2", "Dense_0"]  # no norm layers
  shapes = [params[f"Conv_{i}"]["kernel"].shape for i in range(3)]
  assert shapes == [(3, 3, 1, 128), (3, 3, 128, 256), (3, 3, 256, 512)]
  assert params["Dense_0"]["kernel"].shape == (512 * 4 * 4, 10)  # 28 px padded by 3: 32 -> 4 after 3 pools
  for name in params:
    assert np.all(np.asarray(params[name]["bias"]) == 0)  # Flax: zero biases
  # Flax's LeCun-normal weights: std 1/sqrt(fan_in) (a PyTorch-style uniform init has std 1/sqrt(3 fan_in)).
  for i, fan_in in ((1, 9 * 128), (2, 9 * 256)):
    std = float(np.std(np.asarray(params[f"Conv_{i}"]["kernel"])))
    assert std == pytest.approx(1 / np.sqrt(fan_in), rel=0.03), (i, std)
  feats = model.apply({"params": params}, jnp.ones((2, 28, 28, 1)), embed=True)
  assert feats.shape == (2, 8192)
  rgb = FRePoConvNet(10, width=8, depth=3)
  p = rgb.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert p["Conv_0"]["kernel"].shape == (3, 3, 3, 8) and p["Dense_0"]["kernel"].shape == (32 * 16, 10)


def test_objective_uses_the_reference_network_by_default():
  cfg = FRePoConfig()
  assert (cfg.width, cfg.width_growth, cfg.norm, cfg.init_scheme) == (128, 2, "none", "flax")
  assert (cfg.pool_size, cfg.max_online_updates, cfg.online_lr, cfg.online_batch) == (10, 100, 3e-4, 1000)
  obj = make_frepo(FRePoConfig(width=4, pool_size=3), num_classes=10, image_shape=(28, 28, 1), ipc=1)
  state = obj.init(jax.random.PRNGKey(0))
  assert state.params["Conv_2"]["kernel"].shape == (3, 3, 3, 8, 16)  # [P, 3, 3, 4·2, 4·4]
  with pytest.raises(ValueError, match="norm must be one of"):
    FRePoConfig(norm="batchnorm").validate()
  with pytest.raises(ValueError, match="width_growth"):
    FRePoConfig(width_growth=0).validate()
  with pytest.raises(ValueError, match="label_margin"):
    FRePoConfig(label_margin=-1.0).validate()


# ------------------------------------------------------------------------------- the objective end to end


def _syn_and_real(images, labels, ipc=1, n_real=3, learn=True):
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", images, labels, 10, ipc, learn_labels=learn)
  syn = frepo.centre_labels(syn, 10)
  rng = np.random.RandomState(0)
  soft = syn.params.get("labels")
  if soft is not None:  # learned labels off their init, so the margin term is not saturated everywhere
    syn = syn._replace(params={**syn.params, "labels": soft + 0.3 * jnp.asarray(rng.rand(*soft.shape),
                                                                                  jnp.float32)})
  xs = np.stack([images[np.where(labels == c)[0][ipc:ipc + n_real]] for c in range(10)])
  real = RealBatch(jnp.asarray(xs), jnp.broadcast_to(jnp.arange(10)[:, None], (10, n_real)))
  return synthetic.render_pixels(syn), real


@pytest.mark.parametrize("use_flip", [False, True])
def test_objective_loss_equals_hand_computed_krr_plus_margin(fmnist_train, use_flip):
  images, labels, _ = fmnist_train
  obj = make_frepo(FRePoConfig(width=4, pool_size=2, use_flip=use_flip, reg=1e-3), num_classes=10,
                   image_shape=images.shape[1:], ipc=1)
  state = obj.init(jax.random.PRNGKey(0))
  syn, real = _syn_and_real(images, labels)
  value, aux = obj.loss(state, syn, real, jax.random.PRNGKey(1))
  member = int(state.member)
  params = jax.tree_util.tree_map(lambda x: x[member], state.params)
  model = FRePoConvNet(10, width=4, depth=3)
  feat = lambda x: np.asarray(model.apply({"params": params}, jnp.asarray(x), embed=True), np.float64)
  xs, ys = np.asarray(syn.images), np.asarray(syn.labels)
  if use_flip:
    xs, ys_krr = np.concatenate([xs, xs[:, :, ::-1]]), np.concatenate([ys, ys])
  else:
    ys_krr = ys
  xt = np.asarray(real.images).reshape((-1,) + images.shape[1:])
  yt = _centred(np.repeat(np.arange(10), 3), 10)  # centred one-hot targets
  pred = _np_krr_pred(feat(xs), ys_krr, feat(xt), 1e-3)
  kernel = 0.5 * np.mean(np.sum((pred - yt) ** 2, -1))
  margin = _np_margin(ys)
  assert margin < -0.01
  np.testing.assert_allclose(float(aux["kernel_loss"]), kernel, rtol=2e-3)
  np.testing.assert_allclose(float(aux["label_loss"]), margin, rtol=1e-5)
  np.testing.assert_allclose(float(value), kernel + margin, rtol=2e-3, atol=1e-5)
  # label_margin = 0 turns the term off
  obj0 = make_frepo(FRePoConfig(width=4, pool_size=2, use_flip=use_flip, reg=1e-3, label_margin=0.0),
                    num_classes=10, image_shape=images.shape[1:], ipc=1)
  np.testing.assert_allclose(float(obj0.loss(state, syn, real, jax.random.PRNGKey(1))[0]), kernel, rtol=2e-3)


def test_objective_hard_labels_are_centred(fmnist_train):
  images, labels, _ = fmnist_train
  obj = make_frepo(FRePoConfig(width=4, pool_size=1, learn_labels=False, reg=1e-3, label_margin=0.0),
                   num_classes=10, image_shape=images.shape[1:], ipc=1)
  state = obj.init(jax.random.PRNGKey(0))
  syn, real = _syn_and_real(images, labels, learn=False)
  assert syn.labels.ndim == 1
  params = jax.tree_util.tree_map(lambda x: x[0], state.params)
  model = FRePoConvNet(10, width=4, depth=3)
  feat = lambda x: np.asarray(model.apply({"params": params}, jnp.asarray(x), embed=True), np.float64)
  xt = np.asarray(real.images).reshape((-1,) + images.shape[1:])
  pred = _np_krr_pred(feat(syn.images), _centred(np.arange(10), 10), feat(xt), 1e-3)
  want = 0.5 * np.mean(np.sum((pred - _centred(np.repeat(np.arange(10), 3), 10)) ** 2, -1))
  np.testing.assert_allclose(float(obj.loss(state, syn, real, jax.random.PRNGKey(1))[0]), want, rtol=2e-3)


def test_label_scale_only_rescales_the_stored_labels(fmnist_train):
  # label_scale s: labels are stored s times FRePo's, the objective sees labels / s -> same loss, same image
  # gradient, label gradient / s, same member training.
  images, labels, _ = fmnist_train
  syn, real = _syn_and_real(images, labels)
  s = 30.0
  scaled = syn._replace(labels=s * syn.labels)
  objs = [make_frepo(FRePoConfig(width=4, pool_size=2, reg=1e-3, label_scale=v), num_classes=10,
                     image_shape=images.shape[1:], ipc=1) for v in (1.0, s)]
  state = objs[0].init(jax.random.PRNGKey(0))

  def value_and_grads(obj, batch):
    f = lambda x, y: obj.loss(state, batch._replace(images=x, labels=y), real, jax.random.PRNGKey(1))[0]
    return f(batch.images, batch.labels), jax.grad(f, argnums=(0, 1))(batch.images, batch.labels)

  (v1, (gx1, gy1)), (vs, (gxs, gys)) = value_and_grads(objs[0], syn), value_and_grads(objs[1], scaled)
  np.testing.assert_allclose(float(vs), float(v1), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gxs), np.asarray(gx1), rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gys) * s, np.asarray(gy1), rtol=1e-3, atol=1e-5)
  a = objs[0].update(state, syn, jax.random.PRNGKey(2))
  b = objs[1].update(state, scaled, jax.random.PRNGKey(2))
  np.testing.assert_allclose(np.asarray(b.params["Dense_0"]["kernel"]), np.asarray(a.params["Dense_0"]["kernel"]),
                             rtol=1e-5, atol=1e-7)
  hard = synthetic.init_pixels(jax.random.PRNGKey(0), "real", images, labels, 10, 1, learn_labels=True)
  np.testing.assert_allclose(np.asarray(frepo.centre_labels(hard, 10, s).params["labels"]),
                             s * _centred(np.arange(10), 10), rtol=1e-6)


# ---------------------------------------------------------------------------------------- the pool schedule


def test_initial_ages_are_staggered_like_the_code():
  np.testing.assert_array_equal(frepo.initial_ages(10, 100), np.arange(10) * 10)
  np.testing.assert_array_equal(frepo.initial_ages(3, 100), [0, 33, 66])  # (max // P) · i
  np.testing.assert_array_equal(frepo.initial_ages(4, 2), [0, 0, 0, 0])


def test_pool_trains_until_past_max_online_updates_then_reinitialises(fmnist_train):
  images, labels, _ = fmnist_train
  max_age = 2
  obj = make_frepo(FRePoConfig(width=4, pool_size=2, max_online_updates=max_age), num_classes=10,
                   image_shape=images.shape[1:], ipc=1)
  state = obj.init(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(state.ages), [0, 1])  # (2 // 2) · i
  syn, _ = _syn_and_real(images, labels)
  update = jax.jit(obj.update)
  kernel = lambda s: np.asarray(s.params["Conv_1"]["kernel"])
  bias = lambda s: np.asarray(s.params["Conv_1"]["bias"])
  resets = trains = 0
  uses = {0: [], 1: []}
  for step in range(16):
    i = int(state.member)
    uses[i].append(int(state.ages[i]))
    before_k, ages = kernel(state), np.asarray(state.ages)
    state = update(state, syn, jax.random.PRNGKey(100 + step))
    after_k, after_b = kernel(state), bias(state)
    np.testing.assert_array_equal(after_k[1 - i], before_k[1 - i])  # only the current member changes
    assert int(state.ages[1 - i]) == ages[1 - i]
    if ages[i] > max_age:  # re-initialised instead of trained: fresh Flax weights, zero biases, age 0
      assert int(state.ages[i]) == 0
      assert np.all(after_b[i] == 0) and np.abs(after_k[i] - before_k[i]).max() > 1e-2
      resets += 1
    else:  # one Adam step: each weight moves by at most ~lr
      assert int(state.ages[i]) == ages[i] + 1
      change = np.abs(after_k[i] - before_k[i]).max()
      assert 0 < change <= 1.01 * obj.config.online_lr, change
      trains += 1
  assert resets >= 2 and trains >= 4, (resets, trains)
  # Each network is used at ages 0 … max_online_updates + 1 (the code: train while step <= max).
  assert set(uses[0]) | set(uses[1]) == set(range(max_age + 2))


def test_pool_online_batch_subsamples_large_sets(fmnist_train):
  images, labels, _ = fmnist_train
  syn, _ = _syn_and_real(images, labels, ipc=2)
  common = dict(width=4, pool_size=1, max_online_updates=10)
  full = make_frepo(FRePoConfig(**common), num_classes=10, image_shape=images.shape[1:], ipc=2)
  sub = make_frepo(FRePoConfig(online_batch=5, **common), num_classes=10, image_shape=images.shape[1:], ipc=2)
  state = full.init(jax.random.PRNGKey(0))
  a = full.update(state, syn, jax.random.PRNGKey(1))
  b = sub.update(state, syn, jax.random.PRNGKey(1))
  # the first Adam step is ±lr·sign(g) per weight: compare the gradients' signs through the parameter change
  da = np.asarray(a.params["Dense_0"]["kernel"] - state.params["Dense_0"]["kernel"])
  db = np.asarray(b.params["Dense_0"]["kernel"] - state.params["Dense_0"]["kernel"])
  assert np.abs(da).max() > 0 and np.abs(db).max() > 0 and not np.allclose(da, db)
  # with online_batch >= n the step is the full-set step
  same = make_frepo(FRePoConfig(online_batch=20, **common), num_classes=10, image_shape=images.shape[1:], ipc=2)
  c = same.update(state, syn, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(c.params["Dense_0"]["kernel"]), np.asarray(a.params["Dense_0"]["kernel"]))


# ------------------------------------------------------------------------------------- CLI and presets


def test_cli_defaults_and_paper_preset_use_lamb_with_cosine_decay():
  from experiments import distill
  from jaxdistill import presets
  assert distill.LOOP_DEFAULTS["frepo"] == {"optimizer": "lamb", "lr_schedule": "cosine", "lr_final_fraction": 0.1}
  p = presets.resolve("frepo", "paper", "fashion_mnist", 1)
  assert (p.values["optimizer"], p.values["lr_schedule"], p.values["lr_img"]) == ("lamb", "cosine", 3e-4)
  assert (p.values["width_growth"], p.values["norm"], p.values["use_flip"]) == (2, "none", False)
  assert presets.resolve("frepo", "paper", "cifar10", 10).values["use_flip"] is True
  assert presets.resolve("frepo", "paper", "cifar100", 1).values["use_flip"] is True
  assert presets.resolve("frepo", "paper", "cifar100", 10).values["use_flip"] is False
  cpu = presets.resolve("frepo", "cpu", "fashion_mnist", 10)
  assert (cpu.values["optimizer"], cpu.values["lr_schedule"]) == ("lamb", "cosine")
