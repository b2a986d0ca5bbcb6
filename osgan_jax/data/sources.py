"""The decoding sources: IDX files, folders of images and tfds data sources.

Each one is random access (``len`` and ``load_batch(indices)``), so one index schedule
serves them all. Here too: ``DataError`` and ``DataConfig``, the validated view of
``data_config`` that every module of the data layer reads. The ``prepared`` source is
in ``prepared.py``; docs/data.md describes what each source reads.
"""

from __future__ import annotations

import abc
import gzip
import os
import threading
import zlib
from typing import NamedTuple, Optional, Sequence

import numpy as np
from absl import logging
from PIL import Image

from osgan_jax.data.images import RESAMPLE, fit, pil_to_array, resize_uint8, to_mode

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


class DataError(Exception):
  """Data missing, unreadable or misconfigured; the message is one line for the user."""


class OpenedSource(NamedTuple):
  """A source ready for batches: what ``make_source`` returns."""

  source: object  # len(source) examples; source.load_batch(indices) -> (images, labels, skipped)
  kind: str  # 'idx', 'tfds', 'folder' or 'prepared'
  num_classes: int  # 0 for unlabeled data


def _get(cfg, key, default):
  try:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def default_center_crop(name: str) -> int:
  """``center_crop=-1`` for dataset `name`: the DCGAN CelebA recipe crops 108 px."""
  return 108 if name == "celeb_a" else 0


def default_interpolation(name: str) -> str:
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
    if center_crop < -1:
      raise DataError(
          f"data.center_crop must be >= -1 (-1: the default, 0: none), got {center_crop}"
      )
    self.center_crop = default_center_crop(self.name) if center_crop < 0 else center_crop
    interp = str(_get(cfg, "interpolation", "")) or default_interpolation(self.name)
    if interp not in RESAMPLE:
      raise DataError(
          f"data.interpolation must be one of {', '.join(RESAMPLE)}, got {interp!r}"
      )
    self.interpolation = interp
    self.shuffle = bool(_get(cfg, "shuffle", True))
    self.limit = int(_get(cfg, "limit", 0))
    if self.limit < 0:
      raise DataError(f"data.limit must be >= 0 (0: all), got {self.limit}")
    self.xflip = bool(_get(cfg, "xflip", False))
    self.num_threads = int(_get(cfg, "num_threads", 4))
    self.prefetch = int(_get(cfg, "prefetch", 8))
    self.num_workers = int(_get(cfg, "num_workers", 0))
    self.download = bool(_get(cfg, "download", False))


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
  dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
  if 0 in dims:
    raise DataError(f"{path}: the IDX header has an empty dimension {dims}: no data")
  return dims


def _read_at_most(f, count: int, chunk: int = 64 << 20) -> bytes:
  """Up to ``count`` bytes, in chunks: a header that claims more than the file holds
  costs no memory."""
  parts, left = [], count
  while left > 0:
    part = f.read(min(chunk, left))
    if not part:
      break
    parts.append(part)
    left -= len(part)
  return b"".join(parts)


def read_idx(path: str, ndim: int) -> np.ndarray:
  """An unsigned-byte IDX file (gzipped or not) of `ndim` dimensions; DataError if bad."""
  try:
    with _open_idx(path) as f:
      dims = _idx_header(f, path, ndim)
      count = int(np.prod(dims, dtype=np.int64))
      data = _read_at_most(f, count + 1)
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    raise DataError(
        f"{path}: unreadable or truncated ({type(e).__name__}: {e})"
    ) from None
  if len(data) < count:
    raise DataError(
        f"{path}: IDX file truncated (shape {dims} needs {count} data bytes, found {len(data)})"
    )
  if len(data) > count:
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


def _idx_paths(cfg: DataConfig, directory: str) -> tuple:
  paths = _idx_files(directory, cfg.split)
  if paths is not None:
    return paths
  stem = {"train": "train", "test": "t10k"}[cfg.split]
  files = f"{stem}-images-idx3-ubyte.gz and {stem}-labels-idx1-ubyte.gz"
  hint = "point data.path at a directory holding them, or set data.source='tfds'"
  if cfg.name == "fashion_mnist":
    hint = f"install them with `sudo apt-get install dataset-fashion-mnist`, {hint}"
  raise DataError(f"{cfg.name}: IDX files {files} not found in {directory}; {hint}")


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


