"""osgan_jax: one-stage GAN training in JAX (Shen et al., CVPR 2021), exact by default.

Public API: ``one_stage_grads``, ``reference_grads``, ``samples_independent`` (the
gradients of both players), ``losses`` (the loss registry), ``steps`` (the train steps
over one state). They load on first use, so that commands answer ``--help`` and flag
errors without importing JAX.
"""

import importlib

_API = {
    'losses': ('osgan_jax.core.losses', None),
    'steps': ('osgan_jax.core.steps', None),
    'one_stage_grads': ('osgan_jax.core.one_stage', 'one_stage_grads'),
    'reference_grads': ('osgan_jax.core.one_stage', 'reference_grads'),
    'samples_independent': ('osgan_jax.core.one_stage', 'samples_independent'),
}
__all__ = list(_API)


def __getattr__(name):
  if name not in _API:
    raise AttributeError(f'module osgan_jax has no attribute {name!r}')
  module, attribute = _API[name]
  value = importlib.import_module(module)
  return value if attribute is None else getattr(value, attribute)
