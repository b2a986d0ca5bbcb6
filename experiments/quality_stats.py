"""The quality study's statistics and rendering, pure: rows in, verdicts, tables and
plots out (``experiments.compare_quality`` runs the training that makes the rows).

Two designs share the rows and the rule: one- against two-stage per entry, and (rows
that name a ``baseline`` entry, one stage) every entry against the baseline. The
decision rule (Welch's t-test, the 90% interval, the +-10% equivalence margin) and the
equal-wall-time interpolation are specified in ``experiments/README.md``.
"""

from __future__ import annotations

import math
import os

import numpy as np

from experiments import common

CONFIG = 'configs/dcgan_fashion_mnist.py'
STAGES = ('one', 'two')
STAGE_LABEL = {'one': 'one-stage', 'two': 'two-stage'}
STAGE_COLOR = {'one': 'tab:blue', 'two': 'tab:orange'}
ALPHA, MARGIN = 0.05, 0.10  # the verdict's test level and equivalence margin


def variant(row: dict) -> str:
  """The study entry of a row: its ``variant`` (rows from before there were config
  variants: their loss)."""
  return row.get('variant') or row['loss']


def row_key(row: dict) -> tuple:
  return variant(row), row['stage'], row['seed'], row['step']


def read_rows(path: str) -> list:
  """The rows of a study's jsonl; for a key (variant, stage, seed, step) written
  twice, the last."""
  return list({row_key(r): r for r in common.read_jsonl(path)}.values())


# ------------------------------------------------------------------ statistics


def _mean_std(values) -> tuple:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def welch(one, two, alpha: float = ALPHA) -> dict | None:
  """Welch's comparison of mean(one) - mean(two): ``diff``, ``df`` (Welch-
  Satterthwaite), two-sided ``p`` and the (1 - 2 alpha) confidence interval ``ci``;
  None with fewer than 2 values on a side. No spread at all (``df`` None): the
  difference is exact (p 1 if it is 0, else 0; ci the point)."""
  from scipy import stats

  a, b = np.asarray(one, np.float64), np.asarray(two, np.float64)
  if len(a) < 2 or len(b) < 2:
    return None
  diff = float(a.mean() - b.mean())
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  if va + vb == 0:
    return {'diff': diff, 'df': None, 'p': 1.0 if diff == 0 else 0.0, 'ci': (diff, diff)}
  df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  se = math.sqrt(va + vb)
  half = float(stats.t.ppf(1 - alpha, df) * se)
  p = float(2 * stats.t.sf(abs(diff) / se, df))
  return {'diff': diff, 'df': float(df), 'p': p, 'ci': (diff - half, diff + half)}


def verdict(one, two, alpha: float = ALPHA, margin: float = MARGIN) -> dict:
  """Values ``one`` (one-stage; an entry) against ``two`` (two-stage; the baseline),
  per seed, lower is better, None values dropped: 'better' / 'worse' when Welch's p <
  ``alpha``; else 'same' when the (1 - 2 alpha) interval lies strictly within
  +-``margin`` x |mean(two)| (two one-sided tests), or with no spread when the exact
  difference does; else 'not distinguishable' (also with fewer than 2 values on a
  side)."""
  a = [v for v in one if v is not None]
  b = [v for v in two if v is not None]
  out = {'verdict': 'not distinguishable', 'n_one': len(a), 'n_two': len(b)}
  w = welch(a, b, alpha)
  out.update(w or {'diff': None, 'p': None, 'ci': None})
  if w is None:
    return out
  bound = margin * abs(float(np.mean(b)))
  low, high = w['ci']
  if w['df'] is None and (abs(w['diff']) < bound or w['diff'] == 0):
    out['verdict'] = 'same'  # no spread: the difference is exact, and small
  elif w['p'] < alpha:
    out['verdict'] = 'better' if w['diff'] < 0 else 'worse'
  elif -bound < low and high < bound:
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
      n_exact = [at[s][seed].get('n_exact_run_mean') for seed in seeds]
      n_exact = [v for v in n_exact if v is not None]
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
          'n_exact': _mean_std(n_exact) if n_exact else None,
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


