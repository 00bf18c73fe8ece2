"""The generic distillation loop: bit-for-bit resume, config validation, checkpoints, and a small real
problem where each method must beat its initialisation and a random real subset."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import loop, objectives, synthetic
from jaxdistill.data import load, random_subset

NC = 10


@pytest.fixture(scope="module")
def small():
  """A 2000-image Fashion-MNIST training slice (normalised)."""
  x, y, _ = load("fashion_mnist", "train[:2000]")
  return x, y


def _run(small, method, iterations, path=None, resume=False, seed=0, **loop_kw):
  x, y = small
  cfg = objectives.default_config(method, width=8, **({"outer_loop": 2, "inner_loop": 1}
                                                      if method in ("dc", "dsa") else {}))
  obj = objectives.make_objective(method, cfg, num_classes=NC, image_shape=x.shape[1:], ipc=2)
  syn = synthetic.init_pixels(jax.random.PRNGKey(seed), "real", x, y, NC, 2)
  lc = loop.LoopConfig(iterations=iterations, real_per_class=8, lr_img=0.1, **loop_kw)
  return loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, jax.random.PRNGKey(seed + 1), lc,
                      checkpoint_path=path, resume=resume, progress=False)


def _leaves(state):
  return [np.asarray(v) for v in jax.tree_util.tree_leaves(state)]


@pytest.mark.parametrize("method", [pytest.param("dsa", marks=pytest.mark.slow), "dm"])
def test_resume_reproduces_uninterrupted_run_bit_for_bit(small, method, tmp_path):
  full = _run(small, method, 5)
  path = str(tmp_path / "ckpt.npz")
  first = _run(small, method, 2, path=path)
  assert os.path.exists(path) and first.state.step == 2
  resumed = _run(small, method, 5, path=path, resume=True)
  assert resumed.start_iteration == 2
  for a, b in zip(_leaves(full.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(full.losses, resumed.losses)
  # The images did move (the comparison above is not vacuous).
  x0 = synthetic.init_pixels(jax.random.PRNGKey(0), "real", *small, NC, 2).params["images"]
  assert not np.allclose(np.asarray(x0), np.asarray(full.state.syn.params["images"]))


def test_resume_with_another_key_is_refused(small, tmp_path):
  path = str(tmp_path / "ckpt.npz")
  _run(small, "dm", 1, path=path)
  with pytest.raises(ValueError, match="key"):
    _run(small, "dm", 2, path=path, resume=True, seed=5)


def test_checkpoint_roundtrip_rejects_other_structure(small, tmp_path):
  path = str(tmp_path / "ckpt.npz")
  res = _run(small, "dm", 1, path=path)
  state, losses, meta = loop.load_checkpoint(path, res.state, jax.random.PRNGKey(1))
  assert meta["step"] == 1 and len(losses) == 1
  other = res.state._replace(obj_state={"extra": jnp.zeros(3)})
  with pytest.raises(ValueError, match="arrays"):
    loop.load_checkpoint(path, other, jax.random.PRNGKey(1))


def test_orbax_checkpoint_directory_resumes_bit_for_bit(small, tmp_path):
  """A checkpoint path not ending in .npz is an orbax directory (multi-host-safe saves): same resume, same checks;
  one committed save kept."""
  full = _run(small, "dm", 4)
  path = str(tmp_path / "ckpt.orbax")
  first = _run(small, "dm", 2, path=path, checkpoint_every=1)
  assert first.state.step == 2 and sorted(os.listdir(path)) == ["step_00000002"]
  resumed = _run(small, "dm", 4, path=path, resume=True)
  assert resumed.start_iteration == 2 and sorted(os.listdir(path)) == ["step_00000004"]
  for a, b in zip(_leaves(full.state), _leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(full.losses, resumed.losses)
  state, losses, meta = loop.load_checkpoint(path, resumed.state, jax.random.PRNGKey(1))
  assert meta["step"] == 4 and len(losses) == 4
  with pytest.raises(ValueError, match="key"):
    loop.load_checkpoint(path, resumed.state, jax.random.PRNGKey(7))
  with pytest.raises(ValueError, match="arrays"):
    loop.load_checkpoint(path, resumed.state._replace(obj_state={"extra": jnp.zeros(3)}), jax.random.PRNGKey(1))
  empty = tmp_path / "empty.orbax"
  empty.mkdir()
  with pytest.raises(ValueError, match="no orbax checkpoint"):
    loop.load_checkpoint(str(empty), resumed.state, jax.random.PRNGKey(1))


@pytest.mark.parametrize("bad, match", [
    (dict(optimizer="rmsprop"), "optimizer"), (dict(iterations=0), "iterations"),
    (dict(lr_img=-1.0), "lr_img"), (dict(momentum=1.5), "momentum"), (dict(real_per_class=0), "real_per_class"),
    (dict(eval_every=-1), "eval_every")])
def test_bad_loop_config_raises(bad, match):
  with pytest.raises(ValueError, match=match):
    loop.LoopConfig(**bad).validate()


def test_real_per_class_larger_than_class_raises(small):
  x, y = small
  obj = objectives.make_objective("dm", objectives.default_config("dm", width=8), num_classes=NC,
                                  image_shape=x.shape[1:], ipc=1)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, NC, 1)
  with pytest.raises(ValueError, match="real_per_class"):
    loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, jax.random.PRNGKey(0),
                 loop.LoopConfig(iterations=1, real_per_class=5000), progress=False)


def test_init_pixels_modes(small):
  x, y = small
  s = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, NC, 3)
  assert s.params["images"].shape == (30,) + x.shape[1:]
  np.testing.assert_array_equal(np.asarray(s.const["labels"]), np.repeat(np.arange(NC), 3))
  # Each real-initialised image is a training image of its own class.
  for img, lab in zip(np.asarray(s.params["images"]), np.asarray(s.const["labels"])):
    match = np.flatnonzero(np.all(x.reshape(len(x), -1) == img.reshape(1, -1), axis=1))
    assert match.size and y[match[0]] == lab
  n = synthetic.init_pixels(jax.random.PRNGKey(0), "noise", x, y, NC, 2)
  assert abs(float(jnp.std(n.params["images"])) - 1.0) < 0.05
  assert synthetic.storage_pixels(n) == 20 * 28 * 28
  with pytest.raises(ValueError, match="init"):
    synthetic.init_pixels(jax.random.PRNGKey(0), "gan", x, y, NC, 2)


def test_eval_every_calls_evaluator(small):
  calls = []
  x, y = small
  obj = objectives.make_objective("dm", objectives.default_config("dm", width=8), num_classes=NC,
                                  image_shape=x.shape[1:], ipc=1)
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, NC, 1)
  res = loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, jax.random.PRNGKey(0),
                     loop.LoopConfig(iterations=4, real_per_class=4, eval_every=2),
                     evaluator=lambda b, k: calls.append(b.images.shape) or "ok", progress=False)
  assert calls == [(10, 28, 28, 1)] * 2 and [i for i, _ in res.evals] == [2, 4]
  assert res.losses.shape == (4,) and np.all(np.isfinite(res.losses))


# --- a small real problem: Fashion-MNIST, IPC 1, ConvNet-16 --------------------------------------------------
# Settings measured (2 seeds, 4 evaluation models, see the report): DM 200 iterations from real images:
# init 0.43-0.47 -> 0.70, random subsets 0.54-0.58.
REAL_SETTINGS = {
    "dm": dict(init="real", iterations=150, lr_img=1.0),
    "dm_l1": dict(init="real", iterations=150, lr_img=1.0),
    "dc": dict(init="noise", iterations=100, lr_img=0.1),
    "dsa": dict(init="real", iterations=100, lr_img=0.1),
}


@pytest.fixture(scope="module")
def real_problem():
  x, y, _ = load("fashion_mnist", "train[:5000]")
  tx, ty, _ = load("fashion_mnist", "test[:1000]")
  evaluator = loop.make_evaluator(tx, ty, NC, "convnet", 4, 100, dsa=None, model_kwargs={"width": 16})
  pos = random_subset(jax.random.PRNGKey(50), y, NC, 1).reshape(-1)
  rand = evaluator(synthetic.SyntheticBatch(x[pos], y[pos]), jax.random.PRNGKey(100))
  return x, y, evaluator, rand.mean


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(REAL_SETTINGS))
def test_method_beats_its_initialisation_and_a_random_subset(real_problem, method):
  x, y, evaluator, random_acc = real_problem
  s = REAL_SETTINGS[method]
  key = jax.random.PRNGKey(0)
  syn = synthetic.init_pixels(key, s["init"], x, y, NC, 1)
  obj = objectives.make_objective(method, objectives.default_config(method, width=16), num_classes=NC,
                                  image_shape=x.shape[1:], ipc=1)
  out = loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, key,
                     loop.LoopConfig(iterations=s["iterations"], real_per_class=32, lr_img=s["lr_img"]),
                     progress=False)
  before = evaluator(synthetic.PIXELS.render(syn), jax.random.PRNGKey(100)).mean
  after = evaluator(synthetic.PIXELS.render(out.state.syn), jax.random.PRNGKey(100)).mean
  print(f"{method}: init {before:.3f} -> distilled {after:.3f}; random subset {random_acc:.3f}")
  assert after > before + 0.02
  assert after > random_acc + 0.02


def test_cosine_schedule_and_lamb_image_optimiser():
  """``lr_schedule="cosine"``: plain SGD's update at step t is ``-lr·½(1+cos(πt/T))·g`` (FRePo's schedule);
  LAMB builds and moves the parameters; an unknown schedule is a ValueError naming the field."""
  import math

  import optax as _optax

  cfg = loop.LoopConfig(iterations=8, lr_img=0.5, momentum=0.0, lr_schedule="cosine").validate()
  tx = loop.make_optimizer(cfg)
  params = {"images": jnp.ones((3,))}
  state = tx.init(params)
  g = {"images": jnp.asarray([1.0, -2.0, 0.5])}
  for t in range(8):
    upd, state = tx.update(g, state, params)
    want = -0.5 * 0.5 * (1 + math.cos(math.pi * t / 8)) * g["images"]
    np.testing.assert_allclose(upd["images"], want, rtol=1e-5, atol=1e-7)
  lamb = loop.make_optimizer(loop.LoopConfig(iterations=8, lr_img=0.1, optimizer="lamb").validate())
  upd, _ = lamb.update(g, lamb.init(params), params)
  new = _optax.apply_updates(params, upd)
  assert not np.allclose(new["images"], params["images"])
  floor = loop.make_optimizer(loop.LoopConfig(iterations=8, lr_img=0.5, momentum=0.0, lr_schedule="cosine",
                                              lr_final_fraction=0.1).validate())
  st = floor.init(params)
  for t in range(9):  # FRePo's floor: lr (0.1 + 0.9 * cosine), 0.1 * lr from step T on
    upd, st = floor.update(g, st, params)
    c = 0.5 * (1 + math.cos(math.pi * min(t, 8) / 8))
    np.testing.assert_allclose(upd["images"], -0.5 * (0.1 + 0.9 * c) * g["images"], rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="lr_schedule"):
    loop.LoopConfig(lr_schedule="linear").validate()
  with pytest.raises(ValueError, match="lr_final_fraction"):
    loop.LoopConfig(lr_final_fraction=1.5).validate()
