"""Coreset baselines: class-balanced random, herding, k-center, forgetting, entropy and k-means selection.

The papers' baselines (DC, Zhao et al. 2021, Table 1) select real images per class using the features of a
ConvNet trained on the real data: *herding* (Welling 2009; greedy choice whose running mean best matches the
class mean), *k-center* (Sener & Savarese 2018; greedy farthest-point cover) and *forgetting* (Toneva et al.
2019; the examples forgotten most often while training, i.e. going from correctly to wrongly classified).
The initialisation studies add *entropy* (the images whose predicted class distribution under that network has the
highest — or, with ``entropy="lowest"``, the lowest — Shannon entropy) and *k-means* (Lloyd's algorithm with
k = ipc in the feature space, k-means++ seeding; the real image nearest each centroid), see docs/cafe_inits.md.

``select(method, key, images, labels, num_classes, ipc)`` returns positions ``[C, ipc]``; row ``c`` holds
class ``c``. The per-class greedy kernels are jitted; the loop over classes is host-side (selection runs once).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import models, training
from jaxdistill.data.sampling import check_ipc, class_index, random_subset
from jaxdistill.models.layers import check_choice
from jaxdistill.progress import progress_bar
from jaxdistill.validation import check_ints, check_network

METHODS = ("random", "herding", "kcenter", "forgetting", "entropy", "kmeans")
ENTROPY_ORDERS = ("highest", "lowest")
KMEANS_ITERATIONS = 20


@jax.jit
def _pairwise_sq(a, b):
  return jnp.maximum(jnp.sum(a * a, -1)[:, None] - 2.0 * a @ b.T + jnp.sum(b * b, -1)[None, :], 0.0)


def herding(features, k: int) -> jnp.ndarray:
  """Herding selection of ``k`` distinct rows of ``features [n, D]``; int32 ``[k]`` in selection order.

  Step ``t`` picks the unselected row ``x`` minimising ``||μ − (s_t + x) / (t + 1)||²`` where ``μ`` is the
  mean of all rows and ``s_t`` the sum of those already selected.
  """
  features = jnp.asarray(features, jnp.float32)
  n = features.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k must be in [1, {n}], got {k}.")
  return _herding(features, k)


def _herding_impl(features, k):
  n = features.shape[0]
  mu = jnp.mean(features, 0)

  def body(t, carry):
    total, chosen, out = carry
    cand = (total[None, :] + features) / (t + 1.0)
    dist = jnp.sum((mu[None, :] - cand) ** 2, -1)
    dist = jnp.where(chosen, jnp.inf, dist)
    i = jnp.argmin(dist)
    return total + features[i], chosen.at[i].set(True), out.at[t].set(i)

  init = (jnp.zeros_like(mu), jnp.zeros((n,), bool), jnp.zeros((k,), jnp.int32))
  return jax.lax.fori_loop(0, k, body, init)[2]


_herding = jax.jit(_herding_impl, static_argnums=1)


def kcenter(features, k: int, first: Optional[int] = None) -> jnp.ndarray:
  """Greedy k-center selection of ``k`` rows of ``features [n, D]``; int32 ``[k]``.

  Starts from ``first`` (default: the row closest to the mean) and repeatedly adds the row farthest from the
  rows already chosen (the 2-approximation of Gonzalez 1985 used by Sener & Savarese).
  """
  features = jnp.asarray(features, jnp.float32)
  n = features.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k must be in [1, {n}], got {k}.")
  if first is None:
    first = int(jnp.argmin(_pairwise_sq(features, jnp.mean(features, 0, keepdims=True))[:, 0]))
  return _kcenter(features, k, jnp.asarray(first, jnp.int32))


def _kcenter_impl(features, k, first):
  sq = jnp.sum(features * features, -1)

  def dist_to(i):
    return jnp.maximum(sq - 2.0 * features @ features[i] + sq[i], 0.0)

  def body(t, carry):
    mind, out = carry
    i = jnp.argmax(mind)
    return jnp.minimum(mind, dist_to(i)).at[i].set(-1.0), out.at[t].set(i)

  mind = dist_to(first).at[first].set(-1.0)
  out = jnp.zeros((k,), jnp.int32).at[0].set(first)
  return jax.lax.fori_loop(1, k, body, (mind, out))[1]


_kcenter = jax.jit(_kcenter_impl, static_argnums=1)


def prediction_entropy(logits) -> jnp.ndarray:
  """Shannon entropy (nats) of ``softmax(logits)`` per row of ``logits [n, C]``; ``[n]`` (``0 · log 0 = 0``, so
  ``-inf`` logits are classes of probability 0)."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1)
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), -1)


