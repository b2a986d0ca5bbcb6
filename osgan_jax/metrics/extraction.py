"""The one batched feature-extraction loop, shared by every feature network.

A feature network (Inception, a classifier) is jitted for one batch shape: the loop
cuts incoming batches of any size into ``batch_size`` chunks, zero-pads the last chunk,
drops the padding rows again, and counts images on an optional tqdm bar.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

__all__ = ['extract']


def extract(
    network: Callable[[Any], jax.Array],
    batches: Iterable[Any],
    batch_size: int,
    dim: int,
    *,
    prepare: Optional[Callable[[Any], Any]] = None,
    total: Optional[int] = None,
    progress: bool = False,
    desc: str = 'features',
) -> np.ndarray:
  """Features ``[N, dim]`` float32 of the images of ``batches``, in order.

  Batches are cut into ``batch_size`` chunks, ``prepare``d and zero-padded to that
  one shape; ``progress`` shows a tqdm bar on stderr when it is a terminal (a log file
  gets no carriage returns), removed when done (it may sit under the training bar).
  """
  bar = None
  if progress and sys.stderr.isatty():
    bar = tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, leave=False)
  outs = []
  try:
    for batch in batches:
      chunks = []
      for i in range(0, len(batch), batch_size):
        x = batch[i : i + batch_size]
        if prepare is not None:
          x = prepare(x)
        k = x.shape[0]
        if k < batch_size:  # one compiled shape
          pad = jnp.zeros((batch_size - k,) + tuple(x.shape[1:]), x.dtype)
          x = jnp.concatenate([jnp.asarray(x), pad])
        chunks.append(network(x)[:k])
      if chunks:
        outs.append(np.asarray(jnp.concatenate(chunks), np.float32))
        if bar is not None:
          bar.update(len(outs[-1]))
  finally:
    if bar is not None:
      bar.close()
  if not outs:
    return np.zeros((0, dim), np.float32)
  return np.concatenate(outs)
