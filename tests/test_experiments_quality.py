"""The quality study: its statistics and rendering (exact values), its configs and
evaluators, a tiny study end to end, and the GPU script's one-line errors."""

import json
import os
import shutil
import subprocess
import types

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


# ------------------------------------------------------------------ limited data


def _limited_rows(offsets: dict, steps=(1000, 2000, 3000)):
  """One-stage rows of entries against 'none': per seed a curve lowest at step 2000,
  shifted by the entry's offset; the adaptive entry logs p and r_t."""
  settings = {
      'none': {'augment.pipe': 'none'},
      'diffaugment': {'augment.pipe': 'diffaugment', 'augment.p': 1.0},
      'ada': {'augment.pipe': 'ada', 'augment.p': 0.0, 'augment.target': 0.6},
  }
  rows = []
  for seed in range(3):
    for name, offset in offsets.items():
      for step in steps:
        row = {
            'study': 'limited',
            'baseline': 'none',
            'variant': name,
            'loss': 'non_saturating',
            'config': quality.CONFIG,
            'overrides': {'loss': 'non_saturating', 'data.limit': 1000, **settings[name]},
            'stage': 'one',
            'seed': seed,
            'step': step,
            'train_seconds': step * 0.1,
            'fid_classifier': {1000: 20.0, 2000: 15.0, 3000: 17.0}[step] + seed + offset,
            'fid_classifier_samples': 5000,
            'classifier_test_accuracy': 0.884,
        }
        if name == 'ada':
          log = [[s, s / 10000 + seed / 100, 0.6 + s / 1e5] for s in (step - 500, step)]
          row.update(augment_p=log[-1][1], augment_rt=log[-1][2], augment_log=log)
        rows.append(row)
  return rows