def entropy_select(logits, k: int, entropy: str = "highest", tie=None) -> np.ndarray:
  """The ``k`` rows of ``logits [n, C]`` whose predicted distribution has the highest (``entropy="highest"``:
  the most uncertain images) or lowest (``"lowest"``: the most confident) entropy; int32 ``[k]``, most extreme
  first. Ties are broken by ``tie [n]`` (smaller first; default: by position).

  Raises:
    ValueError: ``k`` outside ``[1, n]`` or an unknown ``entropy``.
  """
  check_choice("entropy", entropy, ENTROPY_ORDERS)
  h = np.asarray(prediction_entropy(logits), np.float64)
  n = h.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k must be in [1, {n}], got {k}.")
  tie = np.arange(n) if tie is None else np.asarray(tie)
  order = np.lexsort((tie, -h if entropy == "highest" else h))
  return order[:k].astype(np.int32)


def kmeans(features, k: int, key, iterations: int = KMEANS_ITERATIONS) -> jnp.ndarray:
  """k-means selection: ``k`` distinct rows of ``features [n, D]``, int32 ``[k]``, one per centroid.

  Centroids are seeded by k-means++ (Arthur & Vassilvitskii 2007: the first a uniformly random row, each next one
  a row drawn with probability ∝ its squared distance to the nearest seed) from ``key``, then refined by
  ``iterations`` Lloyd steps (assign every row to its nearest centroid, move each centroid to the mean of its rows;
  a centroid with no rows stays). Centroid ``j`` then takes the nearest row not taken by centroids ``< j``, so the
  ``k`` rows are distinct. Deterministic given ``key``; jitted (``k`` and ``iterations`` static).

  Raises:
    ValueError: ``k`` outside ``[1, n]`` or ``iterations < 0``.
  """
  features = jnp.asarray(features, jnp.float32)
  n = features.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k must be in [1, {n}], got {k}.")
  check_ints({"iterations": iterations}, "iterations", minimum=0)
  return _kmeans(features, key, k, int(iterations))


def _kmeans_impl(features, key, k, iterations):
  n = features.shape[0]
  k_first, k_rest = jax.random.split(key)
  first = jax.random.randint(k_first, (), 0, n)

  def seed(t, carry):
    centroids, mind = carry
    p = mind / jnp.maximum(jnp.sum(mind), 1e-30)
    p = jnp.where(jnp.sum(mind) > 0, p, jnp.full((n,), 1.0 / n))  # all rows already seeded: uniform
    i = jax.random.choice(jax.random.fold_in(k_rest, t), n, p=p)
    centroids = centroids.at[t].set(features[i])
    return centroids, jnp.minimum(mind, _pairwise_sq(features, features[i][None])[:, 0])

  centroids = jnp.zeros((k, features.shape[1]), jnp.float32).at[0].set(features[first])
  mind = _pairwise_sq(features, features[first][None])[:, 0]
  centroids, _ = jax.lax.fori_loop(1, k, seed, (centroids, mind))

  def lloyd(_, centroids):
    assign = jax.nn.one_hot(jnp.argmin(_pairwise_sq(features, centroids), 1), k, dtype=jnp.float32)  # [n, k]
    counts = jnp.sum(assign, 0)
    means = (assign.T @ features) / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, means, centroids)

  centroids = jax.lax.fori_loop(0, iterations, lloyd, centroids)
  dist = _pairwise_sq(centroids, features)  # [k, n]

  def pick(j, carry):
    taken, out = carry
    i = jnp.argmin(jnp.where(taken, jnp.inf, dist[j]))
    return taken.at[i].set(True), out.at[j].set(i)

  return jax.lax.fori_loop(0, k, pick, (jnp.zeros((n,), bool), jnp.zeros((k,), jnp.int32)))[1]


_kmeans = jax.jit(_kmeans_impl, static_argnums=(2, 3))


