"""Deterministic, resumable, host-sharded image batches for every dataset config.

Public API::

    make_iterator(data_config, batch_size, *, seed, start_step=0,
                  process_index=0, process_count=1,
                  image_dtype='float32') -> BatchIterator
    to_float(batch) -> batch   # uint8 images -> float32 [-1, 1], on the device
    dataset_info(data_config) -> dict
    DataError   # one-line, user-facing error (missing/corrupt data, bad config)

Helpers (also public): ``read_idx(path, ndim)``, ``resize_uint8(images, R,
resample)``, ``batch_indices(n, seed, step, global_batch, start, stop,
shuffle)``, ``list_image_files(root)``; and, for ``osgan_jax.prepare_data``
(which writes the ``prepared`` format this module reads): ``DataConfig``,
``make_source``, ``iterate_source``, ``read_json``, ``prepared_checksum``,
``RESAMPLE`` and the ``PREPARED_*`` file names.

`make_iterator` yields ``{'image': float32 [b, H, W, C] in [-1, 1],
'label': int32 [b]}`` forever, with ``b = batch_size // process_count``. With
``image_dtype='uint8'`` the images are the raw uint8 pixels instead (a quarter
of the bytes, no per-pixel work on the host); ``jax.jit(to_float)`` then gives
exactly the float32 batch on the device (``x * float32(1 / 127.5) - 1``). The
returned `BatchIterator` also has ``.step`` (index of the next global batch) and
``.skipped`` (how many unreadable images it replaced in the batches yielded so
far; only the ``folder`` source can have any), and ``.close()``.

Design: every source is a random-access source (``len`` + ``load(index)``) and
one index schedule maps ``(seed, step)`` to example indices. Global position
``p = step * batch_size + j`` belongs to epoch ``e = p // N`` and reads example
``perm(seed, e)[p % N]``, where ``perm`` is a numpy ``Generator`` permutation
seeded with ``SeedSequence([seed, e])``. Batches run across epoch boundaries
without dropping anything, so batch ``k`` is a pure function of ``(seed, k)``:
an iterator started at ``start_step=k`` yields exactly batches ``k, k+1, ...``
of one started at 0 (exact resume). Host ``process_index`` takes the contiguous
slice ``[process_index * b, (process_index + 1) * b)`` of the global batch and
loads only that slice. Batches are built in grain (``MapDataset`` over step
numbers, thread prefetch, optional worker processes), which keeps the order
deterministic whatever the number of threads or workers.

Config keys (``data_config``, an ``ml_collections.ConfigDict``; missing keys
take the default):

- ``name``: ``fashion_mnist`` | ``mnist`` | ``cifar10`` | ``celeb_a`` |
  ``lsun_church`` | ``folder`` | ``prepared``. Required.
- ``path`` (``''``): IDX directory (``fashion_mnist``/``mnist``), tfds
  ``data_dir`` (tfds sets; ``''`` = tfds default), image root (``folder``), or
  the ``--out`` directory of ``osgan_jax.prepare_data`` (``prepared``).
- ``resolution`` (required): output height = width. For ``prepared`` it must
  equal the prepared resolution (so must ``channels``).
- ``channels`` (required): 1 or 3. Grayscale is replicated to RGB, RGB goes to
  gray with PIL's ITU-R 601-2 luma; alpha is dropped (PIL ``convert``); palette
  images are expanded; 16/32-bit integer images are scaled to 8 bit.
- ``split`` (``'train'``): ``train``/``test`` for IDX; any tfds split string
  (e.g. ``'train[:90%]'``) for tfds sets. Ignored by ``folder`` and
  ``prepared`` (as are ``source``, ``center_crop`` and ``interpolation``: a
  prepared directory has them baked in).
- ``source`` (``'auto'``): ``idx`` | ``tfds`` | ``auto``. For ``fashion_mnist``
  auto means ``idx`` (offline, no TensorFlow); for ``mnist`` auto means ``idx``
  if the IDX files exist in ``path`` (or ``/usr/share/datasets/mnist``), else
  tfds. ``cifar10`` (32x32 RGB, 10 labelled classes), ``celeb_a`` and
  ``lsun_church`` (tfds ``lsun/church_outdoor``) are tfds only; images of any of
  them exported to a directory also work as ``folder`` (without labels).
- ``center_crop`` (``-1``): side of a centered square crop taken before
  resizing; 0 = none; -1 = per-dataset default: 108 for ``celeb_a`` (the
  DCGAN CelebA recipe: 108 center crop, then resize to 64), 0 otherwise. For
  CelebA images kept in a ``folder``, set it to 108 explicitly.
- ``interpolation`` (``''``): ``bilinear`` | ``bicubic`` | ``lanczos`` |
  ``nearest``; ``''`` = ``bilinear`` for the 28x28 sets, ``bicubic`` for the
  rest. All resizing is PIL's (antialiased when downscaling) on uint8 images,
  except the in-memory IDX path, which applies the same PIL triangle
  (bilinear) filter as separable float32 matrices to all images at once
  (agrees with PIL to 1 grey level) -- that path always uses bilinear.
  Non-square images: the centered square of side ``min(H, W)`` (after
  ``center_crop``; integer offsets ``(W - s) // 2``, ``(H - s) // 2``) is cropped,
  then resized to ``resolution`` -- "resize the shorter side, then center
  crop", without resampling twice.
- ``shuffle`` (``True``): per-epoch permutation; False = file/record order.
- ``num_threads`` (``4``): grain prefetch threads; each builds whole batches.
  0 = build batches synchronously in the calling thread.
- ``prefetch`` (``8``): batches buffered ahead (per process).
- ``num_workers`` (``0``): grain worker processes (``mp_prefetch``) for heavy
  decoding (e.g. FFHQ at 1024 px); 0 = none. The order stays deterministic.
- ``download`` (``False``): tfds sets only; let tfds download and prepare the
  data (``file_format='array_record'``). Preparation needs TensorFlow, so the
  default is to expect prepared array_record data in ``path``.

Sources:

- IDX (``fashion_mnist``; ``mnist`` when present): files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``path`` (default
  ``/usr/share/datasets/fashion-mnist``, from Debian's
  ``dataset-fashion-mnist``). Parsed with numpy (magic numbers and sizes
  validated), resized once up front, held in memory; nothing cached on disk.
- tfds: ``tfds.data_source`` (array_record random access, decoded with
  numpy/PIL, no TensorFlow needed at read time). Labels: the ``label`` feature
  where there is one (mnist, fashion_mnist, cifar10), else 0.
- ``folder``: every ``.png .jpg .jpeg .webp .bmp`` file (any letter case) below
  ``path``, recursively, in sorted relative-path order; label 0. Images are
  decoded lazily, per batch. An unreadable image is logged (once per path and
  process), counted in ``BatchIterator.skipped`` and replaced by the next
  readable index (wrapping around), so batch shapes never change.
- ``prepared``: a directory written once by ``python -m osgan_jax.prepare_data
  --source=... --resolution=R --channels=C --out=DIR`` from any source above:
  ``images.u8`` (raw uint8 ``[N, R, R, C]``, memory-mapped), ``labels.i32``
  (little-endian int32 ``[N]``) and ``meta.json`` (written last: its presence
  marks a complete preparation). Its pixels are bit-identical to what the
  decoding source yields (an unreadable folder image is stored as its
  replacement), so batch ``k`` is the same batch, with no decoding at all.
  Loading checks the file sizes and ``meta.json``'s checksum (header, first and
  last image, labels); ``dataset_info`` reads only ``meta.json`` and the sizes.

``dataset_info`` returns ``{'num_examples', 'resolution', 'channels',
'num_classes', 'source'}`` where ``resolution``/``channels`` describe the
output (what the iterator yields) and ``num_classes`` is 0 for unlabeled data;
it reads IDX headers, opens tfds array_record files, lists a folder, or reads a
prepared directory's ``meta.json`` -- it never decodes pixels.
"""

