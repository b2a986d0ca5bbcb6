"""StyleGAN2 generator and discriminator in Flax, faithful to stylegan2-ada-pytorch.

Config-f's 'skip' generator and 'resnet' discriminator with the official parameters, so
official weights port with transposes and the official method trains one-stage.
Variables, RNG streams, use and mixed precision: ``docs/models.md``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def _normal_init(stddev: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * stddev

  return init


def _const_init(value: float):
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.full(shape, value, dtype)

  return init


# ---------------------------------------------------------------------------
# Equalised-learning-rate layers.


class FullyConnectedLayer(nn.Module):
  """Dense layer with equalised learning rate (official ``FullyConnectedLayer``).

  ``weight`` [in, out] ~ N(0, 1) / lr_multiplier, used as
  ``weight * lr_multiplier / sqrt(in)``; ``bias`` initialised to ``bias_init`` and
  used as ``bias * lr_multiplier``. Computes in the dtype of its input.
  """

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
  """Conv layer with equalised learning rate and FIR resampling (official ``Conv2dLayer``).

  ``weight`` [k, k, in, out] ~ N(0, 1), scaled by ``1 / sqrt(in * k * k)``; output
  gets ``bias_act`` with gain ``act_gain * gain`` and clamp ``conv_clamp * gain``.
  """

  out_channels: int
  kernel_size: int
  use_bias: bool = True
  activation: str = 'linear'
  up: int = 1
  down: int = 1
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x: Array, gain: float = 1.0) -> Array:
    cin = x.shape[-1]
    k = self.kernel_size
    w = self.param('weight', _normal_init(1.0), (k, k, cin, self.out_channels))
    w = w * (1.0 / np.sqrt(cin * k * k))
    b = (
        self.param('bias', nn.initializers.zeros, (self.out_channels,))
        if self.use_bias
        else None
    )
    f = ops.setup_filter(self.resample_filter)
    x = ops.conv2d_resample(
        x,
        w.astype(x.dtype),
        f=f,
        up=self.up,
        down=self.down,
        padding=k // 2,
        flip_weight=(self.up == 1),
    )
    act_gain = ops.activation_gain(self.activation) * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return ops.bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


# ---------------------------------------------------------------------------
# Mapping network.


class MappingNetwork(nn.Module):
  """z (and labels) -> w, broadcast to ``num_ws`` copies (official ``MappingNetwork``).

  z is normalised to unit second moment; labels are embedded by an FC layer and
  normalised likewise. ``w_avg`` (collection ``batch_stats``) tracks the mean of W
  with decay ``w_avg_beta`` and is used by the truncation trick.
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
      if (
          update_w_avg
          and not self.is_initializing()
          and self.is_mutable_collection(STATE_COLLECTION)
      ):
        mean = jnp.mean(jax.lax.stop_gradient(x), axis=0)
        w_avg.value = mean + self.w_avg_beta * (
            w_avg.value - mean
        )  # lerp(mean, w_avg, beta)

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


