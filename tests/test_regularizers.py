"""StyleGAN2 regularisers, lazy-regularisation Adam and the generator EMA.

R1 and path length against direct computations, float64 finite differences and the
official PyTorch formulas run verbatim (when torch is installed); lazy Adam and EMA
against the official numbers; a tiny StyleGAN2 trained one-stage with R1, path-length
and EMA steps alternating, each jitted step traced once; the one-stage gradient with
the minibatch-std discriminator against the reference gradients.
"""

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from osgan_jax.core import one_stage, steps
from osgan_jax.core import optimizers
from osgan_jax.core import regularizers as reg
from osgan_jax.models import stylegan2 as sg
from osgan_jax.models import stylegan2_ops as sg_ops
from helpers import needs_torch  # pylint: disable=import-error

FAST = 'unsafe_rbg'


def fkey(seed):
  return jax.random.key(seed, impl=FAST)


def _np(tree):
  return jax.tree.map(np.asarray, tree)


# ----------------------------------------------------------------------------- R1

IMAGE = (8, 8, 2)


def _np_params(tree_fn, seed, dtype=np.float32):
  """Random parameters with the shapes of ``tree_fn()`` (numpy: no RNG compiles)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(tree_fn)

  def leaf(s):
    if len(s.shape) < 2:
      return jnp.asarray(np.full(s.shape, 0.05), dtype)
    fan_in = int(np.prod(s.shape[:-1]))
    return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(fan_in), dtype)

  return jax.tree.map(leaf, shapes)


def _d_params(seed, dtype=np.float32, mbstd=False):
  c = IMAGE[-1]
  c_in = 5 if mbstd else 4
  shapes = {
      'c1': (3, 3, c, 4),
      'b1': (4,),
      'c2': (3, 3, c_in, 8),
      'b2': (8,),
      'w': (2 * 2 * 8, 1),
      'b': (1,),
  }
  return _np_params(lambda: {k: jnp.zeros(v) for k, v in shapes.items()}, seed, dtype)


def _toy_d(params, x, mbstd=False):
  """A small conv discriminator [B, 8, 8, 2] -> [B] (smooth activations), optionally
  with StyleGAN2's minibatch standard deviation layer (which couples samples)."""
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  h = jax.nn.silu(conv(x, params['c1']) + params['b1'])
  if mbstd:
    h = sg_ops.minibatch_std(h, 4, 1)
  h = jax.nn.silu(conv(h, params['c2']) + params['b2'])
  return (h.reshape(h.shape[0], -1) @ params['w'] + params['b'])[:, 0]


def _normal(seed, shape, dtype=np.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def test_r1_equals_per_sample_computation_for_a_per_sample_d():
  disc = _toy_d
  params = _d_params(0)
  x = _normal(1, (5,) + IMAGE)

  @jax.jit
  def both(params, x):
    penalty, logits = reg.r1_penalty(disc, params, x)
    # straightforward: each sample alone, ||d D(x_i) / d x_i||^2, then the mean
    per_sample = jax.vmap(jax.grad(lambda xi: disc(params, xi[None])[0]))(x)
    expected = jnp.mean(jnp.sum(jnp.square(per_sample), axis=(1, 2, 3)))
    return penalty, logits, expected, disc(params, x)

  penalty, logits, expected, direct = both(params, x)
  np.testing.assert_allclose(penalty, expected, rtol=1e-5)
  np.testing.assert_allclose(logits, direct, rtol=1e-6)
  assert penalty.shape == () and penalty.dtype == jnp.float32 and float(penalty) > 0


def _directional_fd(fn, params, d, h=1e-6):
  """(central difference of fn along the direction d, <grad fn, d>)."""
  shift = lambda s: jax.tree.map(lambda p, v: p + s * v, params, d)
  fd = (fn(shift(h)) - fn(shift(-h))) / (2 * h)
  grads = jax.grad(fn)(params)
  an = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(d)))
  return fd, an


