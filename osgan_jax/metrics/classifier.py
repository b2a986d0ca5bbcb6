"""FID features from a small classifier: the penultimate layer of a trained teacher.

TF-Inception costs seconds per image on a CPU and was trained on ImageNet photographs;
for a data set such as Fashion-MNIST a classifier trained on its own training split is
cheap (thousands of images per second) and sees the differences that matter there. The
classifier is the DFAD teacher (``osgan_jax.tasks.dfad.teacher_task``, e.g.
``configs/dfad_teacher_fashion_mnist.py``: LeNet-5, 88% test accuracy), trained by the
one loop; its workdir holds the checkpoint and ``config.json``, which names the
architecture. Features are the activations that feed the last layer: LeNet-5's 84
post-ReLU units, a ResNet's globally pooled last block.

"FID in classifier features" is not Inception FID: its scale differs and numbers are
comparable only between runs scored with the same classifier (its workdir, step and
test accuracy are kept with the cached real statistics).

  extractor = ClassifierFeatures('/tmp/dfad_teacher_fmnist', batch_size=500)
  feats = extractor(images)   # [N, 84] float32; images uint8 or float in [-1, 1]
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from osgan_jax.config import ConfigError
from osgan_jax.metrics import fid


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
  """Images as float32 in [-1, 1] on the 256 levels of uint8 pixels, as a generated
  image saved to PNG (real images are uint8 already)."""
  x = np.asarray(images)
  if x.dtype != np.uint8:
    x = np.clip(np.rint((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  return x.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a teacher workdir was trained with (``config.json``)."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(
        f'config.fid.classifier_workdir={workdir}: no readable '
        f'config.json ({type(e).__name__}); train a classifier there '
        f'first, e.g. python -m osgan_jax.main '
        f'--config=configs/dfad_teacher_fashion_mnist.py '
        f'--workdir={workdir}'
    ) from None


class ClassifierFeatures:
  """Batched, jitted penultimate features of the classifier trained in ``workdir``.

  ``resolution``/``channels`` (of the images to score) must be the classifier's.
  Attributes: ``dim``, ``test_accuracy`` (from the checkpoint; None if never
  evaluated), ``step``, ``identity`` (what makes two feature sets comparable).
  """

  def __init__(
      self,
      workdir: str,
      batch_size: int = 500,
      resolution: Optional[int] = None,
      channels: Optional[int] = None,
  ):
    from osgan_jax import data as data_lib
    from osgan_jax.tasks import dfad

    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    config = read_config(self.workdir)
    if config.get('task') != 'teacher':
      raise ConfigError(
          f'config.fid.classifier_workdir={workdir} was trained with '
          f'task={config.get("task")!r}, not a classifier (task=teacher)'
      )
    for key, want in (('resolution', resolution), ('channels', channels)):
      if want is not None and int(config.data[key]) != int(want):
        raise ConfigError(
            f'the classifier in {workdir} takes data.{key}='
            f'{config.data[key]} but the images to score have {want}'
        )
    config.dfad.teacher_workdir = self.workdir
    test = ml_collections.ConfigDict(config.data.to_dict())
    test.split = config.eval_split
    num_outputs = int(data_lib.dataset_info(test)['num_classes'])
    self.model, self.variables, meta = dfad.load_teacher(config, num_outputs)
    accuracy = meta.get('test_accuracy')
    self.test_accuracy = None if accuracy is None else float(accuracy)
    self.step = int(meta.get('num_train_steps', 0))
    self.batch_size = int(batch_size)
    self.shape = (int(config.data.resolution),) * 2 + (int(config.data.channels),)
    self._fn = jax.jit(functools.partial(_penultimate, self.model))
    self.dim = int(
        jax.eval_shape(
            self._fn, self.variables, jax.ShapeDtypeStruct((1,) + self.shape, jnp.float32)
        ).shape[-1]
    )
    self.identity = {
        'features': 'classifier',
        'classifier_workdir': self.workdir,
        'classifier_arch': str(config.teacher.arch),
        'classifier_steps': self.step,
        'classifier_test_accuracy': self.test_accuracy,
        # Retrained weights make a new reference: a checksum of them.
        'classifier_checksum': float(
            sum(
                np.abs(np.asarray(x, np.float64)).sum()
                for x in jax.tree.leaves(self.variables)
            )
        ),
    }

  def __call__(self, images) -> np.ndarray:
    x = quantize(images)
    if x.ndim != 4 or x.shape[1:] != self.shape:
      raise ValueError(
          f'expected [N, {", ".join(map(str, self.shape))}] images, got ' f'{x.shape}'
      )
    outs = []
    for i in range(0, len(x), self.batch_size):
      chunk = x[i : i + self.batch_size]
      k = len(chunk)
      if k < self.batch_size:  # one compiled shape: pad the last batch
        chunk = np.concatenate(
            [chunk, np.zeros((self.batch_size - k,) + self.shape, np.float32)]
        )
      outs.append(self._fn(self.variables, chunk)[:k])
    if not outs:
      return np.zeros((0, self.dim), np.float32)
    return np.asarray(jnp.concatenate(outs), np.float32)

  def extract_batches(
      self,
      batches: Iterable[Any],
      total: Optional[int] = None,
      progress: bool = False,
      desc: str = 'features',
  ) -> np.ndarray:
    """Features of an iterable of image batches (``FeatureExtractor``'s interface)."""
    return fid.extract_with_progress(
        self, batches, self.dim, total=total, progress=progress, desc=desc
    )
