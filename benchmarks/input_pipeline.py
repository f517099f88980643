"""How fast does data reach the model: DICOM decode vs the prepared cache through Grain.

    python -m benchmarks.input_pipeline [--scans 6] [--size 512] [--image-size 256] [--slices 28]
        [--batch 4] [--workers 0 2] [--json benchmarks/results/input_pipeline.json]

Figures (one process unless named; the machine is shared, so the load average is recorded):
- phantom generation slices/s (ctjax.data.phantom.write_dataset, RSNA layout, `--size` px);
- DICOM decode slices/s per core: `read_series` (parse, order, HU) alone, and with the resize
  to `--image-size` that prepare does; plus pydicom's bare dcmread + pixel_array for reference;
- DICOM → example scans/s: what a loader without a cache pays per DrCT example (read the whole
  series, resize, sample m slices);
- prepare slices/s (decode + resize + write shards);
- cache → batches scans/s: `train_iterator` (Grain, m-slice re-draws, batching) for DrCT scan
  records, per `--workers` value (0 = in-process; >0 = Grain mp_prefetch worker processes,
  start-up excluded), and slices/s for single-slice records (pretrain/blend: Grain's small-record
  batching path), and the ratio cache/DICOM scans/s, which must be >= 20;
- Grain's `index_shuffle` cost per element vs ctjax's `EpochShuffle` (why the pipeline has its own).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from benchmarks import common

log = logging.getLogger("benchmarks.input_pipeline")


def _timed(fn):
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def _pipeline_config(task: str, image_size: int, m: int, batch: int, workers: int):
  import ml_collections
  c = ml_collections.ConfigDict()
  c.task = task
  c.train = ml_collections.ConfigDict({"batch_size": batch})
  c.data = ml_collections.ConfigDict({
      "image_size": image_size, "num_slices": m, "num_workers": workers, "prefetch": 2,
      "augment": ml_collections.ConfigDict({"resample_slices": True, "hflip": 0.0})})
  return c


def _iterate(config, splits, *, num_batches: int, warmup: int = 2) -> tuple[float, int]:
  from ctjax.data import pipeline
  it = pipeline.train_iterator(config, splits, seed=0)
  for _ in range(warmup):
    next(it)
  t = time.perf_counter()
  n = 0
  for _ in range(num_batches):
    b = next(it)
    n += b["hu"].shape[0]
  return time.perf_counter() - t, n


def _numpy_loop(config, splits, num_batches: int) -> float:
  """The same examples and batching without Grain: what Grain's machinery costs on top."""
  from ctjax.data import pipeline
  fn = pipeline._example_fn(config, splits, train=True)  # noqa: SLF001
  src = splits["train"]
  b = int(config.train.batch_size)
  t = time.perf_counter()
  for step in range(num_batches):
    exs = [fn(src[(step * b + j) % len(src)], np.random.default_rng(step * b + j))
           for j in range(b)]
    pipeline.stack(exs)
  return num_batches * b / (time.perf_counter() - t)


