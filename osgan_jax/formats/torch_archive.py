"""Reads ``torch.save`` files, TorchScript archives and pickled torch modules, without torch.

Zip archives (``torch.save`` since 1.6, ``torch.jit.save``), the legacy pre-1.6 format
and plain :func:`pickle.dump` files of torch modules (the StyleGAN2-ADA and R3GAN
snapshots) are unpickled by a restricted :class:`pickle.Unpickler` that rebuilds tensors
as numpy arrays, TorchScript modules as :class:`ScriptObject` and the modules of plain
pickles as :class:`PickledObject`; anything else a file names is refused, and no code a
file carries is run. Knows nothing about any network.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict

import numpy as np

__all__ = [
    'READ_ERRORS',
    'PickledObject',
    'ScriptObject',
    'read_pickle',
    'read_torch_pickle',
]

# What a damaged or foreign file raises while it is read (besides ValueError).
READ_ERRORS = (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    KeyError,
    EOFError,
    struct.error,
    TypeError,
    AttributeError,
    IndexError,
)

_STORAGE_DTYPES = {
    'FloatStorage': np.float32,
    'DoubleStorage': np.float64,
    'HalfStorage': np.float16,
    'BFloat16Storage': None,
    'LongStorage': np.int64,
    'IntStorage': np.int32,
    'ShortStorage': np.int16,
    'CharStorage': np.int8,
    'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:

  def __init__(self, name):
    if name not in _STORAGE_DTYPES or _STORAGE_DTYPES[name] is None:
      raise pickle.UnpicklingError(f'unsupported tensor storage type {name}')
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class ScriptObject:
  """A TorchScript module object: its class name and its attribute dict."""

  def __init__(self, qualname: str):
    self.qualname = qualname
    self.state: Dict[str, Any] = {}

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f'ScriptObject({self.qualname})'


class PickledObject:
  """An object of a plain pickle: its class's name and its attribute dict, nothing run.

  Modules of ``torch_utils.persistence`` (StyleGAN2-ADA) are named by their class name
  alone (their module is source text embedded in the file, never executed); classes a
  caller allows by name (R3GAN) by ``module.name``.
  """

  qualname = ''
  state: Any = None  # until the pickle sets it (unpickling calls no __init__)

  def __init__(self, qualname: str = '', state: Any = None):
    self.qualname = qualname or type(self).qualname
    self.state = {} if state is None else state

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f'PickledObject({self.qualname})'


def _reconstruct_persistent(meta):
  """``torch_utils.persistence``'s reconstructor, without importing the embedded source."""
  if not isinstance(meta, dict) or meta.get('type') != 'class':
    raise pickle.UnpicklingError('unsupported persistent object in a weights file')
  return PickledObject(str(meta['class_name']), meta.get('state'))


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
    raise pickle.UnpicklingError('refusing to load a numpy object scalar')
  return np.frombuffer(data, dtype)[0]


def _numpy_dtype(*args):
  dtype = np.dtype(*args)
  if dtype.hasobject:
    raise pickle.UnpicklingError('refusing to load a numpy object dtype')
  return dtype


