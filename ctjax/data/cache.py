"""Prepared cache: DICOM decoded once into int16 HU shards + a manifest; `CacheSource` reads it.

Layout of a cache folder (`cache_path(config, root)` = `<config.data.cache_dir or
ROOT/.ctjax_cache>/<key>`, key = hash of layout, root, image_size, lenient, the options that
change what is cached (series policy, reader rule) and the format version — no other path, so a
cache moves with its root):
  source.json          what the cache is built from (`source_fingerprint`), written first
  shard_00000.hu.npy   int16 [slices of the shard's scans, S, S] HU clipped to [-1024, 3071],
                       in `read_series`' canonical orientation (rows anterior → posterior,
                       columns right → left, slices inferior → superior)
  shard_00000.json     per scan: offset/num_slices into the .npy, labels, per-slice labels,
                       blend classes and boxes (pixels of the cached image), provenance (source
                       files in slice order, SOP UIDs, spacing, reader notes and skips, the
                       series' identity and selection), its QA row; the .npy's size and SHA-1
  qa.jsonl, qa.csv     one QA row per series (`ctjax.data.qa`), excluded series included
  manifest.json        written last: options, labels, source fingerprint, every shard's scans,
                       size and SHA-1, the adapter's report, "complete": true
Every slice of a scan is kept (sampling to m slices happens in the pipeline). Shards are written
to a temporary name and renamed, so a re-run (resume) skips finished shards; a shard whose .npy
size differs from its JSON is rebuilt.

Freshness: the source fingerprint holds the SHA-256 of every label file in the root (*.csv,
manifest.json), an order-independent digest over (relative path, size, mtime) of every other
file under the root (hidden files and folders and the cache itself excluded): a few µs a file,
so checking 752k files costs seconds — and the DICOM reader's version
(`ctjax.data.dicom.READER_VERSION`), so a cache decoded by an older reader (e.g. before
canonical orientation) counts as stale. `ensure_cache` compares it with the manifest's; on a
difference it rebuilds the cache (`config.data.stale_cache="rebuild"`, the default) or refuses
with one line (`"error"`). A shard whose size differs from the manifest (truncated, replaced) is
a `CacheCorruptError` naming it and saying how to rebuild it: `python -m ctjax.prepare` with the
same config rebuilds exactly the damaged shards (`--checksum` also compares every SHA-1).

Resizing to `image_size`: `ctjax.data.resize.resize_hu` (Pillow on float32 HU: area
resampling when shrinking, bilinear when enlarging, then rounding to int16), in a module of its
own so that a served model resizes exactly so without the data pipeline.

Workers are separate processes (spawn: the parent may have JAX loaded), one shard per task, at
most 2 × workers shards in flight; the records of a shard are built when it is submitted, and
the manifest is assembled by streaming the shard files, so memory does not grow with the data
set beyond the records themselves.
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
import shutil
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ctjax import errors
from ctjax import fileio
from ctjax.data import datasets
from ctjax.data.resize import HU_MAX, HU_MIN, resize_hu  # noqa: F401  (the cache's resize)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
STALE_ACTIONS = ("rebuild", "error")


def cache_key(layout: str, root: str, image_size: int, lenient: bool,
              options: Optional[dict] = None) -> str:
  blob = json.dumps({"v": FORMAT_VERSION, "layout": layout, "root": os.path.abspath(root),
                     "size": int(image_size), "lenient": bool(lenient),
                     "options": options or {}}, sort_keys=True)
  return f"{layout.replace(':', '_')}_{image_size}_{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def cache_path(cache_dir: str, layout: str, root: str, image_size: int,
               lenient: bool = False, options: Optional[dict] = None) -> pathlib.Path:
  base = pathlib.Path(cache_dir) if cache_dir else pathlib.Path(root) / ".ctjax_cache"
  return base / cache_key(layout, root, image_size, lenient, options)


def is_complete(path) -> bool:
  m = pathlib.Path(path) / "manifest.json"
  if not m.is_file():
    return False
  try:
    return bool(json.loads(m.read_text()).get("complete"))
  except (OSError, ValueError):
    return False


# ------------------------------------------------------------------------------ freshness

LABEL_SUFFIXES = (".csv",)
LABEL_NAMES = ("manifest.json",)


def source_fingerprint(root, *, exclude: Sequence[os.PathLike] = ()) -> dict[str, Any]:
  """What a cache is built from: label files' SHA-256, a digest of every other file's
  (relative path, size, mtime) under `root` (hidden entries and `exclude` folders skipped),
  and the version of the DICOM reader that decodes them (`dicom.READER_VERSION`: a cache of
  another reader holds other pixels, e.g. not in canonical orientation)."""
  root = pathlib.Path(root)
  skip = {os.path.realpath(e) for e in exclude}
  labels: dict[str, str] = {}
  count = total = 0
  digest = 0
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")
                   and os.path.realpath(os.path.join(dirpath, d)) not in skip]
    for name in filenames:
      if name.startswith("."):
        continue
      full = os.path.join(dirpath, name)
      rel = os.path.relpath(full, root)
      if dirpath == str(root) and (name.endswith(LABEL_SUFFIXES) or name in LABEL_NAMES):
        labels[rel] = fileio.file_digest(full)
        continue
      try:
        st = os.stat(full)
      except OSError:
        continue
      count += 1
      total += st.st_size
      key = f"{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode()
      digest = (digest + int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")) \
          % (1 << 64)
  from ctjax.data import dicom   # pydicom: only where DICOM is read or fingerprinted
  return {"labels": dict(sorted(labels.items())),
          "files": {"count": count, "bytes": total, "digest": f"{digest:016x}"},
          "reader": dicom.READER_VERSION}


def describe_change(old: Optional[dict], new: dict) -> str:
  """What differs between two fingerprints, in words."""
  if not old:
    return "the cache records no source (built by an older ctjax)"
  parts = []
  if old.get("reader") != new.get("reader"):
    parts.append(f"built by DICOM reader version {old.get('reader', 1)}, now "
                 f"{new.get('reader')} (ctjax.data.dicom.READER_VERSION: e.g. canonical "
                 "orientation)")
  for name in sorted(set(old.get("labels", {})) | set(new["labels"])):
    a, b = old.get("labels", {}).get(name), new["labels"].get(name)
    if a != b:
      parts.append(f"{name} {'added' if a is None else 'removed' if b is None else 'changed'}")
  of, nf = old.get("files", {}), new["files"]
  if of != nf:
    if of.get("count") != nf["count"]:
      parts.append(f"{of.get('count')} → {nf['count']} DICOM/data files")
    else:
      parts.append(f"files replaced or touched ({of.get('bytes')} → {nf['bytes']} bytes, sizes "
                   "or modification times differ)")
  return "; ".join(parts) or "no difference"


# ------------------------------------------------------------- config → cache (no Grain here)

DEFAULTS = {
    "layout": "phantom", "root": "", "cache_dir": "", "image_size": 256, "num_slices": 28,
    "windows": "rsna3", "num_folds": 5, "fold": 0, "split_seed": 0, "num_workers": 0,
    "prefetch": 2, "lenient": False, "max_boxes": 8, "eval_batch_size": 0,
    "balance_share": 0.0, "stratify": False, "strict_labels": False,
    "max_unlabelled": datasets.MAX_UNLABELLED, "stale_cache": "rebuild", "series": None,
    "reader_rule": "majority", "require_head": True, "fold_protocol": "val_next_fold",
    "val_fraction": 0.1,
}
SYNTH_DEFAULTS = {"layout": "rsna", "num_scans": 24, "seed": 0, "size": 64}


def _get(section, name: str, defaults: dict):
  if section is not None and name in section:
    return section[name]
  return defaults[name]


def data_option(config, name: str):
  return _get(config.get("data"), name, DEFAULTS)


def split_indices(config, patient_ids, labels) -> dict[str, np.ndarray]:
  """The config's train / val / test scan indices (`ctjax.data.datasets.split_indices` with
  every `config.data` split option): the one place training and the reader study split."""
  return datasets.split_indices(
      list(patient_ids), num_folds=int(data_option(config, "num_folds")),
      fold=int(data_option(config, "fold")), seed=int(data_option(config, "split_seed")),
      labels=labels, stratify=bool(data_option(config, "stratify")),
      protocol=str(data_option(config, "fold_protocol")),
      val_fraction=float(data_option(config, "val_fraction")))


def series_options(config) -> dict[str, Any]:
  """config.data.series with the policy defaults filled in (`ctjax.data.series_policy`)."""
  from ctjax.data import series_policy
  section = data_option(config, "series")
  return series_policy.options(None if section is None else dict(section))


def load_options(config, *, progress: bool = False) -> datasets.LoadOptions:
  return datasets.LoadOptions(
      lenient=bool(data_option(config, "lenient")),
      strict_labels=bool(data_option(config, "strict_labels")),
      max_unlabelled=float(data_option(config, "max_unlabelled")),
      series=series_options(config), reader_rule=str(data_option(config, "reader_rule")),
      num_workers=int(data_option(config, "num_workers")), progress=progress)


def _content_options(layout: str, config) -> dict[str, Any]:
  """The options that change what the cache holds (part of its key)."""
  base = layout.split(":")[-1]
  if base == "phantom":
    synth = config.data.get("synth") if "data" in config else None
    base = str(_get(synth, "layout", SYNTH_DEFAULTS))
  if base == "cq500":
    return {"series": series_options(config), "reader_rule": data_option(config, "reader_rule")}
  return {}


def resolve_root(config, workdir: Optional[str], *, generate: bool = True,
                 progress: Optional[bool] = None) -> tuple[str, str]:
  """(layout the adapters read, root folder); generates phantoms when asked and absent
  (`generate` False: a missing phantom set raises CacheNotPreparedError instead).

  Phantoms go into <workdir>/data (data.root '') or into a data.root that is absent, empty or a
  phantom set already; any other folder is refused, so that a real data set given with the
  phantom config is never written over. `progress` None follows config.log.progress_bar."""
  layout = data_option(config, "layout")
  root = data_option(config, "root")
  if layout == "phantom":
    own = not root
    if own:
      if not workdir:
        raise errors.ConfigError("layout 'phantom' with data.root='' needs a workdir")
      root = os.path.join(workdir, "data")
    if not (pathlib.Path(root) / "manifest.json").is_file():
      if not generate:
        raise errors.CacheNotPreparedError(
            "the phantom data set was never generated here; train, or prepare it with "
            "python -m ctjax.prepare and the run's config", root)
      synth = config.data.get("synth") if "data" in config else None
      opts = {k: _get(synth, k, SYNTH_DEFAULTS) for k in SYNTH_DEFAULTS}
      try:
        from ctjax.data import phantom
      except ImportError as e:
        raise errors.ConfigError("layout 'phantom' needs ctjax.data.phantom, which is not "
                                 f"importable ({e})") from e
      foreign = [] if own else phantom.foreign_entries(root)
      if foreign:
        raise errors.DatasetLayoutError(
            f"config.data.root holds other files ({', '.join(foreign[:3])}"
            f"{', …' if len(foreign) > 3 else ''}) and config.data.layout='phantom' would "
            "write a phantom data set there; for your own data set give its layout "
            "(--config.data.layout=rsna|cq500|folder|blend, README section \"Real data\"), "
            "for phantoms a new or empty folder", root)
      n, size = int(opts["num_scans"]), int(opts["size"])
      gb = phantom.estimate_bytes(opts["layout"], n, size) / 1e9
      log.info("generating %s phantom head-CT scans (%s layout, %d px, seed %d) into %s: about "
               "%s of DICOM", f"{n:,}", opts["layout"], size, int(opts["seed"]), root,
               f"{gb:.1f} GB" if gb >= 0.1 else f"{gb * 1e3:.0f} MB")
      phantom.write_dataset(root, layout=opts["layout"], num_scans=n, seed=int(opts["seed"]),
                            size=size, allow_nonempty=own,
                            progress=_progress(config) if progress is None else progress)
  elif not root:
    raise errors.ConfigError(f"config.data.root is empty for layout {layout!r}")
  return layout, str(root)


def _progress(config) -> bool:
  log_cfg = config.get("log") if hasattr(config, "get") else None
  return bool(log_cfg.get("progress_bar", True)) if log_cfg is not None else True


def clear(path: pathlib.Path) -> None:
  """Removes a cache folder's files (the folder itself stays)."""
  for f in pathlib.Path(path).iterdir():
    if f.name.startswith(("shard_", "manifest", "qa.", "source")):
      f.unlink() if f.is_file() else shutil.rmtree(f)


