"""norms.GroupNorm equals flax.linen.GroupNorm: parameters, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax.models import norms

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize(
    'shape,groups',
    [((3, 5, 4, 16), 4), ((2, 4, 4, 64), 32), ((2, 6, 8), 2), ((2, 3, 3, 8), 8)],
)
@pytest.mark.long
def test_matches_flax(shape, groups):
  x = 1.5 + 2.0 * jax.random.normal(KEY, shape)  # non-zero mean: exercises the variance
  ref = nn.GroupNorm(num_groups=groups, epsilon=1e-5)
  ours = norms.GroupNorm(num_groups=groups, epsilon=1e-5)
  v_ref, v_ours = ref.init(KEY, x), ours.init(KEY, x)
  assert jax.tree.structure(v_ref) == jax.tree.structure(v_ours)
  for a, b in zip(jax.tree.leaves(v_ref), jax.tree.leaves(v_ours)):
    np.testing.assert_array_equal(a, b)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape), v_ref)
  np.testing.assert_allclose(
      ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=2e-5
  )
  ct = jnp.asarray(rng.standard_normal(shape), jnp.float32)

  def grads(module):
    return jax.grad(lambda p, x: jnp.vdot(module.apply(p, x), ct), argnums=(0, 1))(
        params, x
    )

  for a, b in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(ref))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_output_and_float32_statistics():
  x = (100.0 + jax.random.normal(KEY, (2, 4, 4, 8))).astype(jnp.bfloat16)
  ref = nn.GroupNorm(num_groups=4, dtype=jnp.bfloat16)
  ours = norms.GroupNorm(num_groups=4, dtype=jnp.bfloat16)
  v = ref.init(KEY, x)
  y = ours.apply(v, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(y, np.float32), np.asarray(ref.apply(v, x), np.float32), atol=0.02
  )


def test_bad_group_count():
  with pytest.raises(ValueError, match='do not split into 3 groups'):
    norms.GroupNorm(num_groups=3).init(KEY, jnp.ones((1, 2, 2, 8)))
