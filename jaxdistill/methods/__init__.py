"""The method registry: per ``--method`` name, its family, objective, set-up and the family's flags.

A method is a (parameterisation, objective) pair as the distill CLI runs it (``python -m experiments.distill
--method NAME``). The registry owns everything a method needs beyond its objective
(:mod:`jaxdistill.objectives`): which **family** it belongs to (and so which extra **flags** it reads, declared
here as data — :class:`Flag`, derived from the config dataclasses' fields where they map onto one), which
**objective** it optimises (its own, or the one ``--objective`` names), its **set-up** (the objective plus an
initialised parameterisation: :class:`Built`), and optional **loop defaults**, a **loop hook** (LoopConfig
fields derived from flags) and an **output hook** (extra arrays / metadata for ``synthetic.npz``). The CLIs
hold no registries: they look methods up here.

    from jaxdistill import methods, objectives
    opts = methods.options("glad", ipc=10, objective="dm", glad_layer=3)    # what the CLI's flags would give
    obj_cfg = objectives.default_config(methods.objective_name(opts))
    built = methods.setup(opts, data, obj_cfg, "real", key)  # data: train_x/train_y/test_x/test_y/spec
    # built.objective, built.param, built.syn -> jaxdistill.loop.distill(...)

Adding a method is ONE registration call:

* **an objective on pixels** (e.g. ``cafe``, ``dcc``): register the objective
  (``objectives.register("cafe", CAFEConfig, make_cafe, MethodDefaults(...))`` in
  jaxdistill/objectives/__init__.py) — every registered objective is a method of the flag-less ``"pixels"``
  family with :func:`setup_pixels`; nothing to add here;
* **anything else** (a parameterisation, learnable labels / lr, an expert buffer, extra flags): one
  :func:`register` call in the catalogue at the bottom of this module, with the set-up in its own module, e.g.

      register("idc", objective="dc", setup=idc.setup,
               family=Family("idc", "multi-formation", flags=(
                   config_flag(IDCConfig, "factor", "--factor", "images per stored image, per side"),)))

  ``family=`` takes a registered family's name (``"trajectory"``, ``"kernel"``, ``"bptt"``, ``"generative"``) or
  a new :class:`Family`; ``objective=None`` makes a parameterisation method that takes ``--objective``.
  :func:`objective_flag` declares a flag overriding the objective config's field of the same name,
  :func:`config_flag` one read by the set-up (type and default from the config field), :func:`flag` any other.

Then copy the CLI-visible names into experiments/names.py (the parsers read that copy so ``--help`` needs no
JAX): the method in ``DISTILL_METHODS`` (through ``OBJECTIVES`` / ``PARAMETERISATIONS``) and, for new flags,
:func:`flag_table` in ``METHOD_FLAGS``; tests/test_method_registry.py and tests/test_cli_reliability.py fail
until the copies match.
"""
from __future__ import annotations

from jaxdistill import generators
from jaxdistill.methods import generative, setups
from jaxdistill.methods import matching_variants
from jaxdistill.methods import more_methods  # FTD, IT-GAN, KFS, GTN (issue #18)
from jaxdistill.methods.registry import (FLAG_TYPES, PIXELS_FAMILY, Built, Family, Flag, Method, config_flag,
                                         families, flag, flag_table, flags, get, loop_settings, members, names,
                                         objective_fields, objective_flag, objective_name, options, outputs,
                                         register, register_family, setup, setup_objective, setup_pixels,
                                         takes_objective)
from jaxdistill.objectives import METHODS as OBJECTIVES
from jaxdistill.objectives import KIPConfig, TrajectoryMatchingConfig
from jaxdistill.synthetic import GenDMConfig, GLaDConfig, HaBaConfig, glad, haba
from jaxdistill.loop import LoopConfig
from jaxdistill.synthetic import KFSConfig, itgan
from jaxdistill.synthetic.itgan import ITGANConfig

# -- families and their flags -------------------------------------------------------------------------------------

