"""The shared differentiable inner-SGD unroll (jaxdistill.unroll): one SGD step against its formula, and every
memory/speed option of ``scan_steps`` giving the same values and gradients as a Python loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import unroll

W0 = jnp.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]])  # [3 features, 2 outputs]


def _loss(params, extra, x, y):
  return jnp.mean(jnp.square(jnp.tanh(x @ params["w"]) - y)), extra


def _batches(t):
  k = jax.random.PRNGKey(0)
  return jax.random.normal(k, (t, 4, 3)), jax.random.normal(jax.random.fold_in(k, 1), (t, 4, 2))


def _python_loop(params, xs, ys, lrs, momentum=0.0, weight_decay=0.0):
  state = unroll.init_state(params, momentum)
  for t in range(len(lrs)):
    state = unroll.sgd_step(_loss, state, xs[t], ys[t], lrs[t], momentum, weight_decay)[0]
  return state.params["w"]


def test_sgd_step_is_pytorch_sgd_with_momentum_and_weight_decay():
  xs, ys = _batches(2)
  p = {"w": W0}
  state = unroll.init_state(p, momentum=0.9)
  g0 = jax.grad(lambda w: _loss({"w": w}, {}, xs[0], ys[0])[0])(W0) + 5e-4 * W0
  s1, loss0 = unroll.sgd_step(_loss, state, xs[0], ys[0], 0.1, 0.9, 5e-4)
  np.testing.assert_allclose(loss0, _loss(p, {}, xs[0], ys[0])[0], rtol=1e-6)
  np.testing.assert_allclose(s1.params["w"], W0 - 0.1 * g0, rtol=1e-6)
  w1 = W0 - 0.1 * g0
  g1 = jax.grad(lambda w: _loss({"w": w}, {}, xs[1], ys[1])[0])(w1) + 5e-4 * w1
  s2, _ = unroll.sgd_step(_loss, s1, xs[1], ys[1], 0.1, 0.9, 5e-4)
  np.testing.assert_allclose(s2.params["w"], w1 - 0.1 * (0.9 * g0 + g1), rtol=1e-5)


@pytest.mark.parametrize("checkpoint", unroll.CHECKPOINTS)
@pytest.mark.parametrize("scan_unroll", [1, 3, 100])
def test_scan_steps_options_keep_values_and_gradients(checkpoint, scan_unroll):
  t = 6  # segments of 2
  xs, ys = _batches(t)
  lrs = jnp.linspace(0.3, 0.1, t)

  def run(w, lrs):
    step = lambda s, inp: unroll.sgd_step(_loss, s, inp[0], inp[1], inp[2], 0.5)
    final, losses = unroll.scan_steps(step, unroll.init_state({"w": w}, 0.5), (xs, ys, lrs),
                                      checkpoint=checkpoint, scan_unroll=scan_unroll)
    return jnp.sum(final.params["w"] ** 2) + 0.1 * jnp.sum(losses), losses

  def reference(w, lrs):
    state, losses = unroll.init_state({"w": w}, 0.5), []
    for i in range(t):
      state, loss = unroll.sgd_step(_loss, state, xs[i], ys[i], lrs[i], 0.5)
      losses.append(loss)
    return jnp.sum(state.params["w"] ** 2) + 0.1 * jnp.sum(jnp.stack(losses)), jnp.stack(losses)

  (v, losses), (gw, glr) = jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))(W0, lrs)
  (v_ref, losses_ref), (gw_ref, glr_ref) = jax.value_and_grad(reference, argnums=(0, 1), has_aux=True)(W0, lrs)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  np.testing.assert_allclose(losses, losses_ref, rtol=1e-5)
  np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(glr, glr_ref, rtol=1e-4, atol=1e-7)
  assert losses.shape == (t,)


def test_scan_steps_gradient_matches_finite_differences():
  xs, ys = _batches(4)
  lrs = jnp.full((4,), 0.2)

  def f(lr_scale):
    step = lambda s, inp: unroll.sgd_step(_loss, s, inp[0], inp[1], inp[2] * lr_scale)
    final, _ = unroll.scan_steps(step, unroll.init_state({"w": W0}), (xs, ys, lrs), checkpoint="segments")
    return _loss(final.params, {}, xs[0], ys[0])[0]

  g = jax.grad(f)(1.0)
  eps = 1e-3
  fd = (f(1.0 + eps) - f(1.0 - eps)) / (2 * eps)
  np.testing.assert_allclose(g, fd, rtol=2e-2)


def test_first_order_stops_the_carry_gradient_through_each_step():
  # step(c) = c - a·c² : exact dθ_2/dθ_0 = (1 - 2aθ_1)(1 - 2aθ_0); first order keeps only the direct path, 1.
  a = 0.1
  step = lambda c, _: (c - a * c ** 2, None)
  f = lambda c0, fo: unroll.scan_steps(step, c0, jnp.arange(2), first_order=fo)[0]
  c0 = 0.7
  c1 = c0 - a * c0 ** 2
  np.testing.assert_allclose(f(c0, False), f(c0, True), rtol=1e-6)  # same values
  np.testing.assert_allclose(jax.grad(f)(c0, False), (1 - 2 * a * c1) * (1 - 2 * a * c0), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(f)(c0, True), 1.0, rtol=1e-6)


@pytest.mark.parametrize("bad,match", [({"checkpoint": "all"}, "checkpoint must be one of"),
                                       ({"scan_unroll": 0}, "scan_unroll must be an integer >= 1")])
def test_scan_steps_rejects_bad_options(bad, match):
  with pytest.raises(ValueError, match=match):
    unroll.scan_steps(lambda c, x: (c + x, None), 0.0, jnp.arange(3.0), **bad)


def test_segment_length():
  assert unroll.segment_length(6) == 2 and unroll.segment_length(16) == 4 and unroll.segment_length(7) == 1
