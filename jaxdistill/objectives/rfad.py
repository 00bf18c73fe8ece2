"""RFAD: Random Feature Approximation for Dataset Distillation (Loo, Hasani, Amini & Rus, NeurIPS 2022).

KIP's ConvNet NNGP kernel costs ``O(n_t n_s (HW)²)``; RFAD replaces it by the empirical NNGP of ``M`` randomly
initialised *finite* ConvNets (fresh every iteration, evaluated together with ``vmap``):

    K(x, x') ≈ Φ(x)·Φ(x')ᵀ + b_std²,   Φ(x) = [W_std · φ_m(x) / √(D·M)]_{m=1..M}           (RFAD Sec. 3.1)

where ``φ_m(x) ∈ R^D`` are the flattened features of network ``m`` before its read-out layer (the read-out's
weight variance ``W_std²/D`` and bias variance ``b_std²`` are integrated out exactly, so
``E[Φ Φᵀ] + b_std²`` is the NNGP of the ConvNet with a Dense read-out). The random networks use the same
parameterisation as the neural-tangents twin (:func:`jaxdistill.kernels.stax_network`, ``arch="convnet"``):
Gaussian weights ``N(0, W_std²/fan_in)``, biases ``N(0, b_std²)``, 3×3 'SAME' convs, ReLU, 2×2 average pool
(floor: an odd side loses its last row / column, as PyTorch's ``AvgPool2d``), no normalisation — so the
random-feature kernel converges to the ``stax`` NNGP as ``M·width`` grows. As in the authors' code (yolky/RFAD
``models.ConvNet_wide``, ``k=2`` × 128 = width 256) 28 px inputs are used unpadded (28 → 14 → 7 → 3) unless
``pad_input`` (the library's finite ConvNet's 32 px view).

KRR as in the authors' ``distillation.py``: ``K_ss + λ·tr(K_ss)/n·I`` with λ = 5e-3 (``--jit``), solved in
float64 when ``dtype="float64"`` (the CLI enables ``jax_enable_x64`` for it), centred one-hot labels
``one_hot − 1/C`` for the support set and the targets (``centre_labels``).

With the features, ``K_ts = Φ_t Φ_sᵀ`` costs ``O(n_t · M · D)``: linear in the target batch (no ``K_tt``).
Loss: Platt-scaled cross-entropy of the KRR predictions (RFAD Sec. 3.2, :func:`krr.platt_cross_entropy`)
with the temperature learned by :func:`krr.fit_temperature` every step.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.kernels import input_padding
from jaxdistill.objectives import krr
from jaxdistill.objectives.base import Objective
from jaxdistill.objectives.kip import support_labels
from jaxdistill.validation import check_choice, check_ints, check_network, check_nonnegative, check_positive

POOLINGS = ("avg", "none")


@dataclasses.dataclass(frozen=True)
class RFADConfig:
  """RFAD settings (the authors' defaults: 8 random ConvNets of width 256 on unpadded inputs, Platt-scaled
  cross-entropy, λ = 5e-3 relative, centred labels; Adam lr 1e-3 — the lr lives in the registry's
  MethodDefaults. The float64 solve needs ``jax_enable_x64``, so the default is float32; presets set it).

  Attributes:
    num_models: random networks per iteration (``M``).
    width, depth, pooling, W_std, b_std: the random ConvNets (depth None: 3 for ≤ 32 px).
    reg: KRR regulariser λ (relative to ``tr(K_ss)/n``).
    loss: ``"platt"`` (RFAD) or ``"mse"``.
    pad_input: zero-pad 1-channel 28 px inputs to 32 px first (the library's ConvNet view; RFAD: no).
    centre_labels: centred one-hot labels ``one_hot − 1/C`` (support and mse targets), as RFAD's code.
    dtype: KRR solve precision, ``"float32"`` or ``"float64"`` (RFAD; needs ``jax_enable_x64``).
    learn_labels, label_scale: learnable soft labels (off in RFAD's main results).
    model_chunk: evaluate the random networks this many at a time (``lax.map``; 0: all in one ``vmap``).
  """
  num_models: int = 8
  width: int = 256
  depth: Optional[int] = None
  pooling: str = "avg"
  W_std: float = float(np.sqrt(2.0))
  b_std: float = 0.1
  reg: float = 5e-3
  loss: str = "platt"
  learn_labels: bool = False
  label_scale: float = 1.0
  model_chunk: int = 0
  pad_input: bool = False
  centre_labels: bool = True
  dtype: str = "float32"

  def validate(self):
    check_network(None, self.width, self.depth)  # the architecture is fixed (the ConvNet)
    check_ints(self, "num_models")
    check_choice("pooling", self.pooling, POOLINGS)
    check_choice("loss", self.loss, krr.LOSSES)
    check_positive(self, "W_std")
    check_nonnegative(self, "b_std")
    check_positive(self, ("reg", "label_scale"))
    check_choice("dtype", self.dtype, krr.DTYPES)
    check_ints(self, "model_chunk", minimum=0, note=f"0 or a divisor of num_models={self.num_models}")
    if self.model_chunk and self.num_models % self.model_chunk:
      raise ValueError(f"model_chunk must be 0 or divide num_models={self.num_models}, got {self.model_chunk!r}.")
    return self

  def resolved_depth(self, image_shape) -> int:
    if self.depth is not None:
      return int(self.depth)
    from jaxdistill.models import default_depth
    return default_depth(int(image_shape[0]))


def init_random_convnet(key, in_channels: int, width: int, depth: int, W_std: float, b_std: float):
  """Parameters of one random ConvNet: a list of ``depth`` ``(kernel [3, 3, in, width] ~ N(0, W_std²/fan_in),
  bias [width] ~ N(0, b_std²))``."""
  params = []
  c = in_channels
  for k in jax.random.split(key, depth):
    kw, kb = jax.random.split(k)
    w = jax.random.normal(kw, (3, 3, c, width), jnp.float32) * float(W_std / np.sqrt(9.0 * c))
    b = jax.random.normal(kb, (width,), jnp.float32) * float(b_std)
    params.append((w, b))
    c = width
  return params


def random_convnet_features(params, x, pooling: str = "avg", pad_input: bool = False):
  """Flattened pre-read-out features ``[N, D]`` of a random ConvNet on ``x [N, H, W, C]`` (with ``pad_input``,
  1-channel 28×28 inputs are padded by 2 first, as in the ConvNet twin; pooling floors odd sides)."""
  p = input_padding(x.shape[1:]) if pad_input else 0
  if p:
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  for w, b in params:
    x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
    x = jax.nn.relu(x)
    if pooling == "avg":
      n, h, wd, c = x.shape
      x = x[:, :h - h % 2, :wd - wd % 2].reshape(n, h // 2, 2, wd // 2, 2, c).mean(axis=(2, 4))
  return x.reshape(x.shape[0], -1)


def random_features(key, x, config: RFADConfig):
  """RFAD features ``Φ(x) [N, M·D]`` of ``M = config.num_models`` random ConvNets drawn from ``key``
  (vmapped), scaled so that ``Φ Φᵀ + b_std²`` estimates the ConvNet NNGP."""
  depth = config.resolved_depth(x.shape[1:])
  x = jnp.asarray(x, jnp.float32)  # float32 networks also under jax_enable_x64 (float64 is for the solve only)
  keys = jax.random.split(key, config.num_models)

  def one(k):
    params = init_random_convnet(k, x.shape[-1], config.width, depth, config.W_std, config.b_std)
    return random_convnet_features(params, x, config.pooling, config.pad_input)

  if config.model_chunk:
    feats = jax.lax.map(one, keys, batch_size=int(config.model_chunk))
  else:
    feats = jax.vmap(one)(keys)  # [M, N, D]
  m, n, d = feats.shape
  scale = float(config.W_std / np.sqrt(float(d * m)))
  return jnp.transpose(feats, (1, 0, 2)).reshape(n, m * d) * scale


def feature_kernel(phi1, phi2, b_std: float):
  """``Φ₁ Φ₂ᵀ + b_std²`` ``[n1, n2]``."""
  return phi1 @ phi2.T + b_std ** 2


def make_rfad(config: RFADConfig, *, num_classes: int, image_shape, ipc: int, name: str = "rfad") -> Objective:
  """Builds the RFAD objective (stateless; fresh random networks from the loss key every iteration)."""
  config.validate()

  def init(key):
    return {}

  def loss(state, syn, real, key):
    """RFAD loss; real ``[C, n, ...]`` flattened to targets. aux: KRR target accuracy, Platt temperature."""
    xt, lt, yt = krr.flatten_real(real, num_classes, centred=config.centre_labels)
    n_s = syn.images.shape[0]
    phi = random_features(key, jnp.concatenate([syn.images, jax.lax.stop_gradient(xt)]), config)
    phi_s, phi_t = phi[:n_s], phi[n_s:]
    ys = support_labels(syn.labels, num_classes, config.centre_labels)
    pred = krr.krr_predict(feature_kernel(phi_t, phi_s, config.b_std),
                           feature_kernel(phi_s, phi_s, config.b_std), ys, config.reg, config.dtype)
    value, temp = krr.krr_loss(pred, yt if config.loss == "mse" else lt, config.loss)
    aux = {"accuracy": krr.krr_accuracy(pred, lt)}
    if temp is not None:
      aux["temperature"] = temp
    return value, aux

  return Objective(name, init, loss, None, config)
