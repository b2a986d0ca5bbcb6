"""Tests of the measurement scripts (experiments/), at toy sizes."""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments'
    ),
)

import benchmark_speed as bench  # noqa: E402  pylint: disable=import-error
import compare_quality as quality  # noqa: E402  pylint: disable=import-error
import ablate_cpu_step as ablate  # noqa: E402  pylint: disable=import-error
import cpu_layers  # noqa: E402  pylint: disable=import-error
import cpu_throughput as throughput  # noqa: E402  pylint: disable=import-error
import loop_throughput  # noqa: E402  pylint: disable=import-error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'

# A DCGAN small enough to compile four steps in seconds, built through a real config.
TINY = bench.RowSpec(
    'configs/dcgan_fashion_mnist.py',
    {
        'data.resolution': 16,
        'batch_size': 4,
        'z_dim': 8,
        'model.generator.width': 4,
        'model.discriminator.width': 4,
        'model.discriminator.norm': 'none',
    },
)


# ------------------------------------------------------------------ speed


def test_run_interleaved_rotates_order_and_times_every_round():
  calls = []
  now = [0.0]
  cost = {'a': 1.0, 'b': 2.0, 'c': 4.0}

  def clock():
    return now[0]

  def make(name):
    def fn():
      calls.append(name)
      now[0] += cost[name]

    return fn

  times = bench.run_interleaved(
      {n: make(n) for n in cost}, rounds=4, warmup=1, clock=clock
  )
  assert calls[:3] == ['a', 'b', 'c']  # warm-up
  assert calls[3:] == ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b', 'a', 'b', 'c']
  assert times == {'a': [1.0] * 4, 'b': [2.0] * 4, 'c': [4.0] * 4}


def test_ratio_summary_uses_per_round_ratios():
  # Round 2 is slow for everyone (machine load): per-round ratios ignore it.
  times = {'one_stage': [1.0, 1.0, 3.0, 1.0, 1.0], 'two_stage': [1.5, 1.2, 4.5, 1.4, 1.3]}
  s = bench.ratio_summary(times)
  assert s['one_stage']['ratio_to_one_stage_median'] == 1.0
  assert s['one_stage']['ratio_to_one_stage_min'] == 1.0
  assert s['two_stage']['ratio_to_one_stage_median'] == pytest.approx(1.4)
  assert s['two_stage']['ratio_to_one_stage_min'] == pytest.approx(1.2)
  assert s['two_stage']['ratio_to_one_stage_max'] == pytest.approx(1.5)
  assert s['two_stage']['step_ms_median'] == pytest.approx(1400.0)
  with pytest.raises(ValueError):
    bench.ratio_summary({'one_stage': [1.0, 1.0], 'two_stage': [1.0]})


@pytest.fixture(scope='module')
def tiny_row():
  return bench.compile_row('tiny', TINY, log=lambda s: None)


def test_measure_row_fields_and_ratios(tiny_row, tmp_path):
  rows = bench.time_row(tiny_row, rounds=2, log=lambda s: None)
  by_variant = {r['variant']: r for r in rows}
  assert set(by_variant) == set(bench.VARIANTS)
  for r in rows:
    for field in bench.REQUIRED_FIELDS:
      assert field in r, field
    assert r['mode'] == 'timed'
    assert r['flops'] > 0
    assert r['peak_bytes'] > 0
    assert r['step_ms_median'] > 0 and r['images_per_s'] > 0
    assert (
        r['ratio_to_one_stage_min']
        <= r['ratio_to_one_stage_median']
        <= (r['ratio_to_one_stage_max'])
    )
    assert r['images_per_s'] == pytest.approx(4 / (r['step_ms_median'] / 1e3))
  one = by_variant['one_stage']
  assert one['ratio_to_one_stage_median'] == one['flop_ratio'] == 1.0
  # The honest two-stage step executes more FLOPs than the one-stage step (without
  # the exact path's conditional branch), the official one more than the honest one.
  assert by_variant['two_stage']['flop_ratio_executed'] > 1.2
  assert by_variant['official_two_stage']['flops'] > by_variant['two_stage']['flops']
  assert one['per_sample_d'] is True

  out = str(tmp_path / 'speed' / 'r.json')
  csv_path = bench.write_results(rows, out)
  assert json.load(open(out))[0]['model'] == 'tiny'
  with open(csv_path) as f:
    assert len(list(csv.DictReader(f))) == len(rows)
  assert '| tiny | one_stage |' in bench.table(rows)


def test_measure_row_over_threshold_reports_flops_only(tiny_row):
  rows = bench.time_row(tiny_row, rounds=20, max_step_gflop=0.0, log=lambda s: None)
  for r in rows:
    assert r['mode'] == 'too_slow'
    assert r['flops'] > 0 and r['peak_bytes'] > 0
    assert r['step_ms_median'] is None and r['ratio_to_one_stage_median'] is None
    assert r['images_per_s'] is None


