"""IT-GAN: informative training samples from a frozen GAN (Zhao & Bilen, "Synthesizing Informative Training
Samples with GAN", NeurIPS 2022 workshop on synthetic data; code VICO-UoE/IT-GAN).

The synthetic set is ``x̂_i = G(z_i, y_i)`` for a frozen, GAN-trained class-conditional generator ``G`` (here the
shipped prior of :func:`jaxdistill.generators.trained_prior`), and only the latent vectors ``z_i`` are learned.
Each latent is paired with a real image ``x_i`` of its class: it starts from a GAN inversion of ``x_i``
(:func:`invert`: Adam on ``‖G(z, y_i) − x_i‖²``; IT-GAN's released latents are "GANInversion_…_lrz0.100"), and
the loss is

    L(Z) = L_con(Z) + λ · L_reg(Z)
    L_con = Σ_c ‖ mean_{x ∈ T_c} ψ_ϑ(A(x)) − mean_{i: y_i = c} ψ_ϑ(A(G(z_i, c))) ‖²     (DM's loss)
    L_reg = (1/N) Σ_i ‖ ψ_ϑ(A_i(G(z_i, y_i))) − ψ_ϑ(A_i(x_i)) ‖²      (:func:`feature_regulariser`)

with ``ψ_ϑ`` an embedding network drawn afresh every iteration and ``A`` a differentiable augmentation (the
same draw ``A_i`` for an image and its pair in ``L_reg``). ``L_con`` is the registered ``dm`` objective; ``L_reg``
is a :class:`~jaxdistill.objectives.regularised.Regulariser` (:func:`itgan_regulariser`) added to it with
:func:`~jaxdistill.objectives.regularised.with_regulariser` (:func:`make_itgan_objective`), whose state holds the
paired real images. The parameterisation is GLaD's ``z`` space (:mod:`jaxdistill.synthetic.glad`) with the
generator counted in storage; ``render`` gives ``G(z, y)`` in class-major order, the order of the pairs.

docs/ftd_itgan.md lists what is taken from the paper and what differs (the authors' training code is not in
their repository, only the evaluation script).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import generators as G
from jaxdistill import models
from jaxdistill.augment import DEFAULT_STRATEGY, DSAParams, apply_op, choose_op
from jaxdistill.objectives.base import Objective
from jaxdistill.objectives.distribution_matching import DistributionMatchingConfig, make_distribution_matching
from jaxdistill.objectives.regularised import Regulariser, with_regulariser
from jaxdistill.synthetic.base import Parameterisation, SynState
from jaxdistill.synthetic.glad import GLaDConfig, glad_parameterisation, init_glad
from jaxdistill.validation import (check_dsa_strategy, check_ints, check_network, check_nonnegative,
                                   check_positive)

INITS = ("inversion", "random")


@dataclasses.dataclass(frozen=True)
class ITGANConfig:
  """IT-GAN settings.

  Attributes:
    reg_weight: λ, the weight of the feature regulariser ``L_reg`` (0 turns it off: plain DM through G).
    init: ``"inversion"`` (the latents of a GAN inversion of the paired real images, IT-GAN) or ``"random"``
      (``z ~ N(0, I)``, IT-GAN's "GAN" baseline).
    inversion_steps, inversion_lr: Adam steps and learning rate of :func:`invert` (0.1 as the lr in the name of
      IT-GAN's released inversion latents).
    arch, width, depth: the regulariser's embedding network ψ (ConvNet-128 as DM), drawn afresh each iteration.
    dsa, dsa_strategy: augment each synthetic image and its real pair with the same DSA draw in ``L_reg``.
    noise: frozen per-image noise in the style generator's layers (BigGAN, IT-GAN's G, has none: off).
    decoupled, chunk: GLaD's chunked backward through G (:func:`jaxdistill.synthetic.glad.decoupled`).
  """
  reg_weight: float = 0.01
  init: str = "inversion"
  inversion_steps: int = 200
  inversion_lr: float = 0.1
  arch: str = "convnet"
  width: int = 128
  depth: Optional[int] = None
  dsa: bool = True
  dsa_strategy: Tuple[str, ...] = DEFAULT_STRATEGY
  noise: bool = False
  decoupled: bool = False
  chunk: int = 10

  def validate(self):
    if self.init not in INITS:
      raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}.")
    check_nonnegative(self, "reg_weight", note="0 = no regulariser")
    check_ints(self, "inversion_steps", minimum=0, note="0 = no inversion")
    check_ints(self, "chunk")
    check_positive(self, "inversion_lr")
    check_network(self.arch, self.width, self.depth)
    check_dsa_strategy(self.dsa_strategy)
    return self

  def glad_config(self) -> GLaDConfig:
    """The GLaD configuration of the parameterisation: latents ``z``, the trained generator counted in storage."""
    return GLaDConfig(space="z", init="random", noise=self.noise, decoupled=self.decoupled, chunk=self.chunk,
                      count_generator=True)

  def model_kwargs(self):
    kwargs = {"width": int(self.width)} if self.arch in ("convnet", "mlp") else {}
    if self.depth is not None:
      kwargs["depth"] = int(self.depth)
    return kwargs


def feature_regulariser(embed_fn: Callable, syn_images, real_images):
  """IT-GAN's sample-wise regulariser ``(1/N) Σ_i ‖ψ(x̂_i) − ψ(x_i)‖²`` (a pure function of arrays).

  Args:
    embed_fn: ``images [k, H, W, C] -> features [k, D]`` (any trailing feature shape; it is flattened).
    syn_images: ``[N, H, W, C]`` synthetic images ``x̂_i`` (differentiable).
    real_images: ``[N, H, W, C]`` their paired real images ``x_i`` (row ``i`` pairs with row ``i``); their
      features are constants (stopped).

  Returns:
    A float scalar.

  Raises:
    ValueError: the two image arrays differ in shape.
  """
  if syn_images.shape != real_images.shape:
    raise ValueError(f"syn_images and real_images must have the same shape [N, H, W, C], got {syn_images.shape} "
                     f"and {real_images.shape}.")
  n = syn_images.shape[0]
  e_syn = embed_fn(syn_images).reshape(n, -1)
  e_real = jax.lax.stop_gradient(embed_fn(real_images)).reshape(n, -1)
  return jnp.mean(jnp.sum(jnp.square(e_syn - e_real), axis=-1))


def itgan_regulariser(paired_real, num_classes: int, image_shape, config: ITGANConfig) -> Regulariser:
  """``λ · L_reg`` as a :class:`Regulariser` for :func:`with_regulariser`.

  Args:
    paired_real: ``[N, H, W, C]`` the real image paired with each synthetic image, in the synthetic set's
      (class-major) order; kept as the regulariser's state ``{"real": ...}`` (checkpointed with the loop).

  Each call draws ψ (``config.arch``, random initialisation) and, with ``config.dsa``, one DSA operation and
  per-image parameters from its key, applied alike to ``x̂_i`` and ``x_i``. aux: ``{"feature_distance":
  L_reg}`` (unweighted).
  """
  config.validate()
  image_shape = tuple(image_shape)
  real = jnp.asarray(paired_real, jnp.float32)
  if real.shape[1:] != image_shape:
    raise ValueError(f"paired_real must be [N, {', '.join(map(str, image_shape))}], got {real.shape}.")
  model = models.get_model(config.arch, num_classes, image_shape, **config.model_kwargs())
  dsa = DSAParams(strategy=tuple(config.dsa_strategy)) if config.dsa else None

  def init(key):
    return {"real": real}

  def loss(state, syn, key):
    k_net, k_aug = jax.random.split(key)
    variables = models.init_variables(model, k_net, image_shape)
    x_syn, x_real = syn.images, state["real"]
    if dsa is not None:
      k_op, k_par = jax.random.split(k_aug)
      op = choose_op(k_op, dsa)
      x_syn = apply_op(op, k_par, x_syn, dsa, per_image=True)  # same key and shape: the same draw per pair
      x_real = apply_op(op, k_par, x_real, dsa, per_image=True)
    embed = lambda x: models.apply(model, variables, x, train=True, embed=True)[0]
    dist = feature_regulariser(embed, x_syn, x_real)
    return config.reg_weight * dist, {"feature_distance": dist}

  def update(state, syn, key):
    return state

  return Regulariser(init, loss, update, name="itgan")


def make_itgan_objective(paired_real, config: ITGANConfig, *, num_classes: int, image_shape, ipc: int,
                         dm_config: Optional[DistributionMatchingConfig] = None, name: str = "itgan") -> Objective:
  """IT-GAN's loss ``L_con + λ L_reg``: the DM objective (``dm_config``, default DM's) with
  :func:`itgan_regulariser` (skipped when ``config.reg_weight == 0``)."""
  config.validate()
  dm = make_distribution_matching(dm_config or DistributionMatchingConfig(), num_classes=num_classes,
                                  image_shape=image_shape, ipc=ipc, name=name)
  if not config.reg_weight:
    return dm
  return with_regulariser(dm, itgan_regulariser(paired_real, num_classes, image_shape, config))


def itgan_parameterisation(gen: G.Generator, config: ITGANConfig) -> Parameterisation:
  """``render(state) = SyntheticBatch(G(z, y), y, lr)`` (GLaD's ``z`` space, ``name="itgan"``)."""
  return glad_parameterisation(gen, config.validate().glad_config(), name="itgan")


def pick_pairs(key, real_images, real_labels, num_classes: int, ipc: int):
  """``ipc`` random real images per class, class-major: ``[C · ipc, H, W, C_img]`` (the pairs of the latents).

  Raises:
    ValueError: a class has fewer than ``ipc`` images.
  """
  labels = np.asarray(real_labels)
  picks = []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    if idx.size < ipc:
      raise ValueError(f"class {c} has {idx.size} real images, IT-GAN pairs ipc={ipc} latents with real images.")
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, c), idx.size))
    picks.append(idx[perm[:ipc]])
  return jnp.asarray(np.asarray(real_images)[np.concatenate(picks)], jnp.float32)


