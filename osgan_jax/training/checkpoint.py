"""Asynchronous orbax checkpoints of a whole train state plus a JSON ``meta`` dict;
``restore_latest`` falls back to the newest intact one (``docs/reliability.md``)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import sys
import time

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from absl import logging

from osgan_jax.training import digests

BEST_DIR = 'best'
BEST_FILE = 'best.json'
CORRUPT_DIR = 'corrupt'


def manager(
    directory: str, keep: int, *, async_save: bool = True
) -> ocp.CheckpointManager:
  """An orbax manager of ``directory`` keeping the last ``keep`` checkpoints."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max(int(keep), 1),
      create=True,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Starts saving ``(state, meta)`` as checkpoint ``step`` (returns once on the host).
  Too little disk space is a one-line ``CheckpointError``, not orbax's background writes
  failing with hundreds of lines."""
  wait(mngr)
  directory = os.fspath(mngr.directory)
  need = sum(
      x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, 'dtype')
  )
  free = shutil.disk_usage(directory).free
  if free < 1.1 * need + (1 << 20):
    raise CheckpointError(
        f'no room for checkpoint {step} in {directory}: {free / 2**20:.1f} MiB free, '
        f'about {need / 2**20:.1f} MiB needed; the checkpoints there '
        f'({_listed(mngr)}) are intact: free space and run the same command to resume'
    )
  meta = {**meta, 'digests': digests.of(state)}
  try:
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
        ),
    )
  except (OSError, ValueError) as e:
    raise _write_error(mngr, f'checkpoint {step}', e) from None


def wait(mngr: ocp.CheckpointManager) -> None:
  """Waits for an asynchronous save; its failure is a one-line ``CheckpointError``."""
  try:
    mngr.wait_until_finished()
  except (OSError, ValueError) as e:
    raise _write_error(mngr, 'a checkpoint', e) from None


def _write_error(mngr: ocp.CheckpointManager, what: str, e: Exception):
  return CheckpointError(
      f'cannot write {what} in {mngr.directory} '
      f'({" ".join(str(e).split())[:200]}); the checkpoints there '
      f'({_listed(mngr)}) are intact'
  )


def close(mngr: ocp.CheckpointManager) -> None:
  try:
    wait(mngr)
  finally:
    mngr.close()


def _listed(mngr: ocp.CheckpointManager) -> str:
  steps = [str(s) for s in sorted(mngr.all_steps())]
  return 'steps ' + ', '.join(steps) if steps else 'none yet'


def abstract(state_shapes, sharding):
  """``jax.ShapeDtypeStruct`` leaves with ``sharding``, to restore onto a mesh."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state_shapes
  )


def restore(mngr: ocp.CheckpointManager, abstract_state, step=None):
  """``(state, meta)`` of checkpoint ``step`` (default: the latest; ``abstract_state``
  None: the arrays on this process's first device, whatever topology saved them)."""
  step = mngr.latest_step() if step is None else step
  anywhere = None
  if abstract_state is None:  # else orbax refuses another device count's checkpoint
    anywhere = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def read(target):
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target, fallback_sharding=anywhere),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored.state, dict(restored.meta or {})

  try:
    return read(abstract_state)
  except ValueError:
    added = _added_fields(mngr, step, abstract_state)
    if not added:
      raise
  kept = {
      f.name: getattr(abstract_state, f.name)
      for f in dataclasses.fields(abstract_state)
      if f.name not in added
  }
  state, meta = read(kept)
  return type(abstract_state)(**state, **dict.fromkeys(added)), meta


def _added_fields(mngr: ocp.CheckpointManager, step: int, state) -> list:
  """The fields of ``state`` (a dataclass) that are None and that checkpoint ``step``
  lacks: fields added to the state since it was written (a run that does not use them
  resumes from it)."""
  if not dataclasses.is_dataclass(state):
    return []
  saved = mngr.item_metadata(step)['state'].tree
  return [
      f.name
      for f in dataclasses.fields(state)
      if getattr(state, f.name) is None and f.name not in saved
  ]


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """Only the ``meta`` of checkpoint ``step`` (no arrays are read)."""
  return dict(
      mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta or {}
  )


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one cannot be written; the message is one line."""


def _shapes(tree) -> dict:
  """``{'a/b/c': (shape, dtype)}`` of a tree's arrays, whatever its containers."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
      digests.leaf_name(p): (tuple(x.shape), str(x.dtype))
      for p, x in leaves
      if hasattr(x, 'shape')
  }