def ensure_cache(config, workdir: Optional[str] = None, *, progress: Optional[bool] = None,
                 repair: bool = False, checksum: bool = False, build: bool = True
                 ) -> pathlib.Path:
  """The complete, fresh cache folder for `config` (prepared now when absent or unfinished).

  `build` False (evaluation, prediction, reports): nothing is written; a cache that is absent,
  unfinished, stale or damaged raises CacheNotPreparedError naming the command that prepares it.

  Reads config.data.{layout, root, cache_dir, image_size, lenient, num_workers, synth, series,
  reader_rule, strict_labels, max_unlabelled, stale_cache}; the defaults are `DEFAULTS` /
  `SYNTH_DEFAULTS` above. A stale cache (other label or DICOM files) is rebuilt or refused
  (`stale_cache`); damaged shards raise `CacheCorruptError`, or with `repair` (what
  `python -m ctjax.prepare` does) are rebuilt; `checksum` also compares every shard's SHA-1.
  `progress` None follows config.log.progress_bar (default on).
  """
  if progress is None:
    progress = _progress(config)
  layout, root = resolve_root(config, workdir, generate=build, progress=progress)
  size = int(data_option(config, "image_size"))
  lenient = bool(data_option(config, "lenient"))
  stale_action = str(data_option(config, "stale_cache"))
  if stale_action not in STALE_ACTIONS:
    raise errors.ConfigError(f"config.data.stale_cache={stale_action!r}; known: {STALE_ACTIONS}")
  path = cache_path(data_option(config, "cache_dir"), layout, root, size, lenient,
                    _content_options(layout, config))
  if not pathlib.Path(root).is_dir():
    raise errors.DatasetLayoutError(f"data root {root!r} is not a folder (config.data.root)",
                                    root)
  t0 = time.perf_counter()
  source = source_fingerprint(root, exclude=[path.parent])
  dt = time.perf_counter() - t0
  log.log(logging.INFO if dt > 2 else logging.DEBUG, "source fingerprint of %s: %d files in "
          "%.1f s", root, source["files"]["count"], dt)
  if not build:
    _check_prepared(path, source, checksum)
    return path
  if is_complete(path):
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("source") != source:
      change = describe_change(manifest.get("source"), source)
      if stale_action == "error":
        raise errors.StaleCacheError(
            f"prepared cache is stale ({change}); rebuild it with python -m ctjax.prepare "
            "--config.data.stale_cache=rebuild (same config), or restore the data it was built "
            "from", path)
      log.warning("prepared cache %s is stale (%s): rebuilding it", path, change)
      clear(path)
    else:
      # Repairing (prepare) also reads the shards' JSON records, as loading them will.
      damaged = damaged_shards(path, manifest, checksum=checksum, markers=repair)
      if not damaged:
        return path
      if not repair:
        raise errors.CacheCorruptError(
            f"{damaged[0][0]}: {damaged[0][1]} ({len(damaged)} damaged shard(s)); rebuild them "
            "with python -m ctjax.prepare and the same config", path)
      log.warning("rebuilding %d damaged shard(s): %s", len(damaged),
                  "; ".join(f"{f}: {why}" for f, why in damaged[:3]))
      for f, _ in damaged:
        f = f.replace(".json", ".hu.npy")
        for p in (path / f, path / f.replace(".hu.npy", ".json")):
          if p.exists():
            p.unlink()
  # Label files are read, then every DICOM header, before the first scan is decoded (RSNA: six
  # label rows per slice, 312k for the README job: seconds before the header bar appears).
  log.info("reading the labels and DICOM headers of %s (%s layout)", root, layout)
  ds = datasets.load(layout, root, options=load_options(config, progress=progress))
  prepare(ds, path, image_size=size, lenient=lenient,
          num_workers=int(data_option(config, "num_workers")), progress=progress,
          options={"layout": layout, "root": root, "image_size": size,
                   **_content_options(layout, config)}, source=source)
  return path


