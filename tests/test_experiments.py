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
    'same_stride1': (_conv(window_strides=(1, 1), padding='SAME'),
                     [(2, 9, 9, 3), (3, 3, 3, 5)]),
    'stride2_pad1': (_conv(window_strides=(2, 2), padding=((1, 1), (1, 1))),
                     [(2, 16, 16, 3), (4, 4, 3, 5)]),
    'transposed_stride2': (lambda x, w: lax.conv_transpose(
        x, w, (2, 2), 'SAME', dimension_numbers=_DN), [(2, 8, 8, 3), (4, 4, 3, 5)]),
    'lhs_dilation_uneven_pads': (_conv(window_strides=(1, 1), padding=((2, 3), (1, 0)),
                                       lhs_dilation=(3, 2)),
                                 [(2, 7, 6, 4), (3, 2, 4, 5)]),
    'rhs_dilation': (_conv(window_strides=(1, 1), padding=((2, 2), (2, 2)),
                           rhs_dilation=(2, 2)), [(2, 9, 9, 3), (3, 3, 3, 5)]),
    'feature_groups': (_conv(window_strides=(1, 1), padding='SAME',
                             feature_group_count=4), [(2, 9, 9, 8), (3, 3, 2, 12)]),
    'depthwise': (_conv(window_strides=(1, 1), padding='VALID', feature_group_count=8),
                  [(2, 9, 9, 8), (3, 3, 1, 8)]),
    'kernel_cotangent_grouped': (
        _kernel_cotangent(window_strides=(2, 2), padding=((1, 1), (1, 1)),
                          feature_group_count=4),
        [(2, 8, 8, 8), (4, 4, 2, 12), (2, 4, 4, 12)]),
    'input_cotangent_stride2': (
        _input_cotangent(window_strides=(2, 2), padding=((1, 1), (1, 1))),
        [(2, 8, 8, 8), (4, 4, 8, 12), (2, 4, 4, 12)]),
    'nch_1d': (lambda x, w: lax.conv_general_dilated(x, w, (1,), ((1, 1),)),
               [(2, 3, 10), (5, 3, 3)]),
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
      (2, 9, 9, 8), (3, 3, 2, 12), (2, 9, 9, 12), window_strides=(1, 1),
      padding=((1, 1), (1, 1)), dimension_numbers=lax.conv_dimension_numbers(
          (2, 9, 9, 8), (3, 3, 2, 12), _DN), feature_group_count=4) == (
              2 * 2 * 12 * 2 * 25 * 25)


def test_count_jaxpr_walks_control_flow_and_prunes_dead_code():
  mm = 2 * 4 * 8 * 8   # one [4, 8] @ [8, 8]

  @jax.custom_jvp
  def twice(x, w):
    return x @ w @ w

  twice.defjvp(lambda p, t: (twice(*p), t[0] @ p[1] @ p[1]))

  def f(x, w, p):
    unused = x @ w @ w @ w                                       # pruned (DCE)
    del unused
    y = lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]   # 3 mm
    y = lax.cond(p > 0, lambda y: y @ w @ w, lambda y: y, y)         # 0 or 2 mm
    y = lax.while_loop(lambda c: jnp.sum(c) < 0, lambda c: c @ w, y)  # 1 mm, once
    y = jax.jit(twice)(y, w)                                          # 2 mm
    return y.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16)            # 1 mm in bf16

  args = (jax.ShapeDtypeStruct((4, 8), jnp.float32),
          jax.ShapeDtypeStruct((8, 8), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32))
  count = flop_count.analytic_flops(f, *args)
  assert count.by_dtype == {'float32': 6 * mm, 'bfloat16': mm}
  assert count.flops == 7 * mm and count.flops_max_branch == 9 * mm
  assert count.conds == 1 and count.while_loops == 1
  assert count.by_primitive == {'dot_general': 7 * mm}
  high = flop_count.analytic_flops(
      lambda a, b: jnp.dot(a, b, precision=lax.Precision.HIGHEST), *args[:2])
  assert high.by_dtype == {'float32:highest': mm}


def test_device_peaks_and_fraction_of_peak():
  peaks = flop_count.device_peaks
  assert peaks('NVIDIA H100 80GB HBM3')['bf16'] == 989.5    # H100 SXM
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
  ideal = 2e12 / 989.5e12 + 1e12 / 494.5e12   # bf16 at the bf16 peak, f32 at TF32
  assert out['tflops_per_s'] == pytest.approx(300.0)
  assert out['fraction_of_peak'] == pytest.approx(ideal / 0.01)
  assert out['peak_tflops'] == pytest.approx(3.0 / ideal)
  assert out['peak_classes'] == ['bf16', 'tf32']
  assert flop_count.peak_fields(row, None, h200)['fraction_of_peak'] is None
  assert flop_count.peak_fields(row, 0.01, None)['fraction_of_peak'] is None


