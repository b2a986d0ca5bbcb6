"""The GAN task: every GAN config (DCGAN family, StyleGAN2) as phases of the one loop.

Builds from the config the networks (looked up by ``config.model.name`` in
``osgan_jax.models``), the pure functions of ``steps.GAN``, the optimisers and the
phases ``osgan_jax.training.loop`` runs each iteration ``i``:

* ``main`` every iteration: the one-, two- or official two-stage step (``config.stage``);
* StyleGAN2 (``config.reg``, ``config.ema``): ``pl`` (lazy path length) every
  ``reg.pl_interval`` and ``r1`` (lazy R1) every ``reg.r1_interval`` iterations, then
  ``ema`` (G's moving average), each its own jitted program (``osgan_jax.core.regularizers``;
  ``pl_mean`` and ``ema_params_g`` are part of the state and its checkpoints).

Evaluators: the sample grid of G on a fixed z (and fixed labels ``i % num_classes``
for a conditional GAN, one class per column; fixed noise for StyleGAN2), in inference
mode with the EMA parameters where the run keeps them, every ``sample_every_steps``;
FID/KID every ``fid.every_steps`` (``evaluators.Fid``, the best checkpoint kept in
``workdir/best/`` with ``fid.keep_best``). The metrics of a step are ``loss_d``,
``loss_g`` and, one-stage, ``gamma_mean``/``gamma_min``/``gamma_max`` and ``n_exact``
(samples per step that took the exact path), plus the regularisers' when they ran.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import optax
from absl import logging

from osgan_jax import config as config_lib
from osgan_jax import data as data_lib
from osgan_jax.training import evaluators
from osgan_jax.training import loop
from osgan_jax.core import losses as losses_lib
from osgan_jax import models
from osgan_jax.core import one_stage
from osgan_jax.training import parallel
from osgan_jax.core import regularizers
from osgan_jax.core import schedules
from osgan_jax.tasks import hparams
from osgan_jax.core import steps
from osgan_jax.config import ConfigError

# Model constructor arguments that come from top-level config keys: config key -> the
# names an architecture may give that argument (the first one its class has is used).
_G_FROM_CONFIG = {
    'data.resolution': ('resolution',),
    'data.channels': ('channels', 'img_channels'),
    'z_dim': ('z_dim',),
    'num_classes': ('num_classes', 'c_dim'),
}
_D_FROM_CONFIG = {
    'data.resolution': ('resolution',),
    'data.channels': ('channels', 'img_channels'),
    'num_classes': ('num_classes', 'c_dim'),
}


def _lookup(config, dotted: str):
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


def _model_kwargs(config, section: str, cls, from_config: dict) -> dict:
  kwargs = dict(_lookup(config, section).to_dict())
  fields = getattr(cls, '__dataclass_fields__', {})
  for key, names in from_config.items():
    name = next((n for n in names if n in fields), None)
    if name is None:
      raise ConfigError(
          f'config.model.name={config.model.name!r}: {cls.__name__} takes '
          f'none of {", ".join(names)} (for config.{key})'
      )
    value = _lookup(config, key)
    if name in kwargs and kwargs[name] != value:
      raise ConfigError(
          f'config.{section}.{name}={kwargs[name]!r} conflicts with '
          f'config.{key}={value!r}; set config.{key} only'
      )
    kwargs[name] = value
  if isinstance(kwargs.get('dtype'), str):
    try:
      jnp.dtype(kwargs['dtype'])
    except TypeError:
      raise ConfigError(
          f'config.{section}.dtype={kwargs["dtype"]!r} is not a dtype (e.g. '
          f"'float32', 'bfloat16')"
      ) from None
  return kwargs


def create_models(config):
  """``(generator, discriminator)`` Flax modules of ``config.model``."""
  try:
    g_cls, d_cls = models.get(config.model.name)
  except ValueError as e:
    raise ConfigError(f'config.model.name: {e}') from None
  g_kwargs = _model_kwargs(config, 'model.generator', g_cls, _G_FROM_CONFIG)
  d_kwargs = _model_kwargs(config, 'model.discriminator', d_cls, _D_FROM_CONFIG)
  try:
    return g_cls(**g_kwargs), d_cls(**d_kwargs)
  except TypeError as e:
    raise ConfigError(f'config.model: {e}') from None


def make_gan(config, generator, discriminator) -> steps.GAN:
  """Wraps two Flax modules into the pure functions of ``steps.GAN``.

  ``generate`` returns ``{'image': x}`` (plus ``'label'`` for a conditional GAN, whose
  latent is ``{'z': z, 'label': y}``); the model state is every variable collection
  but ``'params'``, updated in training mode. ``generate`` and ``discriminate`` take an
  extra ``train`` argument (default True) that the steps never pass; ``generate`` also
  takes ``truncation_psi`` (for sampling; only architectures that support it).
  """
  conditional = config.num_classes > 0
  z_dim, num_classes = int(config.z_dim), int(config.num_classes)

  def generate(params, model_state, z, rng, train=True, truncation_psi=1.0):
    z_arr, labels = (z['z'], z['label']) if conditional else (z, None)
    kwargs = {} if truncation_psi == 1.0 else {'truncation_psi': truncation_psi}
    image, model_state = models.apply(
        generator, params, model_state, z_arr, labels, train, rng, **kwargs
    )
    fake = {'image': image}
    if conditional:
      fake['label'] = labels
    return fake, model_state

  def discriminate(params, model_state, batch, rng, train=True):
    labels = batch['label'] if conditional else None
    return models.apply(
        discriminator, params, model_state, batch['image'], labels, train, rng
    )

  def sample_latent(rng, n):
    if not conditional:
      return jax.random.normal(rng, (n, z_dim))
    rng_z, rng_y = jax.random.split(rng)
    return {
        'z': jax.random.normal(rng_z, (n, z_dim)),
        'label': jax.random.randint(rng_y, (n,), 0, num_classes, jnp.int32),
    }

  optimizer_g, optimizer_d = make_optimizers(config)
  return steps.GAN(
      generate=generate,
      discriminate=discriminate,
      sample_latent=sample_latent,
      loss=config.loss,
      optimizer_g=optimizer_g,
      optimizer_d=optimizer_d,
      batch_keys=('image', 'label') if conditional else ('image',),
      mode=config.one_stage_mode,
      penalties={
          k: hparams.value(config, k) for k in config.penalty if hparams.active(config, k)
      }
      or None,
  )


def make_optimizers(config):
  """Adam for G and D (``config.optimizer``, ramped by ``config.schedule``), corrected
  for lazy regularisation (``config.reg``), D's chained with weight clipping."""
  opt, reg = config.optimizer, config.reg
  milestones = sorted(int(m) for m in opt.lr_milestones)

  def adam(player, interval):
    ratio = regularizers.lazy_ratio(interval)  # the official lazy-regularisation fix
    lr = schedules.map_value(lambda v: v * ratio, hparams.value(config, f'{player}_lr'))
    b2 = schedules.map_value(lambda v: v**ratio, hparams.value(config, 'b2'))
    if milestones:
      scales = {m: float(opt.lr_decay) for m in milestones}
      if callable(lr):
        decay, ramp = optax.piecewise_constant_schedule(1.0, scales), lr
        lr = lambda count: decay(count) * ramp(count)
      else:
        lr = optax.piecewise_constant_schedule(lr, scales)
    # A scheduled beta2 needs inject_hyperparams (optax.adam takes a float there);
    # constant ones keep the plain optimiser state of existing checkpoints.
    make = optax.inject_hyperparams(optax.adam) if callable(b2) else optax.adam
    adam = make(learning_rate=lr, b1=float(opt.b1) ** ratio, b2=b2, eps=float(opt.eps))
    return optax.chain(regularizers.nan_to_num_grads(), adam) if opt.nan_to_num else adam

  optimizer_g = adam('g', int(reg.pl_interval) if reg.pl_weight > 0 else None)
  optimizer_d = adam('d', int(reg.r1_interval) if reg.r1_gamma > 0 else None)
  if opt.weight_clip > 0:
    optimizer_d = optax.chain(optimizer_d, steps.clip_params(float(opt.weight_clip)))
  return optimizer_g, optimizer_d


