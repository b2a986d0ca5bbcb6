"""The GAN task: every GAN config (DCGAN family, StyleGAN2, R3GAN) as phases of the one
loop: the main one-, two- or official two-stage step, then StyleGAN2's regularisers and
EMA; evaluators from ``config.evals`` (sample grids, FID)."""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import optax
from absl import logging

from osgan_jax import data as data_lib
from osgan_jax import models
from osgan_jax.config import ConfigError
from osgan_jax.core import augment as augment_lib
from osgan_jax.core import optimizers
from osgan_jax.core import schedules
from osgan_jax.core import steps
from osgan_jax.models import official
from osgan_jax.tasks import common
from osgan_jax.tasks import evals
from osgan_jax.tasks import hparams
from osgan_jax.tasks import phases as phases_lib
from osgan_jax.tasks import teacher
from osgan_jax.training import loop
from osgan_jax.training import parallel

# Model constructor arguments that come from top-level config keys: config key -> the
# names an architecture may give that argument (the first one its class has is used).
_G_FROM_CONFIG = {
    'data.resolution': ('resolution',),
    'data.channels': ('channels', 'img_channels'),
    'z_dim': ('z_dim',),
    'num_classes': ('num_classes', 'c_dim'),
}
_D_FROM_CONFIG = {k: names for k, names in _G_FROM_CONFIG.items() if k != 'z_dim'}


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
  """``(generator, discriminator)`` Flax modules of ``config.model``, each checked by
  its ``validate()`` where it has one: a bad argument is a ``ConfigError`` naming its
  key (``config.model.generator.mapping_layers must be >= 1, got -1``, or the top-level
  key it comes from, ``config.data.resolution ...``)."""
  try:
    g_cls, d_cls = models.get(config.model.name)
  except ValueError as e:
    raise ConfigError(f'config.model.name: {e}') from None
  g_kwargs = _model_kwargs(config, 'model.generator', g_cls, _G_FROM_CONFIG)
  d_kwargs = _model_kwargs(config, 'model.discriminator', d_cls, _D_FROM_CONFIG)
  try:
    generator, discriminator = g_cls(**g_kwargs), d_cls(**d_kwargs)
  except TypeError as e:
    raise ConfigError(f'config.model: {e}') from None
  for section, module, from_config in (
      ('model.generator', generator, _G_FROM_CONFIG),
      ('model.discriminator', discriminator, _D_FROM_CONFIG),
  ):
    if not hasattr(module, 'validate'):
      continue
    try:
      module.validate()
    except ValueError as e:
      # 'ARG must be ...' -> 'config.model.generator.ARG must be ...', or the top-level
      # key ARG comes from ('config.data.resolution ...'); one line.
      message = ' '.join(str(e).split())
      arg = message.split(' ', 1)[0]
      fields = getattr(type(module), '__dataclass_fields__', {})
      keys = {
          next((n for n in names if n in fields), None): key
          for key, names in from_config.items()
      }
      if arg in keys:
        message = f'config.{keys[arg]}{message[len(arg):]}'
      elif arg in fields:
        message = f'config.{section}.{message}'
      else:
        message = f'config.{section}: {message}'
      raise ConfigError(message) from None
  return generator, discriminator


def make_gan(config, generator, discriminator) -> steps.GAN:
  """Two Flax modules as ``steps.GAN``'s pure functions; model state is every collection
  but ``'params'``, a conditional latent ``{'z', 'label'}``. ``train`` and
  ``truncation_psi`` are for sampling; the steps never pass them."""
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
  penalties = {
      k: hparams.value(config, k) for k in config.penalty if hparams.active(config, k)
  }
  return steps.GAN(
      generate=generate,
      discriminate=discriminate,
      sample_latent=sample_latent,
      loss=config.loss,
      optimizer_g=optimizer_g,
      optimizer_d=optimizer_d,
      batch_keys=('image', 'label') if conditional else ('image',),
      mode=config.one_stage_mode,
      exact_bucket=exact_bucket(config),
      penalties=penalties or None,
      augment=make_augment(config),
      # Declared by the architecture (a test checks it against the probe), so no jvp of
      # D runs at start-up; None (an architecture that does not say) probes.
      per_sample=getattr(discriminator, 'per_sample', None),
  )


def exact_bucket(config):
  """``config.one_stage_bucket`` as fractions of the batch (an integer 1 is the whole
  batch, not a count of one)."""
  bucket = config.one_stage_bucket
  if isinstance(bucket, (tuple, list)):
    return tuple(float(f) for f in bucket)
  return float(bucket)


