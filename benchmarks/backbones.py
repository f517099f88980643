"""Backbone inference throughput: ctjax (Flax, jitted) against the same torch model, same device.

  python -m benchmarks.backbones --quick                    # 2-core CPU: batch 1, ~minutes
  python -m benchmarks.backbones --batch 64 --dtype bfloat16  # a GPU
  python -m benchmarks.backbones --archs resnet50 --sizes 512 --width 0.25

For each backbone (VGG16 conv stack, ResNet-50, Inception v3; no classifier heads: the papers
use the pooled features / last block) and input size (224, 512): images/s and achieved GFLOP/s
of ctjax's jitted forward (feature map + pooled vector) and of torch's (torchvision-identical
modules from tests/support/torch_models.py, eval mode, `inference_mode`, channels_last on CUDA,
cudnn.benchmark), both with the *same* weights (converted), plus the ratio ctjax/torch (> 1:
ctjax faster) and the relative difference of their pooled outputs (a sanity check that both
compute the same function). FLOPs per batch come from XLA's cost analysis of the compiled
ctjax executable (`jitted.lower(...).compile().cost_analysis()`), and the same count is used
for torch's GFLOP/s. Prints a table; writes JSON to benchmarks/results/backbones[-quick].json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
ARCHS = ("vgg16", "resnet50", "inception_v3")


def _time(fn: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int, iters: int,
          max_seconds: Optional[float]) -> list[float]:
  for _ in range(warmup):
    sync(fn())
  times, start = [], time.perf_counter()
  for _ in range(max(iters, 1)):
    t = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t)
    if max_seconds is not None and time.perf_counter() - start > max_seconds:
      break
  return times


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per executable
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops", float("nan"))
  return float(flops) if flops and flops > 0 else float("nan")


def measure(arch: str, size: int, batch: int, *, dtype: str = "float32", width: float = 1.0,
            warmup: int = 2, iters: int = 10, max_seconds: Optional[float] = None,
            with_torch: bool = True, seed: int = 0) -> dict[str, Any]:
  """One (arch, size) figure; every number the table and JSON report."""
  import torch  # pylint: disable=g-import-not-at-top
  from tests.support import torch_models  # pylint: disable=g-import-not-at-top
  from ctjax.models import backbones, pretrained

  on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  tdev = torch.device("cuda" if on_gpu else "cpu")
  kwargs = {"classifier": False} if arch.startswith("vgg") else {}
  if arch == "inception_v3":
    kwargs = {"aux_logits": False}
  tmodel = torch_models.randomize_(torch_models.build(arch, width=width, **kwargs), seed).eval()
  variables = pretrained.convert_torchvision(tmodel.state_dict(), arch, include_fc=False)
  variables = jax.device_put(variables)
  model = backbones.build_backbone(arch, width=width, dtype=jnp.dtype(dtype))
  x_np = np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)
  x = jax.device_put(jnp.asarray(x_np, jnp.dtype(dtype)))

  def forward(v, x):
    out = model.apply(v, x)
    return out["feature_map"], out["pooled"]

  t0 = time.perf_counter()
  compiled = jax.jit(forward).lower(variables, x).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled)
  times = _time(lambda: compiled(variables, x), jax.block_until_ready, warmup=warmup,
                iters=iters, max_seconds=max_seconds)
  sec = statistics.median(times)
  pooled = np.asarray(compiled(variables, x)[1], np.float32)
  row = {"arch": arch, "size": size, "batch": batch, "dtype": dtype, "width": width,
         "gflop_per_image": flops / batch / 1e9, "compile_s": compile_s,
         "ctjax_s_per_batch": sec, "ctjax_images_per_s": batch / sec,
         "ctjax_gflop_per_s": flops / sec / 1e9, "ctjax_times": times}
  if not with_torch:
    return row

  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  tmodel = tmodel.to(tdev, tdtype)
  xt = torch.from_numpy(x_np).permute(0, 3, 1, 2).to(tdev, tdtype)
  if on_gpu:
    torch.backends.cudnn.benchmark = True
    tmodel = tmodel.to(memory_format=torch.channels_last)
    xt = xt.contiguous(memory_format=torch.channels_last)
  pool = (torch.nn.functional.adaptive_max_pool2d if arch.startswith("vgg")
          else torch.nn.functional.adaptive_avg_pool2d)

  def tforward():
    with torch.inference_mode():
      f = tmodel.features(xt)
      return f, pool(f, 1).flatten(1)

  tsync = (lambda o: torch.cuda.synchronize()) if on_gpu else (lambda o: o)
  ttimes = _time(tforward, tsync, warmup=warmup, iters=iters, max_seconds=max_seconds)
  tsec = statistics.median(ttimes)
  tpooled = tforward()[1].float().cpu().numpy()
  row.update({"torch_device": str(tdev), "torch_s_per_batch": tsec,
              "torch_images_per_s": batch / tsec, "torch_gflop_per_s": flops / tsec / 1e9,
              "torch_times": ttimes, "ratio_ctjax_over_torch": tsec / sec,
              "pooled_rel_diff": torch_models.relative_error(pooled, tpooled)})
  return row


def format_table(rows: Sequence[dict]) -> str:
  head = (f"{'backbone':<13}{'size':>5}{'batch':>6}{'GFLOP/img':>10}  {'ctjax img/s':>11}"
          f"{'GFLOP/s':>9}  {'torch img/s':>11}{'GFLOP/s':>9}  {'ctjax/torch':>11}{'Δpooled':>9}")
  lines = [head, "-" * len(head)]

  def f(row, key, fmt):
    v = row.get(key)
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

  for r in rows:
    lines.append(f"{r['arch']:<13}{r['size']:>5}{r['batch']:>6}"
                 f"{f(r, 'gflop_per_image', '{:.2f}'):>10}  "
                 f"{f(r, 'ctjax_images_per_s', '{:.2f}'):>11}"
                 f"{f(r, 'ctjax_gflop_per_s', '{:.1f}'):>9}  "
                 f"{f(r, 'torch_images_per_s', '{:.2f}'):>11}"
                 f"{f(r, 'torch_gflop_per_s', '{:.1f}'):>9}  "
                 f"{f(r, 'ratio_ctjax_over_torch', '{:.2f}'):>11}"
                 f"{f(r, 'pooled_rel_diff', '{:.1e}'):>9}")
  return "\n".join(lines)


def environment() -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {"jax_backend": jax.default_backend(), "device": getattr(dev, "device_kind", str(dev)),
          "num_devices": jax.device_count(), "jax": jax.__version__, "flax": flax.__version__,
          "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "python": platform.python_version(), "machine": platform.machine(),
          "processor": platform.processor(),
          "load_average": list(getattr(__import__("os"), "getloadavg", lambda: ())()),
          "date": datetime.datetime.now().isoformat(timespec="seconds")}


def run(ctx) -> list:
  """Adapter for `benchmarks.run` (the suite): one Record per (backbone, size)."""
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  s = ctx.settings.get("backbones", {})
  records = []
  for arch in s.get("archs", ARCHS):
    for size in s.get("sizes", (224, 512)):
      for dtype in s.get("dtypes", ("float32",)):
        r = measure(arch, size, s.get("batch", 8), dtype=dtype, width=s.get("width", 1.0),
                    warmup=ctx.warmup, iters=ctx.repeats, max_seconds=ctx.max_seconds,
                    with_torch=ctx.with_torch)
        flops = r["gflop_per_image"] * r["batch"] * 1e9
        records.append(common.speed_record(
            f"backbones.{arch}.{size}px.{dtype}", seconds=r["ctjax_s_per_batch"],
            items=r["batch"], unit="img/s", torch_seconds=r.get("torch_s_per_batch"),
            flops=flops, peak=ctx.peaks.get(dtype), width=r["width"],
            pooled_rel_diff=r.get("pooled_rel_diff")))
  return records


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.backbones", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="CPU smoke: batch 1, 1 warm-up + 2 timed calls")
  p.add_argument("--archs", default=",".join(ARCHS), help="comma list of " + ", ".join(ARCHS))
  p.add_argument("--sizes", default="224,512")
  p.add_argument("--batch", type=int, default=None, help="default 32 (quick: 1)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1 = torchvision)")
  p.add_argument("--iters", type=int, default=None, help="timed calls (default 10; quick 2)")
  p.add_argument("--warmup", type=int, default=None, help="untimed calls (default 2; quick 1)")
  p.add_argument("--max-seconds", type=float, default=None,
                 help="stop timing a model after this long (at least one timed call)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--torch-threads", type=int, default=None,
                 help="torch.set_num_threads (CPU; default: torch's own choice)")
  p.add_argument("--json", default=None, help="output path (default benchmarks/results/…)")
  args = p.parse_args(argv)
  batch = args.batch or (1 if args.quick else 32)
  iters = args.iters or (2 if args.quick else 10)
  warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
  archs = [a for a in args.archs.split(",") if a]
  bad = [a for a in archs if a not in ARCHS + ("vgg16_bn",)]
  if bad:
    print(f"benchmarks.backbones: unknown backbone(s) {bad}; known: {ARCHS}", file=sys.stderr)
    return 2
  sizes = [int(s) for s in args.sizes.split(",") if s]

  if args.torch_threads:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.torch_threads)
  env = environment()
  print(f"device: {env['device']} ({env['jax_backend']}), jax {env['jax']}, "
        f"torch {env['torch']} ({env['torch_threads']} threads), dtype {args.dtype}, "
        f"width {args.width}", flush=True)
  rows = []
  for arch in archs:
    for size in sizes:
      row = measure(arch, size, batch, dtype=args.dtype, width=args.width, warmup=warmup,
                    iters=iters, max_seconds=args.max_seconds, with_torch=not args.no_torch)
      rows.append(row)
      print(format_table([row]).splitlines()[-1] if len(rows) > 1 else format_table([row]),
            flush=True)
  print()
  print(format_table(rows))
  path = pathlib.Path(args.json or RESULTS_DIR / f"backbones{'-quick' if args.quick else ''}"
                      f"{'' if args.dtype == 'float32' else '-' + args.dtype}.json")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"environment": env, "args": vars(args), "results": rows},
                             indent=2) + "\n")
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
