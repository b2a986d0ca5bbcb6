"""Data-free adversarial distillation (DFAD, Fang et al. 2019) on the one-stage engine.

A generator makes inputs on which a frozen teacher and a student disagree most (it
maximises the mean absolute difference of their logits); the student learns to match
the teacher on them (minimises it). No training image is used. In GAN terms the
student plays D: its "logit" for a generated input x is the per-sample discrepancy
``mean_c |t(x)_c - s(x)_c|``, and the ``'dfad'`` loss (``osgan_jax.losses``) is
``mean(fake)`` for D and ``-mean(fake)`` for G, with no real term. The game is
symmetric, so one-stage training is a gradient reversal (gamma = -1) at the
generator's output: ``steps.one_stage_step`` on a ``steps.GAN`` without real data
(``batch_keys=()``). The teacher's variables ride in D's model state (never
differentiated, returned unchanged), so they are jit arguments, not constants, and the
checkpoint of a distillation run is self-contained.

Two tasks, chosen by ``config.task`` (``osgan_jax.main`` dispatches):

* ``'teacher'`` (``train_teacher``): supervised training on ``data.split`` (Adam or
  SGD), test accuracy on ``eval_split`` every ``eval_every_steps`` and at the end,
  orbax checkpoints in ``workdir/checkpoints`` (with the architecture and the test
  accuracy in the checkpoint's metadata).
* ``'dfad'`` (``train_and_evaluate``): loads the teacher from
  ``dfad.teacher_workdir`` and trains student and generator, ``stage='one'``
  (one-stage: one student and one generator update per step from one forward and one
  backward pass) or ``stage='two'`` (DFAD's schedule: ``dfad.student_steps`` student
  updates, each on fresh generated inputs, then one generator update against the
  updated student; ``two_stage_step``). Student test accuracy every
  ``eval_every_steps`` and at the end. Only the test split of the data is read.

Both leave in ``workdir``: ``checkpoints/<step>/`` (every ``checkpoint_every_steps``,
at the end and on SIGTERM/SIGINT; rerunning resumes, bit-identically on CPU: the RNG
is ``fold_in(key, step)`` and the teacher's data order a function of the step),
``metrics.jsonl`` and TensorBoard events (losses, ``test_accuracy``, ``train_seconds``:
time spent in training steps, compilation excluded, summed over resumed runs), a tqdm
bar and ``config.json``; distillation also ``samples/step_000100.png``, grids of
generated inputs from a fixed z (each image min-max scaled for display: the
generator's output is standardised, not in [-1, 1]).

Config keys beyond ``config_base``'s (``configs/dfad_*.py``): ``task``;
``eval_every_steps``, ``eval_batch_size``, ``eval_split``; ``teacher.{arch, width,
blocks, optimizer ('adam' | 'sgd'), lr, lr_schedule ('constant' | 'cosine'), momentum,
weight_decay}``; ``dfad.{teacher_workdir, teacher_config, student_steps,
student_momentum, student_weight_decay}``. ``model.generator`` configures DFAD's
generator and ``model.discriminator`` the student (``models.classifiers``);
``optimizer.g_lr``/``b1``/``b2`` are the generator's Adam, ``optimizer.d_lr`` the
student's SGD learning rate, ``optimizer.lr_milestones``/``lr_decay`` a step schedule
for both (milestones in steps, i.e. generator updates).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import logging

from osgan_jax import config_base
from osgan_jax import data as data_lib
from osgan_jax import losses as losses_lib
from osgan_jax import steps
from osgan_jax import train as train_lib
from osgan_jax.models import classifiers

TASKS = ('teacher', 'dfad')
STAGES = ('one', 'two')
ConfigError = train_lib.ConfigError


# ------------------------------------------------------------------------ config

def get_config(task: str = 'dfad') -> ml_collections.ConfigDict:
  """Fashion-MNIST at 32x32: LeNet-5 teacher, LeNet-5-half student, DFAD's generator.

  The ``configs/dfad_*.py`` files start from this; both tasks of one experiment share
  every key, so the distillation config knows the teacher it loads.
  """
  c = config_base.get_base_config()
  c.task = task
  c.loss = 'dfad'
  c.z_dim = 100
  c.num_classes = 0
  c.data.name = 'fashion_mnist'
  c.data.resolution = 32
  c.data.channels = 1
  c.data.split = 'train'
  c.model.name = 'dfad'
  # DFAD's generator has width 64 (1.05M parameters); 16 keeps a CPU step cheap.
  c.model.generator = ml_collections.ConfigDict(dict(width=16))
  c.model.discriminator = ml_collections.ConfigDict(dict(
      arch='lenet5', width=3, blocks=(), spectral_norm=False))
  # The generator's Adam (lr 1e-3, PyTorch's default betas) and the student's SGD (lr
  # 0.01, momentum 0.9, weight decay 1e-4), DFAD's MNIST settings.
  c.optimizer.g_lr = 1e-3
  c.optimizer.d_lr = 0.01
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.eval_every_steps = 500
  c.eval_batch_size = 1000
  c.eval_split = 'test'
  c.teacher = ml_collections.ConfigDict(dict(
      arch='lenet5', width=6, blocks=(), optimizer='adam', lr=1e-3,
      lr_schedule='constant', momentum=0.9, weight_decay=0.0))
  c.dfad = ml_collections.ConfigDict(dict(
      teacher_workdir='/tmp/dfad_teacher_fmnist',
      teacher_config='configs/dfad_teacher_fashion_mnist.py',
      student_steps=5, student_momentum=0.9, student_weight_decay=1e-4))
  if task == 'teacher':
    c.batch_size = 128
    c.num_train_steps = 2_000
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1_000
  else:
    c.batch_size = 128
    c.num_train_steps = 2_000
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    c.sample_every_steps = 500
  return c


CIFAR10_TRAIN_EXAMPLES = 50_000


def get_cifar10_config(task: str = 'dfad') -> ml_collections.ConfigDict:
  """CIFAR-10 as in DFAD's code: ResNet-34 teacher, ResNet-18 student, GeneratorA.

  DFAD's ``train_teacher.py`` and ``DFAD_cifar.py`` (github.com/VainF/Data-Free-
  Adversarial-Distillation) and its README's commands: the teacher is trained with
  SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128, 200 epochs; the student
  with SGD (lr 0.1, momentum 0.9, weight decay 5e-4) against GeneratorA (nz 256,
  width 64, Adam lr 1e-3) at batch 256, 500 "epochs" of 50 iterations, both learning
  rates x0.1 after epochs 100 and 200 (``--scheduler``).
  """
  c = get_config(task)
  c.data.name = 'cifar10'
  c.data.resolution = 32
  c.data.channels = 3
  c.z_dim = 256
  c.model.generator.width = 64
  c.model.discriminator.arch = 'resnet18'
  c.model.discriminator.width = 64
  c.optimizer.d_lr = 0.1
  c.optimizer.g_lr = 1e-3
  iters_per_epoch = 50  # DFAD validates every 50 iterations and calls that an epoch
  c.optimizer.lr_milestones = (100 * iters_per_epoch, 200 * iters_per_epoch)
  c.optimizer.lr_decay = 0.1
  # DFAD's step schedule (x0.1 every 80 epochs) is off in its README's command; a
  # cosine decay over the 200 epochs is the usual CIFAR recipe and needs no tuning.
  c.teacher = ml_collections.ConfigDict(dict(
      arch='resnet34', width=64, blocks=(), optimizer='sgd', lr=0.1,
      lr_schedule='cosine', momentum=0.9, weight_decay=5e-4))
  c.dfad.teacher_workdir = '/tmp/dfad_teacher_cifar10'
  c.dfad.teacher_config = 'configs/dfad_teacher_cifar10.py'
  c.dfad.student_weight_decay = 5e-4
  c.eval_batch_size = 500
  if task == 'teacher':
    c.batch_size = 128
    steps_per_epoch = -(-CIFAR10_TRAIN_EXAMPLES // c.batch_size)
    c.num_train_steps = config_base.epochs_to_steps(200, CIFAR10_TRAIN_EXAMPLES,
                                                    c.batch_size)
    c.eval_every_steps = 5 * steps_per_epoch
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5 * steps_per_epoch
  else:
    c.batch_size = 256
    c.num_train_steps = 500 * iters_per_epoch
    c.eval_every_steps = iters_per_epoch
    c.log_every_steps = iters_per_epoch
    c.checkpoint_every_steps = 20 * iters_per_epoch
    c.sample_every_steps = 20 * iters_per_epoch
  return c


def _validate(config, task: str) -> None:
  if config.get('task', 'gan') != task:
    raise ConfigError(f'config.task={config.get("task", "gan")!r}, expected {task!r}')
  for key in ('batch_size', 'num_train_steps', 'log_every_steps',
              'checkpoint_every_steps', 'sample_every_steps', 'num_samples',
              'eval_every_steps', 'eval_batch_size'):
    if int(config[key]) <= 0:
      raise ConfigError(f'config.{key} must be positive, got {config[key]}')
  for name, arch in (('teacher.arch', config.teacher.arch),
                     ('model.discriminator.arch', config.model.discriminator.arch)):
    if arch not in classifiers.ARCHS:
      raise ConfigError(f'config.{name}={arch!r} is not one of '
                        f'{", ".join(classifiers.ARCHS)}')
  if config.teacher.optimizer not in ('adam', 'sgd'):
    raise ConfigError(f"config.teacher.optimizer must be 'adam' or 'sgd', got "
                      f'{config.teacher.optimizer!r}')
  if config.teacher.lr_schedule not in ('constant', 'cosine'):
    raise ConfigError(f"config.teacher.lr_schedule must be 'constant' or 'cosine', got "
                      f'{config.teacher.lr_schedule!r}')
  if task == 'dfad':
    if config.stage not in STAGES:
      raise ConfigError(f'config.stage={config.stage!r}: distillation runs '
                        f'{" or ".join(STAGES)}')
    train_lib.validate_method(config)
    if int(config.dfad.student_steps) < 1:
      raise ConfigError(f'config.dfad.student_steps must be >= 1, got '
                        f'{config.dfad.student_steps}')
    if int(config.num_classes):
      raise ConfigError('config.num_classes must be 0: distillation is unconditional')
  if int(config.fid.every_steps):
    raise ConfigError('config.fid.every_steps: FID is not computed for DFAD tasks; '
                      'leave it 0')
  if jax.process_count() > 1:
    raise ConfigError('DFAD tasks run on one process')


def _data_config(config, split: str, shuffle: bool) -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.split, data.shuffle = split, shuffle
  return data


# ------------------------------------------------------------------------ networks

def _blocks(network_config) -> tuple:
  return tuple(int(n) for n in network_config.get('blocks', ()) or ())


def create_teacher(config, num_outputs: int = 10) -> classifiers.Classifier:
  return classifiers.Classifier(
      arch=config.teacher.arch, width=int(config.teacher.width),
      blocks=_blocks(config.teacher), num_outputs=num_outputs,
      resolution=int(config.data.resolution), channels=int(config.data.channels))


def _init_classifier(model, key):
  shape = (2, model.resolution, model.resolution, model.channels)
  variables = dict(model.init(key, jnp.zeros(shape), train=False))
  return variables.pop('params'), variables


def _predict(model):
  """Jitted ``(params, model_state, images) -> logits`` in inference mode."""
  return jax.jit(lambda params, model_state, x: model.apply(
      {'params': params, **model_state}, x, train=False))


class _TestSet:
  """The evaluation split in memory, in fixed-size batches (padding masked out)."""

  def __init__(self, config):
    data = _data_config(config, str(config.eval_split), shuffle=False)
    data.num_threads = 0
    info = data_lib.dataset_info(data)
    if info['num_classes'] == 0:
      raise data_lib.DataError(f'{config.data.name} split {config.eval_split!r} has no '
                               'labels; accuracy needs a labelled test set')
    self.num_examples = n = int(info['num_examples'])
    self.num_classes = int(info['num_classes'])
    batch = int(config.eval_batch_size)
    num_batches = -(-n // batch)
    it = data_lib.make_iterator(data, batch, seed=0)
    try:
      chunks = [next(it) for _ in range(num_batches)]
    finally:
      it.close()
    images = np.concatenate([c['image'] for c in chunks])
    labels = np.concatenate([c['label'] for c in chunks])
    valid = np.arange(len(images)) < n  # the iterator wraps around past the end
    shape = (num_batches, batch)
    self.images = images.reshape(shape + images.shape[1:])
    self.labels = np.where(valid, labels, -1).reshape(shape)

  def accuracy(self, predict, params, model_state) -> float:
    correct = 0
    for x, y in zip(self.images, self.labels):
      pred = np.asarray(jnp.argmax(predict(params, model_state, x), axis=-1))
      correct += int(np.sum((pred == y) & (y >= 0)))
    return correct / self.num_examples


# ------------------------------------------------------------------------ teacher

@flax.struct.dataclass
class TeacherState:
  step: jax.Array
  params: object
  model_state: object
  opt_state: object


def _teacher_optimizer(config) -> optax.GradientTransformation:
  t = config.teacher
  lr = float(t.lr)
  if t.lr_schedule == 'cosine':
    lr = optax.cosine_decay_schedule(lr, int(config.num_train_steps))
  chain = [optax.add_decayed_weights(float(t.weight_decay))] if t.weight_decay else []
  if t.optimizer == 'adam':
    chain.append(optax.adam(lr))
  else:
    chain.append(optax.sgd(lr, momentum=float(t.momentum) or None))
  return optax.chain(*chain)


def _teacher_step(model, tx, state: TeacherState, batch):
  def objective(params):
    logits, model_state = train_lib._apply(model, params, state.model_state,  # pylint: disable=protected-access
                                           batch['image'], None, True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    return jnp.mean(loss), (logits, model_state)

  (loss, (logits, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params)
  params, opt_state = steps.apply_optimizer(tx, grads, state.opt_state, state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return (state.replace(step=state.step + 1, params=params, model_state=model_state,
                        opt_state=opt_state),
          {'loss': loss, 'train_accuracy': accuracy})


def _teacher_meta(config, num_outputs: int) -> dict:
  return {'arch': str(config.teacher.arch), 'width': int(config.teacher.width),
          'blocks': list(_blocks(config.teacher)),
          'resolution': int(config.data.resolution),
          'channels': int(config.data.channels), 'num_outputs': int(num_outputs),
          'data': str(config.data.name), 'num_train_steps': int(config.num_train_steps)}


def train_teacher(config, workdir: str) -> TeacherState:
  """Trains the teacher on ``data.split`` (resuming from ``workdir``); returns its state."""
  _validate(config, 'teacher')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  train_info = data_lib.dataset_info(_data_config(config, config.data.split, True))
  test_set = _TestSet(config)
  model = create_teacher(config, test_set.num_classes)
  tx = _teacher_optimizer(config)

  def init(key):
    params, model_state = _init_classifier(model, key)
    return TeacherState(step=jnp.zeros((), jnp.int32), params=params,
                        model_state=model_state, opt_state=tx.init(params))

  predict = _predict(model)
  step_fn = jax.jit(functools.partial(_teacher_step, model, tx), donate_argnums=0)
  meta = _teacher_meta(config, test_set.num_classes)
  logging.info('Teacher %s (width %d) on %s (%d images), batch %d, %d steps',
               config.teacher.arch, config.teacher.width, config.data.name,
               train_info['num_examples'], config.batch_size, config.num_train_steps)

  def batches(start_step):
    it = data_lib.make_iterator(_data_config(config, config.data.split, True),
                                int(config.batch_size), seed=int(config.seed),
                                start_step=start_step)
    return it, lambda: next(it)

  def evaluate(state):
    return {'test_accuracy': test_set.accuracy(predict, state.params, state.model_state)}

  return _loop(config, workdir, init=init, make_step=lambda state: step_fn,
               batches=batches, evaluate=evaluate, meta=meta, desc='teacher')


def _abstract(init, *args):
  return jax.eval_shape(init, *args)


def load_teacher(config, num_outputs: int):
  """``(teacher module, {'params', ...} variables, meta)`` from ``dfad.teacher_workdir``.

  Raises ``ConfigError`` (with the command that trains it) when there is no
  checkpoint, and when the checkpoint is not of the teacher ``config.teacher``
  describes.
  """
  workdir = os.path.abspath(os.path.expanduser(config.dfad.teacher_workdir))
  command = (f'python -m osgan_jax.main --config={config.dfad.teacher_config} '
             f'--workdir={workdir}')
  missing = ConfigError(f'no teacher checkpoint in {workdir} (config.dfad.teacher_'
                        f'workdir); train the teacher first: {command}')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise missing
  model = create_teacher(config, num_outputs)
  tx = _teacher_optimizer(config)

  def init(key):
    params, model_state = _init_classifier(model, key)
    return TeacherState(step=jnp.zeros((), jnp.int32), params=params,
                        model_state=model_state, opt_state=tx.init(params))

  manager = train_lib._checkpoint_manager(workdir, 1 << 30)  # pylint: disable=protected-access
  try:
    step = manager.latest_step()
    if step is None:
      raise missing
    meta = manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta or {}
    expected = _teacher_meta(config, num_outputs)
    for key in ('arch', 'width', 'blocks', 'resolution', 'channels', 'num_outputs'):
      if meta.get(key, [] if key == 'blocks' else None) != expected[key]:
        raise ConfigError(
            f'the teacher checkpoint in {workdir} has {key}={meta.get(key)!r} but this '
            f'config expects {expected[key]!r} (config.teacher / config.data); retrain it '
            f'with {command}, or point config.dfad.teacher_workdir at a matching one')
    try:
      state, meta = train_lib.restore_checkpoint(manager, _abstract(
          init, jax.random.PRNGKey(0)), step)
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(f'cannot restore the teacher checkpoint {workdir} at step {step} '
                        f'with config.teacher ({type(e).__name__}: '
                        f'{" ".join(str(e).split())[:300]})') from None
  finally:
    manager.close()
  if step < int(meta.get('num_train_steps', step)):
    logging.warning('The teacher in %s is at step %d of %d (its run was interrupted)',
                    workdir, step, meta['num_train_steps'])
  logging.info('Teacher %s from %s, step %d, test accuracy %s', meta.get('arch'),
               workdir, step, meta.get('test_accuracy'))
  return model, {'params': state.params, **state.model_state}, meta


# ------------------------------------------------------------------------ distillation

def make_gan(config, generator, student, teacher) -> steps.GAN:
  """The DFAD game as a ``steps.GAN`` without real data; the student plays D.

  D's model state is ``{'student': its BatchNorm statistics, 'teacher': the teacher's
  variables}``; the teacher runs in inference mode and is returned unchanged.
  """
  z_dim = int(config.z_dim)

  def generate(params, model_state, z, rng, train=True):
    del rng
    image, model_state = train_lib._apply(generator, params, model_state, z, None,  # pylint: disable=protected-access
                                          train)
    return {'image': image}, model_state

  def discriminate(params, model_state, batch, rng, train=True):
    del rng
    x = batch['image']
    t = teacher.apply(model_state['teacher'], x, train=False)
    s, student_state = train_lib._apply(student, params, model_state['student'], x,  # pylint: disable=protected-access
                                        None, train)
    discrepancy = jnp.mean(jnp.abs(t.astype(jnp.float32) - s.astype(jnp.float32)), -1)
    return discrepancy, {'student': student_state, 'teacher': model_state['teacher']}

  def sample_latent(rng, n):
    return jax.random.normal(rng, (n, z_dim))

  optimizer_g, optimizer_d = make_optimizers(config)
  return steps.GAN(
      generate=generate, discriminate=discriminate, sample_latent=sample_latent,
      loss=config.loss, optimizer_g=optimizer_g, optimizer_d=optimizer_d,
      batch_keys=(), mode=config.one_stage_mode,
      fake_batch_size=int(config.batch_size))


def make_optimizers(config):
  """Generator: Adam; student: SGD with momentum and (PyTorch-style) weight decay."""
  opt, d = config.optimizer, config.dfad
  milestones = sorted(int(m) for m in opt.lr_milestones)
  # Two-stage updates the student student_steps times per step.
  per_step = int(d.student_steps) if config.stage == 'two' else 1

  def lr(base, updates_per_step=1):
    if not milestones:
      return base
    return optax.piecewise_constant_schedule(
        base, {m * updates_per_step: float(opt.lr_decay) for m in milestones})

  optimizer_g = optax.adam(lr(float(opt.g_lr)), b1=float(opt.b1), b2=float(opt.b2))
  student = [optax.sgd(lr(float(opt.d_lr), per_step),
                       momentum=float(d.student_momentum) or None)]
  if d.student_weight_decay:
    student.insert(0, optax.add_decayed_weights(float(d.student_weight_decay)))
  return optimizer_g, optax.chain(*student)


def two_stage_step(gan: steps.GAN, state: steps.TrainState, batch, rng, *,
                   student_steps: int):
  """DFAD's schedule: ``student_steps`` student updates, then one generator update.

  Each student update is on fresh generated inputs with the generator frozen; the
  last one and the generator's update against the updated student are
  ``steps.two_stage_step``, so ``student_steps=1`` is exactly the GAN baseline.
  """
  loss = losses_lib.get(gan.loss)
  keys = jax.random.split(rng, student_steps)

  def student_update(state, key):
    rng_z, rng_g, rng_d = jax.random.split(key, 3)
    fake, _ = gan.generate(state.params_g, state.model_state_g,
                           gan.sample_latent(rng_z, gan.fake_batch_size), rng_g)
    fake = jax.lax.stop_gradient(fake)

    def objective(params_d):
      logits, model_state_d = gan.discriminate(params_d, state.model_state_d, fake, rng_d)
      logits = logits.astype(jnp.float32)
      return loss.d_loss(logits[:0], logits), model_state_d

    (loss_d, model_state_d), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params_d)
    params_d, opt_state_d = steps.apply_optimizer(gan.optimizer_d, grads,
                                                  state.opt_state_d, state.params_d)
    return state.replace(params_d=params_d, opt_state_d=opt_state_d,
                         model_state_d=model_state_d), loss_d

  state, _ = jax.lax.scan(student_update, state, keys[:-1])
  return steps.two_stage_step(gan, state, batch, keys[-1])


def jit_step(gan: steps.GAN, stage: str, student_steps: int = 1):
  """The jitted step of ``stage`` (state donated): ``step(state, batch, rng)``."""
  if stage == 'one':
    return steps.jit_step(gan, 'one')
  if stage == 'two':
    return jax.jit(functools.partial(two_stage_step, gan, student_steps=student_steps),
                   donate_argnums=0)
  raise ValueError(f'unknown stage {stage!r}; valid: {", ".join(STAGES)}')


def _display(images) -> np.ndarray:
  """Per-image min-max scaling to [-1, 1] (the generator's output is standardised)."""
  x = np.asarray(images, np.float32)
  lo = x.min(axis=(1, 2, 3), keepdims=True)
  hi = x.max(axis=(1, 2, 3), keepdims=True)
  return 2.0 * (x - lo) / np.maximum(hi - lo, 1e-8) - 1.0


def train_and_evaluate(config, workdir: str) -> steps.TrainState:
  """Distils the teacher of ``dfad.teacher_workdir`` into a student without data.

  Resumes from ``workdir``'s latest checkpoint. Returns the final ``TrainState``
  (``model_state_d['teacher']`` holds the teacher, unchanged). Raises ``ConfigError``
  for invalid settings or a missing teacher and ``data.DataError`` for a missing test
  set, before anything is trained.
  """
  _validate(config, 'dfad')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  test_set = _TestSet(config)
  teacher, teacher_vars, teacher_meta = load_teacher(config, test_set.num_classes)
  generator, student = train_lib.create_models(config)
  if student.num_outputs != test_set.num_classes:
    raise ConfigError(f'the student has {student.num_outputs} outputs but the data has '
                      f'{test_set.num_classes} classes')
  gan = make_gan(config, generator, student, teacher)

  def init(key, teacher_vars):
    key_g, key_d = jax.random.split(key)
    g_vars = dict(generator.init(key_g, jnp.zeros((2, int(config.z_dim))), train=False))
    params_g = g_vars.pop('params')
    params_d, student_state = _init_classifier(student, key_d)
    return steps.init_state(gan, params_g, params_d, g_vars,
                            {'student': student_state, 'teacher': teacher_vars})

  teacher_accuracy = teacher_meta.get('test_accuracy')
  if teacher_accuracy is None:
    teacher_accuracy = test_set.accuracy(_predict(teacher), teacher_vars['params'],
                                         {k: v for k, v in teacher_vars.items()
                                          if k != 'params'})
  predict = _predict(student)
  n = int(config.num_samples)
  fixed_z = gan.sample_latent(jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 2),
                              n)
  sampler = jax.jit(lambda params_g, model_state_g: gan.generate(
      params_g, model_state_g, fixed_z, None)[0]['image'])
  logging.info('DFAD %s-stage: teacher %s (test accuracy %.4f), student %s (width %d), '
               'batch %d', config.stage, config.teacher.arch, teacher_accuracy,
               student.arch, student.width, config.batch_size)

  def evaluate(state):
    student_state = state.model_state_d['student']
    return {'test_accuracy': test_set.accuracy(predict, state.params_d, student_state),
            'teacher_test_accuracy': float(teacher_accuracy)}

  def sample(state):
    return _display(jax.device_get(sampler(state.params_g, state.model_state_g)))

  def batches(start_step):
    del start_step
    return None, lambda: {}

  step_key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 1)

  def make_step(state):
    probed = steps.probe_per_sample(gan, state, {})
    logging.info('DFAD: the student treats samples %s',
                 'independently' if probed.per_sample else 'jointly (BatchNorm)')
    step_fn = jit_step(probed, config.stage, int(config.dfad.student_steps))

    def train_step(state, batch):
      return step_fn(state, batch, jax.random.fold_in(step_key, state.step))

    return train_step

  return _loop(config, workdir, init=init, init_args=(teacher_vars,),
               make_step=make_step, batches=batches, evaluate=evaluate, sample=sample,
               meta={'teacher_workdir': os.path.abspath(config.dfad.teacher_workdir)},
               desc=f'dfad {config.stage}-stage')


