"""Does one-stage train as well as two-stage? FID over training, per loss (issue 17).

For each selected loss, trains one-stage and two-stage runs (``config.stage``) of
``configs/dcgan_fashion_mnist.py`` (Fashion-MNIST 32x32, DCGAN d=32, GroupNorm D) from
the same seeds through the one training loop (``osgan_jax.train.train_and_evaluate``),
in chunks of ``--chunk-steps`` steps: one call per chunk, resuming from the run's
checkpoint, chunk k of every run before chunk k + 1 of any and the order reversed
every other chunk, so load from other processes falls on every variant alike. An
entry of ``--losses`` may also be a config of its own (``CONFIG_VARIANTS``:
``stylegan2_tiny``, with its loss and regularisers), on the same data and evaluators.
``--workers N`` trains N runs at once, each worker a process of this script with
``--shard K/N`` (run i goes to worker i mod N); rows then record ``workers`` = N,
and their ``train_seconds`` were measured beside N - 1 other runs.

Metrics, named for what they are:

* ``fid_classifier``: FID in the penultimate features (84-d) of a LeNet-5 trained once
  on the Fashion-MNIST training split (the DFAD teacher task,
  ``configs/dfad_teacher_fashion_mnist.py``; deterministic, cached in
  ``WORKDIR/classifier``, its test accuracy in every row) between ``--fid-samples``
  generated images (fixed latents per seed, the same for both stages) and the whole
  TEST split. The loop's own FID evaluator computes it (``config.evals.fid.features =
  'classifier'``, ``fid.real_split = 'test'``) every ``--eval-every`` steps.
* ``fid_inception``: TF-Inception FID (``osgan_jax.metrics.fid``) of
  ``--inception-samples`` generated images against ``--inception-real`` test images,
  at the final step only (the same evaluator class with ``features='inception'``,
  called on the final state); null elsewhere. 147 s for 1,000 images on 2 shared
  CPU cores.
* ``train_seconds``: the loop's ``train_seconds`` at that step: time in training
  steps only, summed over the chunks; compilation (the first step of every chunk, 1
  step in ``--eval-every``), evaluation and checkpointing excluded.

Every evaluation appends one row per (loss, stage, seed, step) to
``OUT/<study>.jsonl``; rows already there are skipped on the next start, so the study
can be stopped (Ctrl-C: the loop saves a checkpoint first) and rerun with the same
command to go on. The command lines are appended to ``OUT/commands.txt``.
``--render`` rewrites, from the rows alone: ``OUT/<study>.md`` (the table, the
verdicts and the decision rule), ``OUT/<study>_fid_vs_steps.png`` and
``OUT/<study>_fid_vs_seconds.png`` (one panel per loss). A study renders itself when
it ends.

Verdict per loss (one-stage against two-stage, lower FID is better), from the
per-seed values: a Welch t-test (two-sided) at p < 0.05 gives "better" or "worse";
otherwise "same" when the 90% Welch confidence interval of the difference of means lies
within +-10% of the two-stage mean (two one-sided tests at 0.05); otherwise "not
distinguishable at N seeds".

``--size`` picks the settings (each flag overrides one): ``cpu`` (issue 17's CPU study:
3 losses x 2 stages x 3 seeds x 4,000 steps, about 3 h on 2 shared cores), ``gpu``
(6 losses and StyleGAN2 tiny, 5 seeds, 8 workers, classifier and Inception FID on
10,000 samples; not run yet: ``experiments/quality_gpu.sh`` runs it on one GPU
machine) and ``tiny`` (the test's: 16x16, 2 seeds, 4 steps, no Inception; seconds).

  python experiments/compare_quality.py --size cpu --workdir /tmp/osgan_quality
  python experiments/compare_quality.py --size cpu --render    # tables, plots again
  python experiments/compare_quality.py --size tiny --out /tmp/q --workdir /tmp/q/wd
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

CONFIG = 'configs/dcgan_fashion_mnist.py'
CLASSIFIER_CONFIG = 'configs/dfad_teacher_fashion_mnist.py'
OUT = os.path.join(REPO, 'experiments', 'results', 'quality')
STAGES = ('one', 'two')
STAGE_LABEL = {'one': 'one-stage', 'two': 'two-stage'}
STAGE_COLOR = {'one': 'tab:blue', 'two': 'tab:orange'}
# Settings a loss needs beyond the config's (the official WGAN: BatchNorm D, clipping).
LOSS_OVERRIDES = {
    'wgan': {'model.discriminator.norm': 'batch', 'optimizer.weight_clip': 0.01}
}
# Entries of --losses that are whole configs (their own model, loss and regularisers)
# rather than a loss of CONFIG; same data, resolution and FID evaluators.
CONFIG_VARIANTS = {'stylegan2_tiny': 'configs/stylegan2_tiny.py'}
# The sizes of the study. classifier_steps None: the classifier config's own step
# count; overrides: of CONFIG (the entries of CONFIG_VARIANTS run at their config's).
SIZES = {
    'cpu': dict(
        losses='non_saturating,minimax,hinge',
        seeds=3,
        steps=4000,
        eval_every=1000,
        chunk_steps=None,
        fid_samples=5000,
        fid_real=-1,
        inception_samples=1000,
        inception_real=2000,
        classifier_steps=None,
        fid_batch=250,
        inception_batch=50,
        workers=1,
        overrides={},
    ),
    # One GPU: runs are one call each (no chunks: nothing else shares the device) and
    # 8 at a time (--workers: a d=32 DCGAN step leaves most of an H100 idle).
    'gpu': dict(
        losses='non_saturating,minimax,hinge,wgan,relativistic,bgan,stylegan2_tiny',
        seeds=5,
        steps=4000,
        eval_every=1000,
        chunk_steps=0,
        fid_samples=10000,
        fid_real=-1,
        inception_samples=10000,
        inception_real=10000,
        classifier_steps=None,
        fid_batch=1000,
        inception_batch=250,
        workers=8,
        overrides={},
    ),
    # For the test: seconds, not minutes; one call per run; the numbers mean nothing.
    'tiny': dict(
        losses='non_saturating',
        seeds=2,
        steps=4,
        eval_every=2,
        chunk_steps=4,
        fid_samples=64,
        fid_real=256,
        inception_samples=0,
        inception_real=0,
        classifier_steps=20,
        fid_batch=64,
        inception_batch=50,
        workers=1,
        overrides={
            'data.resolution': 16,
            'batch_size': 16,
            'z_dim': 16,
            'model.generator.width': 8,
            'model.discriminator.width': 8,
        },
    ),
}
ALPHA, MARGIN = 0.05, 0.10  # the verdict's test level and equivalence margin
REQUIRED_FIELDS = (
    'variant',
    'loss',
    'stage',
    'seed',
    'step',
    'train_seconds',
    'fid_classifier',
    'fid_inception',
)


# ------------------------------------------------------------------ rows


def variant(row: dict) -> str:
  """The study entry of a row: its ``variant`` (rows from before there were config
  variants: their loss)."""
  return row.get('variant') or row['loss']


def row_key(row: dict) -> tuple:
  return variant(row), row['stage'], row['seed'], row['step']


def read_rows(path: str) -> list:
  """The rows of a study's jsonl (a partly written last line skipped); for a key
  (variant, stage, seed, step) written twice, the last."""
  rows = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except ValueError:
          continue
        rows[row_key(r)] = r
  return list(rows.values())


def append_row(path: str, row: dict) -> None:
  """One line, whole, under an exclusive lock (--workers append to the same file)."""
  import fcntl

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.write(json.dumps(row, sort_keys=True) + '\n')
    f.flush()
    os.fsync(f.fileno())


def read_metrics(workdir: str) -> list:
  """The records of a run's ``metrics.jsonl`` (partly written lines skipped)."""
  records = []
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          pass
  return records


