"""CPU throughput of one- vs two-stage DCGAN training: JAX vs the official PyTorch code.

Issue 8. In ONE process, the DCGAN of the official OSGAN asymmetric configs (d = 64,
64x64x3, batch 64, z 128, biases, BatchNorm G, GroupNorm(32) D, non-saturating loss,
Adam(2e-4, 0.5, 0.999)):

* ``jax-xla``: ``osgan_jax.core.steps.jit_step(gan, 'one' | 'two')`` with plain XLA
  convolutions (``conv_impl='xla'``);
* ``jax-matmul``: the same steps with ``conv_impl='matmul'`` (``osgan_jax.models.
  conv_ops``: same parameters, same function, CPU-fast formulation);
* ``torch`` (when importable): the official code's steps, written here in PyTorch
  (``torch_dcgan_steps``), ``torch.set_num_threads(2)``.

By default the process first calls ``osgan_jax.training.host_memory.keep_freed_memory()`` (as
``python -m osgan_jax.main`` does), which stops XLA:CPU's buffers from being
page-faulted afresh every step; it is process-wide, so the PyTorch row runs with it
too (``--malloc default`` measures glibc's defaults).

Every round runs one step of every variant, interleaved (A B C ... A B C ...), so a
shared, noisy CPU slows all variants alike; the table gives medians over rounds and
the two/one ratio as the median (min-max) of per-round ratios.

  python experiments/cpu_throughput.py --rounds 8 --out /tmp/cpu_throughput.json

Other scripts can import the rows: ``torch_dcgan_steps`` and ``jax_dcgan_steps`` return
``{'one': step, 'two': step}`` of zero-argument callables that run one training step
each and return when it is finished (``benchmark_speed.py`` of issue 6 uses the torch
row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import sys
import time
from typing import Callable

import numpy as np

# Runnable as a script from the repository root without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAGES = ('one', 'two')


def _schedule(resolution: int, width: int, max_mult: int = 8) -> list[int]:
  """Channels of the feature maps from R/2 down to 4 (as ``dcgan.channel_schedule``
  for powers of two)."""
  if resolution < 8 or resolution & (resolution - 1):
    raise ValueError(f'resolution must be a power of two >= 8, got {resolution}')
  out, r = [], resolution // 2
  while r >= 4:
    out.append(width * min(resolution // (2 * r), max_mult))
    r //= 2
  return out


# ----------------------------------------------------------------------------- PyTorch


def torch_dcgan_steps(
    width: int = 64,
    resolution: int = 64,
    batch: int = 64,
    *,
    z_dim: int = 128,
    channels: int = 3,
    threads: int | None = 2,
    seed: int = 0,
) -> dict[str, Callable[[], None]]:
  """The official OSGAN PyTorch DCGAN training steps, as zero-argument callables.

  Networks as the official ``networks/dcgan.py`` (biases on every conv): G transposed
  convs 4x4 ``z -> 8d -> 4d -> 2d -> d -> C`` (64x64) with BatchNorm + ReLU and tanh;
  D convs 4x4 stride 2 ``C -> d -> 2d -> 4d -> 8d -> 1`` with LeakyReLU(0.2) and
  GroupNorm(32) after every conv but the first (the asymmetric configs); N(0, 0.02)
  conv init, BatchNorm scale N(1, 0.02). Adam(2e-4, betas (0.5, 0.999)) for both,
  non-saturating loss (BCE with logits).

  * ``'one'``: the official one-stage step: G forward, D on the real and the fake
    batch, ONE backward of L_D in which a hook rescales the gradient reaching the
    fake images by gamma_i = (dL_G/dl_i) / (dL_D/dl_i) = -exp(-l_i), then both
    optimisers step.
  * ``'two'``: the official two-stage step (the PyTorch DCGAN example): D step on real
    and detached fake, then G step against the updated D on the same fake batch (its
    backward also computes D's parameter gradients, as the official code does).

  The real batch is a fixed random tensor; ``threads`` sets ``torch.set_num_threads``
  (None leaves it). Returns ``{'one': f, 'two': f}``; each ``f()`` runs one step.
  """
  import torch
  from torch import nn

  if threads is not None:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  chans = _schedule(resolution, width)
  g_layers = [
      nn.ConvTranspose2d(z_dim, chans[-1], 4, 1, 0),
      nn.BatchNorm2d(chans[-1]),
      nn.ReLU(True),
  ]
  for c_in, c_out in zip(chans[::-1], chans[::-1][1:]):
    g_layers += [
        nn.ConvTranspose2d(c_in, c_out, 4, 2, 1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(True),
    ]
  g_layers += [nn.ConvTranspose2d(chans[0], channels, 4, 2, 1), nn.Tanh()]
  d_layers = [nn.Conv2d(channels, chans[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
  for c_in, c_out in zip(chans, chans[1:]):
    d_layers += [
        nn.Conv2d(c_in, c_out, 4, 2, 1),
        nn.GroupNorm(math.gcd(32, c_out), c_out),
        nn.LeakyReLU(0.2, True),
    ]
  d_layers += [nn.Conv2d(chans[-1], 1, 4, 1, 0)]
  net_g, net_d = nn.Sequential(*g_layers), nn.Sequential(*d_layers)

  def weights_init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
      nn.init.normal_(m.weight, 0.0, 0.02)
      nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.normal_(m.weight, 1.0, 0.02)
      nn.init.zeros_(m.bias)

  net_g.apply(weights_init)
  net_d.apply(weights_init)
  net_g.train()
  net_d.train()
  opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  bce = nn.BCEWithLogitsLoss()
  real = torch.rand(batch, channels, resolution, resolution) * 2 - 1
  ones, zeros = torch.ones(batch), torch.zeros(batch)

  def one():
    opt_d.zero_grad(set_to_none=True)
    opt_g.zero_grad(set_to_none=True)
    fake = net_g(torch.randn(batch, z_dim, 1, 1))
    out_real = net_d(real).view(-1)
    out_fake = net_d(fake).view(-1)
    with torch.no_grad():
      gamma = -torch.exp(-out_fake)  # (sigmoid(l) - 1) / sigmoid(l)
    fake.register_hook(lambda grad: grad * gamma.view(-1, 1, 1, 1))
    loss_d = bce(out_real, ones) + bce(out_fake, zeros)
    loss_d.backward()
    opt_d.step()
    opt_g.step()

  def two():
    opt_d.zero_grad(set_to_none=True)
    fake = net_g(torch.randn(batch, z_dim, 1, 1))
    loss_d = bce(net_d(real).view(-1), ones) + bce(net_d(fake.detach()).view(-1), zeros)
    loss_d.backward()
    opt_d.step()
    opt_g.zero_grad(set_to_none=True)
    loss_g = bce(net_d(fake).view(-1), ones)
    loss_g.backward()
    opt_g.step()

  return {'one': one, 'two': two}


# --------------------------------------------------------------------------------- JAX


def jax_config(width: int = 64, resolution: int = 64, batch: int = 64):
  """``configs/dcgan_celeba.py`` (non-saturating, GroupNorm D, z 128, biases) at width
  d, ``resolution`` and ``batch``."""
  from osgan_jax import config as config_lib

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return config_lib.load_config(
      os.path.join(root, 'configs', 'dcgan_celeba.py'),
      {
          'model.generator.width': width,
          'model.discriminator.width': width,
          'batch_size': batch,
          'data.resolution': resolution,
      },
  )


def _fill(shapes, seed: int):
  """Variables of the given shapes drawn as the modules' initialisers (NumPy, fast)."""
  import jax

  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = getattr(path[-1], 'key', '')
    parent = getattr(path[-2], 'key', '') if len(path) > 1 else ''
    if name == 'kernel':
      v = 0.02 * rng.standard_normal(leaf.shape)
    elif name == 'scale':
      v = 1.0 + (
          0.02 * rng.standard_normal(leaf.shape)
          if parent.startswith('norm') and leaf.ndim == 1
          else 0.0
      )
    elif name in ('var',):
      v = np.ones(leaf.shape)
    else:
      v = np.zeros(leaf.shape)
    return np.asarray(v, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def jax_dcgan_steps(
    width: int = 64,
    resolution: int = 64,
    batch: int = 64,
    *,
    conv_impl: str = 'auto',
    mode: str = 'exact',
    seed: int = 0,
    stages: tuple[str, ...] = STAGES,
) -> dict:
  """``osgan_jax`` one- and two-stage DCGAN steps (``steps.jit_step``) as callables.

  Models from ``gan.create_models(jax_config(...))`` with ``conv_impl`` set, the GAN
  from ``gan.make_gan`` (D's per-sample property settled by ``probe_per_sample``),
  compiled ahead of time; ``mode`` is the one-stage mode (``'exact'``, the default, or
  ``'approx'``, which for this per-sample D and loss gives the same gradients while
  every gamma is finite, without the exact path's ``lax.cond``). Returns
  ``{stage: f, ...}`` (each ``f()`` runs one step on
  its own state and blocks until it is done) plus ``'flops'``: ``{stage: XLA's FLOP
  count of the compiled step}``, ``'compile_s'``: ``{stage: seconds}`` and
  ``'compiled'``: ``{stage: the compiled executable}`` (for its HLO text) and
  ``'matmul_flops'``: ``{stage: (dot/conv FLOPs outside conditionals, inside)}``.
  """
  import jax
  import jax.numpy as jnp
  from osgan_jax.tasks import gan as gan_lib
  from osgan_jax.core import steps

  config = jax_config(width, resolution, batch)
  g, d = gan_lib.create_models(config)
  g, d = g.clone(conv_impl=conv_impl), d.clone(conv_impl=conv_impl)
  gan = dataclasses.replace(gan_lib.make_gan(config, g, d), mode=mode)
  z = jnp.zeros((batch, config.z_dim))
  x = jnp.asarray(
      np.random.default_rng(seed + 1).uniform(
          -1, 1, (batch, resolution, resolution, config.data.channels)
      ),
      jnp.float32,
  )
  g_vars = dict(
      _fill(jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, train=False)), seed)
  )
  d_vars = dict(
      _fill(
          jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x, train=False)), seed + 2
      )
  )
  params_g, params_d = g_vars.pop('params'), d_vars.pop('params')
  batch_dict = {'image': x}
  template = steps.init_state(gan, params_g, params_d, g_vars, d_vars)
  gan = steps.probe_per_sample(gan, template, batch_dict)
  out = {'flops': {}, 'compile_s': {}, 'compiled': {}, 'matmul_flops': {}}
  for stage in stages:
    state = jax.tree.map(jnp.array, template)  # own copy: the step donates it
    t0 = time.perf_counter()
    compiled = (
        steps.jit_step(gan, stage)
        .lower(state, batch_dict, jax.random.PRNGKey(0))
        .compile()
    )
    out['compile_s'][stage] = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out['flops'][stage] = float(cost.get('flops', float('nan'))) if cost else float('nan')
    out['compiled'][stage] = compiled
    out['matmul_flops'][stage] = hlo_matmul_flops(compiled.as_text())
    out[stage] = _runner(compiled, state, batch_dict, seed)
  return out


