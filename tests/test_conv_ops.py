"""conv_ops: the 'matmul' reformulations equal XLA's convolutions (values, input and
kernel gradients, forward-mode tangents) for every configuration DCGAN uses, and the
DCGAN modules give the same outputs and gradients with conv_impl='xla' and 'matmul'."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from osgan_jax.models import conv_ops
from osgan_jax.models.dcgan import Discriminator, Generator

DN = ('NHWC', 'HWIO', 'NHWC')
KEY = jax.random.PRNGKey(0)


def _rand(rng, shape, dtype=np.float32):
  return jnp.asarray(rng.standard_normal(shape), dtype)


def _close(a, b, rtol, scale=None):
  """Agreement relative to the largest entry, or to ``scale`` (sums are reordered, not
  changed)."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  scale = float(np.max(np.abs(b))) if scale is None else scale
  assert scale > 0
  assert float(np.max(np.abs(a - b))) <= rtol * scale


def _check(fast, ref, x, w, rtol):
  """Values, VJPs w.r.t. x and w, and a JVP agree."""
  rng = np.random.default_rng(1)
  y_ref = ref(x, w)
  _close(fast(x, w), y_ref, rtol)
  ct = _rand(rng, y_ref.shape, y_ref.dtype)
  for a, b in zip(jax.vjp(fast, x, w)[1](ct), jax.vjp(ref, x, w)[1](ct)):
    _close(a, b, rtol)
  tx, tw = _rand(rng, x.shape, x.dtype), _rand(rng, w.shape, w.dtype)
  _close(jax.jvp(fast, (x, w), (tx, tw))[1], jax.jvp(ref, (x, w), (tx, tw))[1], rtol)


# (input size, kernel, stride, padding): DCGAN D's stride-2 convs at a small and a
# large output (both code paths), its final full-window conv, the patch D's 3x3 and
# 4x4 'SAME' convs, plus strides/paddings DCGAN does not use.
CONV_CASES = [
    (8, 4, 2, ((1, 1), (1, 1))),  # 4x4 output: patches
    (26, 4, 2, ((1, 1), (1, 1))),  # 13x13 output: XLA forward, matmul derivatives
    (7, 4, 2, ((1, 1), (1, 1))),  # odd size: padded to a multiple of the stride
    (9, 4, 2, 'SAME'),
    (4, 4, 1, 'VALID'),  # D's last layer: one matmul
    (7, 7, 1, 'VALID'),  # its 28x28 variant
    (4, 3, 1, 'SAME'),  # patch logits
    (4, 4, 1, 'SAME'),
    (13, 3, 1, 'SAME'),  # large stride-1 output
    (9, 3, 3, 'SAME'),
]


@pytest.mark.parametrize('hw,k,s,padding', CONV_CASES)
@pytest.mark.long
def test_conv2d_matches_xla(hw, k, s, padding):
  rng = np.random.default_rng(0)
  x, w = _rand(rng, (2, hw, hw, 3)), _rand(rng, (k, k, 3, 5))
  _check(
      lambda x, w: conv_ops.conv2d(x, w, (s, s), padding, impl='matmul'),
      lambda x, w: lax.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=DN),
      x,
      w,
      rtol=1e-5,
  )


# G's 1x1 -> s x s first layer (stride 1, 'VALID') and its stride-2 4x4 layers
# (PyTorch padding 1 = pads (2, 2) of the dilated input), small and large outputs.
CONV_T_CASES = [
    (1, 4, 1, 'VALID'),
    (1, 7, 1, 'VALID'),
    (4, 4, 2, ((2, 2), (2, 2))),
    (12, 4, 2, ((2, 2), (2, 2))),
    (3, 4, 2, 'SAME'),
    (3, 4, 2, ((1, 3), (3, 1))),
    (3, 3, 3, ((2, 2), (2, 2))),
    (4, 3, 1, 'SAME'),
    (3, 4, 2, 'VALID'),  # output not s * H: falls back to XLA
]


@pytest.mark.parametrize('hw,k,s,padding', CONV_T_CASES)
@pytest.mark.long
def test_conv_transpose2d_matches_xla(hw, k, s, padding):
  rng = np.random.default_rng(0)
  x, w = _rand(rng, (2, hw, hw, 3)), _rand(rng, (k, k, 3, 5))
  _check(
      lambda x, w: conv_ops.conv_transpose2d(x, w, (s, s), padding, impl='matmul'),
      lambda x, w: lax.conv_transpose(x, w, (s, s), padding, dimension_numbers=DN),
      x,
      w,
      rtol=1e-5,
  )


