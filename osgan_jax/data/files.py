"""Crash-safe file writes for the prepared format's writer, which may be killed at any
moment and resumed: each write is whole or absent."""

from __future__ import annotations

import json
import os
from typing import Optional


def read_json(path: str) -> Optional[dict]:
  """The JSON object in `path`, or None if it is absent or unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def write_json_atomic(path: str, value: dict) -> None:
  """Writes tmp, fsyncs, renames: readers see the old or the new file, never a torn one."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def fsync_dir(path: str) -> None:
  """Flushes a directory's entries (a rename or a removal in it)."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def pwrite_all(fd: int, buf, offset: int) -> None:
  """Writes all of `buf` at `offset` (os.pwrite may write less than asked)."""
  view = memoryview(buf).cast("B")
  while len(view):
    written = os.pwrite(fd, view, offset)
    view, offset = view[written:], offset + written


def pread_all(fd: int, size: int, offset: int) -> bytes:
  """Reads exactly `size` bytes at `offset`; OSError at the end of the file."""
  out = bytearray()
  while len(out) < size:
    chunk = os.pread(fd, size - len(out), offset + len(out))
    if not chunk:
      raise OSError(f"unexpected end of file at byte {offset + len(out)}")
    out += chunk
  return bytes(out)


def open_sized(path: str, size: int, keep: bool) -> int:
  """fd of `path`, emptied unless `keep`, sized to `size` bytes (sparse until written)."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  if not keep:
    os.ftruncate(fd, 0)
  os.ftruncate(fd, size)
  return fd


def file_size(path: str) -> Optional[int]:
  """Size of the regular file `path`, or None if there is none."""
  return os.path.getsize(path) if os.path.isfile(path) else None
