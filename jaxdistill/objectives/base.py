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

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

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


def per_class(images, labels, num_classes: int):
  """Reshapes a class-major synthetic set ``images [C·m, ...]`` / hard ``labels [C·m]`` to ``[C, m, ...]``.

  Raises:
    ValueError: soft labels or a size that is not a multiple of ``num_classes``.
  """
  if labels.ndim != 1:
    raise ValueError("this objective needs hard, class-major labels [N]; got shape "
                     f"{tuple(labels.shape)}.")
  n = images.shape[0]
  if n % num_classes:
    raise ValueError(f"{n} synthetic images are not a class-major set of {num_classes} classes.")
  m = n // num_classes
  return images.reshape((num_classes, m) + images.shape[1:]), labels.reshape(num_classes, m)


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
