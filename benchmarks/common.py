"""Shared benchmark machinery: timing, matmul peak, XLA FLOP counts, device capture, JSON.

Every figure of the suite is a `Record` with exactly the fields of the public JSON schema
(`name, device, value, unit, torch_value, ratio_vs_torch, flop_fraction, roofline_fraction,
compile_s`; null where a field does not apply); whatever else is worth
keeping about a figure (batch, FLOPs, seconds per call, machine load) goes to `details`, which
`run.py` writes into the JSON header, so that the records stay a fixed, comparable schema.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ctjax.jsonable import to_jsonable

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
RECORD_FIELDS = ("name", "device", "value", "unit", "torch_value", "ratio_vs_torch",
                 "flop_fraction", "roofline_fraction", "compile_s")

log = logging.getLogger("benchmarks")


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Timing:
  """Seconds per call: `median` of the timed repeats (after warm-up), and all of them."""
  median: float
  times: list[float]
  warmup_s: float   # the untimed warm-up calls (executions only when `fn` is AOT-compiled).
  compile_s: Optional[float] = None   # trace + lower + XLA compile, timed on its own.

  @property
  def n(self) -> int:
    return len(self.times)


def block(out: Any) -> Any:
  """Waits for every jax.Array in `out` (torch: see `torch_sync`)."""
  leaves = jax.tree_util.tree_leaves(out)
  for leaf in leaves:
    if isinstance(leaf, jax.Array):
      leaf.block_until_ready()
  return out


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5,
            max_seconds: Optional[float] = None, sync: Callable[[Any], Any] = block) -> Timing:
  """Times `fn()` (results synced with `sync`): `warmup` untimed calls, then up to `repeats`.

  `max_seconds` bounds the timed phase: the loop stops once that much time has been spent, after
  at least one timed call (so the full preset on a small CPU gives one honest figure, not none).
  """
  t0 = time.perf_counter()
  for _ in range(max(warmup, 0)):
    sync(fn())
  warmup_s = time.perf_counter() - t0
  times: list[float] = []
  start = time.perf_counter()
  for _ in range(max(repeats, 1)):
    t = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t)
    if max_seconds is not None and time.perf_counter() - start >= max_seconds:
      break
  return Timing(statistics.median(times), times, warmup_s)


# --------------------------------------------------------------------------------------------
# FLOPs and the matmul peak
# --------------------------------------------------------------------------------------------

def xla_flops(fn: Callable, *args, **kwargs) -> float:
  """FLOPs of one call of `fn(*args)` from XLA's cost analysis of the compiled executable.

  `fn` may be jitted already or a plain function (it is jitted here). Returns NaN when the
  backend gives no figure. Note: XLA counts a `while`/`scan` body once, not per iteration; the
  DrCT GRU recurrence is < 0.1 % of the model's FLOPs, so this does not move the floor.
  """
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  compiled = jitted.lower(*args, **kwargs).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):   # older jax: one dict per executable.
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops", float("nan"))
  return float(flops) if flops and flops > 0 else float("nan")


@dataclasses.dataclass
class Compiled:
  """An AOT-compiled executable and what compiling it cost, timed apart from any execution."""
  executable: Callable
  flops: float            # XLA's cost analysis (a `while`/`scan` body counted once)
  bytes_accessed: float   # likewise
  lower_s: float          # tracing + lowering to StableHLO
  compile_s: float        # XLA compilation (autotuning included on a GPU)

  @property
  def total_s(self) -> float:
    return self.lower_s + self.compile_s


def _cost(analysis: Any, key: str) -> float:
  if isinstance(analysis, (list, tuple)):   # older jax: one dict per executable.
    analysis = analysis[0] if analysis else {}
  v = (analysis or {}).get(key, float("nan"))
  return float(v) if v and v > 0 else float("nan")


def aot_compile(fn: Callable, *args, compiler_options: Optional[dict] = None,
                **jit_kwargs) -> Compiled:
  """jit(fn).lower(*args).compile(), each phase timed; no call of the executable is made, so
  `compile_s` is compilation alone and the first timed execution is a plain execution."""
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn, **jit_kwargs)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options=compiler_options) if compiler_options \
      else lowered.compile()
  t2 = time.perf_counter()
  analysis = compiled.cost_analysis()
  return Compiled(compiled, _cost(analysis, "flops"), _cost(analysis, "bytes accessed"),
                  t1 - t0, t2 - t1)


def compile_with_flops(fn: Callable, *args) -> tuple[Callable, float]:
  """(compiled executable, FLOPs per call): compile once, time the executable itself, so the
  timed calls never include tracing or compilation even with zero warm-up calls."""
  c = aot_compile(fn, *args)
  return c.executable, c.flops


def matmul_chain(iters: int) -> Callable:
  """x ↦ x @ b @ b … (`iters` products in one jitted program, `lax.fori_loop`): a peak that is
  not a per-call figure, so dispatch and launch gaps are amortised; each product depends on the
  last, so XLA cannot hoist or drop any. With b ~ N(0, 1/n) the values stay O(1)."""
  def chain(x, b):
    return jax.lax.fori_loop(0, iters, lambda i, y: y @ b, x)
  return jax.jit(chain)


def matmul_operands(n: int, dtype: Any, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  key = jax.random.PRNGKey(seed)
  a = jax.random.normal(key, (n, n), jnp.float32).astype(dtype)
  b = (jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
       / math.sqrt(n)).astype(dtype)
  return a, b


def matmul_peak(dtype: Any = jnp.float32, n: int = 1024, *, repeats: int = 5,
                max_seconds: Optional[float] = 20.0, iters: int = 8) -> dict[str, float]:
  """Measured matmul FLOP/s on the default device for `dtype`, by XLA and (CPU) by torch.

  `iters` dependent n×n products per timed call (`matmul_chain`), so the figure is the
  device's sustained rate, not one product plus a dispatch. The floor for a model figure is
  model FLOPs / the best of the two frameworks: the device's demonstrated capability, not the
  framework's. Float32 runs at the backend's default precision (TF32 on an Ampere-or-later
  GPU, as the models do). Returns {"xla": f, "torch": f or NaN, "peak": max, "n", "iters"}.
  """
  a, b = matmul_operands(n, dtype)
  mm = aot_compile(matmul_chain(iters), a, b).executable
  flops = 2.0 * n ** 3 * iters
  xla = flops / time_fn(lambda: mm(a, b), warmup=1, repeats=repeats,
                        max_seconds=max_seconds).median
  torch_peak = float("nan")
  if jax.default_backend() == "cpu":
    try:
      import torch
      tdtype = {jnp.dtype(jnp.float32): torch.float32,
                jnp.dtype(jnp.bfloat16): torch.bfloat16}[jnp.dtype(dtype)]
      ta = torch.randn(n, n).to(tdtype)
      tb = (torch.randn(n, n) / math.sqrt(n)).to(tdtype)

      def chain():
        y = ta
        for _ in range(iters):
          y = torch.mm(y, tb)
        return y
      with torch.no_grad():
        torch_peak = flops / time_fn(chain, warmup=1, repeats=repeats,
                                     max_seconds=max_seconds, sync=lambda o: o).median
    except Exception as e:   # torch missing or no bf16 kernel: the XLA figure stands alone.
      log.warning("torch matmul peak unavailable for %s: %s", jnp.dtype(dtype).name, e)
  peak = max(x for x in (xla, torch_peak) if not math.isnan(x))
  return {"xla": xla, "torch": torch_peak, "peak": peak, "n": n, "iters": iters}


# --------------------------------------------------------------------------------------------
# Device and environment
# --------------------------------------------------------------------------------------------

def run_reporting_errors(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, int]:
  """(fn(...), 0), or (None, 1) after one `error: …` line on stderr for a CTJaxError (bad
  input, full disk): a benchmark command's way of failing, as the ctjax commands do."""
  from ctjax.errors import CTJaxError
  try:
    return fn(*args, **kwargs), 0
  except CTJaxError as e:
    print(f"error: {e}", file=sys.stderr)
    return None, 1