def _check_prepared(path: pathlib.Path, source: dict, checksum: bool) -> None:
  """Raises CacheNotPreparedError unless `path` is a complete cache of `source`, undamaged."""
  hint = "prepare it with python -m ctjax.prepare and the run's config (or train, which does)"
  if not is_complete(path):
    raise errors.CacheNotPreparedError(f"no prepared cache for this config; {hint}", path)
  manifest = json.loads((path / "manifest.json").read_text())
  if manifest.get("source") != source:
    raise errors.CacheNotPreparedError(
        f"prepared cache is stale ({describe_change(manifest.get('source'), source)}); {hint}",
        path)
  damaged = damaged_shards(path, manifest, checksum=checksum)
  if damaged:
    raise errors.CacheNotPreparedError(
        f"{damaged[0][0]}: {damaged[0][1]} ({len(damaged)} damaged shard(s)); {hint}", path)


def damaged_shards(path: pathlib.Path, manifest: dict, *, checksum: bool = False,
                   markers: bool = False) -> list[tuple[str, str]]:
  """(shard file, what is wrong) for every shard missing, of the wrong size or (checksum)
  content; `markers` also reads each shard's JSON (its done-marker and the scans' records),
  which must parse and name the .npy's size and SHA-1 that the manifest holds."""
  out = []
  for shard in manifest.get("shards", []):
    f = path / shard["file"]
    if not f.is_file():
      out.append((shard["file"], "missing"))
      continue
    want = shard.get("bytes")
    got = f.stat().st_size
    if want is not None and got != want:
      out.append((shard["file"], f"{got} bytes, {want} expected (truncated or replaced)"))
    elif markers and (why := _marker_problem(path / shard["file"].replace(".hu.npy", ".json"),
                                             shard)):
      out.append((shard["file"].replace(".hu.npy", ".json"), why))
    elif checksum and shard.get("sha1") and _sha1(f) != shard["sha1"]:
      out.append((shard["file"], "SHA-1 differs from the manifest (altered)"))
  return out


