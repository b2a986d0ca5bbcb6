"""Data-free adversarial distillation (DFAD, Fang et al. 2019) on the one-stage engine.

The student plays D: its logit for a generated input is the teacher-student
discrepancy, and the symmetric ``'dfad'`` loss makes one-stage training a gradient
reversal at the generator's output (``docs/dfad.md``). The teacher rides, frozen, in
D's model state, so a distillation checkpoint is self-contained.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from absl import logging

from osgan_jax import models
from osgan_jax.config import ConfigError
from osgan_jax.core import losses as losses_lib
from osgan_jax.core import optimizers
from osgan_jax.core import steps
from osgan_jax.tasks import evals
from osgan_jax.tasks import gan as gan_lib
from osgan_jax.tasks import teacher as teacher_lib
from osgan_jax.training import loop
from osgan_jax.training import parallel

STAGES = ('one', 'two')


def _check(config) -> None:
  if config.stage not in STAGES:
    raise ConfigError(
        f'config.stage={config.stage!r}: distillation runs {" or ".join(STAGES)}'
    )
  if int(config.num_classes):
    raise ConfigError('config.num_classes must be 0: distillation is unconditional')
  if any(w > 0 for w in config.penalty.values()):
    raise ConfigError(
        'config.penalty.*: DFAD tasks take no gradient penalties; leave them 0'
    )


def make_gan(config, generator, student, teacher) -> steps.GAN:
  """The DFAD game as a ``steps.GAN`` without real data; the student plays D, its model
  state ``{'student': BatchNorm statistics, 'teacher': variables (frozen)}``."""
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
      exact_bucket=gan_lib.exact_bucket(config),
      fake_batch_size=int(config.batch_size),
      per_sample=student.per_sample,  # the teacher runs in inference mode
  )


def make_optimizers(config):
  """Generator: Adam; student: SGD with momentum and (PyTorch-style) weight decay; both
  with ``optimizer.lr_milestones`` (in generator updates)."""
  opt, d = config.optimizer, config.dfad
  milestones, decay = tuple(opt.lr_milestones), float(opt.lr_decay)
  # Two-stage updates the student student_steps times per step.
  per_step = int(d.student_steps) if config.stage == 'two' else 1
  optimizer_g = optimizers.adam(
      optimizers.with_milestones(float(opt.g_lr), milestones, decay),
      b1=float(opt.b1),
      b2=float(opt.b2),
  )
  optimizer_d = optimizers.sgd(
      optimizers.with_milestones(float(opt.d_lr), milestones, decay, per_step),
      momentum=float(d.student_momentum),
      weight_decay=float(d.student_weight_decay),
  )
  return optimizer_g, optimizer_d


def two_stage_step(
    gan: steps.GAN, state: steps.TrainState, batch, rng, *, student_steps: int
):
  """DFAD's schedule: ``student_steps`` student updates on fresh fakes, the last one and
  the generator's as ``steps.two_stage_step`` (``student_steps=1``: the GAN baseline)."""
  loss = losses_lib.get(gan.loss)
  keys = jax.random.split(rng, student_steps)

  def student_update(state, key):
    rng_z, rng_g, rng_d = jax.random.split(key, 3)
    z = gan.sample_latent(rng_z, gan.fake_batch_size)
    fake, _ = gan.generate(state.params_g, state.model_state_g, z, rng_g)
    fake = jax.lax.stop_gradient(fake)

    def objective(params_d):
      logits, model_state_d = gan.discriminate(params_d, state.model_state_d, fake, rng_d)
      logits = logits.astype(jnp.float32)
      return loss.d(logits[:0], logits, state.loss_state), model_state_d

    (loss_d, model_state_d), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params_d
    )
    state = state.replace(
        **steps.update_d(gan, state, grads), model_state_d=model_state_d
    )
    return state, loss_d

  state, _ = jax.lax.scan(student_update, state, keys[:-1])
  return steps.two_stage_step(gan, state, batch, keys[-1])


