"""What a user sees while a run starts: a line per setup stage, a metrics line with an
ETA per log interval without a progress bar, the compilation cache written by a run and
loaded by the next, and ``--help`` that exits 0 for every command."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ('main', 'prepare_data', 'gradcheck', 'summary', 'fid', 'launch')


@pytest.mark.parametrize('command', COMMANDS)
def test_help_exits_0_for_every_command(command):
  result = subprocess.run(
      [sys.executable, '-m', f'osgan_jax.{command}', '--help'],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f'python -m osgan_jax.{command}')


def _main(workdir, cache, steps):
  overrides = {
      'num_train_steps': steps,
      'batch_size': 8,
      'data.resolution': 16,
      'model.generator.width': 8,
      'model.discriminator.width': 8,
      'log_every_steps': 2,
      'checkpoint_every_steps': 2,
      'progress_bar': False,
      'evals.samples.every_steps': 0,
  }
  return subprocess.run(
      [
          sys.executable,
          '-m',
          'osgan_jax.main',
          '--config=configs/dcgan_fashion_mnist.py',
          f'--workdir={workdir}',
          f'--compilation_cache={cache}',
          *(f'--config.{k}={v}' for k, v in overrides.items()),
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )


@pytest.mark.skipif(
    not os.path.exists('/usr/share/datasets/fashion-mnist'), reason='needs Fashion-MNIST'
)
@pytest.mark.long
def test_setup_stages_metrics_lines_and_the_compilation_cache(tmp_path):
  cache = tmp_path / 'cache'
  first = _main(tmp_path / 'run', cache, 4)
  assert first.returncode == 0, first.stderr[-3000:]
  log = first.stderr
  for stage in (
      'Training configs/dcgan_fashion_mnist.py',
      'Setup: the gan task',
      "Setup: the state's shapes traced",
      'Setup: the state initialised',
      'Setup: phases main/1',
      'First step (with compilation)',
  ):
    assert stage in log, stage
  # No progress bar: one line per log interval with the metrics and an ETA.
  lines = re.findall(r'step (\d+)/4: .*loss_d .*; ETA (\S+)', log)
  assert [int(step) for step, _ in lines] == [2, 4]
  assert "Unable to initialize backend 'tpu'" not in log  # JAX's probe is not shown
  written = set(os.listdir(cache))
  assert written and re.search(r'Compilation cache: 0 programs loaded, [1-9]', log)
  # The same command, resumed for more steps: the compiled programs are loaded.
  second = _main(tmp_path / 'run', cache, 6)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'resumed from the checkpoint at step 4' in second.stderr
  loaded = re.search(r'Compilation cache: (\d+) programs loaded', second.stderr)
  assert loaded and int(loaded.group(1)) > 0
  assert written <= set(os.listdir(cache))
