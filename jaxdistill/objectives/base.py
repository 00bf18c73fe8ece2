"""The objective interface shared by all distillation methods (see ARCHITECTURE.md).

An :class:`Objective` is a bundle of pure functions:

* ``init(key) -> obj_state`` — e.g. DC's network, FRePo's model pool; a pytree (checkpointed with the loop);
* ``loss(obj_state, syn, real, key) -> (loss, aux)`` — differentiable w.r.t. ``syn.images`` (and other
  rendered quantities); ``real`` is a class-balanced :class:`RealBatch`;
* ``update(obj_state, syn, key) -> obj_state`` — run after each image update (DC's inner network training),
  or None;
* ``host_update`` (optional) — the same update as ``update``, written as a host loop of jitted steps; when
  set, the distillation loop runs it after its jitted step instead of ``update`` inside it (XLA:CPU runs
  convolutions inside compiled loops ~12x slower; see ``GradientMatchingConfig.host_inner``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.augment import DSAParams, apply_op, choose_op


class RealBatch(NamedTuple):
  """A class-balanced real batch: ``images [C, n, H, W, Ch]`` (row ``c`` is class ``c``), ``labels`` int32
  ``[C, n]``."""
  images: Any
  labels: Any


class Objective(NamedTuple):
  """A distillation objective (see module docstring). ``config`` is the frozen dataclass it was built from;
  ``data`` an optional pytree of fixed arrays passed to ``loss``/``update`` as a fifth/fourth argument."""
  name: str
  init: Callable
  loss: Callable
  update: Optional[Callable]
  config: Any
  data: Any = None
  host_update: Optional[Callable] = None


def _concrete(x) -> Optional[np.ndarray]:
  """``x`` as a NumPy array when its value is known (outside ``jit``, or a constant closed over), else None."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _class_order_error(labels: np.ndarray, name: str) -> Optional[str]:
  """The message refusing hard ``labels [C, m]`` whose row ``c`` is not all ``c``, or None when in order."""
  labels = np.asarray(labels)
  want = np.arange(labels.shape[0])[:, None]
  if np.array_equal(labels, np.broadcast_to(want, labels.shape)):
    return None
  bad = int(np.argmax(np.any(labels != want, axis=1)))
  return (f"{name} is not class-major: row {bad} should hold only label {bad}, got {labels[bad].tolist()}. "
          f"Expected {name} [C·m] = [0]*m + [1]*m + … (image i of class i // m); sort the set by label first "
          "(jaxdistill.objectives.group_by_class), or pass images [C, m, ...] whose row c is class c.")


def _raise_if_out_of_order(labels, name: str) -> None:
  message = _class_order_error(labels, name)
  if message is not None:
    raise ValueError(message)


def check_class_order(labels, name: str = "labels") -> None:
  """Refuses hard labels ``[C, m]`` whose row ``c`` is not all ``c`` (a set that is not class-major).

  Concrete labels (outside ``jit``) raise :class:`ValueError` at once. Traced labels (inside ``jit``, e.g. the
  distillation loop's synthetic state) are checked on the host when the program runs
  (``jax.debug.callback``): the same :class:`ValueError` then surfaces as the runtime error of that call.

  Raises:
    ValueError: ``labels`` is not ``[C, m]`` integers in class order.
  """
  if labels.ndim != 2 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be hard int labels [C, m], got {labels.dtype}{list(labels.shape)}.")
  concrete = _concrete(labels)
  if concrete is not None:
    _raise_if_out_of_order(concrete, name)
  else:
    jax.debug.callback(functools.partial(_raise_if_out_of_order, name=name), labels)


