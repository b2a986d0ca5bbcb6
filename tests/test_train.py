"""End-to-end training: every config in both stages, artifacts, exact resume, SIGTERM,
corrupt images, 8 devices == 1 device.

Runs are tiny (16x16 images, width 8, batch 8, a few steps) on fake data (a folder of
PNGs written here, or the offline Fashion-MNIST), so XLA compilation dominates; each
compiled run is checked for as much as possible.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from PIL import Image

from osgan_jax.training import checkpoint, evaluators
from osgan_jax import config as config_lib, train
from osgan_jax.tasks import gan as gan_lib
from osgan_jax.config import ConfigError
from helpers import write_blob_pngs  # pylint: disable=import-error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'


def config_path(name):
  return os.path.join(REPO, 'configs', f'{name}.py')


# The configs this loop trains (the others, e.g. data-free distillation's, set a task).
CONFIG_NAMES = sorted(
    n
    for n in (
        os.path.splitext(os.path.basename(p))[0]
        for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))
    )
    if config_lib.load_config(config_path(n)).get('task', 'gan') == 'gan'
)

# Per architecture: the overrides that make its networks tiny.
TINY_MODEL = {
    'dcgan': {'model.generator.width': 8, 'model.discriminator.width': 8},
    'r3gan': {
        'model.generator.channel_base': 64,
        'model.generator.channel_max': 16,
        'model.discriminator.channel_base': 64,
        'model.discriminator.channel_max': 16,
        'model.generator.blocks_per_stage': 1,
        'model.discriminator.blocks_per_stage': 1,
    },
    'stylegan2': {
        'z_dim': 16,
        'model.generator.w_dim': 16,
        'model.generator.mapping_layers': 2,
        'model.generator.channel_base': 64,
        'model.generator.channel_max': 16,
        'model.discriminator.channel_base': 64,
        'model.discriminator.channel_max': 16,
    },
}


def tiny_overrides(name, folder, **extra):
  """Overrides that make any config a few-second run on CPU."""
  base = config_lib.load_config(config_path(name))
  overrides = {
      'batch_size': 8,
      'num_train_steps': 2,
      'log_every_steps': 1,
      'evals.samples.every_steps': 2,
      'checkpoint_every_steps': 1000,
      'evals.samples.num': 4,
      'progress_bar': False,
      'data.resolution': 16,
      'data.num_threads': 0,
      'evals.fid.every_steps': 0,  # the paper configs' FID-50k is tested on its own
      **TINY_MODEL[base.model.name],
  }
  if base.num_classes:
    overrides['evals.samples.num'] = 2 * base.num_classes
  if base.num_classes and os.path.exists(FASHION_MNIST):
    overrides['data.name'] = 'fashion_mnist'  # real labels
    overrides['data.path'] = ''
  else:
    overrides['data.name'] = 'folder'
    overrides['data.path'] = str(folder)
  overrides.update(extra)
  return overrides


def tiny_config(name, folder, **extra):
  return config_lib.load_config(config_path(name), tiny_overrides(name, folder, **extra))


def _cli(overrides):
  return [f'--config.{k}={v}' for k, v in overrides.items()]


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def checkpoint_steps(workdir):
  return sorted(
      int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()
  )


def assert_trees_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """12 small RGB PNGs (non-square: the loader crops and resizes)."""
  root = tmp_path_factory.mktemp('images')
  write_blob_pngs(root, 12)
  return root


@pytest.fixture(scope='module')
def corrupt_folder(folder, tmp_path_factory):
  """The same images plus one corrupt PNG and one grayscale image."""
  root = tmp_path_factory.mktemp('images_corrupt')
  for p in sorted(folder.iterdir())[:6]:
    (root / p.name).write_bytes(p.read_bytes())
  (root / '03_corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n definitely not a png')
  Image.fromarray(np.full((16, 16), 200, np.uint8), 'L').save(root / '04_gray.png')
  return root


# ----------------------------------------------------------------------- every config

# The StyleGAN2 configs differ only in sizes that tiny_overrides replaces: the tiny
# one runs both stages (and test_stylegan2_regularisers_ema_and_exact_resume more), the
# FFHQ one runs one-stage in mixed precision (bfloat16 in the top two resolutions).
EXTRA = {
    'stylegan2_ffhq': {
        'model.generator.num_fp16_res': 2,
        'model.discriminator.num_fp16_res': 2,
        'model.generator.conv_clamp': 256.0,
        'model.discriminator.conv_clamp': 256.0,
    }
}


# The R3GAN paper configs differ from r3gan_fashion_mnist (both stages) in sizes, data
# and bfloat16 stages: the FFHQ one runs one-stage (unconditional, mixed precision).
SKIP = {
    ('stylegan2_ffhq', 'two'),
    ('r3gan_cifar10', 'one'),
    ('r3gan_cifar10', 'two'),
    ('r3gan_ffhq256', 'two'),
}


@pytest.mark.parametrize(
    'name,stage',
    [(n, s) for n in CONFIG_NAMES for s in ('one', 'two') if (n, s) not in SKIP],
)
def test_every_config_trains(name, stage, folder, tmp_path):
  config = tiny_config(name, folder, stage=stage, **EXTRA.get(name, {}))
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(np.asarray(leaf)))
  records = read_metrics(tmp_path)
  assert [r['step'] for r in records] == [1, 2]
  assert all(np.isfinite(r['loss_d']) and np.isfinite(r['loss_g']) for r in records)
  if stage == 'one':
    assert {'gamma_mean', 'gamma_min', 'gamma_max', 'n_exact'} <= set(records[-1])
  assert checkpoint_steps(tmp_path) == [2]
  grid = np.asarray(Image.open(tmp_path / 'samples' / 'step_000002.png'))
  assert grid.ndim == (2 if config.data.channels == 1 else 3)

  base = config_lib.load_config(config_path(name))
  if base.optimizer.weight_clip > 0:  # WGAN: every D weight clipped
    for leaf in jax.tree.leaves(state.params_d):
      assert np.max(np.abs(np.asarray(leaf))) <= base.optimizer.weight_clip
  if base.model.discriminator.get('spectral_norm'):  # SN vectors are state, updated
    init = jax.jit(gan_lib.make_init(config, *_gan_and_models(config)))(
        jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    )
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), init.model_state_d, state.model_state_d
    )
    assert all(jax.tree.leaves(changed))
  if base.num_classes:  # one class per column
    assert grid.shape[1] > grid.shape[0]


def _gan_and_models(config):
  g, d = gan_lib.create_models(config)
  return gan_lib.make_gan(config, g, d), g, d


# ----------------------------------------------------- artifacts, resume, corrupt data


@pytest.fixture(scope='module')
def straight_run(corrupt_folder, tmp_path_factory):
  """4 uninterrupted steps, checkpoints at 2 and 4, on a folder with a corrupt image."""
  workdir = tmp_path_factory.mktemp('straight')
  config = tiny_config(
      'hinge_celeba',
      corrupt_folder,
      num_train_steps=4,
      checkpoint_every_steps=2,
      keep_checkpoints=5,
  )
  state = jax.device_get(train.train_and_evaluate(config, str(workdir)))
  return config, workdir, state


def test_run_leaves_checkpoints_metrics_events_and_samples(straight_run):
  _, workdir, state = straight_run
  assert int(state.step) == 4
  assert checkpoint_steps(workdir) == [2, 4]
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  for key in (
      'loss_d',
      'loss_g',
      'gamma_mean',
      'gamma_min',
      'gamma_max',
      'n_exact',
      'data_skipped_images',
  ):
    assert key in records[0]
  assert 'steps_per_sec' in records[-1] and 'images_per_sec' in records[-1]
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  for step in (2, 4):
    image = Image.open(os.path.join(workdir, 'samples', f'step_{step:06d}.png'))
    assert image.mode == 'RGB' and min(image.size) > 2 * 16
  assert json.load(open(os.path.join(workdir, 'config.json')))['loss'] == 'hinge'


def read_events(workdir):
  """{tag: [steps]} of the TensorBoard event files (TFRecord framing, no TensorBoard)."""
  import struct
  from tensorboardX.proto import event_pb2

  tags = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    with open(path, 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        kind = 'image' if value.HasField('image') else 'scalar'
        tags.setdefault((kind, value.tag), []).append(event.step)
  return tags


def test_tensorboard_events_hold_scalars_and_images(straight_run):
  _, workdir, _ = straight_run
  tags = read_events(workdir)
  assert tags[('scalar', 'loss_d')] == [1, 2, 3, 4]
  assert tags[('scalar', 'gamma_mean')] == [1, 2, 3, 4]
  assert tags[('scalar', 'data_skipped_images')] == [1, 2, 3, 4]
  assert tags[('image', 'samples')] == [2, 4]


def test_corrupt_image_is_skipped_and_counted(straight_run):
  _, workdir, _ = straight_run
  skipped = [r['data_skipped_images'] for r in read_metrics(workdir)]
  # 8 files, one corrupt, batch 8: every batch meets it once.
  assert skipped == [1, 2, 3, 4]


def test_resume_is_bit_identical(straight_run, tmp_path):
  config, straight_dir, straight_state = straight_run
  # The same command in a copy of the workdir whose last checkpoint is gone: it
  # resumes from step 2 and must reach the uninterrupted run's state exactly.
  import shutil

  workdir = tmp_path / 'resumed'
  shutil.copytree(straight_dir, workdir)
  shutil.rmtree(workdir / 'checkpoints' / '4')
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 4
  assert_trees_equal(jax.device_get(state), straight_state)
  # metrics.jsonl: the lines after step 2 were replaced, not duplicated; the skipped
  # count continues from the checkpoint.
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  assert [r['data_skipped_images'] for r in records] == [1, 2, 3, 4]
  # Running the finished command again does nothing.
  again = train.train_and_evaluate(config, str(workdir))
  assert_trees_equal(jax.device_get(again), straight_state)


# ----------------------------------------------------------------------------- StyleGAN2


def test_stylegan2_regularisers_ema_and_exact_resume(tmp_path):
  """The tiny StyleGAN2 config on Fashion-MNIST with lazy R1 every 2 and path length
  every 3 steps, and the EMA: the regularisers run at their intervals and update their
  player only, the EMA and pl_mean are in the state, the samples use the EMA, and a
  run resumed from its step-3 checkpoint equals the uninterrupted one bit for bit."""
  if not os.path.exists(FASHION_MNIST):
    pytest.skip(
        'needs the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)'
    )
  overrides = tiny_overrides(
      'stylegan2_tiny',
      None,
      num_train_steps=6,
      checkpoint_every_steps=3,
      keep_checkpoints=5,
      **{'evals.samples.every_steps': 6},
      **{
          'data.name': 'fashion_mnist',
          'data.path': '',
          'reg.r1_interval': 2,
          'reg.pl_interval': 3,
          'reg.r1_gamma': 1.0,
          'ema.half_life_kimg': 0.05,
          'ema.rampup': 0.0,
      },
  )
  config = config_lib.load_config(config_path('stylegan2_tiny'), overrides)
  straight = tmp_path / 'straight'
  state = jax.device_get(train.train_and_evaluate(config, str(straight)))
  assert int(state.step) == 6
  records = read_metrics(straight)
  r1_steps = [r['step'] for r in records if 'r1_penalty' in r]
  pl_steps = [r['step'] for r in records if 'pl_penalty' in r]
  assert r1_steps == [1, 3, 5] and pl_steps == [1, 4]  # iterations 0, 2, 4 / 0, 3
  # A half-life of 50 images at batch 8 (no ramp-up).
  np.testing.assert_allclose([r['ema_beta'] for r in records], 0.5 ** (8 / 50), rtol=1e-6)
  assert float(state.pl_mean) > 0
  assert int(optax_count(state.opt_state_g)) == 6 + 2  # main steps + 'Greg' steps
  assert int(optax_count(state.opt_state_d)) == 6 + 3  # main steps + 'Dreg' steps
  ema = jax.tree.leaves(state.ema_params_g)
  assert any(
      not np.array_equal(e, p) for e, p in zip(ema, jax.tree.leaves(state.params_g))
  )
  # The sample grid is drawn with the EMA parameters.
  generator, discriminator = gan_lib.create_models(config)
  gan = gan_lib.make_gan(config, generator, discriminator)
  sample = gan_lib.make_sampler(config, gan, config.evals.samples.num, 2)
  grid = lambda p: evaluators.image_grid(np.asarray(sample(p, state.model_state_g, 0)))[
      ..., 0
  ]
  saved = np.asarray(Image.open(straight / 'samples' / 'step_000006.png'), np.int32)
  assert np.abs(saved - grid(state.ema_params_g)).max() <= 1  # a rounding apart
  assert np.abs(saved - grid(state.params_g)).max() > 8

  import shutil

  resumed = tmp_path / 'resumed'
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '6')
  again = train.train_and_evaluate(config, str(resumed))
  assert_trees_equal(jax.device_get(again), state)


def optax_count(opt_state):
  import optax

  return optax.tree_utils.tree_get(opt_state, 'count')


# ------------------------------------------------------------------------------ SIGTERM


def test_sigterm_saves_then_resume_matches_uninterrupted(folder, tmp_path):
  name = 'dcgan_fashion_mnist'
  overrides = tiny_overrides(
      name,
      folder,
      num_train_steps=100_000,
      checkpoint_every_steps=100_000,
      **{'evals.samples.every_steps': 100_000},
  )
  workdir = tmp_path / 'interrupted'
  proc = subprocess.Popen(
      [
          sys.executable,
          '-m',
          'osgan_jax.main',
          f'--config={config_path(name)}',
          f'--workdir={workdir}',
          *_cli(overrides),
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  try:
    deadline = time.time() + 400
    while True:  # wait until a few steps have run, then preempt
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() < deadline, 'the run did not start'
      path = workdir / 'metrics.jsonl'
      if path.exists() and len(path.read_text().splitlines()) >= 3:
        break
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-3000:]
  assert 'Stopped by SIGTERM' in stderr
  (stopped_at,) = checkpoint_steps(workdir)  # the only checkpoint: the signal's
  assert 3 <= stopped_at < 100_000
  assert 'Traceback' not in stderr

  # Resume (same command, ending 2 steps later) == uninterrupted run of that length.
  overrides['num_train_steps'] = stopped_at + 2
  config = config_lib.load_config(config_path(name), overrides)
  resumed = jax.device_get(train.train_and_evaluate(config, str(workdir)))
  straight = jax.device_get(train.train_and_evaluate(config, str(tmp_path / 'straight')))
  assert int(resumed.step) == stopped_at + 2
  assert_trees_equal(resumed, straight)
  assert checkpoint_steps(workdir) == [stopped_at, stopped_at + 2]


# ------------------------------------------------------------------------- 8 devices

_MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + ' --xla_force_host_platform_device_count=8')
    import jax, numpy as np
    from osgan_jax import config as config_lib, train
    from osgan_jax.training import parallel
    assert len(jax.devices()) == 8, jax.devices()
    path, workdir, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    states = {}
    for n in (8, 1):
      config = config_lib.load_config(path, {**overrides, 'num_devices': n})
      state = train.train_and_evaluate(config, os.path.join(workdir, str(n)))
      if n == 8:
        shardings = {leaf.sharding.num_devices for leaf in jax.tree.leaves(state)}
        assert shardings == {8}, shardings
      states[n] = jax.device_get(state)
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64)
                                                          - np.asarray(b, np.float64)))),
                         states[8], states[1])
    print(json.dumps({'max_diff': max(jax.tree.leaves(diffs)),
                      'step': int(states[8].step)}))
""")


