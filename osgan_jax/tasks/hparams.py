"""Hyperparameter ramps read from ``config.schedule`` (optax-style schedules, see
``osgan_jax.core.schedules``): which hyperparameters are ramped, and their values."""

from __future__ import annotations

from osgan_jax.config import ConfigError
from osgan_jax.core.schedules import KINDS, Value, ramp

# schedule key -> (config section, key): where the ramp's starting value lives.
STARTS = {
    'g_lr': ('optimizer', 'g_lr'),
    'd_lr': ('optimizer', 'd_lr'),
    'b2': ('optimizer', 'b2'),
    'r1': ('penalty', 'r1'),
    'r2': ('penalty', 'r2'),
    'gp': ('penalty', 'gp'),
    'ema_half_life_kimg': ('ema', 'half_life_kimg'),
}


def is_scheduled(config, name: str) -> bool:
  return int(config.schedule.steps) > 0 and float(config.schedule[name]) >= 0


def value(config, name: str) -> Value:
  """Hyperparameter ``name`` (a key of ``STARTS``): a float, or an optax schedule."""
  section, key = STARTS[name]
  start = float(config[section][key])
  if not is_scheduled(config, name):
    return start
  s = config.schedule
  return ramp(start, float(s[name]), int(s.steps), s.kind)


def final(config, name: str) -> float:
  """The value ``name`` ends at (its constant value when it is not scheduled)."""
  section, key = STARTS[name]
  return float(
      config.schedule[name] if is_scheduled(config, name) else config[section][key]
  )


def active(config, name: str) -> bool:
  """Whether ``name`` is ever non-zero (a penalty or the EMA is computed at all)."""
  section, key = STARTS[name]
  return float(config[section][key]) > 0 or final(config, name) > 0


def validate(config) -> None:
  """One-line errors for ``config.schedule``."""
  s = config.schedule
  if s.kind not in KINDS:
    raise ConfigError(f'config.schedule.kind must be one of {KINDS}, got {s.kind!r}')
  if int(s.steps) < 0:
    raise ConfigError(f'config.schedule.steps must be >= 0, got {s.steps}')
  ramped = [n for n in STARTS if float(s[n]) >= 0]
  if ramped and int(s.steps) == 0:
    raise ConfigError(
        f'config.schedule.{ramped[0]} is set but config.schedule.steps is '
        f'0; give the ramp length in steps'
    )
  if is_scheduled(config, 'b2') and not float(s.b2) < 1:
    raise ConfigError(f'config.schedule.b2 must be in [0, 1), got {s.b2}')
  for n in ('g_lr', 'd_lr'):
    if is_scheduled(config, n) and not float(s[n]) > 0:
      raise ConfigError(f'config.schedule.{n} must be > 0, got {s[n]}')
