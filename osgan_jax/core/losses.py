"""GAN losses as pure functions of discriminator logits, and their registry.

A loss is ``d_loss`` and ``g_loss`` of ``(real_logits, fake_logits)``; the one-stage
engine reads everything else off their logit gradients, so a new loss is two functions.
The built-in losses, registration and stateful losses: ``docs/api.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Loss:
  """A GAN objective: D minimises ``d_loss``, G minimises ``g_loss``. A stateful loss
  (``init_state``, ``update_state``) takes its state as a third argument (docs/api.md).
  """

  name: str
  d_loss: Callable
  g_loss: Callable
  description: str = ''
  init_state: Callable | None = None
  update_state: Callable | None = None

  @property
  def stateful(self) -> bool:
    return self.init_state is not None

  def d(self, real_logits, fake_logits, state=None):
    """``d_loss``, with the state for a stateful loss."""
    extra = (self._state(state),) if self.stateful else ()
    return self.d_loss(real_logits, fake_logits, *extra)

  def g(self, real_logits, fake_logits, state=None):
    extra = (self._state(state),) if self.stateful else ()
    return self.g_loss(real_logits, fake_logits, *extra)

  def _state(self, state):
    return self.init_state() if state is None else state

  def updated(self, state, real_logits, fake_logits):
    """The state after one step on these logits (``None`` for a stateless loss)."""
    if not self.stateful:
      return None
    return self.update_state(self._state(state), real_logits, fake_logits)

  def coefficients(self, real_logits, fake_logits, state=None):
    """Gradients at the logits: (dL_D/d real, dL_D/d fake, dL_G/d fake)."""
    d_real, d_fake = jax.grad(self.d, argnums=(0, 1))(real_logits, fake_logits, state)
    g_fake = jax.grad(self.g, argnums=1)(real_logits, fake_logits, state)
    return d_real, d_fake, g_fake


_REGISTRY: dict[str, Loss] = {}


def register(
    name: str,
    d_loss: Callable,
    g_loss: Callable,
    description: str = '',
    overwrite: bool = False,
    init_state: Callable | None = None,
    update_state: Callable | None = None,
) -> Loss:
  """Adds a loss to the registry, so configs and tools can name it (see ``Loss`` for
  ``init_state``/``update_state``)."""
  if name in _REGISTRY and not overwrite:
    raise ValueError(f'loss {name!r} is already registered; pass overwrite=True')
  if (init_state is None) != (update_state is None):
    raise ValueError('a stateful loss needs both init_state and update_state')
  loss = Loss(name, d_loss, g_loss, description, init_state, update_state)
  _REGISTRY[name] = loss
  return loss


def get(name_or_loss: str | Loss) -> Loss:
  """Looks a loss up by name (a ``Loss`` passes through)."""
  if isinstance(name_or_loss, Loss):
    return name_or_loss
  try:
    return _REGISTRY[name_or_loss]
  except KeyError:
    raise ValueError(
        f'unknown loss {name_or_loss!r}; valid names: {", ".join(names())}'
    ) from None


def names() -> list[str]:
  return sorted(_REGISTRY)


def is_symmetric(loss: str | Loss, num_probes: int = 64, seed: int = 0) -> bool:
  """True when dL_G/d fake = -dL_D/d fake (gamma = -1, the paper's symmetric) at random
  probe logits: read off the coefficients, so user-registered losses are classified."""
  loss = get(loss)
  rng = np.random.default_rng(seed)
  real = jnp.asarray(rng.normal(scale=3.0, size=num_probes), jnp.float32)
  fake = jnp.asarray(rng.normal(scale=3.0, size=num_probes), jnp.float32)
  _, d_fake, g_fake = loss.coefficients(real, fake)  # a stateful loss: initial state
  return bool(jnp.all(jnp.abs(d_fake) > 0)) and bool(
      jnp.allclose(g_fake, -d_fake, rtol=1e-6, atol=0.0)
  )


_softplus = jax.nn.softplus
_mean = jnp.mean

# Goodfellow et al.: G minimises log(1 - D(G(z))). gamma = -1.
register(
    'minimax',
    d_loss=lambda r, f: _mean(_softplus(-r)) + _mean(_softplus(f)),
    g_loss=lambda r, f: -_mean(_softplus(f)),
    description='saturating minimax GAN (symmetric)',
)

# Non-saturating GAN: G maximises log D(G(z)). gamma = -exp(-l).
register(
    'non_saturating',
    d_loss=lambda r, f: _mean(_softplus(-r)) + _mean(_softplus(f)),
    g_loss=lambda r, f: _mean(_softplus(-f)),
    description='non-saturating GAN (asymmetric)',
)

# WGAN critic loss. Symmetric. (Weight clipping or a penalty is the optimiser's job.)
register(
    'wgan',
    d_loss=lambda r, f: _mean(f) - _mean(r),
    g_loss=lambda r, f: -_mean(f),
    description='Wasserstein GAN (symmetric)',
)

# LSGAN, targets 0 (fake), 1 (real), 1 (G). gamma = (D - 1) / D, singular at D = 0.
register(
    'lsgan',
    d_loss=lambda r, f: _mean(jnp.square(r - 1.0)) + _mean(jnp.square(f)),
    g_loss=lambda r, f: _mean(jnp.square(f - 1.0)),
    description='least-squares GAN, targets 0/1 (asymmetric)',
)

# GeoGAN, SNGAN. gamma is undefined once f < -1 (the official code gets -inf).
register(
    'hinge',
    d_loss=lambda r, f: _mean(jax.nn.relu(1.0 - r)) + _mean(jax.nn.relu(1.0 + f)),
    g_loss=lambda r, f: -_mean(f),
    description='hinge loss (asymmetric, singular for fake logits < -1)',
)

# Relativistic standard GAN (RSGAN): pairs real sample i with fake sample i.
register(
    'relativistic',
    d_loss=lambda r, f: _mean(_softplus(-(r - f))),
    g_loss=lambda r, f: _mean(_softplus(-(f - r))),
    description='relativistic standard GAN, paired (asymmetric)',
)


def _rasgan_d(r, f):
  return _mean(_softplus(-(r - _mean(f)))) + _mean(_softplus(f - _mean(r)))


def _rasgan_g(r, f):
  return _mean(_softplus(-(f - _mean(r)))) + _mean(_softplus(r - _mean(f)))


# Relativistic average GAN (RaSGAN): each logit is compared with the other side's mean.
register(
    'relativistic_average',
    d_loss=_rasgan_d,
    g_loss=_rasgan_g,
    description='relativistic average standard GAN (asymmetric)',
)

# DFAD (Fang et al. 2019): the "logits" are a teacher-student discrepancy (docs/dfad.md).
register(
    'dfad',
    d_loss=lambda r, f: _mean(f),
    g_loss=lambda r, f: -_mean(f),
    description='data-free distillation: discrepancy on fakes only (symmetric)',
)

# Boundary-seeking GAN: G minimises 0.5 (log D - log(1 - D))^2 = 0.5 l^2.
register(
    'bgan',
    d_loss=lambda r, f: _mean(_softplus(-r)) + _mean(_softplus(f)),
    g_loss=lambda r, f: 0.5 * _mean(jnp.square(f)),
    description='boundary-seeking GAN (asymmetric)',
)


def fisher(rho: float = 1e-6) -> dict:
  """Fisher GAN (Mroueh & Sercu 2017) as ``register``'s keyword arguments; the state is
  ``{'lam': scalar}``, from 0 (the objective: docs/api.md)."""

  def omega(r, f):
    return 0.5 * (_mean(jnp.square(r)) + _mean(jnp.square(f)))

  def d_loss(r, f, state):
    c = 1.0 - omega(r, f)
    return -(_mean(r) - _mean(f) + state['lam'] * c - 0.5 * rho * jnp.square(c))

  def update(state, r, f):
    return {'lam': state['lam'] - rho * (1.0 - omega(r, f))}

  return dict(
      d_loss=d_loss,
      g_loss=lambda r, f, state: -_mean(f),
      init_state=lambda: {'lam': jnp.zeros((), jnp.float32)},
      update_state=update,
  )


# Fisher GAN with the penalty weight of its paper's experiments (rho = 1e-6).
register(
    'fisher',
    **fisher(1e-6),
    description='Fisher GAN: constrained critic, Lagrange multiplier as loss state '
    '(asymmetric)',
)
