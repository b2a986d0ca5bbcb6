"""Discriminator augmentation (osgan_jax.core.augment): each op's known effect, p = 0
is the identity, per-sample keys, gradients, the adaptive controller, one-stage
exactness with D o augment, and the data set's x-flips and limit."""

import dataclasses
import functools
import gzip
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax import test_util

from osgan_jax import config as config_lib
from osgan_jax import data
from osgan_jax.tasks import gan as gan_lib
from osgan_jax.core import augment as aug
from osgan_jax.core import exactness, one_stage, precision, regularizers, steps
from osgan_jax.core import toy_networks
from helpers import REPO  # pylint: disable=import-error


def _images(c=3, b=8, h=8, w=8, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (b, h, w, c), minval=-1, maxval=1)


def _keys(b=8, seed=1):
  return aug.attach(jnp.zeros((b, 1)), jax.random.PRNGKey(seed))[1]


# Jitted (a compile each, not an eager dispatch per op); ``ops`` a tuple of op names.
_ADA = jax.jit(aug.augment_ada, static_argnames='ops')
_DIFF = jax.jit(aug.augment_diffaugment, static_argnames='ops')
_WARP = jax.jit(aug.warp)


# --------------------------------------------------------------------------- the ops


@pytest.mark.parametrize('pipe,c', [('ada_bgcc', 3), ('ada_bgcc', 1), ('diffaugment', 3)])
def test_p_zero_is_exactly_the_identity(pipe, c):
  x, fn = _images(c), jax.jit(aug.Augment(pipe).images)
  np.testing.assert_array_equal(np.asarray(fn(x, _keys(), 0.0)), np.asarray(x))
  # ...and p = 1 changes every image.
  changed = np.asarray(fn(x, _keys(), 1.0) - x)
  assert np.all(np.abs(changed).max(axis=(1, 2, 3)) > 1e-3)


def test_warp_flips_rotates_and_shifts_exactly():
  x = _images(3)
  flip, rot90, shift = aug.scale2d(-1, 1), aug.rotate2d(0, 1), aug.translate2d(-2, 0)
  out = np.asarray(_WARP(x, jnp.stack([flip, rot90, shift] + [jnp.eye(3)] * 5)))
  xn = np.asarray(x)
  np.testing.assert_array_equal(out[0], xn[0, :, ::-1])
  # G_inv = rotate2d(90 deg) maps output (x, y) to input (-y, x) about the centre.
  np.testing.assert_array_equal(out[1], np.rot90(xn[1], k=1, axes=(0, 1)))
  # Shifted right by 2; the two left columns reflected (PyTorch's 'reflect').
  np.testing.assert_array_equal(out[2][:, 2:], xn[2][:, :-2])
  np.testing.assert_array_equal(out[2][:, :2], xn[2][:, [2, 1]])
  np.testing.assert_array_equal(out[3:], xn[3:])  # the identity, exactly


def test_drawn_flips_rotations_and_integer_translations_are_exact():
  x = jnp.broadcast_to(_images(1, b=1), (16, 8, 8, 1))
  xn, keys = np.asarray(x[0]), _keys(16, seed=3)
  flips = np.asarray(_ADA(x, keys, 1.0, ops=('xflip',)))
  kinds = [
      0 if np.array_equal(o, xn) else 1 if np.array_equal(o, xn[:, ::-1]) else -1
      for o in flips
  ]
  assert -1 not in kinds and set(kinds) == {0, 1}  # each mirrored or not, both drawn
  rotations = np.asarray(_ADA(x, keys, 1.0, ops=('rotate90',)))
  turns = [
      next((k for k in range(4) if np.array_equal(o, np.rot90(xn, k))), -1)
      for o in rotations
  ]
  assert -1 not in turns and len(set(turns)) >= 3
  shifts = np.asarray(_ADA(x, keys, 1.0, ops=('xint',)))
  moves = [(tx, ty) for tx in (-1, 0, 1) for ty in (-1, 0, 1)]  # 1/8 of 8 pixels
  moved = np.asarray(
      _WARP(x[:9], jnp.stack([aug.translate2d(-tx, -ty) for tx, ty in moves]))
  )
  found = [
      next((t for t, c in zip(moves, moved) if np.array_equal(o, c)), None)
      for o in shifts
  ]
  assert None not in found and len(set(found)) >= 3


