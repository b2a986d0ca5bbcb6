"""Benchmark rows built as training builds them, compiled, counted and timed.

A row is a config file plus overrides (``common.RowSpec``); each variant is one of the
library's steps (``osgan_jax.core.steps``) on a synthetic batch, so a benchmark measures
the program a training run executes. Every script that times steps (``speed``,
``device``, ``loop_throughput``) builds them here. The fresh-process compile child runs
as ``python -m experiments.rows --fresh-compile-child PAYLOAD``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments import flops as flops_lib
from osgan_jax import config as config_lib
from osgan_jax.core import steps
from osgan_jax.tasks import gan as gan_lib

# variant -> (stage of steps.STEPS, one-stage mode or None). The algorithms:
# one_stage: one forward and one backward (exact; singular samples re-run D's forward
# and an input backward inside a lax.cond); two_stage: D step on real and fake, then a
# G step on a fresh z (a second G forward) against the updated D, D's parameter
# gradients not computed; official_two_stage: the same with D's parameter gradients
# computed in the G step, as the official OSGAN script does; one_stage_approx: the
# paper's approximate step (no exact path).
VARIANTS = {
    'one_stage': ('one', None),
    'two_stage': ('two', None),
    'official_two_stage': ('official_two', None),
    'one_stage_approx': ('one', 'approx'),
}
ALGORITHMS = {
    'one_stage': 'one forward, one backward; singular samples re-run D in a lax.cond',
    'two_stage': 'D step, then a G step on a fresh z (a second G forward), no D grads',
    'official_two_stage': 'as two_stage, D parameter gradients computed in the G step',
    'one_stage_approx': "the paper's approximate one-stage step (no exact path)",
}
BASELINE = 'one_stage'
_CHILD_FLAG = '--fresh-compile-child'
_CHILD_PREFIX = 'FRESH_COMPILE_RESULT '


def build(spec: common.RowSpec, *, overrides: dict | None = None, extra=None, seed=0):
  """``(config, gan, init, batch)`` of a row as the training loop builds them, with a
  synthetic batch. ``extra``: keys set with the config unlocked (model fields the
  config does not define, e.g. ``model.generator.conv_impl``)."""
  config = config_lib.load_config(
      os.path.join(common.REPO, spec.config), {**spec.overrides, **(overrides or {})}
  )
  if extra:
    with config.unlocked():
      for key, value in extra.items():
        *parents, leaf = key.split('.')
        node = config
        for part in parents:
          node = node[part]
        node[leaf] = value
  generator, discriminator = gan_lib.create_models(config)
  gan = gan_lib.make_gan(config, generator, discriminator)
  init = jax.jit(gan_lib.make_init(config, gan, generator, discriminator))
  res, ch = int(config.data.resolution), int(config.data.channels)
  key, bs = jax.random.PRNGKey(seed), int(config.batch_size)
  batch = {
      'image': jax.random.uniform(
          jax.random.fold_in(key, 1), (bs, res, res, ch), jnp.float32, -1.0, 1.0
      )
  }
  if int(config.num_classes) > 0:
    batch['label'] = jax.random.randint(
        jax.random.fold_in(key, 2), (bs,), 0, int(config.num_classes), jnp.int32
    )
  return config, gan, init, batch


def prepare(spec, *, overrides=None, extra=None, per_sample=None, times=None):
  """``(config, gan, init, batch, abstract_state)``: the row built, D's coupling
  probed (or taken from ``per_sample``: then nothing runs) and the state's shapes.
  ``times`` receives the one-off work a run pays before its first step: ``build_s``,
  ``init_s`` (the initialiser compiled and run), ``probe_s`` (D's coupling probe)."""
  times = {} if times is None else times
  t0 = time.perf_counter()
  config, gan, init, batch = build(spec, overrides=overrides, extra=extra)
  times['build_s'] = round(time.perf_counter() - t0, 3)
  if per_sample is not None:
    gan = dataclasses.replace(gan, per_sample=bool(per_sample))
    state = jax.eval_shape(init, jax.random.PRNGKey(0))
  else:
    t0 = time.perf_counter()
    state = jax.block_until_ready(init(jax.random.PRNGKey(0)))
    t1 = time.perf_counter()
    probe = {k: v[: max(2, min(4, v.shape[0]))] for k, v in batch.items()}
    gan = steps.probe_per_sample(gan, state, probe)
    times.update(init_s=round(t1 - t0, 3), probe_s=round(time.perf_counter() - t1, 3))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return config, gan, init, batch, abstract


def variant_step(gan, variant: str):
  """``(jitted step, plain step function)`` of a variant (``VARIANTS``)."""
  stage, mode = VARIANTS[variant]
  variant_gan = gan if mode is None else dataclasses.replace(gan, mode=mode)
  return (
      steps.jit_step(variant_gan, stage),
      functools.partial(steps.STEPS[stage], variant_gan),
  )


def variant_flops(spec, variants: Sequence[str], *, extra=None, cpu=False) -> list:
  """The analytic FLOP counts of ``variants`` (and XLA:CPU's with ``cpu``) without
  compiling for this backend."""
  config, gan, _, batch, abstract = prepare(spec, extra=extra)
  rng = jax.random.PRNGKey(1)
  rows = []
  for variant in variants:
    jitted, fn = variant_step(gan, variant)
    row = {
        'config': spec.config,
        'overrides': spec.overrides,
        'extra': extra or {},
        'variant': variant,
        'batch': int(config.batch_size),
        **flops_lib.analytic_flops(jitted, abstract, batch, rng).as_dict(),
    }
    if cpu:
      xla = flops_lib.cpu_lowering_flops(fn, abstract, batch, rng, donate_argnums=0)
      row.update(
          flops_xla_cpu=xla['flops'],
          xla_cpu_over_xla_convention=xla['flops'] / row['flops_xla_convention'],
      )
    rows.append(row)
  return rows


# ------------------------------------------------------------------ XLA and the process


def xla_cost(compiled) -> dict:
  """``{'flops', 'bytes_accessed'}``: XLA's cost analysis of a compiled executable."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {
      'flops': float(cost.get('flops', 0.0)),
      'bytes_accessed': float(cost.get('bytes accessed', 0.0)),
  }


def xla_memory(compiled) -> dict:
  """Bytes of a compiled step. ``peak_bytes`` is bounded as XLA's buffer assignment lays
  it out (arguments, outputs not aliased to donated arguments, temporaries): the CPU
  backend's own ``peak_memory_in_bytes`` is only the arguments' size."""
  m = compiled.memory_analysis()
  if m is None:
    return {'peak_bytes': None}
  args, outs = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  alias, temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
  return {
      'peak_bytes': args + outs - alias + temp,
      'argument_bytes': args,
      'output_bytes': outs,
      'alias_bytes': alias,
      'temp_bytes': temp,
      'xla_peak_memory_in_bytes': int(getattr(m, 'peak_memory_in_bytes', 0) or 0),
  }


def peak_rss_reset() -> bool:
  """Resets the kernel's peak-RSS mark of this process (Linux); False if unsupported."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes():
  try:
    with open('/proc/self/status') as f:
      line = next(l for l in f if l.startswith('VmHWM:'))
    return int(line.split()[1]) * 1024
  except (OSError, StopIteration):
    return None


# ------------------------------------------------------------------ fresh-process compiles


def fresh_compile_child(payload: dict) -> dict:
  """In a fresh process: build the row, then trace, lower and compile one variant."""
  t_start = time.perf_counter()
  spec = common.RowSpec(payload['config'], payload['overrides'])
  _, gan, _, batch, abstract = prepare(
      spec, extra=payload.get('extra'), per_sample=payload.get('per_sample')
  )
  jitted, _ = variant_step(gan, payload['variant'])
  t0 = time.perf_counter()
  lowered = jitted.trace(abstract, batch, jax.random.PRNGKey(1)).lower()
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return {
      'setup_s': t0 - t_start,
      'trace_lower_s': t1 - t0,
      'compile_s': t2 - t1,
      'backend': jax.default_backend(),
  }


def fresh_compile(
    spec, variant, *, overrides=None, extra=None, per_sample=None, env=None
):
  """Compiles one variant in a fresh Python process (its first compilation); returns
  its times and ``process_s``, the process's whole wall time."""
  payload = {
      'config': spec.config,
      'overrides': {**spec.overrides, **(overrides or {})},
      'variant': variant,
      'extra': extra or {},
      'per_sample': per_sample,
  }
  t0 = time.perf_counter()
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.rows', _CHILD_FLAG, json.dumps(payload)],
      cwd=common.REPO,
      capture_output=True,
      text=True,
      timeout=600,
      env={**os.environ, **(env or {})},
  )
  for line in result.stdout.splitlines():
    if line.startswith(_CHILD_PREFIX):
      out = json.loads(line[len(_CHILD_PREFIX) :])
      return {**out, 'process_s': time.perf_counter() - t0}
  raise RuntimeError(
      f'fresh compile of {variant} failed (exit {result.returncode}): '
      f'{result.stderr[-2000:]}'
  )


