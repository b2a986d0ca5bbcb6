"""Faults that used to cost work: bit rot in a checkpoint, two runs on one workdir, a
lost or corrupt config.json, a rollback that never gets past the bad region."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from osgan_jax import config as config_lib
from osgan_jax import main as main_command
from osgan_jax import train
from osgan_jax.config import ConfigError
from osgan_jax.training import checkpoint, guards, workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'dcgan_fashion_mnist.py')
pytestmark = pytest.mark.skipif(
    not os.path.exists('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'),
    reason='needs the offline Fashion-MNIST files',
)
TINY = {
    'model.generator.width': 8,
    'model.discriminator.width': 8,
    'batch_size': 16,
    'data.resolution': 16,
    'data.num_threads': 0,
    'log_every_steps': 2,
    'evals.samples.every_steps': 0,
    'checkpoint_every_steps': 2,
    'keep_checkpoints': 10,
    'progress_bar': False,
}


def config(**overrides):
  return config_lib.load_config(CONFIG, {**TINY, **overrides})


def metrics(workdir):
  timing = ('steps_per_sec', 'images_per_sec', 'train_seconds')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(l).items() if k not in timing} for l in f]


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def flip_a_decodable_bit(step_dir: str) -> None:
  """Flips one bit of the checkpoint's largest data file where the file still decodes
  (to wrong, finite values): bit rot that orbax itself does not notice."""
  data = max(
      glob.glob(os.path.join(step_dir, 'state', '**', '*'), recursive=True),
      key=lambda p: os.path.getsize(p) if os.path.isfile(p) else -1,
  )
  original = open(data, 'rb').read()
  for offset in range(len(original) // 2, len(original)):
    for bit in (0, 3):
      flipped = bytearray(original)
      flipped[offset] ^= 1 << bit
      with open(data, 'wb') as f:
        f.write(flipped)
      ((_, problem),) = [
          r
          for r in checkpoint.verify(os.path.dirname(step_dir))
          if r[0] == int(os.path.basename(step_dir))
      ]
      if problem and problem.startswith('checksum mismatch'):
        return
  raise AssertionError('no decodable bit flip found')


@pytest.mark.long
def test_bit_rot_is_caught_and_the_run_resumes_from_the_checkpoint_before(
    tmp_path, caplog, capsys
):
  straight = jax.device_get(
      train.train_and_evaluate(config(num_train_steps=6), str(tmp_path / 'a'))
  )
  run = str(tmp_path / 'b')
  train.train_and_evaluate(config(num_train_steps=4), run)
  flip_a_decodable_bit(os.path.join(run, 'checkpoints', '4'))
  # The verify action names the bad checkpoint and fails.
  assert main_command.verify(run) == 1
  out = capsys.readouterr().out
  assert 'checkpoints/2: ok' in out and 'checkpoints/4: checksum mismatch' in out
  resumed = jax.device_get(train.train_and_evaluate(config(num_train_steps=6), run))
  (warning,) = [r.getMessage() for r in caplog.records if 'is unusable' in r.getMessage()]
  assert warning.startswith('Checkpoint 4 is unusable (checksum mismatch in ')
  assert '\n' not in warning
  assert_trees_equal(resumed, straight)
  assert metrics(run) == metrics(tmp_path / 'a')


def test_one_run_per_workdir_and_a_stale_lock_is_taken_over(tmp_path, caplog):
  run = tmp_path / 'run'
  holder = subprocess.Popen(
      [
          sys.executable,
          '-c',
          'import sys, time; from osgan_jax.training import workdir as w\n'
          'with w.Lock(sys.argv[1]):\n  print("locked", flush=True); time.sleep(600)',
          str(run),
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(
        workdir_lib.WorkdirBusy, match=f'in use by process {holder.pid} on '
    ):
      train.train_and_evaluate(config(num_train_steps=2), str(run))
    assert os.listdir(run) == ['lock']  # nothing of the first run's was touched
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # SIGKILL left its pid in the file; the kernel dropped the lock itself.
  state = train.train_and_evaluate(config(num_train_steps=2), str(run))
  assert int(state.step) == 2
  assert any(f'lock of process {holder.pid}' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('damage', ['corrupt', 'delete'])
@pytest.mark.long
def test_a_lost_config_json_is_rebuilt_from_the_checkpoints(tmp_path, caplog, damage):
  run = str(tmp_path / 'run')
  train.train_and_evaluate(config(num_train_steps=2), run)
  path = os.path.join(run, 'config.json')
  if damage == 'corrupt':
    with open(path, 'w') as f:
      f.write('{"batch_size": 16, "trunc')
  else:
    os.remove(path)
  # A changed batch size is still refused: the checkpoints carry their config.
  with pytest.raises(ConfigError, match=r'batch_size: 16 -> 32'):
    train.train_and_evaluate(config(num_train_steps=4, batch_size=32), run)
  state = train.train_and_evaluate(config(num_train_steps=4), run)
  assert int(state.step) == 4
  assert any('rebuilt from checkpoint 2' in r.getMessage() for r in caplog.records)
  with open(path) as f:
    assert json.load(f)['batch_size'] == 16


@pytest.mark.long
def test_a_rollback_that_never_progresses_is_not_reported_as_success(tmp_path):
  run = str(tmp_path / 'run')
  train.train_and_evaluate(config(num_train_steps=4), run)
  kept = {
      p: open(p, 'rb').read()
      for p in glob.glob(os.path.join(run, 'checkpoints', '**', '*'), recursive=True)
      if os.path.isfile(p)
  }
  diverging = config(
      num_train_steps=12,
      **{
          'optimizer.g_lr': 1e30,
          'optimizer.d_lr': 1e30,
          'allow_config_change': 'optimizer.g_lr,optimizer.d_lr',
          'divergence.policy': 'rollback',
          'divergence.max_rollbacks': 100,
      },
  )
  with pytest.raises(guards.TrainingError) as e:
    train.train_and_evaluate(diverging, run)
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith('training diverged at step 12 and was rolled back to ')
  assert f'{run}/checkpoints/4' in message and 'no step after 4 was kept' in message
  for path, data in kept.items():  # the checkpoints before the divergence are intact
    with open(path, 'rb') as f:
      assert f.read() == data


@pytest.mark.long
def test_an_adaptive_augmentation_run_resumes_bit_identically(tmp_path):
  # ADA with p moving every 2 steps, on 40 examples mirrored (data.limit, data.xflip):
  # stopped at step 4 and resumed, the state, p and the controller's sums included,
  # equals the uninterrupted run's bit for bit.
  adaptive = {
      'data.limit': 40,
      'data.xflip': True,
      'augment.pipe': 'ada',
      'augment.p': 0.5,  # the start; three moves of 0.16 each by step 6
      'augment.target': 0.6,
      'augment.speed_kimg': 0.2,
      'augment.interval': 2,
  }
  straight = jax.device_get(
      train.train_and_evaluate(config(num_train_steps=6, **adaptive), str(tmp_path / 'a'))
  )
  run = str(tmp_path / 'b')
  train.train_and_evaluate(config(num_train_steps=4, **adaptive), run)
  resumed = jax.device_get(
      train.train_and_evaluate(config(num_train_steps=6, **adaptive), run)
  )
  assert_trees_equal(resumed, straight)
  assert float(straight.augment['p']) not in (0.0, 0.5, 1.0)  # p moved, and is compared
  assert metrics(run) == metrics(tmp_path / 'a')
  assert {'augment_p', 'augment_rt'} <= set(metrics(run)[-1])
