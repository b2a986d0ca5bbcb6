"""Runs N copies of a command as the processes of one JAX job on this machine, so the
multi-process code paths run without a cluster: ``python -m osgan_jax.launch
--num_processes=N [--devices_per_process=K] -- COMMAND`` (``docs/multihost.md``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from absl import flags

from osgan_jax import cli
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
    flags = re.sub(rf'{_DEVICE_COUNT_FLAG}=\S*', '', env.get('XLA_FLAGS', '')).split()
    env['XLA_FLAGS'] = ' '.join([*flags, f'{_DEVICE_COUNT_FLAG}={devices_per_process}'])
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
    piped = subprocess.PIPE
    for i in range(num_processes):
      env = child_env(os.environ, self.coordinator, num_processes, i, devices_per_process)
      proc = subprocess.Popen(
          command, env=env, stdout=piped, stderr=piped, start_new_session=True
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


COMMAND = cli.Command(
    'osgan_jax.launch',
    'python -m osgan_jax.launch --num_processes=N [--devices_per_process=K] -- COMMAND...\n'
    'Runs N copies of COMMAND as the processes of one JAX job.',
)
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'processes to start (>= 1)', flag_values=COMMAND.flags
)
_DEVICES = flags.DEFINE_integer(
    'devices_per_process',
    0,
    'K CPU devices per process (JAX_PLATFORMS=cpu); 0: leave the platform alone',
    flag_values=COMMAND.flags,
)
_GRACE = flags.DEFINE_float(
    'grace_seconds',
    10.0,
    'after one process fails, how long the others may run on',
    flag_values=COMMAND.flags,
)
_PORT = flags.DEFINE_integer(
    'port', 0, 'coordinator port on localhost (0: a free one)', flag_values=COMMAND.flags
)


def _launch(command) -> int:
  if _NUM_PROCESSES.value is None or _NUM_PROCESSES.value < 1 or _DEVICES.value < 0:
    raise cli.CommandError(
        '--num_processes must be >= 1 and --devices_per_process >= 0', 2
    )
  try:
    launch = Launch(
        command, _NUM_PROCESSES.value, _DEVICES.value, _GRACE.value, _PORT.value
    )
  except OSError as e:  # the command cannot be started
    raise cli.CommandError(f'cannot start {command[0]}: {e.strerror or e}') from None
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


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  split = argv.index('--') if '--' in argv else len(argv)
  options, command = argv[:split], argv[split + 1 :]
  if any(a in cli.HELP_FLAGS for a in options):
    return COMMAND.run(lambda args: 0, ['--help'])
  if not command:
    return COMMAND.report(
        'give the command after -- (--help shows the usage)', cli.USAGE_STATUS
    )
  return COMMAND.run(lambda args: _launch(command), options)


if __name__ == '__main__':
  sys.exit(main())