def test_speed_rows_are_built_from_existing_configs():
  repo = os.path.dirname(bench.__file__)
  for name, spec in {**bench.ROWS, **bench.DEVICE_ROWS}.items():
    assert os.path.exists(os.path.join(repo, '..', spec.config)), name
    assert set(spec.variants) <= set(bench.VARIANTS), name
  assert bench.ROWS['dcgan64'].overrides['model.generator.width'] == 64
  assert bench.ROWS['dcgan64_b128'].overrides['batch_size'] == 128


# ------------------------------------------------------------------ CPU throughput


def test_cpu_throughput_rows_side_by_side(tmp_path):
  """Issue 8's script at a tiny size: both conv implementations, both stages,
  interleaved, with XLA's FLOPs; one-stage does less matmul work than two-stage."""
  out = tmp_path / 'throughput.json'
  result = throughput.main(
      [
          '--width',
          '8',
          '--resolution',
          '16',
          '--batch',
          '4',
          '--rounds',
          '2',
          '--variants',
          'jax-matmul,jax-xla',
          '--malloc',
          'default',
          '--out',
          str(out),
      ]
  )
  saved = json.loads(out.read_text())['rows']
  assert saved.keys() == result['rows'].keys() == {'jax-matmul', 'jax-xla'}
  assert result['platform']['malloc_kept'] is False  # --malloc default
  for name in ('jax-matmul', 'jax-xla'):
    row = result['rows'][name]
    for stage in ('one', 'two'):
      assert len(row[stage]['seconds']) == 2
      assert saved[name][stage]['seconds'] == row[stage]['seconds']
      assert row[stage]['ms_per_step'] > 0
      assert row[stage]['images_per_s'] == pytest.approx(
          4 / np.median(row[stage]['seconds'])
      )
    assert row['one']['hlo_gflop'] < row['two']['hlo_gflop']
    ratios = np.asarray(row['two']['seconds']) / np.asarray(row['one']['seconds'])
    assert row['two_over_one']['median'] == pytest.approx(np.median(ratios))


def test_cpu_layers_times_every_dcgan_conv(tmp_path):
  """The per-layer script covers every stride-2 conv of the step at its shape, with
  exact FLOPs, both JAX implementations agreeing, and a row per variant present."""
  layers = cpu_layers.dcgan_layers(width=8, resolution=16, batch=4)
  assert [(l['name'], l['batch'], l['size'], l['c_in'], l['c_out']) for l in layers] == [
      ('D conv0', 8, 16, 3, 8),
      ('D conv1', 8, 8, 8, 16),
      ('G convT1', 4, 4, 16, 8),
      ('G convT2', 4, 8, 8, 3),
  ]
  # conv: output pixels x 16 taps x C_in x C_out; transposed: input pixels x ...
  assert layers[1]['gflop'] == pytest.approx(2 * 8 * 4 * 4 * 16 * 8 * 16 / 1e9)
  assert layers[2]['gflop'] == pytest.approx(2 * 4 * 4 * 4 * 16 * 16 * 8 / 1e9)
  out = tmp_path / 'layers.json'
  result = cpu_layers.main(
      [
          '--width',
          '8',
          '--resolution',
          '16',
          '--batch',
          '4',
          '--rounds',
          '1',
          '--variants',
          'jax-matmul,jax-xla,gemm',
          '--malloc',
          'default',
          '--out',
          str(out),
      ]
  )
  assert json.loads(out.read_text())['rows'] == result['rows']
  assert result['variants'] == ['jax-matmul', 'jax-xla', 'gemm']
  assert result['platform']['malloc_kept'] is False  # --malloc default
  for row in result['rows']:
    assert row['max_abs_diff'] < 1e-4
    assert set(row['ms']) == {'jax-matmul', 'jax-xla', 'gemm'}
    assert set(row['ms']['jax-matmul']) == {'forward', 'backward'}
    assert set(row['ms']['gemm']) == {'forward'}
    assert all(t > 0 for v in row['ms'].values() for t in v.values())
  with pytest.raises(SystemExit, match='unknown variants'):
    cpu_layers.main(['--variants', 'jax-matmul,nope'])


def test_ablations_undo_their_change(tmp_path):
  """Each ablation compiles a different step with the same dot/conv FLOPs (at this
  size every formulation is exact), and the patched module attributes are restored
  afterwards."""
  from osgan_jax.models import conv_ops, norms

  before = (
      conv_ops._transposed_strided,
      conv_ops._patch_conv_kernel_tangent,
      norms.GroupNorm,
  )
  result = ablate.main(
      [
          '--width',
          '8',
          '--resolution',
          '16',
          '--batch',
          '4',
          '--rounds',
          '1',
          '--malloc',
          'default',
          '--out',
          str(tmp_path / 'ablate.json'),
      ]
  )
  rows = result['rows']
  assert result['platform']['malloc_kept'] is False  # --malloc default
  assert set(rows) == set(ablate.ABLATIONS)
  for name, row in rows.items():
    assert row['same_hlo'] is False, name
    assert row['gflop_undone'] == pytest.approx(row['gflop_current'])
  assert before == (
      conv_ops._transposed_strided,
      conv_ops._patch_conv_kernel_tangent,
      norms.GroupNorm,
  )
  with pytest.raises(ValueError, match='unknown ablation'):
    ablate.main(['--ablations', 'nope'])


