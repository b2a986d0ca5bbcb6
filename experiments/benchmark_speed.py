"""One-stage vs two-stage training steps: XLA FLOPs, interleaved wall time, memory.

Issue 6. Every row is built from a config file plus overrides, exactly as training
builds it (``config_base.load_config`` -> ``gan.create_models`` -> ``gan.make_gan``
-> ``gan.make_init`` -> ``steps.probe_per_sample`` -> ``steps.jit_step``), with a
synthetic random batch (speed needs no data). For each row and each variant (one-stage,
honest two-stage, official-style two-stage) it records:

* ``flops``: XLA's FLOP count of the compiled step (``cost_analysis()``; deterministic)
  and ``flop_ratio`` against one-stage.
* wall time: all variants are compiled and warmed up, then timed interleaved in one
  process (round r runs every variant once, in an order rotated by r), so load from
  other processes on a shared machine hits every variant alike. Ratios are taken per
  round and summarised by their median and min-max: ``ratio_to_one_stage_*``.
* memory: XLA's ``memory_analysis()`` of the step (``peak_bytes``) and the process's
  peak RSS while the variant's warm-up step ran (``rss_peak_bytes``; Linux only).
* ``images_per_s``: real images per second (every variant consumes one batch of real
  images per step, so this is batch / median step time).

Rows that would take too long here (``--max-row-seconds``) or are marked compile-only
(``--compile-only``) report FLOPs and memory with null timing fields.

  python experiments/benchmark_speed.py --out experiments/results/speed/results.json
  python experiments/benchmark_speed.py --models dcgan32,dcgan64 --rounds 30
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from osgan_jax import config_base  # noqa: E402
from osgan_jax import host_memory  # noqa: E402
from osgan_jax import steps  # noqa: E402
from osgan_jax import gan as gan_lib  # noqa: E402

# variant name in the results -> (stage name of steps.jit_step, one-stage mode or None)
# one_stage_approx is the paper's approximate step: no lax.cond for the exact path,
# whose branch XLA's cost analysis counts in one_stage's FLOPs although it only runs
# when some sample needs it (never in these benchmarks' regime, n_exact = 0).
VARIANTS = {'one_stage': ('one', None), 'two_stage': ('two', None),
            'official_two_stage': ('official_two', None),
            'one_stage_approx': ('one', 'approx')}
BASELINE = 'one_stage'
REQUIRED_FIELDS = ('model', 'variant', 'flops', 'step_ms_median',
                   'ratio_to_one_stage_median', 'ratio_to_one_stage_min',
                   'ratio_to_one_stage_max', 'peak_bytes', 'images_per_s')

_D64 = {'model.generator.width': 64, 'model.discriminator.width': 64}


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """A benchmark row: a config file (relative to the repo) plus overrides."""
  config: str
  overrides: dict
  note: str = ''


# The 64x64 rows use d = 64 and batch 64 (issue 8's measurement: 64x64x3, d=64, batch
# 64); the configs' own d = 128, batch 128 would be 8x the work of these rows.
ROWS = {
    'dcgan32': RowSpec('configs/dcgan_fashion_mnist.py', {},
                       'Fashion-MNIST default: 32x32x1, d=32, batch 64, GroupNorm D'),
    'dcgan64': RowSpec('configs/dcgan_celeba.py', {**_D64, 'batch_size': 64},
                       'non-saturating, GroupNorm D, 64x64x3, d=64, batch 64'),
    'dcgan64_b128': RowSpec('configs/dcgan_celeba.py', {**_D64, 'batch_size': 128},
                            'as dcgan64, batch 128'),
    'wgan64': RowSpec('configs/wgan_celeba.py', {**_D64, 'batch_size': 64},
                      'WGAN (clip 0.01), BatchNorm D, 64x64x3, d=64, batch 64'),
    'lsgan64': RowSpec('configs/lsgan_celeba.py', {**_D64, 'batch_size': 64},
                       'LSGAN, GroupNorm D, 64x64x3, d=64, batch 64'),
    'hinge64': RowSpec('configs/hinge_celeba.py', {**_D64, 'batch_size': 64},
                       'hinge, spectral-norm D, 64x64x3, d=64, batch 64'),
    'stylegan2_tiny': RowSpec('configs/stylegan2_tiny.py', {},
                              'StyleGAN2 tiny, 32x32x1 (minibatch-std D: coupled)'),
    'stylegan2_256': RowSpec('configs/stylegan2_ffhq.py', {'data.resolution': 256},
                             'StyleGAN2 config-f scaled to 256x256'),
}
DEFAULT_COMPILE_ONLY = ('stylegan2_256',)


# ------------------------------------------------------------------ timing statistics

def run_interleaved(fns: dict, rounds: int, warmup: int = 1,
                    clock: Callable[[], float] = time.perf_counter) -> dict:
  """Times ``fns`` (name -> callable returning when its work is done) side by side.

  ``warmup`` untimed rounds, then ``rounds`` timed rounds; round r calls every function
  once in the order rotated by r (A B C, B C A, C A B, ...), so neither drift in the
  machine's load nor a fixed predecessor favours one function. Returns name -> list of
  ``rounds`` durations in seconds.
  """
  names = list(fns)
  for _ in range(warmup):
    for name in names:
      fns[name]()
  times = {name: [] for name in names}
  for r in range(rounds):
    k = r % len(names)
    for name in names[k:] + names[:k]:
      t0 = clock()
      fns[name]()
      times[name].append(clock() - t0)
  return times


def ratio_summary(times: dict, baseline: str = BASELINE) -> dict:
  """Per-variant summary of per-round times: name -> {step_ms_median, ratio_*}.

  The ratio of round r is ``times[name][r] / times[baseline][r]`` (same round, same
  load); its median, min and max summarise the spread. The baseline's ratios are 1.
  """
  base = np.asarray(times[baseline], np.float64)
  out = {}
  for name, ts in times.items():
    ts = np.asarray(ts, np.float64)
    if ts.shape != base.shape:
      raise ValueError(f'{name}: {ts.shape[0]} rounds, baseline {base.shape[0]}')
    ratios = ts / base
    out[name] = {
        'step_ms_median': float(np.median(ts) * 1e3),
        'step_ms_min': float(ts.min() * 1e3),
        'ratio_to_one_stage_median': float(np.median(ratios)),
        'ratio_to_one_stage_min': float(ratios.min()),
        'ratio_to_one_stage_max': float(ratios.max()),
        'rounds': int(ts.shape[0]),
    }
  return out


# ------------------------------------------------------------------ XLA analyses

def xla_cost(compiled) -> dict:
  """``{'flops', 'bytes_accessed'}`` of a compiled executable (XLA's cost analysis)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {'flops': float(cost.get('flops', 0.0)),
          'bytes_accessed': float(cost.get('bytes accessed', 0.0))}


