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

Two later refinements are options of the same objective (docs/idc_dcc.md):

* IDC (Kim et al., ICML 2022): the matching network is trained on *real* data between image updates
  (``inner_data="real"``, SGD with momentum and weight decay) and re-initialised every ``outer_loop`` updates;
  the distance is the plain L1 / squared L2 difference of the convolution-weight gradients (``metric="l1"`` /
  ``"mse"``, ``layers="conv"``); the siamese augmentation applies every listed operation in turn
  (``dsa_sequential``). IDC's multi-formation is a parameterisation
  (:mod:`jaxdistill.synthetic.multi_formation`), usable with any objective.
* DCC (Lee et al., ICML 2022): class-collaborative matching (``class_collaborative=True``),
  ``D(mean_c ∇θ L(S_c), sg(mean_c ∇θ L(T_c)))`` — one distance between the gradients averaged over all classes,
  so the synthetic images of one class are shaped by the other classes' gradients too — after a bi-level
  warm-up of per-class matching (``warmup_outer`` / ``warmup_inner``); pure form :func:`collaborative_distance`.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import backend, models, training
from jaxdistill.augment import DEFAULT_STRATEGY, DSAParams, apply_op
from jaxdistill.models.layers import check_choice
from jaxdistill.validation import (check_bools, check_dsa_strategy, check_in_range, check_ints, check_network,
                                   check_nonnegative, check_positive)
from jaxdistill.objectives.base import (Objective, RealBatch, check_class_major, check_class_order,
                                        class_major_real, implicit_labels, map_classes, per_class, safe_norm,
                                        siamese_augment)

METRICS = ("ours", "mse", "cos", "l1")
# Which gradient tensors are matched: all, those of rank >= 2 (weights: no biases / normalisation parameters), or
# rank >= 3 (convolution kernels only: IDC's default, ``--bias False --fc False``).
LAYERS = ("all", "weights", "conv")
_MIN_RANK = {"all": 0, "weights": 2, "conv": 3}
INNER_DATA = ("synthetic", "real")
EPS = 1e-6
BN_PER_CLASS = 16  # real images per class that set a batch-norm matching net's statistics (DC code: BNSizePC)
# IPC -> (outer_loop, inner_loop) of the reference code (DC/DSA ``get_loops``).
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


# DCC's ``get_loops`` (Saehyung-Lee/DCC, utils.py): as DC's except IPC 1, which gets 10 image updates per
# network with 5 network epochs in between.
DCC_LOOPS = {**LOOPS, 1: (10, 5)}


def default_loops(ipc: int, table=None) -> Tuple[int, int]:
  """``(outer_loop, inner_loop)`` for ``ipc`` (METHODS.md: 1/10/50 -> 1/10/50 and 1/50/10); other IPCs use
  the nearest tabulated one. ``table``: another ``{ipc: (outer, inner)}`` (e.g. :data:`DCC_LOOPS`)."""
  table = LOOPS if table is None else table
  nearest = min(table, key=lambda k: (abs(k - ipc), k))
  return table[nearest]


