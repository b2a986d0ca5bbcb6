"""Training never loses good state (issue 19): divergence, corrupt checkpoints, changed
configs, full disks, values that used to crash late, metrics across a resume."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from osgan_jax.training import checkpoint, loop
from osgan_jax.training import workdir as workdir_lib
from osgan_jax import config as config_lib, train
from osgan_jax.config import ConfigError
from helpers import (  # pylint: disable=import-error
    REPO,
    assert_trees_equal,
    checkpoint_steps as steps_on_disk,
    cli_flags,
    config_path,
    needs_fashion_mnist,
    read_metrics as metrics,
    tiny_overrides,
)

CONFIG = config_path('dcgan_fashion_mnist')
pytestmark = needs_fashion_mnist
# 20 steps of the tiny DCGAN, logged every 5, checkpointed every 10; no samples.
TINY = tiny_overrides(
    'dcgan_fashion_mnist',
    run={
        'batch_size': 16,
        'log_every_steps': 5,
        'evals.samples.every_steps': 1000,
        'checkpoint_every_steps': 10,
        'keep_checkpoints': 10,
        'num_train_steps': 20,
    },
)
DIVERGE = {
    'optimizer.g_lr': 1e30,
    'optimizer.d_lr': 1e30,
    'allow_config_change': 'optimizer.g_lr,optimizer.d_lr',
}


def config(**overrides):
  return config_lib.load_config(CONFIG, {**TINY, **overrides})


def main_cli(workdir, overrides):
  return subprocess.run(
      [
          sys.executable,
          '-m',
          'osgan_jax.main',
          f'--config={CONFIG}',
          f'--workdir={workdir}',
          *cli_flags({**TINY, **overrides}),
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )


def error_line(result):
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('osgan_jax.main:')]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope='module')
def finite_run(tmp_path_factory):
  """20 finite steps with checkpoints at 10 and 20, and their files' bytes."""
  workdir = str(tmp_path_factory.mktemp('finite'))
  state = jax.device_get(train.train_and_evaluate(config(), workdir))
  files = {
      p: open(p, 'rb').read()
      for p in glob.glob(os.path.join(workdir, 'checkpoints', '**', '*'), recursive=True)
      if os.path.isfile(p)
  }
  return workdir, state, files


# ------------------------------------------------------------------ 1. divergence


@pytest.mark.e2e
def test_a_diverging_run_stops_in_one_line_and_keeps_every_finite_checkpoint(
    finite_run, tmp_path
):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finite_run[0], workdir)
  result = main_cli(workdir, {**DIVERGE, 'num_train_steps': 60})
  assert result.returncode == 1
  line = error_line(result)
  assert line.startswith('osgan_jax.main: error: training diverged at step 25: ')
  assert 'non-finite from step 2' in line and f'{workdir}/checkpoints/20' in line
  assert steps_on_disk(workdir) == [10, 20]  # nothing displaced the finite ones
  for path, data in finite_run[2].items():
    with open(path.replace(finite_run[0], workdir), 'rb') as f:
      assert f.read() == data


@pytest.mark.e2e
def test_rollback_restores_the_last_checkpoint_skips_ahead_and_caps_retries(
    finite_run, tmp_path
):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finite_run[0], workdir)
  c = config(
      **DIVERGE,
      num_train_steps=60,
      **{'divergence.policy': 'rollback', 'divergence.max_rollbacks': 2},
  )
  with pytest.raises(loop.TrainingError, match='diverged at step 35 after 2 rollbacks'):
    train.train_and_evaluate(c, workdir)
  rollbacks = [r for r in metrics(workdir) if 'rollbacks' in r]
  assert [(r['step'], r['rollbacks']) for r in rollbacks] == [(25, 1), (30, 2)]
  assert steps_on_disk(workdir) == [10, 20]


@pytest.mark.e2e
def test_a_collapsed_game_is_flagged(tmp_path, caplog):
  # D's learning rate huge, G's zero: D separates perfectly, loss_d -> 0, G stuck.
  c = config(
      num_train_steps=40,
      log_every_steps=4,
      checkpoint_every_steps=40,
      **{
          'optimizer.d_lr': 0.05,
          'optimizer.g_lr': 0.0,
          'divergence.collapse_loss_d': 0.02,
      },
  )
  train.train_and_evaluate(c, str(tmp_path))
  records = metrics(tmp_path)
  flagged = [r['step'] for r in records if r.get('collapsed')]
  assert flagged, [(r['loss_d'], r['loss_g']) for r in records]
  first = records.index(next(r for r in records if r.get('collapsed')))
  assert first >= 2 and all(
      abs(r['loss_d']) <= 0.02 and r['loss_g'] >= 5.0
      for r in records[first - 2 : first + 1]
  )
  assert 'The game looks collapsed' in caplog.text


# ------------------------------------------------------------------ 2. corrupt checkpoints


