"""Train steps over one state pytree: one-stage, honest two-stage, official two-stage.

Each is ``step(gan, state, batch, rng) -> (state, metrics)``, pure and jitted with the
state donated, so the three stages compare on equal terms. ``GAN``, ``TrainState`` and
what each step computes: ``docs/api.md``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from osgan_jax.core import augment as augment_lib
from osgan_jax.core import losses as losses_lib
from osgan_jax.core import one_stage
from osgan_jax.core import penalties as penalties_lib
from osgan_jax.core import strategies

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, a plain pytree (docs/api.md);
  ``ema_params_g``, ``pl_mean``, ``loss_state`` and ``augment`` (the augmentation
  probability and its controller's sums) are ``None`` unless the run uses them.
  """

  step: jax.Array
  params_g: PyTree
  params_d: PyTree
  opt_state_g: PyTree
  opt_state_d: PyTree
  model_state_g: PyTree  # non-differentiated model state, e.g. BatchNorm statistics
  model_state_d: PyTree
  ema_params_g: PyTree = None
  pl_mean: PyTree = None
  loss_state: PyTree = None
  augment: PyTree = None


@dataclasses.dataclass(frozen=True)
class GAN:
  """A GAN as pure functions; the steps know nothing else about the models.

  ``generate(params_g, model_state_g, z, rng) -> (fake_batch, model_state_g)``, a dict
  of ``batch_keys``; ``discriminate(params_d, model_state_d, batch, rng) -> (logits,
  model_state_d)``; ``sample_latent(rng, n) -> z``. ``batch_keys=()``: no real data
  (``batch={}``). ``per_sample=None`` probes at trace time (``probe_per_sample``).
  ``penalties``: ``{'r1' | 'r2' | 'gp': weight or schedule}``; ``augment``: a
  ``core.augment.Augment``, every image D sees augmented (docs/augmentation.md).
  Fields: docs/api.md.
  """

  generate: Callable
  discriminate: Callable
  sample_latent: Callable
  loss: Any
  optimizer_g: optax.GradientTransformation
  optimizer_d: optax.GradientTransformation
  batch_keys: tuple[str, ...] = ('image',)
  mode: str = 'exact'
  per_sample: bool | None = None
  fake_batch_size: int = 0  # samples per step when there is no real batch
  penalties: Any = None
  exact_bucket: Any = strategies.DEFAULT_BUCKETS  # one_stage_grads' bucket ladder
  augment: Any = None

  def penalty_weights(self, step):
    """The penalties' weights at ``step`` (schedules evaluated), or ``None``."""
    if not self.penalties:
      return None
    return {k: w(step) if callable(w) else w for k, w in dict(self.penalties).items()}


def init_state(
    gan: GAN,
    params_g,
    params_d,
    model_state_g=None,
    model_state_d=None,
    *,
    ema: bool = False,
    path_length: bool = False,
) -> TrainState:
  """The state at step 0; ``ema`` adds ``ema_params_g`` (a copy of ``params_g``) and
  ``path_length`` a float32 ``pl_mean`` of 0 (the official initial value)."""
  loss = losses_lib.get(gan.loss)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params_g=params_g,
      params_d=params_d,
      opt_state_g=gan.optimizer_g.init(params_g),
      opt_state_d=gan.optimizer_d.init(params_d),
      model_state_g={} if model_state_g is None else model_state_g,
      model_state_d={} if model_state_d is None else model_state_d,
      ema_params_g=jax.tree.map(jnp.copy, params_g) if ema else None,
      pl_mean=jnp.zeros((), jnp.float32) if path_length else None,
      loss_state=loss.init_state() if loss.stateful else None,
      augment=None if gan.augment is None else gan.augment.init_state(),
  )


