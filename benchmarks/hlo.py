"""What a compiled program does per call, read from its optimized HLO text (`compiled.as_text()`).

`analyze(text)` walks the entry computation as the runtime does and counts, per call:
- kernels: every instruction of an executed computation that launches work on the device —
  fusions (Triton gemm fusions included), custom-calls (cuBLAS gemms, cuDNN convolutions),
  copies, collectives and unfused ops; not parameters, constants, tuples, bitcasts or control.
  A `while` runs its body `known_trip_count` times (XLA writes it in the loop's
  backend_config); a loop without one is counted once and listed in `unknown_trip_counts`
  (its condition then runs too, once more than the body). A `conditional` counts its costliest
  branch; `call` and async wrappers count what they call.
- flops: 2 × multiply-adds of every dot and convolution (inside fusions too; elementwise
  arithmetic is not counted). Dot: 2 · |result| · Π lhs contracting dims. Convolution: 2 ·
  |forward output| · |filter| / output features (padded taps counted, as implicit-GEMM
  convolution computes them); cuDNN custom-calls are read as the forward convolution they
  compute (backward-input: operand 0 is the forward output; backward-filter: operand 1).
- bytes: per kernel, every operand read once and the result written once, in their dtypes
  (logical sizes; TPU tile padding ignored). A fusion operand read only through
  (dynamic-)slices or gathers counts the sliced bytes; the buffer a dynamic-update-slice
  writes into in place counts the update's bytes only; cuBLAS/cuDNN scratch results are
  skipped.
- collective_bytes: the operand bytes of every collective (the payload each device sends).

`floor(analysis, peaks, bandwidth)`: Σ over kernels of max(flops / peak of the dot's dtype,
bytes / bandwidth) plus collective bytes over the interconnect — a per-kernel roofline floor
that ignores launch gaps and assumes every kernel at its ceiling.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
from typing import Any, Iterable, Mapping, Optional

# Bytes per element of XLA's primitive types.
DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
    "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3b11fnuz": 1,
    "f8e4m3": 1, "f8e3m4": 1, "f8e8m0fnu": 1, "f4e2m1fn": 0.5, "token": 0,
}
# Instructions that launch nothing themselves.
NO_KERNEL = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "opt-barrier",
    "after-all", "add-dependency", "domain", "partition-id", "replica-id", "iota-index",
    "async-done", "async-update", "all-reduce-done", "all-gather-done", "collective-permute-done",
    "copy-done", "send-done", "recv-done", "get-dimension-size", "set-dimension-size",
}
CONTROL = {"while", "conditional", "call", "async-start"}
COLLECTIVES = {
    "all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
    "collective-broadcast", "ragged-all-to-all", "all-reduce-start", "all-gather-start",
    "collective-permute-start",
}
# Ops a fusion parameter may feed while only part of it is read.
_SLICING = {"dynamic-slice", "slice", "gather"}

_SHAPE_LEAF = re.compile(r"\b([a-z]+[0-9a-z]*)\[([^\]]*)\]")
_COMMENT = re.compile(r"/\*.*?\*/")


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str          # the result shape as printed (a tuple in parentheses, or one array)
  opcode: str
  operands: list[str]
  attrs: str          # everything after the operand list
  operand_text: str = ""   # the operand list as printed (a parameter's number, a constant)

  @property
  def parameter_number(self) -> int:
    return int(self.operand_text) if self.opcode == "parameter" else -1

  def attr(self, key: str) -> Optional[str]:
    """The value of `key=…` (a balanced {…}, "…" or one token), or None."""
    m = re.search(r"(?:^|[\s,])" + re.escape(key) + r"=", self.attrs)
    if not m:
      return None
    rest = self.attrs[m.end():]
    if rest.startswith("{"):
      return rest[:_balanced(rest, 0, "{", "}") + 1]
    if rest.startswith('"'):
      end = rest.index('"', 1)
      return rest[1:end]
    return re.match(r"[^\s,]*", rest).group(0)

  def called(self, key: str) -> list[str]:
    value = self.attr(key)
    return re.findall(r"%?([\w.\-]+)", value.strip("{}")) if value else []

  def backend_config(self) -> dict:
    value = self.attr("backend_config")
    if not value or not value.startswith("{"):
      return {}
    try:
      return json.loads(value)
    except ValueError:
      return {}

  def op_name(self) -> str:
    m = re.search(r'op_name="([^"]*)"', self.attrs)
    return m.group(1) if m else ""


@dataclasses.dataclass
class Computation:
  name: str
  entry: bool
  instructions: list[Instruction]

  def __post_init__(self):
    self.by_name = {i.name: i for i in self.instructions}
    self.users: dict[str, list[Instruction]] = collections.defaultdict(list)
    for ins in self.instructions:
      for op in ins.operands:
        self.users[op].append(ins)

  @property
  def root(self) -> Instruction:
    return getattr(self, "_root", None) or self.instructions[-1]


def _balanced(text: str, start: int, open_: str, close: str) -> int:
  """Index of the bracket closing the one at `start` (quotes respected)."""
  depth, i, quoted = 0, start, False
  while i < len(text):
    ch = text[i]
    if ch == '"' and text[i - 1] != "\\":
      quoted = not quoted
    elif not quoted:
      if ch == open_:
        depth += 1
      elif ch == close:
        depth -= 1
        if depth == 0:
          return i
    i += 1
  raise ValueError(f"unbalanced {open_!r} in HLO text: {text[start:start + 80]!r}")


def parse_instruction(line: str) -> tuple[Instruction, bool]:
  """One instruction line → (Instruction, is_root)."""
  m = re.match(r"\s*(ROOT\s+)?%?([^\s=]+)\s*=\s*", line)
  if not m:
    raise ValueError(f"not an HLO instruction: {line[:80]!r}")
  rest = line[m.end():]
  if rest.startswith("("):
    end = _balanced(rest, 0, "(", ")")
    shape, rest = rest[:end + 1], rest[end + 1:].lstrip()
  else:
    shape, _, rest = rest.partition(" ")
  op = re.match(r"([\w\-]+)\(", rest)
  if not op:
    raise ValueError(f"no opcode in HLO instruction: {line[:120]!r}")
  close = _balanced(rest, op.end() - 1, "(", ")")
  operands = re.findall(r"%([\w.\-]+)", rest[op.end():close])
  attrs = rest[close + 1:].lstrip(", ")
  return (Instruction(m.group(2), shape, op.group(1), operands, attrs,
                      rest[op.end():close].strip()), bool(m.group(1)))


def parse_module(text: str) -> tuple[dict[str, Computation], str]:
  """HLO module text → ({name: Computation}, entry name)."""
  comps: dict[str, Computation] = {}
  entry = None
  current: Optional[tuple[str, bool, list, list]] = None
  for raw in text.splitlines():
    line = _COMMENT.sub("", raw).rstrip()
    if current is None:
      m = re.match(r"(ENTRY\s+)?%?([\w.\-]+)\s.*\{$", line)
      if m and not line.startswith((" ", "HloModule")):
        current = (m.group(2), bool(m.group(1)), [], [])
      continue
    if line.strip() == "}":
      name, is_entry, body, root = current
      comp = Computation(name, is_entry, body)
      if root:
        comp._root = root[0]
      comps[name] = comp
      if is_entry:
        entry = name
      current = None
      continue
    if not line.strip():
      continue
    ins, is_root = parse_instruction(line)
    current[2].append(ins)
    if is_root:
      current[3].append(ins)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return comps, entry


def shape_leaves(shape: str) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, dims) of every array in a printed shape (tuples flattened; layouts ignored)."""
  shape = re.sub(r"\{[^{}]*\}", "", _COMMENT.sub("", shape))
  out = []
  for dtype, dims in _SHAPE_LEAF.findall(shape):
    if dtype not in DTYPE_BYTES:
      continue
    out.append((dtype, tuple(int(d.lstrip("<=")) for d in dims.split(",") if d.strip())))
  return out