# ------------------------------------------------------------------ statistics


def _mean_std(values) -> tuple:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def verdict(one, two, alpha: float = ALPHA, margin: float = MARGIN) -> dict:
  """One-stage values ``one`` against two-stage ``two`` (per seed; lower is better).

  Welch's t-test (two-sided): p < ``alpha`` -> 'better' / 'worse'. Otherwise 'same'
  when the (1 - 2 alpha) Welch confidence interval of mean(one) - mean(two) lies within
  +-``margin`` x mean(two) (two one-sided tests at ``alpha``), else 'not
  distinguishable'. Fewer than 2 values on a side: 'not distinguishable'.
  """
  from scipy import stats

  a = np.asarray([v for v in one if v is not None], np.float64)
  b = np.asarray([v for v in two if v is not None], np.float64)
  out = {
      'verdict': 'not distinguishable',
      'n_one': len(a),
      'n_two': len(b),
      'diff': None,
      'p': None,
      'ci': None,
  }
  if len(a) < 2 or len(b) < 2:
    return out
  diff = float(a.mean() - b.mean())
  var = a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)
  out['diff'] = diff
  bound = margin * abs(float(b.mean()))
  if var == 0:  # no spread at all: the difference is exact
    out['p'], out['ci'] = (1.0 if diff == 0 else 0.0), (diff, diff)
    out['verdict'] = (
        'same' if abs(diff) < bound or diff == 0 else 'better' if diff < 0 else 'worse'
    )
    return out
  df = var**2 / (
      (a.var(ddof=1) / len(a)) ** 2 / (len(a) - 1)
      + (b.var(ddof=1) / len(b)) ** 2 / (len(b) - 1)
  )
  p = float(2 * stats.t.sf(abs(diff) / math.sqrt(var), df))
  half = float(stats.t.ppf(1 - alpha, df) * math.sqrt(var))
  out['p'], out['ci'] = p, (diff - half, diff + half)
  if p < alpha:
    out['verdict'] = 'better' if diff < 0 else 'worse'
  elif -bound < diff - half and diff + half < bound:
    out['verdict'] = 'same'
  return out


