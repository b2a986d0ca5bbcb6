"""``python -m osgan_jax.generate``: a trained run's (or an official pickle's) images by
seed. After a tiny conditional StyleGAN2 run: the folder, grid and npz forms, one image
per seed whatever the batch and device count, truncation towards the tracked W
average, noise modes, the best checkpoint and the one-line errors; an official pickle's
seed gives the reference ``generate.py``'s image."""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image

from osgan_jax import generate, train
from osgan_jax.tasks import trained
from osgan_jax.training import checkpoint
from helpers import REPO, tiny_config  # pylint: disable=import-error

OFFICIAL = os.path.join(REPO, 'tests', 'data', 'official')
RTOL = 1e-4  # as test_official_weights: max |ours - official| / max |official|


def official(name):
  return os.path.join(OFFICIAL, f'{name}.pkl'), np.load(
      os.path.join(OFFICIAL, f'{name}.npz')
  )


def run_command(capsys, *argv):
  """``generate.main(argv)``: (exit status, stdout, stderr)."""
  code = generate.main([str(a) for a in argv])
  out = capsys.readouterr()
  return code, out.out, out.err


def npz_images(capsys, tmp_path, *argv, name='out'):
  code, _, err = run_command(capsys, *argv, '--format=npz', f'--outdir={tmp_path / name}')
  assert code == 0, err
  with np.load(tmp_path / name / trained.NPZ_FILE) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope='module')
def run(png_folder, tmp_path_factory):
  """One step of a conditional (3 classes) tiny StyleGAN2 with G's EMA."""
  workdir = tmp_path_factory.mktemp('stylegan2_run')
  config = tiny_config(
      'stylegan2_tiny',
      png_folder,
      num_train_steps=1,
      num_classes=3,
      batch_size=4,
      **{'evals.samples.every_steps': 0, 'reg.r1_gamma': 0.0, 'reg.pl_weight': 0.0},
  )
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


# ------------------------------------------------------------------------------- fast


def test_seed_lists():
  assert trained.parse_seeds('0-3,7, 9-10') == [0, 1, 2, 3, 7, 9, 10]
  assert trained.parse_seeds('5') == [5]
  for bad, says in (
      ('3-1', 'is empty'),
      ('a', 'expected numbers'),
      ('1,,2', 'expected numbers'),
      ('-1', 'expected numbers'),
      (str(2**32), 'NumPy seeds are 32-bit'),
  ):
    with pytest.raises(trained.LoadError, match=says):
      trained.parse_seeds(bad)


def test_a_seed_has_the_reference_latent():
  """As NVlabs' generate.py: ``np.random.RandomState(seed).randn(1, z_dim)``."""
  z = trained.latents([7, 3], 5)
  assert z.dtype == np.float32 and z.shape == (2, 5)
  np.testing.assert_array_equal(
      z[0], np.random.RandomState(7).randn(1, 5)[0].astype(np.float32)
  )
  np.testing.assert_array_equal(
      z[1], np.random.RandomState(3).randn(1, 5)[0].astype(np.float32)
  )


# ------------------------------------------------------------------ a trained workdir


