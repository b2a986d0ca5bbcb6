"""The ways ``one_stage_grads`` computes D's gradient and G's image cotangent.

Each strategy takes a ``Game`` (D, both batches, the loss and the options it reads) and
returns a ``Pass``: D's gradient, G's cotangent at the fake images and what the aux
record reports. ``choose_strategy`` names the one that is exact and cheapest for the
game; ``STRATEGIES`` maps names to functions. See docs/method.md for the cost of each.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from osgan_jax.core import losses as losses_lib
from osgan_jax.core import penalties as penalties_lib
from osgan_jax.core.decomposition import (
    batch_size,
    call_with_aux,
    concat,
    cotangent_like,
    expand_per_sample,
    has_real,
    project,
    scale_per_sample,
    select_per_sample,
    sq_norm,
)

PyTree = Any
# The exact path's bucket ladder, in fractions of the batch (docs/method.md, "Cost").
DEFAULT_BUCKETS = (0.125, 0.25, 0.5)


@dataclasses.dataclass(frozen=True)
class Game:
  """What a strategy needs: D, its parameters, both batches, the loss and options."""

  discriminate: Callable
  params_d: PyTree
  x_real: PyTree  # None or leafless for a data-free game
  x_fake: PyTree
  loss: losses_lib.Loss
  loss_state: Any
  d_has_aux: bool
  per_sample: bool  # D's logits for sample i depend on image i alone
  penalties: dict  # validated {'r1' | 'r2' | 'gp': weight}
  measure_error: bool  # approx: also report the error against the exact cotangent
  bucket: Any = 0  # per-sample exact path: the bucket ladder (bucket_ladder; 0: none)

  @property
  def batch(self) -> int:
    return batch_size(self.x_fake)

  @property
  def has_real(self) -> bool:
    return has_real(self.x_real)

  def call_d(self, params, x):
    """D's ``(logits, aux)`` on ``x`` (aux None without ``d_has_aux``)."""
    return call_with_aux(self.discriminate, self.d_has_aux, params, x)


@dataclasses.dataclass(frozen=True)
class Pass:
  """A strategy's result: D's gradient, G's image cotangent and the record's inputs."""

  real_logits: jax.Array  # float32 (or wider)
  fake_logits: jax.Array
  c_fake: jax.Array  # dL_D / d fake logits
  gamma: jax.Array  # per sample
  sample_axes: tuple  # the axes of fake_logits within a sample
  grads_d: PyTree
  g_cot: PyTree  # dL_G / d x_fake
  n_exact: jax.Array
  d_aux: Any
  aux: dict = dataclasses.field(default_factory=dict)  # the strategy's own metrics
  penalties_done: tuple = ()  # penalties already in grads_d and aux


def choose_strategy(game: Game, *, mode: str) -> str:
  """The name (a key of ``STRATEGIES``) of the strategy for ``game`` in ``mode``."""
  if mode == 'approx':
    return 'approx'
  if shares_r2_forward(game):
    return 'shared_r2'
  if game.per_sample:
    return 'per_sample_exact'
  # Static: in a lax.cond XLA:CPU compiles D's convs without fast paths (10x slower).
  with jax.ensure_compile_time_eval():
    symmetric = losses_lib.is_symmetric(game.loss)
  return 'coupled_symmetric' if symmetric else 'coupled_asymmetric'


def shares_r2_forward(game: Game) -> bool:
  """Whether ``shared_r2`` applies (exact mode): real data, R2, and a per-sample D with
  one logit per sample."""
  applies = game.has_real and game.per_sample and 'r2' in game.penalties
  if not applies or game.measure_error:
    return False
  logits = jax.eval_shape(lambda p, x: game.call_d(p, x)[0], game.params_d, game.x_fake)
  return logits.ndim == 1


