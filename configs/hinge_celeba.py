"""Hinge loss with a spectrally normalised D (SNGAN-style) on CelebA at 64x64.

GeoGAN / SNGAN's hinge loss (asymmetric; gamma is undefined once a fake logit is below
-1, where the exact one-stage path takes over instead of the official code's -inf).
D: the DCGAN discriminator with spectral normalisation on every conv (one power
iteration per training call; its vectors are model state, checkpointed and updated in
both stages) and no other normalisation, as SNGAN's DCGAN-style networks. SNGAN's
setting with one D update per G update: Adam(0.5, 0.999), lr 2e-4 for both, batch
128; d = 128, z = 128, 30 epochs.

Data: tfds ``celeb_a`` prepared as array_record in DIR
(``tfds build celeb_a --file_format=array_record --data_dir=DIR``), or a folder of
aligned CelebA images with ``--config.data.name=folder --config.data.path=/data/img_align_celeba
--config.data.center_crop=108``. Images: 108x108 center crop resized to 64.

  python -m osgan_jax.main --config=configs/hinge_celeba.py --workdir=/tmp/osgan_hinge_celeba --config.data.path=DIR

Two-stage baseline: add ``--config.stage=two``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_dcgan_config('celeb_a', epochs=30)
  c.loss = 'hinge'
  c.z_dim = 128
  c.model.discriminator.norm = 'none'
  c.model.discriminator.spectral_norm = True
  c.optimizer.g_lr = 2e-4
  c.optimizer.d_lr = 2e-4
  return c