from __future__ import annotations

import abc
import concurrent.futures
import functools
import gzip
import hashlib
import json
import mmap
import os
import threading
import zlib
from collections.abc import Mapping
from typing import Optional, Sequence

import numpy as np
from absl import logging
from PIL import Image

__all__ = [
    "DataError",
    "BatchIterator",
    "make_iterator",
    "to_float",
    "dataset_info",
    "read_idx",
    "resize_uint8",
    "batch_indices",
    "list_image_files",
    "DataConfig",
    "make_source",
    "iterate_source",
    "read_json",
    "prepared_checksum",
    "RESAMPLE",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_IDX_DIRS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
TFDS_NAMES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "cifar10": "cifar10",
    "celeb_a": "celeb_a",
    "lsun_church": "lsun/church_outdoor",
}
_NAMES = (
    "fashion_mnist",
    "mnist",
    "cifar10",
    "celeb_a",
    "lsun_church",
    "folder",
    "prepared",
)
RESAMPLE = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


class DataError(Exception):
  """Data missing, unreadable or misconfigured; the message is one line for the user."""


# --------------------------------------------------------------------------- config


def _get(cfg, key, default):
  try:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def _default_center_crop(name: str) -> int:
  """``center_crop=-1`` for dataset `name`: the DCGAN CelebA recipe crops 108 px."""
  return 108 if name == "celeb_a" else 0


def _default_interpolation(name: str) -> str:
  """``interpolation=''`` for dataset `name`."""
  return "bilinear" if name in ("mnist", "fashion_mnist") else "bicubic"


