"""DCGAN (non-saturating loss) on Fashion-MNIST at 32x32: the offline default.

Small enough for a CPU: d = 32 (G: z -> 128 -> 64 -> 32 -> 1 channels, D mirrored),
batch 64; a few hundred steps already give recognisable clothes. As the official
asymmetric MNIST config: GroupNorm D (a BatchNorm D couples samples), Adam(0.5, 0.999),
G lr 2e-4, D lr 5e-5 (with D at 2e-4 too, D wins early and G collapses for the first
few hundred steps). Data: Debian's ``dataset-fashion-mnist`` (IDX files in
/usr/share/datasets/fashion-mnist).

  python -m osgan_jax.main --config=configs/dcgan_fashion_mnist.py --workdir=/tmp/osgan_fmnist

Two-stage baseline of the same run: add ``--config.stage=two``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.get_base_config()
  c.loss = 'non_saturating'
  c.batch_size = 64
  c.num_train_steps = 1_000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.evals.samples.every_steps = 100
  c.z_dim = 100
  c.data.name = 'fashion_mnist'
  c.data.resolution = 32
  c.data.channels = 1
  c.model.generator.width = 32
  c.model.discriminator.width = 32
  c.model.discriminator.norm = 'group'
  c.optimizer.g_lr = 2e-4
  c.optimizer.d_lr = 5e-5
  return c