@pytest.mark.e2e
@pytest.mark.long
def test_folder_grid_and_npz_forms(run, tmp_path, capsys):
  out, grid = tmp_path / 'pngs', tmp_path / 'sub' / 'grid.png'
  code, stdout, err = run_command(
      capsys,
      f'--workdir={run}',
      '--seeds=0-4',
      '--classes=0,2',
      f'--outdir={out}',
      f'--grid={grid}',
      '--batch=2',
  )
  assert code == 0, err
  assert 'step 1' in stdout and 'G_ema' in stdout
  names = sorted(os.listdir(out))
  assert names == sorted(f'seed{s:04d}_class{c}.png' for s in range(5) for c in (0, 2))
  with Image.open(grid) as im:  # a row per class, 16x16 grey images, 2-pixel padding
    assert (im.mode, im.size) == ('L', (2 + 5 * 18, 2 + 2 * 18))
  raw = npz_images(
      capsys, tmp_path, f'--workdir={run}', '--seeds=0-4', '--classes=0,2', '--batch=2'
  )
  assert raw['images'].dtype == np.float32 and raw['images'].shape == (10, 16, 16, 1)
  assert list(raw['seeds']) == [0, 1, 2, 3, 4] * 2
  assert list(raw['labels']) == [0] * 5 + [2] * 5
  # The PNGs are the npz's images, quantised.
  with Image.open(out / 'seed0003_class2.png') as im:
    png = np.asarray(im)
  expected = np.clip(np.rint((raw['images'][8, ..., 0] + 1) * 127.5), 0, 255)
  np.testing.assert_array_equal(png, expected.astype(np.uint8))
  # One class (or none: seed s gets class s % 3): seedNNNN.png.
  code, _, err = run_command(
      capsys,
      f'--workdir={run}',
      '--seeds=2,4',
      '--batch=2',
      f'--outdir={tmp_path / "one"}',
  )
  assert code == 0, err
  assert sorted(os.listdir(tmp_path / 'one')) == ['seed0002.png', 'seed0004.png']


@pytest.mark.e2e
@pytest.mark.long
def test_a_seed_gives_its_image_alone_or_in_a_batch(run):
  """Latent and random noise are keyed by the seed: seed 5 alone (in a padded batch) is
  seed 5 among ten (other batch sizes and device counts: test_batch_sizes_devices_and_noise).
  """
  loaded = trained.load_workdir(run)
  assert (loaded.step, loaded.ema, loaded.num_classes) == (1, True, 3)
  sampler = trained.Sampler(loaded, 4, noise_mode='random')
  many = sampler(range(10), [1] * 10)
  np.testing.assert_array_equal(sampler([5], [1])[0], many[5])
  assert np.abs(many[0] - many[1]).max() > 1e-2  # seeds differ
  np.testing.assert_array_equal(sampler([5, 5], [1, 2])[0], many[5])  # and its class
  assert np.abs(sampler([5], [2])[0] - many[5]).max() > 1e-3


@pytest.mark.e2e
@pytest.mark.long
def test_truncation_towards_the_tracked_w_average(run, tmp_path, capsys):
  """psi 1 is no truncation, psi 0.5 changes the images, psi 0 maps every latent of a
  class to one image (the W average's; constant noise)."""
  args = (f'--workdir={run}', '--seeds=0-3', '--classes=1', '--batch=2')
  plain = npz_images(capsys, tmp_path, *args, name='plain')['images']
  assert np.abs(plain - plain[:1]).max() > 1e-2
  one = npz_images(capsys, tmp_path, *args, '--trunc=1', name='one')['images']
  np.testing.assert_array_equal(one, plain)
  half = npz_images(capsys, tmp_path, *args, '--trunc=0.5', name='half')['images']
  assert np.abs(half - plain).max() > 1e-2
  zero = npz_images(capsys, tmp_path, *args, '--trunc=0', name='zero')['images']
  np.testing.assert_allclose(zero, np.broadcast_to(zero[:1], zero.shape), atol=1e-6)