def xla_memory(compiled) -> dict:
  """Bytes of a compiled step: arguments, outputs, temporaries and the peak estimate."""
  m = compiled.memory_analysis()
  if m is None:
    return {'peak_bytes': None}
  args, outs = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  alias, temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
  # The CPU backend's peak_memory_in_bytes is only the arguments' size here, so the
  # peak is bounded as XLA's buffer assignment lays it out: arguments, outputs not
  # aliased to (donated) arguments, and the temporaries.
  return {'peak_bytes': args + outs - alias + temp, 'argument_bytes': args,
          'output_bytes': outs, 'alias_bytes': alias, 'temp_bytes': temp,
          'xla_peak_memory_in_bytes': int(getattr(m, 'peak_memory_in_bytes', 0) or 0)}


def _proc_status_bytes(field: str):
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark (VmHWM) of this process; False if unsupported."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


# ------------------------------------------------------------------ rows

def build(spec: RowSpec, *, seed: int = 0, overrides: dict | None = None):
  """``(config, gan, init_fn, batch)`` of a row, built as the training loop does."""
  config = config_base.load_config(os.path.join(REPO, spec.config),
                                   {**spec.overrides, **(overrides or {})})
  generator, discriminator = gan_lib.create_models(config)
  gan = gan_lib.make_gan(config, generator, discriminator)
  init = jax.jit(gan_lib.make_init(config, gan, generator, discriminator))
  res, ch, bs = (int(config.data.resolution), int(config.data.channels),
                 int(config.batch_size))
  key = jax.random.PRNGKey(seed)
  batch = {'image': jax.random.uniform(jax.random.fold_in(key, 1), (bs, res, res, ch),
                                       jnp.float32, -1.0, 1.0)}
  if int(config.num_classes) > 0:
    batch['label'] = jax.random.randint(jax.random.fold_in(key, 2), (bs,), 0,
                                        int(config.num_classes), jnp.int32)
  return config, gan, init, batch


@dataclasses.dataclass
class CompiledRow:
  """A row's compiled steps (one per variant), its initialiser, batch and FLOP rows."""
  name: str
  rows: dict        # variant -> result row (FLOPs, memory, compile time, ...)
  compiled: dict    # variant -> compiled step
  init: Callable    # key -> TrainState
  batch: dict
  batch_size: int


