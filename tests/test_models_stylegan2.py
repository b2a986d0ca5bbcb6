"""StyleGAN2 networks: official parameter counts (eval_shape), FIR resampling and
modulated convolution against direct numpy references, a tiny G/D forward+backward on
CPU, minibatch-std coupling, truncation, style mixing, w_avg tracking, mixed
precision, second-order gradients, and the summary CLI."""

import contextlib
import functools
import io
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax import summary
from osgan_jax.models import stylegan2 as sg
from osgan_jax.models import stylegan2_ops as ops
from helpers import REPO, config_path  # pylint: disable=import-error


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def rngs(seed=0, impl=None):
  k = jax.random.key(seed, impl=impl)
  return {
      'params': k,
      'noise': jax.random.fold_in(k, 1),
      'mixing': jax.random.fold_in(k, 2),
  }


# Initialisers draw one normal tensor per parameter; on CPU XLA compiles every threefry
# draw separately (seconds each on 2 cores). The real inits below use the cheaper-to-
# compile 'unsafe_rbg' key implementation: same model code, different bit generator.
FAST = 'unsafe_rbg'
KEY = jax.random.key(0, impl=FAST)


def fkey(seed):
  return jax.random.key(seed, impl=FAST)


def abstract_counts(resolution):
  g, d = sg.config_f(resolution)
  z = jax.ShapeDtypeStruct((2, 512), jnp.float32)
  x = jax.ShapeDtypeStruct((4, resolution, resolution, 3), jnp.float32)
  gv = jax.eval_shape(lambda z: g.init(rngs(), z, train=False), z)
  dv = jax.eval_shape(lambda x: d.init(rngs(), x), x)
  return gv, dv


# ------------------------------------------------------------------ parameter counts


def test_param_counts_1024_match_official():
  gv, dv = abstract_counts(1024)
  assert n_params(gv['params']['mapping']) == 2_101_248
  assert n_params(gv['params']['synthesis']) == 28_268_812
  assert n_params(gv['params']) == 30_370_060
  assert n_params(dv['params']) == 29_012_513
  # Non-trainable state lives outside 'params': w_avg and the const noise buffers.
  assert gv['batch_stats']['mapping']['w_avg'].shape == (512,)
  assert gv['buffers']['synthesis']['b1024']['conv1']['noise_const'].shape == (1024, 1024)
  assert gv['params']['synthesis']['b1024']['conv1']['noise_strength'].shape == ()
  assert set(dv) == {'params'}


def test_param_counts_256():
  gv, dv = abstract_counts(256)
  assert n_params(gv['params']['mapping']) == 2_101_248
  assert n_params(gv['params']['synthesis']) == 27_933_090
  assert n_params(gv['params']) == 30_034_338
  assert n_params(dv['params']) == 28_864_129
  assert sg.Generator(resolution=256).num_ws == 14
  assert sg.Generator().num_ws == 18


def test_channel_formula():
  assert sg.channels_dict(1024) == {
      4: 512,
      8: 512,
      16: 512,
      32: 512,
      64: 512,
      128: 256,
      256: 128,
      512: 64,
      1024: 32,
  }
  assert sg.fp16_resolution(1024, 4) == 128
  assert sg.fp16_resolution(16, 4) == 8


# ------------------------------------------------------------------ numpy references


def np_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), flip=False, gain=1.0):
  """Direct definition: zero-insert, pad/crop, convolve (valid), subsample. NHWC."""
  f = np.asarray(f, np.float64)
  if f.ndim == 1:
    f = np.outer(f, f)
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  xu = np.zeros((b, h * up, w * up, c))
  xu[:, ::up, ::up] = x
  x0, x1, y0, y1 = pad
  xp = np.pad(xu, ((0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0)), (0, 0)))
  xp = xp[
      :, max(-y0, 0) : xp.shape[1] - max(-y1, 0), max(-x0, 0) : xp.shape[2] - max(-x1, 0)
  ]
  k = f * gain
  if not flip:
    k = k[::-1, ::-1]
  fh, fw = k.shape
  ho, wo = xp.shape[1] - fh + 1, xp.shape[2] - fw + 1
  out = np.zeros((b, ho, wo, c))
  for i in range(fh):
    for j in range(fw):
      out += xp[:, i : i + ho, j : j + wo] * k[i, j]
  return out[:, ::down, ::down]


