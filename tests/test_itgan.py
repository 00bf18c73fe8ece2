"""IT-GAN (Zhao & Bilen 2022): latents of the frozen shipped generator prior, a sample-wise feature regulariser
added to DM. The regulariser equals its NumPy formula, treats a pair alike under DSA (a pair of equal images costs
0), reaches the latents (finite differences), the inversion lowers the reconstruction error, and a 2-iteration loop
on real Fashion-MNIST gives finite losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import generators as G
from jaxdistill import loop, models
from jaxdistill.objectives import DistributionMatchingConfig, Regulariser
from jaxdistill.synthetic import itgan
from jaxdistill.synthetic.base import SyntheticBatch

NC = 10
SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def prior():
  gen, gparams, _ = G.load_generator(G.trained_prior("fashion_mnist"))
  return gen, gparams


def test_feature_regulariser_is_the_numpy_formula(rng):
  syn = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
  real = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
  w = rng.normal(size=(18, 5)).astype(np.float32)
  embed = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w)
  got = itgan.feature_regulariser(embed, jnp.asarray(syn), jnp.asarray(real))
  f = lambda x: np.tanh(x.reshape(4, -1).astype(np.float64) @ w)
  want = np.mean(np.sum((f(syn) - f(real)) ** 2, axis=1))
  assert float(got) == pytest.approx(want, rel=1e-5)
  # The real side is a constant: the gradient w.r.t. the real images is zero, w.r.t. the synthetic ones not.
  g_real = jax.grad(lambda r: itgan.feature_regulariser(embed, jnp.asarray(syn), r))(jnp.asarray(real))
  g_syn = jax.grad(lambda s: itgan.feature_regulariser(embed, s, jnp.asarray(real)))(jnp.asarray(syn))
  assert float(jnp.abs(g_real).max()) == 0.0 and float(jnp.abs(g_syn).max()) > 0
  with pytest.raises(ValueError, match="same shape"):
    itgan.feature_regulariser(embed, jnp.asarray(syn), jnp.asarray(real[:3]))


def test_regulariser_draws_one_network_and_one_augmentation_per_pair(fmnist_subset):
  x, y = fmnist_subset
  real = jnp.asarray(x[::10][:6])
  cfg = itgan.ITGANConfig(width=8, reg_weight=0.5)
  reg = itgan.itgan_regulariser(real, NC, SHAPE, cfg)
  assert isinstance(reg, Regulariser)
  state = reg.init(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(5)
  # Equal pairs under the same DSA draw cost exactly 0; other images cost > 0.
  same, _ = reg.loss(state, SyntheticBatch(real, jnp.zeros(6, jnp.int32)), key)
  assert float(same) == 0.0
  other = jnp.asarray(x[1::10][:6])
  value, aux = reg.loss(state, SyntheticBatch(other, jnp.zeros(6, jnp.int32)), key)
  assert float(value) > 0 and float(value) == pytest.approx(0.5 * float(aux["feature_distance"]), rel=1e-6)
  # Without DSA the loss is λ · feature_regulariser with the network drawn from the key's first half.
  plain = itgan.itgan_regulariser(real, NC, SHAPE, itgan.ITGANConfig(width=8, reg_weight=0.5, dsa=False))
  model = models.get_model("convnet", NC, SHAPE, width=8)
  variables = models.init_variables(model, jax.random.split(key)[0], SHAPE)
  embed = lambda im: models.apply(model, variables, im, train=True, embed=True)[0]
  want = 0.5 * itgan.feature_regulariser(embed, other, real)
  got, _ = plain.loss(plain.init(key), SyntheticBatch(other, jnp.zeros(6, jnp.int32)), key)
  assert float(got) == pytest.approx(float(want), rel=1e-5)
  assert plain.update(state, None, key) is state
  with pytest.raises(ValueError, match="paired_real"):
    itgan.itgan_regulariser(real[:, :20], NC, SHAPE, cfg)


def test_gradients_reach_the_latents(prior, fmnist_subset):
  gen, gparams = prior
  x, y = fmnist_subset
  cfg = itgan.ITGANConfig(width=8, init="random", dsa=False)
  state, paired = itgan.init_itgan(jax.random.PRNGKey(0), gen, gparams, x, y, NC, 1, cfg)
  assert state.params["codes"].shape == (NC, gen.config.z_dim) and paired.shape == (NC,) + SHAPE
  np.testing.assert_array_equal(np.asarray(state.const["labels"]), np.arange(NC))
  param = itgan.itgan_parameterisation(gen, cfg)
  model = models.get_model("convnet", NC, SHAPE, width=8)
  variables = models.init_variables(model, jax.random.PRNGKey(2), SHAPE)
  embed = lambda im: models.apply(model, variables, im, train=True, embed=True)[0]

  def loss(z):
    images = param.render(state._replace(params={**state.params, "codes": z})).images
    return itgan.feature_regulariser(embed, images, paired)

  z0 = state.params["codes"]
  g = np.asarray(jax.jit(jax.grad(loss))(z0))
  f = jax.jit(loss)
  assert np.abs(g).max() > 0
  for (i, j) in [(0, 0), (3, 7)]:
    h = 1e-2
    fd = (float(f(z0.at[i, j].add(h))) - float(f(z0.at[i, j].add(-h)))) / (2 * h)
    assert float(g[i, j]) == pytest.approx(fd, rel=0.05, abs=1e-3 * float(np.abs(g).max()))


def test_inversion_lowers_the_reconstruction_error_and_init_uses_it(prior, fmnist_subset):
  gen, gparams = prior
  x, y = fmnist_subset
  pairs = itgan.pick_pairs(jax.random.PRNGKey(0), x, y, NC, 1)
  assert pairs.shape == (NC,) + SHAPE
  labels = jnp.arange(NC, dtype=jnp.int32)
  z0 = jax.random.normal(jax.random.PRNGKey(1), (NC, gen.config.z_dim))
  z, before, after = itgan.invert(gen, gparams, pairs, labels, z0, steps=10, lr=0.1)
  assert float(after) < float(before)
  assert float(itgan.inversion_loss(gen, gparams, z, labels, pairs)) == pytest.approx(float(after), rel=1e-6)
  cfg = itgan.ITGANConfig(width=8, inversion_steps=10)
  state, paired = itgan.init_itgan(jax.random.PRNGKey(0), gen, gparams, x, y, NC, 1, cfg)
  want = itgan.pick_pairs(jax.random.split(jax.random.PRNGKey(0))[0], x, y, NC, 1)  # the documented key
  np.testing.assert_array_equal(np.asarray(paired), np.asarray(want))
  rand, _ = itgan.init_itgan(jax.random.PRNGKey(0), gen, gparams, x, y, NC, 1,
                             itgan.ITGANConfig(width=8, init="random"))
  err = lambda s: float(itgan.inversion_loss(gen, gparams, s.params["codes"], labels, paired))
  assert err(state) < err(rand)
  with pytest.raises(ValueError, match="ipc"):
    itgan.pick_pairs(jax.random.PRNGKey(0), x[:5], y[:5], NC, 1)
  with pytest.raises(ValueError, match="init"):
    itgan.ITGANConfig(init="nope").validate()
  with pytest.raises(ValueError, match="reg_weight"):
    itgan.ITGANConfig(reg_weight=-1.0).validate()


def test_itgan_two_loop_iterations_on_fashion_mnist(prior, fmnist_train):
  gen, gparams = prior
  x, y, _ = fmnist_train
  cfg = itgan.ITGANConfig(width=8, inversion_steps=3)
  state, paired = itgan.init_itgan(jax.random.PRNGKey(0), gen, gparams, x, y, NC, 1, cfg)
  obj = itgan.make_itgan_objective(paired, cfg, num_classes=NC, image_shape=SHAPE, ipc=1,
                                   dm_config=DistributionMatchingConfig(width=8))
  param = itgan.itgan_parameterisation(gen, cfg)
  assert param.storage(state) == NC * gen.config.z_dim + G.num_params(gparams)
  lc = loop.LoopConfig(iterations=2, real_per_class=8, lr_img=0.01)
  res = loop.distill(obj, param, state, x, y, NC, jax.random.PRNGKey(1), lc, progress=False)
  assert res.losses.shape == (2,) and np.all(np.isfinite(res.losses))
  z = np.asarray(res.state.syn.params["codes"])
  assert np.all(np.isfinite(z)) and np.abs(z - np.asarray(state.params["codes"])).max() > 0
  # The regulariser's state (the pairs) is carried by the loop untouched.
  np.testing.assert_array_equal(np.asarray(res.state.obj_state["regulariser"]["real"]), np.asarray(paired))
  # λ = 0: plain DM through G (no regulariser state).
  dm_only = itgan.make_itgan_objective(paired, itgan.ITGANConfig(reg_weight=0.0), num_classes=NC,
                                       image_shape=SHAPE, ipc=1, dm_config=DistributionMatchingConfig(width=8))
  assert dm_only.init(jax.random.PRNGKey(0)) == {}
