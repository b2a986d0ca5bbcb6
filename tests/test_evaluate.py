"""``python -m osgan_jax.evaluate`` and improved precision/recall.

Precision and recall against a direct NumPy transcription of Kynkaanniemi et al.
(2019); after a tiny training run, the command's JSON lines, ``metrics.jsonl`` and the
cached real statistics; its FID of a folder is the ``fid`` command's on the same
images; one-line errors.
"""

import json
import os

import numpy as np
import pytest

from osgan_jax import evaluate, fid, generate, train
from osgan_jax.metrics import fid as fid_lib
from osgan_jax.metrics import inception
from osgan_jax.metrics import precision_recall as pr
from osgan_jax.tasks import evaluation
from helpers import REPO, read_metrics, tiny_config  # pylint: disable=import-error

needs_weights = pytest.mark.skipif(
    inception.default_weights_path() is None,
    reason=f'Inception weights missing: {inception.INSTALL_HINT}',
)
BATCH = 4  # test_fid's: one Inception program per session


def reference_precision_recall(real, fake, k=3):
  """The paper's definition, directly: float64 pairwise distances, k-th neighbour
  radii (the point itself excluded), coverage by any ball."""
  dist = lambda a, b: np.sqrt(((a[:, None].astype(np.float64) - b[None]) ** 2).sum(-1))
  radii = lambda x: np.sort(dist(x, x), axis=1)[:, k]
  covered = lambda probes, m: float((dist(probes, m) <= radii(m)[None]).any(1).mean())
  return covered(fake, real), covered(real, fake)


# ------------------------------------------------------------------------------ fast


@pytest.mark.parametrize('k', [1, 3])
def test_precision_recall_is_the_published_definition(monkeypatch, k):
  monkeypatch.setattr(pr, 'BLOCK', 16)  # several blocks, the last one padded
  rng = np.random.default_rng(0)
  real = rng.normal(size=(70, 8)).astype(np.float32)
  fake = (rng.normal(size=(50, 8)) * 1.3 + 0.4).astype(np.float32)
  got = pr.precision_recall(real, fake, k)
  assert got == reference_precision_recall(real, fake, k)
  assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0


def test_identical_sets_are_covered_and_a_shift_lowers_both():
  rng = np.random.default_rng(1)
  real = rng.normal(size=(200, 16)).astype(np.float32)
  assert pr.precision_recall(real, real) == (1.0, 1.0)
  other = rng.normal(size=(200, 16)).astype(np.float32)
  values = [pr.precision_recall(real, other + shift) for shift in (0.0, 0.5, 1.0)]
  for before, after in zip(values, values[1:]):
    assert after[0] < before[0] and after[1] < before[1], values
  assert values[-1] == reference_precision_recall(real, other + 1.0)


def test_precision_recall_input_errors():
  x = np.zeros((3, 4), np.float32)
  with pytest.raises(ValueError, match='with k=3 need more than 3 points per set, got 3'):
    pr.knn_radii(x, 3)
  with pytest.raises(ValueError, match='k must be >= 1'):
    pr.knn_radii(x, 0)
  with pytest.raises(ValueError, match='feature dimensions differ'):
    pr.coverage(x, np.zeros((3, 5), np.float32), np.zeros(3))
  assert evaluation.metric_names(50_000)['precision'] == 'precision50k'
  assert evaluation.metric_names(8)['fid'] == 'fid8'


# ---------------------------------------------------------------------- after a run


def run_command(main, capsys, *argv):
  code = main([str(a) for a in argv])
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.fixture(scope='module')
def run(png_folder, tmp_path_factory):
  """One step of a tiny DCGAN on the 12 PNGs of ``png_folder`` (its real data)."""
  workdir = tmp_path_factory.mktemp('dcgan_run')
  config = tiny_config(
      'hinge_celeba',
      png_folder,
      num_train_steps=1,
      batch_size=4,
      **{'evals.samples.every_steps': 0},
  )
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