def test_colour_ops_keep_what_they_should():
  x, keys = _images(3), _keys()
  luma = lambda y: np.asarray(y).mean(axis=-1)
  for op in ('saturation', 'hue'):  # rotate or scale about the luma axis
    out = _ADA(x, keys, 1.0, ops=(op,))
    np.testing.assert_allclose(luma(out), luma(x), atol=1e-5)
    assert np.abs(np.asarray(out - x)).max() > 1e-2
  # Brightness adds one offset per image to every pixel and channel.
  diff = np.asarray(_ADA(x, keys, 1.0, ops=('brightness',)) - x)
  np.testing.assert_allclose(diff, diff[:, :1, :1, :1] + 0 * diff, atol=1e-6)
  assert len(np.unique(np.round(diff[:, 0, 0, 0], 5))) > 1
  # Luma flip is a reflection: its matrix squares to the identity; grey images negate.
  v = jnp.asarray(aug._LUMA, jnp.float32)  # pylint: disable=protected-access
  flip = jnp.eye(4) - 2 * jnp.outer(v, v)
  np.testing.assert_allclose(np.asarray(flip @ flip), np.eye(4), atol=1e-6)
  grey = _images(1)
  out = np.asarray(_ADA(grey, keys, 1.0, ops=('lumaflip',)))
  signs = [
      1 if np.allclose(o, g) else -1 if np.allclose(o, -g) else 0
      for o, g in zip(out, np.asarray(grey))
  ]
  assert 0 not in signs and set(signs) == {1, -1}
  # DiffAugment: saturation keeps each pixel's channel mean, contrast the image mean.
  out = _DIFF(x, keys, 1.0, ops=('saturation',))
  np.testing.assert_allclose(luma(out), luma(x), atol=1e-5)
  out = _DIFF(x, keys, 1.0, ops=('contrast',))
  np.testing.assert_allclose(
      np.asarray(out).mean(axis=(1, 2, 3)), np.asarray(x).mean(axis=(1, 2, 3)), atol=1e-5
  )


def test_cutout_and_translation_zero_what_they_remove():
  x = jnp.ones((8, 16, 16, 1))
  ada = np.asarray(_ADA(x, _keys(), 1.0, ops=('cutout',)))
  # ADA's cutout: a half-size square (clipped at the border) of zeros.
  assert np.all(ada.reshape(8, -1).min(axis=1) == 0)
  assert np.all((ada == 0).reshape(8, -1).sum(axis=1) <= 64)
  diff = np.asarray(_DIFF(x, _keys(), 1.0, ops=('translation', 'cutout')))
  zeros = (diff == 0).reshape(8, -1).sum(axis=1)
  assert np.all(zeros >= 1) and set(np.unique(diff)) <= {0.0, 1.0}


@pytest.mark.parametrize('pipe', ['ada_bgcc', 'diffaugment'])
def test_augmentation_is_differentiable_and_matches_finite_differences(pipe):
  with jax.enable_x64(True):
    x = _images(3, b=2, h=6, w=6).astype(jnp.float64)
    keys = _keys(2)
    f = jax.jit(lambda x: aug.Augment(pipe).images(x, keys, 0.7))
    test_util.check_grads(f, (x,), order=1, modes=['rev'], atol=1e-6, rtol=1e-6)


