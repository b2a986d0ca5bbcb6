"""R3GAN's generator and discriminator in Flax, ported from the official ``Networks.py``.

Modernised ResNets with the official layers, parameters and fix-up initialisation, so
the paper's baseline trains here one- or two-stage. Architecture, presets and
parameter counts: ``docs/models.md``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from osgan_jax import models
from osgan_jax.models import stylegan2_ops as ops

Dtype = Any
IntOrSeq = Union[int, Sequence[int]]

LRELU_SLOPE = 0.2
# The official BiasedActivation.Gain: the He gain of a leaky ReLU with slope 0.2.
LRELU_GAIN = math.sqrt(2.0 / (1.0 + LRELU_SLOPE**2))
LINEAR_LAYERS_PER_BRANCH = 3
RESAMPLE_FILTER = (1, 2, 1)


def msr_init(gain: float = 1.0):
  """The official ``MSRInitializer``: N(0, (gain / sqrt(fan_in))^2), zeros for gain 0.

  ``fan_in``, all axes but the last, is the official one for the layouts used here.
  """
  gain = float(gain)

  def init(key, shape, dtype=jnp.float32):
    if gain == 0.0:
      return jnp.zeros(shape, dtype)
    fan_in = math.prod(shape[:-1])
    return jax.random.normal(key, shape, dtype) * (gain / math.sqrt(fan_in))

  return init


def branch_gain(num_blocks_total: int) -> float:
  """Init gain of the first two convs of a residual branch (fix-up scaling)."""
  return LRELU_GAIN * num_blocks_total ** (-1.0 / (2 * LINEAR_LAYERS_PER_BRANCH - 2))


def lowpass_filter(weights: Sequence[float] = RESAMPLE_FILTER) -> np.ndarray:
  """The official low-pass filter ``convolve(weights, [1, 1])``, kept 1-D (sum 1)."""
  f = np.convolve(np.asarray(weights, np.float64), [1.0, 1.0])
  return ops.setup_filter(f)


def lowpass_kernel_2d(weights: Sequence[float] = RESAMPLE_FILTER) -> np.ndarray:
  """The official 2-D kernel (``outer(k, k) / sum``) of ``lowpass_filter``."""
  k = np.convolve(np.asarray(weights, np.float64), [1.0, 1.0])[None, :]
  k = k.T @ k
  return (k / k.sum()).astype(np.float32)


def upsample(x, f: np.ndarray):
  """2x interpolative upsampling (official ``InterpolativeUpsampler``)."""
  return ops.upsample2d(x, f, up=2)


def downsample(x, f: np.ndarray):
  """2x interpolative downsampling (official ``InterpolativeDownsampler``)."""
  return ops.downsample2d(x, f, down=2)


def stage_resolutions(resolution: int) -> list[int]:
  """``[4, 8, ..., resolution]``: one stage per resolution."""
  r = int(resolution)
  if r < 4 or r & (r - 1):
    raise ValueError(f'R3GAN resolution must be a power of two >= 4, got {resolution}')
  return [4 * 2**i for i in range(int(math.log2(r)) - 1)]


def stage_schedule(
    resolution: int,
    widths: Optional[Sequence[int]] = None,
    cardinalities: Optional[Sequence[int]] = None,
    blocks: IntOrSeq = 2,
    expansion: int = 2,
    channel_base: int = 24576,
    channel_max: int = 768,
    group_size: int = 16,
) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
  """``(widths, cardinalities, blocks)`` per stage from 4x4, checked; ``None`` derived."""
  res = stage_resolutions(resolution)
  n = len(res)
  if widths is None:
    widths = [max(1, min(channel_base // r, channel_max)) for r in res]
  if isinstance(blocks, (int, np.integer)):
    blocks = [int(blocks)] * n
  if cardinalities is None:
    cardinalities = [max(1, w * expansion // group_size) for w in widths]
  widths, cardinalities, blocks = (
      tuple(int(v) for v in s) for s in (widths, cardinalities, blocks)
  )
  for name, s in dict(widths=widths, cardinalities=cardinalities, blocks=blocks).items():
    if len(s) != n:
      raise ValueError(
          f'R3GAN {name} has {len(s)} stages but resolution {resolution} '
          f'needs {n} (4x4 to {resolution}x{resolution}): {s}'
      )
  for w, c in zip(widths, cardinalities):
    if w < 1 or c < 1 or (w * expansion) % c:
      raise ValueError(
          f'R3GAN: expanded width {w} * {expansion} is not divisible by '
          f'the cardinality {c}'
      )
  if min(blocks) < 0:
    raise ValueError(f'R3GAN blocks must be >= 0, got {blocks}')
  return widths, cardinalities, blocks


CONV_IMPLS = ('auto', 'xla', 'dense')


def resolve_conv_impl(impl: str) -> str:
  """``'auto'`` -> ``'dense'`` on CPU, ``'xla'`` elsewhere; validates the name."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'R3GAN conv_impl must be one of {CONV_IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'dense' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def block_diagonal_kernel(w, groups: int):
  """The dense ``[k, k, in, out]`` kernel, zeros between groups, of grouped ``w``."""
  if groups == 1:
    return w
  kh, kw, cg, out = w.shape
  og = out // groups
  w = w.reshape(kh, kw, 1, cg, groups, og)
  eye = jnp.eye(groups, dtype=w.dtype).reshape(1, 1, groups, 1, groups, 1)
  return (w * eye).reshape(kh, kw, groups * cg, out)


