"""Parameterisations of a synthetic set: how it is stored and learned (see ARCHITECTURE.md).

A parameterisation is a small set of pure functions over a :class:`SynState` pytree:
``init(key, ...) -> SynState``, ``render(state) -> SyntheticBatch`` and ``storage(state) -> floats``.
The distillation loop differentiates ``render`` only through ``state.params`` (the learnable leaves);
``state.const`` holds what is fixed (e.g. hard labels).
"""
from jaxdistill.synthetic.base import Parameterisation, SynState, SyntheticBatch
from jaxdistill.synthetic.pixels import INITS, PIXELS, init_pixels, render_pixels, storage_pixels
from jaxdistill.synthetic.labels import (LABEL_INITS, LABEL_PROJECTIONS, LABELS_ONLY, LABELS_ONLY_RAW, init_labels,
                                        label_projection, labels_only, project_simplex)
from jaxdistill.synthetic.glad import GLaDConfig, decoupled_grad, glad_parameterisation, init_glad
from jaxdistill.synthetic.generator import (GenDMConfig, check_budget, gendm_parameterisation, init_gendm,
                                            init_latentdd, latentdd_parameterisation, storage_budget)
from jaxdistill.synthetic.haba import (ContentExtractor, HaBaConfig, contrastive_regulariser, draw_pairs,
                                       haba_parameterisation, init_haba, supcon_loss, train_images_per_class)
from jaxdistill.synthetic.multi_formation import (MultiFormationConfig, init_multi_formation,
                                                  multi_formation_parameterisation)
from jaxdistill.synthetic.multi_formation import decode as decode_multi_formation
from jaxdistill.synthetic.kfs import KFSConfig, init_kfs, kfs_parameterisation
from jaxdistill.synthetic.gtn import GTNConfig, gtn_parameterisation, init_gtn

PARAMETERISATIONS = {"pixels": PIXELS, "labels_only": LABELS_ONLY, "labels_only_raw": LABELS_ONLY_RAW}
# Parameterisations built from a configuration (a generator, a factorisation): name -> factory returning a
# Parameterisation (see each module for its init_... function).
FACTORIES = {"glad": glad_parameterisation, "gendm": gendm_parameterisation, "latentdd": latentdd_parameterisation,
             "haba": haba_parameterisation}


def get_parameterisation(name: str) -> Parameterisation:
  """The parameterisation registered as ``name``; ``ValueError`` naming the accepted values otherwise."""
  if name not in PARAMETERISATIONS:
    raise ValueError(f"parameterisation must be one of {sorted(PARAMETERISATIONS)}, got {name!r}.")
  return PARAMETERISATIONS[name]


__all__ = ["INITS", "LABEL_INITS", "LABEL_PROJECTIONS", "LABELS_ONLY", "LABELS_ONLY_RAW", "label_projection",
           "labels_only", "project_simplex", "PARAMETERISATIONS", "PIXELS", "Parameterisation", "SynState",
           "SyntheticBatch", "get_parameterisation", "init_labels", "init_pixels", "render_pixels",
           "storage_pixels", "FACTORIES", "GLaDConfig", "GenDMConfig", "HaBaConfig", "check_budget", "decoupled_grad",
           "gendm_parameterisation", "glad_parameterisation", "haba_parameterisation", "init_gendm", "init_glad",
           "init_haba", "init_latentdd", "latentdd_parameterisation", "storage_budget", "ContentExtractor",
           "contrastive_regulariser", "draw_pairs", "supcon_loss", "train_images_per_class",
           "MultiFormationConfig", "decode_multi_formation", "init_multi_formation", "multi_formation_parameterisation",
           "KFSConfig", "init_kfs", "kfs_parameterisation", "GTNConfig", "gtn_parameterisation", "init_gtn"]
