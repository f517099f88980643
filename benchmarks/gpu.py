"""One GPU benchmark run in one command of at most 7 minutes: the library's own programs.

  PYTHONUNBUFFERED=1 timeout 420 python3 -m benchmarks.gpu --out OUT/gpu.jsonl    # on the GPU
  python -m benchmarks.gpu --render gpu.jsonl         # the last run as a Markdown table
  python -m benchmarks.gpu --smoke                    # the same run at tiny sizes, on a CPU

Every DrCT2 and blend figure times a program of `ctjax.train.programs` — the train step
training runs, the eval step behind evaluation and prediction, the feature-store build pass —
built from configs/drct2_rsna.py and configs/blend_resnet50.py (`ctjax.configs.named`) at the
plan's sizes (the papers' on the GPU), on real arrays: the state from the task's own random init
(`ctjax.train.state.create_state`), random inputs of the program's batch layout and sharding.
Compilation is timed on its own; steady state is the compiled executable's median. FLOPs and
the roofline floor come from the optimized HLO (benchmarks/hlo.py), saved beside the results
as `<out dir>/hlo/<figure>.hlo.txt`.

Figures, in order (benchmarks/NOTES.md, "GPU run"): environment; the headline, each with its
PyTorch eager peer — matmul peak bf16, HBM copy bandwidth (input donated), DrCT2 inference bf16,
blend-sign training bf16 at batch 64; then the BiGRU kernel check (Pallas against XLA), DrCT2
batch-1 latency (p50/p90 from HU on the device, and from DICOM on disk), matmul TF32, DrCT2
inference float32 and bf16-vs-float32 accuracy, feature-store build, DrCT2 training from the
store and end to end, the other blend training figures, blend inference, host → device.

Each figure is isolated (its own try/except, out-of-memory included, the error kept in its
line), written as one JSON line to `--out` as soon as it is measured, and skipped with the
reason when the `--budget-s` guard says it no longer fits. The PyTorch peer runs eagerly (no
torch.compile) in its own process (benchmarks/gpu_torch.py); JAX's share of the GPU memory is
sized from the device's total so that both fit (`jax_memory_fraction`). The code path imports
neither grain, pydicom nor tensorboardX; ml_collections (the configs) is carried as a
pure-Python wheel where absent.

A line: `benchmarks.common.Record` (name, device, value, unit, torch_value, ratio_vs_torch,
flop_fraction, roofline_fraction, compile_s, details) plus status (ok | error | skipped), error,
error_kind (oom | error), skipped, peer ("torch-eager"), run_id, elapsed_s.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import pathlib
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

from benchmarks import gpu_plan
from benchmarks.gpu_plan import Plan

log = logging.getLogger("benchmarks.gpu")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_S_PER_SCAN = 0.82   # DrCT2 paper, Table 8: 0.82 s/scan.
INJECT_KINDS = ("oom", "oom-once", "error")
PEER = "torch-eager"      # the PyTorch peer: eager mode, no torch.compile
PEER_LABEL = "PyTorch eager"
PROFILE_STEPS = 3         # steady steps traced per program with --profile
GIB = 1 << 30
# The PyTorch peer's largest figure: blend-sign training at TF32, batch 64, 512² (~32 GB peak
# allocated on an H100) plus its CUDA context and allocator slack.
TORCH_PEER_BYTES = 36 * GIB
MAX_JAX_FRACTION = 0.75   # JAX's own default
MIN_JAX_FRACTION = 0.3


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def is_oom(e: BaseException) -> bool:
  """XLA's RESOURCE_EXHAUSTED (JAX) or CUDA's out of memory."""
  text = f"{type(e).__name__}: {e}"
  return ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
          or "OutOfMemory" in type(e).__name__)


def short_error(e: BaseException, limit: int = 600) -> str:
  text = f"{type(e).__name__}: {e}".strip()
  return text if len(text) <= limit else text[:limit] + " …"


class InjectedFailure(RuntimeError):
  """A failure asked for by --inject-failure (rehearses the isolation of figures)."""


class SkipFigure(Exception):
  """A figure that cannot run here (its reason becomes the line's `skipped`)."""


# --------------------------------------------------------------------------------------------
# JAX's share of the GPU memory
# --------------------------------------------------------------------------------------------

def gpu_total_bytes() -> Optional[int]:
  """The first GPU's total memory from nvidia-smi (before any JAX backend exists), or None."""
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,"
                          "nounits"], capture_output=True, text=True, timeout=15)
  except (OSError, subprocess.TimeoutExpired):
    return None
  try:
    return int(float(out.stdout.strip().splitlines()[0])) * (1 << 20)   # MiB
  except (ValueError, IndexError):
    return None


def jax_memory_fraction(total_bytes: Optional[int],
                        torch_bytes: int = TORCH_PEER_BYTES) -> Optional[float]:
  """XLA_PYTHON_CLIENT_MEM_FRACTION that leaves the PyTorch peer `torch_bytes` beside JAX's
  preallocation: (total − torch) / total, within [0.3, 0.75] (0.75: JAX's default). 80 GB H100
  → 0.55; 141 GB H200 → 0.74. None without a GPU (nothing to size)."""
  if not total_bytes:
    return None
  frac = (total_bytes - torch_bytes) / total_bytes
  return round(min(MAX_JAX_FRACTION, max(MIN_JAX_FRACTION, frac)), 3)