def shape_bytes(shape: str) -> float:
  return sum(DTYPE_BYTES[d] * math.prod(dims) for d, dims in shape_leaves(shape))


def _dims(shape: str) -> tuple[int, ...]:
  leaves = shape_leaves(shape)
  return leaves[0][1] if leaves else ()


def _ints(value: Optional[str]) -> list[int]:
  return [int(v) for v in re.findall(r"-?\d+", value or "")]


# ----------------------------------------------------------------------------- FLOPs


def dot_flops(lhs_shape: str, result_shape: str, lhs_contracting: Iterable[int]) -> float:
  lhs = _dims(lhs_shape)
  return 2.0 * math.prod(_dims(result_shape)) * math.prod(lhs[d] for d in lhs_contracting)


def conv_flops(output_dims: tuple[int, ...], filter_dims: tuple[int, ...],
               dim_labels: str) -> float:
  """2 · |output| · |filter| / output features (filter labelled by dim_labels' `o`)."""
  rhs = dim_labels.split("->")[0].split("_")[1]
  out_features = filter_dims[rhs.index("o")]
  return 2.0 * math.prod(output_dims) * math.prod(filter_dims) / out_features


def _operand_shape(comp: Computation, name: str) -> str:
  ins = comp.by_name.get(name)
  return ins.shape if ins is not None else ""


