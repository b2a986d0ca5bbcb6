"""Evaluators built from ``config.evals`` by name, as big_vision builds them: each entry
names its ``type`` and cadence; one run can compute several (Inception FID and
classifier FID together). The task says which types it supports and what to sample."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from osgan_jax import data as data_lib
from osgan_jax.config import ConfigError
from osgan_jax.metrics import classifier as classifier_features
from osgan_jax.metrics import fid as fid_lib
from osgan_jax.metrics import inception
from osgan_jax.training import evaluators

# The metric each feature network reports: plain ``fid`` is TF-Inception's.
METRIC = {'inception': 'fid', 'classifier': 'fid_classifier'}


@dataclasses.dataclass(frozen=True)
class Context:
  """What a task offers its evaluators: ``sampler(n, salt) -> ((state, index) -> images
  in [-1, 1])`` (batch ``index`` of ``n`` fixed latents), ``classifier`` ``(model, state
  -> (params, model_state))`` and ``load_classifier(workdir, resolution, channels)``."""

  workdir: str
  data: dict
  is_main: bool = True
  progress: bool = True
  num_examples: int | None = None
  sampler: Callable | None = None
  grid_columns: int | None = None
  classifier: tuple | None = None
  load_classifier: Callable | None = None


def build(entries: dict, ctx: Context, kinds: tuple, ignore: tuple = ()) -> list:
  """The evaluators of ``config.evals`` (a dict; ``every_steps`` > 0) that the task
  supports (``kinds``); one of another type is a one-line ``ConfigError``, unless the
  task ``ignore`` s it (a key both tasks of an experiment share)."""
  out = []
  for name, entry in entries.items():
    if int(entry['every_steps']) <= 0 or entry['type'] in ignore:
      continue
    if entry['type'] not in kinds:
      raise ConfigError(
          f'config.evals.{name}: this task has no {entry["type"]!r} evaluator (it has '
          f'{", ".join(kinds)}); set config.evals.{name}.every_steps=0'
      )
    out.append(BUILDERS[entry['type']](name, entry, ctx))
  return out


def accuracy_split(entries: dict) -> str:
  """The labelled split of the first ``test_accuracy`` entry ('test' if none)."""
  for entry in entries.values():
    if entry['type'] == 'test_accuracy':
      return str(entry['split'])
  return 'test'


def whole(data: dict, **changes) -> dict:
  """``data`` with ``changes`` and without the training-only ``limit`` and ``xflip``:
  evaluation reads the whole split."""
  return {**data, **changes, 'limit': 0, 'xflip': False}


def num_classes(data: dict, split: str) -> int:
  info = data_lib.dataset_info(data_lib.DataConfig(whole(data, split=split)))
  if info['num_classes'] == 0:
    raise data_lib.DataError(
        f'{data["name"]} split {split!r} has no labels; accuracy needs a labelled test set'
    )
  return int(info['num_classes'])


def _samples(name: str, entry: dict, ctx: Context):
  del name
  sample = ctx.sampler(int(entry['num']), 2)
  return evaluators.SampleGrid(
      ctx.workdir,
      lambda state: sample(state, 0),
      entry['every_steps'],
      ncol=ctx.grid_columns,
      is_main=ctx.is_main,
  )


def stats_file(features: str, split: str, default_split: str) -> str:
  """The cache file name of the real statistics (the historical name for Inception
  features of the training data)."""
  if features == 'inception' and split == default_split:
    return evaluators.FID_STATS_FILE
  return f'fid_stats_real_{features}_{split}.npz'


def _feature_network(entry: dict, ctx: Context, identity: dict) -> Callable:
  """A maker of the entry's feature extractor; checks now what it will need."""
  batch_size = int(entry['batch_size'])
  if entry['features'] == 'inception':
    if ctx.is_main and inception.default_weights_path() is None:  # fail before training
      raise ConfigError(
          f'FID every {entry["every_steps"]} steps needs the Inception weights: '
          f'{inception.INSTALL_HINT}'
      )
    return lambda: fid_lib.FeatureExtractor(batch_size=batch_size)
  if not entry['classifier_workdir']:
    raise ConfigError(
        "config.evals: features='classifier' needs classifier_workdir (a trained teacher task)"
    )
  if not ctx.is_main:
    return lambda: None
  model, variables, _, network_identity = ctx.load_classifier(
      entry['classifier_workdir'], int(ctx.data['resolution']), int(ctx.data['channels'])
  )
  identity.update(network_identity)
  extractor = classifier_features.ClassifierFeatures(
      model, variables, batch_size=batch_size, identity=network_identity
  )
  return lambda: extractor


def _fid(name: str, entry: dict, ctx: Context):
  features = entry['features']
  metric = METRIC[features] if name in ('fid', METRIC[features]) else name
  split = entry['real_split'] or ctx.data['split']
  real_data = data_lib.DataConfig(whole(ctx.data, split=split, shuffle=True))
  limited = ctx.data.get('limit') or ctx.data.get('xflip')
  total = ctx.num_examples if split == ctx.data['split'] and not limited else None
  if total is None:
    total = data_lib.dataset_info(real_data)['num_examples']
  num_real = int(total if entry['num_real'] < 0 else min(entry['num_real'], total))
  identity = {
      'features': features,
      'data': str(ctx.data['name']),
      'split': split,
      'resolution': int(ctx.data['resolution']),
  }
  extractor = _feature_network(entry, ctx, identity)
  # A fixed random subset: the first num_real images of the seed-0 permutation (every
  # image exactly once for num_real = all).
  real = evaluators.RealImages(
      batches=lambda b: data_lib.make_iterator(real_data, b, seed=0),
      num=num_real,
      identity=identity,
  )
  cache_dir = os.path.expanduser(entry['cache_dir'] or ctx.workdir)
  return evaluators.Fid(
      metric=metric,
      every_steps=entry['every_steps'],
      generate=ctx.sampler(int(entry['batch_size']), 3),
      extractor=extractor,
      real=real,
      stats_path=os.path.join(cache_dir, stats_file(features, split, ctx.data['split'])),
      **{k: entry[k] for k in ('num_samples', 'batch_size', 'kid', 'keep_best')},
      precision_recall=bool(entry.get('precision_recall', False)),
      best_dir=None if name == 'fid' else f'best_{name}',
      is_main=ctx.is_main,
      progress=ctx.progress,
  )


def _test_accuracy(name: str, entry: dict, ctx: Context):
  del name
  data = data_lib.DataConfig(
      whole(ctx.data, split=entry['split'], shuffle=False, num_threads=0)
  )
  n = int(data_lib.dataset_info(data)['num_examples'])
  batch = int(entry['batch_size'])
  num_batches = -(-n // batch)
  it = data_lib.make_iterator(data, batch, seed=0)
  try:
    chunks = [next(it) for _ in range(num_batches)]
  finally:
    it.close()
  images = np.concatenate([c['image'] for c in chunks])
  labels = np.concatenate([c['label'] for c in chunks])
  valid = np.arange(len(images)) < n  # the iterator wraps around past the end
  model, variables = ctx.classifier
  return evaluators.TestAccuracy(
      images.reshape((num_batches, batch) + images.shape[1:]),
      np.where(valid, labels, -1).reshape((num_batches, batch)),
      n,
      entry['every_steps'],
      model,
      variables,
  )


BUILDERS = {'samples': _samples, 'fid': _fid, 'test_accuracy': _test_accuracy}
