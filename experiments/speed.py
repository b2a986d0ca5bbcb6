"""One- vs two-stage steps on this machine: FLOPs, interleaved wall time, memory.

Three suites: ``rows`` (the CPU-sized configs, every variant compiled, counted and
timed interleaved), ``losses`` (every registered loss at the DCGAN 32 setting, at the
share of singular samples measured in a short training: ``experiments.per_loss``) and
``flops`` (analytic counts only, optionally checked against XLA:CPU's). Fields and
protocol: ``experiments/README.md`` ("Speed on a CPU").

  python -m experiments.speed --out DIR [--models dcgan32,stylegan2_tiny]
  python -m experiments.speed --suite losses --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from experiments import common
from experiments import flops as flops_lib
from experiments import per_loss
from experiments import rows as rows_lib

_D64 = {'model.generator.width': 64, 'model.discriminator.width': 64}
_R3GAN_XLA = {'model.generator.conv_impl': 'xla', 'model.discriminator.conv_impl': 'xla'}
_ONE_TWO = ('one_stage', 'two_stage')
ROWS = {
    'dcgan32': common.RowSpec(
        'configs/dcgan_fashion_mnist.py', {}, '32x32x1, d=32, batch 64, GroupNorm D'
    ),
    'dcgan64': common.RowSpec(
        'configs/dcgan_celeba.py', {**_D64, 'batch_size': 64}, '64x64x3, d=64, batch 64'
    ),
    'wgan64': common.RowSpec(
        'configs/wgan_celeba.py', {**_D64, 'batch_size': 64}, 'WGAN, BatchNorm D, d=64'
    ),
    'hinge64': common.RowSpec(
        'configs/hinge_celeba.py', {**_D64, 'batch_size': 64}, 'hinge, spectral-norm D'
    ),
    'stylegan2_tiny': common.RowSpec(
        'configs/stylegan2_tiny.py', {}, 'StyleGAN2 tiny, 32x32x1 (coupled D)'
    ),
    'stylegan2_256': common.RowSpec(
        'configs/stylegan2_ffhq.py', {'data.resolution': 256}, 'StyleGAN2 config-f, 256'
    ),
    # Grouped convolutions as XLA's grouped convolution (their GPU/TPU path), so the
    # FLOPs are the algorithm's (a CPU trains them as dense block-diagonal ones).
    'r3gan_fmnist': common.RowSpec(
        'configs/r3gan_fashion_mnist.py', _R3GAN_XLA, 'R3GAN 32x32x1', _ONE_TWO
    ),
    'r3gan_cifar10': common.RowSpec(
        'configs/r3gan_cifar10.py',
        {**_R3GAN_XLA, 'batch_size': 64},
        'R3GAN CIFAR-10',
        _ONE_TWO,
    ),
}
DEFAULT_MODELS = 'dcgan32,stylegan2_tiny'
COMPILE_ONLY = ('stylegan2_256', 'r3gan_fmnist', 'r3gan_cifar10')
CSV_FIELDS = (
    'model',
    'loss',
    'variant',
    'mode',
    'batch',
    'flops',
    'flops_executed',
    'flops_max_branch',
    'flop_ratio',
    'flop_ratio_executed',
    'n_exact_mean',
    'exact_step_fraction',
    'step_ms_median',
    'step_ms_min',
    'step_ms_max',
    'ratio_to_one_stage_median',
    'ratio_to_one_stage_min',
    'ratio_to_one_stage_max',
    'images_per_s',
    'peak_bytes',
    'rss_peak_bytes',
    'flops_xla',
    'flops_xla_cpu',
    'compile_s',
    'rounds',
    'steps_per_call',
)


def rows_table(rows) -> str:
  """The ``rows`` suite's table."""
  head = (
      'model',
      'variant',
      'GFLOP',
      'executed FLOP ratio',
      'ms/step (median)',
      'time ratio median [min, max]',
      'img/s',
      'XLA peak MiB',
  )
  lines = []
  for r in rows:
    ratio = '-'
    if r.get('ratio_to_one_stage_median') is not None:
      ratio = (
          f'{r["ratio_to_one_stage_median"]:.3f} '
          f'[{r["ratio_to_one_stage_min"]:.2f}, {r["ratio_to_one_stage_max"]:.2f}]'
      )
    peak = r.get('peak_bytes')
    lines.append(
        (
            r['model'],
            r['variant'],
            common.fmt(r['flops'] / 1e9, 4),
            common.fmt(r.get('flop_ratio_executed'), 4),
            common.fmt(r.get('step_ms_median'), 4),
            ratio,
            common.fmt(r.get('images_per_s'), 4),
            common.fmt(None if peak is None else peak / 2**20, 4),
        )
    )
  return common.markdown_table(head, lines)


