"""Gradient matching: Dataset Condensation (DC, Zhao, Mopuri & Bilen, ICLR 2021) and DC with Differentiable
Siamese Augmentation (DSA, Zhao & Bilen, ICML 2021).

Loss (DC Eq. 10 / Alg. 1): for a network θ, per class c,
``D(∇_θ L(S_c; θ), ∇_θ L(T_c; θ))`` with the layer-wise distance (DC Eq. 9)
``d(A, B) = Σ_i (1 − A_i·B_i / (‖A_i‖ ‖B_i‖ + ε))`` over the output channels ``i`` of each weight tensor
(biases and normalisation parameters contribute nothing), summed over layers and classes. Real gradients are
stopped; the synthetic gradient is differentiated again (second order). DSA applies the same augmentation draw
to the real and synthetic batch of a class.

Outer / inner structure (DC Alg. 1) inside the one generic loop: the objective state holds the current
network and a counter of image updates; :func:`update` trains the network ``inner_loop`` epochs on the
synthetic set after each image update and replaces it by a fresh random network every ``outer_loop`` updates
(so an "outer iteration" = ``outer_loop`` image updates on one network, with no training after the last).

The pure loss :func:`loss` (:func:`class_distances` per class) takes any ``loss_fn(params, images, labels)``
and its parameters, so a user's own Flax network can be matched; the registered objective calls it with the
library's ConvNet and cross-entropy.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import backend, models, training
from jaxdistill.augment import DEFAULT_STRATEGY, DSAParams
from jaxdistill.models.layers import check_choice
from jaxdistill.validation import check_dsa_strategy, check_ints, check_network, check_positive
from jaxdistill.objectives.base import (Objective, RealBatch, check_class_major, check_class_order,
                                        class_major_real, implicit_labels, map_classes, per_class, safe_norm,
                                        siamese_augment)

METRICS = ("ours", "mse", "cos")
EPS = 1e-6
BN_PER_CLASS = 16  # real images per class that set a batch-norm matching net's statistics (DC code: BNSizePC)
# IPC -> (outer_loop, inner_loop) of the reference code (DC/DSA ``get_loops``).
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def default_loops(ipc: int) -> Tuple[int, int]:
  """``(outer_loop, inner_loop)`` for ``ipc`` (METHODS.md: 1/10/50 -> 1/10/50 and 1/50/10); other IPCs use
  the nearest tabulated one."""
  nearest = min(LOOPS, key=lambda k: (abs(k - ipc), k))
  return LOOPS[nearest]


@dataclasses.dataclass(frozen=True)
class GradientMatchingConfig:
  """DC / DSA settings (paper defaults).

  Attributes:
    arch, width, depth: the matching network (ConvNet-128, depth from the image size when None).
    metric: ``"ours"`` (per-output-channel cosine distance, DC Eq. 9), ``"mse"`` or ``"cos"`` (over all
      gradients concatenated, as in the reference code).
    dsa: siamese augmentation (DSA) on; ``dsa_strategy`` its operations (no flip for digits).
    shared_op: all classes draw the same DSA operation in one step (cheaper; the reference draws per class).
    lr_net: SGD learning rate of the inner network training (no momentum, as in the reference code).
    outer_loop, inner_loop: None = from the IPC (:func:`default_loops`).
    batch_train: minibatch size of the inner training.
    class_batch: 0 = all classes in one ``vmap``; k > 0 = k classes at a time (bounds memory).
    host_inner: also build ``Objective.host_update``: the inner training as a host loop of one jitted SGD
      step, which the distillation loop runs after its jitted image update instead of ``update`` (a
      ``lax.cond`` around ``fori_loop`` s) inside it. Same computation (tested); on XLA:CPU much faster, because
      convolutions inside a compiled loop or conditional body are emitted as slow loop fusions (10 SGD steps
      of a ConvNet-32 on 100 images: 10.8–11.2 s in a ``fori_loop`` or inside ``lax.cond``, 0.9 s as a host
      loop). ``update`` stays the pure, jittable form. None (default): the backend's choice
      (:mod:`jaxdistill.backend`): on for CPU, off for accelerators (they run compiled loops at full speed).
  """
  arch: str = "convnet"
  width: int = 128
  depth: Optional[int] = None
  metric: str = "ours"
  dsa: bool = False
  dsa_strategy: Tuple[str, ...] = DEFAULT_STRATEGY
  shared_op: bool = False
  lr_net: float = 0.01
  outer_loop: Optional[int] = None
  inner_loop: Optional[int] = None
  batch_train: int = 256
  class_batch: int = 0
  host_inner: Optional[bool] = None

  def validate(self):
    check_network(self.arch, self.width, self.depth)
    check_choice("metric", self.metric, METRICS)
    check_ints(self, "batch_train")
    check_ints(self, ("outer_loop", "inner_loop"), optional=True)
    check_ints(self, "class_batch", minimum=0, note="0 = all classes at once")
    check_positive(self, "lr_net")
    check_dsa_strategy(self.dsa_strategy)
    return self

  def loops(self, ipc: int) -> Tuple[int, int]:
    outer, inner = default_loops(ipc)
    return int(self.outer_loop or outer), int(self.inner_loop or inner)


def _channel_distance(a, b):
  """DC Eq. 9 for one tensor: ``Σ_i 1 − cos(A_i, B_i)`` over output channels (the last axis in Flax's
  ``[kh, kw, in, out]`` / ``[in, out]`` layouts); 0 for 1-D tensors (biases, norm scales/offsets)."""
  if a.ndim < 2:
    return 0.0
  a = jnp.moveaxis(a, -1, 0).reshape(a.shape[-1], -1)
  b = jnp.moveaxis(b, -1, 0).reshape(b.shape[-1], -1)
  dots = jnp.sum(a * b, axis=-1)
  return jnp.sum(1.0 - dots / (safe_norm(a, -1) * safe_norm(b, -1) + EPS))


def match_distance(g_real, g_syn, metric: str = "ours"):
  """Distance between two gradient pytrees (same structure).

  ``"ours"``: Σ over weight tensors of :func:`_channel_distance` (biases / norm parameters skipped);
  ``"mse"``: squared L2 distance of all gradients concatenated; ``"cos"``: ``1 − cos`` of all gradients
  concatenated (eps 1e-6). Returns a scalar.
  """
  check_choice("metric", metric, METRICS)
  la, lb = jax.tree_util.tree_leaves(g_real), jax.tree_util.tree_leaves(g_syn)
  if metric == "ours":
    return sum(_channel_distance(a, b) for a, b in zip(la, lb))
  a = jnp.concatenate([x.reshape(-1) for x in la])
  b = jnp.concatenate([x.reshape(-1) for x in lb])
  if metric == "mse":
    return jnp.sum(jnp.square(a - b))
  return 1.0 - jnp.sum(a * b) / (safe_norm(a) * safe_norm(b) + EPS)


def _images_and_labels(x, name: str):
  """``(images [C, n, ...], labels [C, n] or [C, n, K], explicit)`` from a class-major array (implicit int32
  labels: row ``c`` is class ``c``) or an ``(images, labels)`` pair."""
  if isinstance(x, (tuple, list)):
    if len(x) != 2:
      raise ValueError(f"{name} must be images [C, n, ...] or a pair (images [C, n, ...], labels [C, n] | "
                       f"[C, n, K]); got a sequence of {len(x)} items.")
    images, labels = x
    if labels.ndim not in (2, 3) or tuple(labels.shape[:2]) != tuple(images.shape[:2]):
      raise ValueError(f"{name} labels must be [C, n] (hard) or [C, n, K] (soft) for images "
                       f"{tuple(images.shape)}, got shape {tuple(labels.shape)}.")
    if labels.ndim == 2:
      check_class_order(labels, f"{name} labels")
    return images, labels
  if np.ndim(x) < 3:
    raise ValueError(f"{name} must be class-major images [C, n, *image_shape], got shape {tuple(np.shape(x))}.")
  return x, implicit_labels(x.shape[0], x.shape[1])


def class_distances(loss_fn, params, real, syn, *, metric: str = "ours", class_batch: int = 0):
  """Per-class gradient-matching distances ``D(∇θ ℓ(S_c), sg(∇θ ℓ(T_c)))`` (DC Eq. 10), ``[C]``.

  Args:
    loss_fn: ``loss_fn(params, images [k, ...], labels [k] | [k, K]) -> scalar`` (e.g. the cross-entropy of a
      Flax ``apply``); gradients are taken w.r.t. ``params``.
    params: a pytree of network parameters (weight tensors with the output channels on the last axis, as in
      Flax, for ``metric="ours"``).
    real: the real batch, class-major: images ``[C, n, *image_shape]`` (labels implicit: row ``c`` has int32
      label ``c``) or a pair ``(images [C, n, ...], labels [C, n] | [C, n, K])``. Its gradients are stopped.
    syn: the synthetic set in the same layout, ``[C, m, ...]`` or ``(images, labels)``. Hard labels in a pair
      must be in class order (row ``c`` all ``c``; checked, see :func:`check_class_order`).
    metric: ``"ours"`` (DC Eq. 9), ``"mse"`` or ``"cos"`` (:func:`match_distance`).
    class_batch: 0 = all classes in one ``vmap``; k > 0 = k classes at a time (``lax.map``).

  Returns:
    ``[C]`` distances; differentiable w.r.t. the synthetic images (second order through ``loss_fn``).

  Raises:
    ValueError: an unknown metric, or arrays / labels outside the layout above (a flat real batch is refused:
      group it with :func:`jaxdistill.objectives.group_by_class`).
  """
  check_choice("metric", metric, METRICS)
  real_x, real_y = _images_and_labels(real, "real")
  syn_x, syn_y = _images_and_labels(syn, "syn")
  check_class_major(real_x, syn_x)
  return _class_distances(loss_fn, params, real_x, real_y, syn_x, syn_y, metric, class_batch)


def _class_distances(loss_fn, params, real_x, real_y, syn_x, syn_y, metric: str, class_batch: int):
  """:func:`class_distances` on checked arrays: images ``[C, n, ...]``, labels ``[C, n]`` / ``[C, n, K]``."""
  grad_fn = jax.grad(loss_fn)

  def one(rx, ry, sx, sy):
    g_real = jax.tree_util.tree_map(jax.lax.stop_gradient, grad_fn(params, rx, ry))
    return match_distance(g_real, grad_fn(params, sx, sy), metric)

  return map_classes(one, (real_x, real_y, syn_x, syn_y), class_batch)


def loss(loss_fn, params, real, syn, *, metric: str = "ours", class_batch: int = 0):
  """The gradient-matching loss ``Σ_c D(∇θ ℓ(S_c; θ), sg(∇θ ℓ(T_c; θ)))`` (DC Eq. 10), a scalar.

  Pure: ``jit``, ``grad`` w.r.t. the synthetic images, and ``vmap`` apply. Arguments as
  :func:`class_distances` (``real``/``syn``: class-major arrays with implicit labels, or ``(images, labels)``
  pairs). Augmentation (DSA) is the caller's: apply :func:`jaxdistill.objectives.siamese_augment` first.
  """
  return jnp.sum(class_distances(loss_fn, params, real, syn, metric=metric, class_batch=class_batch))


class GMState(NamedTuple):
  """The current matching network (``TrainState``) and the number of image updates done on it so far."""
  net: training.TrainState
  count: jnp.ndarray


def make_gradient_matching(config: GradientMatchingConfig, *, num_classes: int, image_shape, ipc: int,
                           name: str = "dc") -> Objective:
  """Builds the DC (``config.dsa=False``) or DSA objective for ``ipc`` images of shape ``image_shape``."""
  config.validate()
  image_shape = tuple(image_shape)
  kwargs = {"width": config.width} if config.arch in ("convnet", "convnet_bn", "mlp") else {}
  if config.depth is not None:
    kwargs["depth"] = config.depth
  model = models.get_model(config.arch, num_classes, image_shape, **kwargs)
  tx = training.sgd(config.lr_net, momentum=0.0, weight_decay=0.0)
  dsa = DSAParams(strategy=tuple(config.dsa_strategy)) if config.dsa else None
  outer, inner = config.loops(ipc)

  def fresh(key):
    return training.init_state(model, key, image_shape, tx)

  def init(key):
    """A fresh random network and a zero counter."""
    return GMState(fresh(key), jnp.zeros((), jnp.int32))

  has_bn = "batch_stats" in models.init_variables(model, jax.random.PRNGKey(0), image_shape)

  def frozen_bn_variables(variables, real_x):
    """The reference's BN handling (DC ``main.py``): one train-mode forward pass of a real batch of
    :data:`BN_PER_CLASS` images per class updates the running statistics, which are then frozen (eval mode)
    for matching — a synthetic batch of 1–10 images gives no stable statistics. Here the first
    :data:`BN_PER_CLASS` images of each class's (un-augmented) real batch are used."""
    bn_x = real_x[:, :BN_PER_CLASS].reshape((-1,) + real_x.shape[2:])
    _, new_vars = models.apply(model, variables, bn_x, train=True)
    return {**variables, "batch_stats": jax.lax.stop_gradient(new_vars["batch_stats"])}

  def loss(state: GMState, syn, real: RealBatch, key):
    """Σ_c D(∇θ L(S_c), sg(∇θ L(T_c))) (:func:`class_distances`) — real ``[C, n, ...]`` (or flat with labels
    ``[N]`` outside jit), syn class-major ``[C·ipc, ...]`` in class order."""
    syn_x, syn_y = per_class(syn.images, syn.labels, num_classes)
    real = class_major_real(real, num_classes)
    real_x, real_y = real.images, real.labels
    variables = state.net.variables
    if has_bn:
      variables = frozen_bn_variables(variables, real_x)
    if dsa is not None:
      real_x, syn_x = siamese_augment(key, real_x, syn_x, dsa, config.shared_op)

    def ce(p, x, y):
      # With batch norm the statistics are frozen (eval mode), as the reference does while matching.
      logits, _ = models.apply(model, {**variables, "params": p}, x, train=not has_bn)
      return training.cross_entropy(logits, y)

    # The pure loss's core (the layouts and label order were checked by per_class / class_major_real).
    dist = _class_distances(ce, variables["params"], real_x, real_y, syn_x, syn_y, config.metric,
                            config.class_batch)
    return jnp.sum(dist), {"per_class": dist}

  def train_net(net, images, labels, key):
    """``inner`` epochs of SGD (lr_net, per-image DSA when on; the last partial batch kept, padding masked)."""
    epoch = lambda e, net: training.train_epoch(model, tx, net, images, labels, jax.random.fold_in(key, e),
                                                config.batch_train, dsa=dsa)
    return jax.lax.fori_loop(0, inner, epoch, net)

  def update(state: GMState, syn, key):
    """After an image update: a fresh network every ``outer_loop`` updates, else ``inner_loop`` epochs of
    SGD (lr_net) on the (stopped) synthetic set, with per-image DSA when DSA is on."""
    count = state.count + 1
    images = jax.lax.stop_gradient(syn.images)
    labels = syn.labels
    k_new, k_train = jax.random.split(key)
    if outer == 1:
      net = fresh(k_new)
    else:
      net = jax.lax.cond(count % outer == 0, lambda: fresh(k_new),
                         lambda: train_net(state.net, images, labels, k_train))
    return GMState(net, count)

  host_update = None
  if backend.choose(config.host_inner, cpu=True, accelerator=False):
    fresh_jit = jax.jit(fresh)
    batches_jit = jax.jit(training.epoch_batches, static_argnums=(1, 2))
    step_jit = jax.jit(lambda net, images, labels, batches, ek, s: training.batch_step(
        model, tx, net, images, labels, batches, s, ek, dsa=dsa)[0])

    def host_update(state: GMState, syn, key):
      """:func:`update` as a host loop of jitted SGD steps (same keys, same computation)."""
      count = state.count + 1
      k_new, k_train = jax.random.split(key)
      if outer == 1 or int(count) % outer == 0:
        return GMState(fresh_jit(k_new), count)
      images, labels = jax.lax.stop_gradient(syn.images), syn.labels
      net = state.net
      for e in range(inner):
        ek = jax.random.fold_in(k_train, e)
        batches = batches_jit(ek, images.shape[0], config.batch_train)
        for s in range(batches.order.shape[0]):
          net = step_jit(net, images, labels, batches, ek, jnp.int32(s))
      return GMState(net, count)

  return Objective(name, init, loss, update, config, host_update=host_update)
