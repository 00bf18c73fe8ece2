"""HaBa as the reference code trains it (Huage001/DatasetFactorization distill_fac.py): two distinct random
hallucinators per basis in the training render, all pairs at evaluation, and the adversarial contrastive term
(a feature extractor trained with CE + likelihood + SupCon; the set pays λ_club · mean((cos + 1) / 2)) added
to any objective through ``with_regulariser``."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import loop, objectives, synthetic
from jaxdistill.augment import DSAParams
from jaxdistill.objectives import Objective, RealBatch, Regulariser, with_regulariser
from jaxdistill.synthetic import SyntheticBatch
from jaxdistill.synthetic import haba

NC, BC, H = 2, 2, 4
SHAPE = (8, 8, 1)
N = NC * BC  # bases


def _config(**kw):
  base = dict(bases_per_class=BC, hallucinators=H, width=4, init="noise", enforce_budget=False,
              extractor_width=4)
  base.update(kw)
  return synthetic.HaBaConfig(**base)


def _marked_state(config, key=0):
  """A HaBa state whose hallucinator ``j`` maps ``b`` to ``b + 10 (j + 1)`` (decoder kernel zero, decoder bias
  ``10 (j + 1)``), so every image names the hallucinator that made it."""
  state = synthetic.init_haba(jax.random.PRNGKey(key), config, np.zeros((1,) + SHAPE, np.float32), None, NC, 1)
  hals = state.params["hallucinators"]
  dec = dict(hals["params"]["decoder"])
  dec["kernel"] = jnp.zeros_like(dec["kernel"])
  dec["bias"] = jnp.broadcast_to(10.0 * (jnp.arange(config.hallucinators, dtype=jnp.float32) + 1)[:, None],
                                 dec["bias"].shape)
  hals = {"params": {**hals["params"], "decoder": dec}}
  return state._replace(params={**state.params, "hallucinators": hals})


def _decode(images, bases, views):
  """Hallucinator index of every image ``[N·V, ...]`` of the marked state: ``[N, V]``."""
  diff = np.asarray(images).reshape((N, views) + SHAPE) - np.asarray(bases)[:, None]
  j = np.rint(diff.mean(axis=(2, 3, 4)) / 10.0).astype(int) - 1
  np.testing.assert_allclose(diff, 10.0 * (j + 1)[:, :, None, None, None] * np.ones_like(diff), atol=1e-5)
  return j


def test_config_validation():
  assert _config().validate().pairs == "sampled" and _config().contrastive == 0.1
  with pytest.raises(ValueError, match=r"pairs must be one of \['sampled', 'all'\], got 'every'"):
    _config(pairs="every").validate()
  with pytest.raises(ValueError, match="hallucinators must be an integer >= 2 with pairs='sampled'"):
    _config(hallucinators=1).validate()
  with pytest.raises(ValueError, match="hallucinators must be an integer >= 2"):
    _config(hallucinators=1, pairs="all").validate()  # contrastive 0.1 needs two hallucinators too
  assert _config(hallucinators=1, pairs="all", contrastive=0.0).validate().hallucinators == 1
  with pytest.raises(ValueError, match="contrastive must be a number >= 0"):
    _config(contrastive=-0.1).validate()
  with pytest.raises(ValueError, match="extractor_lr must be a number > 0"):
    _config(extractor_lr=0.0).validate()
  with pytest.raises(ValueError, match="extractor_width must be an integer >= 1"):
    _config(extractor_width=0).validate()
  with pytest.raises(ValueError, match="hallucinators must be >= 2"):
    haba.draw_pairs(jax.random.PRNGKey(0), 3, 1)


def test_sampled_render_two_distinct_hallucinators_per_basis():
  cfg = _config()
  state = _marked_state(cfg)
  param = synthetic.haba_parameterisation(cfg, NC, SHAPE)
  assert param.needs_key
  key = jax.random.PRNGKey(3)
  batch = param.render(state, key)
  assert batch.images.shape == (N * 2,) + SHAPE
  np.testing.assert_array_equal(batch.labels, np.repeat(np.arange(NC), 2 * BC))
  j = _decode(batch.images, state.params["bases"], 2)
  assert np.all(j[:, 0] != j[:, 1]) and np.all((0 <= j) & (j < H))
  np.testing.assert_array_equal(j, haba.draw_pairs(key, N, H))
  np.testing.assert_array_equal(param.render(state, key).images, batch.images)  # same key, same draw
  draws = {tuple(_decode(param.render(state, jax.random.PRNGKey(k)).images, state.params["bases"], 2).ravel())
           for k in range(6)}
  assert len(draws) > 1
  assert synthetic.train_images_per_class(cfg) == 2 * BC
  assert synthetic.train_images_per_class(_config(pairs="all")) == BC * H


def test_draw_pairs_covers_every_ordered_pair():
  j = np.asarray(haba.draw_pairs(jax.random.PRNGKey(0), 6000, 3))
  assert np.all(j[:, 0] != j[:, 1])
  counts = np.bincount(j[:, 0] * 3 + j[:, 1], minlength=9).reshape(3, 3)
  assert np.all(np.diag(counts) == 0)
  off = counts[~np.eye(3, dtype=bool)]
  assert off.min() > 850 and off.max() < 1150  # 1000 expected for each of the 6 ordered pairs


def test_gradient_reaches_only_the_chosen_hallucinators():
  cfg = _config()
  state = _marked_state(cfg)
  # A random decoder kernel so every parameter of a chosen hallucinator matters.
  hals = state.params["hallucinators"]
  dec = dict(hals["params"]["decoder"])
  dec["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(1), dec["kernel"].shape)
  state = state._replace(params={**state.params,
                                 "hallucinators": {"params": {**hals["params"], "decoder": dec}}})
  param = synthetic.haba_parameterisation(cfg, NC, SHAPE)
  key = next(jax.random.PRNGKey(k) for k in range(200)
             if len(set(np.asarray(haba.draw_pairs(jax.random.PRNGKey(k), N, H)).ravel())) < H)
  chosen = set(np.asarray(haba.draw_pairs(key, N, H)).ravel().tolist())
  weights = jax.random.normal(jax.random.PRNGKey(2), (N * 2,) + SHAPE)

  def objective(params):
    return jnp.sum(weights * param.render(state._replace(params=params), key).images)

  grads = jax.grad(objective)(state.params)["hallucinators"]
  for j in range(H):
    leaves = [np.asarray(g[j]) for g in jax.tree_util.tree_leaves(grads)]
    if j in chosen:
      assert all(np.any(g != 0) for g in leaves), j
    else:
      assert all(np.all(g == 0) for g in leaves), j


def test_evaluation_render_is_all_pairs():
  for pairs in ("sampled", "all"):
    cfg = _config(pairs=pairs)
    state = _marked_state(cfg)
    param = synthetic.haba_parameterisation(cfg, NC, SHAPE)
    assert param.needs_key == (pairs == "sampled")
    batch = param.render(state)
    assert batch.images.shape == (N * H,) + SHAPE
    np.testing.assert_array_equal(batch.labels, np.repeat(np.arange(NC), BC * H))
    np.testing.assert_array_equal(_decode(batch.images, state.params["bases"], H), np.tile(np.arange(H), (N, 1)))
    if pairs == "all":  # a key changes nothing
      np.testing.assert_array_equal(param.render(state, jax.random.PRNGKey(0)).images, batch.images)
  # Unmarked hallucinators: image (n·H + j) is hallucinator j applied to basis n.
  state = synthetic.init_haba(jax.random.PRNGKey(4), cfg, np.zeros((1,) + SHAPE, np.float32), None, NC, 1)
  images = synthetic.haba_parameterisation(cfg, NC, SHAPE).render(state).images
  hal = haba.Hallucinator(SHAPE[-1], cfg.width)
  for j in range(H):
    p = jax.tree_util.tree_map(lambda a, j=j: a[j], state.params["hallucinators"])
    np.testing.assert_allclose(images[j::H], hal.apply(p, state.params["bases"]), rtol=1e-5, atol=1e-5)


def _supcon_numpy(features, labels, t=0.07, bt=0.07):
  """Khosla et al. Eq. 2 by loops: every view an anchor, positives the other views of the same label."""
  n, v, _ = features.shape
  z = [features[i, a] for a in range(v) for i in range(n)]
  lab = [labels[i] for a in range(v) for i in range(n)]
  total = 0.0
  for a in range(len(z)):
    others = [k for k in range(len(z)) if k != a]
    denom = sum(np.exp(z[a] @ z[k] / t) for k in others)
    pos = [p for p in others if lab[p] == lab[a]]
    total += -(t / bt) * np.mean([np.log(np.exp(z[a] @ z[p] / t) / denom) for p in pos])
  return total / len(z)


@pytest.mark.parametrize("views", [2, 3])
def test_supcon_loss_matches_the_formula(views):
  rng = np.random.default_rng(views)
  f = rng.normal(size=(5, views, 6))
  f /= np.linalg.norm(f, axis=-1, keepdims=True)
  labels = np.array([0, 1, 0, 2, 1])
  for t, bt in ((0.07, 0.07), (0.5, 0.1)):
    got = haba.supcon_loss(jnp.asarray(f, jnp.float32), jnp.asarray(labels), t, bt)
    np.testing.assert_allclose(float(got), _supcon_numpy(f, labels, t, bt), rtol=1e-4)
  with pytest.raises(ValueError, match="features must be"):
    haba.supcon_loss(jnp.zeros((5, 6)), jnp.asarray(labels))
  with pytest.raises(ValueError, match="labels must be"):
    haba.supcon_loss(jnp.zeros((5, 2, 6)), jnp.zeros((4,), jnp.int32))


def _pair_batch(key=0):
  images = jax.random.normal(jax.random.PRNGKey(key), (N * 2,) + SHAPE)
  return SyntheticBatch(images, jnp.repeat(jnp.arange(NC, dtype=jnp.int32), 2 * BC))


def _cos(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_club_loss_by_hand_and_frozen_extractor():
  cfg = _config(contrastive=0.3)
  reg = synthetic.contrastive_regulariser(cfg, NC, SHAPE)
  state = reg.init(jax.random.PRNGKey(0))
  syn = _pair_batch()
  value, aux = reg.loss(state, syn, jax.random.PRNGKey(1))
  views = np.asarray(syn.images).reshape((N, 2) + SHAPE)
  x = jnp.concatenate([views[:, 0], views[:, 1]])
  _, feat = haba.ContentExtractor(NC, 4).apply({"params": state["params"]}, x)
  assert feat.shape == (2 * N, 4 * 1 * 1)  # depth 3 on 8×8: 1×1×width
  cos = _cos(feat[:N], feat[N:])
  np.testing.assert_allclose(float(value), 0.3 * np.mean((cos + 1) / 2), rtol=1e-5)
  np.testing.assert_allclose(float(aux["cos"]), np.mean(cos), rtol=1e-5, atol=1e-6)
  assert set(aux) == {"loss", "cos", "cls", "likeli", "contrast"}
  # Gradient reaches the images, not the extractor (held fixed for this term).
  g_img = jax.grad(lambda im: reg.loss(state, syn._replace(images=im), jax.random.PRNGKey(1))[0])(syn.images)
  assert np.any(np.asarray(g_img) != 0)
  g_state = jax.grad(lambda p: reg.loss({**state, "params": p}, syn, jax.random.PRNGKey(1))[0])(state["params"])
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(g_state))
  # With pairs="all" the regulariser draws its own two distinct views per basis from the key.
  reg_all = synthetic.contrastive_regulariser(_config(pairs="all"), NC, SHAPE)
  all_syn = SyntheticBatch(jax.random.normal(jax.random.PRNGKey(5), (N * H,) + SHAPE),
                           jnp.repeat(jnp.arange(NC, dtype=jnp.int32), BC * H))
  value, _ = reg_all.loss(reg_all.init(jax.random.PRNGKey(0)), all_syn, jax.random.PRNGKey(1))
  assert np.isfinite(float(value))
  with pytest.raises(ValueError, match="2 views per basis"):
    reg.loss(state, SyntheticBatch(syn.images[:3], syn.labels[:3]), jax.random.PRNGKey(1))


def test_extractor_update_is_one_sgd_step_on_its_losses():
  cfg = _config(extractor_lr=0.01)
  reg = synthetic.contrastive_regulariser(cfg, NC, SHAPE)
  state = reg.init(jax.random.PRNGKey(0))
  syn = _pair_batch()
  new = reg.update(state, syn, jax.random.PRNGKey(1))
  views = np.asarray(syn.images).reshape((N, 2) + SHAPE)
  x = jnp.concatenate([views[:, 0], views[:, 1]])
  labels = jnp.arange(N) // BC
  model = haba.ContentExtractor(NC, 4)

  def total(params):
    logits, feat = model.apply({"params": params}, x)
    parts = haba.content_losses(logits, feat, labels)
    return parts["cls"] + parts["likeli"] + parts["contrast"], parts

  grads, parts = jax.grad(total, has_aux=True)(state["params"])
  # The first SGD-with-momentum step is plain SGD: θ − lr · g.
  want = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, state["params"], grads)
  for a, b in zip(jax.tree_util.tree_leaves(new["params"]), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for k in ("cls", "likeli", "contrast"):
    np.testing.assert_allclose(float(new["last"][k]), float(parts[k]), rtol=1e-5)
  e0, e1 = model.apply({"params": state["params"]}, x)[1][:N], model.apply({"params": state["params"]}, x)[1][N:]
  np.testing.assert_allclose(float(parts["likeli"]), np.mean((1 - _cos(e0, e1)) / 2), rtol=1e-5, atol=1e-6)


def _dm(width=4):
  cfg = objectives.DistributionMatchingConfig(width=width, depth=1, dsa=False)
  return objectives.make_objective("dm", cfg, num_classes=NC, image_shape=SHAPE, ipc=2 * BC)


def test_with_regulariser_adds_the_loss_and_runs_both_updates():
  reg = synthetic.contrastive_regulariser(_config(), NC, SHAPE)
  inner = _dm()
  wrapped = with_regulariser(inner, reg)
  assert wrapped.name == "dm" and wrapped.config is inner.config and wrapped.host_update is None
  key = jax.random.PRNGKey(7)
  state = wrapped.init(key)
  assert set(state) == {"objective", "regulariser"}
  syn = _pair_batch()
  real = RealBatch(jax.random.normal(jax.random.PRNGKey(8), (NC, 3) + SHAPE),
                   jnp.repeat(jnp.arange(NC, dtype=jnp.int32)[:, None], 3, axis=1))
  k_in, k_reg = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  value, aux = wrapped.loss(state, syn, real, key)
  inner_value, inner_aux = inner.loss(state["objective"], syn, real, k_in)
  reg_value, _ = reg.loss(state["regulariser"], syn, k_reg)
  np.testing.assert_allclose(float(value), float(inner_value) + float(reg_value), rtol=1e-6)
  np.testing.assert_allclose(aux["per_class"], inner_aux["per_class"], rtol=1e-6)
  np.testing.assert_allclose(float(aux["club/loss"]), float(reg_value), rtol=1e-6)
  new = wrapped.update(state, syn, key)
  assert new["objective"] == state["objective"]  # DM has no update
  changed = [np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree_util.tree_leaves(new["regulariser"]["params"]),
                 jax.tree_util.tree_leaves(state["regulariser"]["params"]))]
  assert any(changed)
  want = reg.update(state["regulariser"], syn, k_reg)
  for a, b in zip(jax.tree_util.tree_leaves(new["regulariser"]), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  with pytest.raises(ValueError, match="reg must be a Regulariser"):
    with_regulariser(inner, (reg.init, reg.loss, reg.update))


def _toy(host: bool, with_data: bool):
  """An objective with a state counter, an update (in-step or host) and optional data."""

  def loss(state, syn, real, key, *data):
    scale = data[0]["scale"] if data else 1.0
    return scale * jnp.sum(syn.images), {"scale": jnp.asarray(scale)}

  def update(state, syn, key, *data):
    step = data[0]["scale"] if data else 1.0
    return {"n": state["n"] + step, "key": key}

  host_update = (lambda s, syn, k, *d: jax.tree_util.tree_map(np.asarray, update(s, syn, k, *d))) if host else None
  return Objective("toy", lambda key: {"n": jnp.zeros(()), "key": key}, loss, update, None,
                   {"scale": jnp.asarray(2.0)} if with_data else None, host_update)


def _counter_reg():
  return Regulariser(lambda key: {"m": jnp.zeros(())},
                     lambda s, syn, key: (jnp.mean(syn.images), {"mean": jnp.mean(syn.images)}),
                     lambda s, syn, key: {"m": s["m"] + 1.0}, name="cnt")


@pytest.mark.parametrize("host,with_data", [(False, False), (False, True), (True, True)])
def test_with_regulariser_keeps_data_and_host_update(host, with_data):
  inner, reg = _toy(host, with_data), _counter_reg()
  wrapped = with_regulariser(inner, reg)
  assert (wrapped.host_update is not None) == host and wrapped.data is inner.data
  key = jax.random.PRNGKey(0)
  state = wrapped.init(key)
  syn = SyntheticBatch(jnp.ones((4, 2, 2, 1)), jnp.zeros((4,), jnp.int32))
  data = (inner.data,) if with_data else ()
  value, aux = wrapped.loss(state, syn, None, key, *data)
  scale = 2.0 if with_data else 1.0
  np.testing.assert_allclose(float(value), scale * 16 + 1.0)
  assert set(aux) == {"scale", "cnt/mean"}
  run = wrapped.host_update if host else wrapped.update
  new = run(state, syn, key, *data)
  assert float(new["objective"]["n"]) == scale and float(new["regulariser"]["m"]) == 1.0
  np.testing.assert_array_equal(new["objective"]["key"], jax.random.fold_in(key, 0))  # the inner part's key
  # The loop runs it: host_update after the jitted step, or update inside it.
  param = synthetic.Parameterisation("id", lambda s, k=None: SyntheticBatch(s.params["x"], s.const["y"]),
                                     lambda s: 0)
  syn_state = synthetic.SynState({"x": jnp.ones((4, 2, 2, 1))}, {"y": jnp.array([0, 0, 1, 1], jnp.int32)})
  real = np.zeros((4, 2, 2, 1), np.float32)
  result = loop.distill(wrapped, param, syn_state, real, np.array([0, 0, 1, 1]), 2, jax.random.PRNGKey(1),
                        loop.LoopConfig(iterations=2, real_per_class=1), progress=False)
  obj = result.state.obj_state
  assert float(obj["objective"]["n"]) == 2 * scale and float(obj["regulariser"]["m"]) == 2.0


def test_distill_loop_with_dm_and_the_contrastive_term():
  cfg = _config(bases_per_class=1, hallucinators=3, init="real")
  rng = np.random.default_rng(0)
  real_x = rng.normal(size=(NC * 4,) + SHAPE).astype(np.float32)
  real_y = np.repeat(np.arange(NC), 4)
  syn = synthetic.init_haba(jax.random.PRNGKey(0), cfg, real_x, real_y, NC, 1)
  param = synthetic.haba_parameterisation(cfg, NC, SHAPE)
  dm = objectives.make_objective("dm", objectives.DistributionMatchingConfig(width=4, depth=1), num_classes=NC,
                                 image_shape=SHAPE, ipc=synthetic.train_images_per_class(cfg))
  reg = synthetic.contrastive_regulariser(cfg, NC, SHAPE, augment=haba.dsa_augment(DSAParams()))
  objective = with_regulariser(dm, reg)
  config = loop.LoopConfig(iterations=3, real_per_class=2, lr_img=1.0, param_lrs={"hallucinators": 0.01})
  result = loop.distill(objective, param, syn, real_x, real_y, NC, jax.random.PRNGKey(1), config, progress=False)
  assert result.losses.shape == (3,) and np.all(np.isfinite(result.losses))
  before = reg.init(jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(1), 2 ** 31 - 1),
                                                          0), 1))
  after = result.state.obj_state["regulariser"]
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree_util.tree_leaves(after["params"]), jax.tree_util.tree_leaves(before["params"])))
  assert all(np.isfinite(float(v)) for v in after["last"].values())
  assert param.render(result.state.syn).images.shape == (NC * 3,) + SHAPE
  assert dataclasses.asdict(cfg)["pairs"] == "sampled"


TINY = ["--ipc", "1", "--real-per-class", "2", "--width", "8", "--eval-models", "1", "--eval-epochs", "1",
        "--eval-width", "8", "--test-size", "200", "--no-eval-dsa", "--quiet", "--iterations", "2"]


@pytest.mark.slow
def test_cli_haba_flags(tmp_path):
  """--haba-pairs / --haba-contrastive / --haba-extractor-width reach HaBaConfig and the run (the flags of
  tests/test_generators.py's TINY run)."""
  from experiments import distill
  from jaxdistill import io

  path = tmp_path / "config.json"
  io.save_json(str(path), {"dsa": False})
  fast = ["--config", str(path)]
  common = ["--method", "haba", "--objective", "dm", "--haba-basis-size", "14", "--haba-hallucinators", "2",
            "--haba-width", "4", "--haba-extractor-width", "8", *fast, *TINY]
  p = distill.main([*common, "--out", str(tmp_path / "sampled")])
  cfg = p["parameterisation_config"]
  assert (cfg["pairs"], cfg["contrastive"], cfg["extractor_width"]) == ("sampled", 0.1, 8)
  assert p["contrastive_augment"] is None and p["storage_floats"] <= 7840
  p = distill.main([*common, "--out", str(tmp_path / "all"), "--haba-pairs", "all", "--haba-contrastive", "0"])
  assert (p["parameterisation_config"]["pairs"], p["parameterisation_config"]["contrastive"]) == ("all", 0.0)
  assert "contrastive_augment" not in p
  with pytest.raises(SystemExit):  # argparse refuses a value outside experiments.names.HABA_PAIRS
    distill.main([*common, "--out", str(tmp_path / "bad"), "--haba-pairs", "every"])
