"""The one training loop every task runs: a task gives its state's ``init``, phases,
batches and evaluators; the loop owns devices, RNG, resume, signals, checkpoints, metrics
and progress (``docs/training.md`` narrates it)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging

from osgan_jax import data as data_lib
from osgan_jax.config import ConfigError
from osgan_jax.core import steps
from osgan_jax.training import checkpoint
from osgan_jax.training import compile_cache
from osgan_jax.training import guards
from osgan_jax.training import parallel
from osgan_jax.training import progress
from osgan_jax.training import runtime
from osgan_jax.training import workdir as workdir_lib
from osgan_jax.training.guards import Divergence, TrainingError
from osgan_jax.training.metric_writer import MetricWriter, reduce_metrics

MAX_IN_FLIGHT = 2  # iterations dispatched ahead of the device: bounds the batches held
_BUILD_ERRORS = (ValueError, TypeError, KeyError, IndexError, AssertionError)
_BUILD_ERRORS += (ZeroDivisionError,)  # what building a bad config's networks raises


@dataclasses.dataclass(frozen=True)
class Phase:
  """``fn(state, batch, rng, iteration) -> (state, metrics)``, pure, run at iterations
  ``i`` with ``i % interval == 0`` in list order; ``rng`` is ``fold_in(key, i)``."""

  name: str
  fn: Callable
  interval: int = 1


@dataclasses.dataclass
class Task:
  """What a task gives the loop: ``init(key, *init_args)`` the state at step 0;
  ``batches(start_step, process_index, process_count)`` this process's host batches
  from global batch ``start_step`` on (None: no data); ``meta`` goes into every
  checkpoint; ``progress`` names the metrics the progress bar shows."""

  name: str
  init: Callable
  make_phases: Callable[[Any], Sequence[Phase]]
  batches: Callable | None = None
  evaluators: Sequence = ()
  meta: dict = dataclasses.field(default_factory=dict)
  init_args: tuple = ()
  progress: tuple = ('loss_d', 'loss_g')


@dataclasses.dataclass(frozen=True)
class Settings:
  """The loop's plain settings (the config keys of the same names)."""

  seed: int = 0
  batch_size: int = 128
  num_train_steps: int = 10_000
  log_every_steps: int = 100
  checkpoint_every_steps: int = 2_000
  keep_checkpoints: int = 3
  num_devices: int = 0
  progress_bar: bool = True
  divergence: Divergence = Divergence()
  record: workdir_lib.Record = workdir_lib.Record()


