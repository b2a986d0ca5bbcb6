"""The training loop: ``train_and_evaluate(config, workdir)``, one loop for every config.

It composes the pieces and knows nothing specific about any of them: the data iterator
(``osgan_jax.data``), the networks (looked up by ``config.model.name`` in
``osgan_jax.models``), the one- or two-stage step (``osgan_jax.steps``, chosen by
``config.stage``) and the device mesh (``osgan_jax.parallel``).

What a run leaves in ``workdir``:

* ``checkpoints/<step>/``: orbax checkpoints of the whole ``TrainState`` (parameters,
  optimiser states, BatchNorm / spectral-norm state, step) every
  ``checkpoint_every_steps``, at the end, and when SIGTERM or SIGINT arrives (the loop
  finishes the current step, saves, and returns normally). The last
  ``keep_checkpoints`` are kept.
* ``metrics.jsonl``: one JSON object per line every ``log_every_steps``: ``step``,
  ``loss_d``, ``loss_g``, the one-stage decomposition statistics (``gamma_mean``,
  ``gamma_min``, ``gamma_max``: over the interval's steps, mean/min/max; ``n_exact``:
  mean number of samples per step that took the exact path), ``steps_per_sec``,
  ``images_per_sec`` and ``data_skipped_images`` (unreadable images skipped so far).
* TensorBoard event files (the same scalars, and the sample grids).
* ``samples/step_000100.png``: a grid of images generated from a fixed z (and fixed
  labels ``i % num_classes`` for a conditional GAN, one class per column; fixed noise
  for StyleGAN2) every ``sample_every_steps`` and at the end, with G in inference mode
  (BatchNorm running averages) and its EMA parameters where the run keeps them.
* ``config.json``: the config of the run.
* With ``fid.every_steps > 0`` (see ``config_base``), every that many steps and at the
  end: ``fid`` (and ``kid_mean``, ``kid_std`` with ``fid.kid``) in ``metrics.jsonl`` and
  TensorBoard, on ``fid.num_samples`` images of G in inference mode (the EMA
  parameters if the state has them) from a fixed latent key, against
  ``fid_stats_real.npz``: the statistics (and the features, for KID or up to 2048
  images) of
  ``fid.num_real`` training images (-1: all; a fixed random subset), computed once and reused
  on resume (recomputed if ``num_real`` or ``kid`` no longer fit). With
  ``fid.keep_best``: ``best/<step>/``, an orbax checkpoint of the state with the lowest
  FID so far (restore it with ``restore_checkpoint``), and ``best/best_fid.json``
  (``{"step", "fid"}``).

Only process 0 writes logs and samples; every process takes part in checkpoints.

Regularisation and EMA (``config.reg``, ``config.ema``; StyleGAN2): after the main
step of iteration ``i``, lazy path length every ``reg.pl_interval`` and lazy R1 every
``reg.r1_interval`` iterations, then the G EMA, each its own jitted step over the same
state (``osgan_jax.regularizers``); ``pl_mean`` and ``ema_params_g`` are part of the
state and its checkpoints. Their metrics (``r1_penalty``, ``pl_penalty``,
``pl_length``, ``ema_beta``, ...) are averaged over the steps that ran them.

Resuming: rerunning the same command restores the latest checkpoint and continues. The
step's randomness is ``fold_in(key, step)`` and the data iterator restarts at
``start_step=step`` (batch k is a pure function of (seed, k)), so on CPU an interrupted
and resumed run reaches bit-identical parameters to an uninterrupted one.

Data parallelism: the global batch is split over the ``'data'`` axis of a mesh of all
devices and the state is replicated (see ``osgan_jax.parallel``). BatchNorm statistics
are over the global batch, identical to one device.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import logging

from osgan_jax import config_base
from osgan_jax import data as data_lib
from osgan_jax import losses as losses_lib
from osgan_jax import models
from osgan_jax import one_stage
from osgan_jax import parallel
from osgan_jax import regularizers
from osgan_jax import steps

__all__ = ['ConfigError', 'create_models', 'image_grid', 'make_gan', 'make_optimizers',
           'restore_checkpoint', 'train_and_evaluate']

# Model constructor arguments that come from top-level config keys: config key -> the
# names an architecture may give that argument (the first one its class has is used).
_G_FROM_CONFIG = {'data.resolution': ('resolution',),
                  'data.channels': ('channels', 'img_channels'),
                  'z_dim': ('z_dim',), 'num_classes': ('num_classes', 'c_dim')}
_D_FROM_CONFIG = {'data.resolution': ('resolution',),
                  'data.channels': ('channels', 'img_channels'),
                  'num_classes': ('num_classes', 'c_dim')}


class ConfigError(ValueError):
  """An invalid combination of config values; the message is one line for the user."""


# ------------------------------------------------------------------------ models

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
      raise ConfigError(f'config.model.name={config.model.name!r}: {cls.__name__} takes '
                        f'none of {", ".join(names)} (for config.{key})')
    value = _lookup(config, key)
    if name in kwargs and kwargs[name] != value:
      raise ConfigError(f'config.{section}.{name}={kwargs[name]!r} conflicts with '
                        f'config.{key}={value!r}; set config.{key} only')
    kwargs[name] = value
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


def rng_streams(module) -> tuple[str, ...]:
  """The Flax RNG streams a module draws from when applied (its ``RNG_STREAMS``;
  e.g. StyleGAN2's ``'noise'`` and ``'mixing'``), besides ``'params'`` at init."""
  return tuple(getattr(module, 'RNG_STREAMS', ()))


def _rngs(module, rng) -> dict:
  streams = rng_streams(module)
  if not streams:
    return {}
  if rng is None:
    raise ValueError(f'{type(module).__name__} needs an rng for {streams}')
  return dict(zip(streams, jax.random.split(rng, len(streams))))


def _apply(module, params, model_state, x, labels, train: bool, rng=None,
           method=None, **kwargs):
  """``module.apply`` with the non-parameter collections and RNG streams threaded
  through; returns ``(output, model_state)``."""
  variables = {'params': params, **model_state}
  kwargs.update(train=train, rngs=_rngs(module, rng), method=method)
  if train and model_state:
    out, new_state = module.apply(variables, x, labels, mutable=list(model_state),
                                  **kwargs)
    return out, {**model_state, **new_state}
  return module.apply(variables, x, labels, **kwargs), model_state


def make_gan(config, generator, discriminator) -> steps.GAN:
  """Wraps two Flax modules into the pure functions of ``steps.GAN``.

  ``generate`` returns ``{'image': x}`` (plus ``'label'`` for a conditional GAN, whose
  latent is ``{'z': z, 'label': y}``); the model state is every variable collection
  but ``'params'`` (BatchNorm statistics, spectral-norm vectors, StyleGAN2's ``w_avg``
  and noise buffers), updated in training mode. ``rng`` is split over the module's
  ``RNG_STREAMS`` (none for DCGAN). ``generate`` and ``discriminate`` take an extra
  ``train`` argument (default True) that the steps never pass; ``generate`` also takes
  ``truncation_psi`` (for sampling; only architectures that support it).
  """
  conditional = config.num_classes > 0
  z_dim, num_classes = int(config.z_dim), int(config.num_classes)

  def generate(params, model_state, z, rng, train=True, truncation_psi=1.0):
    z_arr, labels = (z['z'], z['label']) if conditional else (z, None)
    kwargs = {} if truncation_psi == 1.0 else {'truncation_psi': truncation_psi}
    image, model_state = _apply(generator, params, model_state, z_arr, labels, train,
                                rng, **kwargs)
    fake = {'image': image}
    if conditional:
      fake['label'] = labels
    return fake, model_state

  def discriminate(params, model_state, batch, rng, train=True):
    labels = batch['label'] if conditional else None
    return _apply(discriminator, params, model_state, batch['image'], labels, train,
                  rng)

  def sample_latent(rng, n):
    if not conditional:
      return jax.random.normal(rng, (n, z_dim))
    rng_z, rng_y = jax.random.split(rng)
    return {'z': jax.random.normal(rng_z, (n, z_dim)),
            'label': jax.random.randint(rng_y, (n,), 0, num_classes, jnp.int32)}

  optimizer_g, optimizer_d = make_optimizers(config)
  return steps.GAN(
      generate=generate, discriminate=discriminate, sample_latent=sample_latent,
      loss=config.loss, optimizer_g=optimizer_g, optimizer_d=optimizer_d,
      batch_keys=('image', 'label') if conditional else ('image',),
      mode=config.one_stage_mode)


def make_optimizers(config):
  """Adam for G and D (``config.optimizer``), corrected for lazy regularisation
  (``config.reg``), D's chained with weight clipping."""
  opt, reg = config.optimizer, config.reg
  milestones = sorted(int(m) for m in opt.lr_milestones)

  def adam(base_lr, interval):
    base_lr, (b1, b2) = regularizers.lazy_hparams(base_lr, (opt.b1, opt.b2), interval)
    lr = base_lr
    if milestones:
      lr = optax.piecewise_constant_schedule(
          base_lr, {m: float(opt.lr_decay) for m in milestones})
    adam = optax.adam(lr, b1=b1, b2=b2, eps=float(opt.eps))
    return optax.chain(regularizers.nan_to_num_grads(), adam) if opt.nan_to_num else adam

  optimizer_g = adam(opt.g_lr, int(reg.pl_interval) if reg.pl_weight > 0 else None)
  optimizer_d = adam(opt.d_lr, int(reg.r1_interval) if reg.r1_gamma > 0 else None)
  if opt.weight_clip > 0:
    optimizer_d = optax.chain(optimizer_d, steps.clip_params(float(opt.weight_clip)))
  return optimizer_g, optimizer_d


def _path_length_fns(config, generator):
  """``(map_fn, synthesize_fn)`` of ``regularizers.path_length_step`` for a generator
  with ``map`` (z -> ws, style mixing, tracks ``w_avg`` in training mode) and
  ``synthesize`` (ws -> images) methods, as StyleGAN2's."""
  if not (hasattr(generator, 'map') and hasattr(generator, 'synthesize')):
    raise ConfigError(f'config.reg.pl_weight={config.reg.pl_weight} needs a generator '
                      f'with map and synthesize methods (StyleGAN2); '
                      f'{config.model.name!r} has none')
  conditional = config.num_classes > 0

  def map_fn(params, model_state, z, rng):
    z_arr, labels = (z['z'], z['label']) if conditional else (z, None)
    return _apply(generator, params, model_state, z_arr, labels, True, rng,
                  method='map')

  def synthesize_fn(params, model_state, ws, rng):
    variables = {'params': params, **model_state}
    return generator.apply(variables, ws, method='synthesize',
                           rngs=_rngs(generator, rng))

  return map_fn, synthesize_fn


def _make_init(config, gan: steps.GAN, generator, discriminator):
  """``init(key) -> TrainState`` (traceable; jitted with the state's sharding)."""
  res, ch = int(config.data.resolution), int(config.data.channels)

  # Minibatch std needs a batch its group size divides; 4 fits both architectures.
  n = 4

  def init(key):
    key_g, key_d = jax.random.split(key)
    key_g_rngs, key_d_rngs = jax.random.split(jax.random.fold_in(key, 1))
    z = gan.sample_latent(jax.random.PRNGKey(0), n)
    z_arr, labels = (z['z'], z['label']) if config.num_classes > 0 else (z, None)
    g_vars = dict(generator.init({'params': key_g, **_rngs(generator, key_g_rngs)},
                                 z_arr, labels, train=False))
    d_vars = dict(discriminator.init(
        {'params': key_d, **_rngs(discriminator, key_d_rngs)},
        jnp.zeros((n, res, res, ch)), labels, train=False))
    params_g, params_d = g_vars.pop('params'), d_vars.pop('params')
    return steps.init_state(gan, params_g, params_d, g_vars, d_vars,
                            ema=config.ema.half_life_kimg > 0,
                            path_length=config.reg.pl_weight > 0)

  return init


# ------------------------------------------------------------------------ samples

def image_grid(images, ncol: int | None = None, pad: int = 2,
               pad_value: int = 128) -> np.ndarray:
  """[N, H, W, C] images in [-1, 1] -> one uint8 [H', W', C] grid, ``ncol`` per row."""
  x = np.asarray(images, np.float32)
  x = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
  n, h, w, c = x.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((pad + nrow * (h + pad), pad + ncol * (w + pad), c), pad_value,
                 np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    top, left = pad + r * (h + pad), pad + q * (w + pad)
    grid[top:top + h, left:left + w] = x[i]
  return grid


def _save_png(grid: np.ndarray, path: str) -> None:
  from PIL import Image
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  tmp = path + '.tmp'
  image.save(tmp, format='PNG')
  os.replace(tmp, path)


def _make_sampler(config, gan: steps.GAN, sharding):
  """Jitted ``(params_g, model_state_g) -> images`` of the fixed sample latents (and
  fixed noise, for a generator with noise inputs)."""
  n = int(config.num_samples)
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 2)
  key_z, key_noise = jax.random.split(key)

  def sample(params_g, model_state_g):
    z = gan.sample_latent(key_z, n)
    if config.num_classes > 0:
      z['label'] = jnp.arange(n, dtype=jnp.int32) % int(config.num_classes)
    fake, _ = gan.generate(params_g, model_state_g, z, key_noise, train=False,
                           truncation_psi=float(config.sample_truncation_psi))
    return fake['image']

  return jax.jit(sample, out_shardings=sharding)


# ------------------------------------------------------------------------ FID / KID

FID_STATS_FILE = 'fid_stats_real.npz'
BEST_DIR = 'best'
BEST_FILE = 'best_fid.json'
# Up to this many samples per set FID is computed from the features with an exact
# n1 x n2 SVD (``fid_from_features``) instead of two 2048 x 2048 eigendecompositions.
_LOW_RANK_MAX = 2048
def _eval_params_g(state):
  """G's parameters for samples and FID: the EMA ones where the run keeps them."""
  return state.params_g if state.ema_params_g is None else state.ema_params_g


class _FidEvaluator:
  """FID/KID of G against cached statistics of the training data.

  Every process generates (the generator is a jitted program over the whole mesh);
  process 0 alone extracts features and computes the metrics. The Inception network
  and the real statistics are loaded on first use.
  """

  def __init__(self, config, workdir: str, gan: steps.GAN, sharding, is_main: bool,
               num_examples: int):
    cfg = config.fid
    self.config = config
    self.workdir = workdir
    self.is_main = is_main
    self.num_samples = int(cfg.num_samples)
    self.batch_size = int(cfg.batch_size)
    self.num_real = int(num_examples if int(cfg.num_real) < 0
                        else min(int(cfg.num_real), num_examples))
    self.kid = bool(cfg.kid)
    # Real features are kept for KID, and for few images (cheap; FID from features).
    self._keep_features = self.kid or self.num_real <= _LOW_RANK_MAX
    self.progress = bool(config.progress_bar)
    self.stats_path = os.path.join(workdir, FID_STATS_FILE)
    self._extractor = None
    self._real = None
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 3)
    n = self.batch_size

    def generate(params_g, model_state_g, index):
      key_z, key_noise = jax.random.split(jax.random.fold_in(key, index))
      fake, _ = gan.generate(params_g, model_state_g, gan.sample_latent(key_z, n),
                             key_noise, train=False,
                             truncation_psi=float(config.sample_truncation_psi))
      return fake['image']

    self._generate = jax.jit(generate, out_shardings=sharding)

  def _features(self, batches, total: int, desc: str) -> np.ndarray:
    if self._extractor is None:
      from osgan_jax.metrics import fid as fid_lib
      self._extractor = fid_lib.FeatureExtractor(batch_size=self.batch_size)
    return self._extractor.extract_batches(batches, total=total, desc=desc,
                                           progress=self.progress)[:total]

  def real_stats(self) -> dict:
    """``{'mu', 'sigma', 'features', 'n'}`` of the training data (process 0)."""
    from osgan_jax.metrics import fid as fid_lib
    if self._real is not None:
      return self._real
    if os.path.exists(self.stats_path):
      ref = fid_lib.load_stats(self.stats_path)
      if ref['n'] == self.num_real and (ref['features'] is not None
                                        or not self._keep_features):
        logging.info('FID: real statistics of %d images from %s', ref['n'],
                     self.stats_path)
        self._real = ref
        return ref
      logging.info('FID: %s does not fit fid.num_real=%d / fid.kid=%s; recomputing',
                   self.stats_path, self.num_real, self.kid)
    # A fixed random subset: the first num_real images of the seed-0 permutation
    # (every image exactly once for num_real = all).
    data_config = ml_collections.ConfigDict(self.config.data.to_dict())
    data_config.shuffle = True
    it = data_lib.make_iterator(data_config, self.batch_size, seed=0)
    try:
      def batches():
        left = self.num_real
        while left > 0:
          images = np.asarray(next(it)['image'])[:left]
          left -= len(images)
          yield images
      t0 = time.perf_counter()
      features = self._features(batches(), self.num_real, 'FID real features')
    finally:
      it.close()
    mu, sigma = fid_lib.statistics(features)
    if not self._keep_features:
      features = None
    fid_lib.save_stats(self.stats_path + '.tmp', mu, sigma, features=features,
                       n=self.num_real)
    os.replace(self.stats_path + '.tmp', self.stats_path)
    logging.info('FID: real statistics of %d images in %.1f s -> %s', self.num_real,
                 time.perf_counter() - t0, self.stats_path)
    self._real = {'mu': mu, 'sigma': sigma, 'features': features, 'n': self.num_real}
    return self._real

  def __call__(self, state) -> dict:
    """``{'fid', ('kid_mean', 'kid_std')}`` on process 0, ``{}`` elsewhere."""
    from osgan_jax.metrics import fid as fid_lib
    params_g = _eval_params_g(state)
    num_batches = -(-self.num_samples // self.batch_size)

    def batches():
      for i in range(num_batches):
        yield np.asarray(jax.device_get(self._generate(params_g, state.model_state_g,
                                                       i)))

    if not self.is_main:
      for _ in batches():  # take part in the generator's collectives
        pass
      return {}
    ref = self.real_stats()
    t0 = time.perf_counter()
    fake = self._features(batches(), self.num_samples, 'FID fake features')
    if ref['features'] is not None and max(len(fake), ref['n']) <= _LOW_RANK_MAX:
      fid = fid_lib.fid_from_features(fake, ref['features'])  # exact, milliseconds
    else:
      fid = fid_lib.fid_from_stats(*fid_lib.statistics(fake), ref['mu'], ref['sigma'])
    out = {'fid': fid}
    if self.kid:
      out['kid_mean'], out['kid_std'] = fid_lib.kid(fake, ref['features'])
    logging.info('FID %.4g on %d samples vs %d real (%.1f s)%s', out['fid'],
                 self.num_samples, ref['n'], time.perf_counter() - t0,
                 f', KID {out["kid_mean"]:.4g} +- {out["kid_std"]:.2g}' if self.kid
                 else '')
    return out


def _read_best(workdir: str):
  path = os.path.join(workdir, BEST_DIR, BEST_FILE)
  try:
    with open(path) as f:
      return float(json.load(f)['fid'])
  except (OSError, ValueError, KeyError, TypeError):
    return math.inf


def _save_best(manager: ocp.CheckpointManager, workdir: str, step: int, state,
               fid: float, meta: dict, is_main: bool) -> None:
  """Replaces the best checkpoint by ``state`` at ``step`` (all processes)."""
  for old in manager.all_steps():
    if old >= step:  # left by a run that crashed after it; orbax refuses to overwrite
      manager.delete(old)
  _save(manager, step, state, {**meta, 'fid': float(fid)})
  if is_main:
    path = os.path.join(workdir, BEST_DIR, BEST_FILE)
    with open(path + '.tmp', 'w') as f:
      json.dump({'step': int(step), 'fid': float(fid)}, f)
      f.write('\n')
    os.replace(path + '.tmp', path)


# ------------------------------------------------------------------------ logging

class _MetricWriter:
  """metrics.jsonl + TensorBoard on process 0; a no-op elsewhere."""

  def __init__(self, workdir: str, start_step: int, enabled: bool):
    self.enabled = enabled
    self.writer = None
    if not enabled:
      return
    self.jsonl = os.path.join(workdir, 'metrics.jsonl')
    self._truncate(start_step)
    from tensorboardX import SummaryWriter
    self.writer = SummaryWriter(logdir=workdir, purge_step=start_step or None,
                                flush_secs=30)

  def _truncate(self, start_step: int) -> None:
    """Drops lines logged after the checkpoint we resume from (a crash's leftovers)."""
    if not os.path.exists(self.jsonl):
      return
    with open(self.jsonl) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line)['step'] <= start_step:
          keep.append(line)
      except (ValueError, KeyError, TypeError):
        pass  # a partly written last line
    if len(keep) != len(lines):
      with open(self.jsonl, 'w') as f:
        f.writelines(keep)

  def scalars(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in values.items()}}
    with open(self.jsonl, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in values.items():
      self.writer.add_scalar(k, float(v), step)

  def image(self, step: int, tag: str, grid: np.ndarray) -> None:
    if not self.enabled:
      return
    rgb = np.repeat(grid, 3, axis=-1) if grid.shape[-1] == 1 else grid
    self.writer.add_image(tag, rgb, step, dataformats='HWC')

  def text(self, tag: str, text: str) -> None:
    if self.enabled:
      self.writer.add_text(tag, text, 0)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _reduce_metrics(history: list) -> dict:
  """Per-step metric dicts -> one dict (min/max for gamma_min/max, else mean); a key
  only some steps log (the lazy regularisers') is reduced over those steps."""
  history = jax.device_get(history)
  out = {}
  for k in dict.fromkeys(k for h in history for k in h):
    values = np.asarray([h[k] for h in history if k in h], np.float64)
    if k == 'gamma_min':
      out[k] = values.min()
    elif k == 'gamma_max':
      out[k] = values.max()
    else:
      out[k] = values.mean()
  return out


# ------------------------------------------------------------------------ signals

class _StopOnSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps.

  A second SIGINT while the flag is set raises KeyboardInterrupt (Ctrl-C twice aborts
  without saving). Handlers are only installed from the main thread and are restored
  on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    # No logging here (its locks are not reentrant): a plain write is signal-safe.
    os.write(2, f'\n{self.received} received: saving a checkpoint after this step, '
                'then stopping\n'.encode())

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


# ------------------------------------------------------------------------ checkpoints

def _checkpoint_manager(workdir: str, keep: int,
                        subdir: str = 'checkpoints') -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(workdir, subdir), options=options)


