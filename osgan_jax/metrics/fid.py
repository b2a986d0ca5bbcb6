"""FID and KID on TF-Inception pool features, offline.

The Inception feature extractor, feature statistics, the Frechet distance, the Kernel
Inception Distance and statistics files: what a training loop and the ``fid`` command
compute. Definitions, numerics and file format: ``docs/fid.md``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, Iterable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax.metrics import extraction
from osgan_jax.metrics import inception
from osgan_jax.metrics import inception_weights

__all__ = [
    'FeatureExtractor',
    'fid_from_features',
    'fid_from_stats',
    'fid_kid',
    'frechet_distance',
    'kid',
    'load_stats',
    'sample_size_warning',
    'save_stats',
    'statistics',
    'to_input_range',
]

FEATURE_DIM = inception.FEATURE_DIM
# Below this many images FID's bias is larger than most differences it is used to rank
# (the published protocol uses 50,000; docs/fid.md, "Sample sizes").
FID_MIN_RELIABLE = 10_000
KID_MIN_RELIABLE = 1_000


def sample_size_warning(
    n_real: int, n_fake: Optional[int], feature_dim: int = FEATURE_DIM, kid: bool = False
) -> Optional[str]:
  """One line saying why FID/KID from these counts means little, or None.

  FID is biased upwards by roughly ``d/n`` and its covariance is singular for
  ``n <= d``; KID is unbiased but its spread over subsets is large below ~1,000.
  """
  counts = [n for n in (n_real, n_fake) if n is not None]
  if not counts:
    return None
  n = min(counts)
  if kid and n < KID_MIN_RELIABLE:
    return (
        f'KID from {n} images per set has a large spread; use >= {KID_MIN_RELIABLE}'
        ' to compare runs'
    )
  if kid:
    return None
  if n <= feature_dim:
    return (
        f'FID from {n} images (<= the {feature_dim} feature dimensions): the '
        f'covariance is singular and FID is strongly biased; compare only runs with '
        f'the same count, or use >= {FID_MIN_RELIABLE}'
    )
  if n < FID_MIN_RELIABLE:
    return (
        f'FID from {n} images is biased upwards (~{feature_dim}/n); compare only runs'
        f' with the same count, or use >= {FID_MIN_RELIABLE}'
    )
  return None


def to_input_range(x255) -> np.ndarray:
  """Float [0, 255] images (299x299 RGB) -> the network range [-1, 0.9921875]."""
  lo, hi = inception.INPUT_RANGE
  x = np.clip(np.asarray(x255, np.float32) / np.float32(255.0), 0.0, 1.0)
  return np.clip(x * np.float32(hi - lo) + np.float32(lo), lo, hi).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jitted_network():
  """One jitted network per process, shared by every extractor."""
  return jax.jit(inception.InceptionV3().apply)


@functools.lru_cache(maxsize=None)
def _jitted_preprocess():
  return jax.jit(inception.preprocess, static_argnames=('quantize', 'resolution'))


class FeatureExtractor:
  """Batched, jitted TF-Inception pool features: ``extractor(images)`` -> [N, 2048].

  Images are ``[N, H, W, C]``, C 1 or 3, uint8 in [0, 255] or float in [-1, 1]; the
  network is compiled once for ``batch_size``. Options: ``docs/fid.md``.
  """

  def __init__(
      self,
      batch_size: int = 16,
      weights: Optional[str] = None,
      quantize: bool = True,
      cache: bool = True,
  ):
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.batch_size = int(batch_size)
    self.quantize = quantize
    self.variables = inception_weights.load_inception_params(weights, cache=cache)
    self._net = _jitted_network()
    self._prep = _jitted_preprocess()

  def __call__(self, images) -> np.ndarray:
    return self.extract_batches([images])

  def from_network_input(self, x) -> np.ndarray:
    """Features of network input ``[N, 299, 299, 3]`` in [-1, 0.9921875]."""
    return self.extract_batches([x], preprocessed=True)

  def extract_batches(
      self,
      batches: Iterable[Any],
      total: Optional[int] = None,
      progress: bool = False,
      desc: str = 'features',
      preprocessed: bool = False,
  ) -> np.ndarray:
    """Features of an iterable of batches (any sizes); ``total`` sizes the tqdm bar.

    ``preprocessed=True``: the batches are network input, as ``from_network_input``'s.
    """
    if preprocessed:
      prepare = functools.partial(jnp.asarray, dtype=jnp.float32)
    else:
      batches = map(_check_images, batches)
      prepare = functools.partial(self._prep, quantize=self.quantize)
    return extraction.extract(
        functools.partial(self._net, self.variables),
        batches,
        self.batch_size,
        FEATURE_DIM,
        prepare=prepare,
        total=total,
        progress=progress,
        desc=desc,
    )


def _check_images(images):
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'expected NHWC images with C in (1, 3), got shape {images.shape}')
  return images


def statistics(features) -> Tuple[np.ndarray, np.ndarray]:
  """``(mu, sigma)`` of ``[n, d]`` features in float64 (``sigma`` with ``ddof=1``)."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'need at least 2 feature vectors [n, d], got shape {f.shape}')
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """``tr((S1 S2)^(1/2))`` of symmetric PSD matrices, via ``S1^(1/2) S2 S1^(1/2)``."""
  w, v = np.linalg.eigh(sigma1)
  root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  m = root @ sigma2 @ root
  ev = np.linalg.eigvalsh((m + m.T) / 2.0)
  return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def _trace_sqrt_product_scipy(sigma1, sigma2, eps=1e-6) -> float:
  """pytorch-fid's ``calculate_frechet_distance`` square-root term, verbatim."""
  from scipy import linalg  # lazy: scipy is heavy and only this method needs it

  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'imaginary component {np.max(np.abs(covmean.imag))}')
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = 'eigh') -> float:
  """Frechet distance of two Gaussians in float64; ``method``: 'eigh' or 'sqrtm'."""
  mu1, mu2 = (np.atleast_1d(np.asarray(mu, np.float64)) for mu in (mu1, mu2))
  s1, s2 = (np.atleast_2d(np.asarray(sigma, np.float64)) for sigma in (sigma1, sigma2))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(
        f'shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}'
    )
  diff = mu1 - mu2
  if method == 'eigh':
    tr_covmean = _trace_sqrt_product(s1, s2)
  elif method == 'sqrtm':
    tr_covmean = _trace_sqrt_product_scipy(s1, s2)
  else:
    raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
  return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


