"""GAN training of a generator prior (jaxdistill.gan, experiments.train_generator): the R1 term is the per-image
input-gradient norm, a training step updates both networks and the EMA as documented, bad settings are refused,
and the CLI writes a generator checkpoint that loads back bit for bit."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import gan
from jaxdistill import generators as G

NC = 10
SHAPE = (28, 28, 1)


def _tiny():
  gen = G.make_generator("style", num_classes=NC, resolution=28, channels=1, widths=(8, 4, 4), z_dim=8, w_dim=8,
                         mapping_layers=1)
  return gen, gan.Discriminator(NC, 4)


def test_r1_is_the_mean_squared_input_gradient_per_image(fmnist_train):
  x, y, _ = fmnist_train
  _, disc = _tiny()
  real, labels = jnp.asarray(x[:6]), jnp.asarray(y[:6], jnp.int32)
  params = disc.init(jax.random.PRNGKey(0), real, labels)
  fake = real[::-1] * 0.5
  loss, aux = gan.d_loss(params, disc, real, fake, labels, r1_gamma=2.0)
  per_image = [jax.grad(lambda im: disc.apply(params, im[None], labels[i:i + 1])[0])(real[i]) for i in range(6)]
  want_r1 = np.mean([float(jnp.sum(g ** 2)) for g in per_image])
  np.testing.assert_allclose(float(aux["r1"]), want_r1, rtol=1e-4)
  d_real, d_fake = disc.apply(params, real, labels), disc.apply(params, fake, labels)
  want = np.mean(jax.nn.softplus(d_fake)) + np.mean(jax.nn.softplus(-d_real)) + 0.5 * 2.0 * want_r1
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  assert float(gan.d_loss(params, disc, real, fake, labels, r1_gamma=0.0)[1]["r1"]) == 0.0


def test_train_step_updates_both_networks_and_the_average(fmnist_train):
  x, y, _ = fmnist_train
  gen, disc = _tiny()
  cfg = gan.GANConfig(steps=2, batch_size=10, ema_decay=0.9, d_width=4).validate()
  state = gan.init(gen, disc, cfg, jax.random.PRNGKey(0), SHAPE)
  step = gan.make_train_step(gen, disc, cfg)
  images, labels = jnp.asarray(x[:10]), jnp.arange(NC, dtype=jnp.int32)
  new, metrics = step(state, images, labels, jax.random.PRNGKey(1))
  assert int(new.step) == 1 and all(np.isfinite(float(v)) for v in metrics.values())
  leaves = lambda t: jax.tree_util.tree_leaves(t)
  assert any(not np.allclose(a, b) for a, b in zip(leaves(state.d_params), leaves(new.d_params)))
  assert any(not np.allclose(a, b) for a, b in zip(leaves(state.g_params), leaves(new.g_params)))
  for e0, g1, e1 in zip(leaves(state.ema_params), leaves(new.g_params), leaves(new.ema_params)):
    np.testing.assert_allclose(e1, 0.9 * e0 + 0.1 * g1, rtol=1e-5, atol=1e-7)
  samples = gan.sample(gen, new.ema_params, jax.random.PRNGKey(2), labels)
  assert samples.shape == (NC,) + SHAPE and np.all(np.isfinite(np.asarray(samples)))


@pytest.mark.parametrize("field, value, message", [("steps", 0, "steps"), ("lr_g", 0.0, "lr_g"),
                                                   ("beta2", 1.0, "beta2"), ("r1_gamma", -1.0, "r1_gamma"),
                                                   ("ema_decay", True, "ema_decay")])
def test_config_refuses_bad_values(field, value, message):
  with pytest.raises(ValueError, match=message):
    gan.GANConfig(**{field: value}).validate()


def test_train_generator_cli_writes_a_loadable_checkpoint(data_dir, tmp_path):
  from experiments import train_generator

  out = tmp_path / "gen"
  m = train_generator.main(["--data-dir", data_dir, "--train-size", "200", "--steps", "3", "--batch-size", "10",
                            "--gen-widths", "8,4,4", "--gen-z-dim", "8", "--gen-w-dim", "8", "--d-width", "4",
                            "--log-every", "1", "--quiet", "--out", str(out)])
  written = sorted(f for f in os.listdir(out) if not f.startswith("."))  # .jaxdistill.lock: the run's lock
  assert written == ["generator.npz", "metrics.json", "samples.png"]
  assert [r["step"] for r in m["log"]] == [1, 2, 3]
  gen, params, meta = G.load_generator(str(out / "generator.npz"))
  assert gen.config.widths == (8, 4, 4) and meta["gan_config"]["steps"] == 3 and meta["dataset"] == "fashion_mnist"
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["generator_floats"] == G.num_params(params)
  with pytest.raises(ValueError, match="not empty"):
    train_generator.main(["--data-dir", data_dir, "--steps", "1", "--out", str(out), "--quiet"])
  with pytest.raises(ValueError, match="multiple of the 10 classes"):
    train_generator.main(["--data-dir", data_dir, "--steps", "1", "--batch-size", "15", "--out",
                          str(tmp_path / "b"), "--quiet"])
