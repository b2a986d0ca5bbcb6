"""Decodes a dataset once into raw uint8 pixels that training reads without decoding.

    python -m osgan_jax.prepare_data --source=folder:/data/celeba --center_crop=108 \\
        --resolution=64 --channels=3 --out=/data/celeba64
    python -m osgan_jax.main ... --config.data.name=prepared --config.data.path=/data/celeba64

Decoding and resizing PNG/JPEG every step cannot feed tens of thousands of small
images a second to a GPU; gathering rows of a memory-mapped uint8 array can. The
output takes N x R x R x C bytes (CelebA at 64 px: 2.5 GB).

``--source``:

- ``folder:PATH``: the images below PATH, as ``data.name='folder'``.
- ``tfds:NAME``: a tfds set of ``osgan_jax.data.TFDS_NAMES`` (``mnist``,
  ``fashion_mnist``, ``cifar10``, ``celeb_a``, ``lsun_church``, or its tfds name
  such as ``lsun/church_outdoor``), read as ``data.source='tfds'``;
  ``--data_dir`` is the tfds ``data_dir``.
- ``NAME``: a ``data.name`` of those sets with ``data.source='auto'`` (the IDX
  files for ``fashion_mnist``/``mnist``); ``--data_dir`` is ``data.path``.

``--split``, ``--center_crop``, ``--interpolation``, ``--num_workers``,
``--num_threads`` and ``--download`` mean what the data config keys of the same
names mean. The pixels come from ``osgan_jax.data``'s own sources, read in order
in chunks of ``--batch`` images, so they are bit-identical to what the decoding
path yields; an unreadable folder image is stored as its replacement (the next
readable one), as the folder source yields it, and counted in ``meta.json``'s
``skipped``. The format is described in ``osgan_jax.data`` (``prepared``).

Resumable: each chunk is written in place and flushed before ``progress.json``
(replaced atomically) records it, so rerunning the same command after Ctrl-C,
kill -9 or a crash continues after the last recorded chunk. ``meta.json`` is
written last, atomically: it marks a complete preparation, and rerunning then
checks it and says so. Another source or size into the same ``--out`` is an
error. Errors are one line on stderr with exit status 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Optional

import numpy as np
from absl import app
from absl import flags

from osgan_jax import data
from osgan_jax.data import DataError

_PROG = "osgan_jax.prepare_data"
_DATA_NAMES = tuple(data.TFDS_NAMES)


# --------------------------------------------------------------------------- source


def source_config(
    source: str,
    *,
    resolution: int,
    channels: int,
    split: str = "train",
    center_crop: int = -1,
    interpolation: str = "",
    data_dir: str = "",
    download: bool = False,
    num_workers: int = 0,
    num_threads: int = 4,
) -> tuple:
  """(data config for osgan_jax.data, spec): the spec holds every setting that decides the pixels.

  Two preparations with equal specs write identical files, which is what lets a
  rerun resume or recognise a finished directory.
  """
  if resolution <= 0:
    raise DataError(f"--resolution must be a positive int, got {resolution}")
  if channels not in (1, 3):
    raise DataError(f"--channels must be 1 or 3, got {channels}")
  if interpolation and interpolation not in data.RESAMPLE:
    raise DataError(
        f"--interpolation must be one of {', '.join(data.RESAMPLE)}, got {interpolation!r}"
    )
  data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else ""
  kind, sep, rest = source.partition(":")
  if kind == "folder" and sep:
    if not rest:
      raise DataError("--source=folder:PATH needs a PATH (a directory of images)")
    if data_dir:
      raise DataError("--data_dir does not apply to --source=folder:PATH")
    name, path, mode = "folder", os.path.abspath(os.path.expanduser(rest)), "auto"
    source, split = f"folder:{path}", "train"
  elif kind == "tfds" and sep:
    tfds_names = {v: k for k, v in data.TFDS_NAMES.items()}
    name = rest if rest in data.TFDS_NAMES else tfds_names.get(rest, "")
    if not name:
      raise DataError(
          f"--source=tfds:{rest}: unknown tfds set (supported: {', '.join(data.TFDS_NAMES)})"
      )
    path, mode, source = data_dir, "tfds", f"tfds:{name}"
  elif not sep and source in _DATA_NAMES:
    name, path, mode = source, data_dir, "auto"
  else:
    raise DataError(
        f"--source={source!r} is not folder:PATH, tfds:NAME or one of {', '.join(_DATA_NAMES)}"
    )
  cfg = {
      "name": name,
      "path": path,
      "resolution": resolution,
      "channels": channels,
      "split": split or "train",
      "source": mode,
      "center_crop": center_crop,
      "interpolation": interpolation,
      "shuffle": False,
      "num_workers": num_workers,
      "num_threads": num_threads,
      "prefetch": max(num_threads, 2),
      "download": download,
  }
  resolved = data.DataConfig(cfg)  # validates and resolves the per-dataset defaults
  spec = {
      "source": source,
      "name": name,
      "split": resolved.split,
      "resolution": resolution,
      "channels": channels,
      "center_crop": resolved.center_crop,
      "interpolation": resolved.interpolation,
      "data_dir": data_dir,
  }
  return cfg, spec


# --------------------------------------------------------------------------- files


def _write_json_atomic(path: str, value: dict) -> None:
  """Writes tmp, fsyncs, renames: a reader sees the old file or the new one, never a torn one."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _pwrite_all(fd: int, buf, offset: int) -> None:
  view = memoryview(buf).cast("B")
  while len(view):
    written = os.pwrite(fd, view, offset)
    view, offset = view[written:], offset + written


