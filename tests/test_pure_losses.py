"""The pure losses (DM, gradient matching, KIP, FRePo, trajectory matching) on their own: closed forms in NumPy,
gradients against finite differences, jit/vmap, the layout checks at their boundary, the registered objectives
calling them, and the public surface of ``import jaxdistill as jd``."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from x64compat import enable_x64

import jaxdistill as jd
from jaxdistill import models, objectives, synthetic
from jaxdistill.objectives import RealBatch, group_by_class
from jaxdistill.objectives import distribution_matching as dm
from jaxdistill.objectives import frepo, gradient_matching as gm, kip, trajectory
from jaxdistill.objectives import trajectory_matching as tm

C, N, M, SHAPE = 3, 4, 2, (6, 6, 1)


def _arrays(seed=0, dtype=np.float32):
  rng = np.random.RandomState(seed)
  return (rng.randn(C, N, *SHAPE).astype(dtype), rng.randn(C, M, *SHAPE).astype(dtype),
          (rng.randn(int(np.prod(SHAPE)), 5) * 0.3).astype(dtype))


def _linear_embed(w):
  return lambda x: x.reshape(x.shape[0], -1) @ w


def _fd_check(f, x, eps=1e-6, count=6, seed=0, rtol=1e-5, atol=1e-8):
  """Compares ``jax.grad(f)`` at ``x`` (float64) with central differences along random coordinates."""
  g = np.asarray(jax.grad(f)(x))
  rng = np.random.RandomState(seed)
  for flat in rng.choice(x.size, count, replace=False):
    e = np.zeros(x.size)
    e[flat] = eps
    e = e.reshape(x.shape)
    fd = (float(f(x + e)) - float(f(x - e))) / (2 * eps)
    np.testing.assert_allclose(g.reshape(-1)[flat], fd, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------ distribution matching


def test_dm_loss_equals_numpy():
  real, syn, w = _arrays()
  r = (real.reshape(C, N, -1).astype(np.float64) @ w).mean(1)
  s = (syn.reshape(C, M, -1).astype(np.float64) @ w).mean(1)
  embed = _linear_embed(jnp.asarray(w))
  np.testing.assert_allclose(float(dm.loss(embed, real, syn)), np.sum((r - s) ** 2), rtol=1e-5)
  np.testing.assert_allclose(float(dm.loss(embed, real, syn, distance="l1")), np.sum(np.abs(r - s)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dm.class_distances(embed, real, syn)), np.sum((r - s) ** 2, axis=1),
                             rtol=1e-5)
  # The real set itself as the synthetic set gives 0.
  assert float(dm.loss(embed, real, real)) == pytest.approx(0.0, abs=1e-6)


def test_dm_gradient_matches_finite_differences_and_real_is_stopped():
  with enable_x64():
    real, syn, w = _arrays(1, np.float64)
    embed = _linear_embed(jnp.asarray(w))
    for distance in ("l2", "l1"):
      _fd_check(lambda s: dm.loss(embed, jnp.asarray(real), s, distance=distance), jnp.asarray(syn))
    # Closed form of the l2 gradient: d/dS_cj = 2 (s_c − r_c) Wᵀ / m.
    r = (real.reshape(C, N, -1) @ w).mean(1)
    s = (syn.reshape(C, M, -1) @ w).mean(1)
    want = (2 * (s - r) @ w.T / M)[:, None, :].repeat(M, 1).reshape(syn.shape)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda s: dm.loss(embed, real, s))(syn)), want, rtol=1e-10)
    g_real = jax.grad(lambda r: dm.loss(embed, r, jnp.asarray(syn)))(jnp.asarray(real))
    assert float(jnp.max(jnp.abs(g_real))) == 0.0


def test_dm_loss_jits_and_vmaps():
  real, syn, w = _arrays(2)
  embed = _linear_embed(jnp.asarray(w))
  eager = float(dm.loss(embed, real, syn))
  assert float(jax.jit(lambda r, s: dm.loss(embed, r, s))(real, syn)) == pytest.approx(eager, rel=1e-6)
  many = np.stack([syn, syn + 1.0, syn * 0.5])
  batched = jax.vmap(lambda s: dm.loss(embed, real, s))(many)
  np.testing.assert_allclose(np.asarray(batched), [float(dm.loss(embed, real, s)) for s in many], rtol=1e-5)


def test_dm_refuses_flat_real_batch_and_group_by_class_fixes_it():
  real, syn, w = _arrays(3)
  embed = _linear_embed(jnp.asarray(w))
  flat = real.reshape((C * N,) + SHAPE)
  with pytest.raises(ValueError, match=r"class-major.*group_by_class"):
    dm.loss(embed, flat, syn)
  with pytest.raises(ValueError, match="class counts differ"):
    dm.loss(embed, real[:2], syn)
  with pytest.raises(ValueError, match="image shapes differ"):
    dm.loss(embed, real[..., :5, :], syn)
  with pytest.raises(ValueError, match="distance"):
    dm.loss(embed, real, syn, distance="l3")
  # Shuffled flat images with explicit labels -> grouped back into the class-major array (stable order).
  labels = np.repeat(np.arange(C), N)
  perm = np.random.RandomState(0).permutation(C * N)
  grouped = group_by_class(flat[perm], labels[perm], C)
  assert grouped.shape == real.shape
  assert float(dm.loss(embed, grouped, syn)) == pytest.approx(float(dm.loss(embed, real, syn)), rel=1e-5)
  with pytest.raises(ValueError, match="same number of images in every class"):
    group_by_class(flat[:-1], labels[:-1], C)
  with pytest.raises(ValueError, match=r"0 … 2"):
    group_by_class(flat, labels + 1, C)


class _TinyNet(nn.Module):
  """A user's own Flax network: conv -> relu -> mean pool -> dense features."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    return nn.Dense(6)(x.mean(axis=(1, 2)))