def instruction_flops(ins: Instruction, comp: Computation) -> float:
  """FLOPs of one dot / convolution / gemm or convolution custom-call (0 for anything else)."""
  if ins.opcode == "dot":
    return dot_flops(_operand_shape(comp, ins.operands[0]), ins.shape,
                     _ints(ins.attr("lhs_contracting_dims")))
  if ins.opcode == "convolution":
    return conv_flops(_dims(ins.shape), _dims(_operand_shape(comp, ins.operands[1])),
                      ins.attr("dim_labels") or "")
  if ins.opcode == "custom-call":
    target = ins.attr("custom_call_target") or ""
    if "conv" in target.lower():
      labels = ins.attr("dim_labels") or ""
      result = _dims(ins.shape)
      op0, op1 = (_dims(_operand_shape(comp, n)) for n in ins.operands[:2])
      if "BackwardInput" in target:     # dX = conv^T(dY, W): forward output = operand 0
        return conv_flops(op0, op1, labels)
      if "BackwardFilter" in target:    # dW = conv^T(X, dY): forward output = operand 1
        return conv_flops(op1, result, labels)
      return conv_flops(result, op1, labels)
    if "gemm" in target or "matmul" in target:
      cfg = ins.backend_config().get("gemm_backend_config", {})
      dn = cfg.get("dot_dimension_numbers", {})
      contracting = [int(v) for v in dn.get("lhs_contracting_dimensions", [])]
      return dot_flops(_operand_shape(comp, ins.operands[0]), ins.shape, contracting)
  return 0.0


def computation_flops(comps: Mapping[str, Computation], name: str) -> tuple[float, str]:
  """(FLOPs, dtype of the largest dot's operands) of a fused/called computation, recursively."""
  comp = comps[name]
  total, best, dtype = 0.0, 0.0, ""
  for ins in comp.instructions:
    f = instruction_flops(ins, comp)
    if f:
      total += f
      if f > best:
        best, dtype = f, _leaf_dtype(_operand_shape(comp, ins.operands[0]))
    for key in ("calls", "to_apply"):
      for sub in ins.called(key):
        if sub in comps and ins.opcode in ("fusion", "call", "custom-call"):
          f, d = computation_flops(comps, sub)
          total += f
          if f > best:
            best, dtype = f, d
  return total, dtype


def _leaf_dtype(shape: str) -> str:
  leaves = shape_leaves(shape)
  return leaves[0][0] if leaves else ""


# ----------------------------------------------------------------------------- bytes


def _param_read_bytes(fused: Computation, index: int, full: float) -> float:
  """Bytes a fusion reads of its parameter `index`: the slices taken when it is only sliced,
  nothing when it is only the in-place buffer of dynamic-update-slices, else all of it."""
  param = next((i for i in fused.instructions if i.parameter_number == index), None)
  if param is None:
    return full
  names = _aliases(fused, param.name)
  users = _through_bitcasts(fused, fused.users.get(param.name, []))
  if not users:
    return 0.0
  if all(u.opcode == "dynamic-update-slice" and u.operands[0] in names for u in users):
    return 0.0
  if all(u.opcode in _SLICING and u.operands[0] in names for u in users):
    return sum(shape_bytes(u.shape) for u in users)
  return full


def _aliases(comp: Computation, name: str) -> set[str]:
  """`name` and the bitcasts of it."""
  out, todo = {name}, [name]
  while todo:
    for u in comp.users.get(todo.pop(), []):
      if u.opcode == "bitcast" and u.name not in out:
        out.add(u.name)
        todo.append(u.name)
  return out


