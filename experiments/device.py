"""The accelerator benchmark: DCGAN 64 beside PyTorch, StyleGAN2 256, bf16, the loop.

One process, rows in a fixed order within a time budget (rows that would end later are
skipped and the command that measures them is printed). ``--tiny`` runs every row at
toy sizes on whatever JAX runs on (a CPU: the test's). The rows, their algorithms and
what each field means are in ``experiments/README.md`` ("Device suite").

  python -m experiments.device --out DIR
  python -m experiments.device --tiny --out DIR
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import traceback

from experiments import common
from experiments import flops as flops_lib
from experiments import iteration
from experiments import loop_throughput
from experiments import rows as rows_lib
from experiments import torch_dcgan

_BF16 = {
    f'model.{net}.{key}': value
    for net in ('generator', 'discriminator')
    for key, value in (('num_fp16_res', 4), ('conv_clamp', 256))
}
_SG2 = {'data.resolution': 256}
ROWS = {
    'dcgan64_d128': common.RowSpec(
        'configs/dcgan_celeba.py', {}, 'official size: 64x64x3, d=128, batch 128'
    ),
    'stylegan2_256_f32': common.RowSpec(
        'configs/stylegan2_ffhq.py',
        _SG2,
        'StyleGAN2 256, batch 32, main step only',
        ('one_stage', 'two_stage'),
    ),
    'stylegan2_256_f32_iteration': common.RowSpec(
        'configs/stylegan2_ffhq.py', _SG2, 'StyleGAN2 256: main step, PL/4, R1/16, EMA'
    ),
    'stylegan2_256_bf16': common.RowSpec(
        'configs/stylegan2_ffhq.py',
        {**_SG2, **_BF16},
        'as f32, bf16 in 4 blocks',
        ('one_stage', 'two_stage'),
    ),
    'stylegan2_256_bf16_iteration': common.RowSpec(
        'configs/stylegan2_ffhq.py', {**_SG2, **_BF16}, 'the bf16 iteration'
    ),
    'dcgan64_d128_bf16': common.RowSpec(
        'configs/dcgan_celeba.py',
        {'model.generator.dtype': 'bfloat16', 'model.discriminator.dtype': 'bfloat16'},
        'as dcgan64_d128, computed in bfloat16',
        ('one_stage', 'two_stage'),
    ),
}
SUITE = (*ROWS, 'loop')
TINY_ONLY_ON_DEVICE = ('stylegan2_256_bf16_iteration',)
_DCGAN_TINY = {
    'data.resolution': 16,
    'batch_size': 8,
    'z_dim': 16,
    'model.generator.width': 8,
    'model.discriminator.width': 8,
}
_SG2_TINY = {
    'data.resolution': 8,
    'batch_size': 4,
    'z_dim': 32,
    'model.generator.w_dim': 32,
    'model.generator.mapping_layers': 1,
    'model.generator.channel_base': 256,
    'model.generator.channel_max': 32,
    'model.discriminator.channel_base': 256,
    'model.discriminator.channel_max': 32,
}
# (rounds, steps per timed call); the iteration rows: (rounds, 16-iteration cycles).
TIMING = {'dcgan64_d128': (10, 10), 'dcgan64_d128_bf16': (10, 10)}
TIMING.update({n: (4, 2) for n in ('stylegan2_256_f32', 'stylegan2_256_bf16')})
TIMING.update({n: (3, 1) for n in ROWS if n.endswith('_iteration')})
SYNCS = (1, 10)  # steps per synchronisation of the DCGAN side-by-side rows
# Seconds per row on one H200, to skip rows that would pass --budget-s: measured there
# for the rows that existed (fresh compiles included); the side-by-side DCGAN row
# (PyTorch compiled, CUDA graphs, two sync settings) and the iteration rows are
# guesses, never measured.
ESTIMATE_S = {
    'dcgan64_d128': 200,
    'stylegan2_256_f32': 265,
    'stylegan2_256_f32_iteration': 300,
    'stylegan2_256_bf16': 165,
    'stylegan2_256_bf16_iteration': 200,
    'dcgan64_d128_bf16': 60,
    'loop': 60,
}
LOOP_ARGS = '--real --sources prepared --images 512 --resolution 64 --batch 128 '
LOOP_ARGS += '--width 128 --trivial_steps 200 --real_steps 200 --rounds 10 --per_call 10'
# --tiny: the loop's ceiling only (its --real part, two `python -m osgan_jax.main`
# processes, is tests/test_experiments_speed.py's loop test).
LOOP_TINY_ARGS = '--sources prepared --images 24 --resolution 16 --batch 8 --width 4 '
LOOP_TINY_ARGS += '--trivial_steps 20 --rounds 2 --per_call 1'
LOOP_FLAGS = {
    'batch_size': '--batch',
    'data.resolution': '--resolution',
    'model.generator.width': '--width',
    'model.discriminator.width': '--width',
}
CSV_FIELDS = (
    'model',
    'variant',
    'framework',
    'mode',
    'steps_per_sync',
    'batch',
    'step_ms_median',
    'step_ms_min',
    'step_ms_max',
    'ratio_to_one_stage_median',
    'ratio_to_one_stage_min',
    'ratio_to_one_stage_max',
    'ratio_to_jax_one_stage_median',
    'ratio_to_jax_one_stage_min',
    'ratio_to_jax_one_stage_max',
    'images_per_s',
    'flops',
    'tflops_per_s',
    'fraction_of_peak',
    'peak_bytes',
    'compile_s',
    'rounds',
    'reason',
)


# ------------------------------------------------------------------ DCGAN beside PyTorch


def _torch_device():
  """``(device, reason)``: CUDA beside a JAX GPU, the CPU beside a JAX CPU."""
  import jax

  if jax.default_backend() == 'cpu':
    return 'cpu', None
  try:
    import torch
  except ImportError:
    return None, 'torch is not installed'
  if not torch.cuda.is_available():
    return None, 'torch has no CUDA here'
  return 'cuda', None


def side_by_side(name, spec, *, overrides, rounds, syncs, args, peaks, env, log):
  """The DCGAN row: JAX's variants and the PyTorch rows (every algorithm, every
  setting) timed interleaved in one run, at each number of steps per
  synchronisation; ratios to JAX one-stage for all, and within each framework and
  setting to its own one-stage."""
  c = rows_lib.compile_row(
      name,
      spec,
      overrides=overrides,
      fresh=name in args.fresh,
      cpu_flops=name in args.cpu_flops_rows,
      child_env=env,
      log=log,
  )
  device, reason = _torch_device()
  variants = []
  if args.no_torch:
    reason = '--no-torch'
  elif device:
    config = c.config
    variants = torch_dcgan.variants(
        width=int(config.model.generator.width),
        resolution=int(config.data.resolution),
        batch=c.batch_size,
        z_dim=int(config.z_dim),
        channels=int(config.data.channels),
        device=device,
        threads=2 if device == 'cpu' else None,
        compile_on_cpu=args.torch_compile_cpu,
        log=log,
    )
  torch_flops = {}
  for v in variants:  # one step each first: a setting that fails here is a row saying so
    if v.run is None:
      continue
    try:
      if v.info['setting'] == 'eager':
        torch_flops[v.name.rsplit('_', 1)[0]] = torch_dcgan.count_flops(v)
      v.run(1)
    except Exception as e:  # pylint: disable=broad-except  (a row, not the suite)
      log(f'  {v.name}: failed: {e!r}')
      v.run, v.info = None, {'mode': 'skipped', 'reason': f'failed: {e!r}'[:300]}
  skipped = [v for v in variants if v.run is None]
  live = [v for v in variants if v.run is not None]
  out = [
      {
          'model': name,
          'variant': v.name,
          'framework': 'torch',
          **v.info,
          'steps_per_sync': None,
      }
      for v in skipped
  ]
  if reason:
    out.append(
        {
            'model': name,
            'variant': 'torch_*',
            'framework': 'torch',
            'mode': 'skipped',
            'reason': reason,
        }
    )
  for k in syncs:
    out += _time_side_by_side(c, live, k, rounds, args.warmup, torch_flops, peaks)
  return out


def _time_side_by_side(c, live, k, rounds, warmup, torch_flops, peaks):
  jax_fns = rows_lib.runners(c, k)
  fns = {**jax_fns, **{v.name: functools.partial(v.run, k) for v in live}}
  rows = {n: dict(c.rows[n]) if n in c.rows else {} for n in fns}
  rows_lib.first_calls(fns, rows)
  times = common.run_interleaved(fns, rounds, warmup=warmup)
  cross = common.ratio_summary(times, 'one_stage', k, prefix='jax_one_stage')
  out = []
  for n in fns:
    row = rows[n]
    row.update(cross[n], model=c.name, variant=n, steps_per_sync=k, mode='timed')
    if n in jax_fns:
      base = 'one_stage'
      row.update(framework='jax', algorithm=rows_lib.ALGORITHMS[n])
    else:
      v = next(v for v in live if v.name == n)
      base = f'torch_one_stage_{v.info["setting"]}'
      flops = torch_flops.get(n.rsplit('_', 1)[0])
      row.update(
          framework='torch',
          **v.info,
          flops=flops,
          batch=c.batch_size,
          flops_source='torch.utils.flop_counter' if flops else None,
          flops_by_dtype={'float32': flops} if flops else None,
      )
    if base in times:
      within = common.per_round_ratios({n: times[n], base: times[base]}, base)[n]
      row.update({f'ratio_to_one_stage_{s}': within[s] for s in ('median', 'min', 'max')})
    row['images_per_s'] = c.batch_size / (row['step_ms_median'] / 1e3)
    row.update(flops_lib.peak_fields(row, row['step_ms_median'] / 1e3, peaks))
    out.append(row)
  return out


# ------------------------------------------------------------------ the other rows


def loop_rows(out_dir: str, *, tiny: bool, overrides: dict, log) -> list:
  """The loop's rates (``experiments.loop_throughput``) as result rows; its own JSON
  goes to ``out_dir``."""
  argv = (LOOP_TINY_ARGS if tiny else LOOP_ARGS).split()
  for key, value in overrides.items():
    if key in LOOP_FLAGS:
      argv += [LOOP_FLAGS[key], str(value)]
    else:
      log(f'  loop: --override {key} does not apply to the loop')
  work = tempfile.mkdtemp(prefix='loop_throughput_')
  try:
    loop_throughput.main(argv + ['--work', work, '--out', out_dir])
  finally:
    shutil.rmtree(work, ignore_errors=True)
  with open(os.path.join(out_dir, 'loop_throughput.json')) as f:
    record = json.load(f)
  rows = []
  for r in record['rows']:
    suffix = '/through_loop' if r['through_loop'] else ''
    rows.append(
        {
            'model': 'loop_dcgan64',
            'mode': 'loop',
            'variant': f'{r["source"]}/{r["step"]}{suffix}',
            'batch': r['batch'],
            'images_per_s': r['images_per_s'],
            'process_s': r.get('process_s'),
        }
    )
  return rows


def run_row(name: str, args, overrides: dict, ctx: dict) -> list:
  """The result rows of one suite row (``SUITE``)."""
  tiny, log = args.tiny, common.log
  if name == 'loop':
    loop_dir = os.path.join(
        ctx['out_dir'], f'loop_{"tiny_" if tiny else ""}{ctx["slug"]}'
    )
    return loop_rows(loop_dir, tiny=tiny, overrides=overrides, log=log)
  spec = ROWS[name]
  small = (_DCGAN_TINY if name.startswith('dcgan') else _SG2_TINY) if tiny else {}
  row_overrides = {**small, **overrides}
  rounds, per = (2, 1) if tiny else TIMING[name]
  rounds = args.rounds or rounds
  log(f'{name}: {spec.note}' + (f' (tiny: {row_overrides})' if tiny else ''))
  kw = dict(overrides=row_overrides, peaks=ctx['peaks'], log=log)
  if name == 'dcgan64_d128':
    syncs = args.syncs or SYNCS
    return side_by_side(
        name, spec, rounds=rounds, syncs=syncs, args=args, env=ctx['env'], **kw
    )
  if name.endswith('_iteration'):
    return iteration.measure(
        name, spec, rounds=rounds, cycles=per if not tiny else 1, **kw
    )
  return rows_lib.measure_row(
      name,
      spec,
      rounds=rounds,
      warmup=args.warmup,
      steps_per_call=per,
      fresh=name in args.fresh,
      cpu_flops=name in args.cpu_flops_rows,
      child_env=ctx['env'],
      **kw,
  )


# ------------------------------------------------------------------ the suite


def _selected(text, names, default) -> set:
  text = default if text is None else text
  if text in ('none', ''):
    return set()
  return set(names) if text == 'all' else {n for n in text.split(',') if n}


def _setup(args, names) -> dict:
  """The output path, device, peaks and the fresh-compile children's cache."""
  import jax

  args.fresh = _selected(
      args.fresh_compile, names, 'dcgan64_d128' if args.tiny else 'all'
  )
  args.cpu_flops_rows = _selected(args.cpu_flops, names, 'dcgan64_d128')
  env, cache = {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}, None
  if args.fresh:
    cache = tempfile.mkdtemp(prefix='osgan_compile_cache_')
    env.update(rows_lib.use_compile_cache(cache))
  device = common.device_name()
  slug = re.sub(r'[^a-z0-9]+', '_', device.lower()).strip('_')
  if args.out and args.out.endswith('.json'):
    path = args.out
  else:
    name = f'{"tiny_" if args.tiny else ""}{slug}.json'
    path = os.path.join(common.output_dir(args.out, 'device'), name)
  return {
      'path': path,
      'out_dir': os.path.dirname(os.path.abspath(path)),
      'slug': slug,
      'peaks': flops_lib.device_peaks(),
      'device_kind': jax.devices()[0].device_kind,
      'env': env,
      'cache': cache,
  }