def idc_image_lr(lr_img: float, ipc: int, image_size: int, std, base_size: int = 32) -> float:
  """IDC's image learning rate for our normalised images.

  IDC's code (``argument.py``, ``tune_lr_img``) scales its base rate by ``(ipc / 10) · (size / base)²``
  (``base`` 28 for MNIST, 32 for the other small datasets, 224 for ImageNet) and optimises images in ``[0, 1]``
  with the normalisation inside the network input; SGD on normalised images ``x̃ = (x − μ) / σ`` takes the same
  steps in ``x`` with the rate divided by ``σ²`` (averaged over channels here). Returns
  ``lr_img · (ipc / 10) · (image_size / base_size)² / mean(σ²)``.
  """
  check_ints({"ipc": ipc, "image_size": image_size, "base_size": base_size}, ("ipc", "image_size", "base_size"))
  std = np.atleast_1d(np.asarray(std, np.float64))
  if std.size == 0 or not np.all(std > 0):
    raise ValueError(f"std must be one or more positive numbers (per channel), got {std.tolist()}.")
  var = float(np.mean(np.square(std)))
  return float(lr_img) * (int(ipc) / 10.0) * (int(image_size) / int(base_size)) ** 2 / var


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
    layers: which gradient tensors are matched: ``"all"`` (DC), ``"weights"`` (rank ≥ 2: no biases or
      normalisation parameters) or ``"conv"`` (rank ≥ 3: convolution kernels only, IDC's default). ``"ours"``
      gives rank-1 tensors zero distance whatever this is.
    dsa_sequential: the siamese augmentation applies *every* operation of ``dsa_strategy`` in turn (IDC's
      matching augmentation ``color_crop_cutout``) instead of one drawn operation (DSA); only with ``dsa``.
    inner_data: what the matching network is trained on between image updates: ``"synthetic"`` (DC/DSA/DCC,
      ``inner_loop`` epochs over the synthetic set) or ``"real"`` (IDC: ``inner_loop`` passes over
      ``real_train_size`` random real training images, in minibatches of ``batch_train``); ``"real"`` needs the
      training set given to :func:`make_gradient_matching` (``real_images=``, ``real_labels=``).
    real_train_size: real images per inner pass with ``inner_data="real"`` (IDC's ``n_data``, 500).
    net_momentum, net_weight_decay: SGD momentum / weight decay of the inner network training (DC: 0 / 0;
      IDC: 0.9 / 5e-4).
    class_collaborative: DCC: match ``mean_c ∇θ L(S_c)`` against ``mean_c ∇θ L(T_c)`` with one distance
      (:func:`collaborative_distance`) instead of summing per-class distances; the IPC -> loops table becomes
      DCC's (:data:`DCC_LOOPS`, IPC 1: 10 / 5).
    warmup_outer, warmup_inner: DCC's bi-level warm-up: per-class matching is used while the current network
      is one of the first ``warmup_outer`` ones *and* fewer than ``warmup_inner`` image updates have been made
      on it; collaborative matching otherwise (DCC: 250 / 10; 0 / 0: always collaborative). Only with
      ``class_collaborative``.
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
  layers: str = "all"
  dsa_sequential: bool = False
  inner_data: str = "synthetic"
  real_train_size: int = 500
  net_momentum: float = 0.0
  net_weight_decay: float = 0.0
  class_collaborative: bool = False
  warmup_outer: int = 0
  warmup_inner: int = 0

  def validate(self):
    check_network(self.arch, self.width, self.depth)
    check_choice("metric", self.metric, METRICS)
    check_choice("layers", self.layers, LAYERS)
    check_choice("inner_data", self.inner_data, INNER_DATA)
    check_ints(self, ("batch_train", "real_train_size"))
    check_ints(self, ("outer_loop", "inner_loop"), optional=True)
    check_ints(self, "class_batch", minimum=0, note="0 = all classes at once")
    check_ints(self, ("warmup_outer", "warmup_inner"), minimum=0, note="0 = no warm-up")
    check_positive(self, "lr_net")
    check_in_range("net_momentum", self.net_momentum, 0, 1, hi_closed=False)
    check_nonnegative(self, "net_weight_decay")
    check_bools(self, ("dsa_sequential", "class_collaborative"))
    check_dsa_strategy(self.dsa_strategy)
    if not self.class_collaborative and (self.warmup_outer or self.warmup_inner):
      raise ValueError("warmup_outer / warmup_inner are DCC's warm-up of class-collaborative matching: they need "
                       f"class_collaborative=True (got warmup_outer={self.warmup_outer}, "
                       f"warmup_inner={self.warmup_inner}).")
    return self

  def loops(self, ipc: int) -> Tuple[int, int]:
    outer, inner = default_loops(ipc, DCC_LOOPS if self.class_collaborative else LOOPS)
    return int(self.outer_loop or outer), int(self.inner_loop or inner)

  def collaborative_from(self) -> Optional[Tuple[int, int]]:
    """None (per-class matching throughout) or DCC's switch ``(warmup_outer, warmup_inner)``; ``(0, 0)``:
    collaborative from the start."""
    if not self.class_collaborative:
      return None
    return int(self.warmup_outer), int(self.warmup_inner)


def _channel_distance(a, b):
  """DC Eq. 9 for one tensor: ``Σ_i 1 − cos(A_i, B_i)`` over output channels (the last axis in Flax's
  ``[kh, kw, in, out]`` / ``[in, out]`` layouts); 0 for 1-D tensors (biases, norm scales/offsets)."""
  if a.ndim < 2:
    return 0.0
  a = jnp.moveaxis(a, -1, 0).reshape(a.shape[-1], -1)
  b = jnp.moveaxis(b, -1, 0).reshape(b.shape[-1], -1)
  dots = jnp.sum(a * b, axis=-1)
  return jnp.sum(1.0 - dots / (safe_norm(a, -1) * safe_norm(b, -1) + EPS))


def _select_layers(la, lb, layers: str):
  """The pairs of gradient tensors ``layers`` matches (:data:`LAYERS`); ValueError when none is selected."""
  check_choice("layers", layers, LAYERS)
  if layers == "all":
    return la, lb
  keep = [i for i, a in enumerate(la) if np.ndim(a) >= _MIN_RANK[layers]]
  if not keep:
    raise ValueError(f"layers={layers!r} selects no gradient tensor (ranks {[np.ndim(a) for a in la]}); use "
                     f"one of {list(LAYERS)} that keeps at least one.")
  return [la[i] for i in keep], [lb[i] for i in keep]


def match_distance(g_real, g_syn, metric: str = "ours", layers: str = "all"):
  """Distance between two gradient pytrees (same structure).

  ``"ours"``: Σ over weight tensors of :func:`_channel_distance` (biases / norm parameters skipped);
  ``"mse"``: squared L2 distance of all gradients concatenated; ``"cos"``: ``1 − cos`` of all gradients
  concatenated (eps 1e-6); ``"l1"``: L1 distance of all gradients concatenated (IDC's default; IDC's ``mse`` is
  ``"mse"``, both summed over the layers it matches). ``layers`` restricts the tensors to those of rank ≥ 2
  (``"weights"``) or ≥ 3 (``"conv"``, IDC); ``"all"`` keeps every tensor. Returns a scalar.
  """
  check_choice("metric", metric, METRICS)
  la, lb = _select_layers(jax.tree_util.tree_leaves(g_real), jax.tree_util.tree_leaves(g_syn), layers)
  if metric == "ours":
    return sum(_channel_distance(a, b) for a, b in zip(la, lb))
  a = jnp.concatenate([x.reshape(-1) for x in la])
  b = jnp.concatenate([x.reshape(-1) for x in lb])
  if metric == "mse":
    return jnp.sum(jnp.square(a - b))
  if metric == "l1":
    return jnp.sum(jnp.abs(a - b))
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


def class_distances(loss_fn, params, real, syn, *, metric: str = "ours", class_batch: int = 0,
                    layers: str = "all"):
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
    metric: ``"ours"`` (DC Eq. 9), ``"mse"``, ``"cos"`` or ``"l1"`` (:func:`match_distance`).
    class_batch: 0 = all classes in one ``vmap``; k > 0 = k classes at a time (``lax.map``).
    layers: ``"all"``, ``"weights"`` or ``"conv"``: the gradient tensors matched (:func:`match_distance`).

  Returns:
    ``[C]`` distances; differentiable w.r.t. the synthetic images (second order through ``loss_fn``).

  Raises:
    ValueError: an unknown metric, or arrays / labels outside the layout above (a flat real batch is refused:
      group it with :func:`jaxdistill.objectives.group_by_class`).
  """
  real_x, real_y, syn_x, syn_y = _checked_pair(real, syn, metric, layers)
  return _class_distances(loss_fn, params, real_x, real_y, syn_x, syn_y, metric, class_batch, layers)


def _checked_pair(real, syn, metric: str, layers: str):
  """The checks shared by the pure entry points: ``(real_x, real_y, syn_x, syn_y)`` class-major
  (``[C, n, ...]`` images with ``[C, n]`` / ``[C, n, K]`` labels), the metric and layer choice validated."""
  check_choice("metric", metric, METRICS)
  check_choice("layers", layers, LAYERS)
  real_x, real_y = _images_and_labels(real, "real")
  syn_x, syn_y = _images_and_labels(syn, "syn")
  check_class_major(real_x, syn_x)
  return real_x, real_y, syn_x, syn_y


def _class_distances(loss_fn, params, real_x, real_y, syn_x, syn_y, metric: str, class_batch: int,
                     layers: str = "all"):
  """:func:`class_distances` on checked arrays: images ``[C, n, ...]``, labels ``[C, n]`` / ``[C, n, K]``."""
  grad_fn = jax.grad(loss_fn)

  def one(rx, ry, sx, sy):
    g_real = jax.tree_util.tree_map(jax.lax.stop_gradient, grad_fn(params, rx, ry))
    return match_distance(g_real, grad_fn(params, sx, sy), metric, layers)

  return map_classes(one, (real_x, real_y, syn_x, syn_y), class_batch)


def collaborative_distance(loss_fn, params, real, syn, *, metric: str = "ours", class_batch: int = 0,
                           layers: str = "all"):
  """DCC's class-collaborative matching distance, a scalar:
  ``D((1/C) Σ_c ∇θ ℓ(S_c; θ), sg((1/C) Σ_c ∇θ ℓ(T_c; θ)))``.

  The class gradients are averaged *before* the distance, so every synthetic image receives the other classes'
  (contrastive) signal; for a mean loss and ``m`` images in every class the synthetic side is the gradient of
  the loss over the whole synthetic set, as in the DCC code. With one class it equals :func:`loss`.

  Args:
    loss_fn: ``loss_fn(params, images [k, ...], labels [k] | [k, K]) -> scalar`` (the mean loss of a batch).
    params: the network parameters (a pytree).
    real, syn: class-major ``[C, n, *image_shape]`` / ``[C, m, *image_shape]`` arrays (implicit labels) or
      ``(images, labels [C, n] | [C, n, K])`` pairs, as :func:`class_distances`; real gradients are stopped.
    metric, layers: the distance (:func:`match_distance`).
    class_batch: 0 = all per-class gradients in one ``vmap``; k > 0 = k classes at a time (``lax.map``).

  Returns:
    A scalar, differentiable w.r.t. the synthetic images (second order through ``loss_fn``).

  Raises:
    ValueError: as :func:`class_distances`.
  """
  real_x, real_y, syn_x, syn_y = _checked_pair(real, syn, metric, layers)
  return _collaborative_distance(loss_fn, params, real_x, real_y, syn_x, syn_y, metric, class_batch, layers)


def _collaborative_distance(loss_fn, params, real_x, real_y, syn_x, syn_y, metric: str, class_batch: int,
                            layers: str):
  """:func:`collaborative_distance` on checked arrays."""
  grad_fn = jax.grad(loss_fn)
  mean = lambda g: jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), g)
  g_real = mean(map_classes(lambda x, y: grad_fn(params, x, y), (real_x, real_y), class_batch))
  g_real = jax.tree_util.tree_map(jax.lax.stop_gradient, g_real)
  g_syn = mean(map_classes(lambda x, y: grad_fn(params, x, y), (syn_x, syn_y), class_batch))
  return match_distance(g_real, g_syn, metric, layers)


def loss(loss_fn, params, real, syn, *, metric: str = "ours", class_batch: int = 0, layers: str = "all",
         class_collaborative: bool = False):
  """The gradient-matching loss, a scalar: ``Σ_c D(∇θ ℓ(S_c; θ), sg(∇θ ℓ(T_c; θ)))`` (DC Eq. 10), or with
  ``class_collaborative`` DCC's ``D(mean_c ∇θ ℓ(S_c; θ), sg(mean_c ∇θ ℓ(T_c; θ)))``
  (:func:`collaborative_distance`).

  Pure: ``jit``, ``grad`` w.r.t. the synthetic images, and ``vmap`` apply. Arguments as
  :func:`class_distances` (``real [C, n, ...]`` / ``syn [C, m, ...]``: class-major arrays with implicit labels,
  or ``(images, labels)`` pairs; ``loss_fn(params, images [k, ...], labels [k]) -> scalar``). IDC's distance is
  ``metric="l1"`` (or ``"mse"``) with ``layers="conv"``. Augmentation (DSA) is the caller's: apply
  :func:`jaxdistill.objectives.siamese_augment` first.
  """
  if class_collaborative:
    return collaborative_distance(loss_fn, params, real, syn, metric=metric, class_batch=class_batch,
                                  layers=layers)
  return jnp.sum(class_distances(loss_fn, params, real, syn, metric=metric, class_batch=class_batch,
                                 layers=layers))


class GMState(NamedTuple):
  """The current matching network (``TrainState``) and the number of image updates done on it so far."""
  net: training.TrainState
  count: jnp.ndarray


def sequential_siamese_augment(key, real, syn, dsa: DSAParams):
  """IDC's matching augmentation: *every* operation of ``dsa.strategy`` in turn (``color_crop_cutout``: colour,
  then crop, then cutout), each with one parameter draw per class shared by the class's real ``[C, n, ...]`` and
  synthetic ``[C, m, ...]`` images (siamese). Returns ``(real_aug, syn_aug)``."""
  num_classes = real.shape[0]
  for j, op in enumerate(dsa.strategy):
    single = dataclasses.replace(dsa, strategy=(op,))
    keys = jax.random.split(jax.random.fold_in(key, j), num_classes)
    fn = jax.vmap(lambda k, x, p=single: apply_op(0, k, x, p, per_image=False))
    real, syn = fn(keys, real), fn(keys, syn)
  return real, syn


def _check_real_data(real_images, real_labels, num_classes: int, image_shape):
  """The training set for ``inner_data="real"``: ``{"images": float32 [N, *image_shape], "labels": int32 [N]}``."""
  if real_images is None or real_labels is None:
    raise ValueError("inner_data='real' (IDC) trains the matching network on real data: pass the training set "
                     "as real_images=[N, H, W, C] and real_labels=[N] to make_gradient_matching / make_objective.")
  images = jnp.asarray(real_images, jnp.float32)
  labels = np.asarray(real_labels)
  if images.ndim != len(image_shape) + 1 or tuple(images.shape[1:]) != tuple(image_shape):
    raise ValueError(f"real_images must be [N, {', '.join(map(str, image_shape))}], got {tuple(images.shape)}.")
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"real_labels must be int [N] with N = {images.shape[0]}, got {labels.dtype}{list(labels.shape)}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"real_labels must be in 0 … {num_classes - 1}, got range {labels.min()} … {labels.max()}.")
  return {"images": images, "labels": jnp.asarray(labels, jnp.int32)}


def make_gradient_matching(config: GradientMatchingConfig, *, num_classes: int, image_shape, ipc: int,
                           name: str = "dc", real_images=None, real_labels=None) -> Objective:
  """Builds the DC (``config.dsa=False``), DSA, IDC or DCC objective for ``ipc`` images of shape
  ``image_shape`` (see :class:`GradientMatchingConfig`).

  ``real_images [N, H, W, C]`` / ``real_labels [N]``: the training set the matching network is trained on when
  ``config.inner_data == "real"`` (IDC; required then, refused otherwise). It becomes the objective's ``data``
  (passed by the distillation loop to ``loss`` / ``update``)."""
  config.validate()
  image_shape = tuple(image_shape)
  kwargs = {"width": config.width} if config.arch in ("convnet", "convnet_bn", "mlp") else {}
  if config.depth is not None:
    kwargs["depth"] = config.depth
  model = models.get_model(config.arch, num_classes, image_shape, **kwargs)
  tx = training.sgd(config.lr_net, momentum=config.net_momentum, weight_decay=config.net_weight_decay)
  dsa = DSAParams(strategy=tuple(config.dsa_strategy)) if config.dsa else None
  outer, inner = config.loops(ipc)
  train_real = config.inner_data == "real"
  if train_real:
    real_data = _check_real_data(real_images, real_labels, num_classes, image_shape)
    n_real = min(int(config.real_train_size), int(real_data["images"].shape[0]))
  elif real_images is not None or real_labels is not None:
    raise ValueError("real_images / real_labels are only used with inner_data='real' (IDC); "
                     f"this config has inner_data={config.inner_data!r}.")
  else:
    real_data = None
  switch = config.collaborative_from()

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

  def loss(state: GMState, syn, real: RealBatch, key, data=None):
    """Σ_c D(∇θ L(S_c), sg(∇θ L(T_c))) (:func:`class_distances`), or DCC's collaborative distance once its
    warm-up is over — real ``[C, n, ...]`` (or flat with labels ``[N]`` outside jit), syn class-major
    ``[C·m, ...]`` in class order. ``data`` (the training set of ``inner_data="real"``) is not used here."""
    del data
    syn_x, syn_y = per_class(syn.images, syn.labels, num_classes)
    real = class_major_real(real, num_classes)
    real_x, real_y = real.images, real.labels
    variables = state.net.variables
    if has_bn:
      variables = frozen_bn_variables(variables, real_x)
    if dsa is not None:
      if config.dsa_sequential:
        real_x, syn_x = sequential_siamese_augment(key, real_x, syn_x, dsa)
      else:
        real_x, syn_x = siamese_augment(key, real_x, syn_x, dsa, config.shared_op)

    def ce(p, x, y):
      # With batch norm the statistics are frozen (eval mode), as the reference does while matching.
      logits, _ = models.apply(model, {**variables, "params": p}, x, train=not has_bn)
      return training.cross_entropy(logits, y)

    # The pure loss's core (the layouts and label order were checked by per_class / class_major_real).
    args = (ce, variables["params"], real_x, real_y, syn_x, syn_y, config.metric, config.class_batch,
            config.layers)
    if switch is None:
      dist = _class_distances(*args)
      return jnp.sum(dist), {"per_class": dist}
    collaborative = lambda: _collaborative_distance(*args)
    if switch[0] == 0 or switch[1] == 0:  # no warm-up: collaborative throughout
      return collaborative(), {"collaborative": jnp.ones((), jnp.float32)}
    # DCC's bi-level warm-up: network number count // outer, image update count % outer on it.
    on = (state.count // outer >= switch[0]) | (state.count % outer >= switch[1])
    value = jax.lax.cond(on, collaborative, lambda: jnp.sum(_class_distances(*args)))
    return value, {"collaborative": on.astype(jnp.float32)}

  def train_net(net, images, labels, key):
    """``inner`` epochs of SGD (lr_net, per-image DSA when on; the last partial batch kept, padding masked)."""
    epoch = lambda e, net: training.train_epoch(model, tx, net, images, labels, jax.random.fold_in(key, e),
                                                config.batch_train, dsa=dsa)
    return jax.lax.fori_loop(0, inner, epoch, net)

  def real_pass(data, key, e):
    """Pass ``e`` of the real-data training: ``(images [n, ...], labels [n], epoch key)`` for ``n =
    real_train_size`` training images drawn without replacement."""
    k_pick, k_epoch = jax.random.split(jax.random.fold_in(key, e))
    pick = jax.random.choice(k_pick, data["images"].shape[0], (n_real,), replace=False)
    return data["images"][pick], data["labels"][pick], k_epoch

  def train_net_real(net, data, key):
    """IDC: ``inner`` passes of SGD (lr_net, momentum, weight decay, per-image DSA when on) over
    ``real_train_size`` random real images each, minibatches of ``batch_train``."""
    def one(e, net):
      x, y, k_epoch = real_pass(data, key, e)
      return training.train_epoch(model, tx, net, x, y, k_epoch, config.batch_train, dsa=dsa)
    return jax.lax.fori_loop(0, inner, one, net)

  def update(state: GMState, syn, key, data=None):
    """After an image update: a fresh network every ``outer_loop`` updates, else ``inner_loop`` epochs of
    SGD (lr_net) on the (stopped) synthetic set, with per-image DSA when DSA is on — or, with
    ``inner_data="real"``, ``inner_loop`` passes over random real training images (``data``)."""
    count = state.count + 1
    images = jax.lax.stop_gradient(syn.images)
    labels = syn.labels
    k_new, k_train = jax.random.split(key)
    if train_real:
      train = lambda: train_net_real(state.net, data, k_train)
    else:
      train = lambda: train_net(state.net, images, labels, k_train)
    if outer == 1:
      net = fresh(k_new)
    else:
      net = jax.lax.cond(count % outer == 0, lambda: fresh(k_new), train)
    return GMState(net, count)

  host_update = None
  if backend.choose(config.host_inner, cpu=True, accelerator=False):
    fresh_jit = jax.jit(fresh)
    batches_jit = jax.jit(training.epoch_batches, static_argnums=(1, 2))
    step_jit = jax.jit(lambda net, images, labels, batches, ek, s: training.batch_step(
        model, tx, net, images, labels, batches, s, ek, dsa=dsa)[0])
    real_pass_jit = jax.jit(real_pass)

    def host_update(state: GMState, syn, key, data=None):
      """:func:`update` as a host loop of jitted SGD steps (same keys, same computation)."""
      count = state.count + 1
      k_new, k_train = jax.random.split(key)
      if outer == 1 or int(count) % outer == 0:
        return GMState(fresh_jit(k_new), count)
      images, labels = jax.lax.stop_gradient(syn.images), syn.labels
      net = state.net
      for e in range(inner):
        if train_real:
          images, labels, ek = real_pass_jit(data, k_train, jnp.int32(e))
        else:
          ek = jax.random.fold_in(k_train, e)
        batches = batches_jit(ek, images.shape[0], config.batch_train)
        for s in range(batches.order.shape[0]):
          net = step_jit(net, images, labels, batches, ek, jnp.int32(s))
      return GMState(net, count)

  return Objective(name, init, loss, update, config, data=real_data, host_update=host_update)
