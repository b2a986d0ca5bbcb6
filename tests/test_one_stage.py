"""one_stage_grads against reference_grads, and reference_grads against finite differences.

Every registered loss x every discriminator kind, with normal logits and in the regimes
where the paper's decomposition breaks (the official code's crashes and silent errors).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax.core import exactness, precision, toy_networks
from osgan_jax.core import losses, one_stage, strategies

LOSSES = (
    'minimax',
    'non_saturating',
    'wgan',
    'lsgan',
    'hinge',
    'relativistic',
    'relativistic_average',
    'bgan',
)
KINDS = toy_networks.DISC_KINDS
TOL = 1e-5


def _both(prob, **options):
  """One jit computing one-stage and reference gradients at the same point."""
  fixed = {k: v for k, v in prob.items() if k not in ('params_g', 'params_d')}

  @jax.jit
  def run(params_g, params_d):
    ours = one_stage.one_stage_grads(
        params_g=params_g, params_d=params_d, **fixed, **options
    )
    ref = one_stage.reference_grads(params_g=params_g, params_d=params_d, **fixed)
    return ours, ref

  with precision.full_precision():  # GPUs' TF32 / TPUs' bfloat16 would round them apart
    return run(prob['params_g'], prob['params_d'])


def _assert_exact(ours, ref, tol=TOL):
  grads_g, grads_d, aux = ours
  ref_g, ref_d, ref_aux = ref
  for tree in (grads_g, grads_d):
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))
  assert exactness.rel_err(grads_g, ref_g) <= tol
  assert exactness.rel_err(grads_d, ref_d) <= tol
  np.testing.assert_allclose(aux['loss_d'], ref_aux['loss_d'], rtol=1e-5)
  np.testing.assert_allclose(aux['loss_g'], ref_aux['loss_g'], rtol=1e-5, atol=1e-6)
  return aux


def _both_losses(kind, regime, names, seed, **options):
  """``_both`` for several losses in one jit (they share G, D and the point)."""
  prob = toy_networks.problem(names[0], kind, seed=seed, logits=regime)
  fixed = {k: v for k, v in prob.items() if k not in ('params_g', 'params_d', 'loss')}

  @jax.jit
  def run(params_g, params_d):
    return {
        name: (
            one_stage.one_stage_grads(
                params_g=params_g, params_d=params_d, loss=name, **fixed, **options
            ),
            one_stage.reference_grads(
                params_g=params_g, params_d=params_d, loss=name, **fixed
            ),
        )
        for name in names
    }

  with precision.full_precision():
    return run(prob['params_g'], prob['params_d'])


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.long
def test_exact_for_every_loss_and_discriminator(kind):
  for loss, (ours, ref) in _both_losses(kind, 'normal', LOSSES, seed=1).items():
    aux = _assert_exact(ours, ref)
    if losses.is_symmetric(loss):
      assert int(aux['n_exact']) == 0  # symmetric: one backward, gamma = -1 everywhere
      assert float(aux['gamma_min']) == -1.0 and float(aux['gamma_max']) == -1.0


# The official code's failure cases: singular or underflowing coefficients (hinge fake
# logits below -1, non-saturating sigmoid underflow at +-100 and +-1e4, LSGAN at 0).
EXTREME = (
    [(kind, 'extreme', LOSSES) for kind in KINDS]
    + [(kind, 'huge', ('non_saturating', 'hinge', 'lsgan')) for kind in KINDS]
    + [(kind, 'zero', ('lsgan',)) for kind in ('mlp', 'conv', 'patch')]
)


@pytest.mark.parametrize('kind,regime,names', EXTREME)
@pytest.mark.long
def test_exact_and_finite_where_the_decomposition_breaks(kind, regime, names):
  for ours, ref in _both_losses(kind, regime, names, seed=2).values():
    _assert_exact(ours, ref)


def test_singular_samples_take_the_exact_path():
  # hinge: fake logits below -1 have dL_D/dl = 0 but dL_G/dl = -1.
  prob = toy_networks.problem('hinge', 'mlp', seed=2, logits='extreme')
  (_, _, aux), _ = _both(prob)
  x_fake = toy_networks.generate(prob['params_g'], prob['z'])
  fake_logits = prob['discriminate'](prob['params_d'], x_fake)
  assert int(aux['n_exact']) == int(jnp.sum(fake_logits < -1)) > 0
  # LSGAN at D(fake) = 0 exactly.
  prob = toy_networks.problem('lsgan', 'conv', seed=0, logits='zero')
  x_fake = toy_networks.generate(prob['params_g'], prob['z'])
  assert float(prob['discriminate'](prob['params_d'], x_fake)[0]) == 0.0
  (_, _, aux), _ = _both(prob)
  assert int(aux['n_exact']) == 1


def _marked_problem(kind):
  """hinge with a per-sample D whose fake logit drops by ~20 (singular) exactly for
  the samples marked in z (``_mark``): G writes z[:, 0] to a pixel, D reads it back."""
  prob = toy_networks.problem('hinge', kind, seed=3)
  base_g, base_d = prob['generate'], prob['discriminate']

  def generate(params, z):
    return base_g(params, z).at[:, 0, 0, 0].set(z[:, 0])

  def discriminate(params, x):
    drop = 20.0 * jax.nn.sigmoid(10.0 * (x[:, 0, 0, 0] - 2.0))
    logits = base_d(params, x)
    return logits - drop.reshape(drop.shape + (1,) * (logits.ndim - 1))

  prob.update(generate=generate, discriminate=discriminate)
  return prob


def _mark(z, marked):
  return z.at[:, 0].set(jnp.zeros(z.shape[0]).at[jnp.asarray(marked, jnp.int32)].set(5.0))


def _both_at(prob, **options):
  """``_both`` as a function of z, compiled once for every z of the problem's shape."""
  fixed = {k: v for k, v in prob.items() if k not in ('params_g', 'params_d', 'z')}

  @jax.jit
  def run(params_g, params_d, z):
    args = dict(params_g=params_g, params_d=params_d, z=z, **fixed)
    return one_stage.one_stage_grads(**args, **options), one_stage.reference_grads(**args)

  def at(z):
    with precision.full_precision():
      return run(prob['params_g'], prob['params_d'], z)

  return at


