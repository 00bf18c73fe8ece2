"""Data: loading (TFDS, or IDX files with NumPy alone), the user's own data (arrays, ``npz:``, ``folder:``,
``idx:``, ``tfds:`` names; :mod:`jaxdistill.data.user`), normalisation, ZCA, class-indexed sampling."""
from jaxdistill.data import idx, user
from jaxdistill.data.datasets import BACKENDS, default_data_dir, load, load_uint8, resolve_backend
from jaxdistill.data.normalise import denormalise, normalise
from jaxdistill.data.sampling import (ClassIndex, check_ipc, class_index, random_subset,
                                      sample_balanced, sample_class)
from jaxdistill.data.specs import DATASETS, DatasetSpec, get_spec
from jaxdistill.data.user import FORMS, from_arrays
from jaxdistill.data.zca import ZCA, fit_zca

__all__ = [
    "BACKENDS", "ClassIndex", "DATASETS", "DatasetSpec", "FORMS", "ZCA", "check_ipc", "class_index",
    "default_data_dir", "denormalise", "fit_zca", "from_arrays", "get_spec", "idx", "load", "load_uint8",
    "normalise", "random_subset", "resolve_backend", "sample_balanced", "sample_class", "user",
]