TMC = TrajectoryMatchingConfig
register_family(Family("trajectory", "trajectory matching", (
    objective_flag(TMC, "buffer", "expert buffer folder (python -m experiments.buffers)"),
    objective_flag(TMC, "syn_steps", "N, student steps (MTT 20-80)", type="positive_int"),
    objective_flag(TMC, "expert_epochs", "M, expert epochs (2-3)", type="positive_int"),
    objective_flag(TMC, "max_start_epoch", "T+, start epochs 0..T+-1", type="positive_int"),
    objective_flag(TMC, "num_experts", "use the first N experts", type="positive_int"),
    objective_flag(TMC, "batch_syn", "synthetic mini-batch per step", type="positive_int"),
    objective_flag(TMC, "lr_init", f"initial learnable student lr ({TMC.lr_init})"),
    objective_flag(TMC, "lr_lr", "learning rate of the student lr (1e-5)"),
    objective_flag(TMC, "checkpoint", "re-materialise the student unroll (less memory, more compute)",
                   option="--checkpoint-unroll", type="true"),
)))
register_family(Family("kernel", None, (
    objective_flag(KIPConfig, "learn_labels", "kip/rfad/frepo (and other learned-label methods): learn soft labels "
                   "(default: the method's)"),
)))
register_family(Family("bptt"))  # dd / ld: --learn-labels (the kernel family's flag) reaches their configs too
register_family(Family("generative", "generative parameterisations", (
    flag("--objective", "objective for a parameterisation method (dm, dc, mtt, ...)", choices=sorted(OBJECTIVES)),
    flag("--gen-arch", "generator (glad: style, gendm: decoder)", choices=generators.ARCHS),
    flag("--gen-widths", "generator widths, e.g. 64,32,16", type="ints"),
    flag("--gen-z-dim", "latent size z", type="int"),
    flag("--gen-w-dim", "style code size w (style generator)", type="int"),
    flag("--gen-mapping-layers", "mapping-network layers (style)", type="int"),
    flag("--gen-embed-dim", "class-embedding size (decoder)", type="int"),
    flag("--gen-checkpoint", "generator .npz (save_generator, or a gendm run's synthetic.npz), or 'random' for a "
         "randomly initialised G; default for glad / latentdd: the trained prior shipped for --dataset if any and "
         "no --gen-* shape flag is given, else a random G"),
    flag("--gen-seed", "seed of a random generator (default --seed)", type="int"),
    config_flag(GLaDConfig, "space", "--glad-space", "GLaD latent space", choices=glad.SPACES),
    config_flag(GLaDConfig, "layer", "--glad-layer", f"GLaD layer n of the feature map F_n (default "
                f"{GLaDConfig.layer})", default=None),
    config_flag(GLaDConfig, "init", "--glad-init", "GLaD latent init", choices=glad.INITS),
    config_flag(GLaDConfig, "chunk", "--glad-chunk", f"images per chunk of the decoupled backward (default "
                f"{GLaDConfig.chunk})", default=None),
    flag("--no-decoupled", "plain autodiff through G (more memory)", type="switch", default=False),
    flag("--lr-features", "lr of F_n (glad default: GLaD's for the objective, dm 10 / dc, dsa 1 / mtt, tesla 1e4, "
         "other objectives 10 x their image lr; latentdd: the image lr)", type="float"),
    flag("--lr-codes", "lr of the codes (glad default: 0.001 x the F_n lr, or the F_n lr when the codes are all "
         "that is learned; latentdd: 0.01 x the image lr)", type="float"),
    config_flag(GenDMConfig, "train_per_class", "--gen-train-per-class", "GenDM images/class per step (IPC)",
                default=None),
    config_flag(GenDMConfig, "samples_per_class", "--gen-samples-per-class",
                "GenDM images/class sampled for evaluation (default IPC)", default=None),
    config_flag(GenDMConfig, "truncation", "--truncation", "GenDM evaluation truncation psi"),
    flag("--ignore-budget", "allow storage above C x IPC x H x W x ch", type="switch", default=False),
    config_flag(HaBaConfig, "bases_per_class", "--haba-bases", "HaBa bases per class (default: fits budget)",
                default=None),
    config_flag(HaBaConfig, "hallucinators", "--haba-hallucinators", "HaBa hallucinators H"),
    config_flag(HaBaConfig, "width", "--haba-width", "HaBa hallucinator width"),
    config_flag(HaBaConfig, "basis_size", "--haba-basis-size", "HaBa basis side (0: image size)"),
    flag("--lr-hallucinators", "HaBa hallucinator lr (default 0.01)", type="float"),
    config_flag(HaBaConfig, "pairs", "--haba-pairs", "HaBa training images: 'sampled' (two random distinct "
                "hallucinators per basis) or 'all' (every basis x hallucinator pair)", choices=haba.PAIRS),
    config_flag(HaBaConfig, "contrastive", "--haba-contrastive",
                "HaBa adversarial contrastive weight lambda_club (0: off)"),
    config_flag(HaBaConfig, "extractor_width", "--haba-extractor-width",
                "HaBa contrastive feature extractor width (ConvNet, depth 3)"),
)))