def _marker_problem(marker: pathlib.Path, shard: dict) -> Optional[str]:
  try:
    meta = json.loads(marker.read_text())
  except FileNotFoundError:
    return "missing"
  except (OSError, ValueError) as e:
    return f"unreadable ({type(e).__name__})"
  if not isinstance(meta, dict) or not isinstance(meta.get("scans"), list):
    return "holds no scan records"
  for k in ("bytes", "sha1"):
    if None not in (meta.get(k), shard.get(k)) and meta[k] != shard[k]:
      return f"records another .npy than the manifest ({k} differs)"
  return None


def _sha1(path: pathlib.Path) -> str:
  return fileio.file_digest(path, "sha1")


# ------------------------------------------------------------------------------- building


class _HashingFile:
  """A write-only file that also hashes what goes through it (np.save's file object)."""

  def __init__(self, f):
    self.f, self.h, self.n = f, hashlib.sha1(), 0

  def write(self, b) -> int:
    self.h.update(b)
    self.n += len(b)
    return self.f.write(b)


def _scan_job(rec, image_size: int, lenient: bool, num_labels: int):
  """One scan → (hu int16 [S, s, s], meta dict)."""
  from ctjax.data import dicom, qa
  vol = dicom.read_series(rec["files"], series_uid=rec.get("series_uid"), lenient=lenient)
  hu = resize_hu(vol.hu, image_size)
  h, w = vol.hu.shape[1:]
  scale = np.asarray([image_size / w, image_size / h, image_size / w, image_size / h],
                     np.float32)
  sl = rec.get("slice_labels") or {}
  slice_labels = [list(map(int, sl[f])) if f in sl else [0] * num_labels for f in vol.files]
  info = rec.get("info") or {}
  meta = {
      "scan_id": rec["scan_id"], "patient_id": rec["patient_id"],
      "series_uid": vol.series_uid, "num_slices": int(hu.shape[0]),
      "labels": [float(v) for v in rec["labels"]], "slice_labels": slice_labels,
      "files": vol.files, "sop_uids": vol.sop_uids, "spacing": list(vol.spacing),
      "source_shape": [int(h), int(w)], "ordered_by": vol.ordered_by,
      "notes": vol.notes, "skipped": [dataclasses.asdict(s) for s in vol.skipped],
      "header": vol.header, "source": info,
      "qa": qa.series_record(vol, info, scan_id=rec["scan_id"], patient_id=rec["patient_id"],
                             num_files=len(rec["files"])),
  }
  if rec.get("slice_class"):
    meta["slice_class"] = [int(rec["slice_class"].get(f, -1)) for f in vol.files]
  if rec.get("boxes"):
    meta["boxes"] = [(np.asarray(rec["boxes"].get(f, np.zeros((0, 4))), np.float32).reshape(-1, 4)
                      * scale).round(3).tolist() for f in vol.files]
  return hu, meta


