"""Batches prefetched to the devices from a thread, and SIGTERM/SIGINT turned into a flag
the loop checks between steps."""

from __future__ import annotations

import os
import queue
import signal
import threading

from osgan_jax.training import parallel

PREFETCH_DEPTH = 2


class StopOnSignal:
  """SIGTERM/SIGINT set ``received`` (handlers in the main thread only); a second SIGINT
  raises KeyboardInterrupt: Ctrl-C twice aborts without saving."""

  def __init__(self):
    self.received, self._previous = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    # No logging here (its locks are not reentrant): a plain write is signal-safe.
    what = 'saving a checkpoint after this step, then stopping'
    os.write(2, f'\n{self.received} received: {what}\n'.encode())

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


class DevicePrefetch:
  """Host batches -> global device arrays, ``depth`` ahead, from a thread; yields
  ``(batch, skipped)``, the unreadable images the source replaced in that batch."""

  def __init__(self, it, sharding, depth: int = PREFETCH_DEPTH):
    self._it, self._sharding = it, sharding
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, daemon=True)
    self._thread.start()

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        return self._queue.put(item, timeout=0.1)
      except queue.Full:
        continue

  def _fill(self) -> None:
    try:
      while not self._stop.is_set():
        before = getattr(self._it, 'skipped', 0)
        local = next(self._it)
        skipped = getattr(self._it, 'skipped', 0) - before
        self._put((parallel.global_batch(local, self._sharding), skipped))
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)  # re-raised in the training thread

  def __next__(self):
    while True:
      try:
        item = self._queue.get(timeout=0.5)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise RuntimeError('the data prefetch thread stopped') from None
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)


class NoData:
  """The batches of a task without data: empty dicts, nothing skipped."""

  def __next__(self):
    return {}, 0

  def close(self) -> None:
    pass
