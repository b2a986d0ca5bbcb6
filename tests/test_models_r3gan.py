"""R3GAN networks (osgan_jax.models.r3gan) against the official brownvc/R3GAN code.

* Parameter counts of the two paper presets (CIFAR-10 conditional, FFHQ-256), written
  here as arithmetic over the official layer list (``R3GAN/Networks.py`` with the
  ``train.py`` presets), equal ``osgan_jax.summary``'s counts (via ``eval_shape``).
* A float64 numpy re-implementation of the official forward passes (NCHW, PyTorch
  weight layouts, the reference ``conv_transpose2d`` / ``conv2d`` resamplers of
  ``R3GAN/Resamplers.py``) equals G and D on random (not fix-up) weights.
* Fix-up init (every residual block is the identity), the MSR init scales, the
  resampling filters, shapes at 16 / 32 / 256, per-sample independence, mixed
  precision, and ``configs/r3gan_fashion_mnist.py``'s summary (tests/test_train.py trains
  it).
"""

import contextlib
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax import config as config_lib, models, summary
from osgan_jax.core import one_stage
from osgan_jax.models import r3gan
from osgan_jax.models import summary as model_summary
from helpers import config_path, rounding_atol  # pylint: disable=import-error

# Initialisers draw one normal tensor per parameter; on CPU XLA compiles every threefry
# draw separately. The cheaper-to-compile 'unsafe_rbg' bit generator keeps inits fast.
KEY = jax.random.key(0, impl='unsafe_rbg')


