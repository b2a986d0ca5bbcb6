"""One-stage GAN gradients: one forward, one backward, exact by default.

Both GAN losses depend on a fake image x_i only through D's logits at x_i. With
c = dL_D/d logits and g = dL_G/d fake logits (tiny tensors, from autodiff of the loss),

    dL_D/d params_d = J_params^T c           dL_G/d x_fake = J_fake^T g.

One ``jax.vjp`` of D with cotangent c gives D its gradient and, as a by-product, the
image cotangent J_fake^T c. When D treats samples independently and g_i = gamma_i c_i
for a per-sample scalar gamma_i, the generator's image cotangent is gamma_i times that
by-product: the paper's decomposition (gamma = -1 for symmetric losses). gamma_i is the
least-squares projection of g_i on c_i, so patch logits ``[B, H, W]`` are handled too.

The decomposition is only used where it is exact. A sample takes the *exact path* when
c_i is zero or too small to carry its gradient (hinge with f < -1, LSGAN at D = 0,
non-saturating logits far below 0), or when g_i is not parallel to c_i (patch logits of
an asymmetric loss). The exact path is an input-only backward of D with cotangent g,
run under ``lax.cond`` only when some sample needs it; with a per-sample D it re-runs
D's forward on the fakes inside the branch, so that steps which do not need it pay
nothing (reusing the main vjp's intermediates made XLA pass them all into the branch,
10-12% of a DCGAN step on CPU, taken or not). A discriminator that couples samples (BatchNorm in training mode, minibatch
standard deviation) makes J_fake^T non-diagonal over samples: then only a single global
gamma can be exact (symmetric losses); otherwise the step runs D's parameter backward
with c and an input-only backward with g.

Cost, counting forward, input-gradient and parameter-gradient passes as one unit each:

  * decomposable (the paper's case): 3 T_G + 6 T_D, against 4 T_G + 8 T_D two-stage.
  * exact path, on a step where some sample needs it: + 2 T_D (a forward and an
    input-only backward of D on the fake half; the masked samples cost as much as the
    whole batch on dense hardware); + 0 on the other steps.
  * coupled D, asymmetric loss: 3 T_G + 7 T_D (param backward with c, input backward
    with g). Still cheaper than two-stage.
  * with R1 + R2 (R3GAN) and a per-sample D: one forward of D on reals and fakes, its
    input backward (which R2 needs and which, scaled per sample, is G's cotangent) and
    the double backward for D's parameters; two-stage repeats G's forward, D's forward
    on the fakes and an input backward for G's step.

``mode='approx'`` is the paper's / official code's method: per-sample gamma times the
shared image cotangent, whatever the discriminator. It is wrong for coupled
discriminators (about 28% off with a BatchNorm D) and for asymmetric patch losses, and
gives samples with undefined gamma no generator gradient at all (where the official code
divides by zero). ``measure_error=True`` reports its relative error in ``aux``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax.core import losses as losses_lib
from osgan_jax.core import penalties as penalties_lib

PyTree = Any
MODES = ('exact', 'approx')


# ----------------------------------------------------------------------------- pytrees


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _batch_size(tree) -> int:
  return jax.tree.leaves(tree)[0].shape[0]


def _concat(a, b):
  return jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=0), a, b)


def _per_sample(scalars, leaf):
  """Broadcasts [B] against a [B, ...] leaf."""
  return scalars.reshape(scalars.shape + (1,) * (leaf.ndim - scalars.ndim))


def _scale(gamma, tree):
  """gamma * tree on float leaves; float0 (integer-input) cotangents pass through."""

  def f(leaf):
    if leaf.dtype == jax.dtypes.float0:
      return leaf
    return (_per_sample(gamma, leaf) * leaf).astype(leaf.dtype)

  return jax.tree.map(f, tree)


def _select(mask, a_tree, b_tree):
  """Per sample: a where mask else b (float leaves)."""

  def f(a, b):
    if a.dtype == jax.dtypes.float0:
      return a
    return jnp.where(_per_sample(mask, a), a, b)

  return jax.tree.map(f, a_tree, b_tree)


def _sq_norm(tree) -> jax.Array:
  leaves = [l for l in jax.tree.leaves(tree) if l.dtype != jax.dtypes.float0]
  return sum(jnp.sum(jnp.square(l.astype(jnp.float32))) for l in leaves)


def _has_real(x_real) -> bool:
  """False for a data-free game: ``x_real`` is None or has no leaves."""
  return bool(jax.tree.leaves(x_real))


def call_with_aux(fn, has_aux, *args):
  """fn(*args) as (output, aux); aux is None when fn has none."""
  out = fn(*args)
  return out if has_aux else (out, None)


# ------------------------------------------------------------------ the decomposition


def project(d, g, axes):
  """Least-squares gamma with g ~ gamma * d over ``axes``, and whether it is exact.

  Returns ``(gamma, exact)``. ``exact`` is false where d is zero or so small that a
  backward pass scaled by it would underflow (or gamma would exceed 1e15), or where g
  is not parallel to d to within ``rtol``; gamma is 0 there (never inf or NaN). Both
  vectors are divided by the same scale, so g = -d gives gamma = -1 exactly.
  """
  rtol = 1e-6
  floor = float(np.sqrt(np.finfo(np.dtype(d.dtype)).tiny))
  d_scale = jnp.max(jnp.abs(d), axis=axes)
  g_scale = jnp.max(jnp.abs(g), axis=axes)
  usable = (d_scale > floor) & (g_scale <= 1e15 * d_scale)
  scale = jnp.expand_dims(jnp.where(usable, d_scale, 1.0), axes)
  d_unit = d / scale
  g_unit = jnp.where(jnp.expand_dims(usable, axes), g / scale, 0.0)
  gamma = jnp.where(
      usable,
      jnp.sum(g_unit * d_unit, axis=axes)
      / jnp.maximum(jnp.sum(d_unit * d_unit, axis=axes), 1.0),
      0.0,
  )
  residual = g_unit - jnp.expand_dims(gamma, axes) * d_unit
  exact = usable & (
      jnp.sum(jnp.square(residual), axis=axes)
      <= rtol**2 * jnp.sum(jnp.square(g_unit), axis=axes)
  )
  return gamma, exact | (g_scale == 0)


def samples_independent(
    discriminate: Callable, params_d: PyTree, images: PyTree, *, has_aux: bool = False
) -> bool:
  """Whether D's logits for sample i depend on image i alone.

  A forward-mode probe: perturb sample 0 and see whether any other sample's logits
  move. BatchNorm in training mode and minibatch standard deviation fail it. Run
  eagerly; under a trace, parameters and images are replaced by random stand-ins of
  the same shapes. If the probe cannot run (D closes over traced values), D is treated
  as coupling samples, which is exact but costs one extra input backward.
  """
  batch = _batch_size(images)
  if batch < 2:
    return True
  traced = any(
      isinstance(l, jax.core.Tracer) for l in jax.tree.leaves((params_d, images))
  )
  try:
    with jax.ensure_compile_time_eval():
      key = jax.random.PRNGKey(0)
      if traced:
        params_d, images = _stand_ins(key, (params_d, images))
      tangent = jax.tree.map(
          lambda l: (
              jax.random.normal(key, l.shape, l.dtype).at[1:].set(0)
              if _is_float(l)
              else np.zeros(l.shape, jax.dtypes.float0)
          ),
          images,
      )
      _, t_out = jax.jvp(
          lambda x: call_with_aux(discriminate, has_aux, params_d, x)[0],
          (images,),
          (tangent,),
      )
      moved = jnp.any(jnp.abs(t_out[1:]) > 0) | ~jnp.all(jnp.isfinite(t_out[1:]))
      return not bool(moved)
  except Exception as e:  # pylint: disable=broad-except
    warnings.warn(
        'one_stage: could not probe whether the discriminator treats samples '
        f'independently ({type(e).__name__}); assuming it couples them (exact, '
        'one extra input backward). Pass per_sample=True/False to skip the '
        'probe.'
    )
    return False


def _stand_ins(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  new = [
      jax.random.normal(k, l.shape, l.dtype) * 0.1
      if _is_float(l)
      else jnp.zeros(l.shape, l.dtype)
      for k, l in zip(keys, leaves)
  ]
  return jax.tree.unflatten(treedef, new)


# ----------------------------------------------------------------------- the gradients


def one_stage_grads(
    generate: Callable,
    discriminate: Callable,
    params_g: PyTree,
    params_d: PyTree,
    z: PyTree,
    x_real: PyTree,
    loss,
    *,
    mode: str = 'exact',
    per_sample: bool | None = None,
    g_has_aux: bool = False,
    d_has_aux: bool = False,
    measure_error: bool = False,
    loss_state=None,
    penalties=None,
    penalty_rng=None,
):
  """Gradients of L_G (for G) and L_D (for D) from one shared forward and backward.

  Args:
    generate: ``generate(params_g, z) -> images`` (or ``(images, aux)`` with
      ``g_has_aux``). ``images`` is an array or a pytree (e.g. ``{'image', 'label'}``
      for conditional GANs; integer leaves get no gradient).
    discriminate: ``discriminate(params_d, images) -> logits`` of shape ``[B]`` or
      ``[B, H, W]`` (or ``(logits, aux)`` with ``d_has_aux``).
    params_g, params_d: parameter pytrees. Model state that is not differentiated
      (BatchNorm running statistics, spectral-norm vectors) is closed over by
      ``generate``/``discriminate`` and returned as their aux: e.g.
      ``lambda p, x: model.apply({'params': p, **state}, x, mutable=['batch_stats'])``
      with ``d_has_aux=True``.
    z: the latent batch (any pytree) passed to ``generate``.
    x_real: a batch of real images, same structure as ``generate``'s output, or
      ``None`` (or a pytree without leaves, e.g. ``{}``) for a game without real data
      (data-free distillation): D then runs on the fake batch only and the loss gets
      an empty ``[0, ...]`` array as its real logits, so it must not use them.
    loss: a registered loss name or ``losses.Loss``.
    mode: ``'exact'`` (default; equals ``reference_grads``) or ``'approx'`` (the
      paper's per-sample scaling, see the module docstring).
    per_sample: whether D's logits for sample i depend on image i only. ``None``
      probes it (``samples_independent``). True lets D run once on the concatenated
      real and fake batch; False runs it on each half (as ``reference_grads`` does).
    g_has_aux, d_has_aux: ``generate``/``discriminate`` return ``(output, aux)``.
    measure_error: in approx mode, also compute the exact image cotangent (one more
      input-only backward) and report ``aux['approx_rel_err']``.
    loss_state: the state of a stateful loss (``losses.Loss.init_state``; default:
      the initial state); ``aux['loss_state']`` is its update from these logits.
    penalties: ``{'r1' | 'r2' | 'gp': weight}`` (``osgan_jax.core.penalties``): D-only
      gradient penalties added to D's gradient; ``penalty_rng`` draws ``gp``'s
      interpolation weights. They need input gradients of D (a double backward). With
      R2, a per-sample D and one logit per sample (R3GAN), the step shares D's
      forward with them: D's input gradient at the fakes, which R2 needs, times the
      per-sample ``dL_G/dlogit`` is G's image cotangent (``_grads_sharing_r2``).
      Otherwise they run as their own forward and backward of D.

  Returns:
    ``(grads_g, grads_d, aux)``; ``aux`` holds ``loss_d``, ``loss_g``, ``gamma_mean``,
    ``gamma_min``, ``gamma_max`` (over samples whose gamma is defined), ``n_exact``
    (samples that took the exact path, or in approx mode whose gamma is wrong or
    undefined), ``per_sample``, and ``g_aux``/``d_aux`` (D's aux from its last forward
    call: the concatenated batch, or the fake half when D couples samples).
  """
  loss = losses_lib.get(loss)
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')

  x_fake, vjp_g, g_aux = jax.vjp(
      lambda p: call_with_aux(generate, g_has_aux, p, z), params_g, has_aux=True
  )
  batch = _batch_size(x_fake)
  has_real = _has_real(x_real)
  if per_sample is None:
    per_sample = samples_independent(
        discriminate, params_d, x_real if has_real else x_fake, has_aux=d_has_aux
    )

  weights = penalties_lib.validate(penalties)
  if _penalty_shares_forward(
      mode,
      has_real,
      per_sample,
      weights,
      measure_error,
      discriminate,
      params_d,
      x_fake,
      d_has_aux,
  ):
    # R2 (with or without R1): D's input gradient at the fakes, which R2 needs, is
    # also G's image cotangent up to the per-sample dL_G/dlogit, so one forward of D,
    # its input backward and the double backward give everything.
    r32, f32, c_fake, g_fake, grads_d, g_cot, d_aux, aux = _grads_sharing_r2(
        discriminate,
        params_d,
        x_real,
        x_fake,
        loss,
        loss_state,
        weights,
        d_has_aux,
        batch,
    )
    sample_axes = ()  # one logit per sample
    gamma, _ = project(c_fake, g_fake, sample_axes)
    n_exact = jnp.asarray(0)
    weights = {k: w for k, w in weights.items() if k not in ('r1', 'r2')}
  else:
    if not has_real:

      def forward(p, xf):
        fake_logits, aux = call_with_aux(discriminate, d_has_aux, p, xf)
        return (fake_logits[:0], fake_logits), aux

    elif per_sample:

      def forward(p, xf):
        logits, aux = call_with_aux(discriminate, d_has_aux, p, _concat(x_real, xf))
        return (logits[:batch], logits[batch:]), aux

    else:

      def forward(p, xf):
        real_logits, _ = call_with_aux(discriminate, d_has_aux, p, x_real)
        fake_logits, aux = call_with_aux(discriminate, d_has_aux, p, xf)
        return (real_logits, fake_logits), aux

    (real_logits, fake_logits), vjp_d, d_aux = jax.vjp(
        forward, params_d, x_fake, has_aux=True
    )

    # Cotangents at the logits, computed in float32 whatever D's compute dtype.
    r32, f32 = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
    c_real, c_fake, g_fake = loss.coefficients(r32, f32, loss_state)
    sample_axes = tuple(range(1, f32.ndim))
    gamma, decomposable = project(c_fake, g_fake, sample_axes)

    def backward(cot_real, cot_fake):
      return vjp_d(
          (cot_real.astype(real_logits.dtype), cot_fake.astype(fake_logits.dtype))
      )

    def exact_image_cotangent(g_cot_fake):
      """Input-only backward of D with G's cotangent (D's parameter grads unused)."""
      return backward(jnp.zeros_like(c_real), g_cot_fake)[1]

    def fake_image_cotangent(g_cot_fake):
      """The same from a fresh forward of D on the fakes alone (valid since D's fake call
      never sees the reals: per-sample D, or separate calls when D couples samples).
      For use under ``lax.cond``: it keeps the main backward's intermediates out of the
      branch, which XLA would otherwise materialise as branch operands on every step,
      taken or not."""
      _, vjp_x = jax.vjp(
          lambda xf: call_with_aux(discriminate, d_has_aux, params_d, xf)[0], x_fake
      )
      return vjp_x(g_cot_fake.astype(fake_logits.dtype))[0]

    aux = {}
    if per_sample or mode == 'approx':
      grads_d, x_bar = backward(c_real, c_fake)
      g_cot = _scale(gamma, x_bar)
      if mode == 'exact':
        n_exact = jnp.sum(~decomposable)

        def fix(g_cot):
          only_needed = jnp.where(_per_sample(decomposable, g_fake), 0.0, g_fake)
          return _select(decomposable, g_cot, fake_image_cotangent(only_needed))

        g_cot = jax.lax.cond(n_exact > 0, fix, lambda c: c, g_cot)
      else:
        # The approximation is wrong wherever gamma is not exact, and for every sample
        # when D couples samples unless one global gamma fits (symmetric losses).
        n_exact = jnp.sum(~decomposable)
        if not per_sample:
          global_gamma, global_ok = project(c_fake, g_fake, tuple(range(f32.ndim)))
          fits = global_ok & jnp.all(
              jnp.abs(gamma - global_gamma) <= 1e-6 * jnp.abs(global_gamma)
          )
          n_exact = jnp.where(fits, 0, batch)
        if measure_error:
          exact = exact_image_cotangent(g_fake)
          diff = jax.tree.map(
              lambda a, b: a if a.dtype == jax.dtypes.float0 else a - b, g_cot, exact
          )
          aux['approx_rel_err'] = jnp.sqrt(
              _sq_norm(diff) / jnp.maximum(_sq_norm(exact), np.finfo(np.float32).tiny)
          )
    else:
      # Coupled D, exact: one global gamma is exact (symmetric losses) or nothing is.
      # The loss decides the path statically, so D's backward never sits inside a
      # lax.cond (XLA:CPU compiles convolutions in a conditional without its fast
      # paths: a tiny StyleGAN2 step was 10x slower that way).
      global_gamma, global_ok = project(c_fake, g_fake, tuple(range(f32.ndim)))
      with jax.ensure_compile_time_eval():
        symmetric = losses_lib.is_symmetric(loss)
      if symmetric:
        grads_d, x_bar = backward(c_real, c_fake)
        g_cot = _scale(jnp.full((batch,), global_gamma), x_bar)
        # Where the logits leave no global gamma (e.g. every coefficient zero).
        g_cot = jax.lax.cond(
            global_ok, lambda c: c, lambda c: fake_image_cotangent(g_fake), g_cot
        )
        n_exact = jnp.where(global_ok, 0, batch)
      else:
        grads_d = backward(c_real, c_fake)[0]
        g_cot = exact_image_cotangent(g_fake)
        n_exact = jnp.asarray(batch)

  (grads_g,) = vjp_g(g_cot)
  if weights:
    grads_p, penalty_metrics = _penalty_grads(
        discriminate, params_d, x_real, x_fake, weights, penalty_rng, d_has_aux
    )
    grads_d = jax.tree.map(jnp.add, grads_d, grads_p)
    aux.update(penalty_metrics)

  defined = jnp.max(jnp.abs(c_fake), axis=sample_axes) > 0
  n_defined = jnp.maximum(jnp.sum(defined), 1)
  aux.update(
      loss_d=loss.d(r32, f32, loss_state),
      loss_g=loss.g(r32, f32, loss_state),
      loss_state=loss.updated(loss_state, r32, f32),
      gamma_mean=jnp.sum(jnp.where(defined, gamma, 0.0)) / n_defined,
      gamma_min=jnp.min(jnp.where(defined, gamma, jnp.inf), initial=jnp.inf),
      gamma_max=jnp.max(jnp.where(defined, gamma, -jnp.inf), initial=-jnp.inf),
      n_exact=n_exact,
      per_sample=jnp.asarray(bool(per_sample)),
      g_aux=g_aux,
      d_aux=d_aux,
  )
  any_defined = jnp.any(defined)
  aux['gamma_min'] = jnp.where(any_defined, aux['gamma_min'], 0.0)
  aux['gamma_max'] = jnp.where(any_defined, aux['gamma_max'], 0.0)
  return grads_g, grads_d, aux


def _penalty_shares_forward(
    mode,
    has_real,
    per_sample,
    weights,
    measure_error,
    discriminate,
    params_d,
    x_fake,
    d_has_aux,
) -> bool:
  """Whether ``_grads_sharing_r2`` applies: exact mode, real data, R2 requested, and a
  D that scores each sample by itself with one logit (so d sum_j D(x_j) / d x_i is
  dD(x_i)/dx_i)."""
  if not (
      mode == 'exact'
      and has_real
      and per_sample
      and 'r2' in weights
      and not measure_error
  ):
    return False
  logits = jax.eval_shape(
      lambda p, x: call_with_aux(discriminate, d_has_aux, p, x)[0], params_d, x_fake
  )
  return logits.ndim == 1


def _cotangent_like(x, float_cotangents):
  """A cotangent pytree for ``x``: the given arrays at its float leaves (in order),
  float0 zeros at its integer leaves (labels)."""
  leaves, treedef = jax.tree.flatten(x)
  it = iter(float_cotangents)
  out = [
      next(it).astype(l.dtype)
      if _is_float(l)
      else np.zeros(np.shape(l), jax.dtypes.float0)
      for l in leaves
  ]
  return jax.tree.unflatten(treedef, out)


def _grads_sharing_r2(
    discriminate, params_d, x_real, x_fake, loss, loss_state, weights, d_has_aux, batch
):
  """D's gradient of L_D + R1/R2 and G's image cotangent from one forward of D.

  One forward of D on [reals; fakes] and its input backward give the logits and
  ``d sum_j D(x_j) / d x``; differentiating ``c . logits + penalties`` (``c`` held
  constant) with respect to D's parameters is the double backward, which gives
  J_params^T c plus the penalties' gradient. G's cotangent is ``g_i dD(x_i)/dx_i``
  (per-sample D, one logit per sample), exact for every loss, with no gamma.
  """
  x_cat = _concat(x_real, jax.lax.stop_gradient(x_fake))

  def objective(p):
    grads_x, logits, aux = penalties_lib.input_grads(
        discriminate, p, x_cat, has_aux=d_has_aux
    )
    l32 = logits.astype(jnp.float32)
    r32, f32 = l32[:batch], l32[batch:]
    c_real, c_fake, g_fake = jax.lax.stop_gradient(
        loss.coefficients(r32, f32, loss_state)
    )
    sq = penalties_lib.sq_norms(grads_x)
    metrics, total = {}, jnp.sum(c_real * r32) + jnp.sum(c_fake * f32)
    for name, half in (('r1', sq[:batch]), ('r2', sq[batch:])):
      if name in weights:
        metrics[f'{name}_penalty'] = jnp.mean(half)
        total = total + weights[name] / 2 * metrics[f'{name}_penalty']
    fake_grads = [jax.lax.stop_gradient(g[batch:]) for g in grads_x]
    return total, (r32, f32, c_fake, g_fake, fake_grads, aux, metrics)

  grads_d, (r32, f32, c_fake, g_fake, fake_grads, d_aux, metrics) = jax.grad(
      objective, has_aux=True
  )(params_d)
  g_cot = _cotangent_like(x_fake, [_per_sample(g_fake, g) * g for g in fake_grads])
  return (
      jax.lax.stop_gradient(r32),
      jax.lax.stop_gradient(f32),
      c_fake,
      g_fake,
      grads_d,
      g_cot,
      d_aux,
      metrics,
  )


def _penalty_grads(discriminate, params_d, x_real, x_fake, weights, rng, has_aux):
  """D's gradient of the penalties and their metrics (``osgan_jax.core.penalties``)."""
  weights = penalties_lib.validate(weights)
  if not _has_real(x_real) and {'r1', 'gp'} & set(weights):
    raise ValueError('the r1 and gp penalties need real data')
  return jax.grad(
      lambda p: penalties_lib.loss(
          discriminate, p, x_real, x_fake, weights, rng, has_aux=has_aux
      ),
      has_aux=True,
  )(params_d)