def test_a_samples_augmentation_depends_on_its_key_alone():
  x, keys = jnp.broadcast_to(_images(3, b=1), (8, 8, 8, 3)), _keys()
  a = aug.Augment('ada_bgcc')
  fn = jax.jit(a.images)
  out = np.asarray(fn(x, keys, 1.0))
  # Same key, same output; different samples, different draws.
  np.testing.assert_array_equal(out, np.asarray(fn(x, keys, 1.0)))
  assert len({o.tobytes() for o in out}) == 8
  # In any batch: a sample gathered into another batch is augmented as in this one.
  idx = jnp.asarray([4, 1, 7, 0, 2, 2, 5, 3])
  np.testing.assert_array_equal(np.asarray(fn(x[idx], keys[idx], 1.0)), out[idx])
  pair = aug.attach({'image': x, 'label': jnp.arange(8)}, jax.random.PRNGKey(0))
  tree = jax.jit(lambda pair: aug.apply_tree(a, pair, 0.0))(pair)
  np.testing.assert_array_equal(np.asarray(tree['label']), np.arange(8))
  np.testing.assert_array_equal(np.asarray(tree['image']), np.asarray(x))


# ------------------------------------------------------------------------ controller


def test_the_controller_moves_p_towards_the_target_every_interval_and_clips():
  a = aug.Augment('ada', p=0.5, target=0.6, speed_kimg=0.01, interval=2)  # 0.8 a move
  state = a.init_state()
  high, low = jnp.ones(4), -jnp.ones(4)  # r_t = 1 > 0.6, r_t = -1 < 0.6
  state, rt = a.update(state, high, jnp.asarray(1), 4)
  assert float(rt) == 1.0 and float(state['p']) == 0.5  # not at an interval boundary
  state, _ = a.update(state, high, jnp.asarray(2), 4)
  assert float(state['p']) == 1.0  # 0.5 + 0.8, clipped
  assert float(state['signs']) == 0 and float(state['count']) == 0
  state, _ = a.update(state, low, jnp.asarray(3), 4)
  state, _ = a.update(state, low, jnp.asarray(4), 4)
  assert float(state['p']) == pytest.approx(0.2)
  state, _ = a.update(state, low, jnp.asarray(5), 4)
  state, _ = a.update(state, low, jnp.asarray(6), 4)
  assert float(state['p']) == 0.0  # clipped at 0
  # The interval's mean decides: three positive batches, one negative -> r_t 0.5 < 0.6.
  a = aug.Augment('ada', p=0.5, target=0.6, speed_kimg=0.16, interval=4)  # 0.1 a move
  state = a.init_state()
  for i, logits in enumerate((high, high, high, low)):
    state, _ = a.update(state, logits, jnp.asarray(i + 1), 4)
  assert float(state['p']) == pytest.approx(0.4)
  # Fixed p never moves; a schedule sets it.
  fixed = aug.Augment('ada', p=0.3)
  assert fixed.update(fixed.init_state(), high, jnp.asarray(4), 4)[0]['p'] == jnp.float32(
      0.3
  )
  ramp = aug.Augment('ada', p=0.0, schedule=lambda s: s / 10)
  assert ramp.update(ramp.init_state(), high, jnp.asarray(4), 4)[0]['p'] == jnp.float32(
      0.4
  )


# -------------------------------------------------------------- the train steps


def _toy_gan(**kw):
  """A GAN of the toy networks (a per-sample conv D) with ADA on every image D sees."""
  disc = toy_networks.make_discriminator('conv')
  gan = steps.GAN(
      generate=lambda p, s, z, rng: ({'image': toy_networks.generate(p, z)}, s),
      discriminate=lambda p, s, batch, rng: (disc(p, batch['image']), s),
      sample_latent=lambda rng, n: jax.random.normal(rng, (n, toy_networks.Z_DIM)),
      loss='non_saturating',
      optimizer_g=optax.adam(1e-3),
      optimizer_d=optax.adam(1e-3),
      per_sample=True,
      augment=aug.Augment('ada', p=0.5, target=0.6, speed_kimg=0.008, interval=1),
      **kw,
  )
  kg, kd = jax.random.split(jax.random.PRNGKey(0))
  params_g = toy_networks.init_generator(kg)
  params_d = toy_networks.init_discriminator('conv', kd)
  return gan, steps.init_state(gan, params_g, params_d)


