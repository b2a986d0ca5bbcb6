"""One- vs two-stage for every registered loss: executed FLOPs at the measured share of
singular samples, and interleaved wall time (``python -m experiments.speed --suite
losses``).

Whether one-stage's exact path runs depends on training: hinge's D coefficient is zero
for every fake it scores below -1, so the step re-runs D on those fakes. So each loss
first trains its config briefly with the library's one-stage step, instrumented to
return the branch each conditional took (``flops.with_branch_indices``); the executed
FLOPs are the mean over those steps of the branches actually taken, and the rows keep
the distribution of ``n_exact`` and the share of steps on each rung of the bucket ladder
(``core.strategies.bucket_ladder``). Both stages then continue from the trained state on
real batches, timed interleaved.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import numpy as np

from experiments import common
from experiments import flops as flops_lib
from osgan_jax import config as config_lib
from osgan_jax import data as data_lib
from osgan_jax.core import losses as losses_lib
from osgan_jax.core import steps
from osgan_jax.core import strategies
from osgan_jax.tasks import gan as gan_lib

CONFIG = 'configs/dcgan_fashion_mnist.py'
# Settings a loss needs to train at all (WGAN without clipping diverges); D stays the
# config's GroupNorm D for every loss.
LOSS_OVERRIDES = {'wgan': {'optimizer.weight_clip': 0.01}}
SKIPPED = {'dfad': 'a data-free game (no real data): not a GAN loss of this config'}


def loss_names() -> list:
  """Every registered loss but those that cannot train a GAN config (``SKIPPED``)."""
  return [n for n in losses_lib.names() if n not in SKIPPED]


def _build(loss: str, overrides: dict):
  config = config_lib.load_config(
      os.path.join(common.REPO, CONFIG),
      {'loss': loss, **LOSS_OVERRIDES.get(loss, {}), **overrides},
  )
  generator, discriminator = gan_lib.create_models(config)
  gan = gan_lib.make_gan(config, generator, discriminator)
  init = jax.jit(gan_lib.make_init(config, gan, generator, discriminator))
  state = init(jax.random.PRNGKey(int(config.seed)))
  return config, steps.probe_per_sample(gan, state, None), state  # as the GAN task


def _program(gan, stage: str):
  """A step as the loop calls it: uint8 batch, key folded with the iteration."""
  step = functools.partial(steps.STEPS[stage], gan)

  def run(state, batch, key, i):
    return step(state, data_lib.to_float(batch), jax.random.fold_in(key, i))

  return run


def train_instrumented(config, gan, state, batches, num_steps: int):
  """``num_steps`` one-stage steps; returns the state, the step's ``Count``, its
  branch table and per step ``n_exact`` and the branch indices taken."""
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 1)
  first = next(batches)
  run, count, table = flops_lib.with_branch_indices(
      _program(gan, 'one'), state, first, key, np.int32(0)
  )
  step = jax.jit(run, donate_argnums=0)
  n_exact, taken = [], []
  batch = first
  for i in range(num_steps):
    (state, metrics), indices = step(state, batch, key, np.int32(i))
    n_exact.append(metrics['n_exact'])
    taken.append(indices)
    batch = next(batches)
  n_exact, taken = jax.device_get((n_exact, taken))
  return state, count, table, np.asarray(n_exact, np.float64), taken


def measure_loss(
    loss: str,
    *,
    train_steps: int,
    rounds: int,
    steps_per_call: int,
    overrides: dict | None = None,
    log=common.log,
) -> list:
  """The two rows (one- and two-stage) of one loss."""
  t0 = time.perf_counter()
  config, gan, state = _build(loss, overrides or {})
  batch_size = int(config.batch_size)
  batches = data_lib.make_iterator(
      config.data, batch_size, seed=int(config.seed), image_dtype='uint8'
  )
  try:
    state, count, table, n_exact, taken = train_instrumented(
        config, gan, state, batches, train_steps
    )
    executed = [flops_lib.executed_flops(count, table, t) for t in taken]
    pool = [jax.device_put(next(batches)) for _ in range(8)]
  finally:
    batches.close()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  two_count = flops_lib.analytic_flops(
      _program(gan, 'two'), abstract, pool[0], jax.random.PRNGKey(0), np.int32(0)
  )
  timing, timed_n = _time(gan, state, pool, rounds, steps_per_call, train_steps)
  branch = np.asarray([t[0] if t else 0 for t in taken]) if table else np.zeros(1)
  # The exact step's branches: none, each rung of the ladder, the whole batch.
  ladder = (
      strategies.bucket_ladder(gan.exact_bucket, batch_size) if gan.per_sample else ()
  )
  rerun = np.asarray((0, *ladder, batch_size)) if table else np.zeros(1)
  if table and len(table[0]) != len(rerun):
    raise RuntimeError(f'the step has {len(table[0])} branches, the ladder {ladder}')
  fractions = np.asarray([np.mean(branch == b) for b in range(len(rerun))])
  timed_n = np.asarray(timed_n, np.float64)
  one = {
      'flops': count.flops,
      'flops_max_branch': count.flops_max_branch,
      'flops_branches': table,
      'flops_executed': float(np.mean(executed)),
      'train_steps': train_steps,
      'n_exact_mean': float(n_exact.mean()),
      'n_exact_max': float(n_exact.max()),
      'n_exact_histogram': _histogram(n_exact, batch_size),
      'exact_step_fraction': float(np.mean(n_exact > 0)),
      'bucket_ladder': list(ladder),
      'rerun_sizes': rerun.tolist(),  # the fakes D re-runs on, by branch
      'branch_fractions': {str(b): float(f) for b, f in enumerate(fractions)},
      'rerun_mean': float(fractions @ rerun),
      'n_exact_timed_mean': float(np.mean(timed_n)),
      'n_exact_timed_histogram': _histogram(timed_n, batch_size),
      'exact_step_fraction_timed': float(np.mean(timed_n > 0)),
  }
  two = {'flops': two_count.flops, 'flops_max_branch': two_count.flops_max_branch}
  two['flops_executed'] = two['flops']
  rows = []
  for variant, fields in (('one_stage', one), ('two_stage', two)):
    row = {
        'model': 'dcgan32',
        'config': CONFIG,
        'loss': loss,
        'variant': variant,
        'batch': batch_size,
        'per_sample_d': bool(gan.per_sample),
        'overrides': {**LOSS_OVERRIDES.get(loss, {}), **(overrides or {})},
        **fields,
        **timing[variant],
        'flop_ratio_executed': fields['flops_executed'] / one['flops_executed'],
    }
    row['images_per_s'] = batch_size / (row['step_ms_median'] / 1e3)
    rows.append(row)
  log(
      f'{loss}: n_exact {one["n_exact_mean"]:.2f}/{batch_size} per step, exact path on '
      f'{100 * one["exact_step_fraction"]:.0f}% of steps; executed GFLOP one '
      f'{one["flops_executed"] / 1e9:.3f}, two {two["flops"] / 1e9:.3f}; two/one time '
      f'{rows[1]["ratio_to_one_stage_median"]:.3f} ({time.perf_counter() - t0:.0f} s)'
  )
  return rows


def _histogram(n_exact, batch: int) -> list:
  """How many steps had 0, 1, ..., ``batch`` singular fakes."""
  return np.bincount(np.asarray(n_exact, np.int64), minlength=batch + 1).tolist()


def _time(gan, state, pool, rounds: int, per_call: int, start: int):
  """Both stages from the trained state on the pooled real batches, interleaved;
  returns the timing summary and the one-stage steps' ``n_exact``."""
  key = jax.random.PRNGKey(2)
  states = {'one_stage': state, 'two_stage': jax.tree.map(lambda x: x.copy(), state)}
  programs = {
      v: jax.jit(_program(gan, s), donate_argnums=0)
      for v, s in (('one_stage', 'one'), ('two_stage', 'two'))
  }
  counter, n_exact = {v: start for v in states}, []

  def runner(v):
    def run():
      for _ in range(per_call):
        i = counter[v]
        states[v], m = programs[v](states[v], pool[i % len(pool)], key, np.int32(i))
        counter[v] = i + 1
        if v == 'one_stage':
          n_exact.append(m['n_exact'])
      jax.block_until_ready(states[v])

    return run

  fns = {v: runner(v) for v in states}
  times = common.run_interleaved(fns, rounds, warmup=1)
  timed = jax.device_get(n_exact[per_call:])  # the warm-up call's steps left out
  summary = common.ratio_summary(times, 'one_stage', per_call, prefix='one_stage')
  ratios = np.asarray(times['two_stage']) / np.asarray(times['one_stage'])
  for variant, values in (('two_stage', ratios), ('one_stage', np.ones_like(ratios))):
    q25, q75 = np.percentile(values, [25, 75])
    summary[variant].update(ratio_to_one_stage_q25=q25, ratio_to_one_stage_q75=q75)
  return summary, timed


