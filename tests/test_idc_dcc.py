"""IDC (multi-formation, real-data matching network, L1 on conv gradients) and DCC (class-collaborative gradient
matching with the bi-level warm-up): NumPy references, gradients, configuration and short loop runs."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import loop, objectives, synthetic
from jaxdistill.augment import DSAParams
from jaxdistill.objectives import gradient_matching as gm
from jaxdistill.synthetic import multi_formation as mf
from x64compat import enable_x64


# ----------------------------------------------------------------------------------------------- references

def _bilinear_axis(n_in: int, n_out: int):
  """PyTorch ``align_corners=False`` bilinear weights along one axis: ``[n_out, n_in]``."""
  w = np.zeros((n_out, n_in))
  for o in range(n_out):
    src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(np.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    lam = src - i0
    w[o, i0] += 1 - lam
    w[o, i1] += lam
  return w


def _decode_reference(images, factor, pad_value=0.0):
  """IDC's ``decode_zoom`` in NumPy: pad bottom/right, cut into factor × factor tiles (row-major, per image),
  upsample each tile bilinearly back to the full size."""
  images = np.asarray(images, np.float64)
  n, h, w, c = images.shape
  th, tw = -(-h // factor), -(-w // factor)
  padded = np.full((n, th * factor, tw * factor, c), pad_value)
  padded[:, :h, :w] = images
  wh, ww = _bilinear_axis(th, h), _bilinear_axis(tw, w)
  out = []
  for s in range(n):
    for i in range(factor):
      for j in range(factor):
        tile = padded[s, i * th:(i + 1) * th, j * tw:(j + 1) * tw]
        out.append(np.einsum("ht,tuc,wu->hwc", wh, tile, ww))
  return np.stack(out)


def _softmax_ce_grads(w, b, x, y):
  """Gradients of the mean softmax cross-entropy of the linear model ``x.reshape(k, -1) @ w + b``."""
  x = x.reshape(x.shape[0], -1)
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  return x.T @ p / len(y), p.mean(0)


def _linear_ce(params, x, y):
  logits = x.reshape(x.shape[0], -1) @ params["w"] + params["b"]
  return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _ours(a, b):
  """DC's per-output-channel distance of two ``[d, K]`` weight gradients (columns are output channels)."""
  cos = np.sum(a * b, 0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0) + gm.EPS)
  return float(np.sum(1 - cos))


# ----------------------------------------------------------------------------------------------- multi-formation

@pytest.mark.parametrize("shape,factor,pad", [((2, 6, 6, 2), 2, 0.0), ((1, 7, 5, 1), 3, 0.3), ((1, 4, 4, 1), 1, 0.)])
def test_decode_matches_numpy_tiling_and_bilinear_upsampling(rng, shape, factor, pad):
  images = rng.normal(size=shape).astype(np.float32)
  out = np.asarray(mf.decode(jnp.asarray(images), factor, pad))
  assert out.shape == (shape[0] * factor ** 2,) + shape[1:]
  np.testing.assert_allclose(out, _decode_reference(images, factor, pad), atol=1e-5)


def _toy_real(rng, num_classes=3, per_class=8, shape=(8, 8, 1)):
  x = rng.normal(size=(num_classes * per_class,) + shape).astype(np.float32)
  y = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  return x, y


def test_storage_equals_pixels_at_the_same_ipc_and_render_is_class_major(rng):
  x, y = _toy_real(rng)
  cfg = synthetic.MultiFormationConfig(factor=2)
  for k in (1, 2):
    state = synthetic.init_multi_formation(jax.random.PRNGKey(k), cfg, "real", x, y, 3, k)
    pixels = synthetic.init_pixels(jax.random.PRNGKey(k), "real", x, y, 3, k)
    param = synthetic.multi_formation_parameterisation(cfg)
    assert param.storage(state) == synthetic.PIXELS.storage(pixels) == 3 * k * 64
    batch = param.render(state)
    assert batch.images.shape == (3 * 4 * k, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(batch.labels), np.repeat(np.arange(3), 4 * k))
    images, labels = objectives.per_class(batch.images, batch.labels, 3)  # the layout every objective reads
    assert images.shape == (3, 4 * k, 8, 8, 1)
    # Rendered images 4s .. 4s+3 are the tiles of stored image s.
    np.testing.assert_allclose(np.asarray(batch.images[4:8]),
                               np.asarray(mf.decode(state.params["images"][1:2], 2)), atol=1e-6)