def test_limited_study_plan_and_configs(capsys):
  args = quality.parse_args(['--size', 'limited', '--workdir', '/tmp/w'])
  assert args.losses == ['none', 'diffaugment', 'ada'] and args.stages == ('one',)
  assert (args.seeds, args.steps, args.eval_every, args.chunk_steps) == (
      3,
      6000,
      1000,
      1000,
  )
  assert (args.baseline, args.inception_samples, args.fid_samples) == ('none', 0, 5000)
  assert args.classifier_workdir == '/tmp/w/classifier'  # the cpu size's, shared
  runs = quality.plan(args)
  assert runs[:3] == [('none', 'one', 0), ('diffaugment', 'one', 0), ('ada', 'one', 0)]
  assert len(runs) == 9 and [r[2] for r in runs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  path, ada = quality.variant_config(args, 'ada')
  assert path == quality.CONFIG and ada == {
      'loss': 'non_saturating',
      'augment.pipe': 'ada',
      'augment.p': 0.0,
      'augment.target': 0.6,
      'augment.speed_kimg': 100,
      'data.limit': 1000,
  }
  assert quality.variant_config(args, 'none')[1] == {
      'loss': 'non_saturating',
      'augment.pipe': 'none',
      'data.limit': 1000,
  }
  assert quality.variant_config(args, 'diffaugment')[1]['augment.p'] == 1.0
  from osgan_jax import config as config_lib

  config = quality.run_config(args, 'ada', 'one', 1, 6000)
  config_lib.validate(config)
  assert (config.loss, config.stage, config.seed, config.data.limit) == (
      'non_saturating',
      'one',
      1,
      1000,
  )
  assert (config.augment.pipe, config.augment.target, config.augment.speed_kimg) == (
      'ada',
      0.6,
      100,
  )
  assert config.evals.fid.every_steps == 0  # no Inception FID at this size
  assert config.evals.fid_classifier.num_real == -1  # the whole test split
  for argv, message in (
      (['--size', 'limited', '--stages', 'one,two'], '--baseline must be one of'),
      (['--stages', 'one'], 'one stage needs a --baseline'),
      (['--stages', 'one', '--baseline', 'ada'], '--baseline must be one of'),
      (['--stages', 'one,three'], '--stages: one,three'),
  ):
    with pytest.raises(SystemExit):
      quality.parse_args(argv)
    assert message in capsys.readouterr().err


def test_limited_rows_carry_the_p_trajectory():
  records = [
      {'step': 50, 'augment_p': 0.01, 'augment_rt': 0.7, 'loss_d': 1.0},
      {'step': 100, 'augment_p': 0.02, 'augment_rt': 0.65},
      {'step': 100, 'augment_p': 0.03, 'augment_rt': 0.66},  # logged again on resume
      {'step': 100, 'fid_classifier': 9.0},
      {'step': 150, 'augment_p': 0.04, 'augment_rt': 0.5},
  ]
  assert quality.augment_log(records, 0, 100) == [[50, 0.01, 0.7], [100, 0.03, 0.66]]
  assert quality.augment_log(records, 100, 200) == [[150, 0.04, 0.5]]
  assert quality.augment_log([{'step': 50, 'loss_d': 1.0}], 0, 100) == []
  args = quality.parse_args(
      ['--size', 'limited', '--eval-every', '100', '--steps', '200']
  )
  config = types.SimpleNamespace(loss='non_saturating', batch_size=64)
  values = {'fid_classifier': 9.0, 'train_seconds': 5.0}
  row = quality.make_row(args, {}, ('ada', 'one', 0), 100, values, config, records)
  assert (row['variant'], row['baseline'], row['images']) == ('ada', 'none', 6400)
  assert (row['augment_p'], row['augment_rt']) == (0.03, 0.66)
  assert row['augment_log'] == [[50, 0.01, 0.7], [100, 0.03, 0.66]]
  row = quality.make_row(args, {}, ('none', 'one', 0), 100, values, config, [])
  assert 'augment_p' not in row and 'augment_log' not in row


def test_limited_verdicts_against_the_baseline():
  lower = stats.summarize_against(
      _limited_rows({'none': 0.0, 'diffaugment': 0.5, 'ada': -5.0}), 'none'
  )
  assert list(lower) == ['none', 'diffaugment', 'ada']
  assert lower['none']['fid_classifier'] == pytest.approx((18.0, 1.0))
  assert lower['none']['fid_classifier_best'] == pytest.approx((16.0, 1.0))
  assert 'verdict' not in lower['none']
  assert lower['ada']['verdict']['verdict'] == 'better'
  assert lower['ada']['verdict']['diff'] == pytest.approx(-5.0)
  assert lower['diffaugment']['verdict']['verdict'] == 'not distinguishable'
  assert stats.conclusion(lower, 'none') == {
      'lower': ['ada'],
      'text': 'At the final step `ada` has a lower classifier FID than `none` by the '
      'rule (3 seeds).',
  }
  higher = stats.summarize_against(
      _limited_rows({'none': 0.0, 'diffaugment': 5.0, 'ada': 0.02}), 'none'
  )
  assert higher['diffaugment']['verdict']['verdict'] == 'worse'
  assert higher['ada']['verdict']['verdict'] == 'same'  # within 10% of 18
  assert stats.conclusion(higher, 'none') == {
      'lower': [],
      'text': 'At the final step no entry has a lower classifier FID than `none` by '
      'the rule (3 seeds).',
  }
  # Stopped part-way: ada's seed 2 at step 2000; the final step is every entry's 3000.
  partial = [
      r
      for r in _limited_rows({'none': 0.0, 'ada': -5.0})
      if not (r['variant'] == 'ada' and r['seed'] == 2 and r['step'] == 3000)
  ]
  summary = stats.summarize_against(partial, 'none')
  assert summary['ada']['final_step'] == 3000 and summary['ada']['seeds'] == [0, 1]
  assert summary['ada']['fid_classifier'] == pytest.approx((12.5, 0.5**0.5))


def test_limited_study_renders_its_table_curves_and_p(tmp_path):
  from PIL import Image

  rows = _limited_rows({'none': 0.0, 'diffaugment': 0.5, 'ada': -5.0})
  with open(tmp_path / 'limited.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  assert quality.main(['--render', '--study', 'limited', '--out', str(tmp_path)]) == 0
  table = (tmp_path / 'limited.md').read_text()
  assert '`data.limit=1000`, `loss=non_saturating`, 27 rows' in table
  # none: finals 17, 18, 19 (mean 18, std 1), best 15, 16, 17; ada's p: 0.3 + seed/100.
  assert (
      '| none | `augment.pipe=none` | 3 | 3000 | 300 ± 0 | 18.00 ± 1.00 (5000 samples) '
      '| 17.00-19.00 | 16.00 ± 1.00 | - |'
  ) in table
  assert (
      '| ada | `augment.p=0.0`, `augment.pipe=ada`, `augment.target=0.6` | 3 | 3000 | '
      '300 ± 0 | 13.00 ± 1.00 (5000 samples) | 12.00-14.00 | 11.00 ± 1.00 | '
      '0.310 ± 0.010 |'
  ) in table
  assert '| ada | better (Δ -5.00, 90% CI [' in table
  assert '| diffaugment | not distinguishable at 3 seeds (Δ +0.50' in table
  assert 'At the final step `ada` has a lower classifier FID than `none`' in table
  for name in ('limited_fid_vs_steps.png', 'limited_augment_p.png'):
    image = np.asarray(Image.open(tmp_path / name).convert('L'), np.float32)
    assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 10
  assert not (tmp_path / 'limited_fid_vs_seconds.png').exists()
  without = [r for r in rows if r['variant'] != 'ada']
  assert (
      stats.plot_augment(without, stats.summarize_against(without, 'none'), 'x') is None
  )


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


@pytest.mark.skipif(not HAS_DATA, reason='apt-get install dataset-fashion-mnist')
@pytest.mark.slow  # two tiny runs through the loop, like the test above
def test_limited_study_tiny_end_to_end(tmp_path):
  """The one-stage design (entries against a baseline) at the tiny size: rows carry the
  p trajectory the ADA run logged, resume from the runs' logs, and render."""
  out, wd = tmp_path / 'out', tmp_path / 'wd'
  argv = ['--tiny', '--losses', 'none,ada', '--stages', 'one', '--baseline', 'none']
  argv += ['--seeds', '1', '--out', str(out), '--workdir', str(wd)]
  assert quality.main(argv) == 0
  jsonl = out / 'tiny.jsonl'
  rows = [json.loads(line) for line in open(jsonl)]
  assert [(r['variant'], r['stage'], r['step']) for r in rows] == [
      ('none', 'one', 2),
      ('none', 'one', 4),
      ('ada', 'one', 2),
      ('ada', 'one', 4),
  ]
  assert all(r['baseline'] == 'none' for r in rows)
  assert 'augment_log' not in rows[0] and rows[2]['overrides']['augment.pipe'] == 'ada'
  logged = common.read_jsonl(str(wd / 'tiny' / 'ada_one_seed0' / 'metrics.jsonl'))
  trajectory = [
      [r['step'], r['augment_p'], r['augment_rt']] for r in logged if 'augment_p' in r
  ]
  assert [point for r in rows[2:] for point in r['augment_log']] == trajectory
  assert len(trajectory) == 2 and rows[3]['augment_p'] == trajectory[-1][1]
  table = (out / 'tiny.md').read_text()
  assert (
      '| ada | `augment.p=0.0`, `augment.pipe=ada`' in table
      and (out / 'tiny_augment_p.png').exists()
  )
  with open(jsonl, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows[:-1])
  assert quality.main(argv) == 0
  keep = (
      'variant',
      'step',
      'fid_classifier',
      'train_seconds',
      'augment_p',
      'augment_log',
  )
  again = stats.read_rows(str(jsonl))
  assert [{k: r.get(k) for k in keep} for r in again] == [
      {k: r.get(k) for k in keep} for r in rows
  ]


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
