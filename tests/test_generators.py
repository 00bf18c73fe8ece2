"""Generators and the generative / factorised parameterisations: GLaD (latents through a frozen generator,
decoupled backward), GenDM (a generator under a storage budget), LatentDD and HaBa (bases × hallucinators)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import generators as G
from jaxdistill import io, loop, objectives, synthetic
from jaxdistill.synthetic import glad as glad_mod
from jaxdistill.synthetic.glad import GLaDConfig

NC = 10
SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def style():
  gen = G.make_generator("style", widths=(8, 4, 4), z_dim=8, w_dim=8, mapping_layers=1)
  return gen, G.init_generator(gen, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def decoder():
  gen = G.make_generator("decoder", widths=(8, 8, 4), z_dim=8, embed_dim=4)
  return gen, G.init_generator(gen, jax.random.PRNGKey(0))


def test_style_generator_reads_and_writes_every_layer(style):
  gen, params = style
  cfg = gen.config
  assert cfg.num_layers == 5 and cfg.num_ws == 6
  z = jax.random.normal(jax.random.PRNGKey(1), (3, cfg.z_dim))
  labels = jnp.array([0, 4, 9])
  keys = G.per_image_keys(jax.random.PRNGKey(2), 3)
  images = G.generate(gen, params, z, labels, keys)
  assert images.shape == (3,) + SHAPE and bool(jnp.all(jnp.isfinite(images)))
  ws = G.broadcast_ws(gen, G.mapping(gen, params, z, labels))
  assert ws.shape == (3, 6, 8)
  expected = {0: (7, 7, 8), 1: (7, 7, 8), 2: (14, 14, 4), 3: (14, 14, 4), 4: (28, 28, 4), 5: (28, 28, 4)}
  for n in range(cfg.num_layers + 1):
    feats = G.synthesis(gen, params, ws, keys, stop=n)
    assert feats.shape[1:] == cfg.feature_shape(n) == expected[n], n
    resumed = G.synthesis(gen, params, ws, keys, start=n, features=feats)
    np.testing.assert_allclose(resumed, images, atol=1e-5)
  # Per-image computation: a chunk renders exactly like the same images inside the whole batch.
  np.testing.assert_allclose(G.generate(gen, params, z[1:], labels[1:], keys[1:]), images[1:], atol=1e-5)
  # Noise is on and matters; codes matter per layer.
  assert float(jnp.abs(G.generate(gen, params, z, labels, None) - images).max()) > 1e-4
  with pytest.raises(ValueError, match="layer must be an integer in"):
    cfg.feature_shape(6)
  gen32 = G.make_generator("style", resolution=32, channels=3, widths=(8, 4, 4, 4), z_dim=8, w_dim=8)
  out32 = jax.eval_shape(lambda: G.generate(gen32, G.init_generator(gen32, jax.random.PRNGKey(0)), z, labels))
  assert out32.shape == (3, 32, 32, 3)
  assert gen32.config.feature_shape(0) == (4, 4, 8)
  with pytest.raises(ValueError, match="resolution must be a multiple"):
    G.make_generator("style", resolution=30, widths=(8, 4, 4))


def test_glad_shapes_storage_and_determinism_for_every_space_and_layer(style, decoder):
  gen, params = style
  cases = [("features", n) for n in range(gen.config.num_layers + 1)] + [("wplus", 0), ("w", 0), ("z", 0)]
  for space, n in cases:
    cfg = GLaDConfig(space=space, layer=n, decoupled=False)
    state = synthetic.init_glad(jax.random.PRNGKey(3), gen, params, cfg, NC, 2)
    again = synthetic.init_glad(jax.random.PRNGKey(3), gen, params, cfg, NC, 2)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(again)):
      np.testing.assert_array_equal(a, b)
    param = synthetic.glad_parameterisation(gen, cfg)
    batch = param.render(state)
    assert batch.images.shape == (20,) + SHAPE, (space, n)
    np.testing.assert_array_equal(batch.labels, np.repeat(np.arange(NC), 2))
    np.testing.assert_array_equal(batch.images, param.render(state).images)
    per_image = glad_mod.latent_floats_per_image(gen, cfg)
    assert param.storage(state) == 20 * per_image, (space, n)
    if space == "features":
      assert state.params["features"].shape == (20,) + gen.config.feature_shape(n)
      assert state.params["codes"].shape == (20, gen.config.num_ws - n, 8)
      if n == 0:  # layer 0's initial feature map is the generator's constant, so G(latents) = G(z) at init
        z = jax.random.normal(jax.random.split(jax.random.PRNGKey(3), 3)[0], (20, 8))
        np.testing.assert_allclose(batch.images, G.generate(gen, params, z, batch.labels,
                                                            state.const["noise_keys"]), atol=1e-5)
  counted = GLaDConfig(space="w", count_generator=True)
  state = synthetic.init_glad(jax.random.PRNGKey(3), gen, params, counted, NC, 1)
  assert synthetic.glad_parameterisation(gen, counted).storage(state) == 10 * 8 + G.num_params(params)
  mean = synthetic.init_glad(jax.random.PRNGKey(3), gen, params, GLaDConfig(space="w", init="class_mean"), NC, 2)
  np.testing.assert_allclose(mean.params["codes"][0], mean.params["codes"][1])  # class average: same per class
  with pytest.raises(ValueError, match="space must be 'z'"):
    GLaDConfig(space="features").validate(decoder[0])
  with pytest.raises(ValueError, match="space must be one of"):
    GLaDConfig(space="pixels").validate()


def _loss_of_images(images):
  target = jnp.linspace(-1.0, 1.0, int(np.prod(images.shape[1:]))).reshape(images.shape[1:])
  return jnp.sum(jnp.tanh(images) * target) + 0.1 * jnp.sum(jnp.square(images.mean(0)))


@pytest.mark.parametrize("space,layer", [("features", 2), pytest.param("z", 0, marks=pytest.mark.slow)])
def test_decoupled_backward_equals_direct_gradient(style, space, layer):
  gen, params = style
  cfg = GLaDConfig(space=space, layer=layer, chunk=3)  # 10 images in chunks of 3: exercises the padding
  state = synthetic.init_glad(jax.random.PRNGKey(4), gen, params, cfg, NC, 1)
  fn = glad_mod.latent_fn(gen, cfg)
  latents = {k: state.params[k] for k in ("features", "codes") if k in state.params}
  aux = {k: state.const[k] for k in ("labels", "noise_keys") if k in state.const}
  param = synthetic.glad_parameterisation(gen, cfg)

  @jax.jit
  def all_grads(latents, state):
    direct = jax.value_and_grad(lambda l: _loss_of_images(fn(l, aux, params)))(latents)
    decoupled = synthetic.decoupled_grad(_loss_of_images, fn, latents, aux, params, 3)
    # Through the custom_vjp render, as the loop differentiates it.
    via_render = jax.grad(lambda p: _loss_of_images(param.render(state._replace(params=p)).images))(state.params)
    return direct, decoupled, via_render

  (direct_loss, direct), (loss, grads), via_render = all_grads(latents, state)
  np.testing.assert_allclose(loss, direct_loss, rtol=1e-5)
  for k in latents:
    scale = float(jnp.abs(direct[k]).max())
    assert scale > 0
    np.testing.assert_allclose(grads[k], direct[k], atol=1e-4 * scale)
    np.testing.assert_allclose(via_render[k], direct[k], atol=1e-4 * scale)


def test_storage_accounting_and_budget_refusal(style, decoder, fmnist_train):
  x, y, _ = fmnist_train
  assert synthetic.storage_budget(NC, 1, SHAPE) == 7840
  assert synthetic.check_budget(7840, NC, 1, SHAPE) == 7840
  gen = G.make_generator("decoder", widths=(32, 16, 8), z_dim=8, embed_dim=4)
  gparams = G.init_generator(gen, jax.random.PRNGKey(0))
  floats = G.num_params(gparams)
  assert floats == 10 * 4 + 12 * 1568 + 1568 + 9 * 32 * 16 + 16 + 9 * 16 * 8 + 8 + 9 * 8 + 1
  with pytest.raises(ValueError, match=f"{floats:,} floats, {floats - 7840:,} over the storage budget of 7,840"):
    synthetic.init_gendm(jax.random.PRNGKey(0), gen, synthetic.GenDMConfig(), NC, 1, SHAPE, gparams=gparams)
  need = -(-floats // 7840)  # the smallest IPC whose budget holds this generator
  state = synthetic.init_gendm(jax.random.PRNGKey(0), gen, synthetic.GenDMConfig(), NC, need, SHAPE,
                               gparams=gparams)
  assert synthetic.gendm_parameterisation(gen, synthetic.GenDMConfig(), NC).storage(state) == floats
  with pytest.raises(ValueError, match="over the storage budget"):
    synthetic.init_gendm(jax.random.PRNGKey(0), gen, synthetic.GenDMConfig(), NC, need - 1, SHAPE, gparams=gparams)
  dec, dparams = decoder
  cfg = synthetic.GenDMConfig(train_per_class=2, samples_per_class=3)
  state = synthetic.init_gendm(jax.random.PRNGKey(0), dec, cfg, NC, 1, SHAPE, gparams=dparams)
  param = synthetic.gendm_parameterisation(dec, cfg, NC)
  assert param.needs_key and param.storage(state) == G.num_params(dparams) <= 7840
  # HaBa: bases + hallucinators, B_c·H images per class, budget enforced.
  hcfg = synthetic.HaBaConfig(bases_per_class=2, hallucinators=3, width=4, basis_size=14)
  hstate = synthetic.init_haba(jax.random.PRNGKey(0), hcfg, x, y, NC, 1)
  hal_floats = 3 * (9 * 4 + 4 + 4 + 4 + 9 * 4 + 1)
  hparam = synthetic.haba_parameterisation(hcfg, NC, SHAPE)
  assert hparam.storage(hstate) == 20 * 14 * 14 + hal_floats
  batch = hparam.render(hstate)
  assert batch.images.shape == (60,) + SHAPE
  np.testing.assert_array_equal(batch.labels, np.repeat(np.arange(NC), 6))
  from experiments.generative import max_bases
  assert max_bases(hcfg, NC, 1, SHAPE) == (7840 - hal_floats) // (NC * 196)
  with pytest.raises(ValueError, match="over the storage budget"):
    synthetic.init_haba(jax.random.PRNGKey(0), synthetic.HaBaConfig(bases_per_class=1), x, y, NC, 1)


def test_gendm_render_keys_determinism_and_truncation(style, decoder):
  dec, dparams = decoder
  cfg = synthetic.GenDMConfig(train_per_class=2, samples_per_class=4, truncation=0.5)
  state = synthetic.init_gendm(jax.random.PRNGKey(5), dec, cfg, NC, 1, SHAPE, gparams=dparams)
  param = synthetic.gendm_parameterisation(dec, cfg, NC)
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  a, b, c = param.render(state, k1), param.render(state, k1), param.render(state, k2)
  assert a.images.shape == (20,) + SHAPE
  np.testing.assert_array_equal(a.images, b.images)
  assert float(jnp.abs(a.images - c.images).max()) > 1e-4  # fresh latents per key
  ev = param.render(state)  # the fixed evaluation sample: K = 4 per class, truncated
  assert ev.images.shape == (40,) + SHAPE
  np.testing.assert_array_equal(ev.images, param.render(state).images)
  np.testing.assert_array_equal(ev.labels, np.repeat(np.arange(NC), 4))
  gen, gparams = style
  full = synthetic.generator.sample_generator(gen, gparams, k1, NC, 3)
  trunc = synthetic.generator.sample_generator(gen, gparams, k1, NC, 3, truncation=0.0)
  # psi = 0 collapses every style of a class onto its class mean; only the (same-key) noise differs.
  w0 = G.class_mean_w(gen, gparams, jax.random.split(k1, 3)[2], 64)
  keys = G.per_image_keys(jax.random.split(k1, 3)[1], 30)
  np.testing.assert_allclose(trunc.images, G.synthesis(gen, gparams, G.broadcast_ws(gen, w0[trunc.labels]), keys),
                             atol=1e-5)
  assert float(jnp.abs(full.images - trunc.images).max()) > 1e-4


def test_loop_trains_gendm_with_fresh_latents_and_glad_with_separate_lrs(style, decoder, fmnist_train):
  x, y, _ = fmnist_train
  x, y = x[:400], y[:400]
  obj = objectives.make_objective("dm", objectives.default_config("dm", width=8, dsa=False), num_classes=NC,
                                  image_shape=SHAPE, ipc=1)
  dec, dparams = decoder
  cfg = synthetic.GenDMConfig(train_per_class=1, samples_per_class=1)
  state = synthetic.init_gendm(jax.random.PRNGKey(0), dec, cfg, NC, 1, SHAPE, gparams=dparams)
  param = synthetic.gendm_parameterisation(dec, cfg, NC)
  lc = loop.LoopConfig(iterations=3, real_per_class=2, lr_img=1e-3, optimizer="adam")
  out = loop.distill(obj, param, state, x, y, NC, jax.random.PRNGKey(1), lc, progress=False)
  assert np.all(np.isfinite(out.losses)) and len(out.losses) == 3
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), out.state.syn.params, state.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  gen, gparams = style
  gcfg = GLaDConfig(space="features", layer=2)
  gstate = synthetic.init_glad(jax.random.PRNGKey(0), gen, gparams, gcfg, NC, 1)
  lc = loop.LoopConfig(iterations=2, real_per_class=2, lr_img=1.0, param_lrs={"features": 1.0, "codes": 1e-30})
  out = loop.distill(obj, synthetic.glad_parameterisation(gen, gcfg), gstate, x, y, NC, jax.random.PRNGKey(1), lc,
                     progress=False)
  new = out.state.syn.params
  assert float(jnp.abs(new["features"] - gstate.params["features"]).max()) > 1e-3
  np.testing.assert_allclose(new["codes"], gstate.params["codes"], atol=1e-20)


def test_generator_checkpoint_roundtrip(style, tmp_path):
  gen, params = style
  path = str(tmp_path / "g.npz")
  G.save_generator(path, gen, params, {"note": "random"})
  gen2, params2, meta = G.load_generator(path)
  assert gen2.config == gen.config and meta["note"] == "random"
  assert meta["generator_floats"] == G.num_params(params)
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 8))
  np.testing.assert_array_equal(G.generate(gen, params, z, jnp.array([1, 2])),
                                G.generate(gen2, params2, z, jnp.array([1, 2])))
  io.save_npz(str(tmp_path / "x.npz"), {"a": np.zeros(2)}, {})
  with pytest.raises(ValueError, match="holds no generator"):
    G.load_generator(str(tmp_path / "x.npz"))


TINY = ["--ipc", "1", "--real-per-class", "2", "--width", "8", "--eval-models", "1", "--eval-epochs", "1",
        "--eval-width", "8", "--test-size", "200", "--no-eval-dsa", "--quiet", "--iterations", "2"]


def test_cli_refuses_generator_over_budget(tmp_path):
  from experiments import distill
  with pytest.raises(ValueError, match="over the storage budget of 7,840 floats"):
    distill.main(["--method", "gendm", "--objective", "dm", "--out", str(tmp_path / "big"), "--gen-widths",
                  "64,32,16", *TINY])


def _config(tmp_path, **options):
  path = tmp_path / "config.json"
  io.save_json(str(path), options)
  return ["--config", str(path)]


@pytest.mark.slow
def test_cli_glad_with_dc(tmp_path):
  from experiments import distill
  out = tmp_path / "glad"
  fast = _config(tmp_path, outer_loop=1, inner_loop=1)
  payload = distill.main(["--method", "glad", "--objective", "dc", "--out", str(out), "--gen-widths", "8,4,4",
                          "--gen-z-dim", "8", "--gen-w-dim", "8", "--glad-layer", "1", "--lr-codes", "0.001",
                          *fast, *TINY])
  assert payload["parameterisation"] == "glad" and payload["objective"] == "dc"
  assert payload["loop_config"]["param_lrs"] == {"codes": 0.001, "features": 1.0}  # GLaD distill_dc.py: --lr_img 1
  assert payload["storage_floats"] == 10 * (7 * 7 * 8 + 5 * 8)
  syn = io.load_synthetic(str(out / "synthetic.npz"))
  assert syn["images"].shape == (10, 28, 28, 1)
  assert syn["features"].shape == (10, 7, 7, 8) and syn["codes"].shape == (10, 5, 8)
  assert syn["metadata"]["generator"]["arch"] == "style"


@pytest.mark.slow
def test_cli_gendm_then_latentdd_and_haba(tmp_path):
  from experiments import distill
  fast = _config(tmp_path, dsa=False)
  with pytest.raises(ValueError, match="needs --gen-checkpoint"):
    distill.main(["--method", "latentdd", "--objective", "dm", "--out", str(tmp_path / "ldd0"), "--gen-checkpoint",
                  "random", *TINY])
  gendm = tmp_path / "gendm"
  p = distill.main(["--method", "gendm", "--objective", "dm", "--out", str(gendm), "--gen-samples-per-class", "3",
                    *fast, *TINY])
  assert p["storage_floats"] == p["generator_floats"] <= p["storage_budget_floats"] == 7840
  assert p["loop_config"]["optimizer"] == "adam"
  syn = io.load_synthetic(str(gendm / "synthetic.npz"))
  assert syn["images"].shape == (30, 28, 28, 1)  # K = 3 samples per class
  gen, params, _ = G.load_generator(str(gendm / "synthetic.npz"))
  assert G.num_params(params) == p["storage_floats"]
  p = distill.main(["--method", "latentdd", "--objective", "dm", "--out", str(tmp_path / "ldd"),
                    "--gen-checkpoint", str(gendm / "synthetic.npz"), *fast, *TINY])
  assert p["storage_floats"] == G.num_params(params) + 10 * gen.config.z_dim
  p = distill.main(["--method", "haba", "--objective", "dm", "--out", str(tmp_path / "haba"),
                    "--haba-basis-size", "14", "--haba-hallucinators", "2", "--haba-width", "4",
                    "--haba-extractor-width", "8", *fast, *TINY])
  assert p["storage_floats"] <= 7840 and p["parameterisation_config"]["bases_per_class"] >= 1
  assert io.load_synthetic(str(tmp_path / "haba" / "synthetic.npz"))["bases"].shape[1:] == (14, 14, 1)
