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
  batch · output features · input features per group · Π over spatial dimensions of the
  (output position, tap) pairs that land on real input — padding and the holes of a base
  dilation excluded, as XLA counts them (TPU writes batched matmuls as convolutions with such
  holes). cuDNN custom-calls are read as the forward convolution X * W -> Y they belong to
  (backward-input: dY and W given, dX made; backward-filter: X and dY given, dW made).
  Pallas kernels (Triton custom-calls) count the FLOPs their call declares in its metadata
  (`{"flops": …}`): XLA's text does not show inside them.
- bytes: per kernel, the operand elements its outputs need and the result written, in their
  dtypes (logical sizes; TPU tile padding ignored): a fusion reads of each operand only what
  its outputs use (through slices, broadcasts, reductions, …), the buffer a dynamic-update-
  slice writes into in place counts the update only, slices and gathers read what they take,
  an async op counts at its start (its done launches nothing); cuBLAS/cuDNN scratch results
  are skipped.
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


def parse_window(text: Optional[str]) -> dict[str, list]:
  """`window={size=3x3 stride=2x2 pad=1_1x1_1 lhs_dilate=2x1 …}` → {key: per-dimension
  values} (pad as (low, high) pairs)."""
  out: dict[str, list] = {}
  for key, value in re.findall(r"(\w+)=([\w\-]+)", (text or "").strip("{}")):
    parts = value.split("x")
    out[key] = ([tuple(int(v) for v in p.split("_")) for p in parts] if key == "pad"
                else [int(v) for v in parts])
  return out


def _valid_taps(n: int, o: int, w: int, stride: int, low: int, base_dilation: int,
                window_dilation: int) -> int:
  """(output position, window tap) pairs of one spatial dimension that land on a real input
  element: not in the padding, not in a hole of the base (lhs) dilation."""
  last = (n - 1) * base_dilation
  count = 0
  for i in range(o):
    for j in range(w):
      pos = i * stride + j * window_dilation - low
      if 0 <= pos <= last and pos % base_dilation == 0:
        count += 1
  return count


def conv_flops(lhs_dims: tuple[int, ...], rhs_dims: tuple[int, ...],
               out_dims: tuple[int, ...], dim_labels: str, window: dict) -> float:
  """2 · (batch · output features · input features per group) · Π valid taps per spatial
  dimension: what the convolution multiplies, without the padding and the holes of a base
  dilation (XLA's own rule; TPU writes batched matmuls as such convolutions)."""
  ins, outs = dim_labels.split("->")
  lhs_l, rhs_l = ins.split("_")
  total = out_dims[outs.index("b")] * out_dims[outs.index("f")] * rhs_dims[rhs_l.index("i")]
  k = 0
  while str(k) in outs:
    d = str(k)
    get = lambda key, default: (window.get(key) or [default] * (k + 1))[k]  # noqa: E731
    low = get("pad", (0, 0))[0]
    total *= _valid_taps(lhs_dims[lhs_l.index(d)], out_dims[outs.index(d)],
                         rhs_dims[rhs_l.index(d)], get("stride", 1), low,
                         get("lhs_dilate", 1), get("rhs_dilate", 1))
    k += 1
  return 2.0 * total


def _operand_shape(comp: Computation, name: str) -> str:
  ins = comp.by_name.get(name)
  return ins.shape if ins is not None else ""


def instruction_flops(ins: Instruction, comp: Computation) -> float:
  """FLOPs of one dot / convolution / gemm or convolution custom-call (0 for anything else)."""
  if ins.opcode == "dot":
    return dot_flops(_operand_shape(comp, ins.operands[0]), ins.shape,
                     _ints(ins.attr("lhs_contracting_dims")))
  if ins.opcode == "convolution":
    return conv_flops(_dims(_operand_shape(comp, ins.operands[0])),
                      _dims(_operand_shape(comp, ins.operands[1])), _dims(ins.shape),
                      ins.attr("dim_labels") or "", parse_window(ins.attr("window")))
  if ins.opcode == "custom-call":
    target = ins.attr("custom_call_target") or ""
    if "conv" in target.lower():
      # cuDNN calls carry the forward convolution's window and labels: X * W -> Y.
      labels, window = ins.attr("dim_labels") or "", parse_window(ins.attr("window"))
      result = _dims(ins.shape)
      op0, op1 = (_dims(_operand_shape(comp, n)) for n in ins.operands[:2])
      if "BackwardInput" in target:     # dX from (dY, W)
        return conv_flops(result, op1, op0, labels, window)
      if "BackwardFilter" in target:    # dW from (X, dY)
        return conv_flops(op0, result, op1, labels, window)
      return conv_flops(op0, op1, result, labels, window)
    if target.endswith("triton"):   # a Pallas kernel: the FLOPs its call declares
      m = re.search(r'serialized_metadata = "((?:[^"\\]|\\.)*)"', ins.attrs)
      if m:
        try:
          # MLIR string escapes: a backslash and two hex digits (\22 is a quote)
          text = re.sub(r"\\([0-9A-Fa-f]{2})", lambda e: chr(int(e.group(1), 16)), m.group(1))
          meta = json.loads(text)
          return float(meta.get("flops", 0.0))
        except ValueError:
          return 0.0
      return 0.0
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