@dataclasses.dataclass(frozen=True)
class FeatureNetConfig:
  """How the network that supplies features / forgetting statistics is trained on the real data.

  Defaults are a reduced CPU protocol (the papers use the full ConvNet-128 trained to convergence).
  """
  arch: str = "convnet"
  width: int = 64
  epochs: int = 3
  lr: float = 0.01
  batch_size: int = 256
  max_examples: Optional[int] = None

  def validate(self):
    check_network(self.arch, self.width)
    check_ints(self, ("epochs", "batch_size"))
    check_ints(self, "max_examples", optional=True)
    return self


class FeatureNet(NamedTuple):
  """A network trained on the real data, and per-example forgetting counts ``[N]`` from that training."""
  model: object
  variables: object
  forgetting: np.ndarray
  ever_learned: np.ndarray


def train_feature_net(key, images, labels, num_classes: int, config: FeatureNetConfig = FeatureNetConfig(),
                      progress: bool = True) -> FeatureNet:
  """Trains one network on ``images [N, H, W, C]`` / int ``labels [N]`` (SGD momentum 0.9, no augmentation)
  and counts forgetting events per example (Toneva et al. 2019): a presentation at which an example is
  misclassified after having been classified correctly at its previous presentation.
  """
  config.validate()
  images = jnp.asarray(images, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  n = images.shape[0]
  kwargs = {"width": config.width} if config.arch in ("convnet", "convnet_bn", "mlp") else {}
  model = models.get_model(config.arch, num_classes, images.shape[1:], **kwargs)
  tx = training.sgd(config.lr, 0.9, 5e-4)
  k_init, k_data = jax.random.split(key)
  state = training.init_state(model, k_init, images.shape[1:], tx)
  steps = training.epoch_steps(n, config.batch_size)[0]
  epoch_batches = jax.jit(lambda k: training.epoch_batches(k, n, config.batch_size))

  @jax.jit
  def step_fn(carry, batches, ekey, s):
    # One minibatch of the shared epoch (training.epoch_batches / batch_step): every example is presented once
    # per epoch, the last partial batch included; its padding entries (index 0, mask 0) are sent out of range and
    # dropped by the scatters. Steps are dispatched from the host: XLA:CPU runs convolutions inside a compiled
    # loop (lax.scan) several times slower.
    state, prev_correct, forgets, learned = carry
    mask = jnp.ones(batches.order.shape, bool) if batches.mask is None else batches.mask > 0
    idx = batches.order[s]
    state, _, logits = training.batch_step(model, tx, state, images, labels, batches, s, ekey, return_logits=True)
    correct = jnp.argmax(logits, -1) == labels[idx]
    at = jnp.where(mask[s], idx, n)  # padding -> out of range, dropped
    forgets = forgets.at[at].add((prev_correct[idx] & ~correct).astype(jnp.int32), mode="drop")
    return (state, prev_correct.at[at].set(correct, mode="drop"), forgets,
            learned.at[at].set(learned[idx] | correct, mode="drop"))

  def epoch_fn(state, prev_correct, forgets, learned, ekey):
    carry = (state, prev_correct, forgets, learned)
    batches = epoch_batches(ekey)  # one permutation per epoch, shared by its steps
    for s in range(steps):
      carry = step_fn(carry, batches, ekey, jnp.int32(s))
    return carry

  carry = (state, jnp.zeros((n,), bool), jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool))
  with progress_bar(config.epochs, "feature net", disable=not progress, unit="epoch") as bar:
    for epoch in range(config.epochs):
      carry = epoch_fn(*carry, jax.random.fold_in(k_data, epoch))
      bar.update(1)
  state, _, forgets, learned = carry
  return FeatureNet(model, state.variables, np.asarray(forgets), np.asarray(learned))


