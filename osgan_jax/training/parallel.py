"""Device mesh, shardings and multi-host setup for data-parallel training: one
``'data'`` axis (batch split, state replicated) under plain ``jax.jit``
(``docs/multihost.md``)."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from osgan_jax.config import ConfigError
from osgan_jax.training import host_memory

DATA_AXIS = 'data'
MULTIHOST_ENV = 'OSGAN_MULTIHOST'
COORDINATOR_ENV = 'OSGAN_COORDINATOR'
NUM_PROCESSES_ENV = 'OSGAN_NUM_PROCESSES'
PROCESS_ID_ENV = 'OSGAN_PROCESS_ID'
INIT_TIMEOUT_ENV = 'OSGAN_INIT_TIMEOUT'
DEFAULT_INIT_TIMEOUT = 300

_initialized = False


def multihost_requested(multihost: bool = False) -> bool:
  """True when the config or ``$OSGAN_MULTIHOST`` (1/true/yes) asks for multi-host."""
  env = os.environ.get(MULTIHOST_ENV, '').strip().lower()
  return bool(multihost) or env in ('1', 'true', 'yes')


def explicit_cluster() -> dict | None:
  """``jax.distributed.initialize`` arguments from ``$OSGAN_COORDINATOR`` & co. (None
  when it is unset); ``ConfigError`` for malformed values."""
  address = os.environ.get(COORDINATOR_ENV, '').strip()
  if not address:
    return None
  try:
    num = int(os.environ.get(NUM_PROCESSES_ENV, ''))
    pid = int(os.environ.get(PROCESS_ID_ENV, ''))
    timeout = int(os.environ.get(INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT))
  except ValueError:
    raise ConfigError(
        f'${COORDINATOR_ENV}={address} is set, so ${NUM_PROCESSES_ENV} and '
        f'${PROCESS_ID_ENV} must be integers (and ${INIT_TIMEOUT_ENV} if set)'
    ) from None
  if not 0 <= pid < num or timeout <= 0:
    raise ConfigError(
        f'${PROCESS_ID_ENV}={pid} must be in [0, ${NUM_PROCESSES_ENV}='
        f'{num}) and ${INIT_TIMEOUT_ENV}={timeout} positive'
    )
  return dict(
      coordinator_address=address,
      num_processes=num,
      process_id=pid,
      initialization_timeout=timeout,
  )


def _host_port(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise ConfigError(f'${COORDINATOR_ENV}={address!r} is not host:port')
  return host.strip('[]'), int(port)


def wait_for_coordinator(address: str, timeout: float) -> None:
  """Polls ``address`` until it accepts a TCP connection, else a ``ConfigError``: JAX
  aborts the whole process, with no Python exception, when it cannot reach it in time."""
  host, port = _host_port(address)
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(5.0, timeout)):
        return
    except OSError as e:
      error = e
    if time.monotonic() >= deadline:
      raise ConfigError(
          f'cannot reach the coordinator at {address} within {timeout:g} s '
          f'({type(error).__name__}: {error}); is process 0 running there '
          f'and the port open? (${COORDINATOR_ENV}, ${INIT_TIMEOUT_ENV})'
      )
    time.sleep(0.2)


def check_port_free(address: str) -> None:
  """``ConfigError`` when process 0 cannot serve the coordinator on ``address``'s port
  (in use, e.g. by an earlier run): JAX crashes without a message there."""
  _, port = _host_port(address)
  try:
    dual = socket.has_dualstack_ipv6()  # JAX listens on [::]:port
    family = socket.AF_INET6 if dual else socket.AF_INET
    socket.create_server(('', port), family=family, dualstack_ipv6=dual).close()
  except OSError as e:
    raise ConfigError(
        f'cannot serve the coordinator on port {port} of {address} ({type(e).__name__}: '
        f'{e}); is an earlier run still using it? (${COORDINATOR_ENV})'
    ) from None


def initialize(multihost: bool = False) -> bool:
  """Joins the processes of a multi-process run (once; before anything else touches
  JAX's backends) from ``$OSGAN_COORDINATOR`` & co., else, if ``multihost`` or
  ``$OSGAN_MULTIHOST``, from the cluster JAX detects; returns whether it did."""
  global _initialized
  cluster = explicit_cluster()
  if _initialized or (cluster is None and not multihost_requested(multihost)):
    return False
  if host_memory.cpu_only():
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if cluster is None:
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      raise ConfigError(
          f'config.multihost=True (or ${MULTIHOST_ENV}=1) but JAX found no cluster '
          f'({" ".join(str(e).split())}): run on a TPU pod or SLURM, or set '
          f'${COORDINATOR_ENV}, ${NUM_PROCESSES_ENV} and ${PROCESS_ID_ENV}'
      ) from None
  else:
    start, address = time.monotonic(), cluster['coordinator_address']
    if cluster['process_id'] == 0:  # process 0 serves the coordinator itself
      check_port_free(address)
    else:
      wait_for_coordinator(address, cluster['initialization_timeout'])
    n, i, timeout = (
        cluster[k] for k in ('num_processes', 'process_id', 'initialization_timeout')
    )
    logging.info(
        'Joining %d processes as process %d through %s (timeout %d s)',
        n,
        i,
        address,
        timeout,
    )
    left = cluster['initialization_timeout'] - int(time.monotonic() - start)
    jax.distributed.initialize(**{**cluster, 'initialization_timeout': max(left, 1)})
  _initialized = True
  return True


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ``('data',)`` mesh over all devices, or the first ``num_devices``; the axis is
  ``AxisType.Auto``, not ``jax.make_mesh``'s ``Explicit``: models need no annotations."""
  devices = jax.devices()
  if num_devices:
    if not 0 < num_devices <= len(devices):
      raise ValueError(
          f'num_devices={num_devices}, but {len(devices)} devices are available'
      )
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError('num_devices must be 0 (all) in multi-host runs')
    devices = devices[:num_devices]
  if jax.process_count() > 1:
    # Each process's devices contiguous and in process order, so that process i's
    # slice of the batch is rows [i * b, (i + 1) * b) (jax.make_mesh may reorder).
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))
  return jax.make_mesh(
      (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
  )


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device of the mesh (train state, latents)."""
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``'data'``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's slice of the batch (numpy) -> global ``jax.Array`` s."""
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is set on any process (a collective when multi-host)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))))


def sum_over_processes(value: int) -> int:
  """Sum of an integer over processes (a collective when multi-host)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.sum(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def check_same_config(text: str) -> None:
  """``ConfigError`` unless every process runs the same config (a collective): else they
  would train different things in lockstep, or hang in a collective."""
  if jax.process_count() == 1:
    return
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  differ = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
  if differ:
    listed = ', '.join(map(str, differ))
    raise ConfigError(
        f'the config differs between processes: process(es) {listed} run another config '
        'than process 0; start every process with the same command and overrides'
    )


def is_main_process() -> bool:
  return jax.process_index() == 0
