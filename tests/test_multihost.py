"""Multi-process training on one machine: what every host of a pod runs, tested.

``osgan_jax.launch`` starts 2 processes of 2 CPU devices each, joined by
``jax.distributed`` (gloo collectives): host-local batch slices, allgathers, BatchNorm
over the global batch, orbax saves from both processes, the stop agreement, FID and
samples on process 0, skipped-image counts summed over processes, the GAN, StyleGAN2
and distillation tasks, and the one-line errors of a broken setup. The pytest process
itself has 1 CPU device: it restores the checkpoints the runs leave (a different
number of processes and devices) and runs the 1-device references.

Runs are tiny (16x16, width 8, batch 8, a few steps); compilation dominates.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import portpicker
import pytest

from osgan_jax import config as config_lib, launch, train
from osgan_jax.tasks import evals
from osgan_jax.tasks import teacher as teacher_lib
from osgan_jax.training import parallel
from osgan_jax.config import ConfigError
from helpers import (  # pylint: disable=import-error
    REPO,
    assert_trees_equal,
    checkpoint_steps,
    cli_flags,
    config_path,
    needs_fashion_mnist,
    read_metrics,
    tiny_overrides,
)

DCGAN = 'dcgan_fashion_mnist'
# BatchNorm D (statistics over the global batch); no conv biases, as
# test_train.test_eight_devices_equal_one_device explains.
BATCHNORM = {
    'model.discriminator.norm': 'batch',
    'model.generator.use_bias': False,
    'model.discriminator.use_bias': False,
}
TIMEOUT = 300


@pytest.fixture(scope='module')
def images(make_png_folder):
  """8 small RGB PNGs and a corrupt one (skipped and counted by whichever process
  loads it)."""
  return make_png_folder(8, corrupt=True)


def launch_command(num_processes, devices, command, grace=10):
  return [
      sys.executable,
      '-m',
      'osgan_jax.launch',
      f'--num_processes={num_processes}',
      f'--devices_per_process={devices}',
      f'--grace_seconds={grace}',
      '--',
      *command,
  ]


def main_command(name, workdir, overrides):
  return [
      sys.executable,
      '-m',
      'osgan_jax.main',
      f'--config={config_path(name)}',
      f'--workdir={workdir}',
      *cli_flags(overrides),
  ]


def run_launch(num_processes, devices, command, **kwargs):
  return subprocess.run(
      launch_command(num_processes, devices, command, **kwargs),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=TIMEOUT,
  )


def ok(result):
  assert result.returncode == 0, result.stderr[-4000:]
  assert 'Traceback' not in result.stderr, result.stderr[-4000:]
  return result


def restore(name, workdir, overrides):
  """The final state of a finished run, restored in this process (1 device)."""
  config = config_lib.load_config(config_path(name), overrides)
  return jax.device_get(train.train_and_evaluate(config, str(workdir)))


def max_diff(a, b):
  diffs = jax.tree.map(
      lambda x, y: float(
          np.max(
              np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0
          )
      ),
      a,
      b,
  )
  return max(jax.tree.leaves(diffs))


def error_lines(stderr):
  return [line for line in stderr.splitlines() if 'osgan_jax.main: error:' in line]


# ---------------------------------------------------------------------------- launcher

_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    i, mode = int(os.environ['OSGAN_PROCESS_ID']), sys.argv[1]
    def stop(signum, frame):
      print('got', signal.Signals(signum).name, flush=True)
      sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    if mode == 'env':
      print(os.environ['OSGAN_COORDINATOR'], os.environ['OSGAN_NUM_PROCESSES'], i,
            os.environ['JAX_PLATFORMS'], os.environ['XLA_FLAGS'])
      print('on stderr', file=sys.stderr)
      print('no newline', end='')
    elif mode == 'fail' and i == 1:
      sys.exit(3)
    else:
      print('ready', flush=True)
      time.sleep(60)
""")


