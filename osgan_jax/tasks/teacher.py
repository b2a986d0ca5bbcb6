"""The teacher task: supervised training of a classifier (DFAD's teacher, the classifier
FID's feature network), and loading a trained one from its workdir."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from osgan_jax import data as data_lib
from osgan_jax import models
from osgan_jax.config import ConfigError
from osgan_jax.core import optimizers
from osgan_jax.core import steps
from osgan_jax.models import classifiers
from osgan_jax.tasks import common
from osgan_jax.tasks import evals
from osgan_jax.training import checkpoint
from osgan_jax.training import loop
from osgan_jax.training import parallel

# The network's arguments of a Spec, and what must agree between a teacher checkpoint
# and the config that loads it.
_NETWORK = ('arch', 'width', 'blocks', 'resolution', 'channels')
_IDENTITY = (*_NETWORK, 'num_outputs')


@dataclasses.dataclass(frozen=True)
class Spec:
  """A classifier and how it is trained (``config.teacher`` and the data's shape)."""

  arch: str
  width: int
  blocks: tuple
  resolution: int
  channels: int
  optimizer: str = 'adam'
  lr: float = 1e-3
  lr_schedule: str = 'constant'
  momentum: float = 0.9
  weight_decay: float = 0.0
  num_train_steps: int = 0

  @classmethod
  def of(cls, config) -> Spec:
    """Read from a config (a ConfigDict, or the dict of a workdir's ``config.json``)."""
    t, data = config['teacher'], config['data']
    texts = {k: str(t[k]) for k in ('arch', 'optimizer', 'lr_schedule')}
    floats = {k: float(t[k]) for k in ('lr', 'momentum', 'weight_decay')}
    return cls(
        **texts,
        **floats,
        width=int(t['width']),
        blocks=tuple(int(n) for n in t.get('blocks', ()) or ()),
        resolution=int(data['resolution']),
        channels=int(data['channels']),
        num_train_steps=int(config['num_train_steps']),
    )

  def meta(self, num_outputs: int, data_name: str = '') -> dict:
    """What a teacher checkpoint records of itself."""
    meta = {k: getattr(self, k) for k in _NETWORK}
    meta.update(blocks=list(self.blocks), num_outputs=int(num_outputs), data=data_name)
    return {**meta, 'num_train_steps': self.num_train_steps}


@flax.struct.dataclass
class TeacherState:
  step: jax.Array
  params: object
  model_state: object
  opt_state: object


def create_teacher(config, num_outputs: int = 10) -> classifiers.Classifier:
  return network(Spec.of(config), num_outputs)


def network(spec: Spec, num_outputs: int) -> classifiers.Classifier:
  arguments = {k: getattr(spec, k) for k in _NETWORK}
  return classifiers.Classifier(**arguments, num_outputs=num_outputs)


def init_classifier(model, key):
  """``(params, model_state)`` of a classifier."""
  shape = (2, model.resolution, model.resolution, model.channels)
  variables = dict(model.init(key, jnp.zeros(shape), train=False))
  return variables.pop('params'), variables


def optimizer(spec: Spec) -> optax.GradientTransformation:
  lr = spec.lr
  if spec.lr_schedule == 'cosine':
    lr = optax.cosine_decay_schedule(lr, spec.num_train_steps)
  if spec.optimizer == 'adam':
    chain = [optax.add_decayed_weights(spec.weight_decay)] if spec.weight_decay else []
    return optax.chain(*chain, optax.adam(lr))
  return optimizers.sgd(lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def _init(model, tx):
  def init(key):
    params, model_state = init_classifier(model, key)
    return TeacherState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params))

  return init