# Batch 8, a ladder of buckets of 1, 2 and 4 fakes: the singular ones (marked) and the
# branch that re-ran D on them (0 none, 1-3 a rung, 4 the whole batch) and its size.
LADDER_CASES = (
    ([], 0, 0),
    ([5], 1, 1),
    ([1, 6], 2, 2),
    ([0, 3, 7], 3, 4),
    ([0, 2, 4, 6, 7], 4, 8),
    (list(range(8)), 4, 8),
)


@pytest.mark.parametrize('kind', ['conv', 'patch'])
@pytest.mark.long
def test_singular_fakes_rerun_d_in_the_smallest_bucket_that_holds_them(kind):
  """None, some (each rung), more than the largest rung and all fakes singular: each is
  exact, and D re-runs on the smallest rung that holds them, else on the whole batch."""
  prob = _marked_problem(kind)
  at = _both_at(prob, exact_bucket=(1, 2, 4))
  for marked, path, rerun in LADDER_CASES:
    ours, ref = at(_mark(prob['z'], marked))
    aux = _assert_exact(ours, ref)
    assert int(aux['n_exact']) == len(marked)
    assert (int(aux['exact_path']), int(aux['exact_rerun'])) == (path, rerun), marked
  # One bucket (a number, as before the ladder) and none: the same gradients.
  z = _mark(prob['z'], [1, 6])
  for bucket, path, rerun in ((0.25, 1, 2), (0, 1, 8)):
    ours = _both_at(prob, exact_bucket=bucket)(z)[0]
    _assert_exact(ours, at(z)[1])
    assert (int(ours[2]['exact_path']), int(ours[2]['exact_rerun'])) == (path, rerun)


def test_bucket_ladder_sizes_and_bad_ladders():
  ladder = strategies.bucket_ladder
  assert strategies.DEFAULT_BUCKETS == (0.125, 0.25, 0.5)
  assert ladder(strategies.DEFAULT_BUCKETS, 64) == (8, 16, 32)
  assert ladder(0.25, 64) == ladder((0.25,), 64) == ladder([16], 64) == (16,)
  assert ladder((0.125, 0.25, 0.5), 4) == (1, 2)  # same count once; whole batch dropped
  assert ladder((0.1, 1.0), 10) == (1,) and ladder(1.0, 10) == ()
  assert ladder(0, 64) == ladder(None, 64) == ladder((), 64) == ()
  for bad in ((0.5, 0.25), (0.25, 0.25), (0, 0.5), -0.25):
    with pytest.raises(ValueError, match='exact_bucket must be positive and ascending'):
      ladder(bad, 64)


@pytest.mark.parametrize('kind', ['mlp', 'conv', 'patch'])
@pytest.mark.long
def test_approx_mode_is_exact_where_theory_says(kind):
  # Symmetric losses with a per-sample D: gamma = -1, the paper's trick is exact.
  _assert_exact(*_both(toy_networks.problem('minimax', kind, seed=3), mode='approx'))
  if kind != 'patch':  # scalar logits: any loss, as long as gamma is defined
    _assert_exact(
        *_both(toy_networks.problem('non_saturating', kind, seed=3), mode='approx')
    )


@pytest.mark.parametrize('kind', ['batchnorm', 'mbstd'])
@pytest.mark.long
def test_approx_mode_is_wrong_for_coupled_discriminators_and_says_so(kind):
  prob = toy_networks.problem('non_saturating', kind, seed=3)
  (grads_g, _, aux), (ref_g, ref_d, _) = _both(prob, mode='approx', measure_error=True)
  err = exactness.rel_err(grads_g, ref_g)
  assert err > 1e-3
  assert int(aux['n_exact']) == prob['z'].shape[0]
  assert float(aux['approx_rel_err']) > 1e-3
  # ...while the exact default is exact on the same problem.
  _assert_exact(*_both(prob))


