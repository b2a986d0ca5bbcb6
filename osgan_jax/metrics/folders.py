"""FID/KID of image folders and statistics files: what the ``fid`` command computes.

Lists and loads a folder's images as the reference does (PIL, RGB, TF1 resize),
reading them on a background thread while the network runs, and compares two sources
(folders or ``.npz`` statistics). Behaviour of the command: ``docs/fid.md``.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
from PIL import Image

from osgan_jax.metrics import fid as fid_lib
from osgan_jax.metrics import inception

__all__ = [
    'IMAGE_EXTENSIONS',
    'InputError',
    'Source',
    'compare',
    'folder_features',
    'list_images',
    'load_image',
    'load_source',
    'prefetched_batches',
]

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


class InputError(Exception):
  """A folder, statistics file or weights file that cannot be used (one-line message)."""


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
  with open(path, 'rb') as f:
    img = np.asarray(Image.open(f).convert('RGB'), np.uint8)
  return fid_lib.to_input_range(inception.resize_numpy(img))


def prefetched_batches(paths: List[str], batch_size: int) -> Iterator[np.ndarray]:
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
  """Inception features of the images under ``folder``, with a progress bar (``desc``)."""
  paths = list_images(folder)
  if not paths:
    raise InputError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found under {folder}')
  try:
    return extractor.extract_batches(
        prefetched_batches(paths, batch_size),
        total=len(paths),
        progress=True,
        desc=desc,
        preprocessed=True,
    )
  except OSError as e:
    raise InputError(f'cannot read an image under {folder}: {e}') from None


@dataclasses.dataclass
class Source:
  """The statistics of a folder or a statistics file (``features`` None if it has none)."""

  mu: np.ndarray
  sigma: np.ndarray
  features: Optional[np.ndarray]
  n: Optional[int]


def load_source(
    path: str, get_extractor: Callable[[], Any], batch_size: int, desc: str
) -> Source:
  """Statistics of an image folder (via ``get_extractor()``, called only then) or .npz."""
  if os.path.isdir(path):
    feats = folder_features(get_extractor(), path, batch_size, desc=desc)
    if feats.shape[0] < 2:
      raise InputError(f'{path}: FID needs at least 2 images, found {feats.shape[0]}')
    mu, sigma = fid_lib.statistics(feats)
    return Source(mu, sigma, feats, feats.shape[0])
  if not os.path.exists(path):
    raise InputError(f'{path} does not exist')
  if not os.path.isfile(path) or not path.lower().endswith('.npz'):
    raise InputError(f'{path} is neither a folder of images nor an .npz statistics file')
  try:
    st = fid_lib.load_stats(path)
  except (ValueError, OSError, KeyError) as e:
    raise InputError(f'cannot read statistics {path}: {e}') from None
  return Source(st['mu'], st['sigma'], st['features'], st['n'])


def compare(
    real: str,
    fake: Optional[str] = None,
    *,
    batch_size: int = 16,
    weights: Optional[str] = None,
    kid: bool = False,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    save_stats: Optional[str] = None,
    with_features: bool = False,
) -> Dict[str, Any]:
  """``{'fid', 'kid_mean', 'kid_std', 'n_real', 'n_fake'}`` of two folders or .npz files.

  None where not computed. ``save_stats`` writes ``real``'s statistics before ``fake``
  is read; weights load only for a folder. Raises ``InputError`` (docs/fid.md).
  """
  extractor = []

  def get_extractor():
    if not extractor:
      try:
        extractor.append(fid_lib.FeatureExtractor(batch_size, weights=weights))
      except inception.WeightsNotFoundError as e:
        raise InputError(str(e)) from None
      except (ValueError, OSError) as e:
        raise InputError(f'cannot load the Inception weights: {e}') from None
    return extractor[0]

  real_side = load_source(real, get_extractor, batch_size, 'real')
  if save_stats:
    kept = real_side.features if with_features else None
    fid_lib.save_stats(
        save_stats, real_side.mu, real_side.sigma, features=kept, n=real_side.n
    )
  result = dict(fid=None, kid_mean=None, kid_std=None, n_real=real_side.n, n_fake=None)
  if fake is None:
    return result
  fake_side = load_source(fake, get_extractor, batch_size, 'fake')
  result['n_fake'] = fake_side.n
  if real_side.mu.shape != fake_side.mu.shape:
    raise InputError(
        f'feature dimensions differ: {real_side.mu.shape[0]} vs {fake_side.mu.shape[0]}'
    )
  try:
    result.update(
        fid_lib.fid_kid(
            vars(real_side),
            vars(fake_side),
            with_kid=kid,
            kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size,
        )
    )
  except ValueError as e:
    raise InputError(f'KID: {e}') from None
  return result