def test_mix_init_puts_nearest_downsampled_reals_in_the_tiles(rng):
  x, y = _toy_real(rng)
  state = synthetic.init_multi_formation(jax.random.PRNGKey(0), synthetic.MultiFormationConfig(factor=2), "mix",
                                         x, y, 3, 2)
  stored = np.asarray(state.params["images"])
  # Every tile is the stride-2 (nearest, F.interpolate's default) downsampling of a distinct real image of the
  # stored image's class.
  for s in range(6):
    used = []
    for i in range(2):
      for j in range(2):
        tile = stored[s, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
        match = [r for r in range(len(x)) if np.array_equal(x[r, ::2, ::2], tile)]
        assert len(match) == 1 and y[match[0]] == s // 2
        used.append(match[0])
    assert len(set(used)) == 4
  with pytest.raises(ValueError, match="ipc · factor²"):
    synthetic.init_multi_formation(jax.random.PRNGKey(0), synthetic.MultiFormationConfig(factor=2), "mix",
                                   x, y, 3, 3)  # 12 real images per class needed, 8 available


def test_gradients_reach_the_stored_images_finite_differences(rng):
  cfg = synthetic.MultiFormationConfig(factor=2, pad_value=0.5)
  param = synthetic.multi_formation_parameterisation(cfg)
  state = synthetic.SynState({"images": jnp.asarray(rng.normal(size=(2, 5, 5, 1)))},
                             {"labels": jnp.array([0, 1], jnp.int32)})
  weights = jnp.asarray(rng.normal(size=(8, 5, 5, 1)))

  def f(images):
    return jnp.sum(jnp.sin(param.render(state._replace(params={"images": images})).images) * weights)

  with enable_x64():
    images = jnp.asarray(state.params["images"], jnp.float64)
    grad = np.asarray(jax.grad(f)(images))
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (0, 2, 3, 0), (1, 4, 4, 0), (1, 1, 0, 0)]:
      e = np.zeros(images.shape)
      e[idx] = eps
      fd = (float(f(images + e)) - float(f(images - e))) / (2 * eps)
      assert grad[idx] == pytest.approx(fd, rel=1e-6, abs=1e-9)
  assert np.all(grad != 0)  # every stored pixel feeds some rendered image


def test_multi_formation_config_and_init_errors(rng):
  x, y = _toy_real(rng)
  for bad in (dict(factor=0), dict(factor=1.5), dict(pad_value=float("nan")), dict(pad_value="0")):
    with pytest.raises(ValueError, match="factor|pad_value"):
      synthetic.MultiFormationConfig(**bad).validate()
  with pytest.raises(ValueError, match="init must be one of"):
    synthetic.init_multi_formation(jax.random.PRNGKey(0), synthetic.MultiFormationConfig(), "kcenter", x, y, 3, 1)
  with pytest.raises(ValueError, match="factor"):
    mf.decode(jnp.zeros((1, 4, 4, 1)), 0)


# ----------------------------------------------------------------------------------------------- DCC / IDC losses

def _linear_problem(rng, num_classes=3, n=5, m=2, d=6):
  params = {"w": rng.normal(size=(d, num_classes)), "b": rng.normal(size=(num_classes,))}
  real = rng.normal(size=(num_classes, n, 2, 3, 1))
  syn = rng.normal(size=(num_classes, m, 2, 3, 1))
  return params, real, syn


