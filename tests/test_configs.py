"""Config files and the command line: every config loads, has the common keys and its
command; an unknown key and missing data are one-line errors, not tracebacks."""

import glob
import os
import subprocess
import sys

import pytest

from osgan_jax import config as config_lib, models
from helpers import REPO, config_path  # pylint: disable=import-error

CONFIGS = sorted(glob.glob(config_path('*')))
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in CONFIGS]
EXPECTED = {
    'dcgan_fashion_mnist',
    'dcgan_mnist',
    'dcgan_celeba',
    'dcgan_minimax_celeba',
    'wgan_celeba',
    'lsgan_celeba',
    'hinge_celeba',
    'relgan_celeba',
    'cgan_mnist',
    'dcgan_lsun_church',
    'stylegan2_ffhq',
    'stylegan2_tiny',
    'r3gan_fashion_mnist',
    'r3gan_cifar10',
    'r3gan_ffhq256',
}
COMMON_KEYS = (
    'stage',
    'seed',
    'batch_size',
    'num_train_steps',
    'log_every_steps',
    'checkpoint_every_steps',
    'evals.samples.every_steps',
    'data.name',
    'data.path',
    'data.resolution',
    'data.channels',
    'loss',
    'one_stage_mode',
    'model.name',
    'model.generator',
    'model.discriminator',
    'optimizer.g_lr',
    'optimizer.d_lr',
    'optimizer.b1',
    'optimizer.b2',
    'optimizer.weight_clip',
    'z_dim',
    'num_classes',
)


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def test_all_expected_configs_exist():
  assert EXPECTED <= set(NAMES)


def _is_gan(path):
  return config_lib.load_config(path).get('task', 'gan') == 'gan'


GAN_CONFIGS = [p for p in CONFIGS if _is_gan(p)]
GAN_NAMES = [os.path.splitext(os.path.basename(p))[0] for p in GAN_CONFIGS]


@pytest.mark.parametrize('path', GAN_CONFIGS, ids=GAN_NAMES)
def test_config_has_common_keys_and_documents_its_command(path):
  config = config_lib.load_config(path)
  for key in COMMON_KEYS:
    _get(config, key)
  assert config.stage == 'one'
  assert config.one_stage_mode == 'exact'
  assert config.model.name in models.available()
  name = os.path.basename(path)
  module_doc = open(path).read().split('"""')[1]
  assert f'python -m osgan_jax.main --config=configs/{name} --workdir=' in module_doc
  assert config.data.name in (
      'fashion_mnist',
      'mnist',
      'cifar10',
      'celeb_a',
      'lsun_church',
      'folder',
  )


def test_paper_settings():
  cfg = {n: config_lib.load_config(p) for n, p in zip(NAMES, CONFIGS)}
  assert cfg['dcgan_fashion_mnist'].data.name == 'fashion_mnist'
  assert cfg['dcgan_fashion_mnist'].batch_size == 64
  celeba = cfg['dcgan_celeba']
  assert (
      celeba.data.resolution,
      celeba.batch_size,
      celeba.model.generator.width,
      celeba.optimizer.g_lr,
      celeba.optimizer.b1,
  ) == (64, 128, 128, 2e-4, 0.5)
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
  ffhq = cfg['stylegan2_ffhq']
  assert (ffhq.model.name, ffhq.data.resolution, ffhq.batch_size, ffhq.loss) == (
      'stylegan2',
      1024,
      32,
      'non_saturating',
  )
  assert (
      ffhq.optimizer.g_lr,
      ffhq.optimizer.b1,
      ffhq.optimizer.b2,
      ffhq.optimizer.eps,
  ) == (0.002, 0.0, 0.99, 1e-8)
  assert (
      ffhq.reg.r1_gamma,
      ffhq.reg.r1_interval,
      ffhq.reg.pl_weight,
      ffhq.reg.pl_interval,
      ffhq.reg.pl_decay,
  ) == (10.0, 16, 2.0, 4, 0.01)
  assert ffhq.ema.half_life_kimg == 10.0 and ffhq.model.generator.style_mixing_prob == 0.9
  tiny = cfg['stylegan2_tiny']
  assert (tiny.data.name, tiny.data.resolution, tiny.data.channels) == (
      'fashion_mnist',
      32,
      1,
  )


def test_lazy_regularisation_corrects_adam():
  """The official mb_ratio correction: lr * k/(k+1), beta ** (k/(k+1)) per player."""
  import jax.numpy as jnp
  import numpy as np
  from osgan_jax.tasks import gan

  config = config_lib.load_config(config_path('stylegan2_ffhq'))
  opt_g, opt_d = gan.make_optimizers(config)
  params = {'w': jnp.zeros(3)}
  grads = {'w': jnp.array([1.0, -2.0, float('nan')])}
  for opt, k in ((opt_g, 4), (opt_d, 16)):
    updates, _ = opt.update(grads, opt.init(params), params)
    # Adam's first step is -lr * sign(g) (bias-corrected moments); NaN -> 0 first.
    np.testing.assert_allclose(
        updates['w'], [-0.002 * k / (k + 1), 0.002 * k / (k + 1), 0.0], rtol=1e-5
    )
  config = config_lib.load_config(
      config_path('stylegan2_ffhq'),
      {'reg.pl_weight': 0.0, 'optimizer.nan_to_num': False},
  )
  opt_g, _ = gan.make_optimizers(config)
  updates, _ = opt_g.update(grads, opt_g.init(params), params)
  np.testing.assert_allclose(updates['w'][:2], [-0.002, 0.002], rtol=1e-5)
  assert np.isnan(updates['w'][2])


