"""Writes the official-weights fixtures: tiny StyleGAN2-ADA and R3GAN pickles + outputs.

Needs torch (CPU) and clones of the reference repositories (NVlabs/stylegan2-ada-pytorch,
brownvc/R3GAN); their custom CUDA ops fall back to their reference implementations on
a CPU. Each network is randomly initialised, every parameter and buffer then perturbed
(so zero-initialised biases, noise strengths and ``w_avg`` matter), pickled the way the
reference training loops save snapshots (``dict(G=, D=, G_ema=, ...)`` with
``pickle.dump``) and run on fixed inputs; the outputs go to ``NAME.npz`` beside
``NAME.pkl``. Run from the repository root::

  python -m experiments.official_fixtures --stylegan2-ada=PATH --r3gan=PATH \\
      --out tests/data/official

The layout of each ``.npz`` (NCHW, as the reference code): ``docs/official_weights.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import pickle
import sys
import types

import numpy as np

BATCH = 4  # a multiple of StyleGAN2's minibatch-std group (4)
RESOLUTION = 32
PSI = 0.5


@contextlib.contextmanager
def _reference(path: str):
  """The reference repository importable; its top-level packages forgotten afterwards."""
  path = os.path.abspath(path)
  names = {n.split('.')[0] for n in os.listdir(path)}
  try:
    import pkg_resources  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except (
      ImportError
  ):  # R3GAN's torch_utils imports parse_version from it; gone with setuptools 80
    from packaging import version  # pylint: disable=import-outside-toplevel

    sys.modules['pkg_resources'] = types.SimpleNamespace(parse_version=version.parse)
  sys.path.insert(0, path)
  try:
    yield
  finally:
    sys.path.remove(path)
    for mod in list(sys.modules):
      if mod.split('.')[0] in names:
        del sys.modules[mod]


def _perturb(torch, module, seed: int, scale: float = 0.2):
  """Every parameter and buffer (but the FIR filters) plus ``scale`` N(0, 1) noise."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
      if name.endswith('resample_filter') or name.endswith('Kernel'):
        continue
      t.add_(scale * torch.randn(t.shape, generator=g, dtype=t.dtype))


def _inputs(torch, z_dim: int, c_dim: int, seed: int):
  rs = np.random.RandomState(seed)
  z = rs.randn(BATCH, z_dim).astype(np.float32)
  classes = np.arange(BATCH, dtype=np.int64) % max(c_dim, 1)
  c = (
      np.eye(c_dim, dtype=np.float32)[classes]
      if c_dim
      else np.zeros((BATCH, 0), np.float32)
  )
  images = rs.randn(BATCH, 3, RESOLUTION, RESOLUTION).astype(np.float32)
  return z, classes, c, images


def _save(out: str, name: str, snapshot: dict, arrays: dict):
  with open(os.path.join(out, f'{name}.pkl'), 'wb') as f:
    pickle.dump(snapshot, f)
  np.savez_compressed(os.path.join(out, f'{name}.npz'), **arrays)
  size = sum(os.path.getsize(os.path.join(out, f'{name}.{e}')) for e in ('pkl', 'npz'))
  print(f'{name}: {size / 1e6:.2f} MB')