def make_init(config, gan: steps.GAN, generator, discriminator):
  """``init(key) -> TrainState`` (traceable; the loop jits it with the state's sharding)."""
  res, ch = int(config.data.resolution), int(config.data.channels)
  n = 4  # minibatch std needs a batch its group size divides; 4 fits both architectures

  def init(key):
    key_g, key_d = jax.random.split(key)
    key_g_rngs, key_d_rngs = jax.random.split(jax.random.fold_in(key, 1))
    z = gan.sample_latent(jax.random.PRNGKey(0), n)
    z_arr, labels = (z['z'], z['label']) if config.num_classes > 0 else (z, None)
    g_vars = dict(
        generator.init(
            {'params': key_g, **models.rngs(generator, key_g_rngs)},
            z_arr,
            labels,
            train=False,
        )
    )
    d_vars = dict(
        discriminator.init(
            {'params': key_d, **models.rngs(discriminator, key_d_rngs)},
            jnp.zeros((n, res, res, ch)),
            labels,
            train=False,
        )
    )
    params_g, params_d = g_vars.pop('params'), d_vars.pop('params')
    return steps.init_state(
        gan,
        params_g,
        params_d,
        g_vars,
        d_vars,
        ema=hparams.active(config, 'ema_half_life_kimg'),
        path_length=config.reg.pl_weight > 0,
    )

  return init