def test_r1_finite_differences_float64():
  """The input gradient and the penalty's parameter gradient (what the R1 step
  differentiates: a second-order derivative) against central differences."""
  with jax.enable_x64(True):
    disc = _toy_d
    params = _d_params(0, np.float64)
    x = _normal(1, (3,) + IMAGE, np.float64)
    h = 1e-6

    d = _np_params(lambda: params, 2, np.float64)

    @jax.jit
    def check(params, x, d):
      # d sum(D) / dx by central differences, one pixel at a time (vmapped)
      total = lambda x: jnp.sum(disc(params, x))
      basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
      fd = jax.vmap(lambda e: (total(x + h * e) - total(x - h * e)) / (2 * h))(basis)
      expected = jnp.mean(jnp.sum(jnp.square(fd.reshape(x.shape)), axis=(1, 2, 3)))
      penalty, _ = reg.r1_penalty(disc, params, x)
      # directional derivative of the penalty w.r.t. D's parameters
      fd_dir, an_dir = _directional_fd(lambda p: reg.r1_penalty(disc, p, x)[0], params, d)
      return penalty, expected, fd_dir, an_dir

    penalty, expected, fd_dir, an_dir = check(params, x, d)
    assert penalty.dtype == jnp.float64
    np.testing.assert_allclose(penalty, expected, rtol=1e-7)
    assert abs(float(an_dir)) > 1e-3
    np.testing.assert_allclose(fd_dir, an_dir, rtol=1e-6)


def test_r1_with_minibatch_std_is_the_gradient_of_the_summed_logits():
  """Minibatch std couples samples: R1 regularises d sum_j D(x_j) / d x_i (official),
  which then differs from the per-sample d D(x_i) / d x_i."""
  disc = functools.partial(_toy_d, mbstd=True)
  params = _d_params(3, mbstd=True)
  x = _normal(4, (4,) + IMAGE)

  @jax.jit
  def check(params, x):
    jac = jax.jacrev(lambda x: disc(params, x))(x)  # [B_out, B_in, H, W, C]
    of_sum = jnp.sum(jac, axis=0)
    expected = jnp.mean(jnp.sum(jnp.square(of_sum), axis=(1, 2, 3)))
    diagonal = jnp.stack([jac[i, i] for i in range(x.shape[0])])
    per_sample = jnp.mean(jnp.sum(jnp.square(diagonal), axis=(1, 2, 3)))
    return reg.r1_penalty(disc, params, x)[0], expected, per_sample

  penalty, expected, per_sample = check(params, x)
  np.testing.assert_allclose(penalty, expected, rtol=1e-5)
  assert abs(float(per_sample - penalty)) > 1e-4 * float(penalty)


# ----------------------------------------------------------------------- path length

H, W, C, NUM_WS, W_DIM, Z_DIM = 4, 4, 2, 3, 5, 4


def _toy_synthesize(params, ws):
  """ws [B, NUM_WS, W_DIM] -> NHWC images, nonlinear in ws and params."""
  b = ws.shape[0]
  flat = ws.reshape(b, -1)
  y = jnp.tanh(flat @ params['s'] + params['sb']) * (
      1.0 + 0.1 * jnp.sin(flat @ params['t'])
  )
  return y.reshape(b, C, H, W).transpose(0, 2, 3, 1)  # official NCHW order


def _toy_g_params(seed, dtype=np.float32):
  rng = np.random.default_rng(seed)
  n = NUM_WS * W_DIM
  p = {
      'm': rng.standard_normal((Z_DIM, W_DIM)) / 2,
      'mb': np.full((W_DIM,), 0.1),
      'wo': rng.standard_normal((NUM_WS, W_DIM)) * 0.3,
      's': rng.standard_normal((n, C * H * W)) / np.sqrt(n),
      'sb': np.full((C * H * W,), 0.05),
      't': rng.standard_normal((n, C * H * W)) / np.sqrt(n),
  }
  return {k: jnp.asarray(v, dtype) for k, v in p.items()}


def _toy_map(params, z):
  w = jax.nn.leaky_relu(z @ params['m'] + params['mb'], 0.2)
  return w[:, None, :] + params['wo']  # [B, NUM_WS, W_DIM]


def test_path_length_matches_a_direct_jacobian_computation():
  params = _toy_g_params(0)
  ws = _normal(1, (3, NUM_WS, W_DIM))
  rng = fkey(2)

  @jax.jit
  def check(params, ws, rng):
    lengths = reg.path_lengths(_toy_synthesize, params, ws, rng)
    penalty, new_mean = reg.path_length_penalty(
        _toy_synthesize, params, ws, rng, jnp.float32(0.3), pl_decay=0.01
    )
    noise = jax.random.normal(rng, (3, H, W, C)) / np.sqrt(H * W)
    jac = jax.vmap(jax.jacfwd(lambda w: _toy_synthesize(params, w[None])[0]))(ws)
    return lengths, penalty, new_mean, noise, jac  # jac [B, H, W, C, K, D]

  lengths, penalty, new_mean, noise, jac = _np(check(params, ws, rng))
  g = np.einsum('bhwc,bhwckd->bkd', noise, jac)  # J_i^T y_i
  expected = np.sqrt(np.mean(np.sum(g**2, axis=2), axis=1))
  np.testing.assert_allclose(lengths, expected, rtol=1e-5)
  mean = 0.3 + 0.01 * (np.mean(expected) - 0.3)
  np.testing.assert_allclose(new_mean, mean, rtol=1e-6)
  np.testing.assert_allclose(penalty, np.mean((expected - mean) ** 2), rtol=1e-4)


