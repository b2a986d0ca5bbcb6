"""Throughput of the one training loop: its own ceiling, and real steps through it.

The host iterator alone, the loop around a trivial jitted step (the most images per
second it can feed any step) and, with ``--real``, the DCGAN 64 steps alone and
through ``python -m osgan_jax.main``; one JSON line per measurement and
``OUT/loop_throughput.json`` (``experiments/README.md``, "Loop throughput").

  python -m experiments.loop_throughput --out DIR [--real]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from experiments import rows as rows_lib
from osgan_jax import config as config_lib
from osgan_jax import data
from osgan_jax import prepare_data
from osgan_jax import train
from osgan_jax.core import steps
from osgan_jax.training import loop

REAL_CONFIG = 'configs/dcgan_celeba.py'


def data_config(source: str, path: str, resolution: int):
  c = config_lib.get_base_config().data
  c.update(dict(name=source, path=path, resolution=resolution, channels=3))
  return c


def iterator_rate(cfg, batch: int, steps_: int) -> float:
  it = data.make_iterator(cfg, batch, seed=0, image_dtype='uint8')
  try:
    next(it)
    t0 = time.perf_counter()
    for _ in range(steps_):
      next(it)
    return steps_ * batch / (time.perf_counter() - t0)
  finally:
    it.close()


@flax.struct.dataclass
class _State:
  step: jax.Array
  acc: jax.Array


def trivial_task(cfg, batch: int) -> loop.Task:
  """One phase that reads one pixel: the loop's cost without a model."""

  def phase(state, batch_, rng, i):
    del rng, i
    return (
        state.replace(step=state.step + 1, acc=state.acc + batch_['image'][0, 0, 0, 0]),
        {'acc': state.acc},
    )

  return loop.Task(
      name='trivial',
      make_phases=lambda state: [loop.Phase('main', phase)],
      init=lambda key: _State(jnp.zeros((), jnp.int32), jnp.zeros(())),
      batches=lambda start, index, count: data.make_iterator(
          cfg,
          batch,
          seed=0,
          start_step=start,
          process_index=index,
          process_count=count,
          image_dtype='uint8',
      ),
  )


