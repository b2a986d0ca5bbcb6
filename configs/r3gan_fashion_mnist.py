"""R3GAN (Huang et al. 2024) on Fashion-MNIST 32x32, class-conditional, sized for a CPU.

The official R3GAN networks (``osgan_jax.models.r3gan``: grouped-conv inverted-bottleneck
ResNet, no normalisation, fix-up init, [1, 3, 3, 1] resampling, embedding-projection
conditioning) with the CIFAR-10 preset's structure (4 stages 4x4 -> 32x32, 2 residual
blocks per stage, expansion 2, 16 channels per group, 64-d z, class embedding of z's
size in G and of the 4x4 width in D) at CPU width: ``channel_base=512, channel_max=32``
(32 channels at 4-16, 16 at 32; about 0.1M parameters each, against 21M in the
official CIFAR-10 networks). The official objective: the relativistic paired loss
(RpGAN) with R1 and R2 at every step (``penalty.r1 = penalty.r2 = 0.05``, the CIFAR-10
preset's starting gamma), Adam betas (0, beta2), and the official schedules compressed
into this run (``config.schedule``): over all its steps a cosine takes lr 2e-4 -> 5e-5,
beta2 0.9 -> 0.99, gamma 0.05 -> 0.005 and G's EMA half-life 0 -> 5 kimg (the
official CIFAR-10 ramp spans 20M images with a 5000 kimg final half-life; the sample
grids are of the EMA generator). Data: Debian's ``dataset-fashion-mnist``.

  python -m osgan_jax.main --config=configs/r3gan_fashion_mnist.py --workdir=/tmp/r3gan_fmnist

Two-stage baseline: ``--config.stage=two``. Parameters:
``python -m osgan_jax.summary --config=configs/r3gan_fashion_mnist.py``.
"""

import ml_collections

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.get_base_config()
  c.loss = 'relativistic'
  c.batch_size = 32
  c.num_train_steps = 2_000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.evals.samples.every_steps = 250
  c.evals.samples.num = 100
  c.z_dim = 64
  c.num_classes = 10

  c.data.name = 'fashion_mnist'
  c.data.resolution = 32
  c.data.channels = 1

  c.model.name = 'r3gan'
  nets = dict(
      channel_base=512,
      channel_max=32,
      group_size=16,
      blocks_per_stage=2,
      expansion=2,
      num_mixed_stages=0,
      conv_impl='auto',
  )
  c.model.generator = ml_collections.ConfigDict(nets)
  c.model.discriminator = ml_collections.ConfigDict(nets)

  c.optimizer.g_lr = 2e-4
  c.optimizer.d_lr = 2e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.penalty.r1 = 0.05
  c.penalty.r2 = 0.05

  c.schedule.kind = 'cosine'
  c.schedule.steps = c.num_train_steps
  c.schedule.g_lr = 5e-5
  c.schedule.d_lr = 5e-5
  c.schedule.b2 = 0.99
  c.schedule.r1 = 0.005
  c.schedule.r2 = 0.005
  c.schedule.ema_half_life_kimg = 5.0
  return c
