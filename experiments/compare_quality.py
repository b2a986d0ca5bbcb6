"""Does one-stage train as well as two-stage? FID over training, per loss; and does
augmentation help one-stage on limited data (``--size limited``)?

Trains one- and two-stage runs of each entry (or one stage of each, against a
``--baseline`` entry) from the same seeds through the one loop
(``osgan_jax.train.train_and_evaluate``), seed-major and in chunks interleaved over
runs, each run's config carrying both FIDs as ``config.evals`` entries (``fid_classifier``
every ``--eval-every`` steps, Inception ``fid`` at the last step), and appends one row
per evaluation to ``OUT/<study>.jsonl``; the same command resumes. The statistics and
rendering are ``experiments.quality_stats``; the protocol, sizes and decision rule are
in ``experiments/README.md``.

  python -m experiments.compare_quality --size cpu --out DIR --workdir /tmp/osgan_quality
  python -m experiments.compare_quality --size cpu --out DIR --render
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time

from experiments import common
from experiments import quality_stats as stats

CONFIG = stats.CONFIG
CLASSIFIER_CONFIG = 'configs/dfad_teacher_fashion_mnist.py'
# Settings a loss needs beyond the config's (the official WGAN: BatchNorm D, clipping).
LOSS_OVERRIDES = {
    'wgan': {'model.discriminator.norm': 'batch', 'optimizer.weight_clip': 0.01}
}
# Entries of --losses that are whole configs (their own model, loss and regularisers).
CONFIG_VARIANTS = {'stylegan2_tiny': 'configs/stylegan2_tiny.py'}
# Entries of --losses that are settings of the DCGAN config, its loss included: the
# limited-data study's augmentation (ADA's p adapts to r_t's target 0.6 at 100 kimg per
# unit of p, not its 500: experiments/README.md).
SETTING_VARIANTS = {
    'none': {'loss': 'non_saturating', 'augment.pipe': 'none'},
    'diffaugment': {
        'loss': 'non_saturating',
        'augment.pipe': 'diffaugment',
        'augment.p': 1.0,
    },
    'ada': {
        'loss': 'non_saturating',
        'augment.pipe': 'ada',
        'augment.p': 0.0,
        'augment.target': 0.6,
        'augment.speed_kimg': 100,
    },
}
_TINY = {
    'data.resolution': 16,
    'batch_size': 16,
    'z_dim': 16,
    'model.generator.width': 8,
    'model.discriminator.width': 8,
}
# The sizes (experiments/README.md); classifier_steps None: the classifier config's.
_CPU = dict(
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
    stages='one,two',
    baseline='',
    overrides={},
)
SIZES = {
    'cpu': _CPU,
    # One GPU: one call per run, 8 runs at once (a d=32 DCGAN leaves most of it idle).
    'gpu': {
        **_CPU,
        'losses': 'non_saturating,minimax,hinge,wgan,relativistic,bgan,stylegan2_tiny',
        'seeds': 5,
        'chunk_steps': 0,
        'fid_samples': 10000,
        'inception_samples': 10000,
        'inception_real': 10000,
        'fid_batch': 1000,
        'inception_batch': 250,
        'workers': 8,
    },
    # The test's: seconds; the numbers mean nothing.
    'tiny': {
        **_CPU,
        'losses': 'non_saturating',
        'seeds': 2,
        'steps': 4,
        'eval_every': 2,
        'chunk_steps': 4,
        'fid_samples': 64,
        'fid_real': 256,
        'inception_samples': 0,
        'inception_real': 0,
        'classifier_steps': 20,
        'fid_batch': 64,
        'overrides': _TINY,
    },
    # Augmentation on 1,000 training images, one stage: each entry against 'none'.
    'limited': {
        **_CPU,
        'losses': 'none,diffaugment,ada',
        'steps': 6000,
        'inception_samples': 0,
        'inception_real': 0,
        'stages': 'one',
        'baseline': 'none',
        'overrides': {'data.limit': 1000},
    },
}
REQUIRED_FIELDS = (
    'variant',
    'loss',
    'stage',
    'seed',
    'step',
    'train_seconds',
    'fid_classifier',
    'fid_inception',
    'n_exact_mean',
    'provenance',
)


# ------------------------------------------------------------------ configs


def variant_config(args, name: str) -> tuple:
  """``(config file, its overrides)`` of a study entry."""
  if name in CONFIG_VARIANTS:
    return CONFIG_VARIANTS[name], {}
  own = SETTING_VARIANTS.get(name, {'loss': name})
  return CONFIG, {
      **own,
      **SIZES[args.size]['overrides'],
      **LOSS_OVERRIDES.get(own['loss'], {}),
  }


def run_config(args, name: str, stage: str, seed: int, upto: int):
  """The config of one chunk (train to step ``upto``) with the study's two
  evaluators: ``evals.fid_classifier`` every ``--eval-every`` steps, and Inception
  ``evals.fid`` once, at the study's last step (off in earlier chunks)."""
  from osgan_jax import config as config_lib

  path, own = variant_config(args, name)
  final = upto == args.steps and args.inception_samples > 0
  common_fid = {
      'real_split': 'test',
      'cache_dir': os.path.join(args.workdir, 'fid_cache'),
      'keep_best': False,
      'kid': False,
  }
  overrides = {
      'stage': stage,
      'seed': seed,
      'num_train_steps': upto,
      'checkpoint_every_steps': args.steps,
      'evals.samples.every_steps': args.eval_every,
      'keep_checkpoints': 1,
      'progress_bar': False,
      **{f'evals.fid.{k}': v for k, v in common_fid.items()},
      'evals.fid.features': 'inception',
      'evals.fid.every_steps': args.steps if final else 0,
      'evals.fid.num_samples': max(args.inception_samples, 2),
      'evals.fid.num_real': max(args.inception_real, 2),
      'evals.fid.batch_size': min(args.inception_batch, max(1, args.inception_samples)),
      **({'data.path': args.data_path} if args.data_path else {}),
      **own,
  }
  config = config_lib.load_config(os.path.join(common.REPO, path), overrides)
  with config.unlocked():
    # n_exact is logged per interval: at least one interval per evaluation.
    config.log_every_steps = min(int(config.log_every_steps), args.eval_every)
    config.evals.fid_classifier = config_lib.eval_entry(
        'fid',
        every_steps=args.eval_every,
        features='classifier',
        classifier_workdir=args.classifier_workdir,
        num_samples=args.fid_samples,
        num_real=args.fid_real,
        batch_size=min(args.fid_batch, args.fid_samples),
        **common_fid,
    )
  return config


