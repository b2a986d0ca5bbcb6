"""StyleGAN2's whole training iteration as the loop runs it, one- vs two-stage.

The main step alone leaves out what a StyleGAN2 run also pays: lazy path length (every
4 iterations), lazy R1 (every 16) and G's EMA (every iteration). Here the phases come
from the library (``osgan_jax.tasks.phases.regularizer_phases`` with
``osgan_jax.tasks.gan.regularizers``, the main phase as ``osgan_jax.tasks.gan.build``
makes it), are jitted as the loop jits them, and a timed call runs whole 16-iteration
cycles, so every phase runs as often as in training; rates are images per second.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import numpy as np

from experiments import common
from experiments import flops as flops_lib
from experiments import rows as rows_lib
from osgan_jax import data as data_lib
from osgan_jax.core import steps
from osgan_jax.tasks import gan as gan_lib
from osgan_jax.tasks import phases as phases_lib
from osgan_jax.training import loop

STAGES = {'one_stage': 'one', 'two_stage': 'two'}


def phases(config, stage: str, gan, generator) -> list:
  """The loop's phases of a GAN config: the main step of ``stage``, then the
  regularisers and EMA the config asks for (``loop.Phase`` s)."""
  main = functools.partial(steps.STEPS[stage], gan)
  later = phases_lib.regularizer_phases(
      gan,
      generator,
      gan_lib.regularizers(config),
      config.num_classes > 0,
      config.model.name,
  )
  return [loop.Phase('main', lambda s, b, rng, i: main(s, b, rng)), *later]


def jitted(phase: loop.Phase):
  """A phase as the loop jits it: ``(state, batch, key, i)``, the state donated."""

  def run_phase(state, batch, key, i):
    return phase.fn(state, data_lib.to_float(batch), jax.random.fold_in(key, i), i)

  return steps.jit_state_step(run_phase)


def cycle_length(phase_list) -> int:
  """Iterations after which every phase has run its share (the intervals' lcm)."""
  return math.lcm(*(p.interval for p in phase_list))


def build(spec: common.RowSpec, overrides: dict | None = None):
  """``(config, init, batch, {variant: [(Phase, jitted)]}, per_sample)``."""
  config, gan, init, batch = rows_lib.build(spec, overrides=overrides)
  generator, _ = gan_lib.create_models(config)
  state = init(jax.random.PRNGKey(0))
  gan = steps.probe_per_sample(gan, state, None)  # as the GAN task does
  del state
  programs = {
      v: [(p, jitted(p)) for p in phases(config, stage, gan, generator)]
      for v, stage in STAGES.items()
  }
  return config, init, batch, programs, bool(gan.per_sample)


def _flops(program, state, batch) -> float:
  """Dots and convolutions of one phase's call (cheapest branches)."""
  key, i = jax.random.PRNGKey(1), np.int32(0)
  return flops_lib.analytic_flops(program, state, batch, key, i).flops


def measure(
    name: str,
    spec: common.RowSpec,
    *,
    rounds: int,
    cycles: int = 1,
    overrides: dict | None = None,
    peaks: dict | None = None,
    log=common.log,
) -> list:
  """One row per stage: ``cycles`` whole cycles per timed call, interleaved, with the
  phases' intervals, FLOPs per iteration (each phase weighted by how often it runs)
  and images per second."""
  t0 = time.perf_counter()
  config, init, batch, programs, per_sample = build(spec, overrides)
  length = max(cycle_length([p for p, _ in prog]) for prog in programs.values())
  key = np.asarray(jax.random.PRNGKey(1))
  states = {v: init(jax.random.PRNGKey(0)) for v in programs}
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), states['one_stage']
  )
  flops = {
      v: sum(_flops(fn, abstract, batch) * length // p.interval for p, fn in prog)
      / length
      for v, prog in programs.items()
  }
  counter = {v: 0 for v in programs}

  def runner(v):
    def run():
      for _ in range(cycles * length):
        i = counter[v]
        for phase, fn in programs[v]:
          if i % phase.interval == 0:
            states[v], m = fn(states[v], batch, key, np.int32(i))
        counter[v] = i + 1
      jax.block_until_ready(states[v])

    return run

  fns = {v: runner(v) for v in programs}
  first = {}
  for v, fn in fns.items():  # compiles every phase
    t1 = time.perf_counter()
    fn()
    first[v] = round(time.perf_counter() - t1, 2)
  times = common.run_interleaved(fns, rounds, warmup=0)
  iterations = cycles * length
  timing = common.ratio_summary(times, 'one_stage', iterations, prefix='one_stage')
  rows = []
  for v, prog in programs.items():
    row = {
        'model': name,
        'variant': v,
        'mode': 'timed_iteration',
        'config': spec.config,
        'overrides': {**spec.overrides, **(overrides or {})},
        'batch': int(config.batch_size),
        'resolution': int(config.data.resolution),
        'per_sample_d': per_sample,
        'phases': [{'name': p.name, 'interval': p.interval} for p, _ in prog],
        'iterations_per_call': iterations,
        'flops': flops[v],
        'flops_note': 'per iteration, each phase weighted by its interval',
        'first_call_s': first[v],
        **timing[v],
    }
    row['images_per_s'] = row['batch'] / (row['step_ms_median'] / 1e3)
    row.update(flops_lib.peak_fields(row, row['step_ms_median'] / 1e3, peaks))
    rows.append(row)
  log(
      f'  {name}: '
      + ', '.join(f'{r["variant"]} {r["images_per_s"]:.4g} images/s' for r in rows)
      + f' ({time.perf_counter() - t0:.0f} s)'
  )
  return rows
