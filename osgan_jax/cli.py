"""How every command reads its flags (absl flags of its own; ``--help`` exits 0) and
reports errors: ``<command>: error: <message>`` on stderr, exit status 1 (2: usage)."""

from __future__ import annotations

import re
import sys
from typing import Callable, Sequence

from absl import flags
from absl import logging

from osgan_jax.config import base
from osgan_jax.config import keys

HELP_FLAGS = ('--help', '-h', '--helpshort', '--helpfull', '-?')
USAGE_STATUS = 2


class CommandError(Exception):
  """A problem a command reports in one line (exit status ``status``)."""

  def __init__(self, message: str, status: int = 1):
    super().__init__(message)
    self.status = status


def one_line(error: BaseException) -> str:
  return ' '.join(str(error).split())


def _unknown_config_key(error: BaseException, argv) -> str:
  """ml_collections' locked-config error as one line naming the key and the flag."""
  cause = error
  while isinstance(cause, BaseException) and cause.args:  # AttributeError(KeyError(msg))
    cause = cause.args[0]
  lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
  key = lines[0].strip('\'"') if lines else '?'
  hint = ' ' + ' '.join(lines[1:]) if len(lines) > 1 else ''
  overrides = [a.split('=', 1)[0][2:] for a in argv if re.match(r'--config\.[\w.]+', a)]
  culprits = [o for o in overrides if o.split('.')[-1] == key or f'.{key}.' in f'{o}.']
  where = f' in --{culprits[0]}' if culprits else ''
  moved = next((o for o in culprits if o.split('.')[1] in keys.RENAMED), None)
  if moved:
    old = moved.split('.', 1)[1]
    new = keys.RENAMED[old.split('.')[0]] + old[len(old.split('.')[0]) :]
    hint += f' It moved: --config.{new}'
  return (
      f'unknown config key {key!r}{where}: the config file defines no such key (the '
      f'config is locked; --helpconfig lists them).{hint}'
  )


class _HelpShown(Exception):
  pass


class Command:
  """A command line: ``flags`` to define its flags on, ``run`` to parse and call."""

  def __init__(self, prog: str, usage: str):
    self.prog, self.usage = prog, usage
    self.flags = flags.FlagValues()
    verbosity = dict(short_name='v', flag_values=self.flags)
    flags.DEFINE_integer('verbosity', 0, 'log detail: 1 adds DEBUG lines', **verbosity)

  def report(self, message: str, status: int = 1) -> int:
    print(f'{self.prog}: error: {message}', file=sys.stderr)
    return status

  def help_text(self) -> str:
    return f'{self.usage.strip()}\n\nflags:\n{self.flags.get_help()}\n'

  def parse(self, argv: Sequence[str]) -> list[str]:
    """Parses ``argv[1:]``'s flags; returns the other arguments."""
    argv = list(argv)
    if any(a in HELP_FLAGS for a in argv[1:]):
      sys.stdout.write(self.help_text())
      raise _HelpShown
    self.flags.unparse_flags()
    path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    if path and 'config' in self.flags:
      try:  # a config file that cannot be loaded, in one line naming why
        base.get_config_of(path)
      except (OSError, base.ConfigError) as e:
        raise CommandError(one_line(e), USAGE_STATUS) from None
    try:
      return self.flags(argv)
    except OSError as e:  # a config file that is missing or fails to load
      raise CommandError(one_line(e), USAGE_STATUS) from None
    except flags.Error as e:
      raise CommandError(
          f'{one_line(e)} (--help lists the flags)', USAGE_STATUS
      ) from None
    except (AttributeError, KeyError) as e:  # a locked config has no such key
      raise CommandError(_unknown_config_key(e, argv), USAGE_STATUS) from None

  def run(
      self,
      body: Callable[[list[str]], 'int | None'],
      argv: Sequence[str] | None = None,
      errors: tuple = (),
      max_args: int | None = 0,
  ) -> int:
    """Parses ``argv`` (default ``sys.argv[1:]``) and calls ``body(args)``;
    ``CommandError`` and ``errors`` become one line. Returns the exit status."""
    argv = [self.prog, *(sys.argv[1:] if argv is None else argv)]
    try:
      args = self.parse(argv)[1:]
      if max_args is not None and len(args) > max_args:
        raise CommandError(
            f'unexpected arguments: {" ".join(args)} (--help lists the flags)',
            USAGE_STATUS,
        )
      flags.FLAGS.mark_as_parsed()  # absl logging reads its defaults from here
      if self.flags.verbosity > 0:
        logging.set_verbosity(logging.DEBUG)
      return body(args) or 0
    except _HelpShown:
      return 0
    except CommandError as e:
      return self.report(one_line(e), e.status)
    except errors as e:
      return self.report(one_line(e), 1)


def quiet_logs() -> None:
  """absl's handler at INFO for the project's lines, without other libraries' chatter
  (orbax's per-save lines, JAX's TPU probe)."""
  logging.use_absl_handler()
  logging.set_verbosity(max(logging.get_verbosity(), logging.INFO))  # -v=1: DEBUG too
  handler = logging.get_absl_handler()
  handler.addFilter(
      lambda r: r.levelno >= 30
      or '/osgan_jax/' in r.pathname
      or '/experiments/' in r.pathname
  )


def define_generator_flags(flag_values, noise_default: str) -> None:
  """The flags that name a trained generator and how to sample it, shared by
  ``generate`` and ``evaluate``: --workdir, --step, --weights, --trunc, --noise_mode."""
  F = flag_values
  flags.DEFINE_string('workdir', None, 'a training run (its checkpoints/)', flag_values=F)
  flags.DEFINE_string(
      'step',
      'latest',
      "the checkpoint: 'latest', 'best' (the best-FID one, best/) or a step",
      flag_values=F,
  )
  flags.DEFINE_string(
      'weights',
      None,
      'an official StyleGAN2(-ADA) or R3GAN pickle instead',
      flag_values=F,
  )
  flags.DEFINE_float(
      'trunc',
      1.0,
      'truncation psi towards the tracked W average (StyleGAN2)',
      flag_values=F,
  )
  flags.DEFINE_enum(
      'noise_mode',
      None,
      ['const', 'random', 'none'],
      f"StyleGAN2's noise inputs (default {noise_default}); random noise is keyed by the "
      'seed',
      flag_values=F,
  )