def size_jax_memory(fraction: Optional[float]) -> dict:
  """Sets XLA_PYTHON_CLIENT_MEM_FRACTION before the first JAX backend use (unless the caller
  set it, or `fraction` is given): what was decided, for the environment line."""
  if "XLA_PYTHON_CLIENT_MEM_FRACTION" in os.environ:
    return {"fraction": os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"], "source": "environment"}
  total = gpu_total_bytes()
  source = "--jax-mem-fraction"
  if fraction is None:
    fraction = jax_memory_fraction(total)
    source = f"device total {total} bytes, {TORCH_PEER_BYTES} left for the torch peer"
  if fraction is None:
    return {"fraction": None, "source": "no GPU: JAX's default"}
  os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(fraction)
  return {"fraction": fraction, "total_bytes": total, "source": source}


# --------------------------------------------------------------------------------------------
# The PyTorch peer (its own process)
# --------------------------------------------------------------------------------------------

class TorchPeer:
  """benchmarks/gpu_torch.py as a child process: one JSON request a line, one reply a line."""

  def __init__(self, device: str, env: Optional[dict] = None):
    self.device = device
    self.env = env
    self.proc: Optional[subprocess.Popen] = None
    self.replies: "queue.Queue[Optional[dict]]" = queue.Queue()
    self.stderr_tail: list[str] = []
    self.unavailable: Optional[str] = None
    self.is_ready = False
    self._next_id = 0

  def start(self) -> None:
    self.replies = queue.Queue()
    self.is_ready = False
    self.proc = subprocess.Popen(
        # One CPU thread on a CPU: torch's OpenMP pool under a shared load is many times
        # slower than one thread (benchmarks/NOTES.md, "Torch threads").
        [sys.executable, "-m", "benchmarks.gpu_torch", "--device", self.device]
        + (["--threads", "1"] if self.device == "cpu" else []),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=str(REPO_ROOT), env=self.env, bufsize=1)
    threading.Thread(target=self._read_stdout, args=(self.proc, self.replies),
                     daemon=True).start()
    threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True).start()

  def _read_stdout(self, proc: subprocess.Popen, replies: "queue.Queue") -> None:
    from benchmarks.gpu_plan import TORCH_MARK as MARK   # never import torch here
    for line in proc.stdout:
      if line.startswith(MARK):
        try:
          replies.put(json.loads(line[len(MARK):]))
        except ValueError:
          pass
      else:
        sys.stderr.write("[torch] " + line)
    replies.put(None)   # EOF: the process ended

  def _read_stderr(self, proc: subprocess.Popen) -> None:
    for line in proc.stderr:
      self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]

  def _await(self, want_id: Any, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
      left = deadline - time.monotonic()
      if left <= 0:
        self.kill()
        return {"ok": False, "error": f"timeout: no reply in {timeout:.0f} s (peer killed)"}
      try:
        reply = self.replies.get(timeout=left)
      except queue.Empty:
        continue
      if reply is None:
        tail = " | ".join(self.stderr_tail[-3:])
        code = self.proc.poll() if self.proc else None
        self.proc = None
        return {"ok": False, "error": f"the torch process ended (exit {code}): {tail}"[:800]}
      if reply.get("id") == want_id:
        return reply

  def ready(self, timeout: float) -> Optional[str]:
    """None when the peer answers, else why not (kept: later requests are not tried)."""
    if self.unavailable:
      return self.unavailable
    if self.proc is None:
      self.start()
    if self.is_ready:
      return None
    reply = self._await("ready", timeout)
    if reply.get("ok"):
      self.is_ready = True
    else:
      self.unavailable = reply.get("error", "the torch peer did not start")
    return self.unavailable

  def request(self, figure: str, args: dict, timeout: float) -> dict:
    if self.unavailable:
      return {"ok": False, "error": self.unavailable}
    if self.proc is None or self.proc.poll() is not None:
      self.proc = None
      why = self.ready(timeout=min(timeout, 120.0))
      if why:
        return {"ok": False, "error": why}
    self._next_id += 1
    rid = self._next_id
    try:
      self.proc.stdin.write(json.dumps({"id": rid, "figure": figure, "args": args}) + "\n")
      self.proc.stdin.flush()
    except (BrokenPipeError, OSError) as e:
      self.proc = None
      return {"ok": False, "error": f"the torch process is gone: {e}"}
    return self._await(rid, timeout)

  def kill(self) -> None:
    if self.proc is not None:
      self.proc.kill()
      self.proc.wait(timeout=10)
      self.proc = None

  def close(self) -> None:
    if self.proc is None:
      return
    try:
      self.proc.stdin.close()
      self.proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
      self.kill()
    self.proc = None


# --------------------------------------------------------------------------------------------
# The run: budget, JSON lines, isolation
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Figure:
  name: str
  fn: Callable[["Run", dict], dict]
  est_s: float          # expected seconds on one H100/H200 (compile, timing, torch peer)
  smoke_est_s: float    # the same on a small CPU at the smoke sizes


class Run:
  """State shared by the figures: the plan, the measured ceilings, the peer, the output."""

  def __init__(self, plan: Plan, out_path: pathlib.Path, budget_s: float, *,
               with_torch: bool = True, inject: Optional[dict[str, str]] = None,
               torch_env: Optional[dict] = None, profile_dir: Optional[pathlib.Path] = None,
               memory_plan: Optional[dict] = None):
    import jax
    from benchmarks import common
    self.plan = plan
    self.out_path = out_path
    self.budget_s = budget_s
    self.t0 = time.monotonic()
    self.run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    self.device = common.device_name()
    self.platform = jax.default_backend()
    self.peaks: dict[str, float] = {}        # "bfloat16" / "float32" → FLOP/s
    self.bandwidth: Optional[float] = None   # bytes/s
    self.inject = dict(inject or {})
    self.hlo_dir = out_path.parent / "hlo"          # the optimized HLO of every timed program
    self.profile_dir = profile_dir
    self.memory_plan = memory_plan or {}
    self.stash: dict[str, Any] = {}                 # what a figure leaves for a later one
    self.lines: list[dict] = []
    self._ratios: list[float] = []
    self.torch: Optional[TorchPeer] = None
    self.torch_skip: Optional[str] = None if with_torch else "--no-torch"
    if with_torch:
      self.torch = TorchPeer("cuda" if self.platform == "gpu" else "cpu", env=torch_env)
      try:
        self.torch.start()   # imports torch while JAX works on the first figures
      except OSError as e:
        self.torch_skip = f"the torch process could not start: {e}"

  # -- budget ---------------------------------------------------------------------------
  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def remaining(self) -> float:
    return self.budget_s - self.elapsed()

  def estimate(self, fig: Figure) -> float:
    """The figure's expected seconds, scaled by how the finished figures compared with their
    own estimates on this machine (median ratio, kept within 0.5–3×)."""
    base = fig.smoke_est_s if self.plan.smoke else fig.est_s
    factor = min(3.0, max(0.5, statistics.median(self._ratios))) if self._ratios else 1.0
    return base * factor

  # -- output -----------------------------------------------------------------------------
  def emit(self, rec: Any, **status) -> dict:
    """Appends `rec` (a common.Record) with its status as one JSON line, synced to disk."""
    line = rec.as_line(**status, peer=PEER, run_id=self.run_id,
                       elapsed_s=round(self.elapsed(), 2))
    self.lines.append(line)
    self.out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.out_path, "a") as f:
      f.write(json.dumps(line) + "\n")
      f.flush()
      os.fsync(f.fileno())
    return line

  # -- failure injection (rehearsal) ------------------------------------------------------
  def maybe_inject(self, name: str, attempt: Optional[int]) -> None:
    """--inject-failure: "oom" and "error" fail the figure at its start (attempt None);
    "oom-once" fails the first size a figure tries (`first_that_fits`), so it falls back."""
    kind = self.inject.get(name)
    if kind is None or (kind == "oom-once") != (attempt == 0):
      return
    import jax
    if kind in ("oom", "oom-once"):
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Out of memory while trying to allocate (injected by "
          f"--inject-failure {name}={kind})")
    raise InjectedFailure(f"injected by --inject-failure {name}={kind}")

  # -- torch ------------------------------------------------------------------------------
  def torch_call(self, figure: str, args: dict, det: dict,
                 batches: Sequence[Any] = (None,), batch_key: str = "batch") -> Optional[dict]:
    """The peer's reply for `figure` (trying smaller `batches` on its out-of-memory), or None
    with the reason in `det["torch_error"]`."""
    if self.torch_skip or self.torch is None:
      det["torch_error"] = self.torch_skip or "no torch peer"
      return None
    p = self.plan
    base = dict(args, warmup=p.warmup, repeats=p.repeats, max_seconds=p.max_seconds)
    for b in batches:
      left = self.remaining() - 2.0
      if left < 10.0:
        det["torch_error"] = f"budget: {max(left, 0):.0f} s left for the torch peer"
        return None
      why = self.torch.ready(timeout=min(120.0, left))
      if why:
        det["torch_error"] = why
        return None
      req = dict(base, **({batch_key: b} if b is not None else {}))
      reply = self.torch.request(figure, req, timeout=min(p.torch_timeout_s, left))
      if reply.get("ok"):
        if b is not None:
          det["torch_" + batch_key] = b
        if reply.get("max_memory_bytes"):
          det["torch_max_memory_bytes"] = reply["max_memory_bytes"]
        return reply
      if not reply.get("oom"):
        det["torch_error"] = reply.get("error")
        return None
      det.setdefault("torch_ooms", []).append({batch_key: b, "error": reply.get("error")})
    det["torch_error"] = "out of memory at every size tried"
    return None

  def close(self) -> None:
    if self.torch is not None:
      self.torch.close()


def empty_record(name: str, device: str, unit: str = "", **fields):
  """A Record without a measured speed (environment, failures, latency and accuracy lines)."""
  from benchmarks.common import Record
  return Record(name, device, fields.pop("value", None), fields.pop("unit", unit), **fields)