def np_corr(x, w):
  """Valid cross-correlation, x [B,H,W,I], w [kh,kw,I,O]."""
  kh, kw = w.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum('bhwi,io->bhwo', x[:, i : i + ho, j : j + wo], w[i, j])
  return out


def np_conv_resample(x, w, f, up, down, padding, flip_weight):
  """Generic definition of the official conv2d_resample: FIR-upsample, conv, FIR-down."""
  n = len(f)
  p = [padding] * 4
  if up > 1:
    p = [padding + (n + up - 1) // 2, padding + (n - up) // 2] * 2
    x = np_upfirdn2d(x, f, up=up, pad=tuple(p), gain=up**2)
  elif down > 1:
    p = [padding + (n - down + 1) // 2, padding + (n - down) // 2] * 2
    x = np_upfirdn2d(x, f, pad=tuple(p))
  else:
    x = np_upfirdn2d(x, [1.0], pad=tuple(p))
  y = np_corr(x, w if flip_weight else w[::-1, ::-1])
  return y[:, ::down, ::down] if down > 1 else y


# ------------------------------------------------------------------ FIR resampling

F = ops.setup_filter([1, 3, 3, 1])


def test_setup_filter():
  np.testing.assert_allclose(F, np.array([1, 3, 3, 1]) / 8)
  f2 = ops.setup_filter([1, 3, 3, 1], separable=False)
  np.testing.assert_allclose(f2, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)


@pytest.mark.parametrize(
    'up,down,pad,flip,gain',
    [
        (1, 1, (0, 0, 0, 0), False, 1.0),
        (2, 1, (2, 1, 2, 1), False, 4.0),
        (1, 2, (1, 1, 1, 1), False, 1.0),
        (2, 2, (1, -1, 2, 0), True, 3.0),
        (3, 1, (-1, 2, 0, 3), False, 1.0),
    ],
)
def test_upfirdn2d_matches_numpy(up, down, pad, flip, gain, monkeypatch):
  x = np.random.default_rng(0).standard_normal((2, 8, 7, 3)).astype(np.float32)
  ref = np_upfirdn2d(x, F, up, down, pad, flip, gain)
  f2d = ops.setup_filter([1, 3, 3, 1], separable=False)
  for impl, f in (('conv', F), ('slices', F), ('conv', f2d)):
    monkeypatch.setattr(ops, 'FIR_IMPL', impl)
    out = np.asarray(jax.jit(lambda x: ops.upfirdn2d(x, f, up, down, pad, flip, gain))(x))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_upfirdn2d_asymmetric_2d_filter():
  x = np.random.default_rng(1).standard_normal((1, 6, 6, 2)).astype(np.float32)
  f = np.array([[1, 2, 0], [0, 5, 1], [3, 0, 0]], np.float32)
  for flip in (False, True):
    out = np.asarray(ops.upfirdn2d(jnp.asarray(x), f, 2, 1, (1, 2, 0, 1), flip))
    np.testing.assert_allclose(
        out, np_upfirdn2d(x, f, 2, 1, (1, 2, 0, 1), flip), atol=1e-5
    )


def test_resampling_preserves_constant_image():
  x = jnp.full((1, 8, 8, 2), 0.7, jnp.float32)
  up = np.asarray(jax.jit(lambda x: ops.upsample2d(x, F))(x))
  down = np.asarray(jax.jit(lambda x: ops.downsample2d(x, F))(x))
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(up[:, 2:-2, 2:-2], 0.7, rtol=1e-6)  # away from the borders
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 0.7, rtol=1e-6)
  # Matches a direct convolution with the 2-D [1,3,3,1] kernel.
  np.testing.assert_allclose(
      up, np_upfirdn2d(x, F, up=2, pad=(2, 1, 2, 1), gain=4), atol=1e-6
  )
  np.testing.assert_allclose(
      down, np_upfirdn2d(x, F, down=2, pad=(1, 1, 1, 1)), atol=1e-6
  )


@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize(
    'up,down,flip_weight', [(1, 1, True), (2, 1, False), (1, 2, True), (2, 1, True)]
)
def test_conv2d_resample_matches_generic_definition(k, up, down, flip_weight):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 8, 8, 5)).astype(np.float32)
  w = rng.standard_normal((k, k, 5, 4)).astype(np.float32)
  out = np.asarray(
      jax.jit(lambda x, w: ops.conv2d_resample(x, w, F, up, down, k // 2, flip_weight))(
          x, w
      )
  )
  ref = np_conv_resample(x, w, F, up, down, k // 2, flip_weight)
  assert out.shape == ref.shape == (2, 8 * up // down, 8 * up // down, 4)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


# ------------------------------------------------------------------ modulated conv


@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('demodulate', [True, False])
def test_modulated_conv_matches_per_sample_reference(up, demodulate):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((3, 8, 8, 5)).astype(np.float32)
  w = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)
  s = rng.standard_normal((3, 5)).astype(np.float32)
  flip = up == 1  # as SynthesisLayer
  ref = []
  for b in range(3):  # the slow way: one conv per sample with its own modulated weights
    wb = w * s[b][None, None, :, None]
    if demodulate:
      wb = wb / np.sqrt(np.sum(wb**2, axis=(0, 1, 2), keepdims=True) + 1e-8)
    ref.append(np_conv_resample(x[b : b + 1], wb, F, up, 1, 1, flip)[0])
  ref = np.stack(ref)

  def run(x, fused):
    return ops.modulated_conv2d(
        x,
        jnp.asarray(w),
        jnp.asarray(s),
        up=up,
        padding=1,
        resample_filter=F,
        demodulate=demodulate,
        flip_weight=flip,
        fused_modconv=fused,
    )

  run = jax.jit(run, static_argnums=1)
  for fused in (False, True):
    out = run(jnp.asarray(x), fused)
    np.testing.assert_allclose(
        np.asarray(out), ref, atol=2e-5 * np.abs(ref).max(), rtol=1e-4
    )
  low = run(jnp.asarray(x, jnp.bfloat16), False)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.asarray(low, np.float32), ref, atol=0.03 * np.abs(ref).max()
  )


def test_demodulation_gives_unit_std():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((16, 16, 16, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 24)), jnp.float32)
  s = jnp.asarray(rng.standard_normal((16, 32)) * 3.0 + 1.0, jnp.float32)  # any styles
  run = jax.jit(
      lambda x, w, s, demod: ops.modulated_conv2d(x, w, s, padding=1, demodulate=demod),
      static_argnums=3,
  )
  y = np.asarray(run(x, w, s, True))[:, 1:-1, 1:-1]  # interior: no zero padding
  np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=0.06)
  # Without demodulation the scale follows the styles.
  assert np.asarray(run(x, w, s, False)).std() > 5.0


