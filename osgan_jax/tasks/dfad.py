"""Data-free adversarial distillation (DFAD, Fang et al. 2019) on the one-stage engine.

A generator makes inputs on which a frozen teacher and a student disagree most (it
maximises the mean absolute difference of their logits); the student learns to match
the teacher on them (minimises it). No training image is used. In GAN terms the
student plays D: its "logit" for a generated input x is the per-sample discrepancy
``mean_c |t(x)_c - s(x)_c|``, and the ``'dfad'`` loss (``osgan_jax.core.losses``) is
``mean(fake)`` for D and ``-mean(fake)`` for G, with no real term. The game is
symmetric, so one-stage training is a gradient reversal (gamma = -1) at the
generator's output: ``steps.one_stage_step`` on a ``steps.GAN`` without real data
(``batch_keys=()``). The teacher's variables ride in D's model state (never
differentiated, returned unchanged), so they are jit arguments, not constants, and the
checkpoint of a distillation run is self-contained.

Two tasks of the one loop (``osgan_jax.training.loop``), chosen by ``config.task``
(``osgan_jax.train`` dispatches):

* ``'teacher'`` (``teacher_task``): supervised training on ``data.split`` (Adam or
  SGD), test accuracy on ``eval_split`` every ``eval_every_steps`` and at the end,
  orbax checkpoints in ``workdir/checkpoints`` (with the architecture and the test
  accuracy in the checkpoint's metadata).
* ``'dfad'`` (``distill_task``): loads the teacher from
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

import functools
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from osgan_jax.training import checkpoint
from osgan_jax import data as data_lib
from osgan_jax.training import evaluators
from osgan_jax.tasks import gan as gan_lib
from osgan_jax.training import loop
from osgan_jax.core import losses as losses_lib
from osgan_jax import models
from osgan_jax.training import parallel
from osgan_jax.core import steps
from osgan_jax.config import ConfigError
from osgan_jax.models import classifiers

TASKS = ('teacher', 'dfad')
STAGES = ('one', 'two')


def _validate(config, task: str) -> None:
  if config.get('task', 'gan') != task:
    raise ConfigError(f'config.task={config.get("task", "gan")!r}, expected {task!r}')
  for key in ('sample_every_steps', 'num_samples', 'eval_every_steps', 'eval_batch_size'):
    if int(config[key]) <= 0:
      raise ConfigError(f'config.{key} must be positive, got {config[key]}')
  for name, arch in (
      ('teacher.arch', config.teacher.arch),
      ('model.discriminator.arch', config.model.discriminator.arch),
  ):
    if arch not in classifiers.ARCHS:
      raise ConfigError(
          f'config.{name}={arch!r} is not one of ' f'{", ".join(classifiers.ARCHS)}'
      )
  if config.teacher.optimizer not in ('adam', 'sgd'):
    raise ConfigError(
        f"config.teacher.optimizer must be 'adam' or 'sgd', got "
        f'{config.teacher.optimizer!r}'
    )
  if config.teacher.lr_schedule not in ('constant', 'cosine'):
    raise ConfigError(
        f"config.teacher.lr_schedule must be 'constant' or 'cosine', got "
        f'{config.teacher.lr_schedule!r}'
    )
  if task == 'dfad':
    if config.stage not in STAGES:
      raise ConfigError(
          f'config.stage={config.stage!r}: distillation runs ' f'{" or ".join(STAGES)}'
      )
    gan_lib.validate_method(config)
    if int(config.dfad.student_steps) < 1:
      raise ConfigError(
          f'config.dfad.student_steps must be >= 1, got ' f'{config.dfad.student_steps}'
      )
    if int(config.num_classes):
      raise ConfigError('config.num_classes must be 0: distillation is unconditional')
  if any(w > 0 for w in config.penalty.values()):
    raise ConfigError(
        'config.penalty.*: DFAD tasks take no gradient penalties; leave ' 'them 0'
    )
  if int(config.fid.every_steps):
    raise ConfigError(
        'config.fid.every_steps: FID is not computed for DFAD tasks; ' 'leave it 0'
    )


def _data_config(config, split: str, shuffle: bool) -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.split, data.shuffle = split, shuffle
  return data


# ------------------------------------------------------------------------ networks


def _blocks(network_config) -> tuple:
  return tuple(int(n) for n in network_config.get('blocks', ()) or ())


def create_teacher(config, num_outputs: int = 10) -> classifiers.Classifier:
  return classifiers.Classifier(
      arch=config.teacher.arch,
      width=int(config.teacher.width),
      blocks=_blocks(config.teacher),
      num_outputs=num_outputs,
      resolution=int(config.data.resolution),
      channels=int(config.data.channels),
  )


def _init_classifier(model, key):
  shape = (2, model.resolution, model.resolution, model.channels)
  variables = dict(model.init(key, jnp.zeros(shape), train=False))
  return variables.pop('params'), variables


@functools.lru_cache(maxsize=None)
def _predict(model):
  """Jitted ``(params, model_state, images) -> classes`` in inference mode."""
  return jax.jit(
      lambda params, model_state, x: jnp.argmax(
          model.apply({'params': params, **model_state}, x, train=False), axis=-1
      )
  )


class TestAccuracy:
  """Evaluator: accuracy of ``variables(state) -> (params, model_state)`` on the
  evaluation split, held in memory in fixed-size batches (padding masked out)."""

  def __init__(self, config, variables, model=None, extra: dict | None = None):
    data = _data_config(config, str(config.eval_split), shuffle=False)
    data.num_threads = 0
    info = data_lib.dataset_info(data)
    if info['num_classes'] == 0:
      raise data_lib.DataError(
          f'{config.data.name} split {config.eval_split!r} has no '
          'labels; accuracy needs a labelled test set'
      )
    self.num_examples = n = int(info['num_examples'])
    self.num_classes = int(info['num_classes'])
    self.every_steps = int(config.eval_every_steps)
    self.variables, self.model, self.extra = variables, model, dict(extra or {})
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
    self.images = images.reshape((num_batches, batch) + images.shape[1:])
    self.labels = np.where(valid, labels, -1).reshape((num_batches, batch))

  def accuracy(self, params, model_state, model=None) -> float:
    predict, correct = _predict(model or self.model), 0
    for x, y in zip(self.images, self.labels):
      pred = np.asarray(predict(params, model_state, x))
      correct += int(np.sum((pred == y) & (y >= 0)))
    return correct / self.num_examples

  def __call__(self, state, step: int, writer) -> dict:
    del step, writer
    return {'test_accuracy': self.accuracy(*self.variables(state)), **self.extra}


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


def _teacher_init(model, tx):
  def init(key):
    params, model_state = _init_classifier(model, key)
    return TeacherState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
    )

  return init


def _teacher_step(model, tx, state: TeacherState, batch, rng, i):
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
  return (
      state.replace(
          step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
      ),
      {'loss': loss, 'train_accuracy': accuracy},
  )


def _teacher_meta(config, num_outputs: int) -> dict:
  return {
      'arch': str(config.teacher.arch),
      'width': int(config.teacher.width),
      'blocks': list(_blocks(config.teacher)),
      'resolution': int(config.data.resolution),
      'channels': int(config.data.channels),
      'num_outputs': int(num_outputs),
      'data': str(config.data.name),
      'num_train_steps': int(config.num_train_steps),
  }


def teacher_task(config, workdir: str) -> loop.Task:
  """Supervised training of the teacher on ``data.split``, test accuracy on
  ``eval_split``; its checkpoints' metadata name the architecture."""
  del workdir
  _validate(config, 'teacher')
  train_data = _data_config(config, config.data.split, True)
  data_lib.dataset_info(train_data)  # a DataError before anything is compiled
  test = TestAccuracy(config, lambda s: (s.params, s.model_state))
  model = create_teacher(config, test.num_classes)
  test.model = model
  tx = _teacher_optimizer(config)

  def batches(start_step, process_index, process_count):
    return data_lib.make_iterator(
        train_data,
        int(config.batch_size),
        seed=int(config.seed),
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        image_dtype='uint8',
    )

  return loop.Task(
      name='teacher',
      init=_teacher_init(model, tx),
      make_phases=lambda state: [
          loop.Phase('main', functools.partial(_teacher_step, model, tx))
      ],
      batches=batches,
      evaluators=[test],
      meta=_teacher_meta(config, test.num_classes),
  )


