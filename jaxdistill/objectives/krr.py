"""Kernel ridge regression (KRR), the inner solver of KIP, RFAD and FRePo, and its two losses.

The prediction on targets ``t`` from a support set ``s`` with labels ``y_s`` (KIP, Nguyen et al. 2021, Eq. 2;
RFAD and FRePo use the same regulariser):

    ŷ_t = K_ts (K_ss + λ · tr(K_ss)/n · I)⁻¹ y_s,                    n = |s|,

computed with a Cholesky factorisation of the regularised ``K_ss`` (a symmetric positive-definite solve, no
explicit inverse). Scaling λ by the mean eigenvalue ``tr(K_ss)/n`` makes the regulariser independent of the
kernel's overall scale (NTK vs NNGP, network depth, feature width).

Losses of ``ŷ_t`` against the target labels:

* ``"mse"``: ``½ · mean_i ‖ŷ_i − y_i‖²`` (KIP, FRePo);
* ``"platt"``: Platt-scaled cross-entropy ``mean_i CE(softmax(ŷ_i / τ), y_i)`` with a learnable temperature
  ``τ`` (RFAD, Loo et al. 2022, Sec. 3.2). :func:`fit_temperature` learns ``τ`` by Newton's method on the
  batch's negative log-likelihood; the objectives refit it every step, which by the envelope theorem leaves the
  gradient w.r.t. the support set the one of the joint problem in (images, τ).

Failure handling: in float32 a (nearly) singular ``K_ss`` makes the Cholesky factor non-finite. Outside
``jit`` :func:`krr_predict` then raises :class:`FloatingPointError` naming the fixes (larger ``reg``, or
``dtype="float64"``, which needs ``jax.config.update("jax_enable_x64", True)``); inside ``jit`` the loss
becomes NaN and the loop stops with its non-finite-loss error.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

LOSSES = ("mse", "platt")
DTYPES = ("float32", "float64")


def _check_dtype(dtype: str):
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
  if dtype == "float64" and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
    raise ValueError("dtype='float64' needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) (or set "
                     "JAX_ENABLE_X64=1) before creating arrays, or use dtype='float32' with a larger reg.")
  return jnp.float64 if dtype == "float64" else jnp.float32


def _concrete(x) -> Optional[np.ndarray]:
  """``x`` as a NumPy array when it is concrete (outside ``jit``), else None."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def regularised(k_ss, reg: float):
  """``K_ss + λ · tr(K_ss)/n · I`` for ``k_ss [n, n]`` (the KIP regulariser)."""
  n = k_ss.shape[0]
  lam = reg * jnp.trace(k_ss) / n
  return k_ss + lam * jnp.eye(n, dtype=k_ss.dtype)


def krr_solve(k_ss, y_s, reg: float = 1e-6, dtype: str = "float32"):
  """``α = (K_ss + λ·tr(K_ss)/n·I)⁻¹ y_s`` by Cholesky.

  Args:
    k_ss: ``[n, n]`` support kernel (symmetric positive semi-definite).
    y_s: ``[n, C]`` support labels (one-hot, centred or learned soft labels).
    reg: λ, relative to the mean eigenvalue ``tr(K_ss)/n``; must be > 0.
    dtype: ``"float32"`` or ``"float64"`` (needs ``jax_enable_x64``); the result is cast back to
      ``y_s``'s dtype.

  Returns:
    ``α [n, C]``.

  Raises:
    ValueError: bad ``reg``/``dtype``/shapes.
    FloatingPointError: (outside ``jit``) the factorisation failed — ``K_ss`` is not numerically positive
      definite at this ``reg`` and precision.
  """
  if not reg > 0:
    raise ValueError(f"reg must be > 0, got {reg!r}.")
  if k_ss.ndim != 2 or k_ss.shape[0] != k_ss.shape[1]:
    raise ValueError(f"k_ss must be square [n, n], got shape {tuple(k_ss.shape)}.")
  if y_s.ndim != 2 or y_s.shape[0] != k_ss.shape[0]:
    raise ValueError(f"y_s must be [n={k_ss.shape[0]}, C], got shape {tuple(y_s.shape)}.")
  solve_dtype = _check_dtype(dtype)
  out_dtype = y_s.dtype
  k = regularised(k_ss.astype(solve_dtype), reg)
  k = 0.5 * (k + k.T)  # exact symmetry for the factorisation
  chol = jax.scipy.linalg.cho_factor(k, lower=True)
  alpha = jax.scipy.linalg.cho_solve(chol, y_s.astype(solve_dtype))
  check = _concrete(alpha)
  if check is not None and not np.all(np.isfinite(check)):
    raise FloatingPointError(
        f"KRR Cholesky solve failed in {dtype}: K_ss [{k_ss.shape[0]}x{k_ss.shape[0]}] + {reg:g}·tr/n·I is not "
        "numerically positive definite (duplicate or collapsed support points, or non-finite kernel values). "
        "Increase reg (e.g. x100), or solve in float64 (dtype='float64' with jax_enable_x64).")
  return alpha.astype(out_dtype)