def test_dm_loss_with_a_users_flax_network_and_optax():
  import optax
  real, syn, _ = _arrays(4)
  net = _TinyNet()
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE))
  embed = lambda x: net.apply(params, x)
  tx = optax.sgd(0.5)
  syn = jnp.asarray(syn)
  opt = tx.init(syn)
  step = jax.jit(lambda s, o: _sgd_step(tx, lambda v: dm.loss(embed, real, v), s, o))
  first = float(dm.loss(embed, real, syn))
  for _ in range(5):
    syn, opt = step(syn, opt)
  assert float(dm.loss(embed, real, syn)) < first


def _sgd_step(tx, f, s, o):
  import optax
  g = jax.grad(f)(s)
  u, o = tx.update(g, o, s)
  return optax.apply_updates(s, u), o


def test_registered_dm_is_the_pure_loss_with_its_network():
  real, syn, _ = _arrays(5)
  cfg = objectives.default_config("dm", width=4, depth=1, dsa=False)
  obj = objectives.make_objective("dm", cfg, num_classes=C, image_shape=SHAPE, ipc=M)
  key = jax.random.PRNGKey(7)
  batch = synthetic.SyntheticBatch(jnp.asarray(syn.reshape((C * M,) + SHAPE)), jnp.repeat(jnp.arange(C), M))
  real_batch = RealBatch(jnp.asarray(real), jnp.broadcast_to(jnp.arange(C)[:, None], (C, N)))
  value, aux = obj.loss(obj.init(key), batch, real_batch, key)
  model = models.get_model("convnet", C, SHAPE, width=4, depth=1)
  variables = models.init_variables(model, jax.random.split(key)[0], SHAPE)
  embed = lambda x: models.apply(model, variables, x, train=True, embed=True)[0]
  assert float(value) == pytest.approx(float(dm.loss(embed, real, syn)), rel=1e-6)
  assert aux["per_class"].shape == (C,)
  # A flat real batch with explicit labels is accepted (grouped) and gives the same value.
  flat = RealBatch(real_batch.images.reshape((C * N,) + SHAPE), real_batch.labels.reshape(-1))
  assert float(obj.loss({}, batch, flat, key)[0]) == pytest.approx(float(value), rel=1e-6)
  with pytest.raises(ValueError, match=r"expected a class-major real batch"):
    obj.loss({}, batch, RealBatch(flat.images[:-1], flat.labels[:-1]), key)
  with pytest.raises(ValueError, match=r"expected a class-major real batch"):
    obj.loss({}, batch, RealBatch(real_batch.images, real_batch.labels[:, :1]), key)


