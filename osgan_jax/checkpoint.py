"""Orbax checkpoints of a whole train state plus a JSON ``meta`` dict, saved asynchronously.

A save copies the state to host memory and returns; the write to disk runs in the
background, so training goes on meanwhile (and may donate the state's buffers).
``Checkpoints.close`` (or the next save) waits for it. Every process takes part.
"""

from __future__ import annotations

import json
import math
import os

import jax
import orbax.checkpoint as ocp

BEST_DIR = 'best'
BEST_FILE = 'best.json'


def manager(directory: str, keep: int, *, async_save: bool = True) -> ocp.CheckpointManager:
  """An orbax manager of ``directory`` keeping the last ``keep`` checkpoints."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Starts saving ``(state, meta)`` as checkpoint ``step`` (returns once on the host)."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)))


def abstract(state_shapes, sharding):
  """``jax.ShapeDtypeStruct`` leaves with ``sharding``, to restore onto a mesh."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      state_shapes)


def restore(mngr: ocp.CheckpointManager, abstract_state, step=None):
  """``(state, meta)`` of checkpoint ``step`` (default: the latest)."""
  step = mngr.latest_step() if step is None else step
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored.state, dict(restored.meta or {})


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """Only the ``meta`` of checkpoint ``step`` (no arrays are read)."""
  return dict(mngr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore())).meta or {})


class Best:
  """The checkpoint with the best value of one metric so far, in ``workdir/best/``.

  ``best/best.json`` (``{"step", "metric", "value"}``) is written after the checkpoint
  is complete, so it never names a partial one.
  """

  def __init__(self, workdir: str, metric: str, mode: str = 'min'):
    if mode not in ('min', 'max'):
      raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    self.metric, self.sign = metric, 1.0 if mode == 'min' else -1.0
    self.dir = os.path.join(workdir, BEST_DIR)
    self.manager = manager(self.dir, 1, async_save=False)
    self.value = self._read()

  def _read(self) -> float:
    try:
      with open(os.path.join(self.dir, BEST_FILE)) as f:
        record = json.load(f)
      if record.get('metric') == self.metric:
        return float(record['value'])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
      pass
    return self.sign * math.inf

  def improves(self, value: float) -> bool:
    return self.sign * value < self.sign * self.value

  def update(self, step: int, state, value: float, meta: dict, is_main: bool) -> None:
    """Replaces the best checkpoint by ``state`` (call on every process)."""
    for old in self.manager.all_steps():
      if old >= step:  # left by a run that crashed after it; orbax will not overwrite
        self.manager.delete(old)
    save(self.manager, step, state, {**meta, self.metric: float(value)})
    self.manager.wait_until_finished()
    self.value = float(value)
    if is_main:
      path = os.path.join(self.dir, BEST_FILE)
      with open(path + '.tmp', 'w') as f:
        json.dump({'step': int(step), 'metric': self.metric, 'value': float(value)}, f)
        f.write('\n')
      os.replace(path + '.tmp', path)

  def close(self) -> None:
    self.manager.close()
