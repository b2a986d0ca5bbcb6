"""Checksums of a state's arrays, so a checkpoint that decodes to wrong but finite values
is caught on restore (orbax keeps none). Each array's digest is two sums of its raw bits
modulo 2**32, plain and weighted by position: exact, the same on any device and host."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MULTIPLIER = 2654435761  # Knuth's multiplicative hash constant, odd


def leaf_name(path) -> str:
  """``'params_g/conv0/kernel'``, whatever the containers (a dataclass, plain dicts)."""
  name = lambda k: getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))
  return '/'.join(str(name(k)) for k in path)


def _bits(x, xp):
  x = xp.asarray(x).reshape(-1)
  if x.dtype == xp.bool_:
    return x.astype(xp.uint32)
  width = {1: xp.uint8, 2: xp.uint16, 4: xp.uint32, 8: xp.uint32}[x.dtype.itemsize]
  bits = x.view(width) if xp is np else jax.lax.bitcast_convert_type(x, width)
  return bits.reshape(-1).astype(xp.uint32)  # 8 bytes: the low and high words


def _pair(bits, xp):
  index = xp.arange(bits.shape[0], dtype=xp.uint32)
  weights = index * xp.uint32(_MULTIPLIER) + xp.uint32(1)
  return xp.sum(bits, dtype=xp.uint32), xp.sum(bits * weights, dtype=xp.uint32)


@jax.jit
def _device_digests(leaves):
  return [jnp.stack(_pair(_bits(x, jnp), jnp)) for x in leaves]


def of(tree) -> dict:
  """``{leaf name: [sum, weighted sum]}`` of every array of ``tree``, computed where
  the arrays are (one small transfer to the host)."""
  flat = [
      (leaf_name(p), x)
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
      if hasattr(x, 'dtype')
  ]
  if not flat:
    return {}
  if all(isinstance(x, jax.Array) for _, x in flat):
    pairs = jax.device_get(_device_digests([x for _, x in flat]))
  else:
    pairs = [_pair(_bits(np.asarray(x), np), np) for _, x in flat]
  return {name: [int(a), int(b)] for (name, _), (a, b) in zip(flat, pairs)}


def mismatch(tree, recorded: dict) -> str | None:
  """The first array whose digest differs from ``recorded``; None if none or nothing
  was recorded."""
  if not recorded:
    return None
  now = of(tree)
  for name in sorted(set(now) | set(recorded)):
    if now.get(name) != recorded.get(name):
      return f'checksum mismatch in {name}'
  return None
