"""A tiny StyleGAN2 on Fashion-MNIST 32x32: the full method, small enough for a CPU.

The same networks and training as ``stylegan2_ffhq.py`` (mapping network, modulated
convs, noise, style mixing, 'skip' G, 'resnet' D with minibatch std, lazy R1 and path
length regularisation with the lazy Adam correction, G EMA, one-stage main step) at
32x32x1 with 64-d z and w, 2 mapping layers and ``channel_base=512,
channel_max=64`` (64 channels at 4-8, 32 at 16, 16 at 32). Hyperparameters follow the
official 'auto' preset for this resolution and batch (lr 0.0025, EMA half-life 10 kimg
with ramp-up 0.05) with the official CIFAR R1 gamma 0.01.

  python -m osgan_jax.main --config=configs/stylegan2_tiny.py --workdir=/tmp/stylegan2_tiny

ADA (stylegan2-ada-pytorch's 'bgc' pipe on every image D sees, lazy R1 included, p
adapted towards E[sign(D(real))] = 0.6): ``--config.augment.pipe=ada
--config.augment.target=0.6`` (docs/augmentation.md). Two-stage baseline:
``--config.stage=two``. Parameters: ``python -m osgan_jax.summary
--config=configs/stylegan2_tiny.py``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_stylegan2_config()
  c.batch_size = 32
  c.num_train_steps = 2_000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.evals.samples.every_steps = 250
  c.evals.samples.num = 64
  c.z_dim = 64

  c.data.name = 'fashion_mnist'
  c.data.resolution = 32
  c.data.channels = 1

  c.model.generator.w_dim = 64
  c.model.generator.mapping_layers = 2
  c.model.generator.channel_base = 512
  c.model.generator.channel_max = 64
  c.model.discriminator.channel_base = 512
  c.model.discriminator.channel_max = 64

  c.optimizer.g_lr = 0.0025
  c.optimizer.d_lr = 0.0025
  c.reg.r1_gamma = 0.01
  c.ema.half_life_kimg = 10.0
  c.ema.rampup = 0.05
  return c
