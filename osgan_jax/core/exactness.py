"""Is one-stage training exact for a loss and a discriminator? The check and its parts.

``check`` compares ``one_stage_grads`` with ``reference_grads`` on a toy problem at full
float32 precision (judging the algorithm, not the hardware's rounding), the reference
with finite differences in float64, and reports what the default precision does beside
that arithmetic's own rounding floor. ``python -m osgan_jax.gradcheck`` runs it; see
docs/exactness.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax.core import losses as losses_lib
from osgan_jax.core import one_stage
from osgan_jax.core import penalties as penalties_lib
from osgan_jax.core.precision import FULL_PRECISION, full_precision
from osgan_jax.core.toy_networks import problem

TOLERANCE = {'float32': 1e-5, 'float64': 1e-10}
FD_TOLERANCE = 1e-5
# The rounding floor's loss scale: not a power of two, so every cotangent rounds anew.
ROUNDING_SCALE = 3.0
# within_rounding: one-stage within this factor of the floor (or of float eps).
ROUNDING_FACTOR = 10.0


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


def _objectives(prob):
  """``[(L_D + penalties as a function of params_d, params_d), (L_G of params_g,
  params_g)]``, written out independently of ``reference_grads``."""
  loss = losses_lib.get(prob['loss'])
  disc, has_aux, state = prob['discriminate'], prob['d_has_aux'], prob['loss_state']

  def d_out(p, x):
    out = disc(p, x)
    return out[0] if has_aux else out

  x_real, x_fake = prob['x_real'], prob['generate'](prob['params_g'], prob['z'])
  penalties, penalty_rng = prob['penalties'], prob['penalty_rng']

  def d_objective(pd):
    value = loss.d(d_out(pd, x_real), d_out(pd, x_fake), state)
    if penalties:
      value += penalties_lib.loss(
          disc, pd, x_real, x_fake, penalties, penalty_rng, has_aux=has_aux
      )[0]
    return value

  def g_objective(pg):
    return loss.g(
        d_out(prob['params_d'], prob['x_real']),
        d_out(prob['params_d'], prob['generate'](pg, prob['z'])),
        state,
    )

  return [(d_objective, prob['params_d']), (g_objective, prob['params_g'])]


def _directional_error(objective, params, grads, v, eps) -> float:
  """|finite difference of ``objective`` along unit ``v`` - <grads, v>| / |grads|."""
  at = lambda t: float(objective(jax.tree.map(lambda p, d: p + t * d, params, v)))
  # Fourth-order central stencil: truncation error O(eps^4) even where the
  # extreme-logit regimes make the curvature large.
  fd = (8 * (at(eps) - at(-eps)) - (at(2 * eps) - at(-2 * eps))) / (12 * eps)
  exact = sum(
      float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v))
  )
  # Relative to the gradient's norm (|v| = 1): a direction nearly orthogonal to
  # the gradient must not turn float64 roundoff into a large relative error.
  grad_norm = np.sqrt(sum(float(jnp.sum(g * g)) for g in jax.tree.leaves(grads)))
  return abs(fd - exact) / max(grad_norm, 1e-30)


def finite_difference_error(prob, num_directions=3, seed=0, eps=1e-5) -> float:
  """Max relative error of reference_grads against central differences (float64)."""
  prob64 = jax.tree.map(
      lambda v: v.astype(jnp.float64)
      if isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jnp.floating)
      else v,
      prob,
  )
  g_grads, d_grads = run_reference(prob64)
  rng = np.random.default_rng(seed)
  worst = 0.0
  for (objective, params), grads in zip(_objectives(prob64), (d_grads, g_grads)):
    objective = jax.jit(objective)
    for _ in range(num_directions):
      v = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
      v_norm = np.sqrt(sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(v)))
      v = jax.tree.map(lambda x: x / v_norm, v)
      worst = max(worst, _directional_error(objective, params, grads, v, eps))
  return worst


def run_one_stage(prob, mode):
  """One-stage gradients of ``prob``, jitted at the matmul precision in effect."""
  return jax.jit(
      lambda pg, pd: one_stage.one_stage_grads(
          **{**prob, 'params_g': pg, 'params_d': pd},
          mode=mode,
          measure_error=mode == 'approx',
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
  # The penalties scale with the loss, so the whole objective is the same math.
  penalties = prob.get('penalties')
  if penalties:
    penalties = {k: w * loss_scale for k, w in penalties.items()}
  ref_g, ref_d, _ = jax.jit(
      lambda pg, pd: one_stage.reference_grads(
          **{**prob, 'params_g': pg, 'params_d': pd, 'loss': loss, 'penalties': penalties}
      )
  )(prob['params_g'], prob['params_d'])
  return jax.tree.map(lambda x: x / loss_scale, (ref_g, ref_d))


def default_precision_report(prob, mode, emulate=None) -> dict:
  """One-stage against reference at the matmul precision in effect, beside the rounding
  floor (the reference with the loss times ROUNDING_SCALE; docs/exactness.md)."""
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
    augment='none',
    default_precision=True,
) -> dict:
  """One gradcheck setting's JSON-able report, its verdict at full float32 precision;
  ``default_precision=False`` skips the default-precision report (three compilations)."""
  dtype = jnp.float64 if x64 else jnp.float32
  prob = problem(
      loss,
      disc,
      seed=seed,
      dtype=dtype,
      logits=logits,
      emulate=emulate,
      penalty=penalty,
      augment=augment,
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
      'augment': augment,
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
