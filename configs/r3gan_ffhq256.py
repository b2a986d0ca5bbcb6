"""R3GAN (Huang et al., NeurIPS 2024) on FFHQ 256x256, the paper's preset.

The official ``--preset=FFHQ-256`` of github.com/brownvc/R3GAN (``train.py``): networks
``osgan_jax.models.r3gan`` with widths [768, 768, 768, 768, 384, 192, 96] from 4x4 to
256x256, groups [96, 96, 96, 96, 48, 24, 12], 2 blocks per stage, expansion 2, z 64
(G 23,057,952 and D 23,009,568 parameters, equal to the official networks), the four
highest-resolution stages in bfloat16; batch 256; RpGAN (``loss='relativistic'``) with
R1 and R2 at every step; Adam betas (0, beta2), eps 1e-8. Over the first 20M images
(78,125 steps at batch 256) a cosine takes lr 2e-4 -> 5e-5 (both players), beta2 0.9
-> 0.99, gamma 150 -> 15 and G's EMA half-life 0 -> 500 kimg (``config.schedule``,
R3GAN's ``cosine_decay_with_warmup``). The paper reports FID 2.75 for this setting.

Not expressed here: the official x-flips (``--mirror=1``) and its ADA-style
augmentation (``--aug=1``, p ramped 0 -> 0.3); the official run has no set length
(``--kimg`` defaults to 10^7 kimg), so ``num_train_steps`` below (100M images) is a
choice. Data: FFHQ as a folder of PNGs (the 1024x1024 release is resized with PIL; a
prepared copy, ``python -m osgan_jax.prepare_data``, reads faster):

  python -m osgan_jax.main --config=configs/r3gan_ffhq256.py --workdir=DIR \
      --config.data.path=/data/ffhq/images1024x1024

Two-stage baseline: ``--config.stage=two``. Parameters:
``python -m osgan_jax.summary --config=configs/r3gan_ffhq256.py``.
"""

import ml_collections

from osgan_jax import config_base

DECAY_IMAGES = 20_000_000


def get_config():
  c = config_base.get_base_config()
  c.loss = 'relativistic'
  c.batch_size = 256
  decay_steps = -(-DECAY_IMAGES // c.batch_size)
  c.num_train_steps = 5 * decay_steps
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.sample_every_steps = 2_000
  c.num_samples = 64
  c.z_dim = 64
  c.num_classes = 0

  c.data.name = 'folder'
  c.data.path = ''
  c.data.resolution = 256
  c.data.channels = 3
  c.data.center_crop = 0

  c.model.name = 'r3gan'
  # The defaults of osgan_jax.models.r3gan are the official widths and groups.
  c.model.generator = ml_collections.ConfigDict(
      dict(num_mixed_stages=4, conv_impl='auto'))
  c.model.discriminator = ml_collections.ConfigDict(
      dict(num_mixed_stages=4, conv_impl='auto'))

  c.optimizer.g_lr = 2e-4
  c.optimizer.d_lr = 2e-4
  c.optimizer.b1 = 0.0
  c.optimizer.b2 = 0.9
  c.optimizer.eps = 1e-8
  c.penalty.r1 = 150.0
  c.penalty.r2 = 150.0
  c.ema.half_life_kimg = 0.0

  c.schedule.kind = 'cosine'
  c.schedule.steps = decay_steps
  c.schedule.g_lr = 5e-5
  c.schedule.d_lr = 5e-5
  c.schedule.b2 = 0.99
  c.schedule.r1 = 15.0
  c.schedule.r2 = 15.0
  c.schedule.ema_half_life_kimg = 500.0

  c.fid.every_steps = 10_000
  c.fid.num_samples = 50_000
  c.fid.num_real = -1
  return c
