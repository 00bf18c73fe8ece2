"""Trajectory matching (MTT / TESLA / L1 / pruning): the unrolled student is N explicit SGD steps, the loss is
zero when the student reproduces the expert segment, TESLA's two-pass gradient equals the full unroll (exactly
for N = 1; for N > 1 it equals the first-order unroll it is defined by and stays close to the exact one), α
gets a gradient and its own learning rate in the loop, checkpointed and plain unrolls agree, and the CLI."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import experts, loop, models, objectives, synthetic, training
from jaxdistill.augment import DSAParams
from jaxdistill.objectives import trajectory_matching as tm

NC = 10
SHAPE = (28, 28, 1)
IPC = 2


def _model():
  return models.get_model("mlp", NC, SHAPE, width=16)


def _cfg(**kw):
  base = dict(arch="mlp", width=16, syn_steps=3, expert_epochs=2, max_start_epoch=1, dsa=False)
  base.update(kw)
  return tm.TrajectoryMatchingConfig(**base)


@pytest.fixture(scope="module")
def setup(fmnist_train):
  """A class-major real set of 2 images per class, a student, and an initial θ."""
  x, y, _ = fmnist_train
  syn = synthetic.init_pixels(jax.random.PRNGKey(0), "real", x, y, NC, IPC, learn_lr=0.01)
  model = _model()
  unflat, p, _ = experts.unflattener(model, SHAPE)
  params = models.init_variables(model, jax.random.PRNGKey(1), SHAPE)["params"]
  theta0 = experts.flatten(params)[0]
  return syn, model, unflat, theta0


def _loss_fn(student, theta0, target, labels, key, n, mode, unroll=False):
  def f(images, lr):
    if mode == "tesla":
      theta_n = tm.tesla_unroll(student, n, unroll)(theta0, images, labels, lr, key)
    else:
      theta_n = tm.student_unroll(student, theta0, images, labels, lr, key, n, checkpoint=(mode == "ckpt"),
                                  first_order=(mode == "first_order"), unroll=unroll)
    return tm.trajectory_distance(theta_n, theta0, target)
  return f


def _explicit_sgd(model, params, images, labels, lr, key, n, bs, steps):
  """Plain SGD on the Flax parameter pytree over the documented mini-batch schedule: pass ``p`` permutes with
  ``fold_in(k_perm, p)``, cuts ``torch.split``-style chunks (the last one partial) and takes them from the end, as
  the reference's ``pop()``. Returns the parameters and the index sets used."""
  used = []
  k_perm = jax.random.split(key)[1]
  per_pass = -(-n // bs)
  for i in range(steps):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(k_perm, i // per_pass), n))
    chunks = [perm[j:j + bs] for j in range(0, n, bs)]
    idx = chunks[per_pass - 1 - i % per_pass]
    used.append(idx)
    grads = jax.grad(lambda p: training.cross_entropy(model.apply({"params": p}, images[idx]), labels[idx]))(
        params)
    params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
  return params, used


def test_unroll_equals_explicit_sgd_steps(setup):
  syn, model, unflat, theta0 = setup
  images, labels = syn.params["images"], syn.const["labels"]
  n, bs, steps, lr = 20, 5, 6, 0.05
  student = tm.make_student(model, SHAPE, n, bs, None)
  key = jax.random.PRNGKey(3)
  got = jax.jit(lambda t: tm.student_unroll(student, t, images, labels, lr, key, steps))(theta0)
  # Explicit SGD on the Flax parameter pytree over the documented mini-batch schedule (4 chunks per pass).
  params, used = _explicit_sgd(model, unflat(theta0), images, labels, lr, key, n, bs, steps)
  np.testing.assert_allclose(np.asarray(got), np.asarray(experts.flatten(params)[0]), rtol=1e-5, atol=1e-6)
  # A pass of 4 steps uses every synthetic image exactly once.
  np.testing.assert_array_equal(np.sort(np.concatenate(used[:4])), np.arange(n))
  assert not np.allclose(np.asarray(got), np.asarray(theta0))


def test_student_keeps_the_last_partial_batch_first_as_the_reference_pops_it(setup):
  syn, model, unflat, theta0 = setup
  images, labels = syn.params["images"], syn.const["labels"]
  n, bs, steps, lr = 20, 6, 5, 0.05  # torch.split(randperm(20), 6): chunks of 6, 6, 6, 2; pop() takes the 2 first
  student = tm.make_student(model, SHAPE, n, bs, None)
  key = jax.random.PRNGKey(4)
  got = jax.jit(lambda t: tm.student_unroll(student, t, images, labels, lr, key, steps))(theta0)
  params, used = _explicit_sgd(model, unflat(theta0), images, labels, lr, key, n, bs, steps)
  assert [len(u) for u in used] == [2, 6, 6, 6, 2]
  np.testing.assert_array_equal(np.sort(np.concatenate(used[:4])), np.arange(n))
  np.testing.assert_allclose(np.asarray(got), np.asarray(experts.flatten(params)[0]), rtol=1e-5, atol=1e-6)


def test_experts_are_taken_in_shuffled_passes_without_replacement(setup):
  syn, model, _, theta0 = setup
  num = 5
  traj = jnp.stack([theta0 + 0.01 * k for k in range(num)])[:, None] + jnp.zeros((1, 3, 1))  # [5, 3, P]
  obj = tm.make_trajectory_matching(_cfg(), num_classes=NC, image_shape=SHAPE, ipc=IPC, buffer=traj)
  batch = synthetic.PIXELS.render(syn)
  state = obj.init(jax.random.PRNGKey(0))
  update = jax.jit(lambda st, k: obj.update(st, batch, k, obj.data))
  seen = []
  for i in range(3 * num):
    _, aux = obj.loss(state, batch, None, jax.random.PRNGKey(100 + i), obj.data)
    seen.append(int(aux["expert"]))
    state = update(state, jax.random.PRNGKey(200 + i))
  passes = [seen[k * num:(k + 1) * num] for k in range(3)]
  assert all(sorted(p) == list(range(num)) for p in passes), seen  # each pass: every expert once
  assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes


@pytest.mark.parametrize("gradient", ["unroll", "tesla"])
def test_loss_is_zero_when_student_reproduces_expert_segment(setup, gradient):
  syn, model, _, theta0 = setup
  cfg = _cfg(gradient=gradient, dsa=True, dsa_strategy=("color", "crop"))
  student = tm.make_student(model, SHAPE, NC * IPC, None, DSAParams(strategy=cfg.dsa_strategy))
  key = jax.random.PRNGKey(7)
  k_run = jax.random.split(key, 3)[2]  # the key the loss hands to the unroll
  batch = synthetic.PIXELS.render(syn)
  end = tm.student_unroll(student, theta0, batch.images, batch.labels, batch.lr, k_run, cfg.syn_steps)
  traj = jnp.stack([theta0, 0.5 * (theta0 + end), end])[None]  # [1 expert, 3 epochs, P]; t = 0, M = 2
  obj = tm.make_trajectory_matching(cfg, num_classes=NC, image_shape=SHAPE, ipc=IPC, buffer=traj)
  state = obj.init(jax.random.PRNGKey(0))
  value, aux = obj.loss(state, batch, None, key, obj.data)
  assert int(aux["start_epoch"]) == 0 and int(aux["expert"]) == 0
  assert float(value) < 1e-8
  moved = traj.at[0, 2].add(0.01)
  value, _ = obj.loss(state, batch, None, key, {"trajectories": moved})
  assert float(value) > 1e-4


def test_tesla_gradient_equals_full_unroll(setup):
  syn, model, _, theta0 = setup
  images, labels, lr = syn.params["images"], syn.const["labels"], jnp.float32(0.01)
  student = tm.make_student(model, SHAPE, NC * IPC, None, DSAParams(strategy=("crop",)))
  key = jax.random.PRNGKey(11)
  target = theta0 + 0.05 * jax.random.normal(jax.random.PRNGKey(12), theta0.shape)
  grads = {}
  for n in (1, 3):
    for mode in ("full", "first_order", "tesla"):
      grads[n, mode] = jax.jit(jax.grad(_loss_fn(student, theta0, target, labels, key, n, mode),
                                        argnums=(0, 1)))(images, lr)
  # N = 1: TESLA is the exact gradient (images and α).
  for a, b in zip(grads[1, "tesla"], grads[1, "full"]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7 * float(jnp.abs(b).max()))
  # N = 3: TESLA's two passes reproduce the first-order unroll it is defined by (memory independent of N) ...
  for a, b in zip(grads[3, "tesla"], grads[3, "first_order"]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * float(jnp.abs(b).max()))
  # ... which differs from the exact unroll only by the O(α) terms through later student parameters.
  a, b = grads[3, "tesla"][0].ravel(), grads[3, "full"][0].ravel()
  assert float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))) > 0.99
  assert abs(float(grads[3, "tesla"][1]) - float(grads[3, "full"][1])) < 0.1 * abs(float(grads[3, "full"][1]))


