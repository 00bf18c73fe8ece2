"""HaBa: dataset factorisation into bases and hallucinators (Liu et al., "Dataset Distillation via
Factorization", NeurIPS 2022).

The stored set is ``B_c`` bases per class ``[C·B_c, h_b, w_b, ch]`` (class-major; ``h_b`` may be below the
image size to save storage, bases are then bilinearly upsampled) and ``H`` small hallucinators shared by all
classes. Hallucinator ``j`` maps a basis ``b`` to an image (HaBa Sec. 3.2, encoder → learned affine →
decoder)::

    e = relu(conv3x3_enc(b))        [h, w, width]
    e' = σ_j ⊙ e + μ_j               (learned per-channel scale and shift)
    x_j(b) = b + conv3x3_dec(e')     [h, w, ch]

The residual ``b +`` is our choice so that, with bases initialised from real images, every hallucinated image
starts close to a real one. The synthetic set is every hallucinator applied to every basis: ``C·B_c·H``
images, image ``(c·B_c + i)·H + j`` = ``x_j(b_{c,i})`` with label ``c`` (class-major). Any objective trains
bases and hallucinators jointly (HaBa uses MTT; its adversarial contrastive term between hallucinators is
not included here). Storage = bases + hallucinator parameters, held to the budget of the pixel set it
replaces (:func:`jaxdistill.synthetic.generator.check_budget`).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.data.sampling import check_ipc, class_index, sample_balanced
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats
from jaxdistill.synthetic.generator import check_budget
from jaxdistill.validation import check_choice, check_ints

BASIS_INITS = ("real", "noise")


@dataclasses.dataclass(frozen=True)
class HaBaConfig:
  """HaBa settings.

  Attributes:
    bases_per_class: ``B_c``.
    hallucinators: ``H`` (images per class = ``B_c · H``).
    width: encoder channels of each hallucinator.
    basis_size: stored basis side (0: the image size); smaller bases are upsampled bilinearly.
    init: ``"real"`` (random real images of each class, downsampled) or ``"noise"``.
    enforce_budget: refuse bases + hallucinators over the pixel budget of the IPC they replace.
  """
  bases_per_class: int = 1
  hallucinators: int = 5
  width: int = 8
  basis_size: int = 0
  init: str = "real"
  enforce_budget: bool = True

  def validate(self):
    check_ints(self, ("bases_per_class", "hallucinators", "width"))
    check_ints(self, "basis_size", minimum=0, note="0: image size")
    check_choice("init", self.init, BASIS_INITS)
    return self


class Hallucinator(nn.Module):
  """``__call__(bases [N, h, w, ch]) -> images [N, h, w, ch]`` (module docstring)."""
  channels: int
  width: int

  @nn.compact
  def __call__(self, x):
    e = jax.nn.relu(nn.Conv(self.width, (3, 3), padding="SAME", name="encoder")(x))
    scale = self.param("scale", nn.initializers.ones, (self.width,))
    shift = self.param("shift", nn.initializers.zeros, (self.width,))
    return x + nn.Conv(self.channels, (3, 3), padding="SAME", name="decoder")(e * scale + shift)


def haba_parameterisation(config: HaBaConfig, num_classes: int, image_shape, name: str = "haba") -> Parameterisation:
  """HaBa's ``Parameterisation``: ``render`` = all ``B × H`` (basis, hallucinator) images, class-major;
  ``storage`` = bases + hallucinator floats."""
  config.validate()
  image_shape = tuple(int(s) for s in image_shape)
  hal = Hallucinator(image_shape[-1], config.width)
  per = config.bases_per_class * config.hallucinators

  def render(state: SynState, key=None) -> SyntheticBatch:
    bases = state.params["bases"]
    if bases.shape[1:3] != image_shape[:2]:
      bases = jax.image.resize(bases, (bases.shape[0],) + image_shape, "bilinear")
    hals = state.params["hallucinators"]
    # A static loop over the H hallucinators (vmap over their weights would become grouped convolutions,
    # which are slow on CPU).
    out = jnp.stack([hal.apply(jax.tree_util.tree_map(lambda a, j=j: a[j], hals), bases)
                     for j in range(config.hallucinators)])  # [H, N_b, ...]
    images = jnp.swapaxes(out, 0, 1).reshape((-1,) + image_shape)
    labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per)
    return SyntheticBatch(images, labels, state.params.get("lr"))

  def storage(state: SynState) -> int:
    return num_floats(state.params)

  return Parameterisation(name, render, storage)


def init_haba(key, config: HaBaConfig, real_images, real_labels, num_classes: int, ipc: int, *,
              learn_lr: float = None) -> SynState:
  """Bases (from real images of each class, or noise) and ``H`` randomly initialised hallucinators, for a set
  replacing ``ipc`` pixel images per class.

  Returns:
    ``SynState(params={"bases": [C·B_c, h_b, w_b, ch], "hallucinators": stacked [H, ...] [, "lr"]},
    const={})``.

  Raises:
    ValueError: too few real images per class, or (``enforce_budget``) storage over ``C·ipc·H·W·ch``.
  """
  config.validate()
  image_shape = tuple(np.shape(real_images)[1:])
  side = config.basis_size or image_shape[0]
  basis_shape = (side, side * image_shape[1] // image_shape[0], image_shape[2])
  n = num_classes * config.bases_per_class
  k_basis, k_hal = jax.random.split(key)
  if config.init == "real":
    labels = np.asarray(real_labels)
    index = class_index(labels, num_classes)
    check_ipc(index, config.bases_per_class, "bases_per_class")
    pos = np.asarray(sample_balanced(k_basis, index, config.bases_per_class)).reshape(-1)
    bases = jnp.asarray(np.asarray(real_images)[pos], jnp.float32)
    if basis_shape != image_shape:
      bases = jax.image.resize(bases, (n,) + basis_shape, "linear", antialias=True)
  else:
    bases = jax.random.normal(k_basis, (n,) + basis_shape, jnp.float32)
  hal = Hallucinator(image_shape[-1], config.width)
  x = jnp.zeros((1,) + image_shape, jnp.float32)
  hals = jax.vmap(lambda k: hal.init(k, x))(jax.random.split(k_hal, config.hallucinators))
  params = {"bases": bases, "hallucinators": hals}
  if learn_lr is not None:
    params["lr"] = jnp.asarray(learn_lr, jnp.float32)
  if config.enforce_budget:
    check_budget(num_floats({k: v for k, v in params.items() if k != "lr"}), num_classes, ipc, image_shape,
                 what="HaBa set (bases + hallucinators)")
  return SynState(params, {})
