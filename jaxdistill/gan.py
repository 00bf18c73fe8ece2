"""Training a class-conditional generator as a GAN: the learned image prior of GLaD.

GLaD (Cazenavette et al., CVPR 2023) distils into the latent space of a *pre-trained* generator. This module
trains one of :mod:`jaxdistill.generators` on a dataset with the non-saturating logistic GAN loss and an R1
penalty (StyleGAN2's objective, Karras et al. 2020), against a projection discriminator (Miyato & Koyama 2018):

    D loss = softplus(D(G(z, c), c)) + softplus(−D(x, c)) + γ/2 · ‖∇_x D(x, c)‖²
    G loss = softplus(−D(G(z, c), c))

with Adam (β₁ = 0, β₂ = 0.99, StyleGAN2's) for both networks and an exponential moving average of the generator
parameters (the weights to use afterwards). Everything is a pure function of explicit keys: :func:`init` builds
the :class:`GANState` pytree, :func:`make_train_step` the jitted ``(state, images, labels, key) -> (state,
metrics)`` update. ``experiments.train_generator`` is the CLI.

Shapes: ``images [N, H, W, C]`` normalised as the dataset (the generator learns that space), ``labels`` int ``[N]``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdistill import generators as G
from jaxdistill.validation import check_in_range, check_ints, check_nonnegative, check_positive


@dataclasses.dataclass(frozen=True)
class GANConfig:
  """GAN training settings.

  Attributes:
    steps: generator/discriminator update pairs.
    batch_size: real and fake images per step.
    lr_g, lr_d: Adam learning rates (StyleGAN2: 0.0025 for both at 1024 px; smaller here for small nets).
    beta1, beta2: Adam moments (StyleGAN2: 0 and 0.99).
    r1_gamma: weight γ of the R1 penalty on real images.
    ema_decay: decay of the generator's parameter average (0: keep the last parameters).
    d_width: discriminator channels of the first conv block (doubled per block).
  """
  steps: int = 5000
  batch_size: int = 64
  lr_g: float = 0.002
  lr_d: float = 0.002
  beta1: float = 0.0
  beta2: float = 0.99
  r1_gamma: float = 1.0
  ema_decay: float = 0.999
  d_width: int = 32

  def validate(self):
    check_ints(self, ("steps", "batch_size", "d_width"))
    check_positive(self, ("lr_g", "lr_d"))
    check_nonnegative(self, ("r1_gamma",))
    for name in ("beta1", "beta2", "ema_decay"):
      check_in_range(name, getattr(self, name), 0.0, 1.0, hi_closed=False)
    return self


class Discriminator(nn.Module):
  """Projection discriminator: conv blocks (3×3, leaky ReLU, 2× average-pool; widths ``width · 2^i``) down to
  ≤ 7 px, then ``D(x, c) = w·φ(x) + ⟨embed(c), φ(x)⟩`` with ``φ`` the flattened features' dense projection."""
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, x, labels):
    h = x
    i = 0
    while h.shape[1] > 7:
      h = nn.leaky_relu(nn.Conv(self.width * 2 ** i, (3, 3))(h), 0.2)
      h = nn.avg_pool(h, (2, 2), (2, 2), padding="SAME")
      i += 1
    h = nn.leaky_relu(nn.Conv(self.width * 2 ** i, (3, 3))(h), 0.2)
    phi = nn.leaky_relu(nn.Dense(4 * self.width)(h.reshape(h.shape[0], -1)), 0.2)
    out = nn.Dense(1)(phi)[:, 0]
    embed = nn.Embed(self.num_classes, phi.shape[-1])(labels)
    return out + jnp.sum(embed * phi, -1)


class GANState(NamedTuple):
  """Training state (a pytree): generator / EMA / discriminator parameters, both optimiser states, step."""
  g_params: Any
  ema_params: Any
  d_params: Any
  g_opt: Any
  d_opt: Any
  step: Any


def optimizers(config: GANConfig) -> Tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """``(generator tx, discriminator tx)``: Adam with the config's rates and moments."""
  return (optax.adam(config.lr_g, b1=config.beta1, b2=config.beta2),
          optax.adam(config.lr_d, b1=config.beta1, b2=config.beta2))