# ------------------------------------------------------------------ evaluators


def _context(config, workdir: str, gan=None):
  """The evaluators' context of ``config`` (``osgan_jax.tasks.evals``); without a
  ``gan`` it has no sampler (enough for the real images' statistics)."""
  from osgan_jax.tasks import evals
  from osgan_jax.tasks import gan as gan_lib
  from osgan_jax.tasks import teacher

  def sampler(n, salt):
    if gan is None:
      return None
    sample = gan_lib.make_sampler(config, gan, n, salt)
    return lambda state, i: sample(gan_lib.eval_params_g(state), state.model_state_g, i)

  return evals.Context(
      workdir=workdir,
      data=config.data.to_dict(),
      progress=False,
      sampler=sampler,
      load_classifier=teacher.load_classifier,
  )


def evaluators(config, workdir: str, names, gan=None) -> list:
  """The evaluators ``names`` of ``config.evals``, built by name as the loop builds
  them."""
  from osgan_jax.tasks import evals

  entries = {n: {**config.evals[n].to_dict(), 'every_steps': 1} for n in names}
  return evals.build(entries, _context(config, workdir, gan), kinds=('fid',))


def prepare_references(args) -> None:
  """Each FID's real statistics computed (or found cached) once, before any run or
  worker would compute them at its first evaluation."""
  config = run_config(args, args.losses[0], 'one', 0, args.steps)
  names = ('fid_classifier', 'fid') if args.inception_samples else ('fid_classifier',)
  for e in evaluators(config, args.workdir, names):
    t0 = time.perf_counter()
    real = e.real_stats()
    common.log(f'{e.metric}: {real["n"]} test images, {time.perf_counter() - t0:.0f} s')


