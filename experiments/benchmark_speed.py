"""One-stage vs two-stage training steps: FLOPs, interleaved wall time, memory.

Issue 6. Every row is built from a config file plus overrides, exactly as training
builds it (``config_lib.load_config`` -> ``gan.create_models`` -> ``gan.make_gan``
-> ``gan.make_init`` -> ``steps.probe_per_sample`` -> ``steps.jit_step``), with a
synthetic random batch (speed needs no data). For each row and each variant (one-stage,
honest two-stage, official-style two-stage, the paper's approximate one-stage) it
records:

* ``flops``: the analytic count of the step's dots and convolutions from its jaxpr
  (``experiments/flops.py``; backend-independent; cheapest branch of each
  ``lax.cond``, which here is the one that runs in the common case; issue 15), with
  ``flops_max_branch``, ``flops_elementwise``, ``flops_by_dtype``; ``flops_xla``:
  XLA's ``cost_analysis()`` of the compiled step on this backend (on a GPU it misses
  the convolutions, which become cuDNN custom calls); ``flops_xla_cpu``: XLA's count
  of the same step lowered for the CPU (``--cpu-flops``; on a CPU backend it is
  ``flops_xla``), the cross-check of the analytic count; ``flop_ratio`` against
  one-stage.
* wall time: all variants are compiled and warmed up, then timed interleaved in one
  process (round r runs every variant once, in an order rotated by r; a call runs
  ``--steps-per-round`` steps), so load from other processes on a shared machine hits
  every variant alike. Ratios are taken per round and summarised by their median and
  min-max: ``ratio_to_one_stage_*``. ``tflops_per_s`` = flops / median step time and
  ``fraction_of_peak`` against the device's peak (``flops.PEAK_TFLOPS``).
* memory: XLA's ``memory_analysis()`` of the step (``peak_bytes``) and the process's
  peak RSS while the variant's warm-up step ran (``rss_peak_bytes``; Linux only).
* ``images_per_s``: real images per second (every variant consumes one batch of real
  images per step, so this is batch / median step time).
* compile time: ``compile_s`` with ``compile_mode``: ``'subprocess'`` (``--fresh-compile``:
  a fresh Python process per variant builds the row and traces, lowers and compiles
  that variant alone; ``compile_fresh_process_s`` is that process's whole wall time) or
  ``'in_process'`` (a fresh ``jax.jit`` in this process, after the other variants of
  the row: XLA's in-process autotuning results may be reused). ``trace_s``/``lower_s``
  are this process's.

Rows that would take too long here (``--max-row-seconds``) or are marked compile-only
(``--compile-only``) report FLOPs and memory with null timing fields.

  python experiments/benchmark_speed.py --out experiments/results/speed/results.json
  python experiments/benchmark_speed.py --models dcgan32,dcgan64 --rounds 30

Device suite (issue 15; each run at most 8 minutes, ``--budget-s``), in this order: DCGAN 64 at the official size (``configs/dcgan_celeba.py``: d=128, batch
128; all four variants; each variant compiled first in a fresh process, and also for
the CPU: ``flops_xla_cpu``), PyTorch's official DCGAN steps on CUDA at the same size,
eager and tuned (when torch is importable and has CUDA), StyleGAN2 256 float32 and bf16
(``configs/stylegan2_ffhq.py``, batch 32; one- and two-stage main steps, fresh-process
compiles), DCGAN 64 computed in bfloat16 (``model.*.dtype='bfloat16'``; one- and
two-stage), and the training loop's end-to-end rate (``experiments/loop_throughput.py
--real``: DCGAN 64 one/two-stage alone and through ``python -m osgan_jax.main``). The
fresh-process children and this process share a new persistent compilation cache, so
each program is compiled once (by its child). Rows that would end after ``--budget-s``
(480 s; from ``DEVICE_ROW_ESTIMATE_S``) are skipped and the command that runs them is
printed: on one H200 all rows take about 11 minutes (StyleGAN2 alone 7: four fresh
compiles of 45-77 s), so the default run ends after the bf16 DCGAN row and the second
command measures StyleGAN2 bf16 and the loop. Each row's elapsed time is printed, and
its ``setup_*`` (build, init, D's coupling probe) and ``first_call_s`` fields say
where the time went.
``--tiny`` runs the same rows at toy sizes (the loop without ``--real``; about a minute
on a quiet 2-core CPU). ``--override KEY=VALUE`` (repeatable) applies to every row (the
loop takes batch_size, data.resolution and the widths). Results: ``--out`` (a
directory, default ``experiments/results/device/``; ``<platform>_<device kind>.json``,
e.g. ``gpu_nvidia_h200.json``, with a CSV beside it), and a table on stdout; the exit
status is 1 if a row failed (the others still run).

  python experiments/benchmark_speed.py --suite=device
  python experiments/benchmark_speed.py --suite=device --override batch_size=64
  python experiments/benchmark_speed.py --suite=device --tiny --out /tmp/device
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import functools
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from osgan_jax import config as config_lib  # noqa: E402
from osgan_jax.training import host_memory  # noqa: E402
from osgan_jax.core import steps  # noqa: E402
from osgan_jax.tasks import gan as gan_lib  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flops as flops_lib  # noqa: E402  pylint: disable=import-error

# variant name in the results -> (stage name of steps.jit_step, one-stage mode or None)
# one_stage_approx is the paper's approximate step: no lax.cond for the exact path,
# whose branch XLA's cost analysis counts in one_stage's FLOPs although it only runs
# when some sample needs it (never in these benchmarks' regime, n_exact = 0).
VARIANTS = {
    'one_stage': ('one', None),
    'two_stage': ('two', None),
    'official_two_stage': ('official_two', None),
    'one_stage_approx': ('one', 'approx'),
}
BASELINE = 'one_stage'
REQUIRED_FIELDS = (
    'model',
    'variant',
    'flops',
    'step_ms_median',
    'ratio_to_one_stage_median',
    'ratio_to_one_stage_min',
    'ratio_to_one_stage_max',
    'peak_bytes',
    'images_per_s',
)

_D64 = {'model.generator.width': 64, 'model.discriminator.width': 64}
_R3GAN_XLA = {'model.generator.conv_impl': 'xla', 'model.discriminator.conv_impl': 'xla'}


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """A benchmark row: a config file (relative to the repo) plus overrides."""

  config: str
  overrides: dict
  note: str = ''
  variants: tuple = tuple(VARIANTS)  # which of VARIANTS the row compiles and times


# The 64x64 rows use d = 64 and batch 64 (issue 8's measurement: 64x64x3, d=64, batch
# 64); the configs' own d = 128, batch 128 would be 8x the work of these rows.
ROWS = {
    'dcgan32': RowSpec(
        'configs/dcgan_fashion_mnist.py',
        {},
        'Fashion-MNIST default: 32x32x1, d=32, batch 64, GroupNorm D',
    ),
    'dcgan64': RowSpec(
        'configs/dcgan_celeba.py',
        {**_D64, 'batch_size': 64},
        'non-saturating, GroupNorm D, 64x64x3, d=64, batch 64',
    ),
    'dcgan64_b128': RowSpec(
        'configs/dcgan_celeba.py', {**_D64, 'batch_size': 128}, 'as dcgan64, batch 128'
    ),
    'wgan64': RowSpec(
        'configs/wgan_celeba.py',
        {**_D64, 'batch_size': 64},
        'WGAN (clip 0.01), BatchNorm D, 64x64x3, d=64, batch 64',
    ),
    'lsgan64': RowSpec(
        'configs/lsgan_celeba.py',
        {**_D64, 'batch_size': 64},
        'LSGAN, GroupNorm D, 64x64x3, d=64, batch 64',
    ),
    'hinge64': RowSpec(
        'configs/hinge_celeba.py',
        {**_D64, 'batch_size': 64},
        'hinge, spectral-norm D, 64x64x3, d=64, batch 64',
    ),
    'stylegan2_tiny': RowSpec(
        'configs/stylegan2_tiny.py',
        {},
        'StyleGAN2 tiny, 32x32x1 (minibatch-std D: coupled)',
    ),
    'stylegan2_256': RowSpec(
        'configs/stylegan2_ffhq.py',
        {'data.resolution': 256},
        'StyleGAN2 config-f scaled to 256x256',
    ),
    # R3GAN's grouped convolutions as XLA's grouped convolution (its GPU/TPU path), so
    # the FLOPs are the algorithm's: on CPU training runs them as dense block-diagonal
    # convolutions ('auto'), which execute groups-times the FLOPs of those layers.
    'r3gan_fmnist': RowSpec(
        'configs/r3gan_fashion_mnist.py',
        _R3GAN_XLA,
        'R3GAN CPU config: 32x32x1, conditional, batch 32, RpGAN + R1 + R2 every step',
        ('one_stage', 'two_stage'),
    ),
    'r3gan_cifar10': RowSpec(
        'configs/r3gan_cifar10.py',
        {**_R3GAN_XLA, 'batch_size': 64},
        'R3GAN CIFAR-10 preset (21M + 21M parameters, bf16 in 3 '
        'stages), batch 64, RpGAN + R1 + R2 every step',
        ('one_stage', 'two_stage'),
    ),
}
DEFAULT_COMPILE_ONLY = ('stylegan2_256', 'r3gan_fmnist', 'r3gan_cifar10')

# ------------------------------------------------------------------ the device suite

_ONE_TWO = ('one_stage', 'two_stage')
_BF16 = {
    f'model.{net}.{key}': value
    for net in ('generator', 'discriminator')
    for key, value in (('num_fp16_res', 4), ('conv_clamp', 256))
}
DEVICE_ROWS = {
    'dcgan64_d128': RowSpec(
        'configs/dcgan_celeba.py',
        {},
        'official size: 64x64x3, d=128, batch 128, GroupNorm D',
    ),
    'stylegan2_256_f32': RowSpec(
        'configs/stylegan2_ffhq.py',
        {'data.resolution': 256},
        'StyleGAN2 config-f at 256x256, batch 32, float32; main step only (no R1/PL/EMA)',
        _ONE_TWO,
    ),
    'stylegan2_256_bf16': RowSpec(
        'configs/stylegan2_ffhq.py',
        {'data.resolution': 256, **_BF16},
        'as stylegan2_256_f32, bf16 in the 4 highest-resolution blocks of G and D '
        '(num_fp16_res=4, conv_clamp=256)',
        _ONE_TWO,
    ),
    'dcgan64_d128_bf16': RowSpec(
        'configs/dcgan_celeba.py',
        {'model.generator.dtype': 'bfloat16', 'model.discriminator.dtype': 'bfloat16'},
        'as dcgan64_d128, computed in bfloat16 (float32 parameters and losses)',
        _ONE_TWO,
    ),
}
# The suite's order: DCGAN, the PyTorch rows of DCGAN at the same size (pseudo-row
# 'torch'), StyleGAN2, then the loop (``experiments/loop_throughput.py``, pseudo-row
# 'loop'; measured on an H200 before, so it is the row --budget-s drops first).
DEVICE_SUITE = (
    'dcgan64_d128',
    'torch',
    'stylegan2_256_f32',
    'stylegan2_256_bf16',
    'dcgan64_d128_bf16',
    'loop',
)
_SG2_TINY = {
    'data.resolution': 8,
    'batch_size': 4,
    'z_dim': 32,
    'model.generator.w_dim': 32,
    'model.generator.mapping_layers': 1,
    'model.generator.channel_base': 256,
    'model.generator.channel_max': 32,
    'model.discriminator.channel_base': 256,
    'model.discriminator.channel_max': 32,
}
TINY_OVERRIDES = {
    'dcgan64_d128': {
        'data.resolution': 16,
        'batch_size': 8,
        'z_dim': 16,
        'model.generator.width': 8,
        'model.discriminator.width': 8,
    },
    'stylegan2_256_f32': _SG2_TINY,
    'stylegan2_256_bf16': _SG2_TINY,
}
TINY_OVERRIDES['dcgan64_d128_bf16'] = TINY_OVERRIDES['dcgan64_d128']
# Per-row timing budget of the device suite: (rounds, steps per timed call). Measured
# on one H200: DCGAN one-stage 11.9 ms/step, StyleGAN2 256 one-stage 206 ms/step; the
# first compile of the StyleGAN2 one-stage step takes 68 s, which dominates the suite.
DEVICE_TIMING = {
    'dcgan64_d128': (10, 10),
    'stylegan2_256_f32': (4, 2),
    'stylegan2_256_bf16': (4, 2),
    'dcgan64_d128_bf16': (10, 10),
}
TINY_TIMING = (2, 1)
# The loop's arguments (``loop_throughput.main``); config overrides map onto them.
# (The folder source, PNGs decoded on the host, was measured on an H200 before: 4.7k
# images/s, host-bound; the suite keeps the prepared source only.)
LOOP_ARGS = [
    '--real',
    '--sources',
    'prepared',
    '--images',
    '512',
    '--resolution',
    '64',
    '--batch',
    '128',
    '--width',
    '128',
    '--trivial_steps',
    '200',
    '--real_steps',
    '200',
    '--rounds',
    '10',
    '--per_call',
    '10',
]
# --tiny: the loop's ceiling only. Its --real part (two `python -m osgan_jax.main`
# processes, each starting and compiling: ~50 s of the tiny suite on 2 CPU cores) is
# left to tests/test_experiments.py::test_loop_throughput_rows_at_a_tiny_size.
LOOP_TINY_ARGS = [
    '--sources',
    'prepared',
    '--images',
    '24',
    '--resolution',
    '16',
    '--batch',
    '8',
    '--width',
    '4',
    '--trivial_steps',
    '20',
    '--rounds',
    '2',
    '--per_call',
    '1',
]
LOOP_OVERRIDE_FLAGS = {
    'batch_size': '--batch',
    'data.resolution': '--resolution',
    'model.generator.width': '--width',
    'model.discriminator.width': '--width',
}


# ------------------------------------------------------------------ timing statistics


def run_interleaved(
    fns: dict,
    rounds: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
  """Times ``fns`` (name -> callable returning when its work is done) side by side.

  ``warmup`` untimed rounds, then ``rounds`` timed rounds; round r calls every function
  once in the order rotated by r (A B C, B C A, C A B, ...), so neither drift in the
  machine's load nor a fixed predecessor favours one function. Returns name -> list of
  ``rounds`` durations in seconds.
  """
  names = list(fns)
  for _ in range(warmup):
    for name in names:
      fns[name]()
  times = {name: [] for name in names}
  for r in range(rounds):
    k = r % len(names)
    for name in names[k:] + names[:k]:
      t0 = clock()
      fns[name]()
      times[name].append(clock() - t0)
  return times


def ratio_summary(times: dict, baseline: str = BASELINE) -> dict:
  """Per-variant summary of per-round times: name -> {step_ms_median, ratio_*}.

  The ratio of round r is ``times[name][r] / times[baseline][r]`` (same round, same
  load); its median, min and max summarise the spread. The baseline's ratios are 1.
  """
  base = np.asarray(times[baseline], np.float64)
  out = {}
  for name, ts in times.items():
    ts = np.asarray(ts, np.float64)
    if ts.shape != base.shape:
      raise ValueError(f'{name}: {ts.shape[0]} rounds, baseline {base.shape[0]}')
    ratios = ts / base
    out[name] = {
        'step_ms_median': float(np.median(ts) * 1e3),
        'step_ms_min': float(ts.min() * 1e3),
        'ratio_to_one_stage_median': float(np.median(ratios)),
        'ratio_to_one_stage_min': float(ratios.min()),
        'ratio_to_one_stage_max': float(ratios.max()),
        'rounds': int(ts.shape[0]),
    }
  return out


# ------------------------------------------------------------------ XLA analyses


def xla_cost(compiled) -> dict:
  """``{'flops', 'bytes_accessed'}`` of a compiled executable (XLA's cost analysis)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {
      'flops': float(cost.get('flops', 0.0)),
      'bytes_accessed': float(cost.get('bytes accessed', 0.0)),
  }


