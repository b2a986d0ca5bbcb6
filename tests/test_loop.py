"""The one loop (osgan_jax.training.loop) with small hand-made tasks: phases at their intervals,
evaluators and the best checkpoint, uint8 batches on the device, resume, errors from the
data thread, and no device-to-host transfer between boundaries."""

import contextlib
import json
import os
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as jax_array
from jax._src import config as jax_config

from osgan_jax.training import checkpoint, loop
from osgan_jax import config as config_lib
from osgan_jax import train
from osgan_jax.core import steps
from osgan_jax.data import DataError
from helpers import REPO, config_path  # pylint: disable=import-error


@flax.struct.dataclass
class State:
  step: jax.Array
  total: jax.Array
  b_calls: jax.Array


class Batches:
  """uint8 images whose every pixel is the global batch index; one 'skipped' image each."""

  def __init__(self, start_step, fail_at=None):
    self.step, self.skipped, self.fail_at = start_step, 0, fail_at
    self.closed = False

  def __next__(self):
    if self.step == self.fail_at:
      raise DataError('disk gone')
    image = np.full((4, 2, 2, 1), self.step % 256, np.uint8)
    self.step += 1
    self.skipped += 1
    return {'image': image}

  def close(self):
    self.closed = True


def phase_a(state, batch, rng, i):
  del rng
  x = batch['image']  # float on the device: pixel p -> p / 127.5 - 1
  return (
      state.replace(step=state.step + 1, total=state.total + jnp.mean(x)),
      {
          'mean_pixel': jnp.mean(x),
          'i': i.astype(jnp.float32),
          'dtype_is_f32': jnp.float32(x.dtype == jnp.float32),
      },
  )


def phase_b(state, batch, rng, i):
  del batch, i
  return state.replace(b_calls=state.b_calls + 1), {'b_rng': jax.random.uniform(rng)}


class Recorder:
  """Evaluator: records when it ran; 'score' from ``scores`` (default 100 - step),
  lower is better."""

  def __init__(self, every_steps, scores=None):
    self.every_steps, self.calls, self.scores = every_steps, [], scores or {}
    self.best = ('score', 'min')

  def __call__(self, state, step, writer):
    del writer
    assert int(state.step) == step
    self.calls.append(step)
    return {'score': float(self.scores.get(step, 100 - step))}


def make_task(evaluator=None, fail_at=None, record=None, b_fn=phase_b):
  def init(key):
    del key
    return State(
        step=jnp.zeros((), jnp.int32),
        total=jnp.zeros(()),
        b_calls=jnp.zeros((), jnp.int32),
    )

  def batches(start, process_index, process_count):
    assert (process_index, process_count) == (0, 1)
    it = Batches(start, fail_at)
    if record is not None:
      record.append(it)
    return it

  return loop.Task(
      name='toy',
      init=init,
      make_phases=lambda state: [loop.Phase('a', phase_a), loop.Phase('b', b_fn, 3)],
      batches=batches,
      evaluators=[evaluator] if evaluator else [],
      meta={'task_meta': 7},
  )


def config(**overrides):
  return train.loop_settings(config_dict(**overrides))


def config_dict(**overrides):
  c = config_lib.get_base_config()
  c.update(
      dict(
          batch_size=4,
          num_train_steps=7,
          log_every_steps=2,
          checkpoint_every_steps=4,
          keep_checkpoints=10,
          progress_bar=False,
      )
  )
  c.update(overrides)
  return c


def metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_phases_evaluators_metrics_and_best_checkpoint(tmp_path):
  evaluator = Recorder(every_steps=3, scores={3: 5.0, 6: 9.0, 7: 1.0})
  state = loop.run(config(), str(tmp_path), make_task(evaluator))
  assert int(state.step) == 7
  assert int(state.b_calls) == 3  # iterations 0, 3, 6
  expected = sum(k / 127.5 - 1 for k in range(7))  # uint8 -> [-1, 1] on the device
  np.testing.assert_allclose(float(state.total), expected, rtol=1e-6)
  records = metrics(tmp_path)
  assert [r['step'] for r in records] == [2, 3, 4, 6, 7]  # logs at 2, 4, 6, 7; eval 3
  by_step = {r['step']: r for r in records}
  assert by_step[4]['i'] == 2.5 and by_step[4]['dtype_is_f32'] == 1.0
  assert by_step[2]['data_skipped_images'] == 2 and by_step[7]['data_skipped_images'] == 7
  assert 'b_rng' in by_step[4] and 'b_rng' not in by_step[6]  # b ran at 0, 3, 6
  assert evaluator.calls == [3, 6, 7]
  assert [by_step[s]['score'] for s in (3, 6, 7)] == [5.0, 9.0, 1.0]
  assert 'steps_per_sec' in by_step[4] and by_step[7]['train_seconds'] > 0
  with open(tmp_path / checkpoint.BEST_DIR / checkpoint.BEST_FILE) as f:
    assert json.load(f) == {'step': 7, 'metric': 'score', 'value': 1.0}
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '7']
  mngr = checkpoint.manager(str(tmp_path / 'checkpoints'), 10)
  meta = checkpoint.restore_meta(mngr, 7)
  mngr.close()
  assert meta['task_meta'] == 7 and meta['score'] == 1.0 and meta['skipped_images'] == 7


def test_resume_continues_the_same_run(tmp_path):
  straight = jax.device_get(loop.run(config(), str(tmp_path / 'a'), make_task()))
  loop.run(config(num_train_steps=4), str(tmp_path / 'b'), make_task())
  record = []
  resumed = jax.device_get(
      loop.run(config(), str(tmp_path / 'b'), make_task(record=record))
  )
  assert record[0].step > 4 and record[0].closed  # started at batch 4, closed at the end
  assert jax.tree.map(np.array_equal, straight, resumed) == State(True, True, True)
  assert [r['step'] for r in metrics(tmp_path / 'b')] == [2, 4, 6, 7]
  assert metrics(tmp_path / 'b')[-1]['data_skipped_images'] == 7


def test_a_phase_first_compiled_after_a_resume_is_not_training_time(tmp_path):
  """Resumed at step 4, phase b (interval 3) first runs, and compiles, at step 6: that
  call (here 2 s of tracing) is no more training time than the first step is."""

  def slow_b(state, batch, rng, i):
    time.sleep(2.0)  # runs while jax traces it: once per compilation
    return phase_b(state, batch, rng, i)

  loop.run(config(num_train_steps=4), str(tmp_path), make_task())
  before = metrics(tmp_path)[-1]['train_seconds']
  state = loop.run(config(), str(tmp_path), make_task(b_fn=slow_b))
  assert int(state.b_calls) == 3  # at 0, 3, 6: the slow one ran
  assert metrics(tmp_path)[-1]['train_seconds'] - before < 1.0


def test_a_data_error_in_the_prefetch_thread_reaches_the_caller(tmp_path):
  with pytest.raises(DataError, match='disk gone'):
    loop.run(config(), str(tmp_path), make_task(fail_at=5))


def test_invalid_loop_settings_are_config_errors(tmp_path):
  with pytest.raises(config_lib.ConfigError, match='log_every_steps must be positive'):
    config_lib.validate(config_dict(log_every_steps=0))
  with pytest.raises(config_lib.ConfigError, match='config.num_devices'):
    loop.run(config(num_devices=jax.device_count() + 1), str(tmp_path), make_task())


# ------------------------------------------------------------------ transfer guard


