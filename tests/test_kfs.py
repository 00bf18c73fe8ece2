"""KFS (latent codes × tiny shared decoders): rendering layout and labels, the storage count and budget, the code
initialisation, gradients to codes and decoders (finite differences), and a short distillation run on real
Fashion-MNIST."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import loop, objectives, synthetic
from jaxdistill.objectives import with_regulariser
from jaxdistill.synthetic import haba, kfs
from x64compat import enable_x64

NC, BC, D = 2, 2, 3
SHAPE = (8, 8, 1)
N = NC * BC  # codes


def _config(**kw):
  base = dict(codes_per_class=BC, decoders=D, width=4, init="noise", enforce_budget=False, extractor_width=4)
  base.update(kw)
  return kfs.KFSConfig(**base)


def _real(per_class=3, shape=SHAPE, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(NC * per_class,) + shape).astype(np.float32)
  return x, np.repeat(np.arange(NC), per_class).astype(np.int32)


def _marked_state(config):
  """Decoder ``j`` adds ``10 (j + 1)`` to the upsampled code (output kernel zero, output bias ``10 (j + 1)``), so
  every image names the decoder that made it."""
  x, _ = _real()
  state = kfs.init_kfs(jax.random.PRNGKey(0), config, x, None, NC, 1)
  params = state.params["decoders"]["params"]
  out = dict(params["to_image"])
  out["bias"] = jnp.broadcast_to(10.0 * (jnp.arange(config.decoders, dtype=jnp.float32) + 1)[:, None],
                                 out["bias"].shape)
  return state._replace(params={**state.params, "decoders": {"params": {**params, "to_image": out}}})


def _decode(images, codes, views):
  """Decoder index of every image ``[N·V, ...]`` of the marked state: ``[N, V]``."""
  up = np.asarray(kfs.tile_channels(kfs.upsample(codes, SHAPE), SHAPE[-1]))
  diff = np.asarray(images).reshape((N, views) + SHAPE) - up[:, None]
  j = np.rint(diff.mean(axis=(2, 3, 4)) / 10.0).astype(int) - 1
  np.testing.assert_allclose(diff, 10.0 * (j + 1)[:, :, None, None, None] * np.ones_like(diff), atol=1e-4)
  return j


def test_config_validation():
  assert _config().validate() is not None
  for bad, word in ((dict(decoders=1), "decoders"), (dict(init="zeros"), "init"), (dict(downsample=0), "downsample"),
                    (dict(pairs="some"), "pairs"), (dict(contrastive=-1.0), "contrastive"),
                    (dict(latent_channels=0), "latent_channels"), (dict(codes_per_class=1.5), "codes_per_class")):
    with pytest.raises(ValueError, match=word):
      _config(**bad).validate()
  _config(decoders=1, pairs="all").validate()  # one decoder is fine without pairs or the contrastive term


def test_evaluation_render_is_every_code_decoder_pair():
  for pairs in ("sampled", "all"):
    cfg = _config(pairs=pairs)
    state = _marked_state(cfg)
    param = kfs.kfs_parameterisation(cfg, NC, SHAPE)
    assert param.needs_key == (pairs == "sampled")
    batch = param.render(state)
    assert batch.images.shape == (N * D,) + SHAPE and batch.lr is None
    np.testing.assert_array_equal(batch.labels, np.repeat(np.arange(NC), BC * D))
    np.testing.assert_array_equal(_decode(batch.images, state.params["codes"], D), np.tile(np.arange(D), (N, 1)))
  # Unmarked decoders: image (n·D + j) is decoder j applied to the upsampled code n.
  cfg = _config(latent_channels=2)
  state = kfs.init_kfs(jax.random.PRNGKey(3), cfg, _real()[0], None, NC, 1)
  params = state.params["decoders"]["params"]
  out = dict(params["to_image"])
  out["kernel"] = 0.3 * jax.random.normal(jax.random.PRNGKey(4), out["kernel"].shape)
  state = state._replace(params={**state.params, "decoders": {"params": {**params, "to_image": out}}})
  images = kfs.kfs_parameterisation(cfg, NC, SHAPE).render(state).images
  assert state.params["codes"].shape == (N, 4, 4, 2)
  up = jax.image.resize(state.params["codes"], (N,) + SHAPE[:2] + (2,), "bilinear")
  dec = kfs.Decoder(SHAPE[-1], cfg.width)
  for j in range(D):
    p = jax.tree_util.tree_map(lambda a, j=j: a[j], state.params["decoders"])
    want = dec.apply(p, up)
    assert float(jnp.max(jnp.abs(want - up[..., :1]))) > 1e-3  # the decoder does something
    np.testing.assert_allclose(images[j::D], want, rtol=1e-5, atol=1e-5)


def test_sampled_render_two_distinct_decoders_per_code():
  cfg = _config()
  state = _marked_state(cfg)
  param = kfs.kfs_parameterisation(cfg, NC, SHAPE)
  seen = set()
  for k in range(6):
    key = jax.random.PRNGKey(k)
    batch = param.render(state, key)
    assert batch.images.shape == (N * 2,) + SHAPE
    np.testing.assert_array_equal(batch.labels, np.repeat(np.arange(NC), BC * 2))
    j = _decode(batch.images, state.params["codes"], 2)
    np.testing.assert_array_equal(j, np.asarray(haba.draw_pairs(key, N, D)))
    assert np.all(j[:, 0] != j[:, 1])
    seen.update(map(tuple, j.tolist()))
  assert len(seen) > 1
  assert kfs.train_images_per_class(cfg) == 2 * BC
  assert kfs.train_images_per_class(_config(pairs="all")) == BC * D


def test_storage_count_and_budget():
  shape = (28, 28, 1)
  cfg = _config(codes_per_class=8, decoders=4, width=8, latent_channels=2, downsample=2, init="noise",
                enforce_budget=True)
  x, y = _real(shape=shape)
  state = kfs.init_kfs(jax.random.PRNGKey(0), cfg, x, y, NC, 6)
  # By hand: 2 classes × 8 codes × 14·14·2, plus 4 decoders of (3·3·2·8 + 8) + (3·3·8·1 + 1) floats.
  by_hand = NC * 8 * 14 * 14 * 2 + 4 * ((9 * 2 * 8 + 8) + (9 * 8 + 1))
  param = kfs.kfs_parameterisation(cfg, NC, shape)
  assert param.storage(state) == by_hand == kfs.storage_floats(cfg, NC, shape)
  assert by_hand <= NC * 6 * 28 * 28 * 1
  assert kfs.code_shape(cfg, shape) == (14, 14, 2) and kfs.code_shape(_config(downsample=3), shape) == (10, 10, 1)
  # IPC 4 (6272 floats) is below the 7172 stored floats: refused, saying by how much.
  assert by_hand == 7172 and by_hand > NC * 4 * 28 * 28
  with pytest.raises(ValueError, match=f"{by_hand - NC * 4 * 28 * 28:,} over the storage budget"):
    kfs.init_kfs(jax.random.PRNGKey(0), cfg, x, y, NC, 4)
  # A learned lr rides along, outside the budget, and is counted in storage.
  with_lr = kfs.init_kfs(jax.random.PRNGKey(0), cfg, x, y, NC, 6, learn_lr=0.01)
  assert param.storage(with_lr) == by_hand + 1
  assert float(param.render(with_lr).lr) == pytest.approx(0.01)


def test_real_init_codes_are_downsampled_real_images_of_their_class():
  x, y = _real(per_class=4)
  # downsample 1: codes are the chosen real images themselves (channel tiled to c_z = 2), and fresh decoders
  # (output convolution zero) render them exactly.
  cfg = _config(init="real", downsample=1, latent_channels=2)
  state = kfs.init_kfs(jax.random.PRNGKey(1), cfg, x, y, NC, 1)
  codes = np.asarray(state.params["codes"])
  assert codes.shape == (N,) + SHAPE[:2] + (2,)
  for n in range(N):
    c = n // BC
    match = [i for i in range(len(x)) if np.allclose(codes[n, ..., 0], x[i, ..., 0])]
    assert match and all(y[i] == c for i in match), n
    np.testing.assert_array_equal(codes[n, ..., 1], codes[n, ..., 0])
  images = np.asarray(kfs.kfs_parameterisation(cfg, NC, SHAPE).render(state).images).reshape((N, D) + SHAPE)
  np.testing.assert_allclose(images, np.broadcast_to(codes[:, None, ..., :1], images.shape), atol=1e-6)
  # downsample 2: the antialiased resize of the same images (the same key picks the same ones).
  cfg2 = _config(init="real", downsample=2)
  small = np.asarray(kfs.init_kfs(jax.random.PRNGKey(1), cfg2, x, y, NC, 1).params["codes"])
  want = jax.image.resize(jnp.asarray(codes[..., :1]), (N, 4, 4, 1), "linear", antialias=True)
  np.testing.assert_allclose(small, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="codes_per_class"):
    kfs.init_kfs(jax.random.PRNGKey(1), _config(init="real", codes_per_class=5), x, y, NC, 1)


def test_gradients_reach_codes_and_decoders_and_match_finite_differences():
  with enable_x64():
    cfg = _config(pairs="all")
    state = kfs.init_kfs(jax.random.PRNGKey(2), cfg, _real()[0], None, NC, 1)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), state.params)
    # Non-zero output kernels so that every decoder parameter matters.
    dec = params["decoders"]["params"]
    out = {**dec["to_image"], "kernel": 0.3 * jax.random.normal(jax.random.PRNGKey(5), dec["to_image"]["kernel"].shape,
                                                                 jnp.float64)}
    params = {**params, "decoders": {"params": {**dec, "to_image": out}}}
    param = kfs.kfs_parameterisation(cfg, NC, SHAPE)
    w = jax.random.normal(jax.random.PRNGKey(6), (N * D,) + SHAPE, jnp.float64)

    def f(p):
      return jnp.sum(jnp.tanh(param.render(state._replace(params=p)).images) * w)

    grads = jax.grad(f)(params)
    for j in range(D):
      for g in jax.tree_util.tree_leaves(grads["decoders"]):
        assert np.any(np.asarray(g[j]) != 0)
    assert np.all(np.any(np.asarray(grads["codes"]).reshape(N, -1) != 0, axis=1))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    gleaves = jax.tree_util.tree_leaves(grads)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for li, (leaf, g) in enumerate(zip(leaves, gleaves)):
      for _ in range(2):
        idx = tuple(int(rng.integers(s)) for s in leaf.shape)
        bump = lambda s: jax.tree_util.tree_unflatten(
            treedef, [a.at[idx].add(s * eps) if i == li else a for i, a in enumerate(leaves)])
        fd = (f(bump(1.0)) - f(bump(-1.0))) / (2 * eps)
        np.testing.assert_allclose(float(g[idx]), float(fd), rtol=1e-5, atol=1e-8)


def test_gradient_reaches_only_the_chosen_decoders():
  cfg = _config(decoders=4)
  state = _marked_state(cfg)
  param = kfs.kfs_parameterisation(cfg, NC, SHAPE)
  key = next(jax.random.PRNGKey(k) for k in range(200)
             if len(set(np.asarray(haba.draw_pairs(jax.random.PRNGKey(k), N, 4)).ravel())) < 4)
  chosen = set(np.asarray(haba.draw_pairs(key, N, 4)).ravel().tolist())
  w = jax.random.normal(jax.random.PRNGKey(2), (N * 2,) + SHAPE)
  grads = jax.grad(lambda p: jnp.sum(w * param.render(state._replace(params=p), key).images))(state.params)
  for j in range(4):
    g = np.asarray(grads["decoders"]["params"]["to_image"]["bias"][j])
    assert np.any(g != 0) if j in chosen else np.all(g == 0), j


def test_distill_loop_on_fashion_mnist(fmnist_train):
  images, labels, spec = fmnist_train
  shape = tuple(images.shape[1:])
  x, y = images[:400], labels[:400]
  cfg = kfs.KFSConfig(codes_per_class=2, decoders=2, width=8, init="real", contrastive=0.1, extractor_width=8)
  syn = synthetic.init_kfs(jax.random.PRNGKey(0), cfg, x, y, spec.num_classes, 1)
  param = synthetic.kfs_parameterisation(cfg, spec.num_classes, shape)
  dm = objectives.make_objective("dm", objectives.DistributionMatchingConfig(width=8, depth=1),
                                 num_classes=spec.num_classes, image_shape=shape,
                                 ipc=kfs.train_images_per_class(cfg))
  objective = with_regulariser(dm, kfs.contrastive_regulariser(cfg, spec.num_classes, shape))
  config = loop.LoopConfig(iterations=2, real_per_class=2, lr_img=1.0, param_lrs={"decoders": 0.01})
  result = loop.distill(objective, param, syn, x, y, spec.num_classes, jax.random.PRNGKey(1), config,
                        progress=False)
  assert result.losses.shape == (2,) and np.all(np.isfinite(result.losses))
  after = result.state.syn.params
  assert not np.allclose(np.asarray(after["codes"]), np.asarray(syn.params["codes"]))
  batch = param.render(result.state.syn)
  assert batch.images.shape == (spec.num_classes * 2 * 2,) + shape and np.all(np.isfinite(batch.images))
