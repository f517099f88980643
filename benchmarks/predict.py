"""Does `ctjax.predict` overlap DICOM decode with the device: series/s with decode vs device-only.

    python -m benchmarks.predict [--scans 24] [--size 256] [--image-size 128] [--slices 28]
        [--batch 4] [--workers 0 1 2] [--json benchmarks/results/predict.json]

Phantom head CTs in the RSNA layout (`ctjax.data.phantom`, `--size` px DICOM) are predicted by
`ctjax.inference.archive.predict_scans` with a DrCT2 of `configs/drct2_phantom.py`'s sizes (1/8-width
VGG16, random weights: speed does not depend on them) once per `--workers` value, each into a
fresh output file. Figures per worker count: series/s end to end (decode included, start-up and
compilation excluded), series/s device-only (the predict calls alone), and one worker's decode
rate. With decode overlapped with compute the first should come close to
min(decode rate x workers, device rate) for workers >= 1; with 0 workers (decode in the
predicting process) it is the serial 1 / (1/decode + 1/device). The table gives measured / that
bound, with the rates of the same run and with the isolated rates of the 0-worker run. On a
CPU-only machine the "device" is the same cores the workers decode on, so the overlap there is
bounded by the core count too (the load average is recorded).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import tempfile
import time

from benchmarks import common

log = logging.getLogger("benchmarks.predict")


def _config(image_size: int, m: int, batch: int):
  from configs import drct2_phantom
  c = drct2_phantom.get_config()
  c.data.num_slices = m
  c.data.image_size = image_size
  c.model.primary_size = image_size
  c.model.aps_size = image_size * 3 // 2
  c.model.mkey = min(int(c.model.mkey), m)
  c.model.backbone_weights = ""
  c.data.eval_batch_size = batch
  c.log.progress_bar = False
  return c


def _run(config):
  from ctjax.inference import runs
  from ctjax.models import pretrained
  from ctjax.train.tasks import get_task
  task = get_task("drct")
  model = task.build_model(config)
  from ctjax.train.tasks import drct
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
  return runs.make_run(config, variables, task=task, model=model, step=0)


def bound(workers: int, decode_rate: float, device_rate: float) -> float:
  """Throughput with perfect overlap (workers >= 1) or serial decode + predict (0 workers)."""
  if workers == 0:
    return 1.0 / (1.0 / decode_rate + 1.0 / device_rate)
  return min(decode_rate * workers, device_rate)


def run(args) -> tuple[list[common.Record], dict]:
  from ctjax.inference import archive
  from ctjax.data import phantom
  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="ctjax_bench_predict_"))
  data = work / "data"
  if not (data / "manifest.json").is_file():
    t = time.perf_counter()
    phantom.write_dataset(data, layout="rsna", num_scans=args.scans, seed=3, size=args.size)
    log.warning("generated %d phantom scans in %.1f s", args.scans, time.perf_counter() - t)
  refs = archive.find_scans(data)
  config = _config(args.image_size, args.slices, args.batch)
  r = _run(config)
  device = common.device_name()
  summaries = {}
  for w in args.workers:
    out = work / f"preds_w{w}.csv"
    out.unlink(missing_ok=True)
    archive.sidecar_path(out).unlink(missing_ok=True)
    summaries[w] = archive.predict_scans(r, refs, out, batch_size=args.batch, workers=w,
                                            prefetch=2, progress=False)
    log.warning("workers=%d: %s", w, summaries[w].throughput_line())
  # Two bounds: from the rates measured in the same run (decode in the workers, predict calls
  # in the parent, under the same contention: does the pipeline ever stall?), and from the
  # isolated rates (the serial run's decode and device rates: on a CPU host the workers take
  # cores from the "device", on an accelerator host the two coincide).
  iso = summaries.get(0) or next(iter(summaries.values()))
  iso_decode, iso_device = iso.decode_series_per_s, iso.device_series_per_s
  records = []
  rows = []
  for w, s in summaries.items():
    same = bound(w, s.decode_series_per_s, s.device_series_per_s)
    isolated = bound(w, iso_decode, iso_device)
    details = {"workers": w, "batch": s.batch_size, "devices": s.devices,
               "series": s.predicted, "wall_s": s.wall_s, "device_s": s.device_s,
               "startup_s": s.startup_s, "decode_series_per_s_per_worker": s.decode_series_per_s,
               "bound_same_run": same, "bound_isolated": isolated,
               "measured_over_bound_same_run": s.series_per_s / same,
               "measured_over_bound_isolated": s.series_per_s / isolated,
               "load_average": common.load_average()}
    records.append(common.Record(f"predict.with_decode.workers{w}", device, s.series_per_s,
                                 "series/s", details=details))
    records.append(common.Record(f"predict.device_only.workers{w}", device,
                                 s.device_series_per_s, "series/s", details={"workers": w}))
    rows.append((w, s.series_per_s, s.device_series_per_s, s.decode_series_per_s, same,
                 s.series_per_s / same, isolated, s.series_per_s / isolated))
  summary = {"isolated_decode_series_per_s": iso_decode,
             "isolated_device_series_per_s": iso_device, "rows": [
      dict(zip(("workers", "with_decode", "device_only", "decode_per_worker", "bound_same_run",
                "ratio_same_run", "bound_isolated", "ratio_isolated"), row)) for row in rows],
      "series": len(refs), "slices_per_series": _mean_slices(work / f"preds_w{w}.csv")}
  return records, summary


def _mean_slices(path: pathlib.Path) -> float:
  from ctjax.inference import archive
  n = [r["num_source_slices"] for r in archive.read_rows(path) if r["status"] == "ok"]
  return sum(n) / max(len(n), 1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.predict",
                              description=__doc__.splitlines()[0])
  p.add_argument("--scans", type=int, default=24)
  p.add_argument("--size", type=int, default=256, help="phantom DICOM size (px)")
  p.add_argument("--image-size", type=int, default=128, help="config.data.image_size")
  p.add_argument("--slices", type=int, default=28, help="config.data.num_slices (m)")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--workdir", default="", help="reuse generated data here")
  p.add_argument("--json", default=str(common.RESULTS_DIR / "predict.json"))
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  result, rc = common.run_reporting_errors(run, args)
  if rc:
    return rc
  records, summary = result
  print(f"{'workers':>7} {'with decode':>12} {'device-only':>12} {'decode/worker':>14} "
        f"{'bound':>8} {'ratio':>6} {'isolated bound':>15} {'ratio':>6}   (series/s)")
  for row in summary["rows"]:
    print(f"{row['workers']:>7} {row['with_decode']:>12.2f} {row['device_only']:>12.2f} "
          f"{row['decode_per_worker']:>14.2f} {row['bound_same_run']:>8.2f} "
          f"{row['ratio_same_run']:>6.2f} {row['bound_isolated']:>15.2f} "
          f"{row['ratio_isolated']:>6.2f}")
  print("bound: min(decode/worker x workers, device-only) of the same run (workers >= 1), "
        "serial for 0 workers;\nisolated bound: the same from the 0-worker run's decode and "
        "device rates.")
  args_json = {k: v for k, v in vars(args).items() if k not in ("workdir", "json")}  # paths
  header = {"preset": "predict", "environment": common.environment(), "args": args_json,
            "summary": summary}
  path = common.write_json(args.json, header, records)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
