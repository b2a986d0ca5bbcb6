"""The official setups as configs: DCGAN (OSGAN), StyleGAN2 config-f, R3GAN, DFAD."""

from __future__ import annotations

import math

import ml_collections

from osgan_jax.config import keys
from osgan_jax.config.base import get_base_config


def epochs_to_steps(epochs: float, num_examples: int, batch_size: int) -> int:
  """Steps that cover ``epochs`` passes over ``num_examples`` (rounded up)."""
  return int(math.ceil(epochs * num_examples / batch_size))


# Training-split sizes, to express the official epoch counts in steps.
NUM_EXAMPLES = {
    'mnist': 60_000,
    'fashion_mnist': 60_000,
    'celeb_a': 162_770,  # tfds celeb_a 'train'
    'lsun_church': 126_227,  # tfds lsun/church_outdoor 'train'
}


def official_dcgan_config(data_name: str, epochs: float) -> ml_collections.ConfigDict:
  """The base config with the official OSGAN DCGAN setup for ``data_name``: 64x64, batch
  128, ``epochs`` passes over the training split."""
  c = get_base_config()
  c.batch_size = 128
  c.num_train_steps = epochs_to_steps(epochs, NUM_EXAMPLES[data_name], c.batch_size)
  c.data.name = data_name
  c.data.resolution = 64
  c.data.channels = 1 if data_name in ('mnist', 'fashion_mnist') else 3
  return c


def official_stylegan2_config() -> ml_collections.ConfigDict:
  """The base config with the official StyleGAN2 'stylegan2' (config-f) preset, without
  mixed precision (docs/stylegan2.md); the data keys are the caller's."""
  c = get_base_config()
  c.loss = 'non_saturating'
  c.batch_size = 32
  c.num_train_steps = 25_000_000 // 32  # 25000 kimg
  c.log_every_steps = 100
  c.checkpoint_every_steps = 6_250  # 200 kimg, the official snapshot period
  c.evals.samples.update(every_steps=1_250, num=32)
  c.z_dim = 512
  no_clamp = lambda: ml_collections.FieldReference(None, field_type=float)
  c.model.name = 'stylegan2'
  c.model.generator = ml_collections.ConfigDict(
      dict(
          w_dim=512,
          channel_base=32768,
          channel_max=512,
          mapping_layers=8,
          mapping_lr_multiplier=0.01,
          style_mixing_prob=0.9,
          num_fp16_res=0,
          conv_clamp=no_clamp(),
          conv_impl='auto',
      )
  )
  c.model.discriminator = ml_collections.ConfigDict(
      dict(
          channel_base=32768,
          channel_max=512,
          mbstd_group_size=4,
          num_fp16_res=0,
          conv_clamp=no_clamp(),
          conv_impl='auto',
      )
  )
  c.optimizer.update(g_lr=0.002, d_lr=0.002, b1=0.0, b2=0.99, eps=1e-8, nan_to_num=True)
  c.reg.update(r1_gamma=10.0, r1_interval=16)
  c.reg.update(pl_weight=2.0, pl_interval=4, pl_decay=0.01, pl_batch_shrink=2)
  c.ema.update(half_life_kimg=10.0, rampup=0.0)
  return c


# The official R3GAN presets (brownvc/R3GAN ``train.py``): batch, gamma's ramp, the
# final EMA half-life (kimg), the final augmentation probability and the bfloat16
# stages; every preset ramps lr 2e-4 -> 5e-5, beta2 0.9 -> 0.99, gamma, the EMA
# half-life and the augmentation p (from 0) by one cosine over 20M images.
R3GAN_PRESETS = {
    'CIFAR10': dict(
        batch_size=512, gamma=(0.05, 0.005), ema_kimg=5000.0, aug_p=0.55, mixed_stages=3
    ),
    'FFHQ-256': dict(
        batch_size=256, gamma=(150.0, 15.0), ema_kimg=500.0, aug_p=0.3, mixed_stages=4
    ),
}
R3GAN_DECAY_IMAGES = 20_000_000