class DataConfig:
  """Validated, defaulted view of ``data_config``."""

  def __init__(self, cfg):
    self.name = str(_get(cfg, "name", ""))
    if self.name not in _NAMES:
      raise DataError(f"data.name={self.name!r} is not one of {', '.join(_NAMES)}")
    self.path = os.path.expanduser(str(_get(cfg, "path", "")))
    self.resolution = int(_get(cfg, "resolution", 0))
    if self.resolution <= 0:
      raise DataError(f"data.resolution must be a positive int, got {self.resolution}")
    self.channels = int(_get(cfg, "channels", 0))
    if self.channels not in (1, 3):
      raise DataError(f"data.channels must be 1 or 3, got {self.channels}")
    self.split = str(_get(cfg, "split", "train")) or "train"
    self.source = str(_get(cfg, "source", "auto")) or "auto"
    if self.source not in ("auto", "idx", "tfds"):
      raise DataError(f"data.source must be 'auto', 'idx' or 'tfds', got {self.source!r}")
    center_crop = int(_get(cfg, "center_crop", -1))
    self.center_crop = _default_center_crop(self.name) if center_crop < 0 else center_crop
    interp = str(_get(cfg, "interpolation", "")) or _default_interpolation(self.name)
    if interp not in RESAMPLE:
      raise DataError(
          f"data.interpolation must be one of {', '.join(RESAMPLE)}, got {interp!r}"
      )
    self.interpolation = interp
    self.shuffle = bool(_get(cfg, "shuffle", True))
    self.num_threads = int(_get(cfg, "num_threads", 4))
    self.prefetch = int(_get(cfg, "prefetch", 8))
    self.num_workers = int(_get(cfg, "num_workers", 0))
    self.download = bool(_get(cfg, "download", False))


# --------------------------------------------------------------------------- image ops


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
  """Converts any PIL image to 'L' (channels=1) or 'RGB' (channels=3)."""
  if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grayscale
    arr = np.asarray(img).astype(np.float64)
    peak = arr.max(initial=0.0)
    if img.mode.startswith("I;16") or peak > 255:
      arr = arr * (255.0 / 65535.0)
    elif img.mode == "F" and peak <= 1.0:
      arr = arr * 255.0
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
  target = "L" if channels == 1 else "RGB"
  if img.mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")  # avoids PIL's warning; alpha is then dropped below
  return img if img.mode == target else img.convert(target)


def _fit(
    img: Image.Image, resolution: int, center_crop: int, resample: int
) -> Image.Image:
  """Optional center crop, then the centered square of side min(h, w) resized to resolution."""
  w, h = img.size
  left, top, right, bottom = 0, 0, w, h
  if center_crop > 0:
    c = min(center_crop, w, h)
    left, top = (w - c) // 2, (h - c) // 2
    right, bottom = left + c, top + c
  bw, bh = right - left, bottom - top
  s = min(bw, bh)
  left, top = left + (bw - s) // 2, top + (bh - s) // 2
  box = (left, top, left + s, top + s)
  if box != (0, 0, w, h):
    img = img.crop(
        box
    )  # crop first: PIL's resize(box=...) would filter across the box edge
  if s == resolution:
    return img
  return img.resize((resolution, resolution), resample=resample)


def _pil_to_array(img: Image.Image) -> np.ndarray:
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def _array_to_pil(arr: np.ndarray) -> Image.Image:
  arr = np.asarray(arr)
  if arr.dtype != np.uint8:
    raise DataError(f"expected uint8 images from the data source, got {arr.dtype}")
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim == 2:
    return Image.fromarray(arr, "L")
  if arr.ndim == 3 and arr.shape[-1] in (3, 4):
    return Image.fromarray(arr, "RGB" if arr.shape[-1] == 3 else "RGBA")
  raise DataError(f"unsupported image shape {arr.shape} from the data source")


def _resize_rows(images: np.ndarray, width: int, resample: int) -> np.ndarray:
  """PIL horizontal resampling pass of uint8 [N, H, W] -> [N, H, width] on one tall image."""
  n, h, w = images.shape
  tall = Image.fromarray(np.ascontiguousarray(images).reshape(n * h, w), "L")
  return np.asarray(tall.resize((width, n * h), resample)).reshape(n, h, width)


def resize_uint8(
    images: np.ndarray, resolution: int, resample: int = Image.BILINEAR
) -> np.ndarray:
  """Resizes uint8 [N, H, W] images to [N, R, R], bit-identical to per-image PIL ``resize``.

  PIL resamples separably (a horizontal pass into a uint8 image, then a vertical
  pass). Running each pass over many images stacked into one tall image gives
  exactly the same pixels as resizing image by image, at a fraction of the
  Python overhead; chunks run in a thread pool (PIL releases the GIL).
  """
  n, h, w = images.shape
  if h == resolution and w == resolution:
    return images

  def one(chunk):
    rows = _resize_rows(chunk, resolution, resample)  # [m, h, R]
    cols = _resize_rows(rows.transpose(0, 2, 1), resolution, resample)  # [m, R(w), R(h)]
    return cols.transpose(0, 2, 1)

  chunks = [images[i : i + 4096] for i in range(0, n, 4096)]
  workers = min(len(chunks), os.cpu_count() or 1)
  if workers <= 1:
    return np.concatenate([one(c) for c in chunks]) if chunks else images.copy()
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return np.concatenate(list(pool.map(one, chunks)))


# --------------------------------------------------------------------------- IDX


_IDX_DTYPES = {0x08: np.uint8}


