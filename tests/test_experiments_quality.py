"""The quality study: its statistics and rendering (exact values), its configs and
evaluators, a tiny study end to end, and the GPU script's one-line errors."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from experiments import common
from experiments import compare_quality as quality
from experiments import quality_stats as stats

REPO = common.REPO
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
HAS_DATA = all(
    os.path.exists(os.path.join(FASHION_MNIST, f'{s}-images-idx3-ubyte.gz'))
    for s in ('train', 't10k')
)


# ------------------------------------------------------------------ statistics


def test_welch_interval_and_verdicts_exact():
  w = stats.welch([10.0, 12.0, 11.0], [14.0, 13.0, 15.5])
  assert w['diff'] == pytest.approx(-19 / 6)
  assert w['df'] == pytest.approx(3.8059405940594067, rel=1e-12)
  assert w['p'] == pytest.approx(0.029145305862049366, rel=1e-9)
  assert w['ci'] == pytest.approx((-5.174277445566688, -1.159055887766645), rel=1e-9)
  assert stats.welch([1.0], [2.0, 3.0]) is None
  assert stats.welch([2.0, 2.0], [2.0, 2.0]) == {
      'diff': 0.0,
      'df': None,
      'p': 1.0,
      'ci': (0.0, 0.0),
  }
  verdict = stats.verdict
  assert verdict([10.0, 12.0, 11.0], [14.0, 13.0, 15.5])['verdict'] == 'better'
  assert verdict([20.0, 21.0, 19.5], [10.0, 10.5, 9.8])['verdict'] == 'worse'
  assert verdict([10.0, 10.1, 9.9], [10.05, 9.95, 10.0])['verdict'] == 'same'
  wide = verdict([10.0, 30.0, 20.0], [12.0, 35.0, 15.0])
  assert wide['verdict'] == 'not distinguishable' and wide['p'] > 0.05
  # Close means, too few seeds to bound the difference within 10%: not 'same'.
  assert verdict([10.0, 11.0], [10.2, 11.4])['verdict'] == 'not distinguishable'
  assert verdict([10.0], [20.0, 21.0])['verdict'] == 'not distinguishable'
  assert verdict([5.0, 5.0, None], [5.2, 5.2])['verdict'] == 'same'  # exact, in 10%
  assert verdict([5.0, 5.0], [6.0, 6.0])['verdict'] == 'better'  # exact, outside


def test_value_at_time_interpolates_between_evaluations():
  assert stats.value_at_time([10, 20], [300, 200], 5) is None
  assert stats.value_at_time([10, 20], [300, 200], 15) == 250.0
  assert stats.value_at_time([10, 20], [300, 200], 99) == 200.0


def _rows():
  rows = []
  for stage, sec_per_step in (('one', 0.2), ('two', 0.3)):
    for seed in range(3):
      for step in (100, 200, 300):
        rows.append(
            {
                'loss': 'hinge',
                'stage': stage,
                'seed': seed,
                'step': step,
                'train_seconds': step * sec_per_step,
                'fid_classifier': 100.0 - step * 0.1 + seed,
                'fid_inception': 50.0 + seed if step == 300 else None,
                'fid_classifier_samples': 64,
                'fid_inception_samples': 16,
            }
        )
  return rows


def test_summary_at_equal_steps_and_equal_time():
  """Two-stage 1.5x slower per step: at the one-stage final time it is at 2/3 of its
  steps, its FID there interpolated between evaluations."""
  rows = _rows()
  e = stats.summarize(rows)['hinge']
  assert e['final_step'] == 300 and e['seeds'] == [0, 1, 2]
  assert e['budget_seconds'] == pytest.approx(60.0)
  one, two = e['stages']['one'], e['stages']['two']
  assert one['fid_classifier'] == pytest.approx((71.0, 1.0))
  assert one['fid_inception'] == pytest.approx((51.0, 1.0))
  assert one['fid_classifier_at_budget'] == pytest.approx((71.0, 1.0))
  assert two['fid_classifier_at_budget'] == pytest.approx((81.0, 1.0))  # at step 200
  assert two['train_seconds'] == pytest.approx((90.0, 0.0))
  assert e['verdict_steps']['verdict'] == 'same'
  assert e['verdict_time']['verdict'] == 'better'
  table = stats.markdown(rows, {'hinge': e})
  assert '| hinge | one-stage | 3 | 300 | 60 ± 0 | 71.00 ± 1.00 (64 samples) |' in table
  assert 'n_exact' not in table  # rows from before it was recorded render as before
  for r in rows:
    r['n_exact_run_mean'] = 2.0 + r['seed'] if r['stage'] == 'one' else None
  table = stats.markdown(rows, stats.summarize(rows))
  assert '| 71.00 ± 1.00 | 3.0 ± 1.0 |' in table and '| 81.00 ± 1.00 | - |' in table


def test_the_committed_cpu_study_renders_to_its_table():
  path = os.path.join(REPO, 'experiments', 'results', 'quality')
  rows = stats.read_rows(os.path.join(path, 'cpu.jsonl'))
  assert len(rows) == 72
  assert stats.markdown(rows, stats.summarize(rows)) == open(f'{path}/cpu.md').read()


def test_n_exact_means_weight_log_intervals_by_length():
  records = [
      {'step': 50, 'n_exact': 4.0},
      {'step': 100, 'n_exact': 2.0},
      {'step': 100, 'fid_classifier': 3.0},  # an evaluation line
      {'step': 120, 'n_exact': 1.0},  # a chunk's last, short interval
      {'step': 200, 'n_exact': 0.0},
  ]
  assert quality.n_exact_mean(records, 0, 100) == 3.0
  assert quality.n_exact_mean(records, 100, 200) == pytest.approx(20 / 100)
  assert quality.n_exact_mean(records, 0, 200) == pytest.approx(320 / 200)
  assert quality.n_exact_mean([{'step': 50, 'loss_d': 1.0}], 0, 100) is None
  assert quality.logged(records, 100) == {
      'step': 100,
      'n_exact': 2.0,
      'fid_classifier': 3.0,
  }


# ------------------------------------------------------------------ configs


def test_runs_carry_both_fids_as_named_evaluators():
  args = quality.parse_args(['--size', 'cpu', '--workdir', '/tmp/w'])
  early = quality.run_config(args, 'hinge', 'one', 2, 1000)
  final = quality.run_config(args, 'hinge', 'one', 2, 4000)
  for config in (early, final):
    c = config.evals.fid_classifier
    assert (c.type, c.features, c.every_steps) == ('fid', 'classifier', 1000)
    assert (c.num_samples, c.num_real, c.real_split) == (5000, -1, 'test')
    assert c.classifier_workdir == '/tmp/w/classifier' and not c.keep_best
    assert (
        config.evals.fid.features == 'inception' and config.evals.fid.real_split == 'test'
    )
  assert early.evals.fid.every_steps == 0  # Inception FID once, at the last step
  assert final.evals.fid.every_steps == 4000
  assert (final.evals.fid.num_samples, final.evals.fid.num_real) == (1000, 2000)
  assert (final.loss, final.stage, final.seed, final.num_train_steps) == (
      'hinge',
      'one',
      2,
      4000,
  )
  from osgan_jax import config as config_lib

  config_lib.validate(final)


def test_config_variants_and_bad_losses(capsys):
  args = quality.parse_args(
      ['--gpu', '--losses', 'wgan,stylegan2_tiny', '--data-path', '/data/fmnist']
  )
  assert args.losses == ['wgan', 'stylegan2_tiny'] and args.workers == 8
  assert args.chunk_steps == args.steps == 4000  # one call per run
  short = quality.parse_args(['--gpu', '--steps', '20', '--eval-every', '10'])
  assert short.chunk_steps == 20 and quality.parse_args([]).chunk_steps == 1000
  assert quality.parse_args(['--workdir', '/tmp/q']).out == '/tmp/q/results'
  config = quality.run_config(args, 'stylegan2_tiny', 'two', 3, 4000)
  assert (config.loss, config.stage, config.seed) == ('non_saturating', 'two', 3)
  assert config.model.generator.channel_max == 64 and config.batch_size == 32
  assert config.data.path == '/data/fmnist'
  assert (config.evals.fid.num_samples, config.evals.fid.batch_size) == (10000, 250)
  wgan = quality.run_config(args, 'wgan', 'one', 0, 1000)
  assert (wgan.loss, wgan.model.discriminator.norm) == ('wgan', 'batch')
  assert wgan.optimizer.weight_clip == 0.01
  assert wgan.evals.fid_classifier.batch_size == 1000
  for argv, message in (
      (['--losses', 'hinge,nope'], '--losses: nope; choose from'),
      (['--tiny', '--losses', 'stylegan2_tiny'], 'configs of their own run at'),
  ):
    with pytest.raises(SystemExit):
      quality.parse_args(argv)
    assert message in capsys.readouterr().err


def test_inception_float16_copy_is_upcast_on_load(tmp_path, monkeypatch):
  """The GPU size's 42 MiB weights: float16 on disk, float32 in the network."""
  from osgan_jax.metrics import inception, inception_weights

  if inception.default_weights_path() is None:
    pytest.skip(f'Inception weights missing: {inception.INSTALL_HINT}')
  monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path / 'cache'))
  out = str(tmp_path / 'inception_fp16.npz')
  assert inception_weights.export_converted(out) < 48 * 2**20
  reference = inception_weights.convert_file(inception.default_weights_path())
  loaded = inception_weights.load_inception_params(out, cache=False)['params']
  flat = {k: np.asarray(v) for k, v in inception.flatten_params(loaded).items()}
  assert set(flat) == set(reference)
  for k, v in flat.items():
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v, reference[k].astype(np.float16).astype(np.float32))
  np.savez(tmp_path / 'bad.npz', x=np.zeros(3))
  with pytest.raises(ValueError, match='not a converted Inception weights file'):
    inception_weights.read_converted(str(tmp_path / 'bad.npz'))