def compile_row(name: str, spec: RowSpec, *, overrides: dict | None = None,
                log=print) -> CompiledRow:
  """Builds a row as training does and compiles every variant (FLOPs and memory)."""
  config, gan, init, batch = build(spec, overrides=overrides)
  batch_size = int(config.batch_size)
  state = init(jax.random.PRNGKey(0))
  probe = {k: v[:max(2, min(4, v.shape[0]))] for k, v in batch.items()}
  gan = steps.probe_per_sample(gan, state, probe)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  del state

  rows, compiled = {}, {}
  for variant, (stage, mode) in VARIANTS.items():
    t0 = time.perf_counter()
    variant_gan = gan if mode is None else dataclasses.replace(gan, mode=mode)
    compiled[variant] = steps.jit_step(variant_gan, stage).lower(
        abstract, batch, jax.random.PRNGKey(1)).compile()
    compile_s = time.perf_counter() - t0
    rows[variant] = {
        'model': name, 'variant': variant, 'config': spec.config,
        'overrides': {**spec.overrides, **(overrides or {})},
        'loss': str(config.loss), 'batch': batch_size,
        'resolution': int(config.data.resolution),
        'per_sample_d': bool(gan.per_sample), 'compile_s': round(compile_s, 2),
        **xla_cost(compiled[variant]), **xla_memory(compiled[variant])}
    log(f'  {name} {variant}: compiled in {compile_s:.1f} s, '
        f'{rows[variant]["flops"] / 1e9:.2f} GFLOP')
  base_flops = rows[BASELINE]['flops']
  run_flops = rows['one_stage_approx']['flops']
  for row in rows.values():
    row['flop_ratio'] = row['flops'] / base_flops if base_flops else None
    # Against the FLOPs one-stage executes while no sample needs the exact path.
    row['flop_ratio_executed'] = row['flops'] / run_flops if run_flops else None
  return CompiledRow(name, rows, compiled, init, batch, batch_size)


def time_row(c: CompiledRow, *, rounds: int, warmup: int = 1,
             compile_only: bool = False, max_row_seconds: float = float('inf'),
             max_step_gflop: float = float('inf'), log=print) -> list:
  """The result rows of a compiled row: timed interleaved unless too slow or
  ``compile_only`` (then the timing fields are None and ``mode`` says why)."""
  rows = {v: dict(r) for v, r in c.rows.items()}
  base_flops = rows[BASELINE]['flops']
  timing, mode = None, 'compile_only'
  if not compile_only and base_flops > max_step_gflop * 1e9:
    compile_only, mode = True, 'too_slow'
    log(f'  {c.name}: {base_flops / 1e9:.0f} GFLOP per one-stage step > '
        f'--max-step-gflop={max_step_gflop:g}; FLOPs and memory only')
  if not compile_only:
    # Each variant steps its own state (the step donates it).
    states = {v: c.init(jax.random.PRNGKey(0)) for v in c.compiled}
    rng = np.asarray(jax.random.PRNGKey(1))

    def runner(variant):
      def run():
        states[variant], metrics = c.compiled[variant](states[variant], c.batch, rng)
        jax.block_until_ready((states[variant], metrics))
      return run

    fns = {v: runner(v) for v in c.compiled}
    first = {}
    for variant, fn in fns.items():  # the first call of each, with its peak RSS
      reset = _reset_peak_rss()
      t0 = time.perf_counter()
      fn()
      first[variant] = time.perf_counter() - t0
      rows[variant]['rss_peak_bytes'] = _proc_status_bytes('VmHWM') if reset else None
    estimate = sum(first.values()) * (rounds + warmup)
    if estimate > max_row_seconds:
      mode = 'too_slow'
      log(f'  {c.name}: {rounds} rounds would take ~{estimate:.0f} s > '
          f'--max-row-seconds={max_row_seconds:.0f}; FLOPs and memory only')
    else:
      timing = ratio_summary(run_interleaved(fns, rounds, warmup=warmup))
      mode = 'timed'
    del states
  for variant, row in rows.items():
    row['mode'] = mode
    if timing is None:
      row.update(step_ms_median=None, step_ms_min=None, ratio_to_one_stage_median=None,
                 ratio_to_one_stage_min=None, ratio_to_one_stage_max=None, rounds=0,
                 images_per_s=None)
      row.setdefault('rss_peak_bytes', None)
    else:
      row.update(timing[variant])
      row['images_per_s'] = c.batch_size / (row['step_ms_median'] / 1e3)
  return list(rows.values())