def _through_bitcasts(comp: Computation, users: list[Instruction]) -> list[Instruction]:
  out = []
  for u in users:
    if u.opcode == "bitcast":
      out.extend(_through_bitcasts(comp, comp.users.get(u.name, [])))
    else:
      out.append(u)
  return out


def _written_bytes(fused: Computation, root: Instruction) -> float:
  """Bytes a fusion writes: a dynamic-update-slice root writes its update only."""
  if root.opcode == "bitcast" and root.operands and root.operands[0] in fused.by_name:
    return _written_bytes(fused, fused.by_name[root.operands[0]])
  if root.opcode == "tuple":
    return sum(_written_bytes(fused, fused.by_name[o]) if o in fused.by_name else 0.0
               for o in root.operands)
  if root.opcode == "dynamic-update-slice":
    return shape_bytes(fused.by_name[root.operands[1]].shape)
  return shape_bytes(root.shape)


def kernel_bytes(ins: Instruction, comp: Computation,
                 comps: Mapping[str, Computation]) -> float:
  """Bytes one launch of `ins` reads and writes in device memory."""
  operand_bytes = [shape_bytes(_operand_shape(comp, o)) for o in ins.operands]
  if ins.opcode == "fusion":
    called = ins.called("calls")
    fused = comps.get(called[0]) if called else None
    if fused is not None:
      read = sum(_param_read_bytes(fused, i, b) for i, b in enumerate(operand_bytes))
      return read + _written_bytes(fused, fused.root)
  if ins.opcode == "custom-call":
    leaves = shape_leaves(ins.shape)
    if ins.shape.startswith("(") and len(leaves) > 1 and leaves[-1][0] in ("u8", "s8"):
      leaves = leaves[:-1]   # cuBLAS / cuDNN workspace
    out = sum(DTYPE_BYTES[d] * math.prod(dims) for d, dims in leaves)
    return sum(operand_bytes) + out
  return sum(operand_bytes) + shape_bytes(ins.shape)


# ----------------------------------------------------------------------------- the walk


@dataclasses.dataclass
class Kernel:
  name: str
  kind: str          # gemm | conv | fusion | copy | collective | custom-call | other
  count: int         # launches per call of the program
  flops: float       # per launch
  bytes: float       # per launch
  dtype: str         # operand dtype of its largest dot/convolution ("" without one)
  collective_bytes: float
  op_name: str


def _classify(ins: Instruction, comps: Mapping[str, Computation], flops: float) -> str:
  if ins.opcode in COLLECTIVES:
    return "collective"
  if ins.opcode in ("copy", "copy-start"):
    return "copy"
  if ins.opcode == "custom-call":
    target = (ins.attr("custom_call_target") or "").lower()
    if "conv" in target:
      return "conv"
    if "gemm" in target or "matmul" in target:
      return "gemm"
    return "custom-call"
  if ins.opcode == "fusion":
    body = _all_opcodes(comps, ins.called("calls"))
    if "convolution" in body:
      return "conv"
    if "dot" in body or flops:
      return "gemm"
    return "fusion"
  return "other"


def _all_opcodes(comps: Mapping[str, Computation], names: list[str]) -> set[str]:
  out: set[str] = set()
  for name in names:
    comp = comps.get(name)
    if comp is None:
      continue
    for ins in comp.instructions:
      out.add(ins.opcode)
      if ins.opcode in ("fusion", "call"):
        out |= _all_opcodes(comps, ins.called("calls") + ins.called("to_apply"))
  return out


def trip_count(ins: Instruction) -> Optional[int]:
  n = ins.backend_config().get("known_trip_count", {}).get("n")
  return int(n) if n is not None else None


@dataclasses.dataclass
class Analysis:
  kernels: list[Kernel]
  fusions: int                # fusion instructions in executed computations (static)
  unknown_trip_counts: list[str]

  @property
  def launches(self) -> int:
    return sum(k.count for k in self.kernels)

  def launches_of(self, kind: str) -> int:
    return sum(k.count for k in self.kernels if k.kind == kind)

  @property
  def flops(self) -> float:
    return sum(k.count * k.flops for k in self.kernels)

  @property
  def bytes_accessed(self) -> float:
    return sum(k.count * k.bytes for k in self.kernels)

  @property
  def collective_bytes(self) -> float:
    return sum(k.count * k.collective_bytes for k in self.kernels)


