"""Test-wide settings, applied before JAX initialises its backend.

Tests compile many small programs and run them once: XLA's CPU backend optimisation
(LLVM) dominates their cost and changes no result a test checks, so it is turned down.
"""

import os

_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_backend_optimization_level' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' --xla_backend_optimization_level=0').strip()