def _open_idx(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _idx_header(f, path: str, ndim: int) -> tuple:
  head = f.read(4)
  if len(head) < 4 or head[0] != 0 or head[1] != 0:
    raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
  if head[2] not in _IDX_DTYPES:
    raise DataError(
        f"{path}: unsupported IDX element type 0x{head[2]:02x} (only unsigned byte)"
    )
  if head[3] != ndim:
    raise DataError(f"{path}: IDX file has {head[3]} dimensions, expected {ndim}")
  dims_raw = f.read(4 * ndim)
  if len(dims_raw) < 4 * ndim:
    raise DataError(f"{path}: truncated IDX header")
  return tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))


def read_idx(path: str, ndim: int) -> np.ndarray:
  """Reads an unsigned-byte IDX file (optionally gzipped) with `ndim` dimensions.

  Raises DataError for a missing, truncated, corrupt or mis-typed file.
  """
  try:
    with _open_idx(path) as f:
      dims = _idx_header(f, path, ndim)
      count = int(np.prod(dims, dtype=np.int64))
      data = f.read(count + 1)
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    raise DataError(
        f"{path}: unreadable or truncated ({type(e).__name__}: {e})"
    ) from None
  if len(data) != count:
    if len(data) < count:
      raise DataError(
          f"{path}: IDX file truncated (shape {dims} needs {count} data bytes, found {len(data)})"
      )
    raise DataError(
        f"{path}: IDX file has trailing bytes after the {count} data bytes of shape {dims}"
    )
  return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _idx_files(directory: str, split: str) -> Optional[tuple]:
  """(images, labels) paths for `split` in `directory`, or None if absent."""
  prefix = {"train": "train", "test": "t10k"}.get(split)
  if prefix is None:
    raise DataError(
        f"data.split={split!r} is not available from IDX files (use 'train' or 'test')"
    )
  found = []
  for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
    for candidate in (stem + ".gz", stem):
      if os.path.isfile(os.path.join(directory, candidate)):
        found.append(os.path.join(directory, candidate))
        break
    else:
      return None
  return tuple(found)


def _idx_missing_error(cfg: DataConfig, directory: str) -> DataError:
  stem = {"train": "train", "test": "t10k"}[cfg.split]
  files = f"{stem}-images-idx3-ubyte.gz and {stem}-labels-idx1-ubyte.gz"
  if cfg.name == "fashion_mnist":
    hint = (
        "install them with `sudo apt-get install dataset-fashion-mnist`, point data.path at a "
        "directory holding them, or set data.source='tfds'"
    )
  else:
    hint = "point data.path at a directory holding them, or set data.source='tfds'"
  return DataError(f"{cfg.name}: IDX files {files} not found in {directory}; {hint}")


# --------------------------------------------------------------------------- sources


