"""FTD (Du et al., CVPR 2023): sharpness-aware ("flat") expert training and the EMA of the synthetic set.

The (G/A)SAM direction equals the NumPy formulas on a quadratic and on a tiny MLP, ``sam_rho = 0`` is plain SGD
bit for bit (same trajectories, same buffer identity), a flat buffer's first step is the hand-computed GSAM step
and its identity differs from a plain one; the loop's EMA follows ``e ← d e + (1 − d) p`` over steps, evaluation
sees it, a checkpoint/resume keeps it, and ``ema_decay=None`` changes nothing; a 2-iteration ``ftd`` run on a flat
buffer of real Fashion-MNIST gives finite losses."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import buffers as buffers_cli
from experiments import names
from jaxdistill import experts, loop, models, objectives, synthetic, training
from jaxdistill.objectives.base import Objective

NC = 10
SHAPE = (28, 28, 1)


def _np_sam(g, g_p_fn, theta, rho, alpha=0.0, adaptive=False, eps=1e-12):
  """The GSAM / ASAM arithmetic of FTD's ``buffer/gsam/gsam.py`` in float64 NumPy on flat vectors; ``g_p_fn``
  gives the gradient at a perturbed point."""
  g, theta = np.asarray(g, np.float64), np.asarray(theta, np.float64)
  norm = np.linalg.norm(np.abs(theta) * g if adaptive else g)
  e = rho * g / (norm + eps) * (theta ** 2 if adaptive else 1.0)
  g_p = np.asarray(g_p_fn(theta + e), np.float64)
  gn, gpn = np.linalg.norm(g), np.linalg.norm(g_p)
  cos = g @ g_p / (gn * gpn + eps)
  vertical = g - cos * gn * g_p / (gpn + eps)
  return g_p - alpha * vertical


@pytest.mark.parametrize("alpha, adaptive", [(0.0, False), (0.4, True), (0.4, False), (0.0, True)])
def test_sam_gradient_matches_numpy_on_a_quadratic(rng, alpha, adaptive):
  a = rng.normal(size=(5, 5))
  a = a @ a.T + np.eye(5)
  b = rng.normal(size=5)
  theta = {"u": jnp.asarray(rng.normal(size=2), jnp.float32), "v": jnp.asarray(rng.normal(size=3), jnp.float32)}
  flat0, unflat = ravel_pytree(theta)

  def loss_fn(p):
    x = ravel_pytree(p)[0]
    return 0.5 * x @ jnp.asarray(a, jnp.float32) @ x + jnp.asarray(b, jnp.float32) @ x, {"x": x}

  sam = training.SAM(0.3, alpha, adaptive)
  (value, aux), d = training.sam_gradient(loss_fn, theta, sam)
  x0 = np.asarray(flat0, np.float64)
  want = _np_sam(a @ x0 + b, lambda x: a @ x + b, x0, 0.3, alpha, adaptive)
  np.testing.assert_allclose(np.asarray(ravel_pytree(d)[0]), want, rtol=1e-4, atol=1e-5)
  assert float(value) == pytest.approx(0.5 * x0 @ a @ x0 + b @ x0, rel=1e-5)  # the unperturbed loss
  np.testing.assert_array_equal(np.asarray(aux["x"]), np.asarray(flat0))
  # The SAM direction is not the plain gradient (the perturbation matters).
  assert np.abs(want - (a @ x0 + b)).max() > 1e-3


def _mlp_batch(fmnist_subset):
  x, y = fmnist_subset
  return jnp.asarray(x[:12]), jnp.asarray(y[:12])


@pytest.mark.parametrize("alpha, adaptive", [(0.0, False), (0.4, True)])
def test_sam_train_step_is_the_hand_computed_step_on_a_tiny_mlp(fmnist_subset, alpha, adaptive):
  x, y = _mlp_batch(fmnist_subset)
  model = models.get_model("mlp", NC, SHAPE, width=8)
  tx = training.sgd(0.1, momentum=0.0, weight_decay=0.0)
  state = training.init_state(model, jax.random.PRNGKey(0), SHAPE, tx)
  theta0, unflat = ravel_pytree(state.variables["params"])
  grad = jax.jit(jax.grad(lambda t: training.cross_entropy(model.apply({"params": unflat(t)}, x), y)))
  new, loss = training.train_step(model, tx, state, x, y, jax.random.PRNGKey(1),
                                  sam=training.SAM(0.05, alpha, adaptive))
  d = _np_sam(grad(theta0), lambda t: grad(jnp.asarray(t, jnp.float32)), theta0, 0.05, alpha, adaptive)
  got = np.asarray(ravel_pytree(new.variables["params"])[0])
  np.testing.assert_allclose(got, np.asarray(theta0) - 0.1 * d, rtol=1e-5, atol=1e-6)
  plain, plain_loss = training.train_step(model, tx, state, x, y, jax.random.PRNGKey(1))
  assert float(loss) == float(plain_loss)  # the reported loss is the unperturbed one
  assert np.abs(got - np.asarray(ravel_pytree(plain.variables["params"])[0])).max() > 1e-6
  # sam=None is the plain step exactly.
  none, _ = training.train_step(model, tx, state, x, y, jax.random.PRNGKey(1), sam=None)
  for a_, b_ in zip(jax.tree_util.tree_leaves(none), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a_), np.asarray(b_))


def _cfg(**kw):
  base = dict(arch="mlp", width=8, num_experts=1, experts_per_shard=1, epochs=1, batch_size=100, dsa=False,
              lr=0.2, vmap_experts=False)
  base.update(kw)
  return experts.ExpertConfig(**base)


@pytest.fixture(scope="module")
def small(fmnist_train):
  x, y, _ = fmnist_train
  return x[:100], y[:100], x[1000:1100], y[1000:1100]


def _train(cfg, small, out, **kw):
  return experts.train_experts(cfg, *small, NC, str(out), dataset="fashion_mnist", split="train[:100]",
                               progress=False, **kw)


def test_flat_expert_step_is_gsam_and_plain_rho_zero_is_sgd(small, tmp_path):
  # One epoch with batch = all 100 images and no DSA is one step: θ1 = θ0 − lr d(θ0).
  flat_meta = _train(_cfg(sam_rho=0.05), small, tmp_path / "flat")
  plain_meta = _train(_cfg(), small, tmp_path / "plain")
  zero_meta = _train(_cfg(sam_rho=0.0, sam_alpha=0.1, sam_adaptive=False), small, tmp_path / "zero")
  flat = experts.load_buffer(str(tmp_path / "flat")).params
  plain = experts.load_buffer(str(tmp_path / "plain")).params
  zero = experts.load_buffer(str(tmp_path / "zero")).params
  model = models.get_model("mlp", NC, SHAPE, width=8)
  unflat = experts.unflattener(model, SHAPE)[0]
  x, y = jnp.asarray(small[0]), jnp.asarray(small[1])
  grad = jax.jit(jax.grad(lambda t: training.cross_entropy(model.apply({"params": unflat(t)}, x), y)))
  theta0 = flat[0, 0]
  np.testing.assert_array_equal(theta0, plain[0, 0])  # same initialisation
  d = _np_sam(grad(jnp.asarray(theta0)), lambda t: grad(jnp.asarray(t, jnp.float32)), theta0, 0.05, 0.4, True)
  np.testing.assert_allclose(flat[0, 1], theta0 - 0.2 * d, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(plain[0, 1], theta0 - 0.2 * np.asarray(grad(jnp.asarray(theta0))), rtol=1e-4,
                             atol=1e-6)
  assert np.abs(flat[0, 1] - plain[0, 1]).max() > 1e-6
  # sam_rho = 0: plain SGD exactly, whatever the other SAM fields say.
  np.testing.assert_array_equal(zero, plain)
  assert experts.ExpertConfig(sam_rho=0.0).sam() is None
  assert flat_meta["sam_rho"] == 0.05 and flat_meta["sam_alpha"] == 0.4 and flat_meta["sam_adaptive"] is True
  assert plain_meta["sam_rho"] == 0.0 and zero_meta["sam_rho"] == 0.0
  # Identity: a plain buffer's identity has no SAM fields (old shards still resume) and rho 0 buffers resume into
  # each other; a flat shard is refused by a plain resume and one of another rho.
  ident = experts._identity_config(_cfg(sam_rho=0.0, sam_alpha=0.1))
  assert not any(k.startswith("sam_") for k in ident) and ident == experts._identity_config(_cfg())
  assert _train(_cfg(sam_alpha=0.1), small, tmp_path / "plain", resume=True)["complete"]
  with pytest.raises(ValueError, match="another configuration"):
    _train(_cfg(), small, tmp_path / "flat", resume=True)
  with pytest.raises(ValueError, match="another configuration"):
    _train(_cfg(sam_rho=0.1), small, tmp_path / "flat", resume=True)
  # A buffer.json written before the field existed reads as plain SGD.
  path = tmp_path / "plain" / experts.METADATA_FILE
  meta = json.loads(path.read_text())
  del meta["sam_rho"]
  path.write_text(json.dumps(meta))
  assert experts.read_metadata(str(tmp_path / "plain"))["sam_rho"] == 0.0


@pytest.mark.parametrize("bad", [{"sam_rho": -0.1}, {"sam_alpha": 1.5}, {"sam_adaptive": 1}])
def test_sam_settings_are_validated(bad):
  with pytest.raises(ValueError, match=next(iter(bad))):
    _cfg(**bad).validate()


def test_buffers_cli_flat_flags():
  parse = lambda *a: buffers_cli.build_parser().parse_args(["--out", "x", *a])
  assert buffers_cli.sam_rho(parse()) == 0.0
  assert buffers_cli.sam_rho(parse("--flat")) == buffers_cli.FLAT_SAM_RHO == 0.01
  assert buffers_cli.sam_rho(parse("--flat", "--sam-rho", "0.05")) == 0.05
  assert buffers_cli.sam_rho(parse("--sam-rho", "0")) == 0.0
  with pytest.raises(SystemExit):
    parse("--sam-rho", "-1")


# -- the EMA of the synthetic set ---------------------------------------------------------------------------------

def _toy_objective(target):
  """``Σ (images − target)²`` (no randomness): the loop's SGD moves the images towards ``target``."""
  def loss(state, syn, real, key):
    return jnp.sum(jnp.square(syn.images - target)), {}
  return Objective("toy", lambda key: {}, loss, None, None)