def test_bias_act_gain_and_clamp():
  x = jnp.array([[-2.0, 0.5, 300.0]])
  y = ops.bias_act(x, jnp.array([0.0, 0.5, 0.0]), act='lrelu', clamp=256.0)
  np.testing.assert_allclose(
      np.asarray(y), [[-0.4 * np.sqrt(2), np.sqrt(2), 256.0]], rtol=1e-6
  )
  assert ops.activation_gain('lrelu') == pytest.approx(np.sqrt(2))


def test_minibatch_std_groups_as_official():
  x = np.random.default_rng(4).standard_normal((8, 2, 2, 6)).astype(np.float32)
  y = np.asarray(jax.jit(lambda x: ops.minibatch_std(x, 4, 1))(x))
  assert y.shape == (8, 2, 2, 7)
  g = x.reshape(
      4, 2, 2, 2, 6
  )  # official reshape [G, N/G, ...]: group j = samples j, j+2, ...
  std = np.sqrt(g.var(axis=0) + 1e-8).mean(axis=(1, 2, 3))  # [N/G]
  np.testing.assert_allclose(y[:, 0, 0, -1], np.tile(std, 4), rtol=1e-5)
  # group size min(4, batch): a batch of 2 is one group
  y2 = np.asarray(jax.jit(lambda x: ops.minibatch_std(x, 4, 1))(x[:2]))
  np.testing.assert_allclose(
      y2[0, 0, 0, -1], np.sqrt(x[:2].var(axis=0) + 1e-8).mean(), rtol=1e-5
  )


