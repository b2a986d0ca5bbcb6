"""A trained generator outside its training run: loaded from a workdir's checkpoint
(the latest, a step, or the best-FID one; G's EMA where the run keeps one) or from an
official weights file, and sampled by seed, batched over the devices.

Seed ``s`` has the latent ``np.random.RandomState(s).randn(z_dim)`` (as the reference
``generate.py``) and its own noise key, so an image depends on its seed (and class),
not on its batch or the device count. Commands and file formats:
``docs/generate_evaluate.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import sys
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from osgan_jax import config as config_lib
from osgan_jax import models
from osgan_jax.tasks import gan as gan_lib
from osgan_jax.training import checkpoint
from osgan_jax.training import digests
from osgan_jax.training import evaluators
from osgan_jax.training import parallel
from osgan_jax.training import workdir as workdir_lib

__all__ = [
    'LoadError',
    'Loaded',
    'Sampler',
    'class_labels',
    'generate',
    'latents',
    'load',
    'load_weights',
    'load_workdir',
    'parse_seeds',
]

MAX_SEED = 2**32 - 1  # NumPy's RandomState takes seeds in [0, 2**32)


class LoadError(ValueError):
  """No generator to load, or a bad request of one; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A generator ``module`` with its ``variables`` (``{'params', **model state}``).

  ``source``: the checkpoint directory or weights file; ``step``: the checkpoint's
  training step; ``ema``: whether these are G's EMA weights; ``workdir`` and ``config``:
  the run's (``step``, ``workdir`` and ``config`` are None for a weights file).
  """

  family: str
  module: nn.Module
  variables: dict
  z_dim: int
  num_classes: int
  source: str
  step: int | None = None
  ema: bool = False
  workdir: str | None = None
  config: Any = None

  def takes(self, argument: str) -> bool:
    """Whether the generator's ``__call__`` has a keyword ``argument``."""
    return argument in inspect.signature(type(self.module).__call__).parameters

  @property
  def has_w_avg(self) -> bool:
    """Whether the generator tracks the W average that truncation pulls towards."""
    stats = self.variables.get('batch_stats', {})
    return self.takes('truncation_psi') and 'w_avg' in stats.get('mapping', {})


# ----------------------------------------------------------------------------- loading


def _merged(base: dict, record: dict) -> dict:
  out = dict(base)
  for key, value in record.items():
    if isinstance(value, dict) and isinstance(base.get(key), dict):
      value = _merged(base[key], value)
    out[key] = value
  return out


def run_config(record: dict) -> ml_collections.ConfigDict:
  """A workdir's recorded config (JSON) as a config: keys added since it was written
  take their defaults; the model section is the record's own."""
  base = config_lib.get_base_config().to_dict()
  base.pop('model')
  return ml_collections.ConfigDict(_merged(base, record))


