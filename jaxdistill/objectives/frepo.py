"""FRePo: dataset distillation by neural FEature REgression with POoling (Zhou, Nezhadarya & Ba, NeurIPS 2022).

A pool of ``P`` finite ConvNets at different stages of training lives in the objective state. Each iteration:

1. loss (differentiated w.r.t. the synthetic set): take the pool's current member ``θ``, compute features
   ``f_θ`` of the synthetic images and of a real batch, solve the linear read-out by KRR on the synthetic
   features and score it on the real batch (FRePo Eq. 3):

       L(X_s, y_s) = ½ · mean_t ‖ F_t F_sᵀ (F_s F_sᵀ + λ·tr/n·I)⁻¹ y_s − y_t ‖²,   F = f_θ(·);

2. ``update`` hook (after the image step): the member takes one Adam step (lr 3e-4) of MSE training of the whole
   network on the (updated, stopped) synthetic set; its age grows by one and at ``max_online_updates`` it is
   re-initialised (fresh weights and optimiser state); then the next member is drawn at random.

The pure loss :func:`loss` (``loss(feature_fn, x_s, y_s, x_t, y_t, reg)``) takes any feature function; the
registered objective calls it with the pool member's features.

Ages start staggered (``i · max_online_updates / P``), so after the first ``max_online_updates`` iterations the
pool holds networks at evenly spread training stages, as in FRePo's model pool. Labels are learnable
(``init_pixels(..., learn_labels=True)``, on by default): the KRR uses them as regression targets.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import models
from jaxdistill.models.layers import NORMS, check_choice
from jaxdistill.objectives import krr
from jaxdistill.objectives.base import Objective
from jaxdistill.objectives.kip import support_labels


@dataclasses.dataclass(frozen=True)
class FRePoConfig:
  """FRePo settings (paper defaults: ConvNet-128 depth 3, pool of 10, reset after 100 online updates, online
  Adam lr 3e-4, λ = 1e-6 relative, MSE, learned labels).

  Attributes:
    width, depth, norm: the pool's ConvNet (depth None: from the image size). FRePo's reference networks have
      no normalisation or batch norm; we default to the library ConvNet's instance norm, which the evaluation
      networks use too.
    pool_size: ``P`` networks.
    max_online_updates: a member is re-initialised after this many training steps.
    online_lr: Adam learning rate of the members' training on the synthetic set.
    reg, loss: the KRR regulariser and loss (``"mse"`` or ``"platt"``).
    learn_labels, label_scale: learnable soft labels (``label_scale · one_hot`` at init).
  """
  width: int = 128
  depth: Optional[int] = None
  norm: str = "instancenorm"
  pool_size: int = 10
  max_online_updates: int = 100
  online_lr: float = 3e-4
  reg: float = 1e-6
  loss: str = "mse"
  learn_labels: bool = True
  label_scale: float = 1.0

  def validate(self):
    check_choice("norm", self.norm, tuple(n for n in NORMS if n != "batchnorm"))
    for name in ("width", "pool_size", "max_online_updates"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
    if self.depth is not None and (not isinstance(self.depth, (int, np.integer)) or self.depth < 1):
      raise ValueError(f"depth must be None or an integer >= 1, got {self.depth!r}.")
    if self.loss not in krr.LOSSES:
      raise ValueError(f"loss must be one of {list(krr.LOSSES)}, got {self.loss!r}.")
    for name in ("online_lr", "reg", "label_scale"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}.")
    return self


class PoolState(NamedTuple):
  """The model pool: stacked ``params [P, ...]`` and Adam states, ``ages`` int32 ``[P]`` (training steps since
  the last (re-)initialisation) and ``member`` (int32 scalar, the network the next loss uses)."""
  params: Any
  opt_state: Any
  ages: jnp.ndarray
  member: jnp.ndarray


def loss_and_predictions(feature_fn, x_s, y_s, x_t, y_t, reg: float = 1e-6, *, loss: str = "mse",
                         dtype: str = "float32"):
  """The FRePo loss and the KRR predictions it scores: ``(L, ŷ_t [m, K])`` (FRePo Eq. 3).

  One forward pass ``F = feature_fn(concat([x_s, x_t]))`` (so a network with batch statistics sees both sets
  together, as in FRePo); ``F_s`` its first ``n`` rows, ``F_t`` the rest (stopped);
  ``ŷ_t = F_t F_sᵀ (F_s F_sᵀ + λ·tr/n·I)⁻¹ y_s``. Arguments as :func:`loss`.
  """
  if loss not in krr.LOSSES:
    raise ValueError(f"loss must be one of {list(krr.LOSSES)}, got {loss!r}.")
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
  kwargs = {"width": config.width, "norm": config.norm}
  if config.depth is not None:
    kwargs["depth"] = config.depth
  model = models.get_model("convnet", num_classes, image_shape, **kwargs)
  tx = optax.adam(config.online_lr)
  pool = int(config.pool_size)
  max_age = int(config.max_online_updates)

  def fresh(key):
    params = models.init_variables(model, key, image_shape)["params"]
    return params, tx.init(params)

  def init(key):
    k_pool, k_member = jax.random.split(key)
    params, opt = jax.vmap(fresh)(jax.random.split(k_pool, pool))
    ages = jnp.asarray((np.arange(pool) * max_age) // pool, jnp.int32)
    member = jax.random.randint(k_member, (), 0, pool, jnp.int32)
    return PoolState(params, opt, ages, member)

  def take(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)

  def features(params, x):
    return model.apply({"params": params}, x, train=True, embed=True)

  def objective_loss(state: PoolState, syn, real, key):
    """FRePo loss with the current member; real ``[C, n, ...]`` flattened. aux: KRR target accuracy."""
    params = jax.lax.stop_gradient(take(state.params, state.member))
    xt, lt, yt = krr.flatten_real(real, num_classes)
    ys = support_labels(syn.labels, num_classes)
    value, pred = loss_and_predictions(lambda x: features(params, x), syn.images, ys, xt,
                                       yt if config.loss == "mse" else lt, config.reg, loss=config.loss)
    return value, {"accuracy": krr.krr_accuracy(pred, lt)}

  def online_loss(params, images, targets):
    logits = model.apply({"params": params}, images, train=True)
    return krr.mse_loss(logits, targets)

  def update(state: PoolState, syn, key):
    """One Adam step of the current member on the synthetic set, reset at ``max_online_updates``, next member."""
    k_reset, k_next = jax.random.split(key)
    i = state.member
    images = jax.lax.stop_gradient(syn.images)
    targets = jax.lax.stop_gradient(support_labels(syn.labels, num_classes))
    params, opt = take(state.params, i), take(state.opt_state, i)
    grads = jax.grad(online_loss)(params, images, targets)
    upd, opt = tx.update(grads, opt, params)
    params = optax.apply_updates(params, upd)
    age = state.ages[i] + 1
    reset = age >= max_age
    new_params, new_opt = fresh(k_reset)
    pick = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(reset, x, y), a, b)
    params, opt = pick(new_params, params), pick(new_opt, opt)
    put = lambda tree, leaf_tree: jax.tree_util.tree_map(lambda t, v: t.at[i].set(v), tree, leaf_tree)
    ages = state.ages.at[i].set(jnp.where(reset, 0, age))
    member = jax.random.randint(k_next, (), 0, pool, jnp.int32)
    return PoolState(put(state.params, params), put(state.opt_state, opt), ages, member)

  return Objective(name, init, objective_loss, update, config)
