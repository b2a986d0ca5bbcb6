"""Keeps freed host memory mapped, so XLA:CPU steps stop page-faulting.

glibc gives XLA:CPU's large per-step buffers fresh ``mmap`` pages every step;
``keep_freed_memory()`` (``--tune_malloc``) makes malloc reuse them, and must run
before JAX starts. Why, and what it sets: ``docs/cpu.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Never give the heap's top back to the kernel; grow it in large steps (address space,
# not resident memory).
_SETTINGS = (
    (_M_ARENA_MAX, 1),
    (_M_MMAP_MAX, 0),
    (_M_TRIM_THRESHOLD, 2**31 - 1),
    (_M_TOP_PAD, 1 << 30),
)


def _glibc():
  """The C library if it is glibc (has ``mallopt`` and ``gnu_get_libc_version``)."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  except OSError:
    return None
  if not (hasattr(libc, 'mallopt') and hasattr(libc, 'gnu_get_libc_version')):
    return None
  return libc


# Packages that give JAX a GPU or TPU backend.
_ACCELERATOR_PLUGINS = (
    'jax_cuda12_plugin',
    'jax_cuda13_plugin',
    'jax_rocm60_plugin',
    'jax_rocm7_plugin',
    'libtpu',
    'libtpu_nightly',
)


def cpu_only() -> bool:
  """Whether JAX will run on the CPU only, decided without starting JAX: from
  ``JAX_PLATFORMS`` (or ``jax.config.jax_platforms``) when set, else from whether a
  GPU/TPU plugin package is installed."""
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
  """Applies the malloc settings above; returns whether they are in effect.

  Does nothing (and logs why) on a C library other than glibc, or once JAX's backends
  exist.
  """
  libc = _glibc()
  if libc is None:
    logging.info('host_memory: not glibc; malloc settings left alone')
    return False
  if jax_backends_started():
    logging.warning(
        'host_memory: JAX has already started its backends; call '
        'keep_freed_memory() before the first JAX computation (malloc '
        'settings left alone)'
    )
    return False
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  ok = all(libc.mallopt(param, value) == 1 for param, value in _SETTINGS)
  if ok:
    logging.info(
        'host_memory: freed memory stays mapped (one malloc arena, no mmap, '
        'no trimming)'
    )
  else:
    logging.warning('host_memory: glibc rejected a malloc setting')
  return ok
