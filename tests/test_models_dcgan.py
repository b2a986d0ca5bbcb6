"""DCGAN generator/discriminator: shapes, parameter counts, sample coupling, spectral
norm, conditioning, registry, and (when PyTorch is installed) equality with the PyTorch
DCGAN reference networks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax import models
from osgan_jax.models import dcgan
from osgan_jax.models import norms
from osgan_jax.models.dcgan import Discriminator, Generator
from helpers import config_path, needs_torch  # pylint: disable=import-error

KEY = jax.random.PRNGKey(0)
B = 4

# Compile time dominates on CPU (jitted ``init`` draws every parameter with threefry,
# tens of seconds per model), so most tests build their variables from the shapes that
# ``jax.eval_shape(module.init)`` gives, filled with NumPy draws of the same
# distributions, and run ``apply`` eagerly (primitive compilations are cached across
# tests). ``test_initialisation`` checks the modules' own initialisers.


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def fill(shapes, seed=0):
  """Variables for the given shape tree, drawn with NumPy."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key.split('/')[-1]
    shape = leaf.shape
    if name == 'kernel':
      v = 0.02 * rng.standard_normal(shape)
    elif name == 'scale':
      v = 1.0 + 0.02 * rng.standard_normal(shape)
    elif name == 'bias':
      v = 0.01 * rng.standard_normal(shape)
    elif name in ('embedding', 'u'):
      v = rng.standard_normal(shape)
    elif name == 'mean':
      v = np.zeros(shape)
    elif name in ('var', 'sigma'):
      v = np.ones(shape)
    else:
      raise AssertionError(f'unexpected variable {name}')
    return jnp.asarray(v, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def z_batch(g, batch=B, seed=1):
  return jnp.asarray(
      np.random.default_rng(seed).standard_normal((batch, g.z_dim)), jnp.float32
  )


def x_batch(d, batch=B, seed=2):
  shape = (batch, d.resolution, d.resolution, d.channels)
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def init_g(g, batch=B, labels=None):
  z = z_batch(g, batch)
  return fill(jax.eval_shape(g.init, KEY, z, labels)), z


def init_d(d, batch=B, labels=None):
  x = x_batch(d, batch)
  return fill(jax.eval_shape(d.init, KEY, x, labels)), x


def apply_train(module, variables, x, labels=None):
  """Training-mode forward; returns the output and the updated state collections."""
  return module.apply(variables, x, labels, train=True, mutable=['batch_stats'])


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('resolution', [32, 64])
@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.long
def test_shapes_and_range(resolution, channels):
  g = Generator(resolution=resolution, channels=channels, width=4, z_dim=8)
  variables, z = init_g(g)
  x, _ = apply_train(g, variables, z)
  assert x.shape == (B, resolution, resolution, channels)
  assert x.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(x))) < 1.0
  # A huge last layer saturates the tanh: the output still stays in [-1, 1].
  last = f'convT{len(dcgan.channel_schedule(resolution, 4))}'
  params = dict(variables['params'])
  params[last] = {'kernel': params[last]['kernel'] * 1e4}
  x_sat, _ = apply_train(g, {**variables, 'params': params}, z)
  assert float(jnp.max(jnp.abs(x_sat))) <= 1.0
  assert float(jnp.min(x_sat)) < -0.99 and float(jnp.max(x_sat)) > 0.99

  d = Discriminator(resolution=resolution, channels=channels, width=4)
  d_vars = fill(jax.eval_shape(d.init, KEY, x))
  logits, _ = apply_train(d, d_vars, x)
  assert logits.shape == (B,)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_official_layer_structure_64():
  """64x64: G 1 -> 4 -> 8 -> 16 -> 32 -> 64 with 8d, 4d, 2d, d, C channels; D mirrored."""
  g = Generator(resolution=64, channels=3, width=2, z_dim=5)
  shapes = jax.eval_shape(lambda: g.init(KEY, jnp.zeros((1, 5))))['params']
  assert [shapes[f'convT{i}']['kernel'].shape for i in range(5)] == [
      (4, 4, 5, 16),
      (4, 4, 16, 8),
      (4, 4, 8, 4),
      (4, 4, 4, 2),
      (4, 4, 2, 3),
  ]
  d = Discriminator(resolution=64, channels=3, width=2)
  shapes = jax.eval_shape(lambda: d.init(KEY, jnp.zeros((1, 64, 64, 3))))['params']
  assert [shapes[f'conv{i}']['kernel'].shape for i in range(5)] == [
      (4, 4, 3, 2),
      (4, 4, 2, 4),
      (4, 4, 4, 8),
      (4, 4, 8, 16),
      (4, 4, 16, 1),
  ]
  assert 'norm0' not in shapes  # no norm on the first layer
  assert set(shapes) == {f'conv{i}' for i in range(5)} | {'norm1', 'norm2', 'norm3'}