def eval_params_g(state):
  """G's parameters for samples and FID: the EMA ones where the run keeps them."""
  return state.params_g if state.ema_params_g is None else state.ema_params_g


def make_sampler(config, gan: steps.GAN, n: int, salt: int):
  """Jitted ``(params_g, model_state_g, index) -> images``: batch ``index`` of ``n``
  fixed latents (and noise) drawn from ``fold_in(seed, salt)``, G in inference mode.
  The key is an argument, not a constant of the program: runs that differ only in
  their seed share one compiled sampler (and its persistent-cache entry)."""
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), salt)

  def sample(key, params_g, model_state_g, index):
    key_z, key_noise = jax.random.split(jax.random.fold_in(key, index))
    z = gan.sample_latent(key_z, n)
    if config.num_classes > 0:
      z['label'] = jnp.arange(n, dtype=jnp.int32) % int(config.num_classes)
    fake, _ = gan.generate(
        params_g,
        model_state_g,
        z,
        key_noise,
        train=False,
        truncation_psi=float(config.sample_truncation_psi),
    )
    return fake['image']

  return functools.partial(jax.jit(sample), key)


def validate(config) -> None:
  """Every GAN key the loop does not check itself; one-line ``ConfigError`` s."""
  if config.stage not in config_lib.STAGES:
    raise ConfigError(
        f'config.stage={config.stage!r} is not one of ' f'{", ".join(config_lib.STAGES)}'
    )
  validate_method(config)
  hparams.validate(config)
  for key in ('sample_every_steps', 'num_samples'):
    if int(config[key]) <= 0:
      raise ConfigError(f'config.{key} must be positive, got {config[key]}')
  if config.num_classes < 0:
    raise ConfigError(f'config.num_classes must be >= 0, got {config.num_classes}')
  fid = config.fid
  if int(fid.every_steps) < 0:
    raise ConfigError(
        f'config.fid.every_steps must be >= 0 (0 = off), got ' f'{fid.every_steps}'
    )
  if int(fid.every_steps) > 0:
    if int(fid.num_samples) < 2:
      raise ConfigError(f'config.fid.num_samples must be >= 2, got {fid.num_samples}')
    if int(fid.num_real) < 2 and int(fid.num_real) != -1:
      raise ConfigError(
          f'config.fid.num_real must be >= 2 or -1 (all), got ' f'{fid.num_real}'
      )
    if int(fid.batch_size) <= 0:
      raise ConfigError(f'config.fid.batch_size must be positive, got {fid.batch_size}')
  for key, weight in config.penalty.items():
    if weight < 0:
      raise ConfigError(f'config.penalty.{key} must be >= 0, got {weight}')
  reg, ema = config.reg, config.ema
  for key in ('r1_gamma', 'pl_weight', 'pl_decay'):
    if reg[key] < 0:
      raise ConfigError(f'config.reg.{key} must be >= 0, got {reg[key]}')
  for key in ('r1_interval', 'pl_interval', 'pl_batch_shrink'):
    if int(reg[key]) < 1:
      raise ConfigError(f'config.reg.{key} must be >= 1, got {reg[key]}')
  if reg.pl_weight > 0 and int(config.batch_size) // int(reg.pl_batch_shrink) < 1:
    raise ConfigError('config.batch_size // config.reg.pl_batch_shrink must be >= 1')
  for key in ('half_life_kimg', 'rampup'):
    if ema[key] < 0:
      raise ConfigError(f'config.ema.{key} must be >= 0, got {ema[key]}')


