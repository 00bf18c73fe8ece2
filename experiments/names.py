"""Names the CLIs' parsers offer as choices, without importing JAX or the library (``--help`` stays fast: importing
any ``jaxdistill`` module runs the package's ``__init__``, which imports JAX and every sub-package).

Each tuple is a copy of a library constant, named beside it; ``tests/test_cli_reliability.py`` checks that every
copy equals its source and ``tests/test_cli_flags.py`` that every parser's choices do, so a method, architecture
or option added to the library fails those tests until it is added here too.
"""
from __future__ import annotations

# jaxdistill.objectives.METHODS (the registered objectives, in registry order).
OBJECTIVES = ("dc", "dsa", "dm", "dm_l1", "dm_bn", "mtt", "tesla", "mtt_l1", "kip", "rfad", "frepo", "dd", "ld",
              "idc", "dcc", "cafe", "ftd", "gtn")
# jaxdistill.methods: the parameterisation methods, which take an --objective (methods.takes_objective).
PARAMETERISATIONS = ("glad", "gendm", "latentdd", "haba", "itgan", "kfs")
# --method of experiments.distill: jaxdistill.methods.names() (every registered objective is a method).
DISTILL_METHODS = tuple(sorted(set(OBJECTIVES) | set(PARAMETERISATIONS)))
# jaxdistill.synthetic.INITS (--init of experiments.distill: real / noise or a coreset selection).
INITS = ("real", "noise", "random", "herding", "kcenter", "forgetting", "entropy", "kmeans")
# jaxdistill.coreset.METHODS and the FeatureNetConfig defaults.
CORESET_METHODS = ("random", "herding", "kcenter", "forgetting", "entropy", "kmeans")
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
# jaxdistill.synthetic.itgan.INITS.
ITGAN_INITS = ("inversion", "random")
# jaxdistill.methods.flag_table(): the method families' flags of experiments.distill, (group title or None: the
# main options, ((option, dest, type, default, choices, help), ...)) per family with flags; the types are
# jaxdistill.methods.FLAG_TYPES.
METHOD_FLAGS = (
    ("trajectory matching (mtt, tesla, mtt_l1)", (
        ("--buffer", "buffer", "str", None, None, "expert buffer folder (python -m experiments.buffers)"),
        ("--syn-steps", "syn_steps", "positive_int", None, None, "N, student steps (MTT 20-80)"),
        ("--expert-epochs", "expert_epochs", "positive_int", None, None, "M, expert epochs (2-3)"),
        ("--max-start-epoch", "max_start_epoch", "positive_int", None, None, "T+, start epochs 0..T+-1"),
        ("--num-experts", "num_experts", "positive_int", None, None, "use the first N experts"),
        ("--batch-syn", "batch_syn", "positive_int", None, None, "synthetic mini-batch per step"),
        ("--lr-init", "lr_init", "float", None, None, "initial learnable student lr (0.01)"),
        ("--lr-lr", "lr_lr", "float", None, None, "learning rate of the student lr (1e-5)"),
        ("--checkpoint-unroll", "checkpoint", "true", None, None,
         "re-materialise the student unroll (less memory, more compute)"),
    )),
    (None, (
        ("--learn-labels", "learn_labels", "bool", None, None,
         "kip/rfad/frepo (and other learned-label methods): learn soft labels (default: the method's)"),
    )),
    ("generative parameterisations (glad, gendm, latentdd, haba)", (
        ("--objective", "objective", "str", None, tuple(sorted(OBJECTIVES)),
         "objective for a parameterisation method (dm, dc, mtt, ...)"),
        ("--gen-arch", "gen_arch", "str", None, GENERATOR_ARCHS, "generator (glad: style, gendm: decoder)"),
        ("--gen-widths", "gen_widths", "ints", None, None, "generator widths, e.g. 64,32,16"),
        ("--gen-z-dim", "gen_z_dim", "int", None, None, "latent size z"),
        ("--gen-w-dim", "gen_w_dim", "int", None, None, "style code size w (style generator)"),
        ("--gen-mapping-layers", "gen_mapping_layers", "int", None, None, "mapping-network layers (style)"),
        ("--gen-embed-dim", "gen_embed_dim", "int", None, None, "class-embedding size (decoder)"),
        ("--gen-checkpoint", "gen_checkpoint", "str", None, None,
         "generator .npz (save_generator, or a gendm run's synthetic.npz), or 'random' for a randomly initialised "
         "G; default for glad / latentdd: the trained prior shipped for --dataset if any and no --gen-* shape flag "
         "is given, else a random G"),
        ("--gen-seed", "gen_seed", "int", None, None, "seed of a random generator (default --seed)"),
        ("--glad-space", "glad_space", "str", "features", GLAD_SPACES, "GLaD latent space"),
        ("--glad-layer", "glad_layer", "int", None, None, "GLaD layer n of the feature map F_n (default 2)"),
        ("--glad-init", "glad_init", "str", "random", GLAD_INITS, "GLaD latent init"),
        ("--glad-chunk", "glad_chunk", "int", None, None, "images per chunk of the decoupled backward (default 10)"),
        ("--no-decoupled", "no_decoupled", "switch", False, None, "plain autodiff through G (more memory)"),
        ("--lr-features", "lr_features", "float", None, None,
         "lr of F_n (glad default: GLaD's for the objective, dm 10 / dc, dsa 1 / mtt, tesla 1e4, other objectives "
         "10 x their image lr; latentdd: the image lr)"),
        ("--lr-codes", "lr_codes", "float", None, None,
         "lr of the codes (glad default: 0.001 x the F_n lr, or the F_n lr when the codes are all that is learned; "
         "latentdd: 0.01 x the image lr)"),
        ("--gen-train-per-class", "gen_train_per_class", "int", None, None, "GenDM images/class per step (IPC)"),
        ("--gen-samples-per-class", "gen_samples_per_class", "int", None, None,
         "GenDM images/class sampled for evaluation (default IPC)"),
        ("--truncation", "truncation", "float", 1.0, None, "GenDM evaluation truncation psi"),
        ("--ignore-budget", "ignore_budget", "switch", False, None, "allow storage above C x IPC x H x W x ch"),
        ("--haba-bases", "haba_bases", "int", None, None, "HaBa bases per class (default: fits budget)"),
        ("--haba-hallucinators", "haba_hallucinators", "int", 5, None, "HaBa hallucinators H"),
        ("--haba-width", "haba_width", "int", 8, None, "HaBa hallucinator width"),
        ("--haba-basis-size", "haba_basis_size", "int", 0, None, "HaBa basis side (0: image size)"),
        ("--lr-hallucinators", "lr_hallucinators", "float", None, None, "HaBa hallucinator lr (default 0.01)"),
        ("--haba-pairs", "haba_pairs", "str", "sampled", HABA_PAIRS,
         "HaBa training images: 'sampled' (two random distinct hallucinators per basis) or 'all' (every basis x "
         "hallucinator pair)"),
        ("--haba-contrastive", "haba_contrastive", "float", 0.1, None,
         "HaBa adversarial contrastive weight lambda_club (0: off)"),
        ("--haba-extractor-width", "haba_extractor_width", "int", 128, None,
         "HaBa contrastive feature extractor width (ConvNet, depth 3)"),
    )),
    ("multi-formation (idc)", (
        ("--factor", "factor", "positive_int", 2, None,
         "IDC: images per stored image, per side (factor^2 rendered per stored image; 1 = IDC-I)"),
    )),
    ("flat trajectory distillation, with the trajectory-matching flags (ftd)", (
        ("--ema-decay", "ema_decay", "float", None, None,
         "FTD: EMA decay of the synthetic params, the saved and evaluated set (default 0.9995)"),
    )),
    ("IT-GAN, with --objective / --gen-checkpoint (itgan)", (
        ("--itgan-weight", "itgan_weight", "float", 0.01, None, "IT-GAN feature regulariser weight lambda (0: off)"),
        ("--itgan-init", "itgan_init", "str", "inversion", ITGAN_INITS,
         "IT-GAN latent init: inversion of paired real images, or random z"),
        ("--itgan-inversion-steps", "itgan_inversion_steps", "int", 200, None, "IT-GAN inversion Adam steps"),
        ("--itgan-width", "itgan_width", "int", 128, None, "IT-GAN regulariser ConvNet width"),
    )),
    ("KFS codes x decoders, with --objective / --ignore-budget (kfs)", (
        ("--kfs-codes", "kfs_codes", "int", None, None, "KFS codes per class (default: fits budget)"),
        ("--kfs-decoders", "kfs_decoders", "int", 4, None, "KFS shared decoders D"),
        ("--kfs-latent-channels", "kfs_latent_channels", "int", 1, None, "KFS code channels c_z"),
        ("--kfs-downsample", "kfs_downsample", "int", 2, None, "KFS code downsampling s"),
        ("--kfs-width", "kfs_width", "int", 8, None, "KFS decoder width"),
        ("--lr-decoders", "lr_decoders", "float", None, None, "KFS decoder lr (default 0.01)"),
    )),
)