def test_float64_agrees_to_rounding():
  """In float64 the reformulations agree to ~1e-13: they change only the summation
  order, not the function."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x, w = _rand(rng, (2, 26, 26, 3), np.float64), _rand(rng, (4, 4, 3, 5), np.float64)
    _check(
        lambda x, w: conv_ops.conv2d(x, w, (2, 2), ((1, 1), (1, 1)), impl='matmul'),
        lambda x, w: lax.conv_general_dilated(
            x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN
        ),
        x,
        w,
        rtol=1e-12,
    )
    x = _rand(rng, (2, 12, 12, 3), np.float64)
    _check(
        lambda x, w: conv_ops.conv_transpose2d(
            x, w, (2, 2), ((2, 2), (2, 2)), impl='matmul'
        ),
        lambda x, w: lax.conv_transpose(
            x, w, (2, 2), ((2, 2), (2, 2)), dimension_numbers=DN
        ),
        x,
        w,
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    'conv,ref',
    [
        (
            lambda x, w: conv_ops.conv2d(x, w, (2, 2), ((1, 1), (1, 1)), impl='matmul'),
            lambda x, w: lax.conv_general_dilated(
                x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN
            ),
        ),
        (
            lambda x, w: conv_ops.conv_transpose2d(
                x, w[:, :, :, :3], (2, 2), ((2, 2), (2, 2)), impl='matmul'
            ),
            lambda x, w: lax.conv_transpose(
                x, w[:, :, :, :3], (2, 2), ((2, 2), (2, 2)), dimension_numbers=DN
            ),
        ),
    ],
    ids=['conv', 'transpose'],
)
@pytest.mark.long
def test_second_order_gradient(conv, ref):
  """Gradient penalties differentiate the input gradient again (reverse over reverse);
  the transposed conv's derivatives are themselves transposes of conv2d."""
  rng = np.random.default_rng(0)
  x, w = _rand(rng, (2, 26, 26, 3)), 0.3 * _rand(rng, (4, 4, 3, 5))

  def penalty(conv):
    def f(w):
      grad_x = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w))))(x)
      return jnp.sum(grad_x**2)

    return jax.grad(f)(w)

  _close(penalty(conv), penalty(ref), 1e-4)


# (input size, kernel, stride, input dilation, pads): StyleGAN2's up conv (3x3, zeros
# inserted, pads 2) and down conv (3x3, stride 2, on 2H+1 pixels), then other shapes,
# negative pads (crops) and a dilation of 3.
RESAMPLE_CASES = [
    (5, 3, 1, 2, ((2, 2), (2, 2))),
    (9, 3, 2, 1, ((0, 0), (0, 0))),
    (4, 3, 1, 2, ((1, 0), (0, 3))),
    (5, 4, 1, 2, ((3, 3), (3, 3))),
    (4, 3, 1, 2, ((-1, 0), (0, -2))),
    (4, 3, 1, 3, ((2, 2), (1, 2))),
    (3, 1, 1, 3, ((0, 0), (0, 0))),
    (8, 3, 2, 1, ((1, -1), (0, 2))),
    (9, 4, 3, 1, ((1, 1), (0, 0))),
]


def _resample_pair(s, d, pads):
  fast = lambda x, w: conv_ops.resample_conv2d(x, w, s, pads, d, impl='matmul')
  ref = lambda x, w: lax.conv_general_dilated(
      x, w, (s, s), pads, lhs_dilation=(d, d), dimension_numbers=DN
  )
  return jax.jit(fast), jax.jit(ref)


@pytest.fixture
def patch_forms_at_any_size(monkeypatch):
  monkeypatch.setattr(conv_ops, 'RESAMPLE_MIN_MACS', 0)