# Ops whose output element i needs element i of each operand (same element count).
_ELEMENTWISE = {
    "abs", "add", "and", "atan2", "bitcast", "bitcast-convert", "cbrt", "ceil", "clamp",
    "compare", "complex", "convert", "copy", "cosine", "divide", "erf", "exponential",
    "exponential-minus-one", "floor", "imag", "is-finite", "log", "log-plus-one", "logistic",
    "maximum", "minimum", "multiply", "negate", "not", "or", "popcnt", "power", "real",
    "reduce-precision", "remainder", "reshape", "round-nearest-afz", "round-nearest-even",
    "rsqrt", "select", "shift-left", "shift-right-arithmetic", "shift-right-logical", "sign",
    "sine", "sqrt", "subtract", "tan", "tanh", "transpose", "xor", "stochastic-convert",
}


def _elements(shape: str) -> int:
  return sum(math.prod(dims) for _, dims in shape_leaves(shape))


def _demanded(fused: Computation) -> dict[str, float]:
  """Elements of each instruction's result that the fusion's outputs need (as XLA's loop
  emitter computes only those): propagated from the root back through elementwise ops,
  slices, broadcasts, reductions and concatenations; anything else needs its operands whole.
  The buffer a root dynamic-update-slice writes into in place is not read."""
  need: dict[str, float] = collections.defaultdict(float)
  root = fused.root
  outputs = [fused.by_name[o] for o in root.operands] if root.opcode == "tuple" else [root]
  for out in outputs:
    if out.opcode == "dynamic-update-slice":
      update = fused.by_name[out.operands[1]]
      need[update.name] += _elements(update.shape)
      for idx in out.operands[2:]:
        need[idx] += 1
    else:
      need[out.name] += _elements(out.shape)
  for ins in reversed(fused.instructions):
    d = min(need.get(ins.name, 0.0), _elements(ins.shape))
    if d <= 0 or ins.opcode in ("parameter", "constant", "iota", "tuple"):
      continue
    size = max(_elements(ins.shape), 1)
    ops = [fused.by_name[o] for o in ins.operands if o in fused.by_name]
    if ins in outputs and ins.opcode == "dynamic-update-slice":
      continue
    if ins.opcode in _ELEMENTWISE or ins.opcode in ("slice", "get-tuple-element"):
      for op in ops:
        need[op.name] += d if _elements(op.shape) >= d else _elements(op.shape)
    elif ins.opcode in ("dynamic-slice", "gather"):   # the rows taken, whole indices
      need[ops[0].name] += d
      for op in ops[1:]:
        need[op.name] += _elements(op.shape)
    elif ins.opcode in ("broadcast", "pad"):
      need[ops[0].name] += min(_elements(ops[0].shape), d)
      for op in ops[1:]:
        need[op.name] += 1
    elif ins.opcode in ("reduce", "reduce-window", "concatenate"):
      for op in ops:
        need[op.name] += _elements(op.shape) * d / size
    else:   # dots, convolutions, gathers, scatters, sorts, …: whole operands
      for op in ops:
        need[op.name] += _elements(op.shape)
  return need


def _fusion_read_bytes(fused: Computation, operand_bytes: list[float]) -> float:
  """Bytes a fusion reads: of each parameter, the elements its outputs need."""
  need = _demanded(fused)
  total = 0.0
  for ins in fused.instructions:
    if ins.opcode != "parameter":
      continue
    k = ins.parameter_number
    full = operand_bytes[k] if 0 <= k < len(operand_bytes) else shape_bytes(ins.shape)
    n = _elements(ins.shape)
    total += full * min(need.get(ins.name, 0.0), n) / n if n else 0.0
  return total


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
      read = _fusion_read_bytes(fused, operand_bytes)
      return read + _written_bytes(fused, fused.root)
  if ins.opcode in ("slice", "dynamic-slice", "gather"):   # reads what it takes
    return 2 * shape_bytes(ins.shape) + sum(operand_bytes[1:])
  if ins.opcode == "slice-start":   # TPU async slice: ((operand), slice, context)
    leaves = shape_leaves(ins.shape)
    return 2.0 * DTYPE_BYTES[leaves[1][0]] * math.prod(leaves[1][1]) if len(leaves) > 1 else 0.0
  if ins.opcode == "copy-start":    # async copy: ((destination, source, context))
    return 2.0 * sum(operand_bytes)
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
  kind: str          # gemm|conv|pallas|pool|fusion|copy|collective|custom-call|other
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
    if target.endswith("triton"):
      return "pallas"
    if "gemm" in target or "matmul" in target:
      return "gemm"
    return "custom-call"
  if ins.opcode == "fusion":
    body = _all_opcodes(comps, ins.called("calls"))
    if "convolution" in body:
      return "conv"
    if "dot" in body or flops:
      return "gemm"
    if "reduce-window" in body:   # pooling
      return "pool"
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


