"""Trains: ``python -m osgan_jax.main --config=configs/NAME.py --workdir=DIR``.

Override any config key as ``--config.KEY=VALUE`` (the config is locked: an unknown
key is an error); rerunning the same command resumes; SIGTERM/SIGINT save a
checkpoint and exit 0. Errors are one line and exit 1 (``docs/training.md``).
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from osgan_jax import cli

COMMAND = cli.Command(
    'osgan_jax.main',
    'python -m osgan_jax.main --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]',
)
_CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Training config file (configs/*.py); override keys with --config.KEY=VALUE.',
    lock_config=True,
    flag_values=COMMAND.flags,
)
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    'Directory for checkpoints, metrics, TensorBoard events and samples.',
    flag_values=COMMAND.flags,
)
_TUNE_MALLOC = flags.DEFINE_enum(
    'tune_malloc',
    'auto',
    ['auto', 'on', 'off'],
    'Keep freed host memory mapped (glibc mallopt, before JAX starts) so that XLA:CPU '
    'steps do not page-fault their buffers afresh every step. auto: when JAX runs on the '
    'CPU only.',
    flag_values=COMMAND.flags,
)
_HELPCONFIG = flags.DEFINE_bool(
    'helpconfig',
    False,
    'Print every key of --config (with the overrides applied) and what it means.',
    flag_values=COMMAND.flags,
)


def main(args) -> int:
  del args
  if _CONFIG.value is None:
    raise cli.CommandError('--config is required (--help lists the flags)', 2)
  config = _CONFIG.value
  try:
    config.get('stage')  # config_flags defers a config file's load error to first use
  except OSError as e:
    raise cli.CommandError(cli.one_line(e), 2) from None
  # Imported here, not at the top: --help and flag errors load no JAX.
  from osgan_jax import config as config_lib

  if _HELPCONFIG.value:
    print(config_lib.describe(config))
    return 0
  if not _WORKDIR.value:
    raise cli.CommandError('--workdir is required (--help lists the flags)', 2)
  cli.quiet_logs()
  from osgan_jax.training import host_memory

  if _TUNE_MALLOC.value == 'on' or (
      _TUNE_MALLOC.value == 'auto' and host_memory.cpu_only()
  ):
    host_memory.keep_freed_memory()
  from osgan_jax import data
  from osgan_jax import train
  from osgan_jax.training import checkpoint
  from osgan_jax.training import guards

  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except data.DataError as e:
    raise cli.CommandError(f'data: {cli.one_line(e)}') from None
  except config_lib.ConfigError as e:
    raise cli.CommandError(f'config: {cli.one_line(e)}') from None
  except (guards.TrainingError, checkpoint.CheckpointError) as e:
    raise cli.CommandError(cli.one_line(e)) from None
  return 0


def run() -> None:
  sys.exit(COMMAND.run(main))


if __name__ == '__main__':
  run()
