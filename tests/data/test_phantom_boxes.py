"""Phantom lesion boxes through the adapters and the cache (the highlight's pointing game).

The RSNA and CQ500 layouts carry no boxes of their own; for phantoms the adapter takes the
bleeding lesions' per-slice boxes from the manifest, and the cache keeps them (scaled to its
image size) as it keeps the blend layout's.
"""

import json
import pathlib

import numpy as np
import pytest

from ctjax.data import cache, datasets, phantom
from ctjax.data.phantom_lesions import BLEEDS


def _manifest_id(scan_id):
  # CQ500 scans are series: "<study>/<series folder>"; the manifest lists studies.
  return scan_id.split("/")[0]


def _is_generated_series(root, scan, files):
  return ({str(pathlib.Path(f).resolve()) for f in files}
          == {str((root / f).resolve()) for f in scan["files"]})


@pytest.mark.parametrize("layout", ["rsna", "cq500"])
def test_phantom_bleed_boxes_reach_the_cache(tmp_path, layout):
  phantom.write_dataset(tmp_path / "d", layout=layout, num_scans=3, seed=4, size=32,
                        num_workers=0, prevalence=1.0, difficult_fraction=0.0,
                        slice_range=(8, 10))
  manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
  ds = datasets.load("phantom", tmp_path / "d")
  by_id = {s["scan_id"]: s for s in manifest["scans"]}
  checked = seen = 0
  for rec in ds.scans:
    scan = by_id[_manifest_id(rec.scan_id)]
    if not _is_generated_series(tmp_path / "d", scan, rec.files):
      continue                      # CQ500's extra (thicker, resampled) series: no manifest boxes
    seen += 1
    boxes = {pathlib.Path(p).resolve(): b for p, b in rec.boxes.items()}
    assert len(boxes) == len(scan["files"])
    for k, f in enumerate(scan["files"]):   # file k holds slice k of the generated volume
      want = [e["boxes"][str(k)] for e in scan["lesions"]
              if e["type"] in BLEEDS and str(k) in e["boxes"]]
      np.testing.assert_array_equal(boxes[(tmp_path / "d" / f).resolve()],
                                    np.asarray(want, np.float32).reshape(-1, 4))
      checked += len(want)
  assert checked > 0                                   # every scan is positive
  assert seen == len(manifest["scans"])
  cache.prepare(ds, tmp_path / "c", image_size=64, progress=False)
  scans = cache.CachedScans(tmp_path / "c")
  for meta in scans.scans:
    scan = by_id[_manifest_id(meta.scan_id)]
    if not _is_generated_series(tmp_path / "d", scan, meta.info["files"]):
      continue
    order = [str((tmp_path / "d" / f).resolve()) for f in scan["files"]]
    files = [str(pathlib.Path(f).resolve()) for f in meta.info["files"]]   # cache slice order
    assert len(meta.boxes) == meta.num_slices
    for j, f in enumerate(files):
      k = order.index(f)
      want = [e["boxes"][str(k)] for e in scan["lesions"]
              if e["type"] in BLEEDS and str(k) in e["boxes"]]
      np.testing.assert_allclose(np.asarray(meta.boxes[j]).reshape(-1, 4),
                                 np.asarray(want, np.float32).reshape(-1, 4) * 2.0)   # 32 → 64