def inversion_loss(gen: G.Generator, gparams, z, labels, images, noise_keys=None):
  """``(1/N) Σ_i mean_pixels (G(z_i, y_i) − x_i)²`` for ``z [N, z_dim]``, int ``labels [N]``, ``images [N, H, W,
  C]``."""
  out = G.generate(gen, gparams, z, labels, noise_keys)
  return jnp.mean(jnp.square(out - images))


def invert(gen: G.Generator, gparams, images, labels, z0, steps: int, lr: float = 0.1, noise_keys=None):
  """GAN inversion: ``steps`` Adam(``lr``) updates of ``z`` from ``z0 [N, z_dim]`` on :func:`inversion_loss`
  (one jitted ``lax.fori_loop``). Returns ``(z [N, z_dim], loss before, loss after)``."""
  tx = optax.adam(lr)
  loss_fn = lambda z: inversion_loss(gen, gparams, z, labels, images, noise_keys)

  @jax.jit
  def run(z):
    def body(_, carry):
      z, opt = carry
      g = jax.grad(loss_fn)(z)
      upd, opt = tx.update(g, opt, z)
      return optax.apply_updates(z, upd), opt
    return jax.lax.fori_loop(0, int(steps), body, (z, tx.init(z)))[0]

  z0 = jnp.asarray(z0, jnp.float32)
  z = run(z0) if steps else z0
  return z, loss_fn(z0), loss_fn(z)


