"""BPTT (DD / LD): the scanned unroll against explicit SGD steps, checkpointing, meta-gradients against finite
differences, the labels-only parameterisation, the CLI, and DD improving its initialisation on real data."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from x64compat import enable_x64

from jaxdistill import io, loop, models, objectives, synthetic, training
from jaxdistill.objectives import RealBatch, bptt

SHAPE = (8, 8, 1)  # tiny images: second-order gradients through the unroll stay cheap
NC, IPC = 3, 2


def _config(**kw):
  kw.setdefault("width", 4)
  kw.setdefault("depth", 1)
  kw.setdefault("inner_steps", 4)
  kw.setdefault("scan_unroll", 1)
  kw.setdefault("lr_param", "identity")  # these tests pass alpha itself; the softplus tests set it
  return bptt.BPTTConfig(**kw)


def _data(dtype=jnp.float32, n=3, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  syn_x = jax.random.normal(k1, (NC * IPC,) + SHAPE, dtype)
  soft = jax.nn.one_hot(jnp.repeat(jnp.arange(NC), IPC), NC, dtype=dtype) \
      + 0.1 * jax.random.normal(k2, (NC * IPC, NC), dtype)
  real = RealBatch(jax.random.normal(k3, (NC, n) + SHAPE, dtype),
                   jnp.broadcast_to(jnp.arange(NC, dtype=jnp.int32)[:, None], (NC, n)))
  return syn_x, soft, real


def _reference_train(config, images, targets, lr, key):
  """Independent reference: explicit Python-loop SGD (momentum, weight decay) on the fixed class-balanced
  mini-batches, mini-batch ``t mod S`` at step ``t``."""
  model = models.get_model("convnet", NC, SHAPE, width=config.width, depth=config.depth)
  params = models.init_variables(model, key, SHAPE)["params"]
  k = config.batch_per_class or IPC
  batches = [np.concatenate([np.arange(c * IPC + s * k, c * IPC + (s + 1) * k) for c in range(NC)])
             for s in range(IPC // k)]
  velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
  for t in range(config.inner_steps):
    idx = batches[t % len(batches)]

    def ce(p):
      return training.cross_entropy(model.apply({"params": p}, images[idx], train=True), targets[idx])

    g = jax.grad(ce)(params)
    g = jax.tree_util.tree_map(lambda gi, p: gi + config.weight_decay * p, g, params)
    velocity = jax.tree_util.tree_map(lambda v, gi: config.inner_momentum * v + gi, velocity, g)
    params = jax.tree_util.tree_map(lambda p, v: p - lr * v, params, velocity)
  return params


@pytest.mark.parametrize("kw", [dict(), dict(inner_momentum=0.9, weight_decay=1e-2, batch_per_class=1,
                                             scan_unroll=3)])
def test_scanned_unroll_equals_python_loop_sgd(kw):
  config = _config(**kw)
  syn_x, soft, _ = _data()
  trainer = bptt.make_inner_trainer(config, num_classes=NC, image_shape=SHAPE)
  key = jax.random.PRNGKey(7)
  variables, losses = trainer.train(syn_x, soft, jnp.float32(0.05), key)
  ref = _reference_train(config, syn_x, soft, 0.05, key)
  assert losses.shape == (config.inner_steps,)
  for a, b in zip(jax.tree_util.tree_leaves(variables["params"]), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  init = models.init_variables(trainer.model, key, SHAPE)["params"]
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(variables["params"]),
                                                             jax.tree_util.tree_leaves(init)))
  assert moved > 1e-3  # the network did train


def test_checkpointed_unroll_matches_plain():
  syn_x, soft, real = _data()
  out = []
  for ckpt in (False, True):
    obj = bptt.make_bptt(_config(checkpoint=ckpt, inner_momentum=0.5), num_classes=NC, image_shape=SHAPE,
                         ipc=IPC)

    def f(x, y, lr):
      return obj.loss({}, synthetic.SyntheticBatch(x, y, lr), real, jax.random.PRNGKey(3))[0]

    out.append(jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(syn_x, soft, jnp.float32(0.05)))
  (l0, g0), (l1, g1) = out
  np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
  for a, b in zip(g0, g1):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_meta_gradient_matches_finite_differences(momentum):
  with enable_x64():
    syn_x, soft, real = _data(jnp.float64)
    obj = bptt.make_bptt(_config(inner_steps=3, inner_momentum=momentum, batch_per_class=1), num_classes=NC,
                         image_shape=SHAPE, ipc=IPC)
    key = jax.random.PRNGKey(4)

    def f(x, y, lr):
      return obj.loss({}, synthetic.SyntheticBatch(x, y, lr), real, key)[0]

    lr = jnp.float64(0.1)
    gx, gy, glr = jax.grad(f, argnums=(0, 1, 2))(syn_x, soft, lr)
    assert gx.dtype == jnp.float64 and gy.dtype == jnp.float64
    eps = 1e-6  # small: ReLU kinks make the loss piecewise smooth
    for which, (g, base) in enumerate(((gx, syn_x), (gy, soft))):
      v = jax.random.normal(jax.random.PRNGKey(10 + which), base.shape, jnp.float64)
      args_p = [syn_x, soft, lr]
      args_m = [syn_x, soft, lr]
      args_p[which] = base + eps * v
      args_m[which] = base - eps * v
      fd = (f(*args_p) - f(*args_m)) / (2 * eps)
      an = jnp.vdot(g, v)
      assert abs(float(an)) > 1e-6
      np.testing.assert_allclose(float(an), float(fd), rtol=1e-5, atol=1e-9)
    fd_lr = (f(syn_x, soft, lr + eps) - f(syn_x, soft, lr - eps)) / (2 * eps)
    assert abs(float(glr)) > 1e-6
    np.testing.assert_allclose(float(glr), float(fd_lr), rtol=1e-5, atol=1e-9)


def test_per_step_learning_rates_and_validation():
  syn_x, soft, real = _data()
  obj = bptt.make_bptt(_config(), num_classes=NC, image_shape=SHAPE, ipc=IPC)
  key = jax.random.PRNGKey(5)
  loss = lambda lr: float(obj.loss({}, synthetic.SyntheticBatch(syn_x, soft, lr), real, key)[0])
  # A constant vector of per-step rates equals the scalar; None falls back to config.inner_lr.
  assert loss(jnp.full((4,), 0.02, jnp.float32)) == pytest.approx(loss(jnp.float32(0.02)), rel=1e-6)
  assert loss(None) == pytest.approx(loss(jnp.float32(0.02)), rel=1e-6)
  assert loss(jnp.float32(0.2)) != pytest.approx(loss(jnp.float32(0.02)), rel=1e-3)
  with pytest.raises(ValueError, match="per inner step"):
    loss(jnp.ones((3,), jnp.float32))
  with pytest.raises(ValueError, match="batch_per_class"):
    bptt.make_bptt(_config(batch_per_class=3), num_classes=NC, image_shape=SHAPE, ipc=IPC)
  for bad, match in ((dict(inner_steps=0), "inner_steps"), (dict(inner_momentum=1.0), "inner_momentum"),
                     (dict(label_transform="sigmoid"), "label_transform"), (dict(lr_lr=-1.0), "lr_lr"),
                     (dict(label_start="zeros"), "label_start"), (dict(checkpoint=1), "checkpoint"),
                     (dict(label_projection="l2"), "label_projection"),
                     (dict(label_projection="simplex", label_transform="softmax"), "label_transform='raw'"),
                     (dict(label_projection="simplex", label_scale=2.0), "label_scale=1")):
    with pytest.raises(ValueError, match=match):
      _config(**bad).validate()


def test_registry_defaults_and_param_lrs():
  assert {"dd", "ld"} <= set(objectives.METHODS)
  dd, ld = objectives.default_config("dd"), objectives.default_config("ld")
  assert dd.inner_steps == 30 and dd.batch_per_class == 1 and dd.inner_lr == 0.02 and dd.learn_lr
  assert ld.learn_labels and not ld.learn_lr and ld.label_start == "uniform" and ld.inner_lr == 0.1
  assert ld.label_projection == "simplex" and dd.label_projection == "none"
  assert objectives.method_defaults("dd").init == "noise" and objectives.method_defaults("ld").init == "real"
  assert dd.param_lrs() is None
  assert objectives.default_config("dd", lr_lr=1e-5, lr_labels=0.1).param_lrs() == {"lr": 1e-5, "labels": 0.1}


def test_ld_learns_labels_not_images():
  rng = np.random.RandomState(0)
  images = rng.randn(30, *SHAPE).astype(np.float32)  # 10 "real" images per class
  labels = np.repeat(np.arange(NC), 10).astype(np.int32)
  key = jax.random.PRNGKey(0)
  syn = synthetic.init_labels(key, "real", images, labels, NC, IPC, label_start="uniform")
  assert set(syn.params) == {"labels"}
  np.testing.assert_allclose(np.asarray(syn.params["labels"]), 1.0 / NC, rtol=1e-6)
  base = np.asarray(syn.const["images"]).copy()
  for b, c in zip(base, np.repeat(np.arange(NC), IPC)):  # real images of the right class
    assert any(np.array_equal(b, x) for x in images[labels == c])
  assert synthetic.LABELS_ONLY.storage(syn) == NC * IPC * NC + base.size
  with pytest.raises(ValueError, match="init"):
    synthetic.init_labels(key, "noise", images, labels, NC, IPC)
  cfg = objectives.default_config("ld", width=4, depth=1, inner_steps=3, scan_unroll=1)
  obj = objectives.make_objective("ld", cfg, num_classes=NC, image_shape=SHAPE, ipc=IPC)
  lc = loop.LoopConfig(iterations=3, real_per_class=4, lr_img=0.05, optimizer="adam")
  out = loop.distill(obj, synthetic.LABELS_ONLY, syn, images, labels, NC, key, lc, progress=False)
  batch = synthetic.LABELS_ONLY.render(out.state.syn)
  np.testing.assert_array_equal(np.asarray(batch.images), base)
  assert batch.lr is None
  learned = np.asarray(batch.labels)
  assert float(np.max(np.abs(learned - 1.0 / NC))) > 1e-2
  assert np.all(np.isfinite(out.losses))
  # LD's projection: after every update the labels are probability vectors again.
  assert learned.min() >= 0.0 and learned.max() <= 1.0
  np.testing.assert_allclose(learned.sum(1), 1.0, rtol=1e-5)
  # Without it (labels_only_raw) the same run leaves the simplex: Adam moves every entry by about the lr.
  raw = loop.distill(obj, synthetic.LABELS_ONLY_RAW, syn, images, labels, NC, key, lc, progress=False)
  raw_labels = np.asarray(synthetic.LABELS_ONLY_RAW.render(raw.state.syn).labels)
  assert np.max(np.abs(raw_labels.sum(1) - 1.0)) > 1e-2 or raw_labels.min() < 0.0


def test_simplex_projection_of_labels():
  rows = jnp.array([[0.2, -0.1, 0.5], [-1.0, -2.0, -3.0], [0.5, 0.3, 0.2], [3.0, 0.5, 0.0]], jnp.float32)
  out = np.asarray(synthetic.project_simplex(rows))
  np.testing.assert_allclose(out[0], [0.2 / 0.7, 0.0, 0.5 / 0.7], rtol=1e-6)  # clip, then renormalise
  np.testing.assert_allclose(out[1], 1.0 / 3.0, rtol=1e-6)  # clipped to zeros: uniform, not NaN
  np.testing.assert_allclose(out[2], [0.5, 0.3, 0.2], rtol=1e-6)  # probability vectors are fixed points
  np.testing.assert_allclose(out[3], [1.0 / 1.5, 0.5 / 1.5, 0.0], rtol=1e-6)  # entries above 1 clip to 1
  np.testing.assert_allclose(np.asarray(synthetic.project_simplex(jnp.asarray(out))), out, rtol=1e-6)
  project = synthetic.label_projection("simplex")
  params = {"labels": rows, "lr": jnp.float32(-1.0)}
  projected = project(params)
  np.testing.assert_allclose(np.asarray(projected["labels"]), out, rtol=1e-6)
  assert float(projected["lr"]) == -1.0  # only the labels are projected
  assert project({"images": rows}) == {"images": rows}
  assert synthetic.label_projection("none") is None and synthetic.LABELS_ONLY_RAW.project is None
  with pytest.raises(ValueError, match="label projection"):
    synthetic.label_projection("l1")


TINY = ["--ipc", "1", "--real-per-class", "4", "--width", "8", "--eval-models", "1", "--eval-epochs", "2",
        "--eval-width", "8", "--test-size", "200", "--no-eval-dsa", "--quiet"]


@pytest.mark.parametrize("method", ["dd", "ld"])
def test_cli_dd_and_ld(tmp_path, method):
  from experiments import distill

  cfg = tmp_path / "cfg.json"
  # DD's learned soft labels are unconstrained by default; here they are projected like LD's.
  extra_cfg = {"label_projection": "simplex"} if method == "dd" else {}
  cfg.write_text(json.dumps({"inner_steps": 2, "scan_unroll": 2, **extra_cfg}))
  out = tmp_path / "run"
  extra = ["--learn-labels"] if method == "dd" else []
  payload = distill.main(["--method", method, "--iterations", "2", "--out", str(out), "--config", str(cfg),
                          *TINY, *extra])
  syn = io.load_synthetic(str(out / "synthetic.npz"))
  assert syn["images"].shape == (10, 28, 28, 1) and syn["labels"].shape == (10, 10)
  assert payload["loop_config"]["optimizer"] == "adam" and len(payload["loss_curve"]) == 2
  assert 0.0 <= payload["test_accuracy_mean"] <= 1.0
  np.testing.assert_allclose(syn["labels"].sum(1), 1.0, rtol=1e-5)  # the simplex projection
  assert syn["labels"].min() >= 0.0
  if method == "dd":
    assert payload["parameterisation"] == "pixels" and syn["lr"] is not None
    # the T = 2 per-step rates alpha_t (stored as rates, not raw values) were learned, each its own
    assert syn["lr"].shape == (2,) and np.all(syn["lr"] > 0) and syn["lr"][0] != syn["lr"][1]
    assert not np.allclose(syn["lr"], 0.02, atol=1e-9) and "alpha_t" in payload["lr_note"]
  else:
    assert payload["parameterisation"] == "labels_only" and syn["lr"] is None
    assert not np.allclose(syn["labels"], 0.1)


@pytest.mark.slow
def test_dd_beats_its_initialisation_on_fashion_mnist(fmnist_train, fmnist_test):
  """IPC 1 from noise, ConvNet-16, T = 10: DD's own protocol (fresh networks trained by the learned unroll)."""
  images, labels, spec = fmnist_train
  test_x, test_y = fmnist_test[0][:1000], fmnist_test[1][:1000]
  cfg = objectives.default_config("dd", width=16, inner_steps=10, scan_unroll=10, batch_per_class=0)
  obj = objectives.make_objective("dd", cfg, num_classes=10, image_shape=images.shape[1:], ipc=1)
  key = jax.random.PRNGKey(0)
  syn = synthetic.init_pixels(key, "noise", images, labels, 10, 1, learn_lr=cfg.inner_lr)
  eval_key = jax.random.PRNGKey(1)
  before = bptt.unrolled_accuracy(cfg, synthetic.PIXELS.render(syn), eval_key, test_x, test_y, 10, 4)
  lc = loop.LoopConfig(iterations=40, real_per_class=16, lr_img=0.01, optimizer="adam")
  out = loop.distill(obj, synthetic.PIXELS, syn, images, labels, 10, key, lc, progress=False)
  after = bptt.unrolled_accuracy(cfg, synthetic.PIXELS.render(out.state.syn), eval_key, test_x, test_y, 10, 4)
  assert np.mean(out.losses[-5:]) < np.mean(out.losses[:5])
  assert after.mean() > before.mean() + 0.15, (before, after)


