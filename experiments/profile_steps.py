"""Where a training step's time goes: per-op CPU time by kind, one- vs two-stage.

Issue 6's analysis of why the wall-time ratio falls short of the FLOP ratio. Runs a
few steps of each variant of a ``benchmark_speed`` row under ``jax.profiler.trace``,
reads the Perfetto trace (one event per executed XLA thunk, on XLA's worker threads)
and sums the op time by kind: convolutions (XNNPACK/YNNPACK fusions and plain
convolutions), dots, data movement (concatenate, copy, slice, pad, transpose), other
fusions (elementwise, normalisation, optimiser) and reductions. ``busy/wall`` is the
summed op time over the step's wall time: above 1 when XLA runs independent ops on
both threads at once.

  python experiments/profile_steps.py --models dcgan32 --steps 3
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import benchmark_speed as bench  # noqa: E402  pylint: disable=import-error
from osgan_jax.core import steps  # noqa: E402

KINDS = ('conv', 'dot', 'data_movement', 'reduce', 'other_fusion')
_MOVEMENT = (
    'concatenate',
    'copy',
    'slice',
    'pad',
    'transpose',
    'bitcast',
    'dynamic',
    'gather',
    'scatter',
    'reverse',
    'broadcast.',
)
_NOT_OPS = ('ThunkExecutor', '$', 'PjRt', 'Pjit', 'Execute')


def op_kind(name: str) -> str | None:
  """The kind of an XLA thunk from its HLO name; None for non-op trace events."""
  if name.startswith(_NOT_OPS) or ' ' in name:
    return None
  if name.startswith(('ynn_fusion', 'xnn_fusion', 'convolution', 'onednn', 'conv')):
    return 'conv'
  if name.startswith('dot'):
    return 'dot'
  if name.startswith('reduce'):
    return 'reduce'
  if name.startswith(_MOVEMENT):
    return 'data_movement'
  return 'other_fusion'


def summarize_trace(events, num_steps: int) -> dict:
  """Per-step op time (ms) by kind, wall time and busy/wall from trace events."""
  by_kind = collections.Counter()
  counts = collections.Counter()
  waits = []
  top = collections.Counter()
  for e in events:
    if e.get('ph') != 'X':
      continue
    name = e.get('name', '')
    if name == 'ThunkExecutor::Execute (wait for completion)':
      waits.append(e.get('dur', 0))
    kind = op_kind(name)
    if kind is not None:
      by_kind[kind] += e.get('dur', 0)
      counts[kind] += 1
      top[name] += e.get('dur', 0)
  busy = sum(by_kind.values())
  wall = sum(waits) if waits else None
  out = {f'{k}_ms': by_kind[k] / 1e3 / num_steps for k in KINDS}
  out.update({f'{k}_ops': counts[k] / num_steps for k in KINDS})
  out['ops'] = sum(counts.values()) / num_steps
  out['busy_ms'] = busy / 1e3 / num_steps
  out['wall_ms'] = None if wall is None else wall / 1e3 / num_steps
  out['busy_over_wall'] = None if not wall else busy / wall
  out['top_ops'] = [(n, round(d / 1e3 / num_steps, 2)) for n, d in top.most_common(8)]
  return out


def profile_row(name: str, num_steps: int, workdir: str) -> dict:
  """variant -> ``summarize_trace`` of ``num_steps`` profiled steps (after 2 warm-up)."""
  config, gan, init, batch = bench.build(bench.ROWS[name])
  del config
  state = init(jax.random.PRNGKey(0))
  gan = steps.probe_per_sample(gan, state, {k: v[:4] for k, v in batch.items()})
  rng = np.asarray(jax.random.PRNGKey(1))
  out = {}
  for variant, (stage, mode) in bench.VARIANTS.items():
    variant_gan = gan if mode is None else dataclasses.replace(gan, mode=mode)
    step = steps.jit_step(variant_gan, stage)
    s = init(jax.random.PRNGKey(0))
    for _ in range(2):
      s, m = step(s, batch, rng)
      jax.block_until_ready((s, m))
    trace_dir = os.path.join(workdir, f'{name}_{variant}')
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(num_steps):
        s, m = step(s, batch, rng)
        jax.block_until_ready((s, m))
    path = glob.glob(
        os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'), recursive=True
    )[0]
    with gzip.open(path) as f:
      trace = json.load(f)
    events = trace['traceEvents'] if isinstance(trace, dict) else trace
    out[variant] = summarize_trace(events, num_steps)
  return out


def table(name: str, summary: dict) -> str:
  head = ('variant', 'wall ms', 'busy ms', 'busy/wall', 'ops') + tuple(
      f'{k} ms (ops)' for k in KINDS
  )
  lines = [f'**{name}**', '', '| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for variant, s in summary.items():
    cells = [
        variant,
        f'{s["wall_ms"]:.1f}',
        f'{s["busy_ms"]:.1f}',
        f'{s["busy_over_wall"]:.2f}',
        f'{s["ops"]:.0f}',
    ] + [f'{s[k + "_ms"]:.1f} ({s[k + "_ops"]:.0f})' for k in KINDS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--models', default='dcgan32')
  p.add_argument('--steps', type=int, default=3, help='profiled steps per variant')
  p.add_argument('--out', default='', help='JSON file for the summaries')
  args = p.parse_args(argv)
  results = {}
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    for name in args.models.split(','):
      results[name] = profile_row(name, args.steps, workdir)
      print(table(name, results[name]), flush=True)
      for variant, s in results[name].items():
        print(f'  {variant} top ops (ms/step): {s["top_ops"]}')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1)
  print(f'{time.perf_counter() - t0:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
