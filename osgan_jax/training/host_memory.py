"""Keeps freed host memory mapped (glibc ``mallopt``, before JAX starts), so XLA:CPU
steps stop page-faulting fresh ``mmap`` pages every step (``docs/cpu.md``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8  # malloc.h
# One arena, no mmap, never trim the heap's top, grow it 1 GiB at a time (address space).
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0))
_SETTINGS += ((_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 1 << 30))


def _glibc():
  """The C library if it is glibc, else None."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  except OSError:
    return None
  if not (hasattr(libc, 'mallopt') and hasattr(libc, 'gnu_get_libc_version')):
    return None
  return libc


_ACCELERATOR_PLUGINS = (  # the packages that give JAX a GPU or TPU backend
    'jax_cuda12_plugin jax_cuda13_plugin jax_rocm60_plugin jax_rocm7_plugin libtpu '
    'libtpu_nightly'
).split()


def cpu_only() -> bool:
  """Whether JAX will run on the CPU only, without starting JAX: from ``JAX_PLATFORMS``
  (or ``jax.config.jax_platforms``) if set, else whether a GPU/TPU plugin is installed."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if not platforms and 'jax' in sys.modules:
    platforms = sys.modules['jax'].config.jax_platforms or ''
  if platforms:
    return {p.strip() for p in platforms.split(',') if p.strip()} <= {'cpu'}
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def jax_backends_started() -> bool:
  """Whether JAX has created its backends (and their threads) in this process."""
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  return xla_bridge.backends_are_initialized()


def keep_freed_memory() -> bool:
  """Applies the malloc settings above; returns whether they are in effect (not on
  another C library or once JAX's backends exist: it logs why)."""
  libc = _glibc()
  if libc is None:
    logging.debug('host_memory: not glibc; malloc settings left alone')
    return False
  if jax_backends_started():
    why = 'call keep_freed_memory() before the first JAX computation'
    logging.warning('host_memory: JAX has already started its backends; %s', why)
    return False
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  ok = all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
  if ok:
    logging.debug(  # -v=1 shows it
        'host_memory: freed memory stays mapped (one malloc arena, no mmap, '
        'no trimming)'
    )
  else:
    logging.warning('host_memory: glibc rejected a malloc setting')
  return ok
