"""DCGAN (non-saturating loss) on LSUN Churches (church_outdoor) at 64x64.

The official asymmetric DCGAN settings (as ``dcgan_celeba.py``): d = 128, z = 128,
batch 128, Adam(0.5, 0.999), G lr 2e-4, D lr 1e-4, GroupNorm D, 30 epochs. Images: the
centered square resized to 64 (bicubic).

Data: tfds ``lsun/church_outdoor`` prepared as array_record in DIR
(``tfds build lsun/church_outdoor --file_format=array_record --data_dir=DIR``), or a
folder of the exported images with ``--config.data.name=folder --config.data.path=/data/church_outdoor``.

  python -m osgan_jax.main --config=configs/dcgan_lsun_church.py --workdir=/tmp/osgan_lsun_church --config.data.path=DIR

Two-stage baseline: add ``--config.stage=two``.
"""

from osgan_jax import config as config_lib


def get_config():
  c = config_lib.official_dcgan_config('lsun_church', epochs=30)
  c.loss = 'non_saturating'
  c.z_dim = 128
  c.model.discriminator.norm = 'group'
  c.optimizer.g_lr = 2e-4
  c.optimizer.d_lr = 1e-4
  return c