fid_from_stats = frechet_distance


def fid_from_features(features1, features2, method: str = 'auto') -> float:
  """FID between two ``[n, d]`` feature sets (the same number as from their statistics).

  ``method='auto'``: the exact low-rank formula when both have n <= d (docs/fid.md).
  """
  f1 = np.asarray(features1, np.float64)
  f2 = np.asarray(features2, np.float64)
  if method == 'auto':
    if f1.ndim == 2 and f2.ndim == 2 and max(f1.shape[0], f2.shape[0]) <= f1.shape[1]:
      return _fid_low_rank(f1, f2)
    method = 'eigh'
  return frechet_distance(*statistics(f1), *statistics(f2), method=method)


def _fid_low_rank(f1: np.ndarray, f2: np.ndarray) -> float:
  if f1.shape[1] != f2.shape[1] or min(f1.shape[0], f2.shape[0]) < 2:
    raise ValueError(f'need [n >= 2, d] features of equal d, got {f1.shape}, {f2.shape}')
  mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
  a, b = f1 - mu1, f2 - mu2
  c1, c2 = f1.shape[0] - 1, f2.shape[0] - 1
  diff = mu1 - mu2
  tr1, tr2 = np.sum(a * a) / c1, np.sum(b * b) / c2
  nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(c1 * c2)
  return float(diff.dot(diff) + tr1 + tr2 - 2.0 * nuclear)


