"""Every config key in one table: its default, what it means, its check, and whether a
resumed run may change it. The base config, ``--helpconfig``, validation and the resume
guard are all read from here."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

import ml_collections

Check = Callable[[Any], 'str | None']


@dataclasses.dataclass(frozen=True)
class Key:
  """A config key. ``check(value)`` returns what the value must be, or None when it is
  fine; ``resume`` says whether a resumed run may change it (else it is refused unless
  ``allow_config_change`` names it); ``any_type``: its value may be a number or a list.
  """

  default: Any
  doc: str
  check: Check | None = None
  resume: bool = False
  any_type: bool = False

  def initial(self):
    """The value a new config starts with: for ``any_type``, a fresh reference of no
    fixed type (ml_collections otherwise refuses a list where the default is a number)."""
    if not self.any_type:
      return self.default
    return ml_collections.FieldReference(self.default, field_type=object)


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int | None = None) -> Check:
  bound = 'an integer' if lo is None else 'positive' if lo == 1 else f'>= {lo}'

  def check(v):
    if isinstance(v, bool) or not isinstance(v, int):
      return 'an integer' if lo is None else f'an integer, {bound}'
    return None if lo is None or v >= lo else bound

  return check


def real_count(v) -> str | None:
  """-1 (all) or at least 2 images."""
  ok = isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 2)
  return None if ok else '>= 2 or -1 (all)'


def real(lo=None, hi=None, lo_open=False, hi_open=False) -> Check:
  """A finite number in the interval (``lo``/``hi`` None: unbounded on that side)."""
  low = '' if lo is None else ('(' if lo_open else '[') + f'{lo:g}'
  high = '' if hi is None else f'{hi:g}' + (')' if hi_open else ']')
  if lo is not None and hi is not None:
    text = f'in {low}, {high}'
  elif lo is not None:
    text = ('> ' if lo_open else '>= ') + f'{lo:g}'
  elif hi is not None:
    text = ('< ' if hi_open else '<= ') + f'{hi:g}'
  else:
    text = 'a finite number'

  def check(v):
    ok = _number(v)
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
    ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
    return None if ok else text

  return check


def fractions(v) -> str | None:
  """A fraction in [0, 1], or a non-empty ascending list of fractions in (0, 1]."""
  if isinstance(v, (tuple, list)):
    ok = all(_number(f) and 0 < f <= 1 for f in v) and len(v) > 0
    ok = ok and all(a < b for a, b in zip(v, v[1:]))
  else:
    ok = _number(v) and 0 <= v <= 1
  return None if ok else 'in [0, 1], or an ascending list of fractions in (0, 1]'


def one_of(*choices) -> Check:
  def check(v):
    return None if v in choices else 'one of ' + ', '.join(map(str, choices))

  return check


def integers(lo: int = 0) -> Check:
  """A sequence of integers >= ``lo`` (e.g. learning-rate milestones)."""

  def check(v):
    items = v.split(',') if isinstance(v, str) else v
    try:
      ok = all(
          int(str(m).strip().strip('()[] ')) >= lo for m in items if str(m).strip('()[] ')
      )
    except (TypeError, ValueError):
      ok = False
    return None if ok else f'integers >= {lo}'

  return check


def path(v) -> str | None:
  return None if isinstance(v, str) else 'a path'


def text(v) -> str | None:
  return None if isinstance(v, str) else 'a string'


def flag(v) -> str | None:
  return None if isinstance(v, bool) else 'True or False'


POSITIVE = integer(1)
NONNEGATIVE = integer(0)
BETA = real(0, 1, hi_open=True)
RAMP_TARGET = real()  # negative: not ramped

KEYS: dict[str, Key] = {
    'task': Key(
        'gan',
        "what the loop trains: 'gan', 'teacher' (a classifier: DFAD's teacher, the "
        "classifier FID's network) or 'dfad' (data-free distillation)",
        one_of('gan', 'teacher', 'dfad'),
    ),
    'stage': Key(
        'one',
        "'one' (one-stage), 'two' (honest two-stage baseline), 'official_two' (as the "
        'official code: D gradients also computed in the G step)',
        one_of('one', 'two', 'official_two'),
    ),
    'one_stage_mode': Key(
        'exact',
        "'exact' (default), or 'approx' (the paper's per-sample scaling, wrong for "
        'coupled discriminators)',
        one_of('exact', 'approx'),
    ),
    'loss': Key('non_saturating', 'a registered loss (osgan_jax.losses.names())', text),
    'one_stage_bucket': Key(
        (0.125, 0.25, 0.5),
        'exact one-stage, per-sample D: the fakes with a singular gamma re-run D in the '
        'smallest bucket of this ascending ladder (fractions of the batch; one number: a '
        'ladder of one) that holds them, else on the whole batch (0: always the whole '
        'batch); any ladder gives the same gradients',
        fractions,
        True,
        any_type=True,
    ),
    'seed': Key(
        0, 'model init, latents (fold_in(key, step)) and the data order', integer()
    ),
    'batch_size': Key(128, 'the global batch, split over devices and hosts', POSITIVE),
    'num_train_steps': Key(
        10_000, 'training steps in all (resumed runs count on)', POSITIVE, True
    ),
    'log_every_steps': Key(
        100, 'metrics are averaged and written every this many steps', POSITIVE, True
    ),
    'checkpoint_every_steps': Key(
        2_000,
        'a checkpoint every this many steps, at the end and on SIGTERM/SIGINT',
        POSITIVE,
        True,
    ),
    'keep_checkpoints': Key(3, 'how many recent checkpoints to keep', POSITIVE, True),
    'z_dim': Key(100, "the generator's latent size", NONNEGATIVE),
    'num_classes': Key(
        0, '0: unconditional; > 0: class-conditional G and D', NONNEGATIVE
    ),
    'sample_truncation_psi': Key(
        1.0,
        "truncation for evaluation samples of a generator that has it (StyleGAN2's psi; 1 = off)",
        real(),
        True,
    ),
    'multihost': Key(
        False, 'call jax.distributed.initialize() (also $OSGAN_MULTIHOST=1)', flag, True
    ),
    'num_devices': Key(
        0, '0 = all devices, else the first n (a smaller mesh)', NONNEGATIVE, True
    ),
    'progress_bar': Key(
        True,
        'the progress bar on process 0 (else a metrics line per log interval)',
        flag,
        True,
    ),
    'allow_config_change': Key(
        '',
        "keys (comma-separated, '*': any) a resumed run may change although they change "
        'shapes or meaning',
        text,
        True,
    ),
    # Divergence and collapse (osgan_jax.training.guards).
    'divergence.policy': Key(
        'stop',
        "non-finite parameters or losses: 'stop' the run, or 'rollback' to the last "
        'checkpoint and skip ahead',
        one_of('stop', 'rollback'),
        True,
    ),
    'divergence.max_rollbacks': Key(3, 'rollbacks allowed in one run', NONNEGATIVE, True),
    'divergence.collapse_intervals': Key(
        3, 'log intervals of a collapsed game before the warning', POSITIVE, True
    ),
    'divergence.collapse_loss_d': Key(
        1e-3, '|loss_d| at or below this counts as D winning outright', real(0), True
    ),
    'divergence.collapse_loss_g': Key(
        5.0, 'loss_g at or above this counts as G learning nothing', real(), True
    ),
    # Data (osgan_jax.data, docs/data.md).
    'data.name': Key(
        'fashion_mnist',
        'fashion_mnist, mnist, cifar10, celeb_a, lsun_church (tfds or IDX), folder (any '
        'tree of images), prepared (prepare_data output)',
        one_of(
            'fashion_mnist',
            'mnist',
            'cifar10',
            'celeb_a',
            'lsun_church',
            'folder',
            'prepared',
        ),
    ),
    'data.path': Key(
        '', 'where the data lives (a folder, a tfds data_dir, a prepared set)', path, True
    ),
    'data.resolution': Key(64, 'image side in pixels', POSITIVE),
    'data.channels': Key(1, '1 (grayscale) or 3 (RGB)', one_of(1, 3)),
    'data.split': Key('train', 'the split to train on', text),
    'data.source': Key(
        'auto',
        "for MNIST-like names: 'auto', 'idx' or 'tfds'",
        one_of('auto', 'idx', 'tfds'),
    ),
    'data.center_crop': Key(
        -1, 'centre crop before resizing (-1: the data set default, 0: none)', integer(-1)
    ),
    'data.interpolation': Key(
        '',
        "resize filter ('': the data set's default)",
        one_of('', 'nearest', 'bilinear', 'bicubic', 'lanczos'),
    ),
    'data.shuffle': Key(True, 'a fresh permutation every epoch', flag),
    'data.limit': Key(
        0,
        'train on the first this many examples only (0: all; docs/data.md)',
        NONNEGATIVE,
    ),
    'data.xflip': Key(
        False,
        'the data set doubled with mirrored copies, by the index schedule (docs/data.md)',
        flag,
    ),
    'data.num_threads': Key(4, 'decoding threads', NONNEGATIVE, True),
    'data.prefetch': Key(8, 'batches decoded ahead', NONNEGATIVE, True),
    'data.num_workers': Key(
        0, 'decoding worker processes (folders of large images)', NONNEGATIVE, True
    ),
    'data.download': Key(False, 'let tfds download and build the data set', flag, True),
    # Networks (osgan_jax.models): the two sections are the architecture's keyword args.
    'model.name': Key(
        'dcgan',
        'an architecture of osgan_jax.models (dcgan, stylegan2, r3gan, dfad)',
        text,
    ),
    'model.generator': Key(
        dict(width=128, norm='batch', use_bias=True, embed_dim=0, dtype='float32'),
        "the generator's keyword arguments (resolution, channels, z_dim and num_classes come from the keys above)",
    ),
    'model.discriminator': Key(
        dict(
            width=128,
            norm='batch',
            num_groups=32,
            spectral_norm=False,
            patch=False,
            use_bias=True,
            embed_dim=0,
            dtype='float32',
        ),
        "the discriminator's keyword arguments",
    ),
    'init_from': Key(
        '',
        'an official StyleGAN2-ADA or R3GAN pickle G (its EMA too) and D start from; the '
        "model keys must match its architecture ('': random init; docs/official_weights.md)",
        path,
        True,  # a resumed run starts from its checkpoint, whatever the file
    ),
    # Optimisers.
    'optimizer.g_lr': Key(2e-4, "G's Adam learning rate (0 freezes G)", real(0)),
    'optimizer.d_lr': Key(
        2e-4,
        "D's learning rate (Adam; the student's SGD for DFAD)",
        real(0),
    ),
    'optimizer.b1': Key(0.5, "Adam's beta1", BETA),
    'optimizer.b2': Key(0.999, "Adam's beta2", BETA),
    'optimizer.eps': Key(1e-8, "Adam's epsilon", real(0, lo_open=True)),
    'optimizer.weight_clip': Key(
        0.0, "> 0: clip D's weights to [-c, c] after every update (WGAN)", real(0)
    ),
    'optimizer.lr_milestones': Key(
        (), 'steps at which both learning rates are multiplied by lr_decay', integers(0)
    ),
    'optimizer.lr_decay': Key(0.1, 'the factor at each milestone', real(0, lo_open=True)),
    'optimizer.nan_to_num': Key(
        False, 'replace NaN/inf gradients by 0/+-1e5 (official StyleGAN2)', flag
    ),
    # StyleGAN2's lazy regularisation phases and G's EMA.
    'reg.r1_gamma': Key(0.0, '> 0: lazy R1 on reals every r1_interval steps', real(0)),
    'reg.r1_interval': Key(16, 'steps between lazy R1 phases', POSITIVE),
    'reg.pl_weight': Key(
        0.0, '> 0: path-length regularisation every pl_interval steps', real(0)
    ),
    'reg.pl_interval': Key(4, 'steps between path-length phases', POSITIVE),
    'reg.pl_decay': Key(0.01, 'decay of the path-length running mean', real(0, 1)),
    'reg.pl_batch_shrink': Key(
        2, 'the path-length phase runs on batch_size // this latents', POSITIVE
    ),
    'ema.half_life_kimg': Key(
        0.0, "> 0: an EMA of G's parameters with this half-life (kimg)", real(0)
    ),
    'ema.rampup': Key(
        0.0, '> 0: the official ramp-up (half-life at most rampup x images seen)', real(0)
    ),
    # Augmentation of every image D sees (docs/augmentation.md).
    'augment.pipe': Key(
        'none',
        "'none', 'ada' (ADA's bgc: geometric and colour), 'ada_bgcc' ('ada' with "
        "cutout), 'ada_blit', 'ada_geom', 'ada_color', 'ada_bg', 'r3gan' (R3GAN's: "
        "'ada_bgcc' with the colour ops at half probability) or 'diffaugment' (colour, "
        'translation, cutout)',
        one_of(
            'none',
            'ada',
            'ada_bgcc',
            'ada_blit',
            'ada_geom',
            'ada_color',
            'ada_bg',
            'r3gan',
            'diffaugment',
        ),
    ),
    'augment.p': Key(
        -1.0,
        'the probability of each op per image, fixed or the adaptive start (-1: the '
        "preset's: 0 for the ADA presets, 1 for diffaugment)",
        lambda v: None if v == -1 or real(0, 1)(v) is None else 'in [0, 1] or -1',
    ),
    'augment.target': Key(
        0.0,
        '> 0: adapt p towards this E[sign(D(real))] (ADA: 0.6); 0: p fixed',
        real(0, 1),
    ),
    'augment.speed_kimg': Key(
        500.0,
        "the adaptive p moves by at most 1 per this many thousand images (ADA's "
        'ada_kimg)',
        real(0, lo_open=True),
    ),
    'augment.interval': Key(
        4, "steps between the adaptive p's updates (ADA's ada_interval)", POSITIVE
    ),
    # Gradient penalties on D inside the main step.
    'penalty.r1': Key(0.0, 'weight of gamma/2 E||grad D(x_real)||^2', real(0)),
    'penalty.r2': Key(0.0, 'the same on the (detached) fakes', real(0)),
    'penalty.gp': Key(0.0, "WGAN-GP's weight on real-fake interpolates", real(0)),
    # Ramps from the value above to the value here over schedule.steps (negative: none).
    'schedule.kind': Key(
        'cosine', "'cosine' (R3GAN's) or 'linear'", one_of('cosine', 'linear')
    ),
    'schedule.steps': Key(0, 'ramp length in steps (0: no ramps)', NONNEGATIVE),
    'schedule.g_lr': Key(-1.0, "G's final learning rate", RAMP_TARGET),
    'schedule.d_lr': Key(-1.0, "D's final learning rate", RAMP_TARGET),
    'schedule.b2': Key(-1.0, "Adam's final beta2", RAMP_TARGET),
    'schedule.r1': Key(-1.0, 'the final R1 weight', RAMP_TARGET),
    'schedule.r2': Key(-1.0, 'the final R2 weight', RAMP_TARGET),
    'schedule.gp': Key(-1.0, 'the final GP weight', RAMP_TARGET),
    'schedule.ema_half_life_kimg': Key(-1.0, 'the final EMA half-life', RAMP_TARGET),
    'schedule.augment_p': Key(
        -1.0, "the final augmentation p (R3GAN's ramp; not with a target)", RAMP_TARGET
    ),
    # The teacher (task 'teacher'; DFAD and the classifier FID load it).
    'teacher.arch': Key('lenet5', 'lenet5, lenet5_half, resnet18 or resnet34', text),
    'teacher.width': Key(6, 'the first layer width', POSITIVE),
    'teacher.blocks': Key(
        (), 'ResNet blocks per stage (() = the architecture default)', integers(1)
    ),
    'teacher.optimizer': Key('adam', "'adam' or 'sgd'", one_of('adam', 'sgd')),
    'teacher.lr': Key(1e-3, 'learning rate', real(0, lo_open=True)),
    'teacher.lr_schedule': Key(
        'constant', "'constant' or 'cosine'", one_of('constant', 'cosine')
    ),
    'teacher.momentum': Key(0.9, "SGD's momentum", real(0, 1, hi_open=True)),
    'teacher.weight_decay': Key(0.0, 'weight decay', real(0)),
    # Data-free distillation (task 'dfad').
    'dfad.teacher_workdir': Key(
        '/tmp/dfad_teacher_fmnist', "the teacher task's workdir", path, True
    ),
    'dfad.teacher_config': Key(
        'configs/dfad_teacher_fashion_mnist.py',
        "the teacher's config (for the hint)",
        path,
        True,
    ),
    'dfad.student_steps': Key(
        5, 'two-stage: student updates per generator update', POSITIVE
    ),
    'dfad.student_momentum': Key(
        0.9, "the student's SGD momentum", real(0, 1, hi_open=True)
    ),
    'dfad.student_weight_decay': Key(1e-4, "the student's weight decay", real(0)),
}

# The sections of the config, for --helpconfig.
SECTIONS = {
    'augment': 'augmenting every image D sees, fixed or adaptive (docs/augmentation.md)',
    'data': 'the training images (docs/data.md)',
    'divergence': 'non-finite parameters or losses, and a collapsed game',
    'dfad': 'data-free distillation (docs/dfad.md)',
    'ema': "an exponential moving average of G's parameters (samples and FID use it)",
    'evals': "evaluators by name, each with a 'type' and every_steps (0: off)",
    'model': 'the networks (docs/models.md)',
    'optimizer': "both players' optimisers",
    'penalty': 'gradient penalties on D inside the main step (docs/api.md)',
    'reg': "StyleGAN2's lazy regularisation phases (docs/stylegan2.md)",
    'schedule': 'ramps from the value set elsewhere to the value here',
    'teacher': "the teacher task's classifier",
}

# Evaluators (config.evals.<name>, each with a 'type'): every key of a type. An
# evaluator runs every every_steps (0: off) and at the end; all may change on resume.
EVAL_TYPES: dict[str, dict[str, Key]] = {
    'samples': {
        'every_steps': Key(
            1_000, 'a sample grid every this many steps (0: off)', NONNEGATIVE
        ),
        'num': Key(
            64, 'images in the grid (fixed latents; fixed labels for a CGAN)', POSITIVE
        ),
    },
    'fid': {
        'every_steps': Key(0, 'FID every this many steps (0: off)', NONNEGATIVE),
        'features': Key(
            'inception',
            "'inception' (TF-Inception, metric fid) or 'classifier' (a teacher task's "
            'penultimate layer, metric fid_classifier)',
            one_of('inception', 'classifier'),
        ),
        'classifier_workdir': Key(
            '', "the teacher task's workdir, for features='classifier'", path
        ),
        'num_samples': Key(10_000, 'generated images', integer(2)),
        'num_real': Key(
            10_000, 'real images for the reference statistics (-1: all)', real_count
        ),
        'real_split': Key('', "the real images' split ('': data.split)", text),
        'batch_size': Key(50, 'images per feature-network and generator call', POSITIVE),
        'kid': Key(False, 'also KID', flag),
        'precision_recall': Key(
            False, 'also precision and recall (k=3, on the same features)', flag
        ),
        'keep_best': Key(True, 'keep the checkpoint with the lowest value', flag),
        'cache_dir': Key(
            '', "where the real statistics are cached ('': the workdir)", path
        ),
    },
    'test_accuracy': {
        'every_steps': Key(
            500, 'test accuracy every this many steps (0: off)', NONNEGATIVE
        ),
        'batch_size': Key(1_000, 'images per call', POSITIVE),
        'split': Key('test', 'the labelled split', text),
    },
}
DEFAULT_EVALS = {'samples': 'samples', 'fid': 'fid'}

# Keys that moved, for the unknown-key error.
RENAMED = {
    'sample_every_steps': 'evals.samples.every_steps',
    'num_samples': 'evals.samples.num',
    'fid': 'evals.fid',
    'eval_every_steps': 'evals.test_accuracy.every_steps',
    'eval_batch_size': 'evals.test_accuracy.batch_size',
    'eval_split': 'evals.test_accuracy.split',
}


def eval_defaults(kind: str, **values) -> dict:
  """The keys of an evaluator of type ``kind`` with their defaults, ``values`` applied."""
  entry = {'type': kind, **{k: key.default for k, key in EVAL_TYPES[kind].items()}}
  unknown = set(values) - set(entry)
  if unknown:
    raise KeyError(f'evaluators of type {kind!r} have no key {sorted(unknown)[0]!r}')
  return {**entry, **values}


def lookup(dotted: str) -> Key | None:
  """The table entry of a dotted key (``evals.<name>.<key>`` by its type), or None."""
  if dotted in KEYS:
    return KEYS[dotted]
  parts = dotted.split('.')
  if parts[0] == 'model' and len(parts) > 2:
    return KEYS.get('.'.join(parts[:2]))
  return None


def default_json(dotted: str, missing=None):
  """A key's default as its JSON round trip (as ``config.json`` holds values), or
  ``missing`` for a key outside the table (``evals.*``, model sections' contents)."""
  key = KEYS.get(dotted)
  return missing if key is None else json.loads(json.dumps(key.default))


def may_change(dotted: str) -> bool:
  """Whether a resumed run may change ``dotted`` freely."""
  if dotted.startswith('evals.') or dotted.split('.')[0] in RENAMED:
    return True  # evaluation settings (RENAMED: of workdirs from before config.evals)
  key = lookup(dotted)
  return key is not None and key.resume