def _mismatch(mngr: ocp.CheckpointManager, step: int, abstract_state) -> str | None:
  """The first array whose shape differs between checkpoint ``step`` and
  ``abstract_state``, or None; raises if the metadata is unreadable."""
  saved = _shapes(mngr.item_metadata(step)['state'].tree)
  wanted = _shapes(abstract_state)
  for path in sorted(set(saved) | set(wanted)):
    if saved.get(path) != wanted.get(path):
      return f'{path}: {saved.get(path)} in the checkpoint, {wanted.get(path)} now'
  return None


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  """Moves checkpoint ``step`` to ``corrupt/`` (process 0; the others wait for it)."""
  directory = os.fspath(mngr.directory)
  target = os.path.join(directory, CORRUPT_DIR, f'{step}.{int(time.time())}')
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(directory, str(step)), target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'osgan_jax: checkpoint {step} moved aside')
  mngr.reload()
  return target


@contextlib.contextmanager
def _stderr_to(path: str):
  """Sends file descriptor 2 to ``path``: a failing tensorstore read prints a traceback
  per pending read ('Event loop is closed') straight to fd 2, hundreds of lines."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(path, 'w') as f:
      os.dup2(f.fileno(), 2)
      yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, check=None):
  """``(state, meta, step)`` of the newest checkpoint that reads, matches its checksums
  and passes ``check(state) -> problem or None``; None when there is none. Unusable ones
  are moved to ``corrupt/``; other shapes or none left: ``CheckpointError``."""
  steps = sorted(mngr.all_steps(), reverse=True)
  log = os.path.join(os.fspath(mngr.directory), f'restore.{jax.process_index()}.log')
  for step in steps:
    mismatch = None
    with _stderr_to(log):
      try:
        state, meta = restore(mngr, abstract_state, step)
        problem = digests.mismatch(state, meta.get('digests'))
        if problem is None and check is not None:
          problem = check(state)
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many)
        problem = f'{type(e).__name__}: {" ".join(str(e).split())[:160]}'
        try:
          mismatch = _mismatch(mngr, step, abstract_state)
        except Exception:  # pylint: disable=broad-except
          pass
        time.sleep(1.0)  # the failed read's other pending reads report on fd 2 meanwhile
      if problem is not None:
        gc.collect()  # now, while fd 2 is the log: collected asyncio tasks print errors
    if mismatch:
      raise CheckpointError(
          f'checkpoint {step} in {mngr.directory} does not fit this config ({mismatch})'
      )
    if problem is None:
      os.remove(log)
      return state, meta, step
    where = _move_aside(mngr, step)
    if jax.process_index() == 0:
      os.replace(log, where + '.log')
    message = 'Checkpoint %d is unusable (%s); moved to %s, trying the one before'
    logging.warning(message, step, problem, where)
  if steps:
    raise CheckpointError(
        f'no usable checkpoint in {mngr.directory}: all {len(steps)} were moved to '
        f'{CORRUPT_DIR}/; start afresh with another --workdir'
    )
  return None


def latest_config(directory: str):
  """``(step, config)`` of the newest checkpoint in ``directory`` carrying a config."""
  if not os.path.isdir(directory):
    return None
  mngr = manager(directory, 1 << 30, async_save=False)
  try:
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        config = restore_meta(mngr, step).get('config')
      except Exception:  # pylint: disable=broad-except  (an unreadable one: try older)
        continue
      if config:
        return step, config
  finally:
    mngr.close()
  return None


def verify(directory: str) -> list:
  """``[(step, problem or None)]``: every checkpoint in ``directory`` read back (to host
  memory) and checked against its recorded checksums."""
  mngr = manager(directory, 1 << 30, async_save=False)
  results = []
  try:
    for step in sorted(mngr.all_steps()):
      try:
        state, meta = restore(mngr, None, step)  # no target: onto the host
        problem = digests.mismatch(state, meta.get('digests'))
        if problem is None and not meta.get('digests'):
          problem = 'no checksums recorded (saved by an older version): not verified'
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many)
        problem = f'unreadable ({type(e).__name__}: {" ".join(str(e).split())[:160]})'
      results.append((step, problem))
  finally:
    mngr.close()
  return results


class Best:
  """The checkpoint with the best value of ``metric`` so far, in ``workdir/best/`` (or
  ``<directory>/``); ``best.json`` is written once it is complete."""

  def __init__(
      self, workdir: str, metric: str, mode: str = 'min', directory: str | None = None
  ):
    if mode not in ('min', 'max'):
      raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    self.metric, self.sign = metric, 1.0 if mode == 'min' else -1.0
    self.dir = os.path.join(workdir, directory or BEST_DIR)
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
