"""StyleGAN2 regularisation and generator EMA, as NVlabs' stylegan2-ada-pytorch does them.

R1, path length, the lazy 'Dreg'/'Greg' steps and G's EMA as pure, jittable functions
over ``steps.TrainState``, so the loop runs them at their intervals without retracing.
What each computes, and the phases of one iteration: ``docs/stylegan2.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from osgan_jax.core import penalties
from osgan_jax.core.one_stage import call_with_aux
from osgan_jax.core.steps import augmenting, update_d, update_g

PyTree = Any

# Official defaults (training/loss.py, training/training_loop.py, train.py 'stylegan2').
R1_GAMMA = 10.0
PL_WEIGHT = 2.0
PL_DECAY = 0.01
PL_BATCH_SHRINK = 2
EMA_KIMG = 10.0


def _at_least_f32(x):
  """float32 for bfloat16/float16/float32 values, float64 stays float64."""
  return jnp.asarray(x).astype(jnp.promote_types(jnp.result_type(x), jnp.float32))


def r1_penalty(
    discriminate: Callable, params_d: PyTree, x_real: jax.Array, *, has_aux: bool = False
):
  """R1 (official ``r1_penalty``): ``mean_i sum_pixels (d sum_j D(x_j) / d x_i)^2``.

  ``x_real`` is ``[B, ...]``; returns ``(penalty, logits)`` (``(penalty, (logits,
  aux))`` with ``has_aux``), the penalty in float32 (float64 for float64 inputs). The
  official loss is ``penalty * r1_gamma / 2``; why the sum: docs/stylegan2.md#r1.
  """
  per_sample, logits, aux = penalties.input_grad_sq_norms(
      discriminate, params_d, x_real, has_aux=has_aux
  )
  penalty = jnp.mean(per_sample)
  return (penalty, (logits, aux)) if has_aux else (penalty, logits)


def path_lengths(synthesize: Callable, params_g: PyTree, ws: jax.Array, rng) -> jax.Array:
  """Per-sample path lengths ``[B]`` (official ``Gpl``, docs/stylegan2.md#path-length).

  ``synthesize(params_g, ws) -> images [B, H, W, C]``, ``ws [B, num_ws, w_dim]`` (or
  ``[B, w_dim]``); differentiable w.r.t. ``params_g`` and ``ws``.
  """
  img, vjp = jax.vjp(lambda w: synthesize(params_g, w), ws)
  h, w = img.shape[1], img.shape[2]
  dtype = jnp.promote_types(img.dtype, jnp.float32)
  pl_noise = jax.random.normal(rng, img.shape, dtype) / np.sqrt(h * w)
  (pl_grads,) = vjp(pl_noise.astype(img.dtype))
  sq = jnp.square(_at_least_f32(pl_grads))
  sq = jnp.sum(sq, axis=-1)  # .square().sum(2)
  if sq.ndim > 1:
    sq = jnp.mean(sq, axis=tuple(range(1, sq.ndim)))  # .mean(1)
  return jnp.sqrt(sq)  # .sqrt()


def _pl_penalty(lengths, pl_mean, pl_decay):
  """``(penalty, stored mean)``; as the official code, the lerped mean is not detached
  inside the penalty."""
  pl_mean_old = jax.lax.stop_gradient(_at_least_f32(pl_mean))
  new_mean = pl_mean_old + pl_decay * (jnp.mean(lengths) - pl_mean_old)
  penalty = jnp.mean(jnp.square(lengths - new_mean))
  stored = jax.lax.stop_gradient(new_mean).astype(jnp.result_type(pl_mean))
  return penalty, stored


def path_length_penalty(
    synthesize: Callable,
    params_g: PyTree,
    ws: jax.Array,
    rng,
    pl_mean,
    *,
    pl_decay: float = PL_DECAY,
):
  """``(mean_i (len_i - new_pl_mean)^2, detached new_pl_mean)`` (official ``Gpl``).

  Compute ``ws`` from ``params_g`` inside the differentiated function, so the mapping
  network gets its gradient too; ``pl_mean`` starts as a float32 0.
  """
  lengths = path_lengths(synthesize, params_g, ws, rng)
  return _pl_penalty(lengths, pl_mean, pl_decay)


def ema_beta(
    batch_size: int,
    cur_nimg,
    *,
    half_life_kimg: float = EMA_KIMG,
    rampup: Optional[float] = None,
):
  """The official G_ema decay for one iteration (docs/stylegan2.md#the-generator-ema).

  ``cur_nimg`` counts the images seen before this iteration; a Python float for a
  concrete one, a float32 array for a traced one.
  """
  ema_nimg = half_life_kimg * 1000
  if isinstance(cur_nimg, (int, float, np.integer, np.floating)):
    if rampup is not None:
      ema_nimg = min(ema_nimg, float(cur_nimg) * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))
  ema_nimg = jnp.asarray(ema_nimg, jnp.float32)
  if rampup is not None:
    ema_nimg = jnp.minimum(ema_nimg, jnp.asarray(cur_nimg, jnp.float32) * rampup)
  return jnp.power(
      jnp.float32(0.5), jnp.asarray(batch_size, jnp.float32) / jnp.maximum(ema_nimg, 1e-8)
  )


def ema_update(ema_params: PyTree, params: PyTree, beta) -> PyTree:
  """``p_ema <- p.lerp(p_ema, beta) = beta * p_ema + (1 - beta) * p`` (official G_ema)."""
  new = optax.incremental_update(params, ema_params, step_size=1.0 - beta)
  return jax.tree.map(lambda n, old: n.astype(jnp.result_type(old)), new, ema_params)


def ema_step(
    state,
    cur_nimg,
    *,
    batch_size: int,
    half_life_kimg: float = EMA_KIMG,
    rampup: Optional[float] = None,
):
  """One official G_ema update of ``state.ema_params_g``: ``(state, {'ema_beta'})``.

  Pass ``cur_nimg`` traced (``jnp.int32(i * batch_size)``) so the jitted step traces
  once. G_ema uses G's own ``model_state_g``, as the official loop copies it.
  """
  if state.ema_params_g is None:
    raise ValueError(
        'ema_step needs a state with ema_params_g: steps.init_state(..., ema=True)'
    )
  beta = ema_beta(batch_size, cur_nimg, half_life_kimg=half_life_kimg, rampup=rampup)
  state = state.replace(ema_params_g=ema_update(state.ema_params_g, state.params_g, beta))
  return state, {'ema_beta': jnp.asarray(beta, jnp.float32)}


def _check_structure(name, new, old):
  if jax.tree.structure(new) != jax.tree.structure(old):
    raise ValueError(
        f'{name} changed its pytree structure ({jax.tree.structure(old)} '
        f'-> {jax.tree.structure(new)}); the jitted steps would retrace'
    )


def r1_step(
    gan,
    state,
    batch,
    rng,
    *,
    r1_gamma: float = R1_GAMMA,
    interval: int = 1,
    image_key: str = 'image',
):
  """The official 'Dreg' phase: D's update with ``interval * r1_gamma / 2 * R1``.

  On the main step's real batch, differentiating ``batch[image_key]``; build
  ``gan.optimizer_d`` with the same lazy ``interval``. Only D's parameters, optimiser
  and model state change; with ``gan.augment``, on augmented reals (as ADA).
  Metrics: ``r1_penalty``, ``loss_d_reg`` (docs/stylegan2.md).
  """
  real = {k: batch[k] for k in gan.batch_keys}
  augmented, tag = augmenting(gan, state, rng)  # D o augmentation, as the main step's

  def objective(params_d):
    def disc(p, x):
      return augmented.discriminate(
          p, state.model_state_d, tag({**real, image_key: x}), rng
      )

    penalty, (logits, model_state_d) = r1_penalty(
        disc, params_d, real[image_key], has_aux=True
    )
    loss = penalty * (r1_gamma / 2)
    return loss * interval, (penalty, loss, model_state_d)

  (_, (penalty, loss, model_state_d)), grads = jax.value_and_grad(
      objective, has_aux=True
  )(state.params_d)
  _check_structure('discriminate (model_state_d)', model_state_d, state.model_state_d)
  state = state.replace(**update_d(gan, state, grads), model_state_d=model_state_d)
  metrics = {'r1_penalty': penalty, 'loss_d_reg': loss}
  return state, {k: v.astype(jnp.float32) for k, v in metrics.items()}


def path_length_step(
    gan,
    map_fn: Callable,
    synthesize_fn: Callable,
    state,
    rng,
    *,
    batch_size: int,
    pl_weight: float = PL_WEIGHT,
    interval: int = 1,
    pl_batch_shrink: int = PL_BATCH_SHRINK,
    pl_decay: float = PL_DECAY,
    map_has_aux: bool = False,
):
  """The official 'Greg' phase: G's update with ``interval * pl_weight * PL``.

  ``map_fn(params_g, model_state_g, z, rng) -> ws [B, num_ws, w_dim]`` (style mixing
  included; ``(ws, model_state_g)`` with ``map_has_aux``), ``synthesize_fn(params_g,
  model_state_g, ws, rng) -> images`` (NHWC), on ``batch_size // pl_batch_shrink``
  fresh latents; ``split(rng, 4)``: latents, mapping, synthesis, noise. Needs
  ``state.pl_mean``; build ``gan.optimizer_g`` with the same lazy ``interval``.
  Metrics: ``pl_penalty``, ``loss_g_reg``, ``pl_length``, ``pl_mean``.
  """
  if state.pl_mean is None:
    raise ValueError(
        'path_length_step needs a state with a pl_mean: '
        'steps.init_state(..., path_length=True)'
    )
  pl_mean = state.pl_mean
  n = batch_size // pl_batch_shrink
  if n < 1:
    raise ValueError(
        f'batch_size // pl_batch_shrink must be >= 1 '
        f'({batch_size} // {pl_batch_shrink})'
    )
  rng_z, rng_map, rng_syn, rng_noise = jax.random.split(rng, 4)
  z = gan.sample_latent(rng_z, n)

  def objective(params_g):
    ws, model_state_g = call_with_aux(
        map_fn, map_has_aux, params_g, state.model_state_g, z, rng_map
    )
    if not map_has_aux:
      model_state_g = state.model_state_g
    synthesize = lambda p, w: synthesize_fn(p, state.model_state_g, w, rng_syn)
    lengths = path_lengths(synthesize, params_g, ws, rng_noise)
    penalty, new_mean = _pl_penalty(lengths, pl_mean, pl_decay)
    loss = penalty * pl_weight
    return loss * interval, (penalty, loss, new_mean, jnp.mean(lengths), model_state_g)

  (_, (penalty, loss, new_mean, mean_len, model_state_g)), grads = jax.value_and_grad(
      objective, has_aux=True
  )(state.params_g)
  _check_structure('map_fn (model_state_g)', model_state_g, state.model_state_g)
  state = state.replace(
      **update_g(gan, state, grads), model_state_g=model_state_g, pl_mean=new_mean
  )
  metrics = dict(
      pl_penalty=penalty, loss_g_reg=loss, pl_length=mean_len, pl_mean=new_mean
  )
  return state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
