"""FRePo: dataset distillation by neural FEature REgression with POoling (Zhou, Nezhadarya & Ba, NeurIPS 2022).

A pool of ``P`` finite ConvNets at different stages of training lives in the objective state. Each iteration:

1. loss (differentiated w.r.t. the synthetic set): take the pool's current member ``θ``, compute features
   ``f_θ`` of the synthetic images and of a real batch, solve the linear read-out by KRR on the synthetic
   features and score it on the real batch (FRePo Eq. 3):

       L(X_s, y_s) = ½ · mean_t ‖ F_t F_sᵀ (F_s F_sᵀ + λ·tr/n·I)⁻¹ y_s − y_t ‖²,   F = f_θ(·);

2. ``update`` hook (after the image step): the member takes one Adam step (lr 3e-4) of MSE training of the whole
   network on the (updated, stopped) synthetic set; its age grows by one and at ``max_online_updates`` it is
   re-initialised (fresh weights and optimiser state); then the next member is drawn at random.

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

  def loss(state: PoolState, syn, real, key):
    """FRePo loss with the current member; real ``[C, n, ...]`` flattened. aux: KRR target accuracy."""
    params = jax.lax.stop_gradient(take(state.params, state.member))
    xt, lt, yt = krr.flatten_real(real, num_classes)
    n_s = syn.images.shape[0]
    f = features(params, jnp.concatenate([syn.images, xt]))
    f_s, f_t = f[:n_s], jax.lax.stop_gradient(f[n_s:])
    ys = support_labels(syn.labels, num_classes)
    pred = krr.krr_predict(f_t @ f_s.T, f_s @ f_s.T, ys, config.reg)
    value, _ = krr.krr_loss(pred, yt if config.loss == "mse" else lt, config.loss)
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

  return Objective(name, init, loss, update, config)