def run(args) -> tuple[list[common.Record], dict]:
  from ctjax.data import cache, datasets, dicom, pipeline
  device = f"cpu:{common.cpu_model()} x{os.cpu_count()}"
  records: list[common.Record] = []
  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="ctjax_bench_"))
  root = work / "rsna"

  # 1. Phantom generation (always timed, on `--gen-scans` scans; the data set is reused).
  from ctjax.data import phantom
  gen = pathlib.Path(tempfile.mkdtemp(prefix="ctjax_gen_"))
  secs, manifest_path = _timed(lambda: phantom.write_dataset(
      gen, layout="rsna", num_scans=args.gen_scans, seed=1, size=args.size))
  manifest = json.loads(manifest_path.read_text())
  records.append(common.speed_record(
      "phantom generation (rsna layout)", seconds=secs,
      items=sum(len(s["files"]) for s in manifest["scans"]), unit="slices/s", device=device,
      size=args.size, scans=args.gen_scans))
  shutil.rmtree(gen, ignore_errors=True)
  if not (root / "manifest.json").is_file():
    phantom.write_dataset(root, layout="rsna", num_scans=args.scans, seed=0, size=args.size)
  ds = datasets.load("phantom", root)
  n_slices = sum(len(s.files) for s in ds.scans)

  # 2. DICOM decode per core.
  import pydicom
  files = [f for s in ds.scans for f in s.files]
  secs, _ = _timed(lambda: [pydicom.dcmread(f).pixel_array for f in files])
  bare = len(files) / secs
  secs, vols = _timed(lambda: [dicom.read_series(s.files) for s in ds.scans])
  records.append(common.speed_record(
      "DICOM decode read_series (1 core)", seconds=secs, items=n_slices, unit="slices/s",
      device=device, size=args.size, pydicom_bare_slices_per_s=bare))
  decode_rate = records[-1].value
  try:   # a real 512² head CT slice (pydicom-data), read as a one-slice series
    from pydicom.data import get_testdata_file
    real = get_testdata_file("693_UNCR.dcm")
    reps = 40
    secs_real, _ = _timed(lambda: [dicom.read_series([real]) for _ in range(reps)])
    records.append(common.speed_record(
        "DICOM decode real 693_UNCR.dcm (1 core)", seconds=secs_real, items=reps,
        unit="slices/s", device=device, size=512))
  except (ImportError, ValueError, OSError) as e:   # pydicom-data not installed
    log.warning("693_UNCR.dcm unavailable: %s", e)
  secs_resize, _ = _timed(lambda: [cache.resize_hu(v.hu, args.image_size) for v in vols])
  del vols

  # 3. DICOM → example (what a cache-less loader pays per DrCT example).
  from ctjax.data import sampling
  rng = np.random.default_rng(0)

  def dicom_examples():
    for s in ds.scans:
      v = dicom.read_series(s.files)
      idx = sampling.random_indices(v.num_slices, args.slices, rng)
      cache.resize_hu(v.hu[idx], args.image_size)

  secs, _ = _timed(dicom_examples)
  dicom_scans_per_s = len(ds.scans) / secs
  records.append(common.speed_record(
      "DICOM -> DrCT example (1 core)", seconds=secs, items=len(ds.scans), unit="scans/s",
      device=device, m=args.slices, image_size=args.image_size,
      decode_plus_resize_slices_per_s=n_slices / (secs_resize + n_slices / decode_rate)))

  # 4. Prepare.
  out = work / f"cache_{args.image_size}"
  shutil.rmtree(out, ignore_errors=True)     # always timed from scratch
  secs, _ = _timed(lambda: cache.prepare(ds, out, image_size=args.image_size, num_workers=0,
                                         progress=False))
  records.append(common.speed_record(
      "prepare (decode+resize+write, 1 core)", seconds=secs, items=n_slices, unit="slices/s",
      device=device, image_size=args.image_size))
  scans = cache.CachedScans(out)
  all_idx = np.arange(len(scans.scans))

  # 5. Cache → batches.
  extra = {}
  for workers in args.workers:
    config = _pipeline_config("drct", args.image_size, args.slices, args.batch, workers)
    splits = pipeline.Splits({"train": cache.CacheSource(scans, all_idx, "scan")}, scans.labels,
                             {"task": "drct", "record": "scan"})
    secs, n = _iterate(config, splits, num_batches=args.num_batches)
    rec = common.speed_record(
        f"cache -> DrCT batches (grain, workers={workers})", seconds=secs, items=n,
        unit="scans/s", device=device, m=args.slices, batch=args.batch,
        image_size=args.image_size, bytes_per_scan=args.slices * args.image_size ** 2 * 2)
    rec.details["ratio_vs_dicom"] = rec.value / dicom_scans_per_s
    if workers == 0:
      rec.details["plain_numpy_loop_scans_per_s"] = _numpy_loop(config, splits, args.num_batches)
    records.append(rec)
    extra[f"ratio_workers{workers}"] = rec.value / dicom_scans_per_s
  for workers in args.workers[:1]:
    config = _pipeline_config("pretrain", args.image_size, 1, args.slice_batch, workers)
    splits = pipeline.Splits({"train": cache.CacheSource(scans, all_idx, "slice")}, scans.labels,
                             {"task": "pretrain", "record": "slice"})
    secs, n = _iterate(config, splits, num_batches=args.num_batches)
    records.append(common.speed_record(
        f"cache -> slice batches (grain, workers={workers})", seconds=secs, items=n,
        unit="slices/s", device=device, batch=args.slice_batch, image_size=args.image_size,
        plain_numpy_loop_slices_per_s=_numpy_loop(config, splits, args.num_batches)))

  # 6. Shuffle cost per element.
  from grain._src.python.experimental.index_shuffle.python import index_shuffle_module as ism
  for n in (4, 100, 10000):
    reps = 200
    secs, _ = _timed(lambda: [ism.index_shuffle(i % n, max_index=n - 1, seed=1, rounds=4)
                              for i in range(reps)])
    import grain
    es = pipeline.EpochShuffle(grain.MapDataset.range(n), seed=1)
    secs2, _ = _timed(lambda: [es[i] for i in range(reps)])
    records.append(common.Record(f"grain index_shuffle per element, n={n}", device,
                                 secs / reps * 1e6, "us", details={
                                     "ctjax_epoch_shuffle_us": secs2 / reps * 1e6}))
  best = max(v for v in extra.values())
  summary = {"dicom_scans_per_s": dicom_scans_per_s, "best_ratio_cache_vs_dicom": best,
             "meets_20x": best >= 20.0, "num_scans": len(ds.scans), "num_slices": n_slices,
             "workdir": str(work), **extra}
  return records, summary


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline",
                              description=__doc__.splitlines()[0])
  p.add_argument("--scans", type=int, default=6)
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--gen-scans", type=int, default=1, help="scans timed for phantom generation")
  p.add_argument("--image-size", type=int, default=256)
  p.add_argument("--slices", type=int, default=28)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--slice-batch", type=int, default=32)
  p.add_argument("--num-batches", type=int, default=20)
  p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  p.add_argument("--workdir", default="", help="reuse generated data / cache here")
  p.add_argument("--json", default=str(common.RESULTS_DIR / "input_pipeline.json"))
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  result, rc = common.run_reporting_errors(run, args)
  if rc:
    return rc
  records, summary = result
  print(common.format_table(records))
  for r in records:
    for key in ("plain_numpy_loop_scans_per_s", "plain_numpy_loop_slices_per_s",
                "ctjax_epoch_shuffle_us", "pydicom_bare_slices_per_s",
                "decode_plus_resize_slices_per_s"):
      if key in r.details:
        print(f"  {r.name}: {key} = {r.details[key]:.4g}")
  print(f"\ncache -> batches vs DICOM -> examples: {summary['best_ratio_cache_vs_dicom']:.1f}x "
        f"({'meets' if summary['meets_20x'] else 'MISSES'} the >= 20x target)")
  header = {"preset": "input_pipeline", "environment": common.environment(),
            "args": vars(args), "summary": summary}
  path = common.write_json(args.json, header, records)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