def xla_memory(compiled) -> dict:
  """Bytes of a compiled step: arguments, outputs, temporaries and the peak estimate."""
  m = compiled.memory_analysis()
  if m is None:
    return {'peak_bytes': None}
  args, outs = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  alias, temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
  # The CPU backend's peak_memory_in_bytes is only the arguments' size here, so the
  # peak is bounded as XLA's buffer assignment lays it out: arguments, outputs not
  # aliased to (donated) arguments, and the temporaries.
  return {
      'peak_bytes': args + outs - alias + temp,
      'argument_bytes': args,
      'output_bytes': outs,
      'alias_bytes': alias,
      'temp_bytes': temp,
      'xla_peak_memory_in_bytes': int(getattr(m, 'peak_memory_in_bytes', 0) or 0),
  }


def _proc_status_bytes(field: str):
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark (VmHWM) of this process; False if unsupported."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


# ------------------------------------------------------------------ rows


def build(
    spec: RowSpec,
    *,
    seed: int = 0,
    overrides: dict | None = None,
    extra: dict | None = None,
):
  """``(config, gan, init, batch)`` of a row, built as the training loop does.

  ``extra``: keys set with the config unlocked after the overrides (keys the config
  does not define, e.g. ``model.generator.conv_impl``, a model field).
  """
  config = config_lib.load_config(
      os.path.join(REPO, spec.config), {**spec.overrides, **(overrides or {})}
  )
  if extra:
    with config.unlocked():
      for key, value in extra.items():
        *parents, leaf = key.split('.')
        node = config
        for part in parents:
          node = node[part]
        node[leaf] = value
  generator, discriminator = gan_lib.create_models(config)
  gan = gan_lib.make_gan(config, generator, discriminator)
  init = jax.jit(gan_lib.make_init(config, gan, generator, discriminator))
  res, ch, bs = (
      int(config.data.resolution),
      int(config.data.channels),
      int(config.batch_size),
  )
  key = jax.random.PRNGKey(seed)
  batch = {
      'image': jax.random.uniform(
          jax.random.fold_in(key, 1), (bs, res, res, ch), jnp.float32, -1.0, 1.0
      )
  }
  if int(config.num_classes) > 0:
    batch['label'] = jax.random.randint(
        jax.random.fold_in(key, 2), (bs,), 0, int(config.num_classes), jnp.int32
    )
  return config, gan, init, batch


