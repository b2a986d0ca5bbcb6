"""DCGAN generator and discriminator (Radford et al. 2016) as Flax linen modules.

The official OSGAN / PyTorch DCGAN networks, generalised to other resolutions, with
the norm, spectral-norm, PatchGAN and class-conditioning options GAN variants need.
Options, variables and conditioning: ``docs/models.md``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from osgan_jax import models
from osgan_jax.models import conv_ops
from osgan_jax.models import norms

Dtype = Any

G_NORMS = ('batch', 'none')
D_NORMS = ('batch', 'group', 'layer', 'none')

conv_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
  """BatchNorm scale init N(1, 0.02) (PyTorch DCGAN example's ``weights_init``)."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def batch_norm(module, x, train: bool, name: str):
  """The DCGAN BatchNorm of ``module`` (its momentum, epsilon and dtype)."""
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=module.bn_momentum,
      epsilon=module.epsilon,
      scale_init=bn_scale_init,
      dtype=module.dtype,
      name=name,
  )(x)


def base_resolution(resolution: int) -> int:
  """The resolution s of the smallest feature map: R = s * 2**n, 4 <= s <= 7, n >= 1."""
  s = int(resolution)
  while s >= 8 and s % 2 == 0:
    s //= 2
  if not 4 <= s <= 7 or resolution < 2 * s:
    raise ValueError(
        f'resolution {resolution} is not supported: it must be s * 2**n with '
        '4 <= s <= 7 and n >= 1 (e.g. 8, 16, 28, 32, 64, 128, 256)'
    )
  return s


def _checks(norms: tuple[str, ...]) -> tuple:
  """The checks of the fields G and D share (see ``Generator.validate``)."""
  return (
      ('resolution', models.at_least(1)),
      ('resolution', lambda v, _: base_resolution(v) and None),  # 'is not supported'
      ('channels width', models.at_least(1)),
      ('num_classes embed_dim', models.at_least(0)),
      ('max_mult', models.at_least(1)),
      ('norm', models.one_of(norms)),
      ('use_bias', models.FLAG),
      ('bn_momentum', models.unit_interval()),
      ('epsilon', models.positive('a finite number > 0')),
      ('dtype', models.floating_dtype("'float32', 'bfloat16'", none_ok=True)),
      ('conv_impl', models.one_of(conv_ops.IMPLS)),
  )


