"""The generative / factorised parameterisations on the command line (GLaD, GenDM, LatentDD, HaBa).

    python -m experiments.distill --method glad --objective dm --ipc 10 --glad-layer 2 --out runs/glad
    python -m experiments.distill --method gendm --objective dm --ipc 10 --out runs/gendm
    python -m experiments.distill --method latentdd --objective dm --ipc 10 \
        --gen-checkpoint runs/gendm/synthetic.npz --out runs/latentdd
    python -m experiments.distill --method haba --objective dm --ipc 10 --haba-bases 9 --out runs/haba

``--method`` picks the parameterisation, ``--objective`` any registered objective (dm, dc, mtt, ...: objectives
only see images). ``synthetic.npz`` holds the rendered images plus the parameterisation's state (learnable
arrays under their names, e.g. ``features``/``codes``/``bases``/``generator/...``, fixed ones under
``const/...``) and its config in the metadata; a GenDM run's file is also a generator checkpoint
(:func:`jaxdistill.generators.load_generator`). ``metrics.json`` reports ``storage_floats``.

The methods, their flags (the ``"generative"`` family) and their set-ups live in the library's method registry
(:mod:`jaxdistill.methods`, :mod:`jaxdistill.methods.generative`); this module keeps no registry and only
re-exports the set-up's helpers under the names earlier code used.
"""
from __future__ import annotations

from jaxdistill.methods.generative import (DEFAULT_GEN, GLAD_CODE_RATIO, GLAD_LRS, METHODS, RANDOM,  # noqa: F401
                                           checkpoint_path, glad_lrs, haba_config, max_bases)
from jaxdistill.methods.generative import generator as _generator  # noqa: F401
