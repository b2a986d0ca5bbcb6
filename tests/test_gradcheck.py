"""gradcheck judges the algorithm at full float32 precision, and reports what the
backend's default precision does beside that arithmetic's own rounding floor.

CPUs ignore the matmul precision setting, so reduced precision is forced here with
``emulate``: the small networks round their matmul/conv operands as TF32 or bfloat16
hardware does, wherever full precision is not in effect.
"""

import json
import subprocess
import sys

import jax
import pytest

from osgan_jax import gradcheck
from osgan_jax.core import exactness, precision, toy_networks

MATMUL_OPS = ('dot_general', 'conv_general_dilated')


def _eqns(jaxpr):
  """Every equation of a jaxpr, including those of nested jits, conds and custom rules."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)
        if hasattr(sub, 'eqns'):
          yield from _eqns(sub)


def _traced(prob):
  """Equations of the one-stage and the reference gradients, traced in the precision
  context in effect, as ``check`` traces them."""
  return [
      eqn
      for fn in (
          lambda: exactness.run_one_stage(prob, 'exact'),
          lambda: exactness.run_reference(prob),
      )
      for eqn in _eqns(jax.make_jaxpr(fn)().jaxpr)
  ]


@pytest.fixture(scope='module', autouse=True)
def _x64():
  # Finite differences need float64 (as the command enables it).
  with jax.enable_x64(True):
    yield


@pytest.mark.long
def test_verdict_runs_every_matmul_and_conv_at_highest_and_unemulated():
  prob = toy_networks.problem('non_saturating', 'batchnorm', emulate='tf32')
  with precision.full_precision():
    verdict = _traced(prob)
  matmuls = [e for e in verdict if e.primitive.name in MATMUL_OPS]
  assert len(matmuls) >= 10  # forward and backward, G and D
  highest = (jax.lax.Precision.HIGHEST,) * 2
  assert all(e.params['precision'] == highest for e in matmuls)
  assert not any(e.primitive.name == 'reduce_precision' for e in verdict)
  # At the default the same code rounds (so the check above can fail).
  default = _traced(prob)
  assert any(e.primitive.name == 'reduce_precision' for e in default)
  assert all(
      e.params['precision'] is None for e in default if e.primitive.name in MATMUL_OPS
  )


@pytest.mark.parametrize(
    'emulate,disc',
    [
        # slow: the report and the verdict under emulated rounding are the bf16-mlp
        # case's in CI (the rounding op is the same, only its mantissa width differs).
        pytest.param('tf32', 'conv', marks=pytest.mark.slow),
        ('bf16', 'mlp'),
    ],
)
@pytest.mark.long
def test_reduced_precision_is_reported_and_the_verdict_stays_exact(emulate, disc):
  report = exactness.check('non_saturating', disc, emulate=emulate)
  assert report['ok'] is True
  assert report['rel_err_g'] <= exactness.TOLERANCE['float32']
  default = report['default_precision']
  assert default['emulated'] == emulate and default['matmul_precision'] == 'default'
  # The reduced precision took effect: far above float32 rounding...
  assert default['rel_err_g'] > 1e-4
  assert default['rounding_floor_g'] > 1e-4 and default['rounding_floor_d'] > 1e-4
  # ...and one-stage is as far from the reference as the reference from itself.
  assert default['rel_err_g'] <= 3 * default['rounding_floor_g']
  assert default['within_rounding'] is True


@pytest.mark.long
def test_float32_default_on_cpu_is_within_float32_rounding():
  report = exactness.check('hinge', 'patch')
  default = report['default_precision']
  assert report['ok'] is True and default['emulated'] is None
  assert default['rounding_floor_g'] < 1e-5 and default['rounding_floor_d'] < 1e-5
  assert default['rel_err_d'] < 1e-5 and default['within_rounding'] is True


@pytest.mark.long
def test_highest_set_by_the_user_turns_reduced_precision_off():
  with jax.default_matmul_precision('highest'):
    report = exactness.check('non_saturating', 'conv', emulate='tf32')
  default = report['default_precision']
  assert default['matmul_precision'] == 'highest'
  assert default['rel_err_g'] < 1e-5 and default['rounding_floor_g'] < 1e-5


@pytest.mark.long
def test_within_rounding_is_false_where_one_stage_is_wrong():
  # approx mode is wrong for a BatchNorm D by far more than any rounding.
  report = exactness.check('non_saturating', 'batchnorm', mode='approx', emulate='tf32')
  assert report['ok'] is False
  assert report['default_precision']['rel_err_g'] > 1e-2
  assert report['default_precision']['within_rounding'] is False


def _cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'osgan_jax.gradcheck', *args],
      capture_output=True,
      text=True,
      timeout=300,
  )


# slow: the emulated verdict is test_reduced_precision_is_reported_and_the_verdict_stays_exact's,
# the command's JSON and exit status test_gradcheck_command_reports_json_and_exit_status's.
@pytest.mark.slow
def test_command_emulates_tf32_and_exits_0():
  run = _cli('--loss', 'non_saturating', '--disc', 'conv', '--emulate', 'tf32')
  assert run.returncode == 0, run.stderr
  report = json.loads(run.stdout.strip().splitlines()[-1])
  assert report['ok'] is True and report['precision'] == 'highest'
  assert report['default_precision']['rel_err_g'] > 1e-4
  bad = _cli('--loss', 'hinge', '--disc', 'mlp', '--emulate', 'fp8')
  assert bad.returncode == 2 and 'tf32' in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.long
def test_gradcheck_command_reports_json_and_exit_status(capsys):
  # The command's report and exit status; every D kind's verdict is the library tests'.
  ok = _cli('--loss', 'hinge', '--disc', 'mlp', '--logits', 'extreme')
  assert ok.returncode == 0, ok.stderr
  report = json.loads(ok.stdout.strip().splitlines()[-1])
  assert {
      'loss',
      'disc',
      'mode',
      'rel_err_g',
      'rel_err_d',
      'fd_rel_err',
      'finite',
  } <= set(report)
  assert report['finite'] is True and report['rel_err_g'] <= 1e-5  # float32 tolerance
  # The paper's method drops G's gradient of hinge's singular fakes: not exact, exit 1.
  wrong = _cli(
      '--loss', 'hinge', '--disc', 'mlp', '--logits', 'extreme', '--mode', 'approx'
  )
  assert wrong.returncode == 1
  assert json.loads(wrong.stdout.strip().splitlines()[-1])['rel_err_g'] > 1e-3
  # Bad arguments fail before any work (x64 untouched), so in this process.
  x64 = jax.config.jax_enable_x64
  assert gradcheck.main(['--loss', 'nope', '--disc', 'mlp']) == 2
  err = capsys.readouterr().err
  assert 'valid: ' in err and 'hinge' in err and len(err.strip().splitlines()) == 1
  assert gradcheck.main(['--loss', 'hinge', '--disc', 'resnet']) == 2
  assert 'batchnorm' in capsys.readouterr().err
  assert jax.config.jax_enable_x64 == x64
