"""Images of a trained generator: ``python -m osgan_jax.generate --workdir=DIR
[--step=latest|best|N] --seeds=0-63 --outdir=OUT`` (or ``--weights=PKL``, ``--grid``,
``--format=npz``); errors are one line, exit 1 (``docs/generate_evaluate.md``)."""

from __future__ import annotations

import sys

from absl import flags

from osgan_jax import cli

COMMAND = cli.Command(
    'osgan_jax.generate',
    'python -m osgan_jax.generate (--workdir=DIR [--step=latest|best|N] | --weights=PKL)\n'
    '    --seeds=0-63 [--classes=0-9] [--trunc=PSI] (--outdir=DIR | --grid=PATH.png)\n'
    'Writes the images of the given seeds: seed s has the latent '
    'np.random.RandomState(s).randn(1, z_dim).',
)
F = COMMAND.flags
cli.define_generator_flags(F, 'const, as the reference generate.py')
flags.DEFINE_string('seeds', '0-15', "seeds: '0-63', '1,5,10-12'", flag_values=F)
flags.DEFINE_string(
    'classes',
    None,
    'classes of a conditional G, as --seeds (every seed for each); default: seed s '
    'gets class s % num_classes',
    flag_values=F,
)
flags.DEFINE_string(
    'outdir',
    None,
    'write seedNNNN.png per image (seedNNNN_classC.png for several classes) here',
    flag_values=F,
)
flags.DEFINE_string('grid', None, 'write one grid PNG (a row per class)', flag_values=F)
flags.DEFINE_enum(
    'format',
    'png',
    ['png', 'npz'],
    'npz: OUTDIR/images.npz with "images", the raw float32 generator output before '
    'quantisation, [N, H, W, C] (NHWC), nominal range [-1, 1], unclipped; "seeds" and '
    '"labels" (-1: unconditional) [N]',
    flag_values=F,
)
flags.DEFINE_integer('batch', 16, 'images per device per generator call', flag_values=F)


def _generate(args) -> int:
  del args
  from osgan_jax.tasks import trained  # lazy: --help loads no JAX

  cli.quiet_logs()
  try:
    loaded = trained.load(F.workdir, trained.parse_step(F.step), F.weights)
    seeds = trained.parse_seeds(F.seeds)
    classes = trained.parse_seeds(F.classes, '--classes') if F.classes else None
    noise_mode = F.noise_mode
    if noise_mode is None and loaded.takes('noise_mode'):
      noise_mode = 'const'
    written = trained.generate(
        loaded,
        seeds,
        classes,
        outdir=F.outdir,
        grid=F.grid,
        fmt=F.format,
        batch_size=F.batch,
        truncation_psi=F.trunc,
        noise_mode=noise_mode,
    )
  except trained.LoadError as e:
    raise cli.CommandError(str(e)) from None
  what = (
      f'step {loaded.step} of {loaded.workdir}' if loaded.step is not None else F.weights
  )
  weights = 'G_ema' if loaded.ema else 'G'
  print(
      f'{len(written)} files from {what} ({weights}): {", ".join(written[:3])}'
      f'{" ..." if len(written) > 3 else ""}'
  )
  return 0


def main(argv=None) -> int:
  return COMMAND.run(_generate, argv)


if __name__ == '__main__':
  sys.exit(main())
