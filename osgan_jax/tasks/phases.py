"""StyleGAN2's phases after the main step, as the official loop lists them: lazy path
length ('Greg'), lazy R1 ('Dreg') and G's EMA, each from plain values."""

from __future__ import annotations

import dataclasses
import functools
import jax
import jax.numpy as jnp

from osgan_jax import models
from osgan_jax.config import ConfigError
from osgan_jax.core import regularizers
from osgan_jax.core import schedules
from osgan_jax.core import steps
from osgan_jax.training import loop


@dataclasses.dataclass(frozen=True)
class Regularizers:
  """``config.reg`` and ``config.ema`` (the EMA half-life may be a ramp)."""

  batch_size: int
  r1_gamma: float = 0.0
  r1_interval: int = 16
  pl_weight: float = 0.0
  pl_interval: int = 4
  pl_decay: float = 0.01
  pl_batch_shrink: int = 2
  ema_half_life_kimg: schedules.Value = 0.0
  ema_rampup: float = 0.0
  use_ema: bool = False


def _path_length(gan: steps.GAN, generator, r: Regularizers, conditional: bool):
  def map_fn(params, model_state, z, rng):
    z, labels = (z['z'], z['label']) if conditional else (z, None)
    return models.apply(
        generator, params, model_state, z, labels, True, rng, method='map'
    )

  def synthesize_fn(params, model_state, ws, rng):
    variables, rngs = {'params': params, **model_state}, models.rngs(generator, rng)
    return generator.apply(variables, ws, method='synthesize', rngs=rngs)

  pl = functools.partial(
      regularizers.path_length_step,
      gan,
      map_fn,
      synthesize_fn,
      batch_size=r.batch_size,
      pl_weight=r.pl_weight,
      interval=r.pl_interval,
      pl_batch_shrink=r.pl_batch_shrink,
      pl_decay=r.pl_decay,
      map_has_aux=True,
  )
  return loop.Phase(
      'pl',
      lambda state, batch, rng, i: pl(state, jax.random.fold_in(rng, 1)),
      r.pl_interval,
  )


def _r1(gan: steps.GAN, r: Regularizers):
  r1 = functools.partial(
      regularizers.r1_step, gan, r1_gamma=r.r1_gamma, interval=r.r1_interval
  )
  return loop.Phase(
      'r1',
      lambda state, batch, rng, i: r1(state, batch, jax.random.fold_in(rng, 2)),
      r.r1_interval,
  )


def _ema(r: Regularizers):
  half_life = r.ema_half_life_kimg
  rampup = r.ema_rampup or None

  def ema(state, batch, rng, i):
    del batch, rng
    return regularizers.ema_step(
        state,
        i.astype(jnp.float32) * r.batch_size,
        batch_size=r.batch_size,
        rampup=rampup,
        half_life_kimg=half_life(i) if callable(half_life) else half_life,
    )

  return loop.Phase('ema', ema)


def regularizer_phases(
    gan: steps.GAN, generator, r: Regularizers, conditional: bool, model_name: str
) -> list:
  """The phases ``r`` asks for, in the official order: path length, R1, EMA."""
  phases = []
  if r.pl_weight > 0:
    if not (hasattr(generator, 'map') and hasattr(generator, 'synthesize')):
      raise ConfigError(
          f'config.reg.pl_weight={r.pl_weight} needs a generator with map and synthesize '
          f'methods (StyleGAN2); {model_name!r} has none'
      )
    phases.append(_path_length(gan, generator, r, conditional))
  if r.r1_gamma > 0:
    phases.append(_r1(gan, r))
  if r.use_ema:
    phases.append(_ema(r))
  return phases