def init(gen: G.Generator, disc: Discriminator, config: GANConfig, key, image_shape) -> GANState:
  """A fresh :class:`GANState` (generator from :func:`jaxdistill.generators.init_generator`, discriminator
  initialised on one image of ``image_shape (H, W, C)``)."""
  k_g, k_d = jax.random.split(key)
  g_params = G.init_generator(gen, k_g)
  d_params = disc.init(k_d, jnp.zeros((1,) + tuple(image_shape)), jnp.zeros((1,), jnp.int32))
  g_tx, d_tx = optimizers(config)
  return GANState(g_params, g_params, d_params, g_tx.init(g_params), d_tx.init(d_params), jnp.zeros((), jnp.int32))


def sample(gen: G.Generator, params, key, labels):
  """Generator images ``[N, H, W, C]`` for int ``labels [N]`` (fresh ``z`` and per-image noise from ``key``)."""
  k_z, k_n = jax.random.split(key)
  z = jax.random.normal(k_z, (labels.shape[0], gen.config.z_dim))
  if gen.arch == "style":
    return gen.module.apply(params, z, labels, G.per_image_keys(k_n, labels.shape[0]))
  return gen.module.apply(params, z, labels)


def d_loss(d_params, disc: Discriminator, real, fake, labels, r1_gamma: float):
  """Discriminator loss (module docstring) on ``real`` / ``fake [N, H, W, C]`` with int ``labels [N]``: a scalar
  and ``{"d_real", "d_fake", "r1"}`` (scalar means). The R1 term takes one VJP of the summed scores, which is
  each image's own input gradient because the discriminator has no cross-image layer."""
  real_fn = lambda x: disc.apply(d_params, x, labels)
  d_real, vjp = jax.vjp(real_fn, real)
  d_fake = disc.apply(d_params, fake, labels)
  loss = jnp.mean(jax.nn.softplus(d_fake)) + jnp.mean(jax.nn.softplus(-d_real))
  r1 = jnp.zeros(())
  if r1_gamma:
    grad = vjp(jnp.ones_like(d_real))[0]  # ∂D(x_i)/∂x_i per image (the images do not interact)
    r1 = jnp.mean(jnp.sum(grad.reshape(grad.shape[0], -1) ** 2, -1))
    loss = loss + 0.5 * r1_gamma * r1
  return loss, {"d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake), "r1": r1}


def g_loss(g_params, gen: G.Generator, d_params, disc: Discriminator, key, labels):
  """Non-saturating generator loss ``mean softplus(−D(G(z, c), c))`` (a scalar) for fresh ``z`` from ``key`` and
  int ``labels [N]``."""
  fake = sample(gen, g_params, key, labels)
  return jnp.mean(jax.nn.softplus(-disc.apply(d_params, fake, labels)))


def make_train_step(gen: G.Generator, disc: Discriminator, config: GANConfig):
  """The jitted ``step(state, images [B, H, W, C], labels [B], key) -> (state, metrics)``: one discriminator
  update on the real batch and fakes of the same labels, then one generator update, then the EMA."""
  g_tx, d_tx = optimizers(config)

  def step(state: GANState, images, labels, key) -> Tuple[GANState, Dict[str, Any]]:
    k_d, k_g = jax.random.split(jax.random.fold_in(key, state.step))
    fake = jax.lax.stop_gradient(sample(gen, state.g_params, k_d, labels))
    (ld, aux), gd = jax.value_and_grad(d_loss, has_aux=True)(state.d_params, disc, images, fake, labels,
                                                             config.r1_gamma)
    upd, d_opt = d_tx.update(gd, state.d_opt, state.d_params)
    d_params = optax.apply_updates(state.d_params, upd)
    lg, gg = jax.value_and_grad(g_loss)(state.g_params, gen, d_params, disc, k_g, labels)
    upd, g_opt = g_tx.update(gg, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, upd)
    ema = jax.tree_util.tree_map(lambda e, p: config.ema_decay * e + (1.0 - config.ema_decay) * p,
                                 state.ema_params, g_params)
    return GANState(g_params, ema, d_params, g_opt, d_opt, state.step + 1), {"d_loss": ld, "g_loss": lg, **aux}

  return jax.jit(step)