def probe_per_sample(gan: GAN, state: TrainState, batch=None) -> GAN:
  """Settles ``gan.per_sample`` with concrete values, so the jitted step need not: on
  ``batch``, or on four samples of G without one (coupling is architectural)."""
  if gan.per_sample is not None:
    return gan
  # Jitted, so the eager probe compiles D once instead of op by op.
  discriminate = jax.jit(
      lambda p, x: gan.discriminate(p, state.model_state_d, x, jax.random.PRNGKey(0))
  )
  images = {} if batch is None else _real(gan, batch)
  if not jax.tree.leaves(images):
    key = jax.random.PRNGKey(0)
    images = jax.jit(lambda p, s: gan.generate(p, s, gan.sample_latent(key, 4), key)[0])(
        state.params_g, state.model_state_g
    )
  independent = one_stage.samples_independent(
      discriminate, state.params_d, images, has_aux=True
  )
  return dataclasses.replace(gan, per_sample=independent)


def clip_params(limit: float) -> optax.GradientTransformation:
  """WGAN weight clipping: every parameter in [-limit, limit] after the update, up to
  one rounding. Chain it last: ``optax.chain(optax.adam(...), clip_params(0.01))``."""

  def update(updates, state, params):
    if params is None:
      raise ValueError('clip_params needs params; call update(grads, state, params)')
    clipped = jax.tree.map(
        lambda u, p: jnp.clip(p + u, -limit, limit) - p, updates, params
    )
    return clipped, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# Salts of the augmentation keys: of the reals (from the step's key) and of the fakes
# (from the key ``generate`` gets).
_AUGMENT_REAL, _AUGMENT_FAKE = 7, 8


def augmenting(gan: GAN, state: TrainState, rng):
  """``(gan', tag)``: D' = D o augmentation at ``state.augment['p']``, images as
  ``(batch, per-sample keys)`` pairs: G' attaches its fakes' keys, ``tag(real)`` the
  reals' (from ``rng``), so each sample keeps its augmentation in any batch D sees it
  in. Without augmentation ``(gan, identity)``."""
  aug = gan.augment
  if aug is None:
    return gan, lambda real: real
  if state.augment is None:
    raise ValueError('gan.augment is set but the state has no augment field (init_state)')
  p = state.augment['p']

  def generate(params, model_state, z, rng_g):
    fake, model_state = gan.generate(params, model_state, z, rng_g)
    return augment_lib.attach(fake, jax.random.fold_in(rng_g, _AUGMENT_FAKE)), model_state

  def discriminate(params, model_state, pair, rng_d):
    return gan.discriminate(
        params, model_state, augment_lib.apply_tree(aug, pair, p), rng_d
    )

  def tag(real):
    if not jax.tree.leaves(real):
      return real
    return augment_lib.attach(real, jax.random.fold_in(rng, _AUGMENT_REAL))

  augmented = dataclasses.replace(
      gan, generate=generate, discriminate=discriminate, augment=None
  )
  return augmented, tag


def _controller(gan: GAN, state: TrainState, real_logits, batch_size: int):
  """``(state, metrics)`` after the augmentation controller saw the real logits."""
  if gan.augment is None:
    return state, {}
  aug, rt = gan.augment.update(state.augment, real_logits, state.step, batch_size)
  return state.replace(augment=aug), {'augment_p': aug['p'], 'augment_rt': rt}


def _real(gan: GAN, batch):
  return {k: batch[k] for k in gan.batch_keys}


def _batch_size(gan: GAN, real) -> int:
  leaves = jax.tree.leaves(real)
  if leaves:
    return leaves[0].shape[0]
  if gan.fake_batch_size <= 0:
    raise ValueError('a GAN without real data (batch_keys=()) needs fake_batch_size > 0')
  return gan.fake_batch_size


def _real_logits(gan: GAN, params_d, model_state_d, real, rng, fake_logits):
  """D's logits on the real batch; an empty [0, ...] array when there is none."""
  if not jax.tree.leaves(real):
    return fake_logits[:0]
  return gan.discriminate(params_d, model_state_d, real, rng)[0]


