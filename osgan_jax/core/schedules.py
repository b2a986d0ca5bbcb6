"""Hyperparameter ramps over training (``config.schedule``), as optax schedules.

Modern baselines (R3GAN) ramp learning rates, beta2, gamma and the EMA half-life
together; as functions of the step count the jitted steps evaluate them on the device
without recompiling. Semantics: ``docs/api.md``.
"""

from __future__ import annotations

from typing import Callable, Union

import jax.numpy as jnp
import optax

KINDS = ('cosine', 'linear')

Value = Union[float, Callable]


def ramp(start: float, final: float, steps: int, kind: str = 'cosine') -> optax.Schedule:
  """``start`` at step 0 to ``final`` at ``steps``, held after; ``'cosine'`` is R3GAN's
  ``cosine_decay_with_warmup`` without warm-up, as ``sin(pi t / 2T)^2`` (optax's form
  loses float32 digits near the start)."""
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