@contextlib.contextmanager
def strict_transfer_guard():
  """Makes every fetch of a multi-device jax.Array (np.asarray, float, .item,
  device_get: all read ``ArrayImpl._value``) raise under
  ``transfer_guard_device_to_host('disallow')``.

  On an accelerator jax's guard does this itself; on the CPU backend a fetch is a view
  the guard does not see (and single-device CPU arrays skip ``_value`` through the
  buffer protocol), so the scenarios run in a process with 2 CPU devices, where the
  state, batches and metrics span both.
  """
  original = jax_array.ArrayImpl._value

  def guarded(self):
    if jax_config.transfer_guard_device_to_host.value == 'disallow':
      raise RuntimeError('device-to-host transfer under a disallow guard')
    return original.fget(self)

  jax_array.ArrayImpl._value = property(guarded)
  try:
    mesh = jax.make_mesh((2,), ('d',))
    x = jax.device_put(np.ones(2, np.float32), jax.NamedSharding(mesh, jax.P()))
    with jax.transfer_guard_device_to_host('disallow'):
      for fetch in (np.asarray, jax.device_get, lambda a: float(a[0])):
        with pytest.raises(RuntimeError, match='disallow guard'):
          fetch(x + 1)
    assert float((x + 1)[0]) == 2.0  # outside the guard fetches work
    yield
  finally:
    jax_array.ArrayImpl._value = original


def guarded_scenario(name: str, workdir: str) -> None:
  """Runs one scenario under ``strict_transfer_guard`` (in the subprocess)."""
  assert jax.device_count() == 2
  with strict_transfer_guard():
    if name == 'toy':
      evaluator = Recorder(every_steps=5)
      state = loop.run(
          config(num_train_steps=12, log_every_steps=6), workdir, make_task(evaluator)
      )
      assert int(state.step) == 12 and evaluator.calls == [5, 10, 12]
    elif name == 'fetch_every_step':  # a phase whose metrics are fetched every step
      jit = steps.jit_state_step

      def fetching(fn, **kwargs):
        jitted = jit(fn, **kwargs)

        def call(*args):
          state, m = jitted(*args)
          float(m['mean_pixel'])
          return state, m

        return call

      steps.jit_state_step = fetching
      loop.run(config(), workdir, make_task())
    elif name == 'gan':  # the GAN task, a tiny DCGAN on a folder of PNGs
      from PIL import Image
      from osgan_jax import train

      folder = os.path.join(workdir, 'images')
      os.makedirs(folder)
      for i in range(8):
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(
            os.path.join(folder, f'{i}.png')
        )
      c = config_lib.load_config(
          config_path('dcgan_fashion_mnist'),
          {
              'batch_size': 4,
              'num_train_steps': 6,
              'log_every_steps': 3,
              'evals.samples.every_steps': 6,
              'checkpoint_every_steps': 6,
              'evals.samples.num': 4,
              'progress_bar': False,
              'data.name': 'folder',
              'data.path': folder,
              'data.resolution': 16,
              'data.channels': 3,
              'model.generator.width': 4,
              'model.discriminator.width': 4,
          },
      )
      state = train.train_and_evaluate(c, os.path.join(workdir, 'run'))
      assert int(state.step) == 6
  print('scenario passed')


_GUARD_SCRIPT = """
import os, sys
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=2')
sys.path.insert(0, sys.argv[1])
import test_loop
test_loop.guarded_scenario(sys.argv[2], sys.argv[3])
"""


def _run_scenario(name, tmp_path):
  return subprocess.run(
      [
          sys.executable,
          '-c',
          _GUARD_SCRIPT,
          os.path.dirname(__file__),
          name,
          str(tmp_path),
      ],
      capture_output=True,
      text=True,
      timeout=600,
      cwd=REPO,
  )


@pytest.mark.parametrize('name', ['toy', pytest.param('gan', marks=pytest.mark.e2e)])
@pytest.mark.long
def test_steps_between_boundaries_make_no_device_to_host_transfer(name, tmp_path):
  result = _run_scenario(name, tmp_path)
  assert result.returncode == 0 and 'scenario passed' in result.stdout, result.stderr[
      -3000:
  ]


def test_a_fetch_in_the_step_path_is_caught(tmp_path):
  """The same loop with metrics fetched every step fails: the check has teeth."""
  result = _run_scenario('fetch_every_step', tmp_path)
  assert result.returncode != 0
  assert 'device-to-host transfer under a disallow guard' in result.stderr