def summarize_against(rows: list, baseline: str) -> dict:
  """Per variant, the baseline first, in one stage: the classifier FID at the study's
  final step (the last one every entry has reached) over the seeds that reached it,
  each seed's best over its evaluations up to it, the logged augmentation p there, and
  each other entry's verdict against the baseline."""
  (stage,) = {r['stage'] for r in rows}
  names = sorted(dict.fromkeys(variant(r) for r in rows), key=lambda n: n != baseline)
  runs = {n: _runs(rows, n, stage) for n in names}
  runs = {n: rr for n, rr in runs.items() if rr}
  if baseline not in runs:
    return {}
  final = min(max(r['step'] for rs in rr.values() for r in rs) for rr in runs.values())
  summary = {}
  for name, rr in runs.items():
    at = {
        seed: next(r for r in rs if r['step'] == final)
        for seed, rs in rr.items()
        if any(r['step'] == final for r in rs)
    }
    fid = [r['fid_classifier'] for r in at.values()]
    best = [min(r['fid_classifier'] for r in rr[s] if r['step'] <= final) for s in at]
    p = [r['augment_p'] for r in at.values() if r.get('augment_p') is not None]
    first = next(iter(at.values()))
    summary[name] = {
        'stage': stage,
        'final_step': final,
        'seeds': list(at),
        'overrides': first.get('overrides', {}),
        'train_seconds': _mean_std([r['train_seconds'] for r in at.values()]),
        'fid_classifier': _mean_std(fid),
        'fid_classifier_values': fid,
        'fid_classifier_range': (min(fid), max(fid)),
        'fid_classifier_best': _mean_std(best),
        'fid_classifier_samples': first.get('fid_classifier_samples'),
        'augment_p': _mean_std(p) if p else None,
    }
  for name, e in summary.items():
    if name != baseline:
      e['verdict'] = verdict(
          e['fid_classifier_values'], summary[baseline]['fid_classifier_values']
      )
  return summary


def conclusion(summary: dict, baseline: str) -> dict:
  """The entries whose final classifier FID is lower than the baseline's by the rule
  ('better'), and the sentence that says so or that none is."""
  lower = [
      n for n, e in summary.items() if e.get('verdict', {}).get('verdict') == 'better'
  ]
  who = ', '.join(f'`{n}`' for n in lower) + (' have' if len(lower) > 1 else ' has')
  n = min((len(e['seeds']) for e in summary.values()), default=0)
  return {
      'lower': lower,
      'text': f'At the final step {who if lower else "no entry has"} a lower classifier '
      f'FID than `{baseline}` by the rule ({n} seed{"s" if n != 1 else ""}).',
  }


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
  # Rows from before n_exact was recorded render as they did.
  has_n = any(r.get('n_exact_run_mean') is not None for r in rows)
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
      'equal time s | FID (classifier) at equal time |'
      + (' n_exact per step |' if has_n else ''),
      '|' + ' --- |' * (10 if has_n else 9),
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
          + (f' {_pm(st["n_exact"], 1)} |' if has_n else '')
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
      f'{ALPHA}); otherwise "not distinguishable at N seeds".'
      + (
          ' n_exact: fakes per step that took the exact path (mean over the run).'
          if has_n
          else ''
      ),
  ]
  return '\n'.join(lines) + '\n'


def _pyplot():
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  return plt


def plot(rows: list, summary: dict, path: str, x: str) -> str:
  """Classifier FID against ``x`` ('step' or 'train_seconds'), one panel per loss:
  every seed thin, the mean over seeds thick."""
  plt = _pyplot()
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


def _settings(overrides: dict) -> str:
  return ', '.join(f'`{k}={v}`' for k, v in sorted(overrides.items())) or '-'


def markdown_against(rows: list, summary: dict, baseline: str) -> str:
  """The table, the verdicts against ``baseline`` and the conclusion of a one-stage
  study as markdown."""
  first = rows[0]
  acc = first.get('classifier_test_accuracy')
  settings = [e['overrides'] for e in summary.values()]
  common_items = {
      k: v for k, v in settings[0].items() if all(o.get(k) == v for o in settings)
  }
  configs = ', '.join(f'`{c}`' for c in sorted({r.get('config', CONFIG) for r in rows}))
  lines = [
      f'Study `{first.get("study", "?")}`: {configs}, {STAGE_LABEL[first["stage"]]}, '
      f'{_settings(common_items)}, {len(rows)} rows. `fid_classifier`: FID in the '
      f'penultimate features of a LeNet-5 trained on the whole training split (test '
      f'accuracy {"?" if acc is None else f"{100 * acc:.2f}%"}), generated images vs '
      f"the test split. Mean ± std over seeds; range: the seeds' lowest and highest; "
      f"best: each seed's lowest over its evaluations up to the final step; p: the "
      f'augmentation probability logged last.',
      '',
      '| entry | settings | seeds | steps | train s | FID (classifier) | range | '
      'best FID (classifier) | p |',
      '|' + ' --- |' * 9,
  ]
  for name, e in summary.items():
    own = {k: v for k, v in e['overrides'].items() if k not in common_items}
    low, high = e['fid_classifier_range']
    lines.append(
        f'| {name} | {_settings(own)} | {len(e["seeds"])} | {e["final_step"]} | '
        f'{_pm(e["train_seconds"], 0)} | {_pm(e["fid_classifier"])} '
        f'({e["fid_classifier_samples"]} samples) | {low:.2f}-{high:.2f} | '
        f'{_pm(e["fid_classifier_best"])} | {_pm(e["augment_p"], 3)} |'
    )
  lines += [
      '',
      f'| entry | against `{baseline}`, final step (classifier FID) |',
      '| --- | --- |',
  ]
  for name, e in summary.items():
    if name != baseline:
      lines.append(f'| {name} | {_verdict_text(e["verdict"], len(e["seeds"]))} |')
  lines += [
      '',
      conclusion(summary, baseline)['text'],
      '',
      f'Decision rule (Δ = entry mean - `{baseline}` mean; lower FID is better): Welch '
      f't-test, two-sided p < {ALPHA} -> better / worse; otherwise "same" when the 90% '
      f'Welch confidence interval of Δ lies within ±{100 * MARGIN:.0f}% of the '
      f'`{baseline}` mean (two one-sided tests at {ALPHA}); otherwise "not '
      f'distinguishable at N seeds".',
  ]
  return '\n'.join(lines) + '\n'