def apply_optimizer(optimizer, grads, opt_state, params):
  """One optax update; returns (params, opt_state)."""
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def update_g(gan: GAN, state: TrainState, grads) -> dict:
  """``{'params_g', 'opt_state_g'}`` after G's optimiser step on ``grads``."""
  params, opt = apply_optimizer(gan.optimizer_g, grads, state.opt_state_g, state.params_g)
  return {'params_g': params, 'opt_state_g': opt}


def update_d(gan: GAN, state: TrainState, grads) -> dict:
  """``{'params_d', 'opt_state_d'}`` after D's optimiser step on ``grads``."""
  params, opt = apply_optimizer(gan.optimizer_d, grads, state.opt_state_d, state.params_d)
  return {'params_d': params, 'opt_state_d': opt}


def _f32(x):
  return jnp.asarray(x, jnp.float32)


# The one-stage step's metrics: these of its aux record, where it has them.
_METRICS = (
    *('loss_d', 'loss_g', 'gamma_mean', 'gamma_min', 'gamma_max', 'n_exact'),
    *(f'{name}_penalty' for name in penalties_lib.NAMES),
)


def one_stage_step(gan: GAN, state: TrainState, batch, rng):
  """One forward, one backward, both players updated from the same z."""
  augmented, tag = augmenting(gan, state, rng)
  real = tag(_real(gan, batch))
  rng_z, rng_g, rng_d = jax.random.split(rng, 3)
  rng_p = jax.random.fold_in(rng, 3)  # penalties; the other streams as without them
  batch_size = _batch_size(gan, real)
  z = gan.sample_latent(rng_z, batch_size)
  grads_g, grads_d, aux = one_stage.one_stage_grads(
      lambda p, z: augmented.generate(p, state.model_state_g, z, rng_g),
      lambda p, x: augmented.discriminate(p, state.model_state_d, x, rng_d),
      state.params_g,
      state.params_d,
      z,
      real,
      gan.loss,
      mode=gan.mode,
      per_sample=gan.per_sample,
      g_has_aux=True,
      d_has_aux=True,
      loss_state=state.loss_state,
      penalties=gan.penalty_weights(state.step),
      penalty_rng=rng_p,
      exact_bucket=gan.exact_bucket,
  )
  state = state.replace(
      step=state.step + 1,
      **update_g(gan, state, grads_g),
      **update_d(gan, state, grads_d),
      model_state_g=aux['g_aux'],
      model_state_d=aux['d_aux'],
      loss_state=aux['loss_state'],
  )
  state, augment_metrics = _controller(gan, state, aux['real_logits'], batch_size)
  metrics = {k: _f32(aux[k]) for k in _METRICS if k in aux}
  return state, {**metrics, **_loss_state_metrics(state.loss_state), **augment_metrics}


def _loss_state_metrics(loss_state) -> dict:
  """A stateful loss's scalars as metrics (e.g. Fisher GAN's ``loss_state_lam``)."""
  if not isinstance(loss_state, dict):
    return {}
  return {f'loss_state_{k}': _f32(v) for k, v in loss_state.items() if jnp.ndim(v) == 0}