# ------------------------------------------------------------------ end to end


@pytest.mark.skipif(not HAS_DATA, reason='apt-get install dataset-fashion-mnist')
# slow: the study's statistics, rendering and run configs are this file's unit tests,
# its training the loop's (test_train.py); this runs the whole study at 16x16 (28 s).
@pytest.mark.slow
def test_quality_study_tiny_end_to_end(tmp_path):
  """The study at its tiny size (16x16, 2 seeds, 1 loss, 4 steps, FID at 2 and 4), its
  runs in 2 worker processes: rows with provenance and n_exact, resumption from the
  runs' logs, the table and the plots."""
  from PIL import Image

  out, wd = tmp_path / 'out', tmp_path / 'wd'
  argv = ['--tiny', '--out', str(out), '--workdir', str(wd)]
  assert quality.main(argv + ['--workers', '2']) == 0
  jsonl = out / 'tiny.jsonl'
  rows = [json.loads(line) for line in open(jsonl)]
  assert len(rows) == 1 * 2 * 2 * 2  # loss x stage x seed x evaluation
  runs = {}
  for r in rows:
    assert set(quality.REQUIRED_FIELDS) <= set(r) and r['workers'] == 2
    assert r['variant'] == r['loss'] == 'non_saturating' and r['config'] == quality.CONFIG
    assert np.isfinite(r['fid_classifier']) and r['fid_classifier'] > 0
    assert r['fid_inception'] is None and r['fid_classifier_real'] == 256
    assert (r['n_exact_mean'] is None) == (r['stage'] == 'two')
    assert r['provenance']['command'].startswith('python -m experiments.compare_quality')
    assert r['git_rev'].startswith(r['provenance']['git_commit'][:7])
    assert r['images'] == r['step'] * 16 and r['study'] == 'tiny'
    runs.setdefault((r['stage'], r['seed']), []).append(r)
  assert sorted(runs) == [('one', 0), ('one', 1), ('two', 0), ('two', 1)]
  for run in runs.values():  # seed-major, both evaluations, time grows
    assert [r['step'] for r in run] == [2, 4]
    assert 0 <= run[0]['train_seconds'] < run[1]['train_seconds']
  commands = (out / 'commands.txt').read_text()
  assert '--tiny' in commands and '--shard' not in commands
  table = (out / 'tiny.md').read_text()
  assert '| non_saturating | one-stage | 2 | 4 |' in table and 'Welch t-test' in table
  for name in ('tiny_fid_vs_steps.png', 'tiny_fid_vs_seconds.png'):
    image = np.asarray(Image.open(out / name).convert('L'), np.float32)
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 10

  # Resume: rows missing from the file come back from the runs' logs, unchanged.
  with open(jsonl, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows[:-2])
  assert quality.main(argv) == 0
  again = stats.read_rows(str(jsonl))
  assert len(again) == len(rows) == len(open(jsonl).readlines())
  key = lambda r: (r['stage'], r['seed'], r['step'])  # noqa: E731
  assert {key(r): r['fid_classifier'] for r in again} == {
      key(r): r['fid_classifier'] for r in rows
  }
  os.remove(out / 'tiny.md')
  assert quality.main(['--render', '--study', 'tiny', '--out', str(out)]) == 0
  assert (out / 'tiny.md').read_text() == table