def measure_row(name: str, spec: RowSpec, *, rounds: int, warmup: int = 1,
                compile_only: bool = False, max_row_seconds: float = float('inf'),
                max_step_gflop: float = float('inf'),
                overrides: dict | None = None, log=print) -> list:
  """The result rows (one per variant) of one model; see the module docstring."""
  t0 = time.perf_counter()
  rows = time_row(compile_row(name, spec, overrides=overrides, log=log), rounds=rounds,
                  warmup=warmup, compile_only=compile_only,
                  max_row_seconds=max_row_seconds, max_step_gflop=max_step_gflop,
                  log=log)
  log(f'  {name}: {time.perf_counter() - t0:.0f} s')
  return rows


def torch_rows(rounds: int, max_row_seconds: float = float('inf'), log=print) -> list:
  """Optional PyTorch reference rows for dcgan64 (issue 8's ``torch_dcgan_steps``).

  The official OSGAN PyTorch steps (``'one'``: one-stage, ``'two'``: the official
  two-stage) as ``torch_one_stage`` / ``torch_official_two_stage``, timed interleaved
  like the JAX rows; ratios against ``torch_one_stage``. Empty when torch or
  ``experiments/cpu_throughput.py`` (or its function) is missing.
  """
  try:
    import torch  # noqa: F401  pylint: disable=unused-import
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cpu_throughput  # pylint: disable=import-error
    torch_dcgan_steps = cpu_throughput.torch_dcgan_steps
  except (ImportError, AttributeError):
    return []
  try:
    steps_ = torch_dcgan_steps(width=64, resolution=64, batch=64)
  except Exception as e:  # pylint: disable=broad-except
    log(f'  torch rows skipped: torch_dcgan_steps failed: {e!r}')
    return []
  names = {'one': 'torch_one_stage', 'two': 'torch_official_two_stage'}
  fns = {names.get(k, f'torch_{k}'): v for k, v in dict(steps_).items()}
  base = 'torch_one_stage'
  if base not in fns:
    log(f'  torch rows skipped: no one-stage step among {sorted(fns)}')
    return []
  first = {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    fn()
    first[name] = time.perf_counter() - t0
  estimate = sum(first.values()) * (rounds + 1)
  if estimate > max_row_seconds:
    log(f'  torch rows skipped: ~{estimate:.0f} s > --max-row-seconds')
    return []
  timing = ratio_summary(run_interleaved(fns, rounds), baseline=base)
  rows = []
  for variant, t in timing.items():
    rows.append({'model': 'dcgan64', 'variant': variant, 'flops': None,
                 'peak_bytes': None, 'batch': 64, 'mode': 'timed_torch', **t,
                 'images_per_s': 64 / (t['step_ms_median'] / 1e3),
                 'note': 'PyTorch, official OSGAN networks and steps (issue 8)'})
  return rows


# ------------------------------------------------------------------ output

CSV_FIELDS = ('model', 'variant', 'mode', 'batch', 'flops', 'flop_ratio',
              'flop_ratio_executed',
              'step_ms_median', 'ratio_to_one_stage_median', 'ratio_to_one_stage_min',
              'ratio_to_one_stage_max', 'images_per_s', 'peak_bytes', 'rss_peak_bytes',
              'bytes_accessed', 'compile_s', 'rounds')


def _fmt(value, digits=3):
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.{digits}g}'
  return str(value)