@dataclasses.dataclass(frozen=True)
class Forward:
  """D's forward on both batches, its vjp and the loss's coefficients at its logits."""

  vjp_d: Callable
  d_aux: Any
  logit_dtypes: tuple  # (real, fake): D's compute dtype
  real_logits: jax.Array  # float32 (or wider)
  fake_logits: jax.Array
  c_real: jax.Array  # dL_D / d real logits
  c_fake: jax.Array  # dL_D / d fake logits
  g_fake: jax.Array  # dL_G / d fake logits
  sample_axes: tuple
  gamma: jax.Array
  decomposable: jax.Array  # per sample: g_i = gamma_i c_i exactly

  def backward(self, cot_real, cot_fake):
    """``(dL/d params_d, dL/d x_fake)`` for the given cotangents at the logits."""
    real_dtype, fake_dtype = self.logit_dtypes
    return self.vjp_d((cot_real.astype(real_dtype), cot_fake.astype(fake_dtype)))

  def input_cotangent(self, g_cot_fake):
    """Input-only backward of D with G's cotangent (D's parameter grads unused)."""
    return self.backward(jnp.zeros_like(self.c_real), g_cot_fake)[1]

  def global_gamma(self):
    """``(gamma, exact)`` of one gamma for the whole fake batch."""
    return project(self.c_fake, self.g_fake, tuple(range(self.fake_logits.ndim)))

  def result(self, **fields) -> Pass:
    """The strategy's ``Pass``: ``fields`` and this forward's logits, gamma and aux."""
    shared = ('real_logits', 'fake_logits', 'c_fake', 'gamma', 'sample_axes', 'd_aux')
    return Pass(**{name: getattr(self, name) for name in shared}, **fields)


def logits_fn(game: Game) -> Callable:
  """``(params_d, x_fake) -> ((real logits, fake logits), aux)``: one call of D on the
  concatenated batch for a per-sample D, one per half when it couples samples."""
  x_real, batch = game.x_real, game.batch
  if not game.has_real:

    def forward(p, xf):
      fake_logits, aux = game.call_d(p, xf)
      return (fake_logits[:0], fake_logits), aux

  elif game.per_sample:

    def forward(p, xf):
      logits, aux = game.call_d(p, concat(x_real, xf))
      return (logits[:batch], logits[batch:]), aux

  else:

    def forward(p, xf):
      real_logits, _ = game.call_d(p, x_real)
      fake_logits, aux = game.call_d(p, xf)
      return (real_logits, fake_logits), aux

  return forward


def shared_forward(game: Game) -> Forward:
  """D's forward and vjp, the coefficients and the per-sample gamma."""
  (real_logits, fake_logits), vjp_d, d_aux = jax.vjp(
      logits_fn(game), game.params_d, game.x_fake, has_aux=True
  )
  # Cotangents at the logits, computed in float32 whatever D's compute dtype.
  r32, f32 = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  c_real, c_fake, g_fake = game.loss.coefficients(r32, f32, game.loss_state)
  axes = tuple(range(1, f32.ndim))  # within a sample
  gamma, decomposable = project(c_fake, g_fake, axes)
  dtypes = (real_logits.dtype, fake_logits.dtype)
  return Forward(
      vjp_d, d_aux, dtypes, r32, f32, c_real, c_fake, g_fake, axes, gamma, decomposable
  )


def fresh_input_cotangent(game: Game, g_cot_fake, logits_dtype, x_fake=None):
  """D's input cotangent at the fakes (``x_fake``, default the game's) from a fresh
  forward of D on them alone (D's fake call never sees the reals). Under ``lax.cond``
  it keeps the main backward's intermediates out of the branch operands."""
  x_fake = game.x_fake if x_fake is None else x_fake
  _, vjp_x = jax.vjp(lambda xf: game.call_d(game.params_d, xf)[0], x_fake)
  return vjp_x(g_cot_fake.astype(logits_dtype))[0]


def bucket_ladder(bucket, batch: int) -> tuple[int, ...]:
  """The static bucket sizes, ascending, for ``bucket``: a fraction of the batch in
  (0, 1] or a count, or an ascending sequence of them (None, 0 or (): no bucket).
  Sizes that round to the same count are kept once; those of the whole batch or more
  are dropped, as the whole-batch path is the last resort anyway."""
  rungs = (
      tuple(bucket) if isinstance(bucket, (tuple, list)) else (bucket,) if bucket else ()
  )
  if any(not r or r < 0 for r in rungs) or any(a >= b for a, b in zip(rungs, rungs[1:])):
    raise ValueError(f'exact_bucket must be positive and ascending, got {bucket!r}')
  sizes = (
      int(np.ceil(r * batch)) if isinstance(r, float) and r <= 1 else int(r)
      for r in rungs
  )
  return tuple(sorted({s for s in sizes if 0 < s < batch}))