def table(rows) -> str:
  """The per-loss table: executed FLOPs at the measured exact share, and time."""
  head = (
      'loss',
      'steps on the exact path',
      'D re-run on (fakes: share of steps)',
      'n_exact per step',
      'one-stage GFLOP executed',
      'two-stage GFLOP',
      'FLOPs two/one',
      'one-stage ms',
      'two-stage ms',
      'time two/one, median [quartiles] (min-max)',
  )
  by = {(r['loss'], r['variant']): r for r in rows}
  lines = []
  for loss in dict.fromkeys(r['loss'] for r in rows):
    one, two = by[(loss, 'one_stage')], by[(loss, 'two_stage')]
    sizes = one.get('rerun_sizes', [])
    rungs = [
        f'{size}: {100 * one["branch_fractions"][str(b)]:.0f}%'
        for b, size in enumerate(sizes)
        if size and one['branch_fractions'][str(b)]
    ]
    quartiles = (
        f' [{two["ratio_to_one_stage_q25"]:.2f}, {two["ratio_to_one_stage_q75"]:.2f}]'
        if 'ratio_to_one_stage_q25' in two
        else ''
    )
    lines.append(
        (
            loss,
            f'{100 * one["exact_step_fraction"]:.0f}%',
            ', '.join(rungs) or '-',
            f'{one["n_exact_mean"]:.1f} of {one["batch"]}',
            f'{one["flops_executed"] / 1e9:.3f}',
            f'{two["flops_executed"] / 1e9:.3f}',
            f'{two["flop_ratio_executed"]:.3f}',
            f'{one["step_ms_median"]:.1f}',
            f'{two["step_ms_median"]:.1f}',
            f'{two["ratio_to_one_stage_median"]:.3f}{quartiles} '
            f'({two["ratio_to_one_stage_min"]:.2f}-{two["ratio_to_one_stage_max"]:.2f})',
        )
    )
  return common.markdown_table(head, lines)