def prepare(
    spec: RowSpec,
    *,
    overrides: dict | None = None,
    extra: dict | None = None,
    per_sample: bool | None = None,
    times: dict | None = None,
):
  """``(config, gan, init, batch, abstract_state)``: the row built, D's coupling probed
  and the state's shapes; what both this process and a fresh-compile child trace.

  With ``per_sample`` given (a child gets the parent's probe result), nothing is run or
  compiled: the state's shapes come from ``jax.eval_shape``. ``times`` receives the
  seconds of the one-off work before a step compiles (``build_s``, ``init_s``: the
  initialiser compiled and run, ``probe_s``: D's coupling probe), as a training run
  pays them before its first step.
  """
  times = {} if times is None else times
  t0 = time.perf_counter()
  config, gan, init, batch = build(spec, overrides=overrides, extra=extra)
  times['build_s'] = round(time.perf_counter() - t0, 3)
  if per_sample is not None:
    gan = dataclasses.replace(gan, per_sample=bool(per_sample))
    state = jax.eval_shape(init, jax.random.PRNGKey(0))
  else:
    t0 = time.perf_counter()
    state = jax.block_until_ready(init(jax.random.PRNGKey(0)))
    t1 = time.perf_counter()
    probe = {k: v[: max(2, min(4, v.shape[0]))] for k, v in batch.items()}
    gan = steps.probe_per_sample(gan, state, probe)
    times.update(init_s=round(t1 - t0, 3), probe_s=round(time.perf_counter() - t1, 3))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  return config, gan, init, batch, abstract


def variant_step(gan, variant: str):
  """``(jitted step, plain step function)`` of a variant (``VARIANTS``)."""
  stage, mode = VARIANTS[variant]
  variant_gan = gan if mode is None else dataclasses.replace(gan, mode=mode)
  return (
      steps.jit_step(variant_gan, stage),
      functools.partial(steps.STEPS[stage], variant_gan),
  )


def variant_flops(
    spec: RowSpec,
    variants: Sequence[str],
    *,
    overrides: dict | None = None,
    extra: dict | None = None,
    cpu: bool = False,
) -> list:
  """The analytic FLOP counts of ``variants`` (and their CPU-lowering counts with
  ``cpu``), without compiling for this backend (``experiments/flops.py``)."""
  config, gan, _, batch, abstract = prepare(spec, overrides=overrides, extra=extra)
  rng = jax.random.PRNGKey(1)
  rows = []
  for variant in variants:
    jitted, fn = variant_step(gan, variant)
    row = {
        'config': spec.config,
        'overrides': {**spec.overrides, **(overrides or {})},
        'extra': extra or {},
        'variant': variant,
        'batch': int(config.batch_size),
        **flops_lib.analytic_flops(jitted, abstract, batch, rng).as_dict(),
    }
    if cpu:
      xla = flops_lib.cpu_lowering_flops(fn, abstract, batch, rng, donate_argnums=0)
      row.update(
          flops_xla_cpu=xla['flops'],
          flops_xla_cpu_compile_s=xla['compile_s'],
          xla_cpu_over_xla_convention=xla['flops'] / row['flops_xla_convention'],
      )
    rows.append(row)
  return rows


# ------------------------------------------------------------------ fresh-process compiles

_CHILD_FLAG = '--fresh-compile-child'
_CHILD_PREFIX = 'FRESH_COMPILE_RESULT '


def fresh_compile_child(payload: dict) -> dict:
  """In a fresh process: build the row, then trace, lower and compile one variant."""
  t_start = time.perf_counter()
  spec = RowSpec(payload['config'], payload['overrides'])
  _, gan, _, batch, abstract = prepare(
      spec, extra=payload.get('extra'), per_sample=payload.get('per_sample')
  )
  jitted, _ = variant_step(gan, payload['variant'])
  t0 = time.perf_counter()
  traced = jitted.trace(abstract, batch, jax.random.PRNGKey(1))
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  lowered.compile()
  t3 = time.perf_counter()
  return {
      'setup_s': t0 - t_start,
      'trace_s': t1 - t0,
      'lower_s': t2 - t1,
      'compile_s': t3 - t2,
      'trace_lower_compile_s': t3 - t0,
      'backend': jax.default_backend(),
  }


def fresh_compile(
    spec: RowSpec,
    variant: str,
    *,
    overrides: dict | None = None,
    extra: dict | None = None,
    per_sample: bool | None = None,
    env: dict | None = None,
    timeout: float = 600.0,
) -> dict:
  """Compiles one variant in a fresh Python process, the first compilation there (with
  ``per_sample`` given the child neither runs init nor probes D); returns its times,
  with ``process_s`` (the process's whole wall time, interpreter start, imports and
  backend start included)."""
  payload = {
      'config': spec.config,
      'overrides': {**spec.overrides, **(overrides or {})},
      'variant': variant,
      'extra': extra or {},
      'per_sample': per_sample,
  }
  t0 = time.perf_counter()
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), _CHILD_FLAG, json.dumps(payload)],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=timeout,
      env={**os.environ, **(env or {})},
  )
  process_s = time.perf_counter() - t0
  for line in result.stdout.splitlines():
    if line.startswith(_CHILD_PREFIX):
      return {**json.loads(line[len(_CHILD_PREFIX) :]), 'process_s': process_s}
  raise RuntimeError(
      f'fresh compile of {variant} failed (exit {result.returncode}): '
      f'{result.stderr[-2000:]}'
  )