def trip_count(ins: Instruction, comps: Optional[Mapping[str, Computation]] = None,
               parent: Optional[Computation] = None) -> Optional[int]:
  """Iterations of a `while`: XLA's `known_trip_count` (GPU backend_config), else read off
  the loop (`i < N` in the condition with constant N, constant start, constant step)."""
  n = ins.backend_config().get("known_trip_count", {}).get("n")
  if n is not None:
    return int(n)
  if comps is None or parent is None:
    return None
  try:
    return _counted_loop(ins, comps, parent)
  except (KeyError, IndexError, ValueError):
    return None


def _constant(comp: Computation, name: str) -> Optional[int]:
  ins = comp.by_name.get(name)
  while ins is not None and ins.opcode in ("copy", "bitcast", "convert") and ins.operands:
    ins = comp.by_name.get(ins.operands[0])
  if ins is None or ins.opcode != "constant":
    return None
  try:
    return int(float(ins.operand_text))
  except ValueError:
    return None


def _scalar_root(comps: Mapping[str, Computation], comp: Computation, ins: Instruction
                 ) -> tuple[Computation, Instruction, dict[str, str]]:
  """`ins` or, for a fusion, its fused root, with the map from fused parameters to the
  fusion's operands."""
  if ins.opcode != "fusion":
    return comp, ins, {}
  fused = comps[ins.called("calls")[0]]
  params = {i.name: ins.operands[i.parameter_number] for i in fused.instructions
            if i.opcode == "parameter"}
  return fused, fused.root, params


def _counted_loop(ins: Instruction, comps: Mapping[str, Computation],
                  parent: Computation) -> Optional[int]:
  cond = comps[ins.called("condition")[0]]
  body = comps[ins.called("body")[0]]
  where, cmp, params = _scalar_root(comps, cond, cond.root)
  if cmp.opcode != "compare":
    return None
  direction = re.search(r"direction=(\w+)", cmp.attrs).group(1)

  def tuple_index(c: Computation, name: str, mapping: dict) -> Optional[int]:
    x = c.by_name.get(name)
    if x is not None and x.opcode == "parameter" and name in mapping:
      x = cond.by_name.get(mapping[name])
    if x is not None and x.opcode == "get-tuple-element":
      return int(re.search(r"index=(\d+)", x.attrs).group(1))
    return None

  def constant(c: Computation, name: str, mapping: dict) -> Optional[int]:
    if name in mapping:
      return _constant(cond, mapping[name])
    return _constant(c, name)

  a, b = cmp.operands[:2]
  k, limit = tuple_index(where, a, params), constant(where, b, params)
  if k is None or limit is None:
    return None
  init_tuple = parent.by_name[ins.operands[0]]
  if init_tuple.opcode != "tuple":
    return None
  start = _constant(parent, init_tuple.operands[k])
  step_ins = body.by_name[body.root.operands[k]]
  fbody, add, fparams = _scalar_root(comps, body, step_ins)
  if start is None or add.opcode != "add":
    return None
  step = None
  for name in add.operands:
    value = (_constant(body, fparams[name]) if name in fparams else _constant(fbody, name))
    if value is not None:
      step = value
  if not step:
    return None
  span = {"LT": limit - start, "LE": limit - start + 1, "NE": limit - start,
          "GT": start - limit, "GE": start - limit + 1}.get(direction)
  if span is None:
    return None
  return max(0, -(-span // abs(step)))


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


def analyze(text: str, expand_loops: bool = True) -> Analysis:
  """Kernels per call of the HLO module `text` (see the module docstring). `expand_loops`
  False counts every loop body once, as XLA's own cost analysis does."""
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
        n = trip_count(ins, comps, comp) if expand_loops else 1
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
      elif op in NO_KERNEL or op.endswith(("-done", "-update")):   # async completions
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


def floor_by_kind(analysis: Analysis, peaks: Mapping[str, float], bandwidth: float
                  ) -> dict[str, float]:
  """Seconds of the per-kernel floor by kernel kind (gemm, conv, pool, fusion, …)."""
  out: dict[str, float] = collections.defaultdict(float)
  for k in analysis.kernels:
    peak = peaks.get(k.dtype, peaks.get("default", 0.0))
    out[k.kind] += max(k.flops / peak if (k.flops and peak) else 0.0,
                       k.bytes / bandwidth) * k.count
  return dict(out)


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
