"""Generators for generative parameterisations of synthetic sets (GLaD, GenDM, LatentDD).

Two Flax linen architectures behind one functional interface:

* ``"style"`` — :class:`~jaxdistill.generators.stylegan.StyleGenerator`: mapping ``(z, c) → w``, learned
  constant, modulated/demodulated 3×3 convs, per-layer noise; the feature map after any layer and the
  per-layer codes W⁺ can be read and written (GLaD);
* ``"decoder"`` — :class:`~jaxdistill.generators.decoder.ConvDecoder`: a plain conv decoder ``(z, c) → image``.

A :class:`Generator` bundles the architecture name, its frozen config and the module; parameters are a plain
pytree (``init_generator``). A randomly initialised generator is a first-class choice (GLaD, Cazenavette et
al. 2023, Table 4: distilling through an untrained StyleGAN already beats pixel space). Checkpoints are
``.npz`` files with JSON metadata (:mod:`jaxdistill.io`, no pickle): arrays ``generator/<param path>`` and
metadata ``{"generator": {"arch", "config"}, ...}``; :func:`load_generator` also reads a GenDM run's
``synthetic.npz``, which stores its generator the same way.

Trained priors ship with the package (``priors/<dataset>.npz``, :func:`trained_prior`): GAN-trained style
generators (``python -m experiments.train_generator``, :mod:`jaxdistill.gan`), GLaD's default prior for their
dataset; ``priors/README.md`` says how each was made and what it cost.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, NamedTuple, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import io
from jaxdistill.generators.decoder import ConvDecoder, ConvDecoderConfig
from jaxdistill.generators.stylegan import (ModConv, StyleGenerator, StyleGeneratorConfig, StyleLayer,
                                            check_layer, normalize_2nd_moment)

ARCHS = ("style", "decoder")
PREFIX = "generator/"
PRIOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "priors")


def trained_priors() -> Tuple[str, ...]:
  """The datasets with a trained GLaD prior (``<dataset>.npz``) in :data:`PRIOR_DIR`, sorted."""
  if not os.path.isdir(PRIOR_DIR):
    return ()
  return tuple(sorted(f[:-4] for f in os.listdir(PRIOR_DIR) if f.endswith(".npz") and "." not in f[:-4]))


def trained_prior(dataset: str, gen: Optional["Generator"] = None) -> Optional[str]:
  """Path of a trained generator shipped for ``dataset`` (a :func:`save_generator` file; load it with
  :func:`load_generator`), or None when there is none.

  Without ``gen``: GLaD's prior ``<dataset>.npz`` (:func:`trained_priors` lists the datasets). With ``gen``:
  the shipped file for ``dataset`` (``<dataset>.npz`` or ``<dataset>.<tag>.npz``, e.g. the budget-sized GenDM
  decoders) whose stored architecture and config equal ``gen``'s.
  """
  if gen is None:
    path = os.path.join(PRIOR_DIR, f"{dataset}.npz")
    return path if os.path.isfile(path) else None
  if not os.path.isdir(PRIOR_DIR):
    return None
  want = json.loads(json.dumps(config_dict(gen)))  # as stored: tuples become lists
  for f in sorted(os.listdir(PRIOR_DIR)):
    if f.endswith(".npz") and (f == f"{dataset}.npz" or f.startswith(f"{dataset}.")):
      path = os.path.join(PRIOR_DIR, f)
      if io.load_npz(path)[1].get("generator") == want:
        return path
  return None


class Generator(NamedTuple):
  """An architecture: ``arch`` (``"style"`` / ``"decoder"``), its validated ``config`` and the Flax ``module``."""
  arch: str
  config: Any
  module: Any


def make_generator(arch: str, **config) -> Generator:
  """Builds a generator; ``config`` are fields of :class:`StyleGeneratorConfig` / :class:`ConvDecoderConfig`.

  Raises:
    ValueError: unknown ``arch`` or config field, or invalid values.
  """
  if arch not in ARCHS:
    raise ValueError(f"arch must be one of {list(ARCHS)}, got {arch!r}.")
  cls = StyleGeneratorConfig if arch == "style" else ConvDecoderConfig
  fields = {f.name for f in dataclasses.fields(cls)}
  bad = sorted(set(config) - fields)
  if bad:
    raise ValueError(f"unknown generator option(s) {bad} for arch {arch!r}; accepted: {sorted(fields)}.")
  if "widths" in config:
    config["widths"] = tuple(int(w) for w in config["widths"])
  cfg = cls(**config).validate()
  module = StyleGenerator(cfg) if arch == "style" else ConvDecoder(cfg)
  return Generator(arch, cfg, module)


def init_generator(gen: Generator, key) -> Dict[str, Any]:
  """Random parameters of ``gen`` (a pytree ``{"params": ...}``)."""
  cfg = gen.config
  z = jnp.zeros((1, cfg.z_dim), jnp.float32)
  c = jnp.zeros((1,), jnp.int32)
  if gen.arch == "style":
    return jax.jit(lambda k: gen.module.init(k, z, c, None))(key)
  return jax.jit(lambda k: gen.module.init(k, z, c))(key)


def num_params(params) -> int:
  """Number of floats in a parameter pytree."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def mapping(gen: Generator, params, z, labels):
  """``w [N, w_dim]`` of ``z [N, z_dim]`` and int ``labels [N]`` (style generator only)."""
  _need_style(gen, "mapping")
  return gen.module.apply(params, z, labels, method=StyleGenerator.mapping)