def stylegan2(torch, repo: str, out: str, c_dim: int, seed: int):
  """Config-f (skip G, resnet D, 8 mapping layers) at 32x32 with few channels."""
  with _reference(repo):
    from training import networks  # pylint: disable=import-error

    torch.manual_seed(seed)
    common = dict(c_dim=c_dim, img_resolution=RESOLUTION, img_channels=3)
    G = networks.Generator(
        z_dim=32,
        w_dim=32,
        mapping_kwargs=dict(num_layers=8),
        synthesis_kwargs=dict(
            channel_base=256, channel_max=16, num_fp16_res=4, conv_clamp=256
        ),
        **common,
    ).eval()
    D = networks.Discriminator(
        channel_base=256,
        channel_max=16,
        num_fp16_res=4,
        conv_clamp=256,
        epilogue_kwargs=dict(mbstd_group_size=4),
        **common,
    ).eval()
    G_ema = copy.deepcopy(G).eval()
    _perturb(torch, G, seed + 1)
    _perturb(torch, G_ema, seed + 2)
    _perturb(torch, D, seed + 3)
    z, classes, c, images = _inputs(torch, 32, c_dim, seed)
    tz, tc, timg = (torch.from_numpy(a) for a in (z, c, images))
    arrays = dict(z=z, classes=classes, c=c, images=images)
    with torch.no_grad():
      for key, net in (('g', G), ('g_ema', G_ema)):
        ws = net.mapping(tz, tc)
        ws_trunc = net.mapping(tz, tc, truncation_psi=PSI)
        ws_cut = net.mapping(tz, tc, truncation_psi=PSI, truncation_cutoff=2)
        arrays[f'{key}_ws'] = ws.numpy()
        arrays[f'{key}_ws_trunc'] = ws_trunc.numpy()
        arrays[f'{key}_ws_cutoff2'] = ws_cut.numpy()
        for mode in ('const', 'none'):
          img = net.synthesis(ws, noise_mode=mode, force_fp32=True)
          arrays[f'{key}_img_{mode}'] = img.numpy()
        img = net.synthesis(ws_trunc, noise_mode='const', force_fp32=True)
        arrays[f'{key}_img_trunc'] = img.numpy()
      arrays['d_logits'] = D(timg, tc, force_fp32=True).numpy()
    arrays['psi'] = np.float32(PSI)
    snapshot = dict(G=G, D=D, G_ema=G_ema, augment_pipe=None, training_set_kwargs={})
    _save(out, f'stylegan2_c{c_dim}', snapshot, arrays)


def r3gan(torch, repo: str, out: str, c_dim: int, seed: int):
  """R3GAN's networks at 32x32 (four stages) with few channels."""
  with _reference(repo):
    from training import networks  # pylint: disable=import-error

    torch.manual_seed(seed)
    widths, cards, blocks, z_dim = [32, 32, 16, 16], [4, 4, 2, 2], [1, 1, 2, 1], 16
    common = dict(c_dim=c_dim, img_resolution=RESOLUTION, ExpansionFactor=2)
    g_cond, d_cond = {}, {}
    if c_dim:
      g_cond = dict(ConditionEmbeddingDimension=z_dim)
      d_cond = dict(ConditionEmbeddingDimension=widths[0])
    G = networks.Generator(
        NoiseDimension=z_dim,
        WidthPerStage=widths,
        CardinalityPerStage=cards,
        BlocksPerStage=blocks,
        FP16Stages=[],
        **common,
        **g_cond,
    ).eval()
    D = networks.Discriminator(
        WidthPerStage=widths[::-1],
        CardinalityPerStage=cards[::-1],
        BlocksPerStage=blocks[::-1],
        FP16Stages=[],
        **common,
        **d_cond,
    ).eval()
    G_ema = copy.deepcopy(G).eval()
    _perturb(torch, G, seed + 1)
    _perturb(torch, G_ema, seed + 2)
    _perturb(torch, D, seed + 3)
    z, classes, c, images = _inputs(torch, z_dim, c_dim, seed)
    tz, tc, timg = (torch.from_numpy(a) for a in (z, c, images))
    tc = tc if c_dim else None
    arrays = dict(z=z, classes=classes, c=c, images=images)
    with torch.no_grad():
      arrays['g_img'] = G(tz, tc).numpy()
      arrays['g_ema_img'] = G_ema(tz, tc).numpy()
      arrays['d_logits'] = D(timg, tc).numpy()
    snapshot = dict(G=G, D=D, G_ema=G_ema, training_set_kwargs={}, cur_nimg=0)
    _save(out, f'r3gan_c{c_dim}', snapshot, arrays)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--stylegan2-ada', required=True, help='a stylegan2-ada-pytorch clone'
  )
  parser.add_argument('--r3gan', required=True, help='an R3GAN clone')
  parser.add_argument('--out', required=True, help='the fixture folder')
  args = parser.parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(1)
  os.makedirs(args.out, exist_ok=True)
  for c_dim, seed in ((0, 0), (3, 10)):
    stylegan2(torch, args.stylegan2_ada, args.out, c_dim, seed)
    r3gan(torch, args.r3gan, args.out, c_dim, seed + 20)


if __name__ == '__main__':
  main()
