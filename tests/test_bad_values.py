"""Every bad value a user can give is one line that names it, before any work: config
keys (the key table's checks), command flags, config files, data files. Each list has
the values a probe of the commands found, then held-out values of the same kinds."""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from osgan_jax import config as config_lib
from osgan_jax import data
from osgan_jax.data import prepared

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'configs', 'dcgan_fashion_mnist.py')

CONFIG_VALUES = [  # (override, the key and bound the message names)
    ({'optimizer.g_lr': -1e-4}, 'config.optimizer.g_lr must be >= 0'),
    ({'optimizer.b1': 1.5}, r'config.optimizer.b1 must be in [0, 1)'),
    ({'optimizer.eps': -1.0}, 'config.optimizer.eps must be > 0'),
    ({'optimizer.weight_clip': -0.01}, 'config.optimizer.weight_clip must be >= 0'),
    (
        {'optimizer.lr_milestones': ('5', 'abc')},
        'config.optimizer.lr_milestones must be integers',
    ),
    ({'optimizer.lr_decay': -1.0}, 'config.optimizer.lr_decay must be > 0'),
    ({'optimizer.b2': -0.5}, r'config.optimizer.b2 must be in [0, 1)'),
    ({'z_dim': -1}, 'config.z_dim must be >= 0'),
    # Held out: the same kinds, other keys.
    ({'batch_size': -4}, 'config.batch_size must be positive'),
    ({'log_every_steps': 0}, 'config.log_every_steps must be positive'),
    ({'keep_checkpoints': 0}, 'config.keep_checkpoints must be positive'),
    ({'num_classes': -2}, 'config.num_classes must be >= 0'),
    ({'data.channels': 2}, 'config.data.channels must be one of 1, 3'),
    ({'data.resolution': 0}, 'config.data.resolution must be positive'),
    ({'data.interpolation': 'cubic'}, 'config.data.interpolation must be one of'),
    ({'data.center_crop': -5}, 'config.data.center_crop must be >= -1'),
    ({'reg.r1_gamma': -1.0}, 'config.reg.r1_gamma must be >= 0'),
    ({'reg.pl_interval': 0}, 'config.reg.pl_interval must be positive'),
    ({'reg.pl_decay': 2.0}, 'config.reg.pl_decay must be in [0, 1]'),
    ({'ema.half_life_kimg': -5.0}, 'config.ema.half_life_kimg must be >= 0'),
    ({'penalty.gp': -1.0}, 'config.penalty.gp must be >= 0'),
    ({'schedule.steps': -3}, 'config.schedule.steps must be >= 0'),
    ({'divergence.max_rollbacks': -1}, 'config.divergence.max_rollbacks must be >= 0'),
    ({'one_stage_bucket': 1.5}, 'config.one_stage_bucket must be in [0, 1]'),
    *(
        ({'one_stage_bucket': ladder}, 'config.one_stage_bucket must be in [0, 1], or an')
        for ladder in ((0.5, 0.25), (), (0.25, 1.5), (0.0, 0.5), '0.25')
    ),
    ({'evals.fid.num_samples': 1}, 'config.evals.fid.num_samples must be >= 2'),
    ({'evals.fid.num_real': 0}, 'config.evals.fid.num_real must be >= 2 or -1'),
    ({'evals.fid.batch_size': 0}, 'config.evals.fid.batch_size must be positive'),
    ({'evals.samples.num': 0}, 'config.evals.samples.num must be positive'),
    ({'teacher.lr': 0.0}, 'config.teacher.lr must be > 0'),
    ({'dfad.student_steps': 0}, 'config.dfad.student_steps must be positive'),
    ({'stage': 'three'}, 'config.stage must be one of one, two, official_two'),
    ({'loss': 'nope'}, 'config.loss: unknown loss'),
]


