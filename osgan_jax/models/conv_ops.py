"""Exact, CPU-fast reformulations of the DCGAN convolutions and of StyleGAN2's up- and
down-sampling ones.

XLA:CPU computes the derivatives of strided and transposed convolutions several times
slower than matmuls; these ops compute the same function through matmul forms on CPU
(plain XLA elsewhere). The forms and their derivatives: ``docs/cpu.md``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = Any
IMPLS = ('auto', 'xla', 'matmul')
_DN = ('NHWC', 'HWIO', 'NHWC')


def resolve_impl(impl: str) -> str:
  """``'auto'`` -> ``'matmul'`` on CPU, ``'xla'`` elsewhere; validates the name."""
  if impl not in IMPLS:
    raise ValueError(f'conv impl must be one of {IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def _pairs(padding, kernel_hw, strides, in_hw) -> tuple[tuple[int, int], ...]:
  """Explicit (lo, hi) pads of a forward conv, as ``lax.conv_general_dilated``."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _bilinear(primal: Callable, tangent_x: Callable, tangent_w: Callable) -> Callable:
  """Bilinear ``primal(x, w)`` whose JVP is ``tangent_x(dx, w) + tangent_w(x, dw)``.

  All three compute the same function; reverse mode transposes each tangent part.
  """
  f = jax.custom_jvp(primal)

  @f.defjvp
  def _jvp(primals, tangents):
    x, w = primals
    dx, dw = tangents
    return primal(x, w), tangent_x(dx, w) + tangent_w(x, dw)

  return f


# The size thresholds of ``_forms`` (docs/cpu.md).
_SMALL_OUTPUT = 100
_SMALL_WINDOW = 64
_FEW_OUTPUTS = 16


def _forms(x_shape, w_shape):
  """``(primal, tangent_x, tangent_w)`` of a stride-1 VALID conv by size (docs/cpu.md)."""
  kh, kw, c, o = w_shape
  ho, wo = x_shape[1] - kh + 1, x_shape[2] - kw + 1
  if kh * kw * c <= _SMALL_WINDOW:
    return _patch_conv, _patch_conv, _patch_conv
  if ho * wo <= _SMALL_OUTPUT:
    return _patch_conv, _patch_conv, _patch_conv_kernel_tangent
  return (
      _shift_conv if o <= _FEW_OUTPUTS else _xla_valid,
      _xla_valid,
      _shift_conv if o <= c else _patch_conv_kernel_tangent,
  )


def _patches(x, kh, kw, s: int = 1):
  """im2col: [B*Ho*Wo, kh*kw*C], taps major, channels minor (a reshaped HWIO kernel)."""
  b, h, wd, c = x.shape
  ho, wo = (h - kh) // s + 1, (wd - kw) // s + 1
  if (kh, kw, s) == (1, 1, 1):
    p = x
  else:
    end = lambda u, n: u + s * (n - 1) + 1
    taps = [
        lax.slice(x, (0, u, v, 0), (b, end(u, ho), end(v, wo), c), (1, s, s, 1))
        for u in range(kh)
        for v in range(kw)
    ]
    p = jnp.concatenate(taps, axis=-1)
  return p.reshape(b * ho * wo, kh * kw * c)


def _patch_conv(x, w):
  """Stride-1 VALID conv as im2col + one matmul."""
  return _strided_patch_conv(x, w, 1)