def test_pl_mean_decay():
  params = _toy_g_params(0)
  ws = _normal(1, (4, NUM_WS, W_DIM))
  rng = fkey(2)
  pen = jax.jit(
      chex.assert_max_traces(
          lambda m, decay: reg.path_length_penalty(
              _toy_synthesize, params, ws, rng, m, pl_decay=decay
          ),
          n=1,
      )
  )
  length = float(
      jnp.mean(
          jax.jit(reg.path_lengths, static_argnums=0)(_toy_synthesize, params, ws, rng)
      )
  )
  pl_mean = jnp.zeros((), jnp.float32)
  for k in range(1, 4):
    _, pl_mean = pen(pl_mean, 0.01)
    # lerp from 0 with weight 0.01, k times towards the same mean length
    np.testing.assert_allclose(pl_mean, length * (1 - 0.99**k), rtol=1e-5)
    assert pl_mean.dtype == jnp.float32
  _, full = pen(pl_mean, 1.0)
  np.testing.assert_allclose(full, length, rtol=1e-6)


def test_path_length_gradient_finite_differences_float64():
  """The penalty's gradient w.r.t. G's parameters (mapping included, through ws), with
  the gradient flowing through the freshly lerped (not detached) pl_mean, as official."""
  with jax.enable_x64(True):
    params = _toy_g_params(0, np.float64)
    z = _normal(1, (3, Z_DIM), np.float64)
    rng = fkey(2)
    pl_mean = jnp.float64(0.4)

    def penalty(p, decay):
      return reg.path_length_penalty(
          _toy_synthesize, p, _toy_map(p, z), rng, pl_mean, pl_decay=decay
      )[0]

    def detached(p):
      lengths = reg.path_lengths(_toy_synthesize, p, _toy_map(p, z), rng)
      new = jax.lax.stop_gradient(pl_mean + 0.5 * (jnp.mean(lengths) - pl_mean))
      return jnp.mean(jnp.square(lengths - new))

    d = _np_params(lambda: params, 3, np.float64)

    @jax.jit
    def check(params, d):
      out = [
          _directional_fd(lambda p: penalty(p, decay), params, d) for decay in (0.01, 0.5)
      ]
      return out, jax.grad(penalty)(params, 0.5), jax.grad(detached)(params)

    out, ours, grads_detached = check(params, d)
    for fd, an in out:
      np.testing.assert_allclose(fd, an, rtol=1e-6)
    assert float(jnp.sum(jnp.abs(ours['m']))) > 0  # the mapping gets gradient
    # a detached mean gives a different gradient (pl_decay 0.5 makes it visible)
    assert not np.allclose(grads_detached['s'], ours['s'], rtol=1e-3)


# --------------------------------------------------------- the official PyTorch formulas


def _toy_gan(batch):
  """A GAN over toy G/D for the step tests (float64): deterministic latents."""
  z_all = _normal(10, (batch, Z_DIM), np.float64)
  n_pix = H * W * C

  def d_apply(p, x):  # flattens NCHW, like torch
    h = jax.nn.leaky_relu(
        x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1) @ p['w1'] + p['b1'], 0.2
    )
    return (h @ p['w2'] + p['b2'])[:, 0]

  gan = steps.GAN(
      generate=lambda p, ms, z, rng: ({'image': _toy_synthesize(p, _toy_map(p, z))}, ms),
      discriminate=lambda p, ms, b, rng: (d_apply(p, b['image']), ms),
      sample_latent=lambda rng, n: z_all[:n],
      loss='non_saturating',
      optimizer_g=optax.sgd(1.0),
      optimizer_d=optax.sgd(1.0),
      per_sample=True,
  )
  rng = np.random.default_rng(11)
  params_d = {
      'w1': rng.standard_normal((n_pix, 16)) / np.sqrt(n_pix),
      'b1': np.full((16,), 0.05),
      'w2': rng.standard_normal((16, 1)) / 4,
      'b2': np.zeros((1,)),
  }
  params_d = {k: jnp.asarray(v, jnp.float64) for k, v in params_d.items()}
  state = steps.init_state(gan, _toy_g_params(12, np.float64), params_d)
  return gan, state, z_all