def use_compile_cache(path: str) -> dict:
  """Points this process's and its children's persistent compilation cache at
  ``path`` (executables only, no autotuning results, so a child's compile stays a
  fresh one); returns the children's environment. A child's executable then reaches
  this process through the cache instead of being compiled twice."""
  env = {
      'JAX_COMPILATION_CACHE_DIR': path,
      'JAX_ENABLE_COMPILATION_CACHE': 'true',
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  }
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  if hasattr(jax.config, 'jax_persistent_cache_enable_xla_caches'):
    env['JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES'] = 'none'
    jax.config.update('jax_persistent_cache_enable_xla_caches', 'none')
  try:  # the cache is set up once per process, at its first compile
    from jax._src import compilation_cache

    compilation_cache.reset_cache()
  except (ImportError, AttributeError):
    pass
  return env


# ------------------------------------------------------------------ compiled rows


@dataclasses.dataclass
class CompiledRow:
  """A row's compiled steps (one per variant), its initialiser, batch and result rows."""

  name: str
  rows: dict  # variant -> result row (FLOPs, memory, compile time, ...)
  compiled: dict  # variant -> compiled step
  init: Callable
  batch: dict
  batch_size: int
  config: object = None


def _compile_variant(row, gan, variant, abstract, batch, fresh: bool):
  jitted, fn = variant_step(gan, variant)
  t0 = time.perf_counter()
  traced = jitted.trace(abstract, batch, jax.random.PRNGKey(1))
  lowered = traced.lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  row.update(trace_lower_s=round(t1 - t0, 2), compile_in_process_s=round(t2 - t1, 2))
  if not fresh:
    row.update(compile_mode='in_process', compile_s=round(t2 - t1, 2))
  count = flops_lib.count_jaxpr(flops_lib.dce(traced.jaxpr))
  xla = xla_cost(compiled)
  row.update(
      **count.as_dict(),
      flops_xla=xla['flops'],
      xla_backend=jax.default_backend(),
      bytes_accessed=xla['bytes_accessed'],
      flops_xla_cpu=xla['flops'] if jax.default_backend() == 'cpu' else None,
      **xla_memory(compiled),
  )
  return compiled, fn