def value_at_time(times, values, budget: float):
  """``values`` linearly interpolated over increasing ``times`` at ``budget``: None
  before the first point, the last value after the last."""
  if not times or budget < times[0]:
    return None
  for i in range(1, len(times)):
    if budget <= times[i]:
      t0, t1 = times[i - 1], times[i]
      w = 0.0 if t1 == t0 else (budget - t0) / (t1 - t0)
      return float(values[i - 1] + w * (values[i] - values[i - 1]))
  return float(values[-1])


def _runs(rows: list, name: str, stage: str) -> dict:
  """seed -> the rows of variant ``name``'s run with a classifier FID, by step."""
  out = {}
  for r in rows:
    if variant(r) == name and r['stage'] == stage and r.get('fid_classifier') is not None:
      out.setdefault(r['seed'], []).append(r)
  return {s: sorted(rs, key=lambda r: r['step']) for s, rs in sorted(out.items())}


def summarize(rows: list) -> dict:
  """Per variant (loss): per stage the final-step statistics, the equal-wall-time
  values and the verdicts. Only seeds with both stages at the common final step
  count."""
  summary = {}
  for loss in sorted({variant(r) for r in rows}):
    runs = {s: _runs(rows, loss, s) for s in STAGES}
    if not all(runs.values()):
      continue
    final = min(max(r['step'] for r in rs) for s in STAGES for rs in runs[s].values())
    seeds = sorted(
        set.intersection(
            *(
                {
                    seed
                    for seed, rs in runs[s].items()
                    if any(r['step'] == final for r in rs)
                }
                for s in STAGES
            )
        )
    )
    if not seeds:
      continue
    at = {
        s: {seed: next(r for r in runs[s][seed] if r['step'] == final) for seed in seeds}
        for s in STAGES
    }
    # Equal wall time: the faster stage's mean final training time; each run's
    # classifier FID interpolated on its own curve there.
    times = {s: [at[s][seed]['train_seconds'] for seed in seeds] for s in STAGES}
    budget = min(float(np.mean(times[s])) for s in STAGES)
    entry = {'final_step': final, 'seeds': seeds, 'budget_seconds': budget, 'stages': {}}
    for s in STAGES:
      curves = {seed: [r for r in runs[s][seed] if r['step'] <= final] for seed in seeds}
      fid_c = [at[s][seed]['fid_classifier'] for seed in seeds]
      fid_i = [at[s][seed].get('fid_inception') for seed in seeds]
      fid_i = [v for v in fid_i if v is not None]
      at_budget = [
          value_at_time(
              [r['train_seconds'] for r in c], [r['fid_classifier'] for r in c], budget
          )
          for c in curves.values()
      ]
      entry['stages'][s] = {
          'train_seconds': _mean_std(times[s]),
          'fid_classifier': _mean_std(fid_c),
          'fid_classifier_values': fid_c,
          'fid_inception': _mean_std(fid_i) if fid_i else None,
          'fid_inception_values': fid_i,
          'fid_classifier_at_budget': (
              _mean_std(at_budget) if None not in at_budget else None
          ),
          'fid_classifier_at_budget_values': at_budget,
          'fid_classifier_samples': at[s][seeds[0]].get('fid_classifier_samples'),
          'fid_inception_samples': at[s][seeds[0]].get('fid_inception_samples'),
      }
    one, two = entry['stages']['one'], entry['stages']['two']
    entry['verdict_steps'] = verdict(
        one['fid_classifier_values'], two['fid_classifier_values']
    )
    entry['verdict_time'] = verdict(
        one['fid_classifier_at_budget_values'], two['fid_classifier_at_budget_values']
    )
    entry['verdict_inception'] = verdict(
        one['fid_inception_values'], two['fid_inception_values']
    )
    summary[loss] = entry
  return summary


# ------------------------------------------------------------------ rendering


def _pm(ms, digits: int = 2) -> str:
  return '-' if ms is None else f'{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}'


def _verdict_text(v: dict, n: int) -> str:
  word = v['verdict']
  if word == 'not distinguishable':
    word = f'not distinguishable at {n} seeds'
  if v['diff'] is None:
    return word
  return (
      f'{word} (Δ {v["diff"]:+.2f}, 90% CI [{v["ci"][0]:+.2f}, {v["ci"][1]:+.2f}], '
      f'p = {v["p"]:.3f})'
  )


