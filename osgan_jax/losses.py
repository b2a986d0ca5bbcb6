"""GAN losses as pure functions of discriminator logits, and their registry.

A loss is two functions of ``(real_logits, fake_logits)``: the discriminator's loss
``d_loss`` and the generator's loss ``g_loss``, each returning a scalar (the mean over
samples and, for patch discriminators with ``[B, H, W]`` logits, over positions).

The one-stage engine needs nothing else: the per-sample decomposition coefficients
(gamma) come from differentiating these functions with respect to the logits, which are
tiny tensors. So registering a new loss is two functions::

    osgan_jax.losses.register(
        'my_loss',
        d_loss=lambda r, f: jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f)),
        g_loss=lambda r, f: jnp.mean(jax.nn.softplus(-f)))

All built-in losses are written in numerically stable forms (softplus, not log of a
sigmoid), so their logit gradients are finite for any finite logits.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Loss:
  """A GAN objective: D minimises ``d_loss``, G minimises ``g_loss``."""

  name: str
  d_loss: LossFn
  g_loss: LossFn
  description: str = ''

  def coefficients(self, real_logits, fake_logits):
    """Gradients at the logits: (dL_D/d real, dL_D/d fake, dL_G/d fake)."""
    d_real, d_fake = jax.grad(self.d_loss, argnums=(0, 1))(real_logits, fake_logits)
    g_fake = jax.grad(self.g_loss, argnums=1)(real_logits, fake_logits)
    return d_real, d_fake, g_fake


_REGISTRY: dict[str, Loss] = {}


def register(name: str, d_loss: LossFn, g_loss: LossFn, description: str = '',
             overwrite: bool = False) -> Loss:
  """Adds a loss to the registry, so configs and tools can name it."""
  if name in _REGISTRY and not overwrite:
    raise ValueError(f'loss {name!r} is already registered; pass overwrite=True')
  loss = Loss(name, d_loss, g_loss, description)
  _REGISTRY[name] = loss
  return loss


def get(name_or_loss: str | Loss) -> Loss:
  """Looks a loss up by name (a ``Loss`` passes through)."""
  if isinstance(name_or_loss, Loss):
    return name_or_loss
  try:
    return _REGISTRY[name_or_loss]
  except KeyError:
    raise ValueError(f'unknown loss {name_or_loss!r}; valid names: '
                     f'{", ".join(names())}') from None


def names() -> list[str]:
  return sorted(_REGISTRY)


def is_symmetric(loss: str | Loss, num_probes: int = 64, seed: int = 0) -> bool:
  """True when dL_G/d fake = -dL_D/d fake (gamma = -1) at random probe logits.

  This is the property the paper calls symmetric; it is read off the coefficients,
  not declared, so a user-registered loss is classified the same way.
  """
  loss = get(loss)
  rng = np.random.default_rng(seed)
  real = jnp.asarray(rng.normal(scale=3.0, size=num_probes), jnp.float32)
  fake = jnp.asarray(rng.normal(scale=3.0, size=num_probes), jnp.float32)
  _, d_fake, g_fake = loss.coefficients(real, fake)
  return bool(jnp.all(jnp.abs(d_fake) > 0)) and bool(
      jnp.allclose(g_fake, -d_fake, rtol=1e-6, atol=0.0))


_softplus = jax.nn.softplus
_mean = jnp.mean

# Minimax GAN (Goodfellow et al.): D maximises log D(x) + log(1 - D(G(z))), G
# minimises log(1 - D(G(z))). Symmetric: gamma = -1.
register('minimax',
         d_loss=lambda r, f: _mean(_softplus(-r)) + _mean(_softplus(f)),
         g_loss=lambda r, f: -_mean(_softplus(f)),
         description='saturating minimax GAN (symmetric)')

# Non-saturating GAN: G maximises log D(G(z)). gamma = -exp(-l).
register('non_saturating',
         d_loss=lambda r, f: _mean(_softplus(-r)) + _mean(_softplus(f)),
         g_loss=lambda r, f: _mean(_softplus(-f)),
         description='non-saturating GAN (asymmetric)')

# WGAN critic loss. Symmetric. (Weight clipping or a penalty is the optimiser's job.)
register('wgan',
         d_loss=lambda r, f: _mean(f) - _mean(r),
         g_loss=lambda r, f: -_mean(f),
         description='Wasserstein GAN (symmetric)')

# LSGAN with targets a=0 (fake), b=1 (real), c=1 (G's target). gamma = (D - 1) / D,
# singular at D(fake) = 0.
register('lsgan',
         d_loss=lambda r, f: _mean(jnp.square(r - 1.0)) + _mean(jnp.square(f)),
         g_loss=lambda r, f: _mean(jnp.square(f - 1.0)),
         description='least-squares GAN, targets 0/1 (asymmetric)')

# Hinge loss (GeoGAN, SNGAN). dL_D/d fake = 0 once f < -1 while dL_G/d fake = -1:
# the coefficient is undefined there, where the official code produces -inf.
register('hinge',
         d_loss=lambda r, f: _mean(jax.nn.relu(1.0 - r)) + _mean(jax.nn.relu(1.0 + f)),
         g_loss=lambda r, f: -_mean(f),
         description='hinge loss (asymmetric, singular for fake logits < -1)')

# Relativistic standard GAN (RSGAN): pairs real sample i with fake sample i.
register('relativistic',
         d_loss=lambda r, f: _mean(_softplus(-(r - f))),
         g_loss=lambda r, f: _mean(_softplus(-(f - r))),
         description='relativistic standard GAN, paired (asymmetric)')


def _rasgan_d(r, f):
  return _mean(_softplus(-(r - _mean(f)))) + _mean(_softplus(f - _mean(r)))


def _rasgan_g(r, f):
  return _mean(_softplus(-(f - _mean(r)))) + _mean(_softplus(r - _mean(f)))


# Relativistic average GAN (RaSGAN): each logit is compared with the other side's mean.
register('relativistic_average', d_loss=_rasgan_d, g_loss=_rasgan_g,
         description='relativistic average standard GAN (asymmetric)')

# Data-free adversarial distillation (DFAD, Fang et al. 2019): the "logits" are a
# per-sample teacher-student discrepancy on generated inputs; the student (D) minimises
# it and the generator maximises it. There is no real term (no real data). Symmetric.
register('dfad',
         d_loss=lambda r, f: _mean(f),
         g_loss=lambda r, f: -_mean(f),
         description='data-free distillation: discrepancy on fakes only (symmetric)')

# Boundary-seeking GAN: G minimises 0.5 (log D - log(1 - D))^2 = 0.5 l^2.
register('bgan',
         d_loss=lambda r, f: _mean(_softplus(-r)) + _mean(_softplus(f)),
         g_loss=lambda r, f: 0.5 * _mean(jnp.square(f)),
         description='boundary-seeking GAN (asymmetric)')