@pytest.mark.parametrize("metric", ["ours", "mse", "l1", "cos"])
def test_collaborative_distance_against_hand_computed_gradients(rng, metric):
  params, real, syn = _linear_problem(rng)
  with enable_x64():
    got = float(gm.collaborative_distance(_linear_ce, jax.tree_util.tree_map(jnp.asarray, params),
                                          jnp.asarray(real), jnp.asarray(syn), metric=metric))
    via_loss = float(gm.loss(_linear_ce, jax.tree_util.tree_map(jnp.asarray, params), jnp.asarray(real),
                             jnp.asarray(syn), metric=metric, class_collaborative=True))
  grads = lambda xs: [_softmax_ce_grads(params["w"], params["b"], xs[c], np.full(len(xs[c]), c)) for c in range(3)]
  gr, gs = grads(real), grads(syn)
  w_r, b_r = np.mean([g[0] for g in gr], 0), np.mean([g[1] for g in gr], 0)
  w_s, b_s = np.mean([g[0] for g in gs], 0), np.mean([g[1] for g in gs], 0)
  a = np.concatenate([b_r, w_r.ravel()])  # leaf order of {"b", "w"}
  b = np.concatenate([b_s, w_s.ravel()])
  want = {"ours": _ours(w_r, w_s), "mse": np.sum((a - b) ** 2), "l1": np.sum(np.abs(a - b)),
          "cos": 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + gm.EPS)}[metric]
  assert got == pytest.approx(want, rel=1e-9)
  assert via_loss == pytest.approx(want, rel=1e-9)


def test_collaborative_differs_from_per_class_and_equals_it_for_one_class(rng):
  params, real, syn = _linear_problem(rng)
  args = (_linear_ce, jax.tree_util.tree_map(jnp.asarray, params))
  for metric in ("ours", "mse"):
    per_class = float(gm.loss(*args, jnp.asarray(real), jnp.asarray(syn), metric=metric))
    collab = float(gm.loss(*args, jnp.asarray(real), jnp.asarray(syn), metric=metric, class_collaborative=True))
    assert abs(per_class - collab) > 1e-3 * abs(per_class)
    one_p = float(gm.loss(*args, jnp.asarray(real[:1]), jnp.asarray(syn[:1]), metric=metric))
    one_c = float(gm.loss(*args, jnp.asarray(real[:1]), jnp.asarray(syn[:1]), metric=metric,
                          class_collaborative=True))
    assert one_c == pytest.approx(one_p, rel=1e-5)
  # The contrastive signal: class 0's synthetic images get gradient from the other classes' real gradients
  # only under collaborative matching.
  def grad_wrt_syn(collab, real_other):
    r = real.copy()
    r[1:] = real_other
    fn = lambda s: gm.loss(*args, jnp.asarray(r), s, metric="mse", class_collaborative=collab)
    return np.asarray(jax.grad(fn)(jnp.asarray(syn))[0])
  np.testing.assert_allclose(grad_wrt_syn(False, real[1:]), grad_wrt_syn(False, real[1:] + 1.0), atol=1e-6)
  assert not np.allclose(grad_wrt_syn(True, real[1:]), grad_wrt_syn(True, real[1:] + 1.0), atol=1e-6)


def test_idc_distance_l1_and_mse_over_conv_kernels_only(rng):
  g_real = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=(4,))},
            "dense": {"kernel": rng.normal(size=(8, 3)), "bias": rng.normal(size=(3,))}}
  g_syn = jax.tree_util.tree_map(lambda a: a + rng.normal(size=a.shape), g_real)
  k_r, k_s = g_real["conv"]["kernel"], g_syn["conv"]["kernel"]
  assert float(gm.match_distance(g_real, g_syn, "l1", "conv")) == pytest.approx(np.abs(k_r - k_s).sum(), rel=1e-6)
  assert float(gm.match_distance(g_real, g_syn, "mse", "conv")) == pytest.approx(((k_r - k_s) ** 2).sum(), rel=1e-6)
  weights = np.abs(k_r - k_s).sum() + np.abs(g_real["dense"]["kernel"] - g_syn["dense"]["kernel"]).sum()
  assert float(gm.match_distance(g_real, g_syn, "l1", "weights")) == pytest.approx(weights, rel=1e-6)
  everything = sum(np.abs(a - b).sum() for a, b in zip(jax.tree_util.tree_leaves(g_real),
                                                          jax.tree_util.tree_leaves(g_syn)))
  assert float(gm.match_distance(g_real, g_syn, "l1")) == pytest.approx(everything, rel=1e-6)
  with pytest.raises(ValueError, match="selects no gradient tensor"):
    gm.match_distance(g_real["dense"], g_syn["dense"], "l1", "conv")
  with pytest.raises(ValueError, match="layers must be one of"):
    gm.match_distance(g_real, g_syn, "l1", "fc")