def _step(model, tx, state: TeacherState, batch, rng, i):
  """One supervised step (cross-entropy on ``batch``); the loop's phase signature."""
  del rng, i

  def objective(params):
    logits, model_state = models.apply(
        model, params, state.model_state, batch['image'], None, True
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    return jnp.mean(loss), (logits, model_state)

  (loss, (logits, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params
  )
  params, opt_state = steps.apply_optimizer(tx, grads, state.opt_state, state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  new = state.replace(
      step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
  )
  return new, {'loss': loss, 'train_accuracy': accuracy}


def build(config, workdir: str) -> loop.Task:
  """Supervised training on ``data.split``; its checkpoints' meta name the network."""
  spec, data = Spec.of(config), config.data.to_dict()
  data_lib.dataset_info(data)  # a DataError before anything is compiled
  num_outputs = evals.num_classes(data, evals.accuracy_split(config.evals.to_dict()))
  model, tx = network(spec, num_outputs), optimizer(spec)
  context = evals.Context(
      workdir=workdir,
      data=data,
      is_main=parallel.is_main_process(),
      progress=bool(config.progress_bar),
      classifier=(model, lambda s: (s.params, s.model_state)),
  )
  return loop.Task(
      name='teacher',
      init=_init(model, tx),
      make_phases=lambda state: [loop.Phase('main', functools.partial(_step, model, tx))],
      batches=common.host_batches(data, int(config.batch_size), int(config.seed)),
      evaluators=evals.build(
          config.evals.to_dict(), context, kinds=('test_accuracy',), ignore=('samples',)
      ),
      meta=spec.meta(num_outputs, str(config.data.name)),
      progress=('loss', 'test_accuracy'),
  )


def train_command(workdir: str, config_path: str) -> str:
  return f'python -m osgan_jax.main --config={config_path} --workdir={workdir}'


def load(workdir: str, spec: Spec, num_outputs: int, command: str):
  """``(module, variables, meta)`` of the teacher trained in ``workdir``; ``ConfigError``
  (naming ``command``) when there is none or it is not ``spec``'s network."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  missing = ConfigError(
      f'no teacher checkpoint in {workdir} (config.dfad.teacher_workdir); train the '
      f'teacher first: {command}'
  )
  checkpoints = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(checkpoints):
    raise missing
  model = network(spec, num_outputs)
  init = _init(model, optimizer(spec))
  manager = checkpoint.manager(checkpoints, 1 << 30, async_save=False)
  try:
    step = manager.latest_step()
    if step is None:
      raise missing
    meta = checkpoint.restore_meta(manager, step)
    expected = spec.meta(num_outputs)
    for key in _IDENTITY:
      if meta.get(key, [] if key == 'blocks' else None) != expected[key]:
        raise ConfigError(
            f'the teacher checkpoint in {workdir} has {key}={meta.get(key)!r} but this '
            f'config expects {expected[key]!r} (config.teacher / config.data); retrain it '
            f'with {command}, or point config.dfad.teacher_workdir at a matching one'
        )
    # Host arrays: the teacher may have been trained on another number of processes or
    # devices (orbax refuses that topology for device arrays); the loop places them.
    target = jax.tree.map(
        lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(init, jax.random.PRNGKey(0))
    )
    try:
      state, meta = checkpoint.restore(manager, target, step)
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(
          f'cannot restore the teacher checkpoint {workdir} at step {step} with '
          f'config.teacher ({type(e).__name__}: {" ".join(str(e).split())[:300]})'
      ) from None
  finally:
    manager.close()
  if step < int(meta.get('num_train_steps', step)):
    of = meta['num_train_steps']
    logging.warning(
        'The teacher in %s is at step %d of %d (interrupted)', workdir, step, of
    )
  arch, accuracy = meta.get('arch'), meta.get('test_accuracy')
  logging.info(
      'Teacher %s from %s, step %d, test accuracy %s', arch, workdir, step, accuracy
  )
  return model, {'params': state.params, **state.model_state}, meta


def load_teacher(config, num_outputs: int):
  """The teacher of ``config.dfad.teacher_workdir``, as ``config.teacher`` describes it."""
  workdir = os.path.abspath(os.path.expanduser(config.dfad.teacher_workdir))
  command = train_command(workdir, config.dfad.teacher_config)
  return load(workdir, Spec.of(config), num_outputs, command)


def load_classifier(workdir: str, resolution: int, channels: int):
  """The classifier trained by a teacher task in ``workdir`` (its ``config.json`` says
  which), for images of ``resolution`` and ``channels``: ``(model, variables, meta,
  identity)``."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  command = train_command(workdir, 'configs/dfad_teacher_fashion_mnist.py')
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(
        f'config.evals.*.classifier_workdir={workdir}: no readable config.json '
        f'({type(e).__name__}); train a classifier there first, e.g. {command}'
    ) from None
  if config.get('task') != 'teacher':
    raise ConfigError(
        f'config.evals.*.classifier_workdir={workdir} was trained with '
        f'task={config.get("task")!r}, not a classifier (task=teacher)'
    )
  for key, want in (('resolution', resolution), ('channels', channels)):
    if int(config['data'][key]) != int(want):
      raise ConfigError(
          f'the classifier in {workdir} takes data.{key}={config["data"][key]} but the '
          f'images to score have {want}'
      )
  # Workdirs from before config.evals kept the split in eval_split.
  split = config.get('evals', {}).get('test_accuracy', {}).get('split') or config.get(
      'eval_split', 'test'
  )
  num_outputs = int(
      data_lib.dataset_info({**config['data'], 'split': split})['num_classes']
  )
  spec = Spec.of(config)
  model, variables, meta = load(workdir, spec, num_outputs, command)
  accuracy = meta.get('test_accuracy')
  identity = {
      'features': 'classifier',
      'classifier_workdir': workdir,
      'classifier_arch': spec.arch,
      'classifier_steps': int(meta.get('num_train_steps', 0)),
      'classifier_test_accuracy': None if accuracy is None else float(accuracy),
      # Retrained weights make a new reference: a checksum of them.
      'classifier_checksum': float(
          sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(variables))
      ),
  }
  return model, variables, meta, identity
