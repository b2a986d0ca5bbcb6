"""Where JAX and PyTorch differ on the CPU: the DCGAN convolutions one at a time.

Issue 8. For every convolution of the one-stage DCGAN step, at the step's shapes (D's
convs at twice the batch, real + fake; G's transposed convs at the batch), times

* ``jax-matmul`` and ``jax-xla``: ``conv_ops.conv2d`` / ``conv_transpose2d`` with
  that ``impl``, the forward alone and the backward alone (one jitted ``jax.vjp``
  returning the input and kernel cotangents; the forward is dead code there);
* ``torch`` (when importable): ``nn.Conv2d`` / ``nn.ConvTranspose2d`` without bias,
  the forward under ``no_grad`` and ``y.backward(ct)`` alone (its graph is built
  outside the timer);
* ``gemm``: JAX's ``[M, K] @ [K, N]`` matmul holding exactly the layer's forward
  FLOPs (conv: M = output pixels, K = 16 C_in, N = C_out; transposed conv: M = input
  pixels, K = C_in, N = 16 C_out). Three of them bound any matmul formulation of the
  forward + backward from below, data movement aside.

Every round runs every variant of every layer once (interleaved), the table gives
medians. ``max_abs_diff`` checks that the two JAX implementations time the same
function. The same malloc setting as ``cpu_throughput.py`` applies (``--malloc``).

  python experiments/cpu_layers.py --rounds 6 --out experiments/results/cpu_layers.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cpu_throughput  # noqa: E402  pylint: disable=import-error,wrong-import-position

VARIANTS = ('jax-matmul', 'jax-xla', 'torch', 'gemm')


def dcgan_layers(
    width: int, resolution: int, batch: int, channels: int = 3
) -> list[dict]:
  """The stride-2 4x4 convolutions of the DCGAN step, D's then G's.

  Each: ``name``, ``kind`` ('conv' or 'transpose'), ``batch``, ``size`` (input H = W),
  ``c_in``, ``c_out``, ``gflop`` (forward, exact) and ``gemm`` (M, K, N).
  """
  chans = cpu_throughput._schedule(resolution, width)
  layers, size, c_in = [], resolution, channels
  for i, c_out in enumerate(chans):
    m = 2 * batch * (size // 2) ** 2
    layers.append(
        dict(
            name=f'D conv{i}',
            kind='conv',
            batch=2 * batch,
            size=size,
            c_in=c_in,
            c_out=c_out,
            gemm=[m, 16 * c_in, c_out],
        )
    )
    size, c_in = size // 2, c_out
  outs = chans[::-1][1:] + [channels]
  for i, c_out in enumerate(outs, start=1):
    m = batch * size**2
    layers.append(
        dict(
            name=f'G convT{i}',
            kind='transpose',
            batch=batch,
            size=size,
            c_in=c_in,
            c_out=c_out,
            gemm=[m, c_in, 16 * c_out],
        )
    )
    size, c_in = 2 * size, c_out
  for layer in layers:
    m, k, n = layer['gemm']
    layer['gflop'] = 2 * m * k * n / 1e9
  return layers


def _blocking(f: Callable, *args) -> Callable[[], None]:
  import jax

  return lambda: jax.block_until_ready(f(*args))


def jax_layer(layer: dict, impl: str, seed: int = 0) -> dict:
  """``{'forward': run, 'backward': run, 'output': forward's value}`` for conv_ops'
  ``impl``; each ``run()`` computes once and blocks."""
  import jax
  import jax.numpy as jnp
  from osgan_jax.models import conv_ops

  b, h, c, o = layer['batch'], layer['size'], layer['c_in'], layer['c_out']
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((b, h, h, c)), jnp.float32)
  w = jnp.asarray(0.02 * rng.standard_normal((4, 4, c, o)), jnp.float32)
  if layer['kind'] == 'conv':

    def f(x, w):
      return conv_ops.conv2d(x, w, (2, 2), ((1, 1), (1, 1)), impl=impl)

  else:  # the generator's padding (dcgan.Generator): PyTorch's k=4, s=2, p=1

    def f(x, w):
      return conv_ops.conv_transpose2d(x, w, (2, 2), ((2, 2), (2, 2)), impl=impl)

  out_shape = jax.eval_shape(f, x, w).shape
  ct = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)

  def cotangents(x, w, ct):
    return jax.vjp(f, x, w)[1](ct)

  forward = jax.jit(f).lower(x, w).compile()
  backward = jax.jit(cotangents).lower(x, w, ct).compile()
  return {
      'forward': _blocking(forward, x, w),
      'backward': _blocking(backward, x, w, ct),
      'output': forward(x, w),
  }


def gemm_layer(layer: dict, seed: int = 0) -> dict:
  import jax
  import jax.numpy as jnp

  m, k, n = layer['gemm']
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
  return {'forward': _blocking(jax.jit(jnp.dot).lower(a, b).compile(), a, b)}


def torch_layer(layer: dict, seed: int = 0) -> dict:
  """PyTorch's layer (NCHW, no bias); raises ImportError without torch."""
  import torch
  from torch import nn

  torch.manual_seed(seed)
  b, h, c, o = layer['batch'], layer['size'], layer['c_in'], layer['c_out']
  module = (nn.Conv2d if layer['kind'] == 'conv' else nn.ConvTranspose2d)(
      c, o, 4, 2, 1, bias=False
  )
  x = torch.randn(b, c, h, h, requires_grad=True)
  with torch.no_grad():
    ct = torch.randn(module(x).shape)

  def forward():
    with torch.no_grad():
      module(x)

  graph = {}

  def build():  # outside the timer
    module.zero_grad(set_to_none=True)
    x.grad = None
    graph['y'] = module(x)

  def backward():
    graph.pop('y').backward(ct)

  return {'forward': forward, 'backward': backward, 'before_backward': build}


def measure(runs: dict, rounds: int) -> dict:
  """``runs``: ``{(layer, variant): {'forward': f, 'backward': f, ...}}``; returns
  ``{(layer, variant): {'forward': [s], 'backward': [s]}}`` over ``rounds`` interleaved
  rounds after one warm-up round."""
  times = {
      key: {p: [] for p in ('forward', 'backward') if p in r} for key, r in runs.items()
  }
  for i in range(rounds + 1):
    for key, r in runs.items():
      for part in times[key]:
        if part == 'backward' and 'before_backward' in r:
          r['before_backward']()
        t0 = time.perf_counter()
        r[part]()
        if i:
          times[key][part].append(time.perf_counter() - t0)
  return times


def format_table(rows: list[dict], variants: list[str]) -> str:
  head = ['layer', 'GFLOP (fwd)'] + [
      f'{v} fwd / bwd ms' if v != 'gemm' else 'gemm ms' for v in variants
  ]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  totals = {v: [0.0, 0.0] for v in variants}
  for row in rows:
    cells = [row['name'], f'{row["gflop"]:.2f}']
    for v in variants:
      t = row['ms'].get(v)
      if t is None:
        cells.append('-')
        continue
      totals[v][0] += t['forward']
      totals[v][1] += t.get('backward', 0.0)
      cells.append(
          f'{t["forward"]:.1f}'
          if v == 'gemm'
          else f'{t["forward"]:.1f} / {t["backward"]:.1f}'
      )
    lines.append('| ' + ' | '.join(cells) + ' |')
  cells = ['total', f'{sum(r["gflop"] for r in rows):.2f}']
  for v in variants:
    f, b = totals[v]
    cells.append(f'{f:.0f}' if v == 'gemm' else f'{f:.0f} / {b:.0f}')
  lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--rounds', type=int, default=6)
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--resolution', type=int, default=64)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--variants', default=','.join(VARIANTS))
  p.add_argument(
      '--malloc',
      choices=('keep', 'default'),
      default='keep',
      help='as in cpu_throughput.py',
  )
  p.add_argument('--out', default='')
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(',') if v]
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    raise SystemExit(f'unknown variants {sorted(unknown)}; valid: {", ".join(VARIANTS)}')
  from osgan_jax.training import host_memory

  malloc_kept = args.malloc == 'keep' and host_memory.keep_freed_memory()

  layers = dcgan_layers(args.width, args.resolution, args.batch)
  runs, diffs = {}, {}
  for layer in layers:
    built = {}
    for v in variants:
      if v.startswith('jax-'):
        built[v] = jax_layer(layer, v[len('jax-') :])
      elif v == 'gemm':
        built[v] = gemm_layer(layer)
      else:
        try:
          built[v] = torch_layer(layer)
        except ImportError:
          continue
      runs[(layer['name'], v)] = built[v]
    if 'jax-matmul' in built and 'jax-xla' in built:
      diffs[layer['name']] = float(
          np.max(
              np.abs(
                  np.asarray(built['jax-matmul']['output'])
                  - np.asarray(built['jax-xla']['output'])
              )
          )
      )
  present = [v for v in variants if any(key[1] == v for key in runs)]
  times = measure(runs, args.rounds)
  rows = []
  for layer in layers:
    row = {
        k: layer[k]
        for k in ('name', 'kind', 'batch', 'size', 'c_in', 'c_out', 'gflop', 'gemm')
    }
    row['ms'] = {
        v: {
            part: 1e3 * float(np.median(ts))
            for part, ts in times[(layer['name'], v)].items()
        }
        for v in present
        if (layer['name'], v) in times
    }
    if layer['name'] in diffs:
      row['max_abs_diff'] = diffs[layer['name']]
    rows.append(row)
  print(format_table(rows, present))
  result = {
      'config': vars(args),
      'variants': present,
      'platform': cpu_throughput.platform_info(malloc_kept),
      'rows': rows,
  }
  cpu_throughput.write_result(result, args.out)
  return result


if __name__ == '__main__':
  main()
