"""The optimisers every task builds from plain values: Adam with the official lazy-
regularisation correction, ramps and milestones; SGD; NaN-safe gradients."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from osgan_jax.core.schedules import Value, map_value


def lazy_ratio(interval: Optional[int]) -> float:
  """The official ``mb_ratio = interval / (interval + 1)`` (1 for ``None``: no lazy
  regularisation): a lazily regularised player's Adam runs with ``lr * mb_ratio`` and
  ``beta ** mb_ratio``."""
  if interval is None:
    return 1.0
  if interval < 1:
    raise ValueError(f'interval must be >= 1 or None, got {interval}')
  return interval / (interval + 1)


def lazy_hparams(lr: float, betas: Sequence[float], interval: Optional[int]):
  """The official lazy-regularisation correction: ``(lr, betas)`` for ``interval``."""
  ratio = lazy_ratio(interval)
  if interval is None:
    return float(lr), tuple(float(b) for b in betas)
  return float(lr) * ratio, tuple(float(b) ** ratio for b in betas)


def with_milestones(
    lr: Value,
    milestones: Sequence[int] = (),
    decay: float = 0.1,
    updates_per_step: int = 1,
) -> Value:
  """``lr`` multiplied by ``decay`` at each milestone (in steps; PyTorch's MultiStepLR),
  on top of a ramp if ``lr`` is one."""
  milestones = sorted(int(m) for m in milestones)
  if not milestones:
    return lr
  scales = {m * updates_per_step: float(decay) for m in milestones}
  if callable(lr):
    steps_, ramp = optax.piecewise_constant_schedule(1.0, scales), lr
    return lambda count: steps_(count) * ramp(count)
  return optax.piecewise_constant_schedule(lr, scales)


def nan_to_num_grads(
    nan: float = 0.0, posinf: float = 1e5, neginf: float = -1e5
) -> optax.GradientTransformation:
  """The official StyleGAN2 loop's gradient sanitising before every step
  (``misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5)``); chain it first."""

  def update(updates, state, params=None):
    del params
    clean = lambda g: jnp.nan_to_num(g, nan=nan, posinf=posinf, neginf=neginf)
    return jax.tree.map(clean, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adam(
    lr: Value,
    *,
    b1: float,
    b2: Value,
    eps: float = 1e-8,
    lazy_interval: Optional[int] = None,
    milestones: Sequence[int] = (),
    decay: float = 0.1,
    nan_to_num: bool = False,
) -> optax.GradientTransformation:
  """Adam as the reference implementations run it (optax's is torch's); ``lr`` and ``b2``
  may be ramps, ``lazy_interval`` applies the official lazy-regularisation correction."""
  ratio = lazy_ratio(lazy_interval)
  lr = with_milestones(map_value(lambda v: v * ratio, lr), milestones, decay)
  b2 = map_value(lambda v: v**ratio, b2)
  # A ramped beta2 needs inject_hyperparams (optax.adam takes a float there); constant
  # ones keep the plain optimiser state of existing checkpoints.
  make = optax.inject_hyperparams(optax.adam) if callable(b2) else optax.adam
  opt = make(learning_rate=lr, b1=float(b1) ** ratio, b2=b2, eps=float(eps))
  return optax.chain(nan_to_num_grads(), opt) if nan_to_num else opt


def sgd(
    lr: Value, *, momentum: float = 0.0, weight_decay: float = 0.0
) -> optax.GradientTransformation:
  """SGD with momentum and PyTorch-style weight decay (added to the gradient)."""
  chain = [optax.add_decayed_weights(float(weight_decay))] if weight_decay else []
  chain.append(optax.sgd(lr, momentum=float(momentum) or None))
  return optax.chain(*chain)