def _strided_patch_conv(x, w, s: int):
  """Stride-``s`` VALID conv as im2col + one matmul."""
  kh, kw, c, o = w.shape
  b, h, wd, _ = x.shape
  y = jnp.dot(_patches(x, kh, kw, s), w.reshape(kh * kw * c, o))
  return y.reshape(b, (h - kh) // s + 1, (wd - kw) // s + 1, o)


def _patch_conv_kernel_tangent(x, w):
  """``_patch_conv`` with its kernel cotangent on pre-transposed patches (docs/cpu.md)."""
  kh, kw, c, o = w.shape
  b, h, wd, _ = x.shape
  p_t = lax.optimization_barrier(_patches(x, kh, kw).T)  # [kh*kw*C, B*Ho*Wo]
  y = jnp.dot(p_t.T, w.reshape(kh * kw * c, o))
  return y.reshape(b, h - kh + 1, wd - kw + 1, o)


def _shift_conv(x, w):
  """Stride-1 VALID conv as a matmul per pixel and shifted-slice sums (docs/cpu.md)."""
  kh, kw, c, o = w.shape
  b, h, wd, _ = x.shape
  ho, wo = h - kh + 1, wd - kw + 1
  z = jnp.dot(x.reshape(b * h * wd, c), w.transpose(2, 0, 1, 3).reshape(c, kh * kw * o))
  z = z.reshape(b, h, wd, kh * kw, o)
  return sum(
      z[:, u : u + ho, v : v + wo, u * kw + v] for u in range(kh) for v in range(kw)
  )


def _xla_valid(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=_DN)


def _full_window(x, w):
  """VALID conv whose kernel covers the whole input: one matmul."""
  b = x.shape[0]
  return jnp.dot(x.reshape(b, -1), w.reshape(-1, w.shape[-1])).reshape(b, 1, 1, -1)


def _space_to_depth(x, s: int):
  b, h, w, c = x.shape
  x = x.reshape(b, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // s, w // s, s * s * c)


def _kernel_to_depth(w, s: int):
  """[k, k, C, O] -> [k/s, k/s, s*s*C, O] matching ``_space_to_depth``."""
  kh, kw, c, o = w.shape
  w = w.reshape(kh // s, s, kw // s, s, c, o).transpose(0, 2, 1, 3, 4, 5)
  return w.reshape(kh // s, kw // s, s * s * c, o)


def _conv_stride1(x, w, pads):
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  kh, kw = w.shape[:2]
  if xp.shape[1:3] == (kh, kw):
    return _full_window(xp, w)
  return _bilinear(*_forms(xp.shape, w.shape))(xp, w)


def _conv_strided(x, w, strides, pads):
  """Strided conv: XLA's forward, space-to-depth patch-matmul derivatives."""
  s = strides[0]
  kh, kw = w.shape[:2]
  b, h, wd, _ = x.shape
  hp, wp = h + sum(pads[0]), wd + sum(pads[1])
  ho, wo = (hp - kh) // s + 1, (wp - kw) // s + 1
  # High-side zeros pad to a multiple of s; the outputs they add are cropped.
  extra = ((-hp) % s, (-wp) % s)
  full = ((pads[0][0], pads[0][1] + extra[0]), (pads[1][0], pads[1][1] + extra[1]))

  s2d_shape = (b, (hp + extra[0]) // s, (wp + extra[1]) // s, s * s * x.shape[-1])
  primal_s, tangent_x, tangent_w = _forms(
      s2d_shape, (kh // s, kw // s) + s2d_shape[-1:] + w.shape[-1:]
  )

  def in_depth(form):
    def f(x, w):
      xs = _space_to_depth(jnp.pad(x, ((0, 0),) + full + ((0, 0),)), s)
      return form(xs, _kernel_to_depth(w, s))[:, :ho, :wo]

    return f

  def strided(x, w):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN)

  # XLA's strided forward is fast; its derivatives always take the stride-1 forms.
  primal = strided if primal_s is _xla_valid else in_depth(primal_s)
  return _bilinear(primal, in_depth(tangent_x), in_depth(tangent_w))(x, w)


def _supported(x, w, strides) -> bool:
  return (
      x.ndim == 4
      and w.ndim == 4
      and len(strides) == 2
      and strides[0] == strides[1]
      and strides[0] >= 1
      and w.shape[0] % strides[0] == 0
      and w.shape[1] % strides[0] == 0
  )


def conv2d(
    x: Array,
    kernel: Array,
    strides: Sequence[int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = 'VALID',
    impl: str = 'auto',
) -> Array:
  """``lax.conv_general_dilated(x, kernel, strides, padding)`` in NHWC/HWIO."""
  impl = resolve_impl(impl)
  strides = tuple(int(s) for s in strides)
  if impl == 'xla' or not _supported(x, kernel, strides):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN)
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  pads = _pairs(padding, kernel.shape[:2], strides, x.shape[1:3])
  if any(lo < 0 or hi < 0 for lo, hi in pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN)
  if strides == (1, 1):
    return _conv_stride1(x, kernel, pads)
  return _conv_strided(x, kernel, strides, pads)


# Multiply-adds per sample below which ``resample_conv2d`` keeps XLA's conv: there XLA's
# slow derivatives cost less than compiling the patch forms (docs/cpu.md).
RESAMPLE_MIN_MACS = 2**25


def resample_conv2d(
    x: Array,
    kernel: Array,
    stride: int = 1,
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
    lhs_dilation: int = 1,
    impl: str = 'auto',
) -> Array:
  """``lax.conv_general_dilated`` in NHWC/HWIO with a stride or an input dilation (zero
  insertion: a transposed conv), for networks that need derivatives of every order.

  ``'matmul'`` computes strided and dilated convs of at least ``RESAMPLE_MIN_MACS``
  per sample as patches and one matmul (a dilated one per output phase), whose
  derivatives of any order are matmuls and slices; XLA:CPU's own take 30-100x a
  forward for the kernel gradient of a dilated conv and the second derivative of a
  strided one (docs/cpu.md). Others go to XLA.
  """
  s, d = int(stride), int(lhs_dilation)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)

  def reference():
    return lax.conv_general_dilated(
        x, kernel, (s, s), pads, (d, d), dimension_numbers=_DN
    )

  if resolve_impl(impl) == 'xla' or (s == 1 and d == 1) or (s > 1 and d > 1):
    return reference()
  kh, kw, c, o = kernel.shape
  pixels = x.shape[1] * x.shape[2] if d > 1 else x.shape[1] * x.shape[2] // (s * s)
  if pixels * kh * kw * c * o < RESAMPLE_MIN_MACS:
    return reference()
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  if d == 1:
    return _strided_patch_conv(_pad_or_crop(x, pads), kernel, s)
  return _dilated_by_phases(x, kernel, d, pads)


def _pad_or_crop(x, pads):
  """``x`` with (lo, hi) pads on its two spatial axes; negative ones crop (lax.pad)."""
  config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
  return lax.pad(x, jnp.zeros((), x.dtype), config)


def _dilated_by_phases(x, kernel, d: int, pads):
  """A stride-1 conv of ``x`` with ``d-1`` zeros inserted between pixels as ``d*d``
  stride-1 patch convs of ``x`` itself, one per output phase, interleaved: no product
  with an inserted zero (docs/cpu.md)."""
  b, h, w, _ = x.shape
  kh, kw, _, o = kernel.shape
  out = [(n - 1) * d + lo + hi - k + 2 for n, (lo, hi), k in zip((h, w), pads, (kh, kw))]
  per_phase = [-(-n // d) for n in out]

  def axis_phase(r, lo, k, n, q):
    """Output phase ``r`` on one axis: its first tap, its tap count, its conv's pads."""
    first = (lo - r) % d
    taps = len(range(first, k, d))
    pad_lo = (lo - r - first) // d
    return first, taps, (pad_lo, q + taps - 1 - n - pad_lo)

  def phase(ry, rx):
    fy, ty, py = axis_phase(ry, pads[0][0], kh, h, per_phase[0])
    fx, tx, px = axis_phase(rx, pads[1][0], kw, w, per_phase[1])
    if ty == 0 or tx == 0:  # a kernel narrower than d: this phase sees only zeros
      return jnp.zeros((b, *per_phase, o), jnp.result_type(x, kernel))
    return _patch_conv(_pad_or_crop(x, (py, px)), kernel[fy::d, fx::d])

  rows = [jnp.stack([phase(ry, rx) for rx in range(d)], axis=3) for ry in range(d)]
  y = jnp.stack(rows, axis=2).reshape(b, per_phase[0] * d, per_phase[1] * d, o)
  return y[:, : out[0], : out[1]]


def conv_transpose2d(
    x: Array,
    kernel: Array,
    strides: Sequence[int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = 'VALID',
    impl: str = 'auto',
) -> Array:
  """``lax.conv_transpose`` (no kernel flip, as ``nn.ConvTranspose``) in NHWC/HWIO."""
  impl = resolve_impl(impl)
  strides = tuple(int(s) for s in strides)

  def reference(x, kernel):
    return lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=_DN)

  if impl == 'xla' or not _supported(x, kernel, strides):
    return reference(x, kernel)
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  s = strides[0]
  k = kernel.shape[:2]
  if isinstance(padding, str):
    pads = tuple(lax_conv_transpose_padding(kk, s, padding) for kk in k)
  else:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if s == 1:
    if x.shape[1:3] == (1, 1):
      out = _one_pixel_transpose(x, kernel, pads)
      if out is not None:
        return out
    # Stride 1: a plain conv on the (unflipped) kernel.
    if all(lo >= 0 and hi >= 0 for lo, hi in pads):
      return _conv_stride1(x, kernel, pads)
    return reference(x, kernel)
  return _transposed_strided(x, kernel, s, pads, reference)


def lax_conv_transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
  """The explicit pads ``lax.conv_transpose`` uses for 'SAME'/'VALID'."""
  if padding == 'SAME':
    pad_len = k + s - 2
    pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
  elif padding == 'VALID':
    pad_len = k + s - 2 + max(k - s, 0)
    pad_a = k - 1
  else:
    raise ValueError(f'invalid padding {padding!r}')
  return pad_a, pad_len - pad_a


def _one_pixel_transpose(x, kernel, pads):
  """1x1 input: out[i, j] = x @ kernel[lo_h - i, lo_w - j], one matmul (or None)."""
  kh, kw, c, o = kernel.shape
  (lh, hh), (lw, hw) = pads
  ho, wo = lh + hh - kh + 2, lw + hw - kw + 2
  if not (0 <= lh - (ho - 1) and lh < kh and 0 <= lw - (wo - 1) and lw < kw):
    return None
  # Rows lh, lh-1, ..., lh-ho+1 of the kernel, i.e. a flipped slice.
  sub = kernel[lh - ho + 1 : lh + 1, lw - wo + 1 : lw + 1][::-1, ::-1]  # [ho, wo, C, O]
  w = sub.transpose(2, 0, 1, 3).reshape(c, ho * wo * o)
  b = x.shape[0]
  return jnp.dot(x.reshape(b, c), w).reshape(b, ho, wo, o)


def _transposed_strided(x, kernel, s, pads, reference):
  """Stride-s transposed conv: scatter-form forward, strided-conv derivatives.

  It is the adjoint of the strided conv S (pads ``k-1-lo, k-1-hi``, kernel flipped and
  channel-swapped), so its tangents are ``jax.linear_transpose``s of S (docs/cpu.md).
  """
  b, h, w, _ = x.shape
  kh, kw, c, o = kernel.shape
  out_hw = [
      (n - 1) * s + 1 + lo + hi - kk + 1
      for n, (lo, hi), kk in zip((h, w), pads, (kh, kw))
  ]
  s_pads = tuple((kk - 1 - lo, kk - 1 - hi) for (lo, hi), kk in zip(pads, (kh, kw)))
  if any(n != s * m for n, m in zip(out_hw, (h, w))) or any(
      lo < 0 or hi < 0 for p in (pads, s_pads) for lo, hi in p
  ):
    return reference(x, kernel)

  def flip_swap(k):  # [kh, kw, A, B] -> [kh, kw, B, A], reversed in space
    return k[::-1, ::-1].transpose(0, 1, 3, 2)

  def strided(y, k_s):  # S: [B, sH, sW, O] -> [B, H, W, C]
    return conv2d(y, k_s, (s, s), s_pads, impl='matmul')

  def tangent_x(dx, kernel):
    y = jax.ShapeDtypeStruct((b, s * h, s * w, o), dx.dtype)
    return jax.linear_transpose(lambda y: strided(y, flip_swap(kernel)), y)(dx)[0]

  def tangent_w(x, dkernel):
    y = jax.ShapeDtypeStruct((b, s * h, s * w, o), x.dtype)

    def kernel_cotangent(y):  # S's kernel cotangent, as this conv's kernel
      k_s = jnp.zeros((kh, kw, o, c), x.dtype)
      return flip_swap(jax.vjp(lambda k_s: strided(y, k_s), k_s)[1](x)[0])

    return jax.linear_transpose(kernel_cotangent, y)(dkernel)[0]

  primal = functools.partial(_scatter_transpose, s=s, pads=pads)
  return _bilinear(primal, tangent_x, tangent_w)(x, kernel)


def _scatter_transpose(x, kernel, s, pads):
  """Transposed conv as a matmul per input pixel, overlap-added by phase (docs/cpu.md).

  Needs an output of exactly s times the input and k % s == 0.
  """
  b, h, w, c = x.shape
  kh, kw, _, o = kernel.shape
  (lo_h, _), (lo_w, _) = pads
  z = jnp.dot(
      x.reshape(b * h * w, c), kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * o)
  )
  z = z.reshape(b, h, w, kh, kw, o)
  zero = jnp.zeros((), z.dtype)

  def taps(k, lo, a):  # (tap, shift) pairs of phase a
    return [(u, (u - lo + a) // s) for u in range(k) if (u - lo + a) % s == 0]

  def phase(a, bb):
    return sum(
        lax.pad(
            z[:, :, :, u, v], zero, ((0, 0, 0), (-dh, dh, 0), (-dw, dw, 0), (0, 0, 0))
        )
        for u, dh in taps(kh, lo_h, a)
        for v, dw in taps(kw, lo_w, bb)
    )

  rows = [
      jnp.stack([phase(a, bb) for bb in range(s)], axis=3)  # [B, H, W, s(b), O]
      for a in range(s)
  ]
  out = jnp.stack(rows, axis=2)  # [B, H, s(a), W, s(b), O]
  return out.reshape(b, s * h, s * w, o)


def conv_general_dilated(impl: str = 'auto') -> Callable:
  """A ``lax.conv_general_dilated`` for ``nn.Conv``: plain NHWC/HWIO convs via ``conv2d``.

  Anything else (dilation, feature groups, other layouts) goes to XLA.
  """
  return functools.partial(_conv_general_dilated, impl=impl)


def _conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    *,
    impl,
):
  plain = (
      lhs.ndim == 4
      and feature_group_count == 1
      and batch_group_count == 1
      and all(d == 1 for d in (lhs_dilation or (1, 1)))
      and all(d == 1 for d in (rhs_dilation or (1, 1)))
      and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape)
      and preferred_element_type is None
  )
  if not plain or resolve_impl(impl) == 'xla':
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
  return conv2d(lhs, rhs, window_strides, padding, impl=impl)


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
  if dimension_numbers is None:
    return False  # lax's default is NCHW / OIHW
  dn = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  return dn == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _DN)


class ConvTranspose(nn.Module):
  """``nn.ConvTranspose`` (no kernel transpose, dilation or mask) with a choice of impl.

  Its parameters are ``nn.ConvTranspose``'s, so checkpoints are interchangeable.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Any = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.linear.default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()
  impl: str = 'auto'

  @nn.compact
  def __call__(self, inputs):
    shape = tuple(self.kernel_size) + (inputs.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, shape, self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    padding = self.padding
    if not isinstance(padding, str):
      padding = tuple(tuple(p) for p in padding)
    y = conv_transpose2d(inputs, kernel, self.strides, padding, impl=self.impl)
    if bias is not None:
      y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
    return y