def embed_features(net: FeatureNet, images, batch_size: int = 1000) -> np.ndarray:
  """Penultimate-layer features ``[N, D]`` of ``images [N, H, W, C]`` under a trained :class:`FeatureNet`."""
  fn = jax.jit(lambda x: models.apply(net.model, net.variables, x, train=False, embed=True)[0])
  images = np.asarray(images, np.float32)
  return np.concatenate([np.asarray(fn(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def predict_logits(net: FeatureNet, images, batch_size: int = 1000) -> np.ndarray:
  """Logits ``[N, num_classes]`` (eval mode) of ``images [N, H, W, C]`` under a trained :class:`FeatureNet`."""
  fn = jax.jit(lambda x: models.apply(net.model, net.variables, x, train=False)[0])
  images = np.asarray(images, np.float32)
  return np.concatenate([np.asarray(fn(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def select(method: str, key, images, labels, num_classes: int, ipc: int, *,
           feature_fn: Optional[Callable] = None, config: FeatureNetConfig = FeatureNetConfig(),
           progress: bool = True, logits_fn: Optional[Callable] = None, entropy: str = "highest",
           kmeans_iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
  """Selects ``ipc`` real examples per class; int positions ``[C, ipc]`` into ``images``.

  Args:
    method: one of :data:`METHODS`.
    key: PRNG key (random choice, feature-net initialisation, tie-breaking, k-means seeding).
    images: ``[N, H, W, C]`` real images (normalised); labels: int ``[N]``.
    feature_fn: optional ``images [n, ...] -> features [n, D]`` for herding / k-center / k-means; by default the
      embedding of a network trained on ``images`` with ``config``.
    config: training of the feature network (herding, k-center, forgetting, entropy, k-means).
    logits_fn: optional ``images [n, ...] -> logits [n, num_classes]`` for entropy; by default that network's.
    entropy: ``"highest"`` (default: the most uncertain images of each class) or ``"lowest"``.
    kmeans_iterations: Lloyd iterations of k-means (:func:`kmeans`).

  Raises:
    ValueError: unknown method or ``entropy``, or ``ipc`` larger than the smallest class.
  """
  check_choice("method", method, METHODS)
  check_choice("entropy", entropy, ENTROPY_ORDERS)
  check_ints({"kmeans_iterations": kmeans_iterations}, "kmeans_iterations", minimum=0)
  labels = np.asarray(labels)
  index = class_index(labels, num_classes)
  check_ipc(index, ipc)
  if method == "random":
    return random_subset(key, labels, num_classes, ipc)
  k_net, k_tie = jax.random.split(key)
  sub = np.arange(len(labels))
  if config.max_examples is not None and config.max_examples < len(labels):
    sub = np.sort(np.asarray(jax.random.permutation(k_net, len(labels))[:config.max_examples]))
  net = None
  if method == "forgetting" or (logits_fn is None if method == "entropy" else feature_fn is None):
    net = train_feature_net(k_net, np.asarray(images)[sub], labels[sub], num_classes, config, progress)
  rows = []
  if method == "entropy":
    fn = logits_fn if logits_fn is not None else (lambda x: predict_logits(net, x))
    images = np.asarray(images)
    tie = np.asarray(jax.random.uniform(k_tie, (len(labels),)))
    for c in range(num_classes):
      pos = np.flatnonzero(labels == c)
      rows.append(pos[entropy_select(np.asarray(fn(images[pos]), np.float32), ipc, entropy, tie[pos])])
    return np.stack(rows).astype(np.int32)
  if method == "forgetting":
    counts = np.zeros(len(labels), np.float64)
    counts[sub] = net.forgetting
    # Never-learned examples count as forgotten as often as the most forgotten ones (Toneva et al.); ties
    # are broken at random so the choice does not depend on dataset order.
    never = np.zeros(len(labels), bool)
    never[sub] = ~net.ever_learned
    counts[never] = counts.max() + 1
    tie = np.asarray(jax.random.uniform(k_tie, (len(labels),)))
    for c in range(num_classes):
      pos = np.flatnonzero(labels == c)
      order = np.lexsort((tie[pos], -counts[pos]))
      rows.append(pos[order[:ipc]])
    return np.stack(rows).astype(np.int32)
  fn = feature_fn if feature_fn is not None else (lambda x: embed_features(net, x))
  images = np.asarray(images)
  for c in range(num_classes):
    pos = np.flatnonzero(labels == c)
    feats = np.asarray(fn(images[pos]), np.float32)
    if method == "kmeans":
      chosen = kmeans(feats, ipc, jax.random.fold_in(k_tie, c), kmeans_iterations)
    else:
      chosen = herding(feats, ipc) if method == "herding" else kcenter(feats, ipc)
    rows.append(pos[np.asarray(chosen)])
  return np.stack(rows).astype(np.int32)
