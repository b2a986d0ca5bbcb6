"""Parameter tables of the networks ``osgan_jax.main`` trains with a config, with no real
memory: ``python -m osgan_jax.summary --config=configs/NAME.py [--verbose]``; the last
line is one JSON object of the totals (``docs/models.md``)."""

from __future__ import annotations

import sys
from typing import Dict, Optional

from absl import flags
from ml_collections import config_flags

from osgan_jax import cli

COMMAND = cli.Command(
    'osgan_jax.summary',
    'python -m osgan_jax.summary --config=configs/NAME.py [--verbose]',
)
_CONFIG = config_flags.DEFINE_config_file(
    'config',
    None,
    'Training config file (configs/*.py); override keys with --config.KEY=VALUE.',
    lock_config=True,
    flag_values=COMMAND.flags,
)
_BATCH = flags.DEFINE_integer(
    'batch_size',
    4,
    'Batch of the traced forward passes (only the printed output shapes depend on it).',
    flag_values=COMMAND.flags,
)
_G_DEPTH = flags.DEFINE_integer(
    'g_depth',
    None,
    'Module depth of the G rows (default: 2 if G has mapping/synthesis, else 1).',
    flag_values=COMMAND.flags,
)
_D_DEPTH = flags.DEFINE_integer(
    'd_depth', None, 'Module depth of the D rows.', flag_values=COMMAND.flags
)
_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'List every parameter tensor.', flag_values=COMMAND.flags
)


def summarize_config(
    config,
    batch_size: int = 4,
    g_depth: Optional[int] = None,
    d_depth: Optional[int] = None,
    verbose: bool = False,
    out=None,
) -> Dict[str, int]:
  """``models.summary.summarize`` of the networks ``config`` trains."""
  from osgan_jax.models import summary  # lazy: --help loads no JAX
  from osgan_jax.tasks import gan

  generator, discriminator = gan.create_models(config)
  return summary.summarize(
      generator,
      discriminator,
      batch_size=batch_size,
      g_depth=g_depth,
      d_depth=d_depth,
      verbose=verbose,
      out=out,
      num_classes=int(config.num_classes),
  )


def main(args) -> int:
  del args
  if _CONFIG.value is None:
    raise cli.CommandError('--config is required (--help lists the flags)', 2)
  if _BATCH.value < 1:
    raise cli.CommandError(f'--batch_size must be >= 1, got {_BATCH.value}', 2)
  for name, depth in (('g_depth', _G_DEPTH.value), ('d_depth', _D_DEPTH.value)):
    if depth is not None and depth < 1:
      raise cli.CommandError(f'--{name} must be >= 1, got {depth}', 2)
  from osgan_jax import config as config_lib  # lazy: --help loads no JAX

  config_lib.validate(_CONFIG.value)
  if _CONFIG.value.z_dim == 0 and not _CONFIG.value.num_classes:
    raise config_lib.ConfigError(
        'config.z_dim must be positive: the generator has no input'
    )
  summarize_config(
      _CONFIG.value,
      batch_size=_BATCH.value,
      g_depth=_G_DEPTH.value,
      d_depth=_D_DEPTH.value,
      verbose=_VERBOSE.value,
  )
  return 0


if __name__ == '__main__':
  from osgan_jax.config import ConfigError

  errors = (ConfigError, OSError, ValueError, TypeError)  # what bad keys and sizes raise
  raise SystemExit(COMMAND.run(main, errors=errors))