def test_dd_per_step_softplus_rates_are_the_reference_unroll():
  """DD's code learns one raw value per inner step, ``α_t = softplus(raw_t)``, initialised to
  ``log(expm1(inner_lr))``: the default config stores ``[T]`` raw values whose softplus is ``inner_lr``, and the
  unroll with distinct raw rates equals the explicit SGD loop run with ``softplus(raw_t)`` at step ``t``."""
  default = objectives.default_config("dd")
  assert default.lr_param == "softplus" and default.lr_per_step
  raw0 = default.initial_lr()
  assert raw0.shape == (default.inner_steps,)
  np.testing.assert_allclose(np.log1p(np.exp(raw0)), default.inner_lr, rtol=1e-6)
  assert objectives.default_config("dd", lr_per_step=False).initial_lr().shape == ()
  assert objectives.default_config("ld").initial_lr() is None  # LD does not learn alpha

  config = _config(lr_param="softplus", inner_steps=3, batch_per_class=1)
  raw = jnp.asarray([-3.0, -1.0, 0.5], jnp.float32)
  alphas = np.log1p(np.exp(np.asarray(raw, np.float64)))
  np.testing.assert_allclose(bptt.step_sizes(raw, 0.02, 3, lr_param="softplus"), alphas, rtol=1e-6)
  syn_x, soft, _ = _data()
  key = jax.random.PRNGKey(7)
  variables, _ = bptt.make_inner_trainer(config, num_classes=NC, image_shape=SHAPE).train(syn_x, soft, raw, key)
  # The reference loop with a per-step rate: run it one step at a time (its lr is a scalar per call).
  model = models.get_model("convnet", NC, SHAPE, width=config.width, depth=config.depth)
  params = models.init_variables(model, key, SHAPE)["params"]
  for t in range(3):
    idx = np.concatenate([np.arange(c * IPC + t % IPC, c * IPC + t % IPC + 1) for c in range(NC)])
    g = jax.grad(lambda p: training.cross_entropy(model.apply({"params": p}, syn_x[idx], train=True),
                                                  soft[idx]))(params)
    params = jax.tree_util.tree_map(lambda p, gi, a=float(alphas[t]): p - a * gi, params, g)
  for a, b in zip(jax.tree_util.tree_leaves(variables["params"]), jax.tree_util.tree_leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="lr_param"):
    _config(lr_param="exp").validate()


