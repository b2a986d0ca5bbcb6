"""End-to-end training: one run per architecture and stage, every config's train step
traced, artifacts, exact resume, SIGTERM, corrupt images, 8 devices == 1 device.

Runs are tiny (16x16 images, width 8, batch 8, a few steps) on fake data (a folder of
PNGs, or the offline Fashion-MNIST), so XLA compilation dominates; each compiled run is
checked for as much as possible.
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
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from osgan_jax.training import checkpoint, evaluators, loop
from osgan_jax import config as config_lib, tasks, train
from osgan_jax.tasks import gan as gan_lib
from osgan_jax.config import ConfigError
from helpers import (  # pylint: disable=import-error
    CONFIGS,
    HAVE_FASHION_MNIST,
    REPO,
    assert_trees_equal,
    checkpoint_steps,
    cli_flags,
    config_path,
    needs_fashion_mnist,
    read_metrics,
    tiny_config,
    tiny_overrides,
)

# The configs of the GAN task (the others, data-free distillation's, set a task).
CONFIG_NAMES = sorted(
    n
    for n in (
        os.path.splitext(os.path.basename(p))[0]
        for p in glob.glob(os.path.join(CONFIGS, '*.py'))
    )
    if config_lib.load_config(config_path(n)).get('task', 'gan') == 'gan'
)


@pytest.fixture(scope='module')
def folder(png_folder):
  """12 small RGB PNGs (non-square: the loader crops and resizes)."""
  return png_folder


@pytest.fixture(scope='module')
def corrupt_folder(make_png_folder):
  """6 of those images plus one corrupt PNG and one grayscale image."""
  return make_png_folder(6, corrupt=True, gray=True)


# ---------------------------------------------------- one run per architecture and stage

# The configs of an architecture differ in the loss, which changes no code but the loss
# function: every loss is checked exactly, with every kind of D, by test_losses,
# test_one_stage, test_penalties and test_gradcheck, and every config's train step is
# built and traced below. One compiled run per architecture and stage adds what is the
# same for every loss: the loop, the data, the optimisers, checkpoints and samples.
E2E_RUNS = {
    # ('dcgan', 'one'): hinge_celeba (spectral norm), the straight_run below, checked by
    # test_run_leaves_checkpoints_metrics_events_and_samples.
    ('dcgan', 'two'): 'wgan_celeba',  # weight clipping
    ('cgan', 'one'): 'cgan_mnist',
    ('cgan', 'two'): 'cgan_mnist',
    # ('stylegan2', 'one'): stylegan2_tiny, test_stylegan2_regularisers_ema_and_exact_resume.
    # FFHQ's config is the tiny one at other sizes: its run is in mixed precision
    # (float16 in the top two resolutions), as the paper's.
    ('stylegan2', 'two'): 'stylegan2_ffhq',
    ('r3gan', 'one'): 'r3gan_ffhq256',  # unconditional, bfloat16 stages
    ('r3gan', 'two'): 'r3gan_fashion_mnist',  # conditional
    # DFAD: tests/test_dfad.py's test_distillation_without_training_data_beats_chance
    # (one-stage) and test_distillation_resumes_bit_identically (two-stage).
}
TRAINED = {(name, stage) for (_, stage), name in E2E_RUNS.items()} | {
    ('hinge_celeba', 'one'),
    ('stylegan2_tiny', 'one'),
}
assert {name for name, _ in TRAINED} <= set(CONFIG_NAMES)
EXTRA = {
    'stylegan2_ffhq': {
        'model.generator.num_fp16_res': 2,
        'model.discriminator.num_fp16_res': 2,
        'model.generator.conv_clamp': 256.0,
        'model.discriminator.conv_clamp': 256.0,
    }
}


def _gan_and_models(config):
  g, d = gan_lib.create_models(config)
  return gan_lib.make_gan(config, g, d), g, d


def check_trained_run(config, state, workdir, steps=2, checkpoints=(2,)):
  """What every run of a GAN config leaves: its state, metrics, checkpoints, samples."""
  assert int(state.step) == steps
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(np.asarray(leaf)))
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == list(range(1, steps + 1))
  assert all(np.isfinite(r['loss_d']) and np.isfinite(r['loss_g']) for r in records)
  if config.stage == 'one':
    assert {'gamma_mean', 'gamma_min', 'gamma_max', 'n_exact'} <= set(records[-1])
  assert checkpoint_steps(workdir) == list(checkpoints)
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', f'step_{steps:06d}.png')))
  assert grid.ndim == (2 if config.data.channels == 1 else 3)
  if config.optimizer.weight_clip > 0:  # WGAN: every D weight clipped
    for leaf in jax.tree.leaves(state.params_d):
      assert np.max(np.abs(np.asarray(leaf))) <= config.optimizer.weight_clip
  if config.model.discriminator.get('spectral_norm'):  # SN vectors are state, updated
    init = jax.jit(gan_lib.make_init(config, *_gan_and_models(config)))(
        jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    )
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), init.model_state_d, state.model_state_d
    )
    assert all(jax.tree.leaves(changed))
  if config.num_classes:  # one class per column
    assert grid.shape[1] > grid.shape[0]


# StyleGAN2 two-stage is slow-tier (34 s): its phases run one-stage in
# test_stylegan2_regularisers_ema_and_exact_resume, the two-stage step in the others here.
@pytest.mark.e2e
@pytest.mark.parametrize(
    'arch,stage',
    [
        pytest.param(a, s, marks=pytest.mark.slow)
        if (a, s) == ('stylegan2', 'two')
        else (a, s)
        for a, s in E2E_RUNS
    ],
    ids=[f'{a}-{s}' for a, s in E2E_RUNS],
)
def test_every_architecture_trains_in_both_stages(arch, stage, folder, tmp_path):
  name = E2E_RUNS[arch, stage]
  config = tiny_config(name, folder, stage=stage, **EXTRA.get(name, {}))
  state = train.train_and_evaluate(config, str(tmp_path))
  check_trained_run(config, state, tmp_path)


def _abstract_batch(config):
  b, r, c = int(config.batch_size), int(config.data.resolution), config.data.channels
  batch = {'image': jax.ShapeDtypeStruct((b, r, r, c), jnp.float32)}
  if config.num_classes:
    batch['label'] = jax.ShapeDtypeStruct((b,), jnp.int32)
  return batch


@pytest.mark.parametrize(
    'name,stage',
    [(n, s) for n in CONFIG_NAMES for s in ('one', 'two') if (n, s) not in TRAINED],
)
@pytest.mark.long
def test_every_config_builds_and_traces_its_steps(name, stage, folder, tmp_path):
  """Every GAN config at tiny sizes in each stage that E2E_RUNS does not train: the
  task builds (networks, data, evaluators), and each phase of its step (the main step,
  lazy regularisers, the EMA) traces to a state of the same structure, shapes and
  dtypes, with its metrics. Tracing checks what a loss or a normalisation changes."""
  key = jax.random.PRNGKey(0)
  config = tiny_config(name, folder, stage=stage, **EXTRA.get(name, {}))
  task = tasks.build(config, str(tmp_path))
  state = loop.abstract_state(task, key)
  phases = task.make_phases(state)
  assert phases[0].name == 'main'
  for phase in phases:
    new, metrics = jax.eval_shape(
        phase.fn, state, _abstract_batch(config), key, jnp.int32(0)
    )
    assert jax.tree.structure(new) == jax.tree.structure(state), phase.name
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
      assert (a.shape, a.dtype) == (b.shape, b.dtype), phase.name
    assert all(m.shape == () for m in jax.tree.leaves(metrics)), phase.name
    if phase.name == 'main':
      assert {'loss_d', 'loss_g'} <= set(metrics)
      if stage == 'one':
        assert {'gamma_mean', 'gamma_min', 'gamma_max', 'n_exact'} <= set(metrics)
  if config.model.discriminator.get('spectral_norm'):  # power-iteration vectors
    assert jax.tree.leaves(state.model_state_d)
  assert not os.listdir(tmp_path)  # building a task writes nothing


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


@pytest.mark.e2e
def test_run_leaves_checkpoints_metrics_events_and_samples(straight_run):
  """Also the one-stage DCGAN run of E2E_RUNS (hinge loss, spectral norm)."""
  config, workdir, state = straight_run
  check_trained_run(config, state, workdir, steps=4, checkpoints=(2, 4))
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


@pytest.mark.e2e
def test_tensorboard_events_hold_scalars_and_images(straight_run):
  _, workdir, _ = straight_run
  tags = read_events(workdir)
  assert tags[('scalar', 'loss_d')] == [1, 2, 3, 4]
  assert tags[('scalar', 'gamma_mean')] == [1, 2, 3, 4]
  assert tags[('scalar', 'data_skipped_images')] == [1, 2, 3, 4]
  assert tags[('image', 'samples')] == [2, 4]


@pytest.mark.e2e
def test_corrupt_image_is_skipped_and_counted(straight_run):
  _, workdir, _ = straight_run
  skipped = [r['data_skipped_images'] for r in read_metrics(workdir)]
  # 8 files, one corrupt, batch 8: every batch meets it once.
  assert skipped == [1, 2, 3, 4]


@pytest.mark.e2e
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


@pytest.mark.e2e
@needs_fashion_mnist
def test_stylegan2_regularisers_ema_and_exact_resume(tmp_path):
  """The tiny StyleGAN2 config on Fashion-MNIST with lazy R1 every 2 and path length
  every 3 steps, and the EMA: the regularisers run at their intervals and update their
  player only, the EMA and pl_mean are in the state, the samples use the EMA, and a
  run resumed from its step-3 checkpoint equals the uninterrupted one bit for bit.
  Also the one-stage StyleGAN2 run of E2E_RUNS."""
  config = tiny_config(
      'stylegan2_tiny',
      num_train_steps=6,
      checkpoint_every_steps=3,
      keep_checkpoints=5,
      **{
          'evals.samples.every_steps': 6,
          'reg.r1_interval': 2,
          'reg.pl_interval': 3,
          'reg.r1_gamma': 1.0,
          'ema.half_life_kimg': 0.05,
          'ema.rampup': 0.0,
      },
  )
  straight = tmp_path / 'straight'
  state = jax.device_get(train.train_and_evaluate(config, str(straight)))
  check_trained_run(config, state, straight, steps=6, checkpoints=(3, 6))
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


@pytest.mark.e2e
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
          *cli_flags(overrides),
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


# slow: test_multihost.py::test_two_processes_equal_one_process compares 1 x 1, 1 x 4
# and 2 x 2 devices with BatchNorm D over the global batch (18 s).
@pytest.mark.slow
@pytest.mark.e2e
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


@pytest.mark.long
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
    if overrides.get('data.name') == 'fashion_mnist' and not HAVE_FASHION_MNIST:
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


@pytest.mark.e2e
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
