"""Tests of the issue 6 measurement scripts (experiments/), without real training."""

import csv
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments'))

import benchmark_speed as bench  # noqa: E402  pylint: disable=import-error
import compare_quality as quality  # noqa: E402  pylint: disable=import-error
import ablate_cpu_step as ablate  # noqa: E402  pylint: disable=import-error
import cpu_layers  # noqa: E402  pylint: disable=import-error
import cpu_throughput as throughput  # noqa: E402  pylint: disable=import-error
import loop_throughput  # noqa: E402  pylint: disable=import-error

# A DCGAN small enough to compile four steps in seconds, built through a real config.
TINY = bench.RowSpec('configs/dcgan_fashion_mnist.py', {
    'data.resolution': 16, 'batch_size': 4, 'z_dim': 8,
    'model.generator.width': 4, 'model.discriminator.width': 4,
    'model.discriminator.norm': 'none'})


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

  times = bench.run_interleaved({n: make(n) for n in cost}, rounds=4, warmup=1,
                                clock=clock)
  assert calls[:3] == ['a', 'b', 'c']  # warm-up
  assert calls[3:] == ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b', 'a', 'b', 'c']
  assert times == {'a': [1.0] * 4, 'b': [2.0] * 4, 'c': [4.0] * 4}


def test_ratio_summary_uses_per_round_ratios():
  # Round 2 is slow for everyone (machine load): per-round ratios ignore it.
  times = {'one_stage': [1.0, 1.0, 3.0, 1.0, 1.0],
           'two_stage': [1.5, 1.2, 4.5, 1.4, 1.3]}
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
    assert r['ratio_to_one_stage_min'] <= r['ratio_to_one_stage_median'] <= (
        r['ratio_to_one_stage_max'])
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
  for name in ('dcgan32', 'dcgan64', 'dcgan64_b128', 'wgan64', 'lsgan64', 'hinge64'):
    spec = bench.ROWS[name]
    assert os.path.exists(os.path.join(repo, '..', spec.config)), name
  assert bench.ROWS['dcgan64'].overrides['model.generator.width'] == 64
  assert bench.ROWS['dcgan64_b128'].overrides['batch_size'] == 128


# ------------------------------------------------------------------ quality