@pytest.mark.parametrize('path', GAN_CONFIGS, ids=GAN_NAMES)
@pytest.mark.long
def test_summary_of_every_config(path):
  """``python -m osgan_jax.summary --config=...``'s totals are the parameter counts of
  the networks training builds (via eval_shape: no memory even at 1024)."""
  import contextlib
  import io
  import json
  import jax
  from osgan_jax.tasks import gan
  from osgan_jax import summary

  config = config_lib.load_config(path)
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    totals = summary.summarize_config(config)
  assert json.loads(buf.getvalue().strip().splitlines()[-1]) == totals
  init = gan.make_init(
      config, gan.make_gan(config, *gan.create_models(config)), *gan.create_models(config)
  )
  state = jax.eval_shape(init, jax.random.PRNGKey(0))
  count = lambda t: sum(x.size for x in jax.tree.leaves(t))
  assert totals['G'] == count(state.params_g) and totals['D'] == count(state.params_d)
  if config.model.name == 'stylegan2':
    assert totals['G_mapping'] + totals['G_synthesis'] == totals['G']


def test_load_config_rejects_unknown_keys_and_wrong_types():
  path = config_path('dcgan_fashion_mnist')
  config = config_lib.load_config(path, {'data.resolution': 16, 'stage': 'two'})
  assert (config.data.resolution, config.stage) == (16, 'two')
  with pytest.raises(KeyError, match='nope'):
    config_lib.load_config(path, {'nope': 1})
  with pytest.raises(KeyError, match='data.nope'):
    config_lib.load_config(path, {'data.nope': 1})
  with pytest.raises(TypeError):
    config_lib.load_config(path, {'batch_size': 'many'})


def test_one_stage_bucket_takes_a_number_or_a_ladder():
  """A fraction or an ascending list of them, from a config override or the command
  line; each config holds its own value (ml_collections would type the field)."""
  from absl import flags
  from ml_collections import config_flags
  from osgan_jax.tasks import gan as gan_lib

  path = config_path('dcgan_fashion_mnist')
  for value in (0.25, 0, [0.125, 0.5], (0.25,)):
    config = config_lib.load_config(path, {'one_stage_bucket': value})
    config_lib.validate(config)
    assert config.one_stage_bucket == value
  assert config_lib.load_config(path).one_stage_bucket == (0.125, 0.25, 0.5)
  for arg, value in (('0.125,0.5', (0.125, 0.5)), ('0.25', 0.25), ('[0.5,1]', [0.5, 1])):
    argv = ['main', f'--config={path}', f'--config.one_stage_bucket={arg}']
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        'config', path, flag_values=flag_values, sys_argv=argv
    )
    flag_values(argv)
    assert flag_values.config.one_stage_bucket == value
  config = config_lib.load_config(path, {'one_stage_bucket': [0.25, 1]})
  generator, discriminator = gan_lib.create_models(config)
  gan = gan_lib.make_gan(config, generator, discriminator)
  assert gan.exact_bucket == (0.25, 1.0)  # fractions: 1 is the whole batch, not one


def _main(*args, timeout=300):
  cmd = [
      sys.executable,
      '-m',
      'osgan_jax.main',
      f'--config={config_path("dcgan_fashion_mnist")}',
      *args,
  ]
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
  result = _main(
      f'--workdir={tmp_path / "run"}',
      '--config.data.name=folder',
      f'--config.data.path={missing}',
      '-v=1',  # the malloc line is DEBUG
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('osgan_jax.main:')]
  assert errors == [
      f'osgan_jax.main: error: data: image folder {missing} does not exist '
      'or is not a directory (set data.path)'
  ]
  # On this CPU-only install main applied the malloc settings, before JAX had started
  # (else it would refuse); at -v=1 it says so.
  assert 'host_memory: freed memory stays mapped' in result.stderr
  assert 'already started' not in result.stderr
  # A config error names its key once (not 'config: config.stage ...').
  result = _main(
      f'--workdir={tmp_path / "run"}', '--config.stage=three', '--tune_malloc=off', '-v=1'
  )
  assert result.returncode == 1
  assert 'host_memory' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('osgan_jax.main:')]
  assert errors == [
      'osgan_jax.main: error: config.stage must be one of one, two, official_two, '
      "got 'three'"
  ]


def test_main_reports_a_missing_config_file_in_one_line(tmp_path):
  cmd = [
      sys.executable,
      '-m',
      'osgan_jax.main',
      '--config=configs/no_such_config.py',
      f'--workdir={tmp_path}',
  ]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  (line,) = [l for l in result.stderr.splitlines() if l.startswith('osgan_jax.main:')]
  assert 'configs/no_such_config.py' in line and 'No such file' in line