def _two_stage(gan: GAN, state: TrainState, batch, rng, *, official: bool):
  loss = losses_lib.get(gan.loss)
  plain = gan
  gan, tag = augmenting(plain, state, rng)  # D o augmentation from here on
  real = tag(_real(plain, batch))
  batch_size = _batch_size(gan, real)
  rng_z1, rng_z2, rng_g1, rng_g2, rng_d1, rng_d2 = jax.random.split(rng, 6)

  # Stage 1: D on real and fake, G frozen (forward only).
  z1 = gan.sample_latent(rng_z1, batch_size)
  fake, _ = gan.generate(state.params_g, state.model_state_g, z1, rng_g1)
  fake = jax.lax.stop_gradient(fake)
  weights = gan.penalty_weights(state.step)

  def disc(p, x):
    return gan.discriminate(p, state.model_state_d, x, rng_d1)

  def d_objective(params_d):
    fake_logits, model_state_d = disc(params_d, fake)
    real_logits = _real_logits(
        gan, params_d, state.model_state_d, real, rng_d1, fake_logits
    )
    r32, f32 = _f32(real_logits), _f32(fake_logits)
    penalty, penalty_metrics = 0.0, {}
    if weights:
      penalty, penalty_metrics = penalties_lib.loss(
          disc, params_d, real, fake, weights, jax.random.fold_in(rng, 6), has_aux=True
      )
    loss_d = loss.d(r32, f32, state.loss_state)
    loss_state = loss.updated(state.loss_state, r32, f32)
    return loss_d + penalty, (loss_d, model_state_d, penalty_metrics, loss_state, r32)

  (_, d_aux), grads_d = jax.value_and_grad(d_objective, has_aux=True)(state.params_d)
  loss_d, model_state_d, penalty_metrics, loss_state, real_logits = d_aux
  new_d = update_d(gan, state, grads_d)
  params_d = new_d['params_d']

  # Stage 2: G against the updated D, fresh z.
  z2 = gan.sample_latent(rng_z2, batch_size)

  def g_objective(params_g, params_d):
    fake, model_state_g = gan.generate(params_g, state.model_state_g, z2, rng_g2)
    fake_logits, _ = gan.discriminate(params_d, model_state_d, fake, rng_d2)
    real_logits = _real_logits(gan, params_d, model_state_d, real, rng_d2, fake_logits)
    return loss.g(_f32(real_logits), _f32(fake_logits), loss_state), model_state_g

  # The official code also differentiates D's parameters here, to no use.
  argnums = (0, 1) if official else 0
  (loss_g, model_state_g), grads_g = jax.value_and_grad(
      g_objective, argnums, has_aux=True
  )(state.params_g, params_d)
  metrics = {k: _f32(v) for k, v in penalty_metrics.items()}
  if official:
    grads_g, wasted = grads_g
    metrics['wasted_d_grad_norm'] = _f32(optax.tree.norm(wasted))
  state = state.replace(
      step=state.step + 1,
      **update_g(gan, state, grads_g),
      **new_d,
      model_state_g=model_state_g,
      model_state_d=model_state_d,
      loss_state=loss_state,
  )
  metrics.update(loss_d=_f32(loss_d), loss_g=_f32(loss_g))
  state, augment_metrics = _controller(plain, state, real_logits, batch_size)
  return state, {**metrics, **_loss_state_metrics(loss_state), **augment_metrics}


def two_stage_step(gan: GAN, state: TrainState, batch, rng):
  """The honest two-stage baseline (no gradient computed that is not used)."""
  return _two_stage(gan, state, batch, rng, official=False)


def official_two_stage_step(gan: GAN, state: TrainState, batch, rng):
  """Two-stage as the official code runs it (D's gradients computed in the G step)."""
  return _two_stage(gan, state, batch, rng, official=True)


STEPS = {
    'one': one_stage_step,
    'two': two_stage_step,
    'official_two': official_two_stage_step,
}


def jit_state_step(fn, *, state_sharding=None, arg_shardings=(None,)):
  """``jax.jit`` of ``fn(state, *args) -> (state, metrics)`` with the state donated;
  with ``state_sharding`` the state keeps it and ``args`` take ``arg_shardings``."""
  if state_sharding is None:
    return jax.jit(fn, donate_argnums=0)
  return jax.jit(
      fn,
      donate_argnums=0,
      in_shardings=(state_sharding, *arg_shardings),
      out_shardings=(state_sharding, None),
  )


def jit_step(gan: GAN, stage: str = 'one', *, state_sharding=None, batch_sharding=None):
  """``jax.jit`` of step ``stage`` with ``gan`` bound and the state donated; shardings:
  docs/multihost.md."""
  if stage not in STEPS:
    raise ValueError(f'unknown stage {stage!r}; valid: {", ".join(STEPS)}')
  return jit_state_step(
      functools.partial(STEPS[stage], gan),
      state_sharding=state_sharding,
      arg_shardings=(batch_sharding, None),
  )