# ------------------------------------------------------------------ tiny networks

TINY = dict(
    resolution=16,
    img_channels=1,
    z_dim=32,
    w_dim=32,
    mapping_layers=2,
    channel_base=256,
    channel_max=32,
)
B = 4


@pytest.fixture(scope='module')
def tiny():
  g, d = sg.tiny(**TINY)
  rng = np.random.default_rng(6)
  z = jnp.asarray(rng.standard_normal((B, g.z_dim)), jnp.float32)
  imgs = jnp.asarray(rng.uniform(-1, 1, (B, 16, 16, 1)), jnp.float32)
  gv = jax.jit(functools.partial(g.init, noise_mode='none', train=False))(
      rngs(0, FAST), z
  )
  dv = jax.jit(d.init)(rngs(1, FAST), imgs)
  # a non-trivial w_avg, as after training
  gv = dict(
      gv,
      batch_stats={
          'mapping': {'w_avg': jnp.asarray(rng.standard_normal(g.w_dim), jnp.float32)}
      },
  )
  return g, d, gv, dv, z, imgs


@pytest.fixture(scope='module')
def gen(tiny):
  """Jitted generator calls (one compile each, shared by the tests)."""
  g = tiny[0]
  return {
      'const': jax.jit(
          lambda v, z, mkey, prob: g.apply(
              v,
              z,
              style_mixing_prob=prob,
              noise_mode='const',
              train=False,
              rngs={'mixing': mkey},
          )
      ),
      'random': jax.jit(
          lambda v, z, nkey: g.apply(
              v,
              z,
              style_mixing_prob=0.0,
              noise_mode='random',
              train=False,
              rngs={'noise': nkey},
          )
      ),
      'none': jax.jit(lambda v, z: g.apply(v, z, noise_mode='none', train=False)),
      'map': jax.jit(
          lambda v, z, mkey, prob, psi: g.apply(
              v,
              z,
              style_mixing_prob=prob,
              truncation_psi=psi,
              rngs={'mixing': mkey},
              method=sg.Generator.map,
              train=False,
          )
      ),
  }


@pytest.mark.long
def test_conv_impls_agree_to_the_second_order(tiny, monkeypatch):
  """conv_impl='matmul' (the CPU default; patch forms at every size here) and 'xla' are
  the same networks: G's images and parameter gradients, D's logits and its R1
  penalty's parameter gradients (a second derivative) agree to float32 rounding."""
  from osgan_jax.models import conv_ops

  monkeypatch.setattr(conv_ops, 'RESAMPLE_MIN_MACS', 0)
  _, _, gv, dv, z, imgs = tiny

  def outputs(impl):
    g, d = sg.tiny(**TINY, conv_impl=impl)

    def g_loss(gp):
      img = g.apply({**gv, 'params': gp}, z, noise_mode='const', train=False)
      return jnp.sum(jnp.sin(img)), img

    def r1(dp):
      grad = jax.grad(lambda x: jnp.sum(d.apply({'params': dp}, x)))(imgs)
      return jnp.sum(grad**2)

    (_, img), g_grads = jax.jit(jax.value_and_grad(g_loss, has_aux=True))(gv['params'])
    logits = jax.jit(d.apply)(dv, imgs)
    return img, g_grads, logits, jax.jit(jax.grad(r1))(dv['params'])

  fast, ref = outputs('matmul'), outputs('xla')
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)):
    scale = float(jnp.max(jnp.abs(b))) + 1e-30
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale


def test_tiny_variables(tiny):
  g, d, gv, dv, _, _ = tiny
  assert set(gv) == {'params', 'batch_stats', 'buffers'}
  assert set(gv['params']) == {'mapping', 'synthesis'}
  assert set(gv['params']['synthesis']) == {'b4', 'b8', 'b16'}
  assert set(dv['params']) == {'b16', 'b8', 'b4'}
  assert n_params(gv['params']) < 100_000 and n_params(dv['params']) < 100_000
  # equalised lr: raw weights ~ N(0, 1), mapping weights ~ N(0, 1) / lr_mul
  w = np.asarray(gv['params']['synthesis']['b16']['conv0']['weight'])
  assert 0.8 < w.std() < 1.2
  assert 80 < np.asarray(gv['params']['mapping']['fc0']['weight']).std() < 120
  np.testing.assert_array_equal(
      gv['params']['synthesis']['b8']['conv0']['affine']['bias'], 1.0
  )


@functools.lru_cache(maxsize=None)
def _train_step(g, d):
  """G forward (mixing prob traced) + D forward, and grads of a GAN-like loss."""

  def loss(gp, dp, gstate, z, imgs, key, prob):
    fake, upd = g.apply(
        {'params': gp, **gstate},
        z,
        style_mixing_prob=prob,
        rngs={'noise': key, 'mixing': jax.random.fold_in(key, 7)},
        mutable=['batch_stats'],
    )
    logits = d.apply({'params': dp}, jnp.concatenate([imgs, fake]))
    real_logits, fake_logits = logits[: len(imgs)], logits[len(imgs) :]
    val = jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))
    return val, (fake, fake_logits, upd)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def test_tiny_forward_backward(tiny):
  g, d, gv, dv, z, imgs = tiny
  state = {'batch_stats': gv['batch_stats']}
  (val, (fake, logits, upd)), (gg, dg) = _train_step(g, d)(
      gv['params'], dv['params'], state, z, imgs, fkey(5), 0.9
  )
  assert fake.shape == (B, 16, 16, 1) and fake.dtype == jnp.float32
  assert logits.shape == (B,)
  assert np.isfinite(float(val))
  assert all(
      np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves((gg, dg))
  )
  assert np.all(np.isfinite(np.asarray(fake))) and 0.05 < float(jnp.std(fake)) < 20
  # every parameter gets a gradient, including the noise strengths
  assert jax.tree_util.tree_structure(gg) == jax.tree_util.tree_structure(gv['params'])
  assert float(jnp.abs(gg['synthesis']['b16']['conv1']['noise_strength'])) > 0
  assert float(jnp.abs(gg['mapping']['fc0']['weight']).sum()) > 0
  # train=True with a mutable batch_stats updates w_avg
  assert not np.allclose(
      upd['batch_stats']['mapping']['w_avg'], gv['batch_stats']['mapping']['w_avg']
  )


def test_style_mixing_changes_output_only_when_prob_positive(tiny, gen):
  _, _, gv, _, z, _ = tiny
  base = np.asarray(gen['const'](gv, z, fkey(0), 0.0))
  for seed in (3, 4):
    np.testing.assert_array_equal(gen['const'](gv, z, fkey(seed), 0.0), base)
  mixed = np.asarray(gen['const'](gv, z, fkey(3), 1.0))
  assert np.abs(mixed - base).max() > 1e-3


def test_style_mixing_ws(tiny, gen):
  g, _, gv, _, z, _ = tiny
  mapw = lambda prob, seed=0: np.asarray(gen['map'](gv, z, fkey(seed), prob, 1.0))
  plain = mapw(0.0)
  assert plain.shape == (B, g.num_ws, g.w_dim)
  np.testing.assert_array_equal(plain, plain[:, :1].repeat(g.num_ws, axis=1))  # broadcast
  cut_seen = set()
  for seed in range(6):
    mixed = mapw(1.0, seed)
    same = np.all(mixed == plain, axis=(0, 2))
    cutoff = int(np.argmin(same))
    assert 1 <= cutoff < g.num_ws  # with p=1 a cutoff in [1, num_ws) is always drawn
    assert same[:cutoff].all() and not same[cutoff:].any()
    np.testing.assert_array_equal(
        mixed[:, cutoff:], mixed[:, -1:].repeat(g.num_ws - cutoff, 1)
    )
    cut_seen.add(cutoff)
  assert len(cut_seen) > 1
  np.testing.assert_array_equal(mapw(0.0, 5), plain)
  # eval default (train=False, no prob given): no mixing, no 'mixing' rng needed
  np.testing.assert_allclose(
      g.apply(gv, z, method=sg.Generator.map, train=False), plain, rtol=1e-5, atol=1e-6
  )