def _bucketed_cotangent(game: Game, fwd: Forward, singular, size: int):
  """D's input cotangent with g at the singular fakes, from D's forward on a bucket of
  ``size`` samples (gathered, padded with zero cotangents, scattered back)."""
  index = jnp.nonzero(singular, size=size, fill_value=0)[0]
  valid = jnp.arange(size) < jnp.sum(singular)
  x_bucket = jax.tree.map(lambda leaf: leaf[index], game.x_fake)
  g_bucket = jnp.where(
      expand_per_sample(valid, fwd.g_fake[index]), fwd.g_fake[index], 0.0
  )
  rows = fresh_input_cotangent(game, g_bucket, fwd.logit_dtypes[1], x_bucket)

  def scatter(leaf, row):
    if row.dtype == jax.dtypes.float0:
      return np.zeros(leaf.shape, jax.dtypes.float0)
    row = jnp.where(expand_per_sample(valid, row), row, 0)
    return jnp.zeros(leaf.shape, row.dtype).at[index].add(row)

  return jax.tree.map(scatter, game.x_fake, rows)


def per_sample_exact(game: Game) -> Pass:
  """Per-sample D: gamma times D's input cotangent where the decomposition is exact, an
  input-only backward of D with g for the samples where it is not: on the smallest
  bucket of the ladder (``game.bucket``) that holds them, else on the whole fake batch."""
  fwd = shared_forward(game)
  grads_d, x_bar = fwd.backward(fwd.c_real, fwd.c_fake)
  g_cot = scale_per_sample(fwd.gamma, x_bar)
  singular = ~fwd.decomposable
  n_exact = jnp.sum(singular)
  sizes = bucket_ladder(game.bucket, game.batch)

  def whole_batch(g_cot):
    g_singular = jnp.where(expand_per_sample(singular, fwd.g_fake), fwd.g_fake, 0.0)
    exact = fresh_input_cotangent(game, g_singular, fwd.logit_dtypes[1])
    return select_per_sample(fwd.decomposable, g_cot, exact)

  def bucket(size, g_cot):
    exact = _bucketed_cotangent(game, fwd, singular, size)
    return select_per_sample(fwd.decomposable, g_cot, exact)

  # Branches: none, each rung (ascending), the whole batch; the first that holds them.
  # D's forward re-runs in the branch: vjp residuals as operands cost 10-12% per step.
  branches = [lambda c: c, *(functools.partial(bucket, s) for s in sizes), whole_batch]
  too_small = jnp.sum(n_exact > jnp.asarray(sizes, jnp.int32)) if sizes else 0
  path = jnp.where(n_exact == 0, 0, 1 + too_small)
  g_cot = jax.lax.switch(path, branches, g_cot)
  rerun = jnp.asarray((0, *sizes, game.batch), jnp.int32)[path]
  aux = {'exact_path': path, 'exact_rerun': rerun}
  return fwd.result(grads_d=grads_d, g_cot=g_cot, n_exact=n_exact, aux=aux)


def approx(game: Game) -> Pass:
  """The paper's method: per-sample gamma times the shared input cotangent, whatever D;
  with ``measure_error``, also its relative error against the exact cotangent."""
  fwd = shared_forward(game)
  grads_d, x_bar = fwd.backward(fwd.c_real, fwd.c_fake)
  g_cot = scale_per_sample(fwd.gamma, x_bar)
  # Wrong wherever gamma is not exact, and for every sample when D couples samples
  # unless one global gamma fits (symmetric losses).
  n_exact = jnp.sum(~fwd.decomposable)
  if not game.per_sample:
    global_gamma, global_ok = fwd.global_gamma()
    fits = global_ok & jnp.all(
        jnp.abs(fwd.gamma - global_gamma) <= 1e-6 * jnp.abs(global_gamma)
    )
    n_exact = jnp.where(fits, 0, game.batch)
  aux = {}
  if game.measure_error:
    aux['approx_rel_err'] = relative_error(g_cot, fwd.input_cotangent(fwd.g_fake))
  return fwd.result(grads_d=grads_d, g_cot=g_cot, n_exact=n_exact, aux=aux)


