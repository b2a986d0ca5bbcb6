"""osgan_jax: one-stage GAN training in JAX (Shen et al., CVPR 2021), exact by default.

Public API:
  one_stage_grads, reference_grads  -- gradients of both players (osgan_jax.core.one_stage)
  losses                            -- GAN losses as functions of logits; registry
  steps                             -- jitted one-/two-stage train steps over one state
"""

from osgan_jax.core import losses
from osgan_jax.core import steps
from osgan_jax.core.one_stage import one_stage_grads, reference_grads, samples_independent

__all__ = ['losses', 'one_stage_grads', 'reference_grads', 'samples_independent', 'steps']
