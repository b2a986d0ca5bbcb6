"""The official StyleGAN2-ADA and R3GAN pickles, read without torch.

The fixtures in ``tests/data/official`` are tiny randomly initialised official networks
pickled by the reference code with the outputs it computed
(``experiments/official_fixtures.py``, docs/official_weights.md): loading a pickle must
reproduce those outputs. Also the one-line errors, the refusal of arbitrary globals,
and training that starts from imported weights and resumes bit-identically.
"""

import os
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from osgan_jax import train
from osgan_jax.config import ConfigError
from osgan_jax.formats import torch_archive
from osgan_jax.models import official, r3gan, stylegan2
from osgan_jax.tasks import gan as gan_lib
from helpers import assert_trees_equal, tiny_config  # pylint: disable=import-error

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'official')
RTOL = 1e-4  # max |ours - official| relative to max |official|


def fixture(name):
  return os.path.join(DATA, f'{name}.pkl'), np.load(os.path.join(DATA, f'{name}.npz'))


def assert_close(ours, official_nchw, layout='nhwc'):
  ours = np.asarray(ours)
  if layout == 'nhwc':
    ours = ours.transpose(0, 3, 1, 2)
  ref = np.asarray(official_nchw).reshape(ours.shape)
  assert np.isfinite(ref).all() and np.abs(ref).max() > 0
  err = np.abs(ours - ref).max() / np.abs(ref).max()
  assert err <= RTOL, err


def labels_of(imported, ref):
  return jnp.asarray(ref['classes'], jnp.int32) if imported.c_dim else None


@pytest.mark.long
@pytest.mark.parametrize('c_dim', [0, 3])
def test_stylegan2_reproduces_the_official_networks(c_dim):
  """G and G_ema (mapped ws, truncation with w_avg, cutoff, images with noise 'const'
  and 'none', a truncated image) and D's logits, as the official code computed them."""
  path, ref = fixture(f'stylegan2_c{c_dim}')
  imported = official.load(path)
  G, D = imported.generator, imported.discriminator
  assert imported.family == 'stylegan2' and imported.c_dim == c_dim
  assert isinstance(G, stylegan2.Generator) and isinstance(D, stylegan2.Discriminator)
  assert (G.resolution, G.img_channels, G.z_dim, G.w_dim) == (32, 3, 32, 32)
  assert (G.mapping_layers, G.architecture, D.architecture) == (8, 'skip', 'resnet')
  psi = float(ref['psi'])

  @jax.jit
  def outputs(variables, z, labels, images):
    out = {}
    for key in ('g', 'g_ema'):
      v = variables[key]
      mapped = lambda **kw: G.apply(v, z, labels, train=False, method=G.map, **kw)
      synthesize = lambda ws, mode: G.apply(
          v, ws, noise_mode=mode, train=False, method=G.synthesize
      )
      out[f'{key}_ws'] = ws = mapped()
      if key == 'g':  # G's variables: mapping and synthesis, once each
        out['g_img_const'] = synthesize(ws, 'const')
        continue
      out[f'{key}_ws_trunc'] = ws_trunc = mapped(truncation_psi=psi)
      out[f'{key}_ws_cutoff2'] = mapped(truncation_psi=psi, truncation_cutoff=2)
      # One synthesis of both batches (the official truncated image is G(z, psi)'s).
      img = synthesize(jnp.concatenate([ws, ws_trunc]), 'const')
      out[f'{key}_img_const'], out[f'{key}_img_trunc'] = jnp.split(img, 2)
      out[f'{key}_img_none'] = synthesize(ws, 'none')
    out['d_logits'] = D.apply(variables['d'], images, labels, train=False)
    return out

  images = ref['images'].transpose(0, 2, 3, 1)
  got = outputs(imported.variables, ref['z'], labels_of(imported, ref), images)
  assert len(got) == 9
  for name, value in got.items():
    assert_close(value, ref[name], 'nhwc' if 'img' in name else 'flat')
  # G's own call (mapping with truncation, then synthesis) agrees with the two steps.
  z, labels = ref['z'][:1], labels_of(imported, ref)
  img = G.apply(
      imported.variables['g_ema'],
      z,
      None if labels is None else labels[:1],
      truncation_psi=psi,
      noise_mode='const',
      train=False,
  )
  assert_close(img, ref['g_ema_img_trunc'][:1])


