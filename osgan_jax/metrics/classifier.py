"""FID features from a small classifier: the input of its last layer.

Inception is slow on a CPU and was trained on photographs; a classifier trained on the
data set itself (``osgan_jax.models.classifiers.Classifier``) is fast and sees what
matters there. Its FID is on its own scale: see ``docs/fid.md``. The caller loads the
network and its variables and says what identifies them.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax.metrics import extraction

__all__ = ['ClassifierFeatures', 'quantize']


def _penultimate(model, variables, x):
  """The input of ``model``'s last layer for images ``x`` (inference mode)."""
  _, captured = model.apply(
      variables, x, train=False, capture_intermediates=True, mutable=['intermediates']
  )
  layers = captured['intermediates']

  def numbered(prefix):
    names = [k for k in layers if k.startswith(prefix)]
    return sorted(names, key=lambda k: int(k.rsplit('_', 1)[1]))

  if model.arch == 'lenet5':
    return jax.nn.relu(layers[numbered('Dense_')[-2]]['__call__'][0])
  return jnp.mean(layers[numbered('_BasicBlock_')[-1]]['__call__'][0], axis=(1, 2))


def quantize(images) -> np.ndarray:
  """Images as float32 in [-1, 1] on uint8's 256 levels, as a generated image saved."""
  x = np.asarray(images)
  if x.dtype != np.uint8:
    x = np.clip(np.rint((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  return x.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)


class ClassifierFeatures:
  """Batched, jitted penultimate features of a trained Flax ``Classifier``.

  Images are ``[N, resolution, resolution, channels]``, uint8 or float in [-1, 1]
  (quantized first). ``identity`` says what makes two feature sets comparable; ``dim``
  is the feature size (LeNet-5: 84).
  """

  def __init__(
      self,
      model,
      variables: Mapping[str, Any],
      identity: Mapping[str, Any],
      batch_size: int = 500,
  ):
    self.model, self.variables = model, variables
    self.batch_size = int(batch_size)
    self.shape = (int(model.resolution),) * 2 + (int(model.channels),)
    self._fn = jax.jit(functools.partial(_penultimate, model))
    self.dim = int(
        jax.eval_shape(
            self._fn, variables, jax.ShapeDtypeStruct((1,) + self.shape, jnp.float32)
        ).shape[-1]
    )
    self.identity = dict(identity)

  def __call__(self, images) -> np.ndarray:
    return self.extract_batches([images])

  def extract_batches(
      self,
      batches: Iterable[Any],
      total: Optional[int] = None,
      progress: bool = False,
      desc: str = 'features',
  ) -> np.ndarray:
    """Features of an iterable of image batches (``FeatureExtractor``'s interface)."""
    return extraction.extract(
        functools.partial(self._fn, self.variables),
        map(self._quantized, batches),
        self.batch_size,
        self.dim,
        total=total,
        progress=progress,
        desc=desc,
    )

  def _quantized(self, images) -> np.ndarray:
    x = quantize(images)
    if x.ndim != 4 or x.shape[1:] != self.shape:
      raise ValueError(
          f'expected [N, {", ".join(map(str, self.shape))}] images, got {x.shape}'
      )
    return x
