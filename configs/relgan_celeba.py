"""RelGAN (relativistic standard GAN, real i paired with fake i; asymmetric) on CelebA at 64x64.

The official code has no config for this loss; the paper trains it with the DCGAN
networks, so this uses the official asymmetric DCGAN settings
(``dcgan_asymmetric_one_stage_celeba.yml``): d = 128, z = 128, batch 128,
Adam(0.5, 0.999), G lr 2e-4, D lr 1e-4, GroupNorm D, 30 epochs.
Relativistic average GAN instead: ``--config.loss=relativistic_average``.

Data: tfds ``celeb_a`` prepared as array_record in DIR
(``tfds build celeb_a --file_format=array_record --data_dir=DIR``), or a folder of
aligned CelebA images with ``--config.data.name=folder --config.data.path=/data/img_align_celeba
--config.data.center_crop=108``. Images: 108x108 center crop resized to 64.

  python -m osgan_jax.main --config=configs/relgan_celeba.py --workdir=/tmp/osgan_relgan_celeba --config.data.path=DIR

Two-stage baseline: add ``--config.stage=two``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_dcgan_config('celeb_a', epochs=30)
  c.loss = 'relativistic'
  c.z_dim = 128
  c.model.discriminator.norm = 'group'
  c.optimizer.g_lr = 2e-4
  c.optimizer.d_lr = 1e-4
  return c
