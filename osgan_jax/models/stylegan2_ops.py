"""Low-level StyleGAN2 ops in JAX: FIR resampling, bias+activation, modulated conv.

stylegan2-ada-pytorch's ``torch_utils/ops`` semantics for NHWC tensors and HWIO weights,
differentiable to any order (R1 and path length need second derivatives). Layouts:
``docs/models.md``; the FIR filters' implementation: ``docs/cpu.md``.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from osgan_jax.models import conv_ops

Padding = Union[int, Sequence[int]]
_DN = ('NHWC', 'HWIO', 'NHWC')

# name -> (function(x, alpha), default alpha, default gain); as the official table.
ACTIVATIONS = {
    'linear': (lambda x, a: x, 0.0, 1.0),
    'relu': (lambda x, a: jax.nn.relu(x), 0.0, float(np.sqrt(2))),
    'lrelu': (lambda x, a: jnp.where(x >= 0, x, x * a), 0.2, float(np.sqrt(2))),
    'tanh': (lambda x, a: jnp.tanh(x), 0.0, 1.0),
    'sigmoid': (lambda x, a: jax.nn.sigmoid(x), 0.0, 1.0),
    'elu': (lambda x, a: jax.nn.elu(x), 0.0, 1.0),
    'selu': (lambda x, a: jax.nn.selu(x), 0.0, 1.0),
    'softplus': (lambda x, a: jax.nn.softplus(x), 0.0, 1.0),
    'swish': (lambda x, a: jax.nn.sigmoid(x) * x, 0.0, float(np.sqrt(2))),
}


def activation_gain(act: str) -> float:
  """The default gain of an activation (sqrt(2) for relu/lrelu/swish, else 1)."""
  return ACTIVATIONS[act][2]


def bias_act(
    x: jax.Array,
    b: Optional[jax.Array] = None,
    act: str = 'linear',
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> jax.Array:
  """Bias (last axis), activation, gain, clamp (official ``bias_act``); keeps dtype."""
  func, def_alpha, def_gain = ACTIVATIONS[act]
  alpha = def_alpha if alpha is None else float(alpha)
  gain = def_gain if gain is None else float(gain)
  if b is not None:
    x = x + b.astype(x.dtype)
  x = func(x, alpha)
  if gain != 1:
    x = x * jnp.asarray(gain, x.dtype)
  if clamp is not None:
    assert clamp >= 0
    x = jnp.clip(x, -clamp, clamp)
  return x


def setup_filter(
    f: Sequence[float] = (1, 3, 3, 1),
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1.0,
    separable: Optional[bool] = None,
) -> np.ndarray:
  """A float32 FIR filter; 1-D stays separable (official: 2-D, the same result)."""
  f = np.asarray(f, dtype=np.float32)
  if f.ndim == 0:
    f = f[np.newaxis]
  assert f.ndim in (1, 2) and f.size > 0
  if separable is None:
    separable = f.ndim == 1
  if f.ndim == 1 and not separable:
    f = np.outer(f, f)
  if normalize:
    f = f / f.sum()
  if flip_filter:
    f = f[::-1] if f.ndim == 1 else f[::-1, ::-1]
  f = f * (gain ** (f.ndim / 2))
  return np.ascontiguousarray(f, dtype=np.float32)


def _parse_scaling(s) -> Tuple[int, int]:
  if isinstance(s, int):
    s = (s, s)
  sx, sy = s
  assert isinstance(sx, int) and isinstance(sy, int) and sx >= 1 and sy >= 1
  return sx, sy


def _parse_padding(p) -> Tuple[int, int, int, int]:
  if isinstance(p, int):
    p = (p, p)
  p = tuple(int(v) for v in p)
  if len(p) == 2:
    px, py = p
    p = (px, px, py, py)
  assert len(p) == 4
  return p  # x0, x1, y0, y1


def filter_size(f: Optional[np.ndarray]) -> Tuple[int, int]:
  """(width, height) of a filter prepared by ``setup_filter``; (1, 1) for None."""
  if f is None:
    return 1, 1
  f = np.asarray(f)
  return f.shape[-1], f.shape[0]


def _fir_axis(x: jax.Array, taps: np.ndarray, axis: int, down: int) -> jax.Array:
  """Valid correlation with 1-D ``taps`` along ``axis``, keeping every ``down``-th."""
  n = len(taps)
  length = x.shape[axis] - n + 1
  assert length >= 1, 'image too small for the filter'
  out_len = (length - 1) // down + 1
  acc = None
  for t, c in enumerate(taps):
    if c == 0:
      continue
    sl = lax.slice_in_dim(x, t, t + (out_len - 1) * down + 1, stride=down, axis=axis)
    term = sl * jnp.asarray(c, x.dtype)
    acc = term if acc is None else acc + term
  if acc is None:
    shape = list(x.shape)
    shape[axis] = out_len
    acc = jnp.zeros(shape, x.dtype)
  return acc


# Separable FIR filters: 'slices' (shifted slices and adds) or 'conv' (docs/cpu.md).
FIR_IMPL = 'slices'


def _depthwise(x: jax.Array, k: np.ndarray, strides: Tuple[int, int]) -> jax.Array:
  """Valid depthwise correlation of NHWC ``x`` with the 2-D numpy kernel ``k``."""
  kh, kw = k.shape
  c = x.shape[-1]
  kernel = jnp.broadcast_to(jnp.asarray(k, x.dtype)[:, :, None, None], (kh, kw, 1, c))
  return lax.conv_general_dilated(
      x,
      kernel,
      window_strides=strides,
      padding='VALID',
      dimension_numbers=_DN,
      feature_group_count=c,
      precision=lax.Precision.HIGHEST,
  )


def upfirdn2d(
    x: jax.Array,
    f: Optional[np.ndarray],
    up=1,
    down=1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> jax.Array:
  """Upsample (zero insertion), pad, FIR-filter, downsample NHWC images (official op).

  ``padding`` is ``(x0, x1, y0, y1)`` (negative crops); ``f`` comes from
  ``setup_filter`` (None: identity). Filters in float32; the result has ``x.dtype``.
  """
  assert x.ndim == 4
  upx, upy = _parse_scaling(up)
  downx, downy = _parse_scaling(down)
  px0, px1, py0, py1 = _parse_padding(padding)
  if f is None:
    f = np.ones([1], np.float32)
  f = np.asarray(f, np.float32)
  dtype = x.dtype
  # Zero insertion and pad/crop in one lax.pad; it crops after the insertion, as official.
  y_pads, x_pads = (py0, py1 + upy - 1, upy - 1), (px0, px1 + upx - 1, upx - 1)
  x = lax.pad(x, jnp.zeros((), dtype), [(0, 0, 0), y_pads, x_pads, (0, 0, 0)])
  x = x.astype(jnp.float32)
  if f.ndim == 1:
    taps = f if flip_filter else f[::-1]
    g = float(gain) ** 0.5
    if FIR_IMPL == 'slices':
      x = _fir_axis(x, taps * g, axis=2, down=downx)
      x = _fir_axis(x, taps * g, axis=1, down=downy)
    else:
      x = _depthwise(x, (taps * g)[None, :], (1, downx))
      x = _depthwise(x, (taps * g)[:, None], (downy, 1))
  else:
    k = f if flip_filter else f[::-1, ::-1]
    x = _depthwise(x, k * float(gain), (downy, downx))
  return x.astype(dtype)


def upsample2d(x, f, up=2, padding: Padding = 0, flip_filter=False, gain=1.0):
  """FIR upsampling by ``up``: output is ``up`` times the input size (official op)."""
  upx, upy = _parse_scaling(up)
  px0, px1, py0, py1 = _parse_padding(padding)
  fw, fh = filter_size(f)
  p = (
      px0 + (fw + upx - 1) // 2,
      px1 + (fw - upx) // 2,
      py0 + (fh + upy - 1) // 2,
      py1 + (fh - upy) // 2,
  )
  return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x, f, down=2, padding: Padding = 0, flip_filter=False, gain=1.0):
  """FIR downsampling by ``down``: output is the input size over ``down`` (official)."""
  downx, downy = _parse_scaling(down)
  px0, px1, py0, py1 = _parse_padding(padding)
  fw, fh = filter_size(f)
  p = (
      px0 + (fw - downx + 1) // 2,
      px1 + (fw - downx) // 2,
      py0 + (fh - downy + 1) // 2,
      py1 + (fh - downy) // 2,
  )
  return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain)


def _conv(
    x,
    w,
    stride=1,
    padding=((0, 0), (0, 0)),
    lhs_dilation=1,
    flip_weight=True,
    groups=1,
    impl='auto',
):
  """``flip_weight=True``: correlation (like torch conv2d); False: true convolution.
  Ungrouped ones go through ``conv_ops.resample_conv2d`` (``docs/cpu.md``)."""
  kh, kw = w.shape[:2]
  if not flip_weight and (kh > 1 or kw > 1):
    w = w[::-1, ::-1]
  if groups == 1:
    return conv_ops.resample_conv2d(x, w, stride, padding, lhs_dilation, impl)
  return lax.conv_general_dilated(
      x,
      w,
      window_strides=(stride, stride),
      padding=padding,
      lhs_dilation=(lhs_dilation, lhs_dilation),
      dimension_numbers=_DN,
      feature_group_count=groups,
  )


def conv2d_resample(
    x: jax.Array,
    w: jax.Array,
    f: Optional[np.ndarray] = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    flip_weight: bool = True,
    flip_filter: bool = False,
    groups: int = 1,
    impl: str = 'auto',
) -> jax.Array:
  """Conv with optional FIR up/downsampling (official ``conv2d_resample``, fast paths).

  ``w``: [kh, kw, I // groups, O]; ``padding`` is relative to the upsampled image;
  ``impl``: ``conv_ops.IMPLS``.
  """
  assert x.ndim == 4 and w.ndim == 4
  assert isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1
  kh, kw = w.shape[:2]
  fw, fh = filter_size(f)
  px0, px1, py0, py1 = _parse_padding(padding)
  if up > 1:
    px0 += (fw + up - 1) // 2
    px1 += (fw - up) // 2
    py0 += (fh + up - 1) // 2
    py1 += (fh - up) // 2
  if down > 1:
    px0 += (fw - down + 1) // 2
    px1 += (fw - down) // 2
    py0 += (fh - down + 1) // 2
    py1 += (fh - down) // 2

  conv = functools.partial(_conv, w=w, flip_weight=flip_weight, groups=groups, impl=impl)
  fir = functools.partial(upfirdn2d, f=f, flip_filter=flip_filter)
  pads = (px0, px1, py0, py1)

  # 1x1 conv, downsampling only: downsample first, then convolve.
  if kw == 1 and kh == 1 and down > 1 and up == 1:
    return conv(fir(x, down=down, padding=pads))
  # 1x1 conv, upsampling only: convolve first, then upsample.
  if kw == 1 and kh == 1 and up > 1 and down == 1:
    return fir(conv(x), up=up, padding=pads, gain=up**2)
  # Downsampling only: filter, then strided convolution.
  if down > 1 and up == 1:
    return conv(fir(x, padding=pads), stride=down)
  # Upsampling (optionally followed by downsampling): transposed convolution, i.e.
  # zero insertion (lhs_dilation) + full convolution, then the FIR filter.
  if up > 1:
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    full = ((kh - 1 - pyt, kh - 1 - pyt), (kw - 1 - pxt, kw - 1 - pxt))
    x = conv(x, padding=full, lhs_dilation=up)
    x = fir(x, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up**2)
    if down > 1:
      x = fir(x, down=down)
    return x
  # No resampling.
  if min(pads) >= 0:
    return conv(x, padding=((py0, py1), (px0, px1)))
  return conv(upfirdn2d(x, None, padding=pads))


def normalize_2nd_moment(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
  """x / sqrt(mean(x^2) + eps) along ``axis`` (z normalisation of the mapping net)."""
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


def modulated_conv2d(
    x: jax.Array,
    weight: jax.Array,
    styles: jax.Array,
    noise: Optional[jax.Array] = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    resample_filter: Optional[np.ndarray] = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = False,
    impl: str = 'auto',
) -> jax.Array:
  """Modulated (and demodulated) convolution, as the official ``modulated_conv2d``.

  ``x`` [B, H, W, I], ``weight`` [kh, kw, I, O], ``styles`` [B, I]; ``noise`` is added
  to the output. ``fused_modconv=True`` convolves each sample with its own weights
  (vmap) instead of scaling activations around one shared conv: the same function.
  Low-precision ``x`` gets the official pre-normalisation, which demodulation cancels.
  """
  b = x.shape[0]
  kh, kw, cin, cout = weight.shape
  shapes = (x.shape, weight.shape, styles.shape)
  assert x.shape[-1] == cin and styles.shape == (b, cin), shapes
  weight = weight.astype(jnp.float32)
  styles = styles.astype(jnp.float32)

  if x.dtype != jnp.float32 and demodulate:
    wmax = jnp.max(jnp.abs(weight), axis=(0, 1, 2), keepdims=True)
    weight = weight * (1.0 / np.sqrt(cin * kh * kw) / wmax)
    styles = styles / jnp.max(jnp.abs(styles), axis=1, keepdims=True)

  dcoefs = None
  if demodulate:
    # sum_{k,i} (w[k,i,o] s[b,i])^2 = (s^2) @ (sum_k w^2)
    wsq = jnp.sum(jnp.square(weight), axis=(0, 1))  # [I, O]
    dcoefs = lax.rsqrt(jnp.square(styles) @ wsq + 1e-8)  # [B, O]

  conv = functools.partial(
      conv2d_resample,
      f=resample_filter,
      up=up,
      down=down,
      padding=padding,
      flip_weight=flip_weight,
      impl=impl,
  )
  if not fused_modconv:
    x = x * styles.astype(x.dtype)[:, None, None, :]
    x = conv(x, weight.astype(x.dtype))
    if demodulate:
      x = x * dcoefs.astype(x.dtype)[:, None, None, :]
  else:
    w = weight[None] * styles[:, None, None, :, None]  # [B, kh, kw, I, O]
    if demodulate:
      w = w * dcoefs[:, None, None, None, :]
    x = jax.vmap(lambda xi, wi: conv(xi[None], wi)[0])(x, w.astype(x.dtype))
  if noise is not None:
    x = x + noise.astype(x.dtype)
  return x


def minibatch_std(
    x: jax.Array, group_size: Optional[int] = 4, num_channels: int = 1
) -> jax.Array:
  """Appends minibatch-stddev maps, computed in float32 (official ``MinibatchStdLayer``).

  Groups of ``min(group_size, B)`` (None: B) samples, strided as official: sample ``n``
  is in group ``n % (B // G)``.
  """
  n, h, w, c = x.shape
  g = n if group_size is None else min(int(group_size), n)
  assert n % g == 0, f'batch {n} not divisible by minibatch-std group size {g}'
  f = num_channels
  assert c % f == 0
  y = x.astype(jnp.float32).reshape(g, n // g, h, w, f, c // f)
  y = y - jnp.mean(y, axis=0)
  y = jnp.mean(jnp.square(y), axis=0)  # [n/G, H, W, F, c]
  y = jnp.sqrt(y + 1e-8)
  y = jnp.mean(y, axis=(1, 2, 4))  # [n/G, F]
  y = jnp.tile(y, (g, 1))  # [N, F]: sample k gets group k % (N/G)
  y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f)).astype(x.dtype)
  return jnp.concatenate([x, y], axis=-1)