def test_truncation_and_w_avg(tiny, gen):
  g, _, gv, _, z, _ = tiny
  w_avg = np.asarray(gv['batch_stats']['mapping']['w_avg'])
  mapw = lambda psi: np.asarray(gen['map'](gv, z, KEY, 0.0, psi))
  ws0 = mapw(0.0)
  np.testing.assert_allclose(ws0, np.broadcast_to(w_avg, ws0.shape), rtol=1e-6)
  ws1 = mapw(1.0)
  np.testing.assert_allclose(mapw(0.5), w_avg + 0.5 * (ws1 - w_avg), rtol=1e-5, atol=1e-6)
  ws_cut = np.asarray(
      g.apply(
          gv,
          z,
          method=sg.Generator.map,
          train=False,
          truncation_psi=0.0,
          truncation_cutoff=2,
      )
  )
  np.testing.assert_allclose(ws_cut[:, :2], np.broadcast_to(w_avg, ws_cut[:, :2].shape))
  np.testing.assert_allclose(ws_cut[:, 2:], ws1[:, 2:], rtol=1e-5, atol=1e-5)
  # w_avg update: lerp(mean_w, w_avg, 0.995), only with train=True and a mutable collection
  _, upd = g.apply(
      gv,
      z,
      method=sg.Generator.map,
      train=True,
      style_mixing_prob=0.0,
      mutable=['batch_stats'],
  )
  mean = ws1[:, 0].mean(axis=0)
  np.testing.assert_allclose(
      upd['batch_stats']['mapping']['w_avg'],
      mean + 0.995 * (w_avg - mean),
      rtol=1e-5,
      atol=1e-6,
  )
  _, upd = g.apply(gv, z, method=sg.Generator.map, train=False, mutable=['batch_stats'])
  np.testing.assert_array_equal(upd['batch_stats']['mapping']['w_avg'], w_avg)
  # immutable batch_stats in training mode (e.g. inside a gradient): read-only, no error
  g.apply(gv, z, method=sg.Generator.map, train=True, style_mixing_prob=0.0)


def test_noise_modes(tiny, gen):
  g, _, gv, _, z, _ = tiny
  c1 = np.asarray(gen['const'](gv, z, KEY, 0.0))
  np.testing.assert_array_equal(gen['const'](gv, z, KEY, 0.0), c1)
  # noise strengths are initialised to 0: all modes agree until they are trained
  np.testing.assert_allclose(gen['none'](gv, z), c1, atol=1e-6)
  np.testing.assert_allclose(gen['random'](gv, z, KEY), c1, atol=1e-6)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 1.0 if 'noise_strength' in jax.tree_util.keystr(p) else x,
      gv['params'],
  )
  gv2 = dict(gv, params=params)
  r1 = np.asarray(gen['random'](gv2, z, fkey(1)))
  r2 = np.asarray(gen['random'](gv2, z, fkey(2)))
  c = np.asarray(gen['const'](gv2, z, KEY, 0.0))
  n = np.asarray(gen['none'](gv2, z))
  assert np.abs(r1 - r2).max() > 1e-3 and np.abs(c - n).max() > 1e-3
  # random mode does not need the 'buffers' collection (traced only)
  no_buffers = {k: v for k, v in gv2.items() if k != 'buffers'}
  assert jax.eval_shape(gen['random'], no_buffers, z, fkey(1)).shape == r1.shape


def test_synthesize_method_matches_call(tiny, gen):
  g, _, gv, _, z, _ = tiny
  ws = gen['map'](gv, z, KEY, 0.0, 1.0)
  a = jax.jit(
      lambda v, w: g.apply(v, w, method=sg.Generator.synthesize, noise_mode='const')
  )(gv, ws)
  np.testing.assert_allclose(
      np.asarray(a), np.asarray(gen['const'](gv, z, KEY, 0.0)), rtol=1e-6, atol=1e-6
  )


