"""Compiled estimates: ctjax's own programs compiled for GPUs and TPU slices on a CPU host.

  pip install -e '.[aot]'   # JAX's CUDA plugin and libtpu at the project's jax version
  python -m benchmarks.compiled [--targets h100,h200,tpu-v5e-8] [--programs drct2/train_store,…]
                                [--out runs/compiled] [--results benchmarks/results]
  python -m benchmarks.compiled --render benchmarks/results/compiled-h100.jsonl …   # Markdown
  python -m benchmarks.compiled --reanalyze --out runs/compiled   # recount from saved HLO

Each program is the library's own (`ctjax.train.programs`: the train step `ctjax.train` runs,
the eval step behind evaluation and prediction, the feature-store build pass) built from the
paper configs (configs/drct2_rsna.py, configs/blend_resnet50.py) and compiled ahead of time
for a compile-only device: an NVIDIA GPU described by XLA's target config
(benchmarks/target_configs/, from openxla/xla) or a TPU topology of libtpu, sharded on the
library's mesh over all its chips. Nothing runs: no figure here is a measured time.

Per target × program one JSON line, written as it goes to `<out>/compiled-<target>.jsonl`
(and, at the end of each target, merged into `<results>/compiled-<target>.jsonl`), with the
optimized HLO beside it (`<out>/<target>/<program>-<variant>.hlo.txt`). Fields: target,
device, chips, program, variant, batch, items and unit, dtype; XLA's memory analysis per chip
(argument/output/alias/temp bytes, peak = argument + output − alias + temp, fits against the
chip's memory); from the HLO (benchmarks/hlo.py): fusions, launches (kernels per call, loop
bodies × trip counts) and by kind, flops, bytes_accessed, collective_bytes; floor_s = Σ over
kernels of max(FLOPs / peak, bytes / bandwidth) at the datasheet (and floor_measured_s at
ceilings measured on that device where known), items_per_s_floor; compile_s; on TPU also
XLA's own cost analysis (xla_flops, xla_bytes_accessed).

Without the GPU's autotuner the compiler keeps its default gemm tilings and cuDNN algorithms,
so kernel counts, FLOPs, bytes and memory are those of the program; times are floors only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Callable, Optional, Sequence

from ctjax.jsonable import to_jsonable

log = logging.getLogger("benchmarks.compiled")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET_CONFIGS = pathlib.Path(__file__).resolve().parent / "target_configs"
GIB = 1024 ** 3
TRITON_TILING_ERROR = "Couldn't find output tile sizes"
KINDS = ("gemm", "conv", "pallas", "pool", "fusion", "copy", "collective", "custom-call",
         "other")


@dataclasses.dataclass(frozen=True)
class Target:
  """A compile-only device and its datasheet ceilings."""
  name: str
  platform: str                  # "cuda" | "tpu"
  topology: str                  # "1x1x1" (one GPU) or a TPU topology name ("v5e:2x4")
  peaks: dict                    # FLOP/s by dot operand dtype (datasheet, dense)
  bandwidth: float               # device memory bytes/s (datasheet)
  memory_bytes: float            # per chip
  source: str                    # where the ceilings come from
  spec: str = ""                 # GPU: XLA target config in target_configs/
  interconnect: Optional[float] = None   # collective bytes/s per chip
  # {"peaks", "bandwidth", "source"}: ceilings benchmarks.gpu measured on such a device
  # (matmul/bf16, matmul/tf32, hbm/copy), once a GPU run of this version is recorded.
  measured: Optional[dict] = None


# H100 SXM5 / H200 SXM datasheets (NVIDIA, dense): BF16/FP16 989.4 TFLOP/s, TF32 494.7 (XLA
# runs float32 dots as TF32 at JAX's default precision). TPU v5e (Cloud TPU docs): 197 TFLOP/s
# bf16 (float32 dots at default precision run as one bf16 pass), 819 GB/s HBM, 16 GiB HBM,
# 1,600 Gbit/s ICI per chip.
_NV = {"bf16": 989.4e12, "f16": 989.4e12, "f32": 494.7e12}
_V5E = {"bf16": 197e12, "f32": 197e12, "s8": 394e12}
TARGETS = {
    "h100": Target("h100", "cuda", "1x1x1", _NV, 3.35e12, 0.0,
                   "NVIDIA H100 SXM5 datasheet", spec="h100_sxm.txtpb"),
    "h200": Target("h200", "cuda", "1x1x1", _NV, 4.8e12, 0.0,
                   "NVIDIA H200 SXM datasheet", spec="h200.txtpb"),
    # Eight H100 SXM5 of one host on NVLink 4 (900 GB/s per GPU both ways: 450 each way).
    "h100x8": Target("h100x8", "cuda", "1x1x8", _NV, 3.35e12, 0.0,
                     "NVIDIA H100 SXM5 datasheet", spec="h100_sxm.txtpb", interconnect=450e9),
    "tpu-v5e-8": Target("tpu-v5e-8", "tpu", "v5e:2x4", _V5E, 819e9, 16 * GIB,
                        "Cloud TPU v5e documentation", interconnect=200e9),
    "tpu-v5e-256": Target("tpu-v5e-256", "tpu", "v5e:16x16", _V5E, 819e9, 16 * GIB,
                          "Cloud TPU v5e documentation", interconnect=200e9),
}
DEFAULT_TARGETS = ("h100", "h200", "tpu-v5e-8")


def gpu_target_config(target: Target) -> str:
  return (TARGET_CONFIGS / target.spec).read_text()


def gpu_memory_bytes(spec_text: str) -> float:
  import re
  m = re.search(r"device_memory_size:\s*(\d+)", spec_text)
  return float(m.group(1)) if m else 0.0


def topology_devices(target: Target) -> list:
  """The target's compile-only devices (JAX's CUDA plugin or libtpu, no hardware)."""
  from jax.experimental import topologies
  if target.platform == "cuda":
    topo = topologies.get_topology_desc(platform="cuda", topology=target.topology,
                                        target_config=gpu_target_config(target))
  else:
    topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology)
  return list(topo.devices)


# ----------------------------------------------------------------------------- the programs


@dataclasses.dataclass(frozen=True)
class Case:
  program: str            # model/role: drct2/infer, drct2/train_e2e, …
  variant: str            # what tells this row from the program's others
  batch: int
  dtype: str
  unit: str               # what `items` counts (scans, slices)
  build: Callable[[Any], Any]   # devices → ctjax.train.programs.Program

  @property
  def key(self) -> str:
    return f"{self.program}-{self.variant}"


def _config(name: str, arg: Optional[str] = None):
  from ctjax.configs import named
  return named.get_config(name, arg)


def _drct2(dtype: str, **fields):
  c = _config("drct2_rsna")
  c.model.backbone_weights = "random"   # shapes only: no weights file is read
  c.model.dtype = dtype
  c.features.dtype = dtype    # the rows a GPU/TPU run stores ("auto" there)
  for dotted, value in fields.items():
    node = c
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _blend(dtype: str, batch: int):
  # The teacher round of the paper's recipe (variant wce_at_skd trains these steps first).
  c = _config("blend_resnet50", "variant=wce_at")
  c.model.dtype = dtype
  c.train.batch_size = batch
  return c


def _mesh(config, devices, batch: Optional[int] = None):
  """The library's mesh over as many of `devices` as divide `batch` (all by default)."""
  from ctjax.train import programs
  n = len(devices)
  if batch is not None:
    n = max(d for d in range(1, n + 1) if n % d == 0 and batch % d == 0)
  config.parallel.num_devices = n
  return programs.mesh_for(config, devices[:n])


