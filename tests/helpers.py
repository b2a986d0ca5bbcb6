"""What the test modules share and need at import time (pytest puts tests/ on the path):
paths, the tiny-config factory, the PNG writer, tolerances. ``conftest.py`` wraps them
as fixtures."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from osgan_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'configs')

# The offline Fashion-MNIST (Debian's dataset-fashion-mnist): both splits' IDX files.
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST = os.path.join(FASHION_MNIST_DIR, 'train-images-idx3-ubyte.gz')
FASHION_MNIST_TEST = os.path.join(FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz')
HAVE_FASHION_MNIST = all(
    os.path.isfile(os.path.join(FASHION_MNIST_DIR, f'{split}-{kind}-ubyte.gz'))
    for split in ('train', 't10k')
    for kind in ('images-idx3', 'labels-idx1')
)
needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST,
    reason='needs the offline Fashion-MNIST IDX files '
    '(sudo apt-get install dataset-fashion-mnist)',
)

# PyTorch, for the cross-checks against the official code (CI installs CPU torch).
HAVE_TORCH = importlib.util.find_spec('torch') is not None


def needs_torch(test):
  """Marks ``test`` ``torch`` (``-m torch`` runs the cross-checks) and skips it where
  torch is not installed."""
  return pytest.mark.torch(
      pytest.mark.skipif(
          not HAVE_TORCH,
          reason='torch not installed (PyTorch cross-check): '
          'python3 -m pip install torch==2.13.0',
      )(test)
  )


def config_path(name: str) -> str:
  """``configs/<name>.py``."""
  return os.path.join(CONFIGS, f'{name}.py')


# ------------------------------------------------------------------------- tiny configs

# Per architecture (config.model.name): the overrides that make its networks tiny.
TINY_MODEL = {
    'dcgan': {'model.generator.width': 8, 'model.discriminator.width': 8},
    'r3gan': {
        'model.generator.channel_base': 64,
        'model.generator.channel_max': 16,
        'model.discriminator.channel_base': 64,
        'model.discriminator.channel_max': 16,
        'model.generator.blocks_per_stage': 1,
        'model.discriminator.blocks_per_stage': 1,
    },
    'stylegan2': {
        'z_dim': 16,
        'model.generator.w_dim': 16,
        'model.generator.mapping_layers': 2,
        'model.generator.channel_base': 64,
        'model.generator.channel_max': 16,
        'model.discriminator.channel_base': 64,
        'model.discriminator.channel_max': 16,
    },
    # Data-free distillation (the teacher's and the student's configs): G only; the
    # test-accuracy evaluator in one batch.
    'dfad': {
        'z_dim': 16,
        'model.generator.width': 8,
        'evals.test_accuracy.batch_size': 2000,
    },
}
# Every tiny run: 16x16 images loaded in the main thread, no progress bar.
TINY_DATA = {'data.resolution': 16, 'data.num_threads': 0, 'progress_bar': False}
# A two-step run, logging every step, one sample grid at the end, no checkpoint before
# the final one and no FID (the paper configs' FID-50k is tested on its own).
SHORT_RUN = {
    'batch_size': 8,
    'num_train_steps': 2,
    'log_every_steps': 1,
    'evals.samples.every_steps': 2,
    'evals.samples.num': 4,
    'checkpoint_every_steps': 1000,
    'evals.fid.every_steps': 0,
}


def tiny_overrides(name: str, folder=None, *, run=SHORT_RUN, **extra) -> dict:
  """Overrides that make ``configs/<name>.py`` a few-second CPU run: ``TINY_DATA``, the
  architecture's ``TINY_MODEL``, the schedule ``run`` (``SHORT_RUN``; ``{}`` keeps the
  config's), then ``extra``. Data: a conditional config reads the offline
  Fashion-MNIST (real labels) where it is installed, and so does any config without
  a ``folder``; the others read ``folder``'s images."""
  base = config_lib.load_config(config_path(name))
  overrides = {**TINY_DATA, **run, **TINY_MODEL[base.model.name]}
  if base.num_classes and 'evals.samples.num' in run:  # one class per grid column
    overrides['evals.samples.num'] = 2 * base.num_classes
  if folder is None or (base.num_classes and HAVE_FASHION_MNIST):
    if base.data.name != 'fashion_mnist':
      overrides.update({'data.name': 'fashion_mnist', 'data.path': ''})
  else:
    overrides.update({'data.name': 'folder', 'data.path': str(folder)})
  overrides.update(extra)
  return overrides