def _write_metrics(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')
    f.write('{"step": 9')  # a partly written last line is ignored


def test_cpu_throughput_rows_side_by_side(tmp_path):
  """Issue 8's script at a tiny size: both conv implementations, both stages,
  interleaved, with XLA's FLOPs; one-stage does less matmul work than two-stage."""
  out = tmp_path / 'throughput.json'
  result = throughput.main(['--width', '8', '--resolution', '16', '--batch', '4',
                            '--rounds', '2', '--variants', 'jax-matmul,jax-xla',
                            '--malloc', 'default', '--out', str(out)])
  saved = json.loads(out.read_text())['rows']
  assert saved.keys() == result['rows'].keys() == {'jax-matmul', 'jax-xla'}
  assert result['platform']['malloc_kept'] is False   # --malloc default
  for name in ('jax-matmul', 'jax-xla'):
    row = result['rows'][name]
    for stage in ('one', 'two'):
      assert len(row[stage]['seconds']) == 2
      assert saved[name][stage]['seconds'] == row[stage]['seconds']
      assert row[stage]['ms_per_step'] > 0
      assert row[stage]['images_per_s'] == pytest.approx(
          4 / np.median(row[stage]['seconds']))
    assert row['one']['hlo_gflop'] < row['two']['hlo_gflop']
    ratios = np.asarray(row['two']['seconds']) / np.asarray(row['one']['seconds'])
    assert row['two_over_one']['median'] == pytest.approx(np.median(ratios))


def test_cpu_layers_times_every_dcgan_conv(tmp_path):
  """The per-layer script covers every stride-2 conv of the step at its shape, with
  exact FLOPs, both JAX implementations agreeing, and a row per variant present."""
  layers = cpu_layers.dcgan_layers(width=8, resolution=16, batch=4)
  assert [(l['name'], l['batch'], l['size'], l['c_in'], l['c_out']) for l in layers] == [
      ('D conv0', 8, 16, 3, 8), ('D conv1', 8, 8, 8, 16),
      ('G convT1', 4, 4, 16, 8), ('G convT2', 4, 8, 8, 3)]
  # conv: output pixels x 16 taps x C_in x C_out; transposed: input pixels x ...
  assert layers[1]['gflop'] == pytest.approx(2 * 8 * 4 * 4 * 16 * 8 * 16 / 1e9)
  assert layers[2]['gflop'] == pytest.approx(2 * 4 * 4 * 4 * 16 * 16 * 8 / 1e9)
  out = tmp_path / 'layers.json'
  result = cpu_layers.main(['--width', '8', '--resolution', '16', '--batch', '4',
                            '--rounds', '1', '--variants', 'jax-matmul,jax-xla,gemm',
                            '--malloc', 'default', '--out', str(out)])
  assert json.loads(out.read_text())['rows'] == result['rows']
  assert result['variants'] == ['jax-matmul', 'jax-xla', 'gemm']
  assert result['platform']['malloc_kept'] is False   # --malloc default
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
  before = (conv_ops._transposed_strided, conv_ops._patch_conv_kernel_tangent,
            norms.GroupNorm)
  result = ablate.main(['--width', '8', '--resolution', '16', '--batch', '4',
                        '--rounds', '1', '--malloc', 'default',
                        '--out', str(tmp_path / 'ablate.json')])
  rows = result['rows']
  assert result['platform']['malloc_kept'] is False   # --malloc default
  assert set(rows) == set(ablate.ABLATIONS)
  for name, row in rows.items():
    assert row['same_hlo'] is False, name
    assert row['gflop_undone'] == pytest.approx(row['gflop_current'])
  assert before == (conv_ops._transposed_strided, conv_ops._patch_conv_kernel_tangent,
                    norms.GroupNorm)
  with pytest.raises(ValueError, match='unknown ablation'):
    ablate.main(['--ablations', 'nope'])


def test_train_seconds_from_metrics_jsonl(tmp_path):
  path = str(tmp_path / 'run' / 'metrics.jsonl')
  _write_metrics(path, [
      {'step': 50, 'loss_d': 1.0, 'steps_per_sec': 5.0},
      {'step': 100, 'steps_per_sec': 2.5},
      {'step': 100, 'fid': 300.0},          # FID-only line: no time
      {'step': 120, 'steps_per_sec': 10.0}])
  records = quality.read_metrics(path)
  assert len(records) == 4
  assert quality.train_seconds(records) == pytest.approx(10 + 20 + 2)
  assert quality.train_seconds(records, up_to_step=100) == pytest.approx(30)


def test_value_at_time_interpolates():
  assert quality.value_at_time([10, 20, 30], [300, 200, 100], 25) == pytest.approx(150)
  assert quality.value_at_time([10, 20, 30], [300, 200, 100], 5) is None
  assert quality.value_at_time([10, 20, 30], [300, 200, 100], 99) == 100


def _synthetic_points():
  """Two stages x 3 seeds x 3 evaluation points; two-stage is 1.5x slower per step."""
  rng = np.random.RandomState(0)
  points = []
  for loss in ('non_saturating', 'minimax'):
    for stage, sec_per_step in (('one', 0.2), ('two', 0.3)):
      for seed in range(3):
        for step in (100, 200, 300):
          points.append({'loss': loss, 'stage': stage, 'seed': seed, 'step': step,
                         'images': step * 64,
                         'wall_s': step * sec_per_step * (1 + 0.05 * seed),
                         'fid': 400 - step * 0.5 + rng.uniform(-5, 5),
                         'kid_mean': 0.4 - step * 1e-3, 'kid_std': 0.01})
  return points


def test_quality_outputs_tables_and_plots(tmp_path):
  points = _synthetic_points()
  curves = quality.aggregate(points)
  c = curves[('minimax', 'two')]
  assert c['step'] == [100, 200, 300] and c['n_seeds'] == [3, 3, 3]
  assert c['fid_min'][0] <= c['fid_mean'][0] <= c['fid_max'][0]

  rows = {(r['loss'], r['stage']): r for r in quality.summarize(points)}
  one, two = rows[('minimax', 'one')], rows[('minimax', 'two')]
  # The budget is the faster (one-stage) variant's final time; two-stage has not
  # reached step 300 by then, so its FID there is worse (higher) than its final FID.
  assert one['budget_s'] == pytest.approx(one['wall_s_mean'])
  assert one['fid_at_budget_mean'] == pytest.approx(one['fid_final_mean'], abs=6)
  assert two['fid_at_budget_mean'] > two['fid_final_mean'] + 20
  assert two['wall_s_mean'] > one['wall_s_mean']

  out = str(tmp_path / 'quality')
  paths = quality.write_outputs(points, out, {'command': 'test'})
  for name in ('fid_minimax.png', 'fid_non_saturating.png'):
    path = os.path.join(out, name)
    assert path in paths['plots']
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  table = open(os.path.join(out, 'summary.md')).read()
  assert '| minimax | one-stage | 3 | 300 |' in table
  assert len(json.load(open(os.path.join(out, 'quality.json')))['points']) == len(points)
  with open(os.path.join(out, 'quality.csv')) as f:
    assert len(list(csv.DictReader(f))) == len(points)
  os.remove(os.path.join(out, 'fid_minimax.png'))
  assert quality.main(['--render', '--out', out]) == 0  # tables and plots again
  assert os.path.exists(os.path.join(out, 'fid_minimax.png'))


def test_loop_throughput_rows_at_a_tiny_size(tmp_path, capsys):
  """Issue 14's benchmark end to end at toy sizes: both sources, the trivial step
  through the loop, and the real one-/two-stage steps alone and through main."""
  out = tmp_path / 'out'
  loop_throughput.main(['--images', '24', '--resolution', '16', '--batch', '8',
                        '--trivial_steps', '20', '--real', '--real_steps', '4',
                        '--width', '4', '--rounds', '2', '--per_call', '1',
                        '--work', str(tmp_path / 'work'), '--out', str(out)])
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()
           if l.startswith('{')]
  saved = json.loads((out / 'loop_throughput.json').read_text())
  assert saved['rows'] == lines
  keys = [(r['source'], r['step'], r['through_loop']) for r in lines]
  assert keys == [('prepared', 'none', False), ('prepared', 'trivial', True),
                  ('folder', 'none', False), ('folder', 'trivial', True),
                  ('device_batch', 'one', False), ('device_batch', 'two', False),
                  ('prepared', 'one', True), ('prepared', 'two', True)]
  for r in lines:
    assert r['images_per_s'] > 0 and r['device'].startswith('cpu') and r['batch'] == 8
  # The trivial runs are the loop's own: its checkpoint and metrics are there.
  assert os.listdir(tmp_path / 'work' / 'trivial_prepared' / 'checkpoints') == ['20']
  assert 'through main / alone' in loop_throughput.summary(lines)
