"""Random-HU prepared caches at any size, written directly in the cache format (no DICOM).

For scale benchmarks and tests of the stages after preparation (feature store, pipeline,
training): `write_random_cache(path, num_scans=…)` writes what `ctjax.prepare` would write for
a data set of that shape — shards of int16 HU, per-scan metadata, a complete manifest — in
seconds, so N can be 1k–20k scans without generating or decoding DICOM. The pixels are
random (a head-sized disc of brain-like HU with noise), the labels random at `prevalence`.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Sequence

import numpy as np

from ctjax.data import cache
from ctjax.data.labels import RSNA_LABELS


def _scan_hu(rng: np.random.Generator, num_slices: int, size: int) -> np.ndarray:
  yy, xx = np.mgrid[:size, :size]
  r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
  base = np.where(r < 0.8, 35.0, np.where(r < 0.9, 1000.0, -1000.0)).astype(np.float32)
  noise = rng.normal(0.0, 12.0, (num_slices, size, size)).astype(np.float32)
  return np.clip(np.rint(base[None] + noise), cache.HU_MIN, cache.HU_MAX).astype(np.int16)


def cache_path_for(config) -> pathlib.Path:
  """Where `ctjax.data.cache.ensure_cache(config)` looks for the cache of `config`."""
  layout, root = str(config.data.layout), str(config.data.root)
  return cache.cache_path(cache.data_option(config, "cache_dir"), layout, root,
                          int(config.data.image_size), bool(cache.data_option(config, "lenient")),
                          cache._content_options(layout, config))  # noqa: SLF001


def write_random_cache_for(config, **kwargs) -> pathlib.Path:
  """A random cache where `config` finds it, recorded as built from `config.data.root`'s
  current content (so the freshness check accepts it); the root is created empty if absent."""
  root = pathlib.Path(config.data.root)
  root.mkdir(parents=True, exist_ok=True)
  path = cache_path_for(config)
  kwargs.setdefault("size", int(config.data.image_size))
  kwargs.setdefault("labels", tuple(config.data.labels) or RSNA_LABELS)
  return write_random_cache(path, source_root=root, **kwargs)


def write_random_cache(path: str | os.PathLike, *, num_scans: int, size: int,
                       slices: tuple[int, int] = (28, 40),
                       labels: Sequence[str] = RSNA_LABELS, prevalence: float = 0.35,
                       scans_per_shard: int = 8, seed: int = 0,
                       source_root: str | os.PathLike | None = None) -> pathlib.Path:
  """A complete prepared cache of `num_scans` random scans at `path`; returns the manifest.
  `source_root`: the data root it counts as built from (its fingerprint is recorded)."""
  out = pathlib.Path(path)
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  t0 = time.time()
  shards, total = [], 0
  num_labels = len(labels)
  for si, start in enumerate(range(0, num_scans, scans_per_shard)):
    metas, arrays, offset = [], [], 0
    for i in range(start, min(start + scans_per_shard, num_scans)):
      n = int(rng.integers(slices[0], slices[1] + 1))
      hu = _scan_hu(rng, n, size)
      slice_labels = np.zeros((n, num_labels), np.uint8)
      if rng.random() < prevalence:
        lo = int(rng.integers(0, max(1, n - 4)))
        kinds = rng.random(num_labels - 1) < 0.3
        slice_labels[lo:lo + 4, 1:] = kinds
        slice_labels[lo:lo + 4, 0] = 1
      scan_labels = slice_labels.max(0).astype(np.float32)
      sid = f"RND-{i:06d}"
      metas.append({"scan_id": sid, "patient_id": sid, "series_uid": f"2.25.{seed}.{i}",
                    "num_slices": n, "labels": scan_labels.tolist(),
                    "slice_labels": slice_labels.tolist(), "files": [], "sop_uids": [],
                    "spacing": [5.0, 0.5, 0.5], "source_shape": [size, size],
                    "ordered_by": "random", "notes": [], "skipped": [], "header": {},
                    "offset": offset})
      arrays.append(hu)
      offset += n
    stem = out / f"shard_{si:05d}"
    hu_file = stem.with_name(stem.name + ".hu.npy")
    np.save(hu_file, np.concatenate(arrays))
    stem.with_name(stem.name + ".json").write_text(
        json.dumps({"index": si, "scans": metas, "failures": []}))
    shards.append({"file": hu_file.name, "scans": [m["scan_id"] for m in metas],
                   "bytes": hu_file.stat().st_size})
    total += offset
  manifest = {"version": cache.FORMAT_VERSION, "complete": True, "layout": "random",
              "root": str(out), "image_size": int(size), "labels": list(labels),
              "has_slice_labels": True, "lenient": False, "options": {"random": True},
              "failures": [], "num_scans": int(num_scans), "num_slices": int(total),
              "prepare_seconds": round(time.time() - t0, 3), "shards": shards}
  if source_root is not None:
    manifest["source"] = cache.source_fingerprint(source_root, exclude=[out.parent])
  (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
  return out / "manifest.json"