def test_sequential_siamese_augment_is_shared_by_real_and_synthetic(rng):
  x = jnp.asarray(rng.normal(size=(2, 3, 8, 8, 1)), jnp.float32)
  dsa = DSAParams(strategy=("color", "crop", "cutout"))
  real_a, syn_a = gm.sequential_siamese_augment(jax.random.PRNGKey(3), x, x[:, :2], dsa)
  np.testing.assert_allclose(np.asarray(real_a[:, :2]), np.asarray(syn_a), atol=1e-6)
  assert not np.allclose(np.asarray(real_a), np.asarray(x))
  # cutout (the last op) always zeroes a square: some pixels of every image are exactly 0.
  assert np.all(np.min(np.abs(np.asarray(real_a)).reshape(6, -1), axis=1) == 0)


# ----------------------------------------------------------------------------------------------- configuration

def test_config_validation_errors():
  base = objectives.GradientMatchingConfig(width=8)
  cases = [(dict(metric="l2"), "metric must be one of"), (dict(layers="fc"), "layers must be one of"),
           (dict(inner_data="both"), "inner_data must be one of"), (dict(real_train_size=0), "real_train_size"),
           (dict(net_momentum=1.0), "net_momentum"), (dict(net_weight_decay=-1.0), "net_weight_decay"),
           (dict(dsa_sequential=1), "dsa_sequential must be True or False"),
           (dict(class_collaborative="yes"), "class_collaborative must be True or False"),
           (dict(warmup_outer=5), "need class_collaborative=True"),
           (dict(class_collaborative=True, warmup_inner=-1), "warmup_inner")]
  for change, match in cases:
    with pytest.raises(ValueError, match=match):
      dataclasses.replace(base, **change).validate()
  with pytest.raises(ValueError, match="real_images"):
    gm.make_gradient_matching(dataclasses.replace(base, inner_data="real"), num_classes=2, image_shape=(8, 8, 1),
                              ipc=1)
  with pytest.raises(ValueError, match="only used with inner_data='real'"):
    gm.make_gradient_matching(base, num_classes=2, image_shape=(8, 8, 1), ipc=1,
                              real_images=np.zeros((4, 8, 8, 1)), real_labels=np.zeros(4, int))
  with pytest.raises(ValueError, match="real_labels"):
    gm.make_gradient_matching(dataclasses.replace(base, inner_data="real"), num_classes=2, image_shape=(8, 8, 1),
                              ipc=1, real_images=np.zeros((4, 8, 8, 1)), real_labels=np.array([0, 1, 2, 0]))


