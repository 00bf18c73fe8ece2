"""GTN (a weight-normalised generator of training data, learned curriculum, trained by meta-gradients through a
fresh learner's inner SGD): weight normalisation, render layout and curricula, the meta-loss and meta-gradient
against an explicit unroll of a linear learner (closed-form inner gradients in a Python loop), the objective
against a hand-written unroll, finite differences, and a short distillation run on real Fashion-MNIST."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import loop, models, training
from jaxdistill.objectives import RealBatch, bptt
from jaxdistill.objectives import gtn as ogtn
from jaxdistill.synthetic import gtn
from x64compat import enable_x64

NC = 3
SHAPE = (4, 4, 1)


def _config(**kw):
  base = dict(z_dim=3, hidden=6, widths=(4, 2), inner_steps=3, batch_per_class=2, arch="mlp", width=8, depth=1,
              inner_momentum=0.5)
  base.update(kw)
  return gtn.GTNConfig(**base)


def _real(n=4, shape=SHAPE, dtype=jnp.float32, seed=7):
  x = jax.random.normal(jax.random.PRNGKey(seed), (NC, n) + shape, dtype)
  y = jnp.repeat(jnp.arange(NC, dtype=jnp.int32)[:, None], n, axis=1)
  return RealBatch(x, y)


def _to(tree, dtype):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                tree)


def test_config_validation():
  _config().validate()
  for bad, word in ((dict(curriculum="some"), "curriculum"), (dict(widths=()), "widths"),
                    (dict(widths=(4, 0)), "widths"), (dict(inner_steps=0), "inner_steps"),
                    (dict(inner_momentum=1.0), "inner_momentum"), (dict(arch="nope"), "arch"),
                    (dict(weight_norm=1), "weight_norm"), (dict(inner_lr=0.0), "inner_lr")):
    with pytest.raises(ValueError, match=word):
      _config(**bad).validate()
  with pytest.raises(ValueError, match="divisible by 4"):
    gtn.make_generator(_config(widths=(4, 4, 4)), NC, (6, 6, 1))
  with pytest.raises(ValueError, match="ipc must be"):
    ogtn.make_gtn(_config(), num_classes=NC, image_shape=SHAPE, ipc=5)
  with pytest.raises(ValueError, match="needs the ipc"):
    gtn.init_gtn(jax.random.PRNGKey(0), _config(enforce_budget=True), NC, SHAPE)
  with pytest.raises(ValueError, match="over the storage budget"):
    gtn.init_gtn(jax.random.PRNGKey(0), _config(enforce_budget=True), NC, SHAPE, ipc=1)


def test_weight_normalised_layers():
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 6))
  layer = gtn.WNDense(4)
  p = layer.init(jax.random.PRNGKey(1), x)["params"]
  v, g, b = p["v"], p["g"], p["b"]
  np.testing.assert_allclose(g, np.linalg.norm(np.asarray(v), axis=0), rtol=1e-6)  # initial w = v
  np.testing.assert_allclose(layer.apply({"params": p}, x), x @ v + b, rtol=1e-5, atol=1e-6)
  # Invariant to the scale of v; linear in g.
  np.testing.assert_allclose(layer.apply({"params": {**p, "v": 3.0 * v}}, x), x @ v + b, rtol=1e-5, atol=1e-6)
  g2 = g * jnp.arange(1.0, 5.0)
  want = x @ (np.asarray(v) / np.linalg.norm(np.asarray(v), axis=0) * np.asarray(g2))
  np.testing.assert_allclose(layer.apply({"params": {**p, "g": g2}}, x), want, rtol=1e-5, atol=1e-5)
  img = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 5, 3))
  conv = gtn.WNConv(4)
  q = conv.init(jax.random.PRNGKey(3), img)["params"]
  plain = jax.lax.conv_general_dilated(img, q["v"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv.apply({"params": q}, img), plain, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(conv.apply({"params": {**q, "v": 2.0 * q["v"]}}, img), plain,
                             rtol=1e-5, atol=1e-5)
  # Every generator layer is weight-normalised (or plain with weight_norm=False).
  for wn in (True, False):
    params = gtn.init_gtn(jax.random.PRNGKey(0), _config(weight_norm=wn), NC, SHAPE).params["generator"]
    for name in ("fc_0", "fc_1", "conv_1", "to_image"):
      assert set(params["params"][name]) == ({"v", "g", "b"} if wn else {"kernel", "bias"}), (name, wn)


def test_render_layout_and_curricula():
  cfg = _config()
  per = gtn.images_per_class(cfg)
  assert per == 6
  state = gtn.init_gtn(jax.random.PRNGKey(0), cfg, NC, SHAPE, learn_lr=0.3)
  assert state.params["z"].shape == (NC, per, cfg.z_dim)
  param = gtn.gtn_parameterisation(cfg, NC, SHAPE)
  assert not param.needs_key
  batch = param.render(state)
  assert batch.images.shape == (NC * per,) + SHAPE and float(batch.lr) == pytest.approx(0.3)
  np.testing.assert_array_equal(batch.labels, np.repeat(np.arange(NC), per))
  # Image (c, t·k + i) is G(z[c, t·k + i], c); a key changes nothing with the full curriculum.
  gen = gtn.make_generator(cfg, NC, SHAPE)
  for c in range(NC):
    want = gen.apply(state.params["generator"], state.params["z"][c], jnp.full((per,), c, jnp.int32))
    np.testing.assert_allclose(batch.images[c * per:(c + 1) * per], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(param.render(state, jax.random.PRNGKey(5)).images, batch.images)
  assert param.storage(state) == sum(a.size for a in jax.tree_util.tree_leaves(state.params))
  # No curriculum: fresh noise per key, the fixed evaluation key without one.
  cfg0 = _config(curriculum="none")
  s0 = gtn.init_gtn(jax.random.PRNGKey(0), cfg0, NC, SHAPE)
  p0 = gtn.gtn_parameterisation(cfg0, NC, SHAPE)
  assert p0.needs_key and "z" not in s0.params
  a, b = p0.render(s0, jax.random.PRNGKey(1)).images, p0.render(s0, jax.random.PRNGKey(2)).images
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(p0.render(s0).images, p0.render(s0, s0.const["key"]).images)
  np.testing.assert_array_equal(p0.render(s0).images, p0.render(s0).images)


def _linear_loss(params, extra, x, y):
  logits = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
  return training.cross_entropy(logits, y), extra


def _explicit_unroll(images, lrs, params, real, cfg, momentum):
  """The inner SGD of a linear softmax learner written out: closed-form gradients ``Xᵀ (softmax − Y) / B``, step
  ``t`` on images ``t·k … t·k + k − 1`` of every class, PyTorch momentum; returns the real loss at ``θ_T``."""
  k, per = cfg.batch_per_class, gtn.images_per_class(cfg)
  x = images.reshape((NC, per) + images.shape[1:])
  w, b = params["w"], params["b"]
  vw, vb = jnp.zeros_like(w), jnp.zeros_like(b)
  for t in range(cfg.inner_steps):
    xt = x[:, t * k:(t + 1) * k].reshape(NC * k, -1)
    yt = jnp.repeat(jnp.eye(NC, dtype=images.dtype), k, axis=0)
    p = jax.nn.softmax(xt @ w + b)
    d = (p - yt) / xt.shape[0]
    vw, vb = momentum * vw + xt.T @ d, momentum * vb + d.sum(0)
    w, b = w - lrs[t] * vw, b - lrs[t] * vb
  rx = real.images.reshape(NC * real.images.shape[1], -1)
  logp = jax.nn.log_softmax(rx @ w + b)
  return -jnp.mean(logp[jnp.arange(rx.shape[0]), real.labels.reshape(-1)])


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_meta_gradient_equals_explicit_unroll_of_a_linear_learner(momentum):
  with enable_x64():
    cfg = _config(inner_momentum=momentum)
    state = gtn.init_gtn(jax.random.PRNGKey(0), cfg, NC, SHAPE)
    gen = gtn.make_generator(cfg, NC, SHAPE)
    real = _real(dtype=jnp.float64)
    d = int(np.prod(SHAPE))
    params0 = {"w": 0.1 * jax.random.normal(jax.random.PRNGKey(3), (d, NC), jnp.float64),
               "b": jnp.zeros((NC,), jnp.float64)}
    gparams, z = _to(state.params["generator"], jnp.float64), _to(state.params["z"], jnp.float64)
    lrs = jnp.asarray([0.3, 0.5, 0.2], jnp.float64)

    def images_of(g, zz):
      zz, labels = gtn.latents_and_labels(cfg, NC, z=zz)
      return gen.apply(g, zz, labels), labels

    def ours(g, zz, lr):
      images, labels = images_of(g, zz)
      bx, by = bptt.minibatches(images, jax.nn.one_hot(labels, NC, dtype=images.dtype), NC, cfg.batch_per_class)
      return ogtn.meta_loss(_linear_loss, params0, bx, by, lr, real.images.reshape((-1,) + SHAPE),
                            real.labels.reshape(-1), momentum=momentum)[0]

    def reference(g, zz, lr):
      return _explicit_unroll(images_of(g, zz)[0], lr, params0, real, cfg, momentum)

    v_ours, g_ours = jax.value_and_grad(ours, argnums=(0, 1, 2))(gparams, z, lrs)
    v_ref, g_ref = jax.value_and_grad(reference, argnums=(0, 1, 2))(gparams, z, lrs)
    np.testing.assert_allclose(float(v_ours), float(v_ref), rtol=1e-10)
    for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
      assert np.all(np.isfinite(np.asarray(a)))
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-12)
    assert all(np.any(np.asarray(a) != 0) for a in jax.tree_util.tree_leaves(g_ours))
    # Finite differences on a few generator entries (and z, lr) of the meta-loss.
    eps = 1e-6
    leaves, treedef = jax.tree_util.tree_flatten(gparams)
    gleaves = jax.tree_util.tree_leaves(g_ours[0])
    rng = np.random.default_rng(1)
    for li in range(len(leaves)):
      idx = tuple(int(rng.integers(s)) for s in leaves[li].shape)
      bump = lambda s: jax.tree_util.tree_unflatten(
          treedef, [a.at[idx].add(s * eps) if i == li else a for i, a in enumerate(leaves)])
      fd = (ours(bump(1.0), z, lrs) - ours(bump(-1.0), z, lrs)) / (2 * eps)
      np.testing.assert_allclose(float(gleaves[li][idx]), float(fd), rtol=1e-5, atol=1e-9)
    fd_lr = (ours(gparams, z, lrs.at[1].add(eps)) - ours(gparams, z, lrs.at[1].add(-eps))) / (2 * eps)
    np.testing.assert_allclose(float(g_ours[2][1]), float(fd_lr), rtol=1e-5, atol=1e-9)


def test_objective_is_a_fresh_learner_trained_step_by_step():
  with enable_x64():
    cfg = _config(lr_per_step=True)
    lcfg = ogtn.learner_config(cfg)
    state = gtn.init_gtn(jax.random.PRNGKey(1), cfg, NC, SHAPE, learn_lr=lcfg.initial_lr())
    state = state._replace(params=_to(state.params, jnp.float64))
    state = state._replace(params={**state.params, "lr": state.params["lr"] + jnp.asarray([0.0, 0.5, -0.5])})
    param = gtn.gtn_parameterisation(cfg, NC, SHAPE)
    obj = ogtn.make_gtn(cfg, num_classes=NC, image_shape=SHAPE, ipc=gtn.images_per_class(cfg))
    real = _real(dtype=jnp.float64)
    key = jax.random.PRNGKey(9)
    syn = param.render(state)
    value, aux = obj.loss(obj.init(key), syn, real, key)
    assert aux["inner_loss"].shape == (1,)
    # By hand: the learner from the first of split(key, 1), T steps of SGD with momentum on batch t = images
    # t·k … t·k + k − 1 of every class, lr softplus(raw_t), then cross-entropy on the real batch.
    model = bptt.make_inner_trainer(lcfg, num_classes=NC, image_shape=SHAPE).model
    params = _to(models.init_variables(model, jax.random.split(key, 1)[0], SHAPE)["params"], jnp.float64)
    k, per = cfg.batch_per_class, gtn.images_per_class(cfg)
    x = syn.images.reshape((NC, per) + SHAPE)
    ce = lambda p, xx, yy: training.cross_entropy(models.apply(model, {"params": p}, xx, train=True)[0], yy)
    vel = jax.tree_util.tree_map(jnp.zeros_like, params)
    lrs = np.log1p(np.exp(np.asarray(state.params["lr"])))
    for t in range(cfg.inner_steps):
      xt = x[:, t * k:(t + 1) * k].reshape((NC * k,) + SHAPE)
      yt = jnp.repeat(jnp.arange(NC), k)
      g = jax.grad(ce)(params, xt, yt)
      vel = jax.tree_util.tree_map(lambda v, gi: cfg.inner_momentum * v + gi, vel, g)
      params = jax.tree_util.tree_map(lambda p, v, t=t: p - lrs[t] * v, params, vel)
    want = ce(params, real.images.reshape((-1,) + SHAPE), real.labels.reshape(-1))
    np.testing.assert_allclose(float(value), float(want), rtol=1e-9)

    # The meta-gradient reaches the generator, the learned inputs and the lr; finite differences on the lr.
    def f(p):
      return obj.loss({}, param.render(state._replace(params=p)), real, key)[0]

    grads = jax.grad(f)(state.params)
    for name in ("generator", "z", "lr"):
      leaves = jax.tree_util.tree_leaves(grads[name])
      assert all(np.all(np.isfinite(np.asarray(a))) and np.any(np.asarray(a) != 0) for a in leaves), name
    eps = 1e-6
    bump = lambda s: {**state.params, "lr": state.params["lr"].at[2].add(s * eps)}
    np.testing.assert_allclose(float(grads["lr"][2]), float((f(bump(1.0)) - f(bump(-1.0))) / (2 * eps)),
                               rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("curriculum,arch", [("full", "convnet"), ("none", "mlp")])
def test_distill_loop_on_fashion_mnist(fmnist_train, curriculum, arch):
  images, labels, spec = fmnist_train
  shape = tuple(images.shape[1:])
  x, y = images[:400], labels[:400]
  cfg = gtn.GTNConfig(z_dim=8, hidden=16, widths=(8, 8), curriculum=curriculum, inner_steps=2, batch_per_class=1,
                      arch=arch, width=8, depth=1)
  lcfg = ogtn.learner_config(cfg)
  syn = gtn.init_gtn(jax.random.PRNGKey(0), cfg, spec.num_classes, shape, learn_lr=lcfg.initial_lr())
  param = gtn.gtn_parameterisation(cfg, spec.num_classes, shape)
  obj = ogtn.make_gtn(cfg, num_classes=spec.num_classes, image_shape=shape, ipc=gtn.images_per_class(cfg))
  config = loop.LoopConfig(iterations=2, real_per_class=2, lr_img=0.01, optimizer="adam")
  result = loop.distill(obj, param, syn, x, y, spec.num_classes, jax.random.PRNGKey(1), config, progress=False)
  assert result.losses.shape == (2,) and np.all(np.isfinite(result.losses))
  before = jax.tree_util.tree_leaves(syn.params["generator"])
  after = jax.tree_util.tree_leaves(result.state.syn.params["generator"])
  assert any(not np.allclose(a, b) for a, b in zip(after, before))
  batch = param.render(result.state.syn)
  assert batch.images.shape == (spec.num_classes * 2,) + shape and np.all(np.isfinite(batch.images))
