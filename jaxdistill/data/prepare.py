"""``python -m jaxdistill.data.prepare fashion_mnist --data-dir DIR``: prepare a dataset for offline use.

With the ``tfds`` backend the TFDS dataset is prepared (Fashion-MNIST offline from its IDX files, in file order;
one prepared in the older hashed order is prepared again) and, for Fashion-MNIST/MNIST, checked to hold exactly
the arrays the NumPy ``idx`` backend reads. With the ``idx`` backend the IDX files are only read and checked.
"""
from __future__ import annotations

import argparse

import numpy as np

from jaxdistill.data import idx
from jaxdistill.data.datasets import BACKENDS, default_data_dir, load_uint8, resolve_backend
from jaxdistill.data.specs import DATASETS


def _check_same_as_idx(name: str, split: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Raises ``ValueError`` when the IDX files (where found) disagree with the TFDS arrays ``images``/``labels``."""
  if name not in idx.IDX_DATASETS or idx.find_idx_dir(name) is None:
    return
  idx_images, idx_labels, _ = idx.load_uint8(name, split)
  if not (np.array_equal(idx_images, images) and np.array_equal(idx_labels, labels)):
    raise ValueError(f"{name}/{split}: the prepared TFDS dataset differs from the IDX files in "
                     f"{idx.find_idx_dir(name)!r}; delete the dataset folder and prepare it again.")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dataset", choices=sorted(DATASETS))
  parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $JAXDISTILL_DATA_DIR)")
  parser.add_argument("--backend", choices=BACKENDS, default=None,
                      help="tfds: prepare the TFDS dataset; idx: only check the IDX files (default: "
                           "$JAXDISTILL_DATA_BACKEND, else auto = tfds where installed)")
  args = parser.parse_args(argv)
  data_dir = args.data_dir or default_data_dir()
  backend = resolve_backend(args.dataset, args.backend)
  for split in ("train", "test"):
    images, labels, spec = load_uint8(args.dataset, split, data_dir=data_dir, backend=backend)
    if backend == "tfds":
      _check_same_as_idx(args.dataset, split, images, labels)
    print(f"{args.dataset}/{split}: images {images.shape} {images.dtype}, labels {labels.shape}, "
          f"classes {spec.num_classes}, backend {backend}" + (f", data_dir {data_dir}" if backend == "tfds" else
                                                               f", idx_dir {idx.find_idx_dir(args.dataset)}"))


if __name__ == "__main__":
  main()