def test_registered_objective_refuses_synthetic_labels_out_of_class_order():
  real, syn, _ = _arrays(6)
  cfg = objectives.default_config("dm", width=4, depth=1, dsa=False)
  obj = objectives.make_objective("dm", cfg, num_classes=C, image_shape=SHAPE, ipc=M)
  key = jax.random.PRNGKey(0)
  images = jnp.asarray(syn.reshape((C * M,) + SHAPE))
  shuffled = jnp.asarray([1, 0, 0, 2, 1, 2])  # balanced, but not class-major
  real_batch = RealBatch(jnp.asarray(real), jnp.broadcast_to(jnp.arange(C)[:, None], (C, N)))
  with pytest.raises(ValueError, match="not class-major"):
    obj.loss({}, synthetic.SyntheticBatch(images, shuffled), real_batch, key)
  # Inside jit (the loop's case: the labels are traced) the check runs on the host when the program runs.
  run = jax.jit(lambda labels: obj.loss({}, synthetic.SyntheticBatch(images, labels), real_batch, key)[0])
  assert np.isfinite(float(run(jnp.repeat(jnp.arange(C), M))))
  with pytest.raises(Exception, match="not class-major"):
    jax.block_until_ready(run(shuffled))


# ------------------------------------------------------------------------------------------- gradient matching


def _softmax_ce(params, x, y):
  logits = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _np_ce_grad_w(w, b, x, y):
  """Closed form: ∂/∂W mean_i CE(softmax(x_i W + b), y_i) = Xᵀ (softmax − onehot) / n."""
  x = x.reshape(x.shape[0], -1).astype(np.float64)
  z = x @ w + b
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  return x.T @ p / len(y)


def _np_channel_distance(a, b):
  return sum(1 - a[:, i] @ b[:, i] / (np.linalg.norm(a[:, i]) * np.linalg.norm(b[:, i]) + 1e-6)
             for i in range(a.shape[1]))


def test_gm_loss_equals_closed_form():
  real, syn, _ = _arrays(7)
  rng = np.random.RandomState(0)
  params = {"w": (rng.randn(int(np.prod(SHAPE)), C) * 0.3).astype(np.float32), "b": np.zeros(C, np.float32)}
  want = 0.0
  for c in range(C):
    ga = _np_ce_grad_w(params["w"], params["b"], real[c], np.full(N, c))
    gb = _np_ce_grad_w(params["w"], params["b"], syn[c], np.full(M, c))
    want += _np_channel_distance(ga, gb)  # the 1-D bias gradient contributes nothing
  got = gm.loss(_softmax_ce, jax.tree_util.tree_map(jnp.asarray, params), real, syn)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  # Explicit (images, labels) pairs with the class-order labels give the same value; so does lax.map by class.
  pair = (real, jnp.broadcast_to(jnp.arange(C)[:, None], (C, N)))
  assert float(gm.loss(_softmax_ce, params, pair, syn)) == pytest.approx(float(got), rel=1e-6)
  assert float(gm.loss(_softmax_ce, params, real, syn, class_batch=2)) == pytest.approx(float(got), rel=1e-5)
  np.testing.assert_allclose(float(gm.loss(_softmax_ce, params, real, syn, metric="mse")),
                             sum(np.sum((_np_ce_grad_w(params["w"], params["b"], real[c], np.full(N, c))
                                         - _np_ce_grad_w(params["w"], params["b"], syn[c], np.full(M, c))) ** 2)
                                 + np.sum((_np_bias_grad(params, real[c], c) - _np_bias_grad(params, syn[c], c)) ** 2)
                                 for c in range(C)), rtol=1e-4)