# torch dtypes (pickled as globals of ``torch``) read as their names.
_TORCH_DTYPES = frozenset(
    'float32 float64 float16 bfloat16 int64 int32 int16 int8 uint8 bool'.split()
)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  arr = storage
  if not size:
    return arr[offset : offset + 1].reshape(()).copy()
  itemsize = arr.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      arr[offset:],
      shape=tuple(size),
      strides=tuple(s * itemsize for s in stride),
      writeable=False,
  )
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  return data


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles torch tensors as numpy arrays; everything else it needs is whitelisted."""

  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
      return _rebuild_tensor
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return _rebuild_parameter
    if module == 'torch' and name.endswith('Storage'):
      return _StorageType(name)
    if module == 'collections' and name == 'OrderedDict':
      return OrderedDict
    if module == 'torch.jit._pickle' and name.startswith('build_'):
      return list if name.endswith('list') else (lambda x: x)
    if module.startswith('__torch__'):
      qual = f'{module}.{name}'
      return type(
          name,
          (ScriptObject,),
          {'__init__': lambda self: ScriptObject.__init__(self, qual)},
      )
    raise pickle.UnpicklingError(f'refusing to load {module}.{name} from a weights file')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
      raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
    storage_type, key = pid[1], str(pid[2])
    numel = pid[4]
    return self._load_storage(key, storage_type.dtype, numel)


class _PlainUnpickler(_TorchUnpickler):
  """A plain ``pickle.dump`` of torch modules: storages are embedded legacy blobs."""

  def __init__(self, file, allowed):
    super().__init__(file, None)
    self._allowed = allowed

  def find_class(self, module, name):
    if module == 'torch.storage' and name == '_load_from_bytes':
      return _storage_from_bytes
    if module == 'torch_utils.persistence' and name == '_reconstruct_persistent_obj':
      return _reconstruct_persistent
    if module == 'dnnlib.util' and name == 'EasyDict':
      return dict
    if module in ('numpy.core.multiarray', 'numpy._core.multiarray') and name == 'scalar':
      return _numpy_scalar
    if module == 'numpy' and name == 'dtype':
      return _numpy_dtype
    if module == 'torch' and name in _TORCH_DTYPES:
      return name
    if self._allowed(module, name):
      return type(name, (PickledObject,), {'qualname': f'{module}.{name}'})
    return super().find_class(module, name)

  def persistent_load(self, pid):
    raise pickle.UnpicklingError(f'unexpected persistent id {pid!r} in a plain pickle')


def _storage_from_bytes(data: bytes) -> np.ndarray:
  """``torch.storage._load_from_bytes``: one storage saved in the legacy format."""
  storage = _read_legacy_bytes(data, 'an embedded tensor')
  if not isinstance(storage, np.ndarray):
    raise pickle.UnpicklingError('an embedded tensor is not a storage')
  return storage


def read_pickle(path: str, allowed: Callable[[str, str], bool] = lambda m, n: False):
  """A plain pickle of torch modules, read with numpy only.

  Tensors become arrays, ``torch_utils.persistence`` modules and the classes for which
  ``allowed(module, name)`` holds become :class:`PickledObject`; any other global is
  refused (``pickle.UnpicklingError``).
  """
  with open(path, 'rb') as f:
    return _PlainUnpickler(f, allowed).load()


def read_torch_pickle(path: str) -> Any:
  """A ``torch.save`` file (zip or legacy) or TorchScript zip, read with numpy only."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
      pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
      if not pkl:
        raise ValueError(f'{path}: a zip without data.pkl is not a torch file')
      root = pkl[0][: -len('data.pkl')]
      cache: Dict[str, np.ndarray] = {}

      def load(key, dtype, numel):
        if key not in cache:
          raw = zf.read(f'{root}data/{key}')
          cache[key] = np.frombuffer(raw, dtype=dtype.newbyteorder('<'))
        return cache[key]

      return _TorchUnpickler(io.BytesIO(zf.read(pkl[0])), load).load()
  return _read_legacy(path)


def _read_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    return _read_legacy_bytes(f.read(), path)


class _StorageKey(str):
  """A storage not yet read (the legacy format stores them after the object)."""


def _read_legacy_bytes(data: bytes, path: str) -> Any:
  """The pre-1.6 format, whose storages follow the object: tensors are rebuilt last."""
  buf = io.BytesIO(data)
  try:
    magic = pickle.load(buf)
  except Exception as e:  # noqa: BLE001 - any failure means "not this format"
    raise ValueError(f'{path}: not a torch weights file ({e})') from None
  if magic != _LEGACY_MAGIC:
    raise ValueError(f'{path}: not a torch weights file')
  pickle.load(buf)  # protocol version
  pickle.load(buf)  # sys info
  storages: Dict[str, np.ndarray] = {}

  class _Pending(tuple):
    """Marks a tensor whose storage is read later: (storage key, offset, size, stride)."""

  def rebuild_later(storage_key, offset, size, stride, *unused):
    return _Pending((storage_key, offset, tuple(size), tuple(stride)))

  class Legacy(_TorchUnpickler):

    def find_class(self, module, name):
      if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
        return rebuild_later
      return super().find_class(module, name)

    def persistent_load(self, pid):
      if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
        raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
      key = _StorageKey(pid[2])
      storages.setdefault(key, np.empty(pid[4], pid[1].dtype))
      return key

  obj = Legacy(buf, None).load()
  for key in pickle.load(buf):
    (numel,) = struct.unpack('<q', buf.read(8))
    arr = storages[str(key)]
    raw = buf.read(numel * arr.dtype.itemsize)
    storages[str(key)] = np.frombuffer(raw, arr.dtype.newbyteorder('<'))

  def resolve(o):
    if isinstance(o, _Pending):
      key, offset, size, stride = o
      return _rebuild_tensor(storages[key], offset, size, stride)
    if isinstance(o, _StorageKey):
      return storages[o]
    if isinstance(o, dict):
      return type(o)((k, resolve(v)) for k, v in o.items())
    if isinstance(o, (list, tuple)):
      return type(o)(resolve(v) for v in o)
    return o

  return resolve(obj)