def make_augment(config) -> augment_lib.Augment | None:
  """``config.augment`` as a ``core.augment.Augment`` (None for ``pipe='none'``)."""
  a, s = config.augment, config.schedule
  if a.pipe == 'none':
    return None
  p = float(a.p)
  if p == -1:
    p = 1.0 if a.pipe == 'diffaugment' else 0.0
  schedule = None
  if int(s.steps) > 0 and float(s.augment_p) >= 0:
    schedule = schedules.ramp(p, float(s.augment_p), int(s.steps), s.kind)
  return augment_lib.Augment(
      str(a.pipe),
      p=p,
      target=float(a.target),
      speed_kimg=float(a.speed_kimg),
      interval=int(a.interval),
      schedule=schedule,
  )


def make_optimizers(config):
  """Adam for G and D (``config.optimizer``, ramped by ``config.schedule``), corrected
  for lazy regularisation (``config.reg``), D's chained with weight clipping."""
  opt, reg = config.optimizer, config.reg

  def adam(player, interval):
    return optimizers.adam(
        hparams.value(config, f'{player}_lr'),
        b1=float(opt.b1),
        b2=hparams.value(config, 'b2'),
        eps=float(opt.eps),
        lazy_interval=interval,
        milestones=tuple(opt.lr_milestones),
        decay=float(opt.lr_decay),
        nan_to_num=bool(opt.nan_to_num),
    )

  optimizer_g = adam('g', int(reg.pl_interval) if reg.pl_weight > 0 else None)
  optimizer_d = adam('d', int(reg.r1_interval) if reg.r1_gamma > 0 else None)
  if opt.weight_clip > 0:
    optimizer_d = optax.chain(optimizer_d, steps.clip_params(float(opt.weight_clip)))
  return optimizer_g, optimizer_d


def initial_weights(config, generator, discriminator):
  """The variables of ``config.init_from`` (``models.official.Imported``) or None when it
  is ''; a ``ConfigError`` of one line where the file does not load or the configured
  networks differ from its architecture (naming the first key that differs)."""
  path = str(config.init_from)
  if not path:
    return None
  try:
    imported = official.load(path)
  except ValueError as e:
    raise ConfigError(f'config.init_from: {e}') from None
  if imported.family != config.model.name:
    raise ConfigError(
        f'config.init_from={path}: config.model.name={config.model.name!r} does not '
        f'match the file (a {imported.family} snapshot)'
    )
  for section, module, theirs, from_config in (
      ('model.generator', generator, imported.generator, _G_FROM_CONFIG),
      ('model.discriminator', discriminator, imported.discriminator, _D_FROM_CONFIG),
  ):
    if theirs is None:
      logging.warning('%s has no discriminator: D starts from its random init', path)
      continue
    problem = official.mismatch(module, theirs)
    if problem is not None:
      arg = problem.split(':', 1)[0]
      keys = {n: key for key, names in from_config.items() for n in names}
      key = keys.get(arg, f'{section}.{arg}')
      raise ConfigError(
          f'config.init_from={path}: config.{key} does not match the file '
          f'({problem.split(": ", 1)[-1]})'
      )
  return imported


def make_init(config, gan: steps.GAN, generator, discriminator):
  """``init(key) -> TrainState``; traceable: the loop jits it with its sharding. With
  ``config.init_from``, G (and its EMA) and D start from the file's variables."""
  res, ch = int(config.data.resolution), int(config.data.channels)
  n = 4  # minibatch std needs a batch its group size divides; 4 fits both architectures
  imported = initial_weights(config, generator, discriminator)

  def init(key):
    key_g, key_d = jax.random.split(key)
    key_g_rngs, key_d_rngs = jax.random.split(jax.random.fold_in(key, 1))
    z = gan.sample_latent(jax.random.PRNGKey(0), n)
    z_arr, labels = (z['z'], z['label']) if config.num_classes > 0 else (z, None)
    g_rngs = {'params': key_g, **models.rngs(generator, key_g_rngs)}
    d_rngs = {'params': key_d, **models.rngs(discriminator, key_d_rngs)}
    g_vars = dict(generator.init(g_rngs, z_arr, labels, train=False))
    d_vars = dict(
        discriminator.init(d_rngs, jnp.zeros((n, res, res, ch)), labels, train=False)
    )
    ema_params = None
    if imported is not None:
      g_vars = dict(imported.variables['g'])
      if imported.variables['d'] is not None:
        d_vars = dict(imported.variables['d'])
      if imported.variables['g_ema'] is not None:
        ema_params = imported.variables['g_ema']['params']
    params_g, params_d = g_vars.pop('params'), d_vars.pop('params')
    ema = hparams.active(config, 'ema_half_life_kimg')
    path_length = config.reg.pl_weight > 0
    state = steps.init_state(
        gan, params_g, params_d, g_vars, d_vars, ema=ema, path_length=path_length
    )
    if ema and ema_params is not None:
      state = state.replace(ema_params_g=ema_params)
    return state

  return init


