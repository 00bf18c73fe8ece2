"""The pixel parameterisation: the synthetic images themselves are the learnable parameters (DC, DSA, DM).

Initialisation (DC: Gaussian noise; DSA / DM: random real images of each class; or a coreset selection),
images class-major with hard labels ``[0]*ipc + [1]*ipc + ...``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.data.sampling import check_ipc, class_index, sample_balanced
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats

INITS = ("real", "noise", "random", "herding", "kcenter", "forgetting", "entropy", "kmeans")


def class_major_labels(num_classes: int, ipc: int) -> jnp.ndarray:
  """Hard labels int32 ``[num_classes · ipc]``: ``ipc`` copies of each class in order."""
  return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)


def init_pixels(key, init: str, real_images, real_labels, num_classes: int, ipc: int, *,
                noise_std: float = 1.0, learn_lr: float = None, learn_labels: bool = False,
                label_scale: float = 1.0, coreset_kwargs=None) -> SynState:
  """A pixel synthetic set of ``ipc`` images per class.

  Args:
    key: PRNG key.
    init: ``"real"`` / ``"random"`` (random real images of each class, the DSA/DM init), ``"noise"``
      (``N(0, noise_std²)`` in normalised space, the DC init), or a coreset method ``"herding"``,
      ``"kcenter"``, ``"forgetting"``, ``"entropy"``, ``"kmeans"`` (:func:`jaxdistill.coreset.select`).
    real_images: ``[N, H, W, C]`` normalised training images; real_labels: int ``[N]``.
    learn_lr: if given, a learnable learning rate initialised to this value (MTT-style) is added to ``params``.
    learn_labels: if True, soft labels float32 ``[C·ipc, C]`` initialised to ``label_scale · one_hot`` are
      learnable (``params["labels"]``; KIP, FRePo, label distillation) instead of fixed hard labels.
    coreset_kwargs: extra keyword arguments for :func:`jaxdistill.coreset.select`.

  Returns:
    ``SynState(params={"images": [C·ipc, H, W, C]} (+ "lr"), const={"labels": int32 [C·ipc]})``.

  Raises:
    ValueError: unknown ``init`` or ``ipc`` larger than the smallest class.
  """
  if init not in INITS:
    raise ValueError(f"init must be one of {list(INITS)}, got {init!r}.")
  real_labels = np.asarray(real_labels)
  image_shape = tuple(np.shape(real_images)[1:])
  index = class_index(real_labels, num_classes)
  check_ipc(index, ipc)
  if init == "noise":
    images = noise_std * jax.random.normal(key, (num_classes * ipc,) + image_shape, jnp.float32)
  elif init in ("real", "random"):
    pos = np.asarray(sample_balanced(key, index, ipc)).reshape(-1)
    images = jnp.asarray(np.asarray(real_images)[pos], jnp.float32)
  else:
    from jaxdistill import coreset  # lazy: coreset trains a feature network on first use.
    pos = coreset.select(init, key, real_images, real_labels, num_classes, ipc, **(coreset_kwargs or {}))
    images = jnp.asarray(np.asarray(real_images)[np.asarray(pos).reshape(-1)], jnp.float32)
  params = {"images": images}
  if learn_lr is not None:
    params["lr"] = jnp.asarray(learn_lr, jnp.float32)
  labels = class_major_labels(num_classes, ipc)
  if learn_labels:
    params["labels"] = label_scale * jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return SynState(params, {"labels": labels})


def render_pixels(state: SynState) -> SyntheticBatch:
  """The identity rendering: ``SyntheticBatch(images [N, H, W, C], labels, lr or None)``; labels are the
  learnable soft labels ``params["labels"] [N, C]`` when present, else the hard ``const["labels"] [N]``."""
  labels = state.params["labels"] if "labels" in state.params else state.const["labels"]
  return SyntheticBatch(state.params["images"], labels, state.params.get("lr"))


def storage_pixels(state: SynState) -> int:
  """Floats stored: the images (and a learned lr)."""
  return num_floats(state.params)


PIXELS = Parameterisation("pixels", render_pixels, storage_pixels)
