"""The official OSGAN DCGAN in PyTorch, for the device suite's side-by-side rows.

The networks are the official ``networks/dcgan.py`` (the asymmetric configs: GroupNorm
D); the three algorithms are the JAX variants' (``experiments.rows.VARIANTS``), so a
PyTorch row and a JAX row of one name run the same algorithm. Each setting is one way
of running PyTorch well: ``eager`` (defaults), ``tuned`` (channels_last, TF32,
cudnn.benchmark, fused Adam), ``compiled`` (tuned, networks under ``torch.compile``)
and ``graphs`` (compiled with ``mode='reduce-overhead'``: CUDA graphs). Every tensor is
created with an explicit ``device=``; a timed call runs k steps, then synchronises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable

ALGORITHMS = {
    'one_stage': 'one forward, one backward of L_D; a hook scales the gradient reaching '
    'fake image i by gamma_i = -exp(-l_i) (the official OSGAN one-stage step)',
    'two_stage': 'D step on real and detached fake, then a G step on a fresh z (a second '
    'G forward) against the updated D; no parameter gradients of D in the G step',
    'official_two_stage': 'as two_stage, with D parameter gradients computed (and '
    'unused) in the G step, as the official OSGAN script runs it',
}
SETTINGS = ('eager', 'tuned', 'compiled', 'graphs')


def _schedule(resolution: int, width: int) -> list:
  """Channels of D's feature maps from R/2 down to 4 (G mirrors them)."""
  if resolution < 8 or resolution & (resolution - 1):
    raise ValueError(f'resolution must be a power of two >= 8, got {resolution}')
  out, r = [], resolution // 2
  while r >= 4:
    out.append(width * min(resolution // (2 * r), 8))
    r //= 2
  return out


def networks(torch, *, width, resolution, channels, z_dim, device):
  """``(G, D)``: the official DCGAN (biases on every conv, BatchNorm + ReLU G with tanh,
  LeakyReLU(0.2) D with GroupNorm(32) after every conv but the first), N(0, 0.02)
  init, on ``device``."""
  nn = torch.nn
  chans = _schedule(resolution, width)
  g = [
      nn.ConvTranspose2d(z_dim, chans[-1], 4, 1, 0),
      nn.BatchNorm2d(chans[-1]),
      nn.ReLU(),
  ]
  for c_in, c_out in zip(chans[::-1], chans[::-1][1:]):
    g += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
  g += [nn.ConvTranspose2d(chans[0], channels, 4, 2, 1), nn.Tanh()]
  d = [nn.Conv2d(channels, chans[0], 4, 2, 1), nn.LeakyReLU(0.2)]
  for c_in, c_out in zip(chans, chans[1:]):
    d += [
        nn.Conv2d(c_in, c_out, 4, 2, 1),
        nn.GroupNorm(math.gcd(32, c_out), c_out),
        nn.LeakyReLU(0.2),
    ]
  d += [nn.Conv2d(chans[-1], 1, 4, 1, 0)]
  net_g, net_d = nn.Sequential(*g), nn.Sequential(*d)

  def init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
      nn.init.normal_(m.weight, 0.0, 0.02)
      nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.normal_(m.weight, 1.0, 0.02)
      nn.init.zeros_(m.bias)

  for net in (net_g, net_d):
    net.apply(init)
    net.to(device=device).train()
  return net_g, net_d


@dataclasses.dataclass
class Variant:
  """One PyTorch row: ``run(k)`` runs k steps and waits for the device; ``info`` is
  what the row records (``mode='skipped'`` and ``reason`` when it cannot run here)."""

  name: str
  run: Callable | None
  info: dict


def _flags(torch, tuned: bool):
  """The TF32 and cuDNN flags of a setting, set for one call and restored after (rows
  of different settings are interleaved in one process)."""

  @contextlib.contextmanager
  def scope():
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    if tuned:
      torch.backends.cudnn.benchmark = True
      torch.backends.cudnn.allow_tf32 = True
      torch.backends.cuda.matmul.allow_tf32 = True
    try:
      yield
    finally:
      (
          torch.backends.cudnn.benchmark,
          torch.backends.cudnn.allow_tf32,
          torch.backends.cuda.matmul.allow_tf32,
      ) = saved

  return scope


def _adam(torch, params, fused: bool):
  """Adam(2e-4, betas 0.5/0.999), fused where asked and supported; and whether it is."""
  if fused:
    try:
      return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999), fused=True), True
    except (RuntimeError, TypeError, ValueError):
      pass
  return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999)), False


