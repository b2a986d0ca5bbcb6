"""FLOPs of a jitted step that count convolutions on every backend.

XLA's ``cost_analysis()`` misses convolutions on a GPU (cuDNN custom calls), so the
benchmarks count the step's jaxpr instead: dots and convolutions exactly (padding taps
and the holes of an lhs dilation excluded, as XLA counts them), elementwise work apart,
the cheapest and the dearest branch of every conditional, and, with
``executed_flops``, the branch each step actually took. The counting rules are in
``experiments/README.md`` ("FLOPs").
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import jax
import numpy as np
from jax import lax
from jax.extend import core as jex_core

# ---------------------------------------------------------------- per-op formulas


def dot_general_flops(
    lhs_shape: Sequence[int], out_shape: Sequence[int], dimension_numbers
) -> int:
  """2 * (result elements) * (contracted size): 2 M N K for each batch element."""
  (lhs_contract, _), _ = dimension_numbers
  k = math.prod(int(lhs_shape[d]) for d in lhs_contract)
  return 2 * math.prod(int(n) for n in out_shape) * k


def conv_valid_positions(
    in_size: int,
    kernel_size: int,
    out_size: int,
    stride: int,
    pad_lo: int,
    lhs_dilation: int,
    rhs_dilation: int,
) -> int:
  """(output position, kernel tap) pairs of one spatial dim that read a real input.

  Tap ``k`` of output ``o`` reads position ``o*stride - pad_lo + k*rhs_dilation`` of
  the lhs-dilated input; it is real when that is a multiple of ``lhs_dilation`` and
  lands inside the input (XLA's ``HloCostAnalysis::GetConvolutionFlops``).
  """
  o = np.arange(out_size)[None, :]
  k = np.arange(kernel_size)[:, None]
  pos = o * stride - pad_lo + k * rhs_dilation
  real = (pos % lhs_dilation == 0) & (pos >= 0) & (pos // lhs_dilation < in_size)
  return int(real.sum())


def conv_flops(
    lhs_shape,
    rhs_shape,
    out_shape,
    *,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    **unused_params,
) -> int:
  """Multiply-adds x 2 of a ``conv_general_dilated`` (see the module docstring)."""
  nd = len(lhs_shape) - 2
  dn = dimension_numbers
  if dn is None or not hasattr(dn, 'lhs_spec'):
    dn = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dn)
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  lhs_dilation = tuple(lhs_dilation or (1,) * nd)
  rhs_dilation = tuple(rhs_dilation or (1,) * nd)
  if isinstance(padding, str):
    dilated_in = [
        (int(lhs_shape[lhs_spec[2 + i]]) - 1) * lhs_dilation[i] + 1 for i in range(nd)
    ]
    dilated_k = [
        (int(rhs_shape[rhs_spec[2 + i]]) - 1) * rhs_dilation[i] + 1 for i in range(nd)
    ]
    padding = lax.padtype_to_pads(dilated_in, dilated_k, window_strides, padding)
  positions = 1
  for i in range(nd):
    positions *= conv_valid_positions(
        int(lhs_shape[lhs_spec[2 + i]]),
        int(rhs_shape[rhs_spec[2 + i]]),
        int(out_shape[out_spec[2 + i]]),
        int(window_strides[i]),
        int(padding[i][0]),
        int(lhs_dilation[i]),
        int(rhs_dilation[i]),
    )
  batch = int(lhs_shape[lhs_spec[0]]) // int(batch_group_count)
  in_features = int(lhs_shape[lhs_spec[1]]) // int(feature_group_count)
  out_features = int(out_shape[out_spec[1]])
  return 2 * batch * in_features * out_features * positions


# ---------------------------------------------------------------- the jaxpr walk

# XLA's HloCostAnalysis convention for everything but dots and convolutions: one FLOP
# per output element of an arithmetic elementwise op, one per input element of a
# reduction, none for data movement (reshape, transpose, pad, slice, concatenate, ...)
# and none for transcendentals (exp, log, tanh, sqrt, ...: XLA counts those apart).
_ELEMENTWISE = frozenset(
    (
        'add',
        'add_any',
        'sub',
        'mul',
        'div',
        'rem',
        'max',
        'min',
        'neg',
        'abs',
        'sign',
        'floor',
        'ceil',
        'round',
        'select_n',
        'clamp',
        'eq',
        'ne',
        'lt',
        'le',
        'gt',
        'ge',
        'and',
        'or',
        'not',
        'xor',
        'square',
        'convert_element_type',
        'nextafter',
        'is_finite',
        'copysign',
    )
)
_REDUCTIONS = frozenset(
    (
        'reduce_sum',
        'reduce_max',
        'reduce_min',
        'reduce_prod',
        'reduce_and',
        'reduce_or',
        'reduce_xor',
        'argmax',
        'argmin',
    )
)


def _size(var) -> int:
  shape = getattr(getattr(var, 'aval', None), 'shape', None)
  return 0 if shape is None else math.prod(int(d) for d in shape)


def elementwise_flops(eqn) -> int:
  """XLA's FLOPs for a non-matmul equation (see ``_ELEMENTWISE``); 0 for others."""
  name = eqn.primitive.name
  if name in _ELEMENTWISE:
    return sum(_size(v) for v in eqn.outvars)
  if name in _REDUCTIONS:
    return sum(_size(v) for v in eqn.invars)
  if name == 'integer_pow':  # square-and-multiply, and a divide for negative powers
    y = abs(int(eqn.params['y']))
    muls = max(1, y.bit_length() - 1 + bin(y).count('1') - 1) if y > 1 else 0
    return (muls + (int(eqn.params['y']) < 0)) * _size(eqn.outvars[0])
  return 0


@dataclasses.dataclass
class Count:
  """FLOPs of a jaxpr: dots and convolutions (``by_dtype``: the cheapest branch of every
  conditional; ``by_dtype_max``: the most expensive) and, apart, XLA-style elementwise
  FLOPs (``elementwise``, ``elementwise_max``) for the comparison with XLA's count."""

  by_dtype: dict = dataclasses.field(default_factory=dict)  # cheapest branches
  by_dtype_max: dict = dataclasses.field(default_factory=dict)  # dearest branches
  by_primitive: dict = dataclasses.field(default_factory=dict)  # cheapest branches
  elementwise: float = 0.0
  elementwise_max: float = 0.0
  conds: int = 0
  while_loops: int = 0

  @property
  def flops(self) -> float:
    return float(sum(self.by_dtype.values()))

  @property
  def flops_max_branch(self) -> float:
    return float(sum(self.by_dtype_max.values()))

  @property
  def flops_xla_convention(self) -> float:
    """What XLA's cost analysis should report: dearest branches, elementwise included."""
    return self.flops_max_branch + self.elementwise_max

  def add(self, other: 'Count', times: float = 1.0, max_only: 'Count | None' = None):
    """Adds ``times`` x ``other`` (``max_only`` replaces it for the max totals)."""
    dear = other if max_only is None else max_only
    for key, v in other.by_dtype.items():
      self.by_dtype[key] = self.by_dtype.get(key, 0.0) + times * v
    for key, v in dear.by_dtype_max.items():
      self.by_dtype_max[key] = self.by_dtype_max.get(key, 0.0) + times * v
    for key, v in other.by_primitive.items():
      self.by_primitive[key] = self.by_primitive.get(key, 0.0) + times * v
    self.elementwise += times * other.elementwise
    self.elementwise_max += times * dear.elementwise_max
    self.conds += max(other.conds, dear.conds)
    self.while_loops += max(other.while_loops, dear.while_loops)

  def add_op(self, primitive: str, dtype: str, flops: float):
    self.by_dtype[dtype] = self.by_dtype.get(dtype, 0.0) + flops
    self.by_dtype_max[dtype] = self.by_dtype_max.get(dtype, 0.0) + flops
    self.by_primitive[primitive] = self.by_primitive.get(primitive, 0.0) + flops

  def as_dict(self) -> dict:
    """The result-row fields: ``flops`` (dots and convolutions, cheapest branches),
    ``flops_max_branch``, ``flops_elementwise`` (cheapest branches),
    ``flops_xla_convention``, ``flops_by_dtype``, ``flops_by_primitive``, ``conds``,
    ``while_loops``."""
    return {
        'flops': self.flops,
        'flops_max_branch': self.flops_max_branch,
        'flops_elementwise': self.elementwise,
        'flops_xla_convention': self.flops_xla_convention,
        'flops_by_dtype': dict(self.by_dtype),
        'flops_by_primitive': dict(self.by_primitive),
        'conds': self.conds,
        'while_loops': self.while_loops,
    }


def _operand_key(eqn) -> str:
  """The dtype a dot/conv computes in, ``:highest`` for float32 at HIGHEST precision."""
  import jax.numpy as jnp

  dtypes = [v.aval.dtype for v in eqn.invars[:2]]
  dtype = jnp.promote_types(*dtypes) if len(dtypes) == 2 else dtypes[0]
  key = np.dtype(dtype).name
  precision = eqn.params.get('precision')
  precisions = precision if isinstance(precision, (tuple, list)) else (precision,)
  if key == 'float32' and any(p is not None and 'HIGHEST' in str(p) for p in precisions):
    key += ':highest'
  return key


def _jaxprs(value):
  """The (open) jaxprs held by an equation parameter."""
  values = value if isinstance(value, (tuple, list)) else (value,)
  for v in values:
    if isinstance(v, jex_core.ClosedJaxpr):
      yield v.jaxpr
    elif isinstance(v, jex_core.Jaxpr):
      yield v


def _mesh_size(mesh) -> int:
  try:
    return int(mesh.size)
  except (AttributeError, TypeError):
    try:
      return int(math.prod(dict(mesh.shape).values()))
    except Exception:  # pylint: disable=broad-except
      return 1


def count_jaxpr(jaxpr) -> Count:
  """FLOPs of an open or closed jaxpr (see the module docstring)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = Count()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total.add_op(
          name,
          _operand_key(eqn),
          dot_general_flops(
              eqn.invars[0].aval.shape,
              eqn.outvars[0].aval.shape,
              eqn.params['dimension_numbers'],
          ),
      )
    elif name == 'conv_general_dilated':
      total.add_op(
          name,
          _operand_key(eqn),
          conv_flops(
              eqn.invars[0].aval.shape,
              eqn.invars[1].aval.shape,
              eqn.outvars[0].aval.shape,
              **eqn.params,
          ),
      )
    elif name == 'cond':
      branches = [count_jaxpr(b) for b in eqn.params['branches']]
      cheap = min(branches, key=lambda c: c.flops)
      dear = max(branches, key=lambda c: c.flops_max_branch)
      total.add(cheap, max_only=dear)
      total.conds += 1
    elif name == 'scan':
      total.add(count_jaxpr(eqn.params['jaxpr']), times=int(eqn.params['length']))
    elif name == 'while':
      for key in ('cond_jaxpr', 'body_jaxpr'):
        total.add(count_jaxpr(eqn.params[key]))
      total.while_loops += 1
    elif name in ('custom_jvp_call', 'custom_vjp_call', 'custom_vjp_call_jaxpr'):
      # The primal computation only: the jvp / fwd / bwd rules are not jaxprs here
      # (differentiation has already replaced the calls it went through).
      for key in ('call_jaxpr', 'fun_jaxpr'):
        if key in eqn.params:
          for sub in _jaxprs(eqn.params[key]):
            total.add(count_jaxpr(sub))
          break
    else:
      subs = [sub for value in eqn.params.values() for sub in _jaxprs(value)]
      if not subs:
        flops = elementwise_flops(eqn)
        total.elementwise += flops
        total.elementwise_max += flops
      times = _mesh_size(eqn.params['mesh']) if name == 'shard_map' else 1
      for sub in subs:  # jit, closed_call, remat, shard_map, ...
        total.add(count_jaxpr(sub), times=times)
  return total


def dce(closed_jaxpr):
  """The jaxpr without equations whose results are unused (as XLA would prune them)."""
  try:
    from jax._src.interpreters import partial_eval as pe

    jaxpr, _ = pe.dce_jaxpr(
        closed_jaxpr.jaxpr, [True] * len(closed_jaxpr.jaxpr.outvars), instantiate=True
    )
    return jex_core.ClosedJaxpr(jaxpr, closed_jaxpr.consts)
  except Exception:  # pylint: disable=broad-except  (internal API moved: count as is)
    return closed_jaxpr


def step_jaxpr(fn, *args, **kwargs):
  """The closed jaxpr of ``fn(*args)`` (a ``jax.jit`` object or a function), DCE'd.

  ``args`` may be ``jax.ShapeDtypeStruct`` s; ``jax.jit`` objects are traced with their
  own options (``.trace``), anything else through ``jax.make_jaxpr``.
  """
  if hasattr(fn, 'trace'):
    closed = fn.trace(*args, **kwargs).jaxpr
  else:
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
  return dce(closed)


def analytic_flops(fn, *args, **kwargs) -> Count:
  """The backend-independent FLOP count of ``fn(*args)`` (module docstring)."""
  return count_jaxpr(step_jaxpr(fn, *args, **kwargs))


def _on_cpu(tree):
  """Shapes and dtypes of ``tree``, placed on the CPU device."""
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=cpu), tree
  )


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {
      'flops': float(cost.get('flops', 0.0)),
      'bytes_accessed': float(cost.get('bytes accessed', 0.0)),
  }


def cpu_lowering_flops_many(fns: dict, *args, donate_argnums=()) -> dict:
  """``cpu_lowering_flops`` of several functions of the same arguments: traced and
  lowered one after another, compiled side by side in threads (XLA compiles outside
  the GIL). Returns name -> ``{'flops', 'bytes_accessed', 'compile_s'}``; compile_s is
  the wall time of all the compiles together."""
  import concurrent.futures
  import time

  t0 = time.perf_counter()
  cpu_args = _on_cpu(args)
  lowered = {
      name: jax.jit(fn, donate_argnums=donate_argnums).lower(*cpu_args)
      for name, fn in fns.items()
  }
  with concurrent.futures.ThreadPoolExecutor(max(1, len(lowered))) as pool:
    futures = {name: pool.submit(low.compile) for name, low in lowered.items()}
    costs = {name: _cost(f.result()) for name, f in futures.items()}
  seconds = time.perf_counter() - t0
  return {name: {**c, 'compile_s': seconds} for name, c in costs.items()}


def cpu_lowering_flops(fn, *args, donate_argnums=()) -> dict:
  """XLA's cost analysis of ``fn(*args)`` compiled for the CPU backend.

  ``fn`` is the plain (unjitted) function; it is traced here, on whatever the default
  backend is (so an accelerator machine counts the program it runs on the
  accelerator), and lowered for the CPU device because its arguments are placed there
  (``jax.jit``'s ``backend='cpu'`` is deprecated). Returns ``{'flops',
  'bytes_accessed', 'compile_s'}``.
  """
  import time

  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*_on_cpu(args)).compile()
  return {**_cost(compiled), 'compile_s': time.perf_counter() - t0}


# ---------------------------------------------------------------- optimised HLO


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


# ---------------------------------------------------------------- device peaks

# Dense (no structured sparsity) peak TFLOP/s per chip, from the vendors' datasheets:
# (regex on the lowercased device_kind, first match wins) -> {'bf16', 'tf32', 'fp32'}.
# 'tf32' is what XLA runs float32 dots and convolutions at on NVIDIA tensor cores with
# the default precision; 'fp32' (CUDA cores) is for Precision.HIGHEST. The datasheets
# quote tensor-core numbers "with sparsity"; dense is half of that.
# * NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100/, "H100 SXM" column):
#   BF16 1,979 / TF32 989 TFLOPS with sparsity, FP32 67 TFLOPS; "H100 PCIe": BF16 1,513,
#   TF32 756, FP32 51; "H100 NVL": BF16 1,671, TF32 835, FP32 60.
# * NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200/): H200 SXM as H100 SXM
#   (BF16 1,979, TF32 989, FP32 67); H200 NVL BF16 1,671, TF32 835, FP32 60.
# * NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100/, SXM and PCIe alike):
#   BF16 312, TF32 156 dense (624 / 312 with sparsity), FP32 19.5.
# * NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4/): BF16 242, TF32 120 with
#   sparsity, FP32 30.3.
# * Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e,
#   v5p, v6e), peak bf16 compute per chip: v4 275, v5e 197, v5p 459, v6e (Trillium)
#   918 TFLOP/s. No float32 peak is published: the MXU multiplies bf16, and JAX's
#   default precision runs float32 dots and convolutions as one bf16 pass, so float32
#   uses the bf16 peak ('tf32'); Precision.HIGHEST (6 passes) gets a sixth of it.
PEAK_TFLOPS = (
    (r'h100.*pcie', {'bf16': 756.5, 'tf32': 378.0, 'fp32': 51.0}),
    (r'h100.*nvl', {'bf16': 835.5, 'tf32': 417.5, 'fp32': 60.0}),
    (r'h200.*nvl', {'bf16': 835.5, 'tf32': 417.5, 'fp32': 60.0}),
    (r'h100', {'bf16': 989.5, 'tf32': 494.5, 'fp32': 67.0}),  # SXM ('80GB HBM3')
    (r'h200', {'bf16': 989.5, 'tf32': 494.5, 'fp32': 67.0}),  # SXM
    (r'a100', {'bf16': 312.0, 'tf32': 156.0, 'fp32': 19.5}),
    (r'\bl4\b', {'bf16': 121.0, 'tf32': 60.0, 'fp32': 30.3}),  # not L40/L40S
    (r'tpu v4', {'bf16': 275.0, 'tf32': 275.0, 'fp32': 275.0 / 6}),
    (r'tpu v5 ?(lite|e)\b', {'bf16': 197.0, 'tf32': 197.0, 'fp32': 197.0 / 6}),
    (r'tpu v5', {'bf16': 459.0, 'tf32': 459.0, 'fp32': 459.0 / 6}),  # 'TPU v5', v5p
    (r'tpu v6', {'bf16': 918.0, 'tf32': 918.0, 'fp32': 918.0 / 6}),  # v6e ('v6 lite')
)


def device_peaks(device_kind: str | None = None) -> dict | None:
  """The peak row (TFLOP/s) of ``device_kind`` (default: ``jax.devices()[0]``'s), or
  None for a device without one (a CPU)."""
  if device_kind is None:
    device_kind = jax.devices()[0].device_kind
  for pattern, peaks in PEAK_TFLOPS:
    if re.search(pattern, device_kind.lower()):
      return {'device_kind': device_kind, **peaks}
  return None


def _peak_class(dtype_key: str) -> str:
  if dtype_key in ('bfloat16', 'float16') or dtype_key.startswith(('float8', 'int8')):
    return 'bf16'
  if dtype_key == 'float32:highest':
    return 'fp32'
  if dtype_key == 'float32':
    default = str(jax.config.jax_default_matmul_precision or '').lower()
    return 'fp32' if default in ('highest', 'float32') else 'tf32'
  return 'fp32'


def peak_seconds(by_dtype: dict, peaks: dict | None) -> float | None:
  """Seconds the products of ``by_dtype`` take at the device's peaks (mixed precision:
  each dtype at its own peak); None without a peak row."""
  if not peaks:
    return None
  return sum(flops / (peaks[_peak_class(key)] * 1e12) for key, flops in by_dtype.items())


def peak_fields(count: dict, step_s: float | None, peaks: dict | None) -> dict:
  """``tflops_per_s``, ``peak_tflops`` and ``fraction_of_peak`` of a timed step.

  ``peak_tflops`` is the step's effective peak: its FLOPs over the time they take at
  the peak of each operand dtype (the bf16 peak for bfloat16, TF32 for float32 at the
  default precision). ``fraction_of_peak`` = achieved / effective peak.
  """
  flops = count.get('flops')
  by_dtype = count.get('flops_by_dtype') or {}
  ideal = peak_seconds(by_dtype, peaks)
  out = {
      'peak_tflops': (flops / ideal / 1e12) if ideal else None,
      'peak_classes': sorted({_peak_class(k) for k in by_dtype}) if peaks else None,
      'tflops_per_s': None,
      'fraction_of_peak': None,
  }
  if step_s and flops:
    out['tflops_per_s'] = flops / step_s / 1e12
    if ideal:
      out['fraction_of_peak'] = ideal / step_s
  return out


# ---------------------------------------------------------------- executed branches

_INLINED = ('pjit', 'jit', 'closed_call', 'core_call')


def _inlined(eqn):
  """The closed jaxpr of a call ``with_branch_indices`` evaluates equation by equation
  (a nested ``jax.jit``), else None."""
  if eqn.primitive.name not in _INLINED:
    return None
  sub = eqn.params.get('jaxpr', eqn.params.get('call_jaxpr'))
  if isinstance(sub, jex_core.Jaxpr):
    return jex_core.ClosedJaxpr(sub, ())
  return sub if isinstance(sub, jex_core.ClosedJaxpr) else None


def branch_table(closed) -> list:
  """Dots and convolutions of every branch of each conditional that
  ``with_branch_indices`` reports, in its order: those of the jaxpr itself and of the
  jitted calls in it (a conditional nested in another counts as its cheapest branch)."""
  table = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      sub = _inlined(eqn)
      if sub is not None:
        walk(sub.jaxpr)
      elif eqn.primitive.name == 'cond':
        table.append([count_jaxpr(b).flops for b in eqn.params['branches']])

  walk(getattr(closed, 'jaxpr', closed))
  return table


def _evaluate(jaxpr, consts, args, indices: list):
  """``jaxpr`` applied to ``args`` primitive by primitive (traceable: under ``jax.jit``
  it builds the same program), appending the branch index of every conditional."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  for v, x in zip(list(jaxpr.constvars) + list(jaxpr.invars), list(consts) + list(args)):
    env[v] = x
  for eqn in jaxpr.eqns:
    values = [read(v) for v in eqn.invars]
    sub = _inlined(eqn)
    if sub is not None:
      outs = _evaluate(sub.jaxpr, sub.consts, values, indices)
    else:
      if eqn.primitive.name == 'cond':
        indices.append(values[0])
      bound = eqn.primitive.get_bind_params(eqn.params)  # (subfuns, params) in old jax
      subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*subfuns, *values, **params)
      outs = outs if eqn.primitive.multiple_results else [outs]
    for v, x in zip(eqn.outvars, outs):
      if not isinstance(v, jex_core.DropVar):
        env[v] = x
  return [read(v) for v in jaxpr.outvars]


def with_branch_indices(fn, *example_args):
  """``(run, count, table)`` for a step ``fn``: ``run(*args)`` returns ``(fn(*args),
  [the branch index each conditional took])`` and can be jitted (the same program plus
  one scalar per conditional); ``count`` is the step's ``Count``; ``table`` its
  ``branch_table``. ``example_args`` may be ``jax.ShapeDtypeStruct`` s."""
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
  closed = dce(closed)
  out_tree = jax.tree.structure(out_shape)

  def run(*args):
    indices = []
    outs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args), indices)
    return jax.tree.unflatten(out_tree, outs), indices

  return run, count_jaxpr(closed), branch_table(closed)


def executed_flops(count: Count, table: list, indices) -> float:
  """Dots and convolutions of one step whose conditional i took branch ``indices[i]``
  (``table``: ``branch_table``; conditionals it does not list at their cheapest, as
  ``count.flops`` has them all)."""
  extra = sum(branches[int(i)] - min(branches) for branches, i in zip(table, indices))
  return count.flops + extra
