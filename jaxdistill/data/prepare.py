"""``python -m jaxdistill.data.prepare fashion_mnist --data-dir DIR``: prepare a dataset for offline use."""
from __future__ import annotations

import argparse

from jaxdistill.data.datasets import default_data_dir, load
from jaxdistill.data.specs import DATASETS


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("dataset", choices=sorted(DATASETS))
  parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: $JAXDISTILL_DATA_DIR)")
  args = parser.parse_args(argv)
  data_dir = args.data_dir or default_data_dir()
  for split in ("train", "test"):
    images, labels, spec = load(args.dataset, split, data_dir=data_dir)
    print(f"{args.dataset}/{split}: images {images.shape} {images.dtype}, labels {labels.shape}, "
          f"classes {spec.num_classes}, data_dir {data_dir}")


if __name__ == "__main__":
  main()
