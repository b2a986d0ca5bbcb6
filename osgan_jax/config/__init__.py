"""Configs: one table of keys (``keys``), the base config and its checks (``base``),
the official setups (``presets``). Config files in ``configs/`` build on these."""

from osgan_jax.config.base import ConfigError
from osgan_jax.config.base import describe
from osgan_jax.config.base import eval_entry
from osgan_jax.config.base import flatten
from osgan_jax.config.base import get_base_config
from osgan_jax.config.base import load_config
from osgan_jax.config.base import validate
from osgan_jax.config.keys import default_json
from osgan_jax.config.keys import may_change
from osgan_jax.config.presets import NUM_EXAMPLES
from osgan_jax.config.presets import R3GAN_DECAY_IMAGES
from osgan_jax.config.presets import R3GAN_PRESETS
from osgan_jax.config.presets import dfad_cifar10_config
from osgan_jax.config.presets import dfad_config
from osgan_jax.config.presets import epochs_to_steps
from osgan_jax.config.presets import official_dcgan_config
from osgan_jax.config.presets import official_r3gan_config
from osgan_jax.config.presets import official_stylegan2_config