def _recorded_config(workdir: str, meta: dict) -> dict:
  if meta.get('config'):
    return meta['config']
  try:
    with open(os.path.join(workdir, workdir_lib.CONFIG_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise LoadError(
        f'{workdir}: the checkpoint carries no config and config.json is unreadable '
        f'({type(e).__name__})'
    ) from None


def _shape_mismatch(module, variables: dict, z_dim: int, num_classes: int) -> str | None:
  """The first array of ``variables`` whose shape differs from ``module``'s, or None."""
  z = jax.ShapeDtypeStruct((1, z_dim), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.int32) if num_classes else None

  def init(z, labels):
    key = jax.random.PRNGKey(0)
    rngs = {'params': key, **models.rngs(module, key)}
    return module.init(rngs, z, labels, train=False)

  wanted = jax.eval_shape(init, z, labels)
  shapes = lambda tree: {
      digests.leaf_name(p): tuple(x.shape)
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }
  have, want = shapes(variables), shapes(dict(wanted))
  for name in sorted(set(have) | set(want)):
    if have.get(name) != want.get(name):
      return f'{name}: {have.get(name)} in the checkpoint, {want.get(name)} in the config'
  return None


def load_workdir(workdir: str, step: str | int = 'latest') -> Loaded:
  """The generator of ``workdir``'s checkpoint ``step`` ('latest', 'best' or a step),
  with G's EMA weights where the run keeps them; ``LoadError`` in one line."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise LoadError(f'--workdir {workdir} does not exist')
  best = step == 'best'
  directory = os.path.join(workdir, checkpoint.BEST_DIR if best else 'checkpoints')
  if not os.path.isdir(directory):
    what = 'best-FID checkpoint (config.evals.fid keeps one)' if best else 'checkpoint'
    raise LoadError(f'no {what} in {workdir}')
  mngr = checkpoint.manager(directory, 1 << 30, async_save=False)
  try:
    steps = sorted(mngr.all_steps())
    if not steps:
      raise LoadError(f'no checkpoint in {directory}')
    chosen = steps[-1] if step in ('latest', 'best') else int(step)
    if chosen not in steps:
      listed = ', '.join(map(str, steps))
      raise LoadError(f'no checkpoint at step {chosen} in {directory} (steps: {listed})')
    try:
      state, meta = checkpoint.restore(mngr, None, chosen)  # host arrays, any topology
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many)
      message = ' '.join(str(e).split())[:200]
      raise LoadError(
          f'checkpoint {chosen} in {directory} is unreadable ({type(e).__name__}: '
          f'{message})'
      ) from None
  finally:
    mngr.close()
  config = run_config(_recorded_config(workdir, meta))
  if config.get('task', 'gan') != 'gan':
    raise LoadError(f'{workdir} holds a {config.task!r} task, not a GAN')
  try:
    module, _ = gan_lib.create_models(config)
  except config_lib.ConfigError as e:
    raise LoadError(f'{workdir}: {e}') from None
  ema = state.get('ema_params_g') is not None
  picked = {
      'ema_params_g' if ema else 'params_g': state['ema_params_g' if ema else 'params_g'],
      'model_state_g': state.get('model_state_g') or {},
  }
  recorded = {
      k: v for k, v in (meta.get('digests') or {}).items() if k.split('/')[0] in picked
  }
  problem = digests.mismatch(picked, recorded)
  if problem is not None:
    raise LoadError(f'checkpoint {chosen} in {directory} is damaged ({problem})')
  variables = {'params': picked.pop('ema_params_g' if ema else 'params_g')}
  variables.update(picked['model_state_g'])
  z_dim, num_classes = int(config.z_dim), int(config.num_classes)
  mismatch = _shape_mismatch(module, variables, z_dim, num_classes)
  if mismatch:
    raise LoadError(
        f'checkpoint {chosen} in {directory} does not fit its config ({mismatch})'
    )
  return Loaded(
      family=str(config.model.name),
      module=module,
      variables=variables,
      z_dim=z_dim,
      num_classes=num_classes,
      source=os.path.join(directory, str(chosen)),
      step=int(chosen),
      ema=ema,
      workdir=workdir,
      config=config,
  )


def load_weights(path: str) -> Loaded:
  """The generator of an official StyleGAN2(-ADA) or R3GAN pickle (``G_ema`` where the
  file has it, else ``G``); ``LoadError`` in one line."""
  from osgan_jax.models import official  # lazy: only a weights file needs the reader

  if not os.path.isfile(path):
    raise LoadError(f'--weights {path} does not exist')
  try:
    imported = official.load(path)
  except ValueError as e:
    raise LoadError(' '.join(str(e).split())) from None
  ema = imported.variables.get('g_ema') is not None
  variables = imported.variables['g_ema' if ema else 'g']
  return Loaded(
      family=imported.family,
      module=imported.generator,
      variables=dict(variables),
      z_dim=int(imported.generator.z_dim),
      num_classes=int(imported.c_dim),
      source=os.path.abspath(path),
      ema=ema,
  )


def load(workdir: str | None, step: str | int = 'latest', weights: str | None = None):
  """``load_workdir(workdir, step)`` or ``load_weights(weights)``: exactly one source."""
  if bool(workdir) == bool(weights):
    raise LoadError('give --workdir (with --step) or --weights, one of them')
  return load_weights(weights) if weights else load_workdir(workdir, step)


def parse_step(text: str) -> str | int:
  """``'latest'``, ``'best'`` or a step number."""
  if text in ('latest', 'best'):
    return text
  if re.fullmatch(r'\d+', text or ''):
    return int(text)
  raise LoadError(f"--step must be 'latest', 'best' or a step number, got {text!r}")


# ---------------------------------------------------------------------------- sampling


def parse_seeds(spec: str, what: str = '--seeds') -> list[int]:
  """``'0-63'``, ``'1,5,10-12'`` -> the integers, in order (NumPy seeds: [0, 2**32))."""
  out = []
  for part in (spec or '').split(','):
    m = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
    if not m:
      raise LoadError(
          f"{what}={spec!r}: expected numbers and ranges like '0-63' or '1,5,10-12'"
      )
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if hi < lo:
      raise LoadError(f'{what}={spec!r}: the range {lo}-{hi} is empty')
    if hi > MAX_SEED:
      raise LoadError(
          f'{what}={spec!r}: {hi} is over {MAX_SEED} (NumPy seeds are 32-bit)'
      )
    out.extend(range(lo, hi + 1))
  return out


def latents(seeds: Sequence[int], z_dim: int) -> np.ndarray:
  """``[n, z_dim]`` float32: seed ``s``'s latent ``RandomState(s).randn(1, z_dim)``."""
  rows = [np.random.RandomState(int(s)).randn(1, z_dim) for s in seeds]
  return (
      np.concatenate(rows).astype(np.float32)
      if rows
      else np.zeros((0, z_dim), np.float32)
  )


def class_labels(
    loaded: Loaded, seeds: Sequence[int], classes: Sequence[int] | None
) -> tuple[list[int], list[int]]:
  """``(seeds, labels)`` pairs to generate: every seed for each of ``classes``, or seed
  ``s`` of class ``s % num_classes`` without them; labels -1 for an unconditional G."""
  n = loaded.num_classes
  if not n:
    if classes:
      raise LoadError(f'--classes: the {loaded.family} generator is unconditional')
    return list(seeds), [-1] * len(seeds)
  if not classes:
    return list(seeds), [int(s) % n for s in seeds]
  for c in classes:
    if not 0 <= c < n:
      raise LoadError(
          f'class {c} is out of range: the generator has {n} classes (0-{n - 1})'
      )
  return [s for _ in classes for s in seeds], [c for c in classes for _ in seeds]


NOISE_MODES = ('const', 'random', 'none')


class Sampler:
  """``sampler(seeds, labels)`` -> float32 images ``[n, H, W, C]`` (NHWC, nominally
  [-1, 1], unclipped): each global batch of ``batch_size`` per device split over the
  devices, the last one padded. ``noise_mode`` (StyleGAN2): None for the generator's
  default; ``truncation_psi`` needs a generator with a W average."""

  def __init__(
      self,
      loaded: Loaded,
      batch_size: int = 16,
      truncation_psi: float = 1.0,
      noise_mode: str | None = None,
      num_devices: int = 0,
  ):
    if batch_size < 1:
      raise LoadError(f'--batch must be >= 1, got {batch_size}')
    psi = float(truncation_psi)
    if not math.isfinite(psi):
      raise LoadError(f'--trunc must be a finite number, got {truncation_psi}')
    kwargs = {}
    if psi != 1.0:
      if not loaded.has_w_avg:
        raise LoadError(
            f'--trunc={psi:g}: the {loaded.family} generator tracks no W average to '
            'truncate towards (only StyleGAN2 does; use --trunc=1)'
        )
      kwargs['truncation_psi'] = psi
    if noise_mode is not None:
      if noise_mode not in NOISE_MODES:
        raise LoadError(
            f'--noise_mode must be one of {", ".join(NOISE_MODES)}, got {noise_mode!r}'
        )
      if not loaded.takes('noise_mode'):
        raise LoadError(
            f'--noise_mode: the {loaded.family} generator has no noise inputs'
        )
      kwargs['noise_mode'] = noise_mode
    self.loaded, self.truncation_psi, self.noise_mode = loaded, psi, noise_mode
    mesh = parallel.make_mesh(num_devices)
    self.batch_size = int(batch_size) * mesh.size
    self._data = parallel.data_sharding(mesh)
    replicated = parallel.replicated(mesh)
    self._variables = jax.device_put(loaded.variables, replicated)
    self._program = _program(loaded.module, kwargs, loaded.num_classes > 0, self._data)

  def batches(
      self, seeds: Sequence[int], labels: Sequence[int], progress: bool = False
  ) -> Iterator[np.ndarray]:
    """The images of ``seeds`` (with ``labels``), one global batch at a time; a tqdm bar
    on stderr when ``progress`` and it is a terminal."""
    seeds, labels = list(seeds), list(labels)
    if len(seeds) != len(labels):
      raise ValueError(f'{len(seeds)} seeds but {len(labels)} labels')
    bar = None
    if progress and sys.stderr.isatty():
      bar = tqdm(total=len(seeds), desc='generate', unit='img', dynamic_ncols=True)
    try:
      for i in range(0, len(seeds), self.batch_size):
        s = np.asarray(seeds[i : i + self.batch_size], np.int64)
        y = np.asarray(labels[i : i + self.batch_size], np.int32)
        n, pad = len(s), self.batch_size - len(s)
        z = latents(s, self.loaded.z_dim)
        s, y = np.pad(s, (0, pad)), np.pad(np.maximum(y, 0), (0, pad))
        z = np.pad(z, ((0, pad), (0, 0)))
        args = [jax.device_put(a, self._data) for a in (z, y, s.astype(np.uint32))]
        images = np.asarray(jax.device_get(self._program(self._variables, *args)))
        if bar is not None:
          bar.update(n)
        yield images[:n].astype(np.float32)
    finally:
      if bar is not None:
        bar.close()

  def __call__(self, seeds: Sequence[int], labels: Sequence[int]) -> np.ndarray:
    out = list(self.batches(seeds, labels))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _program(module, kwargs: dict, conditional: bool, data):
  """Jitted ``(variables, z, labels, seeds) -> images``: each sample on its own (a
  vmap), its noise keyed by its seed; the batch axis split over the devices."""

  def one(variables, z, label, seed):
    params = variables['params']
    state = {k: v for k, v in variables.items() if k != 'params'}
    image, _ = models.apply(
        module,
        params,
        state,
        z[None],
        label[None] if conditional else None,
        train=False,
        rng=jax.random.PRNGKey(seed),
        **kwargs,
    )
    return image[0].astype(jnp.float32)

  batched = jax.vmap(one, in_axes=(None, 0, 0, 0))
  return jax.jit(batched, out_shardings=data)


# ------------------------------------------------------------------------------ output

FORMATS = ('png', 'npz')
NPZ_FILE = 'images.npz'


def _name(seed: int, label: int, several_classes: bool) -> str:
  return f'seed{seed:04d}_class{label}.png' if several_classes else f'seed{seed:04d}.png'


def generate(
    loaded: Loaded,
    seeds: Sequence[int],
    classes: Sequence[int] | None = None,
    *,
    outdir: str | None = None,
    grid: str | None = None,
    fmt: str = 'png',
    batch_size: int = 16,
    truncation_psi: float = 1.0,
    noise_mode: str | None = None,
    progress: bool = True,
) -> list:
  """Writes the images of ``seeds`` (each of ``classes``): one PNG per image in
  ``outdir`` (``fmt='npz'``: one ``images.npz`` of the raw float32 output), and/or one
  grid PNG (a row per class when several); returns the paths written."""
  if fmt not in FORMATS:
    raise LoadError(f'--format must be one of {", ".join(FORMATS)}, got {fmt!r}')
  if not outdir and not grid:
    raise LoadError('nothing to write: give --outdir, --grid or both')
  if fmt == 'npz' and not outdir:
    raise LoadError('--format=npz writes OUTDIR/images.npz: give --outdir')
  if not seeds:
    raise LoadError('--seeds names no seed')
  if grid and not grid.lower().endswith('.png'):
    raise LoadError(f'--grid must name a .png file, got {grid}')
  seeds, labels = class_labels(loaded, seeds, classes)
  several = bool(classes) and len(classes) > 1
  sampler = Sampler(loaded, batch_size, truncation_psi, noise_mode)
  written, kept = [], []
  try:
    for folder in (outdir, grid and os.path.dirname(os.path.abspath(grid))):
      if folder:
        os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise LoadError(workdir_lib.os_error(e, 'cannot write')) from None
  done = 0
  for images in sampler.batches(seeds, labels, progress=progress):
    if outdir and fmt == 'png':
      for i, image in enumerate(evaluators.to_uint8(images)):
        path = os.path.join(outdir, _name(seeds[done + i], labels[done + i], several))
        evaluators.save_png(image, path)
        written.append(path)
    if grid or fmt == 'npz':
      kept.append(images)
    done += len(images)
  everything = np.concatenate(kept) if kept else None
  if fmt == 'npz':
    path = os.path.join(outdir, NPZ_FILE)
    with open(path + '.tmp', 'wb') as f:
      np.savez(
          f,
          images=everything,
          seeds=np.asarray(seeds, np.int64),
          labels=np.asarray(labels, np.int64),
      )
    os.replace(path + '.tmp', path)
    written.append(path)
  if grid:
    ncol = len(seeds) // len(classes) if several else None
    evaluators.save_png(evaluators.image_grid(everything, ncol=ncol), grid)
    written.append(grid)
  return written
