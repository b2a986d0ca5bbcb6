"""host_memory.keep_freed_memory: XLA:CPU's large per-call buffers stop page-faulting
once it is applied (before JAX starts), and it refuses once JAX's backends exist."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from osgan_jax.training import host_memory
from helpers import REPO  # pylint: disable=import-error

# A jitted op whose 64 MiB output (above glibc's largest mmap threshold) is freed after
# every call; minor page faults per call, counted by the kernel.
_PROBE = textwrap.dedent("""
    import json, resource, sys
    from osgan_jax.training import host_memory
    applied = host_memory.keep_freed_memory() if sys.argv[1] == '1' else False
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: x * 2.0 + 1.0)
    x = jnp.ones((4096, 4096))
    faults = []
    for _ in range(40):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      y = f(x); y.block_until_ready(); del y
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({'applied': applied, 'faults': faults}))
""")


def _probe(tune: bool) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  for key in (
      'MALLOC_ARENA_MAX',
      'MALLOC_MMAP_MAX_',
      'MALLOC_TRIM_THRESHOLD_',
      'MALLOC_TOP_PAD_',
      'MALLOC_MMAP_THRESHOLD_',
      'GLIBC_TUNABLES',
  ):
    env.pop(key, None)
  out = subprocess.run(
      [sys.executable, '-c', _PROBE, '1' if tune else '0'],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason='needs glibc')
@pytest.mark.long
def test_freed_buffers_stop_page_faulting():
  pages = 64 * 2**20 // os.sysconf('SC_PAGE_SIZE')
  plain = _probe(tune=False)
  assert not plain['applied']
  assert min(plain['faults'][8:]) >= 0.9 * pages  # every call maps fresh pages
  tuned = _probe(tune=True)
  assert tuned['applied']
  # The heap still grows now and then (a buffer can be freed after the next call
  # allocates, small allocations split a freed block), so count all calls after the
  # first few: most reuse mapped pages.
  assert sum(tuned['faults'][8:]) < 0.4 * sum(plain['faults'][8:])


def test_refuses_once_jax_has_started(caplog):
  jnp.zeros(1).block_until_ready()
  assert host_memory.jax_backends_started()
  with caplog.at_level('WARNING'):
    applied = host_memory.keep_freed_memory()
  assert not applied
  if host_memory._glibc() is not None:
    assert 'before the first JAX computation' in caplog.text


def test_cpu_only_from_platforms_and_plugins(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert host_memory.cpu_only()
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert not host_memory.cpu_only()
  monkeypatch.delenv('JAX_PLATFORMS')
  if jax.config.jax_platforms:
    pytest.skip('jax_platforms is set in this process')
  monkeypatch.setattr(host_memory, '_ACCELERATOR_PLUGINS', ('json',))  # "installed"
  assert not host_memory.cpu_only()
  monkeypatch.setattr(host_memory, '_ACCELERATOR_PLUGINS', ('no_such_plugin_xyz',))
  assert host_memory.cpu_only()
