"""Train a class-conditional generator as a GAN (the learned prior of GLaD) and save it as a generator checkpoint.

    python -m experiments.train_generator --dataset fashion_mnist --steps 4000 --out runs/gen_fmnist

The generator is the library's style generator (``--gen-widths``, ``--gen-z-dim``, ``--gen-w-dim``,
``--gen-mapping-layers``; the GLaD defaults of ``experiments.distill``) or, with ``--gen-arch decoder``, GenDM's
conv decoder (a prior for ``--method gendm --gen-checkpoint``), trained with the non-saturating GAN loss,
R1 and a projection discriminator (:mod:`jaxdistill.gan`). ``--out`` receives

* ``generator.npz`` — the EMA generator (:func:`jaxdistill.generators.save_generator`; pass it to
  ``experiments.distill --method glad --gen-checkpoint``), with the training settings in its metadata;
* ``samples.png`` — 10 samples per class from the EMA generator;
* ``metrics.json`` — losses every ``--log-every`` steps, seconds, settings.

Classes are balanced in every batch (``batch_size / C`` real images per class and the same labels for the fakes).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from experiments import cli, common, names

gan = cli.lazy("jaxdistill.gan")
G = cli.lazy("jaxdistill.generators")
io = cli.lazy("jaxdistill.io")
data_lib = cli.lazy("jaxdistill.data")

# The GLaD generator of experiments.distill (experiments/generative.py DEFAULT_GEN["glad"]).
GEN_DEFAULTS = {"widths": (64, 32, 16), "z_dim": 64, "w_dim": 64, "mapping_layers": 2}


def _widths(text: str):
  try:
    return tuple(int(w) for w in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--train-size", type=common.positive_int, default=None,
                 help="train on the first N training images (default: the whole split)")
  p.add_argument("--steps", type=common.positive_int, default=4000, help="generator/discriminator update pairs")
  p.add_argument("--batch-size", type=common.positive_int, default=60, help="a multiple of the classes")
  p.add_argument("--lr-g", type=float, default=0.002)
  p.add_argument("--lr-d", type=float, default=0.002)
  p.add_argument("--r1-gamma", type=float, default=1.0)
  p.add_argument("--ema-decay", type=float, default=0.999)
  p.add_argument("--d-width", type=common.positive_int, default=32)
  p.add_argument("--gen-arch", default="style", choices=names.GENERATOR_ARCHS,
                 help="style: GLaD's generator (the defaults below); decoder: GenDM's plain conv decoder, e.g. a "
                      "budget-sized prior to start GenDM from (--gen-widths 32,32,24 --gen-z-dim 16 --gen-embed-dim 8)")
  p.add_argument("--gen-widths", type=_widths, default=GEN_DEFAULTS["widths"])
  p.add_argument("--gen-z-dim", type=common.positive_int, default=GEN_DEFAULTS["z_dim"])
  p.add_argument("--gen-w-dim", type=common.positive_int, default=GEN_DEFAULTS["w_dim"], help="style only")
  p.add_argument("--gen-mapping-layers", type=int, default=GEN_DEFAULTS["mapping_layers"], help="style only")
  p.add_argument("--gen-embed-dim", type=common.positive_int, default=8, help="decoder only: class embedding")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--log-every", type=common.positive_int, default=100)
  p.add_argument("--out", required=True, help="output folder (must be new or empty)")
  p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
  p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $JAXDISTILL_DATA_DIR)")
  p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
  return cli.add_debug_flag(p)


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxdistill.progress import progress_bar

  spec = data_lib.get_spec(args.dataset)
  nc = spec.num_classes
  if args.batch_size % nc:
    raise ValueError(f"--batch-size must be a multiple of the {nc} classes, got {args.batch_size}.")
  config = gan.GANConfig(steps=args.steps, batch_size=args.batch_size, lr_g=args.lr_g, lr_d=args.lr_d,
                         r1_gamma=args.r1_gamma, ema_decay=args.ema_decay, d_width=args.d_width).validate()
  h, _, c = spec.image_shape
  if args.gen_arch == "style":
    shape = dict(w_dim=args.gen_w_dim, mapping_layers=args.gen_mapping_layers)
  else:
    shape = dict(embed_dim=args.gen_embed_dim)
  gen = G.make_generator(args.gen_arch, num_classes=nc, resolution=h, channels=c, widths=args.gen_widths,
                         z_dim=args.gen_z_dim, **shape)
  io.prepare_out_dir(args.out, overwrite=args.overwrite)
  split = "train" if args.train_size is None else f"train[:{args.train_size}]"
  x, y, _ = data_lib.load(args.dataset, split, data_dir=args.data_dir, backend=common.data_backend(args))
  y = np.asarray(y, np.int32)
  by_class = [np.flatnonzero(y == k) for k in range(nc)]
  if any(len(ix) == 0 for ix in by_class):
    raise ValueError(f"every class needs training images; {split} of {args.dataset} lacks some.")
  images = jnp.asarray(x)
  per_class = args.batch_size // nc
  labels = jnp.repeat(jnp.arange(nc, dtype=jnp.int32), per_class)
  index = [jnp.asarray(ix) for ix in by_class]

  disc = gan.Discriminator(nc, config.d_width)
  key = jax.random.PRNGKey(args.seed)
  state = gan.init(gen, disc, config, jax.random.fold_in(key, 0), spec.image_shape)
  step = gan.make_train_step(gen, disc, config)

  @jax.jit
  def batch(k):
    ks = jax.random.split(k, nc)
    pos = jnp.concatenate([ix[jax.random.randint(kk, (per_class,), 0, ix.shape[0])] for kk, ix in zip(ks, index)])
    return images[pos]

  log, start = [], time.perf_counter()
  with progress_bar(total=config.steps, desc="gan", disable=args.quiet, unit="step") as bar:
    for i in range(config.steps):
      k = jax.random.fold_in(key, i + 1)
      state, m = step(state, batch(jax.random.fold_in(k, 0)), labels, jax.random.fold_in(k, 1))
      if (i + 1) % args.log_every == 0 or i + 1 == config.steps:
        m = {name: float(v) for name, v in m.items()}
        if not all(np.isfinite(v) for v in m.values()):
          raise FloatingPointError(f"GAN training diverged at step {i + 1}: {m}")
        log.append({"step": i + 1, **m, "seconds": time.perf_counter() - start})
        bar.set_postfix(d=f"{m['d_loss']:.3f}", g=f"{m['g_loss']:.3f}")
      bar.update(1)
  seconds = time.perf_counter() - start
  settings = {"dataset": args.dataset, "split": split, "seed": args.seed, "gan_config": dataclasses.asdict(config)}
  path = G.save_generator(os.path.join(args.out, "generator.npz"), gen, state.ema_params,
                          {**settings, "trained_by": "experiments.train_generator (EMA weights)", "seconds": seconds})
  sample_labels = jnp.repeat(jnp.arange(nc, dtype=jnp.int32), 10)
  samples = gan.sample(gen, state.ema_params, jax.random.PRNGKey(args.seed + 1), sample_labels)
  grid = np.asarray(data_lib.denormalise(np.asarray(samples), args.dataset))
  grid = grid.reshape((nc, 10) + grid.shape[1:]).transpose(1, 0, 2, 3, 4).reshape((-1,) + grid.shape[1:])
  io.save_image_grid(os.path.join(args.out, "samples.png"), grid, rows=10)
  metrics = {**settings, "generator": G.config_dict(gen), "generator_floats": G.num_params(state.ema_params),
             "generator_bytes": os.path.getsize(path), "seconds": seconds, "log": log}
  io.save_json(os.path.join(args.out, "metrics.json"), metrics)
  if not args.quiet:
    print(f"generator ({metrics['generator_floats']} floats) trained {config.steps} steps in {seconds:.0f} s "
          f"-> {path}")
  return metrics


if __name__ == "__main__":
  cli.run(main)
