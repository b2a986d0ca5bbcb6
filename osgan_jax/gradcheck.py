"""Is one-stage training exact for my loss and discriminator? ``python -m
osgan_jax.gradcheck --loss hinge --disc batchnorm [...]`` prints one JSON line
(``core.exactness.check``); exit 0 when exact, 1 when not, 2 for bad arguments
(``docs/exactness.md``)."""

from __future__ import annotations

import json
import sys

from absl import flags

from osgan_jax import cli

COMMAND = cli.Command(
    'osgan_jax.gradcheck',
    'python -m osgan_jax.gradcheck --loss LOSS --disc KIND [--mode exact|approx] ...\n'
    'Checks one-stage gradients against the two-grad reference.',
)
F = COMMAND.flags
flags.DEFINE_string('loss', None, 'a registered loss name', flag_values=F)
flags.DEFINE_string('disc', None, 'mlp, conv, patch, batchnorm or mbstd', flag_values=F)
flags.DEFINE_string('mode', 'exact', 'exact or approx', flag_values=F)
flags.DEFINE_integer('seed', 0, 'seed of the toy networks and data', flag_values=F)
flags.DEFINE_bool('x64', False, 'compare in float64', flag_values=F)
flags.DEFINE_string('logits', 'normal', 'normal, extreme, huge or zero', flag_values=F)
flags.DEFINE_string(
    'penalty', 'none', 'gradient penalties on D (none, r1, ...)', flag_values=F
)
flags.DEFINE_string(
    'augment',
    'none',
    'D sees every image augmented by this preset (none, ada, diffaugment, ...)',
    flag_values=F,
)
flags.DEFINE_string(
    'emulate',
    'none',
    'none, or round float32 matmul/conv operands at default precision as this precision '
    'would (tf32, bf16; the verdict is unaffected)',
    flag_values=F,
)


def _check(args) -> int:
  del args
  import jax  # pylint: disable=g-import-not-at-top  (lazy: --help loads no JAX)

  from osgan_jax.core import exactness, losses, one_stage, precision, toy_networks

  for value, valid, what in (
      (F.loss, losses.names(), 'loss'),
      (F.disc, toy_networks.DISC_KINDS, 'discriminator kind'),
      (F.mode, one_stage.MODES, 'mode'),
      (F.logits, tuple(toy_networks.LOGIT_REGIMES), 'logits regime'),
      (F.penalty, tuple(toy_networks.PENALTIES), 'penalty'),
      (F.augment, toy_networks.AUGMENTS, 'augmentation'),
      (F.emulate, ('none',) + tuple(precision.EMULATIONS), 'emulated precision'),
  ):
    if value not in valid:
      raise cli.CommandError(f'unknown {what} {value!r}; valid: {", ".join(valid)}', 2)
  # Finite differences need float64 whatever the compared dtype; arrays are typed
  # explicitly, so enabling x64 does not change the float32 comparison.
  jax.config.update('jax_enable_x64', True)
  report = exactness.check(
      F.loss,
      F.disc,
      mode=F.mode,
      seed=F.seed,
      x64=F.x64,
      logits=F.logits,
      penalty=F.penalty,
      augment=F.augment,
      emulate=None if F.emulate == 'none' else F.emulate,
  )
  print(json.dumps(report))
  return 0 if report['ok'] else 1


def main(argv=None) -> int:
  return COMMAND.run(_check, argv)


if __name__ == '__main__':
  sys.exit(main())
