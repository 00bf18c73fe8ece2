"""Training primitives (loss, SGD, one step, batched prediction) and the vmapped evaluation protocol."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import evaluate as ev
from jaxdistill import models, training
from jaxdistill.augment import DSAParams

SHAPE = (28, 28, 1)


def _tree_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _tree_close(a, b, **kw):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


# --- loss ------------------------------------------------------------------------------------------------------

def test_cross_entropy_soft_one_hot_equals_integer_labels(rng):
  logits = jnp.asarray(rng.normal(size=(6, 5)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 5, size=6), jnp.int32)
  hard = training.cross_entropy(logits, labels)
  soft = training.cross_entropy(logits, jax.nn.one_hot(labels, 5))
  np.testing.assert_allclose(soft, hard, rtol=1e-6)
  # Closed form: mean of logsumexp(logits) - logits[label].
  expected = np.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(6), labels])
  np.testing.assert_allclose(hard, expected, rtol=1e-6)
  np.testing.assert_allclose(training.cross_entropy(jnp.zeros((3, 7)), jnp.array([0, 3, 6])), np.log(7),
                             rtol=1e-6)


def test_cross_entropy_gradient_closed_form(rng):
  logits = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  soft = jax.nn.softmax(jnp.asarray(rng.normal(size=(4, 3)), jnp.float32))
  g = jax.grad(training.cross_entropy)(logits, soft)
  np.testing.assert_allclose(g, (jax.nn.softmax(logits) - soft) / 4, rtol=1e-5, atol=1e-7)


def test_cross_entropy_weights_are_a_masked_mean(rng):
  logits = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=6))
  mask = jnp.array([1, 1, 0, 1, 0, 0], jnp.float32)
  np.testing.assert_allclose(training.cross_entropy(logits, labels, mask),
                             training.cross_entropy(logits[mask > 0], labels[mask > 0]), rtol=1e-6)
  assert float(training.cross_entropy(logits, labels, jnp.zeros(6))) == 0.0  # all padding: no NaN


# --- optimiser and schedule ------------------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_sgd_is_pytorch_sgd(momentum):
  """PyTorch SGD: d = g + wd·p; buf = momentum·buf + d (buf = d at first); p -= lr·buf."""
  lr, wd = 0.1, 0.05
  tx = training.sgd(lr, momentum, wd)
  p0 = {"w": jnp.array([1.0, -2.0, 3.0])}
  g1, g2 = {"w": jnp.array([0.5, 0.5, -1.0])}, {"w": jnp.array([-1.0, 2.0, 0.0])}
  state = tx.init(p0)
  u, state = tx.update(g1, state, p0)
  p1 = optax.apply_updates(p0, u)
  d1 = g1["w"] + wd * p0["w"]
  np.testing.assert_allclose(p1["w"], p0["w"] - lr * d1, rtol=1e-6)
  u, state = tx.update(g2, state, p1)
  p2 = optax.apply_updates(p1, u)
  buf = (g2["w"] + wd * p1["w"]) + momentum * d1
  np.testing.assert_allclose(p2["w"], p1["w"] - lr * buf, rtol=1e-6)
  np.testing.assert_allclose(state.hyperparams["learning_rate"], lr)


def test_step_decay():
  """The reference evaluate_synset with Epoch = 10: ``for ep in range(11)``, lr ×0.1 after ep == 10//2 + 1 = 6,
  so epochs 0..6 at the base lr and 7..10 at a tenth (11 epochs run)."""
  epochs = 10
  assert training.reference_schedule(epochs) == (11, 7)
  assert training.reference_schedule(300) == (301, 152)
  assert training.reference_schedule(1000) == (1001, 502)
  lrs = [float(training.step_decay(0.5, e, epochs)) for e in range(11)]
  np.testing.assert_allclose(lrs, [0.5] * 7 + [0.05] * 4, rtol=1e-6)
  assert float(training.step_decay(jnp.float32(2.0), jnp.int32(8), 13)) == pytest.approx(0.2)
  assert float(training.step_decay(jnp.float32(2.0), jnp.int32(7), 13)) == pytest.approx(2.0)


# --- one step --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def convnet():
  model = models.get_model("convnet", 10, SHAPE, width=8)
  tx = training.sgd(0.01)
  return model, tx, training.init_state(model, jax.random.PRNGKey(0), SHAPE, tx)


@pytest.fixture(scope="module")
def jit_step(convnet):
  model, tx, _ = convnet
  return jax.jit(lambda state, x, y, key, lr, w: training.train_step(model, tx, state, x, y, key, weights=w,
                                                                       learning_rate=lr))


def test_train_step_decreases_loss(convnet, jit_step, fmnist_subset):
  _, _, state = convnet
  x, y = fmnist_subset
  x, y = jnp.asarray(x[::5]), jnp.asarray(y[::5])  # 20 images, 2 per class
  losses = []
  for s in range(12):
    state, loss = jit_step(state, x, y, jax.random.PRNGKey(s), 0.05, jnp.ones(20))
    losses.append(float(loss))
  assert int(state.step) == 12
  assert np.all(np.isfinite(losses))
  assert losses[0] == pytest.approx(np.log(10), rel=0.3)  # near-uniform predictions at init
  assert np.mean(losses[-3:]) < 0.7 * losses[0]


def test_train_step_zero_lr_keeps_params_and_does_not_touch_input(fmnist_subset):
  # Eager on purpose (an in-place edit of the input state only shows outside jit); a small MLP keeps it fast.
  model = models.get_model("mlp", 10, SHAPE, width=8)
  tx = training.sgd(0.01)
  state = training.init_state(model, jax.random.PRNGKey(0), SHAPE, tx)
  x, y = jnp.asarray(fmnist_subset[0][:8]), jnp.asarray(fmnist_subset[1][:8])
  lr_before = float(state.opt_state.hyperparams["learning_rate"])
  new, loss = training.train_step(model, tx, state, x, y, jax.random.PRNGKey(0), learning_rate=0.0)
  assert _tree_equal(new.variables["params"], state.variables["params"])
  assert float(new.opt_state.hyperparams["learning_rate"]) == 0.0
  # Pure: the caller's state (its optimiser hyper-parameters included) is unchanged.
  assert float(state.opt_state.hyperparams["learning_rate"]) == lr_before
  assert int(state.step) == 0 and int(new.step) == 1
  new2, _ = training.train_step(model, tx, state, x, y, jax.random.PRNGKey(0))
  assert not _tree_equal(new2.variables["params"], state.variables["params"])


def test_train_step_padding_weights_equal_training_on_the_subset(convnet, jit_step, fmnist_subset):
  _, _, state = convnet
  x, y = jnp.asarray(fmnist_subset[0][:12]), jnp.asarray(fmnist_subset[1][:12])
  mask = jnp.array([1.0] * 9 + [0.0] * 3)
  garbage = x.at[9:].set(100.0)  # padded entries must not matter
  padded, loss_p = jit_step(state, garbage, y, jax.random.PRNGKey(0), 0.05, mask)
  plain_step = jax.jit(lambda s, a, b: training.train_step(convnet[0], convnet[1], s, a, b, jax.random.PRNGKey(0),
                                                           learning_rate=0.05))
  plain, loss = plain_step(state, x[:9], y[:9])
  np.testing.assert_allclose(loss_p, loss, rtol=1e-5)
  _tree_close(padded.variables, plain.variables, rtol=1e-4, atol=1e-6)


def test_train_step_soft_labels_equal_integer_labels(convnet, fmnist_subset):
  model, tx, state = convnet
  x, y = jnp.asarray(fmnist_subset[0][:8]), jnp.asarray(fmnist_subset[1][:8])
  step = jax.jit(lambda s, labels: training.train_step(model, tx, s, x, labels, jax.random.PRNGKey(0)))
  hard, lh = step(state, y)
  soft, ls = step(state, jax.nn.one_hot(y, 10))
  np.testing.assert_allclose(ls, lh, rtol=1e-5)
  _tree_close(hard.variables, soft.variables, rtol=1e-4, atol=1e-6)


def test_train_step_batchnorm_and_dsa(fmnist_subset):
  model = models.get_model("convnet_bn", 10, SHAPE, width=4, depth=2)
  tx = training.sgd(0.01)
  state = training.init_state(model, jax.random.PRNGKey(0), SHAPE, tx)
  x, y = jnp.asarray(fmnist_subset[0][:8]), jnp.asarray(fmnist_subset[1][:8])
  dsa = DSAParams(strategy=("crop", "flip"))
  step = jax.jit(lambda s, k: training.train_step(model, tx, s, x, y, k, dsa=dsa))
  new, loss = step(state, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss))
  assert not _tree_equal(new.variables["batch_stats"], state.variables["batch_stats"])
  assert set(new.variables) == {"params", "batch_stats"}
  # The augmentation depends on the key (different draws give different losses).
  losses = {float(step(state, jax.random.PRNGKey(k))[1]) for k in range(6)}
  assert len(losses) > 1


def test_predict_batched_and_accuracy(convnet, fmnist_subset):
  model, _, state = convnet
  x, y = jnp.asarray(fmnist_subset[0][:25]), jnp.asarray(fmnist_subset[1][:25])
  direct, _ = models.apply(model, state.variables, x)
  batched = training.predict_batched(model, state.variables, x, batch_size=10)  # 25 = 10 + 10 + 5 (padded)
  assert batched.shape == (25, 10)
  np.testing.assert_allclose(batched, direct, rtol=1e-5, atol=1e-5)
  acc = training.accuracy(model, state.variables, x, y, batch_size=10)
  assert float(acc) == pytest.approx(float(np.mean(np.argmax(direct, -1) == np.asarray(y))))


# --- evaluation ------------------------------------------------------------------------------------------------

EVAL_EPOCHS = 10


@pytest.fixture(scope="module")
def eval_setup(fmnist_subset, fmnist_test):
  x, y = fmnist_subset
  xt, yt = fmnist_test[0][:500], fmnist_test[1][:500]
  kwargs = dict(arch="convnet", key=jax.random.PRNGKey(1), num_models=2, epochs=EVAL_EPOCHS,
                test_images=xt, test_labels=yt, model_kwargs=dict(width=8), progress=False)
  return x, y, kwargs


@pytest.fixture(scope="module")
def eval_result(eval_setup):
  x, y, kwargs = eval_setup
  return ev.evaluate(x, y, **kwargs)


def test_evaluate_real_subset(eval_result):
  r = eval_result
  assert isinstance(r, ev.EvalResult)
  assert r.accuracies.shape == (2,)
  assert np.all((r.accuracies >= 0) & (r.accuracies <= 1))
  assert r.mean == pytest.approx(float(np.mean(r.accuracies)))
  assert r.std == pytest.approx(float(np.std(r.accuracies)))
  assert r.mean > 0.2  # 10 real images per class, 10 epochs: well above 10 % chance
  assert r.accuracies[0] != r.accuracies[1] or r.std == 0.0
  assert (r.arch, r.epochs) == ("convnet", EVAL_EPOCHS) and r.seconds > 0
  d = r.to_dict()
  assert d["accuracies"] == [float(a) for a in r.accuracies] and d["test_accuracy_mean"] == r.mean
  assert "convnet" in str(r) and "2 models" in str(r)
  assert "| convnet |" in ev.results_table({"convnet": r})


def test_evaluate_learned_lr_and_soft_labels(eval_setup, eval_result):
  """A learned α as a JAX scalar equal to the default lr, and one-hot soft labels, reproduce the run."""
  x, y, kwargs = eval_setup
  r = ev.evaluate(x, jax.nn.one_hot(y, 10), **{**kwargs, "lr": jnp.asarray(0.01, jnp.float32)})
  assert r.accuracies.shape == (2,)
  np.testing.assert_allclose(r.accuracies, eval_result.accuracies, atol=0.011)  # ≤ 5 of 500 test images


def test_train_models_deterministic_independent_and_distinct(fmnist_subset):
  """Same key ⇒ same networks; the networks of one vmapped run do not interact (changing model 1's lr leaves
  model 0 bit-identical); different models start from different initialisations. Also exercises DSA and a
  padded last batch (30 images, batch 16)."""
  x, y = fmnist_subset[0][:30], fmnist_subset[1][:30]
  model = models.get_model("convnet", 10, SHAPE, width=4, depth=2)
  config = ev.EvalConfig(epochs=2, batch_size=16)
  dsa = DSAParams(strategy=("crop", "scale"))
  key = jax.random.PRNGKey(3)
  a = ev.train_models(x, y, model, key, 2, config, dsa, lr=jnp.array([0.01, 0.05]), progress=False)
  b = ev.train_models(x, y, model, key, 2, config, dsa, lr=jnp.array([0.01, 0.0]), progress=False)
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert all(leaf.shape[0] == 2 for leaf in leaves_a)
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves_a)
  assert all(np.array_equal(la[0], lb[0]) for la, lb in zip(leaves_a, leaves_b))
  assert not all(np.array_equal(la[1], lb[1]) for la, lb in zip(leaves_a, leaves_b))
  k0 = np.asarray(a["params"]["Conv_0"]["kernel"])
  assert not np.allclose(k0[0], k0[1])


@pytest.mark.parametrize("bad,match", [
    (dict(key=None), "key"),
    (dict(num_models=0), "num_models"),
    (dict(epochs=0), "epochs"),
    (dict(config=ev.EvalConfig(lr=0.0)), "lr"),
    (dict(config=ev.EvalConfig(batch_size=0)), "batch_size"),
    (dict(arch="resnet50"), "arch"),
])
def test_evaluate_bad_arguments(bad, match):
  x, y = np.zeros((4,) + SHAPE, np.float32), np.arange(4) % 2
  kwargs = dict(arch="convnet", key=jax.random.PRNGKey(0), num_models=1, epochs=1,
                test_images=x, test_labels=y, progress=False)
  with pytest.raises(ValueError, match=match):
    ev.evaluate(x, y, **{**kwargs, **bad})


def test_evaluate_bad_training_sets():
  x, y = np.zeros((4,) + SHAPE, np.float32), np.arange(4) % 2
  kwargs = dict(key=jax.random.PRNGKey(0), num_models=1, epochs=1, test_images=x, test_labels=y,
                progress=False)
  with_nan = x.copy()
  with_nan[0, 3, 3, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    ev.evaluate(with_nan, y, **kwargs)
  with pytest.raises(ValueError, match="inf"):
    ev.evaluate(np.full_like(x, np.inf), y, **kwargs)
  with pytest.raises(ValueError, match="entries"):
    ev.evaluate(x, y[:3], **kwargs)
  with pytest.raises(ValueError, match="soft labels"):
    ev.evaluate(x, np.ones((4, 3), np.float32), **kwargs)  # 2 classes in the test labels
  with pytest.raises(ValueError, match="images"):
    ev.evaluate(x[..., 0], y, **kwargs)


def test_chunk_size_divides_epochs():
  for epochs in (1, 7, 20, 300, 1000, 997):
    c = ev._chunk_size(epochs)
    assert epochs % c == 0 and 1 <= c <= max(1, epochs // 20)


# --- the one training epoch (permute, batch, pad-and-mask, step) -------------------------------------------------

@pytest.mark.parametrize("n,bs,steps", [(10, 4, 3), (12, 4, 3), (3, 8, 1), (1, 1, 1)])
def test_epoch_batches_present_every_example_once(n, bs, steps):
  batches = training.epoch_batches(jax.random.PRNGKey(n), n, bs)
  assert batches.order.shape == (steps, min(bs, n)) == training.epoch_steps(n, bs)
  order = np.asarray(batches.order).ravel()
  if batches.mask is None:
    assert steps * min(bs, n) == n
    real = order
  else:
    mask = np.asarray(batches.mask).ravel()
    assert mask.sum() == n and np.all(mask[:n] == 1) and np.all(mask[n:] == 0)  # padding only in the last row
    real = order[mask > 0]
  assert sorted(real.tolist()) == list(range(n))  # each example once: the last partial batch is kept


def test_epoch_steps_rejects_empty_input():
  with pytest.raises(ValueError, match="n >= 1"):
    training.epoch_steps(0, 4)
  with pytest.raises(ValueError, match="batch_size >= 1"):
    training.epoch_steps(4, 0)


def test_train_epoch_equals_the_host_loop_and_masks_the_tail(convnet, fmnist_subset):
  model, tx, state = convnet
  x, y = jnp.asarray(fmnist_subset[0][:10]), jnp.asarray(fmnist_subset[1][:10])
  key = jax.random.PRNGKey(3)
  dsa = DSAParams()
  compiled = jax.jit(lambda s: training.train_epoch(model, tx, s, x, y, key, 4, dsa=dsa, op_index=0))(state)
  batches = training.epoch_batches(key, 10, 4)
  step = jax.jit(lambda s, i: training.batch_step(model, tx, s, x, y, batches, i, key, dsa=dsa, op_index=0)[0])
  host = state
  for i in range(3):
    host = step(host, i)
  assert int(compiled.step) == int(host.step) == 3
  _tree_close(compiled.variables, host.variables, rtol=1e-4, atol=1e-6)
  # The last step's padded entries (index 0 repeated) do not count: garbage there changes nothing.
  last = batches.order[2]
  mask = batches.mask[2]
  garbage_x = x.at[0].set(jnp.where(jnp.any(last[mask > 0] == 0), x[0], 100.0))
  a = training.batch_step(model, tx, host, garbage_x, y, batches, 2, key)[1]
  b = training.train_step(model, tx, host, x[last[mask > 0]], y[last[mask > 0]],
                          jax.random.fold_in(key, 3))[1]
  np.testing.assert_allclose(a, b, rtol=1e-5)