# ------------------------------------------------------------------ quality (issue 17)


def test_quality_verdict_rule():
  """Welch's t-test decides better/worse; a tight CI within 10% is 'same'."""
  from scipy import stats

  verdict = quality.verdict
  assert verdict([10.0, 10.5, 9.8], [20.0, 21.0, 19.5])['verdict'] == 'better'
  assert verdict([20.0, 21.0, 19.5], [10.0, 10.5, 9.8])['verdict'] == 'worse'
  assert verdict([10.0, 10.1, 9.9], [10.05, 9.95, 10.0])['verdict'] == 'same'
  wide = verdict([10.0, 30.0, 20.0], [12.0, 35.0, 15.0])
  assert wide['verdict'] == 'not distinguishable' and wide['p'] > 0.05
  # Close means, but too few seeds to bound the difference within 10%: not 'same'.
  assert verdict([10.0, 11.0], [10.2, 11.4])['verdict'] == 'not distinguishable'
  assert verdict([10.0], [20.0, 21.0])['verdict'] == 'not distinguishable'
  a, b = [10.0, 12.0, 11.0], [14.0, 13.0, 15.5]
  assert verdict(a, b)['p'] == pytest.approx(
      stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9
  )


def test_quality_summary_at_equal_steps_and_equal_time():
  """Two-stage 1.5x slower per step: at the one-stage final time it is at 2/3 of
  its steps, its FID there interpolated between evaluations."""
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
  e = quality.summarize(rows)['hinge']
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
  table = quality.markdown(rows, {'hinge': e})
  assert '| hinge | one-stage | 3 | 300 | 60 ± 0 | 71.00 ± 1.00 (64 samples) |' in table
  assert quality.value_at_time([10, 20], [300, 200], 5) is None
  assert quality.value_at_time([10, 20], [300, 200], 99) == 200


def test_quality_config_variants_and_bad_losses(capsys):
  """``stylegan2_tiny`` is an entry of its own config (its loss is non-saturating too):
  its runs get the study's settings, and its rows stay apart from the DCGAN's."""
  args = quality.parse_args(
      ['--gpu', '--losses', 'wgan,stylegan2_tiny', '--data-path', '/data/fmnist']
  )
  assert args.losses == ['wgan', 'stylegan2_tiny'] and args.workers == 8
  assert args.chunk_steps == args.steps == 4000  # one call per run
  short = quality.parse_args(['--gpu', '--steps', '20', '--eval-every', '10'])
  assert short.chunk_steps == 20 and quality.parse_args([]).chunk_steps == 1000
  config = quality.run_config(args, 'stylegan2_tiny', 'two', 3, 4000, 'inception')
  assert (config.loss, config.stage, config.seed) == ('non_saturating', 'two', 3)
  assert config.model.generator.channel_max == 64 and config.batch_size == 32
  assert config.data.path == '/data/fmnist' and config.evals.fid.features == 'inception'
  assert (config.evals.fid.num_samples, config.evals.fid.batch_size) == (10000, 250)
  wgan = quality.run_config(args, 'wgan', 'one', 0, 1000, 'classifier')
  assert (wgan.loss, wgan.model.discriminator.norm) == ('wgan', 'batch')
  assert wgan.optimizer.weight_clip == 0.01 and wgan.evals.fid.batch_size == 1000
  for argv, message in (
      (['--losses', 'hinge,nope'], '--losses: nope; choose from'),
      (['--tiny', '--losses', 'stylegan2_tiny'], 'configs of their own run at'),
  ):
    with pytest.raises(SystemExit):
      quality.parse_args(argv)
    assert message in capsys.readouterr().err

  rows = [
      {
          'variant': name,
          'config': config,
          'loss': 'non_saturating',
          'stage': stage,
          'seed': seed,
          'step': 100,
          'train_seconds': 10.0,
          'fid_classifier': fid + seed,
          'fid_inception': None,
      }
      for name, config, fid in (
          ('non_saturating', quality.CONFIG, 50.0),
          ('stylegan2_tiny', 'configs/stylegan2_tiny.py', 20.0),
      )
      for stage in quality.STAGES
      for seed in (0, 1)
  ]
  summary = quality.summarize(rows)
  assert set(summary) == {'non_saturating', 'stylegan2_tiny'}
  assert summary['stylegan2_tiny']['stages']['one']['fid_classifier'][0] == 20.5
  table = quality.markdown(rows, summary)
  assert '| stylegan2_tiny | two-stage | 2 | 100 |' in table
  assert '`stylegan2_tiny`: `configs/stylegan2_tiny.py` (its own model' in table
  assert len({quality.row_key(r) for r in rows}) == len(rows)  # same loss, apart


