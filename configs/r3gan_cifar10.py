"""R3GAN (Huang et al., NeurIPS 2024) on class-conditional CIFAR-10, the paper's preset.

The official ``--preset=CIFAR10 --cond=1`` of github.com/brownvc/R3GAN (``train.py``):
networks ``osgan_jax.models.r3gan`` at widths 768 at every stage (4x4 to 32x32), 96
groups, 2 blocks per stage, expansion 2, z 64, class embedding 64 in G and 768 in D
(G 20,781,952 and D 21,280,512 parameters, equal to the official networks), the three
highest-resolution stages in bfloat16; batch 512; RpGAN (``loss='relativistic'``)
with R1 and R2 at every step; Adam betas (0, beta2), eps 1e-8. Over the first 20M
images (39,063 steps at batch 512) a cosine takes lr 2e-4 -> 5e-5 (both players),
beta2 0.9 -> 0.99, gamma 0.05 -> 0.005 and G's EMA half-life 0 -> 5000 kimg
(``config.schedule``, R3GAN's ``cosine_decay_with_warmup``). The paper reports FID
1.96 for this setting.

As the official README's command trains it (``--mirror=1 --aug=1``): the data set with
x-flips (``data.xflip``) and every image D sees augmented by R3GAN's ADA pipe
(``augment.pipe='r3gan'``: ADA's geometric ops and cutout at probability p, its colour
ops at p/2), p ramped 0 -> 0.55 by the same cosine (``schedule.augment_p``; R3GAN's
``aug_scheduler``); docs/augmentation.md. The official run has no set length
(``--kimg`` defaults to 10^7 kimg), so ``num_train_steps`` (100M images; see
``config_lib.official_r3gan_config``) is a choice. Data: CIFAR-10 through
tensorflow-datasets (``data.download=True`` fetches it once), e.g. on one GPU:

  python -m osgan_jax.main --config=configs/r3gan_cifar10.py --workdir=DIR \
      --config.data.download=True

Two-stage baseline: ``--config.stage=two``. Parameters:
``python -m osgan_jax.summary --config=configs/r3gan_cifar10.py``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_r3gan_config('CIFAR10')
  c.evals.samples.num = 100
  c.num_classes = 10
  c.data.name = 'cifar10'
  c.data.resolution = 32
  c.data.channels = 3
  return c