def run_figure(run: Run, fig: Figure) -> dict:
  """Runs one figure in isolation and emits its line (ok, error or skipped)."""
  est = run.estimate(fig)
  left = run.remaining()
  if est > 0 and est > left:
    return run.emit(empty_record(fig.name, run.device, details={"estimate_s": round(est, 1)}),
                    status="skipped", error=None, error_kind=None,
                    skipped=f"budget: needs ~{est:.0f} s (estimate), {max(left, 0):.0f} s of "
                            f"the {run.budget_s:.0f} s budget left")
  det: dict[str, Any] = {"estimate_s": round(est, 1)}
  t = time.monotonic()
  status: dict[str, Any] = {"status": "ok", "error": None, "error_kind": None, "skipped": None}
  try:
    run.maybe_inject(fig.name, None)
    rec = fig.fn(run, det)
  except SkipFigure as e:
    rec = empty_record(fig.name, run.device)
    status.update(status="skipped", skipped=str(e))
  except Exception as e:   # isolation: every failure becomes this figure's line
    rec = empty_record(fig.name, run.device)
    status.update(status="error", error=short_error(e),
                  error_kind="oom" if is_oom(e) else "error")
    log.debug("figure %s failed", fig.name, exc_info=True)
  took = time.monotonic() - t
  det["wall_s"] = round(took, 2)
  det.update(_memory_stats())
  rec.details = dict(det, **rec.details)
  if status["status"] == "ok" and est > 0:
    base = fig.smoke_est_s if run.plan.smoke else fig.est_s
    if base > 0:
      run._ratios.append(took / base)
  line = run.emit(rec, **status)
  _release()
  return line


def _release() -> None:
  """Frees what a figure left (executables, buffers) before the next one allocates."""
  import jax
  gc.collect()
  jax.clear_caches()


def _memory_stats() -> dict:
  import jax
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:   # not every backend has them
    return {}
  keep = ("peak_bytes_in_use", "bytes_limit", "bytes_in_use")
  return {f"device_{k}": stats[k] for k in keep if k in stats}


def first_that_fits(run: Run, name: str, sizes: Sequence[Any], det: dict, key: str,
                    fn: Callable[[Any], Any]) -> Any:
  """fn(size) for the first of `sizes` that does not run out of memory ("batch as fits");
  the sizes that did are kept in `det["ooms"]`."""
  for i, size in enumerate(sizes):
    if i:
      _release()   # after the failed attempt's frames (and buffers) are gone
    try:
      run.maybe_inject(name, i)
      out = fn(size)
      det[key] = size
      return out
    except Exception as e:
      if not is_oom(e) or i == len(sizes) - 1 or run.remaining() < 20.0:
        raise
      det.setdefault("ooms", []).append({key: size, "error": short_error(e, 300)})
  raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Compiling, counting and timing one of the library's programs
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Program:
  """A compiled executable of the library and what its optimized HLO says about it."""
  executable: Callable
  text: str               # the optimized HLO (saved as <out dir>/hlo/<name>.hlo.txt)
  analysis: Any           # benchmarks.hlo.Analysis of `text` (loop bodies × trip counts)
  lower_s: float
  compile_s: float

  @property
  def total_compile_s(self) -> float:
    return self.lower_s + self.compile_s


def precision_context(tag: str):
  """tf32 figures: float32 arrays with matrix work at TF32, named explicitly (XLA's default for
  float32 on such GPUs; a no-op on a CPU); bf16 figures: the default (bf16 operands)."""
  import contextlib
  import jax
  return jax.default_matmul_precision("tensorfloat32") if tag == "tf32" \
      else contextlib.nullcontext()


def hlo_name(name: str) -> str:
  return name.replace("/", "_")


def measure(run: Run, name: str, fn: Callable, args: tuple, *, tag: str = "bf16") -> Program:
  """Lower → compile `fn(*args)` (a jitted function: the library's, or the run's own matmul and
  copy chains), each phase timed, nothing executed; the optimized HLO saved and counted
  (benchmarks/hlo.py: on CUDA XLA's cost analysis gives no figure)."""
  from benchmarks import hlo
  with precision_context(tag):
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    opts = run.plan.compiler_options
    compiled = lowered.compile(compiler_options=opts) if opts else lowered.compile()
    t2 = time.perf_counter()
  text = compiled.as_text() or ""
  path = run.hlo_dir / f"{hlo_name(name)}.hlo.txt"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return Program(compiled, text, hlo.analyze(text), t1 - t0, t2 - t1)


def time_program(run: Run, name: str, call: Callable[[], Any]):
  """The steady-state median of `call` (after the plan's warm-up), and with --profile a
  `jax.profiler` trace of a few more steps, each a `StepTraceAnnotation`."""
  from benchmarks import common
  p = run.plan
  t = common.time_fn(call, warmup=p.warmup, repeats=p.repeats, max_seconds=p.max_seconds)
  if run.profile_dir is not None:
    import jax
    with jax.profiler.trace(str(run.profile_dir / hlo_name(name))):
      for step in range(PROFILE_STEPS):
        with jax.profiler.StepTraceAnnotation(name, step_num=step):
          common.block(call())
  return t


def ceilings(run: Run) -> tuple[dict, Optional[str]]:
  """The measured matmul peaks by HLO operand dtype (benchmarks/hlo.py's names), and a note
  when float32's is taken as half the bf16 rate (matmul/tf32 runs after the headline)."""
  bf16, f32 = run.peaks.get("bfloat16"), run.peaks.get("float32")
  note = None
  if f32 is None and bf16:
    f32, note = bf16 / 2, "float32 peak taken as half the measured bf16 rate"
  peaks = {k: v for k, v in (("bf16", bf16), ("f16", bf16), ("f32", f32)) if v}
  return peaks, note


def record(run: Run, name: str, prog: Optional[Program], timing, *, items: float, unit: str,
           det: dict, tag: str = "bf16", torch_reply: Optional[dict] = None,
           torch_items: Optional[float] = None, floor_model: bool = True):
  """The figure's Record: value = items / median seconds, its torch counterpart (the same
  items), flop_fraction = HLO FLOPs per second / the measured peak of the figure's dtype,
  roofline_fraction = the HLO's per-kernel floor (benchmarks/hlo.py at the measured ceilings)
  / the median."""
  from benchmarks import common, hlo
  dtype = "bfloat16" if tag == "bf16" else "float32"
  peak = run.peaks.get(dtype)
  torch_s = None
  if torch_reply and torch_reply.get("seconds"):
    scale = items / torch_items if torch_items else 1.0
    torch_s = torch_reply["seconds"] * scale
    det["torch_times"] = torch_reply.get("times")
    det["torch_warmup_s"] = torch_reply.get("warmup_s")
  floor = flops = None
  if prog is not None:
    a = prog.analysis
    flops = a.flops or None
    det.update(flops_source="optimized HLO (benchmarks/hlo.py)", hlo_flops=a.flops,
               hlo_bytes=a.bytes_accessed, launches=a.launches, fusions=a.fusions,
               pallas_launches=a.launches_of("pallas"), lower_s=prog.lower_s,
               xla_compile_s=prog.compile_s)
  if prog is not None and floor_model:
    peaks, note = ceilings(run)
    if peaks and run.bandwidth:
      f = hlo.floor_seconds(prog.analysis, peaks, run.bandwidth)
      floor = f["floor_s"] or None
      det.update(floor_s=floor, floor_compute_s=f["compute_s"], floor_memory_s=f["memory_s"],
                 memory_bound_share=f["memory_bound_share"],
                 top_kernels=hlo.top_kernels(prog.analysis, peaks, run.bandwidth, 5))
      if note:
        det["ceilings_note"] = note
      if floor:
        det["floor_items_per_s"] = items / floor
    else:
      det["roofline_missing"] = "needs both measured ceilings (matmul peak, HBM bandwidth)"
    if not peak:
      det["flop_fraction_missing"] = f"no measured {dtype} matmul peak in this run"
  det.update(times=timing.times, first_call_s=timing.warmup_s, timed_calls=timing.n,
             precision=tag)
  rec = common.speed_record(
      name, seconds=timing.median, items=items, unit=unit, torch_seconds=torch_s,
      flops=flops, peak=peak, device=run.device, floor_seconds=floor,
      compile_s=None if prog is None else prog.total_compile_s)
  rec.details.pop("torch_threads", None)
  rec.details.update(det)
  return rec