@pytest.fixture(scope="module")
def toy(fmnist_subset):
  x, y = fmnist_subset
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, NC, 1)
  target = jnp.asarray(np.random.default_rng(1).normal(size=syn.params["images"].shape), jnp.float32)
  return x, y, syn, _toy_objective(target)


def test_ema_follows_the_formula_over_steps(toy):
  x, y, syn, obj = toy
  cfg = loop.LoopConfig(iterations=4, real_per_class=1, lr_img=0.05, ema_decay=0.7)
  index = loop.class_index(np.asarray(y), NC)
  step = loop.make_step(obj, synthetic.PIXELS, cfg, index, NC)
  state = loop.init_state(obj, syn, jax.random.PRNGKey(0), cfg)
  ema = np.asarray(syn.params["images"], np.float64)
  np.testing.assert_array_equal(np.asarray(state.ema["images"]), np.asarray(syn.params["images"]))
  for _ in range(4):
    state, _ = step(state, jax.random.PRNGKey(0), jnp.asarray(x))
    ema = 0.7 * ema + 0.3 * np.asarray(state.syn.params["images"], np.float64)
    np.testing.assert_allclose(np.asarray(state.ema["images"]), ema, rtol=1e-5, atol=1e-6)
  assert np.abs(ema - np.asarray(state.syn.params["images"])).max() > 1e-3  # the EMA lags the params
  # Without ema_decay: no EMA, the same leaves as before the option existed, the same params.
  plain_cfg = loop.LoopConfig(iterations=4, real_per_class=1, lr_img=0.05)
  plain = loop.init_state(obj, syn, jax.random.PRNGKey(0), plain_cfg)
  assert plain.ema is None
  n_syn = len(jax.tree_util.tree_leaves(syn.params))
  assert len(jax.tree_util.tree_leaves(state)) == len(jax.tree_util.tree_leaves(plain)) + n_syn
  plain_step = loop.make_step(obj, synthetic.PIXELS, plain_cfg, index, NC)
  for _ in range(4):
    plain, _ = plain_step(plain, jax.random.PRNGKey(0), jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(plain.syn.params["images"]), np.asarray(state.syn.params["images"]))
  with pytest.raises(ValueError, match="ema_decay"):
    loop.LoopConfig(ema_decay=1.0).validate()