def per_class(images, labels, num_classes: int):
  """Reshapes a class-major synthetic set ``images [C·m, ...]`` / hard ``labels [C·m]`` to ``[C, m, ...]``.

  Class-major means image ``i`` belongs to class ``i // m`` (labels ``[0]*m + [1]*m + …``, what every
  parameterisation renders); the labels are checked (:func:`check_class_order`), so a shuffled label vector is
  refused instead of silently grouped by position.

  Returns:
    ``(images [C, m, ...], labels [C, m])``.

  Raises:
    ValueError: soft labels, labels and images of different lengths, a size that is not a multiple of
      ``num_classes``, or labels that are not in class order.
  """
  if labels.ndim != 1:
    raise ValueError("this objective needs hard, class-major labels [N]; got shape "
                     f"{tuple(labels.shape)}.")
  chex.assert_equal_shape_prefix([images, labels], 1, exception_type=ValueError,
                                 custom_message="synthetic images [N, ...] and labels [N] must agree in length")
  n = images.shape[0]
  if n % num_classes:
    raise ValueError(f"{n} synthetic images are not a class-major set of {num_classes} classes.")
  m = n // num_classes
  grouped = labels.reshape(num_classes, m)
  check_class_order(grouped, "synthetic labels")
  return images.reshape((num_classes, m) + images.shape[1:]), grouped


def group_by_class(images, labels, num_classes: int):
  """Groups a flat batch by label: ``images [N, ...]``, int ``labels [N]`` -> ``images [C, n, ...]`` (row ``c``
  = the images of class ``c``, in their original order), the class-major layout the pure losses take.

  Host-side (NumPy): ``labels`` must be concrete. Every class must hold the same number ``n = N / C`` of
  images (draw a balanced batch with :func:`jaxdistill.data.sample_balanced` otherwise).

  Raises:
    ValueError: labels that are not concrete integers in ``0 … C − 1``, lengths that differ, or classes of
      different sizes.
  """
  y = _concrete(labels)
  if y is None:
    raise ValueError("group_by_class needs concrete labels (call it outside jit); inside jit pass a "
                     "class-major batch [C, n, ...] instead.")
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be int [N], got {y.dtype}{list(y.shape)}.")
  if np.shape(images)[0] != y.shape[0]:
    raise ValueError(f"images [N, ...] and labels [N] must agree in length, got {np.shape(images)[0]} images "
                     f"and {y.shape[0]} labels.")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"labels must be in 0 … {num_classes - 1} (num_classes={num_classes}), got range "
                     f"{int(y.min())} … {int(y.max())}.")
  counts = np.bincount(y, minlength=num_classes)
  if counts.min() != counts.max() or counts.min() == 0:
    raise ValueError("group_by_class needs the same number of images in every class, got counts "
                     f"{counts.tolist()}; draw a balanced batch (jaxdistill.data.sample_balanced).")
  order = np.argsort(y, kind="stable").reshape(num_classes, -1)
  return images[jnp.asarray(order)] if isinstance(images, jax.Array) else np.asarray(images)[order]


def class_major_real(real: "RealBatch", num_classes: int) -> "RealBatch":
  """A real batch in the class-major layout the objectives use: ``images [C, n, ...]``, labels ``[C, n]``.

  Accepts that layout (labels checked to be in class order when concrete) or a flat batch ``images [N, ...]``
  with explicit int ``labels [N]`` outside ``jit`` (grouped by :func:`group_by_class`). The layout is read from
  the labels: ``[C, n]`` is class-major, ``[N]`` is flat.

  Raises:
    ValueError: any other layout (the message states the expected one).
  """
  images, labels = real
  layout = ("expected a class-major real batch RealBatch(images [C, n, H, W, ch], labels int [C, n]) with "
            f"C = {num_classes} (row c = class c; jaxdistill.data.sample_balanced gives the positions), or a flat "
            "RealBatch(images [N, H, W, ch], labels int [N]) outside jit")
  labels_shape = tuple(np.shape(labels))
  images_shape = tuple(np.shape(images))
  if len(labels_shape) == 1:
    if images_shape[:1] != labels_shape:
      raise ValueError(f"{layout}; got images {images_shape} and labels {labels_shape}.")
    try:
      grouped = group_by_class(images, labels, num_classes)
    except ValueError as e:
      raise ValueError(f"{layout}; the flat batch cannot be grouped: {e}") from None
    n = grouped.shape[1]
    return RealBatch(grouped, jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32)[:, None],
                                               (num_classes, n)))
  if len(labels_shape) != 2 or images_shape[:2] != labels_shape or labels_shape[0] != num_classes:
    raise ValueError(f"{layout}; got images {images_shape} and labels {labels_shape}.")
  concrete = _concrete(labels)
  if concrete is not None:
    _raise_if_out_of_order(concrete, "real labels")
  return RealBatch(images, labels)


