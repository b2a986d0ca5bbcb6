"""One-stage GAN gradients: G and D from one forward and one backward, exact by default.

``one_stage_grads`` runs G, picks a strategy for D's side (``core.strategies``), then
finishes G's backward, adds D's gradient penalties and builds the aux record.
``reference_grads`` is the two-``jax.grad`` ground truth it is checked against. The
method and its cost: docs/method.md; exactness and precision: docs/exactness.md.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from osgan_jax.core import losses as losses_lib
from osgan_jax.core import penalties as penalties_lib
from osgan_jax.core import strategies
from osgan_jax.core.decomposition import call_with_aux, has_real, samples_independent
from osgan_jax.core.decomposition import project  # pylint: disable=unused-import

PyTree = Any
MODES = ('exact', 'approx')


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
    exact_bucket=strategies.DEFAULT_BUCKETS,
):
  """Gradients of L_G (for G) and L_D (for D) from one shared forward and backward.

  Args (in full: docs/method.md#the-gradient-api):
    generate: ``(params_g, z) -> images`` (an array or pytree; integer leaves get no
      gradient), ``(images, aux)`` with ``g_has_aux``.
    discriminate: ``(params_d, images) -> logits [B] or [B, H, W]``, ``(logits, aux)``
      with ``d_has_aux``; undifferentiated model state is closed over, returned as aux.
    x_real: real images like ``generate``'s, or ``None``/``{}`` for a data-free game
      (the loss then gets empty ``[0, ...]`` real logits).
    mode: ``'exact'`` (equals ``reference_grads``) or ``'approx'`` (the paper's).
    per_sample: whether D's logits for sample i depend on image i only; ``None`` probes.
    measure_error: approx mode: also report ``aux['approx_rel_err']``.
    loss_state: a stateful loss's state (default: its initial one).
    penalties: ``{'r1' | 'r2' | 'gp': weight}``, D-only; ``penalty_rng`` draws ``gp``'s
      interpolation weights.
    exact_bucket: per-sample D: the ascending ladder of buckets the singular fakes
      re-run D in (the smallest that holds them), fractions of the batch or counts;
      one number is a ladder of one (0, None or (): always the whole batch).

  Returns:
    ``(grads_g, grads_d, aux)``; ``aux``: ``loss_d``, ``loss_g``, ``loss_state``, gamma
    statistics, ``n_exact``, ``real_logits``, ``per_sample``, ``g_aux``/``d_aux`` and,
    where they apply, ``exact_path`` (0 none, i the ladder's i-th bucket, then the
    whole batch), ``exact_rerun`` (the fakes D re-ran on), ``approx_rel_err`` and the
    penalties' metrics.
  """
  loss = losses_lib.get(loss)
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')

  x_fake, vjp_g, g_aux = jax.vjp(
      lambda p: call_with_aux(generate, g_has_aux, p, z), params_g, has_aux=True
  )
  if per_sample is None:
    probe_batch = x_real if has_real(x_real) else x_fake
    per_sample = samples_independent(
        discriminate, params_d, probe_batch, has_aux=d_has_aux
    )
  game = strategies.Game(
      discriminate=discriminate,
      params_d=params_d,
      x_real=x_real,
      x_fake=x_fake,
      loss=loss,
      loss_state=loss_state,
      d_has_aux=d_has_aux,
      per_sample=bool(per_sample),
      penalties=penalties_lib.validate(penalties),
      measure_error=measure_error,
      bucket=exact_bucket,
  )
  result = strategies.STRATEGIES[strategies.choose_strategy(game, mode=mode)](game)

  (grads_g,) = vjp_g(result.g_cot)
  grads_d, aux = result.grads_d, dict(result.aux)
  weights = {k: w for k, w in game.penalties.items() if k not in result.penalties_done}
  if weights:
    grads_p, penalty_metrics = _penalty_grads(game, weights, penalty_rng)
    grads_d = jax.tree.map(jnp.add, grads_d, grads_p)
    aux.update(penalty_metrics)
  aux.update(_record(result, game, g_aux))
  return grads_g, grads_d, aux


def _record(result: strategies.Pass, game: strategies.Game, g_aux) -> dict:
  """The aux record's losses, gamma statistics, path counts and model aux."""
  loss, state = game.loss, game.loss_state
  r32, f32, gamma = result.real_logits, result.fake_logits, result.gamma
  defined = jnp.max(jnp.abs(result.c_fake), axis=result.sample_axes) > 0
  n_defined, any_defined = jnp.maximum(jnp.sum(defined), 1), jnp.any(defined)
  gamma_min = jnp.min(jnp.where(defined, gamma, jnp.inf), initial=jnp.inf)
  gamma_max = jnp.max(jnp.where(defined, gamma, -jnp.inf), initial=-jnp.inf)
  return dict(
      loss_d=loss.d(r32, f32, state),
      loss_g=loss.g(r32, f32, state),
      loss_state=loss.updated(state, r32, f32),
      gamma_mean=jnp.sum(jnp.where(defined, gamma, 0.0)) / n_defined,
      gamma_min=jnp.where(any_defined, gamma_min, 0.0),
      gamma_max=jnp.where(any_defined, gamma_max, 0.0),
      n_exact=result.n_exact,
      real_logits=r32,
      per_sample=jnp.asarray(game.per_sample),
      g_aux=g_aux,
      d_aux=result.d_aux,
  )


def _penalty_grads(game: strategies.Game, weights: dict, rng):
  """D's gradient of the penalties and their metrics (``osgan_jax.core.penalties``)."""
  if not game.has_real and {'r1', 'gp'} & set(weights):
    raise ValueError('the r1 and gp penalties need real data')

  def penalty(p):
    x_real, x_fake = game.x_real, game.x_fake
    return penalties_lib.loss(
        game.discriminate, p, x_real, x_fake, weights, rng, has_aux=game.d_has_aux
    )

  return jax.grad(penalty, has_aux=True)(game.params_d)


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
  """Ground truth: ``jax.grad`` of ``L_D + penalties`` for D and of ``L_G`` for G, D run
  on each batch separately; takes (and ignores) ``one_stage_grads``' other options."""
  loss = losses_lib.get(loss)

  def disc(p, x):
    return call_with_aux(discriminate, d_has_aux, p, x)[0].astype(jnp.float32)

  def gen(p):
    return call_with_aux(generate, g_has_aux, p, z)[0]

  def real(pd, fake_logits):
    return disc(pd, x_real) if has_real(x_real) else fake_logits[:0]

  def d_objective(pd):
    fake_logits = disc(pd, x_fake)
    value = loss.d(real(pd, fake_logits), fake_logits, loss_state)
    if penalties:
      value += penalties_lib.loss(
          discriminate, pd, x_real, x_fake, penalties, penalty_rng, has_aux=d_has_aux
      )[0]
    return value

  def g_objective(pg):
    fake_logits = disc(params_d, gen(pg))
    return loss.g(real(params_d, fake_logits), fake_logits, loss_state)

  x_fake = gen(params_g)
  loss_d, grads_d = jax.value_and_grad(d_objective)(params_d)
  loss_g, grads_g = jax.value_and_grad(g_objective)(params_g)
  return grads_g, grads_d, {'loss_d': loss_d, 'loss_g': loss_g}
