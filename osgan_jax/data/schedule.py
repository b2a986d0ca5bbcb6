"""The index schedule: which examples global batch k holds, and which of them a host loads.

Batch k is a pure function of (seed, k), whatever the source, the number of threads or
workers, or where the run started: this is what makes resuming and sharding exact.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
  perm = rng.permutation(n)
  perm.flags.writeable = False
  return perm


def batch_indices(
    n: int,
    seed: int,
    step: int,
    global_batch: int,
    start: int,
    stop: int,
    shuffle: bool = True,
) -> np.ndarray:
  """Example indices of positions [start, stop) of global batch `step`.

  Position p reads ``perm(seed, p // n)[p % n]``: batches cross epochs, nothing dropped.
  """
  positions = step * global_batch + np.arange(start, stop, dtype=np.int64)
  if not shuffle:
    return positions % n
  epochs = positions // n
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    mask = epochs == epoch
    out[mask] = _epoch_permutation(n, seed, int(epoch))[positions[mask] % n]
  return out


def examples(n: int, limit: int = 0, xflip: bool = False) -> int:
  """How many examples the schedule draws from: the first ``limit`` of ``n`` (0: all),
  twice as many with ``xflip`` (index ``i >= m`` is example ``i - m`` mirrored)."""
  m = min(limit, n) if limit else n
  return 2 * m if xflip else m


def split_flips(indices: np.ndarray, n: int, limit: int = 0, xflip: bool = False):
  """``(example indices, mirrored mask)`` of schedule ``indices`` (see ``examples``)."""
  m = min(limit, n) if limit else n
  if not xflip:
    return indices, np.zeros(indices.shape, bool)
  return indices % m, indices >= m


def host_slice(global_batch: int, process_index: int, process_count: int) -> tuple:
  """(start, stop) of the global batch's positions that host `process_index` loads."""
  per_host = global_batch // process_count
  return process_index * per_host, (process_index + 1) * per_host