def markdown(rows: list, summary: dict) -> str:
  """The study's table, verdicts and provenance as markdown."""
  first = rows[0] if rows else {}
  acc = first.get('classifier_test_accuracy')
  configs = ', '.join(f'`{c}`' for c in sorted({r.get('config', CONFIG) for r in rows}))
  own = {variant(r): (r['config'], r['loss']) for r in rows if variant(r) != r['loss']}
  lines = [
      f'Study `{first.get("study", "?")}`: {configs}, '
      f'{len(rows)} rows. `fid_classifier`: FID in the penultimate features of a '
      f'LeNet-5 trained on the training split (test accuracy '
      f'{"?" if acc is None else f"{100 * acc:.2f}%"}), generated images vs the test '
      f'split; `fid_inception`: TF-Inception FID, final step only. Mean ± std over '
      f'seeds; "equal time": each run\'s classifier FID linearly interpolated between '
      f"its evaluations at the faster stage's mean final training time."
      + ''.join(
          f' `{name}`: `{config}` (its own model, loss `{loss}` and regularisers).'
          for name, (config, loss) in sorted(own.items())
      ),
      '',
      '| loss | stage | seeds | steps | train s | FID (classifier) | FID (Inception) | '
      'equal time s | FID (classifier) at equal time |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for loss, e in summary.items():
    for s in STAGES:
      st = e['stages'][s]
      ni = st['fid_inception_samples']
      lines.append(
          f'| {loss} | {STAGE_LABEL[s]} | {len(e["seeds"])} | {e["final_step"]} | '
          f'{_pm(st["train_seconds"], 0)} | {_pm(st["fid_classifier"])} '
          f'({st["fid_classifier_samples"]} samples) | '
          f'{_pm(st["fid_inception"])}{f" ({ni} samples)" if ni else ""} | '
          f'{e["budget_seconds"]:.0f} | {_pm(st["fid_classifier_at_budget"])} |'
      )
  lines += [
      '',
      '| loss | one-stage vs two-stage, equal steps (classifier FID) | '
      'equal time (classifier FID) | final step (Inception FID) |',
      '| --- | --- | --- | --- |',
  ]
  for loss, e in summary.items():
    n = len(e['seeds'])
    lines.append(
        f'| {loss} | {_verdict_text(e["verdict_steps"], n)} | '
        f'{_verdict_text(e["verdict_time"], n)} | '
        f'{_verdict_text(e["verdict_inception"], n)} |'
    )
  lines += [
      '',
      f'Decision rule (Δ = one-stage mean - two-stage mean; lower FID is '
      f'better): Welch t-test, two-sided p < {ALPHA} -> better / worse; otherwise '
      f'"same" when the 90% Welch confidence interval of Δ lies within '
      f'±{100 * MARGIN:.0f}% of the two-stage mean (two one-sided tests at '
      f'{ALPHA}); otherwise "not distinguishable at N seeds".',
  ]
  return '\n'.join(lines) + '\n'


def plot(rows: list, summary: dict, path: str, x: str) -> str:
  """Classifier FID against ``x`` ('step' or 'train_seconds'), one panel per loss:
  every seed thin, the mean over seeds thick."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  losses = list(summary)
  fig, axes = plt.subplots(
      1, max(1, len(losses)), figsize=(4.2 * max(1, len(losses)), 3.4), squeeze=False
  )
  for ax, loss in zip(axes[0], losses):
    e = summary[loss]
    for s in STAGES:
      curves = [
          [r for r in rs if r['step'] <= e['final_step']]
          for seed, rs in _runs(rows, loss, s).items()
          if seed in e['seeds']
      ]
      for c in curves:
        ax.plot(
            [r[x] for r in c],
            [r['fid_classifier'] for r in c],
            '-',
            color=STAGE_COLOR[s],
            alpha=0.35,
            lw=0.8,
        )
      steps = sorted(set.intersection(*({r['step'] for r in c} for c in curves)))
      mean_x = [
          np.mean([r[x] for c in curves for r in c if r['step'] == t]) for t in steps
      ]
      mean_y = [
          np.mean([r['fid_classifier'] for c in curves for r in c if r['step'] == t])
          for t in steps
      ]
      ax.plot(
          mean_x,
          mean_y,
          'o-',
          color=STAGE_COLOR[s],
          ms=3,
          lw=2,
          label=f'{STAGE_LABEL[s]} ({len(curves)} seeds)',
      )
    if x == 'train_seconds':
      ax.axvline(e['budget_seconds'], color='grey', ls='--', lw=0.8)
    ax.set_title(loss, fontsize=10)
    ax.set_xlabel('training step' if x == 'step' else 'training seconds (steps only)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel('FID in classifier features\n(generated vs test split)')
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def render(out: str, study: str) -> dict:
  """``<study>.md`` and the two PNGs from ``<study>.jsonl`` alone; returns the paths."""
  rows = read_rows(os.path.join(out, f'{study}.jsonl'))
  if not rows:
    raise SystemExit(f'no rows in {os.path.join(out, study + ".jsonl")}')
  summary = summarize(rows)
  paths = {
      'table': os.path.join(out, f'{study}.md'),
      'steps_png': os.path.join(out, f'{study}_fid_vs_steps.png'),
      'seconds_png': os.path.join(out, f'{study}_fid_vs_seconds.png'),
  }
  with open(paths['table'], 'w') as f:
    f.write(markdown(rows, summary))
  plot(rows, summary, paths['steps_png'], 'step')
  plot(rows, summary, paths['seconds_png'], 'train_seconds')
  return paths


# ------------------------------------------------------------------ training


def git_rev() -> str | None:
  """HEAD (7 digits), with '+dirty' when the package or configs differ from it."""
  import benchmark_speed  # this folder's shared provenance helpers

  state = benchmark_speed.git_state()
  if state['git_commit'] is None:
    return None
  return state['git_commit'][:7] + ('+dirty' if state['git_modified'] else '')


def classifier_accuracy(workdir: str) -> float | None:
  """The last test accuracy the FID classifier in ``workdir`` logged."""
  acc = [r['test_accuracy'] for r in read_metrics(workdir) if 'test_accuracy' in r]
  return acc[-1] if acc else None


def train_classifier(
    workdir: str, steps: int | None, resolution: int, data_path: str = ''
) -> float | None:
  """Trains (or finds, cached) the FID classifier in ``workdir``, for images of
  ``resolution``; its test accuracy."""
  from osgan_jax import config as config_lib
  from osgan_jax import train

  overrides = {'progress_bar': False, 'data.resolution': resolution}
  if data_path:
    overrides['data.path'] = data_path
  if steps is not None:
    overrides.update(
        {
            'num_train_steps': steps,
            'evals.test_accuracy.every_steps': steps,
            'checkpoint_every_steps': steps,
            'log_every_steps': steps,
        }
    )
  config = config_lib.load_config(os.path.join(REPO, CLASSIFIER_CONFIG), overrides)
  t0 = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  acc = classifier_accuracy(workdir)
  print(
      f'FID classifier in {workdir}: test accuracy '
      f'{"?" if acc is None else acc} ({time.perf_counter() - t0:.0f} s)',
      flush=True,
  )
  return acc


def variant_config(args, name: str) -> tuple:
  """``(config file, its overrides)`` of a study entry: a loss of CONFIG (with the
  size's overrides and the loss's own), or a config of CONFIG_VARIANTS as it is."""
  if name in CONFIG_VARIANTS:
    return CONFIG_VARIANTS[name], {}
  return CONFIG, {
      'loss': name,
      **SIZES[args.size]['overrides'],
      **LOSS_OVERRIDES.get(name, {}),
  }


def run_config(args, name: str, stage: str, seed: int, upto: int, features: str):
  """The config of one chunk of variant ``name`` (train up to step ``upto``) with
  its FID evaluator."""
  from osgan_jax import config as config_lib

  path, own = variant_config(args, name)
  overrides = {
      'stage': stage,
      'seed': seed,
      'num_train_steps': upto,
      'checkpoint_every_steps': args.steps,
      'evals.samples.every_steps': args.eval_every,
      'keep_checkpoints': 1,
      'progress_bar': False,
      'evals.fid.every_steps': args.eval_every,
      'evals.fid.features': features,
      'evals.fid.real_split': 'test',
      'evals.fid.cache_dir': os.path.join(args.workdir, 'fid_cache'),
      'evals.fid.keep_best': False,
      'evals.fid.kid': False,
      **({'data.path': args.data_path} if args.data_path else {}),
      **own,
  }
  if features == 'classifier':
    overrides.update(
        {
            'evals.fid.classifier_workdir': args.classifier_workdir,
            'evals.fid.num_samples': args.fid_samples,
            'evals.fid.num_real': args.fid_real,
            'evals.fid.batch_size': min(args.fid_batch, args.fid_samples),
        }
    )
  else:
    overrides.update(
        {
            'evals.fid.num_samples': args.inception_samples,
            'evals.fid.num_real': args.inception_real,
            'evals.fid.batch_size': min(
                args.inception_batch, max(1, args.inception_samples)
            ),
        }
    )
  return config_lib.load_config(os.path.join(REPO, path), overrides)


def _evaluate(config, workdir: str, state, step: int) -> dict:
  """The values of the FID evaluator ``config`` gives the loop, on ``state``."""
  from osgan_jax import tasks
  from osgan_jax.training import evaluators

  task = tasks.build(config, workdir)
  (fid,) = (e for e in task.evaluators if isinstance(e, evaluators.Fid))
  return fid(state, step, None)


def _train_seconds(workdir: str, step: int) -> float | None:
  """``train_seconds`` of the checkpoint at ``step`` (when metrics.jsonl lacks it)."""
  from osgan_jax.training import checkpoint

  manager = checkpoint.manager(os.path.join(workdir, 'checkpoints'), 1, async_save=False)
  try:
    return checkpoint.restore_meta(manager, step).get('train_seconds')
  finally:
    manager.close()


def _row(
    common: dict,
    args,
    name: str,
    stage: str,
    seed: int,
    step: int,
    record: dict,
    config,
    num_test: int,
) -> dict:
  path, overrides = variant_config(args, name)
  return {
      **common,
      'variant': name,
      'config': path,
      'loss': str(config.loss),
      'stage': stage,
      'seed': seed,
      'step': step,
      'images': step * int(config.batch_size),
      'train_seconds': record['train_seconds'],
      'fid_classifier': record['fid_classifier'],
      'fid_classifier_seconds': record.get('fid_classifier_seconds'),
      'fid_classifier_samples': args.fid_samples,
      'fid_classifier_real': num_test
      if args.fid_real < 0
      else min(args.fid_real, num_test),
      'fid_inception': None,
      'fid_inception_samples': None,
      'fid_inception_real': None,
      'fid_inception_seconds': None,
      'overrides': overrides,
  }


def run_study(args) -> int:
  """Trains and evaluates what ``OUT/<study>.jsonl`` lacks, then renders."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  saved = {
      k: getattr(jax.config, k)
      for k in ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  }
  # Every chunk compiles the programs its run's previous chunk (and the other seeds)
  # compiled: keep them on disk.
  jax.config.update('jax_compilation_cache_dir', os.path.join(args.workdir, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  compilation_cache.reset_cache()
  try:
    return _run_study(args)
  finally:
    for key, value in saved.items():
      jax.config.update(key, value)
    compilation_cache.reset_cache()


def _run_study(args) -> int:
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  if args.shard is not None:  # a worker: the parent trained the classifier
    return train_runs(args, classifier_accuracy(args.classifier_workdir))
  with open(os.path.join(args.out, 'commands.txt'), 'a') as f:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    f.write(f'# {now} git {git_rev()}\n{args.command}\n')
  test = run_config(args, args.losses[0], 'one', 0, args.steps, 'classifier').data
  accuracy = train_classifier(
      args.classifier_workdir,
      args.classifier_steps,
      int(test.resolution),
      args.data_path,
  )
  prepare_references(args)
  code = run_workers(args) if args.workers > 1 else train_runs(args, accuracy)
  if code == 0:
    paths = render(args.out, args.study)
    print(open(paths['table']).read())
    print('wrote ' + ', '.join(paths.values()))
  return code


def prepare_references(args) -> None:
  """The real images' statistics of each FID, computed (or found cached) once here,
  before any run or worker would compute them at its first evaluation."""
  from osgan_jax import tasks
  from osgan_jax.training import evaluators

  for features in (
      ('classifier', 'inception') if args.inception_samples else ('classifier',)
  ):
    config = run_config(args, args.losses[0], 'one', 0, args.steps, features)
    t0 = time.perf_counter()
    task = tasks.build(config, args.workdir)
    (fid,) = (e for e in task.evaluators if isinstance(e, evaluators.Fid))
    real = fid.real_stats()
    print(
        f'{features} features of {real["n"]} {config.evals.fid.real_split} images: '
        f'{time.perf_counter() - t0:.0f} s',
        flush=True,
    )


def run_workers(args) -> int:
  """The study's runs in ``args.workers`` processes at once (this command with
  ``--shard K/N``: run i of the list goes to worker i mod N), each appending its rows;
  0, or the first worker's non-zero exit code. SIGINT or SIGTERM here is passed on as
  SIGTERM (a second SIGINT would abort a worker's checkpoint): each worker saves a
  checkpoint and stops."""
  import signal

  n = args.workers
  command = [sys.executable, os.path.abspath(__file__), *args.argv, '--workers', '1']
  workers = [subprocess.Popen(command + ['--shard', f'{k}/{n}']) for k in range(n)]

  def stop(signum, frame):
    del signum, frame
    for w in workers:
      if w.poll() is None:
        w.send_signal(signal.SIGTERM)

  previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    codes = [w.wait() for w in workers]
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  failed = [(k, code) for k, code in enumerate(codes) if code]
  for k, code in failed:
    print(f'worker {k}/{n} exited with {code}; the same command goes on', flush=True)
  return failed[0][1] if failed else 0


def train_runs(args, accuracy: float | None) -> int:
  """Trains and evaluates the runs of this process (all, or its ``--shard``) that
  ``OUT/<study>.jsonl`` lacks, appending their rows; 0 when done or out of
  ``--stop-after`` time, 130 when stopped by a signal."""
  import jax
  from osgan_jax import data as data_lib
  from osgan_jax import train

  jsonl = os.path.join(args.out, f'{args.study}.jsonl')
  seeds = list(range(args.seeds))
  evals = list(range(args.eval_every, args.steps + 1, args.eval_every))
  ends = list(range(args.chunk_steps, args.steps + 1, args.chunk_steps))
  # Seed-major: a study stopped part-way (--stop-after) has every entry at fewer seeds,
  # rather than some entries at all seeds and others at none.
  runs = [
      (name, seed, stage) for seed in seeds for name in args.losses for stage in STAGES
  ]
  shard, workers = args.shard or (0, 1)
  runs = runs[shard::workers]
  tag = f'[{shard}/{workers}] ' if args.shard else ''
  done = {row_key(r): r for r in read_rows(jsonl)}

  def missing(name, stage, seed, step):
    row = done.get((name, stage, seed, step))
    return row is None or (
        step == args.steps
        and args.inception_samples > 0
        and row.get('fid_inception') is None
    )

  test = run_config(args, args.losses[0], 'one', 0, args.steps, 'classifier').data
  with test.unlocked():
    test.split = 'test'
  num_test = data_lib.dataset_info(test)['num_examples']
  device = jax.devices()[0]
  common = {
      'study': args.study,
      'git_rev': git_rev(),
      'device': f'{device.platform}:{device.device_kind} x{jax.device_count()}, '
      f'{os.cpu_count()} cpus',
      'jax': jax.__version__,
      'workers': workers,
      'classifier_test_accuracy': accuracy,
  }
  t_start = time.perf_counter()
  for k, upto in enumerate(ends):
    here = [s for s in evals if upto - args.chunk_steps < s <= upto]
    for name, seed, stage in runs if k % 2 == 0 else runs[::-1]:
      todo = [s for s in here if missing(name, stage, seed, s)]
      if not todo:
        continue
      if args.stop_after and time.perf_counter() - t_start > 60 * args.stop_after:
        print(
            f'{tag}--stop-after {args.stop_after:g} min: stopping here; the same '
            f'command goes on',
            flush=True,
        )
        return 0
      workdir = os.path.join(args.workdir, args.study, f'{name}_{stage}_seed{seed}')
      config = run_config(args, name, stage, seed, upto, 'classifier')
      t0 = time.perf_counter()
      state = train.train_and_evaluate(config, workdir)
      if int(jax.device_get(state.step)) < upto:  # stopped by a signal, checkpointed
        print(f'{tag}Stopped; run the same command again to go on.', flush=True)
        return 130
      records = read_metrics(workdir)
      for step in todo:
        row = done.get((name, stage, seed, step))
        if row is None:
          record = [r for r in records if r['step'] == step and 'fid_classifier' in r]
          if record:
            record = record[-1]
          elif step == upto:  # trained before, but its evaluation was not logged
            record = {
                **_evaluate(config, workdir, state, step),
                'train_seconds': _train_seconds(workdir, step),
            }
          else:
            print(
                f'{tag}{workdir}: no classifier FID logged at step {step}, and the run '
                f'is past it; that row stays missing',
                flush=True,
            )
            continue
          row = _row(common, args, name, stage, seed, step, record, config, num_test)
        if step == args.steps and args.inception_samples:
          values = _evaluate(
              run_config(args, name, stage, seed, upto, 'inception'), workdir, state, step
          )
          row.update(
              {
                  'fid_inception': values['fid'],
                  'fid_inception_samples': args.inception_samples,
                  'fid_inception_real': args.inception_real,
                  'fid_inception_seconds': values['fid_seconds'],
              }
          )
        row['time'] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'
        )
        append_row(jsonl, row)
        done[(name, stage, seed, step)] = row
        inception = (
            ''
            if row['fid_inception'] is None
            else f', Inception FID {row["fid_inception"]:.2f} '
            f'({row["fid_inception_seconds"]:.0f} s)'
        )
        print(
            f'{tag}[{time.perf_counter() - t_start:6.0f} s] {name} {stage}-stage seed '
            f'{seed} step {step}: train {row["train_seconds"]:.1f} s, classifier FID '
            f'{row["fid_classifier"]:.2f} ({row["fid_classifier_seconds"] or 0:.1f} s)'
            f'{inception}; chunk {time.perf_counter() - t0:.0f} s',
            flush=True,
        )
  return 0


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument(
      '--size',
      choices=sorted(SIZES),
      default='cpu',
      help='preset of every setting below (each flag overrides its value)',
  )
  p.add_argument(
      '--tiny',
      action='store_const',
      const='tiny',
      dest='size',
      help='--size tiny: a few steps, 2 seeds, 1 loss (for the test)',
  )
  p.add_argument(
      '--gpu',
      action='store_const',
      const='gpu',
      dest='size',
      help='--size gpu: 6 losses and StyleGAN2 tiny, 5 seeds, 8 workers, Inception '
      'FID on 10,000 samples',
  )
  p.add_argument('--study', help='name of the rows file OUT/<study>.jsonl (the size)')
  p.add_argument(
      '--losses',
      help='comma-separated loss names (of the DCGAN config) and configs of their own '
      f'({", ".join(CONFIG_VARIANTS)})',
  )
  p.add_argument('--seeds', type=int, help='seeds 0 .. N-1')
  p.add_argument('--steps', type=int, help='training steps of every run')
  p.add_argument('--eval-every', type=int, help='steps between classifier FIDs')
  p.add_argument(
      '--chunk-steps',
      type=int,
      help='steps per training call, interleaved over runs (default --eval-every; '
      '0: the whole run in one call)',
  )
  p.add_argument('--fid-samples', type=int, help='generated images per classifier FID')
  p.add_argument('--fid-real', type=int, help='test images of its reference (-1: all)')
  p.add_argument(
      '--inception-samples',
      type=int,
      help='generated images of the final Inception FID (0: none)',
  )
  p.add_argument('--inception-real', type=int, help='test images of its reference')
  p.add_argument('--fid-batch', type=int, help='images per classifier-feature batch')
  p.add_argument('--inception-batch', type=int, help='images per Inception batch')
  p.add_argument(
      '--workers',
      type=int,
      help='runs trained at once, each in its own process (1: one after another here)',
  )
  p.add_argument('--shard', help=argparse.SUPPRESS)  # K/N: a worker of --workers N
  p.add_argument(
      '--data-path',
      default='',
      help="Fashion-MNIST's IDX directory (default: the data config's)",
  )
  p.add_argument(
      '--classifier-steps',
      type=int,
      help="the classifier's training steps (default: its config's)",
  )
  p.add_argument(
      '--classifier-workdir',
      help='a trained classifier to reuse (default WORKDIR/classifier)',
  )
  p.add_argument('--out', default=OUT, help='rows, tables, plots, commands.txt')
  p.add_argument(
      '--workdir',
      default='/tmp/osgan_quality',
      help='training workdirs and caches; keep it to resume the study',
  )
  p.add_argument(
      '--stop-after',
      type=float,
      default=0,
      help='minutes: start no new chunk after this long (0: no limit)',
  )
  p.add_argument(
      '--render',
      action='store_true',
      help='rewrite the table and plots from OUT/<study>.jsonl and exit',
  )
  args = p.parse_args(argv)
  for key, value in SIZES[args.size].items():
    if key != 'overrides' and getattr(args, key) is None:
      setattr(args, key, value)
  args.study = args.study or args.size
  args.argv = list(sys.argv[1:] if argv is None else argv)
  if args.classifier_workdir is None:
    suffix = ('' if args.classifier_steps is None else f'_{args.classifier_steps}') + (
        '_tiny' if args.size == 'tiny' else ''
    )  # tiny's is 16x16
    args.classifier_workdir = os.path.join(args.workdir, f'classifier{suffix}')
  if not args.render:
    from osgan_jax.core import losses as losses_lib

    args.losses = [s for s in args.losses.split(',') if s]
    unknown = [
        s for s in args.losses if s not in CONFIG_VARIANTS and s not in losses_lib.names()
    ]
    if unknown or not args.losses:
      p.error(
          f'--losses: {",".join(unknown) or "none given"}; choose from '
          f'{", ".join(sorted(losses_lib.names()) + sorted(CONFIG_VARIANTS))}'
      )
    if SIZES[args.size]['overrides'] and set(args.losses) & set(CONFIG_VARIANTS):
      p.error(
          f'--size {args.size} changes the DCGAN config; configs of their own run at '
          'their size: use --size cpu or gpu'
      )
    if args.shard is not None:
      args.shard = tuple(int(v) for v in args.shard.split('/'))
    if args.workers < 1:
      p.error('--workers must be >= 1')
    if args.chunk_steps is None:
      args.chunk_steps = args.eval_every
    elif args.chunk_steps == 0:
      args.chunk_steps = args.steps
    if args.steps % args.chunk_steps or args.chunk_steps % args.eval_every:
      p.error('--steps must be a multiple of --chunk-steps, and that of --eval-every')
    if args.inception_samples and args.inception_real < 2:
      p.error('--inception-real must be >= 2 with --inception-samples')
  args.command = ' '.join(
      shlex.quote(a) for a in ['python', 'experiments/compare_quality.py', *args.argv]
  )
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  if args.render:
    paths = render(args.out, args.study)
    print(open(paths['table']).read())
    return 0
  if args.workers > 1:  # processes that share one GPU take its memory as they need it
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  return run_study(args)


if __name__ == '__main__':
  sys.exit(main())