def run_suite(args, overrides: dict) -> dict:
  """Every selected row within the budget; returns the record it wrote."""
  t_start = time.perf_counter()
  names = [n for n in (args.models or ','.join(SUITE)).split(',') if n]
  unknown = [n for n in names if n not in SUITE]
  if unknown:
    raise SystemExit(f'unknown device-suite rows {unknown}; valid: {", ".join(SUITE)}')
  budget = args.budget_s if args.budget_s is not None else (1e9 if args.tiny else 480.0)
  ctx = _setup(args, names)
  record = {
      'suite': 'device',
      'tiny': args.tiny,
      'provenance': common.provenance(args.command, torch=True),
      'device_kind': ctx['device_kind'],
      'peaks_tflops': ctx['peaks'],
      'overrides': overrides,
      'budget_s': budget,
      'row_seconds': {},
      'skipped': [],
      'errors': {},
      'rows': [],
  }
  common.log(
      f'# {record["provenance"]["device"]}; rows {", ".join(names)}; budget {budget:g} s'
  )
  try:
    for name in names:
      elapsed = time.perf_counter() - t_start
      if args.tiny and name in TINY_ONLY_ON_DEVICE:
        record['rows'].append({'model': name, 'mode': 'skipped', 'reason': 'device only'})
        continue
      if elapsed + (0 if args.tiny else ESTIMATE_S[name]) > budget:
        common.log(f'{name}: skipped at {elapsed:.0f} s (~{ESTIMATE_S[name]} s more)')
        record['skipped'].append(name)
        continue
      t_row = time.perf_counter()
      try:
        record['rows'] += run_row(name, args, overrides, ctx)
      except Exception as e:  # pylint: disable=broad-except  (one row, not the suite)
        traceback.print_exc()
        common.log(f'{name}: FAILED: {e!r}')
        record['errors'][name] = repr(e)[:2000]
      record['row_seconds'][name] = round(time.perf_counter() - t_row, 1)
      record['elapsed_s'] = round(time.perf_counter() - t_start, 1)
      common.write_record(ctx['path'], record, CSV_FIELDS)  # survives an interruption
  finally:
    if ctx['cache']:
      shutil.rmtree(ctx['cache'], ignore_errors=True)
  record['elapsed_s'] = round(time.perf_counter() - t_start, 1)
  common.write_record(ctx['path'], record, CSV_FIELDS)
  print(table(record['rows']))
  if record['skipped']:
    rerun = [
        'python',
        '-m',
        'experiments.device',
        '--models',
        ','.join(record['skipped']),
    ]
    rerun += ['--out', f'{os.path.splitext(ctx["path"])[0]}_rest.json']
    rerun += ['--tiny'] if args.tiny else []
    rerun += [f'--override={k}={v}' for k, v in overrides.items()]
    print(
        f'skipped (budget): {", ".join(record["skipped"])}; run them with: {shlex.join(rerun)}'
    )
  if record['errors']:
    print(f'failed rows: {", ".join(record["errors"])}')
  print(f'wrote {ctx["path"]} in {record["elapsed_s"]:.0f} s')
  record['path'] = ctx['path']
  return record


