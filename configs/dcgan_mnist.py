"""DCGAN (non-saturating loss) on MNIST at 64x64, the official asymmetric MNIST config.

Official ``cfgs/dcgan/dcgan_asymmetric_one_stage_mnist.yml``: d = 128, z = 100, batch
128, Adam(0.5, 0.999), G lr 2e-4, D lr 5e-5, GroupNorm D (32 groups), 20 epochs.
Data: IDX files in ``data.path`` or /usr/share/datasets/mnist if present, else tfds
``mnist`` (prepared as array_record in ``data.path``, or ``--config.data.download=True``).

  python -m osgan_jax.main --config=configs/dcgan_mnist.py --workdir=/tmp/osgan_mnist

Two-stage baseline: add ``--config.stage=two``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_dcgan_config('mnist', epochs=20)
  c.loss = 'non_saturating'
  c.z_dim = 100
  c.model.discriminator.norm = 'group'
  c.optimizer.g_lr = 2e-4
  c.optimizer.d_lr = 5e-5
  return c