def _save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()


def restore_checkpoint(manager: ocp.CheckpointManager, abstract_state, step=None):
  """``(state, meta)`` of checkpoint ``step`` (default: latest); shardings from
  ``abstract_state`` (``jax.ShapeDtypeStruct`` leaves with ``sharding``)."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored.state, dict(restored.meta or {})


# ------------------------------------------------------------------------ the loop

def validate_method(config) -> None:
  """``config.one_stage_mode`` and ``config.loss`` name a known mode and loss (the
  GAN loop's and distillation's shared checks)."""
  if config.one_stage_mode not in one_stage.MODES:
    raise ConfigError(f'config.one_stage_mode={config.one_stage_mode!r} is not one of '
                      f'{", ".join(one_stage.MODES)}')
  try:
    losses_lib.get(config.loss)
  except ValueError as e:
    raise ConfigError(f'config.loss: {e}') from None


def _validate(config) -> None:
  if config.stage not in config_base.STAGES:
    raise ConfigError(f'config.stage={config.stage!r} is not one of '
                      f'{", ".join(config_base.STAGES)}')
  validate_method(config)
  for key in ('batch_size', 'num_train_steps', 'log_every_steps',
              'checkpoint_every_steps', 'sample_every_steps', 'num_samples'):
    if int(config[key]) <= 0:
      raise ConfigError(f'config.{key} must be positive, got {config[key]}')
  if config.num_classes < 0:
    raise ConfigError(f'config.num_classes must be >= 0, got {config.num_classes}')
  fid = config.fid
  if int(fid.every_steps) < 0:
    raise ConfigError(f'config.fid.every_steps must be >= 0 (0 = off), got '
                      f'{fid.every_steps}')
  if int(fid.every_steps) > 0:
    if int(fid.num_samples) < 2:
      raise ConfigError(f'config.fid.num_samples must be >= 2, got {fid.num_samples}')
    if int(fid.num_real) < 2 and int(fid.num_real) != -1:
      raise ConfigError(f'config.fid.num_real must be >= 2 or -1 (all), got '
                        f'{fid.num_real}')
    if int(fid.batch_size) <= 0:
      raise ConfigError(f'config.fid.batch_size must be positive, got {fid.batch_size}')
  reg, ema = config.reg, config.ema
  for key in ('r1_gamma', 'pl_weight', 'pl_decay'):
    if reg[key] < 0:
      raise ConfigError(f'config.reg.{key} must be >= 0, got {reg[key]}')
  for key in ('r1_interval', 'pl_interval', 'pl_batch_shrink'):
    if int(reg[key]) < 1:
      raise ConfigError(f'config.reg.{key} must be >= 1, got {reg[key]}')
  if reg.pl_weight > 0 and int(config.batch_size) // int(reg.pl_batch_shrink) < 1:
    raise ConfigError(f'config.batch_size // config.reg.pl_batch_shrink must be >= 1')
  for key in ('half_life_kimg', 'rampup'):
    if ema[key] < 0:
      raise ConfigError(f'config.ema.{key} must be >= 0, got {ema[key]}')


def _make_reg_steps(config, gan: steps.GAN, path_length_fns, state_sharding,
                    batch_sharding):
  """``(state, metrics, batch, rng, i) -> (state, metrics)``: the lazy regularisation
  and EMA steps of iteration ``i``, after its main step (see ``regularizers``).

  Each is its own jitted program over the same state pytree, so taking or skipping one
  at an iteration never retraces anything; their metrics join the main step's.
  """
  reg, batch_size = config.reg, int(config.batch_size)
  pl_step = r1_step = ema_step = None
  if reg.pl_weight > 0:
    pl_step = regularizers.jit_path_length_step(
        gan, *path_length_fns, batch_size=batch_size, pl_weight=float(reg.pl_weight),
        interval=int(reg.pl_interval), pl_batch_shrink=int(reg.pl_batch_shrink),
        pl_decay=float(reg.pl_decay), map_has_aux=True, state_sharding=state_sharding)
  if reg.r1_gamma > 0:
    r1_step = regularizers.jit_r1_step(
        gan, r1_gamma=float(reg.r1_gamma), interval=int(reg.r1_interval),
        state_sharding=state_sharding, batch_sharding=batch_sharding)
  if config.ema.half_life_kimg > 0:
    ema_step = regularizers.jit_ema_step(
        batch_size=batch_size, half_life_kimg=float(config.ema.half_life_kimg),
        rampup=float(config.ema.rampup) or None, state_sharding=state_sharding)

  def run(state, metrics, batch, rng, i):
    if pl_step is not None and i % int(reg.pl_interval) == 0:
      state, m = pl_step(state, jax.random.fold_in(rng, 1))
      metrics = {**metrics, **m}
    if r1_step is not None and i % int(reg.r1_interval) == 0:
      state, m = r1_step(state, batch, jax.random.fold_in(rng, 2))
      metrics = {**metrics, **m}
    if ema_step is not None:
      state, m = ema_step(state, np.int32(min(i * batch_size, 2**31 - 1)))
      metrics = {**metrics, **m}
    return state, metrics

  return run


def _every(step: int, period: int, last: int) -> bool:
  return step % period == 0 or step == last


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint, if any).

  Returns the final ``steps.TrainState`` (replicated over the mesh). Raises
  ``data.DataError`` for missing or unusable data and ``ConfigError`` for invalid
  settings, both before anything is compiled.
  """
  parallel.initialize(config.multihost)
  _validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_main = parallel.is_main_process()
  num_steps = int(config.num_train_steps)
  batch_size = int(config.batch_size)

  mesh = parallel.make_mesh(int(config.num_devices))
  if batch_size % mesh.size or batch_size % jax.process_count():
    raise ConfigError(f'config.batch_size={batch_size} must be a multiple of the '
                      f'{mesh.size} devices and {jax.process_count()} processes')
  state_sharding = parallel.replicated(mesh)
  batch_sharding = parallel.data_sharding(mesh)

  info = data_lib.dataset_info(config.data)  # DataError early, before any compile
  if config.num_classes > 0:
    if info['num_classes'] > config.num_classes:
      raise ConfigError(f'the data has {info["num_classes"]} classes but '
                        f'config.num_classes={config.num_classes}')
    if info['num_classes'] == 0:
      logging.warning('config.num_classes=%d but the data set has no labels: every '
                      'real image has label 0', config.num_classes)

  if int(config.fid.every_steps) > 0 and is_main:
    from osgan_jax.metrics import inception
    if inception.default_weights_path() is None:  # fail before training, not after it
      raise ConfigError(f'config.fid.every_steps={config.fid.every_steps} needs the '
                        f'Inception weights: {inception.INSTALL_HINT}')

  generator, discriminator = create_models(config)
  if (config.sample_truncation_psi != 1.0 and 'truncation_psi'
      not in inspect.signature(type(generator).__call__).parameters):
    raise ConfigError(f'config.sample_truncation_psi={config.sample_truncation_psi}: '
                      f'the {config.model.name!r} generator has no truncation trick')
  gan = make_gan(config, generator, discriminator)
  path_length_fns = (_path_length_fns(config, generator) if config.reg.pl_weight > 0
                     else None)
  root = jax.random.PRNGKey(int(config.seed))
  init_key, step_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  init = jax.jit(_make_init(config, gan, generator, discriminator),
                 out_shardings=state_sharding)

  if is_main:
    os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')

  with contextlib.ExitStack() as cleanup:
    # From here on SIGTERM/SIGINT only set a flag: a signal during setup or compilation
    # stops the run after its first step, with a checkpoint.
    stop = cleanup.enter_context(_StopOnSignal())
    manager = _checkpoint_manager(workdir, config.keep_checkpoints)
    cleanup.callback(manager.close)
    latest = manager.latest_step()
    meta = {'skipped_images': 0}
    if latest is None:
      state = init(init_key)
      start_step = 0
    else:
      abstract = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=state_sharding),
          jax.eval_shape(init, init_key))
      state, meta = restore_checkpoint(manager, abstract, latest)
      start_step = int(jax.device_get(state.step))
      logging.info('Resumed from the checkpoint at step %d in %s', start_step, workdir)
    if start_step >= num_steps:
      logging.info('Nothing to do: the checkpoint is at step %d and num_train_steps=%d',
                   start_step, num_steps)
      return state
    last_saved = None if latest is None else start_step

    data_iter = data_lib.make_iterator(
        config.data, batch_size, seed=int(config.seed), start_step=start_step,
        process_index=jax.process_index(), process_count=jax.process_count())
    cleanup.callback(data_iter.close)
    skipped_before = int(meta.get('skipped_images', 0))

    def skipped_images():
      return skipped_before + parallel.sum_over_processes(data_iter.skipped)

    writer = _MetricWriter(workdir, start_step, is_main)
    cleanup.callback(writer.close)
    sampler = _make_sampler(config, gan, state_sharding)
    fid_every = int(config.fid.every_steps)
    evaluate_fid = best_manager = None
    if fid_every > 0:
      evaluate_fid = _FidEvaluator(config, workdir, gan, state_sharding, is_main,
                                   info['num_examples'])
      if config.fid.keep_best:
        best_manager = _checkpoint_manager(workdir, 1, BEST_DIR)
        cleanup.callback(best_manager.close)
    best_fid = _read_best(workdir)

    first = next(data_iter)
    # A few samples settle whether D couples them (at least 2, tiled if need be).
    probe = {k: np.resize(np.asarray(first[k][:4]), (max(min(len(first[k]), 4), 2),)
                          + first[k].shape[1:]) for k in gan.batch_keys}
    gan = steps.probe_per_sample(gan, state, probe)
    train_step = steps.jit_step(gan, config.stage, state_sharding=state_sharding,
                                batch_sharding=batch_sharding)
    reg_steps = _make_reg_steps(config, gan, path_length_fns, state_sharding,
                                batch_sharding)
    n_params = sum(x.size for x in jax.tree.leaves((state.params_g, state.params_d)))
    logging.info('%s-stage %s (%s loss), %d parameters, %d devices, batch %d, data %s '
                 '(%d images); D treats samples %s', config.stage, config.model.name,
                 config.loss, n_params, mesh.size, batch_size, config.data.name,
                 info['num_examples'],
                 'independently' if gan.per_sample else 'jointly (coupled)')
    writer.text('config', '```\n' + str(config) + '\n```')

    pbar = cleanup.enter_context(tqdm.tqdm(
        total=num_steps, initial=start_step, unit='step', dynamic_ncols=True,
        smoothing=0.05, mininterval=0.5 if sys.stderr.isatty() else 30,
        disable=not (is_main and config.progress_bar)))
    history = []
    timer_start, timer_steps = time.perf_counter(), 0
    stopped_by = None
    local = first
    for step in range(start_step, num_steps):
      if local is None:
        local = next(data_iter)
      batch = parallel.global_batch({k: local[k] for k in gan.batch_keys},
                                    batch_sharding)
      local = None
      rng = np.asarray(jax.random.fold_in(step_key, step))
      state, metrics = train_step(state, batch, rng)
      state, metrics = reg_steps(state, metrics, batch, rng, step)
      history.append(metrics)
      done = step + 1
      timer_steps += 1
      pbar.update(1)
      if step == start_step:  # exclude compilation from the throughput
        jax.block_until_ready(state)
        logging.info('First step (with compilation) took %.1f s',
                     time.perf_counter() - timer_start)
        timer_start, timer_steps = time.perf_counter(), 0

      if _every(done, config.log_every_steps, num_steps):
        values = _reduce_metrics(history)
        history = []
        if timer_steps:
          values['steps_per_sec'] = timer_steps / max(time.perf_counter() - timer_start,
                                                      1e-9)
          values['images_per_sec'] = values['steps_per_sec'] * batch_size
        values['data_skipped_images'] = skipped_images()
        writer.scalars(done, values)
        pbar.set_postfix({k: f'{values[k]:.3g}' for k in
                          ('images_per_sec', 'loss_d', 'loss_g') if k in values},
                         refresh=False)
        timer_start, timer_steps = time.perf_counter(), 0

      if _every(done, config.sample_every_steps, num_steps):
        images = jax.device_get(sampler(_eval_params_g(state), state.model_state_g))
        if is_main:
          grid = image_grid(images, ncol=int(config.num_classes) or None)
          _save_png(grid, os.path.join(workdir, 'samples', f'step_{done:06d}.png'))
          writer.image(done, 'samples', grid)

      if evaluate_fid is not None and _every(done, fid_every, num_steps):
        fid_values = evaluate_fid(state)
        writer.scalars(done, fid_values)
        improved = is_main and fid_values['fid'] < best_fid
        if improved:
          best_fid = fid_values['fid']
        if best_manager is not None and parallel.any_process(improved):
          _save_best(best_manager, workdir, done, state, best_fid,
                     {'skipped_images': skipped_images()}, is_main)

      # Multi-host: every process must agree to stop at the same step (a collective,
      # so only at log boundaries); one process checks its own flag every step.
      if (jax.process_count() == 1 or done % config.log_every_steps == 0
          or done == num_steps):
        if parallel.any_process(stop.received is not None):
          stopped_by = stop.received or 'a signal to another process'
      if (_every(done, config.checkpoint_every_steps, num_steps)
          or stopped_by is not None) and last_saved != done:
        _save(manager, done, state, {'skipped_images': skipped_images()})
        last_saved = done
      if stopped_by is not None:
        break

  checkpoints = os.path.join(workdir, 'checkpoints')
  if stopped_by is not None and done < num_steps:
    logging.warning('Stopped by %s at step %d; checkpoint saved in %s. Run the same '
                    'command again to resume.', stopped_by, done, checkpoints)
  else:
    logging.info('Finished %d steps; checkpoint at step %d in %s', done, last_saved,
                 checkpoints)
  return state
