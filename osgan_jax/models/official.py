"""The official StyleGAN2-ADA and R3GAN PyTorch pickles as this project's networks.

``load(path)`` reads a training snapshot (``G``, ``D``, ``G_ema``) with numpy only
(``formats.torch_archive``: no torch, no reference code, nothing in the file is run),
builds ``stylegan2`` / ``r3gan`` modules with the pickle's architecture and fills their
variables. The mapping and its limits: ``docs/official_weights.md``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax import models
from osgan_jax.formats import torch_archive
from osgan_jax.models import r3gan
from osgan_jax.models import stylegan2
from osgan_jax.models import stylegan2_ops as ops

FAMILIES = ('stylegan2', 'r3gan')

# The classes of an R3GAN snapshot (plain torch modules, not ``persistence`` ones).
_R3GAN_MODULES = ('training.networks', 'R3GAN.Networks', 'R3GAN.Resamplers')
_R3GAN_MODULES += ('R3GAN.FusedOperators',)
_TORCH_CLASSES = {
    ('torch.nn.modules.conv', 'Conv2d'),
    ('torch.nn.modules.linear', 'Linear'),
    ('torch.nn.modules.container', 'ModuleList'),
}


@dataclasses.dataclass(frozen=True)
class Imported:
  """An official snapshot as modules and flax variable dicts (``module.init``'s form).

  ``variables``: ``{'g': ..., 'g_ema': ... or None, 'd': ... or None}``.
  """

  family: str
  generator: nn.Module
  discriminator: Optional[nn.Module]
  variables: Dict[str, Any]
  c_dim: int


def _allowed(module: str, name: str) -> bool:
  return module in _R3GAN_MODULES or (module, name) in _TORCH_CLASSES


def read(path: str) -> dict:
  """The snapshot dict of an official pickle (tensors as arrays); a one-line error."""
  try:
    data = torch_archive.read_pickle(path, _allowed)
  except OSError as e:
    raise ValueError(f'{path}: cannot read ({e.strerror or e})') from None
  except (*torch_archive.READ_ERRORS, ValueError) as e:
    message = ' '.join(str(e).split()) or type(e).__name__
    raise ValueError(f'{path}: not an official network pickle ({message})') from None
  if not isinstance(data, dict):
    raise ValueError(f'{path}: not an official network pickle (no snapshot dict)')
  return data


def load(path: str) -> Imported:
  """The networks of a StyleGAN2(-ADA) or R3GAN snapshot pickle.

  A ``ValueError`` of one line names the first parameter that does not fit (unknown
  architecture, a missing key, a shape) or why the file is not such a pickle.
  """
  return from_snapshot(read(path), path)


def from_snapshot(data: dict, path: str = '<snapshot>') -> Imported:
  """``load`` of a snapshot dict ``read`` returned; ``path`` names it in errors."""
  nets = {k: data.get(k) for k in ('G', 'G_ema', 'D')}
  for k, v in nets.items():
    if v is not None and not isinstance(v, torch_archive.PickledObject):
      raise ValueError(f'{path}: {k} is not a network ({type(v).__name__})')
  g_any = nets['G_ema'] or nets['G']
  if g_any is None:
    raise ValueError(f'{path}: no generator (neither G nor G_ema)')
  family = _family(g_any)
  if family is None:
    raise ValueError(f'{path}: unknown architecture: the generator is {g_any.qualname}')
  convert = _Converter(path)
  if family == 'stylegan2':
    generator = convert.field_errors(lambda: _stylegan2_generator(g_any), 'G')
    discriminator = None
    if nets['D'] is not None:
      discriminator = convert.field_errors(
          lambda: _stylegan2_discriminator(nets['D']), 'D'
      )
    rename_g = rename_d = lambda p: p
  else:
    generator = convert.field_errors(lambda: _r3gan_networks(g_any, True), 'G')
    discriminator = None
    if nets['D'] is not None:
      discriminator = convert.field_errors(lambda: _r3gan_networks(nets['D'], False), 'D')
    rename_g = _r3gan_g_name(generator)
    rename_d = _r3gan_d_name(discriminator) if discriminator is not None else None
  variables = {}
  for key, name, module, rename in (
      ('g', 'G', generator, rename_g),
      ('g_ema', 'G_ema', generator, rename_g),
      ('d', 'D', discriminator, rename_d),
  ):
    net = nets[name]
    if key == 'g' and net is None:
      net, name = nets['G_ema'], 'G_ema'
    if net is None or module is None:
      variables[key] = None
      continue
    if family != _family(net, discriminator=key == 'd'):
      raise ValueError(f'{path}: {name} is {net.qualname}, not a {family} network')
    variables[key] = convert.fill(name, module, _tensors(net), rename)
  c_dim = generator.c_dim if family == 'stylegan2' else generator.num_classes
  return Imported(family, generator, discriminator, variables, int(c_dim))


def _family(net, discriminator: bool = False) -> Optional[str]:
  kids = _children(net)
  if discriminator:
    if net.qualname == 'Discriminator' and 'b4' in kids:
      return 'stylegan2'
  elif net.qualname == 'Generator' and {'mapping', 'synthesis'} <= set(kids):
    return 'stylegan2'
  model = kids.get('Model')
  cls = 'Discriminator' if discriminator else 'Generator'
  if model is not None and model.qualname == f'R3GAN.Networks.{cls}':
    return 'r3gan'
  return None


# ------------------------------------------------------------------------------------
# Reading module objects.


def _children(obj) -> dict:
  kids = obj.state.get('_modules') if isinstance(obj.state, dict) else None
  return dict(kids) if isinstance(kids, dict) else {}


def _child(obj, *names):
  for name in names:
    kids = _children(obj)
    if not isinstance(kids.get(name), torch_archive.PickledObject):
      raise KeyError(name)
    obj = kids[name]
  return obj


def _attr(obj, name, default=KeyError):
  state = obj.state if isinstance(obj.state, dict) else {}
  if name in state:
    return state[name]
  if default is KeyError:
    raise KeyError(name)
  return default


def _tensors(obj, prefix: str = '') -> Dict[str, np.ndarray]:
  """``state_dict()`` of a pickled module: dotted name -> array (None entries left out)."""
  out = {}
  for group in ('_parameters', '_buffers'):
    for k, v in dict(_attr(obj, group, {}) or {}).items():
      if v is not None:
        out[prefix + k] = np.asarray(v)
  for k, v in _children(obj).items():
    if isinstance(v, torch_archive.PickledObject):
      out.update(_tensors(v, f'{prefix}{k}.'))
  return out


def _filter_1d(f2d: np.ndarray) -> tuple:
  """The 1-D FIR filter whose normalised outer product is ``f2d`` (column sums)."""
  f = np.asarray(f2d, np.float64)
  if f.ndim == 1:
    return tuple(float(v) for v in f)
  return tuple(float(v) for v in f.sum(axis=0))


# ------------------------------------------------------------------------------------
# StyleGAN2(-ADA): the modules mirror the official ones, so names are equal.


def _stylegan2_generator(g) -> stylegan2.Generator:
  mapping, synthesis = _child(g, 'mapping'), _child(g, 'synthesis')
  res = int(_attr(g, 'img_resolution'))
  top = _child(synthesis, f'b{res}')
  layer = _child(synthesis, 'b4', 'conv1')
  skw = dict(_attr(synthesis, '_init_kwargs', {}) or {})
  return stylegan2.Generator(
      z_dim=int(_attr(g, 'z_dim')),
      c_dim=int(_attr(g, 'c_dim')),
      w_dim=int(_attr(g, 'w_dim')),
      resolution=res,
      img_channels=int(_attr(g, 'img_channels')),
      channel_base=int(skw.get('channel_base', 32768)),
      channel_max=int(skw.get('channel_max', 512)),
      mapping_layers=int(_attr(mapping, 'num_layers')),
      mapping_lr_multiplier=float(_attr(_child(mapping, 'fc0'), 'bias_gain')),
      w_avg_beta=_attr(mapping, 'w_avg_beta'),
      architecture=str(_attr(top, 'architecture')),
      resample_filter=_filter_1d(_attr(top, '_buffers')['resample_filter']),
      conv_clamp=_attr(layer, 'conv_clamp'),
      use_noise=bool(_attr(layer, 'use_noise')),
  )


def _stylegan2_discriminator(d) -> stylegan2.Discriminator:
  res = int(_attr(d, 'img_resolution'))
  c_dim = int(_attr(d, 'c_dim'))
  top, epilogue = _child(d, f'b{res}'), _child(d, 'b4')
  kw = dict(_attr(d, '_init_kwargs', {}) or {})
  mbstd = _children(epilogue).get('mbstd')
  extra = {}
  if c_dim > 0:
    mapping = _child(d, 'mapping')
    extra = dict(
        cmap_dim=int(_attr(epilogue, 'cmap_dim')),
        label_mapping_layers=int(_attr(mapping, 'num_layers')),
    )
    lr = float(_attr(_child(mapping, 'fc0'), 'bias_gain'))
    if lr != 0.01:
      raise ValueError(f'mapping.fc0 has lr_multiplier {lr}; only 0.01 is supported')
  return stylegan2.Discriminator(
      c_dim=c_dim,
      resolution=res,
      img_channels=int(_attr(d, 'img_channels')),
      architecture=str(_attr(top, 'architecture')),
      channel_base=int(kw.get('channel_base', 32768)),
      channel_max=int(kw.get('channel_max', 512)),
      conv_clamp=_attr(_child(epilogue, 'conv'), 'conv_clamp'),
      mbstd_group_size=_attr(mbstd, 'group_size') if mbstd is not None else None,
      mbstd_num_channels=int(_attr(mbstd, 'num_channels')) if mbstd is not None else 0,
      resample_filter=_filter_1d(
          _attr(_child(top, 'conv1'), '_buffers')['resample_filter']
      ),
      **extra,
  )


# ------------------------------------------------------------------------------------
# R3GAN: ``training.networks.{Generator,Discriminator}`` around ``R3GAN.Networks``.


def _conv_weight(obj, *names) -> np.ndarray:
  return np.asarray(_attr(_child(obj, *names), '_parameters')['weight'])


def _r3gan_networks(net, is_generator: bool):
  model = _child(net, 'Model')
  stages = [
      _child(model, 'MainLayers', str(i))
      for i in range(len(_children(_child(model, 'MainLayers'))))
  ]
  widths, cards, blocks, expansions, kernels, filters = [], [], [], set(), set(), set()
  for stage in stages:
    layers = [
        _child(stage, 'Layers', str(i))
        for i in range(len(_children(_child(stage, 'Layers'))))
    ]
    res_blocks = [l for l in layers if l.qualname.endswith('.ResidualBlock')]
    blocks.append(len(res_blocks))
    for block in res_blocks:
      w1 = _conv_weight(block, 'LinearLayer1', 'Layer')
      conv2 = _child(block, 'LinearLayer2', 'Layer')
      expansions.add(w1.shape[0] // w1.shape[1])
      kernels.add(int(_attr(conv2, '_parameters')['weight'].shape[-1]))
      cards.append(int(_attr(conv2, 'groups')))
      widths.append(int(w1.shape[1]))
      break
    else:
      cards.append(None)
      widths.append(None)
    for layer in layers:
      resampler = _children(layer).get('Resampler')
      if resampler is not None:
        filters.add(_filter_1d(_attr(resampler, '_buffers')['Kernel']))
  # Stage widths where a stage has no blocks: its transition's output (G) / input (D).
  if is_generator:
    for i, stage in enumerate(stages):
      if widths[i] is None:
        first = _child(stage, 'Layers', '0')
        w = _attr(first, '_parameters').get('Basis') if i == 0 else None
        widths[i] = int(w.shape[0]) if w is not None else widths[i - 1]
  if None in widths or None in cards:
    raise ValueError('a stage without residual blocks is not supported')
  if len(expansions) != 1 or len(kernels) != 1 or len(filters) > 1:
    raise ValueError('stages differ in expansion, kernel size or resampling filter')
  f = filters.pop() if filters else r3gan.lowpass_filter()
  weights, rem = np.polydiv(np.asarray(f) / max(f), [1.0, 1.0])
  if np.abs(rem).max() > 1e-6:
    raise ValueError(f'Resampler.Kernel {f} is not an interpolative low-pass filter')
  kids = _children(model)
  num_classes = int(_attr(net, 'c_dim', 0) or 0)
  embed_dim = None
  if 'EmbeddingLayer' in kids:
    w = _conv_weight(model, 'EmbeddingLayer')
    embed_dim, num_classes = int(w.shape[0]), int(w.shape[1])
  common = dict(
      resolution=4 * 2 ** (len(stages) - 1),
      channels=3,
      num_classes=num_classes,
      embed_dim=embed_dim,
      expansion=expansions.pop(),
      kernel_size=kernels.pop(),
      resample_filter=tuple(float(v) for v in weights),
  )
  if is_generator:
    z_dim = _conv_weight(stages[0], 'Layers', '0', 'LinearLayer').shape[1]
    z_dim -= embed_dim or 0
    return r3gan.Generator(
        z_dim=int(z_dim),
        widths=tuple(widths),
        cardinalities=tuple(cards),
        blocks_per_stage=tuple(blocks),
        **common,
    )
  return r3gan.Discriminator(
      widths=tuple(widths[::-1]),
      cardinalities=tuple(cards[::-1]),
      blocks_per_stage=tuple(blocks[::-1]),
      **common,
  )


_R3GAN_BLOCK = {
    'conv1.kernel': 'LinearLayer1.Layer.weight',
    'act1.bias': 'NonLinearity1.Bias',
    'conv2.kernel': 'LinearLayer2.Layer.weight',
    'act2.bias': 'NonLinearity2.Bias',
    'conv3.kernel': 'LinearLayer3.Layer.weight',
}


def _r3gan_g_name(g: r3gan.Generator) -> Callable[[str], str]:
  def rename(path: str) -> str:
    fixed = {
        'embed.embedding': 'Model.EmbeddingLayer.weight',
        'aggregate.kernel': 'Model.AggregationLayer.Layer.weight',
        'stage0.basis.basis': 'Model.MainLayers.0.Layers.0.Basis',
        'stage0.basis.kernel': 'Model.MainLayers.0.Layers.0.LinearLayer.weight',
    }
    if path in fixed:
      return fixed[path]
    m = re.fullmatch(r'stage(\d+)\.transition\.kernel', path)
    if m:
      return f'Model.MainLayers.{m[1]}.Layers.0.LinearLayer.Layer.weight'
    m = re.fullmatch(r'stage(\d+)\.block(\d+)\.(.*)', path)
    if m and m[3] in _R3GAN_BLOCK:
      return f'Model.MainLayers.{m[1]}.Layers.{int(m[2]) + 1}.{_R3GAN_BLOCK[m[3]]}'
    return path

  return rename


def _r3gan_d_name(d: r3gan.Discriminator) -> Callable[[str], str]:
  blocks = d.schedule()[2][::-1]  # top resolution first, as the stage names

  def rename(path: str) -> str:
    fixed = {
        'embed.embedding': 'Model.EmbeddingLayer.weight',
        'extract.kernel': 'Model.ExtractionLayer.Layer.weight',
    }
    if path in fixed:
      return fixed[path]
    m = re.fullmatch(r'stage(\d+)\.(transition|basis)\.(kernel|basis)', path)
    if m:
      i, n = int(m[1]), blocks[int(m[1])]
      leaf = {
          ('transition', 'kernel'): 'LinearLayer.Layer.weight',
          ('basis', 'basis'): 'Basis.weight',
          ('basis', 'kernel'): 'LinearLayer.weight',
      }[m[2], m[3]]
      return f'Model.MainLayers.{i}.Layers.{n}.{leaf}'
    m = re.fullmatch(r'stage(\d+)\.block(\d+)\.(.*)', path)
    if m and m[3] in _R3GAN_BLOCK:
      return f'Model.MainLayers.{m[1]}.Layers.{m[2]}.{_R3GAN_BLOCK[m[3]]}'
    return path

  return rename


# ------------------------------------------------------------------------------------
# Filling the variables.


def _layout(name: str, value: np.ndarray) -> np.ndarray:
  """Official (NCHW, [out, in]) layout -> this project's (NHWC, [in, out])."""
  if value.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 3:  # const / basis [C, H, W] -> [H, W, C]
    return value.transpose(1, 2, 0)
  if value.ndim == 2 and not name.endswith('noise_const'):  # linear [out, in]
    return value.T
  return value


# Official buffers with no variable here: the resampling filters, checked instead.
_FILTER_BUFFERS = re.compile(r'(^|\.)(resample_filter|Resampler\.Kernel)$')


class _Converter:

  def __init__(self, path: str):
    self.path = path

  def field_errors(self, build: Callable[[], nn.Module], net: str) -> nn.Module:
    """The module ``build`` makes from the pickle's attributes, checked; one line."""
    try:
      module = build()
    except KeyError as e:
      raise ValueError(
          f'{self.path}: {net} lacks {e.args[0]!r} (unknown architecture)'
      ) from None
    except (TypeError, AttributeError, IndexError) as e:
      raise ValueError(f'{self.path}: {net}: unknown architecture ({e})') from None
    except ValueError as e:
      raise ValueError(f'{self.path}: {net}: {" ".join(str(e).split())}') from None
    try:
      module.validate()
    except ValueError as e:
      raise ValueError(
          f'{self.path}: {net}: unsupported architecture: {" ".join(str(e).split())}'
      ) from None
    return module

  def fill(self, net: str, module: nn.Module, tensors: dict, rename) -> dict:
    """``module.init``'s variables with every leaf taken from ``tensors``, checked."""
    shapes = _init_shapes(module)
    used = set()

    def take(path, leaf):
      names = [getattr(k, 'key', str(k)) for k in path]
      ours = '.'.join(names[1:])
      name = rename(ours)
      if name not in tensors:
        raise ValueError(
            f'{self.path}: {net}.{name}: missing (this {type(module).__name__} needs it)'
        )
      value = _layout(name, tensors[name])
      if value.shape != leaf.shape:
        official = tensors[name].shape
        raise ValueError(
            f'{self.path}: {net}.{name}: shape {list(official)} does not fit '
            f'{ours} {list(leaf.shape)}'
        )
      used.add(name)
      return jnp.asarray(value, leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(take, shapes)
    for name in tensors:
      if name in used:
        continue
      if _FILTER_BUFFERS.search(name):
        self._check_filter(net, name, tensors[name], module)
        continue
      raise ValueError(
          f'{self.path}: {net}.{name}: unexpected parameter (unsupported architecture)'
      )
    return variables

  def _check_filter(self, net, name, value, module):
    f = module.resample_filter
    expected = (
        ops.setup_filter(f, separable=False)
        if isinstance(module, (stylegan2.Generator, stylegan2.Discriminator))
        else r3gan.lowpass_kernel_2d(f)
    )
    if np.shape(value) != np.shape(expected) or not np.allclose(
        value, expected, atol=1e-6
    ):
      raise ValueError(
          f'{self.path}: {net}.{name}: a resampling filter other than the others'
      )


def _init_shapes(module: nn.Module):
  """The shapes and dtypes of ``module.init``'s variables, without computing them."""
  key = jax.random.PRNGKey(0)
  if isinstance(module, stylegan2.Generator):
    args = (
        jnp.zeros((1, module.z_dim)),
        jnp.zeros((1,), jnp.int32) if module.c_dim else None,
    )
  elif isinstance(module, r3gan.Generator):
    args = (
        jnp.zeros((1, module.z_dim)),
        jnp.zeros((1,), jnp.int32) if module.num_classes else None,
    )
  else:
    res = module.resolution
    chans = (
        module.img_channels
        if isinstance(module, stylegan2.Discriminator)
        else module.channels
    )
    c = (
        module.c_dim
        if isinstance(module, stylegan2.Discriminator)
        else module.num_classes
    )
    batch = 4  # a multiple of the minibatch-std group
    args = (
        jnp.zeros((batch, res, res, chans)),
        jnp.zeros((batch,), jnp.int32) if c else None,
    )
  rngs = {'params': key, **models.rngs(module, key)}
  return jax.eval_shape(lambda: module.init(rngs, *args, train=False))


# ------------------------------------------------------------------------------------
# Matching a configured architecture (training from imported weights).

# Fields that change no parameter and nothing the file's networks compute in float32:
# free to differ between the config and the file.
_FREE_FIELDS = frozenset(
    'style_mixing_prob num_fp16_res mixed_dtype fused_modconv w_avg_beta '
    'mbstd_group_size num_mixed_stages conv_impl parent name'.split()
)
_R3GAN_SCHEDULE = {'widths': 0, 'cardinalities': 1, 'blocks_per_stage': 2}


def _effective(module: nn.Module, name: str):
  """A field's value as it acts: derived stage lists, filters normalised, tuples."""
  value = getattr(module, name)
  if name == 'resample_filter':
    f = np.asarray(value, np.float64)
    return tuple(np.round(f / f.sum(), 7).ravel().tolist())
  if isinstance(module, (stylegan2.Generator, stylegan2.Discriminator)):
    if name in ('channel_base', 'channel_max'):
      return stylegan2.channels_dict(
          module.resolution, module.channel_base, module.channel_max
      )
  if isinstance(module, (r3gan.Generator, r3gan.Discriminator)):
    if name in _R3GAN_SCHEDULE:
      return module.schedule()[_R3GAN_SCHEDULE[name]]
    if name in ('channel_base', 'channel_max', 'group_size'):
      return None  # what they derive is compared as the stage lists
    if name == 'embed_dim':
      if module.num_classes == 0:
        return None
      default = (
          module.z_dim if isinstance(module, r3gan.Generator) else module.schedule()[0][0]
      )
      return int(value or default)
  if isinstance(value, (list, tuple)):
    return tuple(value)
  return value


def mismatch(configured: nn.Module, imported: nn.Module) -> Optional[str]:
  """The first field in which ``configured`` computes differently from ``imported``:
  ``'FIELD: the file has X, here Y'``; None when they match."""
  if type(configured) is not type(imported):
    return (
        f'architecture: the file has a {imported.__module__.rsplit(".", 1)[-1]} '
        f'{type(imported).__name__}, here {type(configured).__module__.rsplit(".", 1)[-1]}'
    )
  for name in imported.__dataclass_fields__:
    if name in _FREE_FIELDS:
      continue
    theirs, ours = _effective(imported, name), _effective(configured, name)
    if theirs != ours:
      return f'{name}: the file has {theirs!r}, here {ours!r}'
  return None


__all__ = ['FAMILIES', 'Imported', 'from_snapshot', 'load', 'mismatch', 'read']
