"""Time to the first training step of ``python -m osgan_jax.main``, against an older
commit on the same machine in the same run, and again with the compilation cache warm.

  python -m experiments.startup [--config configs/stylegan2_ffhq.py]
      [--override data.resolution=256 ...] [--baseline e888d3f] [--repeats 1] [--out DIR]

Each measurement is a fresh process training one step in a fresh workdir on a folder of
synthetic PNGs; its time is the wall time from the process's start to the loop's "First
step" log line (data, networks, initialiser, D's coupling, the first step's compile and
its run). Per repeat, in turn: the baseline commit (a git worktree of it, as it was),
this tree with an empty compilation cache, and this tree again with the cache the
previous run wrote. The ``Setup:`` lines of this tree's runs give the breakdown.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments import common

FIRST_STEP = re.compile(r'First step \(with compilation\) took ([\d.]+) s')
SETUP = re.compile(r'Setup: (.*)')
CACHE = re.compile(r'Compilation cache: (\d+) programs loaded, (\d+) compiled')
DEFAULT_OVERRIDES = (
    'data.resolution=256',
    'batch_size=8',
    'num_train_steps=1',
    'progress_bar=False',
)


def run_once(tree: str, config: str, overrides, workdir: str, env: dict) -> dict:
  """One process of one step: seconds to the first-step line and to its exit, the
  loop's own first-step figure, the Setup lines and the cache counts."""
  command = [
      sys.executable,
      '-m',
      'osgan_jax.main',
      f'--config={os.path.join(tree, config)}',
      f'--workdir={workdir}',
      *(f'--config.{o}' for o in overrides),
  ]
  t0 = time.perf_counter()
  proc = subprocess.Popen(
      command,
      cwd=tree,
      env={**env, 'PYTHONPATH': tree},
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  out = {'setup': [], 'to_first_step_s': None}
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if m := SETUP.search(line):
      out['setup'].append(m.group(1).strip())
    if m := CACHE.search(line):
      out['cache_loaded'], out['cache_compiled'] = int(m.group(1)), int(m.group(2))
    if m := FIRST_STEP.search(line):
      out['to_first_step_s'] = time.perf_counter() - t0
      out['first_step_logged_s'] = float(m.group(1))
  out['exit_status'], out['total_s'] = proc.wait(), time.perf_counter() - t0
  if out['to_first_step_s'] is None:
    raise RuntimeError(
        f'{" ".join(command)} ended without a first step:\n' + ''.join(lines[-30:])
    )
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--config', default='configs/stylegan2_ffhq.py')
  p.add_argument('--override', action='append', default=None, metavar='KEY=VALUE')
  p.add_argument('--baseline', help='a commit to measure beside this tree')
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument(
      '--images', type=int, default=16, help='synthetic PNGs in the data folder'
  )
  p.add_argument('--out', help='a directory (default: a new temporary one)')
  args = p.parse_args(argv)
  overrides = list(DEFAULT_OVERRIDES) + list(args.override or [])
  resolution = int(common.parse_overrides(overrides).get('data.resolution', 256))
  out_dir = common.output_dir(args.out, 'startup')
  scratch = tempfile.mkdtemp(prefix='osgan_startup_')
  data = os.path.join(scratch, 'images')
  common.make_images(data, args.images, resolution)
  overrides += ['data.name=folder', f'data.path={data}']
  record = {
      'provenance': common.provenance(common.command_line('experiments.startup', argv)),
      'config': args.config,
      'overrides': overrides,
      'baseline': args.baseline,
      'rows': [],
  }
  trees = {'current': common.REPO}
  try:
    if args.baseline:
      trees['baseline'] = os.path.join(scratch, 'baseline')
      subprocess.run(
          ['git', 'worktree', 'add', '--detach', trees['baseline'], args.baseline],
          cwd=common.REPO,
          check=True,
          capture_output=True,
      )
    env = dict(os.environ)
    env.pop('XLA_FLAGS', None)
    for r in range(args.repeats):
      cache = os.path.join(scratch, f'cache{r}')
      runs = [
          ('current, cold cache', 'current', cache),
          ('current, warm cache', 'current', cache),
      ]
      if args.baseline:
        runs.insert(0, (f'baseline {args.baseline}', 'baseline', 'off'))
      for name, tree, cache_dir in runs:
        workdir = tempfile.mkdtemp(dir=scratch)
        run_env = {**env, 'OSGAN_COMPILATION_CACHE': cache_dir}
        row = {'run': name, 'repeat': r}
        row.update(run_once(trees[tree], args.config, overrides, workdir, run_env))
        common.log(f'{name}: first step after {row["to_first_step_s"]:.1f} s')
        record['rows'].append(row)
        common.write_json(os.path.join(out_dir, 'startup.json'), record)
  finally:
    if args.baseline:
      subprocess.run(
          ['git', 'worktree', 'remove', '--force', trees['baseline']],
          cwd=common.REPO,
          capture_output=True,
      )
    shutil.rmtree(scratch, ignore_errors=True)
  print(table(record['rows']))
  return 0


def table(rows) -> str:
  """Median seconds to the first step per run kind, and the ratio to the baseline."""
  by = {}
  for row in rows:
    by.setdefault(row['run'], []).append(row['to_first_step_s'])
  base = next((np.median(v) for k, v in by.items() if k.startswith('baseline')), None)
  lines = [
      (
          k,
          f'{np.median(v):.1f}',
          '-' if base is None else f'{np.median(v) / base:.2f}',
      )
      for k, v in by.items()
  ]
  return common.markdown_table(('run', 'seconds to the first step', 'of baseline'), lines)


if __name__ == '__main__':
  sys.exit(main())
