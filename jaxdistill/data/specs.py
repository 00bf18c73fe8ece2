"""Static facts about the supported datasets (shapes, classes, normalisation constants).

The mean/std values are the per-channel constants used by the DC/DSA/DM/MTT reference code.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple


class DatasetSpec(NamedTuple):
  """What jaxdistill needs to know about a dataset.

  Attributes:
    name: jaxdistill / TFDS name, e.g. ``"fashion_mnist"``.
    image_shape: ``(H, W, C)``.
    num_classes: number of classes ``C``.
    mean: per-channel mean of the ``[0, 1]`` training images, length ``C_img``.
    std: per-channel standard deviation, length ``C_img``.
    num_train: training-split size.
    num_test: test-split size.
    digits: True for digit datasets, where DSA must not flip images.
    class_names: names of the classes where known (user datasets: folder names, TFDS label names), else ``()``.
  """
  name: str
  image_shape: Tuple[int, int, int]
  num_classes: int
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  num_train: int
  num_test: int
  digits: bool
  class_names: Tuple[str, ...] = ()


DATASETS = {
    "mnist": DatasetSpec("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), 60000, 10000, True),
    "fashion_mnist": DatasetSpec("fashion_mnist", (28, 28, 1), 10, (0.2861,), (0.3530,),
                                 60000, 10000, False),
    "svhn_cropped": DatasetSpec("svhn_cropped", (32, 32, 3), 10, (0.4377, 0.4438, 0.4728),
                                (0.1980, 0.2010, 0.1970), 73257, 26032, True),
    "cifar10": DatasetSpec("cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465),
                           (0.2023, 0.1994, 0.2010), 50000, 10000, False),
    "cifar100": DatasetSpec("cifar100", (32, 32, 3), 100, (0.5071, 0.4866, 0.4409),
                            (0.2673, 0.2564, 0.2762), 50000, 10000, False),
}

SPLITS = ("train", "test")


def get_spec(name: str) -> DatasetSpec:
  """Returns the :class:`DatasetSpec` of ``name``: a built-in dataset, a name registered by
  :func:`jaxdistill.data.from_arrays`, or a user dataset ``npz:PATH`` / ``folder:PATH`` / ``idx:PATH`` /
  ``tfds:NAME`` (:mod:`jaxdistill.data.user`; read, and for TFDS its statistics cached, on first use).

  Raises:
    ValueError: an unknown name (the message lists the accepted forms) or unreadable user data.
  """
  if name in DATASETS:
    return DATASETS[name]
  from jaxdistill.data import user  # lazy: user imports this module
  return user.spec_of(name)
