"""jaxdistill: dataset distillation in JAX/Flax.

The public surface, for ``import jaxdistill as jd``:

* pure losses over arrays and functions (use them with your own network and optax):
  :func:`dm_loss` (``distribution_matching.loss``), :func:`gm_loss` (``gradient_matching.loss``),
  :func:`kip_loss`, :func:`frepo_loss`, :func:`trajectory_loss`; :func:`group_by_class` puts a flat labelled
  batch into their class-major ``[C, n, ...]`` layout;
* the objectives registry: :func:`make_objective`, :func:`default_config`, :func:`method_defaults`,
  :func:`register`, :data:`METHODS`, :class:`Objective`, :class:`RealBatch`;
* the loop: :func:`distill`, :class:`LoopConfig`;
* synthetic sets: :func:`init_pixels`, :data:`PIXELS`, :func:`get_parameterisation`, :class:`SynState`,
  :class:`SyntheticBatch`;
* data: :func:`load` (built-in names and ``npz:PATH`` / ``folder:PATH`` / ``idx:PATH`` / ``tfds:NAME``),
  :func:`from_arrays`, :func:`get_spec`, :class:`DatasetSpec`, :func:`sample_balanced`;
* evaluation: the module :mod:`jaxdistill.evaluate` (``jd.evaluate.evaluate(images, labels, arch, key, ...)``;
  it keeps its module name, which the CLIs and tests import), :class:`EvalResult`;
* training pieces: :mod:`jaxdistill.training` (the one epoch primitive: ``epoch_batches``, ``batch_step``,
  ``train_epoch``) and :mod:`jaxdistill.unroll` (the differentiable inner-SGD unroll: ``sgd_step``,
  ``scan_steps``);
* the sub-packages ``augment``, ``data``, ``evaluate``, ``loop``, ``models``, ``objectives``, ``synthetic``,
  ``training``, ``unroll``.
"""
from jaxdistill import augment, data, evaluate, loop, models, objectives, synthetic, training, unroll
from jaxdistill.data import DatasetSpec, from_arrays, get_spec, load, sample_balanced
from jaxdistill.evaluate import EvalResult
from jaxdistill.loop import LoopConfig, distill
from jaxdistill.objectives import (METHODS, Objective, RealBatch, default_config, distribution_matching, frepo,
                                   gradient_matching, group_by_class, kip, make_objective, method_defaults, register,
                                   trajectory)
from jaxdistill.synthetic import PIXELS, SynState, SyntheticBatch, get_parameterisation, init_pixels

__version__ = "0.1.0"

dm_loss = distribution_matching.loss
gm_loss = gradient_matching.loss
kip_loss = kip.loss
frepo_loss = frepo.loss
trajectory_loss = trajectory.loss

__all__ = [
    "DatasetSpec",
    "EvalResult",
    "LoopConfig",
    "METHODS",
    "Objective",
    "PIXELS",
    "RealBatch",
    "SynState",
    "SyntheticBatch",
    "augment",
    "data",
    "default_config",
    "distill",
    "distribution_matching",
    "dm_loss",
    "evaluate",
    "frepo",
    "frepo_loss",
    "from_arrays",
    "get_parameterisation",
    "get_spec",
    "gm_loss",
    "gradient_matching",
    "group_by_class",
    "init_pixels",
    "kip",
    "kip_loss",
    "load",
    "loop",
    "make_objective",
    "method_defaults",
    "models",
    "objectives",
    "register",
    "sample_balanced",
    "synthetic",
    "training",
    "trajectory",
    "trajectory_loss",
    "unroll",
]
