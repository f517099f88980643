"""Prepared cache: DICOM decoded once into int16 HU shards + a manifest; `CacheSource` reads it.

Layout of a cache folder (`cache_path(config, root)` = `<config.data.cache_dir or
ROOT/.ctjax_cache>/<key>`, key = hash of layout, root, image_size, lenient, format version):
  shard_00000.hu.npy   int16 [slices of the shard's scans, S, S] HU clipped to [-1024, 3071]
  shard_00000.json     per scan: offset/num_slices into the .npy, labels, per-slice labels,
                       blend classes and boxes (pixels of the cached image), provenance (source
                       files in slice order, SOP UIDs, spacing, reader notes and skips)
  manifest.json        written last: options, labels, every shard's scans, "complete": true
Every slice of a scan is kept (sampling to m slices happens in the pipeline). Shards are written
to a temporary name and renamed, so a re-run (resume) skips finished shards.

Resizing to `image_size`: Pillow on float32 HU ("F" mode, C speed, ~0.3 ms a 512² slice):
area resampling (Image.BOX: each output pixel is the area-weighted mean of the input pixels it
covers) when shrinking, bilinear when enlarging; then rounding to int16. Non-square images are
resized to a square.

Workers are separate processes (spawn: the parent may have JAX loaded), one shard per task.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import time
from typing import Any, Optional, Sequence

import numpy as np

from ctjax import errors
from ctjax.data import datasets

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HU_MIN, HU_MAX = -1024, 3071


def resize_hu(hu: np.ndarray, size: int) -> np.ndarray:
  """float HU [S, H, W] → int16 [S, size, size] (Pillow bilinear/antialiased; see docstring)."""
  hu = np.asarray(hu, np.float32)
  s, h, w = hu.shape
  if (h, w) == (size, size):
    out = hu
  else:
    from PIL import Image
    down = size <= min(h, w)
    method = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    out = np.empty((s, size, size), np.float32)
    for i in range(s):
      img = Image.fromarray(hu[i], mode="F")
      out[i] = np.asarray(img.resize((size, size), method), np.float32)
  return np.clip(np.rint(out), HU_MIN, HU_MAX).astype(np.int16)


def cache_key(layout: str, root: str, image_size: int, lenient: bool) -> str:
  blob = json.dumps({"v": FORMAT_VERSION, "layout": layout, "root": os.path.abspath(root),
                     "size": int(image_size), "lenient": bool(lenient)}, sort_keys=True)
  return f"{layout.replace(':', '_')}_{image_size}_{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def cache_path(cache_dir: str, layout: str, root: str, image_size: int,
               lenient: bool = False) -> pathlib.Path:
  base = pathlib.Path(cache_dir) if cache_dir else pathlib.Path(root) / ".ctjax_cache"
  return base / cache_key(layout, root, image_size, lenient)


def is_complete(path) -> bool:
  m = pathlib.Path(path) / "manifest.json"
  if not m.is_file():
    return False
  try:
    return bool(json.loads(m.read_text()).get("complete"))
  except (OSError, ValueError):
    return False


# ------------------------------------------------------------- config → cache (no Grain here)

DEFAULTS = {
    "layout": "phantom", "root": "", "cache_dir": "", "image_size": 256, "num_slices": 28,
    "windows": "rsna3", "num_folds": 5, "fold": 0, "split_seed": 0, "num_workers": 0,
    "prefetch": 2, "lenient": False, "max_boxes": 8, "eval_batch_size": 0,
    "balance_share": 0.0,
}
SYNTH_DEFAULTS = {"layout": "rsna", "num_scans": 24, "seed": 0, "size": 64}


def _get(section, name: str, defaults: dict):
  if section is not None and name in section:
    return section[name]
  return defaults[name]


def data_option(config, name: str):
  return _get(config.get("data"), name, DEFAULTS)


def resolve_root(config, workdir: Optional[str]) -> tuple[str, str]:
  """(layout the adapters read, root folder); generates phantoms when asked and absent."""
  layout = data_option(config, "layout")
  root = data_option(config, "root")
  if layout == "phantom":
    if not root:
      if not workdir:
        raise errors.ConfigError("layout 'phantom' with data.root='' needs a workdir")
      root = os.path.join(workdir, "data")
    if not (pathlib.Path(root) / "manifest.json").is_file():
      synth = config.data.get("synth") if "data" in config else None
      opts = {k: _get(synth, k, SYNTH_DEFAULTS) for k in SYNTH_DEFAULTS}
      try:
        from ctjax.data import phantom
      except ImportError as e:
        raise errors.ConfigError("layout 'phantom' needs ctjax.data.phantom, which is not "
                                 f"importable ({e})") from e
      log.info("generating phantom data set %s into %s", opts, root)
      phantom.write_dataset(root, layout=opts["layout"], num_scans=int(opts["num_scans"]),
                            seed=int(opts["seed"]), size=int(opts["size"]))
  elif not root:
    raise errors.ConfigError(f"config.data.root is empty for layout {layout!r}")
  return layout, str(root)


def ensure_cache(config, workdir: Optional[str] = None, *, progress: Optional[bool] = None
                 ) -> pathlib.Path:
  """The complete cache folder for `config` (prepared now when absent or unfinished).

  Reads config.data.{layout, root, cache_dir, image_size, lenient, num_workers, synth}; the
  defaults are `DEFAULTS` / `SYNTH_DEFAULTS` above. `progress` None follows
  config.log.progress_bar (default on).
  """
  if progress is None:
    log_cfg = config.get("log") if hasattr(config, "get") else None
    progress = bool(log_cfg.get("progress_bar", True)) if log_cfg is not None else True
  layout, root = resolve_root(config, workdir)
  size = int(data_option(config, "image_size"))
  lenient = bool(data_option(config, "lenient"))
  path = cache_path(data_option(config, "cache_dir"), layout, root, size, lenient)
  if not is_complete(path):
    ds = datasets.load(layout, root)
    prepare(ds, path, image_size=size, lenient=lenient,
            num_workers=int(data_option(config, "num_workers")), progress=progress,
            options={"layout": layout, "root": root, "image_size": size})
  return path


# ------------------------------------------------------------------------------- building


def _scan_job(rec, image_size: int, lenient: bool, num_labels: int):
  """One scan → (hu int16 [S, s, s], meta dict)."""
  from ctjax.data import dicom
  vol = dicom.read_series(rec["files"], series_uid=rec.get("series_uid"), lenient=lenient)
  hu = resize_hu(vol.hu, image_size)
  h, w = vol.hu.shape[1:]
  scale = np.asarray([image_size / w, image_size / h, image_size / w, image_size / h],
                     np.float32)
  sl = rec.get("slice_labels") or {}
  slice_labels = [list(map(int, sl[f])) if f in sl else [0] * num_labels for f in vol.files]
  meta = {
      "scan_id": rec["scan_id"], "patient_id": rec["patient_id"],
      "series_uid": vol.series_uid, "num_slices": int(hu.shape[0]),
      "labels": [float(v) for v in rec["labels"]], "slice_labels": slice_labels,
      "files": vol.files, "sop_uids": vol.sop_uids, "spacing": list(vol.spacing),
      "source_shape": [int(h), int(w)], "ordered_by": vol.ordered_by,
      "notes": vol.notes, "skipped": [dataclasses.asdict(s) for s in vol.skipped],
      "header": vol.header,
  }
  if rec.get("slice_class"):
    meta["slice_class"] = [int(rec["slice_class"].get(f, -1)) for f in vol.files]
  if rec.get("boxes"):
    meta["boxes"] = [(np.asarray(rec["boxes"].get(f, np.zeros((0, 4))), np.float32).reshape(-1, 4)
                      * scale).round(3).tolist() for f in vol.files]
  return hu, meta


def _build_shard(job: dict) -> tuple[int, int, list[str]]:
  """Worker: writes shard `job['index']` atomically; returns (index, num_scans, failures)."""
  out = pathlib.Path(job["out"])
  idx = job["index"]
  stem = out / f"shard_{idx:05d}"
  arrays, metas, failures = [], [], []
  offset = 0
  for rec in job["scans"]:
    try:
      hu, meta = _scan_job(rec, job["image_size"], job["lenient"], job["num_labels"])
    except errors.CTDataError as e:
      if not job["lenient"]:
        raise
      failures.append(f"{rec['scan_id']}: {e}")
      continue
    meta["offset"] = offset
    offset += hu.shape[0]
    arrays.append(hu)
    metas.append(meta)
  size = job["image_size"]
  hu_all = np.concatenate(arrays) if arrays else np.zeros((0, size, size), np.int16)
  tmp = stem.with_name(stem.name + ".tmp.npy")
  np.save(tmp, hu_all)
  os.replace(tmp, stem.with_name(stem.name + ".hu.npy"))
  tmpj = stem.with_name(stem.name + ".tmp.json")
  tmpj.write_text(json.dumps({"index": idx, "scans": metas, "failures": failures}))
  os.replace(tmpj, stem.with_name(stem.name + ".json"))
  return idx, len(metas), failures


def _record_dict(rec) -> dict:
  return {"scan_id": rec.scan_id, "patient_id": rec.patient_id, "files": list(rec.files),
          "series_uid": rec.series_uid, "labels": np.asarray(rec.labels).tolist(),
          "slice_labels": {k: np.asarray(v).tolist() for k, v in rec.slice_labels.items()},
          "slice_class": dict(rec.slice_class),
          "boxes": {k: np.asarray(v).tolist() for k, v in rec.boxes.items()}}


def prepare(dataset, out, *, image_size: int, num_workers: int = 0,
            scans_per_shard: int = 8, lenient: bool = False, progress: bool = True,
            options: Optional[dict] = None) -> pathlib.Path:
  """Decodes `dataset` (a `ctjax.data.datasets.Dataset`) into `out`; returns the manifest path.

  Resumable: shards already on disk are skipped. `num_workers` > 0 runs shards in that many
  spawned processes; 0 runs in-process.
  """
  out = pathlib.Path(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"cannot create the cache folder {out} ({e}); set "
                             "config.data.cache_dir to a writable folder") from e
  scans = sorted(dataset.scans, key=lambda r: r.scan_id)
  chunks = [scans[i:i + scans_per_shard] for i in range(0, len(scans), scans_per_shard)]
  jobs = []
  for i, chunk in enumerate(chunks):
    if (out / f"shard_{i:05d}.json").is_file() and (out / f"shard_{i:05d}.hu.npy").is_file():
      continue
    jobs.append({"out": str(out), "index": i, "scans": [_record_dict(r) for r in chunk],
                 "image_size": int(image_size), "lenient": bool(lenient),
                 "num_labels": len(dataset.labels)})
  log.info("prepare %s: %d shards, %d to build (%d already done)", out, len(chunks), len(jobs),
           len(chunks) - len(jobs))
  t0 = time.time()
  bar = None
  if progress and jobs:
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc="prepare shards", unit="shard")
  try:
    if num_workers > 0 and len(jobs) > 1:
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(jobs)),
                                                  mp_context=ctx) as pool:
        for _ in pool.map(_build_shard, jobs):
          if bar:
            bar.update()
    else:
      for job in jobs:
        _build_shard(job)
        if bar:
          bar.update()
  finally:
    if bar:
      bar.close()
  shards = []
  for i in range(len(chunks)):
    shards.append(json.loads((out / f"shard_{i:05d}.json").read_text()))
  failures = [f for s in shards for f in s["failures"]]
  manifest = {
      "version": FORMAT_VERSION, "complete": True, "layout": dataset.layout,
      "root": os.path.abspath(dataset.root), "image_size": int(image_size),
      "labels": list(dataset.labels), "has_slice_labels": bool(dataset.has_slice_labels),
      "lenient": bool(lenient), "options": options or {}, "failures": failures,
      "num_scans": sum(len(s["scans"]) for s in shards),
      "num_slices": sum(m["num_slices"] for s in shards for m in s["scans"]),
      "prepare_seconds": round(time.time() - t0, 3),
      "shards": [{"file": f"shard_{s['index']:05d}.hu.npy",
                  "scans": [m["scan_id"] for m in s["scans"]]} for s in shards],
  }
  tmp = out / "manifest.tmp.json"
  tmp.write_text(json.dumps(manifest, indent=1))
  os.replace(tmp, out / "manifest.json")
  if failures:
    log.warning("prepare: %d scan(s) failed and were left out: %s", len(failures), failures[:3])
  return out / "manifest.json"


# ------------------------------------------------------------------------------- reading


@dataclasses.dataclass
class ScanMeta:
  scan_id: str
  patient_id: str
  shard: int
  offset: int
  num_slices: int
  labels: np.ndarray          # float32 [L]
  slice_labels: np.ndarray    # uint8 [S, L]
  slice_class: Optional[np.ndarray]   # int32 [S] (blend)
  boxes: Optional[list]       # per slice [K, 4] (blend; phantoms: bleeding lesions)
  info: dict                  # provenance


class CachedScans:
  """All scans of a cache (metadata in memory; HU memory-mapped lazily, per process)."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    if not is_complete(self.path):
      raise errors.CTDataError("no complete prepared cache here; run python -m ctjax.prepare",
                               self.path / "manifest.json")
    self.manifest = json.loads((self.path / "manifest.json").read_text())
    self.labels = tuple(self.manifest["labels"])
    self.image_size = int(self.manifest["image_size"])
    self.scans: list[ScanMeta] = []
    for si, shard in enumerate(self.manifest["shards"]):
      meta = json.loads((self.path / shard["file"].replace(".hu.npy", ".json")).read_text())
      for m in meta["scans"]:
        sl = np.asarray(m["slice_labels"], np.uint8).reshape(m["num_slices"], len(self.labels))
        self.scans.append(ScanMeta(
            m["scan_id"], m["patient_id"], si, m["offset"], m["num_slices"],
            np.asarray(m["labels"], np.float32), sl,
            np.asarray(m["slice_class"], np.int32) if "slice_class" in m else None,
            m.get("boxes"),
            {k: m[k] for k in ("files", "sop_uids", "spacing", "series_uid", "notes")}))
    self._mmaps: dict[int, np.ndarray] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_mmaps"] = {}      # memory maps are reopened in each worker process
    return state

  def hu(self, shard: int) -> np.ndarray:
    arr = self._mmaps.get(shard)
    if arr is None:
      arr = np.load(self.path / self.manifest["shards"][shard]["file"], mmap_mode="r")
      self._mmaps[shard] = arr
    return arr

  def scan_hu(self, i: int, slices: Optional[np.ndarray] = None) -> np.ndarray:
    """int16 [S or len(slices), H, W] of scan i (a copy)."""
    s = self.scans[i]
    arr = self.hu(s.shard)
    if slices is None:
      return np.array(arr[s.offset:s.offset + s.num_slices])
    return arr[s.offset + np.asarray(slices, np.int64)]


