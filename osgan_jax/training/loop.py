"""The one training loop: every task (GAN, StyleGAN2, DFAD teacher and distillation) runs here.

A task (``Task``) hands the loop an ``init`` function, its *phases* (name, pure step
over the state, interval: the official StyleGAN2 loop's main / R1 / path-length phases
as data), an optional source of host batches, and evaluators. The loop owns all the
rest: mesh and shardings, per-step RNG, resume, checkpoints, signals, the multi-host
stop agreement, metrics, the progress bar and the evaluators' schedule.

Nothing stalls the device between boundaries (log, evaluation, checkpoint): each
phase's key is ``fold_in(key, iteration)`` computed inside its jitted program; batches
arrive as uint8 global arrays from a thread that prefetches them to the devices two
deep and are converted to float on the device; metrics stay on the device until a log
boundary; checkpoints are saved asynchronously. The steps between boundaries run under
``jax.transfer_guard_device_to_host('disallow')``. At most ``MAX_IN_FLIGHT`` iterations
are dispatched ahead of the device, which bounds the batches held in device memory.

Resume: rerunning restores the latest checkpoint; RNG and data order are functions of
the step, so on CPU an interrupted and resumed run is bit-identical to an
uninterrupted one. SIGTERM/SIGINT stop the run at the next step boundary (all
processes at the same one) with a checkpoint; a second SIGINT aborts.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from osgan_jax.training import checkpoint
from osgan_jax import data as data_lib
from osgan_jax.training import parallel
from osgan_jax.core import steps
from osgan_jax.training import workdir as workdir_lib
from osgan_jax.config import ConfigError
from osgan_jax.training.metric_writer import MetricWriter, reduce_metrics

MAX_IN_FLIGHT = 2
PREFETCH_DEPTH = 2
POLICIES = ('stop', 'rollback')


class TrainingError(RuntimeError):
  """The run cannot go on (diverged, cannot write); the message is one line."""


@dataclasses.dataclass(frozen=True)
class Phase:
  """``fn(state, batch, rng, iteration) -> (state, metrics)``, pure, run at iterations
  ``i`` with ``i % interval == 0`` in list order; ``rng`` is ``fold_in(key, i)``."""

  name: str
  fn: Callable
  interval: int = 1


@dataclasses.dataclass
class Task:
  """What a task gives the loop.

  ``init(key, *init_args)`` makes the state at step 0 (it must have a ``step``);
  ``make_phases(state)`` the phases (called once the state exists, e.g. to probe the
  networks); ``batches(start_step, process_index, process_count)`` an iterator of this
  process's host batches from global batch ``start_step`` on (``data.make_iterator``
  with ``image_dtype='uint8'``), or ``None`` for a task without data; ``meta`` is
  stored in every checkpoint.
  """

  name: str
  init: Callable
  make_phases: Callable[[Any], Sequence[Phase]]
  batches: Callable | None = None
  evaluators: Sequence = ()
  meta: dict = dataclasses.field(default_factory=dict)
  init_args: tuple = ()


def validate(config) -> None:
  """The keys the loop itself reads."""
  for key in (
      'batch_size',
      'num_train_steps',
      'log_every_steps',
      'checkpoint_every_steps',
      'keep_checkpoints',
  ):
    if int(config[key]) <= 0:
      raise ConfigError(f'config.{key} must be positive, got {config[key]}')
  div = config.divergence
  if div.policy not in POLICIES:
    raise ConfigError(
        f'config.divergence.policy={div.policy!r} is not one of ' f'{", ".join(POLICIES)}'
    )
  if int(div.max_rollbacks) < 0 or int(div.collapse_intervals) < 1:
    raise ConfigError(
        'config.divergence.max_rollbacks must be >= 0 and ' 'collapse_intervals >= 1'
    )


def abstract_state(task: Task, key):
  """The state's shapes from tracing ``init``: networks that cannot be built (an
  unsupported resolution, a bad keyword) or with empty arrays (``z_dim=0``) are a
  one-line ``ConfigError`` before anything is written."""
  try:
    shapes = jax.eval_shape(task.init, key, *task.init_args)
  except (
      ValueError,
      TypeError,
      KeyError,
      IndexError,
      AssertionError,
      ZeroDivisionError,
  ) as e:
    raise ConfigError(
        f'{task.name}: the networks cannot be built with this config '
        f'({type(e).__name__}: {" ".join(str(e).split())[:300]})'
    ) from None
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    if 0 in getattr(leaf, 'shape', ()):
      raise ConfigError(
          f'{task.name}: {jax.tree_util.keystr(path)} would be empty '
          f'{leaf.shape}; a size in the config is 0 (z_dim?)'
      )
  return shapes


@jax.jit
def _all_finite(tree):
  leaves = [
      jnp.all(jnp.isfinite(x))
      for x in jax.tree.leaves(tree)
      if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _divergence(state, fetched: list, done: int) -> str | None:
  """What is non-finite at step ``done`` (the state, or a ``loss*`` metric of the
  interval ``fetched``), or None: checked at every boundary, before anything is
  evaluated or saved."""
  problems = (
      [] if bool(_all_finite(state)) else ['non-finite parameters or optimiser state']
  )
  first = done - len(fetched)
  for j, metrics in enumerate(fetched):
    bad = [k for k, v in metrics.items() if k.startswith('loss') and not np.isfinite(v)]
    if bad:
      problems.append(f'{bad[0]} non-finite from step {first + j + 1}')
      break
  return '; '.join(problems) or None


def _collapsed(values: dict, div, streak: int) -> int:
  """Log intervals in a row in which D wins outright (``|loss_d|`` ~ 0) and G's loss
  is large; flags ``values['collapsed']`` and warns once per streak."""
  hit = (
      'loss_d' in values
      and 'loss_g' in values
      and abs(values['loss_d']) <= float(div.collapse_loss_d)
      and values['loss_g'] >= float(div.collapse_loss_g)
  )
  streak = streak + 1 if hit else 0
  if streak >= int(div.collapse_intervals):
    values['collapsed'] = 1.0
    if streak == int(div.collapse_intervals):
      logging.warning(
          'The game looks collapsed: loss_d %.3g and loss_g %.3g for %d log '
          'intervals (D wins outright, G learns nothing useful)',
          values['loss_d'],
          values['loss_g'],
          streak,
      )
  return streak


def _every(step: int, period: int, last: int) -> bool:
  return step % int(period) == 0 or step == last


class _StopOnSignal:
  """Turns SIGTERM/SIGINT into a flag checked between steps; a second SIGINT raises
  KeyboardInterrupt (Ctrl-C twice aborts without saving). Main thread only."""

  def __init__(self):
    self.received, self._previous = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(signum).name
    # No logging here (its locks are not reentrant): a plain write is signal-safe.
    os.write(
        2,
        f'\n{self.received} received: saving a checkpoint after this step, '
        'then stopping\n'.encode(),
    )

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


class _DevicePrefetch:
  """Host batches -> global device arrays, ``depth`` ahead, from a thread.

  Yields ``(batch, skipped)``: the number of unreadable images the data source
  replaced in that batch travels with it, so counts stay exact despite the lead.
  """

  def __init__(self, it, sharding, depth: int = PREFETCH_DEPTH):
    self._it, self._sharding = it, sharding
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, daemon=True)
    self._thread.start()

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        return self._queue.put(item, timeout=0.1)
      except queue.Full:
        continue

  def _fill(self) -> None:
    try:
      while not self._stop.is_set():
        before = getattr(self._it, 'skipped', 0)
        local = next(self._it)
        skipped = getattr(self._it, 'skipped', 0) - before
        self._put((parallel.global_batch(local, self._sharding), skipped))
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)  # re-raised in the training thread

  def __next__(self):
    while True:
      try:
        item = self._queue.get(timeout=0.5)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise RuntimeError('the data prefetch thread stopped') from None
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)


def _no_data():
  while True:
    yield {}, 0


def _jit_phases(phases, state_sharding, batch_sharding):
  """Each phase as one jitted program ``(state, batch, key, i)``, the state donated."""

  def program(fn):
    def run(state, batch, key, i):
      return fn(state, data_lib.to_float(batch), jax.random.fold_in(key, i), i)

    return steps.jit_state_step(
        run,
        state_sharding=state_sharding,
        arg_shardings=(batch_sharding, state_sharding, None),
    )

  return [(p, program(p.fn)) for p in phases]


def run(config, workdir: str, task: Task):
  """Trains ``task`` for ``config.num_train_steps`` in ``workdir``; returns the state.

  Raises ``ConfigError`` (before anything is written), ``data.DataError``,
  ``TrainingError`` (diverged; a file of the workdir cannot be written) and
  ``checkpoint.CheckpointError``, each with a one-line message.
  """
  try:
    return _run(config, workdir, task)
  except OSError as e:
    raise TrainingError(
        workdir_lib.os_error(e, 'cannot write') + '; the checkpoints '
        'saved so far are intact: fix it and run the same command to '
        'resume'
    ) from None


def _run(config, workdir: str, task: Task):
  validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  is_main = parallel.is_main_process()
  num_steps, batch_size = int(config.num_train_steps), int(config.batch_size)
  try:
    mesh = parallel.make_mesh(int(config.num_devices))
  except ValueError as e:
    raise ConfigError(f'config.num_devices: {e}') from None
  if batch_size % mesh.size or batch_size % jax.process_count():
    where = (
        f' ({jax.process_count()} processes x {jax.local_device_count()} devices)'
        if jax.process_count() > 1
        else ''
    )
    raise ConfigError(
        f'config.batch_size={batch_size} must be a multiple of the '
        f'{mesh.size} devices{where}'
    )
  state_sharding = parallel.replicated(mesh)
  batch_sharding = parallel.data_sharding(mesh)
  root = jax.random.PRNGKey(int(config.seed))
  init_key = jax.random.fold_in(root, 0)
  step_key = jax.device_put(np.asarray(jax.random.fold_in(root, 1)), state_sharding)
  init = jax.jit(task.init, out_shardings=state_sharding)
  abstract = checkpoint.abstract(abstract_state(task, init_key), state_sharding)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  resuming = os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))
  workdir_lib.prepare(workdir, config, resuming, is_main)

  with contextlib.ExitStack() as cleanup:
    # From here on SIGTERM/SIGINT only set a flag: a signal during setup or compilation
    # stops the run after its first step, with a checkpoint.
    stop = cleanup.enter_context(_StopOnSignal())
    ckpt = checkpoint.manager(ckpt_dir, config.keep_checkpoints)
    cleanup.callback(checkpoint.close, ckpt)  # waits for an asynchronous save
    restored = checkpoint.restore_latest(
        ckpt, abstract, lambda s: None if bool(_all_finite(s)) else 'non-finite values'
    )
    if restored is None:
      state, start, meta, latest = init(init_key, *task.init_args), 0, {}, None
    else:
      state, meta, latest = restored
      start = int(jax.device_get(state.step))
      logging.info('Resumed from the checkpoint at step %d in %s', start, workdir)
    if start >= num_steps:
      logging.info(
          'Nothing to do: the checkpoint is at step %d and num_train_steps=%d',
          start,
          num_steps,
      )
      return state
    meta = {**meta, **task.meta}
    # The metrics of the steps since the last log boundary, kept by the checkpoint so
    # that the first interval logged after a resume is the uninterrupted run's.
    history = list(meta.pop('pending_metrics', []))
    rollbacks, streak, div = int(meta.get('rollbacks', 0)), 0, config.divergence
    train_seconds = float(meta.get('train_seconds', 0.0))
    # Each process counts the skips in its own slices; the checkpoint holds the sum over
    # processes, which process 0 carries on.
    skipped = int(meta.get('skipped_images', 0)) if is_main else 0
    last_saved = None if latest is None else start

    phases = _jit_phases(task.make_phases(state), state_sharding, batch_sharding)
    it = (
        task.batches(start, jax.process_index(), jax.process_count())
        if task.batches is not None
        else None
    )
    if it is None:
      batches = _no_data()
    else:
      cleanup.callback(it.close)
      batches = _DevicePrefetch(it, batch_sharding)
      cleanup.callback(batches.close)
    writer = MetricWriter(workdir, start, is_main)
    cleanup.callback(writer.close)
    writer.write_texts(0, {'config': '```\n' + str(config) + '\n```'})
    best = {}
    for e in task.evaluators:
      if getattr(e, 'best', None):
        best[id(e)] = checkpoint.Best(workdir, *e.best)
        cleanup.callback(best[id(e)].close)
    n_params = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, 'size'))
    logging.info(
        '%s: %d devices, batch %d, phases %s, state of %d numbers',
        task.name,
        mesh.size,
        batch_size,
        ', '.join(f'{p.name}/{p.interval}' for p, _ in phases),
        n_params,
    )
    pbar = cleanup.enter_context(
        tqdm.tqdm(
            total=num_steps,
            initial=start,
            unit='step',
            dynamic_ncols=True,
            desc=task.name,
            smoothing=0.05,
            mininterval=0.5 if sys.stderr.isatty() else 30,
            disable=not (is_main and config.progress_bar),
        )
    )

    in_flight = collections.deque()
    interval_steps, interval_seconds = 0, 0.0
    clock = time.perf_counter()
    stopped_by, done = None, start
    # Phases whose first call (their compilation) comes after the first step, e.g. a
    # lazy R1 phase after a resume: that call is not training time either.
    uncompiled = {k for k, (phase, _) in enumerate(phases) if start % phase.interval}
    for i in range(start, num_steps):
      with jax.transfer_guard_device_to_host('disallow'):
        batch, batch_skipped = next(batches)
        metrics, index = {}, np.int32(i)
        for k, (phase, fn) in enumerate(phases):
          if i % phase.interval == 0:
            if k in uncompiled:
              uncompiled.discard(k)
              jax.block_until_ready(state)
              t0 = time.perf_counter()
              state, m = jax.block_until_ready(fn(state, batch, step_key, index))
              clock += time.perf_counter() - t0
            else:
              state, m = fn(state, batch, step_key, index)
            metrics.update(m)
        history.append(metrics)
        in_flight.append(metrics)
        if len(in_flight) > MAX_IN_FLIGHT:
          jax.block_until_ready(in_flight.popleft())
      skipped += batch_skipped
      done = i + 1
      pbar.update(1)
      if i == start:  # compilation is not training time
        jax.block_until_ready(state)
        logging.info(
            'First step (with compilation) took %.1f s', time.perf_counter() - clock
        )
        clock = time.perf_counter()
      else:
        interval_steps += 1

      at_log = _every(done, config.log_every_steps, num_steps)
      due = [e for e in task.evaluators if _every(done, e.every_steps, num_steps)]
      # Multi-host: every process must agree to stop at the same step (a collective,
      # so only at log boundaries); one process checks its own flag every step.
      if jax.process_count() == 1 or at_log:
        if parallel.any_process(stop.received is not None):
          stopped_by = stop.received or 'a signal to another process'
      at_ckpt = _every(done, config.checkpoint_every_steps, num_steps) or stopped_by
      if not (at_log or due or at_ckpt):
        continue

      jax.block_until_ready(state)
      elapsed = time.perf_counter() - clock
      train_seconds += elapsed
      interval_seconds += elapsed
      in_flight.clear()
      history = jax.device_get(history)  # the interval's metrics, as host numbers
      problem = _divergence(state, history, done)
      if problem is not None:
        checkpoint.wait(ckpt)
        last_good = ckpt.latest_step()
        if div.policy != 'rollback' or rollbacks >= int(div.max_rollbacks):
          saved = (
              f'the last good checkpoint is {ckpt_dir}/{last_good}'
              if last_good
              else 'no checkpoint was saved yet'
          )
          tried = f' after {rollbacks} rollbacks' if rollbacks else ''
          raise TrainingError(
              f'training diverged at step {done}{tried}: {problem}; {saved} (a '
              f'non-finite state is never saved). Lower the learning rates, or set '
              f'--config.divergence.policy=rollback'
          )
        rollbacks += 1
        state = (
            init(init_key, *task.init_args)
            if last_good is None
            else checkpoint.restore(ckpt, abstract, last_good)[0]
        )
        state = state.replace(
            step=jax.device_put(  # skip ahead: data and keys go on
                np.asarray(done, state.step.dtype), state_sharding
            )
        )
        meta['rollbacks'] = rollbacks
        logging.warning(
            'Step %d: %s; rolled back to step %s and skipping ahead to step '
            '%d (rollback %d of %d)',
            done,
            problem,
            last_good or 0,
            done,
            rollbacks,
            int(div.max_rollbacks),
        )
        writer.write_scalars(done, {'rollbacks': rollbacks})
        history, interval_steps, interval_seconds = [], 0, 0.0
        clock = time.perf_counter()
        continue
      values = {}
      if at_log:
        values = reduce_metrics(history)
        history = []
        streak = _collapsed(values, div, streak)
        if interval_steps:
          values['steps_per_sec'] = interval_steps / max(interval_seconds, 1e-9)
          values['images_per_sec'] = values['steps_per_sec'] * batch_size
        interval_steps, interval_seconds = 0, 0.0
        values['data_skipped_images'] = parallel.sum_over_processes(skipped)
      for e in due:
        evaluation = e(state, done, writer)
        values.update(evaluation)
        meta.update(evaluation)
        tracker = best.get(id(e))
        if tracker is None:
          continue
        value = evaluation.get(tracker.metric)  # None on processes other than 0
        if parallel.any_process(value is not None and tracker.improves(value)):
          tracker.update(
              done,
              state,
              np.nan if value is None else value,
              {**meta, 'skipped_images': parallel.sum_over_processes(skipped)},
              is_main,
          )
      if values:
        values['train_seconds'] = train_seconds
      writer.write_scalars(done, values)
      pbar.set_postfix(
          {
              k: f'{values[k]:.3g}'
              for k in (
                  'images_per_sec',
                  'loss_d',
                  'loss_g',
                  'loss',
                  'test_accuracy',
                  'fid',
              )
              if k in values
          },
          refresh=False,
      )
      if at_ckpt and last_saved != done:
        checkpoint.save(
            ckpt,
            done,
            state,
            {
                **meta,
                'train_seconds': train_seconds,
                'skipped_images': parallel.sum_over_processes(skipped),
                'pending_metrics': [{k: float(v) for k, v in m.items()} for m in history],
            },
        )
        last_saved = done
      if stopped_by is not None:
        break
      clock = time.perf_counter()

  where = os.path.join(workdir, 'checkpoints')
  if stopped_by is not None and done < num_steps:
    logging.warning(
        'Stopped by %s at step %d; checkpoint saved in %s. Run the same '
        'command again to resume.',
        stopped_by,
        done,
        where,
    )
  else:
    logging.info(
        'Finished %d steps (%.1f s of training steps); checkpoint at step %s ' 'in %s',
        done,
        train_seconds,
        last_saved,
        where,
    )
  return state
