"""StyleGAN2 regularisation and generator EMA, as NVlabs' stylegan2-ada-pytorch does them.

R1, path length, the lazy 'Dreg'/'Greg' steps and G's EMA as pure, jittable functions
over ``steps.TrainState``, so the loop runs them at their intervals without retracing.
What each computes, and the phases of one iteration: ``docs/stylegan2.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from osgan_jax.core import penalties
from osgan_jax.core.one_stage import call_with_aux
from osgan_jax.core.steps import apply_optimizer

PyTree = Any

# Official defaults (training/loss.py, training/training_loop.py, train.py cfg 'stylegan2').
R1_GAMMA = 10.0
R1_INTERVAL = 16
PL_WEIGHT = 2.0
PL_INTERVAL = 4
PL_DECAY = 0.01
PL_BATCH_SHRINK = 2
EMA_KIMG = 10.0


# ----------------------------------------------------------------------------- penalties


def _at_least_f32(x):
  """float32 for bfloat16/float16/float32 values, float64 stays float64."""
  return jnp.asarray(x).astype(jnp.promote_types(jnp.result_type(x), jnp.float32))


def r1_penalty(
    discriminate: Callable, params_d: PyTree, x_real: jax.Array, *, has_aux: bool = False
):
  """R1: ``mean_i sum_pixels (d sum_j D(x_j) / d x_i)^2`` (official ``r1_penalty``).

  Args:
    discriminate: ``discriminate(params_d, images) -> logits [B]`` (or
      ``(logits, aux)`` with ``has_aux``).
    params_d: D's parameters; differentiate the result w.r.t. them for the R1 loss.
    x_real: real images ``[B, ...]`` (the batch axis first).
    has_aux: ``discriminate`` returns ``(logits, aux)``.

  Returns:
    ``(penalty, logits)`` (``(penalty, (logits, aux))`` with ``has_aux``); ``penalty``
    is the batch mean of the per-sample squared gradient norms, in float32 (float64
    for float64 inputs). The loss
    the official code minimises is ``penalty * r1_gamma / 2`` (times the lazy interval).

  The gradient is that of the *sum* of the logits, exactly as the official code
  (``autograd.grad(outputs=[real_logits.sum()], inputs=[real_img_tmp])``): for a
  discriminator that couples samples (minibatch std) it includes the cross-sample
  terms; for a per-sample discriminator it is the per-sample input gradient.
  """
  per_sample, logits, aux = penalties.input_grad_sq_norms(
      discriminate, params_d, x_real, has_aux=has_aux
  )
  penalty = jnp.mean(per_sample)
  return (penalty, (logits, aux)) if has_aux else (penalty, logits)


def path_lengths(synthesize: Callable, params_g: PyTree, ws: jax.Array, rng) -> jax.Array:
  """Per-sample path lengths ``sqrt(mean_k sum_c (d sum(img * pl_noise) / d ws)^2)``.

  ``synthesize(params_g, ws) -> images [B, H, W, C]`` (NHWC); ``ws [B, num_ws, w_dim]``
  (or ``[B, w_dim]``). ``pl_noise = normal(rng, images.shape) / sqrt(H * W)``, drawn
  in the images' dtype promoted to at least float32 (official ``randn_like(img)``).
  Differentiable w.r.t. ``params_g`` and ``ws`` (the gradient is built with
  ``create_graph`` semantics: it is an ordinary JAX value).
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
  """Official: ``pl_mean = self.pl_mean.lerp(pl_lengths.mean(), pl_decay)`` (not
  detached inside the penalty), ``(pl_lengths - pl_mean).square()``, batch mean."""
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
  """Path-length penalty and the updated running mean (official ``Gpl``).

  Args:
    synthesize: ``synthesize(params_g, ws) -> images [B, H, W, C]``.
    params_g: G's parameters (differentiate the penalty w.r.t. them; compute ``ws``
      from them inside the differentiated function so the mapping network gets its
      gradient too, as in the official code).
    ws: ``[B, num_ws, w_dim]`` (the official ``gen_ws``, style mixing included).
    rng: key for ``pl_noise``.
    pl_mean: the running mean of the path lengths (a float32 scalar, 0 at first).
    pl_decay: the lerp weight (official 0.01).

  Returns:
    ``(penalty, new_pl_mean)``: ``penalty = mean_i (len_i - new_pl_mean)^2`` (multiply
    by ``pl_weight`` and the lazy interval for the loss) and the detached new mean.
  """
  lengths = path_lengths(synthesize, params_g, ws, rng)
  return _pl_penalty(lengths, pl_mean, pl_decay)


# ----------------------------------------------------------------------------- EMA


def ema_beta(
    batch_size: int,
    cur_nimg,
    *,
    half_life_kimg: float = EMA_KIMG,
    rampup: Optional[float] = None,
):
  """The official EMA decay for one iteration of ``batch_size`` images.

  ``ema_nimg = half_life_kimg * 1000``; with ``rampup``,
  ``ema_nimg = min(ema_nimg, cur_nimg * rampup)``;
  ``beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))``: after ``ema_nimg`` images the
  old weights count one half. ``cur_nimg`` is the number of images seen *before* this
  iteration (the official loop updates G_ema before ``cur_nimg += batch_size``); it may
  be a traced value (returns a float32 array then), otherwise a Python float is returned.
  ``rampup=None`` is the official default and the 'stylegan2' preset; the 'auto' and
  'cifar' presets use 0.05.
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

  Parameters are lerped towards ``state.params_g`` with ``ema_beta(batch_size,
  cur_nimg, ...)``; ``cur_nimg`` is the number of images seen before this iteration
  (pass it traced, e.g. ``jnp.int32(i * batch_size)``, so the jitted step traces once).
  The EMA generator's non-trained state (``w_avg``, noise buffers) is G's own
  ``state.model_state_g``: the official loop copies G's buffers into G_ema every
  iteration, so a separate copy would always be equal to it.
  """
  if state.ema_params_g is None:
    raise ValueError(
        'ema_step needs a state with ema_params_g: steps.init_state(..., ema=True)'
    )
  beta = ema_beta(batch_size, cur_nimg, half_life_kimg=half_life_kimg, rampup=rampup)
  state = state.replace(ema_params_g=ema_update(state.ema_params_g, state.params_g, beta))
  return state, {'ema_beta': jnp.asarray(beta, jnp.float32)}