def _np_bias_grad(params, x, c):
  x = x.reshape(x.shape[0], -1).astype(np.float64)
  z = x @ params["w"] + params["b"]
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[:, c] -= 1.0
  return p.mean(0)


def test_gm_gradient_matches_finite_differences():
  with enable_x64():
    real, syn, _ = _arrays(8, np.float64)
    rng = np.random.RandomState(1)
    params = {"w": jnp.asarray(rng.randn(int(np.prod(SHAPE)), C) * 0.3), "b": jnp.zeros(C, jnp.float64)}
    _fd_check(lambda s: gm.loss(_softmax_ce, params, jnp.asarray(real), s), jnp.asarray(syn), eps=1e-5,
              rtol=1e-4, atol=1e-7)
    g_real = jax.grad(lambda r: gm.loss(_softmax_ce, params, r, jnp.asarray(syn)))(jnp.asarray(real))
    assert float(jnp.max(jnp.abs(g_real))) == 0.0


def test_gm_soft_labels_and_refusals():
  real, syn, _ = _arrays(9)
  params = {"w": jnp.asarray(np.random.RandomState(2).randn(int(np.prod(SHAPE)), C) * 0.3, jnp.float32),
            "b": jnp.zeros(C)}

  def soft_ce(p, x, y):
    logits = x.reshape(x.shape[0], -1) @ p["w"] + p["b"]
    y = y if y.ndim == 2 else jax.nn.one_hot(y, C)
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), -1))

  one_hot = jax.nn.one_hot(jnp.broadcast_to(jnp.arange(C)[:, None], (C, M)), C)
  hard = float(gm.loss(soft_ce, params, real, syn))
  assert float(gm.loss(soft_ce, params, real, (syn, one_hot))) == pytest.approx(hard, rel=1e-5)
  assert float(gm.loss(soft_ce, params, real, (syn, 0.5 * one_hot + 0.5 / C))) != pytest.approx(hard, rel=1e-3)
  with pytest.raises(ValueError, match="not class-major"):
    gm.loss(soft_ce, params, real, (syn, jnp.asarray([[0, 1], [1, 1], [2, 2]])))
  with pytest.raises(ValueError, match="flat batch"):
    gm.loss(soft_ce, params, real.reshape((C * N,) + SHAPE), syn)
  with pytest.raises(ValueError, match="metric"):
    gm.loss(soft_ce, params, real, syn, metric="l2")


