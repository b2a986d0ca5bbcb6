"""The loop's checks at each boundary: a non-finite state or loss (stop, or roll back to
the last checkpoint and skip ahead) and a collapsed game (a warning and a metric)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging


class TrainingError(RuntimeError):
  """The run cannot go on (diverged, cannot write); the message is one line."""


@dataclasses.dataclass(frozen=True)
class Divergence:
  """The ``divergence.*`` config keys (``docs/reliability.md``)."""

  policy: str = 'stop'
  max_rollbacks: int = 3
  collapse_intervals: int = 3
  collapse_loss_d: float = 1e-3
  collapse_loss_g: float = 5.0


@jax.jit
def all_finite(tree):
  floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  leaves = [jnp.all(jnp.isfinite(x)) for x in floats]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def non_finite(state, history: list, done: int) -> str | None:
  """What is non-finite at step ``done`` (the state, or a ``loss*`` metric of the
  interval ``history``), or None."""
  problems = [] if all_finite(state) else ['non-finite parameters or optimiser state']
  first = done - len(history)
  for j, metrics in enumerate(history):
    bad = [k for k, v in metrics.items() if k.startswith('loss') and not np.isfinite(v)]
    if bad:
      problems.append(f'{bad[0]} non-finite from step {first + j + 1}')
      break
  return '; '.join(problems) or None


class Rollbacks:
  """The divergence policy: ``decide`` raises ``TrainingError`` or counts a rollback."""

  def __init__(self, settings: Divergence, count: int):
    self.settings, self.count = settings, count

  def decide(self, problem: str, done: int, last_good: int | None, ckpt_dir: str) -> None:
    if self.settings.policy != 'rollback' or self.count >= self.settings.max_rollbacks:
      saved = 'no checkpoint was saved yet'
      if last_good:
        saved = f'the last good checkpoint is {ckpt_dir}/{last_good}'
      tried = f' after {self.count} rollbacks' if self.count else ''
      raise TrainingError(
          f'training diverged at step {done}{tried}: {problem}; {saved} (a non-finite '
          'state is never saved). Lower the learning rates, or set '
          '--config.divergence.policy=rollback'
      )
    self.count += 1
    count = f'rollback {self.count} of {self.settings.max_rollbacks}'
    message = 'Step %d: %s; rolled back to step %s and skipping ahead to step %d (%s)'
    logging.warning(message, done, problem, last_good or 0, done, count)


class CollapseWatch:
  """Flags ``values['collapsed']`` after log intervals in a row in which D wins outright
  and G's loss is large, and warns once per streak."""

  def __init__(self, settings: Divergence):
    self.settings, self.streak = settings, 0

  def update(self, values: dict) -> None:
    s = self.settings
    d, g = values.get('loss_d', np.nan), values.get('loss_g', np.nan)  # nan: no hit
    hit = abs(d) <= s.collapse_loss_d and g >= s.collapse_loss_g
    self.streak = self.streak + 1 if hit else 0
    if self.streak >= s.collapse_intervals:
      values['collapsed'] = 1.0
      if self.streak == s.collapse_intervals:
        message = 'The game looks collapsed: loss_d %.3g and loss_g %.3g for %d log '
        message += 'intervals (D wins outright, G learns nothing useful)'
        logging.warning(message, values['loss_d'], values['loss_g'], self.streak)