# --------------------------------------------------------------------------------------------
# The library's programs on real arrays
# --------------------------------------------------------------------------------------------

def _set(config, fields: dict) -> None:
  for dotted, value in fields.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value


def drct2_config(plan: Plan, dtype: str, **fields):
  """configs/drct2_rsna.py (ctjax.configs.named) at the plan's sizes — the paper's on the GPU
  plan — with a random frozen backbone (no weights file) and `dtype` compute."""
  from ctjax.configs import named
  s = plan.drct
  c = named.get_config("drct2_rsna")
  _set(c, {"model.backbone_weights": "random", "model.dtype": dtype, "features.dtype": dtype,
           "data.num_slices": s.num_slices, "data.image_size": s.image_size,
           "model.primary_size": s.primary_size, "model.mkey": s.mkey,
           "model.aps_size": s.aps_size, "model.backbone_width": s.width,
           "model.gru_hidden": s.gru_hidden, "model.seq_dim": s.seq_dim,
           "model.fc_widths": tuple(s.fc_widths), "model.aps_fc_dim": s.aps_fc_dim,
           "model.backbone_chunk": plan.chunk, "parallel.num_devices": 1})
  _set(c, {k.replace("__", "."): v for k, v in fields.items()})
  return c


def blend_config(plan: Plan, dtype: str, batch: int):
  """configs/blend_resnet50.py, variant wce_at (the teacher round), at the plan's sizes."""
  from ctjax.configs import named
  b = plan.blend
  c = named.get_config("blend_resnet50", "variant=wce_at")
  _set(c, {"model.dtype": dtype, "train.batch_size": batch, "data.image_size": b.image_size,
           "model.backbone_width": b.width, "model.det_hidden": b.det_hidden,
           "data.max_boxes": b.max_boxes, "parallel.num_devices": 1})
  return c


def build(config, kind: str, batch: Optional[int] = None):
  """The library's program (ctjax.train.programs) on one device: train | eval | store."""
  import jax
  from ctjax.train import programs
  mesh = programs.mesh_for(config, jax.devices()[:1])
  if kind == "train":
    return programs.train_program(config, mesh)
  if kind == "eval":
    return programs.eval_program(config, mesh, batch)
  return programs.store_program(config, mesh)


def real_state(config, template):
  """The train state `ctjax.train` starts from (`state.create_state`: the task's own random
  init) on `template`'s shardings."""
  import jax
  from ctjax.train import state as state_lib
  from ctjax.train.tasks import get_task
  task = get_task(config.task)
  model = task.build_model(config)
  shardings = jax.tree.map(lambda a: a.sharding, template)
  return jax.jit(lambda r: state_lib.create_state(task, model, config, r, template.tx),
                 out_shardings=shardings)(jax.random.PRNGKey(0))


def host_batch(spec: dict, plan: Plan, seed: int = 0) -> dict:
  """Random host arrays of a program's batch layout (`programs.batch_spec`): head-CT-like HU,
  0/1 labels, one box on each haemorrhage slice, stored rows ≥ 0, every example valid."""
  import numpy as np
  rng = np.random.default_rng(seed + 1)
  out = {}
  blend = None
  for key, v in spec.items():
    shape, dtype = tuple(v.shape), np.dtype(v.dtype)
    if key == "hu":
      out[key] = gpu_plan.random_hu(shape, seed)
    elif key in ("label", "boxes", "num_boxes"):
      if blend is None:
        bs = dataclasses.replace(plan.blend, max_boxes=spec["boxes"].shape[1],
                                 image_size=spec["hu"].shape[-1])
        blend = gpu_plan.blend_batch(bs, shape[0], seed)
      out[key] = blend[key].astype(dtype)
    elif key == "valid":
      out[key] = np.ones(shape, bool)
    elif key == "slice_index":
      out[key] = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
    elif key == "num_source_slices":
      out[key] = np.full(shape, spec["slice_index"].shape[-1], dtype)
    elif key == "labels":
      out[key] = rng.integers(0, 2, shape).astype(dtype)
    elif key.startswith("feat_"):
      out[key] = rng.gamma(2.0, 0.5, shape).astype(dtype)
    else:
      out[key] = np.zeros(shape, dtype)
  return out


def put(host: dict, spec: dict) -> dict:
  import jax
  return {k: jax.device_put(v, spec[k].sharding) for k, v in host.items()}


@dataclasses.dataclass
class Ran:
  prog: Program
  timing: Any
  outputs: Any
  call: Callable[[], Any]   # one more call on the same arrays


def run_eval(run: Run, name: str, config, batch: int, tag: str, seed: int = 0) -> Ran:
  """The eval step behind evaluation and prediction on `batch` random scans/slices."""
  program = build(config, "eval", batch)
  prog = measure(run, name, program.fn, program.args, tag=tag)
  state_abs, spec = program.args
  state = real_state(config, state_abs)
  data = put(host_batch(spec, run.plan, seed), spec)
  call = lambda: prog.executable(state, data)   # noqa: E731
  t = time_program(run, name, call)
  return Ran(prog, t, call(), call)


def run_train(run: Run, name: str, config, tag: str) -> Ran:
  """The train step `ctjax.train` runs (state donated: each call takes the last one's)."""
  import jax
  program = build(config, "train")
  prog = measure(run, name, program.fn, program.args, tag=tag)
  state_abs, spec, rng_abs = program.args
  holder = {"state": real_state(config, state_abs)}
  data = put(host_batch(spec, run.plan), spec)
  rng = jax.device_put(jax.random.PRNGKey(1), rng_abs.sharding)

  def step():
    holder["state"], metrics = prog.executable(holder["state"], data, rng)
    return metrics
  t = time_program(run, name, step)
  return Ran(prog, t, step(), step)


def run_store(run: Run, name: str, config) -> Ran:
  """One call of the feature-store build (`features.backbone_program`)."""
  import jax
  from ctjax.train.tasks import get_task
  program = build(config, "store")
  prog = measure(run, name, program.fn, program.args, tag="bf16")
  params_abs, hu_abs = program.args
  task = get_task(config.task)
  variables = jax.jit(lambda r: task.init_variables(task.build_model(config), config, r))(
      jax.random.PRNGKey(0))
  params = jax.device_put({"params": {"backbone": variables["params"]["backbone"]}},
                          jax.tree.map(lambda a: a.sharding, params_abs))
  hu = jax.device_put(gpu_plan.random_hu(hu_abs.shape), hu_abs.sharding)
  call = lambda: prog.executable(params, hu)   # noqa: E731
  t = time_program(run, name, call)
  return Ran(prog, t, call(), call)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def fig_environment(run: Run, det: dict):
  import jax
  from benchmarks import common
  env = common.environment(include_torch=False)   # torch: the peer's own answer below
  devs = jax.devices()
  env.update(devices=[str(d) for d in devs],
             memory_stats=_memory_stats(),
             env={k: v for k, v in os.environ.items()
                  if k.startswith(("XLA_", "JAX_", "CUDA_", "TF_", "NVIDIA_"))},
             jax_memory=run.memory_plan,
             nvidia_smi=nvidia_smi(), plan=gpu_plan.plan_dict(run.plan),
             absent_here={m: not _findable(m) for m in NOT_ON_DEVICE},
             carried={m: _origin(m) for m in CARRIED},
             budget_s=run.budget_s, argv=sys.argv[1:])
  if run.torch is not None and not run.torch_skip:
    why = run.torch.ready(timeout=120.0)
    if why:
      env["torch_peer"] = {"error": why}
    else:
      reply = run.torch.request("env", {}, timeout=60.0)
      env["torch_peer"] = reply.get("extra") or {"error": reply.get("error")}
  return empty_record("environment", run.device, details=env)