def make_step(
    torch,
    algorithm: str,
    setting: str,
    *,
    width,
    resolution,
    batch,
    device,
    z_dim=128,
    channels=3,
    seed=0,
):
  """``(step, info)``: one training step of ``algorithm`` in ``setting`` on its own
  networks and optimisers, and the settings it runs with."""
  torch.manual_seed(seed)
  tuned = setting != 'eager'
  net_g, net_d = networks(
      torch,
      width=width,
      resolution=resolution,
      channels=channels,
      z_dim=z_dim,
      device=device,
  )
  real = torch.rand(batch, channels, resolution, resolution, device=device) * 2 - 1
  if tuned:
    net_g.to(memory_format=torch.channels_last)
    net_d.to(memory_format=torch.channels_last)
    real = real.contiguous(memory_format=torch.channels_last)
  opt_g, fused = _adam(torch, net_g.parameters(), tuned)
  opt_d, _ = _adam(torch, net_d.parameters(), tuned)
  g, d = net_g, net_d
  if setting in ('compiled', 'graphs'):
    mode = 'reduce-overhead' if setting == 'graphs' else None
    g, d = torch.compile(net_g, mode=mode), torch.compile(net_d, mode=mode)
  bce = torch.nn.BCEWithLogitsLoss()
  ones = torch.ones(batch, device=device)
  zeros = torch.zeros(batch, device=device)

  def z():
    return torch.randn(batch, z_dim, 1, 1, device=device)

  def one_stage():
    opt_d.zero_grad(set_to_none=True)
    opt_g.zero_grad(set_to_none=True)
    fake = g(z())
    out_real, out_fake = d(real).view(-1), d(fake).view(-1)
    gamma = -torch.exp(-out_fake.detach())  # (sigmoid(l) - 1) / sigmoid(l)
    fake.register_hook(lambda grad: grad * gamma.view(-1, 1, 1, 1))
    (bce(out_real, ones) + bce(out_fake, zeros)).backward()
    opt_d.step()
    opt_g.step()

  def two_stage(official: bool):
    opt_d.zero_grad(set_to_none=True)
    with torch.no_grad():
      fake = g(z())
    (bce(d(real).view(-1), ones) + bce(d(fake).view(-1), zeros)).backward()
    opt_d.step()
    opt_g.zero_grad(set_to_none=True)
    if not official:
      net_d.requires_grad_(False)
    bce(d(g(z())).view(-1), ones).backward()
    net_d.requires_grad_(True)
    opt_g.step()

  step = {
      'one_stage': one_stage,
      'two_stage': lambda: two_stage(False),
      'official_two_stage': lambda: two_stage(True),
  }[algorithm]
  info = {
      'algorithm': ALGORITHMS[algorithm],
      'setting': setting,
      'device': str(device),
      'torch': torch.__version__,
      'channels_last': tuned,
      'tf32': 'matmul+conv' if tuned and str(device).startswith('cuda') else None,
      'cudnn_benchmark': tuned and str(device).startswith('cuda'),
      'fused_adam': fused,
      'torch_compile': {'compiled': 'default', 'graphs': 'reduce-overhead'}.get(setting),
  }
  return step, info


def _skip_reason(torch, setting: str, device: str, compile_on_cpu: bool):
  cuda = str(device).startswith('cuda')
  if setting == 'graphs' and not cuda:
    return 'CUDA graphs need a CUDA device'
  if setting == 'compiled' and not cuda and not compile_on_cpu:
    return 'torch.compile not run on a CPU by default (minutes of C++ compilation)'
  if not hasattr(torch, 'compile') and setting in ('compiled', 'graphs'):
    return 'this torch has no torch.compile'
  return None


def variants(
    *,
    width,
    resolution,
    batch,
    device,
    z_dim=128,
    channels=3,
    settings=SETTINGS,
    algorithms=None,
    threads=None,
    compile_on_cpu=False,
    log=print,
) -> list:
  """The PyTorch rows (``Variant``) of every algorithm in every setting, named
  ``torch_<algorithm>_<setting>``; [] without torch, skipped rows where a setting needs
  what this machine lacks (each says why)."""
  try:
    import torch
  except ImportError:
    return []
  if threads:
    torch.set_num_threads(threads)
  cuda = str(device).startswith('cuda')
  out = []
  for setting in settings:
    scope = _flags(torch, setting != 'eager')
    for algorithm in algorithms or ALGORITHMS:
      name = f'torch_{algorithm}_{setting}'
      reason = _skip_reason(torch, setting, device, compile_on_cpu)
      if reason:
        out.append(Variant(name, None, {'mode': 'skipped', 'reason': reason}))
        continue
      try:
        with scope():
          step, info = make_step(
              torch,
              algorithm,
              setting,
              width=width,
              resolution=resolution,
              batch=batch,
              device=device,
              z_dim=z_dim,
              channels=channels,
          )
      except Exception as e:  # pylint: disable=broad-except  (a row, not the suite)
        log(f'  {name}: not built: {e!r}')
        out.append(Variant(name, None, {'mode': 'skipped', 'reason': repr(e)[:300]}))
        continue

      def run(k, step=step, scope=scope, graphs=setting == 'graphs'):
        with scope():
          for _ in range(k):
            if graphs:
              torch.compiler.cudagraph_mark_step_begin()
            step()
          if cuda:
            torch.cuda.synchronize()

      out.append(Variant(name, run, info))
  return out


def count_flops(variant: Variant):
  """PyTorch's FLOP count of one step (``torch.utils.flop_counter``: convolutions as
  2 x out x kh x kw x C_in, padding taps included), or None."""
  try:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
      variant.run(1)
    return float(counter.get_total_flops())
  except Exception:  # pylint: disable=broad-except
    return None
