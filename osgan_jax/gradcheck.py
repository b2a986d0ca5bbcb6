r"""Is one-stage training exact for my loss and discriminator? A diagnostic command.

    python -m osgan_jax.gradcheck --loss hinge --disc batchnorm [--mode exact|approx] \
        [--seed N] [--x64] [--logits normal|extreme|huge|zero] [--emulate none|tf32|bf16]

Builds a small generator and a small discriminator of the given kind, then prints one
JSON line::

    {"loss": ..., "disc": ..., "mode": ..., "precision": "highest",
     "rel_err_g": ..., "rel_err_d": ..., "fd_rel_err": ..., "finite": true|false, ...,
     "ok": true|false,
     "default_precision": {"matmul_precision": ..., "emulated": ...,
                           "rel_err_g": ..., "rel_err_d": ...,
                           "rounding_floor_g": ..., "rounding_floor_d": ...,
                           "within_rounding": true|false}}

The verdict judges the algorithm, not the hardware's rounding. ``rel_err_*``: relative
L2 error of ``one_stage_grads`` against ``reference_grads`` over the whole parameter
pytree, both computed with float32 matmuls and convolutions at full precision
(``precision``: under ``jax.default_matmul_precision('highest')``) on every backend. At
their default precision NVIDIA GPUs run float32 matmuls and convolutions in TF32 and
TPUs in bfloat16 passes, which alone puts the two some 1e-4 apart. ``fd_rel_err``:
``reference_grads`` against fourth-order central finite differences in float64 along
random unit directions, relative to the gradient's norm. ``ok`` and the exit status use
these: 0 when all are within tolerance, 1 otherwise, 2 for bad arguments.

``default_precision`` (informational; ``ok`` ignores it): what training sees at the
matmul precision in effect outside the verdict.
  matmul_precision   ``jax_default_matmul_precision`` ('default': the backend's own).
  emulated           ``--emulate``'s value, or null.
  rel_err_g/_d       one-stage against reference at that precision.
  rounding_floor_g/_d  the reference against itself computed with the loss times 3 and
                     the gradients divided by 3: the same math, but every backward
                     product rounds differently, so this is the arithmetic's own
                     rounding level (about 1e-7 in float32, 4e-4 in TF32, 3e-3 in
                     bfloat16).
  within_rounding    both rel_err_* are at most 10x max(rounding floor, float eps).

``--emulate tf32|bf16``: CPUs ignore the matmul precision setting (float32 whatever it
says), so to see on a CPU what a GPU or TPU user sees, the small networks round the
operands of their float32 matmuls and convolutions (in the backward pass: the cotangent
and the other factor) to TF32's 10-bit or bfloat16's 7-bit mantissa and accumulate in
float32, wherever full precision is not in effect. The verdict, run at full precision,
is unaffected; ``default_precision`` shows the reduced precision.

Discriminator kinds (pure functions of a parameter dict, so no framework is involved):
  mlp        per-sample MLP, logits [B]
  conv       per-sample strided conv net, logits [B]
  patch      PatchGAN-style conv net, logits [B, 4, 4]
  batchnorm  conv net with BatchNorm in training mode (couples samples); returns its
             running statistics as aux (has_aux)
  mbstd      conv net with StyleGAN2's minibatch standard deviation (couples samples)

``--logits`` pushes the discriminator into the regimes where the paper's decomposition
breaks: ``extreme`` scales logits by 100 (hinge fake logits below -1, non-saturating
sigmoid underflow), ``huge`` by 1e4, ``zero`` makes the first fake sample's logit exactly
0 (LSGAN's singular point).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax.core import losses as losses_lib
from osgan_jax.core import one_stage
from osgan_jax.core import penalties as penalties_lib

DISC_KINDS = ('mlp', 'conv', 'patch', 'batchnorm', 'mbstd')
LOGIT_REGIMES = {'normal': 1.0, 'extreme': 100.0, 'huge': 1e4, 'zero': 1.0}
IMAGE_SHAPE = (8, 8, 2)
Z_DIM = 6
TOLERANCE = {'float32': 1e-5, 'float64': 1e-10}
FD_TOLERANCE = 1e-5
# --penalty: D's gradient penalties and their weights (osgan_jax.core.penalties).
PENALTIES = {
    'none': None,
    'r1': {'r1': 1.0},
    'r2': {'r2': 1.0},
    'r1r2': {'r1': 1.0, 'r2': 1.0},
    'gp': {'gp': 10.0},
}
# Stateful losses are checked at a state away from the initial one.
LOSS_STATES = {'fisher': {'lam': 0.3}}
# The verdict's matmul precision, and the config values that mean full float32.
FULL_PRECISION = 'highest'
FULL_PRECISION_NAMES = ('highest', 'float32', 'F32_F32_F32')
# --emulate: mantissa bits kept of float32 matmul/conv operands at default precision.
EMULATIONS = {'tf32': 10, 'bf16': 7}
# The rounding floor's loss scale: not a power of two, so every cotangent rounds anew.
ROUNDING_SCALE = 3.0
# within_rounding: one-stage within this factor of the floor (or of float eps).
ROUNDING_FACTOR = 10.0


def full_precision():
  """Context in which float32 matmuls and convolutions run at full float32 precision on
  every backend (GPUs default to TF32, TPUs to bfloat16 passes); it is part of jit's
  cache key, so functions jitted and called inside it compile at that precision."""
  return jax.default_matmul_precision(FULL_PRECISION)


def _at_full_precision() -> bool:
  """Whether the matmul precision in effect (read at trace time) is full float32."""
  return jax.config.jax_default_matmul_precision in FULL_PRECISION_NAMES


def _emulated(op, a, b, emulate):
  """op(a, b) as reduced-precision hardware runs a float32 matmul/conv: operands
  rounded to ``emulate``'s mantissa, products accumulated in float32. Backward products
  round their operands (the cotangent and the other factor) too. Plain ``op`` at full
  precision (as GPUs under 'highest'), for other dtypes, or without ``emulate``."""
  if emulate is None or a.dtype != jnp.float32 or _at_full_precision():
    return op(a, b)
  rnd = functools.partial(
      jax.lax.reduce_precision, exponent_bits=8, mantissa_bits=EMULATIONS[emulate]
  )

  @jax.custom_jvp
  def rounded(a, b):
    return op(rnd(a), rnd(b))

  @rounded.defjvp
  def rounded_jvp(primals, tangents):
    # reduce_precision is linear to jax and transposes to itself: the backward pass
    # rounds the incoming cotangent, then multiplies it by the rounded other factor.
    a, b = map(rnd, primals)
    return op(a, b), rnd(op(tangents[0], b) + op(a, tangents[1]))

  return rounded(a, b)


def _conv(x, w, stride, emulate=None):
  conv = functools.partial(
      jax.lax.conv_general_dilated,
      window_strides=(stride, stride),
      padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  return _emulated(conv, x, w, emulate)


def _dot(a, b, emulate=None):
  return _emulated(jnp.matmul, a, b, emulate)


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
  b = (
      (lambda n: jnp.full((n,), 0.05, dtype))
      if bias
      else (lambda n: jnp.zeros((n,), dtype))
  )
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
        f'unknown discriminator kind {kind!r}; valid kinds: ' f'{", ".join(DISC_KINDS)}'
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
):
  """Everything ``one_stage_grads`` takes, for one gradcheck setting, as a dict.
  ``emulate`` ('tf32', 'bf16'): G and D round float32 matmul/conv operands to that
  precision wherever full precision is not in effect, as GPUs and TPUs do by default.
  ``penalty``: a key of ``PENALTIES``. A stateful loss gets a state away from its
  initial one (``LOSS_STATES``), so that the state matters."""
  loss_obj = losses_lib.get(loss)
  if penalty not in PENALTIES:
    raise ValueError(f'unknown penalty {penalty!r}; valid: {", ".join(PENALTIES)}')
  if emulate is not None and emulate not in EMULATIONS:
    raise ValueError(
        f'unknown emulated precision {emulate!r}; valid: ' f'{", ".join(EMULATIONS)}'
    )
  if logits not in LOGIT_REGIMES:
    raise ValueError(
        f'unknown logits regime {logits!r}; valid: ' f'{", ".join(LOGIT_REGIMES)}'
    )
  key = jax.random.PRNGKey(seed)
  kg, kd, kz, kx = jax.random.split(key, 4)
  zero = logits == 'zero'
  z = jax.random.normal(kz, (batch, Z_DIM), dtype)
  if zero:  # a bias-free G maps z = 0 to the zero image, which a bias-free D maps to 0.
    z = z.at[0].set(0.0)
  return dict(
      generate=functools.partial(generate, emulate=emulate) if emulate else generate,
      discriminate=make_discriminator(disc, LOGIT_REGIMES[logits], emulate),
      params_g=init_generator(kg, dtype, bias=not zero),
      params_d=init_discriminator(disc, kd, dtype, bias=not zero),
      z=z,
      x_real=jnp.tanh(jax.random.normal(kx, (batch,) + IMAGE_SHAPE, dtype)),
      loss=loss,
      d_has_aux=disc == 'batchnorm',
      loss_state=(
          jax.tree.map(
              lambda v: jnp.asarray(v, dtype),
              LOSS_STATES.get(loss, loss_obj.init_state()),
          )
          if loss_obj.stateful
          else None
      ),
      penalties=PENALTIES[penalty],
      penalty_rng=jax.random.fold_in(key, 5),
  )


def rel_err(a, b) -> float:
  """Relative L2 error of pytree a against pytree b."""
  pairs = [
      (np.asarray(x, np.float64), np.asarray(y, np.float64))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  ]
  num = sum(float(np.sum(np.square(x - y))) for x, y in pairs)
  den = sum(float(np.sum(np.square(y))) for _, y in pairs)
  if den == 0.0:
    return 0.0 if num == 0.0 else float('inf')
  return float(np.sqrt(num / den))


def finite_difference_error(prob, num_directions=3, seed=0, eps=1e-5) -> float:
  """Max relative error of reference_grads against central differences (float64)."""
  prob64 = jax.tree.map(
      lambda v: v.astype(jnp.float64)
      if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.floating)
      else v,
      prob,
  )
  loss = losses_lib.get(prob['loss'])
  g_grads, d_grads, _ = one_stage.reference_grads(**prob64)
  disc = prob64['discriminate']
  has_aux = prob64['d_has_aux']

  def d_out(p, x):
    out = disc(p, x)
    return out[0] if has_aux else out

  x_fake = prob64['generate'](prob64['params_g'], prob64['z'])
  state = prob64['loss_state']

  def d_objective(pd):
    value = loss.d(d_out(pd, prob64['x_real']), d_out(pd, x_fake), state)
    if prob64['penalties']:
      value = (
          value
          + penalties_lib.loss(
              disc,
              pd,
              prob64['x_real'],
              x_fake,
              prob64['penalties'],
              prob64['penalty_rng'],
              has_aux=has_aux,
          )[0]
      )
    return value

  objectives = [
      (d_objective, prob64['params_d'], d_grads),
      (
          lambda pg: loss.g(
              d_out(prob64['params_d'], prob64['x_real']),
              d_out(prob64['params_d'], prob64['generate'](pg, prob64['z'])),
              state,
          ),
          prob64['params_g'],
          g_grads,
      ),
  ]
  rng = np.random.default_rng(seed)
  worst = 0.0
  for objective, params, grads in objectives:
    objective = jax.jit(objective)
    for _ in range(num_directions):
      v = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
      v_norm = np.sqrt(sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(v)))
      v = jax.tree.map(lambda x: x / v_norm, v)
      at = lambda t: float(objective(jax.tree.map(lambda p, d: p + t * d, params, v)))
      # Fourth-order central stencil: truncation error O(eps^4) even where the
      # extreme-logit regimes make the curvature large.
      fd = (8 * (at(eps) - at(-eps)) - (at(2 * eps) - at(-2 * eps))) / (12 * eps)
      exact = sum(
          float(jnp.sum(g * d))
          for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v))
      )
      # Relative to the gradient's norm (|v| = 1): a direction nearly orthogonal to
      # the gradient must not turn float64 roundoff into a large relative error.
      grad_norm = np.sqrt(sum(float(jnp.sum(g * g)) for g in jax.tree.leaves(grads)))
      worst = max(worst, abs(fd - exact) / max(grad_norm, 1e-30))
  return worst


def run_one_stage(prob, mode):
  """One-stage gradients of ``prob``, jitted at the matmul precision in effect."""
  return jax.jit(
      lambda pg, pd: one_stage.one_stage_grads(
          prob['generate'],
          prob['discriminate'],
          pg,
          pd,
          prob['z'],
          prob['x_real'],
          prob['loss'],
          mode=mode,
          d_has_aux=prob['d_has_aux'],
          measure_error=mode == 'approx',
          loss_state=prob['loss_state'],
          penalties=prob['penalties'],
          penalty_rng=prob['penalty_rng'],
      )
  )(prob['params_g'], prob['params_d'])


def _scaled(loss, scale):
  """``loss`` times ``scale`` (the same ``Loss`` when scale is 1)."""
  if scale == 1.0:
    return loss
  return losses_lib.Loss(
      f'{loss.name}*{scale}',
      lambda r, f, *s: scale * loss.d_loss(r, f, *s),
      lambda r, f, *s: scale * loss.g_loss(r, f, *s),
      init_state=loss.init_state,
      update_state=loss.update_state,
  )


def run_reference(prob, loss_scale=1.0):
  """Reference gradients of ``prob`` (of its loss times ``loss_scale``, divided back),
  jitted at the matmul precision in effect."""
  loss = _scaled(losses_lib.get(prob['loss']), loss_scale)
  ref_g, ref_d, _ = jax.jit(
      lambda pg, pd: one_stage.reference_grads(
          **{**prob, 'params_g': pg, 'params_d': pd, 'loss': loss}
      )
  )(prob['params_g'], prob['params_d'])
  return jax.tree.map(lambda x: x / loss_scale, (ref_g, ref_d))


def default_precision_report(prob, mode, emulate=None) -> dict:
  """One-stage against reference at the matmul precision in effect (the backend's
  default unless configured), beside the rounding floor: the reference against itself
  with the loss times ROUNDING_SCALE and the gradients divided back, the same math with
  every backward product rounded anew."""
  grads_g, grads_d, _ = run_one_stage(prob, mode)
  ref_g, ref_d = run_reference(prob)
  again_g, again_d = run_reference(prob, ROUNDING_SCALE)
  dtype = jax.tree.leaves(ref_g)[0].dtype
  report = {
      'matmul_precision': jax.config.jax_default_matmul_precision or 'default',
      'emulated': emulate,
      'rel_err_g': rel_err(grads_g, ref_g),
      'rel_err_d': rel_err(grads_d, ref_d),
      'rounding_floor_g': rel_err(again_g, ref_g),
      'rounding_floor_d': rel_err(again_d, ref_d),
  }
  eps = float(jnp.finfo(dtype).eps)
  report['within_rounding'] = all(
      report[f'rel_err_{p}'] <= ROUNDING_FACTOR * max(report[f'rounding_floor_{p}'], eps)
      for p in 'gd'
  )
  return report


def check(
    loss,
    disc,
    *,
    mode='exact',
    seed=0,
    x64=False,
    logits='normal',
    emulate=None,
    penalty='none',
    default_precision=True,
) -> dict:
  """Runs one gradcheck setting and returns the JSON-able report. The verdict compares
  at full float32 precision, so that it judges the algorithm, not the hardware's
  rounding; ``default_precision`` reports what training at the default sees (skipped
  with ``default_precision=False``: three more compilations)."""
  dtype = jnp.float64 if x64 else jnp.float32
  prob = problem(
      loss, disc, seed=seed, dtype=dtype, logits=logits, emulate=emulate, penalty=penalty
  )
  with full_precision():
    grads_g, grads_d, aux = run_one_stage(prob, mode)
    ref_g, ref_d = run_reference(prob)
    fd_rel_err = finite_difference_error(prob, seed=seed)
  finite = all(
      bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((grads_g, grads_d))
  )
  report = {
      'loss': loss,
      'disc': disc,
      'mode': mode,
      'logits': logits,
      'penalty': penalty,
      'dtype': jnp.dtype(dtype).name,
      'precision': FULL_PRECISION,
      'rel_err_g': rel_err(grads_g, ref_g),
      'rel_err_d': rel_err(grads_d, ref_d),
      'fd_rel_err': fd_rel_err,
      'finite': finite,
      'n_exact': int(aux['n_exact']),
      'gamma_mean': float(aux['gamma_mean']),
      'symmetric': losses_lib.is_symmetric(loss),
  }
  if 'approx_rel_err' in aux:
    report['approx_rel_err'] = float(aux['approx_rel_err'])
  tol = TOLERANCE[report['dtype']]
  report['ok'] = bool(
      finite
      and report['rel_err_g'] <= tol
      and report['rel_err_d'] <= tol
      and report['fd_rel_err'] <= FD_TOLERANCE
  )
  if default_precision:
    report['default_precision'] = default_precision_report(prob, mode, emulate)
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m osgan_jax.gradcheck',
      description='Checks one-stage gradients against the two-grad reference.',
  )
  parser.add_argument('--loss', required=True, help='registered loss name')
  parser.add_argument('--disc', required=True, help=f'one of {", ".join(DISC_KINDS)}')
  parser.add_argument('--mode', default='exact', help='exact or approx')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--x64', action='store_true', help='compare in float64')
  parser.add_argument('--logits', default='normal', help=', '.join(LOGIT_REGIMES))
  parser.add_argument(
      '--penalty', default='none', help=f'gradient penalties on D: {", ".join(PENALTIES)}'
  )
  parser.add_argument(
      '--emulate',
      default='none',
      help='none, or round float32 matmul/conv operands at default '
      f'precision as this precision would: {", ".join(EMULATIONS)} '
      '(see default_precision; the verdict is unaffected)',
  )
  args = parser.parse_args(argv)
  for value, valid, what in (
      (args.loss, losses_lib.names(), 'loss'),
      (args.disc, DISC_KINDS, 'discriminator kind'),
      (args.mode, one_stage.MODES, 'mode'),
      (args.logits, tuple(LOGIT_REGIMES), 'logits regime'),
      (args.penalty, tuple(PENALTIES), 'penalty'),
      (args.emulate, ('none',) + tuple(EMULATIONS), 'emulated precision'),
  ):
    if value not in valid:
      print(
          f'gradcheck: unknown {what} {value!r}; valid: {", ".join(valid)}',
          file=sys.stderr,
      )
      return 2
  # Finite differences need float64 whatever the compared dtype; arrays are typed
  # explicitly, so enabling x64 does not change the float32 comparison.
  jax.config.update('jax_enable_x64', True)
  report = check(
      args.loss,
      args.disc,
      mode=args.mode,
      seed=args.seed,
      x64=args.x64,
      logits=args.logits,
      penalty=args.penalty,
      emulate=None if args.emulate == 'none' else args.emulate,
  )
  print(json.dumps(report))
  return 0 if report['ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