def compile_row(
    name,
    spec,
    *,
    overrides=None,
    extra=None,
    cpu_flops=False,
    fresh=False,
    child_env=None,
    log=common.log,
) -> CompiledRow:
  """Builds a row as training does and compiles every variant (FLOPs and memory).

  ``cpu_flops``: also compile each variant for the CPU (``flops_xla_cpu``, the check
  of the analytic count on an accelerator). ``fresh``: compile each variant first in a
  fresh process and report that as ``compile_s``.
  """
  setup = {}
  config, gan, init, batch, abstract = prepare(
      spec, overrides=overrides, extra=extra, times=setup
  )
  rows, compiled, fns = {}, {}, {}
  for variant in spec.variants:
    row = {
        'model': name,
        'variant': variant,
        'config': spec.config,
        'overrides': {**spec.overrides, **(overrides or {})},
        'loss': str(config.loss),
        'batch': int(config.batch_size),
        'resolution': int(config.data.resolution),
        'per_sample_d': bool(gan.per_sample),
        **{f'setup_{k}': v for k, v in setup.items()},
    }
    if fresh:
      child = fresh_compile(
          spec,
          variant,
          overrides=overrides,
          extra=extra,
          per_sample=gan.per_sample,
          env=child_env,
      )
      row.update(
          compile_mode='subprocess',
          compile_s=round(child['compile_s'], 2),
          compile_fresh_process_s=round(child['process_s'], 2),
      )
    compiled[variant], fns[variant] = _compile_variant(
        row, gan, variant, abstract, batch, fresh
    )
    rows[variant] = row
    log(
        f'  {name} {variant}: compiled in {row["compile_s"]:.1f} s '
        f'({row["compile_mode"]}), {row["flops"] / 1e9:.3g} GFLOP'
    )
  if cpu_flops and jax.default_backend() != 'cpu':
    rng = jax.random.PRNGKey(1)
    cpu = flops_lib.cpu_lowering_flops_many(fns, abstract, batch, rng, donate_argnums=0)
    for variant, row in rows.items():
      row['flops_xla_cpu'] = cpu[variant]['flops']
  for row in rows.values():
    conv = row['flops_xla_convention']
    row['xla_cpu_over_xla_convention'] = (
        row['flops_xla_cpu'] / conv if row['flops_xla_cpu'] and conv else None
    )
  base = rows.get(BASELINE, {}).get('flops')
  run = rows.get('one_stage_approx', rows.get(BASELINE))
  for row in rows.values():
    row['flop_ratio'] = row['flops'] / base if base else None
    # Against the FLOPs one-stage executes when no sample takes the exact path.
    row['flop_ratio_executed'] = row['flops'] / run['flops'] if run else None
  return CompiledRow(name, rows, compiled, init, batch, int(config.batch_size), config)