def _infer(config_fn, batch):
  def build(devices):
    from ctjax.train import programs
    c = config_fn()
    return programs.eval_program(c, _mesh(c, devices, batch), batch)
  return build


def _train(config_fn):
  def build(devices):
    from ctjax.train import programs
    c = config_fn()
    return programs.train_program(c, _mesh(c, devices, int(c.train.batch_size)))
  return build


def _store(config_fn):
  def build(devices):
    from ctjax.train import programs
    c = config_fn()
    return programs.store_program(c, _mesh(c, devices))
  return build


def cases() -> list[Case]:
  """The issue's program list: every row is one of the library's programs at paper sizes."""
  bf16 = "bfloat16"
  out = []
  for b in (1, 32, 256):
    out.append(Case("drct2/infer", f"b{b}", b, bf16, "scans",
                    _infer(lambda: _drct2(bf16), b)))
  for chunk in (16, 64):
    out.append(Case("drct2/train_e2e", f"b256-chunk{chunk}", 256, bf16, "scans",
                    _train(lambda chunk=chunk: _drct2(bf16, model__backbone_chunk=chunk))))
  out.append(Case("drct2/train_store", "b256", 256, bf16, "scans",
                  _train(lambda: _drct2(bf16, features__enabled=True))))
  # The GRU recurrence as XLA ops (config.model.gru_kernel=xla): what the Pallas kernel saves.
  out.append(Case("drct2/train_e2e", "b256-chunk64-xla_gru", 256, bf16, "scans",
                  _train(lambda: _drct2(bf16, model__backbone_chunk=64,
                                        model__gru_kernel="xla"))))
  out.append(Case("drct2/train_store", "b256-xla_gru", 256, bf16, "scans",
                  _train(lambda: _drct2(bf16, features__enabled=True,
                                        model__gru_kernel="xla"))))
  for size in (224, 512):
    out.append(Case("drct2/store_build", f"hu{size}", 128, bf16, "slices",
                    _store(lambda size=size: _drct2(bf16, data__image_size=size))))
  for b in (16, 64):
    for dtype in (bf16, "float32"):
      out.append(Case("blend/train", f"b{b}-{'bf16' if dtype == bf16 else 'fp32'}", b, dtype,
                      "slices", _train(lambda b=b, dtype=dtype: _blend(dtype, b))))
  for b in (1, 64):
    out.append(Case("blend/infer", f"b{b}", b, bf16, "slices",
                    _infer(lambda b=b: _blend(bf16, b), b)))
  return out


