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

As the official README's command trains it (``--mirror=1 --aug=1``): the data set with
x-flips (``data.xflip``) and every image D sees augmented by R3GAN's ADA pipe
(``augment.pipe='r3gan'``: ADA's geometric ops and cutout at probability p, its colour
ops at p/2), p ramped 0 -> 0.3 by the same cosine (``schedule.augment_p``; R3GAN's
``aug_scheduler``); docs/augmentation.md. The official run has no set length
(``--kimg`` defaults to 10^7 kimg), so ``num_train_steps`` (100M images; see
``config_lib.official_r3gan_config``) is a choice. Data: FFHQ as a folder of PNGs
(the 1024x1024 release is resized with PIL; a prepared copy, ``python -m
osgan_jax.prepare_data``, reads faster):

  python -m osgan_jax.main --config=configs/r3gan_ffhq256.py --workdir=DIR \
      --config.data.path=/data/ffhq/images1024x1024

Two-stage baseline: ``--config.stage=two``. Parameters:
``python -m osgan_jax.summary --config=configs/r3gan_ffhq256.py``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_r3gan_config('FFHQ-256')
  c.evals.samples.num = 64
  c.data.name = 'folder'
  c.data.path = ''
  c.data.resolution = 256
  c.data.channels = 3
  c.data.center_crop = 0
  return c