def runners(c: CompiledRow, steps_per_call: int, metrics: dict | None = None) -> dict:
  """variant -> a callable running ``steps_per_call`` steps of that variant on its own
  state and then waiting for the device (the step donates its state). ``metrics``
  receives each variant's last metrics."""
  states = {v: c.init(jax.random.PRNGKey(0)) for v in c.compiled}
  rng = np.asarray(jax.random.PRNGKey(1))
  metrics = {} if metrics is None else metrics

  def runner(variant):
    def run():
      for _ in range(steps_per_call):
        states[variant], m = c.compiled[variant](states[variant], c.batch, rng)
      jax.block_until_ready((states[variant], m))
      metrics[variant] = m

    return run

  return {v: runner(v) for v in c.compiled}


def first_calls(fns: dict, rows: dict) -> float:
  """Calls each runner once (its first call, with its peak RSS); returns the seconds."""
  total = 0.0
  for name, fn in fns.items():
    reset = peak_rss_reset()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    total += seconds
    rows[name].update(
        first_call_s=round(seconds, 3), rss_peak_bytes=peak_rss_bytes() if reset else None
    )
  return total


_UNTIMED = {
    'step_ms_median': None,
    'step_ms_min': None,
    'step_ms_max': None,
    'ratio_to_one_stage_median': None,
    'ratio_to_one_stage_min': None,
    'ratio_to_one_stage_max': None,
    'rounds': 0,
    'images_per_s': None,
}


def time_row(
    c: CompiledRow,
    *,
    rounds: int,
    warmup: int = 1,
    compile_only: bool = False,
    max_row_seconds: float = float('inf'),
    max_step_gflop: float = float('inf'),
    steps_per_call: int = 1,
    peaks: dict | None = None,
    log=common.log,
) -> list:
  """The result rows of a compiled row, timed interleaved (``common.run_interleaved``)
  unless ``compile_only`` or too slow (then ``mode`` says why and timing is None)."""
  rows = {v: dict(r) for v, r in c.rows.items()}
  mode, timing, last = 'compile_only', None, {}
  if not compile_only and rows[BASELINE]['flops'] > max_step_gflop * 1e9:
    compile_only, mode = True, 'too_slow'
    log(f'  {c.name}: over --max-step-gflop={max_step_gflop:g}; FLOPs and memory only')
  if not compile_only:
    fns = runners(c, steps_per_call, last)
    estimate = first_calls(fns, rows) * (rounds + warmup)
    if estimate > max_row_seconds:
      mode = 'too_slow'
      log(f'  {c.name}: ~{estimate:.0f} s > --max-row-seconds; FLOPs and memory only')
    else:
      times = common.run_interleaved(fns, rounds, warmup=warmup)
      timing = common.ratio_summary(times, BASELINE, steps_per_call, prefix='one_stage')
      mode = 'timed'
  for variant, row in rows.items():
    row.update(mode=mode, steps_per_call=steps_per_call)
    if timing is None:
      row.update(_UNTIMED)
      row.setdefault('rss_peak_bytes', None)
    else:
      row.update(timing[variant])
      row['images_per_s'] = c.batch_size / (row['step_ms_median'] / 1e3)
    if 'n_exact' in last.get(variant, {}):
      row['n_exact_last'] = float(last[variant]['n_exact'])
    step_s = None if row['step_ms_median'] is None else row['step_ms_median'] / 1e3
    row.update(flops_lib.peak_fields(row, step_s, peaks))
  return list(rows.values())


def measure_row(name, spec, *, overrides=None, log=common.log, **kwargs) -> list:
  """``compile_row`` then ``time_row`` (keyword arguments go to the one that takes
  them)."""
  compile_keys = ('extra', 'cpu_flops', 'fresh', 'child_env')
  compile_kw = {k: kwargs.pop(k) for k in compile_keys if k in kwargs}
  c = compile_row(name, spec, overrides=overrides, log=log, **compile_kw)
  return time_row(c, log=log, **kwargs)


if __name__ == '__main__':
  if sys.argv[1:2] != [_CHILD_FLAG]:
    sys.exit(f'usage: python -m experiments.rows {_CHILD_FLAG} PAYLOAD (internal)')
  print(_CHILD_PREFIX + json.dumps(fresh_compile_child(json.loads(sys.argv[2]))))
