"""``train_and_evaluate(config, workdir)``: builds the task ``config.task`` names and runs it
in the one loop (``osgan_jax.training.loop``).

Tasks: ``'gan'`` (the default when a config has no ``task``: every GAN config,
``osgan_jax.tasks.gan``), ``'teacher'`` and ``'dfad'`` (data-free distillation,
``osgan_jax.tasks.dfad``). What a run leaves in ``workdir``, for every task:

* ``checkpoints/<step>/``: orbax checkpoints of the whole state (parameters, optimiser
  states, BatchNorm / spectral-norm state, EMA, step) every ``checkpoint_every_steps``,
  at the end, and when SIGTERM or SIGINT arrives (saved at the next step boundary; the
  run then returns normally). The last ``keep_checkpoints`` are kept. Rerunning the
  same command resumes from the latest.
* ``metrics.jsonl`` and TensorBoard event files: every ``log_every_steps`` the step
  metrics (averaged over the interval; ``*_min``/``*_max`` are the extremes),
  ``steps_per_sec`` and ``images_per_sec`` (training steps only: compilation,
  evaluation and checkpoints excluded), ``train_seconds`` (the same time, summed over
  resumed runs) and ``data_skipped_images``; the evaluators' values at theirs.
* ``samples/step_000100.png`` (and in TensorBoard): sample grids.
* ``best/``: the checkpoint with the best FID (``fid.keep_best``), ``best/best.json``.
* ``config.json``: the config of the run.

Only process 0 writes logs and samples; every process takes part in checkpoints.
"""

from __future__ import annotations

from osgan_jax.training import loop
from osgan_jax.training import parallel
from osgan_jax.config import ConfigError

TASKS = ('gan', 'teacher', 'dfad')


def build_task(config, workdir: str) -> loop.Task:
  """The ``loop.Task`` of ``config.task``."""
  task = config.get('task', 'gan')
  if task == 'gan':
    from osgan_jax.tasks import gan

    return gan.build_task(config, workdir)
  from osgan_jax.tasks import dfad

  if task == 'teacher':
    return dfad.teacher_task(config, workdir)
  if task == 'dfad':
    return dfad.distill_task(config, workdir)
  raise ConfigError(f'config.task={task!r} is not one of {", ".join(TASKS)}')


def train_and_evaluate(config, workdir: str):
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint, if any).

  Returns the final state (replicated over the mesh). Raises ``data.DataError`` for
  missing or unusable data and ``ConfigError`` for invalid settings, both before
  anything is compiled or written.
  """
  parallel.initialize(config.multihost)
  parallel.check_same_config(config)  # before anything that could fail on one process
  loop.validate(config)
  return loop.run(config, workdir, build_task(config, workdir))
