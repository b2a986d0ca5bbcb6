"""StyleGAN2 generator and discriminator in Flax, faithful to stylegan2-ada-pytorch.

Config-f's 'skip' generator and 'resnet' discriminator with the official parameters, so
official weights port with transposes and the official method trains one-stage.
Variables, RNG streams, use and mixed precision: ``docs/models.md``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax import models
from osgan_jax.models import conv_ops
from osgan_jax.models import stylegan2_ops as ops

Array = jax.Array
Dtype = Any

STATE_COLLECTION = 'batch_stats'  # w_avg
BUFFER_COLLECTION = 'buffers'  # noise_const
NOISE_RNG = 'noise'
MIXING_RNG = 'mixing'


def _log2(resolution: int) -> int:
  r = int(resolution)
  assert r >= 4 and r & (r - 1) == 0, f'resolution must be a power of two >= 4, got {r}'
  return int(math.log2(r))


def channels_dict(
    resolution: int, channel_base: int = 32768, channel_max: int = 512
) -> dict:
  """Channels per resolution: ``min(channel_base // res, channel_max)`` (official)."""
  return {
      2**i: min(channel_base // 2**i, channel_max)
      for i in range(2, _log2(resolution) + 1)
  }


def fp16_resolution(resolution: int, num_fp16_res: int) -> int:
  """Lowest resolution computed in the mixed dtype (official formula)."""
  return max(2 ** (_log2(resolution) + 1 - num_fp16_res), 8)


def synthesis_num_ws(resolution: int, architecture: str = 'skip') -> int:
  """Number of W vectors the synthesis network consumes (18 at 1024, 14 at 256)."""
  log2 = _log2(resolution)
  num_conv = 1 + 2 * (log2 - 2)  # b4 has one conv, every other block two
  return num_conv + 1  # plus the last block's ToRGB


ARCHITECTURES = ('orig', 'skip', 'resnet')


def _block_dtype(module, res: int) -> Dtype:
  """float32, or the mixed dtype at the top ``num_fp16_res`` resolutions (official)."""
  fp16_res = fp16_resolution(module.resolution, module.num_fp16_res)
  return (
      module.mixed_dtype if module.num_fp16_res > 0 and res >= fp16_res else jnp.float32
  )


# Fields passed down by name: SynthesisNetwork -> SynthesisBlock, G -> SynthesisNetwork.
_SHARED_BLOCK_FIELDS = (
    'img_channels architecture resample_filter conv_clamp use_noise fused_modconv '
    'conv_impl'
)
_SYNTHESIS_FIELDS = (
    'w_dim resolution channel_base channel_max num_fp16_res mixed_dtype '
    + _SHARED_BLOCK_FIELDS
)


def _checks(min_resolution: int) -> tuple:
  """The checks of the fields G and D share (see ``Generator.validate``)."""
  return (
      ('resolution', models.power_of_two(min_resolution)),
      ('img_channels channel_base channel_max', models.at_least(1)),
      (
          'channel_base',  # the top block's channel_base // R channels
          lambda m: f'>= the resolution {m.resolution} (every block needs a channel)',
          lambda v, m: v >= m.resolution,
      ),
      ('num_fp16_res', models.at_least(0)),
      ('mixed_dtype', models.floating_dtype("'bfloat16', 'float16'")),
      ('architecture', models.one_of(ARCHITECTURES)),
      ('conv_clamp', models.positive(none_ok=True)),
      ('conv_impl', models.one_of(conv_ops.IMPLS)),
      (
          'resample_filter',
          models.fir_filter('a 1-D or 2-D FIR filter with a nonzero sum', (1, 2)),
      ),
  )


# N(0, stddev^2) and constant initialisers of float32 parameters (also under x64).
_normal_init = functools.partial(nn.initializers.normal, dtype=jnp.float32)
_const_init = functools.partial(nn.initializers.constant, dtype=jnp.float32)


class FullyConnectedLayer(nn.Module):
  """Equalised-lr dense layer, weight [in, out] (official ``FullyConnectedLayer``)."""

  features: int
  use_bias: bool = True
  activation: str = 'linear'
  lr_multiplier: float = 1.0
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    w = self.param(
        'weight', _normal_init(1.0 / self.lr_multiplier), (in_features, self.features)
    )
    w = w * (self.lr_multiplier / np.sqrt(in_features))
    x = x @ w.astype(x.dtype)
    b = None
    if self.use_bias:
      b = self.param('bias', _const_init(self.bias_init), (self.features,))
      if self.lr_multiplier != 1:
        b = b * self.lr_multiplier
    return ops.bias_act(x, b, act=self.activation)


class Conv2dLayer(nn.Module):
  """Equalised-lr conv with FIR resampling, weight [k, k, in, out] (official)."""

  out_channels: int
  kernel_size: int
  use_bias: bool = True
  activation: str = 'linear'
  up: int = 1
  down: int = 1
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, gain: float = 1.0) -> Array:
    cin = x.shape[-1]
    k = self.kernel_size
    w = self.param('weight', _normal_init(1.0), (k, k, cin, self.out_channels))
    w = w * (1.0 / np.sqrt(cin * k * k))
    b = None
    if self.use_bias:
      b = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    f = ops.setup_filter(self.resample_filter)
    w = w.astype(x.dtype)
    x = ops.conv2d_resample(
        x,
        w,
        f=f,
        up=self.up,
        down=self.down,
        padding=k // 2,
        flip_weight=(self.up == 1),
        impl=self.conv_impl,
    )
    act_gain = ops.activation_gain(self.activation) * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return ops.bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


class MappingNetwork(nn.Module):
  """z (and labels) -> w, broadcast to ``num_ws`` copies (official ``MappingNetwork``).

  ``w_avg`` (collection ``batch_stats``) tracks the mean of W for truncation.
  """

  z_dim: int = 512
  c_dim: int = 0
  w_dim: int = 512
  num_ws: Optional[int] = 18
  num_layers: int = 8
  embed_features: Optional[int] = None
  layer_features: Optional[int] = None
  activation: str = 'lrelu'
  lr_multiplier: float = 0.01
  w_avg_beta: Optional[float] = 0.995

  @nn.compact
  def __call__(
      self,
      z: Optional[Array],
      c: Optional[Array] = None,
      truncation_psi: Any = 1.0,
      truncation_cutoff: Optional[int] = None,
      update_w_avg: bool = False,
  ) -> Array:
    embed_features = self.w_dim if self.embed_features is None else self.embed_features
    layer_features = self.w_dim if self.layer_features is None else self.layer_features
    if self.c_dim == 0:
      embed_features = 0

    x = None
    if self.z_dim > 0:
      assert z is not None and z.shape[-1] == self.z_dim, None if z is None else z.shape
      x = ops.normalize_2nd_moment(z.astype(jnp.float32))
    if self.c_dim > 0:
      assert c is not None, 'labels required (c_dim > 0)'
      if jnp.issubdtype(c.dtype, jnp.integer) and c.ndim == 1:  # class ids -> one-hot
        c = jax.nn.one_hot(c, self.c_dim, dtype=jnp.float32)
      assert c.shape[-1] == self.c_dim, c.shape
      y = FullyConnectedLayer(embed_features, name='embed')(c.astype(jnp.float32))
      y = ops.normalize_2nd_moment(y)
      x = jnp.concatenate([x, y], axis=1) if x is not None else y

    for idx in range(self.num_layers):
      out = self.w_dim if idx == self.num_layers - 1 else layer_features
      x = FullyConnectedLayer(
          out,
          activation=self.activation,
          lr_multiplier=self.lr_multiplier,
          name=f'fc{idx}',
      )(x)

    track = self.num_ws is not None and self.w_avg_beta is not None
    static_psi_one = isinstance(truncation_psi, (int, float)) and truncation_psi == 1
    w_avg = None
    if track and (self.is_initializing() or update_w_avg or not static_psi_one):
      w_avg = self.variable(
          STATE_COLLECTION, 'w_avg', jnp.zeros, (self.w_dim,), jnp.float32
      )
      updating = update_w_avg and not self.is_initializing()
      if updating and self.is_mutable_collection(STATE_COLLECTION):
        mean = jnp.mean(jax.lax.stop_gradient(x), axis=0)
        # lerp(mean, w_avg, beta), as official.
        w_avg.value = mean + self.w_avg_beta * (w_avg.value - mean)

    if self.num_ws is not None:
      x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, x.shape[-1]))

    if not static_psi_one:
      assert w_avg is not None, 'truncation needs w_avg (w_avg_beta is None?)'
      avg = w_avg.value
      if self.num_ws is None or truncation_cutoff is None:
        x = avg + truncation_psi * (x - avg)
      else:
        sel = (jnp.arange(self.num_ws) < truncation_cutoff)[None, :, None]
        x = jnp.where(sel, avg + truncation_psi * (x - avg), x)
    return x


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv (+ optional 2x FIR upsampling), noise, bias, lrelu (official)."""

  out_channels: int
  resolution: int
  kernel_size: int = 3
  up: int = 1
  use_noise: bool = True
  activation: str = 'lrelu'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  fused_modconv: bool = False
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(
      self,
      x: Array,
      w: Array,
      noise_mode: str = 'random',
      gain: float = 1.0,
      noise: Optional[Array] = None,
  ) -> Array:
    """``noise``: unit noise [B, res, res, 1] for 'random' (default: rng ``'noise'``)."""
    assert noise_mode in ('random', 'const', 'none'), noise_mode
    unit_noise = noise
    cin = x.shape[-1]
    assert x.shape[1] == self.resolution // self.up, (x.shape, self.resolution, self.up)
    styles = FullyConnectedLayer(cin, bias_init=1.0, name='affine')(w)
    k = self.kernel_size
    weight = self.param('weight', _normal_init(1.0), (k, k, cin, self.out_channels))

    noise = None
    if self.use_noise:
      strength = self.param('noise_strength', nn.initializers.zeros, ())
      if self.is_initializing() or noise_mode == 'const':
        res = self.resolution
        const = self.variable(
            BUFFER_COLLECTION,
            'noise_const',
            lambda: jax.random.normal(self.make_rng('params'), (res, res), jnp.float32),
        )
      if noise_mode == 'random':
        shape = (x.shape[0], self.resolution, self.resolution, 1)
        if unit_noise is None:
          unit_noise = jax.random.normal(self.make_rng(NOISE_RNG), shape, jnp.float32)
        assert unit_noise.shape == shape, (unit_noise.shape, shape)
        noise = unit_noise.astype(jnp.float32) * strength
      elif noise_mode == 'const':
        noise = (const.value * strength)[None, :, :, None]

    x = ops.modulated_conv2d(
        x,
        weight,
        styles,
        noise=noise,
        up=self.up,
        padding=k // 2,
        resample_filter=ops.setup_filter(self.resample_filter),
        flip_weight=(self.up == 1),
        fused_modconv=self.fused_modconv,
        impl=self.conv_impl,
    )
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    act_gain = ops.activation_gain(self.activation) * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return ops.bias_act(x, bias, act=self.activation, gain=act_gain, clamp=clamp)


class ToRGBLayer(nn.Module):
  """Modulated 1x1 conv to image channels, no demodulation (official ``ToRGBLayer``)."""

  out_channels: int
  kernel_size: int = 1
  conv_clamp: Optional[float] = None
  fused_modconv: bool = False

  @nn.compact
  def __call__(self, x: Array, w: Array) -> Array:
    cin = x.shape[-1]
    k = self.kernel_size
    styles = FullyConnectedLayer(cin, bias_init=1.0, name='affine')(w)
    styles = styles * (1.0 / np.sqrt(cin * k * k))
    weight = self.param('weight', _normal_init(1.0), (k, k, cin, self.out_channels))
    x = ops.modulated_conv2d(
        x,
        weight,
        styles,
        demodulate=False,
        padding=k // 2,
        fused_modconv=self.fused_modconv,
    )
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    return ops.bias_act(x, bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution of the synthesis network (official ``SynthesisBlock``).

  ``in_channels == 0`` marks the 4x4 block, which starts from the learned ``const``.
  """

  in_channels: int
  out_channels: int
  resolution: int
  img_channels: int
  is_last: bool
  architecture: str = 'skip'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  dtype: Dtype = jnp.float32
  use_noise: bool = True
  fused_modconv: bool = False
  conv_impl: str = 'auto'

  @property
  def num_conv(self) -> int:
    return 1 if self.in_channels == 0 else 2

  @property
  def num_torgb(self) -> int:
    return 1 if (self.is_last or self.architecture == 'skip') else 0

  @nn.compact
  def __call__(
      self,
      x: Optional[Array],
      img: Optional[Array],
      ws: Array,
      noise_mode: str = 'random',
      noises: Optional[Sequence[Array]] = None,
  ) -> Tuple[Array, Optional[Array]]:
    """``noises``: optional unit noise per conv for ``noise_mode='random'``."""
    assert self.architecture in ('orig', 'skip', 'resnet')
    noises = list(noises) if noises is not None else [None] * self.num_conv
    assert ws.shape[1] == self.num_conv + self.num_torgb, ws.shape
    res, f = self.resolution, self.resample_filter
    layer = functools.partial(
        SynthesisLayer,
        self.out_channels,
        res,
        **models.fields(
            self, 'resample_filter conv_clamp use_noise fused_modconv conv_impl'
        ),
    )
    if self.in_channels == 0:
      const = self.param('const', _normal_init(1.0), (res, res, self.out_channels))
      x = jnp.broadcast_to(const.astype(self.dtype)[None], (ws.shape[0],) + const.shape)
      x = layer(name='conv1')(x, ws[:, 0], noise_mode, noise=noises[0])
    else:
      assert x.shape[1:] == (res // 2, res // 2, self.in_channels)
      x = x.astype(self.dtype)
      resnet = self.architecture == 'resnet'
      if resnet:
        y = Conv2dLayer(
            self.out_channels,
            1,
            use_bias=False,
            up=2,
            resample_filter=f,
            conv_impl=self.conv_impl,
            name='skip',
        )(x, gain=np.sqrt(0.5))
      x = layer(up=2, name='conv0')(x, ws[:, 0], noise_mode, noise=noises[0])
      gain = np.sqrt(0.5) if resnet else 1.0
      x = layer(name='conv1')(x, ws[:, 1], noise_mode, gain=gain, noise=noises[1])
      if resnet:
        x = y + x

    if img is not None:
      img = ops.upsample2d(img, ops.setup_filter(f))
    if self.num_torgb:
      torgb = ToRGBLayer(
          self.img_channels,
          name='torgb',
          **models.fields(self, 'conv_clamp fused_modconv'),
      )
      y = torgb(x, ws[:, self.num_conv]).astype(jnp.float32)
      img = img + y if img is not None else y
    return x, img


class SynthesisNetwork(nn.Module):
  """ws [B, num_ws, w_dim] -> images [B, R, R, C] (official ``SynthesisNetwork``)."""

  w_dim: int = 512
  resolution: int = 1024
  img_channels: int = 3
  channel_base: int = 32768
  channel_max: int = 512
  num_fp16_res: int = 0
  mixed_dtype: Dtype = jnp.bfloat16
  architecture: str = 'skip'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  use_noise: bool = True
  fused_modconv: bool = False
  conv_impl: str = 'auto'

  @property
  def num_ws(self) -> int:
    return synthesis_num_ws(self.resolution, self.architecture)

  @property
  def block_resolutions(self) -> Sequence[int]:
    return [2**i for i in range(2, _log2(self.resolution) + 1)]

  @nn.compact
  def __call__(self, ws: Array, noise_mode: str = 'random') -> Array:
    assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), ws.shape
    ws = ws.astype(jnp.float32)
    ch = channels_dict(self.resolution, self.channel_base, self.channel_max)
    # All layers' noise in one RNG call: one PRNG computation to compile, not one each.
    noises = {}
    if self.use_noise and noise_mode == 'random':
      convs = [res for res in self.block_resolutions for _ in range(1 if res == 4 else 2)]
      sizes = [res * res for res in convs]
      flat = jax.random.normal(
          self.make_rng(NOISE_RNG), (ws.shape[0], sum(sizes)), jnp.float32
      )
      for res, part in zip(convs, jnp.split(flat, np.cumsum(sizes)[:-1], axis=1)):
        noises.setdefault(res, []).append(part.reshape(-1, res, res, 1))
    x = img = None
    w_idx = 0
    for res in self.block_resolutions:
      block = SynthesisBlock(
          in_channels=ch[res // 2] if res > 4 else 0,
          out_channels=ch[res],
          resolution=res,
          is_last=res == self.resolution,
          dtype=_block_dtype(self, res),
          name=f'b{res}',
          **models.fields(self, _SHARED_BLOCK_FIELDS),
      )
      n = block.num_conv + block.num_torgb
      x, img = block(x, img, ws[:, w_idx : w_idx + n], noise_mode, noises.get(res))
      w_idx += block.num_conv
    return img


# Generator.validate()'s checks after those G and D share.
_G_CHECKS = (
    ('c_dim z_dim', models.at_least(0)),
    ('z_dim', '>= 1 (0 only for a conditional generator)', lambda v, m: v or m.c_dim),
    ('w_dim mapping_layers', models.at_least(1)),
    ('mapping_lr_multiplier', models.positive()),
    ('w_avg_beta', models.unit_interval(none_ok=True)),
    ('style_mixing_prob', models.unit_interval()),
    ('use_noise fused_modconv', models.FLAG),
)


class Generator(nn.Module):
  """StyleGAN2 generator, ``mapping`` + ``synthesis``; defaults are config-f at 1024."""

  z_dim: int = 512
  c_dim: int = 0
  w_dim: int = 512
  resolution: int = 1024
  img_channels: int = 3
  channel_base: int = 32768
  channel_max: int = 512
  mapping_layers: int = 8
  mapping_lr_multiplier: float = 0.01
  w_avg_beta: Optional[float] = 0.995
  architecture: str = 'skip'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  num_fp16_res: int = 0
  mixed_dtype: Dtype = jnp.bfloat16
  use_noise: bool = True
  style_mixing_prob: float = 0.9
  fused_modconv: bool = False
  conv_impl: str = 'auto'

  # The RNG streams ``apply`` draws from (a class attribute, not a module field).
  RNG_STREAMS = (NOISE_RNG, MIXING_RNG)

  @property
  def num_ws(self) -> int:
    return synthesis_num_ws(self.resolution, self.architecture)

  @nn.nowrap
  def validate(self) -> None:
    """Checks every field without tracing; a ``ValueError`` 'FIELD must be ...'."""
    models.check_fields(self, _checks(4), _G_CHECKS)

  def setup(self):
    self.synthesis = SynthesisNetwork(**models.fields(self, _SYNTHESIS_FIELDS))
    self.mapping = MappingNetwork(
        z_dim=self.z_dim,
        c_dim=self.c_dim,
        w_dim=self.w_dim,
        num_ws=self.num_ws,
        num_layers=self.mapping_layers,
        lr_multiplier=self.mapping_lr_multiplier,
        w_avg_beta=self.w_avg_beta,
    )

  def map(
      self,
      z: Array,
      labels: Optional[Array] = None,
      *,
      truncation_psi: Any = 1.0,
      truncation_cutoff: Optional[int] = None,
      style_mixing_prob: Optional[float] = None,
      train: bool = True,
  ) -> Array:
    """z [B, z_dim] (+ labels [B, c_dim]) -> ws [B, num_ws, w_dim], with style mixing.

    ``style_mixing_prob=None`` means ``self.style_mixing_prob`` when ``train`` else 0;
    one mixing cutoff per batch, as the official loss.
    """
    p = style_mixing_prob
    if p is None:
      p = self.style_mixing_prob if train else 0.0
    truncation = dict(truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
    ws = self.mapping(z, labels, update_w_avg=train, **truncation)
    if isinstance(p, (int, float)) and p <= 0:
      return ws
    key = self.make_rng(MIXING_RNG)
    k_cut, k_p, k_z = jax.random.split(key, 3)
    num_ws = ws.shape[1]
    cutoff = jax.random.randint(k_cut, (), 1, num_ws)
    cutoff = jnp.where(jax.random.uniform(k_p, ()) < p, cutoff, num_ws)
    z2 = jax.random.normal(k_z, z.shape, z.dtype) if z is not None else None
    ws2 = self.mapping(z2, labels, update_w_avg=False, **truncation)
    mix = (jnp.arange(num_ws) >= cutoff)[None, :, None]
    return jnp.where(mix, ws2, ws)

  def synthesize(
      self, ws: Array, *, noise_mode: str = 'random', train: bool = True
  ) -> Array:
    """ws [B, num_ws, w_dim] -> images [B, R, R, C] (for path-length regularisation)."""
    del train  # the synthesis network behaves the same in training and evaluation
    return self.synthesis(ws, noise_mode)

  def __call__(
      self,
      z: Array,
      labels: Optional[Array] = None,
      *,
      truncation_psi: Any = 1.0,
      truncation_cutoff: Optional[int] = None,
      style_mixing_prob: Optional[float] = None,
      noise_mode: str = 'random',
      train: bool = True,
  ) -> Array:
    """z [B, z_dim] -> float32 images [B, R, R, img_channels]."""
    ws = self.map(
        z,
        labels,
        truncation_psi=truncation_psi,
        truncation_cutoff=truncation_cutoff,
        style_mixing_prob=style_mixing_prob,
        train=train,
    )
    return self.synthesize(ws, noise_mode=noise_mode, train=train)


class DiscriminatorBlock(nn.Module):
  """One resolution of the discriminator (official ``DiscriminatorBlock``).

  ``in_channels == 0`` marks the first (top-resolution) block, which has ``fromrgb``.
  """

  in_channels: int
  tmp_channels: int
  out_channels: int
  resolution: int
  img_channels: int
  architecture: str = 'resnet'
  activation: str = 'lrelu'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Optional[Array], img: Optional[Array]):
    assert self.architecture in ('orig', 'skip', 'resnet')
    assert self.in_channels in (0, self.tmp_channels)
    res, f, arch = self.resolution, self.resample_filter, self.architecture
    conv = functools.partial(
        Conv2dLayer, **models.fields(self, 'activation conv_clamp conv_impl')
    )
    if x is not None:
      assert x.shape[1:] == (res, res, self.in_channels), x.shape
      x = x.astype(self.dtype)

    if self.in_channels == 0 or arch == 'skip':
      assert img.shape[1:] == (res, res, self.img_channels), img.shape
      img = img.astype(self.dtype)
      y = conv(self.tmp_channels, 1, name='fromrgb')(img)
      x = x + y if x is not None else y
      img = ops.downsample2d(img, ops.setup_filter(f)) if arch == 'skip' else None

    conv0 = conv(self.tmp_channels, 3, name='conv0')
    conv1 = conv(self.out_channels, 3, down=2, resample_filter=f, name='conv1')
    if arch == 'resnet':
      y = Conv2dLayer(
          self.out_channels,
          1,
          use_bias=False,
          down=2,
          resample_filter=f,
          conv_impl=self.conv_impl,
          name='skip',
      )(x, gain=np.sqrt(0.5))
      x = conv0(x)
      x = conv1(x, gain=np.sqrt(0.5))
      x = y + x
    else:
      x = conv0(x)
      x = conv1(x)
    return x, img


class DiscriminatorEpilogue(nn.Module):
  """Float32 4x4 head: minibatch std, conv, FC, output FC (official)."""

  in_channels: int
  cmap_dim: int
  resolution: int
  img_channels: int
  architecture: str = 'resnet'
  mbstd_group_size: Optional[int] = 4
  mbstd_num_channels: int = 1
  activation: str = 'lrelu'
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x: Array, img: Optional[Array], cmap: Optional[Array]) -> Array:
    assert x.shape[1:] == (self.resolution, self.resolution, self.in_channels), x.shape
    x = x.astype(jnp.float32)
    if self.architecture == 'skip':
      x = x + Conv2dLayer(
          self.in_channels, 1, activation=self.activation, name='fromrgb'
      )(img.astype(jnp.float32))
    if self.mbstd_num_channels > 0:
      x = ops.minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = Conv2dLayer(
        self.in_channels, 3, name='conv', **models.fields(self, 'activation conv_clamp')
    )(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # official NCHW flatten
    x = FullyConnectedLayer(self.in_channels, activation=self.activation, name='fc')(x)
    x = FullyConnectedLayer(1 if self.cmap_dim == 0 else self.cmap_dim, name='out')(x)
    if self.cmap_dim > 0:
      x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1.0 / np.sqrt(self.cmap_dim))
    return x