def evaluate_late(config, workdir: str, state, step: int, name: str) -> dict:
  """Evaluator ``name`` on a finished run's state (its evaluation was not logged)."""
  from osgan_jax.tasks import gan as gan_lib

  gan = gan_lib.make_gan(config, *gan_lib.create_models(config))
  (e,) = evaluators(config, workdir, (name,), gan)
  return e(state, step, None)


# ------------------------------------------------------------------ the runs


def train_classifier(args, resolution: int) -> float | None:
  """Trains (or finds, cached) the FID classifier; its test accuracy."""
  from osgan_jax import config as config_lib
  from osgan_jax import train

  overrides = {'progress_bar': False, 'data.resolution': resolution}
  if args.data_path:
    overrides['data.path'] = args.data_path
  if args.classifier_steps is not None:
    n = args.classifier_steps
    overrides.update(
        {
            'num_train_steps': n,
            'evals.test_accuracy.every_steps': n,
            'checkpoint_every_steps': n,
            'log_every_steps': n,
        }
    )
  config = config_lib.load_config(os.path.join(common.REPO, CLASSIFIER_CONFIG), overrides)
  train.train_and_evaluate(config, args.classifier_workdir)
  return classifier_accuracy(args.classifier_workdir)


def classifier_accuracy(workdir: str) -> float | None:
  acc = [r['test_accuracy'] for r in _metrics(workdir) if 'test_accuracy' in r]
  return acc[-1] if acc else None


def _metrics(workdir: str) -> list:
  return common.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))


def n_exact_mean(records: list, lo: int, hi: int):
  """Fakes per step that took the exact path, over steps (lo, hi]: the logged interval
  means weighted by their lengths; None when the run logs none (two-stage)."""
  logged = sorted((r['step'], r['n_exact']) for r in records if 'n_exact' in r)
  total = weight = 0.0
  previous = 0
  for step, value in logged:
    if lo < step <= hi:
      total, weight = total + value * (step - previous), weight + (step - previous)
    previous = step
  return total / weight if weight else None


def augment_log(records: list, lo: int, hi: int) -> list:
  """``[step, augment_p, augment_rt]`` of every logged step in (lo, hi] (later lines
  win); empty when the run logs no augmentation."""
  out = {}
  for r in records:
    if 'augment_p' in r and lo < r['step'] <= hi:
      out[r['step']] = [r['step'], r['augment_p'], r.get('augment_rt')]
  return [out[s] for s in sorted(out)]


def logged(records: list, step: int) -> dict:
  """What the run logged at ``step`` (evaluations, train_seconds), later lines win."""
  out = {}
  for r in records:
    if r['step'] == step:
      out.update(r)
  return out