def krr_predict(k_ts, k_ss, y_s, reg: float = 1e-6, dtype: str = "float32"):
  """KRR prediction ``ŷ_t = K_ts (K_ss + λ·tr(K_ss)/n·I)⁻¹ y_s`` (KIP Eq. 2).

  Args:
    k_ts: ``[m, n]`` target–support kernel.
    k_ss: ``[n, n]`` support kernel.
    y_s: ``[n, C]`` support labels.
    reg, dtype: see :func:`krr_solve`.

  Returns:
    ``ŷ_t [m, C]``.
  """
  if k_ts.ndim != 2 or k_ts.shape[1] != k_ss.shape[0]:
    raise ValueError(f"k_ts must be [m, n={k_ss.shape[0]}], got shape {tuple(k_ts.shape)}.")
  alpha = krr_solve(k_ss, y_s, reg, dtype)
  return (k_ts.astype(alpha.dtype) @ alpha).astype(y_s.dtype)


def mse_loss(pred, targets):
  """``½ · mean_i Σ_c (ŷ_ic − y_ic)²`` for ``pred, targets [m, C]``."""
  return 0.5 * jnp.mean(jnp.sum(jnp.square(pred - targets), axis=-1))


def platt_cross_entropy(pred, labels, temperature):
  """Platt-scaled cross-entropy ``mean_i CE(softmax(ŷ_i / τ), y_i)`` (RFAD Sec. 3.2).

  Args:
    pred: ``[m, C]`` KRR predictions.
    labels: int ``[m]`` or soft/one-hot ``[m, C]`` targets (soft targets are renormalised to sum to 1 after
      clipping negatives, so centred one-hot labels work too).
    temperature: ``τ > 0`` (scalar; differentiable).
  """
  logits = pred / temperature
  logp = jax.nn.log_softmax(logits, axis=-1)
  if labels.ndim == 1:
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))
  p = jnp.clip(labels, 0.0, None)
  p = p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), 1e-12)
  return -jnp.mean(jnp.sum(p * logp, axis=-1))


def fit_temperature(pred, labels, steps: int = 10, init: float = 1.0):
  """Learns the Platt temperature: ``τ = 1/β`` with ``β ≥ 0`` minimising :func:`platt_cross_entropy` by
  Newton's method (the loss is convex in ``β``); ``pred`` is treated as constant (stop-gradient).

  Returns:
    ``τ`` (scalar, no gradient), clipped to ``[1e-4, 1e4]``.
  """
  pred = jax.lax.stop_gradient(pred)
  labels = jax.lax.stop_gradient(labels)
  f = lambda b: platt_cross_entropy(pred * b, labels, 1.0)
  g, h = jax.grad(f), jax.grad(jax.grad(f))

  def body(_, b):
    step = g(b) / jnp.maximum(h(b), 1e-8)
    return jnp.clip(b - step, 1e-4, 1e4)

  beta = jax.lax.fori_loop(0, int(steps), body, jnp.asarray(1.0 / init, pred.dtype))
  return jax.lax.stop_gradient(1.0 / beta)


