"""Classifiers and the DFAD generator, for data-free adversarial distillation.

LeNet-5, CIFAR ResNet-18/34 and DFAD's generator as the DFAD code builds them, the
``'dfad'`` architecture of the registry (the student classifier plays D).
Architectures and variables: ``docs/models.md``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from osgan_jax import models

ARCHS = ('lenet5', 'resnet18', 'resnet34')
_RESNET_BLOCKS = {'resnet18': (2, 2, 2, 2), 'resnet34': (3, 4, 6, 3)}
_DEFAULT_WIDTH = {'lenet5': 6, 'resnet18': 64, 'resnet34': 64}
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _batch_norm(train: bool, **kwargs):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, **kwargs)


def _unconditional(num_classes: int, labels) -> None:
  if num_classes or labels is not None:
    raise ValueError(
        'the DFAD networks are unconditional: num_classes must be 0 and labels None'
    )


_UNCONDITIONAL = models.rule('0 (the DFAD networks are unconditional)', lambda v: v == 0)


class _Layers(nn.Module):
  """Base with a spectral-norm switch for every conv and dense layer."""

  spectral_norm: bool = False

  def _layer(self, layer: nn.Module, x, train: bool):
    if self.spectral_norm:
      return nn.SpectralNorm(layer)(x, update_stats=train)
    return layer(x)


class _BasicBlock(_Layers):
  planes: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init)
    y = self._layer(conv(self.planes, (3, 3), self.stride, padding=1), x, train)
    y = nn.relu(_batch_norm(train)(y))
    y = self._layer(conv(self.planes, (3, 3), padding=1), y, train)
    y = _batch_norm(train)(y)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = self._layer(conv(self.planes, (1, 1), self.stride), x, train)
      x = _batch_norm(train)(x)
    return nn.relu(y + x)


def _check_blocks(blocks, m):
  if m.arch == 'lenet5':
    return blocks and 'empty for lenet5 (blocks applies to the ResNets)'
  if not isinstance(blocks, (tuple, list)) or not all(
      models.is_int(n) and n >= 1 for n in blocks
  ):
    return 'integers >= 1, one per stage (empty: the default)'


# Classifier.validate()'s checks.
_CLASSIFIER_CHECKS = (
    ('arch', f'one of {", ".join(ARCHS)}', lambda v, _: v in ARCHS),
    ('width', models.at_least(0)),  # 0: the architecture's
    ('blocks', _check_blocks),
    ('num_outputs resolution', models.at_least(1)),
    # Two 5x5 valid convs, each followed by 2x2 pooling, must leave a pixel.
    ('resolution', '>= 16 for lenet5', lambda v, m: m.arch != 'lenet5' or v >= 16),
    ('channels', models.at_least(1)),
    ('num_classes', _UNCONDITIONAL),
    ('spectral_norm', models.FLAG),
)


class Classifier(_Layers):
  """LeNet-5 or a CIFAR-style ResNet; ``[B, R, R, C]`` -> logits ``[B, num_outputs]``.

  ``width`` 0: the architecture's (6 or 64); ``blocks`` overrides a ResNet's per stage.
  """

  arch: str = 'lenet5'
  width: int = 0
  blocks: tuple = ()
  num_outputs: int = 10
  resolution: int = 32
  channels: int = 1
  num_classes: int = 0

  @property
  def per_sample(self) -> bool:
    """Whether output i depends on image i alone: the ResNets' BatchNorm couples."""
    return self.arch == 'lenet5'

  @nn.nowrap
  def validate(self) -> None:
    """Checks every field without tracing; a ``ValueError`` 'FIELD must be ...'."""
    models.check_fields(self, _CLASSIFIER_CHECKS)

  @nn.compact
  def __call__(self, x, labels=None, train: bool = True):
    _unconditional(self.num_classes, labels)
    if self.arch not in ARCHS:
      raise ValueError(
          f'unknown classifier arch {self.arch!r}; valid: {", ".join(ARCHS)}'
      )
    expected = (self.resolution, self.resolution, self.channels)
    if tuple(x.shape[1:]) != expected:
      raise ValueError(
          f'{self.arch} expects [B, {", ".join(map(str, expected))}] inputs, '
          f'got {tuple(x.shape)}'
      )
    width = self.width or _DEFAULT_WIDTH[self.arch]
    if self.arch == 'lenet5':
      if self.blocks:
        raise ValueError('blocks applies to the ResNets, not lenet5')
      return self._lenet(x, width, train)
    blocks = tuple(int(n) for n in self.blocks) or _RESNET_BLOCKS[self.arch]
    if min(blocks) < 1:
      raise ValueError(f'blocks must be positive, got {self.blocks}')
    return self._resnet(x, width, blocks, train)

  def _lenet(self, x, w: int, train: bool):
    def scaled(n):
      return max(1, round(n * w / 6))

    x = nn.relu(self._layer(nn.Conv(w, (5, 5), padding='VALID'), x, train))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(self._layer(nn.Conv(scaled(16), (5, 5), padding='VALID'), x, train))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(self._layer(nn.Dense(scaled(120)), x, train))
    x = nn.relu(self._layer(nn.Dense(scaled(84)), x, train))
    return self._layer(nn.Dense(self.num_outputs), x, train)

  def _resnet(self, x, w: int, blocks, train: bool):
    x = self._layer(
        nn.Conv(w, (3, 3), padding=1, use_bias=False, kernel_init=_conv_init), x, train
    )
    x = nn.relu(_batch_norm(train)(x))
    for stage, n in enumerate(blocks):
      for i in range(n):
        x = _BasicBlock(
            spectral_norm=self.spectral_norm,
            planes=w * 2**stage,
            stride=2 if stage and not i else 1,
        )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return self._layer(nn.Dense(self.num_outputs), x, train)


class Generator(nn.Module):
  """DFAD's GeneratorA: z ``[B, z_dim]`` -> standardised images ``[B, R, R, C]``."""

  z_dim: int = 100
  width: int = 64
  resolution: int = 32
  channels: int = 1
  num_classes: int = 0

  @nn.nowrap
  def validate(self) -> None:
    """Checks every field without tracing; a ``ValueError`` 'FIELD must be ...'."""
    models.check_fields(
        self,
        (
            ('z_dim width channels', models.at_least(1)),
            ('resolution', models.at_least(4)),
            ('resolution', 'a multiple of 4', lambda v, _: v % 4 == 0),
            ('num_classes', _UNCONDITIONAL),
        ),
    )

  @nn.compact
  def __call__(self, z, labels=None, train: bool = True):
    _unconditional(self.num_classes, labels)
    if self.resolution % 4:
      raise ValueError(f'resolution must be a multiple of 4, got {self.resolution}')
    s, w = self.resolution // 4, self.width
    x = nn.Dense(2 * w * s * s)(z.reshape(z.shape[0], -1))
    x = _batch_norm(train)(x.reshape(-1, s, s, 2 * w))
    for features in (2 * w, w):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest, as F.interpolate
      x = nn.Conv(features, (3, 3), padding=1)(x)
      x = nn.leaky_relu(_batch_norm(train)(x), 0.2)
    x = jnp.tanh(nn.Conv(self.channels, (3, 3), padding=1)(x))
    return _batch_norm(train, use_scale=False, use_bias=False)(x)
