"""Hyperparameter ramps read from ``config.schedule`` (optax-style schedules, see
``osgan_jax.core.schedules``): which hyperparameters are ramped, and their values."""

from __future__ import annotations

from osgan_jax.core.schedules import Value, ramp

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
