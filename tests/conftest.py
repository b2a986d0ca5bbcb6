"""Test-wide settings, applied before JAX initialises its backend, and the shared
fixtures (what modules need at import time is in ``helpers``).

Tests compile many small programs and run them once: XLA's CPU backend optimisation
(LLVM) dominates their cost and changes no result a test checks, so it is turned down.
Subprocesses the tests start inherit the setting through the environment. The
commands' persistent compilation cache goes to a directory new for each test session
(shared by its xdist workers), never the user's: a run here costs what it costs on a
fresh CI machine.

Tiers (pytest.ini's markers): ``python3 -m pytest -n 2`` runs everything but ``slow``
(CI's command); ``-m "not slow and not e2e and not long"`` leaves out the end-to-end
and long tests too (the edit-test loop); ``-m ""`` runs all.
"""

import collections
import functools
import os
import shutil
import tempfile

_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_backend_optimization_level' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' --xla_backend_optimization_level=0').strip()
if 'OSGAN_COMPILATION_CACHE' not in os.environ:
  _run = os.environ.get('PYTEST_XDIST_TESTRUNUID') or str(os.getpid())
  os.environ['OSGAN_COMPILATION_CACHE'] = os.path.join(
      tempfile.gettempdir(), f'osgan_jax_test_cache_{_run}'
  )

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position

import helpers  # pylint: disable=wrong-import-position,import-error

# The tests' own processes share that cache too: a test that trains, stops and resumes
# builds the same programs again, and loads them instead of compiling them.
jax.config.update('jax_compilation_cache_dir', os.environ['OSGAN_COMPILATION_CACHE'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


@pytest.fixture(scope='session')
def repo():
  """The repository's root."""
  return helpers.REPO


@pytest.fixture(scope='session')
def fashion_mnist():
  """The offline Fashion-MNIST's directory (both splits); skips the test without it."""
  if not helpers.HAVE_FASHION_MNIST:
    pytest.skip(helpers.needs_fashion_mnist.kwargs['reason'])
  return helpers.FASHION_MNIST_DIR


@pytest.fixture(scope='session')
def make_png_folder(tmp_path_factory):
  """``make(n, corrupt=False, gray=False)``: a new folder of ``n`` blob PNGs
  (``helpers.write_blob_pngs``), plus a corrupt PNG (``03_corrupt.png``, skipped and
  counted by the loaders) and a grayscale one (``04_gray.png``) if asked."""

  def make(n, *, corrupt=False, gray=False, seed=0):
    root = tmp_path_factory.mktemp('images')
    helpers.write_blob_pngs(root, n, seed)
    if corrupt:
      (root / '03_corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n definitely not a png')
    if gray:
      Image.fromarray(np.full((16, 16), 200, np.uint8), 'L').save(root / '04_gray.png')
    return root

  return make


@pytest.fixture(scope='session')
def png_folder(make_png_folder):
  """12 small non-square RGB PNGs, shared by the session's tests (read only)."""
  return make_png_folder(12)


@pytest.fixture(scope='session')
def tiny_config(png_folder):
  """``helpers.tiny_config`` reading ``png_folder`` where a config reads a folder:
  ``tiny_config('wgan_celeba', stage='two', batch_size=16)``."""
  return functools.partial(helpers.tiny_config, folder=png_folder)


def pytest_sessionfinish(session):
  """The session's compilation cache goes with it (xdist: once, in the controller)."""
  if not hasattr(session.config, 'workerinput'):
    shutil.rmtree(os.environ['OSGAN_COMPILATION_CACHE'], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Files with the most long or end-to-end tests first, each file's tests kept together
  (its fixtures set up once): xdist hands tests out in this order, so the short files
  fill the workers' last minutes instead of one worker finishing a long test alone."""
  del config
  heavy = collections.Counter(
      item.path
      for item in items
      if item.get_closest_marker('long') or item.get_closest_marker('e2e')
  )
  order = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
  items.sort(key=lambda item: (-heavy[item.path], order[item.path]))
