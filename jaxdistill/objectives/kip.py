"""KIP: Kernel Inducing Points (Nguyen, Chen & Lee, ICLR 2021; KIP-ConvNet, NeurIPS 2021).

The support set ``(X_s, y_s)`` (images, and labels when learned) is fitted so that kernel ridge regression with
an infinite-width NTK / NNGP (:mod:`jaxdistill.kernels`, neural-tangents ``stax``) predicts a real target batch:

    L(X_s, y_s) = ½ · mean_t ‖ K_ts (K_ss + λ·tr(K_ss)/n·I)⁻¹ y_s − y_t ‖²           (KIP Eq. 2 / Alg. 1)

with Adam on the support set (the loop's ``LoopConfig(optimizer="adam")``; the CLI sets it). The class-balanced
real batch ``[C, n, ...]`` of the loop is flattened to ``C·n`` targets with one-hot labels. Labels are learned
when the synthetic state carries ``params["labels"]`` (``init_pixels(..., learn_labels=True)``).

ZCA (KIP whitens RGB data): when the factory gets a fitted :class:`~jaxdistill.data.zca.ZCA`, it is applied to
real and synthetic images inside the kernel's input map (the whitening matrix lives in ``Objective.data``), so
the stored images stay in the library's normalised space and the finite-network evaluation is unchanged.

The pure loss :func:`loss` (``loss(kernel_fn, x_s, y_s, x_t, y_t, reg)``) takes any kernel function and flat
arrays; the registered objective calls it (through :func:`loss_and_predictions`) with the neural-tangents kernel.

Evaluation: :func:`krr_test_accuracy` (KRR with the same kernel on the test set, batched with ``nt.batch``) and
finite networks through :func:`jaxdistill.evaluate.evaluate` (KIP's rule: MSE on the labels, ``protocol("kip")``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np

from jaxdistill import kernels
from jaxdistill.objectives import krr
from jaxdistill.objectives.base import Objective
from jaxdistill.validation import check_choice, check_ints, check_positive


@dataclasses.dataclass(frozen=True)
class KIPConfig:
  """KIP settings (defaults: FC3 NTK, ``W_std² = 2``, ``b_std² = 0.01``, λ = 1e-6 relative to ``tr(K_ss)/n``,
  MSE on centred one-hot labels as in the authors' KIP.ipynb, learned labels, Adam lr 0.01 — the lr lives in
  the registry's MethodDefaults; the ``paper`` preset switches to the ConvNet NTK and a float64 solve).

  Attributes:
    arch, kind, depth, W_std, b_std, pooling: the kernel (:class:`jaxdistill.kernels.KernelConfig`).
    reg: KRR regulariser λ (relative).
    loss: ``"mse"`` (KIP) or ``"platt"``.
    learn_labels, label_scale: whether the CLI/bench initialise learnable labels (``label_scale · one_hot``,
      centred by the CLI when ``centre_labels``).
    centre_labels: regress on centred one-hot labels ``one_hot − 1/C`` (support and targets), as KIP.ipynb's
      ``one_hot(..., center=True)``; learned labels are used as they are.
    zca, zca_reg: whiten RGB data: :func:`make_kip` then needs a fitted ZCA (the CLI builder fits it on the
      training split) and raises without one; ignored for grayscale images.
    target_chunk: compute the target rows of ``K_ts`` in chunks of this size (0: all at once).
    dtype: KRR solve precision (``"float32"``, or ``"float64"`` with ``jax_enable_x64``).
    krr_test_size: test images the CLI's KRR test accuracy uses (the first ones; 0: all) — the ConvNet kernels
      cost too much on CPU for all 10 000 at IPC 10.
  """
  arch: str = "fc"
  kind: str = "ntk"
  depth: Optional[int] = None
  W_std: float = float(np.sqrt(2.0))
  b_std: float = 0.1
  pooling: str = "avg"
  reg: float = 1e-6
  loss: str = "mse"
  learn_labels: bool = True
  label_scale: float = 1.0
  zca: bool = True
  zca_reg: float = 0.1
  target_chunk: int = 0
  dtype: str = "float32"
  centre_labels: bool = True
  krr_test_size: int = 0

  def whitens(self, image_shape) -> bool:
    """Whether ZCA is on for images of ``image_shape`` (``zca`` and RGB)."""
    return bool(self.zca) and int(tuple(image_shape)[-1]) == 3

  def kernel(self) -> kernels.KernelConfig:
    return kernels.KernelConfig(arch=self.arch, kind=self.kind, depth=self.depth, W_std=self.W_std,
                                b_std=self.b_std, pooling=self.pooling)

  def validate(self):
    self.kernel().validate()
    check_choice("loss", self.loss, krr.LOSSES)
    check_choice("dtype", self.dtype, krr.DTYPES)
    check_positive(self, ("reg", "label_scale", "zca_reg"))
    check_ints(self, ("krr_test_size", "target_chunk"), minimum=0, note="0: all")
    return self


def support_labels(labels, num_classes: int, centred: bool = False):
  """Regression labels ``[n, C]`` of the support set: learned soft labels as they are, hard labels one-hot
  (``one_hot − 1/C`` when ``centred``)."""
  if labels.ndim == 2:
    return labels.astype(jnp.float32)
  return krr.target_labels(labels, num_classes, centred)


def loss_and_predictions(kernel_fn, x_s, y_s, x_t, y_t, reg: float = 1e-6, *, loss: str = "mse",
                         dtype: str = "float32"):
  """The KIP loss and the KRR predictions it scores: ``(L, ŷ_t [m, K])`` (KIP Eq. 2).

  ``ŷ_t = K_ts (K_ss + λ·tr(K_ss)/n·I)⁻¹ y_s`` with ``K_ts = kernel_fn(x_t, x_s)``,
  ``K_ss = kernel_fn(x_s, x_s)``; ``L = ½ · mean_t ‖ŷ_t − y_t‖²`` (``loss="mse"``) or the Platt-scaled
  cross-entropy (``"platt"``, :func:`jaxdistill.objectives.krr.krr_loss`). Arguments as :func:`loss`.
  """
  check_choice("loss", loss, krr.LOSSES)
  krr.check_sets(x_s, y_s, x_t, y_t, loss)
  pred = krr.krr_predict(kernel_fn(x_t, x_s), kernel_fn(x_s, x_s), y_s, reg, dtype)
  value, _ = krr.krr_loss(pred, y_t, loss)
  return value, pred


def loss(kernel_fn, x_s, y_s, x_t, y_t, reg: float = 1e-6, *, loss: str = "mse", dtype: str = "float32"):
  """The KIP loss of a support set on a target set (KIP Eq. 2), a scalar; pure (``jit``/``grad``/``vmap``).

  Args:
    kernel_fn: ``kernel_fn(a [p, ...], b [q, ...]) -> K [p, q]`` (an NTK / NNGP from
      :func:`jaxdistill.kernels.make_kernel_fn`, ``lambda a, b: nt_kernel_fn(a, b, "ntk")``, or any
      positive semi-definite kernel).
    x_s: support inputs ``[n, ...]`` (the synthetic images; what is differentiated).
    y_s: support regression targets float ``[n, K]`` (one-hot, centred, or learned labels).
    x_t: target inputs ``[m, ...]`` (a real batch, flat: no class layout needed).
    y_t: targets ``[m, K]`` (``loss="mse"``), or int labels ``[m]`` / ``[m, K]`` (``"platt"``).
    reg: λ relative to ``tr(K_ss)/n`` (> 0).
    loss: ``"mse"`` (KIP) or ``"platt"``.
    dtype: precision of the KRR solve, ``"float32"`` or ``"float64"`` (needs ``jax_enable_x64``).

  Returns:
    The scalar loss.

  Raises:
    ValueError: bad ``loss``/``reg``/``dtype`` or shapes that do not match the above.
  """
  return loss_and_predictions(kernel_fn, x_s, y_s, x_t, y_t, reg, loss=loss, dtype=dtype)[0]


def whiten_fn(zca_data):
  """``x -> ZCA(x)`` from ``{"zca_mean": [D], "zca_whiten": [D, D]}`` (or the identity for None)."""
  if zca_data is None:
    return lambda x: x

  def whiten(x):
    n = x.shape[0]
    flat = x.reshape(n, -1) - zca_data["zca_mean"]
    return (flat @ zca_data["zca_whiten"]).reshape(x.shape)
  return whiten


def make_kip(config: KIPConfig, *, num_classes: int, image_shape, ipc: int, name: str = "kip",
             zca=None) -> Objective:
  """Builds the KIP objective (stateless).

  Args:
    config: :class:`KIPConfig`.
    zca: an optional fitted :class:`jaxdistill.data.zca.ZCA` (RGB data); stored in ``Objective.data``.

  Raises:
    ImportError: neural-tangents cannot be imported (the message says why).
    ValueError: ``config.zca`` on RGB images without a fitted ``zca``, or a ``zca`` given although
      ``config.zca`` is off or the images are grayscale. The returned loss raises when called without its
      whitening ``data`` while ZCA is on.
  """
  config.validate()
  image_shape = tuple(image_shape)
  whitens = config.whitens(image_shape)
  if whitens and zca is None:
    raise ValueError("KIPConfig.zca=True on RGB images needs a fitted ZCA: make_kip(..., zca=fit_zca(train_x, "
                     "config.zca_reg, relative=True)) (make_objective passes zca= through; the CLI fits it), or "
                     "set zca=False.")
  if zca is not None and not whitens:
    raise ValueError(f"a ZCA was given but KIP does not whiten here (zca={config.zca}, image_shape "
                     f"{image_shape}: ZCA is for RGB images with zca=True).")
  kfn = kernels.make_kernel_fn(config.kernel(), num_classes, image_shape, int(config.target_chunk))
  data = None
  if zca is not None:
    data = {"zca_mean": jnp.asarray(zca.mean, jnp.float32), "zca_whiten": jnp.asarray(zca.whiten, jnp.float32)}

  def init(key):
    return {}

  def objective_loss(state, syn, real, key, data=None):
    """KIP loss; real ``[C, n, ...]`` flattened to ``C·n`` targets. aux: target accuracy of the KRR."""
    if whitens and data is None:
      raise ValueError("this KIP objective whitens (zca=True, RGB): call its loss with the whitening data, "
                       "objective.loss(state, syn, real, key, objective.data).")
    whiten = whiten_fn(data)
    xt, lt, yt = krr.flatten_real(real, num_classes, centred=config.centre_labels)
    xs, xt = whiten(syn.images.astype(jnp.float32)), whiten(xt.astype(jnp.float32))  # float64: the solve only
    ys = support_labels(syn.labels, num_classes, config.centre_labels)
    value, pred = loss_and_predictions(kfn, xs, ys, xt, yt if config.loss == "mse" else lt, config.reg,
                                       loss=config.loss, dtype=config.dtype)
    return value, {"accuracy": krr.krr_accuracy(pred, lt)}

  return Objective(name, init, objective_loss, None, config, data)


def krr_test_accuracy(config: KIPConfig, images, labels, test_images, test_labels, num_classes: int, *,
                      zca=None, batch_size: int = 100) -> float:
  """Test accuracy (fraction) of KRR with ``config``'s kernel from the support set ``(images, labels)``:
  ``argmax K_test,s (K_ss + λ tr/n I)⁻¹ y_s`` against ``test_labels``; kernels computed in
  ``batch_size`` blocks with ``nt.batch`` (host memory), solved in float64 on the host."""
  whiten = whiten_fn(None if zca is None else {"zca_mean": jnp.asarray(zca.mean),
                                               "zca_whiten": jnp.asarray(zca.whiten)})
  kfn = kernels.batched_kernel_fn(config.kernel(), num_classes, tuple(np.shape(images)[1:]), batch_size)
  xs = whiten(jnp.asarray(images, jnp.float32))
  k_ss = np.asarray(kfn(xs, xs), np.float64)
  ys = np.asarray(support_labels(jnp.asarray(labels), num_classes, config.centre_labels), np.float64)
  n = k_ss.shape[0]
  a = k_ss + config.reg * np.trace(k_ss) / n * np.eye(n)
  alpha = np.linalg.solve(0.5 * (a + a.T), ys)
  correct = 0
  test_images = np.asarray(test_images, np.float32)
  test_labels = np.asarray(test_labels)
  chunk = 10 * int(batch_size)
  for i in range(0, len(test_images), chunk):
    xt = whiten(jnp.asarray(test_images[i:i + chunk]))
    pred = np.asarray(kfn(xt, xs), np.float64) @ alpha
    correct += int(np.sum(pred.argmax(-1) == test_labels[i:i + chunk]))
  return correct / len(test_images)
