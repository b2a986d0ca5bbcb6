"""Trains a GAN: ``python -m osgan_jax.main --config=configs/NAME.py --workdir=DIR``.

``config.task`` (absent: ``'gan'``) picks the task of the one loop: ``'teacher'`` and
``'dfad'`` are data-free distillation's two tasks (``osgan_jax.tasks.dfad``).

Any config key can be overridden on the command line, e.g.
``--config.stage=two --config.batch_size=64 --config.data.path=/data/celeba``. The
config is locked: a key that the config file does not define is an error. Rerunning
the same command resumes from the latest checkpoint in ``--workdir``. SIGTERM/SIGINT
save a checkpoint at the next step boundary and exit with status 0.

Data and config errors, a diverged run (non-finite parameters or losses), unusable
checkpoints and a workdir that cannot be written are reported as one line and exit
with status 1.
"""

from __future__ import annotations

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from osgan_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Training config file (configs/*.py); override keys with ' '--config.KEY=VALUE.',
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    'Directory for checkpoints, metrics, ' 'TensorBoard events and samples.',
)
_TUNE_MALLOC = flags.DEFINE_enum(
    'tune_malloc',
    'auto',
    ['auto', 'on', 'off'],
    'Keep freed host memory mapped '
    '(glibc mallopt, before JAX starts) so that XLA:CPU steps do not page-fault their '
    'buffers afresh every step. auto: when JAX runs on the CPU only; see '
    'osgan_jax/training/host_memory.py.',
)
_HELPCONFIG = flags.DEFINE_bool(
    'helpconfig',
    False,
    'Print every key of --config (with the overrides applied) and '
    'what it means, then exit.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def print_config_help(config) -> None:
  """Every key with its value, then what the keys mean (``config_base``'s docs)."""
  from osgan_jax import config as config_lib

  def walk(node, prefix=''):
    for key in sorted(node.keys()):
      value = node[key]
      if hasattr(value, 'keys'):
        walk(value, f'{prefix}{key}.')
      else:
        print(f'  --config.{prefix}{key}={value!r}')

  print('Keys of this config (override any as --config.KEY=VALUE):')
  walk(config)
  doc = config_lib.__doc__
  print('\nWhat they mean (osgan_jax/config/__init__.py):\n' + doc[doc.index('Keys') :])


def _quiet_orbax(record) -> bool:
  """Drops orbax's per-save INFO chatter (dozens of lines per checkpoint)."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  config = _CONFIG.value
  try:
    config.get('stage')  # config_flags defers a config file's load error to first use
  except OSError as e:
    cli.fail(cli.one_line(e), 2)
  if _HELPCONFIG.value:
    print_config_help(config)
    return
  from osgan_jax.training import host_memory

  if _TUNE_MALLOC.value == 'on' or (
      _TUNE_MALLOC.value == 'auto' and host_memory.cpu_only()
  ):
    host_memory.keep_freed_memory()
  # Imported here so that flag errors are reported without loading JAX.
  from osgan_jax.training import checkpoint
  from osgan_jax import data
  from osgan_jax.training import loop
  from osgan_jax import train
  from osgan_jax.config import ConfigError

  # The config goes to workdir/config.json (and TensorBoard), not to the terminal.
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except data.DataError as e:
    cli.fail(f'data: {e}', 1)
  except ConfigError as e:
    cli.fail(f'config: {e}', 1)
  except (loop.TrainingError, checkpoint.CheckpointError) as e:
    cli.fail(cli.one_line(e), 1)


def run():
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
