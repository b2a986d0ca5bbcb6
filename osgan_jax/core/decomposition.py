"""The per-sample decomposition behind one-stage gradients, and its pytree helpers.

``project`` finds the per-sample coefficient gamma with g ~ gamma * c and says where it
is exact; ``samples_independent`` probes whether D scores each sample by itself. The
helpers apply per-sample scalars and masks to image pytrees (integer leaves such as
labels pass through). See docs/method.md.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def batch_size(tree) -> int:
  return jax.tree.leaves(tree)[0].shape[0]


def concat(a, b):
  return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def expand_per_sample(scalars, leaf):
  """Broadcasts [B] against a [B, ...] leaf."""
  return scalars.reshape(scalars.shape + (1,) * (leaf.ndim - scalars.ndim))


def scale_per_sample(gamma, tree):
  """gamma * tree on float leaves; float0 (integer-input) cotangents pass through."""

  def f(leaf):
    if leaf.dtype == jax.dtypes.float0:
      return leaf
    return (expand_per_sample(gamma, leaf) * leaf).astype(leaf.dtype)

  return jax.tree.map(f, tree)


def select_per_sample(mask, a_tree, b_tree):
  """Per sample: a where mask else b (float leaves)."""

  def f(a, b):
    if a.dtype == jax.dtypes.float0:
      return a
    return jnp.where(expand_per_sample(mask, a), a, b)

  return jax.tree.map(f, a_tree, b_tree)


def sq_norm(tree) -> jax.Array:
  leaves = [l for l in jax.tree.leaves(tree) if l.dtype != jax.dtypes.float0]
  return sum(jnp.sum(jnp.square(l.astype(jnp.float32))) for l in leaves)


def has_real(x_real) -> bool:
  """False for a data-free game: ``x_real`` is None or has no leaves."""
  return bool(jax.tree.leaves(x_real))


def call_with_aux(fn, has_aux, *args):
  """fn(*args) as (output, aux); aux is None when fn has none."""
  out = fn(*args)
  return out if has_aux else (out, None)


def cotangent_like(x, float_cotangents):
  """A cotangent pytree for ``x``: the given arrays at its float leaves (in order),
  float0 zeros at its integer leaves (labels)."""
  leaves, treedef = jax.tree.flatten(x)
  it = iter(float_cotangents)
  out = [
      next(it).astype(l.dtype)
      if is_float(l)
      else np.zeros(np.shape(l), jax.dtypes.float0)
      for l in leaves
  ]
  return jax.tree.unflatten(treedef, out)


def project(d, g, axes):
  """``(gamma, exact)``: least-squares gamma with g ~ gamma * d over ``axes``, and where
  it is exact; gamma is 0 where it is not, never inf or NaN (docs/method.md).
  """
  rtol = 1e-6
  floor = float(np.sqrt(np.finfo(np.dtype(d.dtype)).tiny))
  d_scale = jnp.max(jnp.abs(d), axis=axes)
  g_scale = jnp.max(jnp.abs(g), axis=axes)
  usable = (d_scale > floor) & (g_scale <= 1e15 * d_scale)
  scale = jnp.expand_dims(jnp.where(usable, d_scale, 1.0), axes)
  d_unit = d / scale
  g_unit = jnp.where(jnp.expand_dims(usable, axes), g / scale, 0.0)
  gamma = jnp.where(
      usable,
      jnp.sum(g_unit * d_unit, axis=axes)
      / jnp.maximum(jnp.sum(d_unit * d_unit, axis=axes), 1.0),
      0.0,
  )
  residual = g_unit - jnp.expand_dims(gamma, axes) * d_unit
  exact = usable & (
      jnp.sum(jnp.square(residual), axis=axes)
      <= rtol**2 * jnp.sum(jnp.square(g_unit), axis=axes)
  )
  return gamma, exact | (g_scale == 0)


def samples_independent(
    discriminate: Callable, params_d: PyTree, images: PyTree, *, has_aux: bool = False
) -> bool:
  """Whether D's logits for sample i depend on image i alone: a forward-mode probe on
  sample 0, with random stand-ins under a trace; False (with a warning) when it cannot
  run (docs/method.md)."""
  batch = batch_size(images)
  if batch < 2:
    return True
  traced = any(
      isinstance(l, jax.core.Tracer) for l in jax.tree.leaves((params_d, images))
  )
  try:
    with jax.ensure_compile_time_eval():
      key = jax.random.PRNGKey(0)
      if traced:
        params_d, images = _stand_ins(key, (params_d, images))
      tangent = jax.tree.map(
          lambda l: (
              jax.random.normal(key, l.shape, l.dtype).at[1:].set(0)
              if is_float(l)
              else np.zeros(l.shape, jax.dtypes.float0)
          ),
          images,
      )
      _, t_out = jax.jvp(
          lambda x: call_with_aux(discriminate, has_aux, params_d, x)[0],
          (images,),
          (tangent,),
      )
      moved = jnp.any(jnp.abs(t_out[1:]) > 0) | ~jnp.all(jnp.isfinite(t_out[1:]))
      return not bool(moved)
  except Exception as e:  # pylint: disable=broad-except
    warnings.warn(
        'one_stage: could not probe whether the discriminator treats samples '
        f'independently ({type(e).__name__}); assuming it couples them (exact, '
        'one extra input backward). Pass per_sample=True/False to skip the probe.'
    )
    return False


def _stand_ins(key, tree):
  """Random arrays of ``tree``'s shapes and dtypes, for probing under a trace."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  new = [
      jax.random.normal(k, l.shape, l.dtype) * 0.1
      if is_float(l)
      else jnp.zeros(l.shape, l.dtype)
      for k, l in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, new)