def make_row(args, base: dict, run: tuple, step: int, values: dict, config, records):
  """One row of the study (``REQUIRED_FIELDS`` and the rest)."""
  name, stage, seed = run
  path, overrides = variant_config(args, name)
  previous = max([s for s in range(0, step, args.eval_every)] or [0])
  inception = values.get('fid') if step == args.steps else None
  # The p trajectory of the interval that ends here, and p at its last logged step.
  augment = augment_log(records, previous, step)
  return {
      **base,
      **({'baseline': args.baseline} if args.baseline else {}),
      **(
          {
              'augment_p': augment[-1][1],
              'augment_rt': augment[-1][2],
              'augment_log': augment,
          }
          if augment
          else {}
      ),
      'variant': name,
      'config': path,
      'overrides': overrides,
      'loss': str(config.loss),
      'stage': stage,
      'seed': seed,
      'step': step,
      'images': step * int(config.batch_size),
      'train_seconds': values.get('train_seconds'),
      'fid_classifier': values['fid_classifier'],
      'fid_classifier_seconds': values.get('fid_classifier_seconds'),
      'fid_classifier_samples': args.fid_samples,
      'fid_inception': inception,
      'fid_inception_seconds': values.get('fid_seconds') if inception else None,
      'fid_inception_samples': args.inception_samples if inception else None,
      'fid_inception_real': args.inception_real if inception else None,
      'n_exact_mean': n_exact_mean(records, previous, step),
      'n_exact_run_mean': n_exact_mean(records, 0, step),
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def _values(args, run, config, workdir, state, step, upto, records) -> dict | None:
  """The evaluations of ``step``: logged, or (for the chunk's last step, not logged)
  computed now; None when the run is past an unlogged step."""
  values = logged(records, step)
  late = [
      name
      for name, metric, due in (
          ('fid_classifier', 'fid_classifier', True),
          ('fid', 'fid', step == args.steps and args.inception_samples > 0),
      )
      if due and metric not in values
  ]
  if late and step != upto:
    return None
  for name in late:
    values.update(evaluate_late(config, workdir, state, step, name))
  if 'train_seconds' not in values:  # not logged at this step: the checkpoint has it
    values['train_seconds'] = _checkpoint_seconds(workdir, step)
  return values


def _checkpoint_seconds(workdir: str, step: int):
  from osgan_jax.training import checkpoint

  manager = checkpoint.manager(os.path.join(workdir, 'checkpoints'), 1, async_save=False)
  try:
    return checkpoint.restore_meta(manager, step).get('train_seconds')
  finally:
    manager.close()


def plan(args) -> list:
  """The runs ``(entry, stage, seed)``, seed-major: a study stopped part-way has every
  entry at fewer seeds."""
  return [
      (n, st, seed)
      for seed in range(args.seeds)
      for n in args.losses
      for st in args.stages
  ]


def train_runs(args, accuracy) -> int:
  """Trains and evaluates this process's runs (all, or its ``--shard``) that the rows
  file lacks, appending their rows; 0 when done or out of ``--stop-after`` time, 130
  when stopped by a signal."""
  import jax
  from osgan_jax import data as data_lib
  from osgan_jax import train
  from osgan_jax.tasks import evals as evals_lib

  jsonl = os.path.join(args.out, f'{args.study}.jsonl')
  evals = list(range(args.eval_every, args.steps + 1, args.eval_every))
  ends = list(range(args.chunk_steps, args.steps + 1, args.chunk_steps))
  shard, workers = args.shard or (0, 1)
  runs, tag = plan(args)[shard::workers], f'[{shard}/{workers}] ' if args.shard else ''
  done = {stats.row_key(r): r for r in stats.read_rows(jsonl)}
  prov = common.provenance(args.command)
  base = {
      'study': args.study,
      'provenance': prov,
      'git_rev': common.short_rev(prov),
      'device': f'{prov["device"]} x{prov["device_count"]}, {os.cpu_count()} cpus',
      'workers': workers,
      'classifier_test_accuracy': accuracy,
  }
  test = run_config(args, args.losses[0], 'one', 0, args.steps).data.to_dict()
  num_test = data_lib.dataset_info(evals_lib.whole(test, split='test'))['num_examples']
  base['fid_classifier_real'] = (
      num_test if args.fid_real < 0 else min(args.fid_real, num_test)
  )

  def missing(run, step):
    row = done.get((run[0], run[1], run[2], step))
    final = step == args.steps and args.inception_samples > 0
    return row is None or (final and row.get('fid_inception') is None)

  t_start = time.perf_counter()
  for k, upto in enumerate(ends):
    here = [s for s in evals if upto - args.chunk_steps < s <= upto]
    for run in runs if k % 2 == 0 else runs[::-1]:
      todo = [s for s in here if missing(run, s)]
      if not todo:
        continue
      if args.stop_after and time.perf_counter() - t_start > 60 * args.stop_after:
        common.log(f'{tag}--stop-after {args.stop_after:g} min: the same command goes on')
        return 0
      name, stage, seed = run
      workdir = os.path.join(args.workdir, args.study, f'{name}_{stage}_seed{seed}')
      config = run_config(args, name, stage, seed, upto)
      t0 = time.perf_counter()
      state = train.train_and_evaluate(config, workdir)
      if int(jax.device_get(state.step)) < upto:  # stopped by a signal, checkpointed
        common.log(f'{tag}Stopped; run the same command again to go on.')
        return 130
      records = _metrics(workdir)
      for step in todo:
        values = _values(args, run, config, workdir, state, step, upto, records)
        if values is None:
          common.log(f'{tag}{workdir}: nothing logged at step {step}; that row stays out')
          continue
        row = make_row(args, base, run, step, values, config, records)
        common.append_jsonl(jsonl, row)
        done[stats.row_key(row)] = row
        common.log(
            f'{tag}[{time.perf_counter() - t_start:6.0f} s] {name} {stage}-stage seed '
            f'{seed} step {step}: classifier FID {row["fid_classifier"]:.2f}'
            + (
                ''
                if row['fid_inception'] is None
                else f', FID {row["fid_inception"]:.2f}'
            )
            + f'; chunk {time.perf_counter() - t0:.0f} s'
        )
  return 0


def run_workers(args) -> int:
  """The runs in ``args.workers`` processes (this command with ``--shard K/N``);
  SIGINT or SIGTERM here is passed on as SIGTERM, so each worker checkpoints and
  stops. 0, or the first failed worker's exit code."""
  n = args.workers
  command = [sys.executable, '-m', 'experiments.compare_quality', *args.argv]
  command += ['--workers', '1', '--out', args.out]
  workers = [
      subprocess.Popen(command + ['--shard', f'{k}/{n}'], cwd=common.REPO)
      for k in range(n)
  ]

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
  failed = [(k, c) for k, c in enumerate(codes) if c]
  for k, code in failed:
    common.log(f'worker {k}/{n} exited with {code}; the same command goes on')
  return failed[0][1] if failed else 0


def run_study(args) -> int:
  """Trains and evaluates what ``OUT/<study>.jsonl`` lacks, then renders."""
  import jax
  from absl import logging
  from jax.experimental.compilation_cache import compilation_cache

  logging.set_verbosity(logging.WARNING)
  # Every chunk compiles what its run's previous chunk compiled: keep it on disk.
  jax.config.update('jax_compilation_cache_dir', os.path.join(args.workdir, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  compilation_cache.reset_cache()
  if args.shard is not None:  # a worker: the parent trained the classifier
    return train_runs(args, classifier_accuracy(args.classifier_workdir))
  if args.inception_samples:
    from osgan_jax.metrics import inception

    if inception.default_weights_path() is None:
      raise SystemExit(f'Inception FID needs the weights: {inception.INSTALL_HINT}')
  with open(os.path.join(args.out, 'commands.txt'), 'a') as f:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    f.write(f'# {now} git {common.short_rev(common.git_state())}\n{args.command}\n')
  resolution = int(run_config(args, args.losses[0], 'one', 0, args.steps).data.resolution)
  accuracy = train_classifier(args, resolution)
  common.log(f'FID classifier in {args.classifier_workdir}: test accuracy {accuracy}')
  prepare_references(args)
  code = run_workers(args) if args.workers > 1 else train_runs(args, accuracy)
  if code == 0:
    paths = stats.render(args.out, args.study)
    print(open(paths['table']).read())
    print('wrote ' + ', '.join(paths.values()))
  return code


# ------------------------------------------------------------------ command line


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument(
      '--size', choices=sorted(SIZES), default='cpu', help='preset of the rest'
  )
  p.add_argument('--tiny', action='store_const', const='tiny', dest='size')
  p.add_argument('--gpu', action='store_const', const='gpu', dest='size')
  p.add_argument('--study', help='name of the rows file OUT/<study>.jsonl (the size)')
  p.add_argument(
      '--losses',
      help='entries: losses of the DCGAN config, or '
      + ', '.join(list(CONFIG_VARIANTS) + list(SETTING_VARIANTS)),
  )
  p.add_argument('--stages', help="'one,two' (each entry's stages compared), or one")
  p.add_argument('--baseline', help='the entry every other is compared to, one stage')
  p.add_argument('--seeds', type=int, help='seeds 0 .. N-1')
  p.add_argument('--steps', type=int, help='training steps of every run')
  p.add_argument('--eval-every', type=int, help='steps between classifier FIDs')
  p.add_argument(
      '--chunk-steps', type=int, help='steps per call (default --eval-every; 0: all)'
  )
  p.add_argument('--fid-samples', type=int, help='generated images per classifier FID')
  p.add_argument('--fid-real', type=int, help='test images of its reference (-1: all)')
  p.add_argument('--inception-samples', type=int, help='final Inception FID (0: none)')
  p.add_argument('--inception-real', type=int, help='test images of its reference')
  p.add_argument('--fid-batch', type=int, help='images per classifier-feature batch')
  p.add_argument('--inception-batch', type=int, help='images per Inception batch')
  p.add_argument('--workers', type=int, help='runs trained at once, one process each')
  p.add_argument('--shard', help=argparse.SUPPRESS)  # K/N: a worker of --workers N
  p.add_argument('--data-path', default='', help="Fashion-MNIST's IDX directory")
  p.add_argument('--classifier-steps', type=int, help="the classifier's steps")
  p.add_argument('--classifier-workdir', help='a trained classifier to reuse')
  p.add_argument('--out', help='rows, tables, plots (default WORKDIR/results)')
  p.add_argument('--workdir', default='/tmp/osgan_quality', help='runs and caches')
  p.add_argument('--stop-after', type=float, default=0, help='minutes (0: no limit)')
  p.add_argument('--render', action='store_true', help='tables and plots from the rows')
  args = p.parse_args(argv)
  for key, value in SIZES[args.size].items():
    if key != 'overrides' and getattr(args, key) is None:
      setattr(args, key, value)
  args.study = args.study or args.size
  args.argv = list(sys.argv[1:] if argv is None else argv)
  args.out = args.out or os.path.join(args.workdir, 'results')
  args.command = common.command_line('experiments.compare_quality', args.argv)
  if args.classifier_workdir is None:
    suffix = '' if args.classifier_steps is None else f'_{args.classifier_steps}'
    suffix += '_tiny' if args.size == 'tiny' else ''  # tiny's is 16x16
    args.classifier_workdir = os.path.join(args.workdir, f'classifier{suffix}')
  if not args.render:
    _check(p, args)
  return args


def _check(p, args) -> None:
  from osgan_jax.core import losses as losses_lib

  args.losses = [s for s in args.losses.split(',') if s]
  known = sorted(losses_lib.names()) + sorted(CONFIG_VARIANTS) + sorted(SETTING_VARIANTS)
  unknown = [s for s in args.losses if s not in known]
  if unknown or not args.losses:
    p.error(
        f'--losses: {",".join(unknown) or "none given"}; choose from {", ".join(known)}'
    )
  args.stages = tuple(s for s in args.stages.split(',') if s)
  if sorted(args.stages) not in (['one'], ['two'], sorted(stats.STAGES)):
    p.error(f'--stages: {",".join(args.stages)}; one, two or one,two')
  if args.baseline and (args.baseline not in args.losses or len(args.stages) != 1):
    p.error('--baseline must be one of --losses, with one of --stages')
  if not args.baseline and len(args.stages) != 2:
    p.error('--stages: one stage needs a --baseline entry to compare against')
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


def main(argv=None) -> int:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  if args.render:
    paths = stats.render(args.out, args.study)
    print(open(paths['table']).read())
    return 0
  if args.workers > 1:  # processes that share one GPU take its memory as they need it
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  return run_study(args)


if __name__ == '__main__':
  sys.exit(main())
