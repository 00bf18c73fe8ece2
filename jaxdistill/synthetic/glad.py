"""GLaD: distilling latents through a frozen generator (Cazenavette et al., "Generalizing Dataset Distillation
via Deep Generative Prior", CVPR 2023), and the decoupled, chunked backward pass through the generator.

The synthetic set is ``images = G(latents)`` for a frozen generator ``G`` (random or trained). Latent spaces
(:class:`GLaDConfig` ``space``):

* ``"features"`` — GLaD's intermediate space: the feature map ``F_n [N, h, w, c]`` after layer ``n`` plus the
  codes W⁺ of the layers after it, ``[N, L + 1 − n, w_dim]`` (``n = 0``: a per-image constant input + all of W⁺);
* ``"wplus"`` — W⁺ alone ``[N, L + 1, w_dim]``; ``"w"`` — one code per image ``[N, w_dim]``;
* ``"z"`` — the input latent ``[N, z_dim]`` through the mapping network (the only space of the plain decoder;
  LatentDD).

Initialisation: ``w = mapping(z, c)`` of random ``z`` (``init="random"``) or the class average
``w̄_c`` (``init="class_mean"``), broadcast to W⁺, and ``F_n`` = the generator's own feature map after layer
``n`` for those codes. Per-layer noise is frozen per image (``const["noise_keys"]``), so rendering is
deterministic. ``params = {"features", "codes"}`` — the loop's optimiser can give the two their own learning
rates (they differ by orders of magnitude; GLaD uses Adam with separate rates).

Decoupled backward (GLaD, Sec. 3.3; memory): with ``decoupled=True`` the render is a :func:`jax.custom_vjp`
whose forward computes the images without keeping ``G``'s activations, and whose backward receives
``dL/dimages`` from the objective and pushes it through ``G`` chunk by chunk (``jax.vjp`` per chunk of
``chunk`` images inside ``lax.map``), so the generator's memory is that of one chunk, not of the whole set.
:func:`decoupled_grad` exposes the same computation as a function. Storage: the latents, plus the
generator's floats when it must be stored (``count_generator``; a random generator is a seed).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import generators as G
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats
from jaxdistill.synthetic.pixels import class_major_labels
from jaxdistill.validation import check_choice, check_ints

SPACES = ("features", "wplus", "w", "z")
INITS = ("random", "class_mean")


@dataclasses.dataclass(frozen=True)
class GLaDConfig:
  """GLaD settings.

  Attributes:
    space: ``"features"`` (F_n + W⁺ after layer ``layer``), ``"wplus"``, ``"w"`` or ``"z"`` (module docstring).
    layer: ``n`` for ``space="features"``, ``0 ≤ n ≤ L``.
    init: ``"random"`` (mapping of random z) or ``"class_mean"`` (the class-average w; not for ``"z"``).
    init_samples: z samples per class for the class average.
    noise: frozen per-image noise in every synthesis layer (else none).
    decoupled: render through :func:`decoupled` (chunked backward through G) instead of plain autodiff.
    chunk: images per chunk of the decoupled backward.
    count_generator: count the generator's floats in ``storage`` (a trained G must be stored; a random G is
      regenerated from its seed).
  """
  space: str = "features"
  layer: int = 2
  init: str = "random"
  init_samples: int = 64
  noise: bool = True
  decoupled: bool = True
  chunk: int = 10
  count_generator: bool = False

  def validate(self, gen: G.Generator = None):
    check_choice("space", self.space, SPACES)
    check_choice("init", self.init, INITS)
    check_ints(self, ("init_samples", "chunk"))
    if gen is not None:
      if gen.arch != "style" and self.space != "z":
        raise ValueError(f"space must be 'z' for the {gen.arch!r} generator, got {self.space!r}.")
      if self.space == "z" and self.init == "class_mean":
        raise ValueError("init='class_mean' needs a w-space (space 'features', 'wplus' or 'w'), not 'z'.")
      if self.space == "features":
        G.check_layer(gen.config, self.layer)
    return self


# ----------------------------------------------------------------------------------------------------------
# Decoupled, chunked backward through a per-image function.

def chunked_vjp(fn: Callable, latents, aux, gparams, cotangent, chunk: int):
  """``vjp`` of ``latents ↦ fn(latents, aux, gparams)`` at ``cotangent``, ``chunk`` images at a time.

  ``fn`` must treat images independently (true of both generators); every leaf of ``latents`` and ``aux``
  has the image axis first (``N``). ``cotangent`` is ``dL/dimages [N, ...]``. Chunks run in ``lax.map``, so
  only one chunk's generator activations are alive at once. Returns the latents' gradient (same pytree).
  """
  n = jax.tree_util.tree_leaves(latents)[0].shape[0]
  chunk = max(1, min(int(chunk), n))
  pad = (-n) % chunk

  def split(x):
    if pad:
      x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)], 0)
    return x.reshape((-1, chunk) + x.shape[1:])

  def one(args):
    lat, ax, ct = args
    _, vjp = jax.vjp(lambda l: fn(l, ax, gparams), lat)
    return vjp(ct)[0]

  grads = jax.lax.map(one, jax.tree_util.tree_map(split, (latents, aux, cotangent)))
  return jax.tree_util.tree_map(lambda g: g.reshape((-1,) + g.shape[2:])[:n], grads)


def decoupled(fn: Callable, chunk: int) -> Callable:
  """``fn(latents, aux, gparams) -> images`` with GLaD's decoupled backward (``jax.custom_vjp``): the forward
  keeps only the inputs; the backward recomputes ``fn`` per chunk (:func:`chunked_vjp`). ``aux`` (labels,
  noise keys) and ``gparams`` (the frozen generator) get zero cotangents."""

  @jax.custom_vjp
  def render(latents, aux, gparams):
    return fn(latents, aux, gparams)

  def fwd(latents, aux, gparams):
    return fn(latents, aux, gparams), (latents, aux, gparams)

  def bwd(res, ct):
    latents, aux, gparams = res
    return chunked_vjp(fn, latents, aux, gparams, ct, chunk), None, None

  render.defvjp(fwd, bwd)
  return render


def decoupled_grad(loss_of_images: Callable, fn: Callable, latents, aux, gparams, chunk: int):
  """GLaD's decoupled gradient as an explicit function: ``images = fn(latents, aux, gparams)`` (not traced
  for autodiff), ``g = dL/dimages`` from ``loss_of_images(images)``, then ``g`` pushed through ``fn`` chunk
  by chunk. Returns ``(loss, dL/dlatents)``; equals ``jax.value_and_grad(loss_of_images ∘ fn)``."""
  images = jax.lax.stop_gradient(fn(latents, aux, gparams))
  loss, g = jax.value_and_grad(loss_of_images)(images)
  return loss, chunked_vjp(fn, latents, aux, gparams, g, chunk)


# ----------------------------------------------------------------------------------------------------------
# The parameterisation.

def latent_fn(gen: G.Generator, config: GLaDConfig) -> Callable:
  """``fn(latents, aux, gparams) -> images [N, R, R, ch]`` for ``config.space``; ``latents`` holds ``codes``
  (and ``features``), ``aux`` holds ``labels`` (and ``noise_keys``)."""
  space, n = config.space, config.layer

  def fn(latents, aux, gparams):
    keys = aux.get("noise_keys")
    codes = latents["codes"]
    if space == "z":
      return G.generate(gen, gparams, codes, aux["labels"], keys)
    if space == "w":
      return G.synthesis(gen, gparams, G.broadcast_ws(gen, codes), keys)
    if space == "wplus":
      return G.synthesis(gen, gparams, codes, keys)
    ws = jnp.concatenate([jnp.zeros((codes.shape[0], n, codes.shape[-1]), codes.dtype), codes], 1)
    return G.synthesis(gen, gparams, ws, keys, start=n, features=latents["features"])
  return fn


def glad_parameterisation(gen: G.Generator, config: GLaDConfig, name: str = "glad") -> Parameterisation:
  """GLaD's ``Parameterisation``: ``render(state)`` = ``SyntheticBatch(G(latents), labels, lr)`` and
  ``storage(state)`` = latent floats (+ the generator's when ``config.count_generator``)."""
  config.validate(gen)
  fn = latent_fn(gen, config)
  images_fn = decoupled(fn, config.chunk) if config.decoupled else fn

  def render(state: SynState, key=None) -> SyntheticBatch:
    latents = {k: state.params[k] for k in ("features", "codes") if k in state.params}
    aux = {k: state.const[k] for k in ("labels", "noise_keys") if k in state.const}
    images = images_fn(latents, aux, state.const["generator"])
    return SyntheticBatch(images, state.const["labels"], state.params.get("lr"))

  def storage(state: SynState) -> int:
    extra = num_floats(state.const["generator"]) if config.count_generator else 0
    return num_floats(state.params) + extra

  return Parameterisation(name, render, storage)


def init_glad(key, gen: G.Generator, gparams, config: GLaDConfig, num_classes: int, ipc: int, *,
              learn_lr: float = None) -> SynState:
  """GLaD latents for ``ipc`` images per class (class-major), initialised from the mapping of random ``z``
  (or the class-average ``w``).

  Returns:
    ``SynState(params={"codes": ... [, "features": [N, h, w, c]] [, "lr"]},
    const={"labels": int32 [N], "generator": gparams [, "noise_keys": uint32 [N, 2]]})``.
  """
  config.validate(gen)
  if gen.config.num_classes != num_classes:
    raise ValueError(f"the generator has {gen.config.num_classes} classes, the dataset {num_classes}.")
  n = num_classes * ipc
  k_z, k_noise, k_mean = jax.random.split(key, 3)
  labels = class_major_labels(num_classes, ipc)
  z = jax.random.normal(k_z, (n, gen.config.z_dim), jnp.float32)
  const: Dict[str, Any] = {"labels": labels, "generator": gparams}
  keys = None
  if config.noise and gen.arch == "style":
    keys = G.per_image_keys(k_noise, n)
    const["noise_keys"] = keys
  params: Dict[str, Any] = {}
  if config.space == "z":
    params["codes"] = z
  else:
    if config.init == "class_mean":
      w = G.class_mean_w(gen, gparams, k_mean, config.init_samples)[labels]
    else:
      w = G.mapping(gen, gparams, z, labels)
    if config.space == "w":
      params["codes"] = w
    else:
      ws = G.broadcast_ws(gen, w)
      if config.space == "wplus":
        params["codes"] = ws
      else:
        params["features"] = G.synthesis(gen, gparams, ws, keys, stop=config.layer)
        params["codes"] = ws[:, config.layer:]
  if learn_lr is not None:
    params["lr"] = jnp.asarray(learn_lr, jnp.float32)
  return SynState(params, const)


def latent_floats_per_image(gen: G.Generator, config: GLaDConfig) -> int:
  """Floats stored per synthetic image in ``config.space`` (for equal-storage comparisons with pixels)."""
  config.validate(gen)
  c = gen.config
  if config.space == "z":
    return c.z_dim
  if config.space == "w":
    return c.w_dim
  if config.space == "wplus":
    return c.num_ws * c.w_dim
  return int(np.prod(c.feature_shape(config.layer))) + (c.num_ws - config.layer) * c.w_dim