def test_inception_float16_copy_is_upcast_on_load(tmp_path, monkeypatch):
  """The GPU size's 42 MiB weights: float16 on disk, float32 in the network."""
  from osgan_jax.metrics import inception, inception_weights

  path = inception.default_weights_path()
  if path is None:
    pytest.skip(f'Inception weights missing: {inception.INSTALL_HINT}')
  monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path / 'cache'))
  out = str(tmp_path / 'inception_fp16.npz')
  assert inception_weights.export_converted(out) < 48 * 2**20
  reference = inception_weights.convert_file(path)
  loaded = inception_weights.load_inception_params(out, cache=False)['params']
  flat = {k: np.asarray(v) for k, v in inception.flatten_params(loaded).items()}
  assert set(flat) == set(reference)
  for k, v in flat.items():
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v, reference[k].astype(np.float16).astype(np.float32))
  np.savez(tmp_path / 'bad.npz', x=np.zeros(3))
  with pytest.raises(ValueError, match='not a converted Inception weights file'):
    inception_weights.read_converted(str(tmp_path / 'bad.npz'))


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


@pytest.mark.skipif(
    not all(
        os.path.exists(os.path.join(FASHION_MNIST, f'{s}-images-idx3-ubyte.gz'))
        for s in ('train', 't10k')
    ),
    reason='apt-get install dataset-fashion-mnist',
)
def test_quality_study_tiny_end_to_end(tmp_path):
  """Issue 17's study at its tiny size (16x16, 2 seeds, 1 loss, 4 steps, FID at 2, 4),
  its runs in 2 worker processes: the rows, their resumption from the runs' logs (one
  process), the table and the plots."""
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
    assert r['variant'] == r['loss'] == 'non_saturating' and r['stage'] in ('one', 'two')
    assert r['config'] == quality.CONFIG
    assert np.isfinite(r['fid_classifier']) and r['fid_classifier'] > 0
    assert r['fid_inception'] is None and r['fid_inception_samples'] is None
    assert r['fid_classifier_samples'] == 64 and r['fid_classifier_real'] == 256
    assert 0.1 < r['classifier_test_accuracy'] <= 1 and r['fid_classifier_seconds'] > 0
    assert r['images'] == r['step'] * 16 and r['study'] == 'tiny'
    runs.setdefault((r['stage'], r['seed']), []).append(r)
  assert sorted(runs) == [('one', 0), ('one', 1), ('two', 0), ('two', 1)]
  for run in runs.values():
    assert [r['step'] for r in run] == [2, 4]
    assert 0 <= run[0]['train_seconds'] < run[1]['train_seconds']
  assert '--tiny' in (out / 'commands.txt').read_text()
  assert '--shard' not in (out / 'commands.txt').read_text()  # the workers' own
  table = (out / 'tiny.md').read_text()
  assert '| non_saturating | one-stage | 2 | 4 |' in table
  assert '| non_saturating | two-stage | 2 | 4 |' in table
  assert 'Welch t-test' in table and 'fid_classifier' in table
  for name in ('tiny_fid_vs_steps.png', 'tiny_fid_vs_seconds.png'):
    image = np.asarray(Image.open(out / name).convert('L'), np.float32)
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 10

  # Resume: rows missing from the jsonl come back from the runs' logs, unchanged,
  # without training; present rows are not rewritten.
  with open(jsonl, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows[:-2])
  assert quality.main(argv) == 0
  again = quality.read_rows(str(jsonl))
  assert len(again) == len(rows) and len(open(jsonl).readlines()) == len(rows)
  key = lambda r: (r['stage'], r['seed'], r['step'])  # noqa: E731
  assert {key(r): r['fid_classifier'] for r in again} == {
      key(r): r['fid_classifier'] for r in rows
  }

  # Render from the rows alone.
  os.remove(out / 'tiny_fid_vs_steps.png')
  os.remove(out / 'tiny.md')
  assert quality.main(['--render', '--study', 'tiny', '--out', str(out)]) == 0
  assert (out / 'tiny_fid_vs_steps.png').exists() and (
      out / 'tiny.md'
  ).read_text() == table