def implicit_labels(num_classes: int, n: int):
  """The labels of a class-major array ``[C, n, ...]``: int32 ``[C, n]`` with row ``c`` all ``c``."""
  return jnp.broadcast_to(jnp.arange(num_classes, dtype=jnp.int32)[:, None], (num_classes, n))


def check_class_major(real, syn, real_name: str = "real", syn_name: str = "syn") -> None:
  """Checks two class-major image arrays ``real [C, n, *shape]`` and ``syn [C, m, *shape]``: ranks ≥ 3, the
  same class count ``C`` and the same image shape.

  Raises:
    ValueError: naming the expected layout (e.g. for a flat ``real [N, H, W, ch]`` batch).
  """
  rs, ss = tuple(np.shape(real)), tuple(np.shape(syn))
  layout = (f"{real_name} and {syn_name} must be class-major arrays [C, n, *image_shape] and "
            f"[C, m, *image_shape] (row c = class c, the same C and image shape)")
  if len(ss) < 3:
    raise ValueError(f"{layout}; got {syn_name} of shape {ss}.")
  if len(rs) != len(ss):
    hint = ""
    if len(rs) == len(ss) - 1:
      hint = (f" — {real_name} looks like a flat batch [N, ...]: group it by label with "
              "jaxdistill.objectives.group_by_class(images, labels, num_classes)")
    raise ValueError(f"{layout}; got {real_name} {rs} and {syn_name} {ss}{hint}.")
  chex.assert_equal_shape_prefix([real, syn], 1, exception_type=ValueError,
                                 custom_message=f"{layout}: class counts differ, {real_name} {rs}, {syn_name} {ss}")
  chex.assert_equal_shape_suffix([real, syn], len(rs) - 2, exception_type=ValueError,
                                 custom_message=f"{layout}: image shapes differ, {real_name} {rs}, {syn_name} {ss}")


def siamese_augment(key, real, syn, dsa: DSAParams, shared_op: bool = False):
  """Differentiable siamese augmentation (Zhao & Bilen 2021, Sec. 3) of per-class batches.

  ``real [C, n, H, W, Ch]`` and ``syn [C, m, H, W, Ch]``: class ``c``'s real and synthetic images get the same
  operation and the same parameters (one draw per class, shared by all images of the class). Classes draw
  independently (vmap over the class axis). With ``shared_op`` all classes use the same *operation* (still
  with their own parameters), so only one branch of the augmentation runs — much cheaper under ``vmap``.

  Returns:
    ``(real_aug, syn_aug)`` with the input shapes.
  """
  num_classes = real.shape[0]
  k_op, k_par = jax.random.split(key)
  par_keys = jax.random.split(k_par, num_classes)
  if shared_op:
    op = choose_op(k_op, dsa)
    ops = None
    fn = lambda o, k, x: apply_op(op, k, x, dsa, per_image=False)
  else:
    ops = jax.vmap(lambda k: choose_op(k, dsa))(jax.random.split(k_op, num_classes))
    fn = lambda o, k, x: apply_op(o, k, x, dsa, per_image=False)
  in_axes = (None if ops is None else 0, 0, 0)
  real_a = jax.vmap(fn, in_axes=in_axes)(ops, par_keys, real)
  syn_a = jax.vmap(fn, in_axes=in_axes)(ops, par_keys, syn)
  return real_a, syn_a


def safe_norm(x, axis=None):
  """Euclidean norm whose gradient at 0 is 0 (not NaN)."""
  s = jnp.sum(jnp.square(x), axis=axis)
  pos = s > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def map_classes(fn, xs, class_batch: int):
  """``vmap(fn)`` over the leading class axis of the pytree ``xs``; with ``class_batch > 0``, classes are
  processed ``class_batch`` at a time (``lax.map``) to bound memory."""
  if class_batch and class_batch > 0:
    return jax.lax.map(lambda x: fn(*x), xs, batch_size=int(class_batch))
  return jax.vmap(fn)(*xs)
