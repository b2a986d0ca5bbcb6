"""Class-conditional GAN (minimax loss, symmetric) on MNIST at 64x64.

G gets a one-hot label concatenated to z, D a one-hot label map concatenated to the
image (the original CGAN's input conditioning). The loss is symmetric, so D keeps
BatchNorm as the official symmetric configs (one-stage is exact with a coupled D when
gamma = -1). Settings of the official symmetric MNIST config
(``cfgs/dcgan/dcgan_symmetric_one_stage_mnist.yml``): d = 128, z = 100, batch 128,
Adam(0.5, 0.999), G lr 2e-4, D lr 1.35e-5, 20 epochs. Sample grids: one class per
column.

  python -m osgan_jax.main --config=configs/cgan_mnist.py --workdir=/tmp/osgan_cgan_mnist

Offline on Fashion-MNIST instead: add ``--config.data.name=fashion_mnist``.
Two-stage baseline: add ``--config.stage=two``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_dcgan_config('mnist', epochs=20)
  c.loss = 'minimax'
  c.num_classes = 10
  c.evals.samples.num = 100
  c.z_dim = 100
  c.model.discriminator.norm = 'batch'
  c.optimizer.g_lr = 2e-4
  c.optimizer.d_lr = 1.35e-5
  return c