def test_quality_gpu_script_says_what_its_call_lacks(tmp_path):
  """The device script from a checkout without its carried folders: each step fails
  with one line that names what to carry; no step: its usage."""
  (tmp_path / 'experiments').mkdir()
  for name in ('quality_gpu.sh', 'device_env.sh'):
    shutil.copy(os.path.join(REPO, 'experiments', name), tmp_path / 'experiments')
  env = {**os.environ, 'OUT': str(tmp_path / 'out'), 'FASHION_MNIST': str(tmp_path)}

  def script(*args):
    return subprocess.run(
        ['bash', str(tmp_path / 'experiments' / 'quality_gpu.sh'), *args],
        capture_output=True,
        text=True,
        env=env,
    )

  usage = script()
  assert usage.returncode == 2 and 'bash experiments/quality_gpu.sh pack' in usage.stdout
  for step, message in (
      ('pack', f'no {tmp_path}/train-images-idx3-ubyte.gz: apt-get install'),
      ('upload', 'no .inception/inception_fp16.npz: carry .inception (pack first)'),
      ('run', 'no .quality_data: carry it (pack first)'),
  ):
    result = script(step)
    assert result.returncode == 1, (step, result.stderr)
    assert result.stderr.strip().startswith(message), (step, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1


def test_loop_throughput_rows_at_a_tiny_size(tmp_path, capsys):
  """Issue 14's benchmark end to end at toy sizes: both sources, the trivial step
  through the loop, and the real one-/two-stage steps alone and through main."""
  out = tmp_path / 'out'
  loop_throughput.main(
      [
          '--images',
          '24',
          '--resolution',
          '16',
          '--batch',
          '8',
          '--trivial_steps',
          '20',
          '--real',
          '--real_steps',
          '4',
          '--width',
          '4',
          '--rounds',
          '2',
          '--per_call',
          '1',
          '--work',
          str(tmp_path / 'work'),
          '--out',
          str(out),
      ]
  )
  lines = [
      json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith('{')
  ]
  saved = json.loads((out / 'loop_throughput.json').read_text())
  assert saved['rows'] == lines
  keys = [(r['source'], r['step'], r['through_loop']) for r in lines]
  assert keys == [
      ('prepared', 'none', False),
      ('prepared', 'trivial', True),
      ('folder', 'none', False),
      ('folder', 'trivial', True),
      ('device_batch', 'one', False),
      ('device_batch', 'two', False),
      ('prepared', 'one', True),
      ('prepared', 'two', True),
  ]
  for r in lines:
    assert r['images_per_s'] > 0 and r['device'].startswith('cpu') and r['batch'] == 8
  # The trivial runs are the loop's own: its checkpoint and metrics are there.
  assert os.listdir(tmp_path / 'work' / 'trivial_prepared' / 'checkpoints') == ['20']
  assert 'through main / alone' in loop_throughput.summary(lines)


# ------------------------------------------------------------------ FLOPs (issue 15)

import dataclasses  # noqa: E402
import subprocess  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import flops as flop_count  # noqa: E402  pylint: disable=import-error

_DN = ('NHWC', 'HWIO', 'NHWC')


def _conv(**kw):
  return lambda x, w: lax.conv_general_dilated(x, w, dimension_numbers=_DN, **kw)


def _kernel_cotangent(**kw):
  conv = _conv(**kw)
  return lambda x, w, ct: jax.vjp(lambda w: conv(x, w), w)[1](ct)[0]


def _input_cotangent(**kw):
  conv = _conv(**kw)
  return lambda x, w, ct: jax.vjp(lambda x: conv(x, w), x)[1](ct)[0]


_CONV_CASES = {
    'same_stride1': (
        _conv(window_strides=(1, 1), padding='SAME'),
        [(2, 9, 9, 3), (3, 3, 3, 5)],
    ),
    'stride2_pad1': (
        _conv(window_strides=(2, 2), padding=((1, 1), (1, 1))),
        [(2, 16, 16, 3), (4, 4, 3, 5)],
    ),
    'transposed_stride2': (
        lambda x, w: lax.conv_transpose(x, w, (2, 2), 'SAME', dimension_numbers=_DN),
        [(2, 8, 8, 3), (4, 4, 3, 5)],
    ),
    'lhs_dilation_uneven_pads': (
        _conv(window_strides=(1, 1), padding=((2, 3), (1, 0)), lhs_dilation=(3, 2)),
        [(2, 7, 6, 4), (3, 2, 4, 5)],
    ),
    'rhs_dilation': (
        _conv(window_strides=(1, 1), padding=((2, 2), (2, 2)), rhs_dilation=(2, 2)),
        [(2, 9, 9, 3), (3, 3, 3, 5)],
    ),
    'feature_groups': (
        _conv(window_strides=(1, 1), padding='SAME', feature_group_count=4),
        [(2, 9, 9, 8), (3, 3, 2, 12)],
    ),
    'depthwise': (
        _conv(window_strides=(1, 1), padding='VALID', feature_group_count=8),
        [(2, 9, 9, 8), (3, 3, 1, 8)],
    ),
    'kernel_cotangent_grouped': (
        _kernel_cotangent(
            window_strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=4
        ),
        [(2, 8, 8, 8), (4, 4, 2, 12), (2, 4, 4, 12)],
    ),
    'input_cotangent_stride2': (
        _input_cotangent(window_strides=(2, 2), padding=((1, 1), (1, 1))),
        [(2, 8, 8, 8), (4, 4, 8, 12), (2, 4, 4, 12)],
    ),
    'nch_1d': (
        lambda x, w: lax.conv_general_dilated(x, w, (1,), ((1, 1),)),
        [(2, 3, 10), (5, 3, 3)],
    ),
}


@pytest.mark.parametrize('case', sorted(_CONV_CASES))
def test_conv_flops_equal_xla_count(case):
  """The analytic convolution count (padding taps and lhs-dilation holes excluded)
  is XLA's own, for every padding, dilation and grouping the models use."""
  fn, shapes = _CONV_CASES[case]
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  count = flop_count.analytic_flops(fn, *args)
  assert count.elementwise == 0
  assert count.flops == flop_count.cpu_lowering_flops(fn, *args)['flops'] > 0


def test_conv_valid_positions_by_hand():
  # 'SAME' 3x3 on 9 pixels: the two edge outputs lose one tap each -> 27 - 2.
  assert flop_count.conv_valid_positions(9, 3, 9, 1, 1, 1, 1) == 25
  # VALID, stride 1: every tap of every output is real.
  assert flop_count.conv_valid_positions(9, 3, 7, 1, 0, 1, 1) == 21
  # Transposed conv (lhs dilation 2, pad 2) 4 -> 8 with a 4-tap kernel: each input
  # pixel meets every tap once (4 x 4 = 16) but for the two the crop cuts at the
  # edges; dense counting would say 8 x 4 = 32.
  assert flop_count.conv_valid_positions(4, 4, 8, 1, 2, 2, 1) == 14
  # 2 x B x C_out x C_in/groups x positions.
  assert flop_count.conv_flops(
      (2, 9, 9, 8),
      (3, 3, 2, 12),
      (2, 9, 9, 12),
      window_strides=(1, 1),
      padding=((1, 1), (1, 1)),
      dimension_numbers=lax.conv_dimension_numbers((2, 9, 9, 8), (3, 3, 2, 12), _DN),
      feature_group_count=4,
  ) == (2 * 2 * 12 * 2 * 25 * 25)


def test_count_jaxpr_walks_control_flow_and_prunes_dead_code():
  mm = 2 * 4 * 8 * 8  # one [4, 8] @ [8, 8]

  @jax.custom_jvp
  def twice(x, w):
    return x @ w @ w

  twice.defjvp(lambda p, t: (twice(*p), t[0] @ p[1] @ p[1]))

  def f(x, w, p):
    unused = x @ w @ w @ w  # pruned (DCE)
    del unused
    y = lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]  # 3 mm
    y = lax.cond(p > 0, lambda y: y @ w @ w, lambda y: y, y)  # 0 or 2 mm
    y = lax.while_loop(lambda c: jnp.sum(c) < 0, lambda c: c @ w, y)  # 1 mm, once
    y = jax.jit(twice)(y, w)  # 2 mm
    return y.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16)  # 1 mm in bf16

  args = (
      jax.ShapeDtypeStruct((4, 8), jnp.float32),
      jax.ShapeDtypeStruct((8, 8), jnp.float32),
      jax.ShapeDtypeStruct((), jnp.int32),
  )
  count = flop_count.analytic_flops(f, *args)
  assert count.by_dtype == {'float32': 6 * mm, 'bfloat16': mm}
  assert count.flops == 7 * mm and count.flops_max_branch == 9 * mm
  assert count.conds == 1 and count.while_loops == 1
  assert count.by_primitive == {'dot_general': 7 * mm}
  high = flop_count.analytic_flops(
      lambda a, b: jnp.dot(a, b, precision=lax.Precision.HIGHEST), *args[:2]
  )
  assert high.by_dtype == {'float32:highest': mm}