def test_distill_evaluates_and_returns_the_ema_and_resume_keeps_it(toy, tmp_path):
  x, y, syn, obj = toy
  seen = []

  def evaluator(batch, key):
    seen.append(np.asarray(batch.images))
    return "ok"

  cfg = loop.LoopConfig(iterations=4, real_per_class=1, lr_img=0.05, ema_decay=0.5, eval_every=4)
  key = jax.random.PRNGKey(3)
  full = loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, key, cfg, evaluator=evaluator, progress=False)
  assert full.ema is not None
  np.testing.assert_array_equal(np.asarray(full.ema.params["images"]), np.asarray(full.state.ema["images"]))
  np.testing.assert_array_equal(seen[-1], np.asarray(full.ema.params["images"]))  # evaluation saw the EMA
  assert not np.allclose(seen[-1], np.asarray(full.state.syn.params["images"]))
  ckpt = str(tmp_path / "ckpt.npz")
  half = dataclasses.replace(cfg, iterations=2, eval_every=0)
  loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, key, half, checkpoint_path=ckpt, progress=False)
  resumed = loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, key, dataclasses.replace(cfg, eval_every=0),
                         checkpoint_path=ckpt, resume=True, progress=False)
  assert resumed.start_iteration == 2
  np.testing.assert_allclose(np.asarray(resumed.ema.params["images"]), np.asarray(full.ema.params["images"]),
                             rtol=1e-6, atol=1e-7)
  plain = loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, key,
                       dataclasses.replace(cfg, ema_decay=None, eval_every=0), progress=False)
  assert plain.ema is None and plain.state.ema is None
  np.testing.assert_array_equal(np.asarray(plain.state.syn.params["images"]),
                                np.asarray(full.state.syn.params["images"]))