@pytest.mark.e2e
def test_launcher_env_prefixes_and_exit_status():
  result = subprocess.run(
      launch_command(2, 3, [sys.executable, '-c', _CHILD, 'env']),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=60,
      env={
          **os.environ,
          'XLA_FLAGS': '--xla_force_host_platform_device_count=8 --xla_cpu_foo=1',
      },
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  coordinator = re.search(r'\[0\] (localhost:\d+) ', result.stdout).group(1)
  for i in (0, 1):
    assert (
        f'[{i}] {coordinator} 2 {i} cpu --xla_cpu_foo=1 '
        '--xla_force_host_platform_device_count=3' in lines
    )
    assert f'[{i}] no newline' in lines
    assert f'[{i}] on stderr' in result.stderr.splitlines()

  # One fails: its status is the launcher's, the other is terminated after the grace.
  start = time.monotonic()
  result = subprocess.run(
      launch_command(2, 0, [sys.executable, '-c', _CHILD, 'fail'], grace=2),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=60,
  )
  assert result.returncode == 3, result.stderr
  assert '[0] got SIGTERM' in result.stdout.splitlines()
  assert '[launch] process 1 exited with status 3' in result.stderr
  assert time.monotonic() - start < 30


@pytest.mark.e2e
def test_launcher_forwards_sigterm_to_every_process():
  proc = subprocess.Popen(
      launch_command(2, 0, [sys.executable, '-c', _CHILD, 'wait']),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  try:
    ready = [proc.stdout.readline() for _ in range(2)]
    assert sorted(ready) == ['[0] ready\n', '[1] ready\n']
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0
  assert sorted(out.splitlines()) == ['[0] got SIGTERM', '[1] got SIGTERM']


def test_cluster_environment_variables(monkeypatch):
  for name in (
      parallel.COORDINATOR_ENV,
      parallel.NUM_PROCESSES_ENV,
      parallel.PROCESS_ID_ENV,
      parallel.INIT_TIMEOUT_ENV,
  ):
    monkeypatch.delenv(name, raising=False)
  assert parallel.explicit_cluster() is None
  env = launch.child_env({}, 'localhost:1234', 4, 3)
  assert 'XLA_FLAGS' not in env and 'JAX_PLATFORMS' not in env
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert parallel.explicit_cluster() == dict(
      coordinator_address='localhost:1234',
      num_processes=4,
      process_id=3,
      initialization_timeout=parallel.DEFAULT_INIT_TIMEOUT,
  )
  monkeypatch.setenv(parallel.PROCESS_ID_ENV, '4')
  with pytest.raises(ConfigError, match='must be in'):
    parallel.explicit_cluster()
  monkeypatch.delenv(parallel.NUM_PROCESSES_ENV)
  with pytest.raises(ConfigError, match='must be integers'):
    parallel.explicit_cluster()
  with socket.create_server(('localhost', 0)) as server:  # listening: returns at once
    parallel.wait_for_coordinator(f'localhost:{server.getsockname()[1]}', 5)


# ------------------------------------------------------------------------ data, RNG

_BATCH_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.experimental import multihost_utils
    from osgan_jax import config as config_lib, data
    from osgan_jax.training import parallel
    assert parallel.initialize()
    config = config_lib.load_config(sys.argv[1], {'data.name': 'folder',
                                                   'data.path': sys.argv[2],
                                                   'data.resolution': 16})
    parallel.check_same_config(config.to_json_best_effort(sort_keys=True))
    mesh = parallel.make_mesh()
    assert (jax.process_count(), mesh.size) == (2, 4)
    sharding = parallel.data_sharding(mesh)
    i = jax.process_index()
    it = data.make_iterator(config.data, 8, seed=3, start_step=5, process_index=i,
                            process_count=2, image_dtype='uint8')
    whole = data.make_iterator(config.data, 8, seed=3, start_step=5, image_dtype='uint8')
    for _ in range(3):
      local, expected = next(it), next(whole)
      assert local['image'].shape[0] == 4
      batch = parallel.global_batch(local, sharding)
      for key in ('image', 'label'):
        gathered = multihost_utils.process_allgather(batch[key], tiled=True)
        np.testing.assert_array_equal(gathered, expected[key])
      for shard in batch['image'].addressable_shards:  # this process's rows
        np.testing.assert_array_equal(shard.data, expected['image'][shard.index])
    assert parallel.sum_over_processes(it.skipped) == whole.skipped > 0
    assert parallel.any_process(i == 1) and not parallel.any_process(False)
    key = jax.random.fold_in(jax.random.PRNGKey(0), 7)
    z = jax.jit(lambda k: jax.random.normal(k, (8, 3)), out_shardings=sharding)(key)
    np.testing.assert_array_equal(multihost_utils.process_allgather(z, tiled=True),
                                  jax.random.normal(key, (8, 3)))
    print('checked on process', i)
""")


@pytest.mark.e2e
def test_global_batch_rng_and_collectives_equal_one_process(images):
  """Each process loads only its slice; assembled, the slices are the batch one
  process loads; latents drawn sharded are the unsharded draw; skips sum up."""
  result = ok(
      run_launch(
          2, 2, [sys.executable, '-c', _BATCH_SCRIPT, config_path(DCGAN), str(images)]
      )
  )
  assert sorted(re.findall(r'checked on process \d', result.stdout)) == [
      'checked on process 0',
      'checked on process 1',
  ]


# ------------------------------------------------------------ 2x2 == 1x4 == 1x1, FID


def _fid_overrides():
  from osgan_jax.metrics import inception

  if inception.default_weights_path() is None:
    return {}
  return {
      'evals.fid.every_steps': 3,
      'evals.fid.num_samples': 8,
      'evals.fid.num_real': 8,
      'evals.fid.batch_size': 8,
  }


@pytest.mark.e2e
def test_two_processes_equal_one_process(images, tmp_path):
  """2 processes x 2 devices, 1 x 4 and 1 x 1: the same training, BatchNorm included.

  2x2 and 1x4 run the same partitioned program (gloo or in-process all-reduces) and
  agree bit for bit; 1 device sums the batch in another order (within 1e-6).
  """
  overrides = tiny_overrides(
      DCGAN, images, num_train_steps=3, **{'evals.samples.every_steps': 3}, **BATCHNORM
  )
  fid = _fid_overrides()
  for n, k in ((2, 2), (1, 4)):
    ok(run_launch(n, k, main_command(DCGAN, tmp_path / f'{n}x{k}', {**overrides, **fid})))
  one = jax.device_get(
      train.train_and_evaluate(
          config_lib.load_config(config_path(DCGAN), overrides), str(tmp_path / '1x1')
      )
  )
  two = restore(DCGAN, tmp_path / '2x2', overrides)  # 2 processes' checkpoint, 1 device
  four = restore(DCGAN, tmp_path / '1x4', overrides)
  assert int(two.step) == 3
  assert_trees_equal(two, four)
  assert max_diff(two, one) < 1e-6

  # Written once, by process 0: one metrics line per step, one event file, one grid.
  records, reference = read_metrics(tmp_path / '2x2'), read_metrics(tmp_path / '1x1')
  assert [r['step'] for r in records] == [1, 2, 3]
  assert len(list((tmp_path / '2x2').glob('events.out.tfevents.*'))) == 1
  assert os.listdir(tmp_path / '2x2' / 'samples') == ['step_000003.png']
  np.testing.assert_allclose(
      [r['loss_d'] for r in records], [r['loss_d'] for r in reference], rtol=1e-5
  )
  # Each process counts the corrupt image in its own slices; the sum is 1 process's.
  skipped = [r['data_skipped_images'] for r in records]
  assert skipped == [r['data_skipped_images'] for r in reference] and skipped[-1] > 0
  if fid:  # FID of process 0's Inception features of samples from the whole mesh
    assert [r['step'] for r in records if 'fid' in r] == [3]
    assert records[-1]['fid'] == read_metrics(tmp_path / '1x4')[-1]['fid']
    assert sorted(os.listdir(tmp_path / '2x2' / 'best')) == ['3', 'best.json']


# -------------------------------------------------------------------------- SIGTERM


# slow: a SIGTERM's checkpoint and exact resume are test_train.py::
# test_sigterm_saves_then_resume_matches_uninterrupted's, the processes' agreement on every
# step test_two_processes_equal_one_process's; this adds the stop agreed across hosts (43 s).
@pytest.mark.slow
@pytest.mark.e2e
def test_sigterm_to_one_process_stops_both_with_one_checkpoint(images, tmp_path):
  """A preemption notice on one host: both stop at the same step (agreed at the next
  log boundary) with one checkpoint; the same launch resumes bit for bit (against
  1x4, which is 2x2's program), and 1 process on 1 device resumes it too."""
  overrides = tiny_overrides(
      DCGAN,
      images,
      num_train_steps=100_000,
      checkpoint_every_steps=100_000,
      **{'evals.samples.every_steps': 100_000},
      **BATCHNORM,
  )
  workdir = tmp_path / 'interrupted'
  out, err = tmp_path / 'stdout', tmp_path / 'stderr'
  with open(out, 'w') as stdout, open(err, 'w') as stderr:
    proc = subprocess.Popen(
        launch_command(2, 2, main_command(DCGAN, workdir, overrides)),
        cwd=REPO,
        stdout=stdout,
        stderr=stderr,
    )
  try:
    deadline = time.time() + TIMEOUT
    metrics = workdir / 'metrics.jsonl'
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
      assert proc.poll() is None, err.read_text()[-4000:]
      assert time.time() < deadline, 'the run did not start'
      time.sleep(0.05)
    pids = dict(re.findall(r'\[launch\] process (\d) of 2: pid (\d+)', err.read_text()))
    os.kill(int(pids['1']), signal.SIGTERM)  # process 1 only
    proc.wait(timeout=TIMEOUT)
  finally:
    if proc.poll() is None:
      proc.kill()
  log = err.read_text()
  assert proc.returncode == 0 and 'Traceback' not in log, log[-4000:]
  stops = {
      i: (by, int(step))
      for i, by, step in re.findall(
          r'\[(\d)\] .*Stopped by (SIGTERM|a signal to another process) at step (\d+)',
          log,
      )
  }
  stopped_at = stops['1'][1]
  assert stops == {
      '0': ('a signal to another process', stopped_at),
      '1': ('SIGTERM', stopped_at),
  }
  assert checkpoint_steps(workdir) == [stopped_at]  # one, complete:
  assert not [d for d in os.listdir(workdir / 'checkpoints') if 'tmp' in d]
  assert [r['step'] for r in read_metrics(workdir)] == list(range(1, stopped_at + 1))

  # The same launch again, 2 steps longer, resumes; so does 1 process from a copy.
  overrides['num_train_steps'] = stopped_at + 2
  shutil.copytree(workdir, tmp_path / 'single')
  ok(run_launch(2, 2, main_command(DCGAN, workdir, overrides)))
  ok(run_launch(1, 4, main_command(DCGAN, tmp_path / 'straight', overrides)))
  resumed = restore(DCGAN, workdir, overrides)
  straight = restore(DCGAN, tmp_path / 'straight', overrides)
  assert int(resumed.step) == stopped_at + 2
  assert_trees_equal(resumed, straight)
  assert checkpoint_steps(workdir) == [stopped_at, stopped_at + 2]
  single = jax.device_get(
      train.train_and_evaluate(
          config_lib.load_config(config_path(DCGAN), overrides), str(tmp_path / 'single')
      )
  )
  assert max_diff(single, straight) < 1e-6
  # The skip count goes on from the checkpoint's total, in 2 processes and in 1.
  expected = [r['data_skipped_images'] for r in read_metrics(tmp_path / 'straight')]
  for run in (workdir, tmp_path / 'single'):
    assert [r['data_skipped_images'] for r in read_metrics(run)] == expected


# ------------------------------------------------------------ StyleGAN2, distillation


# slow: the multi-process mechanism is test_two_processes_equal_one_process's, StyleGAN2's
# phases test_train.py::test_stylegan2_regularisers_ema_and_exact_resume's (57 s).
@pytest.mark.slow
@pytest.mark.e2e
def test_stylegan2_trains_in_two_processes(images, tmp_path):
  """Minibatch std over groups that span devices, R1, path length and EMA phases."""
  overrides = tiny_overrides(
      'stylegan2_tiny', images, num_train_steps=2, **{'evals.samples.every_steps': 2}
  )
  ok(run_launch(2, 2, main_command('stylegan2_tiny', tmp_path, overrides)))
  records = read_metrics(tmp_path)
  assert [r['step'] for r in records] == [1, 2]
  assert 'r1_penalty' in records[0] and 'pl_penalty' in records[0]
  state = restore('stylegan2_tiny', tmp_path, overrides)
  assert int(state.step) == 2
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))
  assert os.listdir(tmp_path / 'samples') == ['step_000002.png']


# The teacher's and the student's config alike (both the 'dfad' architecture).
DFAD_TINY = tiny_overrides(
    'dfad_fashion_mnist',
    batch_size=16,
    checkpoint_every_steps=100,
    **{'evals.test_accuracy.every_steps': 100},
)


# slow: the multi-process mechanism is test_two_processes_equal_one_process's and both
# tasks' training is test_dfad.py's; this one adds their combination (37 s).
@pytest.mark.slow
@pytest.mark.e2e
@needs_fashion_mnist
def test_teacher_and_distillation_train_in_two_processes(tmp_path):
  """Both tasks of data-free distillation; test accuracy on replicated parameters."""
  teacher_dir, student_dir = tmp_path / 'teacher', tmp_path / 'student'
  ok(run_launch(2, 2, main_command('dfad_teacher_fashion_mnist', teacher_dir, DFAD_TINY)))
  overrides = {**DFAD_TINY, 'dfad.teacher_workdir': str(teacher_dir)}
  ok(run_launch(2, 2, main_command('dfad_fashion_mnist', student_dir, overrides)))

  config = config_lib.load_config(config_path('dfad_fashion_mnist'), overrides)
  model, teacher, meta = teacher_lib.load_teacher(config, 10)  # 1 process, 1 device
  context = evals.Context(str(tmp_path), config.data.to_dict(), classifier=(model, None))
  test = evals.BUILDERS['test_accuracy'](
      'test', config.evals.test_accuracy.to_dict(), context
  )
  accuracy = test.accuracy(
      teacher['params'], {k: v for k, v in teacher.items() if k != 'params'}
  )
  teacher_records = read_metrics(teacher_dir)
  assert teacher_records[-1]['test_accuracy'] == meta['test_accuracy'] == accuracy
  records = read_metrics(student_dir)
  assert [r['step'] for r in records] == [1, 2]
  assert records[-1]['teacher_test_accuracy'] == accuracy
  assert 0 <= records[-1]['test_accuracy'] <= 1
  state = restore('dfad_fashion_mnist', student_dir, overrides)
  assert int(state.step) == 2
  assert_trees_equal(state.model_state_d['teacher'], teacher)
  assert os.listdir(student_dir / 'samples') == ['step_000002.png']


# --------------------------------------------------------------------------- errors


def _main_alone(workdir, address, process_id):
  """main as process ``process_id`` of 2, the other never started."""
  env = {
      **os.environ,
      **launch.child_env({}, address, 2, process_id),
      parallel.INIT_TIMEOUT_ENV: '2',
  }
  result = subprocess.run(
      main_command(DCGAN, workdir, {'progress_bar': False}),
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=TIMEOUT,
  )
  assert result.returncode == 1, result.stderr[-4000:]
  assert 'Traceback' not in result.stderr
  (line,) = error_lines(result.stderr)
  return line


@pytest.mark.e2e
def test_unreachable_coordinator_is_a_one_line_error(tmp_path):
  """Where JAX itself would abort (after its timeout) or crash without a word."""
  address = f'localhost:{portpicker.pick_unused_port()}'
  start = time.monotonic()
  assert _main_alone(tmp_path, address, 1).startswith(
      f'osgan_jax.main: error: config: cannot reach the coordinator at {address} '
      'within 2 s (ConnectionRefusedError'
  )
  assert time.monotonic() - start < 60
  with socket.create_server(('localhost', 0)) as server:  # the port is taken
    address = f'localhost:{server.getsockname()[1]}'
    assert _main_alone(tmp_path, address, 0).startswith(
        'osgan_jax.main: error: config: cannot serve the coordinator on port '
        f'{server.getsockname()[1]} of {address} (OSError'
    )
  assert not os.listdir(tmp_path)


@pytest.mark.e2e
def test_batch_not_divisible_by_every_device_is_an_error(images, tmp_path):
  overrides = tiny_overrides(DCGAN, images, batch_size=6)  # 3 per process, 1.5 per device
  result = run_launch(2, 2, main_command(DCGAN, tmp_path, overrides))
  assert result.returncode == 1, result.stderr[-4000:]
  assert sorted(error_lines(result.stderr)) == [
      f'[{i}] osgan_jax.main: error: config.batch_size=6 must be a multiple of '
      'the 4 devices (2 processes x 2 devices)'
      for i in (0, 1)
  ]


@pytest.mark.e2e
def test_different_configs_in_the_processes_are_an_error(images, tmp_path):
  command = main_command(DCGAN, tmp_path, tiny_overrides(DCGAN, images))
  per_process = ['sh', '-c', 'exec "$@" --config.seed=$OSGAN_PROCESS_ID', 'sh', *command]
  result = run_launch(2, 2, per_process)
  assert result.returncode == 1, result.stderr[-4000:]
  assert sorted(error_lines(result.stderr)) == [
      f'[{i}] osgan_jax.main: error: config: the config differs between processes: '
      'process(es) 1 run another config than process 0; start every process with the '
      'same command and overrides'
      for i in (0, 1)
  ]
  assert not (tmp_path / 'checkpoints').exists()