@pytest.mark.parametrize('hw,k,s,d,pads', RESAMPLE_CASES)
def test_resample_conv2d_matches_xla_to_the_second_order(
    hw, k, s, d, pads, patch_forms_at_any_size
):
  """Values, both cotangents, a tangent, and a gradient penalty's second derivative."""
  rng = np.random.default_rng(0)
  x, w = _rand(rng, (2, hw, hw, 3)), 0.3 * _rand(rng, (k, k, 3, 4))
  fast, ref = _resample_pair(s, d, pads)
  _check(fast, ref, x, w, rtol=1e-5)

  def penalty(conv):
    def f(w):
      grad_x = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w))))(x)
      return jnp.sum(grad_x**2)

    return jax.jit(jax.grad(f))(w)

  _close(penalty(fast), penalty(ref), 1e-4)


def test_resample_conv2d_derivatives_are_matmuls():
  """On the 'matmul' path a penalty's second derivative of StyleGAN2's up and down convs
  compiles to matmuls and slices: no convolution (XLA:CPU's are 30-100x slower there)
  and no product with an inserted zero. Below ``RESAMPLE_MIN_MACS`` XLA's conv stays."""
  rng = np.random.default_rng(0)
  w = _rand(rng, (3, 3, 32, 32))
  # (stride, dilation, pads, a size above the threshold); 8x8 pixels are below it.
  for s, d, pads, hw in ((1, 2, ((2, 2), (2, 2)), 64), (2, 1, ((0, 0), (0, 0)), 129)):
    pixels = hw * hw // (s * s)
    assert 8 * 8 * w.size < conv_ops.RESAMPLE_MIN_MACS <= pixels * w.size

    def second(impl, hw, s=s, d=d, pads=pads):
      x = jnp.zeros((2, hw, hw, 32))
      conv = lambda x, w: conv_ops.resample_conv2d(x, w, s, pads, d, impl=impl)
      f = lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(conv(x, w) ** 2))(x) ** 2)
      return jax.jit(jax.grad(f)).lower(w).compile().as_text()

    assert 'convolution(' not in second('matmul', hw)
    assert 'convolution(' in second('xla', hw)
    assert 'convolution(' in second('matmul', 8)


def test_transposed_conv_work_is_exact():
  """Forward + both cotangents of a stride-2 transposed conv cost exactly three times
  its forward in matmul FLOPs (no zeros multiplied: no lhs dilation, no extra windows),
  where plain XLA dilates the input with zeros."""
  from experiments.flops import hlo_matmul_flops

  rng = np.random.default_rng(0)
  x, w = _rand(rng, (2, 8, 8, 6)), _rand(rng, (4, 4, 6, 5))
  ct = _rand(rng, (2, 16, 16, 5))
  exact = 2 * 2 * 8 * 8 * 4 * 4 * 6 * 5

  def step(impl):
    def f(x, w, ct):
      y, vjp = jax.vjp(
          lambda x, w: conv_ops.conv_transpose2d(
              x, w, (2, 2), ((2, 2), (2, 2)), impl=impl
          ),
          x,
          w,
      )
      return y, vjp(ct)

    return jax.jit(f).lower(x, w, ct).compile().as_text()

  hlo = step('matmul')
  assert hlo_matmul_flops(hlo) == (3 * exact, 0)
  assert 'lhs_dilate' not in hlo
  assert 'lhs_dilate' in step('xla')


def test_impl_names():
  assert conv_ops.resolve_impl('auto') == (
      'matmul' if jax.default_backend() == 'cpu' else 'xla'
  )
  assert conv_ops.resolve_impl('xla') == 'xla'
  with pytest.raises(ValueError, match='conv impl'):
    conv_ops.resolve_impl('cudnn')


def test_unsupported_arguments_fall_back_to_xla():
  rng = np.random.default_rng(0)
  x, w = _rand(rng, (2, 9, 9, 4)), _rand(rng, (3, 3, 2, 6))
  conv = conv_ops.conv_general_dilated('matmul')
  grouped = conv(x, w, (1, 1), 'SAME', dimension_numbers=DN, feature_group_count=2)
  ref = lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=DN, feature_group_count=2
  )
  np.testing.assert_array_equal(grouped, ref)
  w = _rand(rng, (3, 3, 4, 6))
  dilated = conv(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN)
  np.testing.assert_array_equal(
      dilated,
      lax.conv_general_dilated(
          x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN
      ),
  )