def validate_method(config) -> None:
  """``config.one_stage_mode`` and ``config.loss`` name a known mode and loss (shared
  with distillation)."""
  if config.one_stage_mode not in one_stage.MODES:
    raise ConfigError(
        f'config.one_stage_mode={config.one_stage_mode!r} is not one of '
        f'{", ".join(one_stage.MODES)}'
    )
  try:
    losses_lib.get(config.loss)
  except ValueError as e:
    raise ConfigError(f'config.loss: {e}') from None


def _regularizer_phases(config, gan: steps.GAN, generator) -> list:
  """StyleGAN2's lazy path-length ('Greg') and R1 ('Dreg') phases and the G EMA."""
  reg, batch_size = config.reg, int(config.batch_size)
  phases = []
  if reg.pl_weight > 0:
    if not (hasattr(generator, 'map') and hasattr(generator, 'synthesize')):
      raise ConfigError(
          f'config.reg.pl_weight={reg.pl_weight} needs a generator with '
          f'map and synthesize methods (StyleGAN2); '
          f'{config.model.name!r} has none'
      )
    labels = (lambda z: z['label']) if config.num_classes > 0 else (lambda z: None)
    unpack = (lambda z: z['z']) if config.num_classes > 0 else (lambda z: z)

    def map_fn(params, model_state, z, rng):
      return models.apply(
          generator, params, model_state, unpack(z), labels(z), True, rng, method='map'
      )

    def synthesize_fn(params, model_state, ws, rng):
      return generator.apply(
          {'params': params, **model_state},
          ws,
          method='synthesize',
          rngs=models.rngs(generator, rng),
      )

    pl = functools.partial(
        regularizers.path_length_step,
        gan,
        map_fn,
        synthesize_fn,
        batch_size=batch_size,
        pl_weight=float(reg.pl_weight),
        interval=int(reg.pl_interval),
        pl_batch_shrink=int(reg.pl_batch_shrink),
        pl_decay=float(reg.pl_decay),
        map_has_aux=True,
    )
    phases.append(
        loop.Phase(
            'pl',
            lambda state, batch, rng, i: pl(state, jax.random.fold_in(rng, 1)),
            int(reg.pl_interval),
        )
    )
  if reg.r1_gamma > 0:
    r1 = functools.partial(
        regularizers.r1_step,
        gan,
        r1_gamma=float(reg.r1_gamma),
        interval=int(reg.r1_interval),
    )
    phases.append(
        loop.Phase(
            'r1',
            lambda state, batch, rng, i: r1(state, batch, jax.random.fold_in(rng, 2)),
            int(reg.r1_interval),
        )
    )
  if hparams.active(config, 'ema_half_life_kimg'):
    half_life = hparams.value(config, 'ema_half_life_kimg')
    rampup = float(config.ema.rampup) or None

    def ema(state, batch, rng, i):
      return regularizers.ema_step(
          state,
          i.astype(jnp.float32) * batch_size,
          batch_size=batch_size,
          rampup=rampup,
          half_life_kimg=half_life(i) if callable(half_life) else half_life,
      )

    phases.append(loop.Phase('ema', ema))
  return phases