def use_compile_cache(path: str) -> dict:
  """Points this process's (and its children's) persistent compilation cache at
  ``path``, caching every executable; returns the children's environment.

  A fresh-compile child then leaves its executable there and this process loads it
  instead of compiling the same program a second time (same HLO, same backend).
  """
  env = {
      'JAX_COMPILATION_CACHE_DIR': path,
      'JAX_ENABLE_COMPILATION_CACHE': 'true',
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  }
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  # Executables only: XLA's GPU autotuning results would otherwise be shared through
  # the cache directory, and a later child's compile would not be a fresh one.
  if hasattr(jax.config, 'jax_persistent_cache_enable_xla_caches'):
    env['JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES'] = 'none'
    jax.config.update('jax_persistent_cache_enable_xla_caches', 'none')
  try:  # the cache is set up once per process, at its first compile
    from jax._src import compilation_cache

    compilation_cache.reset_cache()
  except (ImportError, AttributeError):
    pass
  return env


@dataclasses.dataclass
class CompiledRow:
  """A row's compiled steps (one per variant), its initialiser, batch and FLOP rows."""

  name: str
  rows: dict  # variant -> result row (FLOPs, memory, compile time, ...)
  compiled: dict  # variant -> compiled step
  init: Callable  # key -> TrainState
  batch: dict
  batch_size: int


def compile_row(
    name: str,
    spec: RowSpec,
    *,
    overrides: dict | None = None,
    extra: dict | None = None,
    cpu_flops: bool = False,
    fresh: bool = False,
    child_env: dict | None = None,
    log=print,
) -> CompiledRow:
  """Builds a row as training does and compiles every variant (FLOPs and memory).

  ``cpu_flops``: also lower and compile each variant for the CPU (``flops_xla_cpu``;
  on a CPU backend that is ``flops_xla``, whatever this says). ``fresh``: compile each
  variant first in a fresh process (``fresh_compile``, ``child_env``) and report that
  as ``compile_s``.
  """
  setup = {}
  config, gan, init, batch, abstract = prepare(
      spec, overrides=overrides, extra=extra, times=setup
  )
  batch_size = int(config.batch_size)
  backend = jax.default_backend()
  rng = jax.random.PRNGKey(1)

  rows, compiled, fns = {}, {}, {}
  for variant in spec.variants:
    row = {
        'model': name,
        'variant': variant,
        'config': spec.config,
        'overrides': {**spec.overrides, **(overrides or {})},
        'loss': str(config.loss),
        'batch': batch_size,
        'resolution': int(config.data.resolution),
        'per_sample_d': bool(gan.per_sample),
        **{f'setup_{k}': v for k, v in setup.items()},
    }
    if fresh:
      child = fresh_compile(
          spec,
          variant,
          overrides=overrides,
          extra=extra,
          per_sample=gan.per_sample,
          env=child_env,
      )
      row.update(
          compile_mode='subprocess',
          compile_s=round(child['compile_s'], 2),
          compile_fresh_trace_lower_s=round(child['trace_s'] + child['lower_s'], 2),
          compile_fresh_process_s=round(child['process_s'], 2),
      )
    jitted, fn = variant_step(gan, variant)
    t0 = time.perf_counter()
    traced = jitted.trace(abstract, batch, rng)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled[variant] = lowered.compile()
    t3 = time.perf_counter()
    row.update(
        trace_s=round(t1 - t0, 2),
        lower_s=round(t2 - t1, 2),
        compile_in_process_s=round(t3 - t2, 2),
    )
    if not fresh:
      row.update(compile_mode='in_process', compile_s=round(t3 - t2, 2))
    count = flops_lib.count_jaxpr(flops_lib.dce(traced.jaxpr))
    xla = xla_cost(compiled[variant])
    row.update(
        **count.as_dict(),
        flops_xla=xla['flops'],
        xla_backend=backend,
        bytes_accessed=xla['bytes_accessed'],
        **xla_memory(compiled[variant]),
    )
    row.update(
        flops_xla_cpu=xla['flops'] if backend == 'cpu' else None,
        flops_xla_cpu_compile_s=None,
    )
    rows[variant], fns[variant] = row, fn
    log(
        f'  {name} {variant}: compiled in {row["compile_s"]:.1f} s '
        f'({row["compile_mode"]}), {count.flops / 1e9:.2f} GFLOP analytic '
        f'(XLA:{backend} {xla["flops"] / 1e9:.2f})'
    )
  if cpu_flops and backend != 'cpu':
    cpu = flops_lib.cpu_lowering_flops_many(fns, abstract, batch, rng, donate_argnums=0)
    for variant, row in rows.items():
      row.update(
          flops_xla_cpu=cpu[variant]['flops'],
          flops_xla_cpu_compile_s=round(cpu[variant]['compile_s'], 2),
      )
    log(
        f'  {name}: XLA:CPU '
        + ', '.join(f'{v} {r["flops_xla_cpu"] / 1e9:.2f}' for v, r in rows.items())
        + f' GFLOP (compiled side by side in {cpu[variant]["compile_s"]:.0f} s)'
    )
  for row in rows.values():
    row['xla_cpu_over_xla_convention'] = (
        row['flops_xla_cpu'] / row['flops_xla_convention']
        if row['flops_xla_cpu'] and row['flops_xla_convention']
        else None
    )
  base_flops = rows[BASELINE]['flops'] if BASELINE in rows else None
  run = rows.get('one_stage_approx', rows.get(BASELINE))
  run_flops = run['flops'] if run else None
  for row in rows.values():
    row['flop_ratio'] = row['flops'] / base_flops if base_flops else None
    # Against the FLOPs one-stage executes while no sample needs the exact path.
    row['flop_ratio_executed'] = row['flops'] / run_flops if run_flops else None
  return CompiledRow(name, rows, compiled, init, batch, batch_size)


def time_row(
    c: CompiledRow,
    *,
    rounds: int,
    warmup: int = 1,
    compile_only: bool = False,
    max_row_seconds: float = float('inf'),
    max_step_gflop: float = float('inf'),
    steps_per_round: int = 1,
    peaks: dict | None = None,
    log=print,
) -> list:
  """The result rows of a compiled row: timed interleaved unless too slow or
  ``compile_only`` (then the timing fields are None and ``mode`` says why).

  Each timed call runs ``steps_per_round`` steps and then waits for the device, so
  short steps are timed back to back as in training; times are per step.
  ``peaks``: the device's peak row (``flops.device_peaks``) for ``fraction_of_peak``.
  """
  rows = {v: dict(r) for v, r in c.rows.items()}
  base_flops = rows[BASELINE]['flops']
  timing, mode = None, 'compile_only'
  if not compile_only and base_flops > max_step_gflop * 1e9:
    compile_only, mode = True, 'too_slow'
    log(
        f'  {c.name}: {base_flops / 1e9:.0f} GFLOP per one-stage step > '
        f'--max-step-gflop={max_step_gflop:g}; FLOPs and memory only'
    )
  last_metrics = {}
  if not compile_only:
    # Each variant steps its own state (the step donates it).
    states = {v: c.init(jax.random.PRNGKey(0)) for v in c.compiled}
    rng = np.asarray(jax.random.PRNGKey(1))

    def runner(variant):
      def run():
        for _ in range(steps_per_round):
          states[variant], metrics = c.compiled[variant](states[variant], c.batch, rng)
        jax.block_until_ready((states[variant], metrics))
        last_metrics[variant] = metrics

      return run

    fns = {v: runner(v) for v in c.compiled}
    first = {}
    for variant, fn in fns.items():  # the first call of each, with its peak RSS
      reset = _reset_peak_rss()
      t0 = time.perf_counter()
      fn()
      first[variant] = time.perf_counter() - t0
      rows[variant]['rss_peak_bytes'] = _proc_status_bytes('VmHWM') if reset else None
      rows[variant]['first_call_s'] = round(first[variant], 3)
    estimate = sum(first.values()) * (rounds + warmup)
    if estimate > max_row_seconds:
      mode = 'too_slow'
      log(
          f'  {c.name}: {rounds} rounds would take ~{estimate:.0f} s > '
          f'--max-row-seconds={max_row_seconds:.0f}; FLOPs and memory only'
      )
    else:
      times = run_interleaved(fns, rounds, warmup=warmup)
      timing = ratio_summary(
          {v: [t / steps_per_round for t in ts] for v, ts in times.items()}
      )
      mode = 'timed'
    del states
  for variant, row in rows.items():
    row['mode'] = mode
    row['steps_per_round'] = steps_per_round
    if timing is None:
      row.update(
          step_ms_median=None,
          step_ms_min=None,
          ratio_to_one_stage_median=None,
          ratio_to_one_stage_min=None,
          ratio_to_one_stage_max=None,
          rounds=0,
          images_per_s=None,
      )
      row.setdefault('rss_peak_bytes', None)
    else:
      row.update(timing[variant])
      row['images_per_s'] = c.batch_size / (row['step_ms_median'] / 1e3)
    if 'n_exact' in last_metrics.get(variant, {}):
      row['n_exact_last'] = float(last_metrics[variant]['n_exact'])
    step_s = None if row['step_ms_median'] is None else row['step_ms_median'] / 1e3
    row.update(flops_lib.peak_fields(row, step_s, peaks))
  return list(rows.values())