def test_eight_devices_equal_one_device(folder, tmp_path):
  """BatchNorm D and G, asymmetric loss: BN statistics are over the global batch.

  Without conv biases: a bias right before BatchNorm has a true gradient of zero (BN
  removes it), so Adam's first steps turn float round-off in it into updates of
  +-lr that differ between device counts (and change no output).
  """
  overrides = tiny_overrides(
      'dcgan_fashion_mnist',
      folder,
      batch_size=16,
      num_train_steps=3,
      **{
          'model.discriminator.norm': 'batch',
          'model.generator.use_bias': False,
          'model.discriminator.use_bias': False,
      },
  )
  result = subprocess.run(
      [
          sys.executable,
          '-c',
          _MULTI_DEVICE_SCRIPT,
          config_path('dcgan_fashion_mnist'),
          str(tmp_path),
          json.dumps(overrides),
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['step'] == 3
  assert out['max_diff'] < 1e-5, out


# ------------------------------------------------------------------------- small parts


def test_the_sampler_program_does_not_depend_on_the_seed(folder):
  """Runs that differ only in their seed share one compiled sampler: its key is an
  argument (as a constant it made a new program, and a compile, for every seed of a
  study), yet each seed still draws its own samples."""
  programs, images = [], []
  for seed in (0, 1):
    config = tiny_config('dcgan_fashion_mnist', folder, seed=seed)
    gan, g, d = _gan_and_models(config)
    state = jax.jit(gan_lib.make_init(config, gan, g, d))(jax.random.PRNGKey(0))
    sample = gan_lib.make_sampler(config, gan, 4, 3)
    args = (state.params_g, state.model_state_g, 0)
    programs.append(sample.func.lower(*sample.args, *args).as_text())
    images.append(np.asarray(sample(*args)))
  assert programs[0] == programs[1]
  assert not np.allclose(images[0], images[1])


def test_optimizers_follow_milestones_and_clip_d():
  config = config_lib.load_config(
      config_path('wgan_celeba'),
      {'optimizer.lr_milestones': (2, 4), 'optimizer.g_lr': 1e-3, 'optimizer.d_lr': 1.0},
  )
  opt_g, opt_d = gan_lib.make_optimizers(config)

  @jax.jit
  def run(params):
    state_g, state_d = opt_g.init(params), opt_d.init(params)
    out_g, out_d = [], []
    p_g = p_d = params
    for _ in range(6):
      u, state_g = opt_g.update({'w': np.ones(1, np.float32)}, state_g, p_g)
      p_g = jax.tree.map(lambda p, v: p + v, p_g, u)
      out_g.append(u['w'][0])
      u, state_d = opt_d.update({'w': -np.ones(1, np.float32)}, state_d, p_d)
      p_d = jax.tree.map(lambda p, v: p + v, p_d, u)
      out_d.append(p_d['w'][0])
    return jax.numpy.stack(out_g), jax.numpy.stack(out_d)

  updates_g, params_d = jax.device_get(run({'w': np.zeros(1, np.float32)}))
  # Adam with a constant gradient moves by lr per step: lr, lr, lr/10, lr/10, lr/100, ...
  np.testing.assert_allclose(
      -updates_g, 1e-3 * np.array([1, 1, 0.1, 0.1, 0.01, 0.01]), rtol=1e-4
  )
  # D's weights never leave [-0.01, 0.01] whatever its learning rate.
  np.testing.assert_allclose(params_d, 0.01, rtol=1e-6)


def test_image_grid_layout():
  images = np.stack([np.full((4, 5, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
  grid = evaluators.image_grid(images, ncol=2, pad=1, pad_value=7)
  assert grid.shape == (1 + 2 * 5, 1 + 2 * 6, 1) and grid.dtype == np.uint8
  assert grid[1, 1, 0] == 0 and grid[1, 7, 0] == 128 and grid[6, 1, 0] == 255
  assert grid[0, 0, 0] == 7 and grid[6, 7, 0] == 7  # padding and the empty cell


def test_invalid_settings_fail_before_any_work(folder, tmp_path):
  for overrides, message in (
      ({'stage': 'three'}, 'config.stage'),
      ({'loss': 'nope'}, 'config.loss'),
      ({'batch_size': 0}, 'batch_size'),
      (
          {'num_classes': 5, 'data.name': 'fashion_mnist', 'data.path': ''},
          'the data has 10 classes',
      ),
  ):
    if overrides.get('data.name') == 'fashion_mnist' and not os.path.exists(
        FASHION_MNIST
    ):
      continue
    with pytest.raises(ConfigError, match=message):
      train.train_and_evaluate(
          tiny_config('dcgan_fashion_mnist', folder, **overrides), str(tmp_path)
      )
  config = tiny_config('dcgan_fashion_mnist', folder)
  with config.model.generator.unlocked():
    config.model.generator.z_dim = 7  # model kwargs may not contradict top-level keys
  with pytest.raises(ConfigError, match='conflicts with config.z_dim'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------- FID / KID


def test_fid_and_kid_logged_stats_cached_best_checkpoint_kept(
    folder, tmp_path, monkeypatch
):
  """FID/KID every 2 steps and at the end, on 8 generated vs 8 real 1-channel images."""
  from osgan_jax.metrics import fid as fid_lib
  from osgan_jax.metrics import inception

  if inception.default_weights_path() is None:
    pytest.skip(f'Inception weights missing: {inception.INSTALL_HINT}')
  monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path / 'weights_cache'))
  workdir = tmp_path / 'run'
  fid_keys = {
      'evals.fid.every_steps': 2,
      'evals.fid.num_samples': 8,
      'evals.fid.num_real': 8,
      'evals.fid.batch_size': 8,
      'evals.fid.kid': True,
  }
  config = tiny_config('dcgan_fashion_mnist', folder, num_train_steps=2, **fid_keys)
  assert config.data.channels == 1  # the extractor replicates grey to RGB
  train.train_and_evaluate(config, str(workdir))

  def fid_records():
    return [r for r in read_metrics(workdir) if 'fid' in r]

  records = fid_records()
  assert [r['step'] for r in records] == [2]
  for r in records:
    assert {'fid', 'kid_mean', 'kid_std'} <= set(r)
    assert all(np.isfinite(r[k]) for k in ('fid', 'kid_mean', 'kid_std'))
    assert r['fid'] > 0
  stats_path = workdir / evaluators.FID_STATS_FILE
  stats = fid_lib.load_stats(str(stats_path))
  assert stats['n'] == 8 and stats['features'].shape == (8, 2048)
  stamp = stats_path.stat().st_mtime_ns

  best = workdir / checkpoint.BEST_DIR
  with open(best / checkpoint.BEST_FILE) as f:
    best_record = json.load(f)
  best_step = min(records, key=lambda r: r['fid'])['step']
  assert best_record['step'] == best_step and best_record['metric'] == 'fid'
  assert np.isclose(best_record['value'], min(r['fid'] for r in records))
  assert sorted(int(d) for d in os.listdir(best) if d.isdigit()) == [best_step]

  # Resume: the cached real statistics are reused; FID at the end (step 3).
  config = tiny_config('dcgan_fashion_mnist', folder, num_train_steps=3, **fid_keys)
  train.train_and_evaluate(config, str(workdir))
  assert stats_path.stat().st_mtime_ns == stamp
  records = fid_records()
  assert [r['step'] for r in records] == [2, 3]
  with open(best / checkpoint.BEST_FILE) as f:
    best_record = json.load(f)
  assert np.isclose(best_record['value'], min(r['fid'] for r in records))
  assert sorted(int(d) for d in os.listdir(best) if d.isdigit()) == [best_record['step']]