def test_parse_overrides():
  assert flop_count.parse_overrides(['batch_size=64', 'data.name=folder',
                                     'model.generator.conv_clamp=256']) == {
      'batch_size': 64, 'data.name': 'folder', 'model.generator.conv_clamp': 256}
  with pytest.raises(ValueError, match='KEY=VALUE'):
    flop_count.parse_overrides(['batch_size'])


@pytest.mark.parametrize('impl,variants', [
    ('auto', tuple(bench.VARIANTS)), ('xla', ('one_stage', 'two_stage'))])
def test_analytic_flops_agree_with_cpu_lowering_for_dcgan(impl, variants):
  """Issue 15: the DCGAN 64 config's steps (d=64, 16x16, batch 8), each variant, with
  the CPU's patch-matmul convolutions ('auto' here) and with XLA's convolutions ('xla',
  what a GPU runs): the analytic count plus XLA-style elementwise FLOPs is XLA:CPU's
  count to 1%; dots and convolutions alone are over 95% of it."""
  spec = bench.RowSpec('configs/dcgan_celeba.py', {
      'data.resolution': 16, 'batch_size': 8, 'model.generator.width': 64,
      'model.discriminator.width': 64})
  extra = None if impl == 'auto' else {'model.generator.conv_impl': impl,
                                       'model.discriminator.conv_impl': impl}
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
        row['flops_xla'] / row['flops_xla_convention'])
    assert set(row['flops_by_primitive']) == {'conv_general_dilated'}
  off = bench.compile_row('tiny', dataclasses.replace(spec, variants=('one_stage',)),
                          log=lambda s: None)
  assert off.rows['one_stage']['flops_xla_cpu'] is None   # 'gpu' without cpu_flops


def test_device_suite_tiny_end_to_end(tmp_path):
  """``--suite=device --tiny`` as a user runs it: every row (no PyTorch rows without
  CUDA), fresh-process compiles for DCGAN, overrides applied, the JSON's fields."""
  out = tmp_path / 'device'
  result = subprocess.run(
      [sys.executable, os.path.join(os.path.dirname(bench.__file__),
                                    'benchmark_speed.py'),
       '--suite=device', '--tiny', '--override', 'batch_size=4', '--out', str(out)],
      capture_output=True, text=True, timeout=900)
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
    assert r['flops_xla_cpu'] == r['flops_xla']   # a CPU backend: the same compile
    assert r['xla_backend'] == 'cpu'
    assert r['tflops_per_s'] == pytest.approx(
        r['flops'] / (r['step_ms_median'] / 1e3) / 1e12)
    assert r['fraction_of_peak'] is None and r['peak_tflops'] is None
    assert r['compile_mode'] == 'subprocess'
    assert 0 < r['compile_s'] < r['compile_fresh_process_s']
    # The fresh child's executable came back through the shared compilation cache.
    assert r['compile_in_process_s'] < 0.5 * r['compile_s'], v
  assert dcgan['one_stage']['flops'] == dcgan['one_stage_approx']['flops']
  assert dcgan['one_stage']['flops_max_branch'] > dcgan['one_stage']['flops']

  for name in ('stylegan2_256_f32', 'stylegan2_256_bf16'):
    for v in ('one_stage', 'two_stage'):
      r = by[(name, v)]
      assert r['batch'] == 4 and r['resolution'] == 8 and r['mode'] == 'timed'
      assert r['compile_mode'] == 'in_process' and r['tflops_per_s'] > 0
      dtypes = set(r['flops_by_dtype'])
      assert dtypes == ({'float32', 'bfloat16'} if name.endswith('bf16')
                        else {'float32'}), (name, v)
  loop = [r for r in rows if r['model'] == 'loop_dcgan64']
  assert [r['variant'] for r in loop] == ['prepared/none',
                                          'prepared/trivial/through_loop']
  assert all(r['images_per_s'] > 0 and r['batch'] == 4 for r in loop)
  try:
    import torch  # pylint: disable=import-outside-toplevel
    has_cuda = torch.cuda.is_available()
  except ImportError:
    has_cuda = False
  torch_rows = [r for r in rows if r['model'].startswith('torch')]
  assert bool(torch_rows) == has_cuda
  assert bench.main(['--render', str(out / path)]) == 0