def measure_row(
    name: str,
    spec: RowSpec,
    *,
    rounds: int,
    warmup: int = 1,
    compile_only: bool = False,
    max_row_seconds: float = float('inf'),
    max_step_gflop: float = float('inf'),
    overrides: dict | None = None,
    log=print,
    **kwargs,
) -> list:
  """The result rows (one per variant) of one model; see the module docstring.

  ``kwargs``: ``compile_row``'s (``extra``, ``cpu_flops``, ``fresh``, ``child_env``)
  and ``time_row``'s (``steps_per_round``, ``peaks``).
  """
  t0 = time.perf_counter()
  compile_kw = {
      k: kwargs.pop(k)
      for k in ('extra', 'cpu_flops', 'fresh', 'child_env')
      if k in kwargs
  }
  rows = time_row(
      compile_row(name, spec, overrides=overrides, log=log, **compile_kw),
      rounds=rounds,
      warmup=warmup,
      compile_only=compile_only,
      max_row_seconds=max_row_seconds,
      max_step_gflop=max_step_gflop,
      log=log,
      **kwargs,
  )
  log(f'  {name}: {time.perf_counter() - t0:.0f} s')
  return rows


def _closure_values(fn) -> dict:
  """The variables a closure captured: name -> cell."""
  return dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))


def _channels_last(torch, step_fns) -> bool:
  """Converts the networks and the real batch the steps captured to channels_last.

  ``cpu_throughput.torch_dcgan_steps`` builds its networks inside; its steps' closures
  hold them (``net_g``, ``net_d``, ``real``). Returns False if nothing was converted.
  """
  done = False
  for fn in step_fns:
    for cell in _closure_values(fn).values():
      value = cell.cell_contents
      if isinstance(value, torch.nn.Module):
        value.to(memory_format=torch.channels_last)
        done = True
      elif isinstance(value, torch.Tensor) and value.dim() == 4:
        cell.cell_contents = value.contiguous(memory_format=torch.channels_last)
  return done


def torch_rows(
    rounds: int,
    max_row_seconds: float = float('inf'),
    log=print,
    *,
    device: str = 'cpu',
    tuned: bool = False,
    width: int = 64,
    resolution: int = 64,
    batch: int = 64,
    model: str = 'dcgan64',
    steps_per_round: int = 1,
    warmup: int = 1,
    peaks: dict | None = None,
) -> list:
  """Optional PyTorch reference rows for DCGAN (issue 8's ``torch_dcgan_steps``).

  The official OSGAN PyTorch steps (``'one'``: one-stage, ``'two'``: the official
  two-stage) as ``torch_one_stage`` / ``torch_official_two_stage``, timed interleaved
  like the JAX rows; ratios against ``torch_one_stage``. Empty when torch or
  ``experiments/cpu_throughput.py`` (or its function) is missing, or when ``device`` is
  ``'cuda'`` and CUDA is not available.

  ``device='cuda'``: the networks, optimisers and batches are created on the GPU (the
  steps are built and run under ``torch.device('cuda')``) and every timed call ends
  with ``torch.cuda.synchronize()``. ``tuned`` (variants get a ``_tuned`` suffix):
  channels_last networks and real batch, TF32 for matmuls and convolutions and
  ``cudnn.benchmark``; untuned rows run PyTorch's defaults (cuDNN convolutions may use
  TF32, matmuls not, no cuDNN autotuning). ``flops``: PyTorch's own count
  (``torch.utils.flop_counter``, convolutions as 2 x out x kh x kw x C_in with the
  padding taps) of one step of each, where available, with ``tflops_per_s`` and
  ``fraction_of_peak`` against ``peaks`` (float32 at the TF32 peak).
  """
  try:
    import torch  # noqa: F401  pylint: disable=unused-import

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cpu_throughput  # pylint: disable=import-error

    torch_dcgan_steps = cpu_throughput.torch_dcgan_steps
  except (ImportError, AttributeError):
    return []
  cuda = device.startswith('cuda')
  if cuda and not torch.cuda.is_available():
    log('  torch rows skipped: CUDA is not available to torch')
    return []
  suffix = '_tuned' if tuned else ''
  flags = {}
  if cuda:
    flags = {
        'cudnn.benchmark': torch.backends.cudnn.benchmark,
        'cudnn.allow_tf32': torch.backends.cudnn.allow_tf32,
        'matmul.allow_tf32': torch.backends.cuda.matmul.allow_tf32,
    }
    torch.backends.cudnn.benchmark = tuned or flags['cudnn.benchmark']
    torch.backends.cudnn.allow_tf32 = tuned or flags['cudnn.allow_tf32']
    torch.backends.cuda.matmul.allow_tf32 = tuned or flags['matmul.allow_tf32']
  try:
    try:
      with torch.device(device):
        steps_ = dict(
            torch_dcgan_steps(
                width=width,
                resolution=resolution,
                batch=batch,
                threads=2 if not cuda else None,
            )
        )
    except Exception as e:  # pylint: disable=broad-except
      log(f'  torch rows skipped: torch_dcgan_steps failed: {e!r}')
      return []
    converted = tuned and _channels_last(torch, steps_.values())
    if tuned and not converted:
      log('  torch tuned rows: could not reach the networks for channels_last')
    names = {'one': 'torch_one_stage', 'two': 'torch_official_two_stage'}
    base = 'torch_one_stage' + suffix

    def on_device(fn):
      def run():
        with torch.device(device):
          for _ in range(steps_per_round):
            fn()
        if cuda:
          torch.cuda.synchronize()

      return run

    fns = {names.get(k, f'torch_{k}') + suffix: on_device(v) for k, v in steps_.items()}
    if base not in fns:
      log(f'  torch rows skipped: no one-stage step among {sorted(fns)}')
      return []
    first, counted = {}, {}
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      first[name] = time.perf_counter() - t0
    for key, name in names.items():  # one step of each under PyTorch's FLOP counter
      if key in steps_ and name + suffix in fns:
        counted[name + suffix] = _torch_flops(torch, steps_[key], device)
    estimate = sum(first.values()) * (rounds + warmup)
    if estimate > max_row_seconds:
      log(f'  torch rows skipped: ~{estimate:.0f} s > --max-row-seconds')
      return []
    times = run_interleaved(fns, rounds, warmup=warmup)
    timing = ratio_summary(
        {k: [t / steps_per_round for t in ts] for k, ts in times.items()}, baseline=base
    )
  finally:
    if cuda:
      torch.backends.cudnn.benchmark = flags['cudnn.benchmark']
      torch.backends.cudnn.allow_tf32 = flags['cudnn.allow_tf32']
      torch.backends.cuda.matmul.allow_tf32 = flags['matmul.allow_tf32']
  rows = []
  settings = {
      'device': device,
      'tuned': tuned,
      'torch': torch.__version__,
      'channels_last': bool(tuned and converted),
      'tf32': 'matmul+conv' if tuned else 'conv (cuDNN default)' if cuda else None,
      'cudnn_benchmark': bool(tuned and cuda),
  }
  for variant, t in timing.items():
    flops = counted.get(variant)
    rows.append(
        {
            'model': model,
            'variant': variant,
            'flops': flops,
            'flops_source': 'torch.utils.flop_counter' if flops else None,
            'flops_by_dtype': {'float32': flops} if flops else None,
            'peak_bytes': None,
            'batch': batch,
            'resolution': resolution,
            'mode': 'timed_torch',
            **t,
            'steps_per_round': steps_per_round,
            'images_per_s': batch / (t['step_ms_median'] / 1e3),
            'torch_settings': settings,
            'note': 'PyTorch, official OSGAN networks and steps (issue 8)',
        }
    )
    rows[-1].update(flops_lib.peak_fields(rows[-1], t['step_ms_median'] / 1e3, peaks))
  return rows