def build_task(config, workdir: str) -> loop.Task:
  """The GAN task of ``config``; ``ConfigError``/``DataError`` before any compile."""
  validate(config)
  is_main = parallel.is_main_process()
  info = data_lib.dataset_info(config.data)
  if config.num_classes > 0:
    if info['num_classes'] > config.num_classes:
      raise ConfigError(
          f'the data has {info["num_classes"]} classes but '
          f'config.num_classes={config.num_classes}'
      )
    if info['num_classes'] == 0:
      logging.warning(
          'config.num_classes=%d but the data set has no labels: every '
          'real image has label 0',
          config.num_classes,
      )
  generator, discriminator = create_models(config)
  if (
      config.sample_truncation_psi != 1.0
      and 'truncation_psi' not in inspect.signature(type(generator).__call__).parameters
  ):
    raise ConfigError(
        f'config.sample_truncation_psi={config.sample_truncation_psi}: '
        f'the {config.model.name!r} generator has no truncation trick'
    )
  gan = make_gan(config, generator, discriminator)
  regularizer_phases = _regularizer_phases(config, gan, generator)
  ramps = {
      name: hparams.value(config, name)
      for name in hparams.STARTS
      if hparams.is_scheduled(config, name)
  }

  def make_phases(state):
    probed = steps.probe_per_sample(gan, state, None)
    logging.info(
        '%s-stage %s (%s loss) on %s (%d images); D treats samples %s',
        config.stage,
        config.model.name,
        config.loss,
        config.data.name,
        info['num_examples'],
        'independently' if probed.per_sample else 'jointly (coupled)',
    )
    main = functools.partial(steps.STEPS[config.stage], probed)

    def main_phase(state, batch, rng, i):
      state, metrics = main(state, batch, rng)
      # The ramped hyperparameters at this step, logged as schedule_<name>.
      return state, {
          **metrics,
          **{f'schedule_{name}': jnp.float32(v(i)) for name, v in ramps.items()},
      }

    return [loop.Phase('main', main_phase), *regularizer_phases]

  def batches(start_step, process_index, process_count):
    return data_lib.make_iterator(
        config.data,
        int(config.batch_size),
        seed=int(config.seed),
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        image_dtype='uint8',
    )

  grid_sampler = make_sampler(config, gan, int(config.num_samples), 2)
  evals = [
      evaluators.SampleGrid(
          workdir,
          lambda s: grid_sampler(eval_params_g(s), s.model_state_g, 0),
          config.sample_every_steps,
          ncol=int(config.num_classes) or None,
          is_main=is_main,
      )
  ]
  if int(config.fid.every_steps) > 0:  # checks its settings (weights, classifier) now
    fid_sampler = make_sampler(config, gan, int(config.fid.batch_size), 3)
    evals.append(
        evaluators.Fid(
            config,
            workdir,
            lambda s, i: fid_sampler(eval_params_g(s), s.model_state_g, i),
            info['num_examples'],
            is_main,
        )
    )
  return loop.Task(
      name=f'{config.stage}-stage {config.model.name}',
      init=make_init(config, gan, generator, discriminator),
      make_phases=make_phases,
      batches=batches,
      evaluators=evals,
  )
