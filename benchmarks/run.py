"""Runs every benchmark of the suite, prints one table and writes the JSON record file.

  python -m benchmarks.run --preset cpu-small            # minutes on a 2-core CPU
  python -m benchmarks.run --preset full --json out.json # the papers' sizes (meant for a GPU)
  python -m benchmarks.run --preset full --max-seconds 60 --only drct2.infer   # one bounded figure

JSON: {"header": {device, versions, preset, settings, peaks, skipped, details{figure: …}},
"records": [{"name","device","value","unit","torch_value","ratio_vs_torch","flop_fraction"}]},
null where a field does not apply; ratio_vs_torch = ctjax speed / torch speed (> 1: ctjax
faster); flop_fraction = achieved FLOP/s / measured matmul peak of that dtype.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

from benchmarks.presets import GROUPS, PRESETS, preset_settings
from ctjax.jsonable import to_jsonable


def run_suite(preset: str, *, json_path: Optional[str] = None, only: Sequence[str] = (),
              max_seconds: Optional[float] = None, workdir: Optional[str] = None,
              with_torch: bool = True, cpu_bound: Optional[bool] = None,
              settings: Optional[dict] = None, strict: bool = False,
              dtypes: Optional[Sequence[str]] = None,
              torch_threads: Optional[int] = None) -> tuple[dict, list]:
  """Runs the preset's figures; returns (header, records) and writes the JSON."""
  import jax
  import torch
  from benchmarks import common
  on_cpu = jax.default_backend() == "cpu"
  if cpu_bound is None:
    cpu_bound = preset == "full" and on_cpu
  settings = settings or preset_settings(preset, cpu_bound=cpu_bound)
  settings["strict"] = strict
  if dtypes:
    settings["drct"]["dtypes"] = tuple(dtypes)
  if on_cpu:
    # Both frameworks get the machine's cores; XLA's CPU client uses them all by default.
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
  wd = pathlib.Path(workdir or pathlib.Path(tempfile.gettempdir()) / "ctjax_bench")
  wd.mkdir(parents=True, exist_ok=True)
  ctx = common.Context(preset=preset, settings=settings, workdir=wd,
                       device=common.device_name(), warmup=settings["warmup"],
                       repeats=settings["repeats"], max_seconds=max_seconds,
                       with_torch=with_torch, fresh_peaks=on_cpu)
  groups = [g for g in GROUPS if not only or any(o.split(".")[0] == g for o in only)]
  # Sub-figure filters (`drct2.infer`, `blend.train`, `scaling.devices`).
  for g in groups:
    subs = [o.split(".", 1)[1] for o in only if o.startswith(g + ".")]
    key = {"drct2": "drct", "blend": "blend", "scaling": "scaling"}.get(g)
    if subs and key == "scaling":
      for axis in ("batch", "slices", "devices"):
        if axis not in subs:
          settings["scaling"][axis] = ()
    elif subs and key:
      settings[key]["figures"] = tuple(subs)
  t_start = time.time()
  header: dict[str, Any] = {"preset": preset, "cpu_bound": cpu_bound, "max_seconds": max_seconds,
                            "environment": common.environment(),
                            "settings": to_jsonable(settings), "load_before": common.load_average()}
  peaks = {}
  for dtype in ("float32", "bfloat16"):
    peaks[dtype] = common.matmul_peak(getattr(jax.numpy, dtype), settings["matmul_n"],
                                      max_seconds=max_seconds or 20.0)
  ctx.peaks = {k: v["peak"] for k, v in peaks.items()}
  if torch_threads:
    ctx.torch_threads = torch_threads
    header["torch_threads_fixed"] = torch_threads
  elif cpu_bound and on_cpu and with_torch:
    ctx.torch_threads = common.probe_torch_threads()
    header["torch_threads_probe"] = ctx.torch_threads
  header["matmul_peak_flops"] = peaks
  records = []
  if "drct2" in groups:
    from benchmarks import drct2
    records += drct2.run(ctx)
  if "blend" in groups:
    from benchmarks import blend
    records += blend.run(ctx)
  if "scaling" in groups:
    from benchmarks import scaling
    records += scaling.run(ctx)
  if "pipeline" in groups and settings.get("pipeline"):
    from benchmarks import pipeline_figures
    records += pipeline_figures.run(ctx)
  header["skipped"] = ctx.skipped
  header["load_after"] = common.load_average()
  header["wall_s"] = round(time.time() - t_start, 1)
  path = common.write_json(json_path, header, records)
  header["json_path"] = str(path)
  return header, records


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
  parser.add_argument("--json", default=None,
                      help="output path (default: benchmarks/results/<preset>-<time>.json)")
  parser.add_argument("--only", action="append", default=[],
                      help="run only these groups/figures: drct2, drct2.infer, drct2.train, "
                           "drct2.data, blend, blend.train, scaling, scaling.devices, pipeline")
  parser.add_argument("--max-seconds", type=float, default=None,
                      help="bound each figure's timed phase (at least one timed call)")
  parser.add_argument("--workdir", default=None, help="phantom data and caches (default: /tmp)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=None,
                      help="DrCT2 inference dtypes (default: the preset's; cpu-bound: float32)")
  bound = parser.add_mutually_exclusive_group()
  bound.add_argument("--cpu-bound", dest="cpu_bound", action="store_true", default=None,
                     help="batch 1, one timed call (default for --preset full on a CPU)")
  bound.add_argument("--no-cpu-bound", dest="cpu_bound", action="store_false")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="fix torch's thread count (default: fastest of all cores and 1)")
  parser.add_argument("--render", metavar="JSON", default=None,
                      help="print an existing results JSON as a Markdown table and exit")
  parser.add_argument("-v", "--verbose", action="store_true")
  args = parser.parse_args(argv)
  if args.render:
    from benchmarks import common
    print(common.markdown_table(args.render))
    return 0
  logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                      format="%(asctime)s %(name)s %(message)s")
  from benchmarks import common
  result, rc = common.run_reporting_errors(
      run_suite, args.preset, json_path=args.json, only=args.only,
      max_seconds=args.max_seconds, workdir=args.workdir, with_torch=not args.no_torch,
      cpu_bound=args.cpu_bound, dtypes=args.dtypes, torch_threads=args.torch_threads)
  if rc:
    return rc
  header, records = result
  env = header["environment"]
  print(f"# {env['device']} · jax {env['jax']} · torch {env['torch']} · preset {args.preset}"
        f" · load {header['load_before']} → {header['load_after']} · {header['wall_s']} s")
  print(common.format_table(records))
  for name, why in header["skipped"].items():
    print(f"skipped {name}: {why}", file=sys.stderr)
  print(f"# wrote {header['json_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
