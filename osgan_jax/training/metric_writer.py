"""A clu-style metric writer: ``metrics.jsonl`` plus TensorBoard events on process 0, a
writer that does nothing on the others (callers need no ``if``)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import tensorboardX

METRICS_FILE = 'metrics.jsonl'


class MetricWriter:
  """Scalars to ``workdir/metrics.jsonl`` and TensorBoard; images and text to TensorBoard."""

  def __init__(self, workdir: str, start_step: int | None, enabled: bool = True):
    """``start_step``: the step a run resumes from (later records are dropped); None
    appends to what is there (a finished run's evaluation)."""
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self.path = os.path.join(workdir, METRICS_FILE)
    if start_step is not None:
      self._truncate(start_step)
    self._tb = tensorboardX.SummaryWriter(
        logdir=workdir, purge_step=start_step or None, flush_secs=30
    )

  def _truncate(self, start_step: int) -> None:
    """Drops lines logged after the checkpoint we resume from (a crash's leftovers)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        if json.loads(line)['step'] <= start_step:
          keep.append(line)
      except (ValueError, KeyError, TypeError):
        pass  # a partly written last line
    if len(keep) != len(lines):
      with open(self.path, 'w') as f:
        f.writelines(keep)

  def write_scalars(self, step: int, values: dict) -> None:
    if not self.enabled or not values:
      return
    record = {'step': int(step), **{k: float(v) for k, v in values.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in values.items():
      self._tb.add_scalar(k, float(v), step)

  def write_images(self, step: int, images: dict) -> None:
    """``{tag: uint8 [H, W, C] image}``."""
    if not self.enabled:
      return
    for tag, image in images.items():
      rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
      self._tb.add_image(tag, rgb, step, dataformats='HWC')

  def write_texts(self, step: int, texts: dict) -> None:
    if self.enabled:
      for tag, text in texts.items():
        self._tb.add_text(tag, text, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def reduce_metrics(history: list) -> dict:
  """Per-step metric dicts (device arrays) -> one dict of floats: min for ``*_min``,
  max for ``*_max``, else the mean; a key only some steps log (a lazy phase's) is
  reduced over those steps. The one device-to-host fetch of a log interval."""
  history = jax.device_get(history)
  out = {}
  for k in dict.fromkeys(k for h in history for k in h):
    values = np.asarray([h[k] for h in history if k in h], np.float64)
    reduce = np.min if k.endswith('_min') else np.max if k.endswith('_max') else np.mean
    out[k] = float(reduce(values))
  return out
