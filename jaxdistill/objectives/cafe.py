"""CAFE: Learning to Condense Dataset by Aligning Features (Wang, Zhao, Peng, Zhu, Yang, Wang, Huang, Bilen,
Wang & You, CVPR 2022); the authors' code is ``kaiwang960112/CAFE`` (``distill.py``, ``networks.py``).

Loss, for the current network ψ (features ``f^l`` at layers ``l = 1 … L``, the last one the flattened embedding
before the classifier), real batch ``T_c`` and synthetic set ``S_c`` of every class ``c``:

* layer-wise feature alignment (the code's ``criterion_middle``, ``MSELoss(reduction="sum")`` of class means):
  ``A_l = Σ_c ‖ mean_i f^l(T_c,i) − mean_j f^l(S_c,j) ‖²``;
* discrimination (the code's ``loss_output``): the synthetic class centres ``s_c = mean_j f^L(S_c,j)`` classify
  every real image by the logits ``f^L(T_c,i) · s_k`` (``k = 1 … C``); ``D = Σ_c Σ_i CE(f^L(T_c,i) · sᵀ, c)``,
  summed over the real batch (``CrossEntropyLoss(reduction="sum")``);
* ``L = Σ_l w_l A_l + β D`` with the code's weights (``distill.py`` defaults, ConvNet of depth 3): ``w = (0.1,
  0.1, 1, 2)`` for (block 1, block 2, block 3 after activation, embedding) and ``β = inner_weight = 0.01``. The
  code aligns the pooled block-3 map with ``first_weight = 1`` and the same map flattened once more in
  ``loss_output`` with weight 1: here they are one layer of weight 2 (the same numbers).

Real features are stopped (the real images are not learned). The code also adds the network's cross-entropy on
the real batch to the reported loss; it has no gradient with respect to the synthetic images and is left out.

Bi-level schedule (the code's "dynamic bi-level optimisation", ``distill.py``): for each network, after every
image update the network's accuracy on real images (128 per class) joins a watcher of the last ``window`` = 10
accuracies; once the watcher is full and its range is below ``lambda_1`` = 0.04 the network is replaced by a fresh
random one, otherwise it is trained on the synthetic set (SGD, lr_net 0.01, no momentum, batch 256, per-image DSA
with DSA on) epoch by epoch until the range of the last ``window`` real accuracies, measured after each epoch,
exceeds ``lambda_2`` = 0.03 (capped here at ``max_inner_epochs``, which the code does not have). The real
accuracies are measured on a fixed pool of real images (``probe``, class-major ``[C, p, ...]``, passed to the
factory and carried as ``Objective.data``; :func:`make_probe` draws one), ``probe_per_class`` of them per class at
a time. ``schedule="fixed"`` instead uses the DC loops the code computes but no longer uses (``get_loops``: a
fresh network every ``outer_loop`` image updates, ``inner_loop`` epochs between), which needs no probe.

Two layers, as for DM: the pure loss :func:`loss` / :func:`terms` over arrays and any ``features_fn: images ->
[per-layer features]`` (e.g. :func:`jaxdistill.models.layer_features` closed over variables), and the registered
objective (:func:`make_cafe`, ``make_objective("cafe", ..., probe=...)``).

Example (a user's network)::

  feats = lambda x: models.layer_features(model, variables, x, train=True)   # -> [f_1, …, f_L]
  value, grads = jax.value_and_grad(lambda s: cafe.loss(feats, real, s, layer_weights=(0.1, 0.1, 1., 2.)))(syn)
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import backend, models, training
from jaxdistill.augment import DEFAULT_STRATEGY, DSAParams
from jaxdistill.data.sampling import check_ipc, class_index, sample_balanced
from jaxdistill.objectives.base import (Objective, RealBatch, check_class_major, class_major_real, per_class,
                                        siamese_augment)
from jaxdistill.objectives.gradient_matching import default_loops
from jaxdistill.validation import (check_bools, check_choice, check_dsa_strategy, check_ints, check_network,
                                   check_nonnegative, check_positive, is_number)

ARCHS = ("convnet", "convnet_bn")
SCHEDULES = ("dynamic", "fixed")
INNER_WEIGHT = 0.01  # distill.py --inner_weight
# distill.py --fourth_weight, --third_weight, --second_weight (blocks 1, 2, 3) and --first_weight + loss_output's
# unit weight (the embedding, see the module docstring).
LAYER_WEIGHTS_DEPTH3 = (0.1, 0.1, 1.0, 2.0)


def default_layer_weights(depth: int) -> Tuple[float, ...]:
  """The code's layer weights for a ConvNet of ``depth`` blocks: 0.1 for every block but the last, 1 for the last
  block, 2 for the embedding (``(0.1, 0.1, 1, 2)`` at depth 3, the only depth the code's ConvNet slices; other
  depths extend the pattern: our choice)."""
  check_ints({"depth": depth}, "depth")
  return (0.1,) * (depth - 1) + (1.0, 2.0)


def _features(features_fn, images, k: int, name: str):
  feats = features_fn(images)
  if not isinstance(feats, (list, tuple)) or not feats:
    raise ValueError(f"features_fn must return a non-empty list of per-layer features [k, ...]; got "
                     f"{type(feats).__name__}.")
  for i, f in enumerate(feats):
    if f.ndim < 1 or f.shape[0] != k:
      raise ValueError(f"features_fn must keep the batch axis: for the {k} {name} images its layer {i} has shape "
                       f"{tuple(f.shape)}.")
  return list(feats)


def terms(features_fn, real, syn):
  """The two CAFE terms before weighting (see the module docstring).

  Args:
    features_fn: ``images [k, *image_shape] -> [f_1 [k, ...], …, f_L [k, ...]]``; called once on all real images
      ``[C·n, ...]`` (outputs stopped) and once on all synthetic ones ``[C·m, ...]``. The last layer's features
      (flattened) are the embedding of the discrimination term.
    real: class-major real images ``[C, n, *image_shape]``; syn: ``[C, m, *image_shape]``.

  Returns:
    ``(alignment [L], discrimination)``: ``A_l = Σ_c Σ (mean_i f^l(real_c,i) − mean_j f^l(syn_c,j))²`` and
    ``D = Σ_{c,i} CE(f^L(real_c,i) · sᵀ, c)`` with ``s [C, D]`` the synthetic class means of the last layer.

  Raises:
    ValueError: arrays that are not class-major with the same ``C`` and image shape, or a ``features_fn`` that
      does not return a list of ``[k, ...]`` arrays.
  """
  check_class_major(real, syn)
  c, n = real.shape[:2]
  m = syn.shape[1]
  f_real = [jax.lax.stop_gradient(f) for f in
            _features(features_fn, real.reshape((c * n,) + real.shape[2:]), c * n, "real")]
  f_syn = _features(features_fn, syn.reshape((c * m,) + syn.shape[2:]), c * m, "syn")
  if len(f_real) != len(f_syn):
    raise ValueError(f"features_fn returned {len(f_real)} layers for the real and {len(f_syn)} for the synthetic "
                     "images.")
  r_means = [f.reshape((c, n, -1)).mean(1) for f in f_real]
  s_means = [f.reshape((c, m, -1)).mean(1) for f in f_syn]
  alignment = jnp.stack([jnp.sum(jnp.square(r - s)) for r, s in zip(r_means, s_means)])
  logits = f_real[-1].reshape(c * n, -1) @ s_means[-1].T  # [C·n, C]
  labels = jnp.repeat(jnp.arange(c), n)
  discrimination = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  return alignment, discrimination


def _weights(layer_weights, num_layers: int):
  if layer_weights is None:
    return jnp.ones((num_layers,), jnp.float32)
  if len(layer_weights) != num_layers:
    raise ValueError(f"layer_weights must have one entry per layer of features_fn ({num_layers}), got "
                     f"{len(layer_weights)}.")
  return jnp.asarray(layer_weights, jnp.float32)


def loss(features_fn, real, syn, *, layer_weights: Optional[Sequence[float]] = None,
         inner_weight: float = INNER_WEIGHT):
  """The CAFE loss ``Σ_l w_l A_l + inner_weight · D`` (:func:`terms`), a scalar.

  Pure: ``jit`` / ``grad`` (w.r.t. ``syn`` or what ``features_fn`` closes over) apply. Augmentation is the
  caller's (:func:`jaxdistill.objectives.siamese_augment` on both arrays first, as CAFE+DSA).

  Args:
    features_fn: ``images [k, ...] -> list of L per-layer features [k, ...]``.
    real: ``[C, n, *image_shape]`` class-major real images; syn: ``[C, m, *image_shape]``.
    layer_weights: ``L`` weights ``w_l`` (None: all 1; CAFE's ConvNet-3 values are
      :data:`LAYER_WEIGHTS_DEPTH3`).
    inner_weight: ``β``, the weight of the discrimination term (CAFE: 0.01).

  Raises:
    ValueError: as :func:`terms`, or ``layer_weights`` of the wrong length.
  """
  alignment, discrimination = terms(features_fn, real, syn)
  return jnp.sum(_weights(layer_weights, alignment.shape[0]) * alignment) + inner_weight * discrimination


@dataclasses.dataclass(frozen=True)
class CAFEConfig:
  """CAFE settings (the defaults of the authors' ``distill.py``).

  Attributes:
    arch, width, depth: the network (ConvNet-128, depth from the image size; ``convnet_bn`` for batch norm).
    layer_weights: weights of the ``depth + 1`` aligned layers (blocks, then the embedding); None:
      :func:`default_layer_weights` (the code's ``(0.1, 0.1, 1, 2)`` at depth 3).
    inner_weight: weight of the discrimination term (0.01).
    dsa, dsa_strategy, shared_op: siamese augmentation (off in the code's default ``--method DC``; CAFE+DSA on).
    lr_net, batch_train: the inner SGD (0.01, no momentum; batch 256).
    schedule: ``"dynamic"`` (the code's watchers; needs a ``probe``) or ``"fixed"`` (DC's ``get_loops``).
    lambda_1: a fresh network once the last ``window`` real accuracies after image updates span less than this.
    lambda_2: inner training stops once the last ``window`` real accuracies after epochs span more than this.
    window: length of both watchers (10 in the code).
    probe_per_class: real images per class of each accuracy measurement (128 in the code).
    max_inner_epochs: cap on the epochs of one inner training (ours; the code loops until ``lambda_2`` is met).
    outer_loop, inner_loop: the fixed schedule's loops (None: :func:`~jaxdistill.objectives.default_loops`).
    host_inner: also build ``Objective.host_update`` (a host loop of jitted steps, faster on XLA:CPU; see
      :class:`~jaxdistill.objectives.GradientMatchingConfig`); None: on for CPU.
  """
  arch: str = "convnet"
  width: int = 128
  depth: Optional[int] = None
  layer_weights: Optional[Tuple[float, ...]] = None
  inner_weight: float = INNER_WEIGHT
  dsa: bool = False
  dsa_strategy: Tuple[str, ...] = DEFAULT_STRATEGY
  shared_op: bool = False
  lr_net: float = 0.01
  batch_train: int = 256
  schedule: str = "dynamic"
  lambda_1: float = 0.04
  lambda_2: float = 0.03
  window: int = 10
  probe_per_class: int = 128
  max_inner_epochs: int = 100
  outer_loop: Optional[int] = None
  inner_loop: Optional[int] = None
  host_inner: Optional[bool] = None

  def validate(self):
    check_network(self.arch, self.width, self.depth, archs=ARCHS)
    if self.layer_weights is not None:
      if isinstance(self.layer_weights, (str, bytes)) or not all(
          is_number(w) and w >= 0 for w in tuple(self.layer_weights)) or not tuple(self.layer_weights):
        raise ValueError(f"layer_weights must be None or a non-empty sequence of numbers >= 0, got "
                         f"{self.layer_weights!r}.")
    check_nonnegative(self, "inner_weight")
    check_bools(self, ("dsa", "shared_op"))
    check_dsa_strategy(self.dsa_strategy)
    check_positive(self, ("lr_net", "lambda_1", "lambda_2"))
    check_ints(self, ("batch_train", "window", "probe_per_class", "max_inner_epochs"))
    check_ints(self, ("outer_loop", "inner_loop"), optional=True)
    check_choice("schedule", self.schedule, SCHEDULES)
    return self

  def loops(self, ipc: int) -> Tuple[int, int]:
    """``(outer_loop, inner_loop)`` of the fixed schedule."""
    outer, inner = default_loops(ipc)
    return int(self.outer_loop or outer), int(self.inner_loop or inner)


class CAFEState(NamedTuple):
  """The current network, the outer watcher (the last ``window`` real accuracies after image updates on it,
  oldest first, ``filled`` of them set) and the number of image updates done on it."""
  net: training.TrainState
  accs: jnp.ndarray
  filled: jnp.ndarray
  count: jnp.ndarray


def make_probe(key, images, labels, num_classes: int, per_class: int):
  """A fixed class-major pool of real images ``[C, per_class, ...]`` for CAFE's accuracy watchers (random images
  of each class, without replacement) from ``images [N, ...]`` / int ``labels [N]``.

  Raises:
    ValueError: ``per_class`` larger than the smallest class.
  """
  index = class_index(np.asarray(labels), num_classes)
  check_ipc(index, per_class, "per_class")
  pos = np.asarray(sample_balanced(key, index, per_class))
  return jnp.asarray(np.asarray(images)[pos], jnp.float32)


def watch(accs, filled, acc):
  """Pushes ``acc`` into a watcher ``accs [w]`` (oldest first, ``filled`` entries set); returns the new
  ``(accs, filled, span)`` where ``span`` is ``max − min`` of the entries once all ``w`` are set, else -1."""
  w = accs.shape[0]
  accs = jnp.roll(accs, -1).at[-1].set(acc)
  filled = jnp.minimum(filled + 1, w)
  span = jnp.where(filled == w, jnp.max(accs) - jnp.min(accs), -1.0)
  return accs, filled, span


def make_cafe(config: CAFEConfig, *, num_classes: int, image_shape, ipc: int, name: str = "cafe",
              probe=None) -> Objective:
  """Builds the CAFE objective.

  Args:
    probe: real images ``[C, p, *image_shape]`` (class-major, :func:`make_probe`) on which the dynamic schedule
      measures the network's accuracy; required for ``schedule="dynamic"``, unused by ``"fixed"``.

  Raises:
    ValueError: a bad config, ``layer_weights`` not of length ``depth + 1``, or a missing / misshapen probe.
  """
  config.validate()
  image_shape = tuple(image_shape)
  kwargs = {"width": config.width}
  if config.depth is not None:
    kwargs["depth"] = config.depth
  model = models.get_model(config.arch, num_classes, image_shape, **kwargs)
  weights = config.layer_weights
  if weights is None:
    weights = default_layer_weights(model.depth)
  if len(weights) != model.depth + 1:
    raise ValueError(f"layer_weights must have depth + 1 = {model.depth + 1} entries (the blocks, then the "
                     f"embedding), got {len(weights)}.")
  weights = jnp.asarray(weights, jnp.float32)
  tx = training.sgd(config.lr_net, momentum=0.0, weight_decay=0.0)
  dsa = DSAParams(strategy=tuple(config.dsa_strategy)) if config.dsa else None
  dynamic = config.schedule == "dynamic"
  outer, inner = config.loops(ipc)
  window = config.window
  if dynamic:
    if probe is None:
      raise ValueError("CAFE's dynamic schedule needs probe= real images [C, p, *image_shape] "
                       "(jaxdistill.objectives.cafe.make_probe), or use schedule='fixed'.")
    probe = jnp.asarray(probe, jnp.float32)
    if probe.ndim != len(image_shape) + 2 or probe.shape[0] != num_classes or tuple(probe.shape[2:]) != image_shape:
      raise ValueError(f"probe must be class-major real images [C={num_classes}, p, *{image_shape}], got shape "
                       f"{tuple(probe.shape)}.")
  else:
    probe = None
  per = None if probe is None else min(config.probe_per_class, probe.shape[1])

  def fresh(key):
    return training.init_state(model, key, image_shape, tx)

  def init(key):
    """A fresh random network and empty watchers."""
    return CAFEState(fresh(key), jnp.zeros((window,), jnp.float32), jnp.zeros((), jnp.int32),
                     jnp.zeros((), jnp.int32))

  def loss(state: CAFEState, syn, real: RealBatch, key, data=None):
    """``Σ_l w_l A_l + β D`` (:func:`terms`) on the current network; real ``[C, n, ...]`` (or flat with labels
    outside jit), syn class-major ``[C·ipc, ...]``. aux: ``alignment [L]`` and ``discrimination``."""
    syn_x, _ = per_class(syn.images, syn.labels, num_classes)
    real_x = class_major_real(real, num_classes).images
    if dsa is not None:
      real_x, syn_x = siamese_augment(key, real_x, syn_x, dsa, config.shared_op)
    variables = state.net.variables
    alignment, discrimination = terms(lambda x: models.layer_features(model, variables, x, train=True),
                                      real_x, syn_x)
    value = jnp.sum(weights * alignment) + config.inner_weight * discrimination
    return value, {"alignment": alignment, "discrimination": discrimination}

  def probe_accuracy(variables, data, key):
    """Accuracy (eval mode) on ``per`` random probe images of each class."""
    p = data.shape[1]
    if per < p:
      idx = jax.vmap(lambda k: jax.random.permutation(k, p)[:per])(jax.random.split(key, num_classes))
      x = data[jnp.arange(num_classes)[:, None], idx]
    else:
      x = data
    logits, _ = models.apply(model, variables, x.reshape((num_classes * per,) + image_shape), train=False)
    return jnp.mean(jnp.argmax(logits, -1) == jnp.repeat(jnp.arange(num_classes), per))

  def epoch_keys(key, e):
    return jax.random.split(jax.random.fold_in(key, e))

  def inner_dynamic(net, images, labels, key, data):
    """Epochs of SGD on the synthetic set until the real-accuracy watcher spans more than ``lambda_2`` (or
    ``max_inner_epochs``)."""
    def cond(carry):
      e, _, _, _, done = carry
      return jnp.logical_and(~done, e < config.max_inner_epochs)

    def body(carry):
      e, net, accs, filled, _ = carry
      k_train, k_probe = epoch_keys(key, e)
      net = training.train_epoch(model, tx, net, images, labels, k_train, config.batch_train, dsa=dsa)
      accs, filled, span = watch(accs, filled, probe_accuracy(net.variables, data, k_probe))
      return e + 1, net, accs, filled, span > config.lambda_2

    carry = (jnp.zeros((), jnp.int32), net, jnp.zeros((window,), jnp.float32), jnp.zeros((), jnp.int32),
             jnp.zeros((), bool))
    return jax.lax.while_loop(cond, body, carry)[1]

  def update(state: CAFEState, syn, key, data=None):
    """After an image update: dynamic — a fresh network once the outer watcher spans less than ``lambda_1``,
    else inner training until the inner watcher spans more than ``lambda_2``; fixed — a fresh network every
    ``outer_loop`` updates, else ``inner_loop`` epochs."""
    images, labels = jax.lax.stop_gradient(syn.images), syn.labels
    k_probe, k_new, k_train = jax.random.split(key, 3)
    count = state.count + 1
    if not dynamic:
      def train_fixed():
        epoch = lambda e, net: training.train_epoch(model, tx, net, images, labels, jax.random.fold_in(k_train, e),
                                                    config.batch_train, dsa=dsa)
        return state._replace(net=jax.lax.fori_loop(0, inner, epoch, state.net), count=count)
      if outer == 1:
        return init(k_new)
      return jax.lax.cond(count % outer == 0, lambda: init(k_new), train_fixed)
    accs, filled, span = watch(state.accs, state.filled, probe_accuracy(state.net.variables, data, k_probe))
    renew = jnp.logical_and(span >= 0, span < config.lambda_1)
    return jax.lax.cond(renew, lambda: init(k_new),
                        lambda: CAFEState(inner_dynamic(state.net, images, labels, k_train, data), accs, filled,
                                          count))

  host_update = None
  if backend.choose(config.host_inner, cpu=True, accelerator=False):
    init_jit = jax.jit(init)
    batches_jit = jax.jit(training.epoch_batches, static_argnums=(1, 2))
    step_jit = jax.jit(lambda net, images, labels, batches, ek, s: training.batch_step(
        model, tx, net, images, labels, batches, s, ek, dsa=dsa)[0])
    epoch_keys_jit = jax.jit(epoch_keys)
    measure_jit = jax.jit(lambda variables, data, key, accs, filled: watch(
        accs, filled, probe_accuracy(variables, data, key)))

    def run_epoch(net, images, labels, k_train):
      batches = batches_jit(k_train, images.shape[0], config.batch_train)
      for s in range(batches.order.shape[0]):
        net = step_jit(net, images, labels, batches, k_train, jnp.int32(s))
      return net

    def host_update(state: CAFEState, syn, key, data=None):
      """:func:`update` as a host loop of jitted steps (same keys, same computation)."""
      images, labels = jax.lax.stop_gradient(syn.images), syn.labels
      k_probe, k_new, k_train = jax.random.split(key, 3)
      count = state.count + 1
      if not dynamic:
        if outer == 1 or int(count) % outer == 0:
          return init_jit(k_new)
        net = state.net
        for e in range(inner):
          net = run_epoch(net, images, labels, jax.random.fold_in(k_train, e))
        return state._replace(net=net, count=count)
      accs, filled, span = measure_jit(state.net.variables, data, k_probe, state.accs, state.filled)
      if bool(jnp.logical_and(span >= 0, span < config.lambda_1)):  # compared in float32, as in update
        return init_jit(k_new)
      net = state.net
      in_accs, in_filled = jnp.zeros((window,), jnp.float32), jnp.zeros((), jnp.int32)
      for e in range(config.max_inner_epochs):
        ek_train, ek_probe = epoch_keys_jit(k_train, e)
        net = run_epoch(net, images, labels, ek_train)
        in_accs, in_filled, in_span = measure_jit(net.variables, data, ek_probe, in_accs, in_filled)
        if bool(in_span > config.lambda_2):
          break
      return CAFEState(net, accs, filled, count)

  return Objective(name, init, loss, update, config, data=probe, host_update=host_update)
