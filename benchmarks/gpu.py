"""One GPU benchmark run in one command of at most 7 minutes, with what the device has.

  PYTHONUNBUFFERED=1 timeout 420 python3 -m benchmarks.gpu --out $OUT/gpu.jsonl   # the device
  python -m benchmarks.gpu --smoke                    # the same run at tiny sizes, on a CPU

Figures, in priority order (benchmarks/NOTES.md, "GPU run"): environment; matmul peak bf16 and
TF32 (8192³, pipelined); HBM copy bandwidth; DrCT2 inference bf16 and TF32 (28 × 224² + 16 ×
512², backbone chunked over slices); feature-store build (224 and 512 passes); DrCT2 train step
from cached features (batch 256) and end to end; blend-sign ResNet-50 training at 512² (bf16 and
TF32, batch 64 and 16) and inference; host → device input rate.

Each figure is isolated (its own try/except, out-of-memory included, the error kept in its
line), written as one JSON line to `--out` as soon as it is measured, and skipped with the
reason when the `--budget-s` guard says it no longer fits. Compilation is timed on its own;
steady state is the compiled executable's median. The PyTorch peer runs in its own process
(benchmarks/gpu_torch.py). Inputs are random (no phantom data); the code path imports neither
grain, pydicom, tensorboardX nor ml_collections.

A line: {name, device, value, unit, torch_value, ratio_vs_torch, flop_fraction,
roofline_fraction, compile_s, status (ok | error | skipped), error, error_kind (oom | error),
skipped, details{...}, run_id, elapsed_s}.
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
               torch_env: Optional[dict] = None):
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
  def emit(self, line: dict) -> None:
    line = dict(line, run_id=self.run_id, elapsed_s=round(self.elapsed(), 2))
    self.lines.append(line)
    self.out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.out_path, "a") as f:
      f.write(json.dumps(line, default=_json_default) + "\n")
      f.flush()
      os.fsync(f.fileno())

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


def _json_default(o: Any) -> Any:
  import numpy as np
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return _clean(float(o))
  if isinstance(o, np.ndarray):
    return o.tolist()
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  return str(o)


def _clean(v: Any) -> Any:
  if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
    return None
  if isinstance(v, dict):
    return {k: _clean(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_clean(x) for x in v]
  return v


def empty_line(name: str, device: str, unit: str = "") -> dict:
  from benchmarks.common import RECORD_FIELDS
  line = {k: None for k in RECORD_FIELDS}
  line.update(name=name, device=device, unit=unit)
  return line


def run_figure(run: Run, fig: Figure) -> dict:
  """Runs one figure in isolation and emits its line (ok, error or skipped)."""
  est = run.estimate(fig)
  left = run.remaining()
  if est > 0 and est > left:
    line = empty_line(fig.name, run.device)
    line.update(status="skipped", error=None, error_kind=None,
                skipped=f"budget: needs ~{est:.0f} s (estimate), {max(left, 0):.0f} s of the "
                        f"{run.budget_s:.0f} s budget left",
                details={"estimate_s": round(est, 1)})
    run.emit(line)
    return line
  det: dict[str, Any] = {"estimate_s": round(est, 1)}
  t = time.monotonic()
  try:
    run.maybe_inject(fig.name, None)
    rec = fig.fn(run, det)
    line = dict(rec, status="ok", error=None, error_kind=None, skipped=None)
  except Exception as e:   # isolation: every failure becomes this figure's line
    line = empty_line(fig.name, run.device)
    line.update(status="error", error=short_error(e), error_kind="oom" if is_oom(e) else "error",
                skipped=None)
    log.debug("figure %s failed", fig.name, exc_info=True)
  took = time.monotonic() - t
  det["wall_s"] = round(took, 2)
  det.update(_memory_stats())
  line["details"] = _clean(dict(det, **line.get("details", {})))
  if line["status"] == "ok" and est > 0:
    base = fig.smoke_est_s if run.plan.smoke else fig.est_s
    if base > 0:
      run._ratios.append(took / base)
  run.emit(line)
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
# Compiling, counting and timing one program
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Program:
  executable: Callable
  flops: float            # for flop_fraction: XLA's cost analysis (see `measure`)
  flops_source: str
  xla_compiled_flops: float
  layers: list            # benchmarks.roofline layers
  lower_s: float
  compile_s: float

  @property
  def total_compile_s(self) -> float:
    return self.lower_s + self.compile_s


def measure(run: Run, fn: Callable, args: tuple, *, tag: str = "bf16",
            donate: tuple = (), unlooped: Optional[Callable] = None,
            analytic_flops: Optional[float] = None) -> Program:
  """Trace → lower → compile `fn(*args)`, each timed, nothing executed.

  FLOPs (flop_fraction): XLA's cost analysis of the compiled executable, which counts a loop
  body once. Where the program loops over slice chunks, `unlooped` (the same program without
  chunking) is lowered — not compiled, no memory — and its cost analysis taken instead; where
  the loop is the measurement's own pipelining, `analytic_flops` is used.
  """
  import jax
  from benchmarks import roofline
  from benchmarks.common import _cost
  from benchmarks.gpu_models import precision_context
  with precision_context(tag):
    jitted = jax.jit(fn, donate_argnums=donate)
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    lowered = traced.lower()
    t1 = time.perf_counter()
    opts = run.plan.compiler_options
    compiled = lowered.compile(compiler_options=opts) if opts else lowered.compile()
    t2 = time.perf_counter()
    layers = roofline.walk(traced.jaxpr.jaxpr)
    xla_flops = _cost(compiled.cost_analysis(), "flops")
    flops, source = xla_flops, "xla-compiled"
    if analytic_flops is not None:
      flops, source = analytic_flops, "analytic"
    elif unlooped is not None:
      try:
        flops = _cost(jax.jit(unlooped).trace(*args).lower().cost_analysis(), "flops")
        source = "xla-lowered-unchunked"
      except Exception as e:   # no HLO cost analysis here: the walker's count
        log.warning("unchunked cost analysis failed (%s); using the layer count", e)
        flops, source = roofline.total_flops(layers), "layer-walker"
  return Program(compiled, flops, source, xla_flops, layers, t1 - t0, t2 - t1)


def time_program(run: Run, call: Callable[[], Any]):
  from benchmarks import common
  p = run.plan
  return common.time_fn(call, warmup=p.warmup, repeats=p.repeats, max_seconds=p.max_seconds)


def record(run: Run, name: str, prog: Optional[Program], timing, *, items: float, unit: str,
           det: dict, tag: str = "bf16", torch_reply: Optional[dict] = None,
           torch_items: Optional[float] = None, floor_model: bool = True) -> dict:
  """The figure's line: value = items / median seconds, its torch counterpart (the same
  items), flop_fraction against the measured peak, roofline_fraction against the floor."""
  from benchmarks import common, roofline
  dtype = "bfloat16" if tag == "bf16" else "float32"
  peak = run.peaks.get(dtype)
  torch_s = None
  if torch_reply and torch_reply.get("seconds"):
    scale = items / torch_items if torch_items else 1.0
    torch_s = torch_reply["seconds"] * scale
    det["torch_times"] = torch_reply.get("times")
    det["torch_warmup_s"] = torch_reply.get("warmup_s")
  floor = None
  if prog is not None:
    det.update(flops_source=prog.flops_source, xla_compiled_flops=prog.xla_compiled_flops,
               lower_s=prog.lower_s, xla_compile_s=prog.compile_s)
  if prog is not None and floor_model:
    summ = roofline.summary(prog.layers, run.peaks, run.bandwidth)
    floor = summ["floor_s"]
    det.update(summ)
    if floor:
      det["floor_items_per_s"] = items / floor
    if not peak:
      det["flop_fraction_missing"] = f"no measured {dtype} matmul peak in this run"
    if floor is None:
      det["roofline_missing"] = "needs both measured ceilings (matmul peak, HBM bandwidth)"
  det.update(times=timing.times, first_call_s=timing.warmup_s, timed_calls=timing.n,
             precision=tag)
  rec = common.speed_record(
      name, seconds=timing.median, items=items, unit=unit, torch_seconds=torch_s,
      flops=None if prog is None else prog.flops, peak=peak, device=run.device,
      floor_seconds=floor, compile_s=None if prog is None else prog.total_compile_s)
  line = rec.as_json()
  line["details"] = {k: v for k, v in rec.details.items() if k != "torch_threads"}
  line["details"].update(det)
  return line


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def fig_environment(run: Run, det: dict) -> dict:
  import jax
  from benchmarks import common
  env = common.environment(include_torch=False)   # torch: the peer's own answer below
  devs = jax.devices()
  env.update(devices=[str(d) for d in devs],
             memory_stats=_memory_stats(),
             env={k: v for k, v in os.environ.items()
                  if k.startswith(("XLA_", "JAX_", "CUDA_", "TF_", "NVIDIA_"))},
             nvidia_smi=nvidia_smi(), plan=gpu_plan.plan_dict(run.plan),
             absent_here={m: not _findable(m) for m in NOT_ON_DEVICE},
             budget_s=run.budget_s, argv=sys.argv[1:])
  if run.torch is not None and not run.torch_skip:
    why = run.torch.ready(timeout=120.0)
    if why:
      env["torch_peer"] = {"error": why}
    else:
      reply = run.torch.request("env", {}, timeout=60.0)
      env["torch_peer"] = reply.get("extra") or {"error": reply.get("error")}
  line = empty_line("environment", run.device)
  line["details"] = env
  return line


# Not on a bare GPU host's python3: nothing this run imports may need them.
NOT_ON_DEVICE = ("grain", "pydicom", "tensorboardX", "ml_collections")


def _findable(name: str) -> bool:
  import importlib.util
  try:
    return importlib.util.find_spec(name) is not None
  except (ValueError, ImportError):   # blocked (sys.modules[name] = None) or broken
    return False


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


def fig_matmul(tag: str) -> Callable[[Run, dict], dict]:
  def fn(run: Run, det: dict) -> dict:
    import jax.numpy as jnp
    from benchmarks import common
    from benchmarks.gpu_models import DTYPES, precision_context
    p = run.plan
    n, iters = p.matmul_n, p.matmul_iters
    with precision_context(tag):
      a, b = common.matmul_operands(n, DTYPES[tag])
    flops = 2.0 * n ** 3 * iters
    prog = measure(run, common.matmul_chain(iters), (a, b), tag=tag, analytic_flops=flops)
    t = time_program(run, lambda: prog.executable(a, b))
    out = prog.executable(a, b)
    ok = bool(jnp.isfinite(out.astype(jnp.float32)).all())
    reply = run.torch_call("matmul", {"n": n, "iters": iters, "tag": tag}, det)
    xla_rate = flops / t.median
    torch_rate = flops / reply["seconds"] if reply else None
    dtype = "bfloat16" if tag == "bf16" else "float32"
    run.peaks[dtype] = max(r for r in (xla_rate, torch_rate) if r)
    det.update(n=n, iters=iters, finite=ok, xla_flops_per_s=xla_rate,
               torch_flops_per_s=torch_rate, peak_flops_per_s=run.peaks[dtype],
               nvidia_smi_after=nvidia_smi() if run.platform == "gpu" else None)
    line = record(run, f"matmul/{tag}", prog, t, items=flops / 1e12, unit="TFLOP/s", det=det,
                  tag=tag, torch_reply=reply, torch_items=flops / 1e12, floor_model=False)
    line["roofline_fraction"] = xla_rate / run.peaks[dtype]
    return line
  return fn


def fig_hbm(run: Run, det: dict) -> dict:
  import jax
  import jax.numpy as jnp
  from benchmarks.gpu_models import hbm_chain
  p = run.plan
  numel = p.hbm_mib * (1 << 20) // 4
  x = jax.random.normal(jax.random.PRNGKey(0), (numel,), jnp.float32)
  c = jnp.float32(-1.0)
  moved = 2.0 * numel * 4 * p.hbm_iters   # each pass reads and writes the buffer
  prog = measure(run, hbm_chain(p.hbm_iters), (x, c), tag="tf32")
  t = time_program(run, lambda: prog.executable(x, c))
  sign = -1.0 if p.hbm_iters % 2 else 1.0
  det["exact"] = bool(jnp.array_equal(prog.executable(x, c)[:1024], sign * x[:1024]))
  reply = run.torch_call("hbm", {"nbytes": numel * 4, "iters": p.hbm_iters}, det)
  xla_bw = moved / t.median
  torch_bw = moved / reply["seconds"] if reply else None
  run.bandwidth = max(r for r in (xla_bw, torch_bw) if r)
  det.update(buffer_bytes=numel * 4, iters=p.hbm_iters, xla_bytes_per_s=xla_bw,
             torch_bytes_per_s=torch_bw, bandwidth_bytes_per_s=run.bandwidth)
  line = record(run, "hbm/copy", prog, t, items=moved / 1e9, unit="GB/s", det=det,
                torch_reply=reply, torch_items=moved / 1e9, floor_model=False)
  line["flop_fraction"] = None
  line["roofline_fraction"] = xla_bw / run.bandwidth
  return line


def _drct_args(run: Run) -> dict:
  return {"drct": dataclasses.asdict(run.plan.drct), "chunk": run.plan.chunk}


def fig_drct2_infer(tag: str) -> Callable[[Run, dict], dict]:
  name = f"drct2/infer/{tag}"

  def fn(run: Run, det: dict) -> dict:
    import jax.numpy as jnp
    from benchmarks import gpu_models as gm
    p, s = run.plan, run.plan.drct
    model = gm.build_drct2(s, gm.DTYPES[tag])
    variables = gm.init_drct2(model, s)

    def attempt(batch):
      hu = jnp.asarray(gpu_plan.drct_batch(s, batch)["hu"])
      prog = measure(run, gm.drct2_predict(model, s, p.chunk), (variables, hu), tag=tag,
                     unlooped=gm.drct2_predict(model, s, None))
      return batch, prog, time_program(run, lambda: prog.executable(variables, hu))

    batch, prog, t = first_that_fits(run, name, p.infer_batches, det, "batch", attempt)
    smaller = [b for b in p.infer_batches if b <= batch]
    reply = run.torch_call("drct2_infer", dict(_drct_args(run), tag=tag), det, batches=smaller)
    det.update(num_slices=s.num_slices, primary_size=s.primary_size, mkey=s.mkey,
               aps_size=s.aps_size, chunk=p.chunk, s_per_scan=t.median / batch,
               paper_s_per_scan=PAPER_S_PER_SCAN,
               speedup_vs_paper=PAPER_S_PER_SCAN / (t.median / batch))
    return record(run, name, prog, t, items=batch, unit="scans/s", det=det, tag=tag,
                  torch_reply=reply, torch_items=reply and reply.get("items"))
  return fn


def fig_featstore(run: Run, det: dict) -> dict:
  import jax
  import jax.numpy as jnp
  from benchmarks import gpu_models as gm
  name = "featstore/build/bf16"
  p, s = run.plan, run.plan.drct
  model = gm.build_drct2(s, jnp.bfloat16)
  variables = gm.init_drct2(model, s)
  params = {"params": {"backbone": variables["params"]["backbone"]}}
  build = gm.drct2_store_build(model, s)

  def attempt(chunk):
    hu = jnp.asarray(gpu_plan.random_hu((chunk, s.image_size, s.image_size)))
    prog = measure(run, build, (params, hu), tag="bf16")
    t = time_program(run, lambda: prog.executable(params, hu))
    out = prog.executable(params, hu)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    host = jax.device_get(out)   # the store keeps rows on the host (float32 there)
    det["device_to_host_s"] = time.perf_counter() - t0
    det["row_bytes_per_slice"] = sum(v[0].nbytes for v in host.values())
    return chunk, prog, t

  chunk, prog, t = first_that_fits(run, name, p.store_chunks, det, "chunk", attempt)
  smaller = [c for c in p.store_chunks if c <= chunk]
  reply = run.torch_call("featstore", dict(_drct_args(run), tag="bf16"), det, batches=smaller)
  det.update(passes=f"{s.primary_size}px + zoom to {s.aps_size}px", chunk=chunk)
  return record(run, name, prog, t, items=chunk, unit="slices/s", det=det, tag="bf16",
                torch_reply=reply, torch_items=reply and reply.get("items"))


def fig_drct2_train_store(run: Run, det: dict) -> dict:
  import jax
  import jax.numpy as jnp
  from benchmarks import gpu_models as gm
  name = "drct2/train_store/bf16"
  p, s = run.plan, run.plan.drct
  model = gm.build_drct2(s, jnp.bfloat16)
  variables = gm.init_drct2(model, s)
  tx = gm.drct2_optimizer(s)
  channels = gpu_plan.scale_channels(512, s.width)
  hw = gpu_plan.vgg_fmap_hw(s.primary_size)
  host = gpu_plan.drct_store_batch(s, p.store_train_batch, channels, hw)
  feats = {k: jnp.asarray(host[k]) for k in ("pooled", "feature_map", "aps_pooled")}
  labels = jnp.asarray(host["labels"])
  rng = jax.random.PRNGKey(1)
  holder = {"state": gm.drct2_train_state(variables, tx)}
  prog = measure(run, gm.drct2_train_step_store(model, tx), (holder["state"], feats, labels, rng),
                 tag="bf16", donate=(0,))

  def step():
    holder["state"], loss = prog.executable(holder["state"], feats, labels, rng)
    return loss
  t = time_program(run, step)
  reply = run.torch_call("drct2_train_store", dict(_drct_args(run), tag="bf16",
                                                   batch=p.store_train_batch), det)
  det.update(batch=p.store_train_batch, feature_dtype="float32",
             loss_finite=bool(jnp.isfinite(step())))
  return record(run, name, prog, t, items=p.store_train_batch, unit="scans/s", det=det,
                tag="bf16", torch_reply=reply, torch_items=reply and reply.get("items"))


def fig_drct2_train_e2e(run: Run, det: dict) -> dict:
  import jax
  import jax.numpy as jnp
  from benchmarks import gpu_models as gm
  name = "drct2/train_e2e/bf16"
  p, s = run.plan, run.plan.drct
  model = gm.build_drct2(s, jnp.bfloat16)
  variables = gm.init_drct2(model, s)
  bparams = variables["params"]["backbone"]
  tx = gm.drct2_optimizer(s)
  rng = jax.random.PRNGKey(1)

  def attempt(batch):
    host = gpu_plan.drct_batch(s, batch)
    hu, labels = jnp.asarray(host["hu"]), jnp.asarray(host["labels"])
    holder = {"state": gm.drct2_train_state(variables, tx)}
    args = (holder["state"], bparams, hu, labels, rng)
    prog = measure(run, gm.drct2_train_step_e2e(model, tx, s, p.chunk), args, tag="bf16",
                   donate=(0,), unlooped=gm.drct2_train_step_e2e(model, tx, s, None))

    def step():
      holder["state"], loss = prog.executable(holder["state"], bparams, hu, labels, rng)
      return loss
    t = time_program(run, step)
    det["loss_finite"] = bool(jnp.isfinite(step()))
    return batch, prog, t

  batch, prog, t = first_that_fits(run, name, p.e2e_batches, det, "batch", attempt)
  smaller = [b for b in p.e2e_batches if b <= batch]
  reply = run.torch_call("drct2_train_e2e", dict(_drct_args(run), tag="bf16"), det,
                         batches=smaller)
  det.update(chunk=p.chunk)
  return record(run, name, prog, t, items=batch, unit="scans/s", det=det, tag="bf16",
                torch_reply=reply, torch_items=reply and reply.get("items"))


def fig_blend_train(tag: str, batch: int) -> Callable[[Run, dict], dict]:
  def fn(run: Run, det: dict) -> dict:
    import jax.numpy as jnp
    from benchmarks import gpu_models as gm
    bs = run.plan.blend
    model = gm.build_blend(bs, gm.DTYPES[tag])
    variables = gm.init_blend(model, bs)
    tx = gm.blend_optimizer(bs)
    host = gpu_plan.blend_batch(bs, batch)
    dev = {k: jnp.asarray(v) for k, v in host.items()}
    holder = {"state": gm.blend_train_state(variables, tx)}
    prog = measure(run, gm.blend_train_step(model, tx, bs), (holder["state"], dev), tag=tag,
                   donate=(0,))

    def step():
      holder["state"], loss = prog.executable(holder["state"], dev)
      return loss
    t = time_program(run, step)
    det.update(batch=batch, image_size=bs.image_size, backbone="resnet50",
               loss_finite=bool(jnp.isfinite(step())))
    reply = run.torch_call("blend_train", {"blend": dataclasses.asdict(bs), "tag": tag,
                                           "batch": batch}, det)
    return record(run, f"blend/train/{tag}/b{batch}", prog, t, items=batch, unit="slices/s",
                  det=det, tag=tag, torch_reply=reply, torch_items=reply and reply.get("items"))
  return fn


def fig_blend_infer(tag: str) -> Callable[[Run, dict], dict]:
  def fn(run: Run, det: dict) -> dict:
    import jax.numpy as jnp
    from benchmarks import gpu_models as gm
    bs, batch = run.plan.blend, run.plan.blend_infer_batch
    model = gm.build_blend(bs, gm.DTYPES[tag])
    variables = gm.init_blend(model, bs)
    hu = jnp.asarray(gpu_plan.blend_batch(bs, batch)["hu"])
    prog = measure(run, gm.blend_predict(model, bs), (variables, hu), tag=tag)
    t = time_program(run, lambda: prog.executable(variables, hu))
    reply = run.torch_call("blend_infer", {"blend": dataclasses.asdict(bs), "tag": tag,
                                           "batch": batch}, det)
    det.update(batch=batch, image_size=bs.image_size, backbone="resnet50")
    return record(run, f"blend/infer/{tag}/b{batch}", prog, t, items=batch, unit="slices/s",
                  det=det, tag=tag, torch_reply=reply, torch_items=reply and reply.get("items"))
  return fn


def fig_h2d(run: Run, det: dict) -> dict:
  import jax
  from benchmarks import common
  p, s = run.plan, run.plan.drct
  hu = gpu_plan.drct_batch(s, p.h2d_batch)["hu"]
  dev = jax.devices()[0]
  t = time_program(run, lambda: jax.device_put(hu, dev))
  reply = run.torch_call("h2d", dict(_drct_args(run), batch=p.h2d_batch), det)
  det.update(batch_shape=list(hu.shape), dtype=str(hu.dtype), bytes=hu.nbytes,
             source="pageable numpy memory (both frameworks)",
             note=("the CPU backend may alias host memory: not a transfer rate"
                   if run.platform == "cpu" else None))
  rec = common.speed_record("input/h2d", seconds=t.median, items=hu.nbytes / 1e6, unit="MB/s",
                            torch_seconds=None if not reply else reply["seconds"],
                            device=run.device)
  det.update(times=t.times, first_call_s=t.warmup_s, timed_calls=t.n)
  line = rec.as_json()
  line["details"] = det
  return line


def figures(plan: Plan) -> list[Figure]:
  """Priority order; estimates in seconds (GPU: one H100/H200, compile + timing + peer)."""
  figs = [Figure("environment", fig_environment, 0.0, 0.0),
          Figure("matmul/bf16", fig_matmul("bf16"), 8, 1),
          Figure("matmul/tf32", fig_matmul("tf32"), 8, 1),
          Figure("hbm/copy", fig_hbm, 6, 1),
          Figure("drct2/infer/bf16", fig_drct2_infer("bf16"), 45, 3),
          Figure("drct2/infer/tf32", fig_drct2_infer("tf32"), 45, 3),
          Figure("featstore/build/bf16", fig_featstore, 35, 2),
          Figure("drct2/train_store/bf16", fig_drct2_train_store, 15, 2),
          Figure("drct2/train_e2e/bf16", fig_drct2_train_e2e, 50, 4)]
  for tag, batch in plan.blend_train:
    figs.append(Figure(f"blend/train/{tag}/b{batch}", fig_blend_train(tag, batch), 35, 4))
  figs.append(Figure(f"blend/infer/bf16/b{plan.blend_infer_batch}", fig_blend_infer("bf16"),
                     25, 3))
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
  head = (f"{'figure':<26} {'value':>10} {'unit':<9} {'torch':>10} {'x/torch':>7} {'FLOP%':>6} "
          f"{'roof%':>6} {'compile':>8}  status")
  rows = [head, "-" * len(head)]

  def num(x, fmt="{:.4g}"):
    return "-" if x is None else fmt.format(x)

  for l in lines:
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    status = l["status"] if l["status"] == "ok" else (
        f"{l['status']}: {(l.get('error') or l.get('skipped') or '')[:60]}")
    rows.append(f"{l['name']:<26} {num(l['value']):>10} {l['unit'] or '':<9} "
                f"{num(l['torch_value']):>10} {num(l['ratio_vs_torch'], '{:.2f}'):>7} "
                f"{num(pct(l['flop_fraction']), '{:.1f}'):>6} "
                f"{num(pct(l['roofline_fraction']), '{:.1f}'):>6} "
                f"{num(l['compile_s'], '{:.1f}'):>8}  {status}")
  return "\n".join(rows)


def markdown(path: pathlib.Path, run_id: Optional[str] = None) -> str:
  """A results file's run (the last one unless `run_id`) as a Markdown table, for the README."""
  lines = [json.loads(raw) for raw in path.read_text().splitlines() if raw.strip()]
  if not lines:
    raise ValueError("no result lines")
  run_id = run_id or lines[-1].get("run_id")
  lines = [l for l in lines if l.get("run_id") == run_id]
  env = next((l["details"] for l in lines if l["name"] == "environment"), {})
  peer = env.get("torch_peer") or {}
  out = [f"`{path.name}` run {run_id}: {lines[0]['device']}, jax {env.get('jax')}, torch "
         f"{peer.get('torch')}, budget {env.get('budget_s')} s, last line at "
         f"{lines[-1].get('elapsed_s')} s", "",
         "| figure | value | unit | torch | ctjax/torch | FLOP % | roofline % | compile s | "
         "status |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]

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
  parser.add_argument("--jax-mem-fraction", type=float, default=0.6,
                      help="XLA_PYTHON_CLIENT_MEM_FRACTION for JAX unless already set (the "
                           "rest of the GPU is the torch peer's)")
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
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(args.jax_mem_fraction))
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
  run = Run(plan, out, args.budget_s, with_torch=not args.no_torch, inject=inject)
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