class CacheSource:
  """Grain random-access source over some scans of a cache.

  `record` = "scan" (one element per scan: HU [S, H, W] loaded lazily by the pipeline) or
  "slice" (one element per slice of those scans). Elements are small dicts of numpy values;
  `example_info(i)` gives the string ids for the host.
  """

  def __init__(self, scans: CachedScans, indices: Sequence[int], record: str = "scan"):
    if record not in ("scan", "slice"):
      raise errors.ConfigError(f"record type {record!r} not scan/slice")
    self.scans = scans
    self.indices = np.asarray(indices, np.int64)
    self.record = record
    self.labels = scans.labels
    if record == "slice":
      counts = np.asarray([scans.scans[i].num_slices for i in self.indices], np.int64)
      scan = np.repeat(self.indices, counts)
      starts = np.repeat(np.cumsum(counts) - counts, counts)
      self._slices = np.stack([scan, np.arange(len(scan)) - starts], -1).astype(np.int64)

  def __len__(self) -> int:
    return len(self.indices) if self.record == "scan" else len(self._slices)

  def slice_positives(self) -> np.ndarray:
    """bool [len(self), L'] per slice element: its positive labels (pretrain: slice_labels;
    blend: one column per non-zero slice class, 1 … max class of the source's slices)."""
    if self.record != "slice":
      raise errors.ConfigError("slice_positives needs slice records")
    classes = [m.slice_class.max() for m in self.scans.scans
               if m.slice_class is not None and m.slice_class.size]
    non_zero = np.arange(1, max(2, int(max(classes, default=0)) + 1))
    rows = []
    for scan, k in self._slices:
      m = self.scans.scans[int(scan)]
      if m.slice_class is not None:
        rows.append(m.slice_class[k] == non_zero)
      else:
        rows.append(m.slice_labels[k] > 0)
    return np.asarray(rows, bool).reshape(len(self._slices), -1)

  def balanced(self, share: float, max_repeat: int = 64) -> "CacheSource":
    """Training view of a slice source in which rare labels' positive slices are repeated:
    a label with n of N positives gets r = round(share · N / n) copies (1 ≤ r ≤ max_repeat), so
    that it makes up about `share` of an epoch; a slice with several labels takes the largest
    r; negatives appear once. Deterministic (no rng): the epoch shuffle does the mixing."""
    pos = self.slice_positives()
    n = pos.sum(0)
    per_label = np.where(n > 0, np.round(share * len(pos) / np.maximum(n, 1)), 1)
    per_label = np.clip(per_label, 1, max_repeat).astype(np.int64)
    reps = np.where(pos, per_label[None, :], 1).max(1) if pos.shape[1] else \
        np.ones(len(pos), np.int64)
    out = CacheSource.__new__(CacheSource)
    out.__dict__.update(self.__dict__)
    out._slices = np.repeat(self._slices, reps, axis=0)
    return out

  def __repr__(self) -> str:
    return f"CacheSource({self.scans.path}, {len(self)} {self.record}s)"

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if self.record == "scan":
      return {"scan": int(self.indices[i]), "example_index": i}
    scan, k = self._slices[i]
    return {"scan": int(scan), "slice": int(k), "example_index": i}

  def example_info(self, i: int) -> dict[str, Any]:
    """Host-side ids of element i: scan_id, patient_id, (slice), source files."""
    el = self[i]
    m = self.scans.scans[el["scan"]]
    out = {"scan_id": m.scan_id, "patient_id": m.patient_id, "num_slices": m.num_slices,
           "files": m.info["files"]}
    if "slice" in el:
      out["slice"] = el["slice"]
      out["file"] = m.info["files"][el["slice"]]
    return out

  @property
  def scan_ids(self) -> list[str]:
    return [self.scans.scans[i].scan_id for i in self.indices]
