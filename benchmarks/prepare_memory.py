"""Does preparing RSNA's full stage-2 training set (752,803 files) fit in bounded memory, and how
fast is it per core? Peak RSS and files/s of `python -m ctjax.prepare`'s path (label CSV stream,
header scan, decode, shards, QA) on generated RSNA-layout sets of growing size.

  python -m benchmarks.prepare_memory                      # 2,500 and 10,000 files, 16 px
  python -m benchmarks.prepare_memory --files 10000 --size 64

Each size runs in a fresh process (its own peak RSS: `peak_rss_mb`, Linux's VmHWM), in-process
(`num_workers=0`: one core), so files per CPU-second is the per-core throughput. The per-file
slope of peak RSS between the sizes is what the 752,803-file set adds on top of the baseline;
the table prints the extrapolation. Writes benchmarks/results/prepare_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

RSNA_TRAIN_FILES = 752_803          # stage_2_train/ of the RSNA 2019 challenge
SLICES_PER_SERIES = 40              # RSNA series have 21–60 slices (DrCT2 paper, Table 1)


def write_rsna(root: pathlib.Path, num_files: int, size: int) -> None:
  """An RSNA stage-2 layout of `num_files` tiny slices (the phantom's byte-spliced writer)."""
  import numpy as np
  from ctjax.data import phantom
  from ctjax.data.labels import RSNA_CSV_SUBTYPES
  img = root / "stage_2_train"
  img.mkdir(parents=True)
  prev = phantom._quiet_pydicom()  # noqa: SLF001 — RSNA's ID_ UIDs are not valid UI values
  rows = ["ID,Label"]
  rng = np.random.default_rng(0)
  try:
    n_series = -(-num_files // SLICES_PER_SERIES)
    done = 0
    for s in range(n_series):
      count = min(SLICES_PER_SERIES, num_files - done)
      truth = {"num_slices": count, "z": [5.0 * k for k in range(count)], "thickness": 5.0,
               "pixel_spacing": 0.5, "origin_xy": [0.0, 0.0]}
      writer = phantom.SeriesWriter(size=size, truth=truth, patient_id=f"ID_p{s:07x}",
                                    study_uid=f"ID_st{s:07x}", series_uid=f"ID_se{s:07x}",
                                    encoding=s % 3, descending_instances=False,
                                    description="benchmark")
      hu = rng.integers(-1000, 100, (count, size, size)).astype(np.int16)
      stored = writer.stored(hu)
      for k in range(count):
        sop = f"ID_{s:06x}{k:03x}"
        (img / f"{sop}.dcm").write_bytes(writer.encode(k, stored[k], sop))
        positive = int(k == 7 and s % 4 == 0)
        rows += [f"{sop}_{sub},{positive if sub in ('subdural', 'any') else 0}"
                 for sub in RSNA_CSV_SUBTYPES]
      done += count
  finally:
    phantom._restore_pydicom(prev)  # noqa: SLF001
  (root / "stage_2_train.csv").write_text("\n".join(rows) + "\n")


def peak_rss_mb() -> float:
  """This process's peak resident memory, MB. Linux's VmHWM belongs to the process's own address
  space; `ru_maxrss` also carries the high-water mark of the process that forked it (kept
  across exec), so a child of a large parent would report the parent's peak."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return round(int(line.split()[1]) / 1024, 1)
  except OSError:
    pass
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure(root: str, cache_dir: str, size: int) -> dict:
  """In this process: prepare `root` (RSNA layout); peak RSS, wall and CPU seconds."""
  from ctjax.configs.common import base_config
  from ctjax.data import cache
  c = base_config()
  c.task = "drct"
  c.data.layout, c.data.root, c.data.cache_dir = "rsna", root, cache_dir
  c.data.image_size = size
  c.log.progress_bar = False
  base_rss = peak_rss_mb()
  t0, c0 = time.perf_counter(), time.process_time()
  path = cache.ensure_cache(c)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  m = json.loads((path / "manifest.json").read_text())
  return {"files": m["num_slices"], "scans": m["num_scans"], "wall_s": round(wall, 2),
          "cpu_s": round(cpu, 2), "files_per_cpu_s": round(m["num_slices"] / cpu, 1),
          "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base_rss}


def run(sizes, image_size: int) -> list[dict]:
  out = []
  for n in sizes:
    with tempfile.TemporaryDirectory() as tmp:
      root = pathlib.Path(tmp) / "rsna"
      t0 = time.perf_counter()
      write_rsna(root, n, image_size)
      gen = time.perf_counter() - t0
      code = (f"import json; from benchmarks.prepare_memory import measure; "
              f"print(json.dumps(measure({str(root)!r}, {tmp + '/cache'!r}, {image_size})))")
      env = dict(os.environ, JAX_PLATFORMS="cpu")
      r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=pathlib.Path(__file__).resolve().parents[1], check=True)
      row = json.loads(r.stdout.strip().splitlines()[-1])
      row["generate_s"] = round(gen, 2)
      out.append(row)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--files", type=int, nargs="+", default=[2500, 10000])
  p.add_argument("--size", type=int, default=16, help="slice size in pixels (tiny: memory)")
  p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" /
                                      "prepare_memory.json"))
  a = p.parse_args(argv)
  rows = run(sorted(a.files), a.size)
  print(f"{'files':>8} {'scans':>6} {'peak RSS MB':>12} {'wall s':>7} {'CPU s':>7} "
        f"{'files/CPU-s':>12}")
  for r in rows:
    print(f"{r['files']:>8} {r['scans']:>6} {r['peak_rss_mb']:>12} {r['wall_s']:>7} "
          f"{r['cpu_s']:>7} {r['files_per_cpu_s']:>12}")
  result = {"image_size": a.size, "rows": rows}
  if len(rows) > 1:
    a0, a1 = rows[0], rows[-1]
    slope = (a1["peak_rss_mb"] - a0["peak_rss_mb"]) * 1024 / (a1["files"] - a0["files"])
    full = a1["peak_rss_mb"] + slope * (RSNA_TRAIN_FILES - a1["files"]) / 1024
    result.update(kb_per_file=round(slope, 3), rsna_full_estimate_mb=round(full))
    print(f"peak RSS grows {slope:.2f} KB per file → {RSNA_TRAIN_FILES:,} files: ~{full:.0f} MB "
          f"(+ the slice-size-dependent shard buffers)")
  pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(a.out).write_text(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