class _ArraySource:
  """In-memory uint8 images already at the output size (IDX data)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, channels: int):
    self.images = (
        images  # [N, R, R] uint8, grayscale; replicated per batch if channels == 3
    )
    self.labels = labels.astype(np.int32)
    self.channels = channels

  def __len__(self):
    return len(self.images)

  def load_batch(self, indices: np.ndarray):
    images = self.images[indices][..., None]
    if self.channels == 3:
      images = np.repeat(images, 3, axis=-1)
    return images, self.labels[indices], 0


class _LazySource(abc.ABC):
  """Base for sources decoded one example at a time, with skip-and-replace."""

  resolution: int
  channels: int

  @abc.abstractmethod
  def __len__(self):
    """Number of examples."""

  @abc.abstractmethod
  def load(self, index: int):
    """(uint8 [R, R, C], label) or None if the example is unreadable."""

  def load_batch(self, indices: np.ndarray):
    n = len(self)
    images = np.empty(
        (len(indices), self.resolution, self.resolution, self.channels), np.uint8
    )
    labels = np.empty((len(indices),), np.int32)
    skipped = 0
    for k, index in enumerate(indices):
      for attempt in range(n):
        example = self.load((int(index) + attempt) % n)
        if example is not None:
          break
        skipped += 1
      else:
        raise DataError(f"{self.describe()}: none of its {n} images could be read")
      images[k], labels[k] = example
    return images, labels, skipped

  def describe(self) -> str:
    return type(self).__name__


class _FolderSource(_LazySource):

  def __init__(self, root: str, cfg: DataConfig, files: Sequence[str]):
    self.root = root
    self.files = list(files)
    self.resolution = cfg.resolution
    self.channels = cfg.channels
    self.center_crop = cfg.center_crop
    self.resample = RESAMPLE[cfg.interpolation]

  def __len__(self):
    return len(self.files)

  def describe(self):
    return f"image folder {self.root}"

  def load(self, index):
    path = os.path.join(self.root, self.files[index])
    try:
      with Image.open(path) as img:
        img.load()
        img = _to_mode(img, self.channels)
      img = _fit(img, self.resolution, self.center_crop, self.resample)
      return _pil_to_array(img), 0
    except Exception as e:  # PIL raises many types for corrupt files
      _warn_unreadable(path, e)
      return None


_warned_lock = threading.Lock()
_warned: set = set()


def _warn_unreadable(path: str, err: Exception) -> None:
  with _warned_lock:
    if path in _warned:
      return
    _warned.add(path)
  logging.warning(
      "data: skipping unreadable image %s (%s: %s)", path, type(err).__name__, err
  )


class _TfdsSource(_LazySource):

  def __init__(self, data_source, cfg: DataConfig, has_label: bool, description: str):
    self.ds = data_source
    self.has_label = has_label
    self.resolution = cfg.resolution
    self.channels = cfg.channels
    self.center_crop = cfg.center_crop
    self.resample = RESAMPLE[cfg.interpolation]
    self.description = description

  def __len__(self):
    return len(self.ds)

  def describe(self):
    return self.description

  def load(self, index):
    example = self.ds[index]
    img = _to_mode(_array_to_pil(example["image"]), self.channels)
    img = _fit(img, self.resolution, self.center_crop, self.resample)
    label = int(example["label"]) if self.has_label else 0
    return _pil_to_array(img), label


def list_image_files(root: str) -> list:
  """Sorted relative paths of image files under root (recursive, case-insensitive)."""
  out = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    for fn in filenames:
      if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."):
        out.append(os.path.relpath(os.path.join(dirpath, fn), root))
  out.sort()
  return out


def _folder_files(cfg: DataConfig) -> list:
  if not cfg.path:
    raise DataError(
        "data.name='folder' needs data.path (a directory of .png/.jpg/.jpeg/.webp/.bmp images)"
    )
  if not os.path.isdir(cfg.path):
    raise DataError(
        f"image folder {cfg.path} does not exist or is not a directory (set data.path)"
    )
  files = list_image_files(cfg.path)
  if not files:
    raise DataError(
        f"image folder {cfg.path} contains no images ({' '.join(IMAGE_EXTENSIONS)}, searched recursively)"
    )
  return files


def _use_idx(cfg: DataConfig) -> Optional[str]:
  """Directory to read IDX files from, or None to use tfds."""
  if cfg.name not in ("fashion_mnist", "mnist"):
    if cfg.source == "idx":
      raise DataError(
          f"data.source='idx' is only available for mnist and fashion_mnist, not {cfg.name}"
      )
    return None
  if cfg.source == "tfds":
    return None
  directory = cfg.path or DEFAULT_IDX_DIRS[cfg.name]
  if (
      cfg.name == "mnist"
      and cfg.source == "auto"
      and _idx_files(directory, cfg.split) is None
  ):
    return None  # mnist falls back to tfds (path, if any, is then the tfds data_dir)
  return directory


def _idx_paths(cfg: DataConfig, directory: str) -> tuple:
  paths = _idx_files(directory, cfg.split)
  if paths is None:
    raise _idx_missing_error(cfg, directory)
  return paths


def _load_idx(cfg: DataConfig, directory: str) -> _ArraySource:
  image_path, label_path = _idx_paths(cfg, directory)
  images = read_idx(image_path, 3)
  labels = read_idx(label_path, 1)
  if len(images) != len(labels):
    raise DataError(
        f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels"
    )
  images = resize_uint8(images, cfg.resolution, RESAMPLE[cfg.interpolation])
  return _ArraySource(images, labels, cfg.channels)


def _open_tfds(cfg: DataConfig):
  import tensorflow_datasets as tfds  # lazy: only the tfds path pays for the import

  name = TFDS_NAMES[cfg.name]
  kwargs: dict = {"split": cfg.split, "download": cfg.download}
  if cfg.path:
    kwargs["data_dir"] = cfg.path
  where = cfg.path or "the default tfds data_dir"
  try:
    ds = tfds.data_source(name, **kwargs)
  except (
      Exception
  ) as e:  # tfds raises assorted types (NotImplementedError for tfrecord, AssertionError, ...)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(
        f"tfds dataset {name!r} (split {cfg.split!r}) is not available as array_record in {where}: "
        f"prepare it with `tfds build {name} --file_format=array_record --data_dir=DIR` and set data.path=DIR, "
        f"or set data.download=True ({type(e).__name__}: {first})"
    ) from None
  features = ds.dataset_info.features
  has_label = "label" in features
  num_classes = int(getattr(features["label"], "num_classes", 0) or 0) if has_label else 0
  return ds, has_label, num_classes, f"tfds {name}[{cfg.split}]"


# --------------------------------------------------------------------------- prepared

PREPARED_FORMAT = "osgan_jax.prepared"
PREPARED_VERSION = 1
PREPARED_META = "meta.json"
PREPARED_IMAGES = "images.u8"
PREPARED_LABELS = "labels.i32"
PREPARED_PROGRESS = "progress.json"
_PREPARED_KEYS = {
    "format": str,
    "version": int,
    "num_examples": int,
    "resolution": int,
    "channels": int,
    "num_classes": int,
    "dtype": str,
    "label_dtype": str,
    "source": str,
    "spec": dict,
    "skipped": int,
    "checksum": str,
}


def prepared_checksum(header: dict, first: bytes, last: bytes, labels: bytes) -> str:
  """sha256 of the header fields (all but the checksum), the first and last image and all labels.

  Cheap enough to check at every start, unlike hashing gigabytes of pixels; it
  catches an edited header, a swapped or regenerated images file and changed
  labels (a truncated file is caught by its size).
  """
  h = hashlib.sha256()
  fields = {k: v for k, v in header.items() if k != "checksum"}
  h.update(json.dumps(fields, sort_keys=True).encode())
  for part in (first, last, labels):
    h.update(len(part).to_bytes(8, "little"))
    h.update(part)
  return "sha256:" + h.hexdigest()


def _prepare_command(spec: dict, out: str, resolution: int = 0, channels: int = 0) -> str:
  """The prepare_data command that writes `spec` (at another size, if given) into `out`."""
  import shlex

  name = spec.get("name", "")
  args = [
      f"--source={spec.get('source', 'SOURCE')}",
      f"--resolution={resolution or spec.get('resolution')}",
      f"--channels={channels or spec.get('channels')}",
  ]
  if name != "folder" and spec.get("split", "train") != "train":
    args.append(f"--split={spec['split']}")
  if spec.get("center_crop", _default_center_crop(name)) != _default_center_crop(name):
    args.append(f"--center_crop={spec['center_crop']}")
  if spec.get("interpolation", _default_interpolation(name)) != _default_interpolation(
      name
  ):
    args.append(f"--interpolation={spec['interpolation']}")
  if spec.get("data_dir"):
    args.append(f"--data_dir={spec['data_dir']}")
  args.append(f"--out={out}")
  return "python -m osgan_jax.prepare_data " + " ".join(shlex.quote(a) for a in args)


def read_json(path: str) -> Optional[dict]:
  """The JSON object in `path`, or None if it is absent or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def _read_prepared(cfg: DataConfig) -> dict:
  """meta.json of the prepared directory ``data.path``, checked against the file sizes and the config."""
  d = cfg.path
  generic = (
      f"python -m osgan_jax.prepare_data --source=SOURCE --resolution={cfg.resolution} "
      f"--channels={cfg.channels} --out={d or 'DIR'}"
  )
  if not d:
    raise DataError(
        f"data.name='prepared' needs data.path, the --out directory of `{generic}`"
    )
  meta_path = os.path.join(d, PREPARED_META)
  if not os.path.isfile(meta_path):
    if not os.path.isdir(d):
      raise DataError(
          f"prepared data directory {d} does not exist; write it with `{generic}`"
      )
    progress = read_json(os.path.join(d, PREPARED_PROGRESS))
    if progress is not None and isinstance(progress.get("spec"), dict):
      raise DataError(
          f"the preparation of {d} is incomplete ({progress.get('done', 0)} of "
          f"{progress.get('num_examples', '?')} images, no {PREPARED_META}); rerun "
          f"`{_prepare_command(progress['spec'], d)}` to finish it"
      )
    raise DataError(
        f"{d} holds no prepared data (no {PREPARED_META}); write it with `{generic}`"
    )
  meta = read_json(meta_path)
  problem = "not a JSON object" if meta is None else None
  if meta is not None:
    wrong = [k for k, t in _PREPARED_KEYS.items() if not isinstance(meta.get(k), t)]
    if wrong:
      problem = f"missing or mistyped {', '.join(wrong)}"
    elif (meta["format"], meta["version"]) != (PREPARED_FORMAT, PREPARED_VERSION):
      problem = f"format {meta['format']!r} version {meta['version']}, expected {PREPARED_FORMAT!r} version {PREPARED_VERSION}"
    elif (meta["dtype"], meta["label_dtype"]) != ("uint8", "<i4"):
      problem = f"dtype {meta['dtype']!r} / label_dtype {meta['label_dtype']!r}, expected 'uint8' / '<i4'"
    elif min(meta["num_examples"], meta["resolution"]) <= 0 or meta["channels"] not in (
        1,
        3,
    ):
      problem = "bad shape"
  if problem:
    raise DataError(
        f"{meta_path}: corrupt header ({problem}); delete {d} and write it again with `{generic}`"
    )
  n, r, c = meta["num_examples"], meta["resolution"], meta["channels"]
  redo = _prepare_command(meta["spec"], d)
  for name, expected in ((PREPARED_IMAGES, n * r * r * c), (PREPARED_LABELS, 4 * n)):
    path = os.path.join(d, name)
    size = os.path.getsize(path) if os.path.isfile(path) else None
    if size != expected:
      have = "missing" if size is None else f"{size} bytes"
      raise DataError(
          f"{path} is {have}, expected {expected} bytes for {n} images of {r}x{r}x{c} "
          f"(truncated or modified); delete {d} and write it again with `{redo}`"
      )
  if (r, c) != (cfg.resolution, cfg.channels):
    raise DataError(
        f"{d} holds {r}x{r}x{c} images (resolution={r}, channels={c}, prepared from "
        f"{meta['source']}) but the config asks for data.resolution={cfg.resolution}, "
        f"data.channels={cfg.channels}: set data.resolution={r} data.channels={c}, or prepare "
        f"that size with `{_prepare_command(meta['spec'], 'NEW_DIR', cfg.resolution, cfg.channels)}`"
        f" and set data.path=NEW_DIR"
    )
  return meta