@pytest.mark.e2e
def test_the_best_checkpoint(run, tmp_path, capsys):
  """``--step=best`` reads ``best/``, which the loop's ``checkpoint.Best`` writes."""
  workdir = tmp_path / 'run'
  shutil.copytree(run, workdir)
  code, _, err = run_command(
      capsys, f'--workdir={workdir}', '--step=best', f'--outdir={tmp_path}'
  )
  assert code == 1 and err.strip() == (
      f'osgan_jax.generate: error: no best-FID checkpoint (config.evals.fid keeps one) in '
      f'{workdir}'
  )
  mngr = checkpoint.manager(str(workdir / 'checkpoints'), 5, async_save=False)
  state, meta = checkpoint.restore(mngr, None, 1)
  mngr.close()
  best = checkpoint.Best(str(workdir), 'fid')
  best.update(1, state, 123.0, meta, is_main=True)
  best.close()
  loaded = trained.load_workdir(str(workdir), 'best')
  assert loaded.source == str(workdir / 'best' / '1') and loaded.ema and loaded.step == 1
  latest = trained.load_workdir(str(workdir), 'latest')
  assert latest.source == str(workdir / 'checkpoints' / '1')
  for a, b in zip(*(jax.tree.leaves(x.variables) for x in (loaded, latest)), strict=True):
    np.testing.assert_array_equal(a, b)  # the same state, saved twice


@pytest.mark.e2e
@pytest.mark.parametrize(
    'argv, message',
    [
        (['--workdir={tmp}/missing'], '--workdir {tmp}/missing does not exist'),
        (['--workdir={tmp}'], 'no checkpoint in {tmp}'),
        (
            ['--workdir={run}', '--step=7'],
            'no checkpoint at step 7 in {run}/checkpoints (steps: 1)',
        ),
        (
            ['--workdir={run}', '--step=last'],
            "--step must be 'latest', 'best' or a step number, got 'last'",
        ),
        (['--workdir={run}', '--seeds=4-2'], "--seeds='4-2': the range 4-2 is empty"),
        (['--workdir={run}', '--seeds=x'], "--seeds='x': expected numbers and ranges"),
        (['--workdir={run}', '--trunc=nan'], '--trunc must be a finite number, got nan'),
        (['--workdir={run}', '--trunc=inf'], '--trunc must be a finite number, got inf'),
        (
            ['--workdir={run}', '--classes=3'],
            'class 3 is out of range: the generator has 3 classes (0-2)',
        ),
        (
            ['--workdir={run}', '--weights=x.pkl'],
            'give --workdir (with --step) or --weights, one of them',
        ),
        (
            ['--workdir={run}', '--format=npz', '--outdir=', '--grid={tmp}/g.png'],
            '--format=npz writes OUTDIR/images.npz: give --outdir',
        ),
    ],
)
def test_one_line_errors(run, tmp_path, capsys, argv, message):
  argv = [a.format(run=run, tmp=tmp_path) for a in argv]
  if not any(a.startswith('--outdir') for a in argv):
    argv.append(f'--outdir={tmp_path / "out"}')
  code, stdout, err = run_command(capsys, *argv)
  assert (code, stdout) == (1, ''), err
  message = f'osgan_jax.generate: error: {message.format(run=run, tmp=tmp_path)}'
  assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_usage_errors(capsys):
  code, _, err = run_command(capsys, '--trunc=abc')
  assert code == 2 and len(err.splitlines()) == 1 and '--trunc' in err
  code, out, _ = run_command(capsys, '--help')
  assert code == 0 and 'NHWC' in out and 'RandomState' in out


# ------------------------------------------------------------------------ weights files


@pytest.mark.e2e
@pytest.mark.long
def test_official_stylegan2_seed_gives_the_reference_image(tmp_path, capsys):
  """The fixture's first latent is RandomState(10)'s first row, class 0: seed 10's
  image with constant noise, and truncated with the fixture's psi."""
  path, ref = official('stylegan2_c3')
  args = (f'--weights={path}', '--seeds=10', '--classes=0', '--noise_mode=const')
  np.testing.assert_array_equal(ref['z'][0], trained.latents([10], 32)[0])
  for name, extra in (
      ('g_ema_img_const', ()),
      ('g_ema_img_trunc', (f'--trunc={float(ref["psi"])}',)),
  ):
    got = npz_images(capsys, tmp_path, *args, *extra, name=name)['images']
    want = ref[name][:1].transpose(0, 2, 3, 1)
    assert np.abs(got - want).max() <= RTOL * np.abs(want).max(), name