def table(rows: Sequence[dict]) -> str:
  """A markdown table of the rows (what the script prints)."""
  head = ('model', 'variant', 'GFLOP', 'FLOP ratio', 'executed FLOP ratio',
          'ms/step (median)',
          'time ratio median [min, max]', 'img/s', 'XLA peak MiB', 'RSS peak MiB')
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for r in rows:
    ratio = '-'
    if r.get('ratio_to_one_stage_median') is not None:
      ratio = (f'{r["ratio_to_one_stage_median"]:.3f} '
               f'[{r["ratio_to_one_stage_min"]:.2f}, {r["ratio_to_one_stage_max"]:.2f}]')
    flops = r.get('flops')
    cells = (r['model'], r['variant'], _fmt(None if flops is None else flops / 1e9, 4),
             _fmt(r.get('flop_ratio'), 4), _fmt(r.get('flop_ratio_executed'), 4),
             _fmt(r.get('step_ms_median'), 4), ratio,
             _fmt(r.get('images_per_s'), 4),
             _fmt(None if r.get('peak_bytes') is None else r['peak_bytes'] / 2**20, 4),
             _fmt(None if r.get('rss_peak_bytes') is None
                  else r['rss_peak_bytes'] / 2**20, 4))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_results(rows: Sequence[dict], out: str) -> str:
  """Writes ``out`` (JSON list of rows) and the CSV next to it; returns the CSV path."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(list(rows), f, indent=1)
    f.write('\n')
  csv_path = os.path.splitext(out)[0] + '.csv'
  with open(csv_path, 'w', newline='') as f:
    writer = csv.DictWriter(f, CSV_FIELDS, extrasaction='ignore')
    writer.writeheader()
    for r in rows:
      writer.writerow({k: r.get(k) for k in CSV_FIELDS})
  return csv_path


def git_state() -> dict:
  """The commit measured and the library/config files that differ from it."""
  import subprocess
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'osgan_jax',
                            'configs'], cwd=REPO, check=True, capture_output=True,
                           text=True).stdout.split('\n')
    return {'git_commit': commit,
            'git_modified': sorted(line[3:] for line in dirty if line.strip())}
  except (OSError, subprocess.CalledProcessError):
    return {'git_commit': None, 'git_modified': None}


def machine() -> dict:
  return {'platform': platform.platform(), 'python': platform.python_version(),
          'jax': jax.__version__, 'backend': jax.default_backend(),
          'cpu_count': os.cpu_count(), **git_state(),
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec='seconds')}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--models', default=','.join(ROWS),
                 help=f'comma-separated rows (default all): {", ".join(ROWS)}')
  p.add_argument('--rounds', type=int, default=20, help='interleaved timed rounds')
  p.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
  p.add_argument('--compile-only', default=','.join(DEFAULT_COMPILE_ONLY),
                 help='rows to compile but not run (FLOPs and memory only)')
  p.add_argument('--max-step-gflop', type=float, default=40.0,
                 help='rows whose one-stage step has more XLA GFLOPs are not run '
                      '(FLOPs and memory only); ~5-30 GFLOP/s on 2 shared cores')
  p.add_argument('--max-row-seconds', type=float, default=200.0,
                 help='rows whose timed rounds would take longer (estimated from the '
                      'first step of each variant) report FLOPs and memory only')
  p.add_argument('--malloc', choices=('keep', 'default'), default='keep',
                 help="'keep': osgan_jax.host_memory.keep_freed_memory() first, as "
                 "python -m osgan_jax.main does; 'default': glibc's defaults")
  p.add_argument('--no-torch', action='store_true',
                 help='skip the optional PyTorch reference rows')
  p.add_argument('--out', default=os.path.join(REPO, 'experiments', 'results', 'speed',
                                               'results.json'))
  p.add_argument('--render', default='',
                 help='print the table of an existing results JSON and exit')
  args = p.parse_args(argv)
  if args.render:
    with open(args.render) as f:
      print(table(json.load(f)))
    return 0
  names = [n for n in args.models.split(',') if n]
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    p.error(f'unknown models {unknown}; valid: {", ".join(ROWS)}')
  compile_only = set(n for n in args.compile_only.split(',') if n)

  t0 = time.perf_counter()
  malloc_kept = args.malloc == 'keep' and host_memory.keep_freed_memory()
  info = dict(machine(), malloc_kept=malloc_kept)
  print(f'# {info["date"]}  jax {info["jax"]} on {info["backend"]}, '
        f'{info["cpu_count"]} CPUs; {args.rounds} interleaved rounds', flush=True)
  rows = []
  for name in names:
    spec = ROWS[name]
    if not os.path.exists(os.path.join(REPO, spec.config)):
      print(f'  {name}: skipped, {spec.config} does not exist', flush=True)
      continue
    print(f'{name}: {spec.note}', flush=True)
    rows += measure_row(name, spec, rounds=args.rounds, warmup=args.warmup,
                        compile_only=name in compile_only,
                        max_row_seconds=args.max_row_seconds,
                        max_step_gflop=args.max_step_gflop,
                        log=lambda s: print(s, flush=True))
    if name == 'dcgan64' and not args.no_torch:
      rows += torch_rows(args.rounds, args.max_row_seconds,
                         log=lambda s: print(s, flush=True))
    write_results(rows, args.out)  # partial results survive an interrupted run
  for r in rows:
    r.setdefault('machine', info)
  csv_path = write_results(rows, args.out)
  print(table(rows))
  skipped = sorted({r['model'] for r in rows if r.get('mode') != 'timed'
                    and not str(r.get('mode', '')).startswith('timed')})
  if skipped:
    print(f'FLOPs and memory only (no timing): {", ".join(skipped)}')
  print(f'wrote {args.out} and {csv_path} in {time.perf_counter() - t0:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