class _PreparedSource:
  """Memory-mapped uint8 [N, R, R, C] images of a prepared directory: a batch is one gather, no decoding."""

  def __init__(self, directory: str, meta: dict):
    self.directory = directory
    self.meta = meta
    self._map()

  def _map(self):
    n, r, c = self.meta["num_examples"], self.meta["resolution"], self.meta["channels"]
    with open(os.path.join(self.directory, PREPARED_IMAGES), "rb") as f:
      buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    self.images = np.frombuffer(buf, np.uint8).reshape(n, r, r, c)
    self.labels = np.fromfile(
        os.path.join(self.directory, PREPARED_LABELS), "<i4"
    ).astype(np.int32)

  def __getstate__(
      self,
  ):  # grain worker processes map the file themselves rather than get a copy
    return {"directory": self.directory, "meta": self.meta}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._map()

  def __len__(self):
    return len(self.labels)

  def verify(self) -> None:
    """Checks meta.json's checksum against the mapped files."""
    got = prepared_checksum(
        self.meta,
        self.images[0].tobytes(),
        self.images[-1].tobytes(),
        self.labels.astype("<i4").tobytes(),
    )
    if got != self.meta["checksum"]:
      raise DataError(
          f"{self.directory}: checksum mismatch between {PREPARED_META} and the image/label "
          f"files (modified or corrupted); delete it and write it again with "
          f"`{_prepare_command(self.meta['spec'], self.directory)}`"
      )

  def load_batch(self, indices: np.ndarray):
    return self.images[indices], self.labels[indices], 0