def test_minibatch_std_couples_samples(tiny):
  _, d, _, dv, _, imgs = tiny
  fwd = jax.jit(d.apply)
  base = np.asarray(fwd(dv, imgs))
  pert = np.asarray(fwd(dv, imgs.at[0].add(0.5 * jax.random.normal(KEY, imgs.shape[1:]))))
  assert base.shape == (B,)
  assert abs(pert[1] - base[1]) > 1e-6  # sample 1's logit depends on sample 0
  # without minibatch std (same weights minus the stddev input channel) they are independent
  _, d_ind = sg.tiny(**TINY, mbstd_num_channels=0)
  params = jax.tree_util.tree_map(lambda x: x, dv['params'])
  params['b4']['conv']['weight'] = params['b4']['conv']['weight'][:, :, :-1, :]
  f2 = jax.jit(d_ind.apply)
  np.testing.assert_allclose(
      f2({'params': params}, imgs.at[0].add(1.0))[1:],
      f2({'params': params}, imgs)[1:],
      rtol=1e-5,
  )


def test_mixed_precision_forward(tiny, gen):
  _, _, gv, dv, z, imgs = tiny  # same variables: num_fp16_res changes no parameter
  g, d = sg.tiny(**TINY, num_fp16_res=2, conv_clamp=256)

  @jax.jit
  def run(gv, dv, z):
    out, state = g.apply(
        gv,
        z,
        train=False,
        noise_mode='const',
        capture_intermediates=True,
        mutable=['intermediates'],
    )
    return out, d.apply(dv, out), state['intermediates']

  out, logits, inter = run(gv, dv, z)
  assert out.dtype == jnp.float32 and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out))) and np.all(np.isfinite(np.asarray(logits)))
  blocks = inter['synthesis']
  assert blocks['b4']['__call__'][0][0].dtype == jnp.float32
  assert blocks['b8']['__call__'][0][0].dtype == jnp.bfloat16  # top 2 resolutions
  assert blocks['b16']['__call__'][0][0].dtype == jnp.bfloat16
  assert blocks['b16']['__call__'][0][1].dtype == jnp.float32  # the image stays float32
  # close to the float32 network
  ref = np.asarray(gen['const'](gv, z, KEY, 0.0))
  assert np.abs(np.asarray(out) - ref).max() < 0.05 * np.abs(ref).max() + 0.05


def test_second_order_gradients_of_ops():
  """R1 / path-length penalties differentiate gradients: every op must be twice
  differentiable (a gradient penalty through a chain of all the ops used by G and D)."""
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 3)), jnp.float32)
  params = {
      name: jnp.asarray(rng.standard_normal(shape), jnp.float32)
      for name, shape in [
          ('w_down', (3, 3, 3, 4)),
          ('b', (4,)),
          ('w_mod', (3, 3, 5, 4)),
          ('s', (4, 5)),
          ('w_rgb', (1, 1, 4, 2)),
      ]
  }

  def net(p, x):
    y = ops.conv2d_resample(x, p['w_down'], F, down=2, padding=1)
    y = ops.bias_act(y, p['b'], act='lrelu', clamp=256.0)
    y = ops.minibatch_std(y, 4, 1)
    y = ops.modulated_conv2d(
        y, p['w_mod'], p['s'], up=2, padding=1, resample_filter=F, flip_weight=False
    )
    y = ops.modulated_conv2d(y, p['w_rgb'], p['s'][:, :4], demodulate=False)
    return jnp.sum(ops.upsample2d(y, F) * jnp.cos(jnp.arange(2.0))) + jnp.sum(
        ops.downsample2d(y, F) ** 2
    )

  def penalty(p):
    g = jax.grad(net, argnums=1)(p, x)
    return jnp.sum(jnp.square(g))

  grads = jax.jit(jax.grad(penalty))(params)
  leaves = [np.asarray(v) for v in jax.tree_util.tree_leaves(grads)]
  assert all(np.all(np.isfinite(v)) for v in leaves)
  assert all(np.abs(v).sum() > 0 for v in leaves)
  # directional finite difference of the penalty agrees with its gradient
  d = {
      k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32) for k, v in params.items()
  }
  eps = 1e-2
  pen = jax.jit(penalty)
  fd = (
      pen({k: params[k] + eps * d[k] for k in params})
      - pen({k: params[k] - eps * d[k] for k in params})
  ) / (2 * eps)
  an = sum(jnp.vdot(grads[k], d[k]) for k in params)
  np.testing.assert_allclose(float(fd), float(an), rtol=2e-2)


