"""FRePo: dataset distillation by neural FEature REgression with POoling (Zhou, Nezhadarya & Ba, NeurIPS 2022).

A pool of ``P`` finite ConvNets at different stages of training lives in the objective state. Each iteration:

1. loss (differentiated w.r.t. the synthetic images and learned labels): take the pool's current member ``θ``,
   compute features ``f_θ`` of the synthetic images and of a real batch, solve the linear read-out by KRR on the
   synthetic features and score it on the real batch (FRePo Eq. 3), plus the label-margin term of the authors'
   code (``lb_margin_th`` in yongchao97/FRePo lib/datadistillation/frepo.py):

       L(X_s, y_s) = ½ · mean_t ‖ F_t F_sᵀ (F_s F_sᵀ + λ·tr/n·I)⁻¹ y_s − y_t ‖²
                     + w · mean_i −min(y_i,(1) − y_i,(2), 1/K),           F = f_θ(·),

   where ``y_i,(1) ≥ y_i,(2)`` are the two largest entries of support label ``i`` and ``K`` the number of classes
   (the margin term rewards learned labels whose top class leads the runner-up by up to ``1/K``). Targets
   ``y_t`` are centred one-hot (``1 − 1/K`` / ``−1/K``); support labels start as ``(one_hot − 1/K)/√(K/10)``.

2. ``update`` hook (after the image step): a member older than ``max_online_updates`` steps is re-initialised
   (fresh weights and Adam state, age 0) *instead of* being trained; otherwise it takes one Adam step (lr 3e-4)
   of MSE training on the (stopped) synthetic set — all of it, or ``online_batch`` random images of it when
   larger — and its age grows by one; then the next member is drawn at random (the authors' code: train while
   ``step <= max_online_updates``, re-create the state when ``step > max_online_updates``).

The pool network (:class:`FRePoConvNet`) is the authors' ``Conv``: ``depth`` blocks of 3×3 conv with
``width · 2^i`` channels (128/256/512), ReLU, 2×2 average pooling, no normalisation, Flax's default
initialisation (LeCun-normal weights, zero biases), a dense read-out; features are the flattened last block.

The pure loss :func:`loss` (``loss(feature_fn, x_s, y_s, x_t, y_t, reg)``) takes any feature function; the
registered objective calls it with the pool member's features and adds :func:`label_margin_loss`.

Ages start staggered (``(max_online_updates // P) · i``), so after the first ``max_online_updates`` iterations
the pool holds networks at evenly spread training stages, as in FRePo's model pool. Labels are learnable
(``learn_labels=True`` by default); :func:`centre_labels` turns a pixel set's initial labels into FRePo's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import models
from jaxdistill.models.layers import INITS, NORMS, activation, check_choice, conv, dense, norm, pool
from jaxdistill.objectives import krr
from jaxdistill.objectives.base import Objective
from jaxdistill.validation import check_ints, check_network, check_nonnegative, check_positive


class FRePoConvNet(nn.Module):
  """The ConvNet of FRePo's code (``Conv`` in yongchao97/FRePo lib/models/networks.py).

  ``depth`` blocks of [norm (blocks after the first) → 3×3 conv with ``width · width_growth^i`` channels and a
  bias → ReLU → 2×2 average pool], flatten, dense read-out. A 1-channel input is padded by 3 in the first conv
  (28 → 32 effective), every other conv by 1. ``init="flax"``: Flax's default LeCun-normal weights and zero
  biases, as the reference (which passes no initialiser). ``__call__(x, train, embed)``: logits
  ``[N, num_classes]``, or with ``embed=True`` the flattened features ``[N, width · growth^(depth−1) · s²]``
  (``s = 32 / 2^depth`` for 28–32 px inputs; 512 · 16 = 8192 for width 128, depth 3).
  """
  num_classes: int
  width: int = 128
  depth: int = 3
  width_growth: int = 2
  norm: str = "none"
  init_scheme: str = "flax"

  @nn.compact
  def __call__(self, x, train: bool = False, embed: bool = False):
    channels = x.shape[-1]
    for i in range(self.depth):
      if i > 0:
        x = norm(x, self.norm, train)
      padding = 3 if (i == 0 and channels == 1) else 1
      x = conv(x, self.width * self.width_growth ** i, 3, padding=padding, init=self.init_scheme)
      x = pool(activation(x, "relu"), "avg")
    x = x.reshape(x.shape[0], -1)
    if embed:
      return x
    return dense(x, self.num_classes, init=self.init_scheme)


@dataclasses.dataclass(frozen=True)
class FRePoConfig:
  """FRePo settings (defaults: the authors' code, yongchao97/FRePo script/distill.py and
  lib/datadistillation/frepo.py — ConvNet 128/256/512 depth 3 without norm, Flax init, pool of 10, re-initialised
  after 100 online updates, online Adam lr 3e-4 on up to 1000 synthetic images, λ = 1e-6 relative, MSE on
  centred one-hot targets, learned labels with the margin term).

  Attributes:
    width, depth, width_growth, norm, init_scheme: the pool's :class:`FRePoConvNet` (block ``i`` has
      ``width · width_growth^i`` channels; depth None: from the image size, 3 for 28–32 px). ``norm`` is
      ``"none"`` (the code's default ``normalization='identity'``; its README commands pass
      ``--normalization=batch``, which is not supported here) or a per-example norm.
    pool_size: ``P`` networks.
    max_online_updates: a member older than this many training steps is re-initialised (so each network is
      used at ages ``0 … max_online_updates + 1``).
    online_lr: Adam learning rate of the members' training on the synthetic set.
    online_batch: the members train on all synthetic images, or on this many drawn at random when there are
      more (the code's ``eval_batch_size = 1000``).
    reg, loss: the KRR regulariser and loss (``"mse"`` or ``"platt"``).
    learn_labels: learnable soft labels.
    label_scale: the synthetic labels are stored ``label_scale`` times FRePo's: they start as
      ``label_scale · (one_hot − 1/K) / √(K/10)`` and the KRR, the margin term and the members' training see
      ``labels / label_scale`` — the distillation is the code's (LAMB and Adam are invariant to that rescaling),
      only the stored labels, and so a finite network's MSE targets in the evaluation, are larger (the code: 1).
    label_margin: weight ``w`` of the label-margin term (the code: 1; 0 turns it off).
    use_flip: the KRR support set also holds every synthetic image flipped left–right (with its label); the code
      does this for RGB datasets except CIFAR-100 / Tiny ImageNet at IPC ≥ 10.
  """
  width: int = 128
  depth: Optional[int] = None
  width_growth: int = 2
  norm: str = "none"
  init_scheme: str = "flax"
  pool_size: int = 10
  max_online_updates: int = 100
  online_lr: float = 3e-4
  online_batch: int = 1000
  reg: float = 1e-6
  loss: str = "mse"
  learn_labels: bool = True
  label_scale: float = 1.0
  label_margin: float = 1.0
  use_flip: bool = False

  def validate(self):
    # The architecture is fixed (FRePo's ConvNet) and has no batch norm.
    check_network(None, self.width, self.depth, self.norm, norms=tuple(n for n in NORMS if n != "batchnorm"))
    check_choice("init_scheme", self.init_scheme, INITS)
    check_ints(self, ("width_growth", "pool_size", "max_online_updates", "online_batch"))
    check_choice("loss", self.loss, krr.LOSSES)
    check_positive(self, ("online_lr", "reg", "label_scale"))
    check_nonnegative(self, "label_margin")
    return self


class PoolState(NamedTuple):
  """The model pool: stacked ``params [P, ...]`` and Adam states, ``ages`` int32 ``[P]`` (training steps since
  the last (re-)initialisation) and ``member`` (int32 scalar, the network the next loss uses)."""
  params: Any
  opt_state: Any
  ages: jnp.ndarray
  member: jnp.ndarray


def initial_ages(pool_size: int, max_online_updates: int) -> np.ndarray:
  """Staggered initial ages ``(max_online_updates // P) · i`` (the code's ``init_step``)."""
  return (max_online_updates // pool_size) * np.arange(pool_size, dtype=np.int32)


def support_targets(labels, num_classes: int, scale: float = 1.0):
  """FRePo's support labels ``[n, K]``: learned labels ``[n, K]`` as they are, int labels ``[n]`` as
  ``scale · (one_hot − 1/K) / √(K/10)`` (the code's ``init_proto(..., scale_y=True)``)."""
  if labels.ndim == 2:
    return labels.astype(jnp.float32)
  return krr.target_labels(labels, num_classes, centred=True) * (scale / np.sqrt(num_classes / 10.0))


def centre_labels(state, num_classes: int, scale: float = 1.0):
  """A pixel :class:`~jaxdistill.synthetic.SynState` whose learnable ``params["labels"]`` (if any) are reset to
  FRePo's initial labels :func:`support_targets` of its hard labels (``const["labels"]``)."""
  if "labels" not in state.params:
    return state
  labels = support_targets(jnp.asarray(state.const["labels"]), num_classes, scale)
  return state._replace(params={**state.params, "labels": labels})


def label_margin_loss(y_s):
  """FRePo's label term (``lb_margin_th``): ``mean_i −min(y_i,(1) − y_i,(2), 1/K)`` for labels ``[n, K]``
  (``y_i,(1) ≥ y_i,(2)`` the two largest entries of row ``i``); needs ``K ≥ 2``."""
  if y_s.ndim != 2 or y_s.shape[-1] < 2:
    raise ValueError(f"label_margin_loss needs labels [n, K >= 2], got shape {tuple(y_s.shape)}.")
  top2 = jax.lax.top_k(y_s, 2)[0]
  return -jnp.mean(jnp.minimum(top2[:, 0] - top2[:, 1], 1.0 / y_s.shape[-1]))


def loss_and_predictions(feature_fn, x_s, y_s, x_t, y_t, reg: float = 1e-6, *, loss: str = "mse",
                         dtype: str = "float32"):
  """The FRePo loss and the KRR predictions it scores: ``(L, ŷ_t [m, K])`` (FRePo Eq. 3).

  One forward pass ``F = feature_fn(concat([x_s, x_t]))`` (FRePo's code runs the two sets separately in
  inference mode; for networks without batch statistics that is the same); ``F_s`` its first ``n`` rows,
  ``F_t`` the rest (stopped);
  ``ŷ_t = F_t F_sᵀ (F_s F_sᵀ + λ·tr/n·I)⁻¹ y_s``. Arguments as :func:`loss`.
  """
  check_choice("loss", loss, krr.LOSSES)
  krr.check_sets(x_s, y_s, x_t, y_t, loss)
  n_s = x_s.shape[0]
  f = feature_fn(jnp.concatenate([x_s, x_t]))
  if f.ndim < 1 or f.shape[0] != n_s + x_t.shape[0]:
    raise ValueError(f"feature_fn must map inputs [k, ...] to features [k, ...]; for k = {n_s + x_t.shape[0]} it "
                     f"returned shape {tuple(f.shape)}.")
  if f.ndim != 2:
    f = f.reshape(f.shape[0], -1)
  f_s, f_t = f[:n_s], jax.lax.stop_gradient(f[n_s:])
  pred = krr.krr_predict(f_t @ f_s.T, f_s @ f_s.T, y_s, reg, dtype)
  value, _ = krr.krr_loss(pred, y_t, loss)
  return value, pred


def loss(feature_fn, x_s, y_s, x_t, y_t, reg: float = 1e-6, *, loss: str = "mse", dtype: str = "float32"):
  """The FRePo loss: KRR on the features of a (finite) network, fitted on the support set and scored on the
  targets (FRePo Eq. 3), a scalar; pure (``jit``/``grad``/``vmap``).

  Args:
    feature_fn: ``inputs [k, ...] -> features [k, D]`` (e.g. a Flax network's penultimate layer closed over
      its parameters; trailing axes are flattened). The target features are stopped.
    x_s: support inputs ``[n, ...]`` (the synthetic images).
    y_s: support regression targets float ``[n, K]`` (learned labels, or one-hot).
    x_t: target inputs ``[m, ...]`` (a flat real batch).
    y_t: targets ``[m, K]`` (``loss="mse"``), or int labels ``[m]`` / ``[m, K]`` (``"platt"``).
    reg: λ relative to ``tr(F_s F_sᵀ)/n`` (> 0).
    loss: ``"mse"`` (FRePo) or ``"platt"``.
    dtype: precision of the KRR solve, ``"float32"`` or ``"float64"`` (needs ``jax_enable_x64``).

  Returns:
    The scalar loss.

  Raises:
    ValueError: bad ``loss``/``reg`` or shapes that do not match the above.
  """
  return loss_and_predictions(feature_fn, x_s, y_s, x_t, y_t, reg, loss=loss, dtype=dtype)[0]


def make_frepo(config: FRePoConfig, *, num_classes: int, image_shape, ipc: int, name: str = "frepo") -> Objective:
  """Builds the FRePo objective (state: :class:`PoolState`)."""
  config.validate()
  image_shape = tuple(image_shape)
  depth = config.depth if config.depth is not None else models.default_depth(image_shape[0])
  model = FRePoConvNet(num_classes, width=config.width, depth=depth, width_growth=config.width_growth,
                       norm=config.norm, init_scheme=config.init_scheme)
  tx = optax.adam(config.online_lr)
  pool_n = int(config.pool_size)
  max_age = int(config.max_online_updates)
  n_syn = num_classes * int(ipc)
  scale = float(config.label_scale)

  def fresh(key):
    params = models.init_variables(model, key, image_shape)["params"]
    return params, tx.init(params)

  def init(key):
    k_pool, k_member = jax.random.split(key)
    params, opt = jax.vmap(fresh)(jax.random.split(k_pool, pool_n))
    ages = jnp.asarray(initial_ages(pool_n, max_age), jnp.int32)
    member = jax.random.randint(k_member, (), 0, pool_n, jnp.int32)
    return PoolState(params, opt, ages, member)

  def take(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)

  def features(params, x):
    return model.apply({"params": params}, x, train=False, embed=True)

  def objective_loss(state: PoolState, syn, real, key):
    """FRePo loss with the current member; real ``[C, n, ...]`` flattened, centred one-hot targets.
    aux: KRR target accuracy, the KRR loss and the label-margin term."""
    params = jax.lax.stop_gradient(take(state.params, state.member))
    xt, lt, yt = krr.flatten_real(real, num_classes, centred=True)
    ys = support_targets(syn.labels, num_classes, scale) / scale  # FRePo's units
    if not config.learn_labels:
      ys = jax.lax.stop_gradient(ys)
    xs = syn.images
    if config.use_flip:
      xs = jnp.concatenate([xs, jnp.flip(xs, axis=2)])
      ys_krr = jnp.concatenate([ys, ys])
    else:
      ys_krr = ys
    value, pred = loss_and_predictions(lambda x: features(params, x), xs, ys_krr, xt,
                                       yt if config.loss == "mse" else lt, config.reg, loss=config.loss)
    margin = label_margin_loss(ys)
    total = value + config.label_margin * margin if config.label_margin else value
    return total, {"accuracy": krr.krr_accuracy(pred, lt), "kernel_loss": value, "label_loss": margin}

  def online_loss(params, images, targets):
    logits = model.apply({"params": params}, images, train=True)
    return krr.mse_loss(logits, targets)

  def train(params, opt, syn, key):
    images = jax.lax.stop_gradient(syn.images)
    targets = jax.lax.stop_gradient(support_targets(syn.labels, num_classes, scale) / scale)
    if n_syn > config.online_batch:  # the code's get_sample_proto: a random subset without replacement
      pick = jax.random.choice(key, images.shape[0], (int(config.online_batch),), replace=False)
      images, targets = images[pick], targets[pick]
    grads = jax.grad(online_loss)(params, images, targets)
    upd, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, upd), opt

  def update(state: PoolState, syn, key):
    """Re-initialise the current member if older than ``max_online_updates``, else one Adam step on the
    synthetic set; then draw the next member."""
    k_step, k_next = jax.random.split(key)
    i = state.member
    params, opt = take(state.params, i), take(state.opt_state, i)
    reset = state.ages[i] > max_age
    params, opt = jax.lax.cond(reset, lambda p, o: fresh(k_step), lambda p, o: train(p, o, syn, k_step),
                               params, opt)
    put = lambda tree, leaf_tree: jax.tree_util.tree_map(lambda t, v: t.at[i].set(v), tree, leaf_tree)
    ages = state.ages.at[i].set(jnp.where(reset, 0, state.ages[i] + 1))
    member = jax.random.randint(k_next, (), 0, pool_n, jnp.int32)
    return PoolState(put(state.params, params), put(state.opt_state, opt), ages, member)

  return Objective(name, init, objective_loss, update, config)