def load_teacher(config, num_outputs: int):
  """``(teacher module, {'params', ...} variables, meta)`` from ``dfad.teacher_workdir``.

  Raises ``ConfigError`` (with the command that trains it) when there is no
  checkpoint, and when the checkpoint is not of the teacher ``config.teacher``
  describes.
  """
  workdir = os.path.abspath(os.path.expanduser(config.dfad.teacher_workdir))
  command = (
      f'python -m osgan_jax.main --config={config.dfad.teacher_config} '
      f'--workdir={workdir}'
  )
  missing = ConfigError(
      f'no teacher checkpoint in {workdir} (config.dfad.teacher_'
      f'workdir); train the teacher first: {command}'
  )
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise missing
  model = create_teacher(config, num_outputs)
  init = _teacher_init(model, _teacher_optimizer(config))
  manager = checkpoint.manager(
      os.path.join(workdir, 'checkpoints'), 1 << 30, async_save=False
  )
  try:
    step = manager.latest_step()
    if step is None:
      raise missing
    meta = checkpoint.restore_meta(manager, step)
    expected = _teacher_meta(config, num_outputs)
    for key in ('arch', 'width', 'blocks', 'resolution', 'channels', 'num_outputs'):
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
          f'cannot restore the teacher checkpoint {workdir} at step {step} '
          f'with config.teacher ({type(e).__name__}: '
          f'{" ".join(str(e).split())[:300]})'
      ) from None
  finally:
    manager.close()
  if step < int(meta.get('num_train_steps', step)):
    logging.warning(
        'The teacher in %s is at step %d of %d (its run was interrupted)',
        workdir,
        step,
        meta['num_train_steps'],
    )
  logging.info(
      'Teacher %s from %s, step %d, test accuracy %s',
      meta.get('arch'),
      workdir,
      step,
      meta.get('test_accuracy'),
  )
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
    image, model_state = models.apply(generator, params, model_state, z, None, train)
    return {'image': image}, model_state

  def discriminate(params, model_state, batch, rng, train=True):
    del rng
    x = batch['image']
    t = teacher.apply(model_state['teacher'], x, train=False)
    s, student_state = models.apply(
        student, params, model_state['student'], x, None, train
    )
    discrepancy = jnp.mean(jnp.abs(t.astype(jnp.float32) - s.astype(jnp.float32)), -1)
    return discrepancy, {'student': student_state, 'teacher': model_state['teacher']}

  def sample_latent(rng, n):
    return jax.random.normal(rng, (n, z_dim))

  optimizer_g, optimizer_d = make_optimizers(config)
  return steps.GAN(
      generate=generate,
      discriminate=discriminate,
      sample_latent=sample_latent,
      loss=config.loss,
      optimizer_g=optimizer_g,
      optimizer_d=optimizer_d,
      batch_keys=(),
      mode=config.one_stage_mode,
      fake_batch_size=int(config.batch_size),
  )


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
        base, {m * updates_per_step: float(opt.lr_decay) for m in milestones}
    )

  optimizer_g = optax.adam(lr(float(opt.g_lr)), b1=float(opt.b1), b2=float(opt.b2))
  student = [
      optax.sgd(lr(float(opt.d_lr), per_step), momentum=float(d.student_momentum) or None)
  ]
  if d.student_weight_decay:
    student.insert(0, optax.add_decayed_weights(float(d.student_weight_decay)))
  return optimizer_g, optax.chain(*student)


