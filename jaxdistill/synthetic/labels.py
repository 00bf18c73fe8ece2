"""The labels-only parameterisation of Label Distillation (LD, Bohdal, Yang & Hospedales 2020): a fixed set of
real "base" images whose soft labels (and optionally a learning rate) are the only learnable parameters.

``SynState(params={"labels": [N, C]} (+ "lr"), const={"images": [N, H, W, C], "labels": int32 [N]})``; the
images are chosen once by :func:`jaxdistill.synthetic.init_pixels` (random real images of each class or a
coreset) and never change, so any objective (BPTT in LD, but also KRR-style ones) learns labels only.

After every optimiser update the loop projects the labels (``Parameterisation.project``): ``"simplex"`` (the
default, as LD's code does after each Adam step) clips them to ``[0, 1]`` and renormalises each row to sum 1,
so they stay probability vectors and the soft cross-entropy ``−Σ_c ỹ_c log p_c`` stays bounded below however
long a network is trained on them; ``"none"`` leaves them unconstrained (``labels_only_raw``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats
from jaxdistill.synthetic.pixels import INITS, init_pixels

LABEL_INITS = tuple(i for i in INITS if i != "noise")
LABEL_STARTS = ("one_hot", "uniform")
LABEL_PROJECTIONS = ("simplex", "none")


def initial_labels(hard_labels, num_classes: int, start: str = "one_hot", scale: float = 1.0):
  """Initial soft labels ``[N, C]`` for hard ``labels [N]``: ``scale · one_hot`` or ``scale / C`` everywhere
  (``"uniform"``, the LD code's start, which lets the meta-gradient alone decide every label).

  Raises:
    ValueError: unknown ``start``.
  """
  if start not in LABEL_STARTS:
    raise ValueError(f"label start must be one of {list(LABEL_STARTS)}, got {start!r}.")
  n = hard_labels.shape[0]
  if start == "uniform":
    return jnp.full((n, num_classes), scale / num_classes, jnp.float32)
  return scale * jax.nn.one_hot(hard_labels, num_classes, dtype=jnp.float32)


def init_labels(key, init: str, real_images, real_labels, num_classes: int, ipc: int, *,
                label_scale: float = 1.0, label_start: str = "one_hot", learn_lr: float = None,
                coreset_kwargs=None) -> SynState:
  """``ipc`` real base images per class (class-major) with learnable soft labels (:func:`initial_labels`).

  Args:
    init: how the base images are picked: ``"real"`` / ``"random"`` (random real images of each class) or a
      coreset method (``"herding"``, ``"kcenter"``, ``"forgetting"``); noise is not a base set.
    label_scale, label_start: the initial labels (:func:`initial_labels`).
    learn_lr: if given, a learnable learning rate initialised to it (``params["lr"]``).

  Returns:
    ``SynState(params={"labels": float32 [C·ipc, C]} (+ "lr"), const={"images", "labels": int32 [C·ipc]})``.

  Raises:
    ValueError: ``init`` not in :data:`LABEL_INITS`, an unknown ``label_start``, or ``ipc`` larger than the
      smallest class.
  """
  if init not in LABEL_INITS:
    raise ValueError(f"init must be one of {list(LABEL_INITS)} (label distillation keeps real base images), "
                     f"got {init!r}.")
  pixels = init_pixels(key, init, real_images, real_labels, num_classes, ipc, learn_lr=learn_lr,
                       learn_labels=True, label_scale=label_scale, coreset_kwargs=coreset_kwargs)
  params = {k: v for k, v in pixels.params.items() if k != "images"}
  params["labels"] = initial_labels(pixels.const["labels"], num_classes, label_start, label_scale)
  const = {"images": jnp.asarray(pixels.params["images"]), "labels": pixels.const["labels"]}
  return SynState(params, const)


def render_labels(state: SynState) -> SyntheticBatch:
  """``SyntheticBatch(const images [N, H, W, C], learned labels [N, C], lr or None)``."""
  return SyntheticBatch(state.const["images"], state.params["labels"], state.params.get("lr"))


def storage_labels(state: SynState) -> int:
  """Floats stored: the learned labels (and lr) plus the fixed base images."""
  return num_floats(state.params) + num_floats(state.const["images"])


def project_simplex(labels):
  """LD's projection of soft labels ``[N, C]`` onto probability vectors: clip to ``[0, 1]``, divide each row by
  its sum; a row clipped to all zeros (every entry pushed below 0) becomes uniform ``1/C`` rather than NaN."""
  clipped = jnp.clip(labels, 0.0, 1.0)
  total = jnp.sum(clipped, axis=-1, keepdims=True)
  uniform = jnp.full_like(clipped, 1.0 / labels.shape[-1])
  return jnp.where(total > 0, clipped / jnp.where(total > 0, total, 1.0), uniform)


def label_projection(projection: str):
  """``params -> params`` applying ``projection`` (:data:`LABEL_PROJECTIONS`) to ``params["labels"] [N, C]``
  (other entries, and params without labels, untouched), or None for ``"none"``. Usable with any
  parameterisation that learns labels: ``PIXELS._replace(project=label_projection("simplex"))``.

  Raises:
    ValueError: unknown ``projection``.
  """
  if projection not in LABEL_PROJECTIONS:
    raise ValueError(f"label projection must be one of {list(LABEL_PROJECTIONS)}, got {projection!r}.")
  if projection == "none":
    return None

  def project(params):
    if "labels" not in params:
      return params
    return {**params, "labels": project_simplex(params["labels"])}

  return project


def labels_only(projection: str = "simplex") -> Parameterisation:
  """The labels-only parameterisation with its label projection (``"simplex"``: LD's; ``"none"``: raw)."""
  name = "labels_only" if projection == "simplex" else "labels_only_raw"
  return Parameterisation(name, render_labels, storage_labels, project=label_projection(projection))


LABELS_ONLY = labels_only("simplex")
LABELS_ONLY_RAW = labels_only("none")
