"""GTN's objective (Such et al., ICML 2020): the real-data loss of a fresh learner after ``T`` inner SGD steps on
the generated batches, differentiated through the whole inner training (the meta-gradient). The generator and its
curriculum are the parameterisation :mod:`jaxdistill.synthetic.gtn`; the inner training is the BPTT unroll of
:mod:`jaxdistill.objectives.bptt` (:func:`~jaxdistill.objectives.bptt.unroll`, one ``lax.scan`` of
:func:`jaxdistill.unroll.sgd_step`), step ``t`` on mini-batch ``t`` of the rendered set::

    θ_T = unroll(θ_0; (x_0, y_0), …, (x_{T−1}, y_{T−1}); α)
    L = ℓ(x_real, y_real; θ_T)

:func:`meta_loss` is that computation for any ``loss_fn`` (tested against an explicit unroll of a linear learner);
:func:`make_gtn` is the :class:`~jaxdistill.objectives.base.Objective` (fresh learners from the key every outer
iteration, ``num_models`` of them averaged).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdistill import backend, models, training
from jaxdistill.objectives import bptt
from jaxdistill.objectives.base import Objective, RealBatch
from jaxdistill.synthetic.gtn import GTNConfig, images_per_class


def learner_config(config: GTNConfig) -> bptt.BPTTConfig:
  """The BPTT configuration of GTN's inner training: the learner, ``T`` steps of ``k`` images per class, SGD with
  momentum ``β``, a learned lr in softplus space (:meth:`~jaxdistill.objectives.bptt.BPTTConfig.initial_lr` gives
  the initial value for :func:`jaxdistill.synthetic.gtn.init_gtn`)."""
  config.validate()
  return bptt.BPTTConfig(arch=config.arch, width=config.width, depth=config.depth,
                         inner_steps=config.inner_steps, batch_per_class=config.batch_per_class,
                         inner_lr=config.inner_lr, inner_momentum=config.inner_momentum,
                         num_models=config.num_models, checkpoint=config.checkpoint, learn_lr=config.learn_lr,
                         lr_per_step=config.lr_per_step, lr_param="softplus").validate()


def meta_loss(loss_fn: Callable, params, batches_x, batches_y, lrs, real_x, real_y, *, extra=None,
              momentum: float = 0.0, weight_decay: float = 0.0, checkpoint: bool = False, scan_unroll: int = 1):
  """The learner's real loss after the unroll: ``ℓ(real; θ_T)``.

  Args:
    loss_fn: ``loss_fn(params, extra, x, y) -> (loss, new_extra)``.
    params: ``θ_0``; batches_x ``[S, B, ...]``, batches_y ``[S, B(, C)]``: step ``t`` uses batch ``t mod S``.
    lrs: ``[T]`` step sizes; real_x, real_y: the real batch scored at ``θ_T``.

  Returns:
    ``(real loss, inner losses [T])``.
  """
  state, inner = bptt.unroll(loss_fn, params, batches_x, batches_y, lrs, extra=extra, momentum=momentum,
                             weight_decay=weight_decay, checkpoint=checkpoint, scan_unroll=scan_unroll)
  real, _ = loss_fn(state.params, state.extra, real_x, real_y)
  return real, inner


def make_gtn(config: GTNConfig, *, num_classes: int, image_shape, ipc: int = None, name: str = "gtn") -> Objective:
  """GTN's objective (stateless).

  ``loss(state, syn, real, key)``: ``syn`` the rendered set ``[C·T·k, ...]`` (class-major, hard labels, optional
  learned lr, :func:`jaxdistill.synthetic.gtn.gtn_parameterisation`); ``real`` a :class:`RealBatch` ``[C, n,
  ...]``. Returns the mean real cross-entropy of ``num_models`` fresh learners after the unroll and aux
  ``{"inner_loss": [num_models] synthetic-batch loss at θ_{T−1}}``.

  Raises:
    ValueError: a bad config, or ``ipc`` given and not ``T·k``.
  """
  lcfg = learner_config(config)
  per = images_per_class(config)
  if ipc is not None and int(ipc) != per:
    raise ValueError(f"ipc must be the images per class of the GTN render, inner_steps × batch_per_class = {per}, "
                     f"got {ipc}.")
  image_shape = tuple(int(s) for s in image_shape)
  trainer = bptt.make_inner_trainer(lcfg, num_classes=num_classes, image_shape=image_shape)
  model = trainer.model
  scan_unroll = backend.choose(None, cpu=min(int(config.inner_steps), 10), accelerator=1)

  def loss_fn(params, extra, x, y):
    logits, new_vars = models.apply(model, {**extra, "params": params}, x, train=True)
    return training.cross_entropy(logits, y), {k: v for k, v in new_vars.items() if k != "params"}

  def loss(state, syn, real: RealBatch, key):
    dtype = syn.images.dtype
    rx = real.images.reshape((-1,) + real.images.shape[2:]).astype(dtype)
    ry = real.labels.reshape(-1)
    lrs = bptt.step_sizes(syn.lr, config.inner_lr, config.inner_steps, dtype, lcfg.lr_param)
    bx, by = bptt.minibatches(syn.images, trainer.targets(syn.labels, dtype), num_classes, config.batch_per_class)

    def one(k):
      variables = models.init_variables(model, k, image_shape)
      params = jax.tree_util.tree_map(lambda v: v.astype(dtype), variables["params"])
      extra = {n: v for n, v in variables.items() if n != "params"}
      value, inner = meta_loss(loss_fn, params, bx, by, lrs, rx, ry, extra=extra, momentum=config.inner_momentum,
                               checkpoint=config.checkpoint, scan_unroll=scan_unroll)
      return value, inner[-1]

    keys = jax.random.split(key, config.num_models)
    if config.num_models == 1:  # no vmap: batched parameters make grouped convolutions (slow on CPU)
      values, inner = jax.tree_util.tree_map(lambda v: v[None], one(keys[0]))
    else:
      values, inner = jax.vmap(one)(keys)
    return jnp.mean(values), {"inner_loss": inner}

  return Objective(name, lambda key: {}, loss, None, config)