def table(rows) -> str:
  """The suite's table: time, ratios, rate, FLOPs, TFLOP/s and compile time."""
  head = (
      'model',
      'variant',
      'sync',
      'ms/step',
      'vs one-stage',
      'vs JAX one-stage',
      'img/s',
      'GFLOP',
      'TFLOP/s',
      '% peak',
      'compile s',
  )
  lines = []
  for r in rows:
    frac, flops = r.get('fraction_of_peak'), r.get('flops')
    lines.append(
        (
            r['model'],
            r.get('variant', '-'),
            common.fmt(r.get('steps_per_sync')),
            common.fmt(r.get('step_ms_median'), 4),
            common.fmt(r.get('ratio_to_one_stage_median')),
            common.fmt(r.get('ratio_to_jax_one_stage_median')),
            common.fmt(r.get('images_per_s'), 4),
            common.fmt(None if flops is None else flops / 1e9, 4),
            common.fmt(r.get('tflops_per_s')),
            common.fmt(None if frac is None else 100 * frac),
            r.get('reason') or common.fmt(r.get('compile_s')),
        )
    )
  return common.markdown_table(head, lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--tiny', action='store_true', help='toy sizes (a CPU: about a minute)')
  p.add_argument(
      '--models', help=f'comma-separated rows (default all): {", ".join(SUITE)}'
  )
  p.add_argument('--override', action='append', default=[], metavar='KEY=VALUE')
  p.add_argument('--rounds', type=int, help='interleaved timed rounds (default: per row)')
  p.add_argument('--syncs', help='DCGAN steps per synchronisation (default 1,10)')
  p.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
  p.add_argument(
      '--fresh-compile', help='rows (or all/none) compiled first in a fresh process'
  )
  p.add_argument(
      '--cpu-flops', help='rows (or all/none) also compiled for XLA:CPU counts'
  )
  p.add_argument('--budget-s', type=float, help='skip rows ending later (default 480)')
  p.add_argument('--no-torch', action='store_true', help='no PyTorch rows')
  p.add_argument(
      '--torch-compile-cpu', action='store_true', help='also torch.compile on a CPU'
  )
  p.add_argument('--out', help='a directory (default: a new temporary one) or a .json')
  p.add_argument('--render', help='print the table of a results JSON and exit')
  args = p.parse_args(argv)
  args.command = common.command_line('experiments.device', argv)
  if args.render:
    with open(args.render) as f:
      print(table(json.load(f)['rows']))
    return 0
  try:
    overrides = common.parse_overrides(args.override)
  except ValueError as e:
    p.error(str(e))
  args.syncs = tuple(int(k) for k in args.syncs.split(',')) if args.syncs else None
  # Before any backend starts: `python -m osgan_jax.main` and the fresh-compile
  # children share the accelerator with this process.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  from osgan_jax.training import host_memory

  host_memory.keep_freed_memory()
  record = run_suite(args, overrides)
  return 1 if record['errors'] else 0


if __name__ == '__main__':
  sys.exit(main())