def test_checkpointed_and_plain_unrolls_agree(setup):
  syn, model, _, theta0 = setup
  images, labels, lr = syn.params["images"], syn.const["labels"], jnp.float32(0.02)
  student = tm.make_student(model, SHAPE, NC * IPC, 10, DSAParams(strategy=("cutout",)))
  key = jax.random.PRNGKey(5)
  target = theta0 + 0.05 * jax.random.normal(jax.random.PRNGKey(6), theta0.shape)
  assert tm.segment_length(6) == 2 and tm.segment_length(16) == 4 and tm.segment_length(7) == 1
  plain = jax.jit(jax.value_and_grad(_loss_fn(student, theta0, target, labels, key, 6, "full"),
                                     argnums=(0, 1)))(images, lr)
  ckpt = jax.jit(jax.value_and_grad(_loss_fn(student, theta0, target, labels, key, 6, "ckpt"),
                                    argnums=(0, 1)))(images, lr)
  np.testing.assert_allclose(float(plain[0]), float(ckpt[0]), rtol=1e-6)
  for a, b in zip(plain[1], ckpt[1]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * float(jnp.abs(a).max()))


def test_alpha_gets_a_gradient_and_its_own_learning_rate_in_the_loop(setup, fmnist_train):
  syn, model, _, theta0 = setup
  x, y, _ = fmnist_train
  cfg = _cfg(syn_steps=2, expert_epochs=1)
  traj = jnp.stack([theta0, theta0 + 0.01 * jax.random.normal(jax.random.PRNGKey(2), theta0.shape)])[None]
  obj = tm.make_trajectory_matching(cfg, num_classes=NC, image_shape=SHAPE, ipc=IPC, buffer=traj)

  def loss(params):
    return obj.loss({}, synthetic.PIXELS.render(syn._replace(params=params)), None, jax.random.PRNGKey(0),
                    obj.data)[0]

  g = jax.grad(loss)(syn.params)
  assert np.isfinite(float(g["lr"])) and float(g["lr"]) != 0.0
  assert float(jnp.abs(g["images"]).max()) > 0
  lc = loop.LoopConfig(iterations=2, real_per_class=1, lr_img=10.0, param_lrs=cfg.param_lrs())
  out = loop.distill(obj, synthetic.PIXELS, syn, x, y, NC, jax.random.PRNGKey(1), lc, progress=False)
  new = out.state.syn.params
  assert float(new["lr"]) != 0.01 and abs(float(new["lr"]) - 0.01) < 1e-3
  assert not np.allclose(np.asarray(new["images"]), np.asarray(syn.params["images"]))
  assert np.all(np.isfinite(out.losses))


