"""JAX's persistent compilation cache, on by default for the commands: a rerun on the
same machine loads its compiled programs."""

from __future__ import annotations

import os

import jax
from jax import monitoring

ENV = 'OSGAN_COMPILATION_CACHE'
_counts = {'hits': 0, 'misses': 0}
_EVENTS = {
    '/jax/compilation_cache/cache_hits': 'hits',
    '/jax/compilation_cache/cache_misses': 'misses',
}


def default_directory() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return os.path.join(base, 'osgan_jax', 'jax_compilation_cache')


def enable(directory: str = '') -> str | None:
  """Caches compiled programs in ``directory`` ('': ``$OSGAN_COMPILATION_CACHE`` or the
  default; 'off': no cache); returns the directory used, or None."""
  directory = directory or os.environ.get(ENV, '') or default_directory()
  if directory == 'off':
    return None
  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', directory)
  monitoring.register_event_listener(_count)
  return directory


def _count(event: str, **kwargs) -> None:
  del kwargs
  if event in _EVENTS:
    _counts[_EVENTS[event]] += 1


def counts() -> dict:
  """Programs loaded from the cache (``hits``) and compiled afresh (``misses``) so far."""
  return dict(_counts)