def randomised(tree, seed, scale=0.3, offset=0.0):
  """Every leaf replaced by offset-shifted N(0, scale^2) numpy draws (no XLA compiles)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: jnp.asarray(
          offset * np.asarray(a) + scale * rng.standard_normal(a.shape), jnp.float32
      ),
      tree,
  )


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------ official parameter counts

# train.py presets (G's lists, 4x4 first; D gets them reversed). ExpansionFactor = 2.
CIFAR10 = dict(
    widths=[3 * x // 4 for x in [1024, 1024, 1024, 1024]],
    blocks=[2 * x for x in [1, 1, 1, 1]],
    cardinalities=[3 * x for x in [32, 32, 32, 32]],
    noise_dim=64,
    expansion=2,
    resolution=32,
)
FFHQ256 = dict(
    widths=[3 * x // 4 for x in [1024, 1024, 1024, 1024, 512, 256, 128]],
    blocks=[2 * x for x in [1, 1, 1, 1, 1, 1, 1]],
    cardinalities=[3 * x for x in [32, 32, 32, 32, 16, 8, 4]],
    noise_dim=64,
    expansion=2,
    resolution=256,
)


def official_residual_block(width, cardinality, expansion, kernel=3):
  """``ResidualBlock``: LinearLayer1 Conv(W -> E, 1x1), LinearLayer2 Conv(E -> E, kxk,
  groups=cardinality), LinearLayer3 Conv(E -> W, 1x1), all bias=False; NonLinearity1/2
  ``BiasedActivation(E)`` (one bias vector each)."""
  e = width * expansion
  return width * e + e * (e // cardinality) * kernel * kernel + e * width + 2 * e


def official_generator_params(
    widths,
    cardinalities,
    blocks,
    noise_dim,
    expansion,
    c_dim=None,
    embed_dim=0,
    img_channels=3,
    **_,
):
  n = 0
  if c_dim is not None:  # EmbeddingLayer: Linear(c_dim -> embed, bias=False)
    n += c_dim * embed_dim
  # Stage 0: GenerativeBasis (Basis [W0, 4, 4] + Linear(noise + embed -> W0, no bias)).
  n += widths[0] * 4 * 4 + (noise_dim + embed_dim) * widths[0]
  n += blocks[0] * official_residual_block(widths[0], cardinalities[0], expansion)
  for i in range(1, len(widths)):  # UpsampleLayer: 1x1 conv only if the width changes
    if widths[i - 1] != widths[i]:
      n += widths[i - 1] * widths[i]
    n += blocks[i] * official_residual_block(widths[i], cardinalities[i], expansion)
  return n + widths[-1] * img_channels  # AggregationLayer: Conv(W -> 3, 1x1)


def official_discriminator_params(
    widths, cardinalities, blocks, expansion, c_dim=None, embed_dim=0, img_channels=3, **_
):
  w, c, b = widths[::-1], cardinalities[::-1], blocks[::-1]  # D_kwargs: reversed
  n = img_channels * w[0]  # ExtractionLayer: Conv(3 -> W, 1x1)
  for i in range(len(w) - 1):  # blocks, then DownsampleLayer (1x1 if the width changes)
    n += b[i] * official_residual_block(w[i], c[i], expansion)
    if w[i] != w[i + 1]:
      n += w[i] * w[i + 1]
  n += b[-1] * official_residual_block(w[-1], c[-1], expansion)
  # DiscriminativeBasis: depthwise Conv(W, W, 4x4, groups=W) + Linear(W -> out, no bias)
  n += w[-1] * 4 * 4 + w[-1] * (1 if c_dim is None else embed_dim)
  if c_dim is not None:  # EmbeddingLayer: Linear(c_dim -> embed, bias=False)
    n += c_dim * embed_dim
  return n


def summary_counts(preset, num_classes=0, g_embed=None, d_embed=None):
  kw = dict(
      resolution=preset['resolution'],
      widths=preset['widths'],
      cardinalities=preset['cardinalities'],
      blocks_per_stage=preset['blocks'],
      expansion=preset['expansion'],
      num_classes=num_classes,
  )
  g = r3gan.Generator(z_dim=preset['noise_dim'], embed_dim=g_embed, **kw)
  d = r3gan.Discriminator(embed_dim=d_embed, **kw)
  return model_summary.summarize(
      g, d, batch_size=2, num_classes=num_classes, out=io.StringIO()
  )


def test_param_counts_cifar10_conditional_match_official():
  # Conditional CIFAR-10: ConditionEmbeddingDimension = NoiseDimension (G) and
  # WidthPerStage[0] (D), ConditionDimension = 10 classes.
  p = CIFAR10
  g_embed, d_embed = p['noise_dim'], p['widths'][0]
  expected_g = official_generator_params(**p, c_dim=10, embed_dim=g_embed)
  expected_d = official_discriminator_params(**p, c_dim=10, embed_dim=d_embed)
  assert (expected_g, expected_d) == (20_781_952, 21_280_512)
  totals = summary_counts(p, num_classes=10)  # default embeddings = the presets'
  assert (totals['G'], totals['D']) == (expected_g, expected_d)
  totals = summary_counts(p, num_classes=10, g_embed=g_embed, d_embed=d_embed)
  assert (totals['G'], totals['D']) == (expected_g, expected_d)
  # Unconditional CIFAR-10 (the repository's other CIFAR run).
  totals = summary_counts(p)
  assert (totals['G'], totals['D']) == (
      official_generator_params(**p),
      official_discriminator_params(**p),
  )
  assert (totals['G'], totals['D']) == (20_732_160, 20_683_776)


def test_param_counts_ffhq256_match_official():
  p = FFHQ256
  expected = (official_generator_params(**p), official_discriminator_params(**p))
  assert expected == (23_057_952, 23_009_568)
  totals = summary_counts(p)
  assert (totals['G'], totals['D']) == expected


def test_default_schedule_is_the_presets():
  """channel_base 24576, channel_max 768, 16 channels per group, 2 blocks reproduce
  the CIFAR-10 and FFHQ-256 stage lists."""
  for p in (CIFAR10, FFHQ256):
    widths, cards, blocks = r3gan.Generator(resolution=p['resolution']).schedule()
    assert list(widths) == p['widths']
    assert list(cards) == p['cardinalities']
    assert list(blocks) == p['blocks']
  assert r3gan.stage_resolutions(256) == [4, 8, 16, 32, 64, 128, 256]
  with pytest.raises(ValueError, match='stages'):
    r3gan.Generator(resolution=64, widths=(8, 8, 8)).schedule()
  with pytest.raises(ValueError, match='divisible'):
    r3gan.stage_schedule(8, widths=(8, 8), cardinalities=(3, 3))
  with pytest.raises(ValueError, match='power of two'):
    r3gan.stage_resolutions(48)


# --------------------------------------------------------------- tiny networks, shapes

TINY = dict(channel_base=128, channel_max=16, group_size=8, blocks_per_stage=1)


def tiny(resolution=16, channels=3, num_classes=0, **kw):
  kw = {**TINY, **kw}
  g = r3gan.Generator(
      resolution=resolution, channels=channels, z_dim=8, num_classes=num_classes, **kw
  )
  d = r3gan.Discriminator(
      resolution=resolution, channels=channels, num_classes=num_classes, **kw
  )
  return g, d


def init_both(g, d, batch=3, num_classes=0, seed=0):
  k = jax.random.fold_in(KEY, seed)
  z = jnp.asarray(
      np.random.default_rng(seed).standard_normal((batch, g.z_dim)), jnp.float32
  )
  y = jnp.asarray(np.arange(batch) % num_classes, jnp.int32) if num_classes else None
  gv = jax.jit(g.init)(jax.random.fold_in(k, 2), z, y)
  x = jax.jit(g.apply)(gv, z, y)
  dv = jax.jit(d.init)(jax.random.fold_in(k, 3), x, y)
  return gv, dv, z, y, x


@pytest.mark.parametrize('resolution,num_classes', [(16, 0), (32, 3)])
@pytest.mark.long
def test_shapes_tiny(resolution, num_classes):
  g, d = tiny(resolution, channels=1 if num_classes else 3, num_classes=num_classes)
  gv, dv, z, y, x = init_both(g, d, num_classes=num_classes)
  assert set(gv) == {'params'} and set(dv) == {'params'}
  assert x.shape == (3, resolution, resolution, g.channels) and x.dtype == jnp.float32
  logits = jax.jit(d.apply)(dv, x, y)
  assert logits.shape == (3,) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(x))) and np.all(np.isfinite(np.asarray(logits)))
  # train has no effect.
  np.testing.assert_array_equal(
      jax.jit(g.apply, static_argnames='train')(gv, z, y, train=False), x
  )
  np.testing.assert_array_equal(
      jax.jit(d.apply, static_argnames='train')(dv, x, y, train=False), logits
  )
  if num_classes:
    with pytest.raises(ValueError, match='conditional'):
      g.apply(gv, z)
  else:
    with pytest.raises(ValueError, match='unconditional'):
      d.apply(dv, x, jnp.zeros((3,), jnp.int32))


def test_shapes_256_abstract():
  g, d = r3gan.Generator(resolution=256), r3gan.Discriminator(resolution=256)
  z = jax.ShapeDtypeStruct((2, 64), jnp.float32)
  x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  out = jax.eval_shape(lambda z: g.apply(g.init(KEY, z), z), z)
  assert (out.shape, out.dtype) == ((2, 256, 256, 3), jnp.float32)
  out = jax.eval_shape(lambda x: d.apply(d.init(KEY, x), x), x)
  assert (out.shape, out.dtype) == ((2,), jnp.float32)


def test_registry_and_config_fields():
  g_cls, d_cls = models.get('r3gan')
  assert (g_cls, d_cls) == (r3gan.Generator, r3gan.Discriminator)
  for cls in (g_cls, d_cls):  # what gan.create_models sets from the config
    assert {'resolution', 'channels', 'num_classes'} <= set(cls.__dataclass_fields__)
  assert 'z_dim' in g_cls.__dataclass_fields__


# ---------------------------------------------------------------- initialisation


def _block_paths(params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return [(tuple(k.key for k in path), leaf) for path, leaf in flat]


def test_fixup_last_conv_zero_and_blocks_are_identity():
  g, d = tiny(16, blocks_per_stage=2)
  gv, dv, *_ = init_both(g, d)
  for variables in (gv, dv):
    leaves = _block_paths(variables['params'])
    conv3 = [l for p, l in leaves if 'conv3' in p]
    assert len(conv3) == 2 * 3  # two blocks in each of three stages
    assert all(np.all(np.asarray(l) == 0) for l in conv3)
    assert all(np.all(np.asarray(l) == 0) for p, l in leaves if p[-1] == 'bias')
  # A residual block at init maps x to x exactly, whatever x.
  block = r3gan.ResidualBlock(cardinality=4, expansion=2, num_blocks_total=8)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 16)), jnp.float32)
  variables = jax.jit(block.init)(KEY, x)
  apply = jax.jit(block.apply)
  np.testing.assert_array_equal(apply(variables, x), x)
  # ... and is not the identity once conv3 is not zero.
  assert not np.allclose(apply(randomised(variables, 1, 0.1, 1.0), x), x)


def test_msr_init_scales():
  """std = gain / sqrt(fan_in): the branch gain sqrt(2 / 1.04) * L^(-1/4) for conv1 /
  conv2 (fan_in = in / groups * k * k), gain 1 elsewhere; the G basis ~ N(0, 1)."""
  L = 8
  assert math.isclose(r3gan.branch_gain(L), math.sqrt(2 / (1 + 0.2**2)) * L**-0.25)
  block = r3gan.ResidualBlock(cardinality=4, expansion=2, num_blocks_total=L)
  p = jax.jit(block.init)(KEY, jnp.zeros((1, 4, 4, 64)))['params']
  gain = r3gan.branch_gain(L)
  assert p['conv1']['kernel'].shape == (1, 1, 64, 128)
  assert p['conv2']['kernel'].shape == (3, 3, 32, 128)  # 128 / 4 groups
  assert p['conv3']['kernel'].shape == (1, 1, 128, 64)
  np.testing.assert_allclose(np.std(p['conv1']['kernel']), gain / 8, rtol=0.05)
  np.testing.assert_allclose(
      np.std(p['conv2']['kernel']), gain / math.sqrt(9 * 32), rtol=0.05
  )
  g = r3gan.Generator(
      resolution=8,
      z_dim=64,
      widths=(64, 32),
      cardinalities=(8, 4),
      blocks_per_stage=1,
      num_classes=10,
  )
  gp = jax.jit(g.init)(KEY, jnp.zeros((1, 64)), jnp.zeros((1,), jnp.int32))['params']
  np.testing.assert_allclose(np.std(gp['stage0']['basis']['basis']), 1.0, rtol=0.1)
  np.testing.assert_allclose(
      np.std(gp['stage0']['basis']['kernel']), 1 / math.sqrt(128), rtol=0.05
  )
  np.testing.assert_allclose(
      np.std(gp['embed']['embedding']), 1 / math.sqrt(10), rtol=0.15
  )
  d = r3gan.Discriminator(
      resolution=8,
      widths=(64, 32),
      cardinalities=(8, 4),
      blocks_per_stage=1,
      num_classes=10,
  )
  dp = jax.jit(d.init)(KEY, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32))['params']
  assert dp['embed']['embedding'].shape == (10, 64)
  np.testing.assert_allclose(
      np.std(dp['embed']['embedding']), 1 / math.sqrt(64 * 10), rtol=0.1
  )
  np.testing.assert_allclose(np.std(dp['stage1']['basis']['basis']), 1 / 4, rtol=0.15)


# ---------------------------------------------------------------- resampling


def ref_upsample(x, k2):
  """Official reference upsampler: per-channel conv_transpose2d(4 * K, stride 2,
  padding len([1, 2, 1]) // 2 = 1); x NCHW."""
  b, c, h, w = x.shape
  kh = k2.shape[0]
  full = np.zeros((b, c, 2 * (h - 1) + kh, 2 * (w - 1) + kh))
  for i in range(h):
    for j in range(w):
      full[:, :, 2 * i : 2 * i + kh, 2 * j : 2 * j + kh] += (
          x[:, :, i, j, None, None] * 4 * k2
      )
  return full[:, :, 1:-1, 1:-1]


def ref_downsample(x, k2):
  """Official reference downsampler: per-channel conv2d(K, stride 2, padding 1)."""
  b, c, h, w = x.shape
  kh = k2.shape[0]
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = np.zeros((b, c, h // 2, w // 2))
  for a in range(kh):
    for bb in range(kh):
      out += (
          xp[:, :, a : a + h : 2, bb : bb + w : 2][:, :, : h // 2, : w // 2] * k2[a, bb]
      )
  return out


def test_resampling_filters_are_official():
  np.testing.assert_allclose(r3gan.lowpass_filter(), np.array([1, 3, 3, 1]) / 8)
  k2 = r3gan.lowpass_kernel_2d()
  np.testing.assert_allclose(k2, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)
  f = r3gan.lowpass_filter()
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3))
  to_nchw = lambda a: np.transpose(np.asarray(a, np.float64), (0, 3, 1, 2))
  up = r3gan.upsample(jnp.asarray(x, jnp.float32), f)
  down = r3gan.downsample(jnp.asarray(x, jnp.float32), f)
  assert up.shape == (2, 16, 16, 3) and down.shape == (2, 4, 4, 3)
  np.testing.assert_allclose(to_nchw(up), ref_upsample(to_nchw(x), k2), atol=1e-5)
  np.testing.assert_allclose(to_nchw(down), ref_downsample(to_nchw(x), k2), atol=1e-5)


def test_resampling_known_cases():
  f = r3gan.lowpass_filter()
  ones = jnp.ones((1, 8, 8, 1))
  down = np.asarray(r3gan.downsample(ones, f))[0, :, :, 0]
  up = np.asarray(r3gan.upsample(ones, f))[0, :, :, 0]
  # A constant stays constant away from the zero-padded border; at the border the
  # official zero padding loses the outer tap: 7/8 (down), 3/4 (up) per axis.
  np.testing.assert_allclose(down[1:-1, 1:-1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(down[0, 1:-1], 7 / 8, rtol=1e-6)
  np.testing.assert_allclose(up[1:-1, 1:-1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(up[0, 1:-1], 3 / 4, rtol=1e-6)
  np.testing.assert_allclose(up[0, 0], 9 / 16, rtol=1e-6)
  # Upsampling then downsampling keeps constants (interior) and is otherwise the
  # low-pass [3, 10, 3] / 16 per axis: (2 * ([1,3,3,1] * [1,3,3,1])[::2]) / 64.
  np.testing.assert_allclose(
      np.asarray(r3gan.downsample(r3gan.upsample(ones, f), f))[0, 1:-1, 1:-1, 0],
      1.0,
      rtol=1e-6,
  )
  delta = jnp.zeros((1, 9, 9, 1)).at[0, 4, 4, 0].set(1.0)
  h = np.asarray(r3gan.downsample(r3gan.upsample(delta, f), f))[0, :, :, 0]
  np.testing.assert_allclose(
      h[3:6, 3:6], np.outer([3, 10, 3], [3, 10, 3]) / 256, atol=1e-7
  )
  assert np.abs(h).sum() == pytest.approx(1.0)


def _grouped_conv_outputs(impl):
  """sum(sin(conv)) of a 3-group conv, its gradients and a gradient penalty's kernel
  gradient (second order), jitted, and how many rounded terms make each value."""

  def value(x, w):
    return jnp.sum(jnp.sin(r3gan.grouped_conv(x, w, 3, impl)))

  def outputs(x, w):
    v, (gx, gw) = jax.value_and_grad(value, argnums=(0, 1))(x, w)
    r1 = jax.grad(lambda w: jnp.sum(jax.grad(value)(x, w) ** 2))(w)
    return {'value': v, 'grad_x': gx, 'grad_w': gw, 'r1_grad_w': r1}

  # The longest chain of rounded sums behind one value: a 3x3 kernel over a group's 4
  # channels is 36 terms (the conv, its transpose), a kernel gradient sums 2 * 6 * 6 =
  # 72 positions, the value 2 * 6 * 6 * 12 = 864 sines.
  terms = {'value': 864 + 36, 'grad_x': 36 + 36, 'grad_w': 36 + 72}
  terms['r1_grad_w'] = 36 + 36 + 36 + 72  # conv, transpose, conv of the cotangent, sum
  return jax.jit(outputs), terms


def test_grouped_conv_impls_agree():
  """'dense' (block-diagonal kernel, the CPU default) and 'xla' (feature groups) are
  the same function, with the same gradients: equal in float64 (within its rounding),
  and each within float32 rounding of that float64 value.

  Bounds from what is summed, not from one machine (helpers.rounding_atol): n rounded
  terms along the longest chain of sums, times eps, times the terms' size: the largest
  |value| of the tensor (|sin| <= 1 for the value's terms). The float32 impls differ by
  rounding that depends on the CPU (XLA's CPU convolutions block their sums by the
  cache sizes): on an AMD EPYC by 1.9e-3 in a second-order gradient of scale ~900,
  where a wrong group would be off by the scale itself.
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 12)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 12)), jnp.float32)  # 3 groups
  dense = r3gan.block_diagonal_kernel(w, 3)
  assert dense.shape == (3, 3, 12, 12)
  np.testing.assert_array_equal(dense[:, :, 4:8, 4:8], w[:, :, :, 4:8])
  assert np.all(np.asarray(dense[:, :, :4, 4:]) == 0)
  impls = ('dense', 'xla')
  with jax.enable_x64(True):  # the same float32 inputs, computed in float64
    x64, w64 = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)
    ref = {i: jax.device_get(_grouped_conv_outputs(i)[0](x64, w64)) for i in impls}
  out = {i: jax.device_get(_grouped_conv_outputs(i)[0](x, w)) for i in impls}
  _, terms = _grouped_conv_outputs('dense')
  for key, n in terms.items():
    scale = 864.0 if key == 'value' else None  # 864 terms of |sin| <= 1
    atol64 = rounding_atol(ref['dense'][key], n, np.float64, scale)
    np.testing.assert_allclose(ref['xla'][key], ref['dense'][key], rtol=0, atol=atol64)
    atol = rounding_atol(ref['dense'][key], n, np.float32, scale)
    for impl in impls:
      np.testing.assert_allclose(
          out[impl][key], ref['dense'][key], rtol=0, atol=atol, err_msg=f'{impl} {key}'
      )
    # So the float32 impls are within twice that of each other (the second-order
    # gradient is a gradient penalty's kernel gradient).
    np.testing.assert_allclose(
        out['dense'][key], out['xla'][key], rtol=0, atol=2 * atol, err_msg=key
    )
  with pytest.raises(ValueError, match='conv_impl'):
    r3gan.grouped_conv(x, w, 3, 'nope')


# ------------------------------------------------- numpy reference of the official code


def np_conv(x, w, groups=1):
  """torch conv2d, stride 1, padding (k - 1) // 2; x NCHW, w [out, in / groups, k, k]."""
  b, c, h, wd = x.shape
  o, cg, k, _ = w.shape
  p = (k - 1) // 2
  xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))).reshape(
      b, groups, cg, h + 2 * p, wd + 2 * p
  )
  wg = w.reshape(groups, o // groups, cg, k, k)
  out = np.zeros((b, groups, o // groups, h, wd))
  for a in range(k):
    for bb in range(k):
      out += np.einsum(
          'bgchw,goc->bgohw', xp[..., a : a + h, bb : bb + wd], wg[..., a, bb]
      )
  return out.reshape(b, o, h, wd)


def lrelu(x):
  return np.where(x >= 0, x, 0.2 * x)


def torch_conv_weight(kernel):  # [k, k, in/g, out] -> [out, in/g, k, k]
  return np.transpose(np.asarray(kernel, np.float64), (3, 2, 0, 1))


def ref_block(x, p, cardinality):
  y = np_conv(x, torch_conv_weight(p['conv1']['kernel']))
  y = lrelu(y + np.asarray(p['act1']['bias'], np.float64)[None, :, None, None])
  y = np_conv(y, torch_conv_weight(p['conv2']['kernel']), groups=cardinality)
  y = lrelu(y + np.asarray(p['act2']['bias'], np.float64)[None, :, None, None])
  return x + np_conv(y, torch_conv_weight(p['conv3']['kernel']))


def ref_generator(params, z, y_onehot, widths, cards, blocks):
  """Official ``Generator.forward`` (NCHW, float64)."""
  f64 = lambda a: np.asarray(a, np.float64)
  k2 = r3gan.lowpass_kernel_2d().astype(np.float64)
  x = np.asarray(z, np.float64)
  if y_onehot is not None:  # EmbeddingLayer: Linear weight [embed, classes]
    x = np.concatenate([x, y_onehot @ f64(params['embed']['embedding'])], axis=1)
  for i in range(len(widths)):
    sp = params[f'stage{i}']
    if i == 0:  # GenerativeBasis: Basis [C, 4, 4] * Linear(x)
      basis = np.transpose(f64(sp['basis']['basis']), (2, 0, 1))
      x = basis[None] * (x @ f64(sp['basis']['kernel']))[:, :, None, None]
    else:
      if 'transition' in sp:
        x = np_conv(x, torch_conv_weight(sp['transition']['kernel']))
      x = ref_upsample(x, k2)
    for j in range(blocks[i]):
      x = ref_block(x, sp[f'block{j}'], cards[i])
  return np_conv(x, torch_conv_weight(params['aggregate']['kernel']))


def ref_discriminator(params, x, y_onehot, widths, cards, blocks):
  """Official ``Discriminator.forward`` (NCHW, float64); lists 4x4 first (reversed
  here as train.py reverses them)."""
  f64 = lambda a: np.asarray(a, np.float64)
  k2 = r3gan.lowpass_kernel_2d().astype(np.float64)
  widths, cards, blocks = widths[::-1], cards[::-1], blocks[::-1]
  x = np_conv(np.asarray(x, np.float64), torch_conv_weight(params['extract']['kernel']))
  n = len(widths)
  for i in range(n):
    sp = params[f'stage{i}']
    for j in range(blocks[i]):
      x = ref_block(x, sp[f'block{j}'], cards[i])
    if i < n - 1:
      x = ref_downsample(x, k2)
      if 'transition' in sp:
        x = np_conv(x, torch_conv_weight(sp['transition']['kernel']))
    else:  # DiscriminativeBasis: depthwise 4x4 valid conv, then Linear
      basis = f64(sp['basis']['basis'])[:, :, 0, :]  # [4, 4, C]
      x = np.einsum('bchw,hwc->bc', x, basis) @ f64(sp['basis']['kernel'])
  if y_onehot is not None:
    x = (x * (y_onehot @ f64(params['embed']['embedding']))).sum(axis=1, keepdims=True)
  return x.reshape(x.shape[0])


@pytest.mark.parametrize('num_classes', [0, 3])
@pytest.mark.long
def test_matches_numpy_reference_of_official_networks(num_classes):
  kw = dict(widths=(16, 16, 8), cardinalities=(4, 2, 2), blocks_per_stage=(1, 2, 1))
  g = r3gan.Generator(
      resolution=16,
      channels=3,
      z_dim=8,
      num_classes=num_classes,
      embed_dim=5 if num_classes else None,
      **kw,
  )
  d = r3gan.Discriminator(resolution=16, channels=3, num_classes=num_classes, **kw)
  gv, dv, z, y, _ = init_both(g, d, batch=2, num_classes=num_classes, seed=4)
  # Random weights everywhere (fix-up zeros would hide the residual branches).
  gp, dp = randomised(gv['params'], 1), randomised(dv['params'], 2)
  onehot = np.eye(num_classes)[np.asarray(y)] if num_classes else None
  lists = ([16, 16, 8], [4, 2, 2], [1, 2, 1])
  x = jax.jit(g.apply)({'params': gp}, z, y)
  expected = np.transpose(ref_generator(gp, z, onehot, *lists), (0, 2, 3, 1))
  np.testing.assert_allclose(
      np.asarray(x), expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max()
  )
  logits = jax.jit(d.apply)({'params': dp}, x, y)
  expected = ref_discriminator(
      dp, np.transpose(np.asarray(x), (0, 3, 1, 2)), onehot, *lists
  )
  np.testing.assert_allclose(
      np.asarray(logits), expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max()
  )


# ---------------------------------------------------------------- independence


@pytest.mark.long
def test_samples_independent():
  g, d = tiny(16, num_classes=3)
  gv, dv, z, y, x = init_both(g, d, batch=4, num_classes=3)
  # No zero branch hides a coupling.
  gv, dv = randomised(gv, 5, 0.1, 1.0), randomised(dv, 6, 0.1, 1.0)
  discriminate = jax.jit(lambda p, images: d.apply(p, images, y))
  assert one_stage.samples_independent(discriminate, dv, x)
  _, tangent = jax.jit(lambda z, t: jax.jvp(lambda z: g.apply(gv, z, y), (z,), (t,)))(
      z, jnp.zeros_like(z).at[0].set(1.0)
  )
  assert np.any(np.asarray(tangent[0]) != 0)
  assert np.all(np.asarray(tangent[1:]) == 0)


# ---------------------------------------------------------------- mixed precision


def test_mixed_precision_stages():
  g, d = tiny(16, num_mixed_stages=2)
  g32, d32 = tiny(16)
  gv, dv, z, _, x = init_both(g32, d32)
  calls = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      calls[tuple(context.module.path)] = out.dtype
    return out

  import flax.linen as nn

  with nn.intercept_methods(record):
    xm = jax.jit(g.apply)(gv, z)
  # G: the two highest-resolution stages (8x8, 16x16) in bfloat16.
  assert [calls[(f'stage{i}',)] for i in range(3)] == [
      jnp.float32,
      jnp.bfloat16,
      jnp.bfloat16,
  ]
  calls.clear()
  with nn.intercept_methods(record):
    lm = jax.jit(d.apply)(dv, x)
  # D: the first two stages (16x16, 8x8) and the extraction conv in bfloat16.
  assert [calls[(f'stage{i}',)] for i in range(2)] == [jnp.bfloat16, jnp.bfloat16]
  assert calls[('extract',)] == jnp.bfloat16
  assert calls[('stage2',)] == jnp.float32
  assert xm.dtype == jnp.float32 and lm.dtype == jnp.float32
  l32 = jax.jit(d32.apply)(dv, x)
  np.testing.assert_allclose(xm, x, atol=0.05 * float(jnp.abs(x).max()))
  np.testing.assert_allclose(lm, l32, atol=0.05 * float(jnp.abs(l32).max()))


# ---------------------------------------------------------------- training loop

CONFIG = config_path('r3gan_fashion_mnist')


def test_config_summary():
  config = config_lib.load_config(CONFIG)
  assert (config.model.name, config.loss, config.num_classes) == (
      'r3gan',
      'relativistic',
      10,
  )
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    totals = summary.summarize_config(config)
  assert json.loads(buf.getvalue().strip().splitlines()[-1]) == totals
  assert totals == {'G': 97_808, 'D': 94_416}


# The config's training runs: tests/test_train.py (E2E_RUNS trains it two-stage, and
# r3gan_ffhq256 one-stage; test_every_config_builds_and_traces_its_steps traces the rest).


@pytest.mark.parametrize(
    'name,counts,batch,gamma',
    [
        ('r3gan_cifar10', (20_781_952, 21_280_512), 512, (0.05, 0.005)),
        ('r3gan_ffhq256', (23_057_952, 23_009_568), 256, (150.0, 15.0)),
    ],
)
def test_paper_configs_are_the_official_presets(name, counts, batch, gamma):
  """The two paper configs build the official networks (parameter counts from
  ``summary``) and ramp lr, beta2, gamma and the EMA half-life as the official loop
  does per image: ``cosine_decay_with_warmup(cur_nimg, base, 2e7, final)``."""
  import math
  from osgan_jax.tasks import gan
  from osgan_jax.tasks import hparams

  config = config_lib.load_config(config_path(name))
  with contextlib.redirect_stdout(io.StringIO()):
    totals = summary.summarize_config(config)
  assert (totals['G'], totals['D']) == counts
  assert int(config.batch_size) == batch and config.loss == 'relativistic'

  def official(nimg, base, final, total=2e7):
    decay = 0.5 * (1 + math.cos(math.pi * nimg / total))
    return final if nimg > total else base + (1 - decay) * (final - base)

  g = gan.make_gan(config, *gan.create_models(config))
  ema = hparams.value(config, 'ema_half_life_kimg')
  ema_final = {'r3gan_cifar10': 5000.0, 'r3gan_ffhq256': 500.0}[name]
  for step in (0, 1000, 20_000, 39_000, 80_000):
    nimg = step * batch
    for key in ('g_lr', 'd_lr'):
      np.testing.assert_allclose(
          float(hparams.value(config, key)(step)), official(nimg, 2e-4, 5e-5), rtol=2e-4
      )
    np.testing.assert_allclose(
        float(hparams.value(config, 'b2')(step)), official(nimg, 0.9, 0.99), rtol=2e-4
    )
    weights = g.penalty_weights(step)
    for key in ('r1', 'r2'):
      np.testing.assert_allclose(float(weights[key]), official(nimg, *gamma), rtol=2e-4)
    np.testing.assert_allclose(
        float(ema(step)), official(nimg, 0.0, ema_final), rtol=2e-4, atol=1e-3
    )
