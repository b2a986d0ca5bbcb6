"""Small generator and discriminators for exactness checks and tests.

Pure functions of parameter dicts (no framework), one discriminator per kind of path
through ``one_stage_grads`` (per-sample, patch logits, coupled samples), and
``problem``: everything ``one_stage_grads`` takes for one setting, including logit
regimes that push the loss into its singular points. See docs/exactness.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax.core import augment as augment_lib
from osgan_jax.core import losses as losses_lib
from osgan_jax.core.precision import EMULATIONS, emulated

DISC_KINDS = ('mlp', 'conv', 'patch', 'batchnorm', 'mbstd')
LOGIT_REGIMES = {'normal': 1.0, 'extreme': 100.0, 'huge': 1e4, 'zero': 1.0}
IMAGE_SHAPE = (8, 8, 2)
Z_DIM = 6
# --penalty: D's gradient penalties and their weights (osgan_jax.core.penalties).
PENALTIES = {
    'none': None,
    'r1': {'r1': 1.0},
    'r2': {'r2': 1.0},
    'r1r2': {'r1': 1.0, 'r2': 1.0},
    'gp': {'gp': 10.0},
}
# --augment: every image D sees augmented, each op drawn with this probability.
AUGMENTS = ('none',) + tuple(augment_lib.PRESETS)
AUGMENT_P = 0.5
# Stateful losses are checked at a state away from the initial one.
LOSS_STATES = {'fisher': {'lam': 0.3}}


def _conv(x, w, stride, emulate=None):
  conv = functools.partial(
      jax.lax.conv_general_dilated,
      window_strides=(stride, stride),
      padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  return emulated(conv, x, w, emulate)


def _dot(a, b, emulate=None):
  return emulated(jnp.matmul, a, b, emulate)


def _act(x):
  # Smooth with act(0) = 0: finite differences stay valid at the 'zero' regime's point.
  return jax.nn.silu(x)


def _minibatch_std(x, group_size=4):
  """StyleGAN2's minibatch standard deviation, one feature channel appended."""
  b, h, w, c = x.shape
  g = min(group_size, b)
  y = x.reshape(g, b // g, h, w, c)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [b/g, h, w, c]
  y = jnp.mean(y, axis=(1, 2, 3))  # [b/g]
  y = jnp.tile(y, (g,)).reshape(b, 1, 1, 1)
  return jnp.concatenate([x, jnp.broadcast_to(y, (b, h, w, 1))], axis=-1)


def init_generator(key, dtype=jnp.float32, bias=True):
  k1, k2 = jax.random.split(key)
  out = int(np.prod(IMAGE_SHAPE))
  return {
      'w1': jax.random.normal(k1, (Z_DIM, 32), dtype) / float(np.sqrt(Z_DIM)),
      'b1': jnp.full((32,), 0.1 if bias else 0.0, dtype),
      'w2': jax.random.normal(k2, (32, out), dtype) / float(np.sqrt(32)),
      'b2': jnp.zeros((out,), dtype),
  }


def generate(params, z, emulate=None):
  h = _act(_dot(z, params['w1'], emulate) + params['b1'])
  x = jnp.tanh(_dot(h, params['w2'], emulate) + params['b2'])
  return x.reshape((z.shape[0],) + IMAGE_SHAPE)


def init_discriminator(kind, key, dtype=jnp.float32, bias=True):
  """Parameters of a small discriminator of ``kind`` (biases 0 when ``bias`` False)."""
  ks = jax.random.split(key, 4)
  c = IMAGE_SHAPE[-1]
  b = lambda n: jnp.full((n,), 0.05 if bias else 0.0, dtype)
  if kind == 'mlp':
    n = int(np.prod(IMAGE_SHAPE))
    return {
        'w1': jax.random.normal(ks[0], (n, 16), dtype) / float(np.sqrt(n)),
        'b1': b(16),
        'w2': jax.random.normal(ks[1], (16, 1), dtype) / 4.0,
        'b2': b(1),
    }
  params = {
      'c1': jax.random.normal(ks[0], (3, 3, c, 4), dtype) / float(np.sqrt(9 * c)),
      'b1': b(4),
  }
  if kind == 'patch':
    params['c2'] = jax.random.normal(ks[1], (3, 3, 4, 1), dtype) / 6.0
    params['b2'] = b(1)
    return params
  c_in = 5 if kind == 'mbstd' else 4
  params['c2'] = jax.random.normal(ks[1], (3, 3, c_in, 8), dtype) / float(
      np.sqrt(9 * c_in)
  )
  params['b2'] = b(8)
  params['w'] = jax.random.normal(ks[2], (2 * 2 * 8, 1), dtype) / float(np.sqrt(32))
  params['b'] = b(1)
  if kind == 'batchnorm':
    params['bn_scale'] = jnp.ones((4,), dtype)
    params['bn_bias'] = jnp.zeros((4,), dtype)
  return params


def make_discriminator(kind, logit_scale=1.0, emulate=None):
  """``discriminate(params, images)``; the batchnorm kind returns ``(logits, stats)``.
  ``emulate`` rounds matmul/conv operands as that reduced precision would."""
  if kind not in DISC_KINDS:
    raise ValueError(
        f'unknown discriminator kind {kind!r}; valid kinds: {", ".join(DISC_KINDS)}'
    )

  def discriminate(params, x):
    if kind == 'mlp':
      h = _act(_dot(x.reshape(x.shape[0], -1), params['w1'], emulate) + params['b1'])
      return logit_scale * (_dot(h, params['w2'], emulate) + params['b2'])[:, 0]
    h = _conv(x, params['c1'], 2, emulate) + params['b1']
    stats = None
    if kind == 'batchnorm':
      mean = jnp.mean(h, axis=(0, 1, 2))
      var = jnp.var(h, axis=(0, 1, 2))
      h = (h - mean) * jax.lax.rsqrt(var + 1e-5) * params['bn_scale'] + params['bn_bias']
      stats = {'mean': mean, 'var': var}
    h = _act(h)
    if kind == 'patch':
      return logit_scale * (_conv(h, params['c2'], 1, emulate) + params['b2'])[..., 0]
    if kind == 'mbstd':
      h = _minibatch_std(h)
    h = _act(_conv(h, params['c2'], 2, emulate) + params['b2'])
    logits = (
        logit_scale
        * (_dot(h.reshape(h.shape[0], -1), params['w'], emulate) + params['b'])[:, 0]
    )
    return (logits, stats) if kind == 'batchnorm' else logits

  return discriminate


def problem(
    loss,
    disc,
    *,
    seed=0,
    dtype=jnp.float32,
    logits='normal',
    batch=8,
    emulate=None,
    penalty='none',
    augment='none',
):
  """Everything ``one_stage_grads`` takes for one gradcheck setting, as a dict; with
  ``emulate`` ('tf32', 'bf16') G and D round float32 operands as GPUs and TPUs do;
  with ``augment`` (a preset of ``core.augment``) D sees every image augmented."""
  loss_obj = losses_lib.get(loss)
  if penalty not in PENALTIES:
    raise ValueError(f'unknown penalty {penalty!r}; valid: {", ".join(PENALTIES)}')
  if emulate is not None and emulate not in EMULATIONS:
    raise ValueError(
        f'unknown emulated precision {emulate!r}; valid: {", ".join(EMULATIONS)}'
    )
  if augment not in AUGMENTS:
    raise ValueError(f'unknown augment {augment!r}; valid: {", ".join(AUGMENTS)}')
  if logits not in LOGIT_REGIMES:
    raise ValueError(
        f'unknown logits regime {logits!r}; valid: {", ".join(LOGIT_REGIMES)}'
    )
  key = jax.random.PRNGKey(seed)
  kg, kd, kz, kx = jax.random.split(key, 4)
  zero = logits == 'zero'
  z = jax.random.normal(kz, (batch, Z_DIM), dtype)
  if zero:  # a bias-free G maps z = 0 to the zero image, which a bias-free D maps to 0.
    z = z.at[0].set(0.0)
  loss_state = None
  if loss_obj.stateful:
    loss_state = LOSS_STATES.get(loss, loss_obj.init_state())
    loss_state = jax.tree.map(lambda v: jnp.asarray(v, dtype), loss_state)
  gen = functools.partial(generate, emulate=emulate) if emulate else generate
  disc_fn = make_discriminator(disc, LOGIT_REGIMES[logits], emulate)
  x_real = jnp.tanh(jax.random.normal(kx, (batch,) + IMAGE_SHAPE, dtype))
  if augment != 'none':
    gen, disc_fn, x_real = _augmented(gen, disc_fn, x_real, augment, key)
  return dict(
      generate=gen,
      discriminate=disc_fn,
      params_g=init_generator(kg, dtype, bias=not zero),
      params_d=init_discriminator(disc, kd, dtype, bias=not zero),
      z=z,
      x_real=x_real,
      loss=loss,
      d_has_aux=disc == 'batchnorm',
      loss_state=loss_state,
      penalties=PENALTIES[penalty],
      penalty_rng=jax.random.fold_in(key, 5),
  )


def _augmented(gen, disc, x_real, pipe: str, key):
  """G, D and the reals with D seeing every image augmented, as the train steps do:
  each sample carries its key (``core.augment.attach``) into whichever batch D sees."""
  aug = augment_lib.Augment(pipe)

  def generate_pair(params, z):
    return augment_lib.attach(gen(params, z), jax.random.fold_in(key, 8))

  def discriminate_pair(params, pair):
    return disc(params, augment_lib.apply_tree(aug, pair, AUGMENT_P))

  return (
      generate_pair,
      discriminate_pair,
      augment_lib.attach(x_real, jax.random.fold_in(key, 7)),
  )
