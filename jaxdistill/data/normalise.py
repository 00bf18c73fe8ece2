"""Mean/std normalisation between ``[0, 1]`` pixels and the normalised space distillation works in."""
from __future__ import annotations

import numpy as np

from jaxdistill.data.specs import DatasetSpec, get_spec


def normalise(images01, dataset):
  """Maps ``[0, 1]`` images ``[..., H, W, C]`` to normalised space with the mean/std of ``dataset`` (a name
  or a :class:`DatasetSpec`)."""
  spec = dataset if isinstance(dataset, DatasetSpec) else get_spec(dataset)
  mean = np.asarray(spec.mean, np.float32)
  std = np.asarray(spec.std, np.float32)
  return (images01 - mean) / std


def denormalise(images, dataset, clip: bool = True):
  """Inverse of :func:`normalise`: normalised ``[..., H, W, C]`` images back to ``[0, 1]`` (clipped for display);
  ``dataset`` is a name or a :class:`DatasetSpec`."""
  spec = dataset if isinstance(dataset, DatasetSpec) else get_spec(dataset)
  mean = np.asarray(spec.mean, np.float32)
  std = np.asarray(spec.std, np.float32)
  out = images * std + mean
  if clip:
    out = out.clip(0.0, 1.0) if isinstance(out, np.ndarray) else out.clip(0.0, 1.0)
  return out