# Not on a bare GPU host's python3: the run imports none of them (ml_collections, which the
# configs are, is carried as a pure-Python wheel: benchmarks/NOTES.md, "GPU run").
NOT_ON_DEVICE = ("grain", "pydicom", "tensorboardX")
CARRIED = ("ml_collections",)


def _findable(name: str) -> bool:
  import importlib.util
  try:
    return importlib.util.find_spec(name) is not None
  except (ValueError, ImportError):   # blocked (sys.modules[name] = None) or broken
    return False


def _origin(name: str) -> Optional[str]:
  import importlib.util
  try:
    spec = importlib.util.find_spec(name)
  except (ValueError, ImportError):
    return None
  return spec.origin if spec else None


def nvidia_smi() -> Any:
  """Clocks, power and temperature now (None where nvidia-smi is absent)."""
  q = ("name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.draw,"
       "power.limit,temperature.gpu,memory.total,memory.used,utilization.gpu")
  try:
    out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=15)
  except (OSError, subprocess.TimeoutExpired) as e:
    return {"error": short_error(e, 200)}
  if out.returncode != 0:
    return {"error": (out.stderr or out.stdout).strip()[:200]}
  keys = q.split(",")
  return [dict(zip(keys, (x.strip() for x in row.split(","))))
          for row in out.stdout.strip().splitlines()]


def fig_matmul(tag: str) -> Callable[[Run, dict], Any]:
  def fn(run: Run, det: dict):
    import jax.numpy as jnp
    from benchmarks import common
    p = run.plan
    n, iters = p.matmul_n, p.matmul_iters
    with precision_context(tag):
      a, b = common.matmul_operands(n, jnp.bfloat16 if tag == "bf16" else jnp.float32)
    flops = 2.0 * n ** 3 * iters
    name = f"matmul/{tag}"
    prog = measure(run, name, common.matmul_chain(iters), (a, b), tag=tag)
    t = time_program(run, name, lambda: prog.executable(a, b))
    out = prog.executable(a, b)
    ok = bool(jnp.isfinite(out.astype(jnp.float32)).all())
    reply = run.torch_call("matmul", {"n": n, "iters": iters, "tag": tag}, det)
    xla_rate = flops / t.median
    torch_rate = flops / reply["seconds"] if reply else None
    dtype = "bfloat16" if tag == "bf16" else "float32"
    run.peaks[dtype] = max(r for r in (xla_rate, torch_rate) if r)
    det.update(n=n, iters=iters, finite=ok, analytic_flops=flops, xla_flops_per_s=xla_rate,
               torch_flops_per_s=torch_rate, peak_flops_per_s=run.peaks[dtype],
               nvidia_smi_after=nvidia_smi() if run.platform == "gpu" else None)
    rec = record(run, name, prog, t, items=flops / 1e12, unit="TFLOP/s", det=det, tag=tag,
                 torch_reply=reply, torch_items=flops / 1e12, floor_model=False)
    rec.flop_fraction = xla_rate / run.peaks[dtype]
    rec.roofline_fraction = rec.flop_fraction
    return rec
  return fn


def hbm_chain(iters: int) -> Callable:
  """(x, c) ↦ x·c·c…: `iters` full read-and-write passes over x in one program, x DONATED (its
  buffer is the output's: XLA copies nothing before the passes, and the timed loop feeds each
  call the last one's result). `c` is an argument (with c = −1 the values stay exactly ±x, but
  XLA cannot fold the products); an optimisation barrier after each pass keeps XLA from fusing
  passes into one should it unroll the loop."""
  import jax

  def chain(x, c):
    return jax.lax.fori_loop(0, iters, lambda i, y: jax.lax.optimization_barrier(y * c), x)
  return jax.jit(chain, donate_argnums=(0,))