def test_registered_dc_is_the_pure_loss_with_its_network():
  real, syn, _ = _arrays(10)
  cfg = objectives.default_config("dc", width=4, depth=1)
  obj = objectives.make_objective("dc", cfg, num_classes=C, image_shape=SHAPE, ipc=M)
  state = obj.init(jax.random.PRNGKey(3))
  batch = synthetic.SyntheticBatch(jnp.asarray(syn.reshape((C * M,) + SHAPE)), jnp.repeat(jnp.arange(C), M))
  real_batch = RealBatch(jnp.asarray(real), jnp.broadcast_to(jnp.arange(C)[:, None], (C, N)))
  value, _ = obj.loss(state, batch, real_batch, jax.random.PRNGKey(4))
  model = models.get_model("convnet", C, SHAPE, width=4, depth=1)
  variables = state.net.variables

  def ce(p, x, y):
    logits, _ = models.apply(model, {**variables, "params": p}, x, train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  assert float(value) == pytest.approx(float(gm.loss(ce, variables["params"], real, syn)), rel=1e-5)


# ------------------------------------------------------------------------------------------------- KIP / FRePo


def _krr_sets(seed=0, dtype=np.float32, n=6, m=9, d=5, k=3):
  rng = np.random.RandomState(seed)
  return (rng.randn(n, d).astype(dtype), np.eye(k, dtype=dtype)[rng.randint(0, k, n)],
          rng.randn(m, d).astype(dtype), np.eye(k, dtype=dtype)[rng.randint(0, k, m)])


def _np_krr_mse(x_s, y_s, x_t, y_t, reg):
  x_s, x_t = x_s.astype(np.float64), x_t.astype(np.float64)
  k_ss, k_ts = x_s @ x_s.T, x_t @ x_s.T
  n = len(x_s)
  pred = k_ts @ np.linalg.solve(k_ss + reg * np.trace(k_ss) / n * np.eye(n), y_s)
  return 0.5 * np.mean(np.sum((pred - y_t) ** 2, -1))


def test_kip_and_frepo_losses_equal_closed_form():
  x_s, y_s, x_t, y_t = _krr_sets()
  linear = lambda a, b: a @ b.T
  want = _np_krr_mse(x_s, y_s, x_t, y_t, 1e-2)
  np.testing.assert_allclose(float(kip.loss(linear, x_s, y_s, x_t, y_t, 1e-2)), want, rtol=1e-4)
  # FRePo with identity features is KRR with the linear kernel.
  np.testing.assert_allclose(float(frepo.loss(lambda x: x, x_s, y_s, x_t, y_t, 1e-2)), want, rtol=1e-4)
  value, pred = kip.loss_and_predictions(linear, x_s, y_s, x_t, y_t, 1e-2)
  assert pred.shape == y_t.shape and float(value) == pytest.approx(want, rel=1e-4)
  platt = kip.loss(linear, x_s, y_s, x_t, jnp.argmax(y_t, -1), 1e-2, loss="platt")
  assert np.isfinite(float(platt)) and float(platt) > 0


def test_kip_and_frepo_gradients_match_finite_differences():
  with enable_x64():
    x_s, y_s, x_t, y_t = _krr_sets(1, np.float64)
    rbf = lambda a, b: jnp.exp(-jnp.sum((a[:, None] - b[None]) ** 2, -1) / 10.0)
    _fd_check(lambda x: kip.loss(rbf, x, y_s, x_t, y_t, 1e-2, dtype="float64"), jnp.asarray(x_s), eps=1e-5,
              rtol=1e-4, atol=1e-8)
    _fd_check(lambda y: kip.loss(rbf, jnp.asarray(x_s), y, x_t, y_t, 1e-2, dtype="float64"), jnp.asarray(y_s),
              eps=1e-5, rtol=1e-4, atol=1e-8)
    feat = lambda x: jnp.tanh(x @ jnp.asarray(np.random.RandomState(0).randn(5, 8)))
    _fd_check(lambda x: frepo.loss(feat, x, y_s, x_t, y_t, 1e-2, dtype="float64"), jnp.asarray(x_s), eps=1e-5,
              rtol=1e-4, atol=1e-8)


def test_kip_and_frepo_refuse_bad_shapes():
  x_s, y_s, x_t, y_t = _krr_sets(2)
  linear = lambda a, b: a @ b.T
  with pytest.raises(ValueError, match="y_s must be float regression targets"):
    kip.loss(linear, x_s, np.argmax(y_s, -1), x_t, y_t)
  with pytest.raises(ValueError, match="y_t must be"):
    kip.loss(linear, x_s, y_s, x_t, np.argmax(y_t, -1))
  with pytest.raises(ValueError, match="same input shape"):
    frepo.loss(lambda x: x, x_s, y_s, x_t[:, :4], y_t)
  with pytest.raises(ValueError, match="loss must be one of"):
    frepo.loss(lambda x: x, x_s, y_s, x_t, y_t, loss="ce")


def test_krr_objectives_accept_a_flat_real_batch(fmnist_subset):
  x, y = fmnist_subset
  cfg = objectives.default_config("frepo", width=4, depth=1, pool_size=1)
  obj = objectives.make_objective("frepo", cfg, num_classes=10, image_shape=x.shape[1:], ipc=1)
  state = obj.init(jax.random.PRNGKey(0))
  syn = synthetic.PIXELS.render(synthetic.init_pixels(jax.random.PRNGKey(1), "real", x, y, 10, 1,
                                                      learn_labels=True))
  grouped = RealBatch(jnp.asarray(group_by_class(x, y, 10)), jnp.broadcast_to(jnp.arange(10)[:, None], (10, 10)))
  order = np.argsort(np.asarray(y), kind="stable")
  flat = RealBatch(jnp.asarray(x[order]), jnp.asarray(y[order]))
  a = obj.loss(state, syn, grouped, jax.random.PRNGKey(2))[0]
  b = obj.loss(state, syn, flat, jax.random.PRNGKey(2))[0]
  assert float(a) == pytest.approx(float(b), rel=1e-5)


# ------------------------------------------------------------------------------------------ trajectory matching


def _regression_student(x, y):
  """Full-batch gradient descent on ½·mean‖x θ − y‖²: θ' = θ − lr · xᵀ(x θ − y)/n."""
  def step(theta, i, syn, lr, key):
    sx, sy = syn
    return theta - lr * sx.T @ (sx @ theta - sy) / sx.shape[0]
  return step


def test_trajectory_loss_equals_closed_form_and_finite_differences():
  with enable_x64():
    rng = np.random.RandomState(0)
    sx, sy = rng.randn(8, 4), rng.randn(8, 2)
    start, target = rng.randn(4, 2) * 0.1, rng.randn(4, 2)
    step = _regression_student(sx, sy)
    lr, n = 0.3, 5
    theta = start.copy()
    for _ in range(n):
      theta = theta - lr * sx.T @ (sx @ theta - sy) / len(sx)
    want = np.sum((theta - target) ** 2) / np.sum((start - target) ** 2)
    got = trajectory.loss(step, jnp.asarray(start), jnp.asarray(target), (jnp.asarray(sx), jnp.asarray(sy)), lr, n)
    np.testing.assert_allclose(float(got), want, rtol=1e-10)
    want_l1 = np.sum(np.abs(theta - target)) / np.sum(np.abs(start - target))
    np.testing.assert_allclose(float(trajectory.loss(step, start, target, (sx, sy), lr, n, distance="l1")), want_l1,
                               rtol=1e-10)
    # Gradients w.r.t. the synthetic inputs and the learning rate against central differences.
    _fd_check(lambda x: trajectory.loss(step, start, target, (x, jnp.asarray(sy)), lr, n), jnp.asarray(sx))
    f_lr = lambda a: trajectory.loss(step, start, target, (jnp.asarray(sx), jnp.asarray(sy)), a, n)
    fd = (float(f_lr(lr + 1e-6)) - float(f_lr(lr - 1e-6))) / 2e-6
    np.testing.assert_allclose(float(jax.grad(f_lr)(lr)), fd, rtol=1e-5)
    # Checkpointed unroll: same value and gradient; pytree parameters: same value as the flat vector.
    ck = lambda x: trajectory.loss(step, start, target, (x, jnp.asarray(sy)), lr, n, checkpoint=True)
    np.testing.assert_allclose(np.asarray(jax.grad(ck)(jnp.asarray(sx))),
                               np.asarray(jax.grad(lambda x: trajectory.loss(step, start, target,
                                                                             (x, jnp.asarray(sy)), lr, n))(
                                   jnp.asarray(sx))), rtol=1e-10)
    tree_step = lambda p, i, syn, a, k: {"w": step(p["w"], i, syn, a, k)}
    tree = trajectory.loss(tree_step, {"w": start}, {"w": target}, (sx, sy), lr, n)
    np.testing.assert_allclose(float(tree), want, rtol=1e-10)


def test_trajectory_tesla_equals_unroll_for_one_step():
  with enable_x64():
    rng = np.random.RandomState(1)
    sx, sy = jnp.asarray(rng.randn(6, 3)), jnp.asarray(rng.randn(6, 2))
    start, target = jnp.asarray(rng.randn(3, 2)), jnp.asarray(rng.randn(3, 2))
    step = _regression_student(sx, sy)

    def grads(mode):
      f = lambda x, a: trajectory.loss(step, start, target, (x, sy), a, 1, gradient=mode)
      return jax.grad(f, argnums=(0, 1))(sx, 0.2)

    (gx_u, ga_u), (gx_t, ga_t) = grads("unroll"), grads("tesla")
    np.testing.assert_allclose(np.asarray(gx_t), np.asarray(gx_u), rtol=1e-10)
    np.testing.assert_allclose(float(ga_t), float(ga_u), rtol=1e-10)
    with pytest.raises(ValueError, match="checkpoint"):
      trajectory.loss(step, start, target, (sx, sy), 0.2, 2, gradient="tesla", checkpoint=True)
    with pytest.raises(ValueError, match="start and target"):
      trajectory.loss(step, start, target[:2], (sx, sy), 0.2, 2)
    with pytest.raises(ValueError, match="n_steps"):
      trajectory.loss(step, start, target, (sx, sy), 0.2, 0)


def test_registered_mtt_calls_the_pure_loss(fmnist_subset):
  x, y = fmnist_subset
  shape = x.shape[1:]
  model = models.get_model("mlp", 10, shape, width=8)
  from jaxdistill import experts
  _, p, _ = experts.unflattener(model, shape)
  traj = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (1, 3, p)) * 0.05, np.float32)
  cfg = tm.TrajectoryMatchingConfig(arch="mlp", width=8, syn_steps=2, expert_epochs=2, max_start_epoch=1, dsa=False)
  obj = tm.make_trajectory_matching(cfg, num_classes=10, image_shape=shape, ipc=1, buffer=traj)
  syn = synthetic.PIXELS.render(synthetic.init_pixels(jax.random.PRNGKey(1), "real", x, y, 10, 1))
  key = jax.random.PRNGKey(2)
  value, aux = obj.loss(obj.init(jax.random.PRNGKey(0)), syn, None, key, obj.data)
  student = tm.make_student(model, shape, 10, None, None)
  k_run = jax.random.split(key, 3)[2]
  step = lambda th, i, s, a, k: student.step(th, i, s[0], s[1], a, k)
  want = trajectory.loss(step, traj[0, 0], traj[0, 2], (syn.images, syn.labels), jnp.float32(0.01), 2, key=k_run)
  assert int(aux["expert"]) == 0 and int(aux["start_epoch"]) == 0
  assert float(value) == float(want)


