"""HaBa: dataset factorisation into bases and hallucinators (Liu et al., "Dataset Distillation via
Factorization", NeurIPS 2022; reference code Huage001/DatasetFactorization, ``distill_fac.py``).

The stored set is ``B_c`` bases per class ``[C·B_c, h_b, w_b, ch]`` (class-major; ``h_b`` may be below the
image size to save storage, bases are then bilinearly upsampled) and ``H`` small hallucinators shared by all
classes. Hallucinator ``j`` maps a basis ``b`` to an image (HaBa Sec. 3.2, encoder → learned affine →
decoder)::

    e = relu(conv3x3_enc(b))        [h, w, width]
    e' = σ_j ⊙ e + μ_j               (learned per-channel scale and shift)
    x_j(b) = b + conv3x3_dec(e')     [h, w, ch]

Training follows the reference's iteration:

* **Pair sampling** (``pairs="sampled"``, the default): the training render (``render(state, key)``) draws for
  every basis two distinct hallucinators ``j0 ≠ j1`` (uniform) and returns both images, class-major
  ``[C, B_c, 2]`` flattened: image ``(c·B_c + i)·2 + v`` = ``x_{j_v}(b_{c,i})`` with label ``c`` (``2·B_c`` per
  class). All ``H`` outputs are computed and the chosen ones gathered, so only chosen hallucinators get
  gradient. ``pairs="all"`` trains on all ``B_c·H`` pairs every step (the behaviour before pair sampling).
* **Adversarial contrastive term** (``contrastive`` = ``λ_club``, 0.1 as ``--lambda_club_content``):
  :func:`contrastive_regulariser`, added to any objective with
  :func:`jaxdistill.objectives.regularised.with_regulariser`. A feature extractor (``sim_content_net``: ConvNet
  of ``extractor_width`` channels, depth 3, instance norm, ReLU, average pooling, flattened features, plus a
  linear classifier) is trained (SGD, lr ``extractor_lr``, momentum 0.9) on the two views of every basis with
  cross-entropy + ``mean((1 − cos(e0, e1)) / 2)`` + the supervised contrastive loss (:func:`supcon_loss`); the
  synthetic set (bases and hallucinators) gets ``λ_club · mean((cos(e0, e1) + 1) / 2)`` under the frozen
  extractor, so the hallucinators are pushed to produce images the extractor tells apart.

The evaluation / saved set (``render(state)`` without a key) is every hallucinator applied to every basis:
``C·B_c·H`` images, image ``(c·B_c + i)·H + j`` = ``x_j(b_{c,i})``, a deterministic superset of what the
reference's evaluation dataset (``StyleTranslatorSharedDataset``: each basis with a random hallucinator per
access) draws from.

What still differs from the reference:

* the hallucinator: ours is residual (``b +``, so that with bases initialised from real images every
  hallucinated image starts close to a real one) with a ``width``-channel encoder and per-channel ``σ_j, μ_j``;
  the reference's ``StyleTranslator`` has ``ch`` encoder channels, per-pixel scale/shift maps and a transposed
  convolution decoder, no residual;
* hallucinator draws are per basis (the reference: one hallucinator per student mini-batch, one pair for the
  whole contrastive batch), and both views of the pair feed the distillation objective;
* the club term and the extractor update see the pairs of the training render of that step (the update
  after the image step, re-rendered with the updated set, so the same hallucinator choice; the reference draws
  fresh pairs for each; with ``pairs="all"`` the regulariser draws its own pair per basis from its key);
* storage (bases + hallucinator parameters; the extractor is a training aid, not stored) is held to the budget
  of the pixel set it replaces (:func:`jaxdistill.synthetic.generator.check_budget`); the reference stores
  ``IPC`` full-size bases per class plus the hallucinators.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill import training
from jaxdistill.augment import DSAParams
from jaxdistill.augment import augment as dsa_apply
from jaxdistill.data.sampling import check_ipc, class_index, sample_balanced
from jaxdistill.models.convnet import ConvNet
from jaxdistill.models.layers import dense
from jaxdistill.objectives.base import safe_norm
from jaxdistill.objectives.regularised import Regulariser
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch, num_floats
from jaxdistill.synthetic.generator import check_budget
from jaxdistill.validation import check_choice, check_ints, check_nonnegative, check_positive

BASIS_INITS = ("real", "noise")
PAIRS = ("sampled", "all")


@dataclasses.dataclass(frozen=True)
class HaBaConfig:
  """HaBa settings.

  Attributes:
    bases_per_class: ``B_c``.
    hallucinators: ``H`` (evaluation images per class = ``B_c · H``; at least 2 with ``pairs="sampled"`` or
      ``contrastive > 0``).
    width: encoder channels of each hallucinator.
    basis_size: stored basis side (0: the image size); smaller bases are upsampled bilinearly.
    init: ``"real"`` (random real images of each class, downsampled) or ``"noise"``.
    enforce_budget: refuse bases + hallucinators over the pixel budget of the IPC they replace.
    pairs: ``"sampled"`` (training render: two distinct random hallucinators per basis, ``2·B_c`` images per
      class) or ``"all"`` (every ``B_c·H`` pair every step).
    contrastive: ``λ_club`` of the adversarial contrastive term (0: off), for :func:`contrastive_regulariser`.
    extractor_width: channels of the contrastive feature extractor (ConvNet, depth 3).
    extractor_lr: SGD learning rate of the extractor (momentum 0.9).
  """
  bases_per_class: int = 1
  hallucinators: int = 5
  width: int = 8
  basis_size: int = 0
  init: str = "real"
  enforce_budget: bool = True
  pairs: str = "sampled"
  contrastive: float = 0.1
  extractor_width: int = 128
  extractor_lr: float = 0.001

  def validate(self):
    check_ints(self, ("bases_per_class", "hallucinators", "width", "extractor_width"))
    check_ints(self, "basis_size", minimum=0, note="0: image size")
    check_choice("init", self.init, BASIS_INITS)
    check_choice("pairs", self.pairs, PAIRS)
    check_nonnegative(self, "contrastive", note="0: off")
    check_positive(self, "extractor_lr")
    if self.hallucinators < 2 and (self.pairs == "sampled" or self.contrastive > 0):
      raise ValueError(f"hallucinators must be an integer >= 2 with pairs='sampled' or contrastive > 0 (two "
                       f"distinct hallucinators per basis), got {self.hallucinators}; use pairs='all' and "
                       "contrastive=0 for a single hallucinator.")
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


def draw_pairs(key, n: int, h: int):
  """Two distinct hallucinator indices per basis, uniform over the ``h (h − 1)`` ordered pairs.

  Returns:
    int32 ``[n, 2]`` with ``out[i, 0] != out[i, 1]``, both in ``0 … h − 1``.

  Raises:
    ValueError: ``h < 2``.
  """
  if h < 2:
    raise ValueError(f"hallucinators must be >= 2 to draw two distinct ones, got {h}.")
  k0, k1 = jax.random.split(key)
  j0 = jax.random.randint(k0, (n,), 0, h, jnp.int32)
  j1 = (j0 + jax.random.randint(k1, (n,), 1, h, jnp.int32)) % h
  return jnp.stack([j0, j1], axis=1)


def select_views(views, index):
  """``views [N, V, ...]`` (view ``v`` of item ``i``), ``index`` int ``[N, K]`` -> ``[N, K, ...]``: item ``i``'s
  views ``index[i]`` (a gather: gradient reaches only the selected views)."""
  return views[jnp.arange(views.shape[0])[:, None], index]


def views_batch(out, key, items_per_class: int, num_classes: int, image_shape, lr=None) -> SyntheticBatch:
  """A factorised set's batch from every view of every stored item (shared by HaBa and KFS).

  Args:
    out: ``[C·K, V, *image_shape]``, view ``v`` of item ``i`` (items class-major, ``K = items_per_class``).
    key: None: every view (``[C·K·V, ...]``, image ``i·V + v``); a key: two distinct random views per item
      (:func:`draw_pairs`), ``[C·K·2, ...]`` with image ``i·2 + u`` = view ``j_u`` of item ``i``.
    lr: the learned lr carried along (or None).

  Returns:
    ``SyntheticBatch(images, labels int32 class-major, lr)``.
  """
  if key is not None:
    out = select_views(out, draw_pairs(key, out.shape[0], out.shape[1]))  # [C·K, 2, ...]
  images = out.reshape((-1,) + tuple(image_shape))
  labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), items_per_class * out.shape[1])
  return SyntheticBatch(images, labels, lr)


def haba_parameterisation(config: HaBaConfig, num_classes: int, image_shape, name: str = "haba") -> Parameterisation:
  """HaBa's ``Parameterisation``.

  ``render(state)`` (evaluation, saving): all ``B × H`` (basis, hallucinator) images, class-major, image
  ``(c·B_c + i)·H + j`` = ``x_j(b_{c,i})``. ``render(state, key)`` (training): with ``pairs="sampled"`` two
  distinct random hallucinators per basis (:func:`draw_pairs`), ``[C·B_c·2, ...]`` with image
  ``(c·B_c + i)·2 + v`` = ``x_{j_v}(b_{c,i})`` and ``needs_key=True``; with ``pairs="all"`` the same as
  without a key. ``storage`` = bases + hallucinator floats.
  """
  config.validate()
  image_shape = tuple(int(s) for s in image_shape)
  hal = Hallucinator(image_shape[-1], config.width)
  n_h = config.hallucinators
  sampled = config.pairs == "sampled"

  def outputs(state: SynState):
    """Every hallucinator on every basis: ``[C·B_c, H, *image_shape]``."""
    bases = state.params["bases"]
    if bases.shape[1:3] != image_shape[:2]:
      bases = jax.image.resize(bases, (bases.shape[0],) + image_shape, "bilinear")
    hals = state.params["hallucinators"]
    # A static loop over the H hallucinators (vmap over their weights would become grouped convolutions,
    # which are slow on CPU).
    out = jnp.stack([hal.apply(jax.tree_util.tree_map(lambda a, j=j: a[j], hals), bases)
                     for j in range(n_h)], axis=1)
    return out

  def render(state: SynState, key=None) -> SyntheticBatch:
    return views_batch(outputs(state), key if sampled else None, config.bases_per_class, num_classes,
                       image_shape, state.params.get("lr"))

  def storage(state: SynState) -> int:
    return num_floats(state.params)

  return Parameterisation(name, render, storage, needs_key=sampled)


def train_images_per_class(config: HaBaConfig) -> int:
  """Images per class of the training render: ``2·B_c`` (``pairs="sampled"``) or ``B_c·H`` (``"all"``)."""
  return config.bases_per_class * (2 if config.pairs == "sampled" else config.hallucinators)


# ------------------------------------------------------------------------------ the contrastive term

class ContentExtractor(nn.Module):
  """The reference's ``sim_content_net``: a ConvNet (``width`` channels, ``depth`` blocks, instance norm, ReLU,
  average pooling; :class:`jaxdistill.models.ConvNet`) whose flattened features are the embedding, and a linear
  classifier. ``__call__(x [N, H, W, ch]) -> (logits [N, num_classes], features [N, D])``."""
  num_classes: int
  width: int = 128
  depth: int = 3

  @nn.compact
  def __call__(self, x):
    feat = ConvNet(self.num_classes, width=self.width, depth=self.depth, name="convnet")(x, embed=True)
    return dense(feat, self.num_classes, name="classifier"), feat


def cosine_similarity(a, b, eps: float = 1e-8):
  """Row-wise cosine similarity of ``a, b [N, D]`` -> ``[N]`` (norms clamped below at ``eps``, as
  ``torch.nn.functional.cosine_similarity``)."""
  na = jnp.maximum(safe_norm(a, axis=-1), eps)
  nb = jnp.maximum(safe_norm(b, axis=-1), eps)
  return jnp.sum(a * b, axis=-1) / (na * nb)


def l2_normalise(x, eps: float = 1e-12):
  """``x [N, D]`` with rows scaled to unit norm (norms clamped below at ``eps``, as ``F.normalize``)."""
  return x / jnp.maximum(safe_norm(x, axis=-1), eps)[..., None]


def supcon_loss(features, labels, temperature: float = 0.07, base_temperature: float = 0.07):
  """Supervised contrastive loss (Khosla et al. 2020, Eq. 2; the reference's ``SupConLoss``, ``'all'`` mode).

  Every one of the ``V·N`` views is an anchor; its positives are the other views with the same label::

      L = −(T / T_b) · mean_a [ (1 / |P(a)|) Σ_{p ∈ P(a)} log( exp(z_a·z_p / T) / Σ_{k ≠ a} exp(z_a·z_k / T) ) ]

  Args:
    features: ``[N, V, D]`` (``[N, V, ...]`` is flattened), usually L2-normalised embeddings of ``V`` views.
    labels: int ``[N]``.
    temperature, base_temperature: ``T`` and ``T_b`` (0.07 in the reference).

  Returns:
    The scalar loss. An anchor without any positive (``V = 1`` and a label seen once) gives NaN, as in the
    reference.

  Raises:
    ValueError: ``features`` of rank < 3 or ``labels`` not ``[N]``.
  """
  if features.ndim < 3:
    raise ValueError(f"features must be [N, V, D] (at least 3 dimensions), got shape {tuple(features.shape)}.")
  n, v = features.shape[:2]
  if tuple(labels.shape) != (n,):
    raise ValueError(f"labels must be [N] = [{n}] for features {tuple(features.shape)}, got shape "
                     f"{tuple(labels.shape)}.")
  f = features.reshape(n, v, -1)
  z = jnp.swapaxes(f, 0, 1).reshape(v * n, -1)  # view-major: all view-0 rows, then view 1, ...
  logits = z @ z.T / temperature
  logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))
  lab = jnp.tile(labels, v)
  not_self = 1.0 - jnp.eye(v * n, dtype=logits.dtype)
  positive = (lab[:, None] == lab[None, :]).astype(logits.dtype) * not_self
  log_prob = logits - jnp.log(jnp.sum(jnp.exp(logits) * not_self, axis=1, keepdims=True))
  mean_log_prob_pos = jnp.sum(positive * log_prob, axis=1) / jnp.sum(positive, axis=1)
  return -(temperature / base_temperature) * jnp.mean(mean_log_prob_pos)


def club_loss(features, weight: float):
  """The synthetic set's contrastive term: ``weight · mean((cos(e0, e1) + 1) / 2)`` of features ``[2N, D]``
  (rows ``:N`` view 0, ``N:`` view 1 of the same bases)."""
  n = features.shape[0] // 2
  return weight * jnp.mean((cosine_similarity(features[:n], features[n:]) + 1.0) / 2.0)


def content_losses(logits, features, labels) -> dict:
  """The extractor's losses on a pair batch: logits ``[2N, C]``, features ``[2N, D]`` (rows ``:N`` view 0,
  ``N:`` view 1), labels int ``[N]``.

  Returns:
    ``{"cls": cross-entropy of both views, "likeli": mean((1 − cos(e0, e1)) / 2), "contrast":
    supcon_loss(stack(normalise(e0), normalise(e1)), labels)}`` (each weighted 1 in the reference).
  """
  n = labels.shape[0]
  e0, e1 = features[:n], features[n:]
  return {"cls": training.cross_entropy(logits, jnp.concatenate([labels, labels])),
          "likeli": jnp.mean((1.0 - cosine_similarity(e0, e1)) / 2.0),
          "contrast": supcon_loss(jnp.stack([l2_normalise(e0), l2_normalise(e1)], axis=1), labels)}


def split_views(syn: SyntheticBatch, views: int):
  """A rendered set ``images [N·V, ...]`` (item ``i``'s views at ``i·V … i·V + V − 1``), hard labels ``[N·V]``
  -> ``(images [N, V, ...], labels [N])``.

  Raises:
    ValueError: soft labels, or a length that is not a multiple of ``views``.
  """
  images, labels = syn.images, syn.labels
  if labels.ndim != 1:
    raise ValueError(f"syn.labels must be hard int labels [N·V], got shape {tuple(labels.shape)}.")
  if images.shape[0] % views or labels.shape[0] != images.shape[0]:
    raise ValueError(f"syn must hold {views} views per basis (images [N·{views}, ...], labels [N·{views}]), got "
                     f"images {tuple(images.shape)} and labels {tuple(labels.shape)}.")
  return images.reshape((-1, views) + images.shape[1:]), labels[::views]


def dsa_augment(dsa: DSAParams) -> Callable:
  """``fn(key, images [N, H, W, ch]) -> images``: one DSA operation per call, parameters per image (the
  reference's ``DiffAugment`` on the pair batch), for :func:`contrastive_regulariser`."""
  return lambda key, x: dsa_apply(key, x, dsa, per_image=True)


def contrastive_regulariser(config: HaBaConfig, num_classes: int, image_shape,
                            augment: Optional[Callable] = None) -> Regulariser:
  """HaBa's adversarial contrastive term as a :class:`~jaxdistill.objectives.regularised.Regulariser`.

  ``syn.images`` arrive as the training render of :func:`haba_parameterisation`: ``[C·B_c·2, ...]`` (two
  views per basis, ``pairs="sampled"``) or ``[C·B_c·H, ...]`` (``pairs="all"``: two distinct hallucinators
  per basis are then drawn from the key). The pair batch ``x = [x0; x1]`` ``[2N, ...]`` goes through
  ``augment(key, x)`` (e.g. :func:`dsa_augment`; None: no augmentation) and the extractor.

  * ``init(key) -> {"params", "opt", "last"}`` (extractor parameters, its SGD state, the last update's losses);
  * ``loss(state, syn, key) -> (λ_club · mean((cos(e0, e1) + 1) / 2), aux)`` with the extractor's parameters
    held fixed (gradient flows to the images); aux ``{"loss", "cos", "cls", "likeli", "contrast"}``;
  * ``update(state, syn, key) -> state``: one SGD step (lr ``extractor_lr``, momentum 0.9) on
    ``cls + likeli + contrast`` (:func:`content_losses`) of ``stop_gradient`` images.

  Raises:
    ValueError: a bad ``config`` or fewer than 2 hallucinators.
  """
  config.validate()
  if config.hallucinators < 2:
    raise ValueError(f"hallucinators must be >= 2 for the contrastive term, got {config.hallucinators}.")
  image_shape = tuple(int(s) for s in image_shape)
  views = 2 if config.pairs == "sampled" else config.hallucinators
  model = ContentExtractor(num_classes, config.extractor_width)
  tx = optax.sgd(config.extractor_lr, momentum=0.9)
  names = ("cls", "likeli", "contrast")

  def init(key):
    params = model.init(key, jnp.zeros((1,) + image_shape, jnp.float32))["params"]
    return {"params": params, "opt": tx.init(params), "last": {k: jnp.zeros((), jnp.float32) for k in names}}

  def pair_batch(syn, key):
    """``(x [2N, ...] = [x0; x1] augmented, labels [N])``."""
    k_pick, k_aug = jax.random.split(key)
    images, labels = split_views(syn, views)
    if views > 2:
      images = select_views(images, draw_pairs(k_pick, images.shape[0], views))
    x = jnp.concatenate([images[:, 0], images[:, 1]])
    if augment is not None:
      x = augment(k_aug, x)
    return x, labels

  def loss(state, syn, key):
    x, _ = pair_batch(syn, key)
    _, feat = model.apply({"params": jax.lax.stop_gradient(state["params"])}, x)
    n = feat.shape[0] // 2
    value = club_loss(feat, config.contrastive)
    aux = {"loss": value, "cos": jnp.mean(cosine_similarity(feat[:n], feat[n:])), **state["last"]}
    return value, aux

  def extractor_loss(params, x, labels):
    logits, feat = model.apply({"params": params}, x)
    parts = content_losses(logits, feat, labels)
    return sum(parts[k] for k in names), parts

  def update(state, syn, key):
    x, labels = pair_batch(syn, key)
    grads, parts = jax.grad(extractor_loss, has_aux=True)(state["params"], jax.lax.stop_gradient(x), labels)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt,
            "last": {k: parts[k].astype(jnp.float32) for k in names}}

  return Regulariser(init, loss, update, name="club")


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
