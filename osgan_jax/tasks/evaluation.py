"""Metrics of a trained generator outside its run: FID, KID, precision and recall of
the images of seeds ``seed .. seed + num - 1`` against the run's real data (the FID
evaluator of its config, with the same cached real statistics) or a folder or
statistics file (as the ``fid`` command reads them). One evaluator serves both: the
training loop's ``evaluators.Fid``. Records and names: ``docs/generate_evaluate.md``.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax

from osgan_jax.config import keys
from osgan_jax.metrics import fid as fid_lib
from osgan_jax.metrics import folders
from osgan_jax.metrics import inception
from osgan_jax.metrics import precision_recall as pr_lib
from osgan_jax.tasks import evals
from osgan_jax.tasks import trained
from osgan_jax.training import evaluators
from osgan_jax.training import metric_writer

__all__ = ['FEATURE_NETWORK', 'METRICS', 'evaluate', 'metric_names']

FEATURE_NETWORK = 'inception_pool3'  # TF inception-2015-12-05, 2048-d pool features
METRICS = ('fid', 'kid', 'pr')


def _count(n: int) -> str:
  return f'{n // 1000}k' if n % 1000 == 0 else str(n)


def metric_names(num: int) -> dict:
  """The names of the metrics of ``num`` samples (fid50k, kid50k, precision50k,
  recall50k: StyleGAN2-ADA's names count the samples)."""
  n = _count(num)
  return {key: f'{key}{n}' for key in ('fid', 'kid', 'precision', 'recall')}


def _real_from_path(path: str, extractor, batch_size: int, need_features: bool) -> dict:
  """``real_stats()``'s dict of a folder or statistics file, as the ``fid`` command."""
  source = folders.load_source(path, extractor, batch_size, 'real')
  if need_features and source.features is None:
    raise folders.InputError(
        f'{path} holds no features (KID and precision/recall need them): write it with '
        'python -m osgan_jax.fid --real DIR --save-stats FILE --with-features, or '
        'ask for --metrics=fid'
    )
  return {
      'mu': source.mu,
      'sigma': source.sigma,
      'features': source.features,
      'n': source.n,
      'meta': None,
  }


def _run_entry(loaded: trained.Loaded, overrides: dict) -> dict:
  """The run's FID evaluator entry (Inception features) with ``overrides``."""
  entry = keys.eval_defaults('fid')
  recorded = loaded.config.evals.get('fid')
  if recorded is not None and recorded.get('type') == 'fid':
    entry.update(recorded.to_dict())
  entry.update(features='inception', every_steps=1, keep_best=False, **overrides)
  return entry


def evaluate(
    loaded: trained.Loaded,
    *,
    num: int = 10_000,
    batch_size: int = 50,
    seed: int = 0,
    truncation_psi: float = 1.0,
    noise_mode: str | None = None,
    real: str | None = None,
    num_real: int | None = None,
    metrics: Sequence[str] = METRICS,
    write: bool = True,
    progress: bool = True,
) -> list:
  """One record per metric (``metric``, ``value``, and what it was computed from); also
  appended to the run's ``metrics.jsonl`` when ``write`` and ``loaded`` is a run's.

  Raises ``trained.LoadError`` or ``folders.InputError`` (one line), and the config's
  data errors."""
  unknown = sorted(set(metrics) - set(METRICS))
  if unknown or not metrics:
    raise trained.LoadError(
        f'--metrics: choose from {",".join(METRICS)}, got {",".join(metrics) or "none"}'
    )
  if num < 2:
    raise trained.LoadError(f'--num must be >= 2, got {num}')
  if 'pr' in metrics and num <= pr_lib.DEFAULT_K:
    raise trained.LoadError(
        f'--num must be > {pr_lib.DEFAULT_K} for precision and recall (k = '
        f'{pr_lib.DEFAULT_K} neighbours), got {num}'
    )
  if num_real is not None and num_real < 2 and num_real != -1:
    raise trained.LoadError(f'--num_real must be >= 2 (or -1: all), got {num_real}')
  if real is None and loaded.config is None:
    raise trained.LoadError(
        '--real is needed: a weights file names no data set (a folder of images or a '
        'statistics .npz)'
    )
  if real is not None and not os.path.exists(real):
    raise trained.LoadError(f'--real {real} does not exist')
  if inception.default_weights_path() is None:
    raise trained.LoadError(
        f'the Inception weights are missing: {inception.INSTALL_HINT}'
    )
  kid, pr = 'kid' in metrics, 'pr' in metrics
  if noise_mode is None and loaded.takes('noise_mode'):
    noise_mode = 'random'  # as the reference's metrics
  per_device = -(-batch_size // jax.device_count())  # a batch split over the devices
  sampler = trained.Sampler(
      loaded, batch_size=per_device, truncation_psi=truncation_psi, noise_mode=noise_mode
  )
  seeds = list(range(int(seed), int(seed) + int(num)))
  if seeds[-1] > trained.MAX_SEED:
    raise trained.LoadError(f'--seed + --num must stay <= {trained.MAX_SEED}')
  seeds, labels = trained.class_labels(loaded, seeds, None)

  def generate(state, index):
    del state
    part = slice(index * batch_size, (index + 1) * batch_size)
    return sampler(seeds[part], labels[part])

  made = []

  def extractor():
    if not made:
      made.append(fid_lib.FeatureExtractor(batch_size=batch_size))
    return made[0]

  common = dict(num_samples=num, batch_size=batch_size, kid=kid, precision_recall=pr)
  if real is not None:
    evaluator = evaluators.Fid(
        metric='fid',
        every_steps=1,
        generate=generate,
        extractor=extractor,
        real=None,
        stats_path=None,
        real_stats=_real_from_path(real, extractor, batch_size, kid or pr),
        keep_best=False,
        progress=progress,
        **common,
    )
  else:
    if num_real is not None:
      common['num_real'] = num_real
    context = evals.Context(
        workdir=loaded.workdir,
        data=loaded.config.data.to_dict(),
        progress=progress,
        sampler=lambda n, salt: generate,
    )
    entry = _run_entry(loaded, common)
    evaluator = evals.build({'fid': entry}, context, kinds=('fid',))[0]
  try:
    values = evaluator(None, loaded.step or 0, None)
  except ValueError as e:  # too few real images for KID or the k-th neighbour
    raise trained.LoadError(' '.join(str(e).split())) from None
  ref = evaluator.real_stats()
  names = metric_names(num)
  about = {
      'step': loaded.step,
      'source': loaded.source,
      'generator': 'G_ema' if loaded.ema else 'G',
      'num_samples': num,
      'num_real': ref['n'],
      'real': os.path.abspath(real) if real else evaluator.stats_path,
      'seed': int(seed),
      'truncation_psi': sampler.truncation_psi,
      'noise_mode': noise_mode,
      'feature_network': FEATURE_NETWORK,
  }
  records = [{'metric': names['fid'], 'value': values['fid'], **about}]
  if kid:
    records.append(
        {
            'metric': names['kid'],
            'value': values['kid_mean'],
            'std': values['kid_std'],
            **about,
        }
    )
  if pr:
    for key in ('precision', 'recall'):
      records.append(
          {'metric': names[key], 'value': values[key], 'k': pr_lib.DEFAULT_K, **about}
      )
  if write and loaded.workdir is not None:
    writer = metric_writer.MetricWriter(loaded.workdir, None)
    try:
      scalars = {r['metric']: r['value'] for r in records}
      if kid:
        scalars[f'{names["kid"]}_std'] = values['kid_std']
      writer.write_scalars(loaded.step or 0, scalars)
    finally:
      writer.close()
  return records