# ---------------------------------------------------------------------------
# Synthesis network.


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv (+ optional 2x FIR upsampling), noise, bias, lrelu (official).

  Parameters: ``affine`` (FC w -> styles, bias init 1), ``weight`` [k, k, in, out]
  ~ N(0, 1) (no explicit equalisation: demodulation normalises it),
  ``noise_strength`` (scalar, init 0), ``bias``. Buffer: ``noise_const`` [res, res].
  """

  out_channels: int
  resolution: int
  kernel_size: int = 3
  up: int = 1
  use_noise: bool = True
  activation: str = 'lrelu'
  resample_filter: Tuple[float, ...] = (1, 3, 3, 1)
  conv_clamp: Optional[float] = None
  fused_modconv: bool = False

  @nn.compact
  def __call__(
      self,
      x: Array,
      w: Array,
      noise_mode: str = 'random',
      gain: float = 1.0,
      noise: Optional[Array] = None,
  ) -> Array:
    """``noise``: optional unit-variance noise [B, res, res, 1] for ``noise_mode='random'``
    (drawn from rng ``'noise'`` when not given); it is scaled by ``noise_strength``."""
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
    )
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    act_gain = ops.activation_gain(self.activation) * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return ops.bias_act(x, bias, act=self.activation, gain=act_gain, clamp=clamp)


class ToRGBLayer(nn.Module):
  """Modulated 1x1 conv without demodulation to image channels (official ``ToRGBLayer``)."""

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
  ``ws``: [B, num_conv + num_torgb, w_dim]. Returns ``(x, img)``; ``img`` is float32.
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
    """``noises``: optional per-layer unit noise (one per conv) for ``noise_mode='random'``."""
    assert self.architecture in ('orig', 'skip', 'resnet')
    noises = list(noises) if noises is not None else [None] * self.num_conv
    assert ws.shape[1] == self.num_conv + self.num_torgb, ws.shape
    dtype = self.dtype
    layer_kw = dict(
        resample_filter=self.resample_filter,
        conv_clamp=self.conv_clamp,
        use_noise=self.use_noise,
        fused_modconv=self.fused_modconv,
    )
    w_idx = 0

    if self.in_channels == 0:
      const = self.param(
          'const',
          _normal_init(1.0),
          (self.resolution, self.resolution, self.out_channels),
      )
      x = jnp.broadcast_to(const.astype(dtype)[None], (ws.shape[0],) + const.shape)
    else:
      assert x.shape[1:] == (self.resolution // 2, self.resolution // 2, self.in_channels)
      x = x.astype(dtype)

    if self.in_channels == 0:
      x = SynthesisLayer(self.out_channels, self.resolution, name='conv1', **layer_kw)(
          x, ws[:, w_idx], noise_mode, noise=noises[0]
      )
      w_idx += 1
    elif self.architecture == 'resnet':
      y = Conv2dLayer(
          self.out_channels,
          1,
          use_bias=False,
          up=2,
          resample_filter=self.resample_filter,
          name='skip',
      )(x, gain=np.sqrt(0.5))
      x = SynthesisLayer(
          self.out_channels, self.resolution, up=2, name='conv0', **layer_kw
      )(x, ws[:, w_idx], noise_mode, noise=noises[0])
      x = SynthesisLayer(self.out_channels, self.resolution, name='conv1', **layer_kw)(
          x, ws[:, w_idx + 1], noise_mode, gain=np.sqrt(0.5), noise=noises[1]
      )
      x = y + x
      w_idx += 2
    else:
      x = SynthesisLayer(
          self.out_channels, self.resolution, up=2, name='conv0', **layer_kw
      )(x, ws[:, w_idx], noise_mode, noise=noises[0])
      x = SynthesisLayer(self.out_channels, self.resolution, name='conv1', **layer_kw)(
          x, ws[:, w_idx + 1], noise_mode, noise=noises[1]
      )
      w_idx += 2

    if img is not None:
      img = ops.upsample2d(img, ops.setup_filter(self.resample_filter))
    if self.is_last or self.architecture == 'skip':
      y = ToRGBLayer(
          self.img_channels,
          conv_clamp=self.conv_clamp,
          fused_modconv=self.fused_modconv,
          name='torgb',
      )(x, ws[:, w_idx])
      y = y.astype(jnp.float32)
      img = img + y if img is not None else y
    return x, img


class SynthesisNetwork(nn.Module):
  """ws [B, num_ws, w_dim] -> images [B, R, R, img_channels] (official ``SynthesisNetwork``).

  Submodules ``b4, b8, ..., b{R}``. ``num_fp16_res`` top resolutions compute in
  ``mixed_dtype``.
  """

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
    fp16_res = fp16_resolution(self.resolution, self.num_fp16_res)
    # Draw the per-layer noise of all layers with one RNG call (one PRNG computation
    # to compile instead of one per layer; same distribution as per-layer draws).
    block_noises = {res: None for res in self.block_resolutions}
    if self.use_noise and noise_mode == 'random':
      sizes = [(res, 1 if res == 4 else 2) for res in self.block_resolutions]
      total = sum(res * res * n for res, n in sizes)
      flat = jax.random.normal(
          self.make_rng(NOISE_RNG), (ws.shape[0], total), jnp.float32
      )
      off = 0
      for res, n in sizes:
        block_noises[res] = []
        for _ in range(n):
          block_noises[res].append(
              flat[:, off : off + res * res].reshape(-1, res, res, 1)
          )
          off += res * res
    x = img = None
    w_idx = 0
    for res in self.block_resolutions:
      is_last = res == self.resolution
      block = SynthesisBlock(
          in_channels=ch[res // 2] if res > 4 else 0,
          out_channels=ch[res],
          resolution=res,
          img_channels=self.img_channels,
          is_last=is_last,
          architecture=self.architecture,
          resample_filter=self.resample_filter,
          conv_clamp=self.conv_clamp,
          dtype=self.mixed_dtype
          if (self.num_fp16_res > 0 and res >= fp16_res)
          else jnp.float32,
          use_noise=self.use_noise,
          fused_modconv=self.fused_modconv,
          name=f'b{res}',
      )
      n = block.num_conv + block.num_torgb
      x, img = block(x, img, ws[:, w_idx : w_idx + n], noise_mode, block_noises[res])
      w_idx += block.num_conv
    return img


class Generator(nn.Module):
  """StyleGAN2 generator: ``mapping`` (MappingNetwork) + ``synthesis`` (SynthesisNetwork).

  Defaults are config-f at 1024x1024 (``Generator(resolution=256)`` etc. keeps
  ``channel_base`` / ``channel_max``, as the official preset). Images are NHWC,
  roughly in [-1, 1]. ``style_mixing_prob`` is the training-time mixing probability
  (0.9 = official loss default); see ``__call__``.
  """

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

  # The RNG streams ``apply`` draws from (a class attribute, not a module field).
  RNG_STREAMS = (NOISE_RNG, MIXING_RNG)

  @property
  def num_ws(self) -> int:
    return synthesis_num_ws(self.resolution, self.architecture)

  def setup(self):
    self.synthesis = SynthesisNetwork(
        w_dim=self.w_dim,
        resolution=self.resolution,
        img_channels=self.img_channels,
        channel_base=self.channel_base,
        channel_max=self.channel_max,
        num_fp16_res=self.num_fp16_res,
        mixed_dtype=self.mixed_dtype,
        architecture=self.architecture,
        resample_filter=self.resample_filter,
        conv_clamp=self.conv_clamp,
        use_noise=self.use_noise,
        fused_modconv=self.fused_modconv,
    )
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

    ``style_mixing_prob=None`` means ``self.style_mixing_prob`` when ``train`` else 0.
    With probability p a cutoff is drawn uniformly from [1, num_ws) (one per batch,
    as the official loss) and ws[:, cutoff:] are replaced by the W of fresh latents
    (rng ``'mixing'``; the second mapping does not update ``w_avg``). ``w_avg`` is
    updated when ``train`` and the ``batch_stats`` collection is mutable.
    """
    p = (
        (self.style_mixing_prob if train else 0.0)
        if style_mixing_prob is None
        else style_mixing_prob
    )
    ws = self.mapping(
        z,
        labels,
        truncation_psi=truncation_psi,
        truncation_cutoff=truncation_cutoff,
        update_w_avg=train,
    )
    if isinstance(p, (int, float)) and p <= 0:
      return ws
    key = self.make_rng(MIXING_RNG)
    k_cut, k_p, k_z = jax.random.split(key, 3)
    num_ws = ws.shape[1]
    cutoff = jax.random.randint(k_cut, (), 1, num_ws)
    cutoff = jnp.where(jax.random.uniform(k_p, ()) < p, cutoff, num_ws)
    z2 = jax.random.normal(k_z, z.shape, z.dtype) if z is not None else None
    ws2 = self.mapping(
        z2,
        labels,
        truncation_psi=truncation_psi,
        truncation_cutoff=truncation_cutoff,
        update_w_avg=False,
    )
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
    """z [B, z_dim] -> images [B, R, R, img_channels] (float32, NHWC).

    rngs: ``'noise'`` if ``noise_mode == 'random'``; ``'mixing'`` if the mixing
    probability is > 0 (by default: when ``train``).
    """
    ws = self.map(
        z,
        labels,
        truncation_psi=truncation_psi,
        truncation_cutoff=truncation_cutoff,
        style_mixing_prob=style_mixing_prob,
        train=train,
    )
    return self.synthesize(ws, noise_mode=noise_mode, train=train)