def test_registry_defaults_and_names():
  from experiments import names

  assert names.OBJECTIVES == tuple(objectives.METHODS)
  idc = objectives.default_config("idc")
  assert (idc.metric, idc.layers, idc.inner_data, idc.real_train_size, idc.batch_train) == ("l1", "conv", "real",
                                                                                             500, 64)
  assert (idc.lr_net, idc.net_momentum, idc.net_weight_decay) == (0.01, 0.9, 5e-4)
  assert idc.loops(10) == (100, 1) and idc.dsa and idc.dsa_sequential
  assert tuple(idc.dsa_strategy) == ("color", "crop", "cutout") and not idc.class_collaborative
  d = objectives.method_defaults("idc")
  assert (d.iterations, d.real_per_class, d.init) == (2000, 64, "mix")
  # 1e-4 (Fashion-MNIST, l1) · (28/32)² / 0.3530² (normalised images)
  assert d.lr_img == pytest.approx(1e-4 * (28 / 32) ** 2 / 0.3530 ** 2)
  assert gm.idc_image_lr(5e-3, 50, 32, (0.2, 0.2, 0.2)) == pytest.approx(5e-3 * 5 / 0.04)
  with pytest.raises(ValueError, match="std must be"):
    gm.idc_image_lr(1e-4, 10, 28, (0.3, 0.0))
  with pytest.raises(ValueError, match="ipc must be"):
    gm.idc_image_lr(1e-4, 0, 28, (0.3,))
  dcc = objectives.default_config("dcc")
  assert dcc.class_collaborative and dcc.collaborative_from() == (250, 10) and dcc.metric == "ours"
  assert dcc.loops(1) == (10, 5) and dcc.loops(10) == (10, 50) and dcc.loops(50) == (50, 10)
  assert objectives.default_config("dc").loops(1) == (1, 1)  # DC's table unchanged
  assert objectives.default_config("dc").collaborative_from() is None
  assert tuple(objectives.method_defaults("dcc")) == (0.1, 1000, 256, "real")


# ----------------------------------------------------------------------------------------------- objectives

def _small(**kw):
  return objectives.GradientMatchingConfig(width=8, depth=1, host_inner=False, **kw)


def test_dcc_warm_up_switches_from_per_class_to_collaborative(rng):
  x = jnp.asarray(rng.normal(size=(3, 4, 8, 8, 1)), jnp.float32)
  syn = synthetic.SyntheticBatch(jnp.asarray(rng.normal(size=(6, 8, 8, 1)), jnp.float32),
                                 jnp.repeat(jnp.arange(3, dtype=jnp.int32), 2))
  real = objectives.RealBatch(x, jnp.broadcast_to(jnp.arange(3, dtype=jnp.int32)[:, None], (3, 4)))
  kw = dict(num_classes=3, image_shape=(8, 8, 1), ipc=2)
  warm = gm.make_gradient_matching(_small(class_collaborative=True, warmup_outer=1, warmup_inner=2,
                                          outer_loop=3), **kw)
  plain = gm.make_gradient_matching(_small(outer_loop=3), **kw)
  collab = gm.make_gradient_matching(_small(class_collaborative=True, outer_loop=3), **kw)
  state = warm.init(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(1)
  per_class_value = float(plain.loss(state, syn, real, key)[0])
  collab_value = float(collab.loss(state, syn, real, key)[0])
  assert abs(per_class_value - collab_value) > 1e-4
  # count -> (network count // 3, update count % 3): (0, 0) (0, 1) warm-up; (0, 2) inner ≥ 2; (1, 0) outer ≥ 1.
  for count, on in [(0, False), (1, False), (2, True), (3, True)]:
    value, aux = jax.jit(warm.loss)(state._replace(count=jnp.int32(count)), syn, real, key)
    assert float(aux["collaborative"]) == float(on)
    assert float(value) == pytest.approx(collab_value if on else per_class_value, rel=1e-5)


def test_idc_network_is_trained_on_real_data_and_host_update_matches(rng):
  rx, ry = _toy_real(rng, per_class=10)
  cfg = _small(inner_data="real", real_train_size=12, batch_train=5, inner_loop=2, outer_loop=4,
               net_momentum=0.9, net_weight_decay=5e-4, metric="l1", layers="conv", dsa=True,
               dsa_strategy=("color", "crop"))
  obj = gm.make_gradient_matching(cfg, num_classes=3, image_shape=(8, 8, 1), ipc=1, real_images=rx,
                                  real_labels=ry)
  host = gm.make_gradient_matching(dataclasses.replace(cfg, host_inner=True), num_classes=3, image_shape=(8, 8, 1),
                                   ipc=1, real_images=rx, real_labels=ry)
  assert obj.data["images"].shape == (30, 8, 8, 1) and host.host_update is not None
  state = obj.init(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(5)
  syn_a = synthetic.SyntheticBatch(jnp.zeros((3, 8, 8, 1)), jnp.arange(3, dtype=jnp.int32))
  syn_b = synthetic.SyntheticBatch(jnp.ones((3, 8, 8, 1)), jnp.arange(3, dtype=jnp.int32))
  a = jax.jit(obj.update)(state, syn_a, key, obj.data)
  b = jax.jit(obj.update)(state, syn_b, key, obj.data)
  h = host.host_update(state, syn_a, key, host.data)
  leaves = lambda s: jax.tree_util.tree_leaves(s.net.variables["params"])
  for la, lb, lh, l0 in zip(leaves(a), leaves(b), leaves(h), leaves(state)):
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))  # the synthetic set plays no part
    np.testing.assert_allclose(np.asarray(la), np.asarray(lh), rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(np.asarray(la), np.asarray(l0)) for la, l0 in zip(leaves(a), leaves(state)))
  value, _ = obj.loss(a, syn_b, objectives.RealBatch(jnp.asarray(rx).reshape(3, 10, 8, 8, 1),
                                                     jnp.repeat(jnp.arange(3), 10).reshape(3, 10)), key, obj.data)
  assert np.isfinite(float(value)) and float(value) > 0


