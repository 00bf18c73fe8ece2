"""Coreset baselines: herding / k-center against brute-force definitions, forgetting counts, ``select``."""

import jax
import numpy as np
import pytest

from jaxdistill import coreset


def _herding_reference(feats, k):
  mu = feats.mean(0)
  chosen, total = [], np.zeros_like(mu)
  for t in range(k):
    best, best_d = None, np.inf
    for i in range(len(feats)):
      if i in chosen:
        continue
      d = np.sum((mu - (total + feats[i]) / (t + 1)) ** 2)
      if d < best_d:
        best, best_d = i, d
    chosen.append(best)
    total = total + feats[best]
  return chosen


def test_herding_matches_greedy_definition(rng):
  feats = rng.normal(size=(40, 5)).astype(np.float32)
  got = np.asarray(coreset.herding(feats, 7))
  assert got.tolist() == _herding_reference(feats, 7)
  assert len(set(got.tolist())) == 7


def test_kcenter_is_farthest_first_and_covers_better_than_random(rng):
  feats = rng.normal(size=(60, 3)).astype(np.float32)
  got = np.asarray(coreset.kcenter(feats, 6, first=0))
  assert got[0] == 0 and len(set(got.tolist())) == 6
  d = ((feats[:, None] - feats[None]) ** 2).sum(-1)
  # Each new centre is the point farthest from the centres chosen before it.
  for t in range(1, 6):
    assert np.isclose(d[got[t], got[:t]].min(), d[:, got[:t]].min(1).max(), rtol=1e-4)
  radius = d[:, got].min(1).max()
  rand_radii = [d[:, rng.choice(60, 6, replace=False)].min(1).max() for _ in range(20)]
  assert radius <= np.median(rand_radii)


@pytest.mark.parametrize("fn", [coreset.herding, coreset.kcenter])
def test_selection_rejects_bad_k(fn):
  with pytest.raises(ValueError, match="k must be"):
    fn(np.zeros((5, 2), np.float32), 6)


def test_select_with_feature_fn_is_class_balanced(fmnist_train):
  x, y, spec = fmnist_train
  flat = lambda imgs: imgs.reshape(len(imgs), -1)
  for method in ("herding", "kcenter", "random"):
    pos = coreset.select(method, jax.random.PRNGKey(0), x, y, spec.num_classes, 3, feature_fn=flat,
                         progress=False)
    assert pos.shape == (spec.num_classes, 3)
    np.testing.assert_array_equal(y[pos], np.repeat(np.arange(10), 3).reshape(10, 3))
    assert len(np.unique(pos)) == 30
  # Herding on raw pixels: the chosen 3 images' mean is closer to the class mean than a random triple's.
  pos = coreset.select("herding", jax.random.PRNGKey(0), x, y, 10, 3, feature_fn=flat, progress=False)
  c0 = flat(x[y == 0])
  err = np.sum((flat(x[pos[0]]).mean(0) - c0.mean(0)) ** 2)
  rnd = [np.sum((c0[np.random.default_rng(s).choice(len(c0), 3, replace=False)].mean(0) - c0.mean(0)) ** 2)
         for s in range(20)]
  assert err < np.median(rnd)


def test_select_rejects_unknown_method_and_large_ipc(fmnist_train):
  x, y, spec = fmnist_train
  with pytest.raises(ValueError, match="method"):
    coreset.select("best", jax.random.PRNGKey(0), x, y, 10, 1)
  with pytest.raises(ValueError, match="ipc"):
    coreset.select("random", jax.random.PRNGKey(0), x, y, 10, 10_000)


def test_forgetting_counts_and_selection(fmnist_train):
  x, y, spec = fmnist_train
  cfg = coreset.FeatureNetConfig(width=8, epochs=3, lr=0.05, batch_size=50, max_examples=500)
  net = coreset.train_feature_net(jax.random.PRNGKey(1), x[:500], y[:500], 10, cfg, progress=False)
  assert net.forgetting.shape == (500,) and net.forgetting.min() >= 0
  # A forgetting event needs an earlier correct presentation; 3 epochs allow at most 2 events per example.
  assert net.forgetting.max() <= 2
  assert np.all(net.ever_learned[net.forgetting > 0])
  assert net.ever_learned.mean() > 0.5  # the network does learn most of the examples
  feats = coreset.embed_features(net, x[:50])
  assert feats.shape[0] == 50 and np.all(np.isfinite(feats))
  pos = coreset.select("forgetting", jax.random.PRNGKey(1), x, y, 10, 2, config=cfg, progress=False)
  assert pos.shape == (10, 2)
  np.testing.assert_array_equal(y[pos], np.repeat(np.arange(10), 2).reshape(10, 2))