def plot_against(rows: list, summary: dict, path: str) -> str:
  """Classifier FID against steps, every entry in one panel: the mean over seeds and
  the seeds' range."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for k, (name, e) in enumerate(summary.items()):
    curves = [
        {r['step']: r['fid_classifier'] for r in rs if r['step'] <= e['final_step']}
        for seed, rs in _runs(rows, name, e['stage']).items()
        if seed in e['seeds']
    ]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.asarray([[c[t] for t in steps] for c in curves])
    color = f'C{k}'
    ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.2, lw=0)
    ax.plot(
        steps,
        values.mean(0),
        'o-',
        color=color,
        ms=3,
        lw=2,
        label=f'{name} ({len(curves)} seeds)',
    )
  ax.set_xlabel('training step')
  ax.set_ylabel('FID in classifier features\n(generated vs test split)')
  ax.set_title('mean over seeds, shaded: their range', fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_augment(rows: list, summary: dict, path: str) -> str | None:
  """The adaptive entries' augmentation p and r_t (with its target) against steps, one
  line per seed, from the rows' ``augment_log``; None without an adaptive entry."""
  adaptive = [
      n for n, e in summary.items() if e['overrides'].get('augment.target', 0) > 0
  ]
  if not adaptive:
    return None
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for k, name in enumerate(adaptive):
    e = summary[name]
    for j, seed in enumerate(e['seeds']):
      log = sorted(
          (
              tuple(point)
              for r in rows
              if variant(r) == name and r['seed'] == seed
              for point in r.get('augment_log', ())
              if point[0] <= e['final_step']
          ),
      )
      label = f'{name} seed {seed}'
      style = dict(color=f'C{k}', ls=('-', '--', ':', '-.')[j % 4], lw=1.2, label=label)
      axes[0].plot([t for t, _, _ in log], [p for _, p, _ in log], **style)
      rt = [(t, v) for t, _, v in log if v is not None]
      axes[1].plot([t for t, _ in rt], [v for _, v in rt], **style)
    axes[1].axhline(e['overrides']['augment.target'], color=f'C{k}', lw=0.8, alpha=0.6)
  axes[0].set_ylabel('augmentation p')
  axes[1].set_ylabel('r_t = E[sign(D(real))]\n(line: target)')
  for ax in axes:
    ax.set_xlabel('training step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def render(out: str, study: str) -> dict:
  """``<study>.md`` and the PNGs from ``<study>.jsonl`` alone; returns the paths."""
  rows = read_rows(os.path.join(out, f'{study}.jsonl'))
  if not rows:
    raise SystemExit(f'no rows in {os.path.join(out, study + ".jsonl")}')
  baseline = next((r['baseline'] for r in rows if r.get('baseline')), None)
  if baseline:
    summary = summarize_against(rows, baseline)
    if not summary:
      raise SystemExit(f'no rows of the baseline entry {baseline!r} in {study}.jsonl')
    paths = {
        'table': os.path.join(out, f'{study}.md'),
        'steps_png': os.path.join(out, f'{study}_fid_vs_steps.png'),
    }
    with open(paths['table'], 'w') as f:
      f.write(markdown_against(rows, summary, baseline))
    plot_against(rows, summary, paths['steps_png'])
    p_png = plot_augment(rows, summary, os.path.join(out, f'{study}_augment_p.png'))
    return {**paths, **({'p_png': p_png} if p_png else {})}
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
