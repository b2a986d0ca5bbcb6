"""One-stage vs two-stage sample quality: FID/KID against the test set over time.

Issue 6. Trains the Fashion-MNIST DCGAN (``configs/dcgan_fashion_mnist.py``) with the
non-saturating loss and with a symmetric loss (minimax; the config's GroupNorm D treats
samples independently), one-stage and two-stage, from the same seeds, for the same
number of steps (so the same number of real images), all through
``osgan_jax.train.train_and_evaluate``.

Every run is trained in chunks of ``--eval-every`` steps: each chunk is one call of
``train_and_evaluate`` that resumes from the run's last checkpoint, and the chunks of
all runs are interleaved (chunk k of every run before chunk k + 1 of any), so load from
other processes on a shared machine falls on every variant alike. After each chunk the
returned state's generator (inference mode) makes ``--fid-samples`` images from a fixed
latent key, and FID and KID are computed against TF-Inception features of
``--fid-real`` Fashion-MNIST TEST images (``data.split='test'``; the training loop's own
FID uses training images, so this script computes the test reference itself with
``osgan_jax.metrics.fid``). Training wall time excludes compilation and evaluation:
it is the sum over the run's ``metrics.jsonl`` records of steps / ``steps_per_sec``
(the loop times every step of an interval but the first of each call, which compiles).

Writes to ``--out``: ``quality.json`` (every evaluation point), ``quality.csv``,
``summary.json``/``summary.md`` (final FID/KID, wall time, and FID at the wall-clock
budget of the faster variant) and ``fid_<loss>.png`` (FID against wall time and
against images seen; mean over seeds, min-max shaded).

  python experiments/compare_quality.py                 # defaults: < 60 min on 2 cores
  python experiments/compare_quality.py --quick         # a few minutes, 1 seed
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

CONFIG = os.path.join(REPO, 'configs', 'dcgan_fashion_mnist.py')
STAGES = ('one', 'two')
STAGE_LABEL = {'one': 'one-stage', 'two': 'two-stage', 'official_two': 'official two-stage'}
STAGE_COLOR = {'one': 'tab:blue', 'two': 'tab:orange', 'official_two': 'tab:green'}


# ------------------------------------------------------------------ wall time

def read_metrics(path: str) -> list:
  """The records of a ``metrics.jsonl`` (partly written lines skipped)."""
  records = []
  if not os.path.exists(path):
    return records
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        pass
  return records


def train_seconds(records: list, up_to_step: int | None = None) -> float:
  """Training wall time from ``metrics.jsonl`` records: sum of steps / steps_per_sec.

  Each record covers the steps since the previous record (or since 0); records
  without ``steps_per_sec`` (e.g. FID-only lines) are skipped.
  """
  total, prev = 0.0, 0
  for r in sorted((r for r in records if 'steps_per_sec' in r), key=lambda r: r['step']):
    if up_to_step is not None and r['step'] > up_to_step:
      break
    if r['steps_per_sec'] > 0:
      total += (r['step'] - prev) / r['steps_per_sec']
    prev = r['step']
  return total


# ------------------------------------------------------------------ aggregation

def aggregate(points: list) -> dict:
  """(loss, stage) -> per-step curves over seeds: step, images, wall and FID/KID stats.

  ``points``: dicts with ``loss``, ``stage``, ``seed``, ``step``, ``images``,
  ``wall_s``, ``fid``, ``kid_mean``.
  """
  groups = {}
  for p in points:
    groups.setdefault((p['loss'], p['stage']), []).append(p)
  out = {}
  for key, ps in groups.items():
    steps_ = sorted({p['step'] for p in ps})
    curve = {k: [] for k in ('step', 'images', 'n_seeds', 'wall_mean', 'wall_min',
                             'wall_max', 'fid_mean', 'fid_std', 'fid_min', 'fid_max',
                             'kid_mean', 'kid_std')}
    for s in steps_:
      at = [p for p in ps if p['step'] == s]
      fid = np.asarray([p['fid'] for p in at], np.float64)
      kid = np.asarray([p['kid_mean'] for p in at], np.float64)
      wall = np.asarray([p['wall_s'] for p in at], np.float64)
      curve['step'].append(s)
      curve['images'].append(at[0]['images'])
      curve['n_seeds'].append(len(at))
      curve['wall_mean'].append(float(wall.mean()))
      curve['wall_min'].append(float(wall.min()))
      curve['wall_max'].append(float(wall.max()))
      curve['fid_mean'].append(float(fid.mean()))
      curve['fid_std'].append(float(fid.std(ddof=1)) if len(fid) > 1 else 0.0)
      curve['fid_min'].append(float(fid.min()))
      curve['fid_max'].append(float(fid.max()))
      curve['kid_mean'].append(float(kid.mean()))
      curve['kid_std'].append(float(kid.std(ddof=1)) if len(kid) > 1 else 0.0)
    out[key] = curve
  return out


def value_at_time(walls, values, budget: float):
  """Linear interpolation of ``values`` over increasing ``walls`` at ``budget``.

  None when the budget is before the first point (nothing evaluated yet); the last
  value when it is after the last point.
  """
  if not walls or budget < walls[0]:
    return None
  for i in range(1, len(walls)):
    if budget <= walls[i]:
      w0, w1 = walls[i - 1], walls[i]
      t = 0.0 if w1 == w0 else (budget - w0) / (w1 - w0)
      return float(values[i - 1] + t * (values[i] - values[i - 1]))
  return float(values[-1])


def summarize(points: list) -> list:
  """One row per (loss, stage): final FID/KID, wall time, and FID at a common budget.

  The budget of a loss is the final mean training wall time of its faster stage; each
  stage's FID there is interpolated per seed on its own FID-vs-wall curve, then
  averaged (None for a seed whose first evaluation came later).
  """
  curves = aggregate(points)
  rows = []
  for loss in sorted({k[0] for k in curves}):
    stages = [s for s in (*STAGES, 'official_two') if (loss, s) in curves]
    budget = min(curves[(loss, s)]['wall_mean'][-1] for s in stages)
    for stage in stages:
      c = curves[(loss, stage)]
      at_budget = []
      for seed in sorted({p['seed'] for p in points
                          if p['loss'] == loss and p['stage'] == stage}):
        ps = sorted((p for p in points if p['loss'] == loss and p['stage'] == stage
                     and p['seed'] == seed), key=lambda p: p['step'])
        at_budget.append(value_at_time([p['wall_s'] for p in ps],
                                       [p['fid'] for p in ps], budget))
      known = [v for v in at_budget if v is not None]
      rows.append({
          'loss': loss, 'stage': stage, 'seeds': c['n_seeds'][-1],
          'steps': c['step'][-1], 'images': c['images'][-1],
          'wall_s_mean': c['wall_mean'][-1], 'wall_s_min': c['wall_min'][-1],
          'wall_s_max': c['wall_max'][-1],
          'fid_final_mean': c['fid_mean'][-1], 'fid_final_std': c['fid_std'][-1],
          'kid_final_mean': c['kid_mean'][-1], 'kid_final_std': c['kid_std'][-1],
          'budget_s': budget,
          'fid_at_budget_mean': float(np.mean(known)) if known else None,
          'fid_at_budget_seeds': len(known)})
  return rows


def summary_markdown(rows: list) -> str:
  head = ('loss', 'stage', 'seeds', 'steps', 'train s (mean)', 'FID final',
          'KID final', 'budget s', 'FID at budget (seeds there)')
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for r in rows:
    at = r['fid_at_budget_mean']
    lines.append('| ' + ' | '.join((
        r['loss'], STAGE_LABEL.get(r['stage'], r['stage']), str(r['seeds']),
        str(r['steps']), f'{r["wall_s_mean"]:.0f}',
        f'{r["fid_final_mean"]:.1f} ± {r["fid_final_std"]:.1f}',
        f'{r["kid_final_mean"]:.3f} ± {r["kid_final_std"]:.3f}',
        f'{r["budget_s"]:.0f}',
        '-' if at is None else f'{at:.1f} ({r["fid_at_budget_seeds"]}/{r["seeds"]} seeds)'
    )) + ' |')
  return '\n'.join(lines)


# ------------------------------------------------------------------ plots

def plot(points: list, out_dir: str) -> list:
  """``fid_<loss>.png`` per loss: FID vs training wall time and vs images seen."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  curves = aggregate(points)
  paths = []
  for loss in sorted({k[0] for k in curves}):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for stage in (*STAGES, 'official_two'):
      c = curves.get((loss, stage))
      if c is None:
        continue
      label = f'{STAGE_LABEL[stage]} ({c["n_seeds"][-1]} seeds)'
      for ax, x in ((axes[0], c['wall_mean']), (axes[1], c['images'])):
        ax.plot(x, c['fid_mean'], 'o-', color=STAGE_COLOR[stage], label=label, ms=3)
        ax.fill_between(x, c['fid_min'], c['fid_max'], color=STAGE_COLOR[stage],
                        alpha=0.2, lw=0)
    axes[0].set_xlabel('training wall time (s, mean over seeds)')
    axes[1].set_xlabel('real images seen')
    axes[0].set_ylabel('FID (test set)')
    for ax in axes:
      ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f'Fashion-MNIST DCGAN, {loss} loss: mean FID, min-max over seeds',
                 fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, f'fid_{loss}.png')
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(path)
  return paths


