"""Set-ups of the issue-#18 matching variants that need more than pixels from ``init`` (docs/idc_dcc.md,
docs/cafe_inits.md). Signatures as :func:`registry.setup_pixels`.

* **IDC** (:func:`idc`): the multi-formation parameterisation (:mod:`jaxdistill.synthetic.multi_formation`,
  ``factor`` per side: every stored image renders ``factor²`` training images), initialised from real images
  (``"mix"``), and the ``idc`` objective given the real training set (its matching network trains on real data)
  for the ``ipc · factor²`` rendered images per class. :func:`idc_loop_hook` sets IDC's image lr for the dataset
  and IPC (:func:`idc_lr`); :func:`idc_outputs` stores the *stored* images beside the rendered ones.
* **CAFE** (:func:`cafe`): a pixel set and the ``cafe`` objective with a fixed pool of real images per class
  (:func:`jaxdistill.objectives.cafe.make_probe`) on which its dynamic schedule measures accuracies.
* **DCC** needs nothing here: the ``dcc`` objective on pixels (:func:`registry.setup_pixels`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import jax
import numpy as np

from jaxdistill import objectives, synthetic
from jaxdistill.methods.registry import Built
from jaxdistill.synthetic.multi_formation import (MultiFormationConfig, init_multi_formation,
                                                  multi_formation_parameterisation)

# IDC's base image lr and the image size its tune_lr_img scales from, per dataset: misc/reproduce.py
# (set_arguments: mnist / fashion 1e-4 with metric l1, cifar10 / cifar100 / svhn 5e-3 with mse) and argument.py
# (tune_lr_img: imsize_base 28 for mnist, 32 for the other small datasets; lr_img default 5e-3 otherwise).
IDC_LRS: Dict[str, Tuple[float, int]] = {"mnist": (1e-4, 28), "fashion_mnist": (1e-4, 32)}
IDC_DEFAULT_LR: Tuple[float, int] = (5e-3, 32)
# Real images per class in CAFE's accuracy probe (capped by the smallest class): the pool the dynamic schedule
# draws ``probe_per_class`` images per class from at every measurement (the code draws from the whole training set).
CAFE_PROBE_POOL = 1000


def idc_lr(dataset: str, ipc: int, image_size: int, std) -> float:
  """IDC's image learning rate for ``dataset`` at ``ipc`` on this library's normalised images:
  :func:`jaxdistill.objectives.gradient_matching.idc_image_lr` of the dataset's base rate (:data:`IDC_LRS`,
  else :data:`IDC_DEFAULT_LR`)."""
  base, base_size = IDC_LRS.get(dataset, IDC_DEFAULT_LR)
  return objectives.gradient_matching.idc_image_lr(base, ipc, image_size, std, base_size=base_size)


def multi_formation_config(options) -> MultiFormationConfig:
  """The :class:`MultiFormationConfig` of the options (``factor``)."""
  return MultiFormationConfig(factor=options.factor).validate()


def idc(options, data, obj_cfg, init: str, key) -> Built:
  """IDC: ``options.ipc`` stored images per class (multi-formation, ``options.factor``), initialised with
  ``init`` (``"mix"``: ``factor²`` real images per stored image; ``"real"`` / ``"random"`` / ``"noise"``), and
  the ``idc`` objective on the ``ipc · factor²`` rendered images per class with the training set as its real
  data (``inner_data="real"``)."""
  spec = data.spec
  cfg = multi_formation_config(options)
  objective = objectives.make_objective(options.method, obj_cfg, num_classes=spec.num_classes,
                                        image_shape=spec.image_shape, ipc=options.ipc * cfg.factor ** 2,
                                        **_real_data(obj_cfg, data))
  syn = init_multi_formation(key, cfg, init, data.train_x, data.train_y, spec.num_classes, options.ipc)
  record = {"parameterisation_config": dataclasses.asdict(cfg), "stored_images_per_class": options.ipc,
            "rendered_images_per_class": options.ipc * cfg.factor ** 2}
  return Built(objective, multi_formation_parameterisation(cfg), syn, record)


def _real_data(obj_cfg, data) -> dict:
  """The factory's ``real_images`` / ``real_labels`` when the config trains its network on real data."""
  if getattr(obj_cfg, "inner_data", None) != "real":
    return {}
  return {"real_images": data.train_x, "real_labels": data.train_y}


def idc_loop_hook(options, loop_kw) -> dict:
  """IDC's image lr for the run's dataset and IPC (:func:`idc_lr`); ``--preset`` / ``--config`` / ``--lr-img``
  still win. A dataset without a known spec keeps ``loop_kw``'s lr."""
  from jaxdistill import data as data_lib
  try:
    spec = data_lib.get_spec(options.dataset)
  except ValueError:
    return {}
  return {"lr_img": idc_lr(spec.name, options.ipc, spec.image_shape[0], spec.std)}


def idc_outputs(options, built: Built, syn_state) -> Tuple[Optional[dict], dict]:
  """The stored set for ``synthetic.npz``: ``stored_images [C·ipc, H, W, ch]`` and ``stored_labels [C·ipc]``
  (``images`` / ``labels`` hold the ``factor²``-times larger rendered set the evaluation trains on)."""
  arrays = {"stored_images": np.asarray(syn_state.params["images"], np.float32),
            "stored_labels": np.asarray(syn_state.const["labels"])}
  return arrays, {"stored_arrays": "stored_images / stored_labels (images / labels: the rendered set)"}


def cafe(options, data, obj_cfg, init: str, key) -> Built:
  """CAFE: a pixel set initialised with ``init`` and the ``cafe`` objective; its dynamic schedule gets a probe of
  up to :data:`CAFE_PROBE_POOL` real training images per class (:func:`jaxdistill.objectives.cafe.make_probe`,
  drawn from its own key), the fixed schedule none."""
  spec = data.spec
  k_init, k_probe = jax.random.split(key)
  kwargs = {}
  if obj_cfg.schedule == "dynamic":
    smallest = int(np.min(np.bincount(np.asarray(data.train_y), minlength=spec.num_classes)))
    per_class = min(CAFE_PROBE_POOL, smallest)
    kwargs["probe"] = objectives.cafe.make_probe(k_probe, data.train_x, data.train_y, spec.num_classes, per_class)
  objective = objectives.make_objective(options.method, obj_cfg, num_classes=spec.num_classes,
                                        image_shape=spec.image_shape, ipc=options.ipc, **kwargs)
  syn = synthetic.init_pixels(k_init, init, data.train_x, data.train_y, spec.num_classes, options.ipc)
  return Built(objective, synthetic.PIXELS, syn, {"cafe_probe_per_class": kwargs["probe"].shape[1]}
               if kwargs else None)
