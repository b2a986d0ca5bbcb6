"""Jitted one- and two-stage train steps over the state pytree."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from osgan_jax.core import toy_networks
from osgan_jax.core import one_stage, steps

BATCH = 8


def _gan(kind='conv', loss='non_saturating', **kw):
  disc = toy_networks.make_discriminator(kind)
  has_aux = kind == 'batchnorm'

  def generate(params, model_state, z, rng):
    return {'image': toy_networks.generate(params, z)}, model_state

  def discriminate(params, model_state, batch, rng):
    out = disc(params, batch['image'])
    return (out[0], {'stats': out[1]}) if has_aux else (out, model_state)

  fields = dict(
      generate=generate,
      discriminate=discriminate,
      sample_latent=lambda rng, n: jax.random.normal(rng, (n, toy_networks.Z_DIM)),
      loss=loss,
      optimizer_g=optax.adam(1e-3, b1=0.5),
      optimizer_d=optax.adam(1e-3, b1=0.5),
  )
  fields.update(kw)
  gan = steps.GAN(**fields)
  kg, kd = jax.random.split(jax.random.PRNGKey(0))
  model_state_d = {'stats': {'mean': jnp.zeros(4), 'var': jnp.ones(4)}} if has_aux else {}
  state = steps.init_state(
      gan,
      toy_networks.init_generator(kg),
      toy_networks.init_discriminator(kind, kd),
      model_state_d=model_state_d,
  )
  return gan, state


def _batch(i):
  x = jnp.tanh(jax.random.normal(jax.random.PRNGKey(100 + i), (BATCH, 8, 8, 2)))
  return {'image': x, 'label': jnp.zeros((BATCH,), jnp.int32)}


@pytest.mark.parametrize('stage', ['one', 'two', 'official_two'])
@pytest.mark.parametrize('kind', ['conv', 'batchnorm'])
@pytest.mark.long
def test_step_traces_once_keeps_structure_and_is_finite(stage, kind):
  gan, state = _gan(kind)
  gan = steps.probe_per_sample(gan, state, _batch(0))
  assert gan.per_sample == (kind == 'conv')
  structure = jax.tree.structure(state)
  chex.clear_trace_counter()
  step_fn = chex.assert_max_traces(steps.STEPS[stage], n=1)
  jitted = jax.jit(lambda s, b, r: step_fn(gan, s, b, r), donate_argnums=0)
  for i in range(4):
    state, metrics = jitted(
        state, _batch(i), jax.random.fold_in(jax.random.PRNGKey(1), i)
    )
    assert jax.tree.structure(state) == structure
    for v in jax.tree.leaves((state, metrics)):
      assert bool(jnp.all(jnp.isfinite(v)))
  assert int(state.step) == 4
  assert {'loss_d', 'loss_g'} <= set(metrics)
  if stage == 'one':
    assert {'gamma_mean', 'gamma_min', 'gamma_max', 'n_exact'} <= set(metrics)
  if stage == 'official_two':
    assert float(metrics['wasted_d_grad_norm']) > 0
  if kind == 'batchnorm':
    assert not np.allclose(state.model_state_d['stats']['var'], 1.0)


@pytest.mark.long
def test_one_stage_step_applies_the_reference_gradients():
  gan, state = _gan('mbstd', loss='hinge')
  batch, rng = _batch(0), jax.random.PRNGKey(3)
  new_state, _ = jax.jit(lambda s, b, r: steps.one_stage_step(gan, s, b, r))(
      state, batch, rng
  )
  rng_z, rng_g, rng_d = jax.random.split(rng, 3)
  z = gan.sample_latent(rng_z, BATCH)
  ref_g, ref_d, _ = one_stage.reference_grads(
      lambda p, z: gan.generate(p, {}, z, rng_g)[0]['image'],
      lambda p, x: gan.discriminate(p, {}, {'image': x}, rng_d)[0],
      state.params_g,
      state.params_d,
      z,
      batch['image'],
      gan.loss,
  )
  for grads, opt, params, new in (
      (ref_g, gan.optimizer_g, state.params_g, new_state.params_g),
      (ref_d, gan.optimizer_d, state.params_d, new_state.params_d),
  ):
    updates, _ = opt.update(grads, opt.init(params), params)
    chex.assert_trees_all_close(
        optax.apply_updates(params, updates), new, rtol=1e-5, atol=1e-6
    )


def test_official_two_stage_changes_cost_not_results():
  gan, state = _gan('conv')
  batch, rng = _batch(0), jax.random.PRNGKey(4)
  honest, _ = jax.jit(lambda s: steps.two_stage_step(gan, s, batch, rng))(state)
  official, metrics = jax.jit(
      lambda s: steps.official_two_stage_step(gan, s, batch, rng)
  )(state)
  chex.assert_trees_all_close(honest, official, rtol=1e-6, atol=1e-7)
  assert float(metrics['wasted_d_grad_norm']) > 0


def test_two_stage_updates_g_against_the_updated_discriminator():
  gan, state = _gan(
      'mlp', loss='wgan', optimizer_g=optax.sgd(0.1), optimizer_d=optax.sgd(0.1)
  )
  batch, rng = _batch(0), jax.random.PRNGKey(5)
  new_state, _ = jax.jit(lambda s: steps.two_stage_step(gan, s, batch, rng))(state)
  _, _, rng_g1, rng_g2, _, _ = jax.random.split(rng, 6)
  z2 = gan.sample_latent(jax.random.split(rng, 6)[1], BATCH)
  disc = toy_networks.make_discriminator('mlp')
  grads_g = jax.grad(
      lambda p: -jnp.mean(disc(new_state.params_d, toy_networks.generate(p, z2)))
  )(state.params_g)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params_g, grads_g)
  chex.assert_trees_all_close(new_state.params_g, expected, rtol=1e-5, atol=1e-6)


def test_clip_params_keeps_weights_in_range():
  opt = optax.chain(optax.sgd(10.0), steps.clip_params(0.01))
  params = {'w': jnp.array([0.0, 0.005, -0.3])}
  updates, _ = opt.update({'w': jnp.array([1.0, -1.0, 0.0])}, opt.init(params), params)
  clipped = optax.apply_updates(params, updates)['w']
  # Exact up to the rounding of p + (clip(p + u) - p), one float32 ulp.
  np.testing.assert_allclose(clipped, [-0.01, 0.01, -0.01], rtol=0, atol=1e-8)
  assert float(jnp.max(jnp.abs(clipped))) <= 0.01 + 1e-8


def test_unknown_stage_is_rejected():
  gan, _ = _gan()
  with pytest.raises(ValueError, match="unknown stage 'three'"):
    steps.jit_step(gan, 'three')