def load_average() -> list[float]:
  """1/5/15-minute load averages: the CPU is shared, so every result notes the load."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def device_name() -> str:
  """A short name for the default device: the GPU kind, or "cpu:<model> x<cores>"."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"cpu:{cpu_model()} x{os.cpu_count()}"
  return f"{dev.platform}:{dev.device_kind}"


def environment(include_torch: bool = True) -> dict[str, Any]:
  """Device, versions and machine state for the JSON header (`include_torch=False`: torch is
  not imported, for a JAX process whose torch peer runs elsewhere)."""
  import flax
  info: dict[str, Any] = {
      "device": device_name(),
      "platform": jax.default_backend(),
      "num_devices": jax.device_count(),
      "device_kinds": sorted({d.device_kind for d in jax.devices()}),
      "cpu_count": os.cpu_count(),
      "python": sys.version.split()[0],
      "jax": jax.__version__,
      "jaxlib": _jaxlib_version(),
      "flax": flax.__version__,
      "numpy": np.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "load_average": load_average(),
      "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  if not include_torch:
    return info
  try:
    import torch
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:
    info["torch"] = None
  return info


def _jaxlib_version() -> Optional[str]:
  try:
    from importlib import metadata
    return metadata.version("jaxlib")
  except Exception:   # not installed as a distribution (a source build): ask the module
    try:
      import jaxlib
      return getattr(jaxlib, "__version__", None)
    except ImportError:
      return None


# --------------------------------------------------------------------------------------------
# Records and JSON
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Record:
  """One figure; `details` is kept beside the record (in the header), not in it."""
  name: str
  device: str
  value: float
  unit: str
  torch_value: Optional[float] = None
  ratio_vs_torch: Optional[float] = None
  flop_fraction: Optional[float] = None
  roofline_fraction: Optional[float] = None   # per-kernel floor / measured (benchmarks/hlo.py)
  compile_s: Optional[float] = None           # lower + compile, apart from any execution
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  def as_json(self) -> dict[str, Any]:
    return to_jsonable({k: getattr(self, k) for k in RECORD_FIELDS})

  def as_line(self, **extra: Any) -> dict[str, Any]:
    """The record, its details and `extra` (a run's status fields) as one JSON line's value:
    how `python -m benchmarks.gpu` writes as it goes."""
    return to_jsonable({**{k: getattr(self, k) for k in RECORD_FIELDS},
                        "details": self.details, **extra})


def speed_record(name: str, *, seconds: float, items: float, unit: str,
                 torch_seconds: Optional[float] = None, flops: Optional[float] = None,
                 peak: Optional[float] = None, device: Optional[str] = None,
                 floor_seconds: Optional[float] = None, compile_s: Optional[float] = None,
                 **details) -> Record:
  """A throughput figure (`items` per `seconds`), its torch counterpart and FLOP fraction.

  ratio_vs_torch = ctjax speed / torch speed (> 1: ctjax faster); flop_fraction = achieved
  FLOP/s / measured matmul peak (1.0 would be the physical floor); roofline_fraction =
  `floor_seconds` (the per-layer floor of one call) / `seconds`.
  """
  value = items / seconds
  torch_value = items / torch_seconds if torch_seconds else None
  ratio = value / torch_value if torch_value else None
  frac = None
  if flops and peak and not math.isnan(flops):
    frac = (flops / seconds) / peak
  roof = floor_seconds / seconds if floor_seconds and seconds else None
  details.update(seconds_per_call=seconds, items_per_call=items, torch_seconds=torch_seconds,
                 flops_per_call=flops, peak_flops=peak, floor_seconds_per_call=floor_seconds,
                 load_average=load_average())
  if torch_seconds:
    details.setdefault("torch_threads", _LAST_TORCH_THREADS)
  return Record(name, device or device_name(), value, unit, torch_value, ratio, frac, roof,
                compile_s, details)


def latency_record(name: str, *, seconds_per_item: float, unit: str = "s/scan",
                   torch_seconds_per_item: Optional[float] = None,
                   device: Optional[str] = None, **details) -> Record:
  """A latency figure (lower is better); the ratio is still ctjax speed / torch speed."""
  ratio = (torch_seconds_per_item / seconds_per_item) if torch_seconds_per_item else None
  details.update(load_average=load_average())
  if torch_seconds_per_item:
    details.setdefault("torch_threads", _LAST_TORCH_THREADS)
  return Record(name, device or device_name(), seconds_per_item, unit, torch_seconds_per_item,
                ratio, None, details=details)


def write_json(path: Optional[os.PathLike | str], header: dict[str, Any],
               records: Sequence[Record]) -> pathlib.Path:
  """Writes {"header": …, "records": [...]}; `path` None → benchmarks/results/<stamp>.json."""
  if path is None:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{header.get('preset', 'run')}-{stamp}.json"
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  header = dict(header)
  header["details"] = {r.name: r.details for r in records}
  payload = {"header": to_jsonable(header), "records": [r.as_json() for r in records]}
  path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
  return path


def format_table(records: Sequence[Record]) -> str:
  """The table `run.py` prints: one line per figure."""
  head = f"{'figure':<48} {'value':>12} {'unit':<10} {'torch':>12} {'ctjax/torch':>11} {'FLOP%':>7}"
  lines = [head, "-" * len(head)]

  def num(x, fmt="{:.4g}"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)

  for r in records:
    frac = None if r.flop_fraction is None else 100.0 * r.flop_fraction
    lines.append(f"{r.name:<48} {num(r.value):>12} {r.unit:<10} {num(r.torch_value):>12} "
                 f"{num(r.ratio_vs_torch, '{:.2f}'):>11} {num(frac, '{:.1f}'):>7}")
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Run context and the ctjax side of a model benchmark
# --------------------------------------------------------------------------------------------

_LAST_TORCH_THREADS: Optional[int] = None


def torch_thread_options() -> tuple[int, ...]:
  """All usable cores, and 1 (see `Context.time_torch`)."""
  n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return tuple(dict.fromkeys((max(1, n or 1), 1)))


@dataclasses.dataclass
class Context:
  """What every benchmark module gets from `run.py`: the preset's settings and the peaks."""
  preset: str
  settings: dict[str, Any]
  workdir: pathlib.Path
  device: str = ""
  peaks: dict[str, float] = dataclasses.field(default_factory=dict)   # dtype → FLOP/s
  warmup: int = 1
  repeats: int = 3
  max_seconds: Optional[float] = None
  with_torch: bool = True
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)   # figure → why
  torch_threads: Optional[int] = None   # fixed torch thread count (cpu-bound runs), else probe
  fresh_peaks: bool = False             # re-measure the matmul peak beside each figure (CPU)

  def time(self, fn: Callable[[], Any], **kwargs) -> Timing:
    kw = dict(warmup=self.warmup, repeats=self.repeats, max_seconds=self.max_seconds)
    kw.update(kwargs)
    return time_fn(fn, **kw)

  def time_predict(self, model: "CTJaxModel", batch: dict[str, Any]) -> tuple[Timing, float]:
    """AOT-compiles `model.predict` on `batch` and times it: (timing, XLA FLOPs per call);
    the timing's `compile_s` is the compilation, its `warmup_s` the first execution(s)."""
    variables = model.variables
    c = aot_compile(model.predict, variables, batch)
    t = self.time(lambda: c.executable(variables, batch))
    t.compile_s = c.total_s
    return t, c.flops

  def time_torch(self, fn: Callable[[], Any], **kwargs) -> Timing:
    """Times a torch call at each of `torch_thread_options()` and keeps the fastest.

    On a loaded CPU, torch's OpenMP pool with all cores can be an order of magnitude slower
    than one thread (each op waits at a barrier for a descheduled thread), so the reference
    gets its best thread count; the choice is recorded with the figure (`torch_threads`).
    With torch on a GPU (`torch_device()`), each call is timed up to `torch_sync` (CUDA runs
    asynchronously) and only the current thread count is tried (host threads barely matter).
    """
    import torch
    global _LAST_TORCH_THREADS
    best, best_n = None, None
    options = (self.torch_threads,) if self.torch_threads else torch_thread_options()
    if torch_device().type == "cuda":
      options = (self.torch_threads or torch.get_num_threads(),)
    sync = torch_sync if torch.cuda.is_available() else _no_sync   # no CUDA: as before
    for n in options:
      torch.set_num_threads(n)
      t = self.time(fn, sync=sync, **kwargs)
      if best is None or t.median < best.median:
        best, best_n = t, n
    torch.set_num_threads(best_n)
    _LAST_TORCH_THREADS = best_n
    return best

  def pick_torch_threads(self, fn: Callable[[], Any]) -> int:
    """Sets torch's thread count to the faster of `torch_thread_options()` for `fn` (one
    warm-up and one timed call each) and returns it; for passes timed as a whole."""
    return_n = None
    best = None
    import torch
    global _LAST_TORCH_THREADS
    sync = torch_sync if torch.cuda.is_available() else _no_sync
    for n in torch_thread_options():
      torch.set_num_threads(n)
      t = time_fn(fn, warmup=1, repeats=1, sync=sync).median
      if best is None or t < best:
        best, return_n = t, n
    torch.set_num_threads(return_n)
    _LAST_TORCH_THREADS = return_n
    return return_n

  def peak(self, dtype: str) -> Optional[float]:
    """The matmul peak for `dtype`, re-measured now (short) when `fresh_peaks`: on a shared
    CPU the load moves by 3× within minutes, so a peak from the start of the run would make
    FLOP fractions of later figures meaningless (> 100 % or far too low)."""
    if self.fresh_peaks and self.settings.get("matmul_n"):
      got = matmul_peak(jnp.dtype(dtype), self.settings["matmul_n"], repeats=3,
                        max_seconds=self.max_seconds or 5.0)["peak"]
      self.peaks[dtype] = got
      return got
    return self.peaks.get(dtype)