@pytest.mark.parametrize('overrides,message', CONFIG_VALUES, ids=lambda v: str(v)[:40])
def test_bad_config_values_name_their_key(overrides, message):
  config = config_lib.load_config(CONFIG, overrides)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  assert str(e.value).startswith(message.replace('\\', '')), str(e.value)
  assert '\n' not in str(e.value)


def run(module, *args, cwd=REPO):
  env = dict(os.environ)  # importable from any cwd, installed or not
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return subprocess.run(
      [sys.executable, '-m', f'osgan_jax.{module}', *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def one_line(result, module, status, needle):
  """The one error line of ``module``, its exit status, and no traceback."""
  assert result.returncode == status, (result.returncode, result.stderr[-2000:])
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  (line,) = [
      l for l in result.stderr.splitlines() if l.startswith(f'osgan_jax.{module}:')
  ]
  assert needle in line, line


@pytest.fixture(scope='module')
def bad_config_files(tmp_path_factory):
  root = tmp_path_factory.mktemp('configs')
  files = {
      'syntax': 'def get_config(:\n  pass\n',
      'raises': 'def get_config():\n  raise RuntimeError("boom")\n',
      'no_get_config': 'X = 1\n',
      'returns_none': 'def get_config():\n  return None\n',
      'imports_nothing_known': 'import no_such_module\n',
  }
  for name, text in files.items():
    (root / f'{name}.py').write_text(text)
  return root


@pytest.mark.parametrize(
    'name,needle',
    [
        ('syntax', 'line 1: syntax error'),
        ('raises', 'get_config() raised RuntimeError: boom'),
        ('no_get_config', 'defines no get_config()'),
        ('returns_none', 'get_config() returned NoneType'),
        ('imports_nothing_known', 'failed to load (ModuleNotFoundError'),
    ],
)
def test_broken_config_files(bad_config_files, tmp_path, name, needle):
  for module in ('main', 'summary'):
    args = [f'--config={bad_config_files / name}.py']
    result = run(
        module, *args, *([f'--workdir={tmp_path}/w'] if module == 'main' else [])
    )
    one_line(result, module, 2, needle)
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.parametrize(
    'module,args,status,needle',
    [
        ('main', [f'--config={CONFIG}', '--workdir='], 2, '--workdir is required'),
        (
            'main',
            [f'--config={CONFIG}', '--workdir=/tmp/x', 'extra'],
            2,
            'unexpected arguments: extra',
        ),
        (
            'main',
            [f'--config={CONFIG}', '--workdir=/tmp/x', '--config.optimizer.b1=1.5'],
            1,
            'config.optimizer.b1 must be in [0, 1)',
        ),
        (
            'main',
            [
                f'--config={CONFIG}',
                '--workdir=w',
                '--config.optimizer.lr_milestones=(5,abc)',
            ],
            1,
            'config.optimizer.lr_milestones must be integers >= 0',
        ),
        (
            'summary',
            [f'--config={CONFIG}', '--batch_size=0'],
            2,
            '--batch_size must be >= 1',
        ),
        ('summary', [f'--config={CONFIG}', '--g_depth=-1'], 2, '--g_depth must be >= 1'),
        (
            'summary',
            [f'--config={CONFIG}', '--config.z_dim=0'],
            1,
            'config.z_dim must be positive',
        ),
        (
            'fid',
            ['--real', REPO, '--fake', REPO, '--kid-subset-size', '0'],
            2,
            '--kid-subset-size must be >= 1',
        ),
        (
            'launch',
            ['--num_processes=1', '--', '/no/such/command'],
            1,
            'cannot start /no/such/command',
        ),
        (
            'prepare_data',
            [
                '--source=fashion_mnist',
                '--resolution=8',
                '--channels=1',
                '--out=/tmp/x',
                '--center_crop=-5',
            ],
            1,
            '--center_crop must be >= -1',
        ),
        # Held out.
        ('summary', [f'--config={CONFIG}', '--d_depth=0'], 2, '--d_depth must be >= 1'),
        (
            'fid',
            ['--real', REPO, '--fake', REPO, '--kid-subsets', '-1'],
            2,
            '--kid-subsets must be >= 1',
        ),
        (
            'gradcheck',
            ['--loss=hinge', '--disc=mlp', 'extra'],
            2,
            'unexpected arguments: extra',
        ),
        (
            'prepare_data',
            ['--source=fashion_mnist', '--resolution=8', '--channels=2', '--out=/tmp/x'],
            1,
            '--channels must be 1 or 3',
        ),
        (
            'launch',
            ['--num_processes=0', '--', 'true'],
            2,
            '--num_processes must be >= 1',
        ),
    ],
)
@pytest.mark.long
def test_bad_command_lines(tmp_path, module, args, status, needle):
  one_line(run(module, *args, cwd=str(tmp_path)), module, status, needle)


def test_multihost_without_a_cluster_is_one_line(tmp_path):
  result = run(
      'main', f'--config={CONFIG}', f'--workdir={tmp_path}/w', '--config.multihost=True'
  )
  one_line(
      result,
      'main',
      1,
      'config.multihost=True (or $OSGAN_MULTIHOST=1) but JAX found no cluster',
  )


# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    'header,needle',
    [
        (struct.pack('>III', 60000, 28, 2**31 - 1), 'IDX file truncated'),  # claims ~3 PB
        (struct.pack('>III', 0, 28, 28), 'empty dimension'),
    ],
)
def test_idx_files_with_a_wrong_header(tmp_path, header, needle):
  """Fashion-MNIST's file layout with 10 images whose image header lies."""
  images = struct.pack('>I', 0x803) + header + bytes(10 * 28 * 28)
  labels = struct.pack('>II', 0x801, 10) + bytes(10)
  for name, raw in (
      ('train-images-idx3-ubyte.gz', images),
      ('train-labels-idx1-ubyte.gz', labels),
  ):
    with gzip.open(tmp_path / name, 'wb') as f:
      f.write(raw)
  cfg = data.DataConfig(
      {'name': 'fashion_mnist', 'path': str(tmp_path), 'resolution': 16, 'channels': 1}
  )
  with pytest.raises(data.DataError, match=needle):
    it = data.make_iterator(cfg, 4, seed=0)
    next(it)


def test_a_folder_of_images_far_smaller_than_the_resolution(tmp_path):
  for i in range(3):
    Image.new('RGB', (1, 1), (80 * i, 0, 0)).save(tmp_path / f'{i}.png')
  cfg = data.DataConfig(
      {
          'name': 'folder',
          'path': str(tmp_path),
          'resolution': 32,
          'channels': 3,
          'num_threads': 0,
      }
  )
  with pytest.raises(data.DataError, match='none of its 3 images could be read'):
    next(data.make_iterator(cfg, 2, seed=0))


def test_a_flipped_byte_inside_prepared_images_is_found(tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(40):
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8)).save(folder / f'{i}.png')
  out = str(tmp_path / 'prepared')
  prepared.prepare(f'folder:{folder}', out, resolution=16, channels=3, progress_bar=False)
  assert run('prepare_data', '--verify', f'--out={out}').returncode == 0
  path = os.path.join(out, 'images.u8')
  with open(path, 'r+b') as f:  # a byte in the middle: not the first or last image
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0x40]))
  cfg = data.DataConfig(
      {'name': 'prepared', 'path': out, 'resolution': 16, 'channels': 3}
  )
  with pytest.raises(data.DataError, match='do not match their checksum'):
    data.make_iterator(cfg, 4, seed=0)
  one_line(
      run('prepare_data', '--verify', f'--out={out}'),
      'prepare_data',
      1,
      'do not match their checksum',
  )
  with open(os.path.join(out, 'meta.json')) as f:
    assert len(json.load(f)['blocks']) == 1