def test_device_peaks_and_fraction_of_peak():
  peaks = flop_count.device_peaks
  assert peaks('NVIDIA H100 80GB HBM3')['bf16'] == 989.5  # H100 SXM
  assert peaks('NVIDIA H100 PCIe')['tf32'] == 378.0
  assert peaks('NVIDIA H200')['tf32'] == 494.5
  assert peaks('NVIDIA A100-SXM4-80GB')['bf16'] == 312.0
  assert peaks('NVIDIA L4')['bf16'] == 121.0 and peaks('NVIDIA L40S') is None
  assert peaks('TPU v4')['bf16'] == 275.0 and peaks('TPU v5 lite')['bf16'] == 197.0
  assert peaks('TPU v5p')['bf16'] == 459.0 and peaks('TPU v6 lite')['bf16'] == 918.0
  assert peaks('cpu') is None and peaks(jax.devices()[0].device_kind) is None
  h200 = peaks('NVIDIA H200')
  row = {'flops': 3e12, 'flops_by_dtype': {'bfloat16': 2e12, 'float32': 1e12}}
  out = flop_count.peak_fields(row, 0.01, h200)
  ideal = 2e12 / 989.5e12 + 1e12 / 494.5e12  # bf16 at the bf16 peak, f32 at TF32
  assert out['tflops_per_s'] == pytest.approx(300.0)
  assert out['fraction_of_peak'] == pytest.approx(ideal / 0.01)
  assert out['peak_tflops'] == pytest.approx(3.0 / ideal)
  assert out['peak_classes'] == ['bf16', 'tf32']
  assert flop_count.peak_fields(row, None, h200)['fraction_of_peak'] is None
  assert flop_count.peak_fields(row, 0.01, None)['fraction_of_peak'] is None