def probe_torch_threads() -> int:
  """The faster torch thread count for a VGG16 conv stack on one 224 px slice (cheap; used
  when each full-size figure can afford only one timed torch call)."""
  import torch
  from tests.support import torch_models
  net = torch_models.build("vgg16").eval()
  x = torch.randn(1, 3, 224, 224)
  best, best_n = None, 1
  with torch.inference_mode():
    for n in torch_thread_options():
      torch.set_num_threads(n)
      t = time_fn(lambda: net.features(x), warmup=1, repeats=2, sync=lambda o: o).median
      if best is None or t < best:
        best, best_n = t, n
  torch.set_num_threads(best_n)
  return best_n


def load_config(name: str, arg: Optional[str] = None):
  """`configs/<name>.py`'s get_config(arg), as the library builds it (`ctjax.configs.named`)."""
  from ctjax.configs import named
  return named.get_config(name, arg)


def override(config, values: dict[str, Any]):
  """Sets dotted `values` on a ConfigDict; a key the config lacks is an error, not a no-op."""
  from ctjax.errors import ConfigError
  config = config.copy_and_resolve_references()
  for dotted, value in values.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"benchmark override {dotted}: the config has no such field")
    with config.unlocked() if hasattr(config, "unlocked") else _null():
      node[leaf] = value
  return config


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


