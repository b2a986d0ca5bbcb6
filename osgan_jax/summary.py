"""Parameter tables of a model's generator and discriminator, with no real memory.

    python -m osgan_jax.summary --model stylegan2 --resolution 1024
    python -m osgan_jax.summary --model stylegan2 --resolution 256 --num-fp16-res 4
    python -m osgan_jax.summary --model stylegan2_tiny --resolution 32 --img-channels 1
    python -m osgan_jax.summary --model dcgan --resolution 64 --img-channels 3

Everything is built with ``jax.eval_shape`` (``init`` and one forward pass with
``capture_intermediates``), so even the 1024x1024 StyleGAN2 costs only tracing time.
For each network it prints one row per submodule (StyleGAN2: the mapping layers and
the synthesis / discriminator resolution blocks; ``--depth`` changes the level) with
its trainable parameter count, non-trainable buffer count (other collections, e.g.
``w_avg`` and ``noise_const``), parameter tensor count, output shapes and dtypes, then
totals; ``--verbose`` also lists every parameter with its shape. The last line of the
output is one JSON object ``{"G": n, "G_mapping": n, "G_synthesis": n, "D": n}``
(``G_mapping`` / ``G_synthesis`` only where the generator has such submodules).

Models: ``stylegan2`` (config-f defaults, official channel formula),
``stylegan2_tiny`` (the small CPU variant), and any other architecture registered in
``osgan_jax.models`` (e.g. ``dcgan``) whose ``Generator`` / ``Discriminator`` take
``resolution`` and ``channels`` / ``img_channels`` fields and whose generator has a
``z_dim``; model-specific options that a class lacks are ignored for it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

# Options forwarded to the model constructors when set (CLI name -> field name).
_MODEL_OPTIONS = (
    ('channel_base', int), ('channel_max', int), ('z_dim', int), ('w_dim', int),
    ('mapping_layers', int), ('c_dim', int), ('num_fp16_res', int),
    ('conv_clamp', float), ('architecture', str), ('width', int),
)


def _count(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _num_leaves(tree) -> int:
  return len(jax.tree_util.tree_leaves(tree))


def _fields(cls) -> set:
  return set(getattr(cls, '__dataclass_fields__', {}))


def _filter_kwargs(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
  fields = _fields(cls)
  out = {k: v for k, v in kwargs.items() if k in fields}
  # image channels: StyleGAN2 says img_channels, DCGAN says channels.
  if 'img_channels' in kwargs:
    if 'img_channels' not in fields and 'channels' in fields:
      out['channels'] = kwargs['img_channels']
  return out


def build_models(model: str, resolution: int, **options) -> Tuple[Any, Any]:
  """``(generator, discriminator)`` module instances for a model name and options."""
  options = {k: v for k, v in options.items() if v is not None}
  if model in ('stylegan2', 'stylegan2_tiny'):
    from osgan_jax.models import stylegan2 as sg
    maker = sg.config_f if model == 'stylegan2' else sg.tiny
    known = _fields(sg.Generator) | _fields(sg.Discriminator)
    return maker(resolution=resolution, **{k: v for k, v in options.items() if k in known})
  from osgan_jax import models as registry
  g_cls, d_cls = registry.get(model)
  kwargs = dict(options, resolution=resolution)
  return g_cls(**_filter_kwargs(g_cls, kwargs)), d_cls(**_filter_kwargs(d_cls, kwargs))


def _img_channels(module) -> int:
  for name in ('img_channels', 'channels'):
    if hasattr(module, name):
      return int(getattr(module, name))
  raise ValueError(f'{type(module).__name__} has no img_channels/channels field')


def _rngs():
  names = ('params', 'noise', 'mixing', 'dropout')
  return {n: jax.random.fold_in(jax.random.key(0), i) for i, n in enumerate(names)}


def abstract_variables(module, *args, **kwargs):
  """``(variables, calls)`` of a module, via ``jax.eval_shape`` (no real memory).

  ``variables`` are ShapeDtypeStructs; ``calls`` maps each submodule path (a tuple of
  names), in the order the forward pass first calls it, to its output
  ``[(shape, dtype), ...]`` (of its last call). ``args`` may be ShapeDtypeStructs;
  ``kwargs`` go to ``__call__`` (e.g. ``train=False``).
  """
  calls: Dict[Tuple[str, ...], List[Tuple[Tuple[int, ...], str]]] = {}

  def interceptor(next_fun, a, kw, context):
    path = tuple(context.module.path)
    is_call = context.method_name == '__call__' and path
    if is_call and path not in calls:
      calls[path] = []
    out = next_fun(*a, **kw)
    if is_call:
      calls[path] = [(tuple(l.shape), str(l.dtype)) for l in jax.tree_util.tree_leaves(out)
                     if hasattr(l, 'shape')]
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
  """One row per submodule path truncated at ``depth``, in forward-pass order.

  Rows hold trainable parameters (``params``), buffers (every other collection),
  the number of parameter tensors, and the module's output shapes / dtypes.
  """
  params = _flatten(variables.get('params', {}))
  buffers = {}
  for col, tree in variables.items():
    if col != 'params':
      buffers.update({(col,) + k: v for k, v in _flatten(tree).items()})
  rows: Dict[Tuple[str, ...], Dict[str, Any]] = {}

  def row(key):
    if key not in rows:
      out = calls.get(key, [])
      rows[key] = dict(module='/'.join(key) or '<root>', params=0, buffers=0, tensors=0,
                       output=' '.join(_fmt_shape(s) for s, _ in out) or '-',
                       dtype=' '.join(sorted({d for _, d in out})) or '-',
                       param_shapes=[])
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


def format_table(title: str, rows: Sequence[Dict[str, Any]], total_params: int,
                 total_buffers: int, verbose: bool = False) -> str:
  headers = ('Module', 'Parameters', 'Buffers', 'Tensors', 'Output shape', 'Datatype')
  body = [(r['module'], f"{r['params']:,}", f"{r['buffers']:,}", str(r['tensors']),
           r['output'], r['dtype']) for r in rows]
  total = ('Total', f'{total_params:,}', f'{total_buffers:,}',
           str(sum(r['tensors'] for r in rows)), '', '')
  widths = [max(len(h), *(len(b[i]) for b in body + [total])) for i, h in enumerate(headers)]

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


def summarize(generator, discriminator, batch_size: int = 4,
              g_depth: Optional[int] = None, d_depth: Optional[int] = None,
              verbose: bool = False, out=None) -> Dict[str, int]:
  """Prints the tables of ``generator`` / ``discriminator``; returns the JSON totals."""
  out = out or sys.stdout
  z_dim = int(getattr(generator, 'z_dim'))
  resolution = int(getattr(generator, 'resolution'))
  channels = _img_channels(generator)
  z = jax.ShapeDtypeStruct((batch_size, z_dim), jnp.float32)
  images = jax.ShapeDtypeStruct((batch_size, resolution, resolution, channels), jnp.float32)

  g_vars, g_calls = abstract_variables(generator, z, train=False)
  d_vars, d_calls = abstract_variables(discriminator, images, train=False)
  g_params = g_vars.get('params', {})
  g_top = set(g_params)
  nested = {'mapping', 'synthesis'} & g_top
  if g_depth is None:
    g_depth = 2 if nested else 1
  if d_depth is None:
    d_depth = 1

  def buffers(v):
    return sum(_count(t) for c, t in v.items() if c != 'params')

  totals = {'G': _count(g_params)}
  if 'mapping' in g_top:
    totals['G_mapping'] = _count(g_params['mapping'])
  if 'synthesis' in g_top:
    totals['G_synthesis'] = _count(g_params['synthesis'])
  totals['D'] = _count(d_vars.get('params', {}))

  g_title = (f'Generator {type(generator).__module__}.{type(generator).__name__} '
             f'(z [{batch_size},{z_dim}] -> images [{batch_size},{resolution},'
             f'{resolution},{channels}])')
  print(format_table(g_title, module_rows(g_vars, g_calls, g_depth), totals['G'],
                     buffers(g_vars), verbose), file=out)
  for key in ('G_mapping', 'G_synthesis'):
    if key in totals:
      print(f'  {key[2:]}: {totals[key]:,} parameters', file=out)
  print(file=out)
  d_title = (f'Discriminator {type(discriminator).__module__}.'
             f'{type(discriminator).__name__} (images [{batch_size},{resolution},'
             f'{resolution},{channels}] -> logits)')
  print(format_table(d_title, module_rows(d_vars, d_calls, d_depth), totals['D'],
                     buffers(d_vars), verbose), file=out)
  print(file=out)
  print(json.dumps(totals), file=out)
  return totals


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m osgan_jax.summary', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='stylegan2',
                 help='stylegan2, stylegan2_tiny, or a name registered in osgan_jax.models')
  p.add_argument('--resolution', type=int, default=1024)
  p.add_argument('--img-channels', type=int, default=None,
                 help='image channels (default: the model default, 3 / tiny: 1)')
  for name, typ in _MODEL_OPTIONS:
    p.add_argument('--' + name.replace('_', '-'), type=typ, default=None)
  p.add_argument('--batch-size', type=int, default=4)
  p.add_argument('--g-depth', type=int, default=None,
                 help='module depth of the G rows (default: 2 if G has mapping/synthesis)')
  p.add_argument('--d-depth', type=int, default=None, help='module depth of the D rows')
  p.add_argument('--verbose', action='store_true', help='list every parameter tensor')
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, int]:
  args = parse_args(argv)
  options = {name: getattr(args, name) for name, _ in _MODEL_OPTIONS}
  options['img_channels'] = args.img_channels
  g, d = build_models(args.model, args.resolution, **options)
  return summarize(g, d, batch_size=args.batch_size, g_depth=args.g_depth,
                   d_depth=args.d_depth, verbose=args.verbose)


if __name__ == '__main__':
  main()
