"""Distribution matching: Dataset Condensation with Distribution Matching (DM, Zhao & Bilen, WACV 2023),
its L1 variant (the generative-distillation thesis) and the batch-norm variant.

Loss (DM Eq. 4 with the empirical MMD of a random embedding): for a fresh randomly initialised ConvNet ψ each
iteration (frozen), ``Σ_c ‖ mean_i ψ(A(T_c,i)) − mean_j ψ(A(S_c,j)) ‖²`` with siamese DSA ``A`` and the real
embeddings stopped; ``distance="l1"`` uses ``Σ |·|`` instead. All classes go through the network in one
batched forward (``[C·n]`` real, ``[C·ipc]`` synthetic), then per-class means — so with instance norm the
result equals the per-class computation, and with batch norm (``batchnorm=True``, model ``convnet_bn`` in
train mode) every class's batch is normalised together, as in the reference BN variant.

Two layers: :func:`loss` / :func:`class_distances` are the pure loss over arrays and any embedding function
(a user's Flax ``apply`` closed over its parameters works as well as the library's ConvNet); the registered
objective (:func:`make_distribution_matching`, ``make_objective("dm", ...)``) draws the network and the DSA
augmentation from its key and calls them.

Example (a user's network, the pure loss, optax)::

  embed = lambda x: my_net.apply(variables, x)                 # [k, H, W, ch] -> [k, D]
  value, grads = jax.value_and_grad(lambda s: distribution_matching.loss(embed, real, s))(syn)
  # real [C, n, H, W, ch] (row c = class c), syn [C, m, H, W, ch]
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from jaxdistill import models
from jaxdistill.augment import DEFAULT_STRATEGY, DSAParams
from jaxdistill.models.layers import check_choice
from jaxdistill.validation import check_dsa_strategy, check_network
from jaxdistill.objectives.base import (Objective, RealBatch, check_class_major, class_major_real, per_class,
                                        siamese_augment)

DISTANCES = ("l2", "l1")


@dataclasses.dataclass(frozen=True)
class DistributionMatchingConfig:
  """DM settings (paper defaults).

  Attributes:
    arch, width, depth: the embedding network (ConvNet-128, instance norm); ``batchnorm`` switches to
      ``convnet_bn`` in train mode (the BN variant).
    distance: ``"l2"`` (squared distance of mean embeddings, DM) or ``"l1"`` (absolute difference).
    dsa, dsa_strategy: siamese augmentation (on in DM).
    shared_op: all classes use the same DSA operation in one iteration (with their own parameters) so only one
      augmentation branch runs. Off by default: the reference code (``main_DM.py``) draws the operation per class,
      and on CPU the per-class draw measured no slower (IPC 10: 1.06 vs 1.09 s/it at 64 real/class, 3.57 vs
      3.59 s/it at 256, ConvNet-128): the convolutions dominate the step.
  """
  arch: str = "convnet"
  width: int = 128
  depth: Optional[int] = None
  distance: str = "l2"
  batchnorm: bool = False
  dsa: bool = True
  dsa_strategy: Tuple[str, ...] = DEFAULT_STRATEGY
  shared_op: bool = False

  def validate(self):
    check_network(self.arch, self.width, self.depth)
    check_choice("distance", self.distance, DISTANCES)
    check_dsa_strategy(self.dsa_strategy)
    return self


def mean_embedding_distance(real_means, syn_means, distance: str = "l2"):
  """``Σ_c Σ_d (r − s)²`` (l2) or ``Σ_c Σ_d |r − s|`` (l1) of per-class mean embeddings ``[C, D]``."""
  diff = real_means - syn_means
  if distance == "l2":
    return jnp.sum(jnp.square(diff))
  return jnp.sum(jnp.abs(diff))


def class_distances(embed_fn, real, syn, *, distance: str = "l2"):
  """Per-class DM distances between mean embeddings (DM Eq. 4; the pure form of the DM loss).

  Args:
    embed_fn: ``images [k, *image_shape] -> features [k, ...]`` (e.g. ``lambda x: net.apply(variables, x)``;
      trailing feature axes are flattened). Called twice: once on all real images ``[C·n, ...]`` (its output
      is stopped: no gradient flows to ``real``) and once on all synthetic images ``[C·m, ...]``.
    real: class-major real images ``[C, n, *image_shape]`` (row ``c`` = class ``c``).
    syn: class-major synthetic images ``[C, m, *image_shape]``.
    distance: ``"l2"`` (squared L2 distance of the means, DM) or ``"l1"`` (absolute difference).

  Returns:
    ``[C]``: ``Σ_d (mean_i ψ(real_c,i) − mean_j ψ(syn_c,j))²`` (or ``|·|``) per class ``c``.

  Raises:
    ValueError: an unknown ``distance``, arrays that are not class-major with the same ``C`` and image shape
      (a flat real batch is refused; group it with :func:`jaxdistill.objectives.group_by_class`), or an
      ``embed_fn`` that does not keep the batch axis.
  """
  check_choice("distance", distance, DISTANCES)
  check_class_major(real, syn)
  c, n = real.shape[:2]
  m = syn.shape[1]
  e_real = jax.lax.stop_gradient(embed_fn(real.reshape((c * n,) + real.shape[2:])))
  e_syn = embed_fn(syn.reshape((c * m,) + syn.shape[2:]))
  for name, e, k in (("real", e_real, c * n), ("syn", e_syn, c * m)):
    if e.ndim < 1 or e.shape[0] != k:
      raise ValueError(f"embed_fn must map images [k, ...] to features [k, ...]; for the {k} {name} images it "
                       f"returned shape {tuple(e.shape)}.")
  r = e_real.reshape(c, n, -1).mean(1)
  s = e_syn.reshape(c, m, -1).mean(1)
  return jax.vmap(lambda a, b: mean_embedding_distance(a[None], b[None], distance))(r, s)


def loss(embed_fn, real, syn, *, distance: str = "l2"):
  """The DM loss ``Σ_c ‖mean ψ(real_c) − mean ψ(syn_c)‖²`` (``distance="l1"``: ``Σ |·|``), a scalar.

  A pure function of arrays: ``jit``, ``grad`` (w.r.t. ``syn`` or anything ``embed_fn`` closes over) and
  ``vmap`` apply. Augmentation is the caller's (e.g. :func:`jaxdistill.objectives.siamese_augment` on both
  arrays first, as DM does).

  Args:
    embed_fn: ``images [k, *image_shape] -> features [k, ...]``.
    real: ``[C, n, *image_shape]`` class-major real images (no gradient flows to them).
    syn: ``[C, m, *image_shape]`` class-major synthetic images.
    distance: ``"l2"`` or ``"l1"``.

  Returns:
    The scalar sum of :func:`class_distances`.
  """
  return jnp.sum(class_distances(embed_fn, real, syn, distance=distance))


def make_distribution_matching(config: DistributionMatchingConfig, *, num_classes: int, image_shape, ipc: int,
                               name: str = "dm") -> Objective:
  """Builds the DM objective (no state: a fresh network is drawn from the loss key every iteration)."""
  config.validate()
  image_shape = tuple(image_shape)
  arch = config.arch
  if config.batchnorm:
    arch = {"convnet": "convnet_bn", "vgg11": "vgg11_bn", "resnet18": "resnet18_bn"}.get(arch, arch)
  kwargs = {"width": config.width} if arch in ("convnet", "convnet_bn", "mlp") else {}
  if config.depth is not None:
    kwargs["depth"] = config.depth
  model = models.get_model(arch, num_classes, image_shape, **kwargs)
  dsa = DSAParams(strategy=tuple(config.dsa_strategy)) if config.dsa else None

  def init(key):
    return {}

  def embed(variables, x):
    out, _ = models.apply(model, variables, x, train=True, embed=True)
    return out

  def loss(state, syn, real: RealBatch, key):
    """DM loss (:func:`class_distances`); real ``[C, n, ...]`` (or flat with labels ``[N]`` outside jit,
    :func:`~jaxdistill.objectives.base.class_major_real`), syn class-major ``[C·ipc, ...]`` in class order.
    aux: per-class distances ``[C]``."""
    k_net, k_aug = jax.random.split(key)
    variables = models.init_variables(model, k_net, image_shape)
    syn_x, _ = per_class(syn.images, syn.labels, num_classes)
    real_x = class_major_real(real, num_classes).images
    if dsa is not None:
      real_x, syn_x = siamese_augment(k_aug, real_x, syn_x, dsa, config.shared_op)
    per = class_distances(lambda x: embed(variables, x), real_x, syn_x, distance=config.distance)
    return jnp.sum(per), {"per_class": per}

  return Objective(name, init, loss, None, config)