def krr_loss(pred, targets, loss: str = "mse", temperature=None):
  """The KRR objective's loss of ``pred [m, C]`` against ``targets`` (``[m, C]`` for mse; int ``[m]`` or
  ``[m, C]`` for platt). With ``loss="platt"`` and ``temperature=None`` the temperature is fitted
  (:func:`fit_temperature`). Returns ``(loss, temperature or None)``."""
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}.")
  if loss == "mse":
    if targets.ndim != 2:
      raise ValueError(f"mse needs targets [m, C], got shape {tuple(targets.shape)}.")
    return mse_loss(pred, targets), None
  if temperature is None:
    temperature = fit_temperature(pred, targets)
  return platt_cross_entropy(pred, targets, temperature), temperature


def check_sets(x_s, y_s, x_t, y_t, loss_name: str):
  """Shape checks of a support set ``(x_s [n, ...], y_s [n, K])`` and a target set ``(x_t [m, ...], y_t)``
  (``y_t [m, K]``, or int ``[m]`` for ``loss="platt"``); raises ``ValueError`` naming the expected shapes."""
  if np.ndim(x_s) < 2 or np.ndim(x_t) != np.ndim(x_s) or tuple(np.shape(x_s))[1:] != tuple(np.shape(x_t))[1:]:
    raise ValueError(f"x_s [n, *shape] and x_t [m, *shape] must be flat sets of the same input shape, got "
                     f"{tuple(np.shape(x_s))} and {tuple(np.shape(x_t))}.")
  if np.ndim(y_s) != 2 or np.shape(y_s)[0] != np.shape(x_s)[0]:
    raise ValueError(f"y_s must be float regression targets [n={np.shape(x_s)[0]}, K] (one-hot or learned), got "
                     f"shape {tuple(np.shape(y_s))}.")
  want = "[m, K] targets" if loss_name == "mse" else "int labels [m] or targets [m, K]"
  ok = np.shape(y_t)[:1] == np.shape(x_t)[:1] and (
      np.ndim(y_t) == 2 and np.shape(y_t)[1] == np.shape(y_s)[1] or (loss_name == "platt" and np.ndim(y_t) == 1))
  if not ok:
    raise ValueError(f"y_t must be {want} for x_t {tuple(np.shape(x_t))} and K = {np.shape(y_s)[1]}, got "
                     f"shape {tuple(np.shape(y_t))}.")


def target_labels(labels, num_classes: int, centred: bool = False):
  """One-hot regression targets ``[m, C]`` from int ``labels [m]``; ``centred`` subtracts ``1/C``
  (FRePo's ``1 − 1/C`` / ``−1/C`` targets)."""
  y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return y - 1.0 / num_classes if centred else y


def flatten_real(real, num_classes: int, centred: bool = False):
  """A real batch as a flat target batch ``(x [N, ...], labels int [N], y [N, C])``.

  ``real`` is class-major (images ``[C, n, ...]``, labels ``[C, n]``; ``N = C·n``) or already flat (images
  ``[N, ...]``, int labels ``[N]``); the labels' rank says which.

  Raises:
    ValueError: labels whose shape is not the leading shape of the images.
  """
  images, labels = real.images, real.labels
  if labels.ndim not in (1, 2) or tuple(images.shape[:labels.ndim]) != tuple(labels.shape):
    raise ValueError("the real batch must be class-major RealBatch(images [C, n, ...], labels int [C, n]) or flat "
                     f"RealBatch(images [N, ...], labels int [N]); got images {tuple(images.shape)} and labels "
                     f"{tuple(labels.shape)}.")
  if labels.ndim == 2:
    images = images.reshape((-1,) + images.shape[2:])
    labels = labels.reshape(-1)
  return images, labels, target_labels(labels, num_classes, centred)


def krr_accuracy(pred, labels) -> jnp.ndarray:
  """Fraction of ``argmax(pred) == labels`` for ``pred [m, C]``, int ``labels [m]``."""
  return jnp.mean((jnp.argmax(pred, -1) == labels).astype(jnp.float32))
