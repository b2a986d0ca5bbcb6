"""Runs one multi-process JAX job on this machine: N copies of a command, joined.

  python -m osgan_jax.launch --num_processes=2 --devices_per_process=2 -- \\
      python -m osgan_jax.main --config=configs/dcgan_mnist.py --workdir=/tmp/run

What every host of a pod or GPU cluster does, on one machine, so that the
multi-process code paths (host-local batch slices, cross-process collectives, orbax
saves from several processes) can be run and tested without one. Each copy gets
``$OSGAN_COORDINATOR`` (``localhost:<a free port>``), ``$OSGAN_NUM_PROCESSES`` and
``$OSGAN_PROCESS_ID``, which ``parallel.initialize`` hands to
``jax.distributed.initialize``; with ``--devices_per_process=K`` also
``JAX_PLATFORMS=cpu`` and ``--xla_force_host_platform_device_count=K`` in
``$XLA_FLAGS``. Each line a copy prints comes out prefixed ``[i] `` (stdout to stdout,
stderr to stderr). SIGINT/SIGTERM are forwarded to every copy (each runs in its own
session, so a terminal's Ctrl-C reaches it once, through here). When a copy fails the
others get ``--grace_seconds`` to finish (they usually fail too, in a collective),
then SIGTERM, then SIGKILL. The exit status is the first failing copy's (128 + N for
a signal), else 0.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time

from osgan_jax.training import parallel

_DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def child_env(
    base: dict,
    coordinator: str,
    num_processes: int,
    process_id: int,
    devices_per_process: int = 0,
) -> dict:
  """The environment of copy ``process_id``."""
  env = dict(base)
  env[parallel.COORDINATOR_ENV] = coordinator
  env[parallel.NUM_PROCESSES_ENV] = str(num_processes)
  env[parallel.PROCESS_ID_ENV] = str(process_id)
  env['PYTHONUNBUFFERED'] = '1'  # lines arrive as they are printed
  if devices_per_process:
    flags = re.sub(rf'{_DEVICE_COUNT_FLAG}=\S*', '', env.get('XLA_FLAGS', ''))
    env['XLA_FLAGS'] = ' '.join(
        [*flags.split(), f'{_DEVICE_COUNT_FLAG}={devices_per_process}']
    )
    env['JAX_PLATFORMS'] = 'cpu'
  return env


def _exit_status(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode


class _Prefixer(threading.Thread):
  """Copies one pipe to ``out`` line by line, each line prefixed."""

  def __init__(self, pipe, out, prefix: bytes, lock: threading.Lock):
    super().__init__(daemon=True)
    self.pipe, self.out, self.prefix, self.lock = pipe, out, prefix, lock

  def run(self):
    for line in iter(self.pipe.readline, b''):
      if not line.endswith(b'\n'):
        line += b'\n'
      with self.lock:
        self.out.write(self.prefix + line)
        self.out.flush()
    self.pipe.close()


class Launch:
  """``num_processes`` copies of ``command`` with their output prefixed."""

  def __init__(
      self,
      command,
      num_processes: int,
      devices_per_process: int = 0,
      grace_seconds: float = 10.0,
      port: int = 0,
  ):
    import portpicker

    port = port or portpicker.pick_unused_port()
    self.coordinator = f'localhost:{port}'
    self.grace = float(grace_seconds)
    lock = threading.Lock()
    self.procs, self.threads = [], []
    for i in range(num_processes):
      env = child_env(os.environ, self.coordinator, num_processes, i, devices_per_process)
      proc = subprocess.Popen(
          command,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          start_new_session=True,
      )
      self.procs.append(proc)
      _say(
          f'process {i} of {num_processes}: pid {proc.pid}, coordinator '
          f'{self.coordinator}'
      )
      prefix = f'[{i}] '.encode()
      for pipe, out in (
          (proc.stdout, sys.stdout.buffer),
          (proc.stderr, sys.stderr.buffer),
      ):
        self.threads.append(_Prefixer(pipe, out, prefix, lock))
        self.threads[-1].start()

  def signal_all(self, signum: int) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.kill(proc.pid, signum)
        except ProcessLookupError:
          pass

  def wait(self) -> int:
    """Waits for every copy; the first failing copy's exit status, else 0."""
    status, failed_at, signalled = 0, None, 0
    while any(p.poll() is None for p in self.procs):
      for i, proc in enumerate(self.procs):
        code = proc.poll()
        if code and not status:
          status, failed_at = _exit_status(code), time.monotonic()
          _say(
              f'process {i} exited with status {status}; stopping the others in '
              f'{self.grace:g} s'
          )
      if failed_at is not None:
        late = time.monotonic() - failed_at
        if signalled == 0 and late >= self.grace:
          self.signal_all(signal.SIGTERM)
          signalled = 1
        elif signalled == 1 and late >= 2 * self.grace:
          self.signal_all(signal.SIGKILL)
          signalled = 2
      time.sleep(0.05)
    for proc in self.procs:  # a failure in the last poll round
      if proc.returncode and not status:
        status = _exit_status(proc.returncode)
    for thread in self.threads:
      thread.join(timeout=5)
    return status

  def kill(self) -> None:
    self.signal_all(signal.SIGKILL)


def _say(message: str) -> None:
  sys.stderr.write(f'[launch] {message}\n')
  sys.stderr.flush()


def parse_args(argv):
  """``(options, command)``: the command is everything after the first ``--``."""
  parser = argparse.ArgumentParser(
      prog='python -m osgan_jax.launch',
      usage='%(prog)s --num_processes=N [--devices_per_process=K] -- COMMAND...',
      description='Runs N copies of COMMAND as the processes of one JAX job.',
  )
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument(
      '--devices_per_process',
      type=int,
      default=0,
      help='K CPU devices per process (JAX_PLATFORMS=cpu); 0: leave the '
      'platform alone',
  )
  parser.add_argument(
      '--grace_seconds',
      type=float,
      default=10.0,
      help='after one process fails, how long the others may run on',
  )
  parser.add_argument(
      '--port', type=int, default=0, help='coordinator port on localhost (0: a free one)'
  )
  if '--' not in argv:
    parser.error('give the command after --')
  split = argv.index('--')
  options, command = parser.parse_args(argv[:split]), argv[split + 1 :]
  if not command:
    parser.error('give the command after --')
  if options.num_processes < 1 or options.devices_per_process < 0:
    parser.error('--num_processes must be >= 1 and --devices_per_process >= 0')
  return options, command


def main(argv=None) -> int:
  options, command = parse_args(sys.argv[1:] if argv is None else list(argv))
  launch = Launch(
      command,
      options.num_processes,
      options.devices_per_process,
      options.grace_seconds,
      options.port,
  )
  previous = {
      sig: signal.signal(sig, lambda signum, _: launch.signal_all(signum))
      for sig in (signal.SIGINT, signal.SIGTERM)
  }
  try:
    return launch.wait()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    launch.kill()  # none left unless wait() was interrupted


if __name__ == '__main__':
  sys.exit(main())