def analyze(text: str) -> Analysis:
  """Kernels per call of the HLO module `text` (see the module docstring)."""
  comps, entry = parse_module(text)
  found: dict[str, Kernel] = {}
  order: list[str] = []
  fusions: set[str] = set()
  unknown: list[str] = []

  def walk(name: str, mult: int) -> None:
    comp = comps[name]
    for ins in comp.instructions:
      op = ins.opcode
      if op == "while":
        n = trip_count(ins)
        body, cond = ins.called("body"), ins.called("condition")
        if n is None:
          unknown.append(ins.name)
          walk(cond[0], mult * 2)
          n = 1
        walk(body[0], mult * n)
      elif op == "conditional":
        branches = ins.called("branch_computations") or (
            ins.called("true_computation") + ins.called("false_computation"))
        if branches:
          costliest = max(branches, key=lambda b: _static_kernels(comps, b))
          walk(costliest, mult)
      elif op in ("call", "async-start"):
        for sub in ins.called("to_apply") + ins.called("calls"):
          walk(sub, mult)
      elif op in NO_KERNEL:
        continue
      else:
        key = f"{name}/{ins.name}"
        if key in found:
          found[key].count += mult
          continue
        if op == "fusion":
          fusions.add(key)
          flops, dtype = computation_flops(comps, ins.called("calls")[0])
        else:
          flops = instruction_flops(ins, comp)
          dtype = _leaf_dtype(_operand_shape(comp, ins.operands[0])) if flops else ""
        coll = (sum(shape_bytes(_operand_shape(comp, o)) for o in ins.operands)
                if op in COLLECTIVES else 0.0)
        found[key] = Kernel(ins.name, _classify(ins, comps, flops), mult, flops,
                            kernel_bytes(ins, comp, comps), dtype, coll, ins.op_name())
        order.append(key)

  walk(entry, 1)
  return Analysis([found[k] for k in order], len(fusions), unknown)


def _static_kernels(comps: Mapping[str, Computation], name: str) -> int:
  return sum(1 for i in comps[name].instructions if i.opcode not in NO_KERNEL)


# ----------------------------------------------------------------------------- floors


def floor_seconds(analysis: Analysis, peaks: Mapping[str, float], bandwidth: float,
                  interconnect: Optional[float] = None) -> dict[str, float]:
  """{"floor_s", "compute_s", "memory_s", "collective_s", "memory_bound_share"}.

  `peaks`: FLOP/s by operand dtype ("bf16", "f32", …; "default" for the rest); `bandwidth`:
  device-memory bytes/s; `interconnect`: collective bytes/s per device (None: collectives
  count as memory traffic only)."""
  total = compute = memory = bound = 0.0
  for k in analysis.kernels:
    peak = peaks.get(k.dtype, peaks.get("default", 0.0))
    t_c = k.flops / peak if (k.flops and peak) else 0.0
    t_m = k.bytes / bandwidth
    t = max(t_c, t_m) * k.count
    total += t
    compute += t_c * k.count
    memory += t_m * k.count
    if t_m > t_c:
      bound += t
  coll = analysis.collective_bytes / interconnect if interconnect else 0.0
  return {"floor_s": total + coll, "compute_s": compute, "memory_s": memory,
          "collective_s": coll, "memory_bound_share": bound / total if total else 0.0}


def top_kernels(analysis: Analysis, peaks: Mapping[str, float], bandwidth: float,
                n: int = 10) -> list[dict[str, Any]]:
  """The `n` kernels with the largest share of the floor (name, kind, op_name, launches,
  GFLOP and MB per launch, floor seconds)."""
  rows = []
  for k in analysis.kernels:
    peak = peaks.get(k.dtype, peaks.get("default", 0.0))
    t = max(k.flops / peak if (k.flops and peak) else 0.0, k.bytes / bandwidth) * k.count
    rows.append({"name": k.name, "kind": k.kind, "op_name": k.op_name, "launches": k.count,
                 "gflop": k.flops / 1e9, "mb": k.bytes / 1e6, "floor_s": t})
  rows.sort(key=lambda r: -r["floor_s"])
  return rows[:n]