def official_r3gan_config(preset: str) -> ml_collections.ConfigDict:
  """The base config with an official R3GAN preset (``R3GAN_PRESETS``, docs/r3gan.md);
  ``num_train_steps`` (100M images) is a choice. Data is the caller's."""
  p = R3GAN_PRESETS[preset]
  c = get_base_config()
  c.loss = 'relativistic'
  c.batch_size = p['batch_size']
  decay_steps = -(-R3GAN_DECAY_IMAGES // c.batch_size)
  c.num_train_steps = 5 * decay_steps
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.evals.samples.every_steps = 2_000
  c.z_dim = 64

  c.model.name = 'r3gan'
  for net in ('generator', 'discriminator'):
    c.model[net] = ml_collections.ConfigDict(
        dict(
            channel_base=24576,
            channel_max=768,
            group_size=16,
            blocks_per_stage=2,
            expansion=2,
            num_mixed_stages=p['mixed_stages'],
            conv_impl='auto',
        )
    )

  c.optimizer.update(g_lr=2e-4, d_lr=2e-4, b1=0.0, b2=0.9, eps=1e-8)
  c.penalty.r1 = c.penalty.r2 = p['gamma'][0]
  c.ema.half_life_kimg = 0.0

  c.schedule.update(kind='cosine', steps=decay_steps, g_lr=5e-5, d_lr=5e-5, b2=0.99)
  c.schedule.r1 = c.schedule.r2 = p['gamma'][1]
  c.schedule.ema_half_life_kimg = p['ema_kimg']
  # --mirror=1 --aug=1, as the official README trains every preset: x-flips, and
  # R3GAN's AugmentPipe (augment.pipe='r3gan') with p ramped from 0 (aug_scheduler).
  c.data.xflip = True
  c.augment.update(pipe='r3gan', p=0.0)
  c.schedule.augment_p = p['aug_p']

  c.evals.fid.update(every_steps=10_000, num_samples=50_000, num_real=-1)
  return c


def dfad_config(task: str = 'dfad') -> ml_collections.ConfigDict:
  """Fashion-MNIST at 32x32: LeNet-5 teacher, LeNet-5-half student, DFAD's generator.
  Both tasks of one experiment share every key, so distillation knows its teacher."""
  c = get_base_config()
  c.task = task
  c.loss = 'dfad'
  c.z_dim = 100
  c.data.update(name='fashion_mnist', resolution=32, channels=1)
  c.model.name = 'dfad'
  # DFAD's generator has width 64 (1.05M parameters); 16 keeps a CPU step cheap.
  c.model.generator = ml_collections.ConfigDict(dict(width=16))
  c.model.discriminator = ml_collections.ConfigDict(
      dict(arch='lenet5', width=3, blocks=(), spectral_norm=False)
  )
  # The generator's Adam (lr 1e-3, PyTorch's default betas) and the student's SGD (lr
  # 0.01, momentum 0.9, weight decay 1e-4), DFAD's MNIST settings.
  c.optimizer.update(g_lr=1e-3, d_lr=0.01, b1=0.9, b2=0.999)
  c.batch_size = 128
  c.num_train_steps = 2_000
  c.evals.test_accuracy = ml_collections.ConfigDict(
      keys.eval_defaults('test_accuracy', every_steps=500, batch_size=1000)
  )
  if task == 'teacher':
    c.update(log_every_steps=100, checkpoint_every_steps=1_000)
    c.evals.samples.every_steps = 0  # a classifier has no samples
  else:
    c.update(log_every_steps=50, checkpoint_every_steps=500)
    c.evals.samples.every_steps = 500
  return c


CIFAR10_TRAIN_EXAMPLES = 50_000


def dfad_cifar10_config(task: str = 'dfad') -> ml_collections.ConfigDict:
  """CIFAR-10 as DFAD's ``train_teacher.py``, ``DFAD_cifar.py`` and README commands run
  it: ResNet-34 teacher, ResNet-18 student, GeneratorA (docs/dfad.md)."""
  c = dfad_config(task)
  c.data.update(name='cifar10', resolution=32, channels=3)
  c.z_dim = 256
  c.model.generator.width = 64
  c.model.discriminator.update(arch='resnet18', width=64)
  c.optimizer.update(d_lr=0.1, g_lr=1e-3)
  iters_per_epoch = 50  # DFAD validates every 50 iterations and calls that an epoch
  c.optimizer.lr_milestones = (100 * iters_per_epoch, 200 * iters_per_epoch)
  c.optimizer.lr_decay = 0.1
  c.teacher.update(arch='resnet34', width=64, blocks=())
  # DFAD's step schedule (x0.1 every 80 epochs) is off in its README's command; a
  # cosine decay over the 200 epochs is the usual CIFAR recipe and needs no tuning.
  c.teacher.update(
      optimizer='sgd', lr=0.1, lr_schedule='cosine', momentum=0.9, weight_decay=5e-4
  )
  c.dfad.teacher_workdir = '/tmp/dfad_teacher_cifar10'
  c.dfad.teacher_config = 'configs/dfad_teacher_cifar10.py'
  c.dfad.student_weight_decay = 5e-4
  c.evals.test_accuracy.batch_size = 500
  if task == 'teacher':
    c.batch_size = 128
    steps_per_epoch = -(-CIFAR10_TRAIN_EXAMPLES // c.batch_size)
    c.num_train_steps = epochs_to_steps(200, CIFAR10_TRAIN_EXAMPLES, c.batch_size)
    c.evals.test_accuracy.every_steps = 5 * steps_per_epoch
    c.update(log_every_steps=100, checkpoint_every_steps=5 * steps_per_epoch)
  else:
    c.batch_size = 256
    c.num_train_steps = 500 * iters_per_epoch
    c.evals.test_accuracy.every_steps = iters_per_epoch
    c.update(log_every_steps=iters_per_epoch, checkpoint_every_steps=20 * iters_per_epoch)
    c.evals.samples.every_steps = 20 * iters_per_epoch
  return c