def _polynomial_mmd2(
    x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float
) -> float:
  """Unbiased MMD^2, kernel ``(gamma a.b + coef0)^degree`` (torch-fidelity's)."""
  m = x.shape[0]
  k_xx = (x @ x.T * gamma + coef0) ** degree
  k_yy = (y @ y.T * gamma + coef0) ** degree
  k_xy = (x @ y.T * gamma + coef0) ** degree
  sum_xx = k_xx.sum() - np.trace(k_xx)
  sum_yy = k_yy.sum() - np.trace(k_yy)
  return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(
    features1,
    features2,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: Optional[float] = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> Tuple[float, float]:
  """KID ``(mean, std)``: the unbiased polynomial MMD^2 over random subsets, float64.

  As torch-fidelity, with the subset size clipped to the sample counts (docs/fid.md).
  """
  f1 = np.asarray(features1, np.float64)
  f2 = np.asarray(features2, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f'feature shapes {f1.shape} and {f2.shape} do not match')
  m = min(int(subset_size), f1.shape[0], f2.shape[0])
  if m < 2:
    raise ValueError(
        f'KID needs at least 2 samples per set, got {f1.shape[0]}, {f2.shape[0]}'
    )
  if gamma is None:
    gamma = 1.0 / f1.shape[1]
  rng = np.random.RandomState(seed)
  mmds = np.empty(num_subsets, np.float64)
  for i in range(num_subsets):
    a = f1[rng.choice(f1.shape[0], m, replace=False)]
    b = f2[rng.choice(f2.shape[0], m, replace=False)]
    mmds[i] = _polynomial_mmd2(a, b, degree, gamma, coef0)
  return float(mmds.mean()), float(mmds.std())


def _moments(side: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
  if side.get('mu') is None:
    return statistics(side['features'])
  return side['mu'], side['sigma']


def fid_kid(
    real: Dict[str, Any],
    fake: Dict[str, Any],
    with_kid: bool = False,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> Dict[str, Optional[float]]:
  """``{'fid', 'kid_mean', 'kid_std'}`` of two sets given as ``{'mu', 'sigma',
  'features'}`` (statistics only: no KID; features only: the statistics are computed
  where needed): the one computation of the ``fid`` command and the training and
  ``evaluate`` evaluators.

  The exact low-rank FID where both have features and at most ``d`` samples, else
  from the statistics (the same number ``fid_from_features`` gives).
  """
  rf, ff = real.get('features'), fake.get('features')
  both = rf is not None and ff is not None
  if both and max(len(rf), len(ff)) <= np.shape(rf)[1]:
    value = fid_from_features(rf, ff)
  else:
    value = frechet_distance(*_moments(real), *_moments(fake))
  out = {'fid': value, 'kid_mean': None, 'kid_std': None}
  if with_kid and both:
    out['kid_mean'], out['kid_std'] = kid(
        rf, ff, num_subsets=kid_subsets, subset_size=kid_subset_size
    )
  return out


def save_stats(
    path: str,
    mu,
    sigma,
    features=None,
    n: Optional[int] = None,
    meta: Optional[dict] = None,
) -> None:
  """Writes ``mu``, ``sigma``, ``n``, optional ``features`` and ``meta`` to ``path``.

  ``path`` gets no ``.npz`` appended; ``n`` defaults to ``len(features)``.
  """
  arrays = {'mu': np.asarray(mu, np.float64), 'sigma': np.asarray(sigma, np.float64)}
  if features is not None:
    arrays['features'] = np.asarray(features, np.float32)
    if n is None:
      n = arrays['features'].shape[0]
  if n is not None:
    arrays['n'] = np.int64(n)
  if meta is not None:
    arrays['meta'] = np.asarray(json.dumps(meta, sort_keys=True))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:  # a file object: numpy does not append '.npz' to the name
    np.savez(f, **arrays)


def load_stats(path: str) -> Dict[str, Any]:
  """``{'mu', 'sigma', 'features', 'n', 'meta'}`` of a statistics file (None: absent)."""
  with np.load(path, allow_pickle=False) as z:
    if 'mu' not in z.files or 'sigma' not in z.files:
      raise ValueError(
          f'{path}: a statistics file needs arrays "mu" and "sigma", '
          f'found {sorted(z.files)}'
      )
    out = {
        'mu': np.asarray(z['mu'], np.float64),
        'sigma': np.asarray(z['sigma'], np.float64),
        'features': np.asarray(z['features'], np.float32)
        if 'features' in z.files
        else None,
        'n': int(z['n']) if 'n' in z.files else None,
        'meta': json.loads(str(z['meta'])) if 'meta' in z.files else None,
    }
  if out['n'] is None and out['features'] is not None:
    out['n'] = int(out['features'].shape[0])
  d = out['mu'].shape
  if out['mu'].ndim != 1 or out['sigma'].shape != d * 2:
    raise ValueError(
        f'{path}: mu {out["mu"].shape} and sigma {out["sigma"].shape} do not fit'
    )
  return out
