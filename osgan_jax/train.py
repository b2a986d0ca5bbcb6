"""``train_and_evaluate(config, workdir)``: checks the config, builds the task it names
and runs it in the one loop. What a run leaves in its workdir: ``docs/training.md``."""

from __future__ import annotations

import json
import time

from absl import logging

from osgan_jax import config as config_lib
from osgan_jax import tasks
from osgan_jax.training import guards
from osgan_jax.training import loop
from osgan_jax.training import parallel
from osgan_jax.training import workdir as workdir_lib


def loop_settings(config) -> loop.Settings:
  """The loop's settings from a config: its keys of the same names, and the record the
  workdir checks a resumed run against."""
  record = workdir_lib.Record(
      config=json.loads(config.to_json_best_effort(sort_keys=True)),
      may_change=config_lib.may_change,
      allowed=str(config.allow_config_change),
      default=lambda key: config_lib.default_json(key, workdir_lib.NO_DEFAULT),
  )
  return loop.Settings(
      seed=int(config.seed),
      batch_size=int(config.batch_size),
      num_train_steps=int(config.num_train_steps),
      log_every_steps=int(config.log_every_steps),
      checkpoint_every_steps=int(config.checkpoint_every_steps),
      keep_checkpoints=int(config.keep_checkpoints),
      num_devices=int(config.num_devices),
      progress_bar=bool(config.progress_bar),
      divergence=guards.Divergence(**config.divergence.to_dict()),
      record=record,
  )


def train_and_evaluate(config, workdir: str):
  """Trains ``config`` in ``workdir``, resuming from its latest checkpoint; returns the
  final state, replicated over the mesh. ``DataError`` and ``ConfigError`` are raised
  before anything is written."""
  parallel.initialize(config.multihost)
  parallel.check_same_config(config.to_json_best_effort(sort_keys=True))
  config_lib.validate(config)
  start = time.perf_counter()
  task = tasks.build(config, workdir)
  took, name = time.perf_counter() - start, config.get('task', 'gan')
  logging.info('Setup: the %s task (data, networks, evaluators) in %.1f s', name, took)
  return loop.run(loop_settings(config), workdir, task)