@dataclasses.dataclass
class CTJaxModel:
  """A task's model, its train state and the two jitted functions the benchmarks time."""
  config: Any
  task: Any
  model: Any
  state: Any
  predict: Callable      # (variables, batch) → outputs
  train_step: Callable   # (state, batch, rng) → (state, metrics); state donated

  @property
  def variables(self):
    return self.state.variables()


def build_ctjax(config, *, steps_per_epoch: int = 100, seed: int = 0) -> CTJaxModel:
  """Model, state and jitted steps through the same code the trainer runs (Task protocol,
  ctjax.train.state / steps), so the benchmark measures what training and evaluation execute."""
  from ctjax.train import optim
  from ctjax.train.state import create_state
  from ctjax.train.steps import make_train_step
  from ctjax.train.tasks import get_task
  task = get_task(config.task)
  model = task.build_model(config)
  tx, _ = optim.make_optimizer(config, optim.total_steps(config, steps_per_epoch),
                               steps_per_epoch, lambda p: task.param_groups(config, p))
  state = create_state(task, model, config, jax.random.PRNGKey(seed), tx)
  predict = jax.jit(lambda v, b: task.predict(model, v, b, config))
  train_step = jax.jit(make_train_step(task, model, config), donate_argnums=(0,))
  return CTJaxModel(config, task, model, state, predict, train_step)


