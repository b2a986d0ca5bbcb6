"""The workdir keeps the config it was started with: on resume, keys that change shapes
or meaning are refused unless allowed; accepted changes are recorded."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
from typing import Any, Callable

from absl import logging

from osgan_jax.config import ConfigError

NO_DEFAULT = object()  # a key the table does not know: never taken as newly added

CONFIG_FILE = 'config.json'
LOCK_FILE = 'lock'
HISTORY_FILE = 'config_history.jsonl'


@dataclasses.dataclass(frozen=True)
class Record:
  """The run's config (JSON), the keys a resume may change (``may_change(dotted_key)``)
  and those the user allows anyway (``allowed``: comma-separated, ``'*'`` for any)."""

  config: dict = dataclasses.field(default_factory=dict)
  may_change: Callable[[str], bool] = lambda key: False
  allowed: str = ''
  default: Callable[[str], Any] = lambda key: NO_DEFAULT  # a key's default, as JSON


def _flatten(tree, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def changes(old: dict, new: dict, default: Callable[[str], Any] = lambda k: NO_DEFAULT):
  """``{key: [old value, new value]}`` of the keys that differ (flattened). A key the
  old config lacks, now at its ``default``, is a key added to the library since the
  run began, not a change."""
  old, new = _flatten(old), _flatten(new)
  keys = sorted(set(old) | set(new))
  added = lambda k: k not in old and new[k] == default(k)
  return {
      k: [old.get(k), new.get(k)]
      for k in keys
      if old.get(k) != new.get(k) and not added(k)
  }


def os_error(e: OSError, what: str) -> str:
  """One line: what failed, on which path, why."""
  path = f' {e.filename}' if getattr(e, 'filename', None) else ''
  return f'{what}{path}: {e.strerror or e}'


def _recorded(workdir: str, path: str, recover: Callable) -> dict | None:
  """The config the checkpoints were trained with: ``config.json``, else the one the
  newest checkpoint carries (rebuilt, with a warning)."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    why = 'is missing'
  except (OSError, ValueError) as e:
    why = f'is unreadable ({type(e).__name__})'
  found = recover()
  if found is None:
    if why == 'is missing':
      return None  # checkpoints from before configs travelled with them
    raise ConfigError(
        f'{path} {why} and no checkpoint in {workdir} carries its config: restore it or '
        'use another --workdir'
    )
  step, config = found
  logging.warning('%s %s; rebuilt from checkpoint %d', path, why, step)
  return config


def prepare(
    workdir: str,
    record: Record,
    resuming: bool,
    is_main: bool,
    recover: Callable = lambda: None,
) -> None:
  """Creates ``workdir`` and writes ``config.json`` once ``record`` may resume it;
  ``recover()`` gives a lost ``config.json`` back: ``(step, config)`` or None."""
  path = os.path.join(workdir, CONFIG_FILE)
  changed = {}
  if resuming and record.config:
    recorded = _recorded(workdir, path, recover)
    if recorded is not None:
      changed = changes(recorded, record.config, record.default)
  allowed = {k.strip() for k in record.allowed.split(',')}
  refused = [k for k in changed if not (record.may_change(k) or {k, '*'} & allowed)]
  if refused:
    listed = ', '.join(f'{k}: {changed[k][0]!r} -> {changed[k][1]!r}' for k in refused)
    raise ConfigError(
        f'{workdir} holds checkpoints of another config ({listed}); use a new --workdir, '
        f'or allow it with --config.allow_config_change={",".join(refused)}'
    )
  if not is_main:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    if changed:
      with open(os.path.join(workdir, HISTORY_FILE), 'a') as f:
        line = {'time': time.strftime('%Y-%m-%dT%H:%M:%S'), 'changed': changed}
        f.write(json.dumps(line) + '\n')
    if record.config:
      with open(path + '.tmp', 'w') as f:
        f.write(json.dumps(record.config, indent=2, sort_keys=True) + '\n')
      os.replace(path + '.tmp', path)
  except OSError as e:
    raise ConfigError(os_error(e, 'cannot write the workdir')) from None


class Lock:
  """One run per workdir: an exclusive ``flock`` on ``workdir/lock`` (dropped when the
  process ends, SIGKILL included), holding the owner's pid and host."""

  def __init__(self, workdir: str):
    self.path, self._file = os.path.join(workdir, LOCK_FILE), None

  def __enter__(self):
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      f = open(self.path, 'a+')
    except OSError as e:
      raise ConfigError(os_error(e, 'cannot write the workdir')) from None
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      owner = f.read().strip() or 'another process'
      f.close()
      raise WorkdirBusy(
          f'{os.path.dirname(self.path)} is in use by {owner}: one run per workdir (wait '
          'for it, stop it, or use another --workdir)'
      ) from None
    f.seek(0)
    previous = f.read().strip()
    if previous:
      logging.warning('Took over the lock of %s, which no longer runs', previous)
    f.seek(0)
    f.truncate()
    f.write(f'process {os.getpid()} on {socket.gethostname()}\n')
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc):
    self._file.truncate(0)
    self._file.close()  # releases the flock
    return False


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir; the message is one line."""