def tiny_config(name: str, folder=None, *, run=SHORT_RUN, **extra):
  """``configs/<name>.py`` loaded with ``tiny_overrides(name, folder, run=run, **extra)``."""
  return config_lib.load_config(
      config_path(name), tiny_overrides(name, folder, run=run, **extra)
  )


# A Fashion-MNIST DCGAN small enough to train a few steps in a test, checkpointing
# every 2 steps so a run can be resumed from its middle.
TINY_FASHION_MNIST = {
    'batch_size': 16,
    'log_every_steps': 2,
    'evals.samples.every_steps': 100,
    'checkpoint_every_steps': 2,
    'keep_checkpoints': 5,
    'num_train_steps': 4,
}


def tiny_fashion_mnist_config(**overrides):
  """``configs/dcgan_fashion_mnist.py`` tiny, run as ``TINY_FASHION_MNIST``, plus
  ``overrides``."""
  return tiny_config('dcgan_fashion_mnist', run=TINY_FASHION_MNIST, **overrides)


def cli_flags(overrides: dict) -> list:
  """``--config.<key>=<value>`` flags of ``osgan_jax.main`` for ``overrides``."""
  return [f'--config.{k}={v}' for k, v in overrides.items()]


# ---------------------------------------------------------------------------- run files


def read_metrics(workdir) -> list:
  """The records of a run's ``metrics.jsonl``."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def checkpoint_steps(workdir) -> list:
  """The steps of the checkpoints in a run's workdir, ascending."""
  return sorted(
      int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()
  )


def assert_trees_equal(a, b) -> None:
  """Same structure, and every leaf of the same dtype and bit for bit equal."""
  leaves_a, tree_a = jax.tree.flatten(jax.device_get(a))
  leaves_b, tree_b = jax.tree.flatten(jax.device_get(b))
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b, strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and np.array_equal(x, y)


# ------------------------------------------------------------------------------ images


def write_blob_pngs(root, n: int, seed: int = 0) -> None:
  """``n`` non-square (20x24) RGB PNGs of one soft blob each: the loaders crop and
  resize them, and the GAN sees images with structure rather than noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:20, 0:24]
  for i in range(n):
    blob = np.exp(
        -((yy - rng.uniform(5, 15)) ** 2 + (xx - rng.uniform(5, 19)) ** 2)
        / rng.uniform(4, 30)
    )
    rgb = np.stack([blob * rng.uniform(0.3, 1) for _ in range(3)], -1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(root / f'{i:02d}.png')


# -------------------------------------------------------------------------- tolerances


def rounding_atol(reference, n_terms: int, dtype=np.float32, scale=None) -> float:
  """An absolute tolerance for a ``dtype`` computation against ``reference``, from what
  is computed rather than from one machine's rounding.

  A sum of n rounded terms is off by at most about n * eps * sum(|terms|) whatever the
  order of summation (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
  chapters 3 and 4), and the order is what changes between CPUs (vector widths, Eigen's
  and oneDNN's blocking by cache size, thread counts) and XLA versions. ``n_terms``:
  the terms summed along the longest chain of sums that makes one value; the scale
  of sum(|terms|) is ``scale``, or the largest |reference| value where the terms are
  of the result's own size. Rounding errors grow like sqrt(n) in practice, so the
  bound leaves a wide margin where it holds, yet stays far below any real error (a
  wrong term is of the result's size, n * eps is 1e-4 for n = 840 in float32).
  """
  if scale is None:
    scale = float(np.max(np.abs(np.asarray(reference, np.float64))))
  return float(n_terms * np.finfo(dtype).eps * scale)
