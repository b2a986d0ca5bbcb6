"""Evaluators the training loop runs at their intervals: sample grids and FID/KID
(in TF-Inception or classifier features).

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


def image_grid(
    images, ncol: int | None = None, pad: int = 2, pad_value: int = 128
) -> np.ndarray:
  """[N, H, W, C] images in [-1, 1] -> one uint8 [H', W', C] grid, ``ncol`` per row."""
  x = np.asarray(images, np.float32)
  x = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
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
  from PIL import Image

  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  image.save(path + '.tmp', format='PNG')
  os.replace(path + '.tmp', path)


class SampleGrid:
  """``workdir/samples/step_000100.png`` and a TensorBoard image of ``sample(state)``
  (images in [-1, 1], e.g. G on a fixed z), every ``every_steps``."""

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


FEATURES = ('inception', 'classifier')
# The metric each feature network reports: plain ``fid`` is TF-Inception's, as everywhere.
METRIC = {'inception': 'fid', 'classifier': 'fid_classifier'}


def fid_stats_file(features: str, split: str, default_split: str) -> str:
  """The cache file name of the real statistics (the historical name for Inception
  features of the training data)."""
  if features == 'inception' and split == default_split:
    return FID_STATS_FILE
  return f'fid_stats_real_{features}_{split}.npz'


class Fid:
  """FID (and KID) of generated images against cached statistics of real images.

  ``config.fid`` chooses the feature network (``features``: TF-Inception, metric
  ``fid``; or the penultimate layer of the classifier trained in
  ``classifier_workdir``, metric ``fid_classifier``, see
  ``osgan_jax.metrics.classifier``), the real images (``real_split``: the data's split,
  or e.g. ``'test'``) and where their statistics are cached (``cache_dir``, shared by
  runs; default the workdir). ``generate(state, index) -> images`` gives batch
  ``index`` of the fixed evaluation latents. Every process generates (it is a jitted
  program over the whole mesh); process 0 alone extracts features and computes the
  metrics; ``<metric>_seconds`` is the time of that (the real statistics excluded).
  Inception is loaded on first use; a bad setting is a ``ConfigError`` here, before
  anything is trained.
  """

  def __init__(
      self,
      config,
      workdir: str,
      generate: Callable,
      num_examples: int | None,
      is_main: bool,
  ):
    from osgan_jax.config import ConfigError

    cfg = config.fid
    self.features = str(cfg.get('features', 'inception'))
    if self.features not in FEATURES:
      raise ConfigError(
          f'config.fid.features={self.features!r} is not one of ' f'{", ".join(FEATURES)}'
      )
    self.metric = METRIC[self.features]
    self.every_steps = int(cfg.every_steps)
    self.data_config = ml_collections.ConfigDict(config.data.to_dict())
    split = str(cfg.get('real_split', '')) or str(config.data.split)
    if split != config.data.split:
      self.data_config.split = split
      num_examples = None
    if num_examples is None:
      num_examples = data_lib.dataset_info(self.data_config)['num_examples']
    self.generate, self.is_main = generate, is_main
    self.num_samples, self.batch_size = int(cfg.num_samples), int(cfg.batch_size)
    self.num_real = int(
        num_examples if int(cfg.num_real) < 0 else min(int(cfg.num_real), num_examples)
    )
    self.kid = bool(cfg.kid)
    self.best = (self.metric, 'min') if cfg.keep_best else None
    # Real features are kept for KID, and for few images (cheap; FID from features).
    self._keep_features = self.kid or self.num_real <= _LOW_RANK_MAX
    self.progress = bool(config.progress_bar)
    cache_dir = os.path.expanduser(str(cfg.get('cache_dir', '')) or workdir)
    self.stats_path = os.path.join(
        cache_dir, fid_stats_file(self.features, split, str(config.data.split))
    )
    self.identity = {
        'features': self.features,
        'data': str(config.data.name),
        'split': split,
        'resolution': int(config.data.resolution),
    }
    self._extractor = self._real = None
    if not is_main:
      return
    if self.features == 'inception':
      from osgan_jax.metrics import inception

      if inception.default_weights_path() is None:  # fail before training, not after it
        raise ConfigError(
            f'config.fid.every_steps={cfg.every_steps} needs the '
            f'Inception weights: {inception.INSTALL_HINT}'
        )
    else:
      if not cfg.get('classifier_workdir', ''):
        raise ConfigError(
            "config.fid.features='classifier' needs "
            'config.fid.classifier_workdir (a trained teacher task)'
        )
      from osgan_jax.metrics import classifier

      self._extractor = classifier.ClassifierFeatures(
          str(cfg.classifier_workdir),
          batch_size=self.batch_size,
          resolution=int(config.data.resolution),
          channels=int(config.data.channels),
      )
      self.identity.update(self._extractor.identity)

  def _features(self, batches, total: int, desc: str) -> np.ndarray:
    if self._extractor is None:
      from osgan_jax.metrics import fid as fid_lib

      self._extractor = fid_lib.FeatureExtractor(batch_size=self.batch_size)
    return self._extractor.extract_batches(
        batches, total=total, desc=desc, progress=self.progress
    )[:total]

  def real_stats(self) -> dict:
    """``{'mu', 'sigma', 'features', 'n'}`` of the real images (process 0), cached in
    ``stats_path`` and recomputed when ``num_real``, ``kid`` or the features (the
    classifier, the split) changed."""
    from osgan_jax.metrics import fid as fid_lib

    if self._real is not None:
      return self._real
    if os.path.exists(self.stats_path):
      ref = fid_lib.load_stats(self.stats_path)
      # Files from before the identity was saved: Inception on the training data.
      same = (
          ref['meta'] == self.identity
          if ref['meta'] is not None
          else self.stats_path.endswith(FID_STATS_FILE)
      )
      if (
          same
          and ref['n'] == self.num_real
          and (ref['features'] is not None or not self._keep_features)
      ):
        self._real = ref
        return ref
      logging.info(
          'FID: %s does not fit fid.num_real=%d / fid.kid=%s / %s; recomputing',
          self.stats_path,
          self.num_real,
          self.kid,
          self.identity,
      )
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

      features = self._features(batches(), self.num_real, f'{self.metric} real features')
    finally:
      it.close()
    mu, sigma = fid_lib.statistics(features)
    features = features if self._keep_features else None
    tmp = f'{self.stats_path}.{os.getpid()}.tmp'
    fid_lib.save_stats(
        tmp, mu, sigma, features=features, n=self.num_real, meta=self.identity
    )
    os.replace(tmp, self.stats_path)
    self._real = {
        'mu': mu,
        'sigma': sigma,
        'features': features,
        'n': self.num_real,
        'meta': self.identity,
    }
    return self._real

  def __call__(self, state, step: int, writer) -> dict:
    from osgan_jax.metrics import fid as fid_lib

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
    if ref['features'] is not None and max(len(fake), ref['n']) <= _LOW_RANK_MAX:
      out = {name: fid_lib.fid_from_features(fake, ref['features'])}  # exact
    else:
      out = {
          name: fid_lib.fid_from_stats(*fid_lib.statistics(fake), ref['mu'], ref['sigma'])
      }
    if self.kid:
      kid = 'kid' if self.features == 'inception' else f'kid_{self.features}'
      out[f'{kid}_mean'], out[f'{kid}_std'] = fid_lib.kid(fake, ref['features'])
    out[f'{name}_seconds'] = time.perf_counter() - t0
    logging.info(
        '%s %.4g on %d samples vs %d real (%.1f s)',
        name,
        out[name],
        self.num_samples,
        ref['n'],
        out[f'{name}_seconds'],
    )
    return out
