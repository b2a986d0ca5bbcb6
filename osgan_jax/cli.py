"""The command-line conventions the ``--config`` commands share: one-line errors."""

from __future__ import annotations

import re
import sys

from absl import flags


def _config_overrides(argv) -> list[str]:
  return [a.split('=', 1)[0][2:] for a in argv if re.match(r'--config\.[\w.]+', a)]


def fail(message: str, status: int, prog: str = 'osgan_jax.main') -> None:
  print(f'{prog}: error: {message}', file=sys.stderr)
  sys.exit(status)


def one_line(error: Exception) -> str:
  return ' '.join(str(error).split())


def parse_flags(argv, prog: str = 'osgan_jax.main'):
  """absl's parser, with a clear one-line error for an unknown config key (the
  commands that take ``--config`` share it; ``prog`` names the command)."""
  if (
      '--helpconfig' in argv
      and 'workdir' in flags.FLAGS
      and not any(a.startswith('--workdir') for a in argv)
  ):
    argv = [*argv, '--workdir=-']  # main's --helpconfig needs no workdir
  try:
    return flags.FLAGS(argv)
  except OSError as e:  # the config file is missing or failed to load
    fail(one_line(e), 2, prog)
  except flags.Error as e:
    fail(f'{e}\nPass --helpshort to see the flags.', 2, prog)
  except (AttributeError, KeyError) as e:
    # ml_collections: a locked ConfigDict has no such field. The message is the quoted
    # key name, possibly followed by a "Did you mean" line.
    cause = e
    while (
        isinstance(cause, BaseException) and cause.args
    ):  # AttributeError(KeyError(msg))
      cause = cause.args[0]
    text = str(cause)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = lines[0].strip('\'"') if lines else '?'
    hint = ' ' + ' '.join(lines[1:]) if len(lines) > 1 else ''
    culprits = [
        o
        for o in _config_overrides(argv)
        if o.split('.')[-1] == key or f'.{key}.' in f'{o}.'
    ]
    where = f' in --{culprits[0]}' if culprits else ''
    fail(
        f'unknown config key {key!r}{where}: the config file defines no such key '
        f'(the config is locked; --helpconfig lists them).{hint}',
        2,
        prog,
    )