class _ArraySource:
  """In-memory uint8 images already at the output size (IDX data)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, channels: int):
    # [N, R, R] uint8, grayscale; replicated per batch if channels == 3.
    self.images = images
    self.labels = labels.astype(np.int32)
    self.channels = channels

  def __len__(self):
    return len(self.images)

  def load_batch(self, indices: np.ndarray):
    images = self.images[indices][..., None]
    if self.channels == 3:
      images = np.repeat(images, 3, axis=-1)
    return images, self.labels[indices], 0


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


def _idx_count(cfg: DataConfig, directory: str) -> int:
  """Number of images, from the IDX header alone."""
  image_path, _ = _idx_paths(cfg, directory)
  try:
    with _open_idx(image_path) as f:
      return _idx_header(f, image_path, 3)[0]
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"{image_path}: unreadable ({type(e).__name__}: {e})") from None


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
        img = to_mode(img, self.channels)
      if 8 * min(img.size) < self.resolution:
        raise ValueError(
            f"{img.size[0]}x{img.size[1]} is too small for data.resolution="
            f"{self.resolution} (more than 8x upscaling)"
        )
      img = fit(img, self.resolution, self.center_crop, self.resample)
      return pil_to_array(img), 0
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
  why = f"{type(err).__name__}: {err}"
  logging.warning("data: skipping unreadable image %s (%s)", path, why)


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
    img = to_mode(_array_to_pil(example["image"]), self.channels)
    img = fit(img, self.resolution, self.center_crop, self.resample)
    label = int(example["label"]) if self.has_label else 0
    return pil_to_array(img), label


def _open_tfds(cfg: DataConfig):
  # Lazy: tensorflow_datasets is heavy, and only the tfds sets need it.
  import tensorflow_datasets as tfds

  name = TFDS_NAMES[cfg.name]
  kwargs: dict = {"split": cfg.split, "download": cfg.download}
  if cfg.path:
    kwargs["data_dir"] = cfg.path
  where = cfg.path or "the default tfds data_dir"
  try:
    ds = tfds.data_source(name, **kwargs)
  except Exception as e:  # tfds raises assorted types (NotImplementedError, ...)
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


def open_source(cfg: DataConfig) -> OpenedSource:
  """Opens the decoding source of `cfg` (any data.name but 'prepared')."""
  if cfg.name == "prepared":
    raise ValueError("open_source reads the decoding sources; use prepared.open_prepared")
  if cfg.name == "folder":
    return OpenedSource(_FolderSource(cfg.path, cfg, _folder_files(cfg)), "folder", 0)
  directory = _use_idx(cfg)
  if directory is not None:
    return OpenedSource(_load_idx(cfg, directory), "idx", 10)
  ds, has_label, num_classes, desc = _open_tfds(cfg)
  if len(ds) == 0:
    raise DataError(f"{desc} is empty")
  return OpenedSource(_TfdsSource(ds, cfg, has_label, desc), "tfds", num_classes)


def source_info(cfg: DataConfig) -> dict:
  """``dataset_info`` of a decoding source: headers, listings and tfds metadata only."""
  if cfg.name == "prepared":
    raise ValueError("source_info reads the decoding sources; use prepared.read_meta")
  out = {"resolution": cfg.resolution, "channels": cfg.channels}
  if cfg.name == "folder":
    n = len(_folder_files(cfg))
    return {**out, "num_examples": n, "num_classes": 0, "source": "folder"}
  directory = _use_idx(cfg)
  if directory is not None:
    n = _idx_count(cfg, directory)
    return {**out, "num_examples": n, "num_classes": 10, "source": "idx"}
  ds, _, num_classes, _ = _open_tfds(cfg)
  return {**out, "num_examples": len(ds), "num_classes": num_classes, "source": "tfds"}