def eval_params_g(state):
  """G's parameters for samples and FID: the EMA ones where the run keeps them."""
  return state.params_g if state.ema_params_g is None else state.ema_params_g


def make_sampler(config, gan: steps.GAN, n: int, salt: int):
  """Jitted ``(params_g, model_state_g, index) -> images``: batch ``index`` of ``n``
  fixed latents from ``fold_in(seed, salt)``; the key is an argument, so seeds share
  one program."""
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), salt)

  def sample(key, params_g, model_state_g, index):
    key_z, key_noise = jax.random.split(jax.random.fold_in(key, index))
    z = gan.sample_latent(key_z, n)
    if config.num_classes > 0:
      z['label'] = jnp.arange(n, dtype=jnp.int32) % int(config.num_classes)
    psi = float(config.sample_truncation_psi)
    fake, _ = gan.generate(
        params_g, model_state_g, z, key_noise, train=False, truncation_psi=psi
    )
    return fake['image']

  return functools.partial(jax.jit(sample), key)


def regularizers(config) -> phases_lib.Regularizers:
  reg = config.reg
  return phases_lib.Regularizers(
      batch_size=int(config.batch_size),
      **{k: float(reg[k]) for k in ('r1_gamma', 'pl_weight', 'pl_decay')},
      **{k: int(reg[k]) for k in ('r1_interval', 'pl_interval', 'pl_batch_shrink')},
      ema_half_life_kimg=hparams.value(config, 'ema_half_life_kimg'),
      ema_rampup=float(config.ema.rampup),
      use_ema=hparams.active(config, 'ema_half_life_kimg'),
  )


def _check_data(config, info: dict, generator) -> None:
  if config.num_classes > 0:
    if info['num_classes'] > config.num_classes:
      raise ConfigError(
          f'the data has {info["num_classes"]} classes but '
          f'config.num_classes={config.num_classes}'
      )
    if info['num_classes'] == 0:
      message = 'config.num_classes=%d but the data set has no labels: every real image'
      logging.warning(message + ' has label 0', config.num_classes)
  if (
      config.sample_truncation_psi != 1.0
      and 'truncation_psi' not in inspect.signature(type(generator).__call__).parameters
  ):
    raise ConfigError(
        f'config.sample_truncation_psi={config.sample_truncation_psi}: the '
        f'{config.model.name!r} generator has no truncation trick'
    )


def build(config, workdir: str) -> loop.Task:
  """The GAN task of ``config``; ``ConfigError``/``DataError`` before any compile."""
  data = config.data.to_dict()
  info = data_lib.dataset_info(data)
  generator, discriminator = create_models(config)
  _check_data(config, info, generator)
  gan = make_gan(config, generator, discriminator)
  later_phases = phases_lib.regularizer_phases(
      gan, generator, regularizers(config), config.num_classes > 0, config.model.name
  )
  ramps = {
      name: hparams.value(config, name)
      for name in hparams.STARTS
      if hparams.is_scheduled(config, name)
  }
  stage, description = config.stage, (
      f'{config.stage}-stage {config.model.name} ({config.loss} loss) on '
      f'{config.data.name} ({info["num_examples"]} images)'
  )

  def make_phases(state):
    probed = steps.probe_per_sample(gan, state, None)
    coupling = 'independently' if probed.per_sample else 'jointly (coupled)'
    logging.info('%s; D treats samples %s', description, coupling)
    main = functools.partial(steps.STEPS[stage], probed)

    def main_phase(state, batch, rng, i):
      state, metrics = main(state, batch, rng)
      ramped = {f'schedule_{name}': jnp.float32(v(i)) for name, v in ramps.items()}
      return state, {**metrics, **ramped}

    return [loop.Phase('main', main_phase), *later_phases]

  def sampler(n: int, salt: int):
    sample = make_sampler(config, gan, n, salt)
    return lambda state, index: sample(eval_params_g(state), state.model_state_g, index)

  context = evals.Context(
      workdir=workdir,
      data=data,
      is_main=parallel.is_main_process(),
      progress=bool(config.progress_bar),
      num_examples=info['num_examples'],
      sampler=sampler,
      grid_columns=int(config.num_classes) or None,
      load_classifier=teacher.load_classifier,
  )
  return loop.Task(
      name=f'{config.stage}-stage {config.model.name}',
      init=make_init(config, gan, generator, discriminator),
      make_phases=make_phases,
      batches=common.host_batches(data, int(config.batch_size), int(config.seed)),
      evaluators=evals.build(config.evals.to_dict(), context, kinds=('samples', 'fid')),
      progress=('loss_d', 'loss_g', 'augment_p', 'fid', 'fid_classifier'),
  )
