"""Augmentation: differentiable siamese augmentation (DSA)."""
from jaxdistill.augment.dsa import (DEFAULT_STRATEGY, DIGIT_STRATEGY, OPS, DSAParams, apply_op, augment,
                                    choose_op, default_params)

__all__ = ["DEFAULT_STRATEGY", "DIGIT_STRATEGY", "OPS", "DSAParams", "apply_op", "augment", "choose_op",
           "default_params"]