def test_dd_per_step_raw_rate_gradient_matches_finite_differences():
  """The meta-gradient w.r.t. each raw per-step rate (through the softplus) against central differences."""
  with enable_x64():
    syn_x, soft, real = _data(jnp.float64)
    obj = bptt.make_bptt(_config(lr_param="softplus", inner_steps=3, batch_per_class=1), num_classes=NC,
                         image_shape=SHAPE, ipc=IPC)
    key = jax.random.PRNGKey(4)
    f = lambda raw: obj.loss({}, synthetic.SyntheticBatch(syn_x, soft, raw), real, key)[0]
    raw = jnp.asarray([-2.0, -1.5, -1.0], jnp.float64)
    g = jax.grad(f)(raw)
    assert g.shape == (3,) and len(set(np.round(np.asarray(g), 12))) == 3  # each step has its own gradient
    eps = 1e-6
    for t in range(3):
      e = jnp.zeros(3, jnp.float64).at[t].set(eps)
      fd = (f(raw + e) - f(raw - e)) / (2 * eps)
      assert abs(float(g[t])) > 1e-8
      np.testing.assert_allclose(float(g[t]), float(fd), rtol=1e-5, atol=1e-10)


def test_per_step_rates_are_not_a_training_lr():
  """A ``[T]`` vector of learned rates cannot be the single lr of the standard evaluation: a clear error."""
  images = np.zeros((2, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match="unrolled_accuracy"):
    from jaxdistill import evaluate
    evaluate.evaluate(images, np.array([0, 1]), "convnet", jax.random.PRNGKey(0), 1, 1, test_images=images,
                      test_labels=np.array([0, 1]), num_classes=2, lr=np.full((3,), 0.02, np.float32))


def test_ld_persistent_network_trains_online_and_resets():
  """``network="persistent"`` (LD's code): the unroll starts from the objective's network, which takes one Adam
  step per outer step on a mini-batch of the set and is re-initialised every ``reset_every`` steps; the labels'
  meta-gradient flows through the unroll from it."""
  syn_x, soft, real = _data()
  cfg = _config(network="persistent", inner_steps=1, batch_per_class=1, reset_every=3, online_lr=1e-2)
  obj = bptt.make_bptt(cfg, num_classes=NC, image_shape=SHAPE, ipc=IPC)
  state = obj.init(jax.random.PRNGKey(0))
  assert isinstance(state, bptt.PersistentNet) and int(state.age) == 0
  batch = synthetic.SyntheticBatch(syn_x, soft, None)
  key = jax.random.PRNGKey(1)
  # the loss starts from the persistent network: equal to the trainer's unroll from the same variables
  value, _ = obj.loss(state, batch, real, key)
  b = int(jax.random.randint(jax.random.fold_in(key, 17), (), 0, IPC))
  trainer = bptt.make_inner_trainer(cfg, num_classes=NC, image_shape=SHAPE)
  variables, _ = trainer.train_from(state.variables, syn_x, soft, None, b)
  logits, _ = models.apply(trainer.model, variables, real.images.reshape((-1,) + SHAPE), train=True)
  np.testing.assert_allclose(float(value), float(training.cross_entropy(logits, real.labels.reshape(-1))),
                             rtol=1e-5)
  g = jax.grad(lambda y: obj.loss(state, synthetic.SyntheticBatch(syn_x, y, None), real, key)[0])(soft)
  assert float(jnp.abs(g).sum()) > 0
  # online training: the network moves and ages; after reset_every steps it is re-initialised
  s1 = jax.jit(obj.update)(state, batch, jax.random.PRNGKey(2))
  assert int(s1.age) == 1
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(s1.variables["params"]),
                                                          jax.tree_util.tree_leaves(state.variables["params"]))]
  assert max(moved) > 1e-4
  s = s1
  for i in range(2):
    s = obj.update(s, batch, jax.random.PRNGKey(3 + i))
  assert int(s.age) == 0  # reset at the third step
  fresh = models.init_variables(trainer.model, jax.random.fold_in(jax.random.PRNGKey(4), 29), SHAPE)
  for a, b in zip(jax.tree_util.tree_leaves(s.variables["params"]), jax.tree_util.tree_leaves(fresh["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  with pytest.raises(ValueError, match="network"):
    _config(network="online").validate()