def logged_rate(workdir: str) -> tuple[float, int]:
  """Median ``images_per_sec`` of a run's log lines (after the first) and their count."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rates = [r['images_per_sec'] for r in map(json.loads, f) if 'images_per_sec' in r]
  rates = rates[1:] if len(rates) > 2 else rates
  return float(np.median(rates)), len(rates)


def loop_rate(cfg, batch: int, steps_: int, workdir: str) -> float:
  config = config_lib.get_base_config()
  config.update(
      dict(
          batch_size=batch,
          num_train_steps=steps_,
          log_every_steps=max(steps_ // 5, 1),
          checkpoint_every_steps=steps_,
          progress_bar=False,
      )
  )
  loop.run(train.loop_settings(config), workdir, trivial_task(cfg, batch))
  return logged_rate(workdir)[0]


def real_overrides(width: int, batch: int, resolution: int) -> dict:
  return {
      'batch_size': batch,
      'data.resolution': resolution,
      'data.channels': 3,
      'model.generator.width': width,
      'model.discriminator.width': width,
  }


def steps_alone(stages, overrides: dict, rounds: int, per_call: int) -> dict:
  """images/s of the compiled one/two-stage steps on a device batch, interleaved."""
  spec = common.RowSpec(config=REAL_CONFIG, overrides=overrides)
  config, gan, init, batch = rows_lib.build(spec)
  gan = steps.probe_per_sample(gan, init(jax.random.PRNGKey(0)), None)
  batch_size = int(config.batch_size)
  fns, states = {}, {}
  for stage in stages:
    step = steps.jit_step(gan, stage)
    states[stage] = init(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    states[stage], m = step(states[stage], batch, jax.random.PRNGKey(1))
    jax.block_until_ready(m)
    print(
        f'# {stage}-stage step compiled and ran once in '
        f'{time.perf_counter() - t0:.1f} s',
        file=sys.stderr,
    )

    def run(stage=stage, step=step):
      for k in range(per_call):
        states[stage], m = step(states[stage], batch, jax.random.PRNGKey(k))
      jax.block_until_ready(m)

    fns[stage] = run
  times = common.run_interleaved(fns, rounds)
  return {s: per_call * batch_size / float(np.median(t)) for s, t in times.items()}


def through_main(
    stage: str, overrides: dict, prepared: str, steps_: int, workdir: str
) -> tuple[float, int]:
  """images/s of ``python -m osgan_jax.main`` training on the prepared data."""
  args = {
      **overrides,
      'stage': stage,
      'data.name': 'prepared',
      'data.path': prepared,
      'num_train_steps': steps_,
      'log_every_steps': max(steps_ // 10, 1),
      'evals.samples.every_steps': steps_,
      'checkpoint_every_steps': steps_,
      'progress_bar': False,
  }
  cmd = [
      sys.executable,
      '-m',
      'osgan_jax.main',
      f'--config={REAL_CONFIG}',
      f'--workdir={workdir}',
      *[f'--config.{k}={v}' for k, v in args.items()],
  ]
  t0 = time.perf_counter()
  result = subprocess.run(cmd, cwd=common.REPO, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f'main failed: {result.stderr[-3000:]}')
  process_s = time.perf_counter() - t0
  print(f'# main {stage}-stage: {steps_} steps in {process_s:.1f} s', file=sys.stderr)
  return (*logged_rate(workdir), process_s)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--out', help='results directory (default: a new temporary one)')
  p.add_argument('--work', default='', help='scratch directory (default: a temp dir)')
  p.add_argument('--images', type=int, default=2048)
  p.add_argument('--resolution', type=int, default=64)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--sources', default='prepared,folder')
  p.add_argument('--trivial_steps', type=int, default=600)
  p.add_argument('--real', action='store_true', help='also the DCGAN 64 steps')
  p.add_argument('--real_steps', type=int, default=600)
  p.add_argument('--width', type=int, default=128)
  p.add_argument('--rounds', type=int, default=15)
  p.add_argument('--per_call', type=int, default=10)
  args = p.parse_args(argv)
  # `python -m osgan_jax.main` shares the device: set before this process's backend starts.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  work = args.work or tempfile.mkdtemp(prefix='loop_throughput_')
  out = common.output_dir(args.out, 'loop_throughput')
  prov = common.provenance(common.command_line('experiments.loop_throughput', argv))
  rows, device = [], prov['device']

  def emit(**row):
    row = {**row, 'device': device, 'batch': args.batch}
    rows.append(row)
    print(json.dumps(row), flush=True)

  folder, prepared = os.path.join(work, 'folder'), os.path.join(work, 'prepared')
  common.make_images(folder, args.images, args.resolution)
  if not os.path.exists(os.path.join(prepared, 'meta.json')):
    prepare_data.prepare(
        f'folder:{folder}',
        prepared,
        resolution=args.resolution,
        channels=3,
        progress_bar=False,
    )
  paths = {'prepared': prepared, 'folder': folder}
  for source in args.sources.split(','):
    cfg = data_config(source, paths[source], args.resolution)
    n = args.trivial_steps if source == 'prepared' else max(args.trivial_steps // 10, 20)
    emit(
        source=source,
        step='none',
        through_loop=False,
        images_per_s=iterator_rate(cfg, args.batch, n),
    )
    workdir = os.path.join(work, f'trivial_{source}')
    shutil.rmtree(workdir, ignore_errors=True)
    emit(
        source=source,
        step='trivial',
        through_loop=True,
        images_per_s=loop_rate(cfg, args.batch, n, workdir),
    )

  if args.real:
    overrides = real_overrides(args.width, args.batch, args.resolution)
    for stage, rate in steps_alone(
        ('one', 'two'), overrides, args.rounds, args.per_call
    ).items():
      emit(source='device_batch', step=stage, through_loop=False, images_per_s=rate)
    for stage in ('one', 'two'):
      workdir = os.path.join(work, f'main_{stage}')
      shutil.rmtree(workdir, ignore_errors=True)
      rate, intervals, process_s = through_main(
          stage, overrides, prepared, args.real_steps, workdir
      )
      emit(
          source='prepared',
          step=stage,
          through_loop=True,
          images_per_s=rate,
          log_intervals=intervals,
          process_s=round(process_s, 1),  # the whole process: start-up, compiles
      )

  record = {'provenance': prov, 'device': device, 'args': vars(args), 'rows': rows}
  path = common.write_json(os.path.join(out, 'loop_throughput.json'), record)
  print(summary(rows), file=sys.stderr)
  print(f'wrote {path}', file=sys.stderr)
  return 0


def summary(rows) -> str:
  """A short table: every row, and through-loop / alone for the real steps."""
  lines = [f'{"source":>13} {"step":>8} {"loop":>5} {"images/s":>10}']
  for r in rows:
    lines.append(
        f'{r["source"]:>13} {r["step"]:>8} {str(r["through_loop"]):>5} '
        f'{r["images_per_s"]:>10.0f}'
    )
  alone = {r['step']: r['images_per_s'] for r in rows if r['source'] == 'device_batch'}
  looped = {
      r['step']: r['images_per_s']
      for r in rows
      if r['through_loop'] and r['step'] in alone
  }
  for s in looped:
    lines.append(f'{s}-stage through main / alone: {looped[s] / alone[s]:.3f}')
  if {'one', 'two'} <= set(looped):
    lines.append(
        f'end to end one/two: {looped["one"] / looped["two"]:.3f}; alone: '
        f'{alone["one"] / alone["two"]:.3f}'
    )
  return '\n'.join(lines)


if __name__ == '__main__':
  sys.exit(main())
