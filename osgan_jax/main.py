"""Trains: ``python -m osgan_jax.main --config=configs/NAME.py --workdir=DIR
[--config.KEY=VALUE ...]``; rerunning it resumes. The flags, signals and one-line errors:
``docs/training.md``."""

from __future__ import annotations

import glob
import os
import sys

from absl import flags
from absl import logging
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
_CACHE = flags.DEFINE_string(
    'compilation_cache',
    '',
    "JAX's persistent compilation cache: a directory, or 'off' (default: "
    '$OSGAN_COMPILATION_CACHE, else ~/.cache/osgan_jax/jax_compilation_cache). A rerun '
    'on the same machine loads its compiled programs.',
    flag_values=COMMAND.flags,
)
_VERIFY = flags.DEFINE_bool(
    'verify',
    False,
    'Check every checkpoint of --workdir against its checksums (no --config needed); '
    'exit 1 if one fails.',
    flag_values=COMMAND.flags,
)
_HELPCONFIG = flags.DEFINE_bool(
    'helpconfig',
    False,
    'Print every key of --config (with the overrides applied) and what it means.',
    flag_values=COMMAND.flags,
)


def verify(workdir: str) -> int:
  """One line per checkpoint of ``workdir`` (``checkpoints/`` and ``best*/``)."""
  from osgan_jax.training import checkpoint  # lazy: --help loads no JAX

  folders = [os.path.join(workdir, 'checkpoints'), *sorted(glob.glob(f'{workdir}/best*'))]
  bad, seen = 0, 0
  for folder in filter(os.path.isdir, folders):
    for step, problem in checkpoint.verify(folder):
      seen += 1
      bad += problem is not None and 'not verified' not in problem
      print(f'{os.path.relpath(folder, workdir)}/{step}: {problem or "ok"}')
  if not seen:
    raise cli.CommandError(f'no checkpoint in {workdir}')
  return 1 if bad else 0


def main(args) -> int:
  del args
  if _VERIFY.value:
    if not _WORKDIR.value:
      raise cli.CommandError('--verify needs --workdir', 2)
    return verify(_WORKDIR.value)
  if _CONFIG.value is None:
    raise cli.CommandError('--config is required (--help lists the flags)', 2)
  config = _CONFIG.value
  try:
    config.get('stage')  # config_flags defers a config file's load error to first use
  except OSError as e:
    raise cli.CommandError(cli.one_line(e), 2) from None
  from osgan_jax import config as config_lib  # here: --help and flag errors load no JAX

  if _HELPCONFIG.value:
    print(config_lib.describe(config))
    return 0
  if not _WORKDIR.value:
    raise cli.CommandError('--workdir is required (--help lists the flags)', 2)
  cli.quiet_logs()
  name = config_flags.get_config_filename(COMMAND.flags['config'])
  logging.info('Training %s in %s (a line per setup stage follows)', name, _WORKDIR.value)
  from osgan_jax.training import host_memory

  tune = _TUNE_MALLOC.value
  if tune == 'on' or (tune == 'auto' and host_memory.cpu_only()):  # before JAX starts
    host_memory.keep_freed_memory()
  from osgan_jax import data, train
  from osgan_jax.training import checkpoint, compile_cache, guards, workdir

  logging.info('Compilation cache: %s', compile_cache.enable(_CACHE.value) or 'off')
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except data.DataError as e:
    raise cli.CommandError(f'data: {cli.one_line(e)}') from None
  except config_lib.ConfigError as e:
    message = cli.one_line(e)  # 'config.x ...' names its key; others get the prefix
    raise cli.CommandError(
        message if message.startswith('config.') else f'config: {message}'
    ) from None
  except (guards.TrainingError, checkpoint.CheckpointError, workdir.WorkdirBusy) as e:
    raise cli.CommandError(cli.one_line(e)) from None
  return 0


def run() -> None:
  sys.exit(COMMAND.run(main))


if __name__ == '__main__':
  run()
