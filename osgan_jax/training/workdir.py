"""The workdir keeps the config it was started with.

On resume the config is compared with ``workdir/config.json``. Keys that change shapes
or meaning (model, data, loss, stage, batch size, seed, ...) are refused with one line
that names them, unless ``config.allow_config_change`` lists them (comma-separated, or
``'*'``); harmless ones (step counts, intervals, evaluation cadence, data loading
speed, the data's location) are accepted. Accepted changes are appended to
``config_history.jsonl``. ``config.json`` is written only after the check passes.
"""

from __future__ import annotations

import json
import os
import time

from osgan_jax.config import ConfigError

CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'
# Keys (or key prefixes ending in '.') a resumed run may change freely.
HARMLESS = (
    'num_train_steps',
    'log_every_steps',
    'checkpoint_every_steps',
    'sample_every_steps',
    'keep_checkpoints',
    'progress_bar',
    'num_samples',
    'eval_every_steps',
    'eval_batch_size',
    'num_devices',
    'multihost',
    'allow_config_change',
    'fid.',
    'divergence.',
    'data.num_threads',
    'data.prefetch',
    'data.num_workers',
    'data.path',
    'data.download',
)


def _flatten(tree, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def _harmless(key: str) -> bool:
  return any(key == h or (h.endswith('.') and key.startswith(h)) for h in HARMLESS)


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


def prepare(workdir: str, config, resuming: bool, is_main: bool) -> None:
  """Creates ``workdir`` and writes ``config.json`` once ``config`` may resume it."""
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort(sort_keys=True))
  changed = {}
  if resuming and os.path.exists(path):
    try:
      with open(path) as f:
        changed = changes(json.load(f), new)
    except (OSError, ValueError) as e:
      raise ConfigError(
          f'{path} is unreadable ({e}); it describes the checkpoints in '
          f'{workdir}: restore it or use another --workdir'
      ) from None
  allowed = {k.strip() for k in str(config.get('allow_config_change', '')).split(',')}
  refused = [
      k for k in changed if not _harmless(k) and k not in allowed and '*' not in allowed
  ]
  if refused:
    listed = ', '.join(f'{k}: {changed[k][0]!r} -> {changed[k][1]!r}' for k in refused)
    raise ConfigError(
        f'{workdir} holds checkpoints of another config ({listed}); use a '
        f'new --workdir, or allow it with '
        f'--config.allow_config_change={",".join(refused)}'
    )
  if not is_main:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    if changed:
      with open(os.path.join(workdir, HISTORY_FILE), 'a') as f:
        f.write(
            json.dumps({'time': time.strftime('%Y-%m-%dT%H:%M:%S'), 'changed': changed})
            + '\n'
        )
    with open(path + '.tmp', 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
    os.replace(path + '.tmp', path)
  except OSError as e:
    raise ConfigError(os_error(e, 'cannot write the workdir')) from None
