"""Every discriminator declares whether its logit i depends on image i alone
(``per_sample``), so training needs no jvp probe of D at start-up; the declaration
must agree with the probe (``one_stage.samples_independent``) for every setting."""

import jax
import jax.numpy as jnp
import pytest

from osgan_jax import config as config_lib
from osgan_jax import models
from osgan_jax.core import one_stage
from osgan_jax.models import classifiers, dcgan, r3gan, stylegan2
from osgan_jax.tasks import gan as gan_lib

CASES = {
    **{
        f'dcgan_{norm}': dcgan.Discriminator(
            resolution=16, channels=1, width=4, norm=norm
        )
        for norm in dcgan.D_NORMS
    },
    'dcgan_spectral_patch': dcgan.Discriminator(
        resolution=16, channels=1, width=4, norm='none', spectral_norm=True, patch=True
    ),
    **{
        f'stylegan2_mbstd_{group}': stylegan2.Discriminator(
            resolution=16,
            img_channels=1,
            channel_base=64,
            channel_max=8,
            mbstd_group_size=group,
        )
        for group in (4, 2, 1, None)
    },
    'stylegan2_no_mbstd': stylegan2.Discriminator(
        resolution=16,
        img_channels=1,
        channel_base=64,
        channel_max=8,
        mbstd_num_channels=0,
    ),
    'r3gan': r3gan.Discriminator(
        resolution=16, channels=1, channel_base=256, channel_max=16, blocks_per_stage=1
    ),
    'lenet5': classifiers.Classifier(arch='lenet5', resolution=16, width=3),
    'resnet18': classifiers.Classifier(
        arch='resnet18', resolution=16, width=4, blocks=(1, 1)
    ),
}


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.long
def test_declared_coupling_matches_the_probe(name):
  module = CASES[name]
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1))
  variables = dict(
      module.init(
          {'params': jax.random.PRNGKey(1), **models.rngs(module, jax.random.PRNGKey(2))},
          images,
          train=False,
      )
  )
  params = variables.pop('params')

  def discriminate(p, x):
    return models.apply(module, p, variables, x, None, True, jax.random.PRNGKey(3))

  probed = one_stage.samples_independent(discriminate, params, images, has_aux=True)
  assert module.per_sample == probed


def test_training_takes_the_declaration_and_probes_only_without_one():
  config = config_lib.load_config('configs/dcgan_fashion_mnist.py')  # GroupNorm D
  g, d = gan_lib.create_models(config)
  assert gan_lib.make_gan(config, g, d).per_sample is True
  config = config_lib.load_config('configs/dcgan_minimax_celeba.py')  # BatchNorm D
  g, d = gan_lib.create_models(config)
  assert gan_lib.make_gan(config, g, d).per_sample is False
