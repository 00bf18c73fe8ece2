"""Names the CLIs' parsers offer as choices, without importing JAX or the library (``--help`` stays fast: importing
any ``jaxdistill`` module runs the package's ``__init__``, which imports JAX and every sub-package).

Each tuple is a copy of a library constant, named beside it; ``tests/test_cli_reliability.py`` checks that every
copy equals its source and ``tests/test_cli_flags.py`` that every parser's choices do, so a method, architecture
or option added to the library fails those tests until it is added here too.
"""
from __future__ import annotations

# jaxdistill.objectives.METHODS (the registered objectives, in registry order).
OBJECTIVES = ("dc", "dsa", "dm", "dm_l1", "dm_bn", "mtt", "tesla", "mtt_l1", "kip", "rfad", "frepo", "dd", "ld")
# experiments.generative.METHODS: parameterisation methods that take an --objective.
PARAMETERISATIONS = ("glad", "gendm", "latentdd", "haba")
# --method of experiments.distill: experiments.distill.method_choices().
DISTILL_METHODS = tuple(sorted(set(OBJECTIVES) | set(PARAMETERISATIONS)))
# jaxdistill.synthetic.INITS (--init of experiments.distill: real / noise or a coreset selection).
INITS = ("real", "noise", "random", "herding", "kcenter", "forgetting")
# jaxdistill.coreset.METHODS and the FeatureNetConfig defaults.
CORESET_METHODS = ("random", "herding", "kcenter", "forgetting")
FEATURE_WIDTH = 64
FEATURE_EPOCHS = 3
# jaxdistill.models.ARCHITECTURES.
ARCHITECTURES = ("convnet", "convnet_bn", "mlp", "lenet", "alexnet", "vgg11", "vgg11_bn", "resnet18",
                 "resnet18_bn", "resnet18_ap")
# jaxdistill.apps.continual.METHODS.
CONTINUAL_METHODS = ("dm", "herding", "random")
# jaxdistill.models.layers.ACTIVATIONS, NORMS, POOLINGS.
ACTIVATIONS = ("relu", "sigmoid", "leakyrelu")
NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
POOLINGS = ("avg", "max", "none")
# jaxdistill.presets.names().
PRESETS = ("cpu", "paper")
# jaxdistill.presets.buffer_presets(): the expert-buffer recipes of `experiments.buffers --preset`.
BUFFER_PRESETS = ("cpu", "paper")
# jaxdistill.generators.ARCHS, jaxdistill.synthetic.glad.SPACES.
GENERATOR_ARCHS = ("style", "decoder")
GLAD_SPACES = ("features", "wplus", "w", "z")
# jaxdistill.synthetic.glad.INITS.
GLAD_INITS = ("random", "class_mean")
# jaxdistill.synthetic.haba.PAIRS.
HABA_PAIRS = ("sampled", "all")
