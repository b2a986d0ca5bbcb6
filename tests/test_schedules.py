"""Hyperparameter ramps (``config.schedule``, issue 18 part 3): R3GAN's cosine, Adam's
learning rate and beta2 per step against a hand-written Adam, penalty weights and G's
EMA at the step, one-line errors, and exact resume of a ramped run."""

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax import config as config_lib, train
from osgan_jax.tasks import gan, hparams
from osgan_jax.core import optimizers, regularizers, schedules
from helpers import (  # pylint: disable=import-error
    config_path,
    needs_fashion_mnist,
    tiny_fashion_mnist_config,
)


def official_cosine(cur_nimg, base_value, total_nimg, final_value):
  """R3GAN's ``cosine_decay_with_warmup`` without warm-up or hold (training_loop.py)."""
  decay = 0.5 * (1 + math.cos(math.pi * cur_nimg / float(total_nimg)))
  value = base_value + (1 - decay) * (final_value - base_value)
  return final_value if cur_nimg > total_nimg else value


def _config(**overrides):
  return config_lib.load_config(config_path('dcgan_fashion_mnist'), overrides)


@pytest.mark.parametrize('start,final', [(2e-4, 5e-5), (0.9, 0.99), (0.0, 5000.0)])
def test_cosine_ramp_is_r3gans(start, final):
  ramp = schedules.ramp(start, final, 100, 'cosine')
  for step in (0, 1, 37, 50, 99, 100, 101, 10_000):
    np.testing.assert_allclose(
        float(ramp(step)), official_cosine(step, start, 100, final), rtol=2e-6, atol=1e-9
    )
  line = schedules.ramp(start, final, 100, 'linear')
  np.testing.assert_allclose(float(line(25)), start + 0.25 * (final - start), rtol=1e-6)
  np.testing.assert_allclose(float(line(500)), final, rtol=1e-6)


def test_adam_follows_the_ramped_lr_and_beta2():
  """Both players' Adam at step t uses lr(t), beta2(t): checked against Adam written
  out with the per-step values (bias corrections with the current beta2, as PyTorch's
  Adam with param_groups updated each step, the official R3GAN loop)."""
  config = _config(
      **{
          'optimizer.g_lr': 2e-4,
          'optimizer.b1': 0.0,
          'optimizer.b2': 0.9,
          'schedule.steps': 6,
          'schedule.g_lr': 5e-5,
          'schedule.b2': 0.99,
      }
  )
  opt_g, _ = gan.make_optimizers(config)
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=5), jnp.float32)}
  state = opt_g.init(params)
  p = np.asarray(params['w'], np.float64)
  m = np.zeros(5)
  v = np.zeros(5)
  for t in range(9):
    g = rng.normal(size=5)
    updates, state = opt_g.update({'w': jnp.asarray(g, jnp.float32)}, state, params)
    params = {'w': params['w'] + updates['w']}
    lr, b2 = official_cosine(t, 2e-4, 6, 5e-5), official_cosine(t, 0.9, 6, 0.99)
    m = 0.0 * m + g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * m / (np.sqrt(v / (1 - b2 ** (t + 1))) + 1e-8)
    np.testing.assert_allclose(np.asarray(params['w']), p, rtol=2e-5, atol=1e-8)
  # D's lr is not ramped: its schedule is the constant.
  assert hparams.value(config, 'd_lr') == config.optimizer.d_lr


def test_lazy_regularisation_correction_applies_to_the_ramp():
  config = _config(
      **{
          'optimizer.d_lr': 2e-3,
          'schedule.steps': 10,
          'schedule.d_lr': 1e-3,
          'reg.r1_gamma': 1.0,
          'reg.r1_interval': 4,
      }
  )
  _, opt_d = gan.make_optimizers(config)
  params = {'w': jnp.ones(3)}
  state = opt_d.init(params)
  # Adam's first step moves each weight by lr (the sign of g), here lr(0) * 4 / 5.
  updates, _ = opt_d.update({'w': jnp.ones(3)}, state, params)
  np.testing.assert_allclose(np.asarray(updates['w']), -2e-3 * 0.8, rtol=1e-5)
  assert optimizers.lazy_ratio(None) == 1.0


