"""Gradient penalties (R1, R2, WGAN-GP) and stateful losses (Fisher GAN) in one and two
stages: exact against the naive reference, finite differences, D-only, trained and
resumed through the loop (issue 18, parts 1, 2 and 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax import train
from osgan_jax.core import exactness, toy_networks
from osgan_jax.core import losses, one_stage, penalties
from helpers import (  # pylint: disable=import-error
    needs_fashion_mnist,
    rounding_atol,
    tiny_fashion_mnist_config,
)


# mlp and mbstd take the same paths as conv (per-sample D) and batchnorm (coupled D):
# slow, run with -m slow.
@pytest.mark.parametrize(
    'disc',
    [
        pytest.param(d, marks=pytest.mark.slow) if d in ('mlp', 'mbstd') else d
        for d in toy_networks.DISC_KINDS
    ],
)
@pytest.mark.parametrize(
    'loss,penalty', [('relativistic', 'r1r2'), ('wgan', 'gp'), ('fisher', 'none')]
)
@pytest.mark.long
def test_exact_against_the_reference_and_finite_differences(loss, penalty, disc):
  with jax.enable_x64(True):  # the finite differences run in float64, as the CLI's
    report = exactness.check(loss, disc, penalty=penalty, default_precision=False)
  assert report['ok'], report  # one-stage vs reference <= 1e-5, reference vs FD (f64)
  assert report['penalty'] == penalty


def test_penalty_values_for_a_linear_discriminator():
  """D(x) = <w, x>: every input gradient is w, so R1 = R2 = |w|^2 and gp = (|w| - 1)^2."""
  w = jnp.arange(6.0).reshape(2, 3) / 10
  disc = lambda p, x: jnp.sum(x * p, axis=(1, 2))
  x_real, x_fake = jnp.ones((4, 2, 3)), -jnp.ones((4, 2, 3))
  total, m = penalties.loss(
      disc, w, x_real, x_fake, {'r1': 2.0, 'r2': 4.0, 'gp': 3.0}, jax.random.PRNGKey(0)
  )
  sq = float(jnp.sum(w * w))
  np.testing.assert_allclose(
      [m['r1_penalty'], m['r2_penalty'], m['gp_penalty']],
      [sq, sq, (np.sqrt(sq) - 1) ** 2],
      rtol=1e-6,
  )
  np.testing.assert_allclose(total, sq + 2 * sq + 3 * (np.sqrt(sq) - 1) ** 2, rtol=1e-6)
  with pytest.raises(ValueError, match='unknown penalties'):
    penalties.loss(disc, w, x_real, x_fake, {'r3': 1.0})


@pytest.mark.long
def test_penalties_reach_d_only_and_need_real_data_for_r1():
  prob = toy_networks.problem('non_saturating', 'conv')
  plain = one_stage.one_stage_grads(**{**prob, 'penalties': None})
  pen = one_stage.one_stage_grads(**{**prob, 'penalties': {'r1': 5.0, 'r2': 5.0}})
  # G's gradient untouched (fakes detached). With R2 the step takes G's cotangent from
  # the penalty's input gradient: another exact route, so rounding differs, by an
  # amount each CPU sums differently (it failed an rtol of 1e-5 on an AMD EPYC). The
  # bound: n rounded terms (helpers.rounding_atol) along the longest chain of sums,
  # D's input gradient through its two 3x3 convolutions (kernel taps times output
  # channels each), G's output layer (one term per pixel) and the batch ...
  conv_terms = sum(
      kh * kw * out
      for kh, kw, _, out in (prob['params_d'][c].shape for c in ('c1', 'c2'))
  )
  n_terms = conv_terms + int(np.prod(toy_networks.IMAGE_SHAPE)) + prob['z'].shape[0]
  assert n_terms == 36 + 72 + 128 + 8
  for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(pen[0])):
    np.testing.assert_allclose(b, a, rtol=0, atol=rounding_atol(a, n_terms))
  # ... n_terms * eps = 3e-5 of each leaf's largest value; R2's gradient through the
  # fakes, were it to leak, is far above that.
  leak = jax.grad(
      lambda pg: 5.0
      / 2
      * jnp.mean(
          penalties.input_grad_sq_norms(
              prob['discriminate'],
              prob['params_d'],
              prob['generate'](pg, prob['z']),
              has_aux=prob['d_has_aux'],
          )[0]
      )
  )(prob['params_g'])
  leak_norm = np.sqrt(sum(float(jnp.sum(jnp.square(l))) for l in jax.tree.leaves(leak)))
  g_norm = np.sqrt(sum(float(jnp.sum(jnp.square(l))) for l in jax.tree.leaves(plain[0])))
  assert leak_norm > 1e-3 * g_norm
  assert any(
      not np.allclose(a, b)
      for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(pen[1]))
  )
  assert float(pen[2]['r1_penalty']) > 0 and float(pen[2]['r2_penalty']) > 0
  with pytest.raises(ValueError, match='need real data'):
    one_stage.one_stage_grads(**{**prob, 'x_real': None, 'penalties': {'r1': 1.0}})


def test_fisher_multiplier_moves_against_the_constraint():
  """lam <- lam - rho (1 - Omega), Omega = (E f(x)^2 + E f(G(z))^2) / 2, from the same
  forward; the step keeps it in TrainState.loss_state and logs it."""
  loss = losses.get('fisher')
  r, f = jnp.array([2.0, 1.0]), jnp.array([-1.0, 0.0])
  omega = 0.5 * (np.mean([4.0, 1.0]) + np.mean([1.0, 0.0]))
  new = loss.updated({'lam': jnp.float32(0.5)}, r, f)
  np.testing.assert_allclose(new['lam'], 0.5 - 1e-6 * (1 - omega), rtol=1e-7)
  # D's loss: -(E f(x) - E f(G(z)) + lam (1 - Omega) - rho/2 (1 - Omega)^2).
  expected = -(1.5 + 0.5 + 0.5 * (1 - omega) - 0.5e-6 * (1 - omega) ** 2)
  np.testing.assert_allclose(loss.d(r, f, {'lam': 0.5}), expected, rtol=1e-6)
  np.testing.assert_allclose(loss.g(r, f, {'lam': 0.5}), 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match='both init_state and update_state'):
    losses.register('half_stateful', loss.d_loss, loss.g_loss, init_state=dict)


@pytest.mark.e2e
@needs_fashion_mnist
@pytest.mark.parametrize('stage', ['one', 'two'])
def test_fisher_and_penalties_train_checkpoint_and_resume_exactly(stage, tmp_path):
  import shutil

  config = tiny_fashion_mnist_config(
      loss='fisher', stage=stage, **{'penalty.r1': 0.1, 'penalty.r2': 0.1}
  )
  straight = jax.device_get(train.train_and_evaluate(config, str(tmp_path / 'a')))
  assert float(straight.loss_state['lam']) != 0.0  # moved, and is part of the state
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / '4')
  resumed = jax.device_get(train.train_and_evaluate(config, str(tmp_path / 'b')))
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  import json

  with open(tmp_path / 'a' / 'metrics.jsonl') as f:
    last = [json.loads(line) for line in f][-1]
  assert {'loss_state_lam', 'r1_penalty', 'r2_penalty'} <= set(last)