def test_make_optimizer_per_parameter_learning_rates():
  params = {"images": jnp.zeros((2, 3)), "lr": jnp.asarray(0.01)}
  grads = {"images": jnp.ones((2, 3)), "lr": jnp.asarray(1.0)}
  for opt, momentum in (("sgd", 0.5), ("adam", 0.0)):
    tx = loop.make_optimizer(loop.LoopConfig(lr_img=2.0, optimizer=opt, momentum=momentum,
                                             param_lrs={"lr": 1e-3}))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["images"]), -2.0, rtol=1e-5)
    np.testing.assert_allclose(float(updates["lr"]), -1e-3, rtol=1e-5)
  # Without param_lrs the optimiser is unchanged: plain optax.sgd.
  plain = loop.make_optimizer(loop.LoopConfig(lr_img=2.0))
  ref = optax.sgd(2.0, momentum=0.5)
  a, _ = plain.update(grads, plain.init(params), params)
  b, _ = ref.update(grads, ref.init(params), params)
  np.testing.assert_allclose(float(a["lr"]), float(b["lr"]))
  with pytest.raises(ValueError, match="param_lrs"):
    loop.LoopConfig(param_lrs={"lr": -1.0}).validate()


def test_trajectory_distance_l2_l1_and_pruning():
  rng = np.random.default_rng(0)
  a, s, t = (rng.normal(size=40).astype(np.float32) for _ in range(3))
  np.testing.assert_allclose(float(tm.trajectory_distance(a, s, t)), np.sum((a - t) ** 2) / np.sum((s - t) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(float(tm.trajectory_distance(a, s, t, "l1")),
                             np.sum(np.abs(a - t)) / np.sum(np.abs(s - t)), rtol=1e-5)
  a2 = t.copy()
  a2[:4] += np.array([0.1, 0.2, 0.3, 100.0], np.float32)  # one parameter far off: the hardest to match
  keep = np.arange(40) != 3
  want = np.sum((a2 - t)[keep] ** 2) / np.sum((s - t)[keep] ** 2)
  np.testing.assert_allclose(float(tm.trajectory_distance(a2, s, t, prune=0.025)), want, rtol=1e-5)
  assert float(tm.trajectory_distance(a2, s, t)) > 100 * want
  # The pruning mask is not differentiated (gradient is that of the kept coordinates only).
  g = jax.grad(lambda v: tm.trajectory_distance(v, s, t, prune=0.025))(jnp.asarray(a2))
  assert float(g[3]) == 0.0 and float(jnp.abs(g[:3]).min()) > 0


def test_config_validation_and_registry():
  for bad, match in ((dict(syn_steps=0), "syn_steps"), (dict(distance="cos"), "distance"),
                     (dict(gradient="bptt"), "gradient"), (dict(prune=1.0), "prune"),
                     (dict(lr_lr=0.0), "lr_lr"), (dict(gradient="tesla", checkpoint=True), "checkpoint"),
                     (dict(batch_syn=0), "batch_syn")):
    with pytest.raises(ValueError, match=match):
      _cfg(**bad).validate()
  assert {"mtt", "tesla", "mtt_l1"} <= set(objectives.METHODS)
  assert objectives.default_config("tesla").gradient == "tesla"
  assert objectives.default_config("mtt_l1").distance == "l1"
  assert objectives.default_config("mtt").param_lrs() == {"lr": 1e-5}
  with pytest.raises(ValueError, match="buffer"):
    objectives.make_objective("mtt", num_classes=NC, image_shape=SHAPE, ipc=1)
  with pytest.raises(ValueError, match="epochs"):
    tm.make_trajectory_matching(_cfg(max_start_epoch=3), num_classes=NC, image_shape=SHAPE, ipc=1,
                                buffer=np.zeros((1, 3, 12730), np.float32))


def test_expert_soft_labels(setup):
  syn, model, unflat, theta0 = setup
  soft = tm.expert_soft_labels(model, unflat, theta0, syn.params["images"], temperature=2.0)
  assert soft.shape == (NC * IPC, NC)
  np.testing.assert_allclose(np.asarray(soft.sum(-1)), 1.0, rtol=1e-5)
  logits = model.apply({"params": unflat(theta0)}, syn.params["images"])
  np.testing.assert_allclose(np.asarray(soft), np.asarray(jax.nn.softmax(logits / 2.0)), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def cli_buffer(fmnist_train, tmp_path_factory):
  x, y, _ = fmnist_train
  out = str(tmp_path_factory.mktemp("cli_buf"))
  cfg = experts.ExpertConfig(arch="mlp", width=8, num_experts=2, experts_per_shard=2, epochs=2, batch_size=100,
                             dsa=False)
  experts.train_experts(cfg, x[:200], y[:200], x[1000:1100], y[1000:1100], NC, out, dataset="fashion_mnist",
                        progress=False)
  return out


@pytest.mark.slow
def test_distill_cli_mtt_with_buffer_and_refused_mismatch(cli_buffer, tmp_path):
  from experiments import distill
  cfg = tmp_path / "cfg.json"
  cfg.write_text(json.dumps({"arch": "mlp", "soft_labels": True}))
  tiny = ["--ipc", "1", "--width", "8", "--eval-models", "1", "--eval-epochs", "2", "--eval-arch", "mlp",
          "--eval-width", "8", "--test-size", "200", "--no-eval-dsa", "--quiet", "--config", str(cfg),
          "--buffer", cli_buffer, "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1",
          "--lr-img", "10", "--lr-lr", "1e-4", "--iterations", "2"]
  payload = distill.main(["--method", "tesla", "--out", str(tmp_path / "run"), *tiny])
  assert payload["loop_config"]["param_lrs"] == {"lr": 1e-4}
  assert payload["objective_config"]["gradient"] == "tesla" and payload["objective_config"]["syn_steps"] == 2
  from jaxdistill import io
  saved = io.load_synthetic(str(tmp_path / "run" / "synthetic.npz"))
  assert saved["lr"] is not None and float(saved["lr"]) != 0.01  # α learned and stored with the set
  assert saved["labels"].shape == (NC, NC)  # TESLA's expert soft labels
  assert len(payload["loss_curve"]) == 2 and np.all(np.isfinite(payload["loss_curve"]))
  with pytest.raises(ValueError, match="model_kwargs"):
    distill.main(["--method", "mtt", "--out", str(tmp_path / "bad"),
                  *[a if a != "8" else "16" for a in tiny]])
  with pytest.raises(ValueError, match="needs an expert buffer|--buffer"):
    distill.main(["--method", "mtt", "--out", str(tmp_path / "none"), "--ipc", "1", "--quiet",
                  "--config", str(cfg)])


def test_straight_line_unroll_equals_rolled_scan(setup):
  """``unroll=True`` (no compiled loop: faster on XLA:CPU) gives the rolled scan's values and gradients on
  every path (plain, checkpointed, TESLA)."""
  syn, model, _, theta0 = setup
  images, labels, lr = syn.params["images"], syn.const["labels"], jnp.float32(0.02)
  student = tm.make_student(model, SHAPE, NC * IPC, 10, DSAParams(strategy=("crop",)))
  key = jax.random.PRNGKey(8)
  target = theta0 + 0.05 * jax.random.normal(jax.random.PRNGKey(9), theta0.shape)
  for mode in ("full", "ckpt", "tesla"):
    rolled, straight = (jax.jit(jax.value_and_grad(_loss_fn(student, theta0, target, labels, key, 4, mode, u),
                                                   argnums=(0, 1)))(images, lr) for u in (False, True))
    np.testing.assert_allclose(float(rolled[0]), float(straight[0]), rtol=1e-5)
    for a, b in zip(rolled[1], straight[1]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * float(jnp.abs(a).max()))
