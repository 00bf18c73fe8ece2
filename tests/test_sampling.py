"""Class-indexed sampling: ClassIndex, sample_class, sample_balanced, check_ipc, random_subset."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import data

# Unbalanced toy labels: class c has 3 + 2c examples, shuffled.
_COUNTS = [3 + 2 * c for c in range(5)]


@pytest.fixture(scope="module")
def labels():
  lab = np.concatenate([np.full(n, c) for c, n in enumerate(_COUNTS)])
  return np.random.default_rng(1).permutation(lab).astype(np.int32)


@pytest.fixture(scope="module")
def index(labels):
  return data.class_index(labels, 5)


def test_class_index_rows(labels, index):
  assert index.indices.shape == (5, max(_COUNTS))
  np.testing.assert_array_equal(np.asarray(index.counts), _COUNTS)
  for c, n in enumerate(_COUNTS):
    row = np.asarray(index.indices[c, :n])
    np.testing.assert_array_equal(np.sort(row), np.flatnonzero(labels == c))


def test_class_index_empty_class_and_bad_labels():
  index = data.class_index(np.array([0, 0, 2]), 4)
  np.testing.assert_array_equal(np.asarray(index.counts), [2, 0, 1, 0])
  with pytest.raises(ValueError, match="ipc"):
    data.check_ipc(index, 1)  # classes 1 and 3 are empty
  with pytest.raises(ValueError):
    data.class_index(np.array([0, 5]), 5)
  with pytest.raises(ValueError):
    data.class_index(np.array([-1, 0]), 5)
  with pytest.raises(ValueError):
    data.class_index(np.zeros((2, 2), np.int32), 5)


@pytest.mark.parametrize("c", range(5))
def test_sample_class_distinct_and_of_class(labels, index, c):
  n = _COUNTS[0]
  for seed in range(4):
    idx = np.asarray(data.sample_class(jax.random.PRNGKey(seed), index, c, n))
    assert idx.shape == (n,) and idx.dtype == np.int32
    assert len(set(idx.tolist())) == n
    assert np.all(labels[idx] == c)


def test_sample_class_full_class_is_a_permutation(labels, index):
  c = 4
  idx = np.asarray(data.sample_class(jax.random.PRNGKey(3), index, c, _COUNTS[c]))
  np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(labels == c))


def test_sample_class_is_random_and_covers_class(labels, index):
  c = 4
  draws = [tuple(np.asarray(data.sample_class(jax.random.PRNGKey(s), index, c, 2))) for s in range(30)]
  assert len(set(draws)) > 1  # depends on the key
  seen = set(np.concatenate(draws).tolist())
  assert seen == set(np.flatnonzero(labels == c).tolist())  # every example of the class is reachable
  # Same key, same draw.
  np.testing.assert_array_equal(data.sample_class(jax.random.PRNGKey(7), index, c, 2),
                                data.sample_class(jax.random.PRNGKey(7), index, c, 2))


def test_sample_class_traced_class(labels, index):
  f = jax.jit(lambda k, c: data.sample_class(k, index, c, 3))
  for c in range(5):
    idx = np.asarray(f(jax.random.PRNGKey(c), jnp.int32(c)))
    assert np.all(labels[idx] == c) and len(set(idx.tolist())) == 3
    np.testing.assert_array_equal(idx, data.sample_class(jax.random.PRNGKey(c), index, c, 3))


def test_sample_balanced(labels, index):
  n = 3
  eager = np.asarray(data.sample_balanced(jax.random.PRNGKey(0), index, n))
  jitted = np.asarray(jax.jit(lambda k: data.sample_balanced(k, index, n))(jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(eager, jitted)
  assert eager.shape == (5, n)
  for c in range(5):
    assert np.all(labels[eager[c]] == c)
    assert len(set(eager[c].tolist())) == n
  other = np.asarray(data.sample_balanced(jax.random.PRNGKey(1), index, n))
  assert not np.array_equal(eager, other)


def test_sample_balanced_under_vmap_over_keys(labels, index):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  out = np.asarray(jax.vmap(lambda k: data.sample_balanced(k, index, 2))(keys))
  assert out.shape == (4, 5, 2)
  assert np.all(labels[out] == np.arange(5)[None, :, None])


@pytest.mark.parametrize("ipc", [0, -1, 4, 2.0, "2"])
def test_check_ipc_rejects(index, ipc):
  with pytest.raises(ValueError, match="ipc"):
    data.check_ipc(index, ipc)


def test_check_ipc_accepts(index):
  for ipc in (1, 3, np.int64(2)):
    data.check_ipc(index, ipc)


def test_random_subset(labels):
  idx = data.random_subset(jax.random.PRNGKey(0), labels, 5, 3)
  assert isinstance(idx, np.ndarray) and idx.shape == (5, 3)
  for c in range(5):
    assert np.all(labels[idx[c]] == c) and len(set(idx[c].tolist())) == 3
  with pytest.raises(ValueError, match="ipc"):
    data.random_subset(jax.random.PRNGKey(0), labels, 5, _COUNTS[0] + 1)