# ------------------------------------------------------------------------------------------- the public surface


def test_public_surface():
  expected = {"dm_loss", "gm_loss", "kip_loss", "frepo_loss", "trajectory_loss", "group_by_class", "evaluate",
              "distill", "LoopConfig", "load", "from_arrays", "get_spec", "DatasetSpec", "init_pixels", "PIXELS",
              "SyntheticBatch", "make_objective", "default_config", "method_defaults", "register", "METHODS",
              "Objective", "RealBatch", "data", "objectives", "synthetic", "models", "loop", "augment"}
  assert expected <= set(jd.__all__)
  assert jd.__all__ == sorted(jd.__all__) and len(set(jd.__all__)) == len(jd.__all__)
  for name in jd.__all__:
    assert hasattr(jd, name), name
    assert not name.startswith("_")
  assert jd.dm_loss is dm.loss and jd.gm_loss is gm.loss and jd.kip_loss is kip.loss
  assert jd.frepo_loss is frepo.loss and jd.trajectory_loss is tm.loss and trajectory.loss is tm.loss
  assert jd.distill is jd.loop.distill and callable(jd.evaluate.evaluate)
  assert set(jd.METHODS) == set(objectives.REGISTRY)
  for module in (jd.objectives, jd.data):
    assert all(hasattr(module, n) for n in module.__all__)
