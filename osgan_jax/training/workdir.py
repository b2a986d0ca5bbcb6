"""The workdir keeps the config it was started with: on resume, keys that change shapes
or meaning are refused in one line unless allowed; accepted changes are recorded."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

from osgan_jax.config import ConfigError

CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'


@dataclasses.dataclass(frozen=True)
class Record:
  """The run's config as a JSON dict, which keys a resumed run may change
  (``may_change(dotted_key)``), and the keys the user allows to change anyway
  (``allowed``: comma-separated, ``'*'`` for any)."""

  config: dict = dataclasses.field(default_factory=dict)
  may_change: Callable[[str], bool] = lambda key: False
  allowed: str = ''


def _flatten(tree, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def changes(old: dict, new: dict) -> dict:
  """``{key: [old value, new value]}`` of the keys that differ (flattened)."""
  old, new = _flatten(old), _flatten(new)
  return {
      k: [old.get(k), new.get(k)]
      for k in sorted(set(old) | set(new))
      if old.get(k) != new.get(k)
  }


def os_error(e: OSError, what: str) -> str:
  """One line: what failed, on which path, why."""
  path = f' {e.filename}' if getattr(e, 'filename', None) else ''
  return f'{what}{path}: {e.strerror or e}'


def prepare(workdir: str, record: Record, resuming: bool, is_main: bool) -> None:
  """Creates ``workdir`` and writes ``config.json`` once ``record`` may resume it."""
  path = os.path.join(workdir, CONFIG_FILE)
  changed = {}
  if resuming and record.config and os.path.exists(path):
    try:
      with open(path) as f:
        changed = changes(json.load(f), record.config)
    except (OSError, ValueError) as e:
      raise ConfigError(
          f'{path} is unreadable ({e}); it describes the checkpoints in {workdir}: '
          'restore it or use another --workdir'
      ) from None
  allowed = {k.strip() for k in record.allowed.split(',')}
  refused = [
      k
      for k in changed
      if not record.may_change(k) and k not in allowed and '*' not in allowed
  ]
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
