"""A per-layer roofline floor for a JAX program, read off its jaxpr (see benchmarks/NOTES.md).

Every convolution, matrix product and pooling window of the traced program is one "layer"
(forward and backward alike: the jaxpr of a train step holds the backward convolutions
explicitly); a layer inside a `scan` (`lax.map` over slice chunks, a GRU over slices) counts
`length` times. A layer's floor is max(FLOPs / matmul peak of its dtype, HBM bytes /
bandwidth), where its bytes are its operands read once and its result written once; the
program's floor is the sum over layers. Elementwise work, normalisation and reductions are
taken as fused into the neighbouring layers (no bytes of their own): the floor is optimistic,
so `roofline_fraction` = floor / measured time is a lower bound on how close a figure is.

Why a walker and not XLA: XLA's cost analysis gives totals only, and counts a `while` body
once whatever its trip count (benchmarks/common.py `xla_flops`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import numpy as np

CONV = "conv_general_dilated"
DOT = "dot_general"
# Pooling windows and their gradients: bytes only (a max or a sum per tap is not matmul work).
WINDOWED = ("reduce_window_max", "reduce_window_min", "reduce_window_sum", "reduce_window",
            "select_and_scatter_add", "select_and_scatter", "select_and_gather_add")


@dataclasses.dataclass
class Layer:
  """One convolution / matrix product / pooling window, `count` times per call."""
  kind: str          # "conv", "dot" or "pool"
  flops: float       # per execution
  bytes: float       # per execution: operands read once + result written once
  dtype: str         # operand dtype (picks the peak)
  count: int = 1
  shape: tuple = ()  # result shape, for reading a breakdown


def _nbytes(aval) -> float:
  return float(np.prod(aval.shape, dtype=np.float64)) * np.dtype(aval.dtype).itemsize


def _size(aval) -> float:
  return float(np.prod(aval.shape, dtype=np.float64))


def _sub_jaxprs(params: Mapping[str, Any]) -> Iterable[Any]:
  """Nested jaxprs of a higher-order primitive (jit, custom_jvp/vjp, remat, cond, while)."""
  for value in params.values():
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
      inner = getattr(item, "jaxpr", item)    # ClosedJaxpr → Jaxpr
      if hasattr(inner, "eqns"):
        yield inner


def _conv_flops(eqn) -> float:
  """2 × output elements × (kernel taps × input features per group); a backward-data conv
  (input dilated by the forward stride) does 1 / prod(lhs_dilation) of the dilated taps."""
  rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
  taps = _size(rhs) / rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
  dil = float(np.prod(eqn.params.get("lhs_dilation") or (1,)))
  return 2.0 * _size(out) * taps / dil


def _dot_flops(eqn) -> float:
  lhs = eqn.invars[0].aval
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  k = float(np.prod([lhs.shape[d] for d in lhs_contract], dtype=np.float64)) if lhs_contract else 1.0
  return 2.0 * _size(eqn.outvars[0].aval) * k


def _io_bytes(eqn) -> float:
  ins = sum(_nbytes(v.aval) for v in eqn.invars if hasattr(v.aval, "shape"))
  return ins + sum(_nbytes(v.aval) for v in eqn.outvars)


def walk(jaxpr, count: int = 1, out: Optional[list[Layer]] = None) -> list[Layer]:
  """The layers of `jaxpr` (a Jaxpr), each with its execution count."""
  out = [] if out is None else out
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == CONV:
      out.append(Layer("conv", _conv_flops(eqn), _io_bytes(eqn),
                       str(eqn.invars[0].aval.dtype), count, tuple(eqn.outvars[0].aval.shape)))
    elif name == DOT:
      out.append(Layer("dot", _dot_flops(eqn), _io_bytes(eqn), str(eqn.invars[0].aval.dtype),
                       count, tuple(eqn.outvars[0].aval.shape)))
    elif name in WINDOWED:
      out.append(Layer("pool", 0.0, _io_bytes(eqn), str(eqn.invars[0].aval.dtype), count,
                       tuple(eqn.outvars[0].aval.shape)))
    elif name == "scan":
      walk(eqn.params["jaxpr"].jaxpr, count * int(eqn.params["length"]), out)
    elif name == "cond":
      # The dearest branch (a floor must cover whichever branch runs).
      branches = [walk(b.jaxpr, count) for b in eqn.params["branches"]]
      out.extend(max(branches, key=lambda ls: sum(l.flops * l.count for l in ls)))
    else:   # jit, custom_jvp/vjp, remat, while (body counted once: unknown trip count)
      for sub in _sub_jaxprs(eqn.params):
        walk(sub, count, out)
  return out


def layers(fn: Callable, *args, **kwargs) -> list[Layer]:
  """Traces `fn(*args)` (no compile, no device memory) and lists its layers."""
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  return walk(closed.jaxpr)


def total_flops(ls: Iterable[Layer]) -> float:
  return float(sum(l.flops * l.count for l in ls))


def total_bytes(ls: Iterable[Layer]) -> float:
  return float(sum(l.bytes * l.count for l in ls))


def peak_for(dtype: str, peaks: Mapping[str, float]) -> Optional[float]:
  """The matmul peak for a layer's operand dtype: bf16/fp16 layers at the bf16 peak, float32
  at the float32 (TF32 on a GPU) peak; integer layers (none in these models) at the bf16 one."""
  if dtype in ("bfloat16", "float16"):
    return peaks.get("bfloat16")
  if dtype == "float32":
    return peaks.get("float32")
  return peaks.get("bfloat16") or peaks.get("float32")


def floor_seconds(ls: Iterable[Layer], peaks: Mapping[str, float],
                  bandwidth: Optional[float]) -> Optional[float]:
  """Σ_layers count × max(FLOPs / peak(dtype), bytes / bandwidth); None without the ceilings."""
  if not bandwidth or not peaks:
    return None
  total = 0.0
  for l in ls:
    peak = peak_for(l.dtype, peaks)
    if not peak:
      return None
    total += l.count * max(l.flops / peak, l.bytes / bandwidth)
  return total


def summary(ls: list[Layer], peaks: Mapping[str, float], bandwidth: Optional[float]) -> dict:
  """What a record keeps of the model: totals, the floor, and how much of it is memory-bound."""
  floor = floor_seconds(ls, peaks, bandwidth)
  mem_bound_s = None
  if floor is not None:
    mem_bound_s = sum(l.count * l.bytes / bandwidth for l in ls
                      if l.bytes / bandwidth > l.flops / peak_for(l.dtype, peaks))
  return {"layers": int(sum(l.count for l in ls)), "walker_flops": total_flops(ls),
          "walker_bytes": total_bytes(ls), "floor_s": floor,
          "floor_memory_bound_s": mem_bound_s,
          "floor_compute_s": None if floor is None else floor - mem_bound_s}


def fraction(floor_s: Optional[float], measured_s: Optional[float]) -> Optional[float]:
  if not floor_s or not measured_s or math.isnan(measured_s):
    return None
  return floor_s / measured_s