def run(settings: Settings, workdir: str, task: Task):
  """Trains ``task`` in ``workdir``; returns the state. Raises ``ConfigError`` (before
  anything is written), ``data.DataError``, ``TrainingError`` (diverged; cannot write)
  and ``checkpoint.CheckpointError``, each with a one-line message."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    with contextlib.ExitStack() as stack:
      return _Run(settings, workdir, task, stack).train()
  except OSError as e:
    raise TrainingError(
        workdir_lib.os_error(e, 'cannot write') + '; the checkpoints saved so far are '
        'intact: fix it and run the same command to resume'
    ) from None


def abstract_state(task: Task, key):
  """The state's shapes from tracing ``init``: networks that cannot be built or with
  empty arrays (``z_dim=0``) are a one-line ``ConfigError`` before anything is written."""
  try:
    shapes = jax.eval_shape(task.init, key, *task.init_args)
  except _BUILD_ERRORS as e:
    raise ConfigError(
        f'{task.name}: the networks cannot be built with this config '
        f'({type(e).__name__}: {" ".join(str(e).split())[:300]})'
    ) from None
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    if 0 in getattr(leaf, 'shape', ()):
      raise ConfigError(
          f'{task.name}: {jax.tree_util.keystr(path)} would be empty {leaf.shape}; a size '
          'in the config is 0 (z_dim?)'
      )
  return shapes


def _mesh(settings: Settings):
  try:
    mesh = parallel.make_mesh(settings.num_devices)
  except ValueError as e:
    raise ConfigError(f'config.num_devices: {e}') from None
  n = jax.process_count()
  if settings.batch_size % mesh.size or settings.batch_size % n:
    where = f' ({n} processes x {jax.local_device_count()} devices)' if n > 1 else ''
    raise ConfigError(
        f'config.batch_size={settings.batch_size} must be a multiple of the '
        f'{mesh.size} devices{where}'
    )
  return mesh


def _every(step: int, period: int, last: int) -> bool:
  return step % int(period) == 0 or step == last


class _Run:
  """One call of ``run``: setup, then ``train`` (restore, hot loop, boundaries)."""

  def __init__(self, settings: Settings, workdir: str, task: Task, stack):
    self.settings, self.workdir, self.task, self.stack = settings, workdir, task, stack
    self.is_main = parallel.is_main_process()
    mesh = _mesh(settings)
    self.state_sharding = parallel.replicated(mesh)
    self.batch_sharding = parallel.data_sharding(mesh)
    self.num_devices = mesh.size
    root = jax.random.PRNGKey(settings.seed)
    self.init_key = jax.random.fold_in(root, 0)
    self.step_key = jax.device_put(
        np.asarray(jax.random.fold_in(root, 1)), self.state_sharding
    )
    # init runs once: LLVM's optimisation is most of its compile time, so skip it.
    self.init = jax.jit(
        task.init,
        out_shardings=self.state_sharding,
        compiler_options={'xla_backend_optimization_level': 0},
    )
    start = time.perf_counter()
    self.abstract = checkpoint.abstract(
        abstract_state(task, self.init_key), self.state_sharding
    )
    took = time.perf_counter() - start
    logging.info("Setup: the state's shapes traced in %.1f s", took)
    self.ckpt_dir = os.path.join(workdir, 'checkpoints')
    resuming = os.path.isdir(self.ckpt_dir) and any(
        d.isdigit() for d in os.listdir(self.ckpt_dir)
    )
    if self.is_main:  # one run per workdir; process 0 holds it for the job
      stack.enter_context(workdir_lib.Lock(workdir))
    workdir_lib.prepare(
        workdir,
        settings.record,
        resuming,
        self.is_main,
        recover=lambda: checkpoint.latest_config(self.ckpt_dir),
    )

  def train(self):
    settings, task, stack = self.settings, self.task, self.stack
    # From here on SIGTERM/SIGINT only set a flag: a signal during setup or compilation
    # stops the run after its first step, with a checkpoint.
    self.stop = stack.enter_context(runtime.StopOnSignal())
    self.ckpt = checkpoint.manager(self.ckpt_dir, settings.keep_checkpoints)
    stack.callback(checkpoint.close, self.ckpt)  # waits for an asynchronous save
    state, start = self._restore()
    if start >= settings.num_train_steps:
      n = settings.num_train_steps
      logging.info('Nothing to do: the checkpoint is at step %d of %d', start, n)
      return state
    start_phases = time.perf_counter()
    phases = self._jit_phases(task.make_phases(state))
    names = ', '.join(f'{p.name}/{p.interval}' for p, _ in phases)
    took = time.perf_counter() - start_phases
    logging.info('Setup: phases %s in %.1f s; compiling the first step', names, took)
    batches = self._batches(start)
    self.writer = MetricWriter(self.workdir, start, self.is_main)
    stack.callback(self.writer.close)
    if settings.record.config:
      text = json.dumps(settings.record.config, indent=2, sort_keys=True)
      self.writer.write_texts(0, {'config': f'```\n{text}\n```'})
    self.best = self._best_trackers()
    self.guard = guards.Rollbacks(settings.divergence, int(self.meta.get('rollbacks', 0)))
    self.collapse = guards.CollapseWatch(settings.divergence)
    self.progress = stack.enter_context(
        progress.Progress(
            settings.num_train_steps,
            start,
            task.name,
            ('images_per_sec', *task.progress),
            enabled=self.is_main,
            bar=settings.progress_bar,
        )
    )
    size = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, 'size'))
    run = f'{self.num_devices} devices, batch {settings.batch_size}, phases {names}'
    logging.info('%s: %s, state of %d numbers', task.name, run, size)
    # Phases first called (compiled) after the first step, e.g. a lazy one after a resume.
    uncompiled = {k for k, (p, _) in enumerate(phases) if start % p.interval}
    in_flight = collections.deque()
    evaluators = [e for e in task.evaluators if e.every_steps]  # 0: off
    self.clock = progress.Clock(float(self.meta.get('train_seconds', 0.0)))
    self.stopped_by, self.rolled_back_at = None, None
    done, num_steps = start, settings.num_train_steps
    for i in range(start, num_steps):
      with jax.transfer_guard_device_to_host('disallow'):
        batch, skipped = next(batches)
        state, metrics = self._iterate(phases, uncompiled, state, batch, i)
        self.history.append(metrics)
        in_flight.append(metrics)
        if len(in_flight) > MAX_IN_FLIGHT:
          jax.block_until_ready(in_flight.popleft())
      self.skipped += skipped
      done = i + 1
      self.progress.update()
      if i == start:  # compilation is not training time
        jax.block_until_ready(state)
        took = time.perf_counter() - self.clock.start
        logging.info('First step (with compilation) took %.1f s', took)
        self.clock.restart()
        self.progress.restart_eta(done)
      else:
        self.clock.interval_steps += 1
      at_log = _every(done, settings.log_every_steps, num_steps)
      due = [e for e in evaluators if _every(done, e.every_steps, num_steps)]
      # Every process stops at the same step (a collective, so only at log boundaries).
      if jax.process_count() == 1 or at_log:
        if parallel.any_process(self.stop.received is not None):
          self.stopped_by = self.stop.received or 'a signal to another process'
      at_ckpt = (
          _every(done, settings.checkpoint_every_steps, num_steps) or self.stopped_by
      )
      if at_log or due or at_ckpt:
        in_flight.clear()
        state = self._boundary(state, done, at_log, due, at_ckpt)
        if self.stopped_by is not None and self.rolled_back_at != done:
          break
    return self._finish(state, done)

  def _restore(self):
    """The latest intact checkpoint (state, step) and its bookkeeping, or step 0."""
    start = time.perf_counter()
    restored = checkpoint.restore_latest(
        self.ckpt,
        self.abstract,
        lambda s: None if bool(guards.all_finite(s)) else 'non-finite values',
    )
    if restored is None:
      state = jax.block_until_ready(self.init(self.init_key, *self.task.init_args))
      meta, self.last_saved = {}, None
      logging.info('Setup: the state initialised in %.1f s', time.perf_counter() - start)
      start = 0
    else:
      state, meta, _ = restored
      took = time.perf_counter() - start
      start = self.last_saved = int(jax.device_get(state.step))
      message = 'Setup: resumed from the checkpoint at step %d in %s (%.1f s)'
      logging.info(message, start, self.workdir, took)
    self.meta = {**meta, **self.task.meta}
    # Metrics since the last log, so the first interval logged is the uninterrupted run's.
    self.history = list(self.meta.pop('pending_metrics', []))
    self.meta.pop('digests', None)  # each checkpoint's own
    # Skips counted per process; the checkpoint holds the sum, which process 0 carries on.
    self.skipped = int(self.meta.get('skipped_images', 0)) if self.is_main else 0
    return state, start

  def _jit_phases(self, phases):
    """Each phase as one jitted program ``(state, batch, key, i)``, the state donated."""

    def program(fn):
      def run_phase(state, batch, key, i):
        return fn(state, data_lib.to_float(batch), jax.random.fold_in(key, i), i)

      return steps.jit_state_step(
          run_phase,
          state_sharding=self.state_sharding,
          arg_shardings=(self.batch_sharding, self.state_sharding, None),
      )

    return [(p, program(p.fn)) for p in phases]

  def _batches(self, start: int):
    if self.task.batches is None:
      return runtime.NoData()
    it = self.task.batches(start, jax.process_index(), jax.process_count())
    self.stack.callback(it.close)
    prefetch = runtime.DevicePrefetch(it, self.batch_sharding)
    self.stack.callback(prefetch.close)
    return prefetch

  def _best_trackers(self) -> dict:
    best = {}
    for e in self.task.evaluators:
      if getattr(e, 'best', None):
        tracker = checkpoint.Best(
            self.workdir, *e.best, directory=getattr(e, 'best_dir', None)
        )
        self.stack.callback(tracker.close)
        best[id(e)] = tracker
    return best

  def _iterate(self, phases, uncompiled: set, state, batch, i: int):
    """Every phase due at iteration ``i``; nothing waits for the device (but a phase's
    first call, its compilation, which the clock excludes)."""
    metrics, index = {}, np.int32(i)
    for k, (phase, fn) in enumerate(phases):
      if i % phase.interval:
        continue
      if k in uncompiled:
        uncompiled.discard(k)
        jax.block_until_ready(state)
        state, m = self.clock.exclude(lambda: fn(state, batch, self.step_key, index))
      else:
        state, m = fn(state, batch, self.step_key, index)
      metrics.update(m)
    return state, metrics

  def _boundary(self, state, done: int, at_log: bool, due: list, at_ckpt: bool):
    """Divergence guard, then logging, evaluators (and best checkpoints), saving."""
    jax.block_until_ready(state)
    self.clock.stop()
    self.history = jax.device_get(self.history)  # the interval's metrics, on the host
    problem = guards.non_finite(state, self.history, done)
    if problem is not None:
      state = self._roll_back(problem, done)
    else:
      values = self._log_values(done) if at_log else {}
      values.update(self._evaluate(state, done, due))
      if values:
        values['train_seconds'] = self.clock.seconds
      self.writer.write_scalars(done, values)
      self.progress.show(values, done)
      if at_ckpt and self.last_saved != done:
        self._save(state, done)
    self.clock.restart()
    return state

  def _roll_back(self, problem: str, done: int):
    """Stops the run (``TrainingError``) or restores the last checkpoint, skipping
    ahead to step ``done`` (data and keys go on)."""
    checkpoint.wait(self.ckpt)
    last_good = self.ckpt.latest_step()
    self.guard.decide(problem, done, last_good, self.ckpt_dir)
    if last_good is None:
      state = self.init(self.init_key, *self.task.init_args)
    else:
      state = checkpoint.restore(self.ckpt, self.abstract, last_good)[0]
    self.meta['rollbacks'] = self.guard.count
    self.writer.write_scalars(done, {'rollbacks': self.guard.count})
    self.history, self.clock.interval_steps, self.clock.interval_seconds = [], 0, 0.0
    self.rolled_back_at = done
    return state.replace(
        step=jax.device_put(np.asarray(done, state.step.dtype), self.state_sharding)
    )

  def _log_values(self, done: int) -> dict:
    values = reduce_metrics(self.history)
    self.history = []
    self.collapse.update(values)
    rate = self.clock.take_interval()
    if rate:
      values['steps_per_sec'] = rate['steps_per_sec']
      values['images_per_sec'] = rate['steps_per_sec'] * self.settings.batch_size
    values['data_skipped_images'] = parallel.sum_over_processes(self.skipped)
    return values

  def _evaluate(self, state, done: int, due: list) -> dict:
    values = {}
    for e in due:
      evaluation = e(state, done, self.writer)
      values.update(evaluation)
      self.meta.update(evaluation)
      tracker = self.best.get(id(e))
      if tracker is None:
        continue
      value = evaluation.get(tracker.metric)  # None on processes other than 0
      if parallel.any_process(value is not None and tracker.improves(value)):
        tracker.update(
            done,
            state,
            np.nan if value is None else value,
            {**self.meta, 'skipped_images': parallel.sum_over_processes(self.skipped)},
            self.is_main,
        )
    return values

  def _save(self, state, done: int) -> None:
    meta = {
        **self.meta,
        'config': self.settings.record.config,  # rebuilds a lost config.json
        'rollbacks': self.guard.count,
        'train_seconds': self.clock.seconds,
        'skipped_images': parallel.sum_over_processes(self.skipped),
        'pending_metrics': [{k: float(v) for k, v in m.items()} for m in self.history],
    }
    checkpoint.save(self.ckpt, done, state, meta)
    self.last_saved = done

  def _finish(self, state, done: int):
    where = self.ckpt_dir
    if self.stopped_by is not None and done < self.settings.num_train_steps:
      message = (
          'Stopped by %s at step %d; checkpoint saved in %s. Run the same command again'
      )
      logging.warning(message + ' to resume.', self.stopped_by, done, where)
    elif self.rolled_back_at == done:
      kept = 'the initial state'
      if self.last_saved:
        kept = f'checkpoint {where}/{self.last_saved}'
      raise TrainingError(
          f'training diverged at step {done} and was rolled back to {kept}: no step after '
          f'{self.last_saved or 0} was kept, so the run did not finish. Lower the learning '
          'rates'
      )
    else:
      hits, misses = (compile_cache.counts()[k] for k in ('hits', 'misses'))
      if hits or misses:
        logging.info('Compilation cache: %d programs loaded, %d compiled', hits, misses)
      saved = f'checkpoint at step {self.last_saved} in {where}'
      logging.info(
          'Finished %d steps (%.1f s of training steps); %s',
          done,
          self.clock.seconds,
          saved,
      )
    return state