def test_32_has_one_block_fewer():
  g = Generator(resolution=32, channels=1, width=2, z_dim=5)
  shapes = jax.eval_shape(lambda: g.init(KEY, jnp.zeros((1, 5))))['params']
  assert [shapes[f'convT{i}']['kernel'].shape[-1] for i in range(4)] == [8, 4, 2, 1]
  assert dcgan.channel_schedule(32, 2) == [(16, 2), (8, 4), (4, 8)]


@pytest.mark.parametrize('resolution,base', [(8, 4), (16, 4), (28, 7), (128, 4)])
def test_other_resolutions(resolution, base):
  assert dcgan.base_resolution(resolution) == base
  g = Generator(resolution=resolution, channels=1, width=2, z_dim=4)
  d = Discriminator(resolution=resolution, channels=1, width=2, norm='group')
  x = jax.eval_shape(lambda: g.init_with_output(KEY, jnp.zeros((2, 4)))[0])
  assert x.shape == (2, resolution, resolution, 1)
  logits = jax.eval_shape(lambda: d.init_with_output(KEY, jnp.zeros(x.shape))[0])
  assert logits.shape == (2,)
  # Channel multiplier capped at 8d above 64x64.
  assert max(c for _, c in dcgan.channel_schedule(resolution, 2)) <= 16


@pytest.mark.parametrize('resolution', [4, 36, 100])
def test_unsupported_resolution(resolution):
  with pytest.raises(ValueError, match='not supported'):
    dcgan.base_resolution(resolution)


def test_input_validation():
  g = Generator(resolution=32, channels=1, width=2, z_dim=4)
  with pytest.raises(ValueError, match='features'):
    jax.eval_shape(g.init, KEY, jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match='norm'):
    jax.eval_shape(
        Generator(norm='group', resolution=32, width=2, z_dim=4).init,
        KEY,
        jnp.zeros((2, 4)),
    )
  d = Discriminator(resolution=32, channels=1, width=2)
  with pytest.raises(ValueError, match='shape'):
    jax.eval_shape(d.init, KEY, jnp.zeros((2, 32, 32, 3)))
  with pytest.raises(ValueError, match='norm'):
    jax.eval_shape(
        Discriminator(norm='instance', resolution=32, channels=1, width=2).init,
        KEY,
        jnp.zeros((2, 32, 32, 1)),
    )
  # z as [B, 1, 1, z_dim] (PyTorch layout [B, z, 1, 1] transposed) is accepted.
  out = jax.eval_shape(lambda: g.init_with_output(KEY, jnp.zeros((2, 1, 1, 4)))[0])
  assert out.shape == (2, 32, 32, 1)


