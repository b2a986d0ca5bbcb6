"""What counts as training time, and the progress bar (or, without one, a metrics line
per log interval) with an ETA from it."""

from __future__ import annotations

import sys
import time

import jax
import tqdm
from absl import logging


class Clock:
  """Training time over resumed runs; compilation, evaluation and saving excluded."""

  def __init__(self, seconds: float):
    self.seconds, self.interval_steps, self.interval_seconds = seconds, 0, 0.0
    self.start = time.perf_counter()

  def exclude(self, fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    self.start += time.perf_counter() - t0
    return out

  def stop(self) -> None:
    elapsed = time.perf_counter() - self.start
    self.seconds += elapsed
    self.interval_seconds += elapsed

  def restart(self) -> None:
    self.start = time.perf_counter()

  def take_interval(self) -> dict:
    """``{'steps_per_sec'}`` of the interval ({} if empty), then resets it."""
    steps_, seconds = self.interval_steps, self.interval_seconds
    self.interval_steps, self.interval_seconds = 0, 0.0
    return {} if not steps_ else {'steps_per_sec': steps_ / max(seconds, 1e-9)}


class Progress:
  """The tqdm bar on process 0 (``bar``), or log lines when there is none."""

  def __init__(
      self, total: int, start: int, name: str, shown: tuple, enabled: bool, bar: bool
  ):
    self.total, self.shown, self.enabled, self.bar = total, shown, enabled, bar
    self.pbar = tqdm.tqdm(
        total=total,
        initial=start,
        unit='step',
        dynamic_ncols=True,
        desc=name,
        smoothing=0.05,
        mininterval=0.5 if sys.stderr.isatty() else 30,
        disable=not (enabled and bar),
    )

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.pbar.close()
    return False

  def update(self) -> None:
    self.pbar.update(1)

  def restart_eta(self, done: int) -> None:
    """Rate and ETA from here on: the compiled first step is not a step."""
    self.pbar.initial = self.pbar.n = done
    self.pbar.start_t = self.pbar.last_print_t = time.time()

  def show(self, values: dict, done: int) -> None:
    """The metrics in the bar, or a log line with the ETA from the interval's rate."""
    shown = {k: f'{values[k]:.3g}' for k in self.shown if k in values}
    self.pbar.set_postfix(shown, refresh=False)
    if self.bar or not self.enabled or 'steps_per_sec' not in values:
      return
    left = (self.total - done) / max(values['steps_per_sec'], 1e-9)
    eta = f'{left / 3600:.0f} h'
    if left < 86400:
      eta = time.strftime('%H:%M:%S', time.gmtime(left))
    text = ', '.join(f'{k} {v}' for k, v in shown.items())
    logging.info('step %d/%d: %s; ETA %s', done, self.total, text, eta)