def hlo_matmul_flops(hlo_text: str) -> tuple[float, float]:
  """FLOPs of the dots and convolutions in optimised HLO text: ``(outside conditional
  branches, inside them)``.

  ``cost_analysis()`` counts both branches of a ``lax.cond``; the exact one-stage path
  keeps an input backward of D in one that runs only when a sample needs it, so the
  first number is what a step computes when no sample does. 2 * output size * reduced
  size per dot, 2 * output size * window size * input features per convolution,
  divided by the input dilation (transposed convolutions and input gradients of strided
  ones, whose dilated input is mostly zeros).
  """
  comps, calls, cur = {}, {}, None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith('{'):
      cur = 'ENTRY' if line.startswith('ENTRY') else line.split()[0].lstrip('%')
      comps[cur] = (dict(re.findall(r'([\w.\-]+): (\w+\[[\d,]*\])', line)), [])
    elif cur is not None and ' = ' in line:
      m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\w+\[[\d,]*\])', line)
      if m:
        comps[cur][0][m.group(1)] = m.group(2)
      comps[cur][1].append(line)
      calls.setdefault(cur, set()).update(
          re.findall(
              r'(?:calls|to_apply|body|condition|computations?)=\{?%?([\w.\-]+)', line
          )
      )
      for group in re.findall(r'branch_computations=\{([^}]*)\}', line):
        calls[cur].update(c.strip().lstrip('%') for c in group.split(','))

  def dims(shape):
    return [int(v) for v in re.search(r'\[([\d,]*)\]', shape).group(1).split(',') if v]

  branches = set()
  for _, lines in comps.values():
    for line in lines:
      for group in re.findall(r'branch_computations=\{([^}]*)\}', line):
        branches.update(c.strip().lstrip('%') for c in group.split(','))
  inside, todo = set(), list(branches)
  while todo:
    c = todo.pop()
    if c not in inside:
      inside.add(c)
      todo.extend(calls.get(c, ()))

  totals = [0.0, 0.0]
  for name, (shapes, lines) in comps.items():
    for line in lines:
      m = re.search(
          r'= (\w+\[[\d,]*\])\S* (dot|convolution)\(%?([\w.\-]+), %?([\w.\-]+)\)', line
      )
      if not m or m.group(3) not in shapes or m.group(4) not in shapes:
        continue
      out = float(np.prod(dims(m.group(1))))
      lhs, rhs = dims(shapes[m.group(3)]), dims(shapes[m.group(4)])
      if m.group(2) == 'dot':
        contract = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line).group(1)
        flops = 2 * out * np.prod([lhs[int(i)] for i in contract.split(',') if i])
      else:
        window = re.search(r'size=([\dx]+)', line).group(1)
        labels = re.search(r'dim_labels=\w+_(\w+)->', line).group(1)
        flops = (
            2
            * out
            * np.prod([int(v) for v in window.split('x')])
            * rhs[labels.index('i')]
        )  # per-group input features
        dilation = re.search(r'lhs_dilate=([\dx]+)', line)
        if dilation:  # the inserted zeros are no work (borders ignored)
          flops /= np.prod([int(v) for v in dilation.group(1).split('x')])
      totals[name in inside] += float(flops)
  return totals[0], totals[1]