def to_device(batch: dict[str, Any]) -> dict[str, jax.Array]:
  """Host numpy batch → device arrays (strings and other non-numeric fields dropped)."""
  return {k: jnp.asarray(v) for k, v in batch.items()
          if isinstance(v, (np.ndarray, jax.Array)) and v.dtype.kind in "biuf"}


def torch_autocast(dtype: str):
  """torch's mixed-precision context for `dtype` ("float32" → no-op)."""
  import contextlib
  import torch
  if dtype == "bfloat16":
    return torch.autocast("cpu" if jax.default_backend() == "cpu" else "cuda",
                          dtype=torch.bfloat16)
  return contextlib.nullcontext()


def torch_device():
  """The torch reference's device, matching JAX's: cuda when JAX runs on a GPU and torch has
  CUDA, else cpu (a GPU figure is never compared with a CPU torch one, nor the reverse)."""
  import torch
  return torch.device("cuda" if (jax.default_backend() == "gpu" and torch.cuda.is_available())
                      else "cpu")


def torch_prepare(net):
  """The fair PyTorch peer: on CUDA, `torch_models.prepare_for_cuda` (cuDNN autotuning,
  TF32 as JAX's default float32 precision there, channels_last weights and activations);
  on the CPU the module is returned unchanged (the CPU figures were taken that way)."""
  if torch_device().type == "cuda":
    from tests.support.torch_models import prepare_for_cuda
    return prepare_for_cuda(net)
  return net