def relative_error(approx_tree, exact_tree) -> jax.Array:
  """||approx - exact|| / ||exact|| over the float leaves."""
  diff = jax.tree.map(
      lambda a, b: a if a.dtype == jax.dtypes.float0 else a - b, approx_tree, exact_tree
  )
  return jnp.sqrt(
      sq_norm(diff) / jnp.maximum(sq_norm(exact_tree), np.finfo(np.float32).tiny)
  )


def coupled_symmetric(game: Game) -> Pass:
  """Coupled D, symmetric loss: one global gamma is exact; where the logits leave none
  (e.g. every coefficient zero), an input-only backward of D with g."""
  fwd = shared_forward(game)
  global_gamma, global_ok = fwd.global_gamma()
  grads_d, x_bar = fwd.backward(fwd.c_real, fwd.c_fake)
  g_cot = scale_per_sample(jnp.full((game.batch,), global_gamma), x_bar)
  g_cot = jax.lax.cond(
      global_ok,
      lambda c: c,
      lambda c: fresh_input_cotangent(game, fwd.g_fake, fwd.logit_dtypes[1]),
      g_cot,
  )
  n_exact = jnp.where(global_ok, 0, game.batch)
  return fwd.result(grads_d=grads_d, g_cot=g_cot, n_exact=n_exact)


def coupled_asymmetric(game: Game) -> Pass:
  """Coupled D, asymmetric loss: no gamma is exact, so D's parameter backward with c
  and an input-only backward with g."""
  fwd = shared_forward(game)
  grads_d = fwd.backward(fwd.c_real, fwd.c_fake)[0]
  g_cot = fwd.input_cotangent(fwd.g_fake)
  return fwd.result(grads_d=grads_d, g_cot=g_cot, n_exact=jnp.asarray(game.batch))


def shared_r2(game: Game) -> Pass:
  """D's gradient of L_D + R1/R2 and G's image cotangent ``g_i dD(x_i)/dx_i`` from one
  forward of D and a double backward (docs/method.md)."""
  batch, weights = game.batch, game.penalties
  x_cat = concat(game.x_real, jax.lax.stop_gradient(game.x_fake))

  def objective(p):
    grads_x, logits, aux = penalties_lib.input_grads(
        game.discriminate, p, x_cat, has_aux=game.d_has_aux
    )
    l32 = logits.astype(jnp.float32)
    r32, f32 = l32[:batch], l32[batch:]
    c_real, c_fake, g_fake = jax.lax.stop_gradient(
        game.loss.coefficients(r32, f32, game.loss_state)
    )
    sq = penalties_lib.sq_norms(grads_x)
    metrics, total = {}, jnp.sum(c_real * r32) + jnp.sum(c_fake * f32)
    for name, half in (('r1', sq[:batch]), ('r2', sq[batch:])):
      if name in weights:
        metrics[f'{name}_penalty'] = jnp.mean(half)
        total = total + weights[name] / 2 * metrics[f'{name}_penalty']
    fake_grads = [jax.lax.stop_gradient(g[batch:]) for g in grads_x]
    return total, (r32, f32, c_fake, g_fake, fake_grads, aux, metrics)

  grads_d, (r32, f32, c_fake, g_fake, fake_grads, d_aux, metrics) = jax.grad(
      objective, has_aux=True
  )(game.params_d)
  g_cot = cotangent_like(
      game.x_fake, [expand_per_sample(g_fake, g) * g for g in fake_grads]
  )
  r32, f32 = jax.lax.stop_gradient(r32), jax.lax.stop_gradient(f32)
  gamma, _ = project(c_fake, g_fake, ())  # one logit per sample
  return Pass(
      real_logits=r32,
      fake_logits=f32,
      c_fake=c_fake,
      gamma=gamma,
      sample_axes=(),
      grads_d=grads_d,
      g_cot=g_cot,
      n_exact=jnp.asarray(0),
      d_aux=d_aux,
      aux=metrics,
      penalties_done=('r1', 'r2'),
  )


STRATEGIES: dict[str, Callable[[Game], Pass]] = {
    fn.__name__: fn
    for fn in (shared_r2, per_sample_exact, approx, coupled_symmetric, coupled_asymmetric)
}