# -- the catalogue: methods with more than "pixels from init + the registered objective" --------------------------

for _name in ("mtt", "tesla", "mtt_l1"):
  register(_name, family="trajectory", setup=setups.trajectory)
register("kip", family="kernel", setup=setups.kernel, loop_defaults={"optimizer": "adam"}, outputs=setups.kip_outputs)
register("rfad", family="kernel", setup=setups.kernel, loop_defaults={"optimizer": "adam"})
register("frepo", family="kernel", setup=setups.kernel,  # FRePo: LAMB, cosine decay to 0.1 of the lr
         loop_defaults={"optimizer": "lamb", "lr_schedule": "cosine", "lr_final_fraction": 0.1})
for _name in ("dd", "ld"):
  register(_name, family="bptt", setup=setups.bptt, loop_defaults={"optimizer": "adam"})  # DD and LD: Adam
for _name in generative.METHODS:
  register(_name, family="generative", objective=None, setup=generative.setup, loop_hook=generative.loop_hook,
           outputs=generative.outputs)
register("idc", setup=matching_variants.idc, loop_hook=matching_variants.idc_loop_hook,  # docs/idc_dcc.md
         outputs=matching_variants.idc_outputs, family=Family("idc", "multi-formation", (
             config_flag(matching_variants.MultiFormationConfig, "factor", "--factor",
                         "IDC: images per stored image, per side (factor^2 rendered per stored image; 1 = IDC-I)",
                         type="positive_int"),)))
register("cafe", setup=matching_variants.cafe)  # CAFE: the dynamic schedule's real-image probe (docs/cafe_inits.md)
# FTD, IT-GAN, KFS, GTN (issue #18; jaxdistill/methods/more_methods.py, docs/ftd_itgan.md, docs/kfs_gtn.md)
register("ftd", setup=more_methods.ftd, loop_hook=more_methods.ftd_loop_hook, outputs=more_methods.ftd_outputs,
         family=Family("ftd", "flat trajectory distillation, with the trajectory-matching flags", (
             config_flag(LoopConfig, "ema_decay", "--ema-decay", "FTD: EMA decay of the synthetic params, the saved "
                         f"and evaluated set (default {more_methods.FTD_EMA_DECAY})"),)))
register("itgan", objective=None, setup=more_methods.itgan, outputs=generative.outputs, family=Family(
    "itgan", "IT-GAN, with --objective / --gen-checkpoint", (
        config_flag(ITGANConfig, "reg_weight", "--itgan-weight", "IT-GAN feature regulariser weight lambda (0: off)"),
        config_flag(ITGANConfig, "init", "--itgan-init", "IT-GAN latent init: inversion of paired real images, or "
                    "random z", choices=itgan.INITS),
        config_flag(ITGANConfig, "inversion_steps", "--itgan-inversion-steps", "IT-GAN inversion Adam steps"),
        config_flag(ITGANConfig, "width", "--itgan-width", "IT-GAN regulariser ConvNet width"),)))
register("kfs", objective=None, setup=more_methods.kfs, loop_hook=more_methods.kfs_loop_hook,
         outputs=generative.outputs, family=Family("kfs", "KFS codes x decoders, with --objective / --ignore-budget", (
             config_flag(KFSConfig, "codes_per_class", "--kfs-codes", "KFS codes per class (default: fits budget)",
                         default=None),
             config_flag(KFSConfig, "decoders", "--kfs-decoders", "KFS shared decoders D"),
             config_flag(KFSConfig, "latent_channels", "--kfs-latent-channels", "KFS code channels c_z"),
             config_flag(KFSConfig, "downsample", "--kfs-downsample", "KFS code downsampling s"),
             config_flag(KFSConfig, "width", "--kfs-width", "KFS decoder width"),
             flag("--lr-decoders", f"KFS decoder lr (default {more_methods.KFS_DECODER_LR})", type="float"))))
register("gtn", setup=more_methods.gtn, loop_defaults={"optimizer": "adam"}, outputs=generative.outputs)
del _name

__all__ = ["FLAG_TYPES", "PIXELS_FAMILY", "Built", "Family", "Flag", "Method", "config_flag", "families", "flag",
           "flag_table", "flags", "generative", "get", "loop_settings", "members", "names", "objective_fields",
           "objective_flag", "objective_name", "options", "outputs", "register", "register_family", "setup",
           "setup_objective", "setup_pixels", "setups", "takes_objective"]
