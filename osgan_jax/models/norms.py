"""GroupNorm for NHWC feature maps, computed from per-(sample, channel) pixel sums.

The function, parameters and numerics of ``flax.linen.GroupNorm`` (checkpoints are
interchangeable), in a form XLA:CPU runs much faster. Details: ``docs/models.md``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


def group_norm(x, scale, bias, num_groups: int, epsilon: float):
  """Float32 GroupNorm of ``x`` [B, ..., C]; ``scale``/``bias`` [C] or None."""
  b, c = x.shape[0], x.shape[-1]
  cg = c // num_groups
  xf = x.astype(jnp.float32).reshape(b, -1, c)
  n = xf.shape[1] * cg
  mean = jnp.sum(xf, axis=1).reshape(b, num_groups, cg).sum(-1) / n  # [B, G]
  mean_sq = jnp.sum(xf * xf, axis=1).reshape(b, num_groups, cg).sum(-1) / n
  var = jnp.maximum(mean_sq - mean * mean, 0.0)
  mul = jnp.repeat(lax.rsqrt(var + epsilon), cg, axis=1)  # [B, C]
  if scale is not None:
    mul = mul * scale.astype(jnp.float32)
  add = -jnp.repeat(mean, cg, axis=1) * mul
  if bias is not None:
    add = add + bias.astype(jnp.float32)
  shape = (b,) + (1,) * (x.ndim - 2) + (c,)
  return xf.reshape(x.shape) * mul.reshape(shape) + add.reshape(shape)


class GroupNorm(nn.Module):
  """Drop-in ``nn.GroupNorm(num_groups, epsilon, dtype)`` for channels-last inputs."""

  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if self.num_groups < 1 or c % self.num_groups:
      raise ValueError(
          f'GroupNorm: {c} channels do not split into {self.num_groups} groups'
      )
    scale = bias = None
    if self.use_scale:
      scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, *(p for p in (scale, bias) if p is not None))
    return group_norm(x, scale, bias, self.num_groups, self.epsilon).astype(dtype)