def _has_cuda_tensor(out: Any) -> bool:
  import torch
  if isinstance(out, torch.Tensor):
    return out.is_cuda
  if isinstance(out, dict):
    return any(_has_cuda_tensor(v) for v in out.values())
  if isinstance(out, (list, tuple)):
    return any(_has_cuda_tensor(v) for v in out)
  return False


def _no_sync(out: Any) -> Any:
  return out


def torch_sync(out: Any) -> Any:
  """`time_fn`'s sync for torch: waits for the GPU's queued kernels when torch runs on CUDA
  (its calls return at launch; the clock would read launch time, not compute time). CPU torch
  is synchronous: a no-op there, as before."""
  import torch
  if torch.cuda.is_available() and (torch_device().type == "cuda" or _has_cuda_tensor(out)):
    torch.cuda.synchronize()
  return out


def markdown_table(path: os.PathLike | str) -> str:
  """A results JSON → a Markdown table (for README / NOTES), with the machine and its load."""
  payload = json.loads(pathlib.Path(path).read_text())
  header, records = payload["header"], payload["records"]
  env = header["environment"]
  lines = [f"`{pathlib.Path(path).name}`: {env['device']}, jax {env['jax']}, torch "
           f"{env['torch']}, preset `{header['preset']}`, load {header.get('load_before')} → "
           f"{header.get('load_after')}", "",
           "| figure | value | unit | torch | ctjax/torch | FLOP % | load (1 min) |",
           "|---|---:|---|---:|---:|---:|---:|"]

  def f(x, fmt="{:.4g}"):
    return "–" if x is None else fmt.format(x)

  for r in records:
    d = header.get("details", {}).get(r["name"], {})
    load = (d.get("load_average") or [None])[0]
    frac = None if r["flop_fraction"] is None else 100 * r["flop_fraction"]
    lines.append(f"| {r['name']} | {f(r['value'])} | {r['unit']} | {f(r['torch_value'])} | "
                 f"{f(r['ratio_vs_torch'], '{:.2f}')} | {f(frac, '{:.1f}')} | {f(load)} |")
  return "\n".join(lines)
