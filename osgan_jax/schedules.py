"""Hyperparameter ramps over training (``config.schedule``), as optax schedules.

Modern baselines move several hyperparameters together: R3GAN ramps the learning rate
(2e-4 -> 5e-5), Adam's beta2 (0.9 -> 0.99), the R1/R2 weight gamma (e.g. 0.05 ->
0.005 on CIFAR-10) and G's EMA half-life (0 -> 5000 kimg) over its first 20M images,
each by the same cosine. A ramp starts at the value the rest of the config gives
(``optimizer.g_lr``, ``penalty.r1``, ``ema.half_life_kimg``, ...) and ends at the value
``config.schedule.<name>`` gives (negative: that hyperparameter stays constant). Each
ramp is an optax-style schedule (a function of the step count), so the jitted steps evaluate
it on the device and nothing recompiles.
"""

from __future__ import annotations

from typing import Callable, Union

import jax.numpy as jnp
import optax

from osgan_jax.config_base import ConfigError

KINDS = ('cosine', 'linear')
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

Value = Union[float, Callable]


def ramp(start: float, final: float, steps: int, kind: str = 'cosine') -> optax.Schedule:
  """``start`` at step 0 to ``final`` at ``steps``, held after; ``kind='cosine'`` is
  R3GAN's ``cosine_decay_with_warmup`` without warm-up, ``'linear'`` a straight line.

  The cosine's progress ``(1 - cos(pi t / T)) / 2`` is computed as ``sin(pi t / 2T)^2``
  (optax's ``cosine_decay_schedule`` form loses float32 digits near the start).
  """
  if kind not in KINDS:
    raise ConfigError(f'config.schedule.kind must be one of {KINDS}, got {kind!r}')
  start, final, steps = float(start), float(final), int(steps)

  def schedule(count):
    t = jnp.clip(jnp.asarray(count, jnp.float32) / steps, 0.0, 1.0)
    progress = jnp.square(jnp.sin(0.5 * jnp.pi * t)) if kind == 'cosine' else t
    return start + (final - start) * progress

  return schedule


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


def map_value(fn: Callable, v: Value) -> Value:
  """``fn`` applied to a constant, or composed after a schedule."""
  return (lambda count: fn(v(count))) if callable(v) else fn(v)


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
