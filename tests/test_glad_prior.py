"""GLaD's learned prior and learning rates: the GAN-trained generator shipped for Fashion-MNIST (the default
prior of ``--method glad``), GLaD's per-objective F_n / code learning rates, and how the CLI picks a generator."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import distill
from experiments import generative as gen_cli
from jaxdistill import data as data_lib
from jaxdistill import generators as G

NC = 10


def _args(*argv):
  return distill.build_parser().parse_args(["--out", "unused", "--ipc", "1", *argv])


@pytest.mark.parametrize("objective, want", [("dm", (10.0, 0.01)), ("dc", (1.0, 0.001)), ("dsa", (1.0, 0.001)),
                                             ("mtt", (1e4, 10.0)), ("tesla", (1e4, 10.0))])
def test_glad_lrs_are_the_glad_codes_per_objective(objective, want):
  # GeorgeCazenavette/glad: distill_dm.py --lr_img 10 --lr_w 0.01, distill_dc.py 1 / 0.001, distill_mtt.py 1e4 / 10.
  assert gen_cli.glad_lrs(objective, image_lr=123.0) == pytest.approx(want)


def test_glad_lrs_other_objectives_and_explicit_values():
  assert gen_cli.glad_lrs("kip", image_lr=0.04) == pytest.approx((0.4, 4e-4))  # GLaD's ratios: 10x, then 1e-3x
  assert gen_cli.glad_lrs("dm", 1.0, lr_features=3.0) == pytest.approx((3.0, 3e-3))
  assert gen_cli.glad_lrs("dm", 1.0, lr_features=3.0, lr_codes=0.5) == pytest.approx((3.0, 0.5))
  assert gen_cli.glad_lrs("dm", 1.0, lr_codes=0.5) == pytest.approx((10.0, 0.5))


@pytest.mark.parametrize("objective, space, want", [
    ("dm", "features", {"features": 10.0, "codes": 0.01}),
    ("dc", "features", {"features": 1.0, "codes": 0.001}),
    ("dm", "wplus", {"features": 10.0, "codes": 10.0}),  # codes alone: GLaD's --lr_img
])
def test_glad_loop_config_takes_the_per_objective_lrs(objective, space, want):
  args = _args("--method", "glad", "--objective", objective, "--glad-space", space)
  _, loop_cfg, _ = distill.build_configs(args, data_lib.get_spec("fashion_mnist"))
  assert {k: pytest.approx(v) for k, v in loop_cfg.param_lrs.items()} == want


def test_latentdd_keeps_its_image_lr_rule():
  args = _args("--method", "latentdd", "--objective", "dm", "--lr-img", "2")
  _, loop_cfg, _ = distill.build_configs(args, data_lib.get_spec("fashion_mnist"))
  assert loop_cfg.param_lrs == {"features": 2.0, "codes": pytest.approx(0.02)}


def test_a_trained_prior_ships_for_fashion_mnist_only():
  assert G.trained_priors() == ("fashion_mnist",)
  path = G.trained_prior("fashion_mnist")
  assert path and os.path.getsize(path) <= 10 * 2 ** 20
  assert G.trained_prior("cifar10") is None


def test_the_cli_picks_the_shipped_prior_unless_told_otherwise():
  prior = G.trained_prior("fashion_mnist")
  assert gen_cli.checkpoint_path(_args("--method", "glad", "--objective", "dm"), "glad") == prior
  assert gen_cli.checkpoint_path(_args("--method", "latentdd", "--objective", "dm"), "latentdd") == prior
  assert gen_cli.checkpoint_path(_args("--method", "gendm", "--objective", "dm"), "gendm") is None
  random = _args("--method", "glad", "--objective", "dm", "--gen-checkpoint", "random")
  assert gen_cli.checkpoint_path(random, "glad") is None
  shaped = _args("--method", "glad", "--objective", "dm", "--gen-widths", "8,4,4")
  assert gen_cli.checkpoint_path(shaped, "glad") is None  # a shape flag asks for a random G of that shape
  other = _args("--method", "glad", "--objective", "dm", "--dataset", "cifar10")
  assert gen_cli.checkpoint_path(other, "glad") is None
  spec = data_lib.get_spec("cifar10")
  with pytest.raises(ValueError, match="no trained prior ships for 'cifar10'"):
    gen_cli._generator(_args("--method", "latentdd", "--objective", "dm", "--dataset", "cifar10"), spec, "latentdd")


def _class_means(images, labels):
  return np.stack([np.asarray(images)[np.asarray(labels) == c].mean(0) for c in range(NC)])


def test_the_shipped_prior_draws_images_of_their_class(data_dir):
  """Samples of class c from the trained prior are closer to the real mean of class c than to any other class'
  real mean for most classes; a random generator of the same shape does not do that."""
  from jaxdistill import gan
  gen, params, meta = G.load_generator(G.trained_prior("fashion_mnist"))
  assert gen.arch == "style" and (gen.config.resolution, gen.config.channels) == (28, 1)
  assert "train_generator" in meta["trained_by"]
  x, y, _ = data_lib.load("fashion_mnist", "test[:2000]", data_dir=data_dir)
  real = _class_means(x, y)
  labels = jnp.repeat(jnp.arange(NC, dtype=jnp.int32), 20)

  def matched(p):
    fake = _class_means(gan.sample(gen, p, jax.random.PRNGKey(0), labels), labels)
    d = ((fake[:, None] - real[None]) ** 2).reshape(NC, NC, -1).sum(-1)  # [fake class, real class]
    return int(np.sum(np.argmin(d, 1) == np.arange(NC)))

  assert matched(params) >= 8
  assert matched(G.init_generator(gen, jax.random.PRNGKey(1))) <= 3


def test_gendm_starts_from_a_shipped_prior_of_its_exact_shape(tmp_path, monkeypatch):
  """A shipped ``<dataset>.<tag>.npz`` whose config equals the requested decoder initialises GenDM; another shape
  or ``--gen-checkpoint random`` gets a random generator."""
  dec = G.make_generator("decoder", widths=(8, 8, 4), z_dim=8, embed_dim=4)
  params = G.init_generator(dec, jax.random.PRNGKey(5))
  G.save_generator(str(tmp_path / "fashion_mnist.decoder_tiny.npz"), dec, params)
  monkeypatch.setattr(G, "PRIOR_DIR", str(tmp_path))
  assert G.trained_prior("fashion_mnist", dec) == str(tmp_path / "fashion_mnist.decoder_tiny.npz")
  assert G.trained_prior("fashion_mnist", G.make_generator("decoder", widths=(8, 8, 8), z_dim=8)) is None
  assert G.trained_prior("mnist", dec) is None
  assert G.trained_priors() == ()  # no GLaD prior (<dataset>.npz) in this folder
  spec = data_lib.get_spec("fashion_mnist")
  flags = ("--method", "gendm", "--objective", "dm", "--gen-widths", "8,8,4", "--gen-z-dim", "8",
           "--gen-embed-dim", "4")
  gen, got, from_file, source = gen_cli._generator(_args(*flags), spec, "gendm")
  assert gen == dec and "fashion_mnist.decoder_tiny.npz" in source and not from_file
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params)))
  _, rand, _, source = gen_cli._generator(_args(*flags, "--gen-checkpoint", "random"), spec, "gendm")
  assert source.startswith("random") and not np.array_equal(jax.tree_util.tree_leaves(rand)[0],
                                                            jax.tree_util.tree_leaves(params)[0])