@needs_torch
def test_r1_and_path_length_steps_match_official_pytorch_code():
  """The official StyleGAN2Loss 'Dreg' and 'Greg' phases, run verbatim in PyTorch on
  the same toy networks, give the same gradients (float64), gains and pl_mean."""
  import torch  # pylint: disable=import-outside-toplevel

  r1_gamma, r1_interval, pl_weight, pl_interval, batch = 10.0, 16, 2.0, 4, 8
  with jax.enable_x64(True):
    gan, state, z_all = _toy_gan(batch)
    x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (batch, H, W, C)))
    p0 = _np(state)
    rng = fkey(6)
    pl_mean0 = jnp.float64(0.7)

    @jax.jit
    def run(state, x, rng, pl_mean):
      after_r1, m_r1 = reg.r1_step(
          gan, state, {'image': x}, rng, r1_gamma=r1_gamma, interval=r1_interval
      )
      after_pl, m_pl = reg.path_length_step(
          gan,
          lambda p, ms, z, r: _toy_map(p, z),
          lambda p, ms, w, r: _toy_synthesize(p, w),
          state.replace(pl_mean=pl_mean),
          rng,
          batch_size=batch,
          pl_weight=pl_weight,
          interval=pl_interval,
      )
      pl_mean = after_pl.pl_mean
      n = batch // 2
      noise = jax.random.normal(
          jax.random.split(rng, 4)[3], (n, H, W, C), jnp.float64
      ) / np.sqrt(H * W)
      return after_r1, m_r1, after_pl, pl_mean, m_pl, noise

    after_r1, m_r1, after_pl, pl_mean, m_pl, noise = _np(run(state, x, rng, pl_mean0))
  # sgd(1.0): the applied update is minus the gradient
  ours_d = jax.tree.map(lambda a, b: a - b, p0.params_d, after_r1.params_d)
  ours_g = jax.tree.map(lambda a, b: a - b, p0.params_g, after_pl.params_g)
  chex.assert_trees_all_equal(after_r1.params_g, p0.params_g)  # R1 touches D only
  chex.assert_trees_all_equal(after_pl.params_d, p0.params_d)  # PL touches G only
  assert int(after_r1.step) == int(after_pl.step) == 0

  t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)

  # --- 'Dreg' (training/loss.py), D in torch's NCHW layout; gain = phase.interval
  pd = {k: t(v).requires_grad_(True) for k, v in p0.params_d.items()}

  def run_D(img):
    h = torch.nn.functional.leaky_relu(
        img.reshape(img.shape[0], -1) @ pd['w1'] + pd['b1'], 0.2
    )
    return (h @ pd['w2'] + pd['b2'])[:, 0]

  real_img = t(np.asarray(x).transpose(0, 3, 1, 2))
  gain = r1_interval
  real_img_tmp = real_img.detach().requires_grad_(True)
  real_logits = run_D(real_img_tmp)
  r1_grads = torch.autograd.grad(
      outputs=[real_logits.sum()],
      inputs=[real_img_tmp],
      create_graph=True,
      only_inputs=True,
  )[0]
  r1_penalty = r1_grads.square().sum([1, 2, 3])
  loss_Dr1 = r1_penalty * (r1_gamma / 2)
  (real_logits * 0 + loss_Dr1).mean().mul(gain).backward()
  for k in pd:
    np.testing.assert_allclose(ours_d[k], pd[k].grad.numpy(), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(m_r1['r1_penalty'], r1_penalty.mean().item(), rtol=1e-6)
  np.testing.assert_allclose(m_r1['loss_d_reg'], loss_Dr1.mean().item(), rtol=1e-6)

  # --- 'Greg'
  pg = {k: t(v).requires_grad_(True) for k, v in p0.params_g.items()}

  def run_G(z):
    w = torch.nn.functional.leaky_relu(z @ pg['m'] + pg['mb'], 0.2)
    ws = w[:, None, :] + pg['wo']
    flat = ws.reshape(ws.shape[0], -1)
    y = torch.tanh(flat @ pg['s'] + pg['sb']) * (1.0 + 0.1 * torch.sin(flat @ pg['t']))
    return y.reshape(-1, C, H, W), ws

  gen_z = t(z_all)
  self_pl_mean = t(pl_mean0)
  gain = pl_interval
  batch_size = gen_z.shape[0] // 2  # pl_batch_shrink
  gen_img, gen_ws = run_G(gen_z[:batch_size])
  pl_noise = t(noise.transpose(0, 3, 1, 2))  # randn_like(gen_img) / sqrt(H * W), ours
  pl_grads = torch.autograd.grad(
      outputs=[(gen_img * pl_noise).sum()],
      inputs=[gen_ws],
      create_graph=True,
      only_inputs=True,
  )[0]
  pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
  pl_mean_t = self_pl_mean.lerp(pl_lengths.mean(), 0.01)
  self_pl_mean.copy_(pl_mean_t.detach())
  pl_penalty = (pl_lengths - pl_mean_t).square()
  loss_Gpl = pl_penalty * pl_weight
  (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(gain).backward()
  for k in pg:
    np.testing.assert_allclose(ours_g[k], pg[k].grad.numpy(), rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(pl_mean, self_pl_mean.item(), rtol=1e-12)
  np.testing.assert_allclose(m_pl['pl_penalty'], pl_penalty.mean().item(), rtol=1e-6)
  np.testing.assert_allclose(m_pl['pl_length'], pl_lengths.mean().item(), rtol=1e-6)


@needs_torch
def test_lazy_adam_is_the_official_torch_adam():
  import torch  # pylint: disable=import-outside-toplevel

  lr, betas, eps, interval = 0.002, (0.0, 0.99), 1e-8, 16
  w0 = np.random.default_rng(0).standard_normal(5)
  grads = np.random.default_rng(1).standard_normal((4, 5))
  with jax.enable_x64(True):
    opt = optimizers.adam(lr, b1=betas[0], b2=betas[1], eps=eps, lazy_interval=interval)

    @jax.jit
    def run(params, grads):
      opt_state = opt.init(params)
      for g in grads:
        updates, opt_state = opt.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
      return params

    params = np.asarray(run(jnp.asarray(w0), jnp.asarray(grads)))
  # training_loop.py, verbatim
  mb_ratio = interval / (interval + 1)
  opt_kwargs = dict(lr=lr, betas=list(betas), eps=eps)
  opt_kwargs['lr'] = opt_kwargs['lr'] * mb_ratio
  opt_kwargs['betas'] = [beta**mb_ratio for beta in opt_kwargs['betas']]
  p = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
  topt = torch.optim.Adam([p], **opt_kwargs)
  for g in grads:
    p.grad = torch.tensor(g, dtype=torch.float64)
    topt.step()
  np.testing.assert_allclose(params, p.detach().numpy(), rtol=1e-12, atol=1e-15)


# -------------------------------------------------------------- lazy regularisation


def test_lazy_hyperparameters_are_the_official_numbers():
  lr, (b1, b2) = optimizers.lazy_hparams(0.002, (0.0, 0.99), 16)
  assert lr == pytest.approx(0.002 * 16 / 17, rel=1e-15)
  assert b1 == 0.0
  assert b2 == pytest.approx(0.99 ** (16 / 17), rel=1e-15)
  lr, (b1, b2) = optimizers.lazy_hparams(0.002, (0.0, 0.99), 4)
  assert lr == pytest.approx(0.0016, rel=1e-15) and b2 == pytest.approx(0.99**0.8)
  assert optimizers.lazy_hparams(0.002, (0.0, 0.99), None) == (0.002, (0.0, 0.99))
  with pytest.raises(ValueError):
    optimizers.lazy_hparams(0.002, (0.0, 0.99), 0)

  # the lazy Adam is optax.adam with those numbers
  params = {'w': jnp.arange(3.0)}
  grads = {'w': jnp.array([0.3, -1.0, 2.0])}
  ref = optax.adam(0.002 * 16 / 17, b1=0.0, b2=0.99 ** (16 / 17), eps=1e-8)
  opt = optimizers.adam(0.002, b1=0.0, b2=0.99, eps=1e-8, lazy_interval=16)
  s_ref, s = ref.init(params), opt.init(params)
  for _ in range(3):
    u_ref, s_ref = ref.update(grads, s_ref, params)
    u, s = opt.update(grads, s, params)
    chex.assert_trees_all_close(u, u_ref, rtol=0, atol=0)


def test_nan_to_num_grads_as_official():
  t = optimizers.nan_to_num_grads()
  g = {'a': jnp.array([jnp.nan, jnp.inf, -jnp.inf, 1.5])}
  out, _ = t.update(g, t.init(g))
  np.testing.assert_array_equal(out['a'], [0.0, 1e5, -1e5, 1.5])


# ----------------------------------------------------------------------------- EMA


def test_ema_beta_half_life_and_rampup():
  batch = 32
  beta = reg.ema_beta(batch, 10**6, half_life_kimg=10.0)
  assert beta == 0.5 ** (batch / 10000)  # the official formula
  np.testing.assert_allclose(beta ** (10000 / batch), 0.5, rtol=1e-12)  # half-life
  # ramp-up: ema_nimg = min(10000, cur_nimg * 0.05)
  assert reg.ema_beta(batch, 0, rampup=0.05) == 0.0  # G_ema = G at the start
  assert reg.ema_beta(batch, 64000, rampup=0.05) == 0.5 ** (batch / 3200)
  assert reg.ema_beta(batch, 10**6, rampup=0.05) == 0.5 ** (batch / 10000)
  assert reg.ema_beta(batch, 64000) == 0.5 ** (batch / 10000)  # rampup None: no ramp

  # traced cur_nimg (inside jit) gives the same values, without retracing
  traced = jax.jit(
      chex.assert_max_traces(
          lambda n: reg.ema_beta(batch, n, half_life_kimg=10.0, rampup=0.05), n=1
      )
  )
  for n in (0, 32, 6400, 64000, 10**6, 10**7):
    np.testing.assert_allclose(
        traced(jnp.int32(n)), reg.ema_beta(batch, n, rampup=0.05), rtol=1e-6
    )


def test_ema_update_is_the_official_lerp_and_copies_state():
  ema = {'w': jnp.array([1.0, 2.0]), 'b': jnp.array(3.0)}
  params = {'w': jnp.array([5.0, -2.0]), 'b': jnp.array(-1.0)}
  beta = 0.9
  new = reg.ema_update(ema, params, beta)
  for k in ema:  # p.lerp(p_ema, beta) = p + beta * (p_ema - p)
    np.testing.assert_allclose(new[k], params[k] + beta * (ema[k] - params[k]), rtol=1e-6)
  state = steps.TrainState(
      step=jnp.int32(0),
      params_g=params,
      params_d={},
      opt_state_g=(),
      opt_state_d=(),
      model_state_g={},
      model_state_d={},
      ema_params_g=ema,
  )
  new_state, m = reg.ema_step(state, 0, batch_size=4, rampup=0.05)
  chex.assert_trees_all_close(new_state.ema_params_g, params)  # beta 0 at cur_nimg 0
  assert float(m['ema_beta']) == 0.0
  new_state, m = reg.ema_step(state, 10**6, batch_size=4, half_life_kimg=10.0)
  beta = 0.5 ** (4 / 10_000)
  chex.assert_trees_all_close(new_state.ema_params_g, reg.ema_update(ema, params, beta))
  np.testing.assert_allclose(m['ema_beta'], beta, rtol=1e-6)
  with pytest.raises(ValueError, match='ema=True'):
    reg.ema_step(state.replace(ema_params_g=None), 0, batch_size=4)


# ------------------------------------------------------------------- tiny StyleGAN2

TINY = dict(
    resolution=8,
    img_channels=1,
    z_dim=16,
    w_dim=16,
    mapping_layers=2,
    channel_base=64,
    channel_max=16,
)
B = 4
ITERS, PL_EVERY, R1_EVERY = 6, 2, 3


class _Grads(NamedTuple):
  grads: Any


def _record_grads() -> optax.GradientTransformation:
  """Passes gradients through and keeps the last ones in its state (for the test)."""
  return optax.GradientTransformation(
      lambda params: _Grads(jax.tree.map(jnp.zeros_like, params)),
      lambda updates, state, params=None: (updates, _Grads(updates)),
  )


def _real_batch(i):
  rng = np.random.default_rng(100 + i)
  return {'image': jnp.asarray(rng.uniform(-1, 1, (B, 8, 8, 1)), jnp.float32)}


@pytest.fixture(scope='module')
def stylegan():
  """A tiny StyleGAN2 trained ITERS iterations the way the loop will: one-stage main
  step every iteration, path length every PL_EVERY, R1 every R1_EVERY, EMA every
  iteration; each jitted once through the jit helpers, with trace counters."""
  g, d = sg.tiny(**TINY)
  k = fkey(0)
  init_rngs = {
      'params': k,
      'noise': jax.random.fold_in(k, 1),
      'mixing': jax.random.fold_in(k, 2),
  }
  gv = jax.jit(functools.partial(g.init, noise_mode='none', train=False))(
      init_rngs, jnp.zeros((B, g.z_dim))
  )
  dv = jax.jit(d.init)({'params': fkey(1)}, jnp.zeros((B, 8, 8, 1)))

  def generate(params, model_state, z, rng):
    k_noise, k_mix = jax.random.split(rng)
    img, upd = g.apply(
        {'params': params, **model_state},
        z,
        mutable=['batch_stats'],
        rngs={'noise': k_noise, 'mixing': k_mix},
    )
    return {'image': img}, {**model_state, **upd}

  def discriminate(params, model_state, batch, rng):
    return d.apply({'params': params}, batch['image']), model_state

  def map_fn(params, model_state, z, rng):  # style mixing and w_avg, as official run_G
    ws, upd = g.apply(
        {'params': params, **model_state},
        z,
        method=sg.Generator.map,
        mutable=['batch_stats'],
        rngs={'mixing': rng},
    )
    return ws, {**model_state, **upd}

  def synthesize_fn(params, model_state, ws, rng):
    return g.apply(
        {'params': params}, ws, method=sg.Generator.synthesize, rngs={'noise': rng}
    )

  gan = steps.GAN(
      generate=generate,
      discriminate=discriminate,
      sample_latent=lambda rng, n: jax.random.normal(rng, (n, g.z_dim)),
      loss='non_saturating',
      optimizer_g=optax.chain(
          _record_grads(),
          optimizers.adam(0.002, b1=0.0, b2=0.99, eps=1e-8, lazy_interval=PL_EVERY),
      ),
      optimizer_d=optax.chain(
          _record_grads(),
          optimizers.adam(0.002, b1=0.0, b2=0.99, eps=1e-8, lazy_interval=R1_EVERY),
      ),
      per_sample=False,
  )  # minibatch std couples samples

  out = {'first': None, 'r1': [], 'pl': [], 'donated_ema_ok': False}
  chex.clear_trace_counter()
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(steps.STEPS, 'one', chex.assert_max_traces(steps.one_stage_step, n=1))
    for name in ('r1_step', 'path_length_step', 'ema_step'):
      mp.setattr(reg, name, chex.assert_max_traces(getattr(reg, name), n=1))
    main = steps.jit_step(gan, 'one')
    # As the loop jits its phases: partials of the steps, the state donated.
    r1 = steps.jit_state_step(
        functools.partial(reg.r1_step, gan, r1_gamma=1.0, interval=R1_EVERY)
    )
    pl = steps.jit_state_step(
        functools.partial(
            reg.path_length_step,
            gan,
            map_fn,
            synthesize_fn,
            batch_size=B,
            interval=PL_EVERY,
            map_has_aux=True,
        )
    )
    ema = steps.jit_state_step(
        functools.partial(reg.ema_step, batch_size=B, half_life_kimg=0.01, rampup=0.05)
    )

    copy = lambda t: jax.tree.map(jnp.copy, t)
    state = steps.init_state(
        gan,
        copy(gv['params']),
        copy(dv['params']),
        model_state_g={'batch_stats': gv['batch_stats']},
        ema=True,
        path_length=True,
    )
    out['structure'] = jax.tree.structure(state)
    for i in range(ITERS):
      rng = jax.random.fold_in(fkey(7), i)
      batch = _real_batch(i)
      before = _np(state) if i == 0 else None
      state, metrics = main(state, batch, rng)
      if i == 0:
        out['first'] = dict(
            state=before,
            batch=batch,
            rng=rng,
            metrics=_np(metrics),
            grads_g=_np(state.opt_state_g[0].grads),
            grads_d=_np(state.opt_state_d[0].grads),
        )
      if i % PL_EVERY == 0:
        before = _np(state)
        state, m_pl = pl(state, jax.random.fold_in(rng, 1))
        out['pl'].append((before, _np(state), _np(m_pl), float(state.pl_mean)))
      if i % R1_EVERY == 0:
        before = _np(state)
        state, m_r1 = r1(state, batch, jax.random.fold_in(rng, 2))
        out['r1'].append((before, _np(state), _np(m_r1)))
      before = _np(state)
      state, m_ema = ema(state, jnp.int32(i * B))
      beta = float(m_ema['ema_beta'])
      chex.assert_trees_all_close(  # the official lerp, p + beta * (p_ema - p)
          state.ema_params_g,
          jax.tree.map(
              lambda e, p: p + beta * (e - p), before.ema_params_g, before.params_g
          ),
          rtol=1e-5,
          atol=1e-7,
      )
      assert jax.tree.structure(state) == out['structure']
      assert all(
          bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves((state, metrics))
      )
    state, _ = main(state, _real_batch(ITERS), fkey(8))
    out['cache_sizes'] = [f._cache_size() for f in (main, r1, pl, ema)]
  out.update(g=g, d=d, gan=gan, final=_np(state), beta=beta)
  return out


@pytest.mark.long
def test_stylegan2_lazy_regularisation_steps_trace_once_and_update_one_player(stylegan):
  assert stylegan['cache_sizes'] == [1, 1, 1, 1]  # (chex also raised on a 2nd trace)
  assert len(stylegan['pl']) == 3 and len(stylegan['r1']) == 2
  count = lambda s: int(optax.tree_utils.tree_get(s, 'count'))
  final = stylegan['final']
  # every iteration's main step updates both; the reg steps their own player only
  assert int(final.step) == ITERS + 1
  assert count(final.opt_state_g) == ITERS + 1 + 3
  assert count(final.opt_state_d) == ITERS + 1 + 2
  for before, after, m in stylegan['r1']:
    chex.assert_trees_all_equal(
        (after.params_g, after.opt_state_g, after.model_state_g, after.step),
        (before.params_g, before.opt_state_g, before.model_state_g, before.step),
    )
    assert not np.allclose(
        after.params_d['b4']['out']['weight'], before.params_d['b4']['out']['weight']
    )
    assert m['r1_penalty'] > 0
    np.testing.assert_allclose(m['loss_d_reg'], 0.5 * m['r1_penalty'], rtol=1e-6)
  pl_means = []
  for before, after, m, pl_mean in stylegan['pl']:
    chex.assert_trees_all_equal(
        (after.params_d, after.opt_state_d, after.step),
        (before.params_d, before.opt_state_d, before.step),
    )
    assert not np.allclose(
        after.params_g['mapping']['fc0']['weight'],
        before.params_g['mapping']['fc0']['weight'],
    )
    # the path-length mapping call tracks w_avg, as the official mapping does
    assert not np.allclose(
        after.model_state_g['batch_stats']['mapping']['w_avg'],
        before.model_state_g['batch_stats']['mapping']['w_avg'],
    )
    assert m['pl_length'] > 0 and np.isfinite(m['pl_penalty'])
    np.testing.assert_allclose(m['pl_mean'], pl_mean)
    np.testing.assert_allclose(m['loss_g_reg'], 2.0 * m['pl_penalty'], rtol=1e-6)
    pl_means.append(pl_mean)
  assert 0 < pl_means[0] < pl_means[1] < pl_means[2]  # lerping up from 0
  # ema_params_g and pl_mean ride along the main and regularisation steps untouched
  assert 0 < stylegan['beta'] < 1
  assert float(final.pl_mean) == pytest.approx(pl_means[-1])


def test_stylegan2_one_stage_gradients_equal_reference(stylegan):
  """Minibatch std couples samples: the exact one-stage gradients the first main step
  applied equal two independent jax.grad calls (non-saturating loss, style mixing,
  random noise) at the same parameters, latents and noise."""
  gan, first = stylegan['gan'], stylegan['first']
  state = first['state']
  rng_z, rng_g, rng_d = jax.random.split(first['rng'], 3)  # as steps.one_stage_step
  z = gan.sample_latent(rng_z, B)
  ref_g, ref_d, aux = jax.jit(
      lambda pg, pd, z, x: one_stage.reference_grads(
          lambda p, z: gan.generate(p, state.model_state_g, z, rng_g)[0]['image'],
          lambda p, x: gan.discriminate(p, state.model_state_d, {'image': x}, rng_d)[0],
          pg,
          pd,
          z,
          x,
          gan.loss,
      )
  )(state.params_g, state.params_d, z, first['batch']['image'])
  for ours, ref in ((first['grads_g'], ref_g), (first['grads_d'], ref_d)):
    scale = max(float(jnp.max(jnp.abs(l))) for l in jax.tree.leaves(ref))
    chex.assert_trees_all_close(ours, _np(ref), rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(first['metrics']['loss_g'], aux['loss_g'], rtol=1e-5)
  np.testing.assert_allclose(first['metrics']['loss_d'], aux['loss_d'], rtol=1e-5)
  assert float(np.abs(first['grads_g']['mapping']['fc0']['weight']).sum()) > 0