def channel_schedule(
    resolution: int, width: int, max_mult: int = 8
) -> list[tuple[int, int]]:
  """``[(r, width * min(R // (2 r), max_mult)), ...]`` for the maps from R/2 down to s."""
  s = base_resolution(resolution)
  out = []
  r = resolution // 2
  while r >= s:
    out.append((r, width * min(resolution // (2 * r), max_mult)))
    r //= 2
  return out


def _encode_labels(module: nn.Module, labels, batch: int):
  """[B] integer labels -> [B, k] one-hot (embed_dim=0) or learned embedding."""
  labels = models.check_labels(labels, module.num_classes, batch)
  if labels is None:
    return None
  if module.embed_dim > 0:
    embed = nn.Embed(module.num_classes, module.embed_dim, name='label_embed')
    return embed(labels).astype(module.dtype)
  return jax.nn.one_hot(labels, module.num_classes, dtype=module.dtype)


class Generator(nn.Module):
  """DCGAN generator: z [B, z_dim] (+ labels [B]) -> images [B, R, R, C] in [-1, 1].

  ``width`` is d, the last hidden layer's channels; the options: ``docs/models.md``.
  """

  resolution: int = 64
  channels: int = 3
  width: int = 64
  z_dim: int = 100
  norm: str = 'batch'
  num_classes: int = 0
  embed_dim: int = 0
  max_mult: int = 8
  use_bias: bool = False
  bn_momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.nowrap
  def validate(self) -> None:
    """Checks every field without tracing; a ``ValueError`` 'FIELD must be ...'."""
    # z_dim 0 is a label-only conditional G (unconditional: the loop's empty-kernel check).
    models.check_fields(self, _checks(G_NORMS), [('z_dim', models.at_least(0))])

  def _conv_t(self, h, features, kernel, strides, padding, name: str):
    impl = conv_ops.resolve_impl(self.conv_impl)
    kwargs = dict(
        strides=strides,
        padding=padding,
        use_bias=self.use_bias,
        kernel_init=conv_init,
        dtype=self.dtype,
        name=name,
    )
    if impl == 'xla':
      return nn.ConvTranspose(features, kernel, **kwargs)(h)
    return conv_ops.ConvTranspose(features, kernel, impl=impl, **kwargs)(h)

  def _norm(self, x, train: bool, name: str):
    return batch_norm(self, x, train, name) if self.norm == 'batch' else x

  @nn.compact
  def __call__(self, z, labels=None, train: bool = True):
    if self.norm not in G_NORMS:
      raise ValueError(f'Generator norm must be one of {G_NORMS}, got {self.norm!r}')
    z = jnp.asarray(z)
    batch = z.shape[0]
    z = z.reshape(batch, -1)
    if z.shape[1] != self.z_dim:
      raise ValueError(f'z must have {self.z_dim} features, got shape {z.shape}')
    h = z.astype(self.dtype)
    y = _encode_labels(self, labels, batch)
    if y is not None:
      h = jnp.concatenate([h, y], axis=-1)
    h = h.reshape(batch, 1, 1, h.shape[-1])

    schedule = channel_schedule(self.resolution, self.width, self.max_mult)[::-1]
    s, ch = schedule[0]
    # 1x1 -> s x s: PyTorch ConvTranspose2d(k=s, stride=1, padding=0).
    h = self._conv_t(h, ch, (s, s), (1, 1), 'VALID', 'convT0')
    h = nn.relu(self._norm(h, train, 'norm0'))
    # Doubling blocks: PyTorch ConvTranspose2d(k=4, stride=2, padding=1), which pads the
    # stride-dilated input by k - 1 - p = 2 on each side.
    pad = ((2, 2), (2, 2))
    for i, (_, ch) in enumerate(schedule[1:], start=1):
      h = self._conv_t(h, ch, (4, 4), (2, 2), pad, f'convT{i}')
      h = nn.relu(self._norm(h, train, f'norm{i}'))
    h = self._conv_t(h, self.channels, (4, 4), (2, 2), pad, f'convT{len(schedule)}')
    return jnp.tanh(h)


# Discriminator.validate()'s checks after those G and D share.
_D_CHECKS = (
    ('num_groups sn_steps patch_kernel', models.at_least(1)),
    ('spectral_norm patch', models.FLAG),
    ('sn_collection', 'a collection name', lambda v, _: isinstance(v, str) and v),
)


class Discriminator(nn.Module):
  """DCGAN discriminator: images [B, R, R, C] (+ labels [B]) -> float32 logits [B].

  ``patch=True``: PatchGAN logits [B, s, s]. ``norm`` follows every conv but the first
  and the last; spectral-norm state lives in ``sn_collection``. See ``docs/models.md``.
  """

  resolution: int = 64
  channels: int = 3
  width: int = 64
  norm: str = 'batch'
  num_groups: int = 32
  spectral_norm: bool = False
  sn_collection: str = 'batch_stats'
  sn_steps: int = 1
  patch: bool = False
  patch_kernel: int = 3
  num_classes: int = 0
  embed_dim: int = 0
  max_mult: int = 8
  use_bias: bool = False
  bn_momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @property
  def per_sample(self) -> bool:
    """Whether logit i depends on image i alone: BatchNorm in training mode couples."""
    return self.norm != 'batch'

  @nn.nowrap
  def validate(self) -> None:
    """Checks every field without tracing; a ``ValueError`` 'FIELD must be ...'."""
    models.check_fields(self, _checks(D_NORMS), _D_CHECKS)

  def _conv(self, h, features, kernel, strides, padding, train: bool, name: str):
    impl = conv_ops.resolve_impl(self.conv_impl)
    conv = nn.Conv(
        features,
        kernel,
        strides=strides,
        padding=padding,
        use_bias=self.use_bias,
        kernel_init=conv_init,
        dtype=self.dtype,
        conv_general_dilated=(
            None if impl == 'xla' else conv_ops.conv_general_dilated(impl)
        ),
        name=name,
    )
    if self.spectral_norm:
      return nn.SpectralNorm(
          conv,
          n_steps=self.sn_steps,
          collection_name=self.sn_collection,
          name=f'sn_{name}',
      )(h, update_stats=train)
    return conv(h)

  def _norm(self, h, train: bool, name: str):
    if self.norm == 'batch':
      return batch_norm(self, h, train, name)
    if self.norm == 'group':
      groups = math.gcd(self.num_groups, h.shape[-1])
      return norms.GroupNorm(
          num_groups=groups, epsilon=self.epsilon, dtype=self.dtype, name=name
      )(h)
    if self.norm == 'layer':
      return nn.LayerNorm(
          epsilon=self.epsilon, reduction_axes=(-3, -2, -1), dtype=self.dtype, name=name
      )(h)
    return h

  @nn.compact
  def __call__(self, x, labels=None, train: bool = True):
    if self.norm not in D_NORMS:
      raise ValueError(f'Discriminator norm must be one of {D_NORMS}, got {self.norm!r}')
    x = models.check_images(x, self.resolution, self.channels)
    batch = x.shape[0]
    h = x.astype(self.dtype)
    y = _encode_labels(self, labels, batch)
    if y is not None:
      label_map = jnp.broadcast_to(y[:, None, None, :], h.shape[:3] + y.shape[-1:])
      h = jnp.concatenate([h, label_map], axis=-1)

    schedule = channel_schedule(self.resolution, self.width, self.max_mult)
    # PyTorch Conv2d(k=4, stride=2, padding=1).
    for i, (_, ch) in enumerate(schedule):
      h = self._conv(h, ch, (4, 4), (2, 2), ((1, 1), (1, 1)), train, f'conv{i}')
      if i > 0:
        h = self._norm(h, train, f'norm{i}')
      h = nn.leaky_relu(h, 0.2)

    s = schedule[-1][0]
    last = f'conv{len(schedule)}'
    if self.patch:
      k = self.patch_kernel
      h = self._conv(h, 1, (k, k), (1, 1), 'SAME', train, last)
      return h[..., 0].astype(jnp.float32)
    h = self._conv(h, 1, (s, s), (1, 1), 'VALID', train, last)
    return h.reshape(batch).astype(jnp.float32)
