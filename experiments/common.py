"""What every benchmark shares: row specs, the interleaved timer and its ratios, the
provenance record, result writers and device names.

One timer for every comparison: variants run in rounds, each round in an order rotated
by one, and every ratio is taken within a round (same load on a shared machine) and
summarised by its median and min-max. One provenance record for every results file:
commit, modified files, versions, device, command line and date, so that a number in a
document can be checked against the file it comes from (``experiments.check_claims``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'experiments', 'results')
VERSIONED = ('jax', 'jaxlib', 'flax', 'optax', 'numpy')


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """A benchmark row: a config file (relative to the repository) plus overrides, and
  the variants (steps) it compiles and times."""

  config: str
  overrides: dict
  note: str = ''
  variants: tuple = ('one_stage', 'two_stage', 'official_two_stage', 'one_stage_approx')


# ------------------------------------------------------------------ the timer


def run_interleaved(
    fns: dict,
    rounds: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
  """Times ``fns`` (name -> callable that returns when its work is done) side by side.

  ``warmup`` untimed rounds, then ``rounds`` timed ones; round r calls every function
  once in the order rotated by r (A B C, B C A, C A B, ...), so neither drift in the
  machine's load nor a fixed predecessor favours one. Returns name -> seconds per round.
  """
  names = list(fns)
  for _ in range(warmup):
    for name in names:
      fns[name]()
  times = {name: [] for name in names}
  for r in range(rounds):
    k = r % len(names)
    for name in names[k:] + names[:k]:
      t0 = clock()
      fns[name]()
      times[name].append(clock() - t0)
  return times


def spread(values) -> dict:
  """``{'median', 'min', 'max'}`` of ``values``."""
  v = np.asarray(values, np.float64)
  return {'median': float(np.median(v)), 'min': float(v.min()), 'max': float(v.max())}


def per_round_ratios(times: dict, baseline: str) -> dict:
  """name -> the spread of ``times[name][r] / times[baseline][r]`` over rounds r."""
  base = np.asarray(times[baseline], np.float64)
  out = {}
  for name, ts in times.items():
    ts = np.asarray(ts, np.float64)
    if ts.shape != base.shape:
      raise ValueError(f'{name}: {ts.shape[0]} rounds, {baseline}: {base.shape[0]}')
    out[name] = spread(ts / base)
  return out


def ratio_summary(
    times: dict, baseline: str, per_call: int = 1, prefix: str = ''
) -> dict:
  """Per name: step time (``step_ms_median``, ``_min``, ``_max``: a call's seconds over
  ``per_call`` steps) and the per-round ratio to ``baseline``
  (``ratio_to_<prefix or baseline>_median``, ``_min``, ``_max``), and ``rounds``."""
  ratios = per_round_ratios(times, baseline)
  key = f'ratio_to_{prefix or baseline}'
  out = {}
  for name, ts in times.items():
    steps = spread(np.asarray(ts, np.float64) * 1e3 / per_call)
    out[name] = {
        'step_ms_median': steps['median'],
        'step_ms_min': steps['min'],
        'step_ms_max': steps['max'],
        f'{key}_median': ratios[name]['median'],
        f'{key}_min': ratios[name]['min'],
        f'{key}_max': ratios[name]['max'],
        'rounds': len(ts),
        'steps_per_call': per_call,
    }
  return out


# ------------------------------------------------------------------ provenance


def _git(*args) -> str:
  return subprocess.run(
      ['git', *args], cwd=REPO, check=True, capture_output=True, text=True
  ).stdout


def git_state() -> dict:
  """The commit measured and every path of the tree that differs from it: tracked
  files (``git_modified``: library, configs, experiments, docs alike) and untracked
  ones (``git_untracked``); ``git_dirty`` unless both are empty outside results;
  ``git_diff_sha256`` identifies the differing contents (results excluded)."""
  try:
    commit = _git('rev-parse', 'HEAD').strip()
    status = _git('status', '--porcelain', '--untracked-files=all').splitlines()
  except (OSError, subprocess.CalledProcessError):
    return {'git_commit': None, 'git_dirty': None, 'git_modified': None}
  modified = sorted(line[3:] for line in status if line[:2] != '??')
  untracked = sorted(line[3:] for line in status if line[:2] == '??')
  results = os.path.relpath(RESULTS, REPO) + '/'
  code = [p for p in modified + untracked if not p.startswith(results)]
  return {
      'git_commit': commit,
      'git_dirty': bool(code),
      'git_modified': modified,
      'git_untracked': untracked,
      'git_diff_sha256': _diff_sha256(code, set(untracked)) if code else None,
  }


def _diff_sha256(paths, untracked) -> str:
  import hashlib

  digest = hashlib.sha256()
  for path in paths:
    digest.update(path.encode() + b'\0')
    if path in untracked:
      try:
        with open(os.path.join(REPO, path), 'rb') as f:
          digest.update(f.read())
      except OSError:
        pass
    else:
      digest.update(_git('diff', 'HEAD', '--binary', '--', path).encode())
  return digest.hexdigest()


def versions(torch: bool = False) -> dict:
  """Python and the packages a measurement depends on (torch when asked or loaded)."""
  import importlib.metadata as metadata

  out = {'python': platform.python_version()}
  names = VERSIONED + (('torch',) if torch or 'torch' in sys.modules else ())
  for name in names:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def device_name() -> str:
  """``platform:device kind`` of the first JAX device, e.g. ``gpu:NVIDIA H200``."""
  import jax

  d = jax.devices()[0]
  return f'{d.platform}:{d.device_kind}'


def machine() -> dict:
  """The host: OS, CPU model and count, memory, and the load when measuring."""
  cpu, mem = platform.processor(), None
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(
          (l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu
      )
    with open('/proc/meminfo') as f:
      mem = int(f.readline().split()[1]) * 1024
  except (OSError, IndexError, ValueError):
    pass
  return {
      'platform': platform.platform(),
      'cpu': cpu,
      'cpu_count': os.cpu_count(),
      'memory_bytes': mem,
      'load_average': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
  }


def command_line(module: str, argv: Sequence[str] | None) -> str:
  """The command as typed: the process's own for ``argv=None``, else ``python -m
  <module> <argv>`` (a script's ``main(argv)`` called from Python)."""
  if argv is None:
    return shlex.join(getattr(sys, 'orig_argv', sys.argv))
  return shlex.join(['python', '-m', module, *argv])


def provenance(command: str, *, torch: bool = False) -> dict:
  """The record every results file carries (``experiments/README.md``, Provenance)."""
  import jax

  return {
      **git_state(),
      'versions': versions(torch),
      'device': device_name(),
      'device_count': jax.device_count(),
      'backend': jax.default_backend(),
      'command': command,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'machine': machine(),
  }


def short_rev(prov: dict) -> str | None:
  """``abc1234`` or ``abc1234+dirty``: the commit as one word."""
  if not prov.get('git_commit'):
    return None
  return prov['git_commit'][:7] + ('+dirty' if prov.get('git_dirty') else '')


def recorded_commits(data) -> list:
  """The commits a results file records (None where a row records none), whatever
  its age: ``provenance.git_commit`` (now), ``machine.git_commit`` (device and speed
  results), ``git_rev`` (quality rows, ``abc1234`` or ``abc1234+dirty``)."""

  def one(record):
    if not isinstance(record, dict):
      return None
    for holder in (record.get('provenance'), record.get('machine'), record):
      if isinstance(holder, dict):
        for key in ('git_commit', 'git_rev'):
          if holder.get(key):
            return str(holder[key]).split('+')[0]
    return None

  if isinstance(data, list):
    return [one(r) for r in data]
  return [one(data)]


def recorded_dirty(data) -> bool:
  """Whether any record of a results file says its tree differed from the commit:
  ``git_dirty`` (now), a non-empty ``git_modified`` (before), ``+dirty`` in ``git_rev``.
  """

  def one(record):
    if not isinstance(record, dict):
      return False
    for holder in (record.get('provenance'), record.get('machine'), record):
      if isinstance(holder, dict):
        if holder.get('git_dirty') or holder.get('git_modified'):
          return True
        if '+dirty' in str(holder.get('git_rev') or ''):
          return True
    return False

  return any(one(r) for r in (data if isinstance(data, list) else [data]))


# ------------------------------------------------------------------ writers


def output_dir(out: str | None, prefix: str) -> str:
  """``out``, created; or a new temporary directory (results never go into the
  checkout unless the user names a path there)."""
  path = out or tempfile.mkdtemp(prefix=f'osgan_{prefix}_')
  os.makedirs(path, exist_ok=True)
  return path


def write_json(path: str, data) -> str:
  """Writes ``data`` as indented JSON, whole or not at all (a partial run's results
  survive an interruption)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(data, f, indent=1)
    f.write('\n')
  os.replace(path + '.tmp', path)
  return path


def append_jsonl(path: str, row: dict) -> None:
  """One line, whole, under an exclusive lock (several processes append to one file)."""
  import fcntl

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.write(json.dumps(row, sort_keys=True) + '\n')
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str) -> list:
  """The records of a JSON-lines file; a partly written line is skipped."""
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          pass
  return records


def write_csv(path: str, rows: Sequence[dict], fields: Sequence[str]) -> str:
  """The ``fields`` of ``rows`` as CSV (missing fields empty)."""
  import csv

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, list(fields), extrasaction='ignore')
    writer.writeheader()
    for r in rows:
      writer.writerow({k: r.get(k) for k in fields})
  return path


def write_record(path: str, record: dict, fields: Sequence[str]) -> str:
  """A results record (``provenance``, settings, ``rows``) as JSON and its rows as CSV
  beside it (same stem); returns the CSV path."""
  write_json(path, record)
  return write_csv(os.path.splitext(path)[0] + '.csv', record['rows'], fields)


# ------------------------------------------------------------------ small helpers


def make_images(folder: str, n: int, resolution: int) -> None:
  """``n`` smooth random RGB PNGs (deterministic; PNG-compressible like photos)."""
  from PIL import Image

  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
  for i in range(n):
    path = os.path.join(folder, f'{i:06d}.png')
    if os.path.exists(path):
      continue
    f = rng.uniform(1, 6, (3, 2))
    rgb = np.stack(
        [np.sin(f[c, 0] * xx * 6.28 + i) * np.cos(f[c, 1] * yy * 6.28) for c in range(3)],
        -1,
    )
    Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8)).save(path)


def parse_overrides(items: Sequence[str]) -> dict:
  """``['a.b=1', 'c=x']`` -> ``{'a.b': 1, 'c': 'x'}`` (values parsed as JSON where
  they parse)."""
  out = {}
  for item in items or ():
    key, sep, value = item.partition('=')
    if not sep or not key.strip():
      raise ValueError(f'override {item!r} is not KEY=VALUE')
    try:
      out[key.strip()] = json.loads(value.strip())
    except json.JSONDecodeError:
      out[key.strip()] = value.strip()
  return out


def fmt(value, digits: int = 3) -> str:
  """A table cell: '-' for None, floats to ``digits`` significant digits."""
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.{digits}g}'
  return str(value)


def markdown_table(head: Sequence[str], lines: Sequence[Sequence]) -> str:
  """A markdown table of already formatted cells."""
  out = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  out += ['| ' + ' | '.join(str(c) for c in cells) + ' |' for cells in lines]
  return '\n'.join(out)


def log(message: str) -> None:
  print(message, flush=True)