# ----------------------------------------------------------------------------- one compile


def compile_case(target: Target, case: Case, devices: list, out: pathlib.Path) -> dict:
  """Builds, lowers and compiles one case for `target`; its JSON record (HLO written)."""
  t0 = time.perf_counter()
  program = case.build(devices)
  lowered = program.lower()
  t1 = time.perf_counter()
  lower_s = t1 - t0
  options = {}
  try:
    compiled = lowered.compile()
  except Exception as e:   # noqa: BLE001 — XLA's error types differ across versions
    if target.platform != "cuda" or TRITON_TILING_ERROR not in str(e):
      raise
    # Without the autotuner, Triton's default tiling of some gemms (the zoom's f32 dots with
    # K = 224) fails; cuBLAS takes every gemm of that program instead (recorded in the row).
    options = {"xla_gpu_enable_triton_gemm": False}
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options=options)
  t2 = time.perf_counter()
  text = compiled.as_text()
  hlo_path = out / target.name / f"{case.key}.hlo.txt"
  hlo_path.parent.mkdir(parents=True, exist_ok=True)
  hlo_path.write_text(text)
  mem = compiled.memory_analysis()
  memory = {"argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
            "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes}
  peak = (memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"]
          + memory["temp_bytes"])
  capacity = target.memory_bytes or gpu_memory_bytes(gpu_target_config(target))
  rec = {"target": target.name, "device": devices[0].device_kind,
         "chips": int(program.mesh.devices.size), "program": case.program,
         "variant": case.variant, "batch": case.batch, "items": program.items,
         "unit": case.unit, "dtype": case.dtype, **memory, "peak_bytes": peak,
         "memory_capacity_bytes": capacity, "fits": bool(capacity and peak <= capacity),
         "lower_s": lower_s, "compile_s": t2 - t1, "compiler_options": options,
         "hlo": str(hlo_path.relative_to(out))}
  cost = compiled.cost_analysis()
  if isinstance(cost, list):   # older JAX: one dict per device program
    cost = cost[0] if cost else None
  if cost:   # XLA's own count (TPU)
    rec["xla_flops"] = float(cost.get("flops", 0.0))
    rec["xla_bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
  rec.update(hlo_fields(target, text, program.items, xla_cost=bool(cost)))
  return rec


def hlo_fields(target: Target, text: str, items: int, xla_cost: bool = False) -> dict:
  """The record's figures read from the optimized HLO `text` (benchmarks/hlo.py)."""
  from benchmarks import hlo
  analysis = hlo.analyze(text)
  floor = hlo.floor_seconds(analysis, target.peaks, target.bandwidth, target.interconnect)
  out = {"fusions": analysis.fusions, "launches": analysis.launches,
         "launches_by_kind": {k: analysis.launches_of(k) for k in KINDS
                              if analysis.launches_of(k)},
         "unknown_trip_counts": len(analysis.unknown_trip_counts),
         "flops": analysis.flops, "bytes_accessed": analysis.bytes_accessed,
         "collective_bytes": analysis.collective_bytes,
         "floor_s": floor["floor_s"], "memory_bound_share": floor["memory_bound_share"],
         "floor_share_by_kind": {k: v / floor["floor_s"] for k, v in hlo.floor_by_kind(
             analysis, target.peaks, target.bandwidth).items()} if floor["floor_s"] else {},
         # SPMD: every chip runs its shard of the batch in the same time.
         "items_per_s_floor": items / floor["floor_s"] if floor["floor_s"] else None,
         "ceilings": target.source,
         "top_kernels": hlo.top_kernels(analysis, target.peaks, target.bandwidth, 5)}
  if target.measured:
    m = hlo.floor_seconds(analysis, target.measured["peaks"], target.measured["bandwidth"],
                          target.interconnect)
    out["floor_measured_s"] = m["floor_s"]
    out["items_per_s_floor_measured"] = items / m["floor_s"] if m["floor_s"] else None
    out["measured_ceilings"] = target.measured["source"]
  if xla_cost:   # XLA's cost analysis counts loop bodies once: ours that way beside it
    once = hlo.analyze(text, expand_loops=False)
    out["flops_loops_once"] = once.flops
    out["bytes_accessed_loops_once"] = once.bytes_accessed
  return out


def reanalyze(out: pathlib.Path, results: Optional[pathlib.Path]) -> list[dict]:
  """Recomputes the HLO figures of every row under `out` from its saved HLO (no compile):
  after a change to the counting, not to the programs."""
  every = []
  for path in sorted(out.glob("compiled-*.jsonl")):
    rows = []
    for rec in read_records([str(path)]):
      if "error" not in rec and (out / rec.get("hlo", "")).is_file():
        rec.update(to_jsonable(hlo_fields(TARGETS[rec["target"]],
                                          (out / rec["hlo"]).read_text(), rec["items"],
                                          xla_cost="xla_flops" in rec)))
      rows.append(rec)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if results is not None:
      merge_results(results / path.name, rows)
    every += rows
  return every


def _versions() -> dict:
  import importlib.metadata as md
  out = {}
  for name in ("jax", "jaxlib", "jax-cuda13-plugin", "libtpu"):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      continue
  return out


def merge_results(path: pathlib.Path, records: Sequence[dict]) -> None:
  """Rewrites `path` with `records` replacing earlier lines of the same program and variant."""
  keep = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if any(rec.get("program") == r["program"] and rec.get("variant") == r["variant"]
             for r in records):
        continue
      keep.append(rec)
  rows = keep + list(records)
  order = {c.key: i for i, c in enumerate(cases())}
  rows.sort(key=lambda r: order.get(f"{r.get('program')}-{r.get('variant')}", len(order)))
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
  os.replace(tmp, path)


def run(targets: Sequence[str], programs: Sequence[str], out: pathlib.Path,
        results: Optional[pathlib.Path]) -> list[dict]:
  from tqdm import tqdm
  chosen = [c for c in cases() if not programs or any(
      c.program == p or c.key == p for p in programs)]
  if not chosen:
    raise SystemExit(f"no program matches {list(programs)}; known: "
                     f"{sorted({c.key for c in cases()})}")
  out.mkdir(parents=True, exist_ok=True)
  versions = _versions()
  every = []
  bar = tqdm(total=len(targets) * len(chosen), unit="program", dynamic_ncols=True)
  try:
    for name in targets:
      target = TARGETS[name]
      devices = topology_devices(target)
      done = []
      with open(out / f"compiled-{name}.jsonl", "a") as f:
        for case in chosen:
          bar.set_description(f"{name} {case.key}")
          try:
            rec = compile_case(target, case, devices, out)
          except Exception as e:   # noqa: BLE001 — one failed compile is a row, not the end
            rec = {"target": name, "program": case.program, "variant": case.variant,
                   "batch": case.batch, "dtype": case.dtype,
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
          rec["versions"] = versions
          rec = to_jsonable(rec)
          f.write(json.dumps(rec) + "\n")
          f.flush()
          done.append(rec)
          bar.update(1)
          bar.write(_line(rec))
      if results is not None:
        merge_results(results / f"compiled-{name}.jsonl", done)
      every += done
  finally:
    bar.close()
  return every


def _line(rec: dict) -> str:
  if "error" in rec:
    return f"{rec['target']} {rec['program']} {rec['variant']}: {rec['error']}"
  return (f"{rec['target']} {rec['program']} {rec['variant']}: {rec['launches']} launches, "
          f"{rec['flops'] / 1e12:.3f} TFLOP, {rec['bytes_accessed'] / 1e9:.2f} GB, peak "
          f"{rec['peak_bytes'] / GIB:.2f} GiB, floor {rec['floor_s'] * 1e3:.3f} ms "
          f"({rec['items_per_s_floor']:,.0f} {rec['unit']}/s), compile {rec['compile_s']:.0f} s")


# ----------------------------------------------------------------------------- the table


def render(records: Sequence[dict]) -> str:
  """The Markdown table of compiled estimates (never measured times)."""
  head = ("| target | program | batch | dtype | chips | peak mem / chip | fits | launches | "
          "TFLOP | GB moved | floor | floor items/s | memory-bound | compile |")
  lines = ["**Compiled estimates** (`python -m benchmarks.compiled`: the library's programs "
           "compiled for each target on a CPU host; per-kernel roofline floors at datasheet "
           "ceilings, no time measured):", "", head,
           "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in records:
    if "error" in r:
      lines.append(f"| {r['target']} | {r['program']} {r['variant']} | {r.get('batch', '')} "
                   f"| {r.get('dtype', '')} | | | | | | | | | | failed: {r['error'][:60]} |")
      continue
    lines.append(
        f"| {r['target']} | {r['program']} {r['variant']} | {r['batch']} | {r['dtype']} | "
        f"{r['chips']} | {r['peak_bytes'] / GIB:.2f} GiB | {'yes' if r['fits'] else 'NO'} | "
        f"{r['launches']:,} | {r['flops'] / 1e12:.3f} | {r['bytes_accessed'] / 1e9:.2f} | "
        f"{_ms(r['floor_s'])} | {r['items_per_s_floor']:,.0f} {r['unit']}/s | "
        f"{100 * r['memory_bound_share']:.0f} % | {r['compile_s']:.0f} s |")
  return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
  return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def read_records(paths: Sequence[str]) -> list[dict]:
  out = []
  for p in paths:
    for line in pathlib.Path(p).read_text().splitlines():
      if line.strip():
        out.append(json.loads(line))
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                  help=f"comma-separated, of {sorted(TARGETS)}")
  ap.add_argument("--programs", default="",
                  help="comma-separated program names or program-variant keys (default all)")
  ap.add_argument("--out", default="runs/compiled", help="JSON lines and optimized HLO")
  ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                  help="folder of compiled-<target>.jsonl to merge the rows into ('' = none)")
  ap.add_argument("--render", nargs="+", metavar="FILE", help="print the Markdown table")
  ap.add_argument("--reanalyze", action="store_true",
                  help="recount every row under --out from its saved HLO (no compile)")
  args = ap.parse_args(argv)
  if args.render:
    sys.stdout.write(render(read_records(args.render)))
    return 0
  if args.reanalyze:
    rows = reanalyze(pathlib.Path(args.out), pathlib.Path(args.results) if args.results else None)
    sys.stdout.write(render(rows))
    return 0
  targets = [t for t in args.targets.split(",") if t]
  unknown = [t for t in targets if t not in TARGETS]
  if unknown:
    print(f"benchmarks.compiled: unknown target(s) {unknown}; known: {sorted(TARGETS)}",
          file=sys.stderr)
    return 2
  # Compile-only devices: JAX's own backend stays the CPU (the CUDA plugin would look for a
  # GPU and its profiler library, libtpu for a TPU host).
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.config.update("jax_platforms", "cpu")
  missing = _missing_extra(targets)
  if missing:
    print(f"benchmarks.compiled: {missing}; install the extra: pip install -e '.[aot]'",
          file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.WARNING)
  records = run(targets, [p for p in args.programs.split(",") if p], pathlib.Path(args.out),
                pathlib.Path(args.results) if args.results else None)
  sys.stdout.write(render(records))
  return 0 if all("error" not in r for r in records) else 1


# What compiles for each platform without its hardware: JAX's CUDA plugin, libtpu.
PLATFORM_MODULES = {"cuda": ("jax_plugins.xla_cuda13", "JAX's CUDA 13 plugin"),
                    "tpu": ("libtpu", "libtpu")}


def installed(platform: str) -> bool:
  import importlib.util
  try:
    return importlib.util.find_spec(PLATFORM_MODULES[platform][0]) is not None
  except ModuleNotFoundError:   # its parent package is absent
    return False


def _missing_extra(targets: Sequence[str]) -> str:
  """What the chosen targets need and this environment lacks ("" if nothing)."""
  platforms = sorted({TARGETS[t].platform for t in targets})
  return "; ".join(f"{PLATFORM_MODULES[p][1]} is not installed" for p in platforms
                   if not installed(p))


if __name__ == "__main__":
  sys.exit(main())