def make_source(cfg: DataConfig):
  """(source, source kind, num_classes)."""
  if cfg.name == "prepared":
    source = _PreparedSource(cfg.path, _read_prepared(cfg))
    source.verify()
    return source, "prepared", source.meta["num_classes"]
  if cfg.name == "folder":
    return _FolderSource(cfg.path, cfg, _folder_files(cfg)), "folder", 0
  directory = _use_idx(cfg)
  if directory is not None:
    return _load_idx(cfg, directory), "idx", 10
  ds, has_label, num_classes, desc = _open_tfds(cfg)
  if len(ds) == 0:
    raise DataError(f"{desc} is empty")
  return _TfdsSource(ds, cfg, has_label, desc), "tfds", num_classes


def dataset_info(data_config) -> dict:
  """{'num_examples', 'resolution', 'channels', 'num_classes', 'source'} without decoding pixels."""
  cfg = DataConfig(data_config)
  out = {"resolution": cfg.resolution, "channels": cfg.channels}
  if cfg.name == "prepared":
    meta = _read_prepared(cfg)
    return {
        **out,
        "num_examples": meta["num_examples"],
        "num_classes": meta["num_classes"],
        "source": "prepared",
    }
  if cfg.name == "folder":
    return {
        **out,
        "num_examples": len(_folder_files(cfg)),
        "num_classes": 0,
        "source": "folder",
    }
  directory = _use_idx(cfg)
  if directory is not None:
    image_path, label_path = _idx_paths(cfg, directory)
    try:
      with _open_idx(image_path) as f:
        n = _idx_header(f, image_path, 3)[0]
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f"{image_path}: unreadable ({type(e).__name__}: {e})") from None
    return {**out, "num_examples": n, "num_classes": 10, "source": "idx"}
  ds, _, num_classes, _ = _open_tfds(cfg)
  return {**out, "num_examples": len(ds), "num_classes": num_classes, "source": "tfds"}


# --------------------------------------------------------------------------- schedule


@functools.lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
  perm = rng.permutation(n)
  perm.flags.writeable = False
  return perm


def batch_indices(
    n: int,
    seed: int,
    step: int,
    global_batch: int,
    start: int,
    stop: int,
    shuffle: bool = True,
) -> np.ndarray:
  """Example indices of positions [start, stop) of global batch `step` (see module doc)."""
  positions = step * global_batch + np.arange(start, stop, dtype=np.int64)
  if not shuffle:
    return positions % n
  epochs = positions // n
  out = np.empty_like(positions)
  for epoch in np.unique(epochs):
    mask = epochs == epoch
    out[mask] = _epoch_permutation(n, seed, int(epoch))[positions[mask] % n]
  return out


class _MakeBatch:
  """step -> this host's batch (a picklable callable for grain workers)."""

  def __init__(
      self, source, seed, global_batch, start, stop, shuffle, image_dtype="float32"
  ):
    self.source = source
    self.seed = seed
    self.global_batch = global_batch
    self.start, self.stop = start, stop
    self.shuffle = shuffle
    self.image_dtype = image_dtype

  def __call__(self, step: int) -> dict:
    idx = batch_indices(
        len(self.source),
        self.seed,
        int(step),
        self.global_batch,
        self.start,
        self.stop,
        self.shuffle,
    )
    images, labels, skipped = self.source.load_batch(idx)
    if self.image_dtype == "uint8":
      images = np.ascontiguousarray(images, np.uint8)
    else:
      images = images.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)
    return {
        "image": images,
        "label": np.asarray(labels, np.int32),
        "skipped": np.int64(skipped),
    }


