"""The prepared format: raw uint8 pixels decoded once, read back memory-mapped.

Both halves live here, so the layout, the header check and the checksum are defined
once: reading (`read_meta`, `open_prepared`, `PreparedSource`) and resumable writing
(`prepare`, behind ``python -m osgan_jax.prepare_data``). docs/data.md describes the
layout and the resume guarantees.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from osgan_jax.data.files import (
    file_size,
    fsync_dir,
    open_sized,
    pread_all,
    pwrite_all,
    read_json,
    write_json_atomic,
)
from osgan_jax.data.iterator import iterate_source
from osgan_jax.data.sources import DataConfig, DataError, OpenedSource, open_source
from osgan_jax.data.spec import differences, prepare_command, source_config

PREPARED_FORMAT = "osgan_jax.prepared"
PREPARED_VERSION = 1
PREPARED_META = "meta.json"
PREPARED_IMAGES = "images.u8"
PREPARED_LABELS = "labels.i32"
BLOCK_BYTES = 4 << 20  # the image array is checksummed in blocks of this size
VERIFY_ALL_BYTES = 256 << 20  # smaller arrays are checked whole on every load
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


def block_digests(path: str, block: int = BLOCK_BYTES, which=None) -> list:
  """sha256 (16 hex digits) of each ``block``-byte block of a file (or of the blocks
  numbered in ``which``)."""
  size = file_size(path) or 0
  count = -(-size // block)
  out = []
  with open(path, "rb") as f:
    for i in range(count) if which is None else which:
      f.seek(i * block)
      out.append(hashlib.sha256(f.read(block)).hexdigest()[:16])
  return out


def prepared_checksum(header: dict, first: bytes, last: bytes, labels: bytes) -> str:
  """sha256 of the header fields (but the checksum), first and last image, all labels."""
  h = hashlib.sha256()
  fields = {
      k: v for k, v in header.items() if k not in ("checksum", "blocks", "block_bytes")
  }
  h.update(json.dumps(fields, sort_keys=True).encode())
  for part in (first, last, labels):
    h.update(len(part).to_bytes(8, "little"))
    h.update(part)
  return "sha256:" + h.hexdigest()


def check_blocks(directory: str, meta: dict, everything: bool = False) -> None:
  """The image array against meta.json's block checksums: all of it when it is small
  (or ``everything``), else a random sample of blocks on each load. Preparations from
  before block checksums have none to check."""
  recorded = meta.get("blocks")
  if not recorded:
    return
  path = os.path.join(directory, PREPARED_IMAGES)
  block = int(meta.get("block_bytes", BLOCK_BYTES))
  if everything or (file_size(path) or 0) <= VERIFY_ALL_BYTES:
    which = list(range(len(recorded)))
  else:
    which = sorted(np.random.default_rng().choice(len(recorded), 8, replace=False))
  for i, digest in zip(which, block_digests(path, block, which)):
    if digest != recorded[i]:
      raise DataError(
          f"{path}: bytes {i * block}-{(i + 1) * block - 1} do not match their checksum "
          f"(corrupted); delete {directory} and write it again with "
          f"`{prepare_command(meta['spec'], directory)}`"
      )


def _no_meta_error(directory: str, generic: str) -> DataError:
  """Why `directory` has no meta.json: absent, unfinished, or never prepared."""
  if not os.path.isdir(directory):
    return DataError(
        f"prepared data directory {directory} does not exist; write it with `{generic}`"
    )
  progress = read_json(os.path.join(directory, PREPARED_PROGRESS))
  if progress is not None and isinstance(progress.get("spec"), dict):
    return DataError(
        f"the preparation of {directory} is incomplete ({progress.get('done', 0)} of "
        f"{progress.get('num_examples', '?')} images, no {PREPARED_META}); rerun "
        f"`{prepare_command(progress['spec'], directory)}` to finish it"
    )
  return DataError(
      f"{directory} holds no prepared data (no {PREPARED_META}); write it with `{generic}`"
  )


def _header_problem(meta: Optional[dict]) -> Optional[str]:
  """What is wrong with a meta.json header, or None."""
  if meta is None:
    return "not a JSON object"
  wrong = [k for k, t in _PREPARED_KEYS.items() if not isinstance(meta.get(k), t)]
  if wrong:
    return f"missing or mistyped {', '.join(wrong)}"
  if (meta["format"], meta["version"]) != (PREPARED_FORMAT, PREPARED_VERSION):
    return (
        f"format {meta['format']!r} version {meta['version']}, "
        f"expected {PREPARED_FORMAT!r} version {PREPARED_VERSION}"
    )
  if (meta["dtype"], meta["label_dtype"]) != ("uint8", "<i4"):
    return (
        f"dtype {meta['dtype']!r} / label_dtype {meta['label_dtype']!r}, "
        "expected 'uint8' / '<i4'"
    )
  if min(meta["num_examples"], meta["resolution"]) <= 0 or meta["channels"] not in (1, 3):
    return "bad shape"
  return None


def _check_sizes(directory: str, meta: dict) -> None:
  """The images and labels files have the sizes that meta.json implies."""
  n, r, c = meta["num_examples"], meta["resolution"], meta["channels"]
  for name, expected in ((PREPARED_IMAGES, n * r * r * c), (PREPARED_LABELS, 4 * n)):
    path = os.path.join(directory, name)
    size = file_size(path)
    if size != expected:
      have = "missing" if size is None else f"{size} bytes"
      raise DataError(
          f"{path} is {have}, expected {expected} bytes for {n} images of {r}x{r}x{c} "
          f"(truncated or modified); delete {directory} and write it again with "
          f"`{prepare_command(meta['spec'], directory)}`"
      )


def _check_shape(cfg: DataConfig, meta: dict) -> None:
  """The config asks for the prepared resolution and channels."""
  r, c = meta["resolution"], meta["channels"]
  if (r, c) != (cfg.resolution, cfg.channels):
    redo = prepare_command(meta["spec"], "NEW_DIR", cfg.resolution, cfg.channels)
    raise DataError(
        f"{cfg.path} holds {r}x{r}x{c} images (resolution={r}, channels={c}, prepared from "
        f"{meta['source']}) but the config asks for data.resolution={cfg.resolution}, "
        f"data.channels={cfg.channels}: set data.resolution={r} data.channels={c}, or prepare "
        f"that size with `{redo}` and set data.path=NEW_DIR"
    )


def read_meta(cfg: DataConfig) -> dict:
  """meta.json of ``data.path``, checked against the file sizes and the config."""
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
    raise _no_meta_error(d, generic)
  meta = read_json(meta_path)
  problem = _header_problem(meta)
  if problem:
    raise DataError(
        f"{meta_path}: corrupt header ({problem}); delete {d} and write it again with `{generic}`"
    )
  _check_sizes(d, meta)
  _check_shape(cfg, meta)
  return meta


class PreparedSource:
  """Memory-mapped uint8 [N, R, R, C] prepared images: a batch is one gather."""

  def __init__(self, directory: str, meta: dict):
    self.directory = directory
    self.meta = meta
    self._map()

  def _map(self):
    n, r, c = self.meta["num_examples"], self.meta["resolution"], self.meta["channels"]
    with open(os.path.join(self.directory, PREPARED_IMAGES), "rb") as f:
      buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    self.images = np.frombuffer(buf, np.uint8).reshape(n, r, r, c)
    labels = np.fromfile(os.path.join(self.directory, PREPARED_LABELS), "<i4")
    self.labels = labels.astype(np.int32)

  # Grain worker processes map the file themselves rather than get a copy.
  def __getstate__(self):
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
          f"`{prepare_command(self.meta['spec'], self.directory)}`"
      )

  def load_batch(self, indices: np.ndarray):
    return self.images[indices], self.labels[indices], 0


def open_prepared(cfg: DataConfig) -> OpenedSource:
  """The checked (header, sizes, checksums) prepared directory ``data.path``."""
  source = PreparedSource(cfg.path, read_meta(cfg))
  source.verify()
  check_blocks(cfg.path, source.meta)
  return OpenedSource(source, "prepared", source.meta["num_classes"])


def read_progress(out: str) -> dict:
  """progress.json of an unfinished preparation in `out`, {} if none."""
  return read_json(os.path.join(out, PREPARED_PROGRESS)) or {}


def _recorded(path: str, what: str, spec: dict, holds: str, fix: str) -> Optional[dict]:
  """The JSON file at `path` if it records `spec`; None if absent; else a DataError."""
  if not os.path.exists(path):
    return None
  record = read_json(path)
  if record is None or not isinstance(record.get("spec"), dict):
    raise DataError(f"{path} exists but is not a prepare_data {what}; pass another --out")
  if record["spec"] != spec:
    out = os.path.dirname(path)
    raise DataError(
        f"{out} {holds} {differences(record['spec'], spec)}; {fix} or delete {out}"
    )
  return record


def _finished(out: str, spec: dict) -> Optional[dict]:
  """meta.json of a finished preparation of `spec` in `out`, checked; None if none."""
  meta = _recorded(
      os.path.join(out, PREPARED_META),
      "header",
      spec,
      "already holds data prepared with",
      "pass another --out",
  )
  if meta is not None:
    size = {"resolution": spec["resolution"], "channels": spec["channels"]}
    open_prepared(DataConfig({"name": "prepared", "path": out, **size}))  # sizes, sums
  return meta


def _unfinished(out: str, spec: dict) -> Optional[dict]:
  """progress.json of an unfinished preparation of `spec` in `out`; None if none."""
  return _recorded(
      os.path.join(out, PREPARED_PROGRESS),
      "progress file",
      spec,
      "holds an unfinished preparation with",
      "rerun that command to finish it, pass another --out,",
  )


def _resume_point(progress: Optional[dict], n: int, batch: int, out: str) -> tuple:
  """(done, skipped, batch) recorded by an unfinished run, else (0, 0, batch)."""
  if progress is None:
    return 0, 0, batch
  if progress.get("num_examples") != n:
    raise DataError(
        f"the source now has {n} images but the unfinished preparation in {out} started with "
        f"{progress.get('num_examples')}; delete {out} to start over"
    )
  done, skipped, recorded_batch = [progress.get(k) for k in ("done", "skipped", "batch")]
  if (
      all(isinstance(v, int) for v in (done, skipped, recorded_batch))
      and recorded_batch > 0
      and 0 <= done <= n
      and (done % recorded_batch == 0 or done == n)
  ):
    # Resume with the recorded batch: chunk k stays images [k * batch, (k + 1) * batch).
    return done, skipped, recorded_batch
  return 0, 0, batch


class _ChunkWriter:
  """The images and labels files of one preparation, written in place chunk by chunk."""

  def __init__(self, out: str, spec: dict, n: int, batch: int, progress: Optional[dict]):
    self.spec, self.n = spec, n
    self.frame = spec["resolution"] * spec["resolution"] * spec["channels"]
    self.progress_path = os.path.join(out, PREPARED_PROGRESS)
    self.done, self.skipped, self.batch = _resume_point(progress, n, batch, out)
    os.makedirs(out, exist_ok=True)
    images_path = os.path.join(out, PREPARED_IMAGES)
    labels_path = os.path.join(out, PREPARED_LABELS)
    if (file_size(images_path), file_size(labels_path)) != (n * self.frame, 4 * n):
      # Files missing or resized behind our back: start over.
      self.done, self.skipped = 0, 0
    self.img_fd = open_sized(images_path, n * self.frame, keep=self.done > 0)
    self.lab_fd = open_sized(labels_path, 4 * n, keep=self.done > 0)

  def commit(self, images: np.ndarray, labels: np.ndarray, skipped: int) -> None:
    """Writes the next chunk, flushes it, then records it in progress.json."""
    pwrite_all(
        self.img_fd, np.ascontiguousarray(images, np.uint8), self.done * self.frame
    )
    pwrite_all(self.lab_fd, np.ascontiguousarray(labels, "<i4"), self.done * 4)
    os.fsync(self.img_fd)
    os.fsync(self.lab_fd)
    self.done, self.skipped = self.done + len(labels), self.skipped + skipped
    progress = {"done": self.done, "skipped": self.skipped, "batch": self.batch}
    write_json_atomic(
        self.progress_path, {"spec": self.spec, "num_examples": self.n, **progress}
    )

  def checksum_parts(self) -> tuple:
    """(first image, last image, all labels) as written, for `prepared_checksum`."""
    first = pread_all(self.img_fd, self.frame, 0)
    last = pread_all(self.img_fd, self.frame, (self.n - 1) * self.frame)
    return first, last, pread_all(self.lab_fd, 4 * self.n, 0)

  def close(self) -> None:
    os.close(self.img_fd)
    os.close(self.lab_fd)


def _write_rest(
    writer: _ChunkWriter,
    opened: OpenedSource,
    cfg: DataConfig,
    desc: str,
    progress_bar: bool,
    on_chunk: Optional[Callable[[int], None]],
) -> tuple:
  """Writes images [writer.done, n) in order, closes the files; the checksum parts.

  ``on_chunk(done)`` runs after each chunk is recorded.
  """
  n, batch = writer.n, writer.batch
  whole = n - n % batch
  it = None
  try:
    with tqdm(
        total=n,
        initial=writer.done,
        unit="img",
        desc=desc,
        disable=not progress_bar,
        dynamic_ncols=True,
    ) as bar:

      def commit(images: np.ndarray, labels: np.ndarray, skipped: int) -> None:
        writer.commit(images, labels, skipped)
        bar.update(len(labels))
        if on_chunk is not None:
          on_chunk(writer.done)

      if writer.done < whole:
        start_step = writer.done // batch
        it = iterate_source(
            opened,
            cfg,
            batch_size=batch,
            seed=0,
            start_step=start_step,
            image_dtype="uint8",
        )
        while writer.done < whole:
          before = it.skipped
          chunk = next(it)
          commit(chunk["image"], chunk["label"], it.skipped - before)
      if writer.done < n:
        commit(*opened.source.load_batch(np.arange(writer.done, n)))
    return writer.checksum_parts()
  finally:
    if it is not None:
      it.close()
    writer.close()


def _write_header(
    out: str, spec: dict, opened: OpenedSource, skipped: int, parts
) -> dict:
  """Writes meta.json, which marks the preparation complete, and drops progress.json."""
  kind = opened.kind
  desc = (
      spec["source"]
      if kind == "folder"
      else f"{spec['source']} ({kind}, split {spec['split']})"
  )
  meta = {
      "format": PREPARED_FORMAT,
      "version": PREPARED_VERSION,
      "num_examples": len(opened.source),
      "resolution": spec["resolution"],
      "channels": spec["channels"],
      "num_classes": int(opened.num_classes),
      "dtype": "uint8",
      "label_dtype": "<i4",
      "source": desc,
      "spec": spec,
      "skipped": skipped,
  }
  meta["checksum"] = prepared_checksum(meta, *parts)
  # From the file as written and synced: each load checks the blocks against these.
  meta["block_bytes"] = BLOCK_BYTES
  meta["blocks"] = block_digests(os.path.join(out, PREPARED_IMAGES))
  write_json_atomic(os.path.join(out, PREPARED_META), meta)
  os.remove(os.path.join(out, PREPARED_PROGRESS))
  fsync_dir(out)
  return meta


def prepare(
    source: str,
    out: str,
    *,
    batch: int = 256,
    progress_bar: bool = True,
    on_chunk: Optional[Callable[[int], None]] = None,
    **options,
) -> dict:
  """Writes `source` into `out`, or finishes an interrupted run; returns meta.json's dict.

  ``options`` are ``source_config``'s (resolution, channels, split, center_crop, ...).
  Plus ``'already_prepared'``, and ``'seconds'`` and ``'images_written'`` when it
  wrote; ``on_chunk(done)`` runs after each recorded chunk. Raises DataError.
  """
  if batch <= 0:
    raise DataError(f"--batch must be a positive int, got {batch}")
  if options.get("num_workers", 0) < 0:
    raise DataError(f"--num_workers must be >= 0, got {options['num_workers']}")
  cfg, spec = source_config(source, **options)
  out = os.path.abspath(os.path.expanduser(out))
  meta = _finished(out, spec)
  if meta is not None:
    return {**meta, "already_prepared": True}
  progress = _unfinished(out, spec)
  resolved = DataConfig(cfg)
  opened = open_source(resolved)
  if len(opened.source) == 0:
    raise DataError(f"{spec['source']} has no images")
  writer = _ChunkWriter(out, spec, len(opened.source), batch, progress)
  start_time, start_done = time.monotonic(), writer.done
  desc = f"prepare {os.path.basename(out)}"
  parts = _write_rest(writer, opened, resolved, desc, progress_bar, on_chunk)
  meta = _write_header(out, spec, opened, writer.skipped, parts)
  return {
      **meta,
      "already_prepared": False,
      "seconds": time.monotonic() - start_time,
      "images_written": writer.done - start_done,
  }