def table(record) -> str:
  """The table of a results file of any suite (old files: a list of rows)."""
  rows = record if isinstance(record, list) else record['rows']
  if any('flops_executed' in r for r in rows):
    return per_loss.table(rows)
  return rows_table(rows)


def run_rows(args, overrides) -> list:
  names = [n for n in args.models.split(',') if n]
  compile_only = set(
      COMPILE_ONLY if args.compile_only is None else args.compile_only.split(',')
  )
  rows = []
  for name in names:
    spec = ROWS[name]
    common.log(f'{name}: {spec.note}')
    if args.suite == 'flops':
      extra = {
          f'model.{n}.conv_impl': args.conv_impl for n in ('generator', 'discriminator')
      }
      rows += [
          {'model': name, **r}
          for r in rows_lib.variant_flops(
              spec,
              spec.variants,
              extra=extra if args.conv_impl else None,
              cpu=args.xla_cpu,
          )
      ]
      continue
    rows += rows_lib.measure_row(
        name,
        spec,
        overrides=overrides,
        rounds=args.rounds,
        warmup=args.warmup,
        compile_only=name in compile_only,
        max_row_seconds=args.max_row_seconds,
        max_step_gflop=args.max_step_gflop,
        steps_per_call=args.steps_per_call,
        peaks=flops_lib.device_peaks(),
    )
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--suite', choices=('rows', 'losses', 'flops'), default='rows')
  p.add_argument('--models', default=DEFAULT_MODELS, help=f'rows: {", ".join(ROWS)}')
  p.add_argument('--losses', help='--suite losses: comma-separated (default: all)')
  p.add_argument('--override', action='append', default=[], metavar='KEY=VALUE')
  p.add_argument('--rounds', type=int, default=20, help='interleaved timed rounds')
  p.add_argument('--steps-per-call', type=int, default=1, help='steps per timed call')
  p.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
  p.add_argument('--train-steps', type=int, default=200, help='losses: training steps')
  p.add_argument(
      '--compile-only', help=f'rows not run (default {",".join(COMPILE_ONLY)})'
  )
  p.add_argument('--max-step-gflop', type=float, default=40.0, help='rows: not run above')
  p.add_argument(
      '--max-row-seconds', type=float, default=200.0, help='rows: not run above'
  )
  p.add_argument('--conv-impl', choices=('xla', 'matmul'), help="flops: DCGAN's convs")
  p.add_argument('--xla-cpu', action='store_true', help="flops: also XLA:CPU's count")
  p.add_argument('--out', help='a directory (default: a new temporary one)')
  p.add_argument('--render', help='print the table of a results JSON and exit')
  args = p.parse_args(argv)
  if args.render:
    with open(args.render) as f:
      print(table(json.load(f)))
    return 0
  try:
    overrides = common.parse_overrides(args.override)
  except ValueError as e:
    p.error(str(e))
  unknown = [n for n in args.models.split(',') if n and n not in ROWS]
  if unknown and args.suite != 'losses':
    p.error(f'unknown models {unknown}; valid: {", ".join(ROWS)}')
  losses = args.losses.split(',') if args.losses else per_loss.loss_names()
  if args.suite == 'losses' and set(losses) - set(per_loss.loss_names()):
    p.error(f'--losses: choose from {", ".join(per_loss.loss_names())}')
  from osgan_jax.training import host_memory

  malloc_kept = host_memory.keep_freed_memory()  # as `python -m osgan_jax.main` does
  t0 = time.perf_counter()
  record = {
      'suite': args.suite,
      'provenance': common.provenance(common.command_line('experiments.speed', argv)),
      'malloc_kept': malloc_kept,
      'overrides': overrides,
      'rows': [],
  }
  path = os.path.join(common.output_dir(args.out, 'speed'), f'{args.suite}.json')
  if args.suite == 'losses':
    for loss in losses:
      record['rows'] += per_loss.measure_loss(
          loss,
          train_steps=args.train_steps,
          rounds=args.rounds,
          steps_per_call=args.steps_per_call,
          overrides=overrides,
      )
      common.write_record(path, record, CSV_FIELDS)
  else:
    record['rows'] = run_rows(args, overrides)
  record['elapsed_s'] = round(time.perf_counter() - t0, 1)
  common.write_record(path, record, CSV_FIELDS)
  print(table(record))
  print(f'wrote {path} in {record["elapsed_s"]:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