# The host path's formula for each of the 256 pixel values. Looking them up keeps
# the device result bit-identical to it: compiled, ``x * s - 1`` may become one
# fused multiply-add that rounds once instead of twice (XLA:CPU does this; 255
# then maps to 1.0000001).
_UINT8_TO_FLOAT = np.arange(256, dtype=np.uint8).astype(np.float32) * np.float32(
    1.0 / 127.5
) - np.float32(1.0)


def to_float(batch: dict) -> dict:
  """``batch`` with a uint8 ``'image'`` mapped to float32 in [-1, 1]; anything else unchanged.

  For ``make_iterator(..., image_dtype='uint8')`` batches: under ``jax.jit`` the
  conversion runs on the device and gives exactly the ``image_dtype='float32'``
  batch, ``x.astype(float32) * float32(1 / 127.5) - float32(1)``, whatever the
  backend fuses. The output keeps the image's sharding.
  """
  import jax
  import jax.numpy as jnp

  image = batch.get("image") if isinstance(batch, Mapping) else None
  if image is None or image.dtype != np.uint8:
    return batch
  out = dict(batch)
  index = jnp.asarray(image).astype(jnp.int32)
  out["image"] = (
      jnp.asarray(_UINT8_TO_FLOAT)
      .at[index]
      .get(mode="promise_in_bounds", out_sharding=jax.typeof(index).sharding)
  )
  return out


class BatchIterator:
  """Infinite iterator of host batches; `.step` is the next global batch, `.skipped` a counter."""

  def __init__(self, dataset, start_step: int, info: dict):
    self._dataset = dataset
    self._it = iter(dataset)
    self.step = start_step
    self.skipped = 0
    self.info = info

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    self.skipped += int(batch.pop("skipped"))
    self.step += 1
    return batch

  def close(self) -> None:
    """Stops prefetch threads / worker processes (best effort)."""
    it, self._it = self._it, iter(())
    close = getattr(it, "close", None)
    if close is not None:
      close()


_MAX_STEPS = 2**62


def _ignore_sigint(worker_index: int, worker_count: int) -> None:
  """Grain workers leave Ctrl-C to the main process, which stops them.

  A terminal's Ctrl-C reaches the whole process group: workers killed by it
  mid-batch would turn the main process's clean stop (a checkpoint, a resume
  message) into a "worker terminated unexpectedly" crash.
  """
  import signal

  signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_iterator(
    data_config,
    batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    image_dtype: str = "float32",
) -> BatchIterator:
  """Yields {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]} forever.

  image_dtype='uint8' yields the raw uint8 pixels instead, for the training
  loop to convert on the device with `to_float`.

  b = batch_size // process_count (this host's share: the contiguous slice
  process_index of the global batch). Deterministic in (seed, step): the
  iterator started at start_step=k yields exactly the batches an iterator
  started at 0 yields from its k-th batch on. Raises DataError for missing or
  unusable data and ValueError for bad arguments.
  """
  if batch_size <= 0 or process_count <= 0 or batch_size % process_count:
    raise ValueError(
        f"batch_size={batch_size} must be a positive multiple of process_count={process_count}"
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  if image_dtype not in ("float32", "uint8"):
    raise ValueError(f"image_dtype must be 'float32' or 'uint8', got {image_dtype!r}")
  cfg = DataConfig(data_config)
  source, kind, num_classes = make_source(cfg)
  return iterate_source(
      source,
      kind,
      num_classes,
      cfg,
      batch_size,
      seed,
      start_step,
      process_index,
      process_count,
      image_dtype,
  )


def iterate_source(
    source,
    kind: str,
    num_classes: int,
    cfg: DataConfig,
    batch_size: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
    image_dtype: str,
) -> BatchIterator:
  """make_iterator over an opened source (prepare_data reuses the source for its last chunk)."""
  import grain

  per_host = batch_size // process_count
  make_batch = _MakeBatch(
      source,
      int(seed) % 2**63,
      batch_size,
      process_index * per_host,
      (process_index + 1) * per_host,
      cfg.shuffle,
      image_dtype,
  )
  ds = grain.MapDataset.range(start_step, _MAX_STEPS).map(make_batch)
  ds = ds.to_iter_dataset(
      grain.ReadOptions(
          num_threads=max(cfg.num_threads, 0), prefetch_buffer_size=max(cfg.prefetch, 1)
      )
  )
  if cfg.num_workers > 0:
    from absl import flags

    if (
        not flags.FLAGS.is_parsed()
    ):  # grain reads its absl flags; outside absl.app use defaults
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=cfg.num_workers,
            per_worker_buffer_size=max(cfg.prefetch // cfg.num_workers, 1),
        ),
        worker_init_fn=_ignore_sigint,
    )
  info = {
      "num_examples": len(source),
      "resolution": cfg.resolution,
      "channels": cfg.channels,
      "num_classes": num_classes,
      "source": kind,
  }
  return BatchIterator(ds, start_step, info)
