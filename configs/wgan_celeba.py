"""WGAN (weight clipping at 0.01, symmetric) on CelebA at 64x64, the official config.

Official ``cfgs/wgan/wgan_dcgan_one_stage_celeba.yml``: DCGAN networks (d = 128,
BatchNorm D), z = 100, batch 128, Adam(0.5, 0.999), G lr 1e-4, D lr 1.35e-5, both
divided by 10 after epochs 10 and 15, D's weights clipped to [-0.01, 0.01] after every
update, one D update per G update, 30 epochs.

Data: tfds ``celeb_a`` prepared as array_record in DIR
(``tfds build celeb_a --file_format=array_record --data_dir=DIR``), or a folder of
aligned CelebA images with ``--config.data.name=folder --config.data.path=/data/img_align_celeba
--config.data.center_crop=108``. Images: 108x108 center crop resized to 64.

  python -m osgan_jax.main --config=configs/wgan_celeba.py --workdir=/tmp/osgan_wgan_celeba --config.data.path=DIR

Two-stage baseline: add ``--config.stage=two``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_dcgan_config('celeb_a', epochs=30)
  c.loss = 'wgan'
  c.z_dim = 100
  c.model.discriminator.norm = 'batch'
  c.optimizer.g_lr = 1e-4
  c.optimizer.d_lr = 1.35e-5
  c.optimizer.weight_clip = 0.01
  steps_per_epoch = c.num_train_steps / 30
  c.optimizer.lr_milestones = (round(10 * steps_per_epoch), round(15 * steps_per_epoch))
  c.optimizer.lr_decay = 0.1
  return c