def reference_grads(
    generate: Callable,
    discriminate: Callable,
    params_g: PyTree,
    params_d: PyTree,
    z: PyTree,
    x_real: PyTree,
    loss,
    *,
    g_has_aux: bool = False,
    d_has_aux: bool = False,
    loss_state=None,
    penalties=None,
    penalty_rng=None,
    **unused_options,
):
  """Ground truth: two independent ``jax.grad`` calls at the same parameters and z:
  of ``L_D + penalties`` for D and of ``L_G`` for G.

  D runs separately on the real and the fake batch (as in two-stage training), so a
  discriminator that couples samples sees the same batches as in ``one_stage_grads``.
  Accepts (and ignores) ``one_stage_grads``' other options, so the two are
  interchangeable.
  """
  loss = losses_lib.get(loss)

  def disc(p, x):
    return call_with_aux(discriminate, d_has_aux, p, x)[0].astype(jnp.float32)

  def gen(p):
    return call_with_aux(generate, g_has_aux, p, z)[0]

  def real(pd, fake_logits):
    return disc(pd, x_real) if _has_real(x_real) else fake_logits[:0]

  def d_objective(pd):
    fake_logits = disc(pd, x_fake)
    value = loss.d(real(pd, fake_logits), fake_logits, loss_state)
    if penalties:
      value = (
          value
          + penalties_lib.loss(
              discriminate, pd, x_real, x_fake, penalties, penalty_rng, has_aux=d_has_aux
          )[0]
      )
    return value

  def g_objective(pg):
    fake_logits = disc(params_d, gen(pg))
    return loss.g(real(params_d, fake_logits), fake_logits, loss_state)

  x_fake = gen(params_g)
  loss_d, grads_d = jax.value_and_grad(d_objective)(params_d)
  loss_g, grads_g = jax.value_and_grad(g_objective)(params_g)
  return grads_g, grads_d, {'loss_d': loss_d, 'loss_g': loss_g}
