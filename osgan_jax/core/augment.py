"""Differentiable discriminator augmentation: ADA's pipeline, DiffAugment, and ADA's
adaptive probability controller, as pure JAX on NHWC images in [-1, 1].

Every sample carries its own PRNG key (``attach``), so a sample is augmented the same
way whichever batch D sees it in (reals and fakes concatenated, a bucket of fakes, the
penalties' inputs): D o augment stays a function of each sample, and one-stage training
stays exact. ``p`` is a traced value. The presets, the controller and the differences
from the reference AugmentPipe: docs/augmentation.md.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

GEOMETRIC = ('xflip', 'rotate90', 'xint', 'scale', 'rotate', 'aniso', 'xfrac')
COLOR = ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation')
ADA_OPS = GEOMETRIC + COLOR + ('cutout',)
DIFFAUGMENT_OPS = ('brightness', 'saturation', 'contrast', 'translation', 'cutout')


def _ops(names, multiplier=1.0) -> dict:
  return {name: multiplier for name in names}


# Each preset: its kind and {op: probability multiplier} (an op runs with probability
# multiplier * p). ADA's augpipe_specs (stylegan2-ada-pytorch train.py), and R3GAN's
# pipe (brownvc/R3GAN train.py --aug=1: the colour ops at half probability).
_BGC = _ops(GEOMETRIC + COLOR)
PRESETS: dict[str, tuple[str, dict]] = {
    'ada': ('ada', _BGC),
    'ada_bgcc': ('ada', {**_BGC, 'cutout': 1.0}),
    'ada_blit': ('ada', _ops(GEOMETRIC[:3])),
    'ada_geom': ('ada', _ops(GEOMETRIC[3:])),
    'ada_color': ('ada', _ops(COLOR)),
    'ada_bg': ('ada', _ops(GEOMETRIC)),
    'r3gan': ('ada', {**_ops(GEOMETRIC), **_ops(COLOR, 0.5), 'cutout': 1.0}),
    'diffaugment': ('diffaugment', _ops(DIFFAUGMENT_OPS)),
}

# ADA's default ranges (AugmentPipe's keyword defaults).
XINT_MAX = 0.125
SCALE_STD = 0.2
ROTATE_MAX = 1.0
ANISO_STD = 0.2
XFRAC_STD = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
HUE_MAX = 1.0
SATURATION_STD = 1.0
CUTOUT_SIZE = 0.5
# DiffAugment's (Zhao et al. 2020, DiffAugment_pytorch.py).
DIFF_TRANSLATION = 0.125
DIFF_CUTOUT = 0.5

_LUMA = np.asarray([1, 1, 1, 0], np.float64) / np.sqrt(3)


@dataclasses.dataclass(frozen=True)
class Augment:
  """A preset (``PRESETS``), the starting ``p`` and how p changes: adaptively towards
  ``target`` (> 0), along ``schedule`` (``step -> p``, e.g. R3GAN's ramp), or not."""

  pipe: str
  p: float = 0.0
  target: float = 0.0
  speed_kimg: float = 500.0
  interval: int = 4
  schedule: Callable | None = None

  def __post_init__(self):
    if self.pipe not in PRESETS:
      raise ValueError(f'unknown augmentation {self.pipe!r}; valid: {", ".join(PRESETS)}')
    if not 0.0 <= self.p <= 1.0:
      raise ValueError(f'p must be in [0, 1], got {self.p}')
    if self.interval < 1 or self.speed_kimg <= 0:
      raise ValueError('interval must be >= 1 and speed_kimg > 0')
    if self.adaptive and self.schedule is not None:
      raise ValueError('p is either adaptive (target > 0) or scheduled, not both')

  @property
  def adaptive(self) -> bool:
    return self.target > 0

  def init_state(self) -> dict:
    """The state field: ``p`` and the sums of the current interval's real-logit signs."""
    return {
        'p': jnp.asarray(self.p, jnp.float32),
        'signs': jnp.zeros((), jnp.float32),
        'count': jnp.zeros((), jnp.float32),
    }

  def images(self, images, keys, p):
    """``images`` [B, H, W, C] augmented, sample i by ``keys[i]`` with probability p."""
    kind, ops = PRESETS[self.pipe]
    fn = augment_ada if kind == 'ada' else augment_diffaugment
    return fn(images, keys, p, ops)

  def update(self, state: dict, real_logits, step, batch_size: int):
    """``(state, r_t of this batch)`` after step ``step`` (counted after the update):
    adaptive, the signs of D's real logits added, and at ``step % interval == 0`` p
    moved by ``sign(r_t - target) * batch_size * interval / (speed_kimg * 1000)``,
    clipped to [0, 1], r_t the interval's mean sign; scheduled, p = schedule(step)."""
    signs = jnp.sign(jnp.asarray(real_logits, jnp.float32))
    rt_batch = jnp.mean(signs) if signs.size else jnp.zeros((), jnp.float32)
    if self.schedule is not None:
      p = jnp.clip(jnp.asarray(self.schedule(step), jnp.float32), 0.0, 1.0)
      return {**state, 'p': p}, rt_batch
    if not self.adaptive:
      return state, rt_batch
    total = state['signs'] + jnp.sum(signs)
    count = state['count'] + jnp.float32(signs.size)
    due = step % self.interval == 0
    rt = total / jnp.maximum(count, 1.0)
    step_size = batch_size * self.interval / (self.speed_kimg * 1000.0)
    moved = jnp.clip(state['p'] + jnp.sign(rt - self.target) * step_size, 0.0, 1.0)
    zero = jnp.zeros((), jnp.float32)
    new = {
        'p': jnp.where(due, moved, state['p']).astype(jnp.float32),
        'signs': jnp.where(due, zero, total),
        'count': jnp.where(due, zero, count),
    }
    return new, rt_batch


def attach(x, key):
  """``(x, keys)``: ``x`` (a batch pytree) with one raw PRNG key per sample."""
  n = jax.tree.leaves(x)[0].shape[0]
  keys = jax.random.split(key, n)
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return x, keys


def apply_tree(augment: Augment, pair, p):
  """The batch of an ``attach`` pair with every float NHWC leaf (rank 4) augmented by
  its samples' keys; other leaves (labels) unchanged."""
  x, keys = pair

  def leaf(v):
    if jnp.ndim(v) == 4 and jnp.issubdtype(jnp.result_type(v), jnp.inexact):
      return augment.images(v, keys, p)
    return v

  return jax.tree.map(leaf, x)


# --- Matrices (ADA's helpers: G_inv maps output pixels to input pixels). ---


def _mat3(rows):
  return jnp.stack([jnp.stack([jnp.asarray(v, jnp.float32) for v in r]) for r in rows])


def translate2d(tx, ty):
  return _mat3([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scale2d(sx, sy):
  return _mat3([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotate2d(cos, sin):
  return _mat3([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])


class Draws:
  """One sample's random numbers, taken in order from one uniform and one normal draw
  (two threefry calls per sample, not one per number: the pipeline compiles fast)."""

  def __init__(self, key, uniforms: int = 32, normals: int = 8):
    key_u, key_n = jax.random.split(key)
    self._u = jax.random.uniform(key_u, (uniforms,))
    self._n = jax.random.normal(key_n, (normals,))
    self._i = self._j = 0

  def uniform(self, shape=()):
    size = int(np.prod(shape))
    out = self._u[self._i : self._i + size].reshape(shape)
    self._i += size
    return out

  def normal(self, shape=()):
    size = int(np.prod(shape))
    out = self._n[self._j : self._j + size].reshape(shape)
    self._j += size
    return out

  def bernoulli(self, prob):
    return self.uniform() < prob


def geometric_matrix(d: Draws, p, ops, height: int, width: int):
  """One sample's inverse 3x3 transform (output pixel -> input pixel, centred pixel
  units), composed in ADA's order; the identity for each op not drawn. ``ops``:
  ``{op: probability multiplier}``."""
  prob = lambda op: ops[op] * p
  g = jnp.eye(3, dtype=jnp.float32)
  if 'xflip' in ops:
    i = jnp.floor(d.uniform() * 2)
    i = jnp.where(d.bernoulli(prob('xflip')), i, 0.0)
    g = g @ scale2d(1 - 2 * i, 1)
  if 'rotate90' in ops:
    i = jnp.floor(d.uniform() * 4).astype(jnp.int32)
    i = jnp.where(d.bernoulli(prob('rotate90')), i, 0)
    # Exact multiples of 90 degrees: rotate2d_inv(-pi/2 i) = rotate2d(pi/2 i).
    cos = jnp.asarray([1.0, 0.0, -1.0, 0.0])[i]
    sin = jnp.asarray([0.0, 1.0, 0.0, -1.0])[i]
    g = g @ rotate2d(cos, sin)
  if 'xint' in ops:
    t = (d.uniform((2,)) * 2 - 1) * XINT_MAX
    t = jnp.where(d.bernoulli(prob('xint')), t, 0.0)
    g = g @ translate2d(-jnp.round(t[0] * width), -jnp.round(t[1] * height))
  if 'scale' in ops:
    s = jnp.exp2(d.normal() * SCALE_STD)
    s = jnp.where(d.bernoulli(prob('scale')), s, 1.0)
    g = g @ scale2d(1 / s, 1 / s)
  if 'rotate' in ops:  # P(pre or post) = rotate * p
    p_rot = 1 - jnp.sqrt(jnp.clip(1 - prob('rotate'), 0.0, 1.0))

  def rotation(g):
    theta = (d.uniform() * 2 - 1) * np.pi * ROTATE_MAX
    theta = jnp.where(d.bernoulli(p_rot), theta, 0.0)
    return g @ rotate2d(jnp.cos(theta), jnp.sin(theta))  # rotate2d_inv(-theta)

  if 'rotate' in ops:
    g = rotation(g)
  if 'aniso' in ops:
    s = jnp.exp2(d.normal() * ANISO_STD)
    s = jnp.where(d.bernoulli(prob('aniso')), s, 1.0)
    g = g @ scale2d(1 / s, s)
  if 'rotate' in ops:
    g = rotation(g)
  if 'xfrac' in ops:
    t = d.normal((2,)) * XFRAC_STD
    t = jnp.where(d.bernoulli(prob('xfrac')), t, 0.0)
    g = g @ translate2d(-t[0] * width, -t[1] * height)
  return g


def color_matrix(d: Draws, p, ops, channels: int):
  """One sample's 4x4 colour transform (homogeneous RGB), ADA's order; hue and
  saturation only for RGB, as ADA."""
  prob = lambda op: ops[op] * p
  c = jnp.eye(4, dtype=jnp.float32)
  v = jnp.asarray(_LUMA, jnp.float32)
  vv = jnp.outer(v, v)
  if 'brightness' in ops:
    b = d.normal() * BRIGHTNESS_STD
    b = jnp.where(d.bernoulli(prob('brightness')), b, 0.0)
    c = _mat4_translate(b) @ c
  if 'contrast' in ops:
    s = jnp.exp2(d.normal() * CONTRAST_STD)
    s = jnp.where(d.bernoulli(prob('contrast')), s, 1.0)
    c = jnp.diag(jnp.stack([s, s, s, jnp.float32(1)])) @ c
  if 'lumaflip' in ops:
    i = jnp.floor(d.uniform() * 2)
    i = jnp.where(d.bernoulli(prob('lumaflip')), i, 0.0)
    c = (jnp.eye(4) - 2 * vv * i) @ c  # Householder reflection
  if 'hue' in ops and channels == 3:
    theta = (d.uniform() * 2 - 1) * np.pi * HUE_MAX
    theta = jnp.where(d.bernoulli(prob('hue')), theta, 0.0)
    c = rotate3d(v, theta) @ c
  if 'saturation' in ops and channels == 3:
    s = jnp.exp2(d.normal() * SATURATION_STD)
    s = jnp.where(d.bernoulli(prob('saturation')), s, 1.0)
    c = (vv + (jnp.eye(4) - vv) * s) @ c
  return c


def _mat4_translate(b):
  return jnp.eye(4, dtype=jnp.float32).at[:3, 3].set(jnp.asarray(b, jnp.float32))


def rotate3d(v, theta):
  """Rotation by ``theta`` about the unit axis ``v`` (homogeneous 4x4)."""
  x, y, z = v[0], v[1], v[2]
  s, c = jnp.sin(theta), jnp.cos(theta)
  cc = 1 - c
  return jnp.stack(
      [
          jnp.stack([x * x * cc + c, x * y * cc - z * s, x * z * cc + y * s, 0.0]),
          jnp.stack([y * x * cc + z * s, y * y * cc + c, y * z * cc - x * s, 0.0]),
          jnp.stack([z * x * cc - y * s, z * y * cc + x * s, z * z * cc + c, 0.0]),
          jnp.asarray([0.0, 0.0, 0.0, 1.0]),
      ]
  )


# --- Applying them. ---


def _reflect(i, n: int):
  """Indices mirrored into [0, n) without repeating the edge (PyTorch's 'reflect'),
  periodically beyond one reflection."""
  if n == 1:
    return jnp.zeros_like(i)
  period = 2 * (n - 1)
  r = jnp.mod(i, period)
  return jnp.where(r >= n, period - r, r)


def warp(images, g_inv):
  """Each image [B, H, W, C] resampled through its ``g_inv`` [B, 3, 3] (output pixel
  -> input pixel about the centre), bilinear with reflection padding. Exact where the
  source coordinates are integers (the identity, flips, 90-degree rotations, integer
  translations). Mapped over the batch: a batch-sharded gather stays sharded."""
  _, h, w, _ = images.shape
  cx, cy = (w - 1) / 2, (h - 1) / 2
  ys, xs = jnp.meshgrid(
      jnp.arange(h, dtype=jnp.float32) - cy,
      jnp.arange(w, dtype=jnp.float32) - cx,
      indexing='ij',
  )

  def one(image, g):
    u = g[0, 0] * xs + g[0, 1] * ys + g[0, 2] + cx  # [H, W]
    v = g[1, 0] * xs + g[1, 1] * ys + g[1, 2] + cy
    x0, y0 = jnp.floor(u), jnp.floor(v)
    fx, fy = (u - x0)[..., None], (v - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    at = lambda yi, xi: image[_reflect(yi, h), _reflect(xi, w)]
    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy

  return jax.vmap(one)(images, g_inv)


def recolor(images, c):
  """Each image through its colour matrix ``c`` [B, 4, 4]: RGB as ADA; any other
  channel count per channel as ADA's grey rule (the mean of the RGB rows)."""
  if images.shape[-1] == 3:
    return jnp.einsum('bij,bhwj->bhwi', c[:, :3, :3], images) + c[:, None, None, :3, 3]
  # Summed before dividing: the identity gives exactly scale 1, offset 0.
  scale = jnp.sum(c[:, :3, :3], axis=(1, 2)) / 3
  offset = jnp.sum(c[:, :3, 3], axis=1) / 3
  return images * scale[:, None, None, None] + offset[:, None, None, None]


def cutout_mask(centre, size, height: int, width: int):
  """[B, H, W, 1]: 0 inside each sample's rectangle (``centre``, ``size`` [B, 2] as
  fractions of the image, x then y), 1 elsewhere, as ADA's cutout."""
  xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
  ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
  out_x = (
      jnp.abs(xs[None, None, :] - centre[:, 0, None, None]) >= size[:, 0, None, None] / 2
  )
  out_y = (
      jnp.abs(ys[None, :, None] - centre[:, 1, None, None]) >= size[:, 1, None, None] / 2
  )
  return (out_x | out_y).astype(jnp.float32)[..., None]


def augment_ada(images, keys, p, ops=PRESETS['ada'][1]):
  """ADA's pipeline: geometric ops as one matrix and one resampling, colour ops as one
  matrix, then cutout; each op of ``ops`` (names, or ``{op: multiplier}``) drawn with
  probability ``multiplier * p`` per sample."""
  ops = dict(ops) if isinstance(ops, dict) else _ops(ops)
  unknown = sorted(set(ops) - set(ADA_OPS))
  if unknown:
    raise ValueError(f'unknown ADA ops {unknown}; valid: {", ".join(ADA_OPS)}')
  dtype = images.dtype
  x = images.astype(jnp.promote_types(dtype, jnp.float32))  # float64 stays
  b, h, w, ch = x.shape
  p = jnp.asarray(p, jnp.float32)

  def draw(key):
    d = Draws(key)
    g_inv = geometric_matrix(d, p, ops, h, w) if set(ops) & set(GEOMETRIC) else None
    c = color_matrix(d, p, ops, ch) if set(ops) & set(COLOR) else None
    size = centre = None
    if 'cutout' in ops:
      size = jnp.where(d.bernoulli(ops['cutout'] * p), CUTOUT_SIZE, 0.0) * jnp.ones(2)
      centre = d.uniform((2,))
    return g_inv, c, size, centre

  g_inv, c, size, centre = jax.vmap(draw)(keys)
  if g_inv is not None:
    x = warp(x, g_inv)
  if c is not None:
    x = recolor(x, c)
  if size is not None:
    x = x * cutout_mask(centre, size, h, w)
  return x.astype(dtype)


def _shift(images, tx, ty):
  """out[y, x] = in[y + ty, x + tx] per sample, zero outside (DiffAugment's
  translation)."""
  _, h, w, _ = images.shape

  def one(image, tx, ty):
    ys, xs = jnp.arange(h)[:, None] + ty, jnp.arange(w)[None, :] + tx
    inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w))[..., None]
    got = image[jnp.clip(ys, 0, h - 1), jnp.clip(xs, 0, w - 1)]
    return jnp.where(inside, got, 0.0)

  return jax.vmap(one)(images, tx, ty)


def augment_diffaugment(images, keys, p, ops=DIFFAUGMENT_OPS):
  """DiffAugment's 'color,translation,cutout' (Zhao et al. 2020), each op with
  probability ``multiplier * p`` per sample (p = 1: the paper's, every op on every
  image)."""
  ops = dict(ops) if isinstance(ops, dict) else _ops(ops)
  unknown = sorted(set(ops) - set(DIFFAUGMENT_OPS))
  if unknown:
    raise ValueError(
        f'unknown DiffAugment ops {unknown}; valid: {", ".join(DIFFAUGMENT_OPS)}'
    )
  dtype = images.dtype
  x = images.astype(jnp.promote_types(dtype, jnp.float32))  # float64 stays
  b, h, w, _ = x.shape
  p = jnp.asarray(p, jnp.float32)
  n = len(DIFFAUGMENT_OPS)
  u = jax.vmap(lambda k: jax.random.uniform(k, (2 * n + 2,)))(keys)  # one draw a sample
  uniform = lambda i, shape=(): u[:, i] if shape == () else u[:, i : i + shape[0]]
  on = lambda i: uniform(2 * i) < ops[DIFFAUGMENT_OPS[i]] * p  # [B]
  per = lambda a: a[:, None, None, None]
  if 'brightness' in ops:
    delta = jnp.where(on(0), uniform(1) - 0.5, 0.0)
    x = x + per(delta)
  if 'saturation' in ops:
    mean = jnp.mean(x, axis=3, keepdims=True)
    x = jnp.where(per(on(1)), (x - mean) * per(uniform(3) * 2) + mean, x)
  if 'contrast' in ops:
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    x = jnp.where(per(on(2)), (x - mean) * per(uniform(5) + 0.5) + mean, x)
  if 'translation' in ops:
    sx, sy = int(w * DIFF_TRANSLATION + 0.5), int(h * DIFF_TRANSLATION + 0.5)
    t = uniform(7, (2,))
    tx = jnp.floor(t[:, 0] * (2 * sx + 1)).astype(jnp.int32) - sx
    ty = jnp.floor(t[:, 1] * (2 * sy + 1)).astype(jnp.int32) - sy
    active = on(3)
    x = _shift(x, jnp.where(active, tx, 0), jnp.where(active, ty, 0))
  if 'cutout' in ops:
    cw, chh = int(w * DIFF_CUTOUT + 0.5), int(h * DIFF_CUTOUT + 0.5)
    o = uniform(9, (2,))
    ox = jnp.floor(o[:, 0] * (w + 1 - cw % 2)).astype(jnp.int32) - cw // 2
    oy = jnp.floor(o[:, 1] * (h + 1 - chh % 2)).astype(jnp.int32) - chh // 2
    xs, ys = jnp.arange(w)[None, None, :], jnp.arange(h)[None, :, None]
    inside_x = (xs >= ox[:, None, None]) & (xs < ox[:, None, None] + cw)
    inside_y = (ys >= oy[:, None, None]) & (ys < oy[:, None, None] + chh)
    cut = inside_x & inside_y & on(4)[:, None, None]
    x = x * jnp.where(cut, 0.0, 1.0)[..., None]
  return x.astype(dtype)


def preset_ops(pipe: str) -> dict:
  """``{op: probability multiplier}`` of preset ``pipe``."""
  return dict(PRESETS[pipe][1])