def _build_shard(job: dict) -> tuple[int, int, list[str]]:
  """Worker: writes shard `job['index']` atomically; returns (index, num_scans, failures)."""
  from ctjax.data import qa
  out = pathlib.Path(job["out"])
  idx = job["index"]
  stem = out / f"shard_{idx:05d}"
  arrays, metas, failures, failed_qa = [], [], [], []
  offset = 0
  for rec in job["scans"]:
    try:
      hu, meta = _scan_job(rec, job["image_size"], job["lenient"], job["num_labels"])
    except errors.CTDataError as e:
      if not job["lenient"]:
        raise
      failures.append(f"{rec['scan_id']}: {e}")
      failed_qa.append(qa.failed_record(rec.get("info") or {}, scan_id=rec["scan_id"],
                                        patient_id=rec["patient_id"],
                                        num_files=len(rec["files"]), error=str(e)))
      continue
    meta["offset"] = offset
    offset += hu.shape[0]
    arrays.append(hu)
    metas.append(meta)
  size = job["image_size"]
  hu_all = np.concatenate(arrays) if arrays else np.zeros((0, size, size), np.int16)
  tmp = stem.with_name(stem.name + ".tmp.npy")
  with open(tmp, "wb") as f:
    hf = _HashingFile(f)
    np.save(hf, hu_all)
  os.replace(tmp, stem.with_name(stem.name + ".hu.npy"))
  tmpj = stem.with_name(stem.name + ".tmp.json")
  tmpj.write_text(json.dumps({"index": idx, "scans": metas, "failures": failures,
                              "failed_qa": failed_qa, "bytes": hf.n, "sha1": hf.h.hexdigest(),
                              "scan_ids": [r["scan_id"] for r in job["scans"]]}))
  os.replace(tmpj, stem.with_name(stem.name + ".json"))
  return idx, len(metas), failures