def two_stage_step(
    gan: steps.GAN, state: steps.TrainState, batch, rng, *, student_steps: int
):
  """DFAD's schedule: ``student_steps`` student updates, then one generator update.

  Each student update is on fresh generated inputs with the generator frozen; the
  last one and the generator's update against the updated student are
  ``steps.two_stage_step``, so ``student_steps=1`` is exactly the GAN baseline.
  """
  loss = losses_lib.get(gan.loss)
  keys = jax.random.split(rng, student_steps)

  def student_update(state, key):
    rng_z, rng_g, rng_d = jax.random.split(key, 3)
    fake, _ = gan.generate(
        state.params_g,
        state.model_state_g,
        gan.sample_latent(rng_z, gan.fake_batch_size),
        rng_g,
    )
    fake = jax.lax.stop_gradient(fake)

    def objective(params_d):
      logits, model_state_d = gan.discriminate(params_d, state.model_state_d, fake, rng_d)
      logits = logits.astype(jnp.float32)
      return loss.d(logits[:0], logits, state.loss_state), model_state_d

    (loss_d, model_state_d), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params_d
    )
    params_d, opt_state_d = steps.apply_optimizer(
        gan.optimizer_d, grads, state.opt_state_d, state.params_d
    )
    return (
        state.replace(
            params_d=params_d, opt_state_d=opt_state_d, model_state_d=model_state_d
        ),
        loss_d,
    )

  state, _ = jax.lax.scan(student_update, state, keys[:-1])
  return steps.two_stage_step(gan, state, batch, keys[-1])