def test_approx_mode_is_wrong_for_asymmetric_patch_losses_and_finite_when_singular():
  prob = toy_networks.problem('non_saturating', 'patch', seed=3)
  (grads_g, _, aux), (ref_g, _, _) = _both(prob, mode='approx', measure_error=True)
  assert exactness.rel_err(grads_g, ref_g) > 1e-3
  assert float(aux['approx_rel_err']) > 1e-3
  prob = toy_networks.problem('hinge', 'mlp', seed=2, logits='extreme')
  (grads_g, _, aux), _ = _both(prob, mode='approx', measure_error=True)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grads_g))
  assert int(aux['n_exact']) > 0 and float(aux['approx_rel_err']) > 1e-3


# The reference is two jax.grad calls, the same code for every D; mlp and mbstd run the
# networks' paths of conv (per-sample) and batchnorm (coupled), so they are slow-tier.
@pytest.mark.parametrize(
    'kind',
    [
        pytest.param(k, marks=pytest.mark.slow) if k in ('mlp', 'mbstd') else k
        for k in KINDS
    ],
)
@pytest.mark.long
def test_reference_grads_match_finite_differences(kind):
  with jax.enable_x64(True):
    for loss in ('non_saturating', 'hinge') if kind != 'mlp' else LOSSES:
      prob = toy_networks.problem(loss, kind, seed=4)
      assert exactness.finite_difference_error(prob) <= exactness.FD_TOLERANCE


@pytest.mark.long
def test_float64_exactness():
  with jax.enable_x64(True):
    prob = toy_networks.problem('non_saturating', 'patch', seed=5, dtype=jnp.float64)
    _assert_exact(*_both(prob), tol=1e-12)


# slow: test_coupling.py checks the probe against every architecture's declaration (8 s).
@pytest.mark.slow
def test_probe_tells_coupled_discriminators_apart():
  for kind in KINDS:
    prob = toy_networks.problem('minimax', kind)
    expected = kind not in ('batchnorm', 'mbstd')
    assert (
        one_stage.samples_independent(
            prob['discriminate'],
            prob['params_d'],
            prob['x_real'],
            has_aux=prob['d_has_aux'],
        )
        == expected
    )
    # Under jit the probe runs on stand-ins of the traced values.
    traced = jax.jit(
        lambda p, x, d=prob['discriminate'], a=prob['d_has_aux']: jnp.asarray(
            one_stage.samples_independent(d, p, x, has_aux=a)
        )
    )
    assert bool(traced(prob['params_d'], prob['x_real'])) == expected


def test_explicit_per_sample_false_is_exact_for_independent_discriminators():
  prob = toy_networks.problem('lsgan', 'conv', seed=6)
  _assert_exact(*_both(prob, per_sample=False))


def test_discriminator_aux_is_returned():
  prob = toy_networks.problem('non_saturating', 'batchnorm', seed=0)
  (_, _, aux), _ = _both(prob)
  x_fake = toy_networks.generate(prob['params_g'], prob['z'])
  _, stats = prob['discriminate'](prob['params_d'], x_fake)
  np.testing.assert_allclose(aux['d_aux']['mean'], stats['mean'], rtol=1e-5, atol=1e-6)


def test_conditional_pytree_inputs_with_integer_labels():
  """Images may be pytrees (CGAN: image and label); integer leaves get no gradient."""
  base = toy_networks.problem('non_saturating', 'conv', seed=7)
  labels_real = jnp.arange(8) % 3
  labels_fake = (jnp.arange(8) + 1) % 3
  embed = jax.random.normal(jax.random.PRNGKey(1), (3, 8 * 8 * 2)) * 0.1

  def generate(params, z):
    return {'image': toy_networks.generate(params, z['z']), 'label': z['label']}

  def discriminate(params, batch):
    shift = embed[batch['label']].reshape(batch['image'].shape)
    return base['discriminate'](params, batch['image'] + shift)

  prob = dict(
      base,
      generate=generate,
      discriminate=discriminate,
      z={'z': base['z'], 'label': labels_fake},
      x_real={'image': base['x_real'], 'label': labels_real},
  )
  _assert_exact(*_both(prob))


def test_user_registered_loss_needs_no_engine_change():
  name = 'test_softplus_wgan_mix'
  if name not in losses.names():
    losses.register(
        name,
        d_loss=lambda r, f: jnp.mean(jax.nn.softplus(-r)) + jnp.mean(f**2),
        g_loss=lambda r, f: -jnp.mean(jnp.tanh(f)),
    )
  for kind in ('conv', 'mbstd'):
    _assert_exact(*_both(toy_networks.problem(name, kind, seed=8)))


def test_bad_mode_is_rejected():
  prob = toy_networks.problem('wgan', 'mlp')
  with pytest.raises(ValueError, match='mode must be one of'):
    one_stage.one_stage_grads(**prob, mode='fast')