def _record_dict(rec) -> dict:
  return {"scan_id": rec.scan_id, "patient_id": rec.patient_id, "files": list(rec.files),
          "series_uid": rec.series_uid, "labels": np.asarray(rec.labels).tolist(),
          "slice_labels": {k: np.asarray(v).tolist() for k, v in rec.slice_labels.items()},
          "slice_class": dict(rec.slice_class),
          "boxes": {k: np.asarray(v).tolist() for k, v in rec.boxes.items()},
          "info": dict(rec.info)}


def _shard_done(out: pathlib.Path, i: int, scan_ids: list[str]) -> bool:
  """Shard i is on disk, whole (the .npy size its JSON recorded) and of these scans."""
  j, npy = out / f"shard_{i:05d}.json", out / f"shard_{i:05d}.hu.npy"
  if not (j.is_file() and npy.is_file()):
    return False
  try:
    meta = json.loads(j.read_text())
  except (OSError, ValueError):
    return False
  return meta.get("scan_ids") == scan_ids and meta.get("bytes") == npy.stat().st_size


def prepare(dataset, out, *, image_size: int, num_workers: int = 0,
            scans_per_shard: int = 8, lenient: bool = False, progress: bool = True,
            options: Optional[dict] = None, source: Optional[dict] = None) -> pathlib.Path:
  """Decodes `dataset` (a `ctjax.data.datasets.Dataset`) into `out`; returns the manifest path.

  Resumable: whole shards already on disk are skipped (a partial cache built from another
  `source` is cleared first). `num_workers` > 0 runs shards in that many spawned processes;
  0 runs in-process.
  """
  out = pathlib.Path(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"cannot create the cache folder {out} ({e}); set "
                             "config.data.cache_dir to a writable folder") from e
  source = source if source is not None else source_fingerprint(dataset.root,
                                                                exclude=[out.parent])
  src_file = out / "source.json"
  if src_file.is_file():
    try:
      previous = json.loads(src_file.read_text())
    except ValueError:
      previous = None
    if previous != source:
      log.warning("partial cache %s was built from other data (%s): cleared", out,
                  describe_change(previous, source))
      clear(out)
  (out / "manifest.json").unlink(missing_ok=True)
  src_file.write_text(json.dumps(source))
  scans = sorted(dataset.scans, key=lambda r: r.scan_id)
  chunks = [scans[i:i + scans_per_shard] for i in range(0, len(scans), scans_per_shard)]
  todo = [i for i, c in enumerate(chunks) if not _shard_done(out, i, [r.scan_id for r in c])]
  log.info("prepare %s: %d shards, %d to build (%d already done)", out, len(chunks), len(todo),
           len(chunks) - len(todo))

  def jobs() -> Iterator[dict]:
    for i in todo:
      yield {"out": str(out), "index": i, "scans": [_record_dict(r) for r in chunks[i]],
             "image_size": int(image_size), "lenient": bool(lenient),
             "num_labels": len(dataset.labels)}

  t0 = time.time()
  bar = None
  if progress and todo:
    from tqdm import tqdm
    bar = tqdm(total=sum(len(chunks[i]) for i in todo), desc="prepare scans", unit="scan")
  try:
    if num_workers > 0 and len(todo) > 1:
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(todo)),
                                                  mp_context=ctx) as pool:
        pending: list = []
        for job in _then_none(jobs()):
          if job is not None:
            pending.append(pool.submit(_build_shard, job))
          while pending and (job is None or len(pending) >= 2 * num_workers):
            idx, _, _ = pending.pop(0).result()
            if bar:
              bar.update(len(chunks[idx]))
    else:
      for job in jobs():
        idx, _, _ = _build_shard(job)
        if bar:
          bar.update(len(chunks[idx]))
  finally:
    if bar:
      bar.close()
  return _write_manifest(out, dataset, chunks, image_size=image_size, lenient=lenient,
                         options=options, source=source, seconds=time.time() - t0)


