"""Matmul precision for exactness checks: full float32, and reduced precision emulated.

``full_precision()`` runs float32 matmuls and convolutions at full precision on every
backend, so that a check judges the algorithm, not the hardware's rounding.
``emulated`` rounds their operands as TF32 or bfloat16 hardware does at the default
precision, so that a CPU shows what a GPU or TPU user sees. See docs/exactness.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# The verdict's matmul precision, and the config values that mean full float32.
FULL_PRECISION = 'highest'
FULL_PRECISION_NAMES = ('highest', 'float32', 'F32_F32_F32')
# --emulate: mantissa bits kept of float32 matmul/conv operands at default precision.
EMULATIONS = {'tf32': 10, 'bf16': 7}


def full_precision():
  """Context for full-float32 matmuls and convolutions on every backend; part of jit's
  cache key, so functions jitted and called inside it compile at that precision."""
  return jax.default_matmul_precision(FULL_PRECISION)


def at_full_precision() -> bool:
  """Whether the matmul precision in effect (read at trace time) is full float32."""
  return jax.config.jax_default_matmul_precision in FULL_PRECISION_NAMES


def emulated(op, a, b, emulate):
  """``op(a, b)`` with float32 operands (backward products' too) rounded to ``emulate``'s
  mantissa; plain ``op`` at full precision, for other dtypes or without ``emulate``."""
  if emulate is None or a.dtype != jnp.float32 or at_full_precision():
    return op(a, b)
  rnd = functools.partial(
      jax.lax.reduce_precision, exponent_bits=8, mantissa_bits=EMULATIONS[emulate]
  )

  @jax.custom_jvp
  def rounded(a, b):
    return op(rnd(a), rnd(b))

  @rounded.defjvp
  def rounded_jvp(primals, tangents):
    # reduce_precision is linear to jax and transposes to itself: the backward pass
    # rounds the incoming cotangent, then multiplies it by the rounded other factor.
    a, b = map(rnd, primals)
    return op(a, b), rnd(op(tangents[0], b) + op(a, tangents[1]))

  return rounded(a, b)