def _runner(compiled, state, batch, seed):
  import jax

  holder = {'state': state, 'i': 0}
  key = jax.random.PRNGKey(seed)

  def run():
    holder['state'], metrics = compiled(
        holder['state'], batch, jax.random.fold_in(key, holder['i'])
    )
    holder['i'] += 1
    jax.block_until_ready((holder['state'], metrics))

  return run


# ---------------------------------------------------------------------------- harness


def _cpu_seconds() -> float:
  """User + system CPU time of this process (all threads)."""
  return sum(os.times()[:2])


def measure(variants: dict[str, dict], rounds: int, warmup: int = 1):
  """Interleaves every variant's steps for ``rounds`` rounds.

  Returns ``(wall, cpu)``: per-step wall-clock and process CPU seconds,
  ``{variant: {stage: [seconds per round]}}``. CPU time (both threads, spinning
  included) is less sensitive than wall time to other processes on a shared machine.
  """
  times = {name: {s: [] for s in STAGES if s in v} for name, v in variants.items()}
  cpu = {name: {s: [] for s in STAGES if s in v} for name, v in variants.items()}
  for r in range(warmup + rounds):
    for name, v in variants.items():
      for stage in STAGES:
        if stage in v:
          c0, t0 = _cpu_seconds(), time.perf_counter()
          v[stage]()
          if r >= warmup:
            times[name][stage].append(time.perf_counter() - t0)
            cpu[name][stage].append(_cpu_seconds() - c0)
    if r >= warmup:
      print(
          f'round {r - warmup + 1}/{rounds}: '
          + '  '.join(
              f'{n}/{s} {ts[-1] * 1e3:.0f}ms'
              for n, st in times.items()
              for s, ts in st.items()
          ),
          flush=True,
      )
  return times, cpu