def grouped_conv(x, w, groups: int = 1, impl: str = 'auto'):
  """Stride-1 'same' grouped conv, NHWC / HWIO; 'dense': block-diagonal (docs/cpu.md)."""
  p = (w.shape[0] - 1) // 2
  if groups > 1 and resolve_conv_impl(impl) == 'dense':
    w, groups = block_diagonal_kernel(w, groups), 1
  dn = ('NHWC', 'HWIO', 'NHWC')
  return lax.conv_general_dilated(
      x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=dn, feature_group_count=groups
  )


class Conv(nn.Module):
  """Bias-free stride-1 'same' convolution (official ``Convolution``), MSR init."""

  features: int
  kernel_size: int = 1
  groups: int = 1
  gain: float = 1.0
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    w = self.param(
        'kernel', msr_init(self.gain), (k, k, x.shape[-1] // self.groups, self.features)
    )
    return grouped_conv(x, w.astype(x.dtype), self.groups, self.impl)


class BiasedActivation(nn.Module):
  """``lrelu(x + bias, 0.2)`` with gain 1 (official ``BiasedActivation``)."""

  @nn.compact
  def __call__(self, x):
    b = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    x = x + b.astype(x.dtype)
    return jnp.where(x >= 0, x, x * LRELU_SLOPE)


class ResidualBlock(nn.Module):
  """Inverted bottleneck, grouped 3x3, identity at init (official ``ResidualBlock``)."""

  cardinality: int
  expansion: int = 2
  kernel_size: int = 3
  num_blocks_total: int = 1  # the official VarianceScalingParameter
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    expanded = channels * self.expansion
    gain = branch_gain(self.num_blocks_total)
    y = Conv(expanded, 1, gain=gain, name='conv1')(x)
    y = BiasedActivation(name='act1')(y)
    y = Conv(
        expanded,
        self.kernel_size,
        groups=self.cardinality,
        gain=gain,
        impl=self.conv_impl,
        name='conv2',
    )(y)
    y = BiasedActivation(name='act2')(y)
    y = Conv(channels, 1, gain=0.0, name='conv3')(y)
    return x + y


class GenerativeBasis(nn.Module):
  """``basis [4, 4, C] * linear(z)``: the generator's 4x4 input layer."""

  features: int

  @nn.compact
  def __call__(self, z):
    basis = self.param('basis', nn.initializers.normal(1.0), (4, 4, self.features))
    w = self.param('kernel', msr_init(1.0), (z.shape[-1], self.features))
    h = jnp.dot(z, w.astype(z.dtype))
    return basis.astype(z.dtype)[None] * h[:, None, None, :]


class DiscriminativeBasis(nn.Module):
  """Depthwise 4x4 valid conv then a bias-free linear layer: the discriminator's head."""

  features: int

  @nn.compact
  def __call__(self, x):
    if x.shape[1:3] != (4, 4):
      raise ValueError(f'DiscriminativeBasis expects 4x4 features, got {x.shape}')
    c = x.shape[-1]
    # A depthwise 4x4 valid conv of a 4x4 map: a per-channel weighted sum.
    basis = self.param('basis', msr_init(1.0), (4, 4, 1, c))
    h = jnp.einsum('bhwc,hwc->bc', x, basis[:, :, 0, :].astype(x.dtype))
    w = self.param('kernel', msr_init(1.0), (c, self.features))
    return jnp.dot(h, w.astype(h.dtype))


# The fields of a stage's residual blocks, the stage's of the same name.
_BLOCK_FIELDS = 'cardinality expansion kernel_size num_blocks_total conv_impl'


class GeneratorStage(nn.Module):
  """Transition (basis at 4x4, else upsample [+1x1 conv]) then residual blocks."""

  features: int
  cardinality: int
  num_blocks: int
  expansion: int = 2
  kernel_size: int = 3
  num_blocks_total: int = 1
  first: bool = False
  resample_filter: Tuple[float, ...] = RESAMPLE_FILTER
  dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    if self.first:
      x = GenerativeBasis(self.features, name='basis')(x)
    else:
      if x.shape[-1] != self.features:
        x = Conv(self.features, 1, name='transition')(x)
      x = upsample(x, lowpass_filter(self.resample_filter))
    for i in range(self.num_blocks):
      x = ResidualBlock(**models.fields(self, _BLOCK_FIELDS), name=f'block{i}')(x)
    return x


class DiscriminatorStage(nn.Module):
  """Residual blocks then a transition (downsample [+1x1 conv], or the basis head)."""

  out_features: int
  cardinality: int
  num_blocks: int
  expansion: int = 2
  kernel_size: int = 3
  num_blocks_total: int = 1
  last: bool = False
  resample_filter: Tuple[float, ...] = RESAMPLE_FILTER
  dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for i in range(self.num_blocks):
      x = ResidualBlock(**models.fields(self, _BLOCK_FIELDS), name=f'block{i}')(x)
    if self.last:
      return DiscriminativeBasis(self.out_features, name='basis')(x)
    x = downsample(x, lowpass_filter(self.resample_filter))
    if x.shape[-1] != self.out_features:
      x = Conv(self.out_features, 1, name='transition')(x)
    return x


def _stages(lo: int, scalar_ok: bool = False):
  """A check: None (or one integer >= ``lo``, where ``scalar_ok``), or one per stage."""

  def check(v, m):
    if (v is None and not scalar_ok) or (scalar_ok and models.is_int(v) and v >= lo):
      return None
    n = len(stage_resolutions(m.resolution))
    if not (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and len(v) == n
        and all(models.is_int(x) and x >= lo for x in v)
    ):
      either = f'an integer >= {lo} or ' if scalar_ok else 'None or '
      return f'{either}{n} integers >= {lo} (one per stage, 4x4 up)'

  return check


def _expanded_widths(m) -> tuple[int, ...]:
  """The stage widths times the expansion, from the (checked) fields of ``m``."""
  res = stage_resolutions(m.resolution)
  widths = m.widths or [max(1, min(m.channel_base // s, m.channel_max)) for s in res]
  return tuple(w * m.expansion for w in widths)


def _check_group_size(g, m):
  # Unused with cardinalities; a group wider than a stage is that stage in one group,
  # as stage_schedule does.
  expanded = _expanded_widths(m)
  if m.cardinalities is None and not (
      models.is_int(g) and g >= 1 and all(e % g == 0 or g >= e for e in expanded)
  ):
    return f'>= 1 and divide every expanded stage width {expanded}'


def _check_cardinalities(c, m):
  expanded = _expanded_widths(m)
  if c is not None and any(e % k for e, k in zip(expanded, c)):
    return f'divisors of the expanded stage widths {expanded}'


# _Networks.validate()'s checks.
_CHECKS = (
    ('resolution', models.power_of_two(4)),
    ('channels', models.at_least(1)),
    ('num_classes', models.at_least(0)),
    ('embed_dim', models.at_least(1, none_ok=True)),
    ('channel_base channel_max expansion', models.at_least(1)),
    ('widths cardinalities', _stages(1)),
    ('blocks_per_stage', _stages(0, scalar_ok=True)),
    ('group_size', _check_group_size),
    ('cardinalities', _check_cardinalities),
    (
        'kernel_size',
        'an odd integer >= 1',
        lambda k, _: models.is_int(k) and k >= 1 and k % 2,
    ),
    ('resample_filter', models.fir_filter('a 1-D filter with a nonzero sum', (1,))),
    ('num_mixed_stages', models.at_least(0)),
    ('mixed_dtype', models.floating_dtype("'bfloat16'")),
    ('conv_impl', models.one_of(CONV_IMPLS)),
)


class _Networks(nn.Module):
  """The fields and stage schedule G and D share (see ``Generator``)."""

  resolution: int = 32
  channels: int = 3
  num_classes: int = 0
  embed_dim: Optional[int] = None
  widths: Optional[Sequence[int]] = None
  cardinalities: Optional[Sequence[int]] = None
  blocks_per_stage: IntOrSeq = 2
  channel_base: int = 24576
  channel_max: int = 768
  group_size: int = 16
  expansion: int = 2
  kernel_size: int = 3
  resample_filter: Sequence[float] = RESAMPLE_FILTER
  num_mixed_stages: int = 0
  mixed_dtype: Dtype = jnp.bfloat16
  conv_impl: str = 'auto'

  @nn.nowrap
  def validate(self) -> None:
    """Checks every field without tracing; a ``ValueError`` 'FIELD must be ...'."""
    models.check_fields(self, _CHECKS)

  def schedule(self):
    """``(widths, cardinalities, blocks)``, lowest resolution first."""
    names = (
        'resolution widths cardinalities expansion channel_base channel_max group_size'
    )
    return stage_schedule(blocks=self.blocks_per_stage, **models.fields(self, names))

  def _stage_kwargs(self, blocks) -> dict:
    """The arguments every stage takes."""
    return dict(
        num_blocks_total=sum(blocks),
        resample_filter=tuple(self.resample_filter),
        **models.fields(self, 'expansion kernel_size conv_impl'),
    )


# Generator.validate()'s checks after _Networks'.
_G_CHECKS = (
    ('z_dim', models.at_least(0)),
    (
        'z_dim',
        '>= 1 (0 only with num_classes > 0 and an embed_dim)',
        lambda v, m: v or (m.num_classes > 0 and m.embed_dim),
    ),
)


class Generator(_Networks):
  """R3GAN generator: z [B, z_dim] (+ labels [B]) -> images [B, R, R, C] (no tanh).

  Stage lists run from 4x4 up (``None``: derived, ``stage_schedule``); ``embed_dim``
  None means ``z_dim``. The options: ``docs/models.md``.
  """

  z_dim: int = 64

  @nn.nowrap
  def validate(self) -> None:
    models.check_fields(self, _CHECKS, _G_CHECKS)

  @nn.compact
  def __call__(self, z, labels=None, train: bool = True):
    del train  # no layer behaves differently in training
    widths, cards, blocks = self.schedule()
    z = jnp.asarray(z)
    batch = z.shape[0]
    z = z.reshape(batch, -1).astype(jnp.float32)
    if z.shape[1] != self.z_dim:
      raise ValueError(f'z must have {self.z_dim} features, got shape {z.shape}')
    labels = models.check_labels(labels, self.num_classes, batch)
    if labels is not None:
      dim = self.z_dim if self.embed_dim is None else int(self.embed_dim)
      embed = nn.Embed(self.num_classes, dim, embedding_init=msr_init(1.0), name='embed')
      z = jnp.concatenate([z, embed(labels)], axis=-1)
    kw = self._stage_kwargs(blocks)
    n = len(widths)
    x = z
    for i, (w, c, b) in enumerate(zip(widths, cards, blocks)):
      dtype = self.mixed_dtype if i >= n - self.num_mixed_stages else jnp.float32
      x = GeneratorStage(w, c, b, first=i == 0, dtype=dtype, name=f'stage{i}', **kw)(x)
    x = Conv(self.channels, 1, name='aggregate')(x)
    return x.astype(jnp.float32)


class Discriminator(_Networks):
  """R3GAN discriminator: images [B, R, R, C] (+ labels [B]) -> logits [B].

  Stage lists as ``Generator``'s, from 4x4 up; ``embed_dim`` None means the 4x4 width.
  """

  per_sample = True  # no normalisation: logit i depends on image i alone

  @nn.compact
  def __call__(self, x, labels=None, train: bool = True):
    del train
    widths, cards, blocks = (s[::-1] for s in self.schedule())  # R -> 4
    x = models.check_images(x, self.resolution, self.channels)
    batch = x.shape[0]
    labels = models.check_labels(labels, self.num_classes, batch)
    dim = widths[-1] if self.embed_dim is None else int(self.embed_dim)
    kw = self._stage_kwargs(blocks)
    n = len(widths)
    dtypes = [
        self.mixed_dtype if i < self.num_mixed_stages else jnp.float32 for i in range(n)
    ]
    x = Conv(widths[0], 1, name='extract')(x.astype(dtypes[0]))
    for i in range(n):
      last = i == n - 1
      out = (dim if labels is not None else 1) if last else widths[i + 1]
      x = DiscriminatorStage(
          out, cards[i], blocks[i], last=last, dtype=dtypes[i], name=f'stage{i}', **kw
      )(x)
    x = x.astype(jnp.float32)
    if labels is not None:
      embed = nn.Embed(
          self.num_classes, dim, embedding_init=msr_init(1 / math.sqrt(dim)), name='embed'
      )
      x = jnp.sum(x * embed(labels), axis=-1, keepdims=True)
    return x.reshape(batch)


__all__ = [
    'BiasedActivation',
    'Conv',
    'DiscriminativeBasis',
    'Discriminator',
    'GenerativeBasis',
    'Generator',
    'ResidualBlock',
    'branch_gain',
    'lowpass_filter',
    'lowpass_kernel_2d',
    'msr_init',
    'stage_resolutions',
    'stage_schedule',
]