# -- FTD end to end ------------------------------------------------------------------------------------------------

def test_ftd_is_registered_with_its_defaults():
  assert "ftd" in objectives.METHODS and "ftd" in names.OBJECTIVES
  cfg = objectives.default_config("ftd")
  assert (cfg.syn_steps, cfg.expert_epochs, cfg.max_start_epoch, cfg.lr_init, cfg.lr_lr) == (30, 2, 20, 0.001, 1e-5)
  assert objectives.method_defaults("ftd") == objectives.MethodDefaults(100.0, 5000, 1, "real")


def test_ftd_two_iterations_on_a_flat_buffer(small, fmnist_train, tmp_path):
  out = tmp_path / "flat"
  _train(_cfg(epochs=2, batch_size=50, sam_rho=0.01), small, out)
  x, y, _ = fmnist_train
  cfg = objectives.default_config("ftd", buffer=str(out), arch="mlp", width=8, syn_steps=2, expert_epochs=1,
                                  max_start_epoch=1, dsa=False)
  obj = objectives.make_objective("ftd", cfg, num_classes=NC, image_shape=SHAPE, ipc=1)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, NC, 1, learn_lr=cfg.lr_init)
  lc = loop.LoopConfig(iterations=2, real_per_class=1, lr_img=objectives.method_defaults("ftd").lr_img,
                       param_lrs=cfg.param_lrs(), ema_decay=0.9995)
  res = loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, jax.random.PRNGKey(1), lc, progress=False)
  assert res.losses.shape == (2,) and np.all(np.isfinite(res.losses))
  images, ema = np.asarray(res.state.syn.params["images"]), np.asarray(res.ema.params["images"])
  start = np.asarray(syn.params["images"])
  assert np.abs(images - start).max() > 0
  # Two steps of d = 0.9995 leave the EMA within 0.1 % of the way from the start to the params.
  np.testing.assert_allclose(ema, start, atol=2e-3 * np.abs(images - start).max() + 1e-7)