def _ratio(two, one) -> dict:
  with np.errstate(divide='ignore', invalid='ignore'):  # CPU time can round to 0
    r = np.asarray(two) / np.asarray(one)
  return {'median': float(np.median(r)), 'min': float(r.min()), 'max': float(r.max())}


def summarise(times: dict, cpu: dict, batch: int, flops: dict) -> dict:
  rows = {}
  for name, st in times.items():
    row = {}
    for stage, ts in st.items():
      med = float(np.median(ts))
      row[stage] = {
          'ms_per_step': 1e3 * med,
          'images_per_s': batch / med,
          'cpu_ms_per_step': 1e3 * float(np.median(cpu[name][stage])),
          'seconds': [float(t) for t in ts],
          'cpu_seconds': [float(t) for t in cpu[name][stage]],
          'xla_gflop': flops.get(name, {}).get(stage, float('nan')) / 1e9,
      }
    if 'one' in st and 'two' in st:
      row['two_over_one'] = _ratio(st['two'], st['one'])
      row['two_over_one_cpu'] = _ratio(cpu[name]['two'], cpu[name]['one'])
    rows[name] = row
  return rows


def format_table(rows: dict) -> str:
  lines = [
      '| variant | one-stage ms/step | two-stage ms/step | two/one wall (median, '
      'min-max) | images/s (one-stage) | CPU ms/step one / two | two/one CPU | '
      'XLA GFLOP one / two | dot+conv GFLOP one / two |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]

  def ratio(r):
    return f'{r["median"]:.2f} ({r["min"]:.2f}-{r["max"]:.2f})' if r else '-'

  for name, row in rows.items():
    gf = [row[s]['xla_gflop'] for s in STAGES if s in row]
    gf_s = ' / '.join('-' if math.isnan(x) else f'{x:.1f}' for x in gf)
    hlo = (
        ' / '.join(
            f'{row[s]["hlo_gflop"]:.1f}' for s in STAGES if 'hlo_gflop' in row.get(s, {})
        )
        or '-'
    )
    lines.append(
        f'| {name} | {row["one"]["ms_per_step"]:.0f} | '
        f'{row["two"]["ms_per_step"]:.0f} | {ratio(row.get("two_over_one"))} | '
        f'{row["one"]["images_per_s"]:.1f} | {row["one"]["cpu_ms_per_step"]:.0f} / '
        f'{row["two"]["cpu_ms_per_step"]:.0f} | '
        f'{ratio(row.get("two_over_one_cpu"))} | {gf_s} | {hlo} |'
    )
  return '\n'.join(lines)


def platform_info(malloc_kept: bool) -> dict:
  """What a CPU timing depends on besides the code: machine, JAX backend, XLA flags,
  glibc tunables, the malloc setting, and torch's version and threads if importable.
  Shared by the issue-8 benchmarks (``cpu_layers.py``, ``ablate_cpu_step.py``)."""
  import jax

  info = dict(
      machine=platform.machine(),
      cpus=os.cpu_count(),
      jax=jax.__version__,
      backend=jax.default_backend(),
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''),
      malloc_kept=malloc_kept,
  )
  try:
    import torch

    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  return info


