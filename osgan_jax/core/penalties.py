"""Gradient penalties on D: R1 on reals, R2 on fakes, the WGAN-GP interpolate penalty.

D-only terms for the one- and two-stage steps, on the input gradient of the sum of the
logits, as the official StyleGAN2 and R3GAN code take it. Definitions: ``docs/api.md``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

NAMES = ('r1', 'r2', 'gp')


def _float_leaves(x):
  """``(float leaves, rebuild)``: rebuild(new float leaves) -> x with them in place."""
  leaves, treedef = jax.tree.flatten(x)
  index = [
      i for i, l in enumerate(leaves) if jnp.issubdtype(jnp.result_type(l), jnp.inexact)
  ]

  def rebuild(floats):
    out = list(leaves)
    for i, v in zip(index, floats):
      out[i] = v
    return jax.tree.unflatten(treedef, out)

  return [leaves[i] for i in index], rebuild


def _f32(x):
  return jnp.asarray(x).astype(jnp.promote_types(jnp.result_type(x), jnp.float32))


def input_grads(discriminate: Callable, params_d, x, *, has_aux: bool = False):
  """``(grads, logits, aux)``: ``d sum_j D(x_j) / d x`` over ``x``'s float leaves (a
  list), differentiable w.r.t. ``params_d``, and the same forward's logits."""
  floats, rebuild = _float_leaves(x)

  def summed(floats):
    out = discriminate(params_d, rebuild(floats))
    logits, aux = out if has_aux else (out, None)
    return jnp.sum(_f32(logits)), (logits, aux)

  grads, (logits, aux) = jax.grad(summed, has_aux=True)(floats)
  return grads, logits, aux


def sq_norms(grads) -> jax.Array:
  """Per-sample squared norms ``[B]`` (float32 or float64) of ``input_grads``' list."""
  return sum(jnp.sum(jnp.square(_f32(g)).reshape(g.shape[0], -1), axis=1) for g in grads)


def input_grad_sq_norms(discriminate: Callable, params_d, x, *, has_aux: bool = False):
  """``(per-sample ||d sum_j D(x_j) / d x_i||^2 [B], logits, aux)`` in float32 (or
  float64 for float64 inputs); ``aux`` is None without ``has_aux``."""
  grads, logits, aux = input_grads(discriminate, params_d, x, has_aux=has_aux)
  return sq_norms(grads), logits, aux


def validate(weights) -> dict:
  """``weights`` as a dict of known penalty names (``None``: no penalty)."""
  weights = dict(weights or {})
  unknown = sorted(set(weights) - set(NAMES))
  if unknown:
    raise ValueError(f'unknown penalties {unknown}; valid: {", ".join(NAMES)}')
  return weights


def loss(
    discriminate: Callable,
    params_d,
    x_real,
    x_fake,
    weights,
    rng=None,
    *,
    has_aux: bool = False,
):
  """``(weighted sum of the penalties, {'r1_penalty', ...})``, ``x_fake`` detached;
  ``rng`` draws ``gp``'s interpolation weights. Metrics: unweighted batch means."""
  weights = validate(weights)
  x_fake = jax.lax.stop_gradient(x_fake)
  total, metrics = 0.0, {}

  def sq_norms(x):
    return input_grad_sq_norms(discriminate, params_d, x, has_aux=has_aux)[0]

  for name, x in (('r1', x_real), ('r2', x_fake)):
    if name in weights:
      metrics[f'{name}_penalty'] = jnp.mean(sq_norms(x))
      total = total + weights[name] / 2 * metrics[f'{name}_penalty']
  if 'gp' in weights:
    if rng is None:
      raise ValueError('the gp penalty needs an rng for its interpolation weights')
    real_floats, rebuild = _float_leaves(x_real)
    fake_floats, _ = _float_leaves(x_fake)
    e = jax.random.uniform(rng, (real_floats[0].shape[0],))

    def mix(r, f):
      w = e.reshape((-1,) + (1,) * (r.ndim - 1)).astype(r.dtype)
      return w * r + (1 - w) * f

    x_hat = rebuild([mix(r, f) for r, f in zip(real_floats, fake_floats)])
    # sqrt at 0 has an infinite derivative; the norm is > 0 almost surely.
    norms = jnp.sqrt(jnp.maximum(sq_norms(x_hat), 1e-30))
    metrics['gp_penalty'] = jnp.mean(jnp.square(norms - 1.0))
    total = total + weights['gp'] * metrics['gp_penalty']
  return total, metrics
