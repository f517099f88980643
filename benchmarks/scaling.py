"""How DrCT2 inference cost grows: with batch size, with slices per scan (16 → 64), and with the
number of devices (1/2/4 host devices on CPU, each count in its own subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N; all local devices on an accelerator).

Devices on a CPU host are *virtual*: the cores are shared, so the device axis on CPU shows the
cost of the data-parallel program (sharding, collectives) rather than added compute; on a GPU
host every device is real.

Worker mode (used by the device axis): `python -m benchmarks.scaling --worker --preset P
--batch B --num-devices N` prints one JSON line {"devices", "seconds", "batch"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from typing import Optional

import jax
import numpy as np

from benchmarks import common
from benchmarks.common import Context, Record
from benchmarks.drct2 import _guard, drct_config, make_batch

log = logging.getLogger("benchmarks.scaling")


def _infer_point(ctx: Context, *, batch: int, slices: Optional[int] = None) -> Record:
  config = drct_config(ctx, num_slices=slices)
  m = common.build_ctjax(config)
  dev_batch = common.to_device(make_batch(config, batch))
  t, flops = ctx.time_predict(m, dev_batch)
  axis = f"batch={batch}" if slices is None else f"slices={config.data.num_slices}"
  return common.speed_record(f"scaling/drct2_infer/{axis}", seconds=t.median, items=batch,
                             unit="scans/s", flops=flops, peak=ctx.peak("float32"), batch=batch,
                             num_slices=config.data.num_slices, mkey=config.model.mkey,
                             s_per_scan=t.median / batch, timed_calls=t.n)


def sharded_seconds(ctx: Context, *, batch: int, num_devices: int) -> float:
  """Median seconds of DrCT2 predict with the batch split over `num_devices` devices."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  config = drct_config(ctx)
  m = common.build_ctjax(config)
  devices = np.asarray(jax.devices()[:num_devices])
  mesh = Mesh(devices, ("data",))
  data = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())
  variables = jax.device_put(m.variables, repl)
  host = make_batch(config, batch)
  dev_batch = {k: jax.device_put(v, data) for k, v in common.to_device(host).items()}
  fn = jax.jit(lambda v, b: m.task.predict(m.model, v, b, config), in_shardings=(repl, data),
               out_shardings=data)
  return ctx.time(lambda: fn(variables, dev_batch)).median


def _device_points(ctx: Context) -> list[Record]:
  s = ctx.settings["scaling"]
  batch = s.get("devices_batch", 4)
  records = []
  if jax.default_backend() != "cpu":
    n = jax.device_count()
    secs = sharded_seconds(ctx, batch=batch * n, num_devices=n)
    return [common.speed_record(f"scaling/drct2_infer/devices={n}", seconds=secs,
                                items=batch * n, unit="scans/s", devices=n)]
  for n in s["devices"]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", "--preset", ctx.preset,
           "--batch", str(batch), "--num-devices", str(n), "--repeats", str(ctx.repeats)]
    if ctx.max_seconds:
      cmd += ["--max-seconds", str(ctx.max_seconds)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True,
                          timeout=ctx.settings.get("worker_timeout", 1200))
    if proc.returncode != 0:
      raise RuntimeError(f"scaling worker N={n} failed: {proc.stderr.strip()[-500:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    records.append(common.speed_record(
        f"scaling/drct2_infer/devices={n}", seconds=res["seconds"], items=batch,
        unit="scans/s", devices=n, virtual_cpu_devices=True, batch=batch))
  return records


def run(ctx: Context) -> list[Record]:
  s = ctx.settings["scaling"]
  records: list[Record] = []
  for b in s.get("batch", ()):
    records += _guard(ctx, f"scaling/batch={b}", lambda b=b: [_infer_point(ctx, batch=b)])
  for m in s.get("slices", ()):
    records += _guard(ctx, f"scaling/slices={m}",
                      lambda m=m: [_infer_point(ctx, batch=1, slices=m)])
  if s.get("devices"):
    try:
      records += _device_points(ctx)
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
      if ctx.settings.get("strict"):
        raise
      ctx.skipped["scaling/devices"] = str(e)
  return records


def _worker(argv) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--worker", action="store_true")
  parser.add_argument("--preset", required=True)
  parser.add_argument("--batch", type=int, required=True)
  parser.add_argument("--num-devices", type=int, required=True)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--max-seconds", type=float, default=None)
  args = parser.parse_args(argv)
  from benchmarks.presets import preset_settings
  import pathlib
  import tempfile
  settings = preset_settings(args.preset, cpu_bound=False)
  ctx = Context(preset=args.preset, settings=settings,
                workdir=pathlib.Path(tempfile.gettempdir()), repeats=args.repeats,
                max_seconds=args.max_seconds)
  if jax.device_count() < args.num_devices:
    print(f"only {jax.device_count()} devices", file=sys.stderr)
    return 1
  secs = sharded_seconds(ctx, batch=args.batch, num_devices=args.num_devices)
  print(json.dumps({"devices": args.num_devices, "seconds": secs, "batch": args.batch}))
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  sys.exit(_worker(sys.argv[1:]))