def write_result(result: dict, path: str) -> None:
  """Writes ``result`` as JSON to ``path`` (nothing when empty)."""
  if path:
    with open(path, 'w') as f:
      json.dump(result, f, indent=1)
    print(f'wrote {path}')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--rounds', type=int, default=8)
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--resolution', type=int, default=64)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument(
      '--variants',
      default='torch,jax-xla,jax-matmul,jax-matmul-approx',
      help='comma-separated: torch, jax-IMPL or jax-IMPL-approx (IMPL: xla, '
      'matmul; -approx: one-stage mode approx)',
  )
  p.add_argument(
      '--hugetlb',
      action='store_true',
      help='re-run this command with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 '
      '(transparent huge pages for large allocations, for torch and JAX alike)',
  )
  p.add_argument(
      '--malloc',
      choices=('keep', 'default'),
      default='keep',
      help="'keep': osgan_jax.training.host_memory.keep_freed_memory() first, as "
      'python -m osgan_jax.main does (process-wide: torch runs with it too); '
      "'default': glibc's defaults",
  )
  p.add_argument('--out', default='')
  args = p.parse_args(argv)
  tunable = 'glibc.malloc.hugetlb=1'
  if args.hugetlb and tunable not in os.environ.get('GLIBC_TUNABLES', ''):
    env = dict(
        os.environ,
        GLIBC_TUNABLES=':'.join(
            t for t in (os.environ.get('GLIBC_TUNABLES', ''), tunable) if t
        ),
    )
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

  from osgan_jax.training import host_memory

  malloc_kept = args.malloc == 'keep' and host_memory.keep_freed_memory()
  wanted = [v.strip() for v in args.variants.split(',') if v.strip()]
  variants, flops, compile_s, matmul_flops = {}, {}, {}, {}
  for name in wanted:
    if name == 'torch':
      try:
        variants[name] = torch_dcgan_steps(args.width, args.resolution, args.batch)
      except ImportError:
        print('torch is not importable: no PyTorch row')
    elif name.startswith('jax-'):
      t0 = time.perf_counter()
      impl, _, mode = name[len('jax-') :].partition('-')
      out = jax_dcgan_steps(
          args.width, args.resolution, args.batch, conv_impl=impl, mode=mode or 'exact'
      )
      flops[name], compile_s[name] = out.pop('flops'), out.pop('compile_s')
      matmul_flops[name] = out.pop('matmul_flops')
      out.pop('compiled')
      variants[name] = out
      print(f'{name}: built and compiled in {time.perf_counter() - t0:.0f}s', flush=True)
    else:
      raise SystemExit(f'unknown variant {name!r}')

  times, cpu = measure(variants, args.rounds)
  rows = summarise(times, cpu, args.batch, flops)
  for name, per_stage in matmul_flops.items():
    for stage, (main_flops, in_cond) in per_stage.items():
      rows[name][stage]['hlo_gflop'] = main_flops / 1e9
      rows[name][stage]['hlo_gflop_in_conditionals'] = in_cond / 1e9
  print()
  print(format_table(rows))
  result = {
      'command': ' '.join([os.path.basename(sys.argv[0])] + list(argv or sys.argv[1:])),
      'config': dict(
          width=args.width,
          resolution=args.resolution,
          batch=args.batch,
          rounds=args.rounds,
      ),
      'platform': platform_info(malloc_kept),
      'compile_s': compile_s,
      'rows': rows,
  }
  write_result(result, args.out)
  return result


if __name__ == '__main__':
  main()