@pytest.mark.e2e
def test_a_truncated_latest_checkpoint_resumes_from_the_one_before(finite_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finite_run[0], workdir)
  data_file = sorted(
      glob.glob(os.path.join(workdir, 'checkpoints', '20', 'state', 'd', '*'))
  )[0]
  with open(data_file, 'r+b') as f:
    f.truncate(100)
  resumed = jax.device_get(train.train_and_evaluate(config(num_train_steps=30), workdir))
  (moved,) = [
      d
      for d in os.listdir(os.path.join(workdir, 'checkpoints', 'corrupt'))
      if not d.endswith('.log')
  ]
  assert moved.startswith('20.')  # moved aside, not deleted
  assert steps_on_disk(workdir) == [10, 20, 30]
  straight = jax.device_get(
      train.train_and_evaluate(config(num_train_steps=30), str(tmp_path / 'straight'))
  )
  assert_trees_equal(resumed, straight)  # from step 10, bit-identical


@pytest.mark.e2e
def test_no_readable_checkpoint_is_one_line(finite_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finite_run[0], workdir)
  for step in (10, 20):
    os.remove(os.path.join(workdir, 'checkpoints', str(step), 'state', 'manifest.ocdbt'))
  result = main_cli(workdir, {'num_train_steps': 30})
  assert result.returncode == 1
  assert 'no usable checkpoint in' in error_line(result)
  assert len(os.listdir(os.path.join(workdir, 'checkpoints', 'corrupt'))) == 4


# ------------------------------------------------------------------ 3. changed configs


@pytest.mark.e2e
def test_a_changed_width_is_refused_and_config_json_kept(finite_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finite_run[0], workdir)
  with open(os.path.join(workdir, 'config.json'), 'rb') as f:
    before = f.read()
  with pytest.raises(
      ConfigError,
      match=r'model.generator.width: 8 -> 12.*'
      r'allow_config_change=model.generator.width',
  ):
    train.train_and_evaluate(config(**{'model.generator.width': 12}), workdir)
  with pytest.raises(ConfigError, match=r'batch_size: 16 -> 32'):
    train.train_and_evaluate(config(batch_size=32), workdir)
  with open(os.path.join(workdir, 'config.json'), 'rb') as f:
    assert f.read() == before
  # Allowed anyway, the checkpoints do not fit: one line, not a shape traceback.
  with pytest.raises(checkpoint.CheckpointError, match='does not fit this config'):
    train.train_and_evaluate(
        config(**{'model.generator.width': 12, 'allow_config_change': '*'}), workdir
    )
  assert steps_on_disk(workdir) == [10, 20]  # a misfit is not corruption