@pytest.mark.long
def test_every_step_augments_at_the_states_p_without_recompiling():
  gan, state = _toy_gan(penalties={'r1': 1.0})
  batch = {'image': jnp.tanh(jax.random.normal(jax.random.PRNGKey(9), (8, 8, 8, 2)))}
  rng = jax.random.PRNGKey(1)
  at = lambda p: state.replace(augment={**state.augment, 'p': jnp.float32(p)})
  for stage, penalised in (
      ('one', gan),
      ('two', dataclasses.replace(gan, penalties=None)),
  ):
    step = jax.jit(functools.partial(steps.STEPS[stage], penalised))
    (_, m0), (s1, m1) = step(at(0.0), batch, rng), step(at(1.0), batch, rng)
    assert step._cache_size() == 1  # pylint: disable=protected-access  (p is traced)
    assert float(m0['loss_d']) != float(m1['loss_d'])  # D saw other images
    if stage == 'one':  # R1 on augmented reals
      assert float(m0['r1_penalty']) != float(m1['r1_penalty'])
    # The controller moved p from 1 by 8 * 1 / 8 = 1 towards sign(r_t - 0.6), clipped.
    expected = 1.0 if float(m1['augment_rt']) > 0.6 else 0.0
    assert float(s1.augment['p']) == expected
    assert float(m1['augment_p']) == float(s1.augment['p'])
  # Lazy R1 (StyleGAN2's phase) sees augmented reals too.
  r1 = jax.jit(lambda s: regularizers.r1_step(gan, s, batch, rng)[1]['r1_penalty'])
  assert float(r1(at(0.0))) != float(r1(at(1.0)))


# --------------------------------------------------------------------- exactness


def _exact(loss, disc, pipe, penalty):
  """One-stage against the two-grad reference with D o augment, full precision."""
  prob = toy_networks.problem(loss, disc, penalty=penalty, augment=pipe)
  with precision.full_precision():
    g, d, _ = exactness.run_one_stage(prob, 'exact')
    ref_g, ref_d = exactness.run_reference(prob)
  return exactness.rel_err(g, ref_g), exactness.rel_err(d, ref_d)


@pytest.mark.long
@pytest.mark.parametrize(
    'loss,disc,pipe',
    [('relativistic', 'batchnorm', 'ada'), ('hinge', 'mlp', 'diffaugment')],
)
def test_one_stage_is_exact_with_augmentation(loss, disc, pipe):
  # A coupled and a per-sample D, R1 + R2 on augmented images; the whole matrix, with
  # the command's finite differences, is the slow test below.
  rel_g, rel_d = _exact(loss, disc, pipe, 'r1r2')
  assert (
      rel_g <= exactness.TOLERANCE['float32'] and rel_d <= exactness.TOLERANCE['float32']
  )


@pytest.mark.slow  # test_one_stage_is_exact_with_augmentation checks one of each D kind
@pytest.mark.parametrize('pipe', ['ada', 'diffaugment'])
@pytest.mark.parametrize('disc', ['conv', 'batchnorm'])
@pytest.mark.parametrize('loss', ['non_saturating', 'hinge', 'relativistic'])
def test_every_loss_and_d_kind_is_exact_with_augmentation(loss, disc, pipe):
  with jax.enable_x64(True):
    report = exactness.check(
        loss, disc, penalty='r1r2', augment=pipe, default_precision=False
    )
  assert report['ok'], report


def test_augmentation_keeps_a_per_sample_d_per_sample():
  prob = toy_networks.problem('hinge', 'conv', augment='ada')
  x_real = prob['x_real']
  assert one_stage.samples_independent(prob['discriminate'], prob['params_d'], x_real)
  coupled = toy_networks.problem('hinge', 'batchnorm', augment='ada')
  assert not one_stage.samples_independent(
      coupled['discriminate'], coupled['params_d'], coupled['x_real'], has_aux=True
  )


# ------------------------------------------------------------- data: x-flips, limit


