"""The speed benchmarks at toy sizes: the FLOP counter (exact against XLA's), compiled
and timed rows, the executed-branch count, the per-loss suite, the PyTorch rows, the
device suite and the loop's throughput."""

import dataclasses
import json
import os
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from experiments import common
from experiments import device
from experiments import flops
from experiments import loop_throughput
from experiments import rows
from experiments import speed
from experiments import torch_dcgan

REPO = common.REPO
HAS_DATA = os.path.exists('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz')
# A DCGAN small enough to compile four steps in seconds, built through a real config.
TINY = common.RowSpec(
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


# ------------------------------------------------------------------ FLOPs

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
  count = flops.analytic_flops(fn, *args)
  assert count.elementwise == 0
  assert count.flops == flops.cpu_lowering_flops(fn, *args)['flops'] > 0


def test_conv_valid_positions_by_hand():
  # 'SAME' 3x3 on 9 pixels: the two edge outputs lose one tap each -> 27 - 2.
  assert flops.conv_valid_positions(9, 3, 9, 1, 1, 1, 1) == 25
  # VALID, stride 1: every tap of every output is real.
  assert flops.conv_valid_positions(9, 3, 7, 1, 0, 1, 1) == 21
  # Transposed conv (lhs dilation 2, pad 2) 4 -> 8 with a 4-tap kernel: each input
  # pixel meets every tap once (4 x 4 = 16) but for the two the crop cuts at the
  # edges; dense counting would say 8 x 4 = 32.
  assert flops.conv_valid_positions(4, 4, 8, 1, 2, 2, 1) == 14
  # 2 x B x C_out x C_in/groups x positions.
  assert flops.conv_flops(
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
  count = flops.analytic_flops(f, *args)
  assert count.by_dtype == {'float32': 6 * mm, 'bfloat16': mm}
  assert count.flops == 7 * mm and count.flops_max_branch == 9 * mm
  assert count.conds == 1 and count.while_loops == 1
  assert count.by_primitive == {'dot_general': 7 * mm}
  high = flops.analytic_flops(
      lambda a, b: jnp.dot(a, b, precision=lax.Precision.HIGHEST), *args[:2]
  )
  assert high.by_dtype == {'float32:highest': mm}


def test_device_peaks_and_fraction_of_peak():
  peaks = flops.device_peaks
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
  out = flops.peak_fields(row, 0.01, h200)
  ideal = 2e12 / 989.5e12 + 1e12 / 494.5e12  # bf16 at the bf16 peak, f32 at TF32
  assert out['tflops_per_s'] == pytest.approx(300.0)
  assert out['fraction_of_peak'] == pytest.approx(ideal / 0.01)
  assert out['peak_tflops'] == pytest.approx(3.0 / ideal)
  assert out['peak_classes'] == ['bf16', 'tf32']
  assert flops.peak_fields(row, None, h200)['fraction_of_peak'] is None
  assert flops.peak_fields(row, 0.01, None)['fraction_of_peak'] is None


@pytest.mark.parametrize(
    'impl,variants',
    [
        pytest.param('auto', tuple(rows.VARIANTS), marks=pytest.mark.slow),  # 36 s
        ('xla', ('one_stage', 'two_stage')),
    ],
)
@pytest.mark.long
def test_analytic_flops_agree_with_cpu_lowering_for_dcgan(impl, variants):
  """The DCGAN 64 config's steps (d=64, 16x16, batch 8), each variant, with
  the CPU's patch-matmul convolutions ('auto' here) and with XLA's convolutions ('xla',
  what a GPU runs): the analytic count plus XLA-style elementwise FLOPs is XLA:CPU's
  count to 1%; dots and convolutions alone are over 95% of it."""
  spec = common.RowSpec(
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
  _, gan, _, batch, abstract = rows.prepare(spec, extra=extra)
  rng = jax.random.PRNGKey(1)
  counts, fns = {}, {}
  for variant in variants:
    jitted, fns[variant] = rows.variant_step(gan, variant)
    counts[variant] = flops.analytic_flops(jitted, abstract, batch, rng)
  xla = flops.cpu_lowering_flops_many(fns, abstract, batch, rng, donate_argnums=0)
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


def test_executed_flops_count_the_branch_each_step_took():
  """A step with a three-way switch (as the exact path's: none, the whole batch, a
  bucket) inside a jitted call: the instrumented step returns the branch taken, the
  same values as the step itself, and the count of that branch."""
  mm = 2 * 4 * 8 * 8  # one [4, 8] @ [8, 8]

  @jax.jit
  def inner(y, w, k):
    return lax.switch(k, [lambda y: y, lambda y: y @ w @ w @ w, lambda y: y @ w], y)

  def step(x, w, k):
    return inner(x @ w, w, k), jnp.sum(x)

  args = (jnp.ones((4, 8)), jnp.eye(8), jnp.int32(0))
  run, count, table = flops.with_branch_indices(step, *args)
  assert count.flops == mm and count.flops_max_branch == 4 * mm
  assert table == [[0.0, 3.0 * mm, 1.0 * mm]]
  jitted = jax.jit(run)
  for k, executed in ((0, mm), (1, 4 * mm), (2, 2 * mm)):
    out, indices = jitted(args[0], args[1], jnp.int32(k))
    np.testing.assert_array_equal(out[0], step(args[0], args[1], jnp.int32(k))[0])
    assert [int(i) for i in indices] == [k]
    assert flops.executed_flops(count, table, indices) == executed


def test_hlo_matmul_flops_separates_conditional_branches():
  def f(x, w, p):
    y = x @ w
    return lax.cond(p > 0, lambda y: y @ w, lambda y: y, y)

  args = (jnp.ones((4, 8)), jnp.ones((8, 8)), jnp.int32(1))
  hlo = jax.jit(f).lower(*args).compile().as_text()
  assert flops.hlo_matmul_flops(hlo) == (2 * 4 * 8 * 8, 2 * 4 * 8 * 8)


# ------------------------------------------------------------------ rows


@pytest.fixture(scope='module')
def tiny_row():
  return rows.compile_row('tiny', TINY, log=lambda s: None)


@pytest.mark.long
def test_timed_row_fields_and_ratios(tiny_row):
  result = rows.time_row(tiny_row, rounds=2, steps_per_call=2, log=lambda s: None)
  by = {r['variant']: r for r in result}
  assert set(by) == set(rows.VARIANTS)
  for r in result:
    assert r['mode'] == 'timed' and r['flops'] > 0 and r['peak_bytes'] > 0
    assert r['steps_per_call'] == 2 and r['rounds'] == 2
    assert r['ratio_to_one_stage_min'] <= r['ratio_to_one_stage_median']
    assert r['ratio_to_one_stage_median'] <= r['ratio_to_one_stage_max']
    assert r['images_per_s'] == pytest.approx(4 / (r['step_ms_median'] / 1e3))
  one = by['one_stage']
  assert one['ratio_to_one_stage_median'] == one['flop_ratio'] == 1.0
  # Two-stage executes more FLOPs than one-stage (its exact path not taken), the
  # official step more than the honest one.
  assert by['two_stage']['flop_ratio_executed'] > 1.2
  assert by['official_two_stage']['flops'] > by['two_stage']['flops']
  assert one['per_sample_d'] is True and one['n_exact_last'] == 0.0
  table = speed.rows_table(result)
  assert '| tiny | one_stage |' in table
  slow = rows.time_row(tiny_row, rounds=20, max_step_gflop=0.0, log=lambda s: None)
  for r in slow:
    assert r['mode'] == 'too_slow' and r['flops'] > 0 and r['peak_bytes'] > 0
    assert r['step_ms_median'] is None and r['images_per_s'] is None


def test_rows_are_built_from_existing_configs():
  for name, spec in {**speed.ROWS, **device.ROWS}.items():
    assert os.path.exists(os.path.join(REPO, spec.config)), name
    assert set(spec.variants) <= set(rows.VARIANTS), name
  assert set(device.ESTIMATE_S) == set(device.SUITE)


@pytest.mark.slow  # 22 s
def test_compile_row_counts_an_accelerator_step_on_the_cpu(monkeypatch):
  """On an accelerator ``cpu_flops`` compiles every variant again for the CPU; here a
  pretended GPU backend takes that path (its 'GPU' compile is a CPU one, so both XLA
  counts agree), tracing the accelerators' program (XLA convolutions)."""
  monkeypatch.setattr(rows.jax, 'default_backend', lambda: 'gpu')
  spec = common.RowSpec(TINY.config, TINY.overrides, variants=('one_stage', 'two_stage'))
  c = rows.compile_row('tiny', spec, cpu_flops=True, log=lambda s: None)
  for variant, row in c.rows.items():
    assert row['xla_backend'] == 'gpu'
    assert row['flops_xla_cpu'] == row['flops_xla'] > 0, variant
    assert row['xla_cpu_over_xla_convention'] == pytest.approx(
        row['flops_xla'] / row['flops_xla_convention']
    )
    assert set(row['flops_by_primitive']) == {'conv_general_dilated'}


# slow: executed FLOPs by branch are test_executed_flops_count_the_branch_each_step_took's,
# interleaved timing test_timed_row_fields_and_ratios'; this runs the per-loss suite (19 s).
@pytest.mark.slow
@pytest.mark.skipif(not HAS_DATA, reason='apt-get install dataset-fashion-mnist')
@pytest.mark.long
def test_per_loss_suite_tiny_end_to_end(tmp_path):
  """``--suite losses`` as a user runs it, at a toy size: a short training with the
  branch each step took, both stages timed from the trained state, provenance."""
  tiny = ['--override=' + o for o in ('data.resolution=16', 'batch_size=8', 'z_dim=8')]
  tiny += ['--override=model.generator.width=4', '--override=model.discriminator.width=4']
  argv = ['--suite', 'losses', '--losses', 'hinge', '--train-steps', '3', '--rounds', '2']
  argv += ['--steps-per-call', '2', '--out', str(tmp_path), *tiny]
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.speed', *argv],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| hinge | 0% | - | 0.0 of 8 |' in result.stdout
  record = json.loads((tmp_path / 'losses.json').read_text())
  assert (tmp_path / 'losses.csv').exists()
  assert record['provenance']['command'] == shlex.join(
      [sys.executable, '-m', 'experiments.speed', *argv]
  )
  one, two = record['rows']
  assert (one['variant'], two['variant'], one['loss']) == (
      'one_stage',
      'two_stage',
      'hinge',
  )
  assert one['train_steps'] == 3 and one['n_exact_mean'] == 0.0
  # Batch 8: the default ladder's buckets of 1, 2 and 4 fakes, then all 8.
  assert one['bucket_ladder'] == [1, 2, 4] and one['rerun_sizes'] == [0, 1, 2, 4, 8]
  assert one['branch_fractions'] == {'0': 1.0, '1': 0.0, '2': 0.0, '3': 0.0, '4': 0.0}
  assert one['n_exact_histogram'] == [3] + [0] * 8 and one['rerun_mean'] == 0.0
  assert one['flops_executed'] == one['flops'] < one['flops_max_branch']
  assert len(one['flops_branches'][0]) == 5
  assert two['flop_ratio_executed'] == pytest.approx(two['flops'] / one['flops'])
  assert two['rounds'] == 2 and two['steps_per_call'] == 2
  assert two['ratio_to_one_stage_min'] <= two['ratio_to_one_stage_q25']
  assert two['ratio_to_one_stage_q75'] <= two['ratio_to_one_stage_max']
  assert speed.main(['--render', str(tmp_path / 'losses.json')]) == 0
  assert sorted(speed.per_loss.loss_names()) == sorted(
      n for n in __import__('osgan_jax.core.losses').core.losses.names() if n != 'dfad'
  )


# ------------------------------------------------------------------ PyTorch


def test_torch_rows_run_the_jax_variants_algorithms():
  """The PyTorch algorithms differ as the JAX ones do: the honest two-stage step adds a
  G forward and D's input backward to the D step; the official one also D's parameter
  gradients; PyTorch's count of one step of each says so."""
  pytest.importorskip('torch')
  size = dict(width=4, resolution=8, batch=2, z_dim=4, channels=1, device='cpu')
  built = {
      v.name: v
      for v in torch_dcgan.variants(**size, settings=('eager', 'tuned', 'graphs'))
  }
  assert set(built) == {
      f'torch_{a}_{s}'
      for a in torch_dcgan.ALGORITHMS
      for s in ('eager', 'tuned', 'graphs')
  }
  assert built['torch_one_stage_graphs'].run is None
  assert (
      built['torch_one_stage_graphs'].info['reason'] == 'CUDA graphs need a CUDA device'
  )
  tuned = built['torch_two_stage_tuned'].info
  assert tuned['channels_last'] and tuned['fused_adam'] and tuned['tf32'] is None
  count = {
      a: torch_dcgan.count_flops(built[f'torch_{a}_eager'])
      for a in torch_dcgan.ALGORITHMS
  }
  assert count['one_stage'] < count['two_stage'] < count['official_two_stage']
  for v in built.values():
    if v.run is not None:
      v.run(2)


# ------------------------------------------------------------------ the device suite


def _device(tmp_path, *argv, timeout=900):
  return subprocess.run(
      [
          sys.executable,
          '-m',
          'experiments.device',
          '--tiny',
          '--out',
          str(tmp_path),
          *argv,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


@pytest.mark.long
def test_device_suite_tiny_end_to_end(tmp_path):
  """``experiments.device --tiny``: DCGAN beside PyTorch (interleaved, at 1 and 2
  steps per synchronisation), the StyleGAN2 iteration and the loop's ceiling."""
  models = 'dcgan64_d128,stylegan2_256_f32_iteration,loop'
  result = _device(
      tmp_path,
      '--models',
      models,
      '--syncs',
      '1,2',
      '--rounds',
      '2',
      '--override=batch_size=4',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| model | variant | sync | ms/step |' in result.stdout
  record = json.loads((tmp_path / 'tiny_cpu_cpu.json').read_text())
  assert (tmp_path / 'tiny_cpu_cpu.csv').exists()
  assert record['suite'] == 'device' and record['tiny'] and record['errors'] == {}
  assert record['provenance']['device'].startswith('cpu:')
  assert record['overrides'] == {'batch_size': 4}
  assert set(record['row_seconds']) == set(models.split(','))
  by = {(r['model'], r['variant'], r.get('steps_per_sync')): r for r in record['rows']}
  for k in (1, 2):
    for v in rows.VARIANTS:
      r = by[('dcgan64_d128', v, k)]
      assert r['framework'] == 'jax' and r['batch'] == 4 and r['mode'] == 'timed'
      assert r['ratio_to_jax_one_stage_median'] == r['ratio_to_one_stage_median']
    jax_one = by[('dcgan64_d128', 'one_stage', k)]
    assert jax_one['compile_mode'] == 'subprocess' and jax_one['compile_s'] > 0
    torch = [r for (m, v, s), r in by.items() if v.startswith('torch_') and s == k]
    if torch:  # PyTorch installed: eager and tuned run on the CPU, timed with JAX's
      assert {r['setting'] for r in torch} == {'eager', 'tuned'}
      for r in torch:
        assert r['framework'] == 'torch' and r['rounds'] == jax_one['rounds']
        assert r['ratio_to_jax_one_stage_median'] > 0 and r['flops'] > 0
      skipped = [r for r in record['rows'] if r.get('mode') == 'skipped']
      assert {r['variant'].rsplit('_', 1)[1] for r in skipped} == {'compiled', 'graphs'}
      assert all(r['reason'] for r in skipped)
  for v in ('one_stage', 'two_stage'):
    r = by[('stylegan2_256_f32_iteration', v, None)]
    assert r['mode'] == 'timed_iteration' and r['iterations_per_call'] == 16
    assert [(p['name'], p['interval']) for p in r['phases']] == [
        ('main', 1),
        ('pl', 4),
        ('r1', 16),
        ('ema', 1),
    ]
    assert r['images_per_s'] == pytest.approx(4 / (r['step_ms_median'] / 1e3))
  loop = [r for r in record['rows'] if r['model'] == 'loop_dcgan64']
  assert [r['variant'] for r in loop] == [
      'prepared/none',
      'prepared/trivial/through_loop',
  ]
  assert device.main(['--render', str(tmp_path / 'tiny_cpu_cpu.json')]) == 0


@pytest.mark.slow
def test_device_suite_tiny_every_row(tmp_path):
  result = _device(tmp_path, '--syncs', '1', timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((tmp_path / 'tiny_cpu_cpu.json').read_text())
  assert set(record['row_seconds']) == set(device.SUITE) - set(device.TINY_ONLY_ON_DEVICE)
  bf16 = [r for r in record['rows'] if r['model'] == 'stylegan2_256_bf16']
  assert {k for r in bf16 for k in r['flops_by_dtype']} == {'float32', 'bfloat16'}


def test_device_suite_budget_skips_rows_and_prints_their_command(tmp_path):
  result = _device(
      tmp_path,
      '--budget-s',
      '0',
      '--models',
      'dcgan64_d128,loop',
      '--override=batch_size=4',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((tmp_path / 'tiny_cpu_cpu.json').read_text())
  assert record['skipped'] == ['dcgan64_d128', 'loop'] and record['rows'] == []
  [line] = [l for l in result.stdout.splitlines() if l.startswith('skipped (budget)')]
  assert shlex.split(line.split('run them with: ')[1]) == [
      'python',
      '-m',
      'experiments.device',
      '--models',
      'dcgan64_d128,loop',
      '--out',
      str(tmp_path / 'tiny_cpu_cpu_rest.json'),
      '--tiny',
      '--override=batch_size=4',
  ]


# ------------------------------------------------------------------ the loop


# slow: the loop rows (prepared data, the trivial step through the loop) run in
# test_device_suite_tiny_end_to_end; this adds the folder source and the real steps (28 s).
@pytest.mark.slow
def test_loop_throughput_rows_at_a_tiny_size(tmp_path, capsys):
  """The loop benchmark end to end at toy sizes: both sources, the trivial step through
  the loop, the real steps alone and through main, with provenance."""
  argv = '--images 24 --resolution 16 --batch 8 --trivial_steps 20 --real --real_steps 4'
  argv += ' --width 4 --rounds 2 --per_call 1'
  out = tmp_path / 'out'
  loop_throughput.main(
      argv.split() + ['--work', str(tmp_path / 'work'), '--out', str(out)]
  )
  lines = [
      json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith('{')
  ]
  saved = json.loads((out / 'loop_throughput.json').read_text())
  assert saved['rows'] == lines
  assert saved['provenance']['command'].startswith(
      'python -m experiments.loop_throughput'
  )
  assert [(r['source'], r['step'], r['through_loop']) for r in lines] == [
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
  assert all(r['process_s'] > 0 for r in lines[-2:])
  assert os.listdir(tmp_path / 'work' / 'trivial_prepared' / 'checkpoints') == ['20']
  assert 'through main / alone' in loop_throughput.summary(lines)