@needs_weights
@pytest.mark.e2e
@pytest.mark.long
def test_evaluate_prints_json_appends_metrics_and_caches_real_statistics(
    run, capsys, caplog
):
  before = read_metrics(run)
  code, out, err = run_command(
      evaluate.main,
      capsys,
      f'--workdir={run}',
      '--num=4',
      '--num_real=4',
      f'--batch={BATCH}',
  )
  assert code == 0, err
  records = [json.loads(line) for line in out.splitlines()]
  assert [r['metric'] for r in records] == ['fid4', 'kid4', 'precision4', 'recall4']
  for r in records:
    assert r['step'] == 1 and r['num_samples'] == 4 and r['num_real'] == 4
    assert r['seed'] == 0 and r['feature_network'] == 'inception_pool3'
    assert r['generator'] == 'G' and r['source'] == os.path.join(run, 'checkpoints', '1')
    assert np.isfinite(r['value'])
  assert records[0]['value'] > 0 and 'std' in records[1] and records[2]['k'] == 3
  assert 'FID from 4 images' in caplog.text  # the sample-size warning
  stats = os.path.join(run, 'fid_stats_real.npz')  # the training evaluator's cache
  assert records[0]['real'] == stats and fid_lib.load_stats(stats)['n'] == 4
  after = read_metrics(run)
  assert after[: len(before)] == before
  assert after[-1] == {
      'step': 1,
      **{r['metric']: r['value'] for r in records},
      'kid4_std': records[1]['std'],
  }
  cached = os.stat(stats).st_mtime_ns
  code, out, err = run_command(
      evaluate.main,
      capsys,
      f'--workdir={run}',
      '--num=4',
      '--num_real=4',
      f'--batch={BATCH}',
      '--metrics=fid',
      '--nowrite',
  )
  assert code == 0, err
  again = [json.loads(line) for line in out.splitlines()]
  assert [r['metric'] for r in again] == ['fid4'] and again[0]['value'] == records[0][
      'value'
  ]
  assert os.stat(stats).st_mtime_ns == cached and read_metrics(run) == after


@needs_weights
@pytest.mark.e2e
@pytest.mark.long
def test_fid_of_a_folder_is_the_fid_commands(run, make_png_folder, tmp_path, capsys):
  """evaluate --real=FOLDER on seeds 0-2 == fid --real FOLDER --fake (generate's PNGs of
  seeds 0-2): one protocol; only the PNG round trip's float rounding differs."""
  real, out = make_png_folder(3, seed=3), tmp_path / 'fake'
  code, _, err = run_command(
      generate.main, capsys, f'--workdir={run}', '--seeds=0-2', f'--outdir={out}'
  )
  assert code == 0, err
  code, stdout, err = run_command(
      fid.main, capsys, '--real', real, '--fake', out, '--kid', '--batch-size', BATCH
  )
  assert code == 0, err
  reference = json.loads(stdout)
  code, stdout, err = run_command(
      evaluate.main,
      capsys,
      f'--workdir={run}',
      f'--real={real}',
      '--num=3',
      f'--batch={BATCH}',
      '--metrics=fid,kid',
      '--nowrite',
  )
  assert code == 0, err
  got = {r['metric']: r for r in map(json.loads, stdout.splitlines())}
  assert got['fid3']['num_real'] == reference['n_real'] == 3
  assert got['fid3']['value'] == pytest.approx(reference['fid'], rel=1e-5)
  assert got['kid3']['value'] == pytest.approx(reference['kid_mean'], rel=1e-4)


@pytest.mark.e2e
def test_one_line_errors(run, png_folder, tmp_path, capsys):
  weights = os.path.join(REPO, 'tests', 'data', 'official', 'r3gan_c0.pkl')
  stats = tmp_path / 'stats.npz'
  fid_lib.save_stats(str(stats), np.zeros(3), np.eye(3), n=5)  # no features
  for argv, message in (
      ([f'--weights={weights}'], '--real is needed: a weights file names no data set'),
      ([f'--workdir={run}', '--real=/nonexistent'], '--real /nonexistent does not exist'),
      ([f'--workdir={run}', '--metrics=fid,is'], '--metrics: choose from fid,kid,pr'),
      ([f'--workdir={run}', '--num=1'], '--num must be >= 2, got 1'),
      ([f'--workdir={run}', '--num=3'], '--num must be > 3 for precision and recall'),
      ([f'--workdir={run}', '--step=9'], 'no checkpoint at step 9'),
      ([f'--workdir={run}', '--trunc=0.5'], '--trunc=0.5: the dcgan generator tracks no'),
      ([f'--workdir={tmp_path}/none'], f'--workdir {tmp_path}/none does not exist'),
  ):
    code, out, err = run_command(evaluate.main, capsys, *argv)
    assert (code, out) == (1, ''), err
    line = f'osgan_jax.evaluate: error: {message}'
    assert len(err.strip().splitlines()) == 1 and err.startswith(line), err
  if inception.default_weights_path() is not None:
    code, out, err = run_command(
        evaluate.main, capsys, f'--workdir={run}', f'--real={stats}', '--metrics=fid,pr'
    )
    assert code == 1 and 'holds no features (KID and precision/recall need them)' in err