def test_other_architectures_and_labels_shapes():
  for arch in ('orig', 'resnet'):
    g, _ = sg.tiny(**{**TINY, 'architecture': arch})
    out = jax.eval_shape(
        lambda z: g.init_with_output(rngs(), z, train=False)[0],
        jax.ShapeDtypeStruct((B, 32), jnp.float32),
    )
    assert out.shape == (B, 16, 16, 1)
  for arch in ('orig', 'skip'):
    _, d = sg.tiny(**{**TINY, 'architecture': arch})
    out = jax.eval_shape(
        lambda x: d.init_with_output(rngs(), x)[0],
        jax.ShapeDtypeStruct((B, 16, 16, 1), jnp.float32),
    )
    assert out.shape == (B,)
  g, d = sg.tiny(**TINY, c_dim=10)
  labels = jax.ShapeDtypeStruct((B,), jnp.int32)  # class ids are one-hot encoded
  out = jax.eval_shape(
      lambda z, c: g.init_with_output(rngs(), z, c, train=False)[0],
      jax.ShapeDtypeStruct((B, 32), jnp.float32),
      labels,
  )
  assert out.shape == (B, 16, 16, 1)
  out, dv = jax.eval_shape(
      lambda x, c: d.init_with_output(rngs(), x, c),
      jax.ShapeDtypeStruct((B, 16, 16, 1), jnp.float32),
      labels,
  )
  assert out.shape == (B,) and 'mapping' in dv['params']


# ------------------------------------------------------------------ summary CLI


def test_summary_of_the_ffhq_config_at_1024():
  from osgan_jax import config as config_lib

  config = config_lib.load_config(config_path('stylegan2_ffhq'))
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    totals = summary.summarize_config(config)
  text = buf.getvalue()
  last = json.loads(text.strip().splitlines()[-1])
  assert (
      last
      == totals
      == {
          'G': 30_370_060,
          'G_mapping': 2_101_248,
          'G_synthesis': 28_268_812,
          'D': 29_012_513,
      }
  )
  for row in ('mapping/fc7', 'synthesis/b4', 'synthesis/b1024', 'b1024', 'b4'):
    assert any(line.startswith(row + ' ') for line in text.splitlines()), row
  assert '30,370,060' in text and '29,012,513' in text


def test_summary_cli_subprocess():
  """``--config`` plus ``--config.x=y`` overrides, as the issue's command line."""
  env = dict(
      os.environ,
      PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
      JAX_PLATFORMS='cpu',
  )
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'osgan_jax.summary',
          '--config=configs/stylegan2_tiny.py',
          '--config.data.resolution=16',
          '--config.model.generator.channel_base=256',
          '--config.model.generator.channel_max=32',
          '--config.model.discriminator.channel_base=256',
          '--config.model.discriminator.channel_max=32',
          '--config.z_dim=32',
          '--config.model.generator.w_dim=32',
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=env,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  totals = json.loads(proc.stdout.strip().splitlines()[-1])
  g, d = sg.tiny(**TINY)
  gv = jax.eval_shape(
      lambda z: g.init(rngs(), z, train=False), jax.ShapeDtypeStruct((2, 32), jnp.float32)
  )
  dv = jax.eval_shape(
      lambda x: d.init(rngs(), x), jax.ShapeDtypeStruct((4, 16, 16, 1), jnp.float32)
  )
  assert totals == {
      'G': n_params(gv['params']),
      'G_mapping': n_params(gv['params']['mapping']),
      'G_synthesis': n_params(gv['params']['synthesis']),
      'D': n_params(dv['params']),
  }
