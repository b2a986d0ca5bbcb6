"""Config files and the command line: every config loads, has the common keys and its
command; an unknown key and missing data are one-line errors, not tracebacks."""

import glob
import os
import subprocess
import sys

import pytest

from osgan_jax import config_base, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in CONFIGS]
EXPECTED = {'dcgan_fashion_mnist', 'dcgan_mnist', 'dcgan_celeba', 'dcgan_minimax_celeba',
            'wgan_celeba', 'lsgan_celeba', 'hinge_celeba', 'relgan_celeba', 'cgan_mnist',
            'dcgan_lsun_church'}
COMMON_KEYS = ('stage', 'seed', 'batch_size', 'num_train_steps', 'log_every_steps',
               'checkpoint_every_steps', 'sample_every_steps', 'data.name', 'data.path',
               'data.resolution', 'data.channels', 'loss', 'one_stage_mode', 'model.name',
               'model.generator', 'model.discriminator', 'optimizer.g_lr',
               'optimizer.d_lr', 'optimizer.b1', 'optimizer.b2', 'optimizer.weight_clip',
               'z_dim', 'num_classes')


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def test_all_expected_configs_exist():
  assert EXPECTED <= set(NAMES)


@pytest.mark.parametrize('path', CONFIGS, ids=NAMES)
def test_config_has_common_keys_and_documents_its_command(path):
  config = config_base.load_config(path)
  for key in COMMON_KEYS:
    _get(config, key)
  assert config.stage == 'one'
  assert config.one_stage_mode == 'exact'
  assert config.model.name in models.available()
  name = os.path.basename(path)
  module_doc = open(path).read().split('"""')[1]
  assert f'python -m osgan_jax.main --config=configs/{name} --workdir=' in module_doc
  assert config.data.name in ('fashion_mnist', 'mnist', 'celeb_a', 'lsun_church', 'folder')


def test_paper_settings():
  cfg = {n: config_base.load_config(p) for n, p in zip(NAMES, CONFIGS)}
  assert cfg['dcgan_fashion_mnist'].data.name == 'fashion_mnist'
  assert cfg['dcgan_fashion_mnist'].batch_size == 64
  celeba = cfg['dcgan_celeba']
  assert (celeba.data.resolution, celeba.batch_size, celeba.model.generator.width,
          celeba.optimizer.g_lr, celeba.optimizer.b1) == (64, 128, 128, 2e-4, 0.5)
  assert celeba.loss == 'non_saturating' and celeba.model.discriminator.norm == 'group'
  assert cfg['dcgan_minimax_celeba'].loss == 'minimax'
  assert cfg['dcgan_minimax_celeba'].model.discriminator.norm == 'batch'
  assert cfg['wgan_celeba'].optimizer.weight_clip == 0.01
  assert cfg['wgan_celeba'].loss == 'wgan'
  assert cfg['hinge_celeba'].model.discriminator.spectral_norm
  assert cfg['hinge_celeba'].loss == 'hinge'
  assert cfg['lsgan_celeba'].loss == 'lsgan'
  assert cfg['relgan_celeba'].loss.startswith('relativistic')
  assert cfg['cgan_mnist'].num_classes == 10 and cfg['cgan_mnist'].loss == 'minimax'
  assert cfg['dcgan_lsun_church'].data.name == 'lsun_church'


def test_load_config_rejects_unknown_keys_and_wrong_types():
  path = os.path.join(REPO, 'configs', 'dcgan_fashion_mnist.py')
  config = config_base.load_config(path, {'data.resolution': 16, 'stage': 'two'})
  assert (config.data.resolution, config.stage) == (16, 'two')
  with pytest.raises(KeyError, match='nope'):
    config_base.load_config(path, {'nope': 1})
  with pytest.raises(KeyError, match='data.nope'):
    config_base.load_config(path, {'data.nope': 1})
  with pytest.raises(TypeError):
    config_base.load_config(path, {'batch_size': 'many'})


def _main(*args, timeout=300):
  cmd = [sys.executable, '-m', 'osgan_jax.main',
         f'--config={os.path.join(REPO, "configs", "dcgan_fashion_mnist.py")}', *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_main_rejects_unknown_config_key(tmp_path):
  result = _main(f'--workdir={tmp_path}', '--config.nope=1')
  assert result.returncode != 0
  assert "unknown config key 'nope' in --config.nope" in result.stderr
  assert 'Traceback' not in result.stderr
  result = _main(f'--workdir={tmp_path}', '--config.data.resolutoin=16')
  assert result.returncode != 0
  assert "unknown config key 'resolutoin'" in result.stderr
  assert 'Did you mean' in result.stderr and 'resolution' in result.stderr
  assert not os.listdir(tmp_path)  # nothing was started


def test_main_reports_data_errors_in_one_line(tmp_path):
  missing = tmp_path / 'no_such_folder'
  result = _main(f'--workdir={tmp_path / "run"}', '--config.data.name=folder',
                 f'--config.data.path={missing}')
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('osgan_jax.main:')]
  assert errors == [f'osgan_jax.main: error: data: image folder {missing} does not exist '
                    'or is not a directory (set data.path)']


def test_main_reports_a_missing_config_file_in_one_line(tmp_path):
  cmd = [sys.executable, '-m', 'osgan_jax.main', '--config=configs/no_such_config.py',
         f'--workdir={tmp_path}']
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  (line,) = [l for l in result.stderr.splitlines() if l.startswith('osgan_jax.main:')]
  assert 'configs/no_such_config.py' in line and 'No such file' in line