@pytest.mark.parametrize('resolution,kernel,hw', [(64, 3, 4), (32, 4, 4), (28, 3, 7)])
@pytest.mark.long
def test_patch_logits(resolution, kernel, hw):
  d = Discriminator(
      resolution=resolution,
      channels=3,
      width=4,
      norm='group',
      patch=True,
      patch_kernel=kernel,
  )
  variables, x = init_d(d)
  logits = d.apply(variables, x)
  assert logits.shape == (B, hw, hw)
  assert variables['params'][f'conv{len(dcgan.channel_schedule(resolution, 4))}'][
      'kernel'
  ].shape == (kernel, kernel, 4 * min(resolution // (2 * hw), 8), 1)


# --------------------------------------------------------------------- parameter counts


def _official_counts(z, d, c, bias):
  """PyTorch counts of the DCGAN example (bias=False) / official OSGAN nets (bias)."""
  g = (z * 8 * d + 8 * d * 4 * d + 4 * d * 2 * d + 2 * d * d + d * c) * 16
  g += 2 * (8 * d + 4 * d + 2 * d + d)  # BatchNorm affine
  dd = (c * d + d * 2 * d + 2 * d * 4 * d + 4 * d * 8 * d + 8 * d) * 16
  dd += 2 * (2 * d + 4 * d + 8 * d)
  if bias:
    g += 8 * d + 4 * d + 2 * d + d + c
    dd += d + 2 * d + 4 * d + 8 * d + 1
  return g, dd


def test_param_counts_pytorch_dcgan_example():
  g = Generator(resolution=64, channels=3, width=64, z_dim=100, norm='batch')
  d = Discriminator(resolution=64, channels=3, width=64, norm='batch')
  g_vars = jax.eval_shape(lambda: g.init(KEY, jnp.zeros((1, 100))))
  d_vars = jax.eval_shape(lambda: d.init(KEY, jnp.zeros((1, 64, 64, 3))))
  assert n_params(g_vars['params']) == 3_576_704
  assert n_params(d_vars['params']) == 2_765_568
  assert (3_576_704, 2_765_568) == _official_counts(100, 64, 3, bias=False)
  # Running statistics: mean and var per BatchNorm channel (not parameters).
  assert n_params(g_vars['batch_stats']) == 2 * (512 + 256 + 128 + 64)
  assert n_params(d_vars['batch_stats']) == 2 * (128 + 256 + 512)


def test_param_counts_official_osgan():
  """The official OSGAN nets (d=128, MNIST resized to 64, biases on every conv);
  GroupNorm has the same affine parameter count as BatchNorm."""
  g = Generator(resolution=64, channels=1, width=128, z_dim=100, use_bias=True)
  d = Discriminator(resolution=64, channels=1, width=128, norm='group', use_bias=True)
  g_vars = jax.eval_shape(lambda: g.init(KEY, jnp.zeros((1, 100))))
  d_vars = jax.eval_shape(lambda: d.init(KEY, jnp.zeros((1, 64, 64, 1))))
  assert (n_params(g_vars['params']), n_params(d_vars['params'])) == _official_counts(
      100, 128, 1, bias=True
  )
  assert 'batch_stats' not in d_vars


def test_initialisation():
  """The modules' own initialisers (jitted init; an 'unsafe_rbg' key only to compile faster
  than threefry; the distributions are the same)."""
  key = jax.random.key(0, impl='unsafe_rbg')
  g = Generator(resolution=16, channels=3, width=16, z_dim=100)
  variables = jax.jit(g.init)(key, z_batch(g, 1))
  k = variables['params']['convT1']['kernel']  # 4 x 4 x 32 x 16
  assert abs(float(jnp.std(k)) - 0.02) < 1e-3
  assert abs(float(jnp.mean(k))) < 1e-3
  scale = variables['params']['norm0']['scale']  # 32 channels
  assert abs(float(jnp.mean(scale)) - 1.0) < 0.015
  assert 0.01 < float(jnp.std(scale)) < 0.03
  assert float(jnp.max(jnp.abs(variables['params']['norm0']['bias']))) == 0.0
  assert float(jnp.max(jnp.abs(variables['batch_stats']['norm0']['mean']))) == 0.0
  assert float(jnp.min(variables['batch_stats']['norm0']['var'])) == 1.0

  d = Discriminator(resolution=16, channels=3, width=16, norm='group', use_bias=True)
  variables = jax.jit(d.init)(key, x_batch(d, 1))
  k = variables['params']['conv1']['kernel']  # 4 x 4 x 16 x 32
  assert abs(float(jnp.std(k)) - 0.02) < 1e-3
  assert float(jnp.max(jnp.abs(variables['params']['conv1']['bias']))) == 0.0
  np.testing.assert_array_equal(variables['params']['norm1']['scale'], 1.0)
  np.testing.assert_array_equal(variables['params']['norm1']['bias'], 0.0)


# ----------------------------------------------------------------- BatchNorm behaviour


def test_batchnorm_state_updates_in_train_mode_only():
  g = Generator(resolution=32, channels=1, width=4, z_dim=8)
  variables, z = init_g(g)
  _, state = apply_train(g, variables, z)
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(state['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # Eval mode uses the running averages and needs no mutable collection.
  x = g.apply(variables, z, train=False)
  assert x.shape == (B, 32, 32, 1)
  # Train mode without a mutable 'batch_stats' is an error (state would be lost).
  with pytest.raises(Exception):
    jax.eval_shape(functools.partial(g.apply, train=True), variables, z)


def _logit_coupling(d, train=True, labels=None):
  """max |change of logits of samples 1..B-1| when only sample 0 changes."""
  variables, x = init_d(d, labels=labels)

  def logits(x):
    if train:
      return d.apply(variables, x, labels, train=True, mutable=['batch_stats'])[0]
    return d.apply(variables, x, labels, train=False)

  x2 = x.at[0].set(-x[0] + 0.3)
  a, b = logits(x), logits(x2)
  assert not np.allclose(a[0], b[0])  # sample 0 itself moved
  return float(jnp.max(jnp.abs(a[1:] - b[1:]))), float(jnp.max(jnp.abs(a)))


def test_batchnorm_d_couples_samples_in_train_mode():
  d = Discriminator(resolution=32, channels=3, width=8, norm='batch')
  change, scale = _logit_coupling(d, train=True)
  assert change > 1e-3 * scale


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(norm='batch', train=False),
        dict(norm='group'),
        dict(norm='layer'),
        dict(norm='none'),
        dict(norm='none', spectral_norm=True),
        dict(norm='group', spectral_norm=True),
        dict(norm='group', patch=True),
        dict(norm='group', num_classes=5),
    ],
)
def test_per_sample_discriminators_are_independent(kwargs):
  kwargs = dict(kwargs)
  train = kwargs.pop('train', True)
  d = Discriminator(resolution=32, channels=3, width=8, **kwargs)
  labels = jnp.arange(4) % 5 if d.num_classes else None
  change, scale = _logit_coupling(d, train=train, labels=labels)
  assert scale > 0
  assert change <= 1e-6 * scale


def test_group_norm_groups():
  # 32 groups where the channel count allows it (official), else gcd(32, channels).
  def groups_of(width):
    d = Discriminator(resolution=32, channels=1, width=width, norm='group')
    out = {}

    def interceptor(next_fun, args, kwargs, context):
      if isinstance(context.module, norms.GroupNorm):
        out[context.module.name] = context.module.num_groups
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      variables = jax.eval_shape(d.init, KEY, jnp.zeros((1, 32, 32, 1)))
    assert variables['params']['norm1']['scale'].shape == (2 * width,)
    return out

  assert groups_of(32) == {'norm1': 32, 'norm2': 32}
  assert groups_of(4) == {'norm1': 8, 'norm2': 16}
  assert groups_of(20) == {'norm1': 8, 'norm2': 16}  # 40, 80 channels


# ---------------------------------------------------------------------- spectral norm


def test_spectral_norm_updates_collection_and_converges():
  d = Discriminator(resolution=32, channels=3, width=8, norm='none', spectral_norm=True)
  variables, x = init_d(d)
  stats = variables['batch_stats']
  assert set(stats) == {f'sn_conv{i}' for i in range(4)}
  assert set(stats['sn_conv1']) == {'conv1/kernel/u', 'conv1/kernel/sigma'}
  assert 'params' in variables and 'conv1' in variables['params']

  step = jax.jit(lambda v, x: d.apply(v, x, train=True, mutable=['batch_stats']))
  logits, new_state = step(variables, x)
  assert logits.shape == (B,)
  u0 = stats['sn_conv1']['conv1/kernel/u']
  u1 = new_state['batch_stats']['sn_conv1']['conv1/kernel/u']
  assert not np.allclose(u0, u1)

  v = {'params': variables['params'], **new_state}
  for _ in range(60):
    _, new_state = step(v, x)
    v = {'params': variables['params'], **new_state}
  for i in range(4):
    kernel = np.asarray(variables['params'][f'conv{i}']['kernel'])
    true_sigma = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    sigma = float(v['batch_stats'][f'sn_conv{i}'][f'conv{i}/kernel/sigma'])
    np.testing.assert_allclose(sigma, true_sigma, rtol=1e-2)

  # Eval mode needs nothing mutable and writes nothing; train mode without it fails.
  assert d.apply(v, x, train=False).shape == (B,)
  with pytest.raises(Exception):
    jax.eval_shape(functools.partial(d.apply, train=True), v, x)


def test_spectral_norm_normalises_the_kernel():
  """Every kernel is divided by its sigma estimate, so scaling all kernels leaves a
  spectrally normalised D unchanged (a plain bias-free D scales its logits)."""
  d = Discriminator(resolution=32, channels=3, width=8, norm='none', spectral_norm=True)
  d_plain = Discriminator(resolution=32, channels=3, width=8, norm='none')
  variables, x = init_d(d)
  scaled = jax.tree.map(lambda p: 10.0 * p, variables['params'])
  # Spectral norm makes D invariant to scaling its kernels; the plain D is not.
  a = d.apply(variables, x, train=False)
  b = d.apply({**variables, 'params': scaled}, x, train=False)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  c = d_plain.apply({'params': variables['params']}, x)
  e = d_plain.apply({'params': scaled}, x)
  assert not np.allclose(c, e)


def test_spectral_norm_custom_collection():
  d = Discriminator(
      resolution=32,
      channels=3,
      width=8,
      norm='batch',
      spectral_norm=True,
      sn_collection='spectral',
  )
  variables, x = init_d(d)
  assert set(variables) == {'params', 'batch_stats', 'spectral'}
  _, state = d.apply(variables, x, mutable=['batch_stats', 'spectral'])
  assert set(state) == {'batch_stats', 'spectral'}


# ----------------------------------------------------------------------- conditioning


@pytest.mark.parametrize('embed_dim', [0, 6])
def test_conditional_generator(embed_dim):
  g = Generator(
      resolution=32, channels=1, width=4, z_dim=8, num_classes=10, embed_dim=embed_dim
  )
  labels = jnp.array([0, 1, 2, 3])
  variables, z = init_g(g, labels=labels)
  if embed_dim:
    assert variables['params']['label_embed']['embedding'].shape == (10, embed_dim)
    assert variables['params']['convT0']['kernel'].shape[2] == 8 + embed_dim
  else:
    assert variables['params']['convT0']['kernel'].shape[2] == 8 + 10
  # Eval mode: each sample depends on its own (z, label) only.
  gen = functools.partial(g.apply, train=False)
  x_a = gen(variables, z, labels)
  x_b = gen(variables, z, jnp.array([0, 7, 2, 3]))
  assert x_a.shape == (B, 32, 32, 1)
  scale = float(jnp.max(jnp.abs(x_a)))
  assert scale > 0
  np.testing.assert_allclose(x_a[0], x_b[0], atol=1e-6 * scale)
  assert float(jnp.max(jnp.abs(x_a[1] - x_b[1]))) > 1e-2 * scale
  with pytest.raises(ValueError, match='conditional'):
    jax.eval_shape(gen, variables, z)
  with pytest.raises(ValueError, match='shape'):
    jax.eval_shape(gen, variables, z, jnp.array([0, 1]))


@pytest.mark.parametrize('embed_dim', [0, 3])
def test_conditional_discriminator(embed_dim):
  d = Discriminator(
      resolution=32,
      channels=3,
      width=4,
      norm='group',
      num_classes=10,
      embed_dim=embed_dim,
  )
  labels = jnp.array([0, 1, 2, 3])
  variables, x = init_d(d, labels=labels)
  k = embed_dim or 10
  assert variables['params']['conv0']['kernel'].shape == (4, 4, 3 + k, 4)
  disc = d.apply
  a = disc(variables, x, labels)
  b = disc(variables, x, jnp.array([0, 9, 2, 3]))
  assert a.shape == (B,)
  scale = float(jnp.max(jnp.abs(a)))
  same = np.array([0, 2, 3])
  np.testing.assert_allclose(a[same], b[same], atol=1e-6 * scale)
  assert abs(float(a[1] - b[1])) > 1e-3 * scale
  with pytest.raises(ValueError, match='conditional'):
    jax.eval_shape(disc, variables, x)


def test_unconditional_rejects_labels():
  d = Discriminator(resolution=16, channels=1, width=2)
  with pytest.raises(ValueError, match='unconditional'):
    jax.eval_shape(d.init, KEY, jnp.zeros((2, 16, 16, 1)), jnp.zeros((2,), jnp.int32))


# ------------------------------------------------------------------------- misc


def test_bfloat16_compute():
  g = Generator(resolution=8, channels=3, width=4, z_dim=8, dtype=jnp.bfloat16)
  d = Discriminator(resolution=8, channels=3, width=4, norm='group', dtype=jnp.bfloat16)
  variables, z = init_g(g)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  x, _ = apply_train(g, variables, z)
  assert x.dtype == jnp.bfloat16
  logits = d.apply(fill(jax.eval_shape(d.init, KEY, x)), x)
  assert logits.dtype == jnp.float32 and logits.shape == (B,)


def test_registry():
  assert 'dcgan' in models.available()
  g_cls, d_cls = models.get('dcgan')
  assert g_cls is Generator and d_cls is Discriminator
  g = models.get_generator('dcgan', resolution=32, channels=1, width=4, z_dim=8)
  d = models.get_discriminator('dcgan', resolution=32, channels=1, width=4, norm='none')
  assert isinstance(g, Generator) and g.resolution == 32
  assert isinstance(d, Discriminator) and d.norm == 'none'
  with pytest.raises(ValueError, match='unknown architecture'):
    models.get('no-such-gan')
  models.register('dcgan_alias', 'osgan_jax.models.dcgan')
  try:
    assert models.get('dcgan_alias') == (Generator, Discriminator)
  finally:
    models._ARCHITECTURES.pop('dcgan_alias')


# ------------------------------------------------- equality with the PyTorch reference


def _torch_models(torch, z_dim, d, c, bias):
  tnn = torch.nn
  g = tnn.Sequential(
      tnn.ConvTranspose2d(z_dim, d * 8, 4, 1, 0, bias=bias),
      tnn.BatchNorm2d(d * 8),
      tnn.ReLU(),
      tnn.ConvTranspose2d(d * 8, d * 4, 4, 2, 1, bias=bias),
      tnn.BatchNorm2d(d * 4),
      tnn.ReLU(),
      tnn.ConvTranspose2d(d * 4, d * 2, 4, 2, 1, bias=bias),
      tnn.BatchNorm2d(d * 2),
      tnn.ReLU(),
      tnn.ConvTranspose2d(d * 2, d, 4, 2, 1, bias=bias),
      tnn.BatchNorm2d(d),
      tnn.ReLU(),
      tnn.ConvTranspose2d(d, c, 4, 2, 1, bias=bias),
      tnn.Tanh(),
  )
  disc = tnn.Sequential(
      tnn.Conv2d(c, d, 4, 2, 1, bias=bias),
      tnn.LeakyReLU(0.2),
      tnn.Conv2d(d, d * 2, 4, 2, 1, bias=bias),
      tnn.BatchNorm2d(d * 2),
      tnn.LeakyReLU(0.2),
      tnn.Conv2d(d * 2, d * 4, 4, 2, 1, bias=bias),
      tnn.BatchNorm2d(d * 4),
      tnn.LeakyReLU(0.2),
      tnn.Conv2d(d * 4, d * 8, 4, 2, 1, bias=bias),
      tnn.BatchNorm2d(d * 8),
      tnn.LeakyReLU(0.2),
      tnn.Conv2d(d * 8, 1, 4, 1, 0, bias=bias),
  )
  return g, disc


def _to_torch(torch, module_params, torch_seq):
  """Copies Flax params into the torch Sequential (convs and BatchNorms in order)."""
  convs = [
      m for m in torch_seq if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
  ]
  bns = [m for m in torch_seq if isinstance(m, torch.nn.BatchNorm2d)]
  conv_names = sorted(
      (k for k in module_params if k.startswith('conv')),
      key=lambda k: int(k.lstrip('convT')),
  )
  norm_names = sorted(
      (k for k in module_params if k.startswith('norm')), key=lambda k: int(k[4:])
  )
  with torch.no_grad():
    for name, m in zip(conv_names, convs, strict=True):
      k = np.asarray(module_params[name]['kernel'])  # [kh, kw, in, out]
      if isinstance(m, torch.nn.ConvTranspose2d):
        # torch [in, out, kh, kw]; Flax's ConvTranspose does not flip the kernel.
        w = k[::-1, ::-1].transpose(2, 3, 0, 1)
      else:
        w = k.transpose(3, 2, 0, 1)  # torch [out, in, kh, kw]
      m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
      if m.bias is not None:
        m.bias.copy_(torch.from_numpy(np.array(module_params[name]['bias'])))
    for name, m in zip(norm_names, bns, strict=True):
      m.weight.copy_(torch.from_numpy(np.array(module_params[name]['scale'])))
      m.bias.copy_(torch.from_numpy(np.array(module_params[name]['bias'])))


@needs_torch
@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.long
def test_matches_pytorch_dcgan(bias):
  import torch  # pylint: disable=import-outside-toplevel

  z_dim, width, c = 6, 2, 3
  g = Generator(resolution=64, channels=c, width=width, z_dim=z_dim, use_bias=bias)
  d = Discriminator(resolution=64, channels=c, width=width, use_bias=bias)
  g_vars, z = init_g(g, batch=4)
  d_vars, _ = init_d(d, batch=4)
  # fill() draws non-zero biases, so a misplaced bias would show.
  tg, td = _torch_models(torch, z_dim, width, c, bias)
  _to_torch(torch, g_vars['params'], tg)
  _to_torch(torch, d_vars['params'], td)
  assert n_params(g_vars['params']) == sum(p.numel() for p in tg.parameters())
  assert n_params(d_vars['params']) == sum(p.numel() for p in td.parameters())
  tg.train()
  td.train()

  x, _ = apply_train(g, g_vars, z)
  logits, _ = apply_train(d, d_vars, x)
  with torch.no_grad():
    tx = tg(torch.from_numpy(np.array(z)).reshape(4, z_dim, 1, 1))
    tlogits = td(tx).reshape(4)
  np.testing.assert_allclose(np.asarray(x), tx.permute(0, 2, 3, 1).numpy(), atol=2e-5)
  np.testing.assert_allclose(np.asarray(logits), tlogits.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.long
def test_bfloat16_compute_from_the_config():
  """``model.*.dtype='bfloat16'`` (issue 15): the convolutions of the training step run
  in bfloat16 while parameters, optimiser state and losses stay float32; a dtype that
  is not one is a one-line error."""
  from osgan_jax import config as config_lib
  from osgan_jax.tasks import gan
  from osgan_jax.core import steps

  path = config_path('dcgan_fashion_mnist')
  config = config_lib.load_config(
      path,
      {
          'model.generator.width': 8,
          'model.discriminator.width': 8,
          'batch_size': 8,
          'data.resolution': 16,
          'model.generator.dtype': 'bfloat16',
          'model.discriminator.dtype': 'bfloat16',
      },
  )
  g_net, d_net = gan.create_models(config)
  g = gan.make_gan(config, g_net, d_net)
  state = jax.jit(gan.make_init(config, g, g_net, d_net))(jax.random.PRNGKey(0))
  step = functools.partial(steps.STEPS['one'], steps.probe_per_sample(g, state, None))
  batch = {
      'image': jax.random.uniform(
          jax.random.PRNGKey(1), (8, 16, 16, 1), minval=-1.0, maxval=1.0
      )
  }
  jaxpr = str(jax.make_jaxpr(step)(state, batch, jax.random.PRNGKey(2)))
  # (On CPU the convolutions are matmul reformulations: conv_ops' 'auto'.)
  ops = [
      l for l in jaxpr.splitlines() if 'conv_general_dilated' in l or 'dot_general' in l
  ]
  in_bf16 = [l for l in ops if 'bf16' in l]
  assert ops and len(in_bf16) >= 0.9 * len(ops), (len(in_bf16), len(ops))
  new, metrics = jax.jit(step)(state, batch, jax.random.PRNGKey(2))
  for leaf in jax.tree.leaves(
      (new.params_g, new.params_d, new.opt_state_g, new.opt_state_d)
  ):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  assert metrics['loss_d'].dtype == jnp.float32 and np.isfinite(metrics['loss_d'])
  bad = config_lib.load_config(path, {'model.discriminator.dtype': 'bfloat17'})
  with pytest.raises(
      config_lib.ConfigError,
      match="config.model.discriminator.dtype='bfloat17' is not a dtype",
  ):
    gan.create_models(bad)
