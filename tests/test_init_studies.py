"""The initialisation studies' coreset selections (jaxdistill.coreset): entropy (highest / lowest predicted-class
entropy) and k-means (nearest real image to each centroid) — hand-built cases, the per-class selection on real
Fashion-MNIST, the ``--init`` wiring of init_pixels and the CLI parsers' choices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import coreset as coreset_cli
from experiments import distill, names
from jaxdistill import coreset, synthetic


def _entropy(logits):
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  return -np.sum(p * np.log(p), 1)


def test_prediction_entropy_closed_forms():
  logits = np.array([[0.0, 0.0, 0.0, 0.0], [np.log(3.0), 0.0, -np.inf, -np.inf]], np.float32)
  np.testing.assert_allclose(np.asarray(coreset.prediction_entropy(logits)),
                             [np.log(4.0), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))], rtol=1e-6)


def test_entropy_select_picks_the_extremes():
  # Entropies: row 0 uniform (log 3, the maximum), row 1 confident, row 2 very confident, row 3 in between, row 4
  # a copy of row 0 (a tie with it).
  logits = np.array([[0, 0, 0], [4, 0, 0], [12, 0, 0], [1, 1, 0], [0, 0, 0]], np.float32)
  h = _entropy(logits.astype(np.float64))
  assert np.argmax(h) == 0 and np.argmin(h) == 2
  assert coreset.entropy_select(logits, 2).tolist() == [0, 4]  # ties by position
  assert coreset.entropy_select(logits, 2, tie=np.array([5, 0, 0, 0, 1])).tolist() == [4, 0]
  assert coreset.entropy_select(logits, 3).tolist() == [0, 4, 3]
  assert coreset.entropy_select(logits, 2, "lowest").tolist() == [2, 1]
  assert coreset.entropy_select(logits, 5, "lowest").tolist() == list(np.argsort(h, kind="stable"))
  with pytest.raises(ValueError, match="entropy must be one of"):
    coreset.entropy_select(logits, 2, "max")
  with pytest.raises(ValueError, match="k must be"):
    coreset.entropy_select(logits, 6)


def _clusters(seed=0, per=(7, 9, 5, 8)):
  rng = np.random.RandomState(seed)
  centres = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], np.float32)
  feats = np.concatenate([c + rng.randn(n, 3) for c, n in zip(centres, per)]).astype(np.float32)
  cluster = np.repeat(np.arange(len(per)), per)
  perm = rng.permutation(len(feats))
  return feats[perm], cluster[perm]


def test_kmeans_picks_one_per_separated_cluster_nearest_its_mean():
  feats, cluster = _clusters()
  for seed in range(3):
    got = np.asarray(coreset.kmeans(feats, 4, jax.random.PRNGKey(seed)))
    assert got.dtype == np.int32 and len(set(got.tolist())) == 4
    assert sorted(cluster[got].tolist()) == [0, 1, 2, 3]
    # Lloyd converges to the cluster means: each pick is the point of its cluster nearest the cluster's mean.
    for i in got:
      members = np.flatnonzero(cluster == cluster[i])
      mean = feats[members].mean(0)
      assert i == members[np.argmin(((feats[members] - mean) ** 2).sum(1))]


def test_kmeans_is_deterministic_jittable_and_distinct():
  feats, _ = _clusters(1)
  key = jax.random.PRNGKey(7)
  a = np.asarray(coreset.kmeans(feats, 6, key))
  np.testing.assert_array_equal(a, np.asarray(coreset.kmeans(feats, 6, key)))
  np.testing.assert_array_equal(a, np.asarray(jax.jit(lambda f, k: coreset.kmeans(f, 6, k))(feats, key)))
  assert len(set(a.tolist())) == 6
  # k = n: every row once; iterations = 0: the k-means++ seeds' nearest rows.
  assert sorted(np.asarray(coreset.kmeans(feats[:5], 5, key)).tolist()) == [0, 1, 2, 3, 4]
  assert len(set(np.asarray(coreset.kmeans(feats, 4, key, iterations=0)).tolist())) == 4
  with pytest.raises(ValueError, match="k must be"):
    coreset.kmeans(feats, 0, key)
  with pytest.raises(ValueError, match="iterations"):
    coreset.kmeans(feats, 2, key, iterations=-1)


def test_select_entropy_and_kmeans_per_class(fmnist_train):
  x, y, spec = fmnist_train
  w = jax.random.normal(jax.random.PRNGKey(3), (28 * 28, spec.num_classes)) * 0.05
  logits_fn = lambda imgs: np.asarray(jnp.asarray(imgs).reshape(len(imgs), -1) @ w)
  flat = lambda imgs: np.asarray(imgs).reshape(len(imgs), -1)
  want_labels = np.repeat(np.arange(10), 3).reshape(10, 3)
  for order in ("highest", "lowest"):
    pos = coreset.select("entropy", jax.random.PRNGKey(0), x, y, 10, 3, logits_fn=logits_fn, entropy=order,
                         progress=False)
    np.testing.assert_array_equal(y[pos], want_labels)
    for c in range(10):  # the NumPy reference: the class's three most / least uncertain images
      members = np.flatnonzero(y == c)
      h = _entropy(logits_fn(x[members]).astype(np.float64))
      ref = members[np.argsort(-h if order == "highest" else h)[:3]]
      assert sorted(pos[c].tolist()) == sorted(ref.tolist())
  pos = coreset.select("kmeans", jax.random.PRNGKey(0), x, y, 10, 3, feature_fn=flat, progress=False)
  np.testing.assert_array_equal(y[pos], want_labels)
  assert len(np.unique(pos)) == 30
  again = coreset.select("kmeans", jax.random.PRNGKey(0), x, y, 10, 3, feature_fn=flat, progress=False)
  np.testing.assert_array_equal(pos, again)
  with pytest.raises(ValueError, match="entropy must be"):
    coreset.select("entropy", jax.random.PRNGKey(0), x, y, 10, 3, logits_fn=logits_fn, entropy="max")


@pytest.mark.slow
def test_select_with_the_trained_feature_net(fmnist_train):
  """Without feature_fn / logits_fn both use the coreset feature network (tiny here)."""
  x, y, spec = fmnist_train
  config = coreset.FeatureNetConfig(width=8, epochs=1, max_examples=300)
  for method in ("entropy", "kmeans"):
    pos = coreset.select(method, jax.random.PRNGKey(1), x, y, 10, 2, config=config, progress=False)
    assert pos.shape == (10, 2) and len(np.unique(pos)) == 20
    np.testing.assert_array_equal(y[pos], np.repeat(np.arange(10), 2).reshape(10, 2))


def test_init_pixels_from_entropy_and_kmeans(fmnist_train):
  x, y, spec = fmnist_train
  flat = lambda imgs: np.asarray(imgs).reshape(len(imgs), -1)
  kwargs = {"feature_fn": flat, "logits_fn": lambda imgs: flat(imgs)[:, :10], "progress": False}
  for init in ("entropy", "kmeans"):
    assert init in synthetic.INITS
    state = synthetic.init_pixels(jax.random.PRNGKey(2), init, x, y, 10, 2, coreset_kwargs=kwargs)
    pos = coreset.select(init, jax.random.PRNGKey(2), x, y, 10, 2, **kwargs)
    np.testing.assert_array_equal(np.asarray(state.params["images"]), x[pos.reshape(-1)])
    np.testing.assert_array_equal(np.asarray(state.const["labels"]), np.repeat(np.arange(10), 2))


def test_cli_parsers_accept_the_new_inits():
  assert names.INITS == tuple(synthetic.INITS) and names.CORESET_METHODS == tuple(coreset.METHODS)
  for init in ("entropy", "kmeans"):
    args = distill.build_parser().parse_args(["--method", "dm", "--ipc", "1", "--out", "x", "--init", init])
    assert args.init == init
    assert coreset_cli.build_parser().parse_args(["--method", init, "--ipc", "1", "--out", "x"]).method == init
  with pytest.raises(SystemExit):
    distill.build_parser().parse_args(["--method", "dm", "--ipc", "1", "--out", "x", "--init", "entropy_max"])