def test_quality_gpu_script_checks_what_its_call_carries_first(tmp_path):
  """From a checkout without its carried folders each step fails with the project's
  one line naming what to carry, before anything else runs (pip among them)."""
  (tmp_path / 'experiments').mkdir()
  for name in ('quality_gpu.sh', 'device_env.sh'):
    shutil.copy(os.path.join(REPO, 'experiments', name), tmp_path / 'experiments')
  env = {**os.environ, 'OUT': str(tmp_path / 'out'), 'FASHION_MNIST': str(tmp_path)}

  def script(*args, **extra):
    return subprocess.run(
        ['bash', str(tmp_path / 'experiments' / 'quality_gpu.sh'), *args],
        capture_output=True,
        text=True,
        env={**env, **extra},
    )

  usage = script()
  assert usage.returncode == 2 and 'bash experiments/quality_gpu.sh pack' in usage.stdout
  cases = [
      ('pack', {}, f'no {tmp_path}/train-images-idx3-ubyte.gz: apt-get install'),
      ('upload', {}, 'no .inception/inception_fp16.npz: carry .inception (pack first)'),
      (
          'run',
          {},
          'no .quality_data/fashion-mnist/train-images-idx3-ubyte.gz: carry '
          '.quality_data (pack first)',
      ),
  ]
  for step, extra, message in cases:
    result = script(step, **extra)
    assert result.returncode == 1, (step, result.stderr)
    assert result.stderr.strip() == message or result.stderr.startswith(message), (
        step,
        result.stderr,
    )
    assert len(result.stderr.strip().splitlines()) == 1
  data = tmp_path / '.quality_data' / 'fashion-mnist'
  data.mkdir(parents=True)
  for f in quality_files():
    (data / f'{f}.gz').write_bytes(b'')
  # The data is there; the packages are not and no wheel was carried: our line, not pip's.
  result = script('run', OSGAN_DEVICE_MODULES='no_such_module_xyz')
  assert result.returncode == 1 and not (tmp_path / 'out' / 'quality.log').exists()
  assert result.stderr.strip() == (
      'no .whl/*.whl and python3 lacks one of: no_such_module_xyz; carry .whl (pack first)'
  )


def quality_files():
  return (
      'train-images-idx3-ubyte',
      'train-labels-idx1-ubyte',
      't10k-images-idx3-ubyte',
      't10k-labels-idx1-ubyte',
  )


def test_fid_evaluator_config_errors(tmp_path):
  from osgan_jax import config as config_lib
  from osgan_jax import tasks

  config = config_lib.load_config(
      os.path.join(REPO, quality.CONFIG),
      {'evals.fid.every_steps': 1, 'evals.fid.features': 'nope'},
  )
  with pytest.raises(config_lib.ConfigError, match='evals.fid.features'):
    config_lib.validate(config)
  with config.unlocked():
    config.evals.fid.features = 'classifier'
  with pytest.raises(config_lib.ConfigError, match='classifier_workdir'):
    tasks.build(config, str(tmp_path))
  with config.unlocked():
    config.evals.fid.classifier_workdir = str(tmp_path)
  with pytest.raises(config_lib.ConfigError, match='no readable config.json'):
    tasks.build(config, str(tmp_path))
