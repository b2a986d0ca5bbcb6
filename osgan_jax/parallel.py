"""Device mesh, shardings and multi-host setup for data-parallel training.

One mesh axis, ``'data'``: the global batch is split over it and the train state is
replicated on every device. The step is an ordinary ``jax.jit`` with these shardings
(GSPMD): XLA partitions the computation and inserts the all-reduces itself, so the
gradients are those of the global batch and the step computes what it computes on one
device.

BatchNorm statistics are over the global batch, identical to one device: a BatchNorm
layer takes a mean over the batch axis, which is sharded over ``'data'``, and XLA
lowers that mean to per-device partial sums plus an all-reduce. There is no per-device
("ghost") BatchNorm; the running averages are replicated and the same everywhere.
Random numbers (latents drawn inside the step) are sharding-invariant too
(``jax_threefry_partitionable``), so 1 and 8 devices draw the same z.

Multi-host: ``initialize(multihost=True)`` (or the environment variable
``OSGAN_MULTIHOST=1``) calls ``jax.distributed.initialize()`` (arguments from the
cluster environment: TPU pods, SLURM, ...), before any other JAX call. Each process
then loads only its slice of the global batch (``data.make_iterator(...,
process_index=, process_count=)``) and ``global_batch`` assembles the global array with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
MULTIHOST_ENV = 'OSGAN_MULTIHOST'

_initialized = False


def multihost_requested(multihost: bool = False) -> bool:
  """True when the config or ``$OSGAN_MULTIHOST`` (1/true/yes) asks for multi-host."""
  env = os.environ.get(MULTIHOST_ENV, '').strip().lower()
  return bool(multihost) or env in ('1', 'true', 'yes')


def initialize(multihost: bool = False) -> bool:
  """Calls ``jax.distributed.initialize()`` once if multi-host is requested.

  Must run before anything else touches JAX's backends. Returns whether it did.
  """
  global _initialized
  if not multihost_requested(multihost) or _initialized:
    return False
  jax.distributed.initialize()
  _initialized = True
  return True


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ``('data',)`` mesh over all devices, or the first ``num_devices``.

  The axis is ``AxisType.Auto`` (GSPMD propagation), not ``jax.make_mesh``'s default
  ``Explicit``, so model code needs no sharding annotations.
  """
  devices = jax.devices()
  if num_devices:
    if not 0 < num_devices <= len(devices):
      raise ValueError(f'num_devices={num_devices}, but {len(devices)} devices are '
                       'available')
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError('num_devices must be 0 (all) in multi-host runs')
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device of the mesh (train state, latents)."""
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``'data'``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's slice of the batch (numpy) -> global ``jax.Array`` s."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is set on any process (a collective when multi-host)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))
  return bool(np.any(flags))


def sum_over_processes(value: int) -> int:
  """Sum of an integer over processes (a collective when multi-host)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(np.sum(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def is_main_process() -> bool:
  return jax.process_index() == 0