def _display(images):
  """Per-image min-max scaling to [-1, 1] (the generator's output is standardised)."""
  lo = jnp.min(images, axis=(1, 2, 3), keepdims=True)
  hi = jnp.max(images, axis=(1, 2, 3), keepdims=True)
  return 2.0 * (images - lo) / jnp.maximum(hi - lo, 1e-8) - 1.0


def distill_task(config, workdir: str) -> loop.Task:
  """Distils the teacher of ``dfad.teacher_workdir`` into a student without data.

  ``model_state_d['teacher']`` of the state holds the teacher, unchanged. Raises
  ``ConfigError`` for invalid settings or a missing teacher and ``data.DataError`` for
  a missing test set, before anything is trained.
  """
  _validate(config, 'dfad')
  generator, student = gan_lib.create_models(config)
  test = TestAccuracy(config, lambda s: (s.params_d, s.model_state_d['student']), student)
  teacher, teacher_vars, teacher_meta = load_teacher(config, test.num_classes)
  if student.num_outputs != test.num_classes:
    raise ConfigError(
        f'the student has {student.num_outputs} outputs but the data has '
        f'{test.num_classes} classes'
    )
  gan = make_gan(config, generator, student, teacher)

  def init(key, teacher_vars):
    key_g, key_d = jax.random.split(key)
    g_vars = dict(generator.init(key_g, jnp.zeros((2, int(config.z_dim))), train=False))
    params_g = g_vars.pop('params')
    params_d, student_state = _init_classifier(student, key_d)
    return steps.init_state(
        gan,
        params_g,
        params_d,
        g_vars,
        {'student': student_state, 'teacher': teacher_vars},
    )

  teacher_accuracy = teacher_meta.get('test_accuracy')
  if teacher_accuracy is None:
    teacher_accuracy = test.accuracy(
        teacher_vars['params'],
        {k: v for k, v in teacher_vars.items() if k != 'params'},
        teacher,
    )
  test.extra['teacher_test_accuracy'] = float(teacher_accuracy)
  fixed_z = gan.sample_latent(
      jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 2), int(config.num_samples)
  )
  # fixed_z as an argument, not a constant: one program for every seed.
  sampler = functools.partial(
      jax.jit(
          lambda z, params_g, model_state_g: _display(
              gan.generate(params_g, model_state_g, z, None)[0]['image']
          )
      ),
      fixed_z,
  )
  logging.info(
      'DFAD %s-stage: teacher %s (test accuracy %.4f), student %s (width %d), '
      'batch %d',
      config.stage,
      config.teacher.arch,
      teacher_accuracy,
      student.arch,
      student.width,
      config.batch_size,
  )

  def make_phases(state):
    probed = steps.probe_per_sample(gan, state)
    logging.info(
        'DFAD: the student treats samples %s',
        'independently' if probed.per_sample else 'jointly (BatchNorm)',
    )
    if config.stage == 'one':
      step = functools.partial(steps.one_stage_step, probed)
    else:
      step = functools.partial(
          two_stage_step, probed, student_steps=int(config.dfad.student_steps)
      )
    return [loop.Phase('main', lambda state, batch, rng, i: step(state, batch, rng))]

  samples = evaluators.SampleGrid(
      workdir,
      lambda s: sampler(s.params_g, s.model_state_g),
      config.sample_every_steps,
      is_main=parallel.is_main_process(),
  )
  return loop.Task(
      name=f'dfad {config.stage}-stage',
      init=init,
      init_args=(teacher_vars,),
      make_phases=make_phases,
      evaluators=[test, samples],
      meta={'teacher_workdir': os.path.abspath(config.dfad.teacher_workdir)},
  )
