"""Metrics of a trained generator: ``python -m osgan_jax.evaluate --workdir=DIR
[--step=latest|best|N] [--num=10000]`` (or ``--weights=PKL --real=PATH``) prints one
JSON line per metric (FID, KID, precision, recall) and appends them to the run's
``metrics.jsonl``; errors are one line, exit 1 (``docs/generate_evaluate.md``)."""

from __future__ import annotations

import json
import sys

from absl import flags

from osgan_jax import cli

COMMAND = cli.Command(
    'osgan_jax.evaluate',
    'python -m osgan_jax.evaluate (--workdir=DIR [--step=latest|best|N] | --weights=PKL '
    '--real=PATH)\n    [--num=10000] [--real=FOLDER|STATS.npz] [--metrics=fid,kid,pr]\n'
    'FID, KID, precision and recall (k=3) on TF-Inception pool3 features, offline, of '
    'the images of seeds SEED..SEED+NUM-1. Prints one JSON line per metric.',
)
F = COMMAND.flags
cli.define_generator_flags(F, "random, as the reference's metrics")
flags.DEFINE_string(
    'real',
    None,
    'real images: a folder or a statistics .npz (python -m osgan_jax.fid --save-stats); '
    "default: the run's data, as its FID evaluator reads it (statistics cached in the "
    'workdir)',
    flag_values=F,
)
flags.DEFINE_integer('num', 10_000, 'generated images', flag_values=F)
flags.DEFINE_integer(
    'num_real',
    None,
    "real images of the run's data (-1: all; default: config.evals.fid.num_real)",
    flag_values=F,
)
flags.DEFINE_integer('seed', 0, 'the first seed (as generate --seeds)', flag_values=F)
flags.DEFINE_string('metrics', 'fid,kid,pr', 'any of fid, kid, pr', flag_values=F)
flags.DEFINE_integer(
    'batch',
    50,
    'images per generator call (split over the devices) and per Inception call',
    flag_values=F,
)
flags.DEFINE_bool(
    'write', True, "append the values to the run's metrics.jsonl", flag_values=F
)


def _evaluate(args) -> int:
  del args
  from osgan_jax import data  # lazy: --help loads no JAX
  from osgan_jax.config import ConfigError
  from osgan_jax.metrics import folders
  from osgan_jax.tasks import evaluation, trained

  cli.quiet_logs()
  try:
    loaded = trained.load(F.workdir, trained.parse_step(F.step), F.weights)
    records = evaluation.evaluate(
        loaded,
        num=F.num,
        batch_size=F.batch,
        seed=F.seed,
        truncation_psi=F.trunc,
        noise_mode=F.noise_mode,
        real=F.real,
        num_real=F.num_real,
        metrics=[m.strip() for m in F.metrics.split(',') if m.strip()],
        write=F.write,
    )
  except (trained.LoadError, folders.InputError, ConfigError) as e:
    raise cli.CommandError(str(e)) from None
  except data.DataError as e:
    raise cli.CommandError(f'data: {cli.one_line(e)}') from None
  for record in records:
    print(json.dumps(record), flush=True)
  return 0


def main(argv=None) -> int:
  return COMMAND.run(_evaluate, argv)


if __name__ == '__main__':
  sys.exit(main())
