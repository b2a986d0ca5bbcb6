"""GAN losses: registry, symmetry read off the coefficients, the paper's gamma table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax.core import losses

BUILT_IN = (
    'minimax',
    'non_saturating',
    'wgan',
    'lsgan',
    'hinge',
    'relativistic',
    'relativistic_average',
    'bgan',
)


def test_registry_has_the_built_in_losses():
  assert set(BUILT_IN) <= set(losses.names())
  for name in BUILT_IN:
    assert losses.get(name).name == name
    assert losses.get(losses.get(name)) is losses.get(name)


def test_unknown_loss_is_a_clear_error_listing_valid_names():
  with pytest.raises(ValueError, match=r"unknown loss 'nope'; valid names: .*hinge"):
    losses.get('nope')


@pytest.mark.parametrize('name', BUILT_IN)
def test_symmetry_is_read_from_the_coefficients(name):
  assert losses.is_symmetric(name) == (name in ('minimax', 'wgan'))


@pytest.mark.parametrize('shape', [(6,), (6, 3, 3)])
@pytest.mark.parametrize('name', BUILT_IN)
def test_losses_are_scalars_with_finite_logit_gradients(name, shape):
  rng = np.random.default_rng(0)
  r = jnp.asarray(rng.normal(scale=50, size=shape), jnp.float32)
  f = jnp.asarray(rng.normal(scale=50, size=shape), jnp.float32)
  loss = losses.get(name)
  assert loss.d_loss(r, f).shape == () and loss.g_loss(r, f).shape == ()
  for c in loss.coefficients(r, f):
    assert c.shape == shape
    assert bool(jnp.all(jnp.isfinite(c)))


def _gamma(name, logits):
  _, d_fake, g_fake = losses.get(name).coefficients(jnp.zeros_like(logits), logits)
  return g_fake / d_fake


def test_gamma_matches_the_paper_table():
  l = jnp.linspace(-3.0, 3.0, 7)
  s = jax.nn.sigmoid(l)
  np.testing.assert_allclose(_gamma('minimax', l), -np.ones(7), rtol=1e-6)
  np.testing.assert_allclose(_gamma('wgan', l), -np.ones(7), rtol=1e-6)
  np.testing.assert_allclose(_gamma('non_saturating', l), -np.exp(-l), rtol=1e-5)
  np.testing.assert_allclose(
      _gamma('lsgan', l[l != 0]), (l[l != 0] - 1) / l[l != 0], rtol=1e-5
  )
  np.testing.assert_allclose(_gamma('bgan', l), l / s, rtol=1e-5)
  above = l[l > -1]
  np.testing.assert_allclose(_gamma('hinge', above), -np.ones(above.shape), rtol=1e-6)


def test_hinge_coefficient_is_singular_below_minus_one():
  _, d_fake, g_fake = losses.get('hinge').coefficients(
      jnp.zeros(2), jnp.array([-2.0, 0.0])
  )
  assert float(d_fake[0]) == 0.0 and float(g_fake[0]) < 0.0


def test_user_registered_loss():
  loss = losses.register(
      'test_least_squares_pm1',
      d_loss=lambda r, f: jnp.mean((r - 1) ** 2) + jnp.mean((f + 1) ** 2),
      g_loss=lambda r, f: jnp.mean(f**2),
  )
  assert losses.get('test_least_squares_pm1') is loss
  assert not losses.is_symmetric(loss)
  with pytest.raises(ValueError, match='already registered'):
    losses.register('test_least_squares_pm1', loss.d_loss, loss.g_loss)
