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

KINDS = ('cosine', 'linear')

Value = Union[float, Callable]


def ramp(start: float, final: float, steps: int, kind: str = 'cosine') -> optax.Schedule:
  """``start`` at step 0 to ``final`` at ``steps``, held after; ``kind='cosine'`` is
  R3GAN's ``cosine_decay_with_warmup`` without warm-up, ``'linear'`` a straight line.

  The cosine's progress ``(1 - cos(pi t / T)) / 2`` is computed as ``sin(pi t / 2T)^2``
  (optax's ``cosine_decay_schedule`` form loses float32 digits near the start).
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  start, final, steps = float(start), float(final), int(steps)

  def schedule(count):
    t = jnp.clip(jnp.asarray(count, jnp.float32) / steps, 0.0, 1.0)
    progress = jnp.square(jnp.sin(0.5 * jnp.pi * t)) if kind == 'cosine' else t
    return start + (final - start) * progress

  return schedule


def map_value(fn: Callable, v: Value) -> Value:
  """``fn`` applied to a constant, or composed after a schedule."""
  return (lambda count: fn(v(count))) if callable(v) else fn(v)
