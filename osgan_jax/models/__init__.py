"""Generator / discriminator architectures and a small registry.

``get(name)`` returns an architecture's classes, imported on first use; ``apply`` and
``rngs`` thread model state and RNG streams. The models know nothing of one-stage
training. The registry and every architecture: ``docs/models.md``.
"""

from __future__ import annotations

import importlib

import flax.linen as nn
import jax

# name -> (module path, generator class name, discriminator class name)
_ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    'dcgan': ('osgan_jax.models.dcgan', 'Generator', 'Discriminator'),
    # Further architectures register here, one line each.
    'stylegan2': ('osgan_jax.models.stylegan2', 'Generator', 'Discriminator'),
    # Data-free distillation: DFAD's generator, and the student classifier as D.
    'dfad': ('osgan_jax.models.classifiers', 'Generator', 'Classifier'),
    'r3gan': ('osgan_jax.models.r3gan', 'Generator', 'Discriminator'),
}


def register(
    name: str,
    module_path: str,
    generator: str = 'Generator',
    discriminator: str = 'Discriminator',
) -> None:
  """Registers an architecture: classes ``generator``/``discriminator`` of
  ``module_path`` (imported on first ``get``)."""
  _ARCHITECTURES[name] = (module_path, generator, discriminator)


def available() -> list[str]:
  """Registered architecture names."""
  return sorted(_ARCHITECTURES)


def get(name: str) -> tuple[type[nn.Module], type[nn.Module]]:
  """``(Generator class, Discriminator class)`` of a registered architecture."""
  try:
    module_path, g_name, d_name = _ARCHITECTURES[name]
  except KeyError:
    raise ValueError(f'unknown architecture {name!r}; available: {available()}') from None
  module = importlib.import_module(module_path)
  return getattr(module, g_name), getattr(module, d_name)


def get_generator(name: str, **kwargs) -> nn.Module:
  """An instance of the architecture's generator built with ``kwargs``."""
  return get(name)[0](**kwargs)


def get_discriminator(name: str, **kwargs) -> nn.Module:
  """An instance of the architecture's discriminator built with ``kwargs``."""
  return get(name)[1](**kwargs)


def check_images(x, resolution: int, channels: int):
  """``x`` as an array of images [B, resolution, resolution, channels]; a clear
  ``ValueError`` otherwise."""
  x = jax.numpy.asarray(x)
  expected = (resolution, resolution, channels)
  if x.shape[1:] != expected:
    raise ValueError(
        f'images must have shape [B, {", ".join(map(str, expected))}], got {x.shape}'
    )
  return x


def check_labels(labels, num_classes: int, batch: int):
  """The integer labels [B] a conditional model needs (None for an unconditional one);
  a clear ``ValueError`` for labels that do not fit."""
  if num_classes <= 0:
    if labels is not None:
      raise ValueError('labels were given to an unconditional model (num_classes=0)')
    return None
  if labels is None:
    raise ValueError(
        f'this model is conditional (num_classes={num_classes}): pass '
        'integer labels [B]'
    )
  labels = jax.numpy.asarray(labels)
  if labels.shape != (batch,):
    raise ValueError(f'labels must have shape ({batch},), got {labels.shape}')
  return labels


def rng_streams(module) -> tuple[str, ...]:
  """The Flax RNG streams a module draws from when applied (its ``RNG_STREAMS``;
  e.g. StyleGAN2's ``'noise'`` and ``'mixing'``), besides ``'params'`` at init."""
  return tuple(getattr(module, 'RNG_STREAMS', ()))


def rngs(module, rng) -> dict:
  """``rng`` split over the module's RNG streams (``{}`` for a module without any)."""
  streams = rng_streams(module)
  if not streams:
    return {}
  if rng is None:
    raise ValueError(f'{type(module).__name__} needs an rng for {streams}')
  return dict(zip(streams, jax.random.split(rng, len(streams))))


def apply(
    module,
    params,
    model_state,
    x,
    labels=None,
    train: bool = True,
    rng=None,
    method=None,
    **kwargs,
):
  """``module.apply`` with the non-parameter collections (BatchNorm statistics, ...)
  and RNG streams threaded through; returns ``(output, model_state)``, the state
  updated in training mode."""
  variables = {'params': params, **model_state}
  kwargs.update(train=train, rngs=rngs(module, rng), method=method)
  if train and model_state:
    out, new_state = module.apply(
        variables, x, labels, mutable=list(model_state), **kwargs
    )
    return out, {**model_state, **new_state}
  return module.apply(variables, x, labels, **kwargs), model_state


__all__ = [
    'apply',
    'available',
    'check_images',
    'check_labels',
    'get',
    'get_discriminator',
    'get_generator',
    'register',
    'rng_streams',
    'rngs',
]
