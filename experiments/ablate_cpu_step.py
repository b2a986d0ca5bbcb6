"""What each CPU-speed choice of issue 8 is worth: the one-stage DCGAN step with one
choice undone or replaced by the alternative it beat, side by side with the current
step in one process.

Each ablation rebuilds ``cpu_throughput.jax_dcgan_steps`` (``conv_impl='matmul'``)
with one knob turned back while it traces, then every round runs the current step (A)
and the ablated one (B), interleaved; the table gives the median B/A of per-round
ratios (above 1: the change helps) and both steps' dot/conv GFLOPs.

* ``scatter_derivatives``: stride-2 transposed convs differentiate their scatter-form
  forward directly (gathering every tap of the cotangent) instead of going through
  the strided conv they are the adjoint of (``conv_ops._transposed_strided``);
* ``kernel_tangent``: kernel cotangents of patch convs as XLA's transposed-operand dot
  (``_patch_conv`` instead of ``_patch_conv_kernel_tangent``);
* ``flax_group_norm``: ``flax.linen.GroupNorm`` instead of ``models.norms.GroupNorm``.

The malloc setting (``osgan_jax.training.host_memory``) is process-wide and cannot be undone
inside one process: compare ``cpu_throughput.py --malloc default`` with the default.

  python experiments/ablate_cpu_step.py --rounds 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def _patched(obj, name, value):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


def ablation(name: str):
  """A context manager that undoes one change while a step is traced."""
  import flax.linen as nn
  from osgan_jax.models import conv_ops, norms

  if name == 'scatter_derivatives':
    return _patched(
        conv_ops,
        '_transposed_strided',
        lambda x, kernel, s, pads, reference: conv_ops._scatter_transpose(
            x, kernel, s, pads
        ),
    )
  if name == 'kernel_tangent':
    return _patched(conv_ops, '_patch_conv_kernel_tangent', conv_ops._patch_conv)
  if name == 'flax_group_norm':
    return _patched(norms, 'GroupNorm', nn.GroupNorm)
  raise ValueError(f'unknown ablation {name!r}; valid: {", ".join(ABLATIONS)}')


ABLATIONS = ('scatter_derivatives', 'kernel_tangent', 'flax_group_norm')


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--ablations', default=','.join(ABLATIONS))
  p.add_argument('--rounds', type=int, default=10)
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--resolution', type=int, default=64)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument(
      '--malloc',
      choices=('keep', 'default'),
      default='keep',
      help='as in cpu_throughput.py',
  )
  p.add_argument('--out', default='')
  args = p.parse_args(argv)
  from osgan_jax.training import host_memory

  malloc_kept = args.malloc == 'keep' and host_memory.keep_freed_memory()
  import cpu_throughput  # pylint: disable=import-error

  def build():
    out = cpu_throughput.jax_dcgan_steps(
        args.width, args.resolution, args.batch, conv_impl='matmul', stages=('one',)
    )
    return (
        out['one'],
        out['matmul_flops']['one'][0] / 1e9,
        out['compiled']['one'].as_text(),
    )

  names = [n for n in args.ablations.split(',') if n]
  for n in names:
    ablation(n)  # validates the names before anything is compiled
  current, current_gflop, current_hlo = build()
  ablated = {}
  for n in names:
    with ablation(n):
      ablated[n] = build()
  times = {n: [] for n in ['current'] + names}
  for r in range(args.rounds + 1):
    for n, step in [('current', current)] + [(n, ablated[n][0]) for n in names]:
      t0 = time.perf_counter()
      step()
      if r:
        times[n].append(time.perf_counter() - t0)
  rows = {}
  print(
      '| undone | ms/step current / undone | undone / current (median, min-max) | '
      'dot+conv GFLOP current / undone |'
  )
  print('| --- | --- | --- | --- |')
  for n in names:
    ratio = np.asarray(times[n]) / np.asarray(times['current'])
    rows[n] = {
        'ms_current': 1e3 * float(np.median(times['current'])),
        'ms_undone': 1e3 * float(np.median(times[n])),
        'ratio_median': float(np.median(ratio)),
        'ratio_min': float(ratio.min()),
        'ratio_max': float(ratio.max()),
        'gflop_current': current_gflop,
        'gflop_undone': ablated[n][1],
        'same_hlo': ablated[n][2] == current_hlo,
    }
    r = rows[n]
    print(
        f'| {n} | {r["ms_current"]:.0f} / {r["ms_undone"]:.0f} | '
        f'{r["ratio_median"]:.3f} ({r["ratio_min"]:.3f}-{r["ratio_max"]:.3f}) | '
        f'{current_gflop:.1f} / {ablated[n][1]:.1f} |',
        flush=True,
    )
  result = {
      'config': vars(args),
      'platform': cpu_throughput.platform_info(malloc_kept),
      'rows': rows,
  }
  cpu_throughput.write_result(result, args.out)
  return result


if __name__ == '__main__':
  main()
