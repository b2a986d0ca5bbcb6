"""Evaluators the loop runs every ``every_steps`` (sample grids, FID/KID, test accuracy);
the loop keeps the best checkpoint of one with a ``best`` ``(metric, mode)``."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from osgan_jax.metrics import fid as fid_lib
from osgan_jax.metrics import precision_recall as pr_lib

FID_STATS_FILE = 'fid_stats_real.npz'
LOW_RANK_MAX = 2048  # up to this many samples per set: exact FID from the features


def to_uint8(images) -> np.ndarray:
  """Images in [-1, 1] -> uint8 [0, 255], rounded to the nearest level (as FID's
  ``quantize``); what every PNG this project writes holds."""
  x = np.asarray(images, np.float32)
  return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(
    images, ncol: int | None = None, pad: int = 2, pad_value: int = 128
) -> np.ndarray:
  """[N, H, W, C] images in [-1, 1] -> one uint8 [H', W', C] grid, ``ncol`` per row."""
  x = to_uint8(images)
  n, h, w, c = x.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((pad + nrow * (h + pad), pad + ncol * (w + pad), c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    top, left = pad + r * (h + pad), pad + q * (w + pad)
    grid[top : top + h, left : left + w] = x[i]
  return grid


def save_png(grid: np.ndarray, path: str) -> None:
  """Writes a uint8 grid atomically (a kill never leaves half a PNG)."""
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  image.save(path + '.tmp', format='PNG')
  os.replace(path + '.tmp', path)


class SampleGrid:
  """``workdir/samples/step_000100.png`` and a TensorBoard image of ``sample(state)``
  (images in [-1, 1]) every ``every_steps``."""

  def __init__(
      self,
      workdir: str,
      sample: Callable,
      every_steps: int,
      ncol: int | None = None,
      is_main: bool = True,
  ):
    self.dir = os.path.join(workdir, 'samples')
    self.sample, self.every_steps = sample, int(every_steps)
    self.ncol, self.is_main = ncol, is_main

  def __call__(self, state, step: int, writer) -> dict:
    images = jax.device_get(self.sample(state))
    if self.is_main:
      grid = image_grid(images, ncol=self.ncol)
      os.makedirs(self.dir, exist_ok=True)
      save_png(grid, os.path.join(self.dir, f'step_{step:06d}.png'))
      writer.write_images(step, {'samples': grid})
    return {}


@dataclasses.dataclass(frozen=True)
class RealImages:
  """An FID's reference images: ``batches(batch_size)`` yields them in a fixed order,
  ``num`` are used, ``identity`` says what they and the features are."""

  batches: Callable
  num: int
  identity: dict


class Fid:
  """FID (KID, precision and recall) of generated images against real statistics cached
  in ``stats_path`` (or given as ``real_stats``, ``real_stats()``'s form).
  ``generate(state, index)`` gives batch ``index`` of the fixed latents (on every
  process: a program over the whole mesh); ``extractor()`` makes the feature network,
  which process 0 alone runs (``<metric>_seconds``: that time)."""

  def __init__(
      self,
      *,
      metric: str,
      every_steps: int,
      generate: Callable,
      extractor: Callable,
      real: RealImages | None,
      stats_path: str | None,
      num_samples: int,
      batch_size: int,
      kid: bool = False,
      precision_recall: bool = False,
      real_stats: dict | None = None,
      keep_best: bool = True,
      best_dir: str | None = None,
      is_main: bool = True,
      progress: bool = True,
  ):
    self.metric, self.every_steps = metric, int(every_steps)
    self.generate, self._make_extractor, self.real = generate, extractor, real
    self.stats_path, self.num_samples = stats_path, int(num_samples)
    self.batch_size, self.kid, self.is_main = int(batch_size), bool(kid), is_main
    self.precision_recall = bool(precision_recall)
    self.best = (metric, 'min') if keep_best else None
    self.best_dir, self.progress = best_dir, progress
    self._keep_features = self.kid or self.precision_recall
    self._keep_features |= real is not None and real.num <= LOW_RANK_MAX
    self._extractor, self._real = None, real_stats
    self._warned = False

  def _features(self, batches, total: int, desc: str) -> np.ndarray:
    if self._extractor is None:
      self._extractor = self._make_extractor()
    return self._extractor.extract_batches(
        batches, total=total, desc=desc, progress=self.progress
    )[:total]

  def _cached(self):
    if not os.path.exists(self.stats_path):
      return None
    ref = fid_lib.load_stats(self.stats_path)
    if ref['meta'] is None:  # saved before the identity was: Inception, training data
      same = self.stats_path.endswith(FID_STATS_FILE)
    else:
      same = ref['meta'] == self.real.identity
    has_features = ref['features'] is not None or not self._keep_features
    if same and ref['n'] == self.real.num and has_features:
      return ref
    wanted = f'num_real={self.real.num} / kid={self.kid} / {self.real.identity}'
    logging.info('FID: %s does not fit %s; recomputing', self.stats_path, wanted)
    return None

  def real_stats(self) -> dict:
    """``{'mu', 'sigma', 'features', 'n', 'meta'}`` of the real images (process 0),
    cached in ``stats_path`` and recomputed when they or the features changed."""
    if self._real is None:
      self._real = self._cached() or self._compute_real()
    return self._real

  def _compute_real(self) -> dict:
    n, identity = self.real.num, self.real.identity
    batches = self.real.batches(self.batch_size)
    try:

      def take():
        left = n
        while left > 0:
          images = np.asarray(next(batches)['image'])[:left]
          left -= len(images)
          yield images

      features = self._features(take(), n, f'{self.metric} real features')
    finally:
      batches.close()
    mu, sigma = fid_lib.statistics(features)
    features = features if self._keep_features else None
    tmp = f'{self.stats_path}.{os.getpid()}.tmp'
    os.makedirs(os.path.dirname(self.stats_path) or '.', exist_ok=True)
    fid_lib.save_stats(tmp, mu, sigma, features=features, n=n, meta=identity)
    os.replace(tmp, self.stats_path)
    return {'mu': mu, 'sigma': sigma, 'features': features, 'n': n, 'meta': identity}

  def __call__(self, state, step: int, writer) -> dict:
    del step, writer
    batches = (
        np.asarray(jax.device_get(self.generate(state, i)))
        for i in range(-(-self.num_samples // self.batch_size))
    )
    if not self.is_main:
      for _ in batches:  # take part in the generator's collectives
        pass
      return {}
    ref = self.real_stats()
    t0 = time.perf_counter()
    fake = self._features(batches, self.num_samples, f'{self.metric} fake features')
    name = self.metric
    suffix = '' if name == 'fid' else f'_{name.removeprefix("fid_")}'
    scores = fid_lib.fid_kid(ref, {'features': fake}, with_kid=self.kid)
    out = {name: scores['fid']}
    if self.kid:
      out[f'kid{suffix}_mean'], out[f'kid{suffix}_std'] = (
          scores['kid_mean'],
          scores['kid_std'],
      )
    if self.precision_recall:
      precision, recall = pr_lib.precision_recall(ref['features'], fake)
      out[f'precision{suffix}'], out[f'recall{suffix}'] = precision, recall
    out[f'{name}_seconds'] = time.perf_counter() - t0
    if not self._warned:  # once per run: the counts do not change
      self._warned = True
      for kid in (False, True) if self.kid else (False,):
        warning = fid_lib.sample_size_warning(ref['n'], len(fake), fake.shape[1], kid=kid)
        if warning:
          logging.warning('%s: %s', name, warning)
    counts = f'{self.num_samples} samples vs {ref["n"]} real'
    logging.info(
        '%s %.4g on %s (%.1f s)', name, out[name], counts, out[f'{name}_seconds']
    )
    return out


@functools.lru_cache(maxsize=None)
def _predict(model):
  """Jitted ``(params, model_state, images) -> classes`` in inference mode."""
  return jax.jit(
      lambda params, model_state, x: jnp.argmax(
          model.apply({'params': params, **model_state}, x, train=False), axis=-1
      )
  )


class TestAccuracy:
  """Accuracy of a classifier on labelled images held in memory in fixed-size batches
  (``labels`` -1 mark padding). ``variables(state) -> (params, model_state)``."""

  def __init__(
      self, images, labels, num_examples: int, every_steps: int, model, variables
  ):
    self.images, self.labels, self.num_examples = images, labels, int(num_examples)
    self.every_steps, self.model, self.variables = int(every_steps), model, variables
    self.extra = {}

  def accuracy(self, params, model_state, model=None) -> float:
    predict, correct = _predict(model or self.model), 0
    for x, y in zip(self.images, self.labels):
      pred = np.asarray(predict(params, model_state, x))
      correct += int(np.sum((pred == y) & (y >= 0)))
    return correct / self.num_examples

  def __call__(self, state, step: int, writer) -> dict:
    del step, writer
    return {'test_accuracy': self.accuracy(*self.variables(state)), **self.extra}