def fig_hbm(run: Run, det: dict):
  import jax
  import jax.numpy as jnp
  import numpy as np
  p = run.plan
  numel = p.hbm_mib * (1 << 20) // 4
  first = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (1024,), jnp.float32))
  holder = {"x": jnp.tile(jnp.asarray(first), numel // 1024)}
  c = jnp.float32(-1.0)
  moved = 2.0 * numel * 4 * p.hbm_iters   # each pass reads and writes the buffer
  prog = measure(run, "hbm/copy", hbm_chain(p.hbm_iters), (holder["x"], c), tag="tf32")

  def call():
    holder["x"] = prog.executable(holder["x"], c)
    return holder["x"]
  t = time_program(run, "hbm/copy", call)
  sign = -1.0 if (p.hbm_iters * (1 + p.warmup + t.n)) % 2 else 1.0
  det["exact"] = bool(np.array_equal(np.asarray(holder["x"][:1024]), sign * first))
  det["donated"] = "input_output_alias" in prog.text
  reply = run.torch_call("hbm", {"nbytes": numel * 4, "iters": p.hbm_iters}, det)
  xla_bw = moved / t.median
  torch_bw = moved / reply["seconds"] if reply else None
  run.bandwidth = max(r for r in (xla_bw, torch_bw) if r)
  det.update(buffer_bytes=numel * 4, iters=p.hbm_iters, xla_bytes_per_s=xla_bw,
             torch_bytes_per_s=torch_bw, bandwidth_bytes_per_s=run.bandwidth)
  rec = record(run, "hbm/copy", prog, t, items=moved / 1e9, unit="GB/s", det=det,
               torch_reply=reply, torch_items=moved / 1e9, floor_model=False)
  rec.flop_fraction = None
  rec.roofline_fraction = xla_bw / run.bandwidth
  return rec


def _drct_args(run: Run) -> dict:
  return {"drct": dataclasses.asdict(run.plan.drct), "chunk": run.plan.chunk}


DTYPE = {"bf16": "bfloat16", "tf32": "float32"}


def fig_drct2_infer(tag: str) -> Callable[[Run, dict], Any]:
  name = f"drct2/infer/{tag}"

  def fn(run: Run, det: dict):
    p, s = run.plan, run.plan.drct

    def attempt(batch):
      return batch, run_eval(run, name, drct2_config(p, DTYPE[tag]), batch, tag)

    batch, ran = first_that_fits(run, name, p.infer_batches, det, "batch", attempt)
    import numpy as np
    run.stash[name] = {"probs": np.asarray(ran.outputs["probs"], np.float32),
                       "s_per_scan": ran.timing.median / batch}
    smaller = [b for b in p.infer_batches if b <= batch]
    reply = run.torch_call("drct2_infer", dict(_drct_args(run), tag=tag), det, batches=smaller)
    det.update(num_slices=s.num_slices, primary_size=s.primary_size, mkey=s.mkey,
               aps_size=s.aps_size, chunk=p.chunk, s_per_scan=ran.timing.median / batch,
               paper_s_per_scan=PAPER_S_PER_SCAN,
               speedup_vs_paper=PAPER_S_PER_SCAN / (ran.timing.median / batch))
    return record(run, name, ran.prog, ran.timing, items=batch, unit="scans/s", det=det,
                  tag=tag, torch_reply=reply, torch_items=reply and reply.get("items"))
  return fn


def fig_drct2_accuracy(run: Run, det: dict):
  """bf16 against float32 predictions of the same random-weight model on the same scans (the
  two inference figures' outputs): max |Δp| over every label of every scan."""
  import numpy as np
  a, b = run.stash.get("drct2/infer/bf16"), run.stash.get("drct2/infer/tf32")
  if a is None or b is None:
    raise RuntimeError("needs the outputs of drct2/infer/bf16 and drct2/infer/tf32")
  n = min(len(a["probs"]), len(b["probs"]))
  diff = np.abs(a["probs"][:n] - b["probs"][:n])
  det.update(scans=n, mean_abs_dp=float(diff.mean()), note="same state (float32 parameters) "
             "and inputs; only the compute dtype differs")
  return empty_record("drct2/accuracy/bf16_vs_fp32", run.device, value=float(diff.max()),
                      unit="max|Δp|", details=det)


def _percentiles(times: Sequence[float]) -> dict:
  import numpy as np
  t = np.asarray(times)
  return {"p50_s": float(np.percentile(t, 50)), "p90_s": float(np.percentile(t, 90)),
          "calls": len(t), "min_s": float(t.min()), "max_s": float(t.max())}


def _calls(fn: Callable[[], Any], n: int) -> list[float]:
  from benchmarks import common
  out = []
  for _ in range(n):
    t = time.perf_counter()
    common.block(fn())
    out.append(time.perf_counter() - t)
  return out


def fig_drct2_latency(run: Run, det: dict):
  """Batch-1 latency per scan, from int16 HU already on the device: p50/p90 over
  `plan.latency_calls` calls of the library's eval step (the prediction path), beside the best
  batch's throughput (drct2/infer/bf16) and the paper's 0.82 s/scan."""
  name = "drct2/latency/b1"
  ran = run_eval(run, name, drct2_config(run.plan, "bfloat16"), 1, "bf16")
  pct = _percentiles(_calls(ran.call, run.plan.latency_calls))
  best = run.stash.get("drct2/infer/bf16", {}).get("s_per_scan")
  det.update(pct, paper_s_per_scan=PAPER_S_PER_SCAN, source="int16 HU on the device",
             speedup_vs_paper=PAPER_S_PER_SCAN / pct["p50_s"], best_batch_s_per_scan=best,
             compile_s=ran.prog.total_compile_s)
  run.stash[name] = pct
  return empty_record(name, run.device, value=pct["p50_s"], unit="s/scan (p50)",
                      compile_s=ran.prog.total_compile_s, details=det)


def fig_drct2_latency_dicom(run: Run, det: dict):
  """Batch-1 latency per scan from a DICOM series on disk (a phantom written by the library's
  own writer): decode (ctjax.data.dicom), the prediction path's batch (scan_reports.scan_batch),
  host → device, the eval step, probabilities back. Skipped where pydicom or grain is absent."""
  import tempfile
  import jax
  for mod in ("pydicom", "grain"):
    if not _findable(mod):
      raise SkipFigure(f"{mod} is not installed: no DICOM path here")
  from ctjax.data import dicom, phantom
  from ctjax.inference.scan_reports import scan_batch
  name = "drct2/latency/dicom"
  config = drct2_config(run.plan, "bfloat16")
  program = build(config, "eval", 1)
  prog = measure(run, name, program.fn, program.args, tag="bf16")
  state = real_state(config, program.args[0])
  spec = program.args[1]
  with tempfile.TemporaryDirectory() as tmp:
    phantom.write_dataset(tmp, layout="cq500", num_scans=1, seed=0,
                          size=run.plan.dicom_size, num_workers=0)
    folder = next(p.parent for p in sorted(pathlib.Path(tmp).rglob("*.dcm")))

    def call():
      batch, _ = scan_batch(dicom.read_series(folder), config)
      data = {k: jax.device_put(batch[k], spec[k].sharding) for k in spec}
      return jax.device_get(prog.executable(state, data)["probs"])
    call()
    pct = _percentiles(_calls(call, run.plan.dicom_calls))
  det.update(pct, paper_s_per_scan=PAPER_S_PER_SCAN, source="DICOM series on disk",
             dicom_size=run.plan.dicom_size, speedup_vs_paper=PAPER_S_PER_SCAN / pct["p50_s"])
  return empty_record(name, run.device, value=pct["p50_s"], unit="s/scan (p50)",
                      compile_s=prog.total_compile_s, details=det)


def fig_gru(run: Run, det: dict):
  """DrCT2's BiGRU recurrence (`sequence.bidirectional_recurrence`), forward + VJP, with the
  config's default kernels="auto" (the Pallas/Triton kernel on NVIDIA GPUs) against "xla", at
  the paper's sizes: max |Δ| of the outputs and gradients and both timings, bf16 and float32.
  value = xla seconds / auto seconds (bf16): > 1 when the kernel is faster."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from ctjax.models import sequence
  b, t_len, h = run.plan.gru
  out = {}
  for tag, dtype in (("bf16", jnp.bfloat16), ("fp32", jnp.float32)):
    k = jax.random.split(jax.random.PRNGKey(7), 4)
    gi = (jax.random.normal(k[0], (2, t_len, b, 3 * h)) * 0.5).astype(dtype)
    wh = (jax.random.normal(k[1], (2, h, 3 * h)) / np.sqrt(h)).astype(dtype)
    bh = (jax.random.normal(k[2], (2, 3 * h)) * 0.1).astype(dtype)
    ct = jax.random.normal(k[3], (2, t_len, b, h)).astype(dtype)
    res = {}
    for kernels in ("auto", "xla"):
      def fwd_vjp(gi, wh, bh, ct, kernels=kernels):
        y, vjp = jax.vjp(lambda *a: sequence.bidirectional_recurrence(*a, kernels=kernels),
                         gi, wh, bh)
        return y, vjp(ct)
      nm = f"gru/{kernels}/{tag}"
      prog = measure(run, nm, jax.jit(fwd_vjp), (gi, wh, bh, ct), tag="bf16")
      tm = time_program(run, nm, lambda: prog.executable(gi, wh, bh, ct))
      res[kernels] = (prog, tm, jax.device_get(prog.executable(gi, wh, bh, ct)))
    (pa, ta, (ya, ga)), (px, tx, (yx, gx)) = res["auto"], res["xla"]
    f32 = lambda v: np.asarray(v, np.float32)   # noqa: E731
    out[tag] = {"auto_s": ta.median, "xla_s": tx.median, "xla_over_auto": tx.median / ta.median,
                "max_abs_d_out": float(np.abs(f32(ya) - f32(yx)).max()),
                "max_abs_d_grads": {n: float(np.abs(f32(a) - f32(x)).max())
                                    for n, a, x in zip(("gi", "wh", "bh"), ga, gx)},
                "auto_pallas_launches": pa.analysis.launches_of("pallas"),
                "xla_pallas_launches": px.analysis.launches_of("pallas"),
                "auto_compile_s": pa.total_compile_s, "xla_compile_s": px.total_compile_s}
  det.update(batch=b, steps=t_len, hidden=h, by_dtype=out,
             auto_is_pallas=out["bf16"]["auto_pallas_launches"] > 0,
             both_xla=out["bf16"]["auto_pallas_launches"] == 0 and run.platform != "gpu")
  return empty_record("gru/pallas_vs_xla", run.device, value=out["bf16"]["xla_over_auto"],
                      unit="x (xla/auto)", compile_s=None, details=det)


def fig_featstore(run: Run, det: dict):
  import jax
  name = "featstore/build/bf16"
  p, s = run.plan, run.plan.drct

  def attempt(chunk):
    ran = run_store(run, name, drct2_config(p, "bfloat16", features__chunk=chunk))
    jax.block_until_ready(ran.outputs)
    t0 = time.perf_counter()
    host = jax.device_get(ran.outputs)   # the store keeps rows on the host
    det["device_to_host_s"] = time.perf_counter() - t0
    det["row_bytes_per_slice"] = sum(v[0].nbytes for v in host.values())
    return chunk, ran

  chunk, ran = first_that_fits(run, name, p.store_chunks, det, "chunk", attempt)
  smaller = [c for c in p.store_chunks if c <= chunk]
  reply = run.torch_call("featstore", dict(_drct_args(run), tag="bf16"), det, batches=smaller)
  det.update(passes=f"{s.primary_size}px + zoom to {s.aps_size}px", chunk=chunk)
  return record(run, name, ran.prog, ran.timing, items=chunk, unit="slices/s", det=det,
                tag="bf16", torch_reply=reply, torch_items=reply and reply.get("items"))


def fig_drct2_train_store(run: Run, det: dict):
  import jax.numpy as jnp
  name = "drct2/train_store/bf16"
  p = run.plan
  config = drct2_config(p, "bfloat16", features__enabled=True,
                        train__batch_size=p.store_train_batch)
  ran = run_train(run, name, config, "bf16")
  reply = run.torch_call("drct2_train_store", dict(_drct_args(run), tag="bf16",
                                                   batch=p.store_train_batch), det)
  det.update(batch=p.store_train_batch, feature_dtype=str(config.features.dtype),
             loss_finite=bool(jnp.isfinite(ran.outputs["loss"])))
  return record(run, name, ran.prog, ran.timing, items=p.store_train_batch, unit="scans/s",
                det=det, tag="bf16", torch_reply=reply,
                torch_items=reply and reply.get("items"))


def fig_drct2_train_e2e(run: Run, det: dict):
  import jax.numpy as jnp
  name = "drct2/train_e2e/bf16"
  p = run.plan

  def attempt(batch):
    ran = run_train(run, name, drct2_config(p, "bfloat16", train__batch_size=batch), "bf16")
    det["loss_finite"] = bool(jnp.isfinite(ran.outputs["loss"]))
    return batch, ran

  batch, ran = first_that_fits(run, name, p.e2e_batches, det, "batch", attempt)
  smaller = [b for b in p.e2e_batches if b <= batch]
  reply = run.torch_call("drct2_train_e2e", dict(_drct_args(run), tag="bf16"), det,
                         batches=smaller)
  det.update(chunk=p.chunk)
  return record(run, name, ran.prog, ran.timing, items=batch, unit="scans/s", det=det,
                tag="bf16", torch_reply=reply, torch_items=reply and reply.get("items"))


def fig_blend_train(tag: str, batch: int) -> Callable[[Run, dict], Any]:
  def fn(run: Run, det: dict):
    import jax.numpy as jnp
    bs = run.plan.blend
    name = f"blend/train/{tag}/b{batch}"
    ran = run_train(run, name, blend_config(run.plan, DTYPE[tag], batch), tag)
    det.update(batch=batch, image_size=bs.image_size, backbone="resnet50",
               loss_finite=bool(jnp.isfinite(ran.outputs["loss"])))
    reply = run.torch_call("blend_train", {"blend": dataclasses.asdict(bs), "tag": tag,
                                           "batch": batch}, det)
    return record(run, name, ran.prog, ran.timing, items=batch, unit="slices/s", det=det,
                  tag=tag, torch_reply=reply, torch_items=reply and reply.get("items"))
  return fn


def fig_blend_infer(tag: str) -> Callable[[Run, dict], Any]:
  def fn(run: Run, det: dict):
    bs, batch = run.plan.blend, run.plan.blend_infer_batch
    name = f"blend/infer/{tag}/b{batch}"
    ran = run_eval(run, name, blend_config(run.plan, DTYPE[tag], batch), batch, tag)
    reply = run.torch_call("blend_infer", {"blend": dataclasses.asdict(bs), "tag": tag,
                                           "batch": batch}, det)
    det.update(batch=batch, image_size=bs.image_size, backbone="resnet50")
    return record(run, name, ran.prog, ran.timing, items=batch, unit="slices/s", det=det,
                  tag=tag, torch_reply=reply, torch_items=reply and reply.get("items"))
  return fn


def fig_h2d(run: Run, det: dict):
  import jax
  from benchmarks import common
  p, s = run.plan, run.plan.drct
  hu = gpu_plan.drct_batch(s, p.h2d_batch)["hu"]
  dev = jax.devices()[0]
  t = time_program(run, "input/h2d", lambda: jax.device_put(hu, dev))
  reply = run.torch_call("h2d", dict(_drct_args(run), batch=p.h2d_batch), det)
  det.update(batch_shape=list(hu.shape), dtype=str(hu.dtype), bytes=hu.nbytes,
             source="pageable numpy memory (both frameworks)",
             note=("the CPU backend may alias host memory: not a transfer rate"
                   if run.platform == "cpu" else None))
  rec = common.speed_record("input/h2d", seconds=t.median, items=hu.nbytes / 1e6, unit="MB/s",
                            torch_seconds=None if not reply else reply["seconds"],
                            device=run.device)
  rec.details.pop("torch_threads", None)
  det.update(times=t.times, first_call_s=t.warmup_s, timed_calls=t.n)
  rec.details.update(det)
  return rec


def figures(plan: Plan) -> list[Figure]:
  """The headline first, each with its PyTorch peer (matmul, HBM copy, DrCT2 inference bf16,
  blend training bf16 at the paper's batch), then the GRU kernel check and the rest.
  Estimates in seconds (GPU: one H100/H200, compile + timing + peer; smoke: a small CPU)."""
  head_tag, head_batch = plan.blend_train[0]
  figs = [Figure("environment", fig_environment, 0.0, 0.0),
          Figure("matmul/bf16", fig_matmul("bf16"), 8, 1),
          Figure("hbm/copy", fig_hbm, 6, 1),
          Figure("drct2/infer/bf16", fig_drct2_infer("bf16"), 45, 3),
          Figure(f"blend/train/{head_tag}/b{head_batch}", fig_blend_train(head_tag, head_batch),
                 35, 6),
          Figure("gru/pallas_vs_xla", fig_gru, 20, 2),
          Figure("drct2/latency/b1", fig_drct2_latency, 25, 3),
          Figure("drct2/latency/dicom", fig_drct2_latency_dicom, 30, 4),
          Figure("matmul/tf32", fig_matmul("tf32"), 8, 1),
          Figure("drct2/infer/tf32", fig_drct2_infer("tf32"), 45, 3),
          Figure("drct2/accuracy/bf16_vs_fp32", fig_drct2_accuracy, 1, 0.1),
          Figure("featstore/build/bf16", fig_featstore, 35, 2),
          Figure("drct2/train_store/bf16", fig_drct2_train_store, 15, 3),
          Figure("drct2/train_e2e/bf16", fig_drct2_train_e2e, 50, 5)]
  for tag, batch in plan.blend_train[1:]:
    figs.append(Figure(f"blend/train/{tag}/b{batch}", fig_blend_train(tag, batch), 35, 6))
  figs.append(Figure(f"blend/infer/bf16/b{plan.blend_infer_batch}", fig_blend_infer("bf16"),
                     25, 4))
  figs.append(Figure("input/h2d", fig_h2d, 5, 1))
  return figs


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def default_out(smoke: bool) -> pathlib.Path:
  out = os.environ.get("OUT")
  if out:
    return pathlib.Path(out) / ("gpu-smoke.jsonl" if smoke else "gpu.jsonl")
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return REPO_ROOT / "benchmarks" / "results" / f"gpu{'-smoke' if smoke else ''}-{stamp}.jsonl"


def parse_inject(specs: Sequence[str]) -> dict[str, str]:
  out = {}
  for spec in specs:
    name, _, kind = spec.partition("=")
    if not name or kind not in INJECT_KINDS:
      raise ValueError(f"--inject-failure {spec!r}: expected FIGURE=" + "|".join(INJECT_KINDS))
    out[name] = kind
  return out


def table(lines: Sequence[dict]) -> str:
  head = (f"{'figure':<28} {'value':>10} {'unit':<13} {'PyTorch eager':>13} {'x/torch':>7} "
          f"{'FLOP%':>6} {'roof%':>6} {'compile':>8}  status")
  rows = [head, "-" * len(head)]

  def num(x, fmt="{:.4g}"):
    return "-" if x is None else fmt.format(x)

  for l in lines:
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    status = l["status"] if l["status"] == "ok" else (
        f"{l['status']}: {(l.get('error') or l.get('skipped') or '')[:60]}")
    rows.append(f"{l['name']:<28} {num(l['value']):>10} {l['unit'] or '':<13} "
                f"{num(l['torch_value']):>13} {num(l['ratio_vs_torch'], '{:.2f}'):>7} "
                f"{num(pct(l['flop_fraction']), '{:.1f}'):>6} "
                f"{num(pct(l['roofline_fraction']), '{:.1f}'):>6} "
                f"{num(l['compile_s'], '{:.1f}'):>8}  {status}")
  rows += latency_summary(lines)
  return "\n".join(rows)


def latency_summary(lines: Sequence[dict]) -> list[str]:
  """DrCT2 per-scan latency beside the paper's 0.82 s/scan (Table 8) and the best batch."""
  by = {l["name"]: l for l in lines}
  out = []
  for name in ("drct2/latency/b1", "drct2/latency/dicom"):
    l = by.get(name)
    if not l or l.get("status") != "ok":
      continue
    d = l.get("details") or {}
    best = d.get("best_batch_s_per_scan")
    out.append(f"DrCT2 batch-1 latency ({d.get('source')}): p50 {d['p50_s']:.4g} s/scan, "
               f"p90 {d['p90_s']:.4g} s over {d['calls']} calls; paper (Table 8) "
               f"{PAPER_S_PER_SCAN} s/scan, {PAPER_S_PER_SCAN / d['p50_s']:.3g}x faster at p50"
               + (f"; best-batch throughput {best:.4g} s/scan" if best else ""))
  return out


def markdown(path: pathlib.Path, run_id: Optional[str] = None) -> str:
  """A results file's run (the last one unless `run_id`) as a Markdown table, for the README."""
  lines = [json.loads(raw) for raw in path.read_text().splitlines() if raw.strip()]
  if not lines:
    raise ValueError("no result lines")
  run_id = run_id or lines[-1].get("run_id")
  lines = [l for l in lines if l.get("run_id") == run_id]
  env = next((l["details"] for l in lines if l["name"] == "environment"), {})
  peer = env.get("torch_peer") or {}
  out = [f"`{path.name}` run {run_id}: {lines[0]['device']}, jax {env.get('jax')}, "
         f"{PEER_LABEL} peer torch {peer.get('torch')} (no torch.compile), budget "
         f"{env.get('budget_s')} s, last line at {lines[-1].get('elapsed_s')} s", "",
         f"| figure | value | unit | {PEER_LABEL} | ctjax/torch | FLOP % | roofline % | "
         "compile s | status |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]

  def f(x, fmt="{:.4g}"):
    return "–" if x is None else fmt.format(x)

  for l in lines:
    if l["name"] == "environment":
      continue
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    status = l["status"] if l["status"] == "ok" else (
        f"{l['status']}: {(l.get('error') or l.get('skipped') or '')[:80]}")
    out.append(f"| {l['name']} | {f(l['value'])} | {l['unit'] or ''} | {f(l['torch_value'])} | "
               f"{f(l['ratio_vs_torch'], '{:.2f}')} | {f(pct(l['flop_fraction']), '{:.1f}')} | "
               f"{f(pct(l['roofline_fraction']), '{:.1f}')} | {f(l['compile_s'], '{:.1f}')} | "
               f"{status} |")
  summary = latency_summary(lines)
  if summary:
    out += [""] + summary
  return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes (the CPU rehearsal CI runs), same code path")
  parser.add_argument("--out", default=None,
                      help="JSON lines file, appended (default: $OUT/gpu.jsonl when $OUT is "
                           "set, else benchmarks/results/gpu-<time>.jsonl)")
  parser.add_argument("--budget-s", type=float, default=400.0,
                      help="skip the figures that no longer fit in this many seconds")
  parser.add_argument("--only", action="append", default=[],
                      help="run only figures whose name starts with this (repeatable); the "
                           "environment always runs")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
  parser.add_argument("--jax-mem-fraction", type=float, default=None,
                      help="XLA_PYTHON_CLIENT_MEM_FRACTION for JAX unless already set (default: "
                           "sized from the GPU's total memory so that the torch peer fits "
                           "beside it)")
  parser.add_argument("--profile", metavar="DIR", default=None,
                      help="also write a jax.profiler trace of a few steady steps of each "
                           "timed program under DIR/<figure>")
  parser.add_argument("--inject-failure", action="append", default=[], metavar="FIGURE=KIND",
                      help="make FIGURE fail (" + ", ".join(INJECT_KINDS) + "): rehearses "
                           "that one failing figure is recorded and the others still run")
  parser.add_argument("--render", metavar="JSONL", default=None,
                      help="print a results file's last run as a Markdown table and exit")
  parser.add_argument("-v", "--verbose", action="store_true")
  args = parser.parse_args(argv)
  if args.render:
    try:
      print(markdown(pathlib.Path(args.render)))
    except (OSError, ValueError, KeyError) as e:
      print(f"benchmarks.gpu: {args.render}: not a results file ({e})", file=sys.stderr)
      return 1
    return 0
  try:
    inject = parse_inject(args.inject_failure)
  except ValueError as e:
    print(f"benchmarks.gpu: {e}", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                      format="%(asctime)s %(name)s %(message)s")
  # Before the first JAX backend use: JAX's share of the GPU, the rest for the torch peer.
  memory_plan = size_jax_memory(args.jax_mem_fraction)
  plan = gpu_plan.SMOKE if args.smoke else gpu_plan.GPU
  out = pathlib.Path(args.out) if args.out else default_out(args.smoke)
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a"):
      pass
  except OSError as e:
    print(f"benchmarks.gpu: {out}: cannot write the results file ({e.strerror})",
          file=sys.stderr)
    return 1
  from tqdm import tqdm
  # `timeout` ends the run with SIGTERM: unwind (stop the torch peer, print what was done).
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
  profile = pathlib.Path(args.profile) if args.profile else None
  run = Run(plan, out, args.budget_s, with_torch=not args.no_torch, inject=inject,
            profile_dir=profile, memory_plan=memory_plan)
  figs = [f for f in figures(plan)
          if f.name == "environment" or not args.only
          or any(f.name.startswith(o) for o in args.only)]
  bar = tqdm(figs, desc="benchmarks.gpu", unit="figure", file=sys.stderr, mininterval=1.0,
             dynamic_ncols=True)
  try:
    for fig in bar:
      bar.set_postfix_str(fig.name)
      line = run_figure(run, fig)
      bar.write(f"{fig.name}: {line['status']} " + (
          f"{line['value']:.4g} {line['unit']}" if line.get("value") is not None
          else (line.get("error") or line.get("skipped") or "")[:120]), file=sys.stderr)
  finally:
    bar.close()
    run.close()
    print(f"# {run.device} · {run.platform} · budget {args.budget_s:.0f} s · "
          f"{run.elapsed():.0f} s · {'smoke' if plan.smoke else 'full'}")
    print(table(run.lines))
    print(f"# wrote {out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
