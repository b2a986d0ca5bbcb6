"""Generator / discriminator architectures and a small registry.

``get(name)`` returns an architecture's classes, imported on first use; ``apply`` and
``rngs`` thread model state and RNG streams. The models know nothing of one-stage
training. The registry and every architecture: ``docs/models.md``.
"""

from __future__ import annotations

import importlib
import itertools
import math
import numbers

import flax.linen as nn
import jax
import numpy as np

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
  """Registers ``module_path``'s G and D classes (imported on the first ``get``)."""
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
  """``x`` as images [B, resolution, resolution, channels], else a ValueError."""
  x = jax.numpy.asarray(x)
  expected = (resolution, resolution, channels)
  if x.shape[1:] != expected:
    raise ValueError(
        f'images must have shape [B, {", ".join(map(str, expected))}], got {x.shape}'
    )
  return x


def check_labels(labels, num_classes: int, batch: int):
  """Integer labels [B] of a conditional model (None if not), else a ValueError."""
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
  """The RNG streams a module draws from when applied (its ``RNG_STREAMS``)."""
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
  """``module.apply`` threading model state and RNGs: ``(output, new model_state)``."""
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


def fields(module, names: str) -> dict:
  """``{name: module.name}`` for the space-separated ``names``."""
  return {name: getattr(module, name) for name in names.split()}


def is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# A check maps a field's value and its module to what the value must be where it is
# bad ('>= 1': 'NAME must be >= 1, got VALUE'), to None (or False) where it is good.


def rule(must: str, ok, none_ok: bool = False):
  """A check: ``ok(value)`` (or None where ``none_ok``), else ``must``."""

  def check(v, _):
    if not ((v is None and none_ok) or ok(v)):
      return must + (' or None' if none_ok else '')

  return check


def at_least(lo: int, none_ok: bool = False):
  """A check: an integer >= ``lo`` (or None where ``none_ok``)."""

  def check(v, _):
    if not ((v is None and none_ok) or (is_int(v) and v >= lo)):
      must = f'>= {lo}' if is_int(v) else f'an integer >= {lo}'
      return must + (' or None' if none_ok else '')

  return check


def positive(must: str = '> 0', none_ok: bool = False):
  return rule(must, lambda v: is_real(v) and v > 0, none_ok)


def unit_interval(none_ok: bool = False):
  return rule('in [0, 1]', lambda v: is_real(v) and 0 <= v <= 1, none_ok)


def power_of_two(lo: int):
  return rule(
      f'a power of two >= {lo}', lambda v: is_int(v) and v >= lo and v & (v - 1) == 0
  )


def one_of(options: tuple):
  return rule(f'one of {options}', lambda v: v in options)


def floating_dtype(examples: str, none_ok: bool = False):
  """A check: a floating dtype ('float32', ``jnp.bfloat16``, ...)."""

  def ok(v) -> bool:
    try:
      return jax.numpy.issubdtype(jax.numpy.dtype(v), jax.numpy.floating)
    except TypeError:
      return False

  return rule(f'a floating dtype (e.g. {examples})', ok, none_ok)


def fir_filter(must: str, ndims: tuple[int, ...]):
  """A check: a finite FIR filter of ``ndims`` dimensions with a nonzero sum."""

  def ok(f) -> bool:
    try:
      f = np.asarray(f, np.float64)
      return f.ndim in ndims and f.size > 0 and np.all(np.isfinite(f)) and f.sum() != 0
    except (TypeError, ValueError):
      return False

  return rule(must, ok)


FLAG = rule('True or False', lambda v: isinstance(v, bool))


def check_fields(module, *tables) -> None:
  """Runs each table's ``(names, check)`` or ``(names, must, ok)`` entries in order on
  each of the space-separated field names (``ok(value, module)``, else MUST, or
  ``must(module)`` where a function): the first bad field raises the one-line
  ValueError 'NAME must be MUST, got VALUE'."""
  for names, *check in itertools.chain(*tables):
    for name in names.split():
      v = getattr(module, name)
      if len(check) == 1:
        must = check[0](v, module)
      elif not check[1](v, module):
        must = check[0](module) if callable(check[0]) else check[0]
      else:
        must = None
      if must:
        raise ValueError(f'{name} must be {must}, got {v!r}')