@pytest.mark.e2e
def test_official_r3gan_seed_and_what_it_lacks(tmp_path, capsys):
  path, ref = official('r3gan_c0')
  got = npz_images(capsys, tmp_path, f'--weights={path}', '--seeds=20')['images']
  want = ref['g_ema_img'][:1].transpose(0, 2, 3, 1)
  assert np.abs(got - want).max() <= RTOL * np.abs(want).max()
  for flag, message in (
      (
          '--trunc=0.7',
          '--trunc=0.7: the r3gan generator tracks no W average to truncate towards',
      ),
      ('--classes=1', '--classes: the r3gan generator is unconditional'),
      ('--noise_mode=random', '--noise_mode: the r3gan generator has no noise inputs'),
  ):
    code, _, err = run_command(capsys, f'--weights={path}', flag, f'--outdir={tmp_path}')
    assert code == 1 and err.splitlines()[0].startswith(
        f'osgan_jax.generate: error: {message}'
    )


_DEVICES_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + ' --xla_force_host_platform_device_count=2')
    import jax, numpy as np
    from osgan_jax.tasks import trained
    assert len(jax.devices()) == 2
    loaded = trained.load_weights(sys.argv[1])
    seeds, labels = trained.class_labels(loaded, list(range(5)), [1])
    run = lambda batch, n, mode='random': trained.Sampler(
        loaded, batch, noise_mode=mode, num_devices=n)(seeds, labels)
    one, two, three = run(2, 1), run(2, 2), run(3, 1)
    const, none = run(2, 1, 'const'), run(2, 1, 'none')
    print(float(np.abs(one - two).max()), float(np.abs(one - three).max()),
          float(np.abs(one - const).max()), float(np.abs(const - none).max()))
""")


# slow: test_a_seed_gives_its_image_alone_or_in_a_batch checks in CI that an image
# depends on its seed only, not on the rest of its batch.
@pytest.mark.slow
@pytest.mark.e2e
def test_batch_sizes_devices_and_noise():
  """Seeds 0-4 in batches of 2 per device: 3 batches on one device, 2 (the last padded)
  over two, the same images (random noise included); batches of 3: float rounding
  apart; the noise modes differ."""
  path, _ = official('stylegan2_c3')
  result = subprocess.run(
      [sys.executable, '-c', _DEVICES_SCRIPT, path],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  two_devices, batch_three, random_const, const_none = map(
      float, result.stdout.strip().splitlines()[-1].split()
  )
  assert two_devices == 0.0 and batch_three < 1e-5
  assert random_const > 1e-3 and const_none > 1e-3


_SAVE_ON_TWO_DEVICES = textwrap.dedent("""
    import os, sys
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                               + ' --xla_force_host_platform_device_count=2')
    import jax, jax.numpy as jnp
    from osgan_jax.training import checkpoint, parallel
    mesh = parallel.make_mesh(2)
    w = jax.device_put(jnp.arange(6.0).reshape(2, 3), parallel.replicated(mesh))
    mngr = checkpoint.manager(sys.argv[1], 1, async_save=False)
    checkpoint.save(mngr, 1, {'params_g': {'w': w}, 'ema_params_g': None}, {})
    checkpoint.close(mngr)
""")


@pytest.mark.e2e
def test_a_checkpoint_of_two_devices_reads_on_one(tmp_path):
  """What a run on 8 GPUs saves, generate reads on a laptop: orbax restores it onto
  this process's device instead of refusing the other topology."""
  result = subprocess.run(
      [sys.executable, '-c', _SAVE_ON_TWO_DEVICES, str(tmp_path)],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  mngr = checkpoint.manager(str(tmp_path), 1, async_save=False)
  state, _ = checkpoint.restore(mngr, None, 1)
  mngr.close()
  np.testing.assert_array_equal(state['params_g']['w'], np.arange(6.0).reshape(2, 3))
  assert state['ema_params_g'] is None
