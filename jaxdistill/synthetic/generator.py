"""GenDM: a generator as the synthetic set, trained with a distillation objective under a storage budget, and
LatentDD: a fixed latent set distilled through the frozen trained generator (the generative-distillation
thesis; GenDM trains with DM first, any objective works since objectives only see images).

GenDM's learnable state is the generator's parameters, ``params = {"generator": ...}``. Every training step
renders ``train_per_class`` images per class from *fresh* ``z`` (and fresh per-layer noise), so the
generator — not a fixed image set — is what is learned. The render therefore needs randomness per step:

* the parameterisation sets ``needs_key=True`` and the loop calls ``render(state, key)`` with a key derived
  from its per-iteration key (``fold_in(fold_in(key, t), 3)``, independent of the loss / sampling keys), so
  a resumed run draws exactly the same latents as an uninterrupted one;
* ``render(state)`` without a key is the *evaluation sample*: ``samples_per_class`` images per class from the
  fixed key ``const["key"]`` with truncation ``ψ`` (:func:`sample_generator` draws any other count/key).

Storage budget: a generator replacing an IPC-``k`` pixel set may hold at most ``C · k · H · W · channels``
floats (:func:`storage_budget`); :func:`check_budget` refuses a larger one and says by how much. Only the
generator is stored (latents are re-drawn), so ``storage = `` its parameter count.

LatentDD freezes the trained generator and learns a fixed latent set through it — GLaD's parameterisation
with ``space="z"`` (or a w-space for the style generator) and the generator's floats counted in storage.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import generators as G
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats
from jaxdistill.synthetic.glad import GLaDConfig, glad_parameterisation, init_glad
from jaxdistill.synthetic.pixels import class_major_labels
from jaxdistill.validation import check_in_range, check_ints


@dataclasses.dataclass(frozen=True)
class GenDMConfig:
  """GenDM settings.

  Attributes:
    train_per_class: images per class rendered from fresh latents at every training step.
    samples_per_class: images per class of the evaluation sample (``render(state)``).
    truncation: ``ψ`` of the evaluation sample (1: none; style: towards the class-mean w; decoder: ``ψ z``).
    noise: per-layer noise in the style generator.
    mean_samples: z samples per class for the class-mean w used by truncation.
    enforce_budget: refuse a generator larger than the pixel set it replaces.
  """
  train_per_class: int = 10
  samples_per_class: int = 10
  truncation: float = 1.0
  noise: bool = True
  mean_samples: int = 64
  enforce_budget: bool = True

  def validate(self):
    check_ints(self, ("train_per_class", "samples_per_class", "mean_samples"))
    check_in_range("truncation", self.truncation, 0, 1)
    return self


def storage_budget(num_classes: int, ipc: int, image_shape) -> int:
  """Floats of the pixel set a parameterisation replaces: ``C · IPC · H · W · channels``."""
  return int(num_classes * ipc * int(np.prod(image_shape)))


def check_budget(floats: int, num_classes: int, ipc: int, image_shape, what: str = "generator") -> int:
  """Returns ``floats`` if within :func:`storage_budget`; else ``ValueError`` saying by how much it is over.

  Raises:
    ValueError: ``floats`` exceeds the budget.
  """
  budget = storage_budget(num_classes, ipc, image_shape)
  if floats > budget:
    shape = "×".join(str(int(s)) for s in image_shape)
    raise ValueError(
        f"the {what} stores {floats:,} floats, {floats - budget:,} over the storage budget of {budget:,} floats "
        f"({num_classes} classes × IPC {ipc} × {shape}); make it smaller (widths, z_dim, ...) or raise IPC.")
  return floats


def sample_generator(gen: G.Generator, gparams, key, num_classes: int, per_class: int, *,
                     truncation: float = 1.0, noise: bool = True, mean_samples: int = 64) -> SyntheticBatch:
  """``per_class`` images per class (class-major, hard labels) from ``gen`` with fresh latents from ``key``.

  Truncation ``ψ < 1`` pulls styles towards the class-mean ``w`` (style) or scales ``z`` (decoder).
  Returns ``SyntheticBatch(images [C·per_class, R, R, ch], labels int32 [C·per_class])``.
  """
  n = num_classes * per_class
  labels = class_major_labels(num_classes, per_class)
  k_z, k_noise, k_mean = jax.random.split(key, 3)
  z = jax.random.normal(k_z, (n, gen.config.z_dim), jnp.float32)
  keys = G.per_image_keys(k_noise, n) if (noise and gen.arch == "style") else None
  w_mean = None
  if truncation != 1.0 and gen.arch == "style":
    w_mean = G.class_mean_w(gen, gparams, k_mean, mean_samples)
  images = G.generate(gen, gparams, z, labels, keys, float(truncation), w_mean)
  return SyntheticBatch(images, labels)


def gendm_parameterisation(gen: G.Generator, config: GenDMConfig, num_classes: int,
                           name: str = "gendm") -> Parameterisation:
  """GenDM's ``Parameterisation`` (``needs_key=True``): ``render(state, key)`` draws ``train_per_class`` fresh
  images per class; ``render(state)`` is the evaluation sample (module docstring). ``storage`` = generator
  floats (+ a learned lr)."""
  config.validate()

  def render(state: SynState, key=None) -> SyntheticBatch:
    gparams = state.params["generator"]
    if key is None:
      batch = sample_generator(gen, gparams, state.const["key"], num_classes, config.samples_per_class,
                               truncation=config.truncation, noise=config.noise, mean_samples=config.mean_samples)
    else:
      batch = sample_generator(gen, gparams, key, num_classes, config.train_per_class, noise=config.noise)
    return batch._replace(lr=state.params.get("lr"))

  def storage(state: SynState) -> int:
    return num_floats(state.params)

  return Parameterisation(name, render, storage, needs_key=True)


def init_gendm(key, gen: G.Generator, config: GenDMConfig, num_classes: int, ipc: int, image_shape,
               gparams=None, *, learn_lr: float = None) -> SynState:
  """GenDM state: the generator's parameters (random from ``key``, or ``gparams``) and the evaluation key;
  ``learn_lr`` adds a learnable student learning rate ``params["lr"]`` (MTT), outside the budget check.

  Raises:
    ValueError: class count or image shape mismatch, or (``enforce_budget``) a generator over the budget.
  """
  config.validate()
  cfg = gen.config
  if cfg.num_classes != num_classes:
    raise ValueError(f"the generator has {cfg.num_classes} classes, the dataset {num_classes}.")
  if (cfg.resolution, cfg.resolution, cfg.channels) != tuple(image_shape):
    raise ValueError(f"the generator makes {cfg.resolution}×{cfg.resolution}×{cfg.channels} images, the dataset "
                     f"has {tuple(image_shape)}.")
  k_gen, k_eval = jax.random.split(key)
  gparams = G.init_generator(gen, k_gen) if gparams is None else gparams
  if config.enforce_budget:
    check_budget(G.num_params(gparams), num_classes, ipc, image_shape)
  params = {"generator": gparams}
  if learn_lr is not None:
    params["lr"] = jnp.asarray(learn_lr, jnp.float32)
  return SynState(params, {"key": G.per_image_keys(k_eval, 1)[0]})


def latentdd_config(space: str = "z", **kw) -> GLaDConfig:
  """LatentDD's GLaD configuration: latents in ``space`` (default ``"z"``), the trained generator counted in
  storage."""
  return GLaDConfig(space=space, count_generator=True, **kw)


def latentdd_parameterisation(gen: G.Generator, config: Optional[GLaDConfig] = None) -> Parameterisation:
  """LatentDD = GLaD through the frozen trained generator (``name="latentdd"``)."""
  return glad_parameterisation(gen, config or latentdd_config(), name="latentdd")


def init_latentdd(key, gen: G.Generator, gparams, num_classes: int, ipc: int,
                  config: Optional[GLaDConfig] = None) -> SynState:
  """A fixed latent set of ``ipc`` per class for the frozen generator ``gparams`` (:func:`init_glad`)."""
  return init_glad(key, gen, gparams, config or latentdd_config(), num_classes, ipc)