# ----------------------------------------------------------------------------------------------- loop runs

def _three_classes(fmnist_train, per_class=40):
  images, labels, _ = fmnist_train
  keep = np.concatenate([np.flatnonzero(np.asarray(labels) == c)[:per_class] for c in range(3)])
  return np.asarray(images)[keep], np.asarray(labels)[keep]


def test_idc_loop_with_multi_formation_on_fashion_mnist(fmnist_train):
  x, y = _three_classes(fmnist_train)
  cfg = objectives.default_config("idc", width=8, depth=2, outer_loop=2, real_train_size=24, batch_train=12)
  obj = objectives.make_objective("idc", cfg, num_classes=3, image_shape=x.shape[1:], ipc=1, real_images=x,
                                  real_labels=y)
  mcfg = synthetic.MultiFormationConfig(factor=2)
  syn = synthetic.init_multi_formation(jax.random.PRNGKey(0), mcfg, objectives.method_defaults("idc").init, x, y,
                                       3, 1)
  param = synthetic.multi_formation_parameterisation(mcfg)
  lc = loop.LoopConfig(iterations=2, real_per_class=4, lr_img=objectives.method_defaults("idc").lr_img)
  out = loop.distill(obj, param, syn, x, y, 3, jax.random.PRNGKey(1), lc, progress=False)
  assert out.losses.shape == (2,) and np.all(np.isfinite(out.losses)) and np.all(out.losses > 0)
  assert param.render(out.state.syn).images.shape == (12, 28, 28, 1)
  assert not np.allclose(np.asarray(out.state.syn.params["images"]), np.asarray(syn.params["images"]))


def test_dcc_loop_on_fashion_mnist(fmnist_train):
  x, y = _three_classes(fmnist_train)
  cfg = objectives.default_config("dcc", width=8, depth=2, warmup_outer=1, warmup_inner=1, outer_loop=2,
                                  inner_loop=1)
  obj = objectives.make_objective("dcc", cfg, num_classes=3, image_shape=x.shape[1:], ipc=1)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, 3, 1)
  lc = loop.LoopConfig(iterations=2, real_per_class=4, lr_img=0.1)
  out = loop.distill(obj, synthetic.PIXELS, syn, x, y, 3, jax.random.PRNGKey(1), lc, progress=False)
  assert out.losses.shape == (2,) and np.all(np.isfinite(out.losses))
  assert not np.allclose(np.asarray(out.state.syn.params["images"]), np.asarray(syn.params["images"]))