def test_parse_overrides():
  assert flop_count.parse_overrides(
      ['batch_size=64', 'data.name=folder', 'model.generator.conv_clamp=256']
  ) == {'batch_size': 64, 'data.name': 'folder', 'model.generator.conv_clamp': 256}
  with pytest.raises(ValueError, match='KEY=VALUE'):
    flop_count.parse_overrides(['batch_size'])


@pytest.mark.parametrize(
    'impl,variants',
    [('auto', tuple(bench.VARIANTS)), ('xla', ('one_stage', 'two_stage'))],
)
def test_analytic_flops_agree_with_cpu_lowering_for_dcgan(impl, variants):
  """Issue 15: the DCGAN 64 config's steps (d=64, 16x16, batch 8), each variant, with
  the CPU's patch-matmul convolutions ('auto' here) and with XLA's convolutions ('xla',
  what a GPU runs): the analytic count plus XLA-style elementwise FLOPs is XLA:CPU's
  count to 1%; dots and convolutions alone are over 95% of it."""
  spec = bench.RowSpec(
      'configs/dcgan_celeba.py',
      {
          'data.resolution': 16,
          'batch_size': 8,
          'model.generator.width': 64,
          'model.discriminator.width': 64,
      },
  )
  extra = (
      None
      if impl == 'auto'
      else {'model.generator.conv_impl': impl, 'model.discriminator.conv_impl': impl}
  )
  _, gan, _, batch, abstract = bench.prepare(spec, extra=extra)
  rng = jax.random.PRNGKey(1)
  counts, fns = {}, {}
  for variant in variants:
    jitted, fns[variant] = bench.variant_step(gan, variant)
    counts[variant] = flop_count.analytic_flops(jitted, abstract, batch, rng)
  xla = flop_count.cpu_lowering_flops_many(fns, abstract, batch, rng, donate_argnums=0)
  for variant, count in counts.items():
    cpu = xla[variant]['flops']
    assert cpu == pytest.approx(count.flops_xla_convention, rel=0.01), variant
    assert 0.95 < count.flops_max_branch / cpu <= 1.0, variant
    primitive = 'dot_general' if impl == 'auto' else 'conv_general_dilated'
    assert count.by_primitive[primitive] > 0.5 * count.flops
  one = counts['one_stage']
  # The exact path's branch (a D forward and input backward on the fakes) is in the
  # most-expensive-branch count only.
  assert one.conds == 1 and one.flops_max_branch > 1.1 * one.flops
  assert counts['two_stage'].flops > 1.2 * one.flops
  if 'one_stage_approx' in counts:
    assert counts['one_stage_approx'].flops == one.flops
    assert counts['official_two_stage'].flops > counts['two_stage'].flops


def test_compile_row_counts_an_accelerator_step_on_the_cpu(monkeypatch):
  """On an accelerator, ``cpu_flops`` compiles every variant again for the CPU; here a
  pretended GPU backend takes that path (its 'GPU' compile is a CPU one, so the two
  XLA counts are equal), tracing the accelerators' program (XLA convolutions)."""
  monkeypatch.setattr(bench.jax, 'default_backend', lambda: 'gpu')
  spec = bench.RowSpec(TINY.config, TINY.overrides, variants=('one_stage', 'two_stage'))
  c = bench.compile_row('tiny', spec, cpu_flops=True, log=lambda s: None)
  for variant, row in c.rows.items():
    assert row['xla_backend'] == 'gpu'
    assert row['flops_xla_cpu'] == row['flops_xla'] > 0, variant
    assert row['flops_xla_cpu_compile_s'] > 0
    assert row['xla_cpu_over_xla_convention'] == pytest.approx(
        row['flops_xla'] / row['flops_xla_convention']
    )
    assert set(row['flops_by_primitive']) == {'conv_general_dilated'}
  off = bench.compile_row(
      'tiny', dataclasses.replace(spec, variants=('one_stage',)), log=lambda s: None
  )
  assert off.rows['one_stage']['flops_xla_cpu'] is None  # 'gpu' without cpu_flops