def init_itgan(key, gen: G.Generator, gparams, real_images, real_labels, num_classes: int, ipc: int,
               config: ITGANConfig, *, learn_lr: Optional[float] = None):
  """The IT-GAN latents of ``ipc`` images per class and their paired real images.

  Returns:
    ``(state, paired_real)``: ``state`` a GLaD ``z``-space :class:`SynState` (``params={"codes": z [N, z_dim]
    [, "lr"]}``, ``const={"labels", "generator" [, "noise_keys"]}``) whose codes are, with ``init="inversion"``,
    the inversion (:func:`invert`) of ``paired_real [N, H, W, C]`` from random ``z``. With ``k_pairs, k_z =
    split(key)``, the pairs are ``pick_pairs(k_pairs, ...)`` and the latents start from :func:`init_glad` with
    ``k_z``.
  """
  config.validate()
  k_pairs, k_glad = jax.random.split(key)
  paired = pick_pairs(k_pairs, real_images, real_labels, num_classes, ipc)
  state = init_glad(k_glad, gen, gparams, config.glad_config(), num_classes, ipc, learn_lr=learn_lr)
  if tuple(paired.shape[1:]) != (gen.config.resolution, gen.config.resolution, gen.config.channels):
    raise ValueError(f"the generator makes [{gen.config.resolution}, {gen.config.resolution}, "
                     f"{gen.config.channels}] images, the real images are {list(paired.shape[1:])}.")
  if config.init == "inversion" and config.inversion_steps:
    z, _, _ = invert(gen, gparams, paired, state.const["labels"], state.params["codes"], config.inversion_steps,
                     config.inversion_lr, state.const.get("noise_keys"))
    state = SynState({**state.params, "codes": z}, state.const)
  return state, paired


__all__ = ["INITS", "ITGANConfig", "feature_regulariser", "init_itgan", "invert", "inversion_loss",
           "itgan_parameterisation", "itgan_regulariser", "make_itgan_objective", "pick_pairs"]