def _check_mbstd_channels(v, m):
  c = min(m.channel_base // 4, m.channel_max)
  return v and c % v and f'0 or divide the 4x4 channels ({c})'


# Discriminator.validate()'s checks after those G and D share.
_D_CHECKS = (
    ('c_dim', models.at_least(0)),
    ('cmap_dim mbstd_group_size', models.at_least(1, none_ok=True)),
    ('mbstd_num_channels', models.at_least(0)),
    ('mbstd_num_channels', _check_mbstd_channels),
    ('label_mapping_layers', models.at_least(1)),
)


class Discriminator(nn.Module):
  """StyleGAN2 discriminator ('resnet' by default): images [B, R, R, C] -> logits [B].

  Minibatch std groups ``min(mbstd_group_size, B)`` samples: B must be a multiple.
  """

  c_dim: int = 0
  resolution: int = 1024
  img_channels: int = 3
  architecture: str = 'resnet'
  channel_base: int = 32768
  channel_max: int = 512
  num_fp16_res: int = 0
  mixed_dtype: Dtype = jnp.bfloat16
  conv_clamp: Optional[float] = None
  cmap_dim: Optional[int] = None
  mbstd_group_size: Optional[int] = 4
  mbstd_num_channels: int = 1
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  label_mapping_layers: int = 8
  conv_impl: str = 'auto'

  @property
  def block_resolutions(self) -> Sequence[int]:
    return [2**i for i in range(_log2(self.resolution), 2, -1)]

  @property
  def per_sample(self) -> bool:
    """Whether logit i depends on image i alone: minibatch std of groups couples."""
    group = self.mbstd_group_size
    return not (self.mbstd_num_channels > 0 and (group is None or group > 1))

  @nn.nowrap
  def validate(self) -> None:
    """Checks every field without tracing; a ``ValueError`` 'FIELD must be ...'."""
    # The 4x4 epilogue needs a block above it (as official).
    models.check_fields(self, _checks(8), _D_CHECKS)

  @nn.compact
  def __call__(
      self, images: Array, labels: Optional[Array] = None, train: bool = True
  ) -> Array:
    del train  # no train/eval difference (no dropout / batch norm)
    assert self.resolution >= 8, 'the discriminator needs resolution >= 8 (as official)'
    r, c = self.resolution, self.img_channels
    assert images.shape[1:] == (r, r, c), (images.shape, r, c)
    ch = channels_dict(self.resolution, self.channel_base, self.channel_max)
    cmap_dim = ch[4] if self.cmap_dim is None else self.cmap_dim
    if self.c_dim == 0:
      cmap_dim = 0

    x = None
    img = images.astype(jnp.float32)
    for res in self.block_resolutions:
      x, img = DiscriminatorBlock(
          in_channels=ch[res] if res < self.resolution else 0,
          tmp_channels=ch[res],
          out_channels=ch[res // 2],
          resolution=res,
          dtype=_block_dtype(self, res),
          name=f'b{res}',
          **models.fields(
              self, 'img_channels architecture resample_filter conv_clamp conv_impl'
          ),
      )(x, img)

    cmap = None
    if self.c_dim > 0:
      cmap = MappingNetwork(
          z_dim=0,
          c_dim=self.c_dim,
          w_dim=cmap_dim,
          num_ws=None,
          num_layers=self.label_mapping_layers,
          w_avg_beta=None,
          name='mapping',
      )(None, labels)
    x = DiscriminatorEpilogue(
        ch[4],
        cmap_dim=cmap_dim,
        resolution=4,
        name='b4',
        **models.fields(
            self,
            'img_channels architecture mbstd_group_size mbstd_num_channels conv_clamp',
        ),
    )(x, img, cmap)
    return x[:, 0]


def config_f(resolution: int = 1024, img_channels: int = 3, **overrides):
  """(Generator, Discriminator) of config-f; ``overrides`` set either's fields."""
  return _make(dict(resolution=resolution, img_channels=img_channels), overrides)


def tiny(resolution: int = 32, img_channels: int = 1, **overrides):
  """(Generator, Discriminator) small enough to train on a CPU."""
  small = dict(z_dim=64, w_dim=64, mapping_layers=2, channel_base=512, channel_max=64)
  return _make(dict(resolution=resolution, img_channels=img_channels, **small), overrides)


def _make(base: dict, overrides: dict):
  kw = dict(base, **overrides)
  g_fields = set(Generator.__dataclass_fields__)
  d_fields = set(Discriminator.__dataclass_fields__)
  unknown = set(kw) - g_fields - d_fields
  if unknown:
    raise TypeError(f'unknown StyleGAN2 options: {sorted(unknown)}')
  g = Generator(**{k: v for k, v in kw.items() if k in g_fields})
  d = Discriminator(**{k: v for k, v in kw.items() if k in d_fields})
  return g, d