@pytest.mark.parametrize('c_dim', [0, 3])
def test_r3gan_reproduces_the_official_networks(c_dim):
  path, ref = fixture(f'r3gan_c{c_dim}')
  imported = official.load(path)
  G, D = imported.generator, imported.discriminator
  assert imported.family == 'r3gan' and imported.c_dim == c_dim
  assert isinstance(G, r3gan.Generator) and isinstance(D, r3gan.Discriminator)
  assert G.schedule() == ((32, 32, 16, 16), (4, 4, 2, 2), (1, 1, 2, 1))
  assert D.schedule() == G.schedule()

  @jax.jit
  def outputs(variables, z, labels, images):
    out = {
        f'{k}_img': G.apply(variables[k], z, labels, train=False) for k in ('g', 'g_ema')
    }
    out['d_logits'] = D.apply(variables['d'], images, labels, train=False)
    return out

  images = ref['images'].transpose(0, 2, 3, 1)
  got = outputs(imported.variables, ref['z'], labels_of(imported, ref), images)
  for name, value in got.items():
    assert_close(value, ref[name], 'nhwc' if 'img' in name else 'flat')


def test_variables_have_the_form_init_gives():
  """Same collections, paths, shapes and dtypes as the module's own ``init``."""
  imported = official.load(fixture('stylegan2_c3')[0])
  G = imported.generator
  rngs = {'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}
  rngs['mixing'] = jax.random.PRNGKey(2)
  init = jax.eval_shape(
      lambda: G.init(rngs, jnp.zeros((1, 32)), jnp.zeros((1,), jnp.int32), train=False)
  )
  for key in ('g', 'g_ema'):
    got = jax.tree.map(lambda a: (a.shape, a.dtype), imported.variables[key])
    assert got == jax.tree.map(lambda a: (a.shape, a.dtype), init)
  assert set(imported.variables['g']) == {'params', 'batch_stats', 'buffers'}


# ------------------------------------------------------------------------------- errors


def snapshot(name='stylegan2_c0'):
  return official.read(fixture(name)[0])


def one_line_error(data, path='x.pkl'):
  with pytest.raises(ValueError) as e:
    official.from_snapshot(data, path)
  message = str(e.value)
  assert '\n' not in message and message.startswith(f'{path}: ')
  return message


def module_at(obj, dotted):
  for part in dotted.split('.'):
    obj = obj.state['_modules'][part]
  return obj


def test_a_missing_parameter_is_named():
  data = snapshot()
  del module_at(data['G'], 'synthesis.b16.conv0').state['_parameters']['weight']
  message = one_line_error(data)
  assert (
      message == 'x.pkl: G.synthesis.b16.conv0.weight: missing (this Generator needs it)'
  )


def test_a_shape_mismatch_is_named():
  data = snapshot('r3gan_c0')
  layer = module_at(data['G'], 'Model.AggregationLayer.Layer')
  w = layer.state['_parameters']['weight']
  layer.state['_parameters']['weight'] = np.concatenate([w, w])
  assert one_line_error(data) == (
      'x.pkl: G.Model.AggregationLayer.Layer.weight: shape [6, 16, 1, 1] does not fit '
      'aggregate.kernel [1, 1, 16, 3]'
  )


def test_an_unexpected_parameter_is_named():
  data = snapshot()
  module_at(data['D'], 'b4.fc').state['_parameters']['scale'] = np.ones(3, np.float32)
  message = one_line_error(data)
  assert (
      message == 'x.pkl: D.b4.fc.scale: unexpected parameter (unsupported architecture)'
  )


def test_an_unknown_architecture_is_named():
  data = snapshot()
  data['G_ema'] = torch_archive.PickledObject('MyGenerator', {'_modules': {}})
  assert (
      one_line_error(data) == 'x.pkl: unknown architecture: the generator is MyGenerator'
  )
  data = snapshot()
  del module_at(data['G_ema'], 'mapping').state['num_layers']
  assert one_line_error(data) == "x.pkl: G lacks 'num_layers' (unknown architecture)"


def test_corrupt_and_foreign_files_are_one_line_errors(tmp_path):
  good = open(fixture('stylegan2_c0')[0], 'rb').read()
  cases = {
      'truncated.pkl': good[: len(good) // 2],
      'noise.pkl': np.random.default_rng(0).bytes(1000),
      'list.pkl': pickle.dumps([1, 2]),
      'missing.pkl': None,
  }
  for name, content in cases.items():
    path = tmp_path / name
    if content is not None:
      path.write_bytes(content)
    with pytest.raises(ValueError) as e:
      official.load(str(path))
    assert '\n' not in str(e.value) and str(e.value).startswith(f'{path}: '), str(e.value)


class _Exploit:
  """Unpickling it would run ``os.system`` (with pickle's own ``find_class``)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_the_reader_refuses_arbitrary_globals(tmp_path):
  marker = tmp_path / 'ran'
  path = tmp_path / 'exploit.pkl'
  path.write_bytes(pickle.dumps({'G': _Exploit(marker)}))
  with pytest.raises(ValueError) as e:
    official.load(str(path))
  assert 'refusing to load' in str(e.value) and 'system' in str(e.value)
  assert not marker.exists()
  # Neither the persistence module's other names nor builtins get through.
  for module, name in (
      ('torch_utils.persistence', '_src_to_module'),
      ('builtins', 'eval'),
  ):
    data = b'\x80\x04c' + f'{module}\n{name}\n'.encode() + b'.'
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f'refusing to load {module}.{name}'):
      official.load(str(path))


# ----------------------------------------------------------------- training from a file

# stylegan2_tiny with the architecture of the stylegan2_c0 fixture (32x32 RGB).
FIXTURE_MODEL = {
    'z_dim': 32,
    'data.resolution': 32,
    'data.channels': 3,
    'model.generator.w_dim': 32,
    'model.generator.mapping_layers': 8,
    'model.generator.channel_base': 256,
    'model.generator.channel_max': 16,
    'model.generator.conv_clamp': 256,
    'model.discriminator.channel_base': 256,
    'model.discriminator.channel_max': 16,
    'model.discriminator.conv_clamp': 256,
}


def fine_tune_config(folder, **extra):
  run = {
      'batch_size': 4,
      'num_train_steps': 4,
      'log_every_steps': 1,
      'checkpoint_every_steps': 2,
      'keep_checkpoints': 5,
      'evals.samples.every_steps': 0,
      'evals.fid.every_steps': 0,
  }
  overrides = {
      **FIXTURE_MODEL,
      'init_from': fixture('stylegan2_c0')[0],
      'ema.half_life_kimg': 0.05,
      'ema.rampup': 0.0,
      # The regularisers are tested on their own (test_train); their phases' compiles
      # would triple this test's time.
      'reg.r1_gamma': 0.0,
      'reg.pl_weight': 0.0,
      **extra,
  }
  return tiny_config('stylegan2_tiny', folder, run=run, **overrides)


def test_init_from_must_match_the_configured_architecture(png_folder):
  config = fine_tune_config(png_folder, **{'model.generator.channel_max': 32})
  g, d = gan_lib.create_models(config)
  with pytest.raises(ConfigError) as e:
    gan_lib.initial_weights(config, g, d)
  assert str(e.value) == (
      f'config.init_from={config.init_from}: config.model.generator.channel_base does '
      'not match the file (the file has {4: 16, 8: 16, 16: 16, 32: 8}, here '
      '{4: 32, 8: 32, 16: 16, 32: 8})'
  )
  config = fine_tune_config(png_folder, **{'data.channels': 1})
  with pytest.raises(
      ConfigError,
      match=r'config\.data\.channels does not match the '
      r'file \(the file has 3, here 1\)',
  ):
    gan_lib.initial_weights(config, *gan_lib.create_models(config))
  config = tiny_config('r3gan_fashion_mnist', png_folder, init_from=config.init_from)
  with pytest.raises(
      ConfigError,
      match=r"config\.model\.name='r3gan' does not match "
      r'the file \(a stylegan2 snapshot\)$',
  ):
    gan_lib.initial_weights(config, *gan_lib.create_models(config))


def test_training_starts_from_the_file(png_folder):
  """The state at step 0: G, its EMA, D and G's w_avg and noise buffers are the file's."""
  config = fine_tune_config(png_folder)
  imported = official.load(config.init_from)
  g, d = gan_lib.create_models(config)
  gan = gan_lib.make_gan(config, g, d)
  state = jax.jit(gan_lib.make_init(config, gan, g, d))(jax.random.PRNGKey(0))
  variables = imported.variables
  assert_trees_equal(state.params_g, variables['g']['params'])
  assert_trees_equal(state.ema_params_g, variables['g_ema']['params'])
  assert_trees_equal(state.params_d, variables['d']['params'])
  model_state = {k: v for k, v in variables['g'].items() if k != 'params'}
  assert_trees_equal(state.model_state_g, model_state)
  assert int(state.step) == 0


# What it checks, CI checks in two parts: test_training_starts_from_the_file, and
# test_train.py's test_stylegan2_regularisers_ema_and_exact_resume (exact resume).
@pytest.mark.slow  # 45-70 s on 2 cores, most of it compiling the StyleGAN2 step
def test_fine_tuning_starts_from_the_file_and_resumes_bit_identically(
    png_folder, tmp_path
):
  """A one-stage fine-tuning run from the imported fixture: its parameters move from the
  file's, and a run resumed from its step-2 checkpoint equals the uninterrupted one."""
  config = fine_tune_config(png_folder)
  imported = official.load(config.init_from)
  straight = tmp_path / 'straight'
  final = jax.device_get(train.train_and_evaluate(config, str(straight)))
  assert int(final.step) == 4
  start = jax.tree.leaves(imported.variables['g']['params'])
  moved = [
      not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final.params_g), start)
  ]
  assert all(moved)  # every parameter got a gradient
  resumed = tmp_path / 'resumed'
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '4')
  again = train.train_and_evaluate(config, str(resumed))
  assert_trees_equal(jax.device_get(again), final)