def _torch_flops(torch, step, device):
  """PyTorch's FLOP count of one call of ``step`` (None if unavailable)."""
  try:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device(device), FlopCounterMode(display=False) as counter:
      step()
    return float(counter.get_total_flops())
  except Exception:  # pylint: disable=broad-except
    return None


# ------------------------------------------------------------------ output

CSV_FIELDS = (
    'model',
    'variant',
    'mode',
    'batch',
    'flops',
    'flop_ratio',
    'flop_ratio_executed',
    'step_ms_median',
    'ratio_to_one_stage_median',
    'ratio_to_one_stage_min',
    'ratio_to_one_stage_max',
    'images_per_s',
    'peak_bytes',
    'rss_peak_bytes',
    'bytes_accessed',
    'compile_s',
    'rounds',
    'flops_max_branch',
    'flops_elementwise',
    'flops_xla',
    'flops_xla_cpu',
    'tflops_per_s',
    'peak_tflops',
    'fraction_of_peak',
    'compile_mode',
    'compile_fresh_process_s',
    'steps_per_round',
)


def _fmt(value, digits=3):
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.{digits}g}'
  return str(value)


def table(rows: Sequence[dict]) -> str:
  """A markdown table of the rows (what the script prints)."""
  head = (
      'model',
      'variant',
      'GFLOP',
      'FLOP ratio',
      'executed FLOP ratio',
      'ms/step (median)',
      'time ratio median [min, max]',
      'img/s',
      'XLA peak MiB',
      'RSS peak MiB',
  )
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for r in rows:
    ratio = '-'
    if r.get('ratio_to_one_stage_median') is not None:
      ratio = (
          f'{r["ratio_to_one_stage_median"]:.3f} '
          f'[{r["ratio_to_one_stage_min"]:.2f}, {r["ratio_to_one_stage_max"]:.2f}]'
      )
    flops = r.get('flops')
    cells = (
        r['model'],
        r['variant'],
        _fmt(None if flops is None else flops / 1e9, 4),
        _fmt(r.get('flop_ratio'), 4),
        _fmt(r.get('flop_ratio_executed'), 4),
        _fmt(r.get('step_ms_median'), 4),
        ratio,
        _fmt(r.get('images_per_s'), 4),
        _fmt(None if r.get('peak_bytes') is None else r['peak_bytes'] / 2**20, 4),
        _fmt(None if r.get('rss_peak_bytes') is None else r['rss_peak_bytes'] / 2**20, 4),
    )
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def device_table(rows: Sequence[dict]) -> str:
  """The device suite's short table: time, rate, FLOPs, TFLOP/s, peak, compile."""
  head = (
      'model',
      'variant',
      'ms/step',
      'ratio',
      'img/s',
      'GFLOP',
      'TFLOP/s',
      '% peak',
      'XLA GFLOP',
      'XLA:CPU/count',
      'compile s',
  )
  lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for r in rows:
    flops = r.get('flops')
    frac = r.get('fraction_of_peak')
    compile_s = r.get('compile_s')
    if compile_s is not None:
      compile_s = f'{compile_s:.1f}' + (
          ' (fresh)' if r.get('compile_mode') == 'subprocess' else ''
      )
    cells = (
        r['model'],
        r['variant'],
        _fmt(r.get('step_ms_median'), 4),
        _fmt(r.get('ratio_to_one_stage_median'), 3),
        _fmt(r.get('images_per_s'), 4),
        _fmt(None if flops is None else flops / 1e9, 4),
        _fmt(r.get('tflops_per_s'), 3),
        _fmt(None if frac is None else 100 * frac, 3),
        _fmt(None if r.get('flops_xla') is None else r['flops_xla'] / 1e9, 4),
        _fmt(r.get('xla_cpu_over_xla_convention'), 4),
        _fmt(compile_s),
    )
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _write_csv(rows: Sequence[dict], csv_path: str) -> str:
  with open(csv_path, 'w', newline='') as f:
    writer = csv.DictWriter(f, CSV_FIELDS, extrasaction='ignore')
    writer.writeheader()
    for r in rows:
      writer.writerow({k: r.get(k) for k in CSV_FIELDS})
  return csv_path


def write_results(rows: Sequence[dict], out: str) -> str:
  """Writes ``out`` (JSON list of rows) and the CSV next to it; returns the CSV path."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(list(rows), f, indent=1)
    f.write('\n')
  return _write_csv(rows, os.path.splitext(out)[0] + '.csv')


def write_record(record: dict, out: str) -> str:
  """Writes a device-suite record (``rows`` and its context) as JSON, and its rows as
  CSV next to it; returns the CSV path."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(record, f, indent=1)
    f.write('\n')
  return _write_csv(record['rows'], os.path.splitext(out)[0] + '.csv')