def _then_none(it):
  """The items of `it`, then None (the drain signal of the bounded submission loop)."""
  yield from it
  yield None


def _write_manifest(out: pathlib.Path, dataset, chunks, *, image_size: int, lenient: bool,
                    options: Optional[dict], source: dict, seconds: float) -> pathlib.Path:
  """manifest.json and the QA files, streaming the shard JSONs (one in memory at a time)."""
  from ctjax.data import qa
  shards, failures = [], []
  num_scans = num_slices = 0
  qa_rows: list[dict] = []
  for i in range(len(chunks)):
    meta = json.loads((out / f"shard_{i:05d}.json").read_text())
    failures += meta["failures"]
    num_scans += len(meta["scans"])
    num_slices += sum(m["num_slices"] for m in meta["scans"])
    shards.append({"file": f"shard_{i:05d}.hu.npy", "scans": [m["scan_id"] for m in meta["scans"]],
                   "bytes": meta["bytes"], "sha1": meta["sha1"],
                   "num_slices": sum(m["num_slices"] for m in meta["scans"])})
    qa_rows += [m["qa"] for m in meta["scans"]] + meta.get("failed_qa", [])
  report = dict(dataset.report)
  excluded = [qa.excluded_record(e) for e in report.get("series", []) if not e.get("kept")]
  n_qa = qa.write(sorted(qa_rows + excluded, key=lambda r: (str(r.get("study")),
                                                             str(r.get("scan_id")))), out)
  manifest = {
      "version": FORMAT_VERSION, "complete": True, "layout": dataset.layout,
      "root": os.path.abspath(dataset.root), "image_size": int(image_size),
      "labels": list(dataset.labels), "has_slice_labels": bool(dataset.has_slice_labels),
      "lenient": bool(lenient), "options": options or {}, "failures": failures,
      "num_scans": num_scans, "num_slices": num_slices, "num_qa_rows": n_qa,
      "prepare_seconds": round(seconds, 3), "source": source, "dataset_report": report,
      "shards": shards,
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
    damaged = damaged_shards(self.path, self.manifest)
    if damaged:
      raise self._damaged(*damaged[0], count=len(damaged))
    for si, shard in enumerate(self.manifest["shards"]):
      try:
        meta = json.loads((self.path / shard["file"].replace(".hu.npy", ".json")).read_text())
      except (OSError, ValueError) as e:
        raise self._damaged(shard["file"].replace(".hu.npy", ".json"),
                            f"unreadable ({type(e).__name__})") from e
      for m in meta["scans"]:
        sl = np.asarray(m["slice_labels"], np.uint8).reshape(m["num_slices"], len(self.labels))
        self.scans.append(ScanMeta(
            m["scan_id"], m["patient_id"], si, m["offset"], m["num_slices"],
            np.asarray(m["labels"], np.float32), sl,
            np.asarray(m["slice_class"], np.int32) if "slice_class" in m else None,
            m.get("boxes"),
            {k: m.get(k) for k in ("files", "sop_uids", "spacing", "series_uid", "notes",
                                   "source")}))
    self._mmaps: dict[int, np.ndarray] = {}

  def _damaged(self, name: str, why: str, count: int = 1) -> errors.CacheCorruptError:
    return errors.CacheCorruptError(
        f"damaged cache shard {name}: {why}" + (f" ({count} damaged shards)" if count > 1 else "")
        + "; re-prepare: python -m ctjax.prepare --config <this config> rebuilds only the "
        "damaged shards", self.path)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_mmaps"] = {}      # memory maps are reopened in each worker process
    return state

  def hu(self, shard: int) -> np.ndarray:
    arr = self._mmaps.get(shard)
    if arr is None:
      name = self.manifest["shards"][shard]["file"]
      want = self.manifest["shards"][shard].get("num_slices")
      try:
        arr = fileio.open_npy(self.path / name)
      except (OSError, ValueError) as e:   # e.g. "mmap length is greater than file size"
        raise self._damaged(name, f"cannot be mapped ({' '.join(str(e).split())})") from e
      if arr.ndim != 3 or arr.dtype != np.int16 or (want is not None and arr.shape[0] != want):
        raise self._damaged(name, f"holds {arr.dtype} {arr.shape}, not int16 [{want}, S, S]")
      self._mmaps[shard] = arr
    return arr

  def release(self, shard: int) -> None:
    """Drops shard's memory map (its pages leave this process's resident set); `hu` maps it
    again when next asked. For one pass over every shard (the feature store)."""
    self._mmaps.pop(shard, None)

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
