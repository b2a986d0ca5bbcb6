"""The base config built from the key table, the loader of config files, validation
with one-line errors, and the ``--helpconfig`` text."""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from osgan_jax.config import keys as keys_lib


class ConfigError(ValueError):
  """An invalid config value or combination; the message is one line for the user."""


def _nest(flat: dict) -> ml_collections.ConfigDict:
  root = ml_collections.ConfigDict()
  for dotted, value in flat.items():
    *parents, leaf = dotted.split('.')
    node = root
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return root


def get_base_config() -> ml_collections.ConfigDict:
  """Every key at its default (``keys.KEYS``), with the default evaluators."""
  config = _nest({k: key.initial() for k, key in keys_lib.KEYS.items()})
  config.evals = ml_collections.ConfigDict(
      {
          name: keys_lib.eval_defaults(kind)
          for name, kind in keys_lib.DEFAULT_EVALS.items()
      }
  )
  return config


def get_config_of(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file; ``ConfigError`` in one line when the file cannot
  be loaded, has no ``get_config``, or it fails or returns something else."""
  name = 'osgan_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None or not os.path.isfile(path):
    raise FileNotFoundError(f'--config={path}: No such file or directory')
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f'{path}, line {e.lineno}: syntax error ({e.msg})') from None
  except Exception as e:  # pylint: disable=broad-except  (the file's own code failed)
    raise ConfigError(f'{path} failed to load ({type(e).__name__}: {e})') from None
  if not callable(getattr(module, 'get_config', None)):
    raise ConfigError(f'{path} defines no get_config() (configs/*.py show the form)')
  try:
    config = module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'{path}: get_config() raised {type(e).__name__}: {e}') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
        f'{path}: get_config() returned {type(config).__name__}, not an '
        'ml_collections.ConfigDict (a missing return?)'
    )
  return config


def load_config(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file, locked, with dotted-key ``overrides``; an unknown
  key raises ``KeyError``, a wrongly typed value ``TypeError``, as on the command line."""
  config = get_config_of(path)
  config.lock()
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise KeyError(f'unknown config key {key!r} (the config is locked)')
    node[leaf] = value
  return config


def flatten(node, prefix: str = '') -> dict:
  """``{dotted key: value}`` of a config (or a nested dict)."""
  out = {}
  for key in node.keys():
    value = node[key]
    if hasattr(value, 'keys'):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def _fail(dotted: str, allowed: str, value) -> ConfigError:
  return ConfigError(f'config.{dotted} must be {allowed}, got {value!r}')


def _check_evals(config) -> None:
  for name in config.get('evals', {}).keys():
    entry = config.evals[name]
    kind = entry.get('type') if hasattr(entry, 'get') else None
    if kind not in keys_lib.EVAL_TYPES:
      raise _fail(f'evals.{name}.type', 'one of ' + ', '.join(keys_lib.EVAL_TYPES), kind)
    table = keys_lib.EVAL_TYPES[kind]
    for k in entry.keys():
      if k != 'type' and k not in table:
        raise ConfigError(
            f'config.evals.{name}.{k} is not a key of {kind!r} evaluators '
            f'({", ".join(table)})'
        )
    for k, key in table.items():
      if k not in entry:
        raise ConfigError(
            f'config.evals.{name} lacks {k!r}; build entries with '
            f'config.eval_entry({kind!r}, ...)'
        )
      problem = key.check(entry[k]) if key.check else None
      if problem:
        raise _fail(f'evals.{name}.{k}', problem, entry[k])


def _check_augment(config) -> None:
  a, final = config.augment, config.schedule.augment_p
  if a.pipe == 'none':
    if a.target > 0 or a.p not in (-1, 0) or final >= 0:
      raise ConfigError(
          'config.augment.p, config.augment.target and config.schedule.augment_p need '
          "config.augment.pipe (e.g. 'ada')"
      )
    return
  if final >= 0:
    if a.target > 0:
      raise ConfigError(
          'config.schedule.augment_p ramps p, config.augment.target adapts it: set one'
      )
    if final > 1:
      raise _fail('schedule.augment_p', 'in [0, 1]', final)
    if int(config.schedule.steps) == 0:
      raise ConfigError(
          'config.schedule.augment_p is set but config.schedule.steps is 0; give the '
          'ramp length in steps'
      )
    return
  if a.target == 0 and a.p in (-1, 0) and a.pipe != 'diffaugment':
    raise ConfigError(
        f'config.augment.pipe={a.pipe!r} with p=0 and no target augments nothing; set '
        'config.augment.p (fixed) or config.augment.target (adaptive, ADA: 0.6)'
    )
  if a.pipe == 'diffaugment' and a.p == 0 and a.target == 0:
    raise ConfigError(
        "config.augment.pipe='diffaugment' with p=0 and no target augments nothing"
    )


def _check_rules(config) -> None:
  """Checks that involve more than one key."""
  # Lazy: importing the config (as every command's --help does) loads no JAX.
  from osgan_jax.core import losses  # pylint: disable=g-import-not-at-top

  try:
    losses.get(config.loss)
  except ValueError as e:
    raise ConfigError(f'config.loss: {e}') from None
  _check_augment(config)
  s = config.schedule
  ramped = [
      n
      for n in ('g_lr', 'd_lr', 'b2', 'r1', 'r2', 'gp', 'ema_half_life_kimg')
      if s[n] >= 0
  ]
  if ramped and int(s.steps) == 0:
    raise ConfigError(
        f'config.schedule.{ramped[0]} is set but config.schedule.steps is 0; give the ramp '
        'length in steps'
    )
  if 'b2' in ramped and not s.b2 < 1:
    raise _fail('schedule.b2', 'in [0, 1)', s.b2)
  for n in ('g_lr', 'd_lr'):
    if n in ramped and not s[n] > 0:
      raise _fail(f'schedule.{n}', '> 0', s[n])
  reg = config.reg
  if reg.pl_weight > 0 and int(config.batch_size) // int(reg.pl_batch_shrink) < 1:
    raise ConfigError('config.batch_size // config.reg.pl_batch_shrink must be >= 1')


def validate(config) -> None:
  """Every key's check (``keys.KEYS``), the evaluators and the cross-key rules; raises
  ``ConfigError`` with a one-line message naming the key and what it must be."""
  for dotted, value in flatten(config).items():
    top = dotted.split('.')[0]
    if top in ('evals', 'model') and dotted != 'model.name':
      continue
    key = keys_lib.KEYS.get(dotted)
    if key is None:
      raise ConfigError(f'config.{dotted} is not a key of osgan_jax (see --helpconfig)')
    problem = key.check(value) if key.check else None
    if problem:
      raise _fail(dotted, problem, value)
  _check_evals(config)
  _check_rules(config)


def describe(config) -> str:
  """``--helpconfig``: every key with its value and what it means."""
  lines, section = ['Keys of this config (override any as --config.KEY=VALUE):'], None
  for dotted, value in flatten(config).items():
    parts = dotted.split('.')
    if len(parts) > 1 and parts[0] != section:
      section = parts[0]
      lines.append(f'``{section}.*``: {keys_lib.SECTIONS.get(section, "")}')
    if parts[0] == 'evals' and len(parts) == 3:
      kind = config.evals[parts[1]].get('type')
      key = keys_lib.EVAL_TYPES.get(kind, {}).get(parts[2])
      doc = (
          key.doc if key else f'the kind of evaluator ({", ".join(keys_lib.EVAL_TYPES)})'
      )
    elif parts[0] == 'model' and len(parts) > 2:
      doc = f'an argument of the {config.model.name!r} {parts[1]}'
    else:
      key = keys_lib.KEYS.get(dotted)
      doc = key.doc if key else ''
    lines.append(f'  --config.{dotted}={value!r}\n      {doc}')
  return '\n'.join(lines)


def eval_entry(kind: str, **values) -> ml_collections.ConfigDict:
  """A ``config.evals`` entry of type ``kind`` with every key (defaults, then ``values``),
  e.g. ``config.evals.fid_classifier = eval_entry('fid', features='classifier', ...)``."""
  return ml_collections.ConfigDict(keys_lib.eval_defaults(kind, **values))
