"""Bad network arguments are one-line ``ConfigError``s naming their config key.

``create_models`` runs each module's ``validate()`` (no tracing); a value it refuses
reads ``config.model.generator.mapping_layers must be >= 1, got -1``, or names the
top-level key an argument comes from (``config.data.resolution ...``).
"""

import glob
import os

import pytest

from osgan_jax import config as config_lib
from osgan_jax import models
from osgan_jax.config import ConfigError
from osgan_jax.tasks import gan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name):
  return os.path.join(REPO, 'configs', f'{name}.py')


G, D = 'model.generator', 'model.discriminator'

# (config, key, bad value): the message must name the key.
REPORTED = [
    # Found by the probe: accepted silently, or an obscure error.
    ('stylegan2_tiny', f'{G}.mapping_layers', -1),
    ('stylegan2_tiny', f'{G}.num_fp16_res', -1),
    ('stylegan2_tiny', f'{D}.mbstd_group_size', 0),
    ('stylegan2_tiny', 'data.resolution', 30),
    ('r3gan_fashion_mnist', f'{G}.group_size', 0),
    ('r3gan_fashion_mnist', f'{G}.group_size', 5),
]
HELD_OUT = [
    ('stylegan2_tiny', f'{D}.num_fp16_res', -2),
    ('stylegan2_tiny', f'{G}.conv_clamp', -1.0),
    ('stylegan2_tiny', f'{D}.conv_clamp', 0.0),
    ('stylegan2_tiny', f'{G}.style_mixing_prob', 1.5),
    ('stylegan2_tiny', f'{G}.channel_base', 0),
    ('stylegan2_tiny', f'{D}.channel_base', 16),  # < the resolution, 32
    ('stylegan2_tiny', f'{D}.channel_max', -64),
    ('stylegan2_tiny', f'{D}.conv_impl', 'nope'),
    ('stylegan2_tiny', f'{G}.w_dim', 0),
    ('stylegan2_tiny', f'{G}.mapping_lr_multiplier', 0.0),
    ('stylegan2_tiny', 'data.resolution', 4),  # D needs >= 8
    ('stylegan2_tiny', 'z_dim', 0),  # unconditional
    ('stylegan2_ffhq', f'{D}.mbstd_group_size', -4),
    ('r3gan_fashion_mnist', f'{D}.group_size', 7),
    ('r3gan_fashion_mnist', f'{G}.blocks_per_stage', -1),
    ('r3gan_fashion_mnist', f'{D}.expansion', 0),
    ('r3gan_fashion_mnist', f'{G}.conv_impl', 'nope'),
    ('r3gan_fashion_mnist', f'{D}.num_mixed_stages', -1),
    ('r3gan_fashion_mnist', f'{D}.channel_max', 0),
    ('r3gan_fashion_mnist', 'data.resolution', 48),
    ('r3gan_cifar10', f'{G}.group_size', 0),
    ('dcgan_mnist', 'data.resolution', 30),
    ('dcgan_mnist', f'{G}.width', 0),
    ('dcgan_mnist', f'{D}.width', -8),
    ('dcgan_mnist', f'{G}.norm', 'group'),
    ('dcgan_mnist', f'{D}.norm', 'bogus'),
    ('dcgan_mnist', f'{D}.num_groups', 0),
    ('dcgan_mnist', f'{G}.embed_dim', -1),
    ('dcgan_mnist', f'{G}.dtype', 'int32'),  # a dtype, not a floating one
    ('dfad_fashion_mnist', f'{G}.width', 0),
    ('dfad_fashion_mnist', f'{D}.arch', 'vgg'),
    ('dfad_fashion_mnist', f'{D}.width', -1),
    ('dfad_fashion_mnist', f'{D}.blocks', (1,)),  # lenet5 has no blocks
    ('dfad_fashion_mnist', 'data.resolution', 30),  # G: a multiple of 4
    ('dfad_fashion_mnist', 'data.resolution', 12),  # lenet5: >= 16
    ('dfad_fashion_mnist', 'z_dim', 0),
    ('dfad_cifar10', f'{D}.blocks', (0, 1)),
]


@pytest.mark.parametrize(
    'name,key,value',
    REPORTED + HELD_OUT,
    ids=[f'{n}-{k}={v!r}' for n, k, v in REPORTED + HELD_OUT],
)
def test_a_bad_network_argument_is_one_line_naming_its_key(name, key, value):
  config = config_lib.load_config(config_path(name), {key: value})
  with pytest.raises(ConfigError) as raised:
    gan.create_models(config)
  message = str(raised.value)
  assert message.startswith(f'config.{key} '), message
  assert '\n' not in message, message
  assert 'must be' in message or 'not supported' in message, message


def test_the_messages_say_what_the_value_must_be():
  def message(name, key, value):
    with pytest.raises(ConfigError) as raised:
      gan.create_models(config_lib.load_config(config_path(name), {key: value}))
    return str(raised.value)

  assert message('stylegan2_tiny', f'{G}.mapping_layers', -1) == (
      'config.model.generator.mapping_layers must be >= 1, got -1'
  )
  assert message('stylegan2_tiny', f'{D}.mbstd_group_size', 0) == (
      'config.model.discriminator.mbstd_group_size must be >= 1 or None, got 0'
  )
  assert message('stylegan2_tiny', 'data.resolution', 4) == (
      'config.data.resolution must be a power of two >= 8, got 4'
  )
  assert message('r3gan_fashion_mnist', f'{G}.group_size', 5) == (
      'config.model.generator.group_size must be >= 1 and divide every expanded '
      'stage width (64, 64, 64, 32), got 5'
  )
  assert message('dfad_fashion_mnist', 'num_classes', 10) == (
      'config.num_classes must be 0 (the DFAD networks are unconditional), got 10'
  )
  # The message the architecture already had, now naming the key.
  assert message('dcgan_mnist', 'data.resolution', 30).startswith(
      'config.data.resolution 30 is not supported: it must be s * 2**n'
  )


def shipped_configs():
  for path in sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))):
    if config_lib.load_config(path).get('task', 'gan') != 'teacher':
      yield os.path.splitext(os.path.basename(path))[0]


@pytest.mark.parametrize('name', list(shipped_configs()))
def test_every_shipped_config_has_valid_networks(name):
  generator, discriminator = gan.create_models(config_lib.load_config(config_path(name)))
  generator.validate()
  discriminator.validate()


@pytest.mark.parametrize('arch', models.available())
def test_every_architecture_validates_its_defaults(arch):
  for cls in models.get(arch):
    cls().validate()
