"""The tasks of the one loop, by ``config.task``: each builds a ``loop.Task`` (its
state, phases, batches and evaluators) from the config, read once."""

from osgan_jax.config import ConfigError
from osgan_jax.tasks import dfad
from osgan_jax.tasks import gan
from osgan_jax.tasks import teacher

TASKS = {'gan': gan.build, 'teacher': teacher.build, 'dfad': dfad.build}


def build(config, workdir: str):
  """The ``loop.Task`` of ``config.task``."""
  name = config.get('task', 'gan')
  if name not in TASKS:
    raise ConfigError(f'config.task must be one of {", ".join(TASKS)}, got {name!r}')
  return TASKS[name](config, workdir)