def _display(images):
  """Per-image min-max scaling to [-1, 1] (the generator's output is standardised)."""
  lo = jnp.min(images, axis=(1, 2, 3), keepdims=True)
  hi = jnp.max(images, axis=(1, 2, 3), keepdims=True)
  return 2.0 * (images - lo) / jnp.maximum(hi - lo, 1e-8) - 1.0


def build(config, workdir: str) -> loop.Task:
  """Distils the teacher of ``dfad.teacher_workdir`` into a student without data; raises
  ``ConfigError`` or ``data.DataError`` before anything is trained."""
  _check(config)
  data = config.data.to_dict()
  num_classes = evals.num_classes(data, evals.accuracy_split(config.evals.to_dict()))
  generator, student = gan_lib.create_models(config)
  teacher, teacher_vars, teacher_meta = teacher_lib.load_teacher(config, num_classes)
  if student.num_outputs != num_classes:
    raise ConfigError(
        f'the student has {student.num_outputs} outputs but the data has {num_classes} '
        'classes'
    )
  gan = make_gan(config, generator, student, teacher)

  def init(key, teacher_vars):
    key_g, key_d = jax.random.split(key)
    g_vars = dict(generator.init(key_g, jnp.zeros((2, int(config.z_dim))), train=False))
    params_g = g_vars.pop('params')
    params_d, student_state = teacher_lib.init_classifier(student, key_d)
    model_state_d = {'student': student_state, 'teacher': teacher_vars}
    return steps.init_state(gan, params_g, params_d, g_vars, model_state_d)

  def sampler(n: int, salt: int):
    # The fixed latents as an argument, not a constant: one program for every seed.
    z = gan.sample_latent(
        jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), salt), n
    )
    show = jax.jit(lambda z, p, s: _display(gan.generate(p, s, z, None)[0]['image']))
    return lambda state, index: show(z, state.params_g, state.model_state_g)

  context = evals.Context(
      workdir=workdir,
      data=data,
      is_main=parallel.is_main_process(),
      progress=bool(config.progress_bar),
      sampler=sampler,
      classifier=(student, lambda s: (s.params_d, s.model_state_d['student'])),
  )
  evaluators = evals.build(
      config.evals.to_dict(), context, kinds=('test_accuracy', 'samples')
  )
  accuracy = [e for e in evaluators if hasattr(e, 'accuracy')]
  teacher_accuracy = teacher_meta.get('test_accuracy')
  if teacher_accuracy is None and accuracy:
    params = teacher_vars['params']
    state = {k: v for k, v in teacher_vars.items() if k != 'params'}
    teacher_accuracy = accuracy[0].accuracy(params, state, teacher)
  for e in accuracy:
    if teacher_accuracy is not None:
      e.extra['teacher_test_accuracy'] = float(teacher_accuracy)
  nets = f'teacher {config.teacher.arch} (test accuracy {teacher_accuracy}), student '
  nets += f'{student.arch} (width {student.width}), batch {config.batch_size}'
  logging.info('DFAD %s-stage: %s', config.stage, nets)
  student_steps = int(config.dfad.student_steps)

  def make_phases(state):
    probed = steps.probe_per_sample(gan, state)
    coupling = 'independently' if probed.per_sample else 'jointly (BatchNorm)'
    logging.info('DFAD: the student treats samples %s', coupling)
    if config.stage == 'one':
      step = functools.partial(steps.one_stage_step, probed)
    else:
      step = functools.partial(two_stage_step, probed, student_steps=student_steps)
    return [loop.Phase('main', lambda state, batch, rng, i: step(state, batch, rng))]

  return loop.Task(
      name=f'dfad {config.stage}-stage',
      init=init,
      init_args=(teacher_vars,),
      make_phases=make_phases,
      evaluators=evaluators,
      meta={'teacher_workdir': os.path.abspath(config.dfad.teacher_workdir)},
      progress=('loss_d', 'loss_g', 'test_accuracy'),
  )