# ---------------------------------------------------------------------------
# Discriminator.


class DiscriminatorBlock(nn.Module):
  """One resolution of the discriminator (official ``DiscriminatorBlock``).

  ``in_channels == 0`` marks the first (top-resolution) block, which has ``fromrgb``.
  'resnet': ``skip`` (1x1, FIR down, no bias) + conv0 + conv1 (FIR down), summed with
  gain sqrt(0.5) each.
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

  @nn.compact
  def __call__(self, x: Optional[Array], img: Optional[Array]):
    assert self.architecture in ('orig', 'skip', 'resnet')
    assert self.in_channels in (0, self.tmp_channels)
    dtype = self.dtype
    if x is not None:
      assert x.shape[1:] == (self.resolution, self.resolution, self.in_channels), x.shape
      x = x.astype(dtype)

    if self.in_channels == 0 or self.architecture == 'skip':
      assert img.shape[1:] == (
          self.resolution,
          self.resolution,
          self.img_channels,
      ), img.shape
      img = img.astype(dtype)
      y = Conv2dLayer(
          self.tmp_channels,
          1,
          activation=self.activation,
          conv_clamp=self.conv_clamp,
          name='fromrgb',
      )(img)
      x = x + y if x is not None else y
      img = (
          ops.downsample2d(img, ops.setup_filter(self.resample_filter))
          if self.architecture == 'skip'
          else None
      )

    conv0 = Conv2dLayer(
        self.tmp_channels,
        3,
        activation=self.activation,
        conv_clamp=self.conv_clamp,
        name='conv0',
    )
    conv1 = Conv2dLayer(
        self.out_channels,
        3,
        activation=self.activation,
        down=2,
        resample_filter=self.resample_filter,
        conv_clamp=self.conv_clamp,
        name='conv1',
    )
    if self.architecture == 'resnet':
      y = Conv2dLayer(
          self.out_channels,
          1,
          use_bias=False,
          down=2,
          resample_filter=self.resample_filter,
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
  """4x4 head: minibatch std, conv, FC, output FC (official ``DiscriminatorEpilogue``).

  Runs in float32. ``fc`` flattens the 4x4 features in the official NCHW order.
  """

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
        self.in_channels,
        3,
        activation=self.activation,
        conv_clamp=self.conv_clamp,
        name='conv',
    )(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # official NCHW flatten
    x = FullyConnectedLayer(self.in_channels, activation=self.activation, name='fc')(x)
    x = FullyConnectedLayer(1 if self.cmap_dim == 0 else self.cmap_dim, name='out')(x)
    if self.cmap_dim > 0:
      x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1.0 / np.sqrt(self.cmap_dim))
    return x


class Discriminator(nn.Module):
  """StyleGAN2 discriminator ('resnet' by default): images [B, R, R, C] -> logits [B].

  Submodules ``b{R}, ..., b8`` (DiscriminatorBlock), ``mapping`` (labels only) and
  ``b4`` (DiscriminatorEpilogue). Minibatch std uses groups of
  ``min(mbstd_group_size, B)``, so the batch must be divisible by that.
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

  @property
  def block_resolutions(self) -> Sequence[int]:
    return [2**i for i in range(_log2(self.resolution), 2, -1)]

  @nn.compact
  def __call__(
      self, images: Array, labels: Optional[Array] = None, train: bool = True
  ) -> Array:
    del train  # no train/eval difference (no dropout / batch norm)
    assert self.resolution >= 8, 'the discriminator needs resolution >= 8 (as official)'
    assert images.shape[1:] == (self.resolution, self.resolution, self.img_channels), (
        images.shape,
        self.resolution,
        self.img_channels,
    )
    ch = channels_dict(self.resolution, self.channel_base, self.channel_max)
    fp16_res = fp16_resolution(self.resolution, self.num_fp16_res)
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
          img_channels=self.img_channels,
          architecture=self.architecture,
          resample_filter=self.resample_filter,
          conv_clamp=self.conv_clamp,
          dtype=self.mixed_dtype
          if (self.num_fp16_res > 0 and res >= fp16_res)
          else jnp.float32,
          name=f'b{res}',
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
        img_channels=self.img_channels,
        architecture=self.architecture,
        mbstd_group_size=self.mbstd_group_size,
        mbstd_num_channels=self.mbstd_num_channels,
        conv_clamp=self.conv_clamp,
        name='b4',
    )(x, img, cmap)
    return x[:, 0]


# ---------------------------------------------------------------------------
# Presets.


def config_f(resolution: int = 1024, img_channels: int = 3, **overrides):
  """(Generator, Discriminator) with the official config-f / 'stylegan2' preset settings.

  ``overrides`` are applied to both where the field exists (e.g. ``conv_clamp=256,
  num_fp16_res=4`` for the official ADA mixed-precision settings).
  """
  return _make(dict(resolution=resolution, img_channels=img_channels), overrides)


def tiny(resolution: int = 32, img_channels: int = 1, **overrides):
  """(Generator, Discriminator) small enough to train on a CPU: 64-d z/w, 2 mapping
  layers, ``channel_base=512, channel_max=64`` (4..8: 64, 16: 32, 32: 16 channels)."""
  base = dict(
      resolution=resolution,
      img_channels=img_channels,
      z_dim=64,
      w_dim=64,
      mapping_layers=2,
      channel_base=512,
      channel_max=64,
  )
  base.update(overrides)
  return _make(base, {})


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