def synthesis(gen: Generator, params, ws, noise_keys=None, start: int = 0, stop: Optional[int] = None,
              features=None):
  """Style synthesis of codes ``ws [N, L+1, w_dim]`` from the feature map after layer ``start`` (``features``;
  the constant when ``start = 0``) to layer ``stop`` (None: the images ``[N, R, R, channels]``)."""
  _need_style(gen, "synthesis")
  return gen.module.apply(params, ws, noise_keys, start, stop, features, method=StyleGenerator.synthesis)


def broadcast_ws(gen: Generator, w):
  """``w [N, w_dim]`` → W⁺ ``[N, L+1, w_dim]`` (the same code at every layer)."""
  return jnp.broadcast_to(w[:, None], (w.shape[0], gen.config.num_ws, w.shape[-1]))


def class_mean_w(gen: Generator, params, key, num_samples: int = 256):
  """Per-class average ``w̄_c = E_z[mapping(z, c)]`` ``[C, w_dim]`` (Monte-Carlo, ``num_samples`` per class):
  the centre for truncation and GLaD's class-average initialisation."""
  _need_style(gen, "class_mean_w")
  c = gen.config.num_classes
  z = jax.random.normal(key, (c * num_samples, gen.config.z_dim))
  labels = jnp.repeat(jnp.arange(c, dtype=jnp.int32), num_samples)
  return mapping(gen, params, z, labels).reshape(c, num_samples, -1).mean(1)


def generate(gen: Generator, params, z, labels, noise_keys=None, truncation: float = 1.0, w_mean=None):
  """Images ``[N, R, R, channels]`` of latents ``z [N, z_dim]`` and int ``labels [N]``.

  Truncation (StyleGAN): style — ``w = w̄_c + ψ (w − w̄_c)`` with the class means ``w_mean [C, w_dim]``
  (required when ``ψ ≠ 1``); decoder — ``z ← ψ z``. ``noise_keys [N]`` per-image keys (style only; None: no
  noise).
  """
  if gen.arch == "decoder":
    return gen.module.apply(params, truncation * z, labels)
  w = mapping(gen, params, z, labels)
  if truncation != 1.0:
    if w_mean is None:
      raise ValueError("truncation != 1 needs the class-mean codes w_mean (class_mean_w).")
    centre = w_mean[labels]
    w = centre + truncation * (w - centre)
  return synthesis(gen, params, broadcast_ws(gen, w), noise_keys)


def per_image_keys(key, n: int):
  """``n`` per-image noise keys as a uint32 array ``[n, 2]`` (storable in a SynState's ``const``)."""
  keys = jax.random.split(key, n)
  try:
    return jax.random.key_data(keys)
  except (TypeError, ValueError):
    return keys


def _need_style(gen: Generator, what: str) -> None:
  if gen.arch != "style":
    raise ValueError(f"{what} needs the 'style' generator, got arch {gen.arch!r}.")


def config_dict(gen: Generator) -> Dict[str, Any]:
  """JSON-able ``{"arch", "config"}`` describing ``gen`` (the checkpoint metadata)."""
  return {"arch": gen.arch, "config": dataclasses.asdict(gen.config)}


def from_config_dict(meta: Dict[str, Any]) -> Generator:
  """Inverse of :func:`config_dict`."""
  cfg = dict(meta["config"])
  if "widths" in cfg:
    cfg["widths"] = tuple(cfg["widths"])
  return make_generator(meta["arch"], **cfg)


def params_to_arrays(params, prefix: str = PREFIX) -> Dict[str, np.ndarray]:
  """Flattens a parameter pytree to ``{prefix + "a/b/c": array}``."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  return {prefix + k: np.asarray(v) for k, v in flat.items()}


def arrays_to_params(arrays: Dict[str, np.ndarray], prefix: str = PREFIX):
  """Inverse of :func:`params_to_arrays` (keys without ``prefix`` are ignored)."""
  flat = {k[len(prefix):]: jnp.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}
  if not flat:
    raise ValueError(f"no arrays named {prefix!r}... found; is this a generator checkpoint?")
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def save_generator(path: str, gen: Generator, params, metadata: Optional[Dict[str, Any]] = None) -> str:
  """Writes ``gen``'s parameters and config (plus ``metadata``) to ``path`` (``.npz``, atomic, no pickle)."""
  meta = {**(metadata or {}), "generator": config_dict(gen), "generator_floats": num_params(params)}
  return io.save_npz(path, params_to_arrays(params), meta)


def load_generator(path: str) -> Tuple[Generator, Any, Dict[str, Any]]:
  """Reads ``(generator, params, metadata)`` from :func:`save_generator`'s file or a GenDM ``synthetic.npz``.

  Raises:
    ValueError: the file is missing or holds no generator; its arrays do not fit the stored config.
  """
  arrays, meta = io.load_npz(path)
  if "generator" not in meta:
    raise ValueError(f"{path!r} holds no generator (no 'generator' metadata).")
  gen = from_config_dict(meta["generator"])
  params = arrays_to_params(arrays)
  ref = jax.eval_shape(lambda: init_generator(gen, jax.random.PRNGKey(0)))
  ref_shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), flax.core.unfreeze(ref))
  got_shapes = jax.tree_util.tree_map(jnp.shape, params)
  if ref_shapes != got_shapes:
    raise ValueError(f"{path!r}: the stored arrays do not match the stored generator config.")
  return gen, params, meta


__all__ = ["ARCHS", "ConvDecoder", "ConvDecoderConfig", "Generator", "ModConv", "StyleGenerator",
           "StyleGeneratorConfig", "StyleLayer", "arrays_to_params", "broadcast_ws", "check_layer",
           "class_mean_w", "config_dict", "from_config_dict", "generate", "init_generator", "load_generator",
           "mapping", "normalize_2nd_moment", "num_params", "params_to_arrays", "per_image_keys",
           "save_generator", "synthesis", "trained_prior", "trained_priors", "PRIOR_DIR"]