def test_penalty_weights_and_ema_half_life_ramp_with_the_step():
  config = _config(
      **{
          'penalty.r1': 0.05,
          'penalty.r2': 0.05,
          'schedule.steps': 100,
          'schedule.r1': 0.005,
          'schedule.r2': 0.005,
          'schedule.ema_half_life_kimg': 5.0,
      }
  )
  g = gan.make_gan(config, *gan.create_models(config))
  for step in (0, 30, 100, 200):
    w = g.penalty_weights(jnp.int32(step))
    for k in ('r1', 'r2'):
      np.testing.assert_allclose(
          float(w[k]), official_cosine(step, 0.05, 100, 0.005), rtol=1e-5
      )
  # The EMA exists although its starting half-life is 0, and follows the ramp.
  assert hparams.active(config, 'ema_half_life_kimg')
  half_life = hparams.value(config, 'ema_half_life_kimg')
  b = int(config.batch_size)
  beta = regularizers.ema_beta(b, jnp.float32(50 * b), half_life_kimg=half_life(50))
  np.testing.assert_allclose(
      float(beta), 0.5 ** (b / (official_cosine(50, 0, 100, 5) * 1000)), rtol=1e-5
  )
  assert float(regularizers.ema_beta(b, jnp.float32(0), half_life_kimg=half_life(0))) == 0


@pytest.mark.parametrize(
    'overrides,message',
    [
        (
            {'schedule.g_lr': 1e-4},
            'config.schedule.g_lr is set but config.schedule.steps is 0',
        ),
        (
            {'schedule.steps': 10, 'schedule.kind': 'step'},
            'config.schedule.kind must be one of',
        ),
        ({'schedule.steps': -1}, 'config.schedule.steps must be >= 0'),
        (
            {'schedule.steps': 10, 'schedule.b2': 1.0},
            r'config.schedule.b2 must be in \[0, 1\)',
        ),
        (
            {'schedule.steps': 10, 'schedule.d_lr': 0.0},
            'config.schedule.d_lr must be > 0',
        ),
    ],
)
def test_bad_schedules_are_one_line_errors(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    config_lib.validate(_config(**overrides))
  assert '\n' not in str(e.value)


@pytest.mark.e2e
@needs_fashion_mnist
def test_a_ramped_run_resumes_bit_identically(tmp_path):
  """The ramps' position is the optimiser's count (in the checkpoint): a run resumed
  from step 2 of 4 equals the uninterrupted one."""
  config = tiny_fashion_mnist_config(
      **{
          'penalty.r1': 0.1,
          'schedule.steps': 3,
          'schedule.g_lr': 1e-5,
          'schedule.d_lr': 1e-5,
          'schedule.b2': 0.99,
          'schedule.r1': 0.01,
          'schedule.ema_half_life_kimg': 1.0,
      }
  )
  straight = jax.device_get(train.train_and_evaluate(config, str(tmp_path / 'a')))
  assert straight.ema_params_g is not None
  hyper = straight.opt_state_g.hyperparams
  np.testing.assert_allclose(float(hyper['learning_rate']), 1e-5, rtol=1e-5)
  np.testing.assert_allclose(float(hyper['b2']), 0.99, rtol=1e-5)
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / '4')
  resumed = jax.device_get(train.train_and_evaluate(config, str(tmp_path / 'b')))
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(x, y)
  # The ramped values are logged (means over each 2-step interval).
  with open(tmp_path / 'a' / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  lr = [official_cosine(i, config.optimizer.g_lr, 3, 1e-5) for i in range(4)]
  for record, (a, b) in zip(records, [lr[:2], lr[2:]], strict=True):
    np.testing.assert_allclose(record['schedule_g_lr'], (a + b) / 2, rtol=1e-5)
  assert 'schedule_b2' in records[0]
  assert 'schedule_r2' not in records[0]  # r2 is not ramped
