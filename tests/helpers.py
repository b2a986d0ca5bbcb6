"""Small test data shared by the test modules (importable: pytest puts tests/ on the path)."""

import os

import numpy as np
from PIL import Image

from osgan_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'

# A Fashion-MNIST DCGAN small enough to train a few steps in a test, checkpointing
# every 2 steps so a run can be resumed from its middle.
TINY_FASHION_MNIST = {
    'model.generator.width': 8,
    'model.discriminator.width': 8,
    'batch_size': 16,
    'data.resolution': 16,
    'data.num_threads': 0,
    'log_every_steps': 2,
    'evals.samples.every_steps': 100,
    'checkpoint_every_steps': 2,
    'keep_checkpoints': 5,
    'num_train_steps': 4,
    'progress_bar': False,
}


def tiny_fashion_mnist_config(**overrides):
  """``configs/dcgan_fashion_mnist.py`` at ``TINY_FASHION_MNIST`` plus ``overrides``."""
  return config_lib.load_config(
      os.path.join(REPO, 'configs', 'dcgan_fashion_mnist.py'),
      {**TINY_FASHION_MNIST, **overrides},
  )


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