def _pread_all(fd: int, size: int, offset: int) -> bytes:
  out = bytearray()
  while len(out) < size:
    chunk = os.pread(fd, size - len(out), offset + len(out))
    if not chunk:
      raise OSError(f"unexpected end of file at byte {offset + len(out)}")
    out += chunk
  return bytes(out)


def _open_sized(path: str, size: int, keep: bool) -> int:
  """fd of `path`, emptied unless `keep`, then sized to `size` bytes (sparse until written)."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  if not keep:
    os.ftruncate(fd, 0)
  os.ftruncate(fd, size)
  return fd


def _size(path: str) -> Optional[int]:
  return os.path.getsize(path) if os.path.isfile(path) else None


def _differences(old: dict, new: dict) -> str:
  keys = [k for k in new if old.get(k) != new[k]] or ["spec"]
  return ", ".join(f"{k}={old.get(k)!r} (this command: {new.get(k)!r})" for k in keys)


# --------------------------------------------------------------------------- prepare


def prepare(
    source: str,
    out: str,
    *,
    resolution: int,
    channels: int,
    split: str = "train",
    center_crop: int = -1,
    interpolation: str = "",
    data_dir: str = "",
    download: bool = False,
    num_workers: int = 0,
    num_threads: int = 4,
    batch: int = 256,
    progress_bar: bool = True,
    on_chunk: Optional[Callable[[int], None]] = None,
) -> dict:
  """Writes `source` into `out` (or finishes an interrupted run); returns the meta.json dict.

  The dict also has ``'already_prepared'``: True when `out` already held this
  preparation (checked, then left alone); otherwise ``'seconds'`` and
  ``'images_written'`` (by this call) say how fast it went. ``on_chunk(done)``
  runs after each chunk is recorded (tests interrupt with it). Raises DataError
  with a one-line message.
  """
  if batch <= 0:
    raise DataError(f"--batch must be a positive int, got {batch}")
  if num_workers < 0:
    raise DataError(f"--num_workers must be >= 0, got {num_workers}")
  cfg, spec = source_config(
      source,
      resolution=resolution,
      channels=channels,
      split=split,
      center_crop=center_crop,
      interpolation=interpolation,
      data_dir=data_dir,
      download=download,
      num_workers=num_workers,
      num_threads=num_threads,
  )
  out = os.path.abspath(os.path.expanduser(out))
  meta_path = os.path.join(out, data.PREPARED_META)
  progress_path = os.path.join(out, data.PREPARED_PROGRESS)
  if os.path.exists(meta_path):
    meta = data.read_json(meta_path)
    if meta is None or not isinstance(meta.get("spec"), dict):
      raise DataError(
          f"{meta_path} exists but is not a prepare_data header; pass another --out"
      )
    if meta["spec"] != spec:
      raise DataError(
          f"{out} already holds data prepared with {_differences(meta['spec'], spec)}; "
          f"pass another --out or delete {out}"
      )
    data.make_source(
        data.DataConfig(
            {
                "name": "prepared",
                "path": out,
                "resolution": resolution,
                "channels": channels,
            }
        )
    )  # sizes and checksum
    return {**meta, "already_prepared": True}
  progress = data.read_json(progress_path) if os.path.exists(progress_path) else None
  if os.path.exists(progress_path) and (
      progress is None or not isinstance(progress.get("spec"), dict)
  ):
    raise DataError(
        f"{progress_path} exists but is not a prepare_data progress file; pass another --out"
    )
  if progress is not None and progress["spec"] != spec:
    raise DataError(
        f"{out} holds an unfinished preparation with {_differences(progress['spec'], spec)}; "
        f"rerun that command to finish it, pass another --out, or delete {out}"
    )

  resolved = data.DataConfig(cfg)
  source_obj, kind, num_classes = data.make_source(resolved)
  n = len(source_obj)
  if n == 0:
    raise DataError(f"{spec['source']} has no images")
  done, skipped = 0, 0
  if progress is not None:
    if progress.get("num_examples") != n:
      raise DataError(
          f"the source now has {n} images but the unfinished preparation in {out} started with "
          f"{progress.get('num_examples')}; delete {out} to start over"
      )
    recorded = [progress.get(k) for k in ("done", "skipped", "batch")]
    if (
        all(isinstance(v, int) for v in recorded)
        and recorded[2] > 0
        and 0 <= recorded[0] <= n
        and (recorded[0] % recorded[2] == 0 or recorded[0] == n)
    ):
      done, skipped, batch = (
          recorded  # chunk k must stay images [k * batch, (k + 1) * batch)
      )
  os.makedirs(out, exist_ok=True)
  frame = resolution * resolution * channels
  images_path = os.path.join(out, data.PREPARED_IMAGES)
  labels_path = os.path.join(out, data.PREPARED_LABELS)
  if (_size(images_path), _size(labels_path)) != (n * frame, 4 * n):
    done, skipped = 0, 0  # files missing or resized behind our back: start over
  img_fd = _open_sized(images_path, n * frame, keep=done > 0)
  lab_fd = _open_sized(labels_path, 4 * n, keep=done > 0)
  start_time, start_done = time.monotonic(), done

  def commit(images: np.ndarray, labels: np.ndarray, chunk_skipped: int) -> None:
    nonlocal done, skipped
    _pwrite_all(img_fd, np.ascontiguousarray(images, np.uint8), done * frame)
    _pwrite_all(lab_fd, np.ascontiguousarray(labels, "<i4"), done * 4)
    os.fsync(img_fd)
    os.fsync(lab_fd)
    done, skipped = done + len(labels), skipped + chunk_skipped
    _write_json_atomic(
        progress_path,
        {
            "spec": spec,
            "num_examples": n,
            "batch": batch,
            "done": done,
            "skipped": skipped,
        },
    )
    bar.update(len(labels))
    if on_chunk is not None:
      on_chunk(done)

  from tqdm import tqdm

  whole = (
      n - n % batch
  )  # whole chunks go through the iterator; the rest is one direct load_batch
  it = None
  try:
    with tqdm(
        total=n,
        initial=done,
        unit="img",
        desc=f"prepare {os.path.basename(out)}",
        disable=not progress_bar,
        dynamic_ncols=True,
    ) as bar:
      if done < whole:
        it = data.iterate_source(
            source_obj,
            kind,
            num_classes,
            resolved,
            batch,
            0,
            done // batch,
            0,
            1,
            "uint8",
        )
        while done < whole:
          before = it.skipped
          chunk = next(it)
          commit(chunk["image"], chunk["label"], it.skipped - before)
      if done < n:
        images, labels, chunk_skipped = source_obj.load_batch(np.arange(done, n))
        commit(images, labels, chunk_skipped)
    first = _pread_all(img_fd, frame, 0)
    last = _pread_all(img_fd, frame, (n - 1) * frame)
    labels_bytes = _pread_all(lab_fd, 4 * n, 0)
  finally:
    if it is not None:
      it.close()
    os.close(img_fd)
    os.close(lab_fd)

  desc = (
      spec["source"]
      if kind == "folder"
      else f"{spec['source']} ({kind}, split {spec['split']})"
  )
  meta = {
      "format": data.PREPARED_FORMAT,
      "version": data.PREPARED_VERSION,
      "num_examples": n,
      "resolution": resolution,
      "channels": channels,
      "num_classes": int(num_classes),
      "dtype": "uint8",
      "label_dtype": "<i4",
      "source": desc,
      "spec": spec,
      "skipped": skipped,
  }
  meta["checksum"] = data.prepared_checksum(meta, first, last, labels_bytes)
  _write_json_atomic(meta_path, meta)
  os.remove(progress_path)
  _fsync_dir(out)
  seconds = time.monotonic() - start_time
  return {
      **meta,
      "already_prepared": False,
      "seconds": seconds,
      "images_written": done - start_done,
  }


# --------------------------------------------------------------------------- command line

_SOURCE = flags.DEFINE_string(
    "source", None, "folder:PATH, tfds:NAME, or a data.name such as fashion_mnist."
)
_RESOLUTION = flags.DEFINE_integer(
    "resolution", None, "Output height = width (data.resolution)."
)
_CHANNELS = flags.DEFINE_integer("channels", None, "1 or 3 (data.channels).")
_OUT = flags.DEFINE_string(
    "out", None, "Directory to write; train with data.name=prepared, data.path=OUT."
)
_SPLIT = flags.DEFINE_string(
    "split", "train", "data.split (IDX: train/test; tfds: any split string)."
)
_CENTER_CROP = flags.DEFINE_integer(
    "center_crop", -1, "data.center_crop: -1 = per-dataset default, 0 = none."
)
_INTERPOLATION = flags.DEFINE_string(
    "interpolation",
    "",
    "data.interpolation: bilinear, bicubic, lanczos, "
    "nearest; empty = per-dataset default.",
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "IDX directory or tfds data_dir (data.path); not for folders."
)
_DOWNLOAD = flags.DEFINE_boolean(
    "download", False, "tfds only: let tfds download and prepare the set."
)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "Decoding worker processes (data.num_workers)."
)
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", 4, "Decoding threads (data.num_threads)."
)
_BATCH = flags.DEFINE_integer(
    "batch",
    256,
    "Images per chunk: the unit of flushing and of resuming "
    "(about num_threads + 1 chunks are in memory at once).",
)
flags.mark_flags_as_required(["source", "resolution", "channels", "out"])


def _fail(message: str) -> None:
  print(f"{_PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(1)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f"{e} (pass --helpshort to see the flags)")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  out = _OUT.value
  try:
    meta = prepare(
        _SOURCE.value,
        out,
        resolution=_RESOLUTION.value,
        channels=_CHANNELS.value,
        split=_SPLIT.value,
        center_crop=_CENTER_CROP.value,
        interpolation=_INTERPOLATION.value,
        data_dir=_DATA_DIR.value,
        download=_DOWNLOAD.value,
        num_workers=_NUM_WORKERS.value,
        num_threads=_NUM_THREADS.value,
        batch=_BATCH.value,
    )
  except DataError as e:
    _fail(e)
  except OSError as e:
    _fail(f"{type(e).__name__}: {e}")
  except KeyboardInterrupt:
    progress = data.read_json(os.path.join(out, data.PREPARED_PROGRESS)) or {}
    print(
        f"{_PROG}: interrupted after {progress.get('done', 0)} of {progress.get('num_examples', '?')} "
        f"images; rerun the same command to resume",
        file=sys.stderr,
    )
    sys.exit(130)
  size = f"{meta['num_examples']} images of {meta['resolution']}x{meta['resolution']}x{meta['channels']}"
  where = os.path.abspath(out)
  if meta["already_prepared"]:
    print(f"{where} is already prepared ({size} from {meta['source']}); nothing to do")
  else:
    rate = meta["images_written"] / max(meta["seconds"], 1e-9)
    replaced = (
        f", {meta['skipped']} unreadable images replaced by the next readable one"
        if meta["skipped"]
        else ""
    )
    print(
        f"prepared {size} from {meta['source']} into {where} ({rate:.0f} images/s{replaced}); "
        f"train with data.name=prepared data.path={where}"
    )


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