def write_outputs(points: list, out_dir: str, meta: dict | None = None) -> dict:
  """quality.json/.csv, summary.json/.md and the PNGs; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {'points': os.path.join(out_dir, 'quality.json'),
           'csv': os.path.join(out_dir, 'quality.csv'),
           'summary': os.path.join(out_dir, 'summary.json'),
           'summary_md': os.path.join(out_dir, 'summary.md')}
  with open(paths['points'], 'w') as f:
    json.dump({'meta': meta or {}, 'points': points}, f, indent=1)
  fields = ('loss', 'stage', 'seed', 'step', 'images', 'wall_s', 'fid', 'kid_mean',
            'kid_std')
  with open(paths['csv'], 'w', newline='') as f:
    w = csv.DictWriter(f, fields, extrasaction='ignore')
    w.writeheader()
    w.writerows(points)
  rows = summarize(points)
  with open(paths['summary'], 'w') as f:
    json.dump({'meta': meta or {}, 'rows': rows}, f, indent=1)
  with open(paths['summary_md'], 'w') as f:
    f.write(summary_markdown(rows) + '\n')
  paths['plots'] = plot(points, out_dir)
  return paths


# ------------------------------------------------------------------ evaluation

class Evaluator:
  """FID/KID of generators against TF-Inception features of Fashion-MNIST test images."""

  def __init__(self, num_real: int, num_samples: int, cache_dir: str,
               batch_size: int = 32):
    from osgan_jax.metrics import fid as fid_lib
    self.fid_lib = fid_lib
    self.num_samples = num_samples
    self.extractor = fid_lib.FeatureExtractor(batch_size=batch_size)
    self.real = self._test_features(num_real, cache_dir)

  def _test_features(self, n: int, cache_dir: str) -> np.ndarray:
    path = os.path.join(cache_dir, f'fmnist_test_features_{n}.npz')
    if os.path.exists(path):
      return self.fid_lib.load_stats(path)['features']
    import ml_collections
    from osgan_jax import config_base
    from osgan_jax import data as data_lib
    data = ml_collections.ConfigDict(
        config_base.load_config(CONFIG)['data'].to_dict())
    data.split = 'test'
    it = data_lib.make_iterator(data, min(n, 250), seed=0)  # a fixed random subset
    try:
      images = []
      while sum(len(x) for x in images) < n:
        images.append(np.asarray(next(it)['image']))
    finally:
      it.close()
    t0 = time.perf_counter()
    feats = self.extractor(np.concatenate(images)[:n])
    print(f'test features of {n} images: {time.perf_counter() - t0:.0f} s', flush=True)
    self.fid_lib.save_stats(path, *self.fid_lib.statistics(feats), features=feats, n=n)
    return feats

  def __call__(self, images) -> dict:
    feats = self.extractor(np.asarray(images))
    kid_mean, kid_std = self.fid_lib.kid(feats, self.real, num_subsets=100,
                                         subset_size=1000)
    return {'fid': self.fid_lib.fid_from_features(feats, self.real),
            'kid_mean': kid_mean, 'kid_std': kid_std}


def make_sampler(config, num_samples: int):
  """Jitted ``(params_g, model_state_g) -> images`` of a fixed latent key (G in
  inference mode), the same for every run and seed."""
  import jax
  from osgan_jax import gan as gan_lib

  generator, discriminator = gan_lib.create_models(config)
  gan = gan_lib.make_gan(config, generator, discriminator)
  key = jax.random.PRNGKey(1234)

  def sample(params_g, model_state_g):
    z = gan.sample_latent(key, num_samples)
    fake, _ = gan.generate(params_g, model_state_g, z, jax.random.PRNGKey(0),
                           train=False)
    return fake['image']

  return jax.jit(sample)


def run_config(loss: str, stage: str, seed: int, total_steps: int, upto: int,
               log_every: int):
  """The training config of one chunk: train up to step ``upto`` of ``total_steps``."""
  from osgan_jax import config_base
  overrides = {'loss': loss, 'stage': stage, 'seed': seed, 'num_train_steps': upto,
               'log_every_steps': log_every, 'checkpoint_every_steps': total_steps,
               'sample_every_steps': total_steps, 'keep_checkpoints': 1,
               'progress_bar': False}
  return config_base.load_config(CONFIG, overrides)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--losses', default='non_saturating,minimax')
  p.add_argument('--stages', default='one,two')
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--steps', type=int, default=300, help='training steps of every run')
  p.add_argument('--eval-every', type=int, default=150,
                 help='steps per chunk; FID/KID after every chunk')
  p.add_argument('--fid-samples', type=int, default=64, help='generated images per FID')
  p.add_argument('--fid-real', type=int, default=480, help='test images (reference)')
  p.add_argument('--quick', action='store_true',
                 help='1 seed, 40 steps, FID every 20 steps on 16 vs 32 images')
  p.add_argument('--out', default=os.path.join(REPO, 'experiments', 'results', 'quality'))
  p.add_argument('--workdir', default='',
                 help='root of the training workdirs (default: a new temporary dir)')
  p.add_argument('--render', action='store_true',
                 help='rewrite the tables and plots from OUT/quality.json and exit')
  args = p.parse_args(argv)
  if args.render:
    with open(os.path.join(args.out, 'quality.json')) as f:
      saved = json.load(f)
    write_outputs(saved['points'], args.out, saved['meta'])
    print(summary_markdown(summarize(saved['points'])))
    return 0
  if args.quick:
    args.seeds, args.steps, args.eval_every = '0', 40, 20
    args.fid_samples, args.fid_real = 16, 32
  losses = [s for s in args.losses.split(',') if s]
  stages = [s for s in args.stages.split(',') if s]
  seeds = [int(s) for s in args.seeds.split(',') if s]
  if args.steps % args.eval_every:
    p.error('--steps must be a multiple of --eval-every')

  import jax
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  root = args.workdir or tempfile.mkdtemp(prefix='osgan_quality_')
  os.makedirs(root, exist_ok=True)
  # Every chunk call recompiles the same step: reuse the compiled program.
  jax.config.update('jax_compilation_cache_dir', os.path.join(root, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  from osgan_jax import train

  t_start = time.perf_counter()
  meta = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec='seconds'),
          'command': ' '.join([os.path.basename(sys.argv[0])] + list(argv or sys.argv[1:])),
          'cpu_count': os.cpu_count(), 'jax': jax.__version__, 'steps': args.steps,
          'eval_every': args.eval_every, 'fid_samples': args.fid_samples,
          'fid_real': args.fid_real, 'reference': 'fashion_mnist test split',
          'config': os.path.relpath(CONFIG, REPO)}
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import benchmark_speed  # pylint: disable=import-error
  meta.update(benchmark_speed.git_state())
  print(f'workdirs under {root}', flush=True)
  evaluate = Evaluator(args.fid_real, args.fid_samples, root)
  sampler = None
  points = []
  runs = [(loss, seed, stage) for loss in losses for seed in seeds for stage in stages]
  for upto in range(args.eval_every, args.steps + 1, args.eval_every):
    # Alternate the order chunk by chunk, so no stage always runs first.
    order = runs if upto // args.eval_every % 2 else runs[::-1]
    for loss, seed, stage in order:
      config = run_config(loss, stage, seed, args.steps, upto, args.eval_every)
      workdir = os.path.join(root, f'{loss}_{stage}_seed{seed}')
      state = train.train_and_evaluate(config, workdir)
      if sampler is None:
        sampler = make_sampler(config, args.fid_samples)
      images = jax.device_get(sampler(state.params_g, state.model_state_g))
      t0 = time.perf_counter()
      metrics = evaluate(images)
      records = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
      point = {'loss': loss, 'stage': stage, 'seed': seed, 'step': upto,
               'images': upto * int(config.batch_size),
               'wall_s': train_seconds(records, upto), **metrics}
      points.append(point)
      print(f'[{time.perf_counter() - t_start:6.0f} s] {loss:15s} {stage:3s} seed {seed} '
            f'step {upto:5d}: train {point["wall_s"]:6.1f} s, FID {metrics["fid"]:7.2f}, '
            f'KID {metrics["kid_mean"]:.4f} (eval {time.perf_counter() - t0:.0f} s)',
            flush=True)
    meta['wall_s_total'] = time.perf_counter() - t_start
    paths = write_outputs(points, args.out, meta)  # partial results after each chunk
  print(summary_markdown(summarize(points)))
  print(f'wrote {", ".join(v if isinstance(v, str) else ", ".join(v) for v in paths.values())} '
        f'in {time.perf_counter() - t_start:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
