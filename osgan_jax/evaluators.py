"""Evaluators the training loop runs at their intervals: sample grids and FID/KID.

An evaluator is any object with ``every_steps`` (it also runs at the end), a call
``evaluator(state, step, writer) -> {metric: float}`` made on every process (only
process 0's values are written), and optionally ``best = (metric, 'min' | 'max')``:
then the loop keeps the checkpoint with the best value in ``workdir/best/``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from osgan_jax import data as data_lib

FID_STATS_FILE = 'fid_stats_real.npz'
# Up to this many samples per set FID is computed from the features with an exact
# n1 x n2 SVD (``fid_from_features``) instead of two 2048 x 2048 eigendecompositions.
_LOW_RANK_MAX = 2048


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


def save_png(grid: np.ndarray, path: str) -> None:
  """Writes a uint8 grid atomically (a kill never leaves half a PNG)."""
  from PIL import Image
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  image.save(path + '.tmp', format='PNG')
  os.replace(path + '.tmp', path)


class SampleGrid:
  """``workdir/samples/step_000100.png`` and a TensorBoard image of ``sample(state)``
  (images in [-1, 1], e.g. G on a fixed z), every ``every_steps``."""

  def __init__(self, workdir: str, sample: Callable, every_steps: int,
               ncol: int | None = None, is_main: bool = True):
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


class Fid:
  """FID (and KID) of generated images against cached statistics of the training data.

  ``generate(state, index) -> images`` gives batch ``index`` of the fixed evaluation
  latents. Every process generates (it is a jitted program over the whole mesh);
  process 0 alone extracts Inception features and computes the metrics. The network
  and the real statistics are loaded on first use.
  """

  best = ('fid', 'min')

  def __init__(self, config, workdir: str, generate: Callable, num_examples: int,
               is_main: bool):
    cfg = config.fid
    self.every_steps = int(cfg.every_steps)
    self.data_config = config.data
    self.generate, self.is_main = generate, is_main
    self.num_samples, self.batch_size = int(cfg.num_samples), int(cfg.batch_size)
    self.num_real = int(num_examples if int(cfg.num_real) < 0
                        else min(int(cfg.num_real), num_examples))
    self.kid = bool(cfg.kid)
    if not cfg.keep_best:
      self.best = None
    # Real features are kept for KID, and for few images (cheap; FID from features).
    self._keep_features = self.kid or self.num_real <= _LOW_RANK_MAX
    self.progress = bool(config.progress_bar)
    self.stats_path = os.path.join(workdir, FID_STATS_FILE)
    self._extractor = self._real = None

  def _features(self, batches, total: int, desc: str) -> np.ndarray:
    if self._extractor is None:
      from osgan_jax.metrics import fid as fid_lib
      self._extractor = fid_lib.FeatureExtractor(batch_size=self.batch_size)
    return self._extractor.extract_batches(batches, total=total, desc=desc,
                                           progress=self.progress)[:total]

  def real_stats(self) -> dict:
    """``{'mu', 'sigma', 'features', 'n'}`` of the training data (process 0), cached
    in ``fid_stats_real.npz`` and recomputed when ``num_real`` or ``kid`` changed."""
    from osgan_jax.metrics import fid as fid_lib
    if self._real is not None:
      return self._real
    if os.path.exists(self.stats_path):
      ref = fid_lib.load_stats(self.stats_path)
      if ref['n'] == self.num_real and (ref['features'] is not None
                                        or not self._keep_features):
        self._real = ref
        return ref
      logging.info('FID: %s does not fit fid.num_real=%d / fid.kid=%s; recomputing',
                   self.stats_path, self.num_real, self.kid)
    # A fixed random subset: the first num_real images of the seed-0 permutation
    # (every image exactly once for num_real = all).
    data_config = ml_collections.ConfigDict(self.data_config.to_dict())
    data_config.shuffle = True
    it = data_lib.make_iterator(data_config, self.batch_size, seed=0)
    try:
      def batches():
        left = self.num_real
        while left > 0:
          images = np.asarray(next(it)['image'])[:left]
          left -= len(images)
          yield images
      features = self._features(batches(), self.num_real, 'FID real features')
    finally:
      it.close()
    mu, sigma = fid_lib.statistics(features)
    features = features if self._keep_features else None
    fid_lib.save_stats(self.stats_path + '.tmp', mu, sigma, features=features,
                       n=self.num_real)
    os.replace(self.stats_path + '.tmp', self.stats_path)
    self._real = {'mu': mu, 'sigma': sigma, 'features': features, 'n': self.num_real}
    return self._real

  def __call__(self, state, step: int, writer) -> dict:
    from osgan_jax.metrics import fid as fid_lib
    del step, writer
    batches = (np.asarray(jax.device_get(self.generate(state, i)))
               for i in range(-(-self.num_samples // self.batch_size)))
    if not self.is_main:
      for _ in batches:  # take part in the generator's collectives
        pass
      return {}
    ref = self.real_stats()
    t0 = time.perf_counter()
    fake = self._features(batches, self.num_samples, 'FID fake features')
    if ref['features'] is not None and max(len(fake), ref['n']) <= _LOW_RANK_MAX:
      out = {'fid': fid_lib.fid_from_features(fake, ref['features'])}  # exact
    else:
      out = {'fid': fid_lib.fid_from_stats(*fid_lib.statistics(fake), ref['mu'],
                                           ref['sigma'])}
    if self.kid:
      out['kid_mean'], out['kid_std'] = fid_lib.kid(fake, ref['features'])
    logging.info('FID %.4g on %d samples vs %d real (%.1f s)', out['fid'],
                 self.num_samples, ref['n'], time.perf_counter() - t0)
    return out