def test_a_checkpoint_from_before_a_state_field_existed_restores(tmp_path):
  """Fields added to TrainState since a checkpoint was written (None in a run that does
  not use them) neither fail its restore nor send it to corrupt/."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from osgan_jax.core import steps  # pylint: disable=import-outside-toplevel

  arrays = lambda n: {'w': jnp.arange(n, dtype=jnp.float32)}
  state = steps.TrainState(
      jnp.asarray(3), arrays(3), arrays(2), arrays(3), arrays(2), arrays(1), arrays(1)
  )
  fields = dataclasses.fields(state)
  written = {
      f.name: getattr(state, f.name) for f in fields if getattr(state, f.name) is not None
  }
  assert len(written) < len(fields)  # augment, loss_state, ... were not there then
  mngr = checkpoint.manager(str(tmp_path), 2, async_save=False)
  checkpoint.save(mngr, 3, written, {})
  checkpoint.wait(mngr)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored, meta = checkpoint.restore(mngr, checkpoint.abstract(state, one), 3)
  assert type(restored) is steps.TrainState and restored.augment is None
  assert jax.tree.map(lambda a, b: bool((a == b).all()), restored, state) == jax.tree.map(
      lambda a: True, state
  )
  assert meta['digests'] and not os.path.exists(tmp_path / checkpoint.CORRUPT_DIR)


def test_a_key_added_since_the_run_began_is_not_a_change(tmp_path):
  """A workdir from before a key existed resumes while the key keeps its default."""
  workdir = str(tmp_path)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'seed': 0}, f)
  table = lambda key: config_lib.default_json(key, workdir_lib.NO_DEFAULT)
  for key in ('init_from', 'augment.pipe', 'data.limit'):  # the table knows them
    assert table(key) is not workdir_lib.NO_DEFAULT
  record = lambda **c: workdir_lib.Record({'seed': 0, **c}, default=table)
  workdir_lib.prepare(workdir, record(init_from=''), resuming=True, is_main=False)
  with pytest.raises(ConfigError, match=r"init_from: None -> 'g.pkl'"):
    workdir_lib.prepare(workdir, record(init_from='g.pkl'), resuming=True, is_main=False)
  with pytest.raises(ConfigError, match=r'not_a_key: None -> 0'):  # unknown: a change
    workdir_lib.prepare(workdir, record(not_a_key=0), resuming=True, is_main=False)


@pytest.mark.e2e
def test_harmless_changes_resume_and_are_recorded(finite_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finite_run[0], workdir)
  train.train_and_evaluate(config(num_train_steps=25, log_every_steps=1), workdir)
  with open(os.path.join(workdir, 'config_history.jsonl')) as f:
    (record,) = [json.loads(line) for line in f]
  assert record['changed'] == {'log_every_steps': [5, 1], 'num_train_steps': [20, 25]}
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_train_steps'] == 25


# ------------------------------------------------------------------ 4. filesystem


@pytest.mark.e2e
def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path):
  mount = tmp_path / 'small'
  mount.mkdir()
  if subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(mount)], capture_output=True
  ).returncode:
    pytest.skip('cannot mount a tmpfs here')
  try:
    workdir = str(mount / 'run')
    big = {'model.generator.width': 16, 'model.discriminator.width': 16}
    result = main_cli(workdir, {**big, 'num_train_steps': 30})
    assert result.returncode == 1
    line = error_line(result)
    failed = int(line.split('no room for checkpoint ')[1].split()[0])
    kept = list(range(10, failed, 10))
    assert steps_on_disk(
        workdir
    ) == kept and f'({", ".join(map(str, kept)) or "none"}' in line.replace(
        'steps ', ''
    ).replace(
        'none yet', 'none'
    )
    subprocess.run(['mount', '-o', 'remount,size=16m', str(mount)], check=True)
    result = main_cli(workdir, {**big, 'num_train_steps': 30})
    assert result.returncode == 0, result.stderr[-2000:]
    assert steps_on_disk(workdir) == [10, 20, 30]
  finally:
    subprocess.run(['umount', str(mount)])


@pytest.mark.parametrize(
    'make,cause',
    [
        (lambda p: p.write_text('x'), 'File exists'),
        (lambda p: (p.parent / 'file').write_text('x'), 'Not a directory'),
    ],
)
def test_a_workdir_that_cannot_be_made_is_one_line(tmp_path, make, cause):
  workdir = tmp_path / 'w'
  make(workdir)
  target = workdir if workdir.exists() else tmp_path / 'file' / 'sub'
  with pytest.raises(ConfigError, match=f'cannot write the workdir {target}: {cause}'):
    train.train_and_evaluate(config(), str(target))


# ------------------------------------------------------------------ 5. late crashes


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'z_dim': 0}, r"convT0'\]\['kernel'\] would be empty"),
        ({'data.resolution': 30}, 'resolution 30 is not supported'),
        ({'model.discriminator.norm': 'bogus'}, "norm must be one of .* got 'bogus'"),
        ({'num_devices': 5}, 'num_devices=5, but 1 devices'),
        ({'divergence.policy': 'retry'}, 'divergence.policy'),
    ],
)
def test_values_that_crashed_late_fail_before_anything_is_written(
    tmp_path, overrides, message
):
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(config(**overrides), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


# ------------------------------------------------------------------ 6. metrics


@pytest.mark.e2e
def test_the_first_interval_after_a_resume_is_the_uninterrupted_runs(tmp_path):
  """Checkpoints at 6 fall inside a log interval (every 4): the resumed run logs
  step 8 over steps 5-8, as the uninterrupted run does."""
  c = config(num_train_steps=12, log_every_steps=4, checkpoint_every_steps=6)
  train.train_and_evaluate(c, str(tmp_path / 'a'))
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / '12')
  train.train_and_evaluate(c, str(tmp_path / 'b'))
  timing = ('steps_per_sec', 'images_per_sec', 'train_seconds')
  strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]
  assert strip(metrics(tmp_path / 'b')) == strip(metrics(tmp_path / 'a'))
  assert [r['step'] for r in metrics(tmp_path / 'b')] == [4, 8, 12]


# ------------------------------------------------------------------ 7. the commands


@pytest.mark.parametrize(
    'module,args,status,message',
    [
        ('osgan_jax.summary', ['--config.bogus=1'], 2, "unknown config key 'bogus'"),
        (
            'osgan_jax.summary',
            ['--config.model.discriminator.norm=bogus'],
            1,
            'norm must be one of',
        ),
        (
            'osgan_jax.main',
            ['--workdir=/tmp/unused', '--config.bogus=1'],
            2,
            "unknown config key 'bogus' in --config.bogus",
        ),
    ],
)
def test_commands_report_bad_input_in_one_line(module, args, status, message):
  result = subprocess.run(
      [sys.executable, '-m', module, f'--config={CONFIG}', *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == status, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  (line,) = [l for l in result.stderr.splitlines() if l.startswith(f'{module}: error:')]
  assert message in line


def test_helpconfig_lists_every_key_with_its_meaning():
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'osgan_jax.main',
          f'--config={CONFIG}',
          '--helpconfig',
          '--config.batch_size=32',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  c = config_lib.load_config(CONFIG)
  for key in (
      'batch_size=32',
      'model.generator.width',
      'divergence.policy',
      'data.resolution',
      'evals.fid.every_steps',
  ):
    assert f'--config.{key}' in result.stdout
  assert '``divergence.*``' in result.stdout and c.loss in result.stdout