def _idx(tmp_path, n=12):
  """n 28x28 images: image i is 10 * (i + 1) in its left 14 columns, 0 on the right."""
  images = np.zeros((n, 28, 28), np.uint8)
  images[:, :, :14] = (10 * (np.arange(n) + 1))[:, None, None]
  for name, array in (
      ('train-images-idx3-ubyte.gz', images),
      ('train-labels-idx1-ubyte.gz', np.arange(n) % 10),
  ):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, '>u4').tobytes()
    with gzip.open(tmp_path / name, 'wb') as f:
      f.write(header + array.tobytes())
  return str(tmp_path)


def _decode(batch):
  """(example index, mirrored) of each image written by ``_idx``."""
  img = batch['image'][..., 0].astype(np.int64)
  left, right = img[:, :, :14].max(axis=(1, 2)), img[:, :, 14:].max(axis=(1, 2))
  return np.maximum(left, right) // 10 - 1, right > left


def test_xflip_and_limit_are_functions_of_the_index_schedule(tmp_path):
  cfg = ml_collections.ConfigDict(
      dict(
          name='mnist',
          path=_idx(tmp_path),
          resolution=28,
          channels=1,
          limit=5,
          xflip=True,
      )
  )
  assert data.dataset_info(cfg)['num_examples'] == 10
  it = data.make_iterator(cfg, 10, seed=3, image_dtype='uint8')
  epochs = [_decode(next(it)) for _ in range(3)]
  it.close()
  for index, mirrored in epochs:  # each batch of 10 is one epoch: 5 examples, twice
    assert sorted(zip(index.tolist(), mirrored.tolist())) == [
        (i, m) for i in range(5) for m in (False, True)
    ]
  # Resuming at batch 2 gives the same batch 2.
  it = data.make_iterator(cfg, 10, seed=3, start_step=2, image_dtype='uint8')
  index, mirrored = _decode(next(it))
  it.close()
  np.testing.assert_array_equal(index, epochs[2][0])
  np.testing.assert_array_equal(mirrored, epochs[2][1])


# --------------------------------------------------------------------- configs


def test_r3gan_configs_train_with_the_official_augmentation_and_xflips():
  for name, final in (('r3gan_cifar10', 0.55), ('r3gan_ffhq256', 0.3)):
    cfg = config_lib.load_config(os.path.join(REPO, 'configs', f'{name}.py'))
    assert cfg.data.xflip and cfg.augment.pipe == 'r3gan'
    a = gan_lib.make_augment(cfg)
    steps_ = int(cfg.schedule.steps)  # R3GAN's 20M images
    assert steps_ * cfg.batch_size >= 20_000_000
    ramp = [float(a.schedule(s)) for s in (0, steps_ // 2, steps_, 2 * steps_)]
    assert ramp == pytest.approx([0.0, final / 2, final, final], abs=1e-4)
  assert aug.preset_ops('r3gan')['hue'] == 0.5 and aug.preset_ops('r3gan')['cutout'] == 1
  # The config key offers every preset, and only those.
  choices = config_lib.keys.KEYS['augment.pipe'].check('bgcfnc')
  assert set(choices.removeprefix('one of ').split(', ')) == {'none', *aug.PRESETS}
  ffhq = config_lib.load_config(os.path.join(REPO, 'configs', 'stylegan2_ffhq.py'))
  assert ffhq.data.xflip and ffhq.augment.pipe == 'none'
  ada = config_lib.load_config(
      os.path.join(REPO, 'configs', 'stylegan2_tiny.py'),
      {'augment.pipe': 'ada', 'augment.target': 0.6},
  )
  assert gan_lib.make_augment(ada) == aug.Augment('ada', p=0.0, target=0.6)
  diff = config_lib.load_config(
      os.path.join(REPO, 'configs', 'dcgan_fashion_mnist.py'),
      {'augment.pipe': 'diffaugment'},
  )
  assert gan_lib.make_augment(diff).p == 1.0
