"""Improved precision and recall (Kynkaanniemi et al. 2019) of two feature sets.

Each set's manifold is the union of balls around its points, a ball's radius the
distance to the point's ``k``-th nearest neighbour in its own set. Precision: the share
of generated points inside the real manifold; recall: the share of real points inside
the generated one. Distances are computed in blocks on the device (``docs/
generate_evaluate.md``: the feature network and the differences from the reference).
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ['DEFAULT_K', 'knn_radii', 'coverage', 'precision_recall']

DEFAULT_K = 3  # the paper's and StyleGAN2-ADA's pr50k3 neighbourhood size
BLOCK = 1024  # rows per distance block: [BLOCK, n] float32 on the device


def _squared_distances(a, b, b_sq):
  """``[m, n]`` squared Euclidean distances, float32 at full matmul precision."""
  ab = jnp.matmul(a, b.T, precision=lax.Precision.HIGHEST)
  return jnp.maximum(jnp.sum(a * a, axis=1)[:, None] + b_sq[None, :] - 2.0 * ab, 0.0)


@functools.partial(jax.jit, static_argnames='k')
def _kth_block(rows, manifold, manifold_sq, k: int):
  d = _squared_distances(rows, manifold, manifold_sq)
  return -lax.top_k(-d, k + 1)[0][:, k]  # the row itself is its 0-th neighbour


@jax.jit
def _covered_block(rows, manifold, manifold_sq, radii_sq):
  return jnp.any(
      _squared_distances(rows, manifold, manifold_sq) <= radii_sq[None], axis=1
  )


def _blocks(fn, rows: np.ndarray, *args) -> np.ndarray:
  """``fn(block, *args)`` over ``rows`` in zero-padded blocks of one shape."""
  size = min(BLOCK, rows.shape[0])
  out = []
  for i in range(0, rows.shape[0], size):
    block = rows[i : i + size]
    n = block.shape[0]
    if n < size:
      block = np.concatenate([block, np.zeros((size - n, rows.shape[1]), rows.dtype)])
    out.append(np.asarray(fn(jnp.asarray(block), *args))[:n])
  return np.concatenate(out)


def _as_features(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or x.shape[0] < 1:
    raise ValueError(f'{name}: expected features [n, d], got shape {x.shape}')
  return x


def knn_radii(features, k: int = DEFAULT_K) -> np.ndarray:
  """Squared distance of each point to its ``k``-th nearest neighbour in the set."""
  f = _as_features(features, 'features')
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if k >= f.shape[0]:
    raise ValueError(
        f'precision and recall with k={k} need more than {k} points per set, got '
        f'{f.shape[0]}'
    )
  fj = jnp.asarray(f)
  sq = jnp.sum(fj * fj, axis=1)
  return _blocks(functools.partial(_kth_block, k=k), f, fj, sq)


def coverage(probes, manifold, radii_sq) -> float:
  """Share of ``probes`` within a ball of ``manifold`` (squared radii ``radii_sq``)."""
  p, m = _as_features(probes, 'probes'), _as_features(manifold, 'manifold')
  if p.shape[1] != m.shape[1]:
    raise ValueError(f'feature dimensions differ: {p.shape[1]} vs {m.shape[1]}')
  mj = jnp.asarray(m)
  sq = jnp.sum(mj * mj, axis=1)
  inside = _blocks(_covered_block, p, mj, sq, jnp.asarray(radii_sq, jnp.float32))
  return float(np.mean(inside))


def precision_recall(
    real_features, fake_features, k: int = DEFAULT_K
) -> Tuple[float, float]:
  """``(precision, recall)`` of generated features against real ones."""
  real = _as_features(real_features, 'real features')
  fake = _as_features(fake_features, 'fake features')
  precision = coverage(fake, real, knn_radii(real, k))
  recall = coverage(real, fake, knn_radii(fake, k))
  return precision, recall