def test_conv_transpose_layer_has_the_parameters_of_flax():
  x = jnp.ones((2, 4, 4, 3))
  kwargs = dict(
      strides=(2, 2),
      padding=((2, 2), (2, 2)),
      use_bias=True,
      kernel_init=nn.initializers.normal(0.02),
      bias_init=nn.initializers.normal(0.5),
  )
  ref = nn.ConvTranspose(5, (4, 4), **kwargs)
  fast = conv_ops.ConvTranspose(5, (4, 4), impl='matmul', **kwargs)
  v_ref, v_fast = ref.init(KEY, x), fast.init(KEY, x)
  assert jax.tree.structure(v_ref) == jax.tree.structure(v_fast)
  for a, b in zip(jax.tree.leaves(v_ref), jax.tree.leaves(v_fast)):
    np.testing.assert_array_equal(a, b)  # same names, shapes and initial values
  _close(fast.apply(v_ref, x), ref.apply(v_ref, x), 1e-5)


# ------------------------------------------------------------------------------- DCGAN


def _variables(module, x, labels=None):
  """Initial variables with non-zero biases, so a misplaced bias would show."""
  variables = module.init(KEY, x, labels, train=False)
  rng = np.random.default_rng(3)
  return jax.tree_util.tree_map_with_path(
      lambda p, v: (
          jnp.asarray(0.1 * rng.standard_normal(v.shape), v.dtype)
          if getattr(p[-1], 'key', '') == 'bias'
          else v
      ),
      variables,
  )


def _outputs_and_grads(module, variables, x, labels, collections):
  """Training-mode output, new state, and gradients w.r.t. the params and the input
  (jitted: one compilation is faster than running every op eagerly)."""

  def f(params, x):
    return module.apply(
        {**variables, 'params': params}, x, labels, train=True, mutable=collections
    )

  @jax.jit
  def run(params, x):
    (out, state), vjp = jax.vjp(lambda p, x: f(p, x), params, x)
    ct = jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)
    return out, state, vjp((ct, jax.tree.map(jnp.zeros_like, state)))

  return run(variables['params'], x)


def _compare_impls(cls, kwargs, x, labels=None, collections=('batch_stats',)):
  xla = cls(conv_impl='xla', **kwargs)
  fast = cls(conv_impl='matmul', **kwargs)
  variables = _variables(xla, x, labels)
  shapes = jax.eval_shape(lambda: fast.init(KEY, x, labels, train=False))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  ref = _outputs_and_grads(xla, variables, x, labels, list(collections))
  got = _outputs_and_grads(fast, variables, x, labels, list(collections))
  for part_got, part_ref in zip(got, ref):
    if not jax.tree.leaves(part_ref):
      continue  # no state collection
    # Relative to the part's largest entry: a conv bias before BatchNorm has a zero
    # gradient, which both compute as rounding noise of the other gradients' size.
    scale = max(float(jnp.max(jnp.abs(l))) for l in jax.tree.leaves(part_ref))
    for a, b in zip(jax.tree.leaves(part_got), jax.tree.leaves(part_ref)):
      _close(a, b, 2e-4, scale)


@pytest.mark.parametrize(
    'resolution,kwargs',
    [
        (64, dict(norm='batch', use_bias=True)),
        (28, dict(norm='none', num_classes=3, embed_dim=2)),
    ],
)
@pytest.mark.long
def test_generator_impls_agree(resolution, kwargs):
  g_kwargs = dict(resolution=resolution, channels=3, width=4, z_dim=6, **kwargs)
  z = _rand(np.random.default_rng(0), (2, 6))
  labels = jnp.array([0, 2]) if kwargs.get('num_classes') else None
  _compare_impls(Generator, g_kwargs, z, labels)


@pytest.mark.parametrize(
    'resolution,kwargs',
    [
        (64, dict(norm='group', use_bias=True)),
        (32, dict(norm='none', spectral_norm=True)),
        (32, dict(norm='batch', patch=True, patch_kernel=4)),
        (28, dict(norm='layer', num_classes=3, patch=True, patch_kernel=3)),
    ],
)
@pytest.mark.long
def test_discriminator_impls_agree(resolution, kwargs):
  d_kwargs = dict(resolution=resolution, channels=3, width=4, **kwargs)
  x = jnp.asarray(
      np.random.default_rng(0).uniform(-1, 1, (2, resolution, resolution, 3)), jnp.float32
  )
  labels = jnp.array([0, 2]) if kwargs.get('num_classes') else None
  _compare_impls(Discriminator, d_kwargs, x, labels)