# ------------------------------------------------------------------------ the loop

def _every(step: int, period: int, last: int) -> bool:
  return step % int(period) == 0 or step == last


def _loop(config, workdir: str, *, init, make_step, batches, evaluate, meta: dict,
          desc: str, init_args=(), sample=None):
  """The training loop both tasks share: checkpoints, resume, signals, logging.

  ``init(key, *init_args)`` makes the state at step 0 (jitted; ``init_args`` are
  arguments, not constants); ``make_step(state)`` returns the (jitted, state-donating)
  ``step(state, batch) -> (state, metrics)``; ``batches(start_step) -> (closeable or
  None, next_batch)``; ``evaluate(state) -> dict`` (also kept in the checkpoint's
  metadata) and ``sample(state)`` (images in [-1, 1]) run on the config's schedule.
  """
  num_steps = int(config.num_train_steps)
  init_key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 0)
  os.makedirs(workdir, exist_ok=True)
  if sample is not None:
    os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')

  with contextlib.ExitStack() as cleanup:
    stop = cleanup.enter_context(train_lib._StopOnSignal())  # pylint: disable=protected-access
    manager = train_lib._checkpoint_manager(workdir, config.keep_checkpoints)  # pylint: disable=protected-access
    cleanup.callback(manager.close)
    latest = manager.latest_step()
    train_seconds = 0.0
    if latest is None:
      state = jax.jit(init)(init_key, *init_args)
      start_step = 0
    else:
      state, saved = train_lib.restore_checkpoint(
          manager, _abstract(init, init_key, *init_args), latest)
      start_step = int(jax.device_get(state.step))
      train_seconds = float(saved.get('train_seconds', 0.0))
      meta = {**saved, **meta}
      logging.info('Resumed from the checkpoint at step %d in %s', start_step, workdir)
    if start_step >= num_steps:
      logging.info('Nothing to do: the checkpoint is at step %d and num_train_steps=%d',
                   start_step, num_steps)
      return state
    last_saved = None if latest is None else start_step
    step_fn = make_step(state)
    closeable, next_batch = batches(start_step)
    if closeable is not None:
      cleanup.callback(closeable.close)
    writer = train_lib._MetricWriter(workdir, start_step, True)  # pylint: disable=protected-access
    cleanup.callback(writer.close)
    writer.text('config', '```\n' + str(config) + '\n```')
    pbar = cleanup.enter_context(tqdm.tqdm(
        total=num_steps, initial=start_step, unit='step', dynamic_ncols=True,
        smoothing=0.05, mininterval=0.5 if sys.stderr.isatty() else 30,
        disable=not config.progress_bar, desc=desc))

    def save(done):
      meta.update(train_seconds=train_seconds)
      train_lib._save(manager, done, state, meta)  # pylint: disable=protected-access

    history, timed_steps = [], 0
    clock = time.perf_counter()
    stopped_by, done = None, start_step
    for step in range(start_step, num_steps):
      state, metrics = step_fn(state, next_batch())
      history.append(metrics)
      done = step + 1
      pbar.update(1)
      if step == start_step:  # compilation is not training time
        jax.block_until_ready(state)
        logging.info('First step (with compilation) took %.1f s',
                     time.perf_counter() - clock)
        clock = time.perf_counter()
      else:
        timed_steps += 1
      boundary = any(_every(done, p, num_steps) for p in (
          config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps,
          config.sample_every_steps)) or stop.received is not None
      if not boundary:
        continue
      jax.block_until_ready(state)
      elapsed = time.perf_counter() - clock
      train_seconds += elapsed
      values = {}
      if _every(done, config.log_every_steps, num_steps):
        values = train_lib._reduce_metrics(history)  # pylint: disable=protected-access
        history = []
        if timed_steps:
          values['steps_per_sec'] = timed_steps / max(elapsed, 1e-9)
        timed_steps = 0
      elif timed_steps:
        timed_steps = 0  # the next rate is over a fresh interval
      if _every(done, config.eval_every_steps, num_steps):
        evaluation = evaluate(state)
        meta.update(evaluation)
        values.update(evaluation)
      if values:
        values['train_seconds'] = train_seconds
        writer.scalars(done, values)
        pbar.set_postfix({k: f'{values[k]:.3g}' for k in
                          ('loss_d', 'loss', 'test_accuracy') if k in values},
                         refresh=False)
      if sample is not None and _every(done, config.sample_every_steps, num_steps):
        grid = train_lib.image_grid(sample(state))
        train_lib._save_png(grid, os.path.join(workdir, 'samples',  # pylint: disable=protected-access
                                               f'step_{done:06d}.png'))
        writer.image(done, 'samples', grid)
      if stop.received is not None:
        stopped_by = stop.received
      if (_every(done, config.checkpoint_every_steps, num_steps)
          or stopped_by is not None) and last_saved != done:
        save(done)
        last_saved = done
      if stopped_by is not None:
        break
      clock = time.perf_counter()

  if stopped_by is not None and done < num_steps:
    logging.warning('Stopped by %s at step %d; checkpoint saved in %s. Run the same '
                    'command again to resume.', stopped_by, done,
                    os.path.join(workdir, 'checkpoints'))
  else:
    logging.info('Finished %d steps in %s (%.1f s of training steps)', done, workdir,
                 train_seconds)
  return state


def run(config, workdir: str):
  """Runs ``config.task`` (``'teacher'`` or ``'dfad'``) in ``workdir``."""
  task = config.get('task', 'gan')
  if task == 'teacher':
    return train_teacher(config, workdir)
  if task == 'dfad':
    return train_and_evaluate(config, workdir)
  raise ConfigError(f"config.task={task!r} is not one of 'gan', {', '.join(map(repr, TASKS))}")