# ----------------------------------------------------------------------------- steps


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

  Args:
    gan: ``steps.GAN`` (uses ``discriminate``, ``optimizer_d``, ``batch_keys``).
    state: ``steps.TrainState``; only ``params_d``, ``opt_state_d`` and
      ``model_state_d`` change (``step`` counts main iterations and is left alone).
    batch: the real batch (the one the main step used, as the official loop does).
    rng: passed to ``discriminate``.
    r1_gamma: the R1 weight (official 10 for FFHQ 1024 config-f).
    interval: the lazy interval; the loss is multiplied by it (official ``gain``).
      Use the same interval in ``optimizers.adam`` for ``gan.optimizer_d``.
    image_key: the batch entry differentiated (labels, if any, are passed as is).

  Returns:
    ``(state, metrics)``; metrics ``r1_penalty`` (batch mean of the squared norms) and
    ``loss_d_reg`` (``r1_penalty * r1_gamma / 2``, without the interval gain; the
    official ``Loss/D/reg``).
  """
  real = {k: batch[k] for k in gan.batch_keys}

  def objective(params_d):
    def disc(p, x):
      return gan.discriminate(p, state.model_state_d, {**real, image_key: x}, rng)

    penalty, (logits, model_state_d) = r1_penalty(
        disc, params_d, real[image_key], has_aux=True
    )
    loss = penalty * (r1_gamma / 2)
    return loss * interval, (penalty, loss, model_state_d)

  (_, (penalty, loss, model_state_d)), grads = jax.value_and_grad(
      objective, has_aux=True
  )(state.params_d)
  _check_structure('discriminate (model_state_d)', model_state_d, state.model_state_d)
  params_d, opt_state_d = apply_optimizer(
      gan.optimizer_d, grads, state.opt_state_d, state.params_d
  )
  state = state.replace(
      params_d=params_d, opt_state_d=opt_state_d, model_state_d=model_state_d
  )
  return state, {
      'r1_penalty': penalty.astype(jnp.float32),
      'loss_d_reg': loss.astype(jnp.float32),
  }


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

  Args:
    gan: ``steps.GAN`` (uses ``sample_latent`` and ``optimizer_g``).
    map_fn: ``map_fn(params_g, model_state_g, z, rng) -> ws [B, num_ws, w_dim]``
      (style mixing included, as the official ``run_G``), or ``-> (ws, model_state_g)``
      with ``map_has_aux`` (e.g. to update ``w_avg`` as the official mapping does in
      every training-mode call).
    synthesize_fn: ``synthesize_fn(params_g, model_state_g, ws, rng) -> images``
      (NHWC).
    state: ``steps.TrainState`` with a ``pl_mean`` (``init_state(...,
      path_length=True)``); only ``params_g``, ``opt_state_g``, ``pl_mean`` (and with
      ``map_has_aux`` ``model_state_g``) change.
    rng: split into latents, mapping, synthesis and ``pl_noise`` keys (in that order,
      ``jax.random.split(rng, 4)``).
    batch_size: the main batch size; the penalty uses ``batch_size // pl_batch_shrink``
      fresh latents (official ``pl_batch_shrink=2``).
    pl_weight: official 2. interval: the lazy interval (official 4), multiplies the
      loss; use the same interval in ``lazy_adam`` for ``gan.optimizer_g``.
    pl_decay: official 0.01.

  Returns:
    ``(state, metrics)``; metrics ``pl_penalty``, ``loss_g_reg``
    (``pl_penalty * pl_weight``, the official ``Loss/G/reg``), ``pl_length`` (mean) and
    ``pl_mean`` (the new running mean, also in ``state.pl_mean``).
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
    lengths = path_lengths(
        lambda p, w: synthesize_fn(p, state.model_state_g, w, rng_syn),
        params_g,
        ws,
        rng_noise,
    )
    penalty, new_mean = _pl_penalty(lengths, pl_mean, pl_decay)
    loss = penalty * pl_weight
    return loss * interval, (penalty, loss, new_mean, jnp.mean(lengths), model_state_g)

  (_, (penalty, loss, new_mean, mean_len, model_state_g)), grads = jax.value_and_grad(
      objective, has_aux=True
  )(state.params_g)
  _check_structure('map_fn (model_state_g)', model_state_g, state.model_state_g)
  params_g, opt_state_g = apply_optimizer(
      gan.optimizer_g, grads, state.opt_state_g, state.params_g
  )
  state = state.replace(
      params_g=params_g,
      opt_state_g=opt_state_g,
      model_state_g=model_state_g,
      pl_mean=new_mean,
  )
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return state, {
      'pl_penalty': f32(penalty),
      'loss_g_reg': f32(loss),
      'pl_length': f32(mean_len),
      'pl_mean': f32(new_mean),
  }