def git_state() -> dict:
  """The commit measured and the library/config files that differ from it."""
  try:
    commit = subprocess.run(
        ['git', 'rev-parse', 'HEAD'], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ['git', 'status', '--porcelain', '--', 'osgan_jax', 'configs'],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split('\n')
    return {
        'git_commit': commit,
        'git_modified': sorted(line[3:] for line in dirty if line.strip()),
    }
  except (OSError, subprocess.CalledProcessError):
    return {'git_commit': None, 'git_modified': None}


def machine() -> dict:
  return {
      'platform': platform.platform(),
      'python': platform.python_version(),
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'cpu_count': os.cpu_count(),
      **git_state(),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def device_name() -> str:
  d = jax.devices()[0]
  return f'{d.platform}:{d.device_kind}'


def _row_list(text: str | None, names: Sequence[str]) -> set:
  if text is None or text == 'none':
    return set()
  if text == 'all':
    return set(names)
  return {n for n in text.split(',') if n}


def loop_rows(out_dir: str, *, tiny: bool, overrides: dict, log=print) -> list:
  """The training loop's rates (``experiments/loop_throughput.py`` with ``--real``:
  its ceiling, and DCGAN 64 one/two-stage alone and through ``python -m
  osgan_jax.main``) as result rows; its own JSON goes to ``out_dir``."""
  import loop_throughput  # pylint: disable=import-error  (it imports this module)

  argv = list(LOOP_TINY_ARGS if tiny else LOOP_ARGS)
  for key, value in overrides.items():
    if key in LOOP_OVERRIDE_FLAGS:
      argv += [LOOP_OVERRIDE_FLAGS[key], str(value)]
    else:
      log(f'  loop: --override {key} does not apply to the loop')
  work = tempfile.mkdtemp(prefix='loop_throughput_')
  try:
    loop_throughput.main(argv + ['--work', work, '--out', out_dir])
  finally:
    shutil.rmtree(work, ignore_errors=True)
  with open(os.path.join(out_dir, 'loop_throughput.json')) as f:
    record = json.load(f)
  rows = []
  for r in record['rows']:
    real = r['step'] in ('one', 'two')
    rows.append(
        {
            'model': 'loop_dcgan64',
            'mode': 'loop',
            'variant': f'{r["source"]}/{r["step"]}'
            + ('/through_loop' if r['through_loop'] else ''),
            'source': r['source'],
            'step': r['step'],
            'through_loop': r['through_loop'],
            'batch': r['batch'],
            'images_per_s': r['images_per_s'],
            'step_ms_median': 1e3 * r['batch'] / r['images_per_s'] if real else None,
            'flops': None,
            'log_intervals': r.get('log_intervals'),
            'note': 'experiments/loop_throughput.py --real',
        }
    )
  return rows


# Cost of each device-suite row on one H200 (seconds, fresh compiles included; measured
# 2026-11-26, results/device/gpu_nvidia_h200*.json: dcgan64_d128 89-103, torch 21,
# stylegan2_256_f32 262 (two 77 s fresh compiles), stylegan2_256_bf16 160,
# dcgan64_d128_bf16 58), to skip rows that would not finish within --budget-s. All
# rows together take about 11 minutes there, so the default 8-minute budget leaves the
# last ones to a second command, which the suite prints.
DEVICE_ROW_ESTIMATE_S = {
    'dcgan64_d128': 100,
    'torch': 25,
    'stylegan2_256_f32': 265,
    'stylegan2_256_bf16': 165,
    'dcgan64_d128_bf16': 60,
    'loop': 60,
}


def run_device_suite(args, overrides: dict) -> dict:
  """The device suite (module docstring); returns the record it wrote."""
  t_start = time.perf_counter()
  names = [n for n in (args.models or ','.join(DEVICE_SUITE)).split(',') if n]
  unknown = [n for n in names if n not in DEVICE_SUITE]
  if unknown:
    raise SystemExit(
        f'unknown device-suite rows {unknown}; valid: {", ".join(DEVICE_SUITE)}'
    )
  tiny = args.tiny
  jax_rows = [n for n in names if n in DEVICE_ROWS]
  fresh_rows = _row_list(
      args.fresh_compile
      if args.fresh_compile is not None
      else ('dcgan64_d128' if tiny else 'all'),
      jax_rows,
  )
  cpu_rows = _row_list(
      args.cpu_flops if args.cpu_flops is not None else 'dcgan64_d128', jax_rows
  )
  compile_only = _row_list(args.compile_only, jax_rows)
  budget = (
      args.budget_s if args.budget_s is not None else (float('inf') if tiny else 480.0)
  )
  child_env, cache_dir = {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}, None
  if fresh_rows and args.compile_cache == 'fresh':
    cache_dir = tempfile.mkdtemp(prefix='osgan_compile_cache_')
    child_env.update(use_compile_cache(cache_dir))
  elif fresh_rows:
    child_env['JAX_ENABLE_COMPILATION_CACHE'] = 'false'

  device = device_name()
  peaks = flops_lib.device_peaks()
  slug = re.sub(r'[^a-z0-9]+', '_', device.lower()).strip('_')
  out = args.out or os.path.join(REPO, 'experiments', 'results', 'device')
  path = (
      out
      if out.endswith('.json')
      else os.path.join(out, f'{"tiny_" if tiny else ""}{slug}.json')
  )
  out_dir = os.path.dirname(os.path.abspath(path))
  record = {
      'suite': 'device',
      'tiny': tiny,
      'device': device,
      'device_kind': jax.devices()[0].device_kind,
      'peaks_tflops': peaks,
      'machine': machine(),
      'argv': args.argv,
      'overrides': overrides,
      'fresh_compile_rows': sorted(fresh_rows),
      'cpu_flops_rows': sorted(cpu_rows),
      'compile_cache': args.compile_cache if fresh_rows else None,
      'budget_s': budget,
      'row_seconds': {},
      'skipped': [],
      'errors': {},
      'rows': [],
  }
  log = lambda s: print(s, flush=True)  # noqa: E731
  log(
      f'# {record["machine"]["date"]}  jax {jax.__version__} on {device} '
      f'(peaks {peaks}); rows {", ".join(names)}; budget {budget:g} s'
  )
  dcgan_size = None
  try:
    for name in names:
      elapsed = time.perf_counter() - t_start
      if elapsed + (0 if tiny else DEVICE_ROW_ESTIMATE_S.get(name, 0)) > budget:
        log(
            f'{name}: skipped at {elapsed:.0f} s (~{DEVICE_ROW_ESTIMATE_S.get(name)} s '
            f'would pass --budget-s={budget:g})'
        )
        record['skipped'].append(name)
        continue
      t_row = time.perf_counter()
      try:
        if name == 'loop':
          log(
              'loop: experiments/loop_throughput.py'
              + ('' if tiny else ' --real (DCGAN 64 one/two-stage through main)')
          )
          loop_dir = os.path.join(out_dir, f'loop_{"tiny_" if tiny else ""}{slug}')
          record['rows'] += loop_rows(loop_dir, tiny=tiny, overrides=overrides, log=log)
        elif name == 'torch':
          if args.no_torch:
            continue
          if dcgan_size is None:
            spec = DEVICE_ROWS['dcgan64_d128']
            config = config_lib.load_config(
                os.path.join(REPO, spec.config),
                {
                    **spec.overrides,
                    **(TINY_OVERRIDES['dcgan64_d128'] if tiny else {}),
                    **overrides,
                },
            )
            dcgan_size = dict(
                width=int(config.model.generator.width),
                resolution=int(config.data.resolution),
                batch=int(config.batch_size),
            )
          rounds, per = TINY_TIMING if tiny else DEVICE_TIMING['dcgan64_d128']
          log(f'torch: official OSGAN DCGAN steps on CUDA, {dcgan_size}')
          for tuned in (False, True):
            record['rows'] += torch_rows(
                args.rounds or rounds,
                log=log,
                device='cuda',
                tuned=tuned,
                model='torch_dcgan64',
                steps_per_round=args.steps_per_round or per,
                peaks=peaks,
                **dcgan_size,
            )
        else:
          spec = DEVICE_ROWS[name]
          row_overrides = {**(TINY_OVERRIDES.get(name, {}) if tiny else {}), **overrides}
          rounds, per = TINY_TIMING if tiny else DEVICE_TIMING[name]
          log(f'{name}: {spec.note}' + (f' (tiny: {row_overrides})' if tiny else ''))
          record['rows'] += measure_row(
              name,
              spec,
              rounds=args.rounds or rounds,
              warmup=args.warmup,
              steps_per_round=args.steps_per_round or per,
              compile_only=name in compile_only,
              overrides=row_overrides,
              cpu_flops=name in cpu_rows,
              fresh=name in fresh_rows,
              child_env=child_env,
              peaks=peaks,
              log=log,
          )
      except Exception as e:  # pylint: disable=broad-except  (one row, not the run)
        traceback.print_exc()
        log(f'{name}: FAILED: {e!r}')
        record['errors'][name] = repr(e)[:2000]
      seconds = time.perf_counter() - t_row
      record['row_seconds'][name] = round(seconds, 1)
      log(f'{name}: {seconds:.0f} s (elapsed {time.perf_counter() - t_start:.0f} s)')
      record['elapsed_s'] = round(time.perf_counter() - t_start, 1)
      write_record(record, path)  # partial results survive an interrupted run
  finally:
    if cache_dir:
      shutil.rmtree(cache_dir, ignore_errors=True)
  record['elapsed_s'] = round(time.perf_counter() - t_start, 1)
  csv_path = write_record(record, path)
  print(device_table(record['rows']))
  if record['skipped']:
    rerun = [
        'python',
        'experiments/benchmark_speed.py',
        '--suite=device',
        '--models',
        ','.join(record['skipped']),
        '--out',
        f'{os.path.splitext(path)[0]}_rest.json',
        *(['--tiny'] if tiny else []),
        *[f'--override={k}={v}' for k, v in overrides.items()],
    ]
    print(
        f'skipped (budget): {", ".join(record["skipped"])}; run them with: '
        f'{shlex.join(rerun)}'
    )
  if record['errors']:
    print(f'failed rows: {", ".join(record["errors"])}')
  print(f'wrote {path} and {csv_path} in {record["elapsed_s"]:.0f} s')
  record['path'] = path
  return record


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == [_CHILD_FLAG]:  # a fresh-compile child (see fresh_compile)
    print(
        _CHILD_PREFIX + json.dumps(fresh_compile_child(json.loads(argv[1]))), flush=True
    )
    return 0
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument(
      '--suite',
      choices=('default', 'device'),
      default='default',
      help="'default': the CPU-sized rows (--models); 'device': the "
      'accelerator suite (module docstring), about 8 minutes on one H200',
  )
  p.add_argument(
      '--tiny',
      action='store_true',
      help='--suite=device at toy sizes (about a minute on a CPU)',
  )
  p.add_argument(
      '--override',
      action='append',
      default=[],
      metavar='KEY=VALUE',
      help='config override for every row (repeatable), e.g. batch_size=64',
  )
  p.add_argument(
      '--models',
      default=None,
      help=f'comma-separated rows; default suite (default all): '
      f'{", ".join(ROWS)}; device suite: {", ".join(DEVICE_SUITE)}',
  )
  p.add_argument(
      '--rounds',
      type=int,
      default=None,
      help='interleaved timed rounds (default 20; device suite: per row)',
  )
  p.add_argument(
      '--steps-per-round',
      type=int,
      default=None,
      help='steps per timed call (default 1; device suite: per row)',
  )
  p.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
  p.add_argument(
      '--compile-only',
      default=None,
      help='rows to compile but not run (FLOPs and memory only; default '
      f'{",".join(DEFAULT_COMPILE_ONLY)}, device suite none)',
  )
  p.add_argument(
      '--max-step-gflop',
      type=float,
      default=None,
      help='rows whose one-stage step has more GFLOPs are not run '
      '(FLOPs and memory only); default 40 (~5-30 GFLOP/s on 2 shared '
      'cores), device suite none',
  )
  p.add_argument(
      '--max-row-seconds',
      type=float,
      default=None,
      help='rows whose timed rounds would take longer (estimated from the '
      'first step of each variant) report FLOPs and memory only '
      '(default 200, device suite none)',
  )
  p.add_argument(
      '--cpu-flops',
      default=None,
      help="rows (or 'all'/'none') whose variants are also compiled for the "
      "CPU for XLA:CPU's FLOP count on an accelerator (device suite default: "
      'dcgan64_d128)',
  )
  p.add_argument(
      '--fresh-compile',
      default=None,
      help="rows (or 'all'/'none') whose variants are each compiled first in "
      'a fresh process for compile_s (device suite default: all; --tiny: '
      'dcgan64_d128; default suite: none)',
  )
  p.add_argument(
      '--compile-cache',
      choices=('fresh', 'off'),
      default='fresh',
      help="with --fresh-compile: 'fresh': the children and this process "
      'share a new, empty persistent compilation cache, so this process loads '
      "the children's executables instead of compiling them again; 'off': "
      'no cache, every variant is compiled twice',
  )
  p.add_argument(
      '--budget-s',
      type=float,
      default=None,
      help='device suite: skip rows that would end after this many seconds '
      '(default 480; --tiny: no limit)',
  )
  p.add_argument(
      '--malloc',
      choices=('keep', 'default'),
      default='keep',
      help="'keep': osgan_jax.training.host_memory.keep_freed_memory() first, as "
      "python -m osgan_jax.main does; 'default': glibc's defaults",
  )
  p.add_argument(
      '--no-torch', action='store_true', help='skip the optional PyTorch reference rows'
  )
  p.add_argument(
      '--out',
      default=None,
      help='default suite: the results JSON (default '
      'experiments/results/speed/results.json); device suite: a directory '
      '(default experiments/results/device/) or a .json path',
  )
  p.add_argument(
      '--render', default='', help='print the table of an existing results JSON and exit'
  )
  args = p.parse_args(argv)
  args.argv = argv
  if args.render:
    with open(args.render) as f:
      saved = json.load(f)
    print(device_table(saved['rows']) if isinstance(saved, dict) else table(saved))
    return 0
  try:
    overrides = flops_lib.parse_overrides(args.override)
  except ValueError as e:
    p.error(str(e))
  if args.tiny and args.suite != 'device':
    p.error('--tiny needs --suite=device')
  if args.suite == 'device':
    # Before any JAX backend starts: the loop's `python -m osgan_jax.main` and the
    # fresh-compile children share the accelerator with this process.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    if args.malloc == 'keep':
      host_memory.keep_freed_memory()
    record = run_device_suite(args, overrides)
    return 1 if record['errors'] else 0

  names = [n for n in (args.models or ','.join(ROWS)).split(',') if n]
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    p.error(f'unknown models {unknown}; valid: {", ".join(ROWS)}')
  compile_only = _row_list(
      args.compile_only
      if args.compile_only is not None
      else ','.join(DEFAULT_COMPILE_ONLY),
      names,
  )
  cpu_rows = _row_list(args.cpu_flops, names)
  fresh_rows = _row_list(args.fresh_compile, names)
  rounds = args.rounds or 20
  max_step_gflop = 40.0 if args.max_step_gflop is None else args.max_step_gflop
  max_row_seconds = 200.0 if args.max_row_seconds is None else args.max_row_seconds
  out = args.out or os.path.join(REPO, 'experiments', 'results', 'speed', 'results.json')

  t0 = time.perf_counter()
  malloc_kept = args.malloc == 'keep' and host_memory.keep_freed_memory()
  info = dict(machine(), malloc_kept=malloc_kept)
  peaks = flops_lib.device_peaks()
  child_env = None
  if fresh_rows and args.compile_cache == 'off':
    child_env = {'JAX_ENABLE_COMPILATION_CACHE': 'false'}
  print(
      f'# {info["date"]}  jax {info["jax"]} on {info["backend"]}, '
      f'{info["cpu_count"]} CPUs; {rounds} interleaved rounds',
      flush=True,
  )
  rows = []
  for name in names:
    spec = ROWS[name]
    if not os.path.exists(os.path.join(REPO, spec.config)):
      print(f'  {name}: skipped, {spec.config} does not exist', flush=True)
      continue
    print(f'{name}: {spec.note}', flush=True)
    rows += measure_row(
        name,
        spec,
        rounds=rounds,
        warmup=args.warmup,
        compile_only=name in compile_only,
        max_row_seconds=max_row_seconds,
        max_step_gflop=max_step_gflop,
        overrides=overrides,
        steps_per_round=args.steps_per_round or 1,
        peaks=peaks,
        cpu_flops=name in cpu_rows,
        fresh=name in fresh_rows,
        child_env=child_env,
        log=lambda s: print(s, flush=True),
    )
    if name == 'dcgan64' and not args.no_torch:
      rows += torch_rows(rounds, max_row_seconds, log=lambda s: print(s, flush=True))
    write_results(rows, out)  # partial results survive an interrupted run
  for r in rows:
    r.setdefault('machine', info)
  csv_path = write_results(rows, out)
  print(table(rows))
  skipped = sorted(
      {
          r['model']
          for r in rows
          if r.get('mode') != 'timed' and not str(r.get('mode', '')).startswith('timed')
      }
  )
  if skipped:
    print(f'FLOPs and memory only (no timing): {", ".join(skipped)}')
  print(f'wrote {out} and {csv_path} in {time.perf_counter() - t0:.0f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