def test_device_suite_tiny_end_to_end(tmp_path):
  """``--suite=device --tiny`` as a user runs it: every row (no PyTorch rows without
  CUDA), fresh-process compiles for DCGAN, overrides applied, the JSON's fields."""
  out = tmp_path / 'device'
  result = subprocess.run(
      [
          sys.executable,
          os.path.join(os.path.dirname(bench.__file__), 'benchmark_speed.py'),
          '--suite=device',
          '--tiny',
          '--override',
          'batch_size=4',
          '--out',
          str(out),
      ],
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| model | variant | ms/step |' in result.stdout
  [path] = [p for p in os.listdir(out) if p.endswith('.json')]
  assert path == 'tiny_cpu_cpu.json'
  record = json.loads((out / path).read_text())
  assert (out / path.replace('.json', '.csv')).exists()
  assert record['suite'] == 'device' and record['tiny'] is True
  assert record['device'].startswith('cpu:') and record['peaks_tflops'] is None
  assert record['overrides'] == {'batch_size': 4} and record['skipped'] == []
  assert record['errors'] == {}
  assert set(record['row_seconds']) == set(bench.DEVICE_SUITE)
  rows = record['rows']
  by = {(r['model'], r['variant']): r for r in rows}

  dcgan = {v: by[('dcgan64_d128', v)] for v in bench.VARIANTS}
  for v, r in dcgan.items():
    assert r['batch'] == 4 and r['mode'] == 'timed', v
    assert r['flops'] > 0 and r['flops_xla'] > 0
    assert r['flops_xla_cpu'] == r['flops_xla']  # a CPU backend: the same compile
    assert r['xla_backend'] == 'cpu'
    assert r['tflops_per_s'] == pytest.approx(
        r['flops'] / (r['step_ms_median'] / 1e3) / 1e12
    )
    assert r['fraction_of_peak'] is None and r['peak_tflops'] is None
    assert r['compile_mode'] == 'subprocess'
    assert 0 < r['compile_s'] < r['compile_fresh_process_s']
    # The fresh child's executable came back through the shared compilation cache.
    assert r['compile_in_process_s'] < 0.5 * r['compile_s'], v
  assert dcgan['one_stage']['flops'] == dcgan['one_stage_approx']['flops']
  assert dcgan['one_stage']['flops_max_branch'] > dcgan['one_stage']['flops']
  for r in rows:  # where a row's time went, beside its compiles
    if r['model'] in bench.DEVICE_ROWS:
      assert r['setup_build_s'] > 0 and r['setup_init_s'] > 0, (r['model'], r['variant'])
      assert r['setup_probe_s'] >= 0  # 0 where the config settles D's coupling
      assert r['first_call_s'] > 0, (r['model'], r['variant'])

  for name in ('stylegan2_256_f32', 'stylegan2_256_bf16'):
    for v in ('one_stage', 'two_stage'):
      r = by[(name, v)]
      assert r['batch'] == 4 and r['resolution'] == 8 and r['mode'] == 'timed'
      assert r['compile_mode'] == 'in_process' and r['tflops_per_s'] > 0
      dtypes = set(r['flops_by_dtype'])
      assert dtypes == (
          {'float32', 'bfloat16'} if name.endswith('bf16') else {'float32'}
      ), (name, v)
  loop = [r for r in rows if r['model'] == 'loop_dcgan64']
  assert [r['variant'] for r in loop] == [
      'prepared/none',
      'prepared/trivial/through_loop',
  ]
  assert all(r['images_per_s'] > 0 and r['batch'] == 4 for r in loop)
  try:
    import torch  # pylint: disable=import-outside-toplevel

    has_cuda = torch.cuda.is_available()
  except ImportError:
    has_cuda = False
  torch_rows = [r for r in rows if r['model'].startswith('torch')]
  assert bool(torch_rows) == has_cuda
  assert bench.main(['--render', str(out / path)]) == 0


def test_device_suite_budget_skips_rows_and_prints_their_command(tmp_path):
  """Rows past ``--budget-s`` are skipped, recorded, and the command that measures
  them (same overrides) is printed, so a user splits the suite over two runs."""
  out = tmp_path / 'device'
  script = os.path.join(os.path.dirname(bench.__file__), 'benchmark_speed.py')
  result = subprocess.run(
      [
          sys.executable,
          script,
          '--suite=device',
          '--tiny',
          '--budget-s',
          '0',
          '--models',
          'dcgan64_d128,loop',
          '--override',
          'batch_size=4',
          '--out',
          str(out),
      ],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((out / 'tiny_cpu_cpu.json').read_text())
  assert record['skipped'] == ['dcgan64_d128', 'loop'] and record['rows'] == []
  [line] = [l for l in result.stdout.splitlines() if l.startswith('skipped (budget)')]
  command = line.split('run them with: ')[1]
  assert shlex.split(command) == [
      'python',
      'experiments/benchmark_speed.py',
      '--suite=device',
      '--models',
      'dcgan64_d128,loop',
      '--out',
      str(out / 'tiny_cpu_cpu_rest.json'),
      '--tiny',
      '--override=batch_size=4',
  ]
