"""Parameter tables of a generator and a discriminator, with no real memory: every
network is built with ``jax.eval_shape`` (``python -m osgan_jax.summary`` prints them)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


def _count(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _img_channels(module) -> int:
  for name in ('img_channels', 'channels'):
    if hasattr(module, name):
      return int(getattr(module, name))
  raise ValueError(f'{type(module).__name__} has no img_channels/channels field')


def _rngs():
  names = ('params', 'noise', 'mixing', 'dropout')
  return {n: jax.random.fold_in(jax.random.key(0), i) for i, n in enumerate(names)}


def abstract_variables(module, *args, **kwargs):
  """``(variables, calls)`` of a module via ``jax.eval_shape`` (no real memory).

  ``calls`` maps each submodule path, in first-call order, to its last outputs'
  ``[(shape, dtype), ...]``; ``kwargs`` go to ``__call__``.
  """
  calls: Dict[Tuple[str, ...], List[Tuple[Tuple[int, ...], str]]] = {}

  def interceptor(next_fun, a, kw, context):
    path = tuple(context.module.path)
    is_call = context.method_name == '__call__' and path
    if is_call and path not in calls:
      calls[path] = []
    out = next_fun(*a, **kw)
    if is_call:
      calls[path] = [
          (tuple(l.shape), str(l.dtype))
          for l in jax.tree_util.tree_leaves(out)
          if hasattr(l, 'shape')
      ]
    return out

  def run(*args):
    variables = module.init(_rngs(), *args, **kwargs)
    with nn.intercept_methods(interceptor):
      module.apply(variables, *args, rngs=_rngs(), **kwargs)
    return variables

  variables = jax.eval_shape(run, *args)
  return variables, calls


def _fmt_shape(x) -> str:
  shape = x if isinstance(x, tuple) else x.shape
  return '[' + ','.join(str(d) for d in shape) + ']'


def _flatten(tree) -> Dict[Tuple[str, ...], Any]:
  if not tree:
    return {}
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def module_rows(variables, calls, depth: int) -> List[Dict[str, Any]]:
  """One row per submodule path cut at ``depth``, in forward-pass order: parameters,
  buffers (other collections), tensor count, output shapes and dtypes."""
  params = _flatten(variables.get('params', {}))
  buffers = {}
  for col, tree in variables.items():
    if col != 'params':
      buffers.update({(col,) + k: v for k, v in _flatten(tree).items()})
  rows: Dict[Tuple[str, ...], Dict[str, Any]] = {}

  def row(key):
    if key not in rows:
      out = calls.get(key, [])
      rows[key] = dict(
          module='/'.join(key) or '<root>',
          params=0,
          buffers=0,
          tensors=0,
          output=' '.join(_fmt_shape(s) for s, _ in out) or '-',
          dtype=' '.join(sorted({d for _, d in out})) or '-',
          param_shapes=[],
      )
    return rows[key]

  keys = {k[:-1][:depth] for k in params} | {k[1:-1][:depth] for k in buffers}
  for path in calls:  # rows in forward-pass order
    if path in keys:
      row(path)
  for k, v in params.items():
    r = row(k[:-1][:depth])
    r['params'] += math.prod(v.shape)
    r['tensors'] += 1
    r['param_shapes'].append(('/'.join(k), _fmt_shape(v)))
  for k, v in buffers.items():
    r = row(k[1:-1][:depth])
    r['buffers'] += math.prod(v.shape)
    r['param_shapes'].append((f'[{k[0]}] ' + '/'.join(k[1:]), _fmt_shape(v)))
  return list(rows.values())


def format_table(
    title: str,
    rows: Sequence[Dict[str, Any]],
    total_params: int,
    total_buffers: int,
    verbose: bool = False,
) -> str:
  headers = ('Module', 'Parameters', 'Buffers', 'Tensors', 'Output shape', 'Datatype')

  def cells(module, params, buffers, tensors, output, dtype, **_):
    return (module, f'{params:,}', f'{buffers:,}', str(tensors), output, dtype)

  body = [cells(**r) for r in rows]
  total = cells(
      'Total', total_params, total_buffers, sum(r['tensors'] for r in rows), '', ''
  )
  widths = [
      max(len(h), *(len(b[i]) for b in body + [total])) for i, h in enumerate(headers)
  ]

  def line(cells):
    out = []
    for i, (c, w) in enumerate(zip(cells, widths)):
      out.append(c.rjust(w) if i in (1, 2, 3) else c.ljust(w))
    return '  '.join(out).rstrip()

  sep = '  '.join('-' * w for w in widths)
  lines = [title, line(headers), sep]
  for r, b in zip(rows, body):
    lines.append(line(b))
    if verbose:
      for name, shape in r['param_shapes']:
        lines.append(f'    {name:<60s} {shape}')
  lines += [sep, line(total)]
  return '\n'.join(lines)


def summarize(
    generator,
    discriminator,
    batch_size: int = 4,
    g_depth: Optional[int] = None,
    d_depth: Optional[int] = None,
    verbose: bool = False,
    out=None,
    num_classes: int = 0,
) -> Dict[str, int]:
  """Prints the tables of ``generator`` / ``discriminator``; returns the JSON totals."""
  out = out or sys.stdout
  z_dim = int(getattr(generator, 'z_dim'))
  resolution = int(getattr(generator, 'resolution'))
  channels = _img_channels(generator)
  z = jax.ShapeDtypeStruct((batch_size, z_dim), jnp.float32)
  images = jax.ShapeDtypeStruct(
      (batch_size, resolution, resolution, channels), jnp.float32
  )

  labels = (jax.ShapeDtypeStruct((batch_size,), jnp.int32),) if num_classes > 0 else ()
  g_vars, g_calls = abstract_variables(generator, z, *labels, train=False)
  d_vars, d_calls = abstract_variables(discriminator, images, *labels, train=False)
  g_params = g_vars.get('params', {})
  nested = [k for k in ('mapping', 'synthesis') if k in g_params]
  if g_depth is None:
    g_depth = 2 if nested else 1
  if d_depth is None:
    d_depth = 1
  totals = {
      'G': _count(g_params),
      **{f'G_{k}': _count(g_params[k]) for k in nested},
      'D': _count(d_vars.get('params', {})),
  }

  def print_table(title, variables, calls, depth, total):
    rows = module_rows(variables, calls, depth)
    buffers = sum(_count(t) for c, t in variables.items() if c != 'params')
    print(format_table(title, rows, total, buffers, verbose), file=out)

  g_title = (
      f'Generator {type(generator).__module__}.{type(generator).__name__} '
      f'(z [{batch_size},{z_dim}] -> images [{batch_size},{resolution},'
      f'{resolution},{channels}])'
  )
  print_table(g_title, g_vars, g_calls, g_depth, totals['G'])
  for k in nested:
    print(f'  {k}: {totals["G_" + k]:,} parameters', file=out)
  print(file=out)
  d_title = (
      f'Discriminator {type(discriminator).__module__}.'
      f'{type(discriminator).__name__} (images [{batch_size},{resolution},'
      f'{resolution},{channels}] -> logits)'
  )
  print_table(d_title, d_vars, d_calls, d_depth, totals['D'])
  print(file=out)
  print(json.dumps(totals), file=out)
  return totals
