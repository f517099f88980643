"""Quality flags of a series, and the QA record prepare writes per series.

`flags(vol)` gives the flags of one `ctjax.data.dicom.Volume`: stable names, in `FLAGS` order,
for everything that reads a series (prediction rows, the report, `python -m ctjax.prepare
--qa`). A flag says the series is unusual, not that it was refused; only `not_head` is a
refusal where `config.data.require_head` holds (predict, report). The rules:

- `not_head`: `ctjax.data.headcheck.check` says the pixels are no head CT (field of view,
  z coverage, no skull ring around brain-range tissue on the middle slices);
- `few_slices`: fewer than `FEW_SLICES` slices (a head at 10 mm steps takes ~15);
- `small_matrix`: fewer than `SMALL_MATRIX_PX` rows or columns (clinical head CT is
  reconstructed at 512², at least 256²);
- `gap`: a step between sorted slices longer than `GAP_FACTOR` × the median step (a slice or
  more missing);
- `uneven_spacing`: another step off the median by more than `GAP_RELATIVE` × median +
  `GAP_ABSOLUTE_MM` (ctjax.data.dicom's uneven-spacing note);
- `gantry_tilt`: the slice-to-slice step leaves the slice normal by more than `TILT_FLAG_DEG`
  (sheared slices, from ImagePositionPatient);
- `oblique`: the slice normal is more than `OBLIQUE_FLAG_DEG` from the patient's head-foot axis
  (a tilted plane, from ImageOrientationPatient; gantry-tilted series usually have both);
- `orientation_unknown`: no ImageOrientationPatient: pixels as stored, slices by InstanceNumber
  or file order;
- `lossy`: a slice is or was lossy-compressed (LossyImageCompression 01, or a lossy transfer
  syntax);
- `pixel_range`: more than `PIXEL_RANGE_SHARE` of the voxels at the top of the HU range (3071,
  where the reader clips): a wrong rescale or pixel representation the reader could not tell;
- `duplicate_position`: duplicate slices were dropped (same position or SOPInstanceUID);
- `bad_intercept`: RSNA's BitsStored-12 intercept fix applied, or slices refused for an invalid
  rescale;
- `missing_rescale`: slices without RescaleSlope/RescaleIntercept (identity assumed);
- `skipped_slices`: slices skipped for other reasons (lenient reading);
- `failed`: the series could not be read at all (lenient preparation);
- `patient_is_scan`: the data set names no patient (the folder layout's labels.csv without a
  patient_id column), so each scan is its own patient in the folds and one patient's scans
  can land on both sides of a split (prepare's QA only: a property of the data set).

`python -m ctjax.prepare --config X --qa` prints the table (and `--qa_csv FILE` writes it); the
cache folder always holds `qa.jsonl` and `qa.csv`. One row per series the adapter saw: kept
series (decoded) with what the volume reader did, and — for CQ500 — the series the policy left
out, with the reason. Columns (`COLUMNS`): identity (scan_id, patient_id, study, series_uid,
description, kernel, thickness_mm, study_date), the series-policy decision (`kept`, `reason`),
`label_source`; slices (files given, kept, skipped and why); geometry (matrix, median z
spacing, largest deviation of a step from it, duplicates dropped, tilt and oblique angles);
HU (intercept fixes, invalid and missing rescales); `lossy`; `head` (the head-CT verdict in
words) and `flags`.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ctjax.data import headcheck

GAP_RELATIVE, GAP_ABSOLUTE_MM = 0.1, 1e-3      # = ctjax.data.dicom's uneven-spacing note
GAP_FACTOR = 1.5
TILT_FLAG_DEG = 0.5                            # = ctjax.data.dicom's gantry-tilt note
OBLIQUE_FLAG_DEG = 0.5                         # = ctjax.data.dicom's oblique-plane note
FEW_SLICES = 16
SMALL_MATRIX_PX = 256
PIXEL_RANGE_SHARE = 0.01
HU_TOP = 3071.0                                # = ctjax.data.dicom.HU_MAX
FLAGS = ("not_head", "few_slices", "small_matrix", "gap", "uneven_spacing", "gantry_tilt",
         "oblique", "orientation_unknown", "lossy", "pixel_range", "duplicate_position",
         "bad_intercept", "missing_rescale", "skipped_slices", "failed", "patient_is_scan")
COLUMNS = ("scan_id", "patient_id", "study", "series_uid", "description", "kernel",
           "thickness_mm", "study_date", "kept", "reason", "label_source", "files",
           "slices", "skipped", "skip_reasons", "matrix", "spacing_mm", "max_gap_deviation_mm",
           "duplicate_positions", "tilt_deg", "oblique_deg", "intercept_fixed",
           "invalid_rescale", "missing_rescale", "lossy", "head", "flags")
_FIX_NOTE = re.compile(r"RSNA BitsStored-12 sign fix applied to (\d+) slice")
_MISSING_RESCALE_NOTE = re.compile(r"RescaleSlope/RescaleIntercept missing in (\d+) slice")


def _skip_kind(skip: Any) -> str:
  if skip.error:
    return skip.error
  reason = skip.reason
  for prefix in ("duplicate", "localizer", "orientation", "shape", "pixel spacing",
                 "other series"):
    if reason.startswith(prefix):
      return prefix
  return reason.split(" (")[0][:40]


def _count(pattern: re.Pattern, notes: Sequence[str]) -> int:
  return sum(int(m.group(1)) for n in notes for m in [pattern.search(n)] if m)


def measure(vol: Any, *, head: Optional[headcheck.HeadVerdict] = None) -> dict[str, Any]:
  """What the flags are computed from (`vol` a `ctjax.data.dicom.Volume`; `head` its verdict
  when already known)."""
  skips = [s for s in vol.skipped if not s.reason.startswith("other series")]
  kinds: dict[str, int] = {}
  for s in skips:
    k = _skip_kind(s)
    kinds[k] = kinds.get(k, 0) + 1
  spacing = max_dev = None
  gap = uneven = False
  if vol.orientation is not None and vol.num_slices > 1 and np.isfinite(vol.positions).all():
    o = np.asarray(vol.orientation, np.float64)
    n = np.cross(o[:3], o[3:])
    n /= np.linalg.norm(n)
    steps = np.diff(vol.positions @ n)
    spacing = float(np.median(steps))
    dev = np.abs(steps - spacing)
    max_dev = float(dev.max())
    long = steps > GAP_FACTOR * spacing
    gap = bool(np.any(long))
    uneven = bool(np.any((dev > GAP_RELATIVE * spacing + GAP_ABSOLUTE_MM) & ~long))
  head = head if head is not None else headcheck.check_volume(vol)
  s, h, w = vol.hu.shape
  return {
      "slices": int(s), "matrix": f"{h}x{w}", "skipped": len(skips), "skip_kinds": kinds,
      "spacing_mm": None if spacing is None else round(spacing, 4),
      "max_gap_deviation_mm": None if max_dev is None else round(max_dev, 4),
      "gap": gap, "uneven_spacing": uneven,
      "duplicate_positions": sum(1 for s in skips if s.reason.startswith("duplicate")),
      "tilt_deg": round(float(vol.tilt_deg), 3),
      "oblique_deg": round(float(getattr(vol, "oblique_deg", 0.0)), 3),
      "orientation_unknown": vol.orientation is None,
      "intercept_fixed": _count(_FIX_NOTE, vol.notes),
      "invalid_rescale": kinds.get("InvalidRescaleError", 0),
      "missing_rescale": _count(_MISSING_RESCALE_NOTE, vol.notes),
      "lossy": bool(getattr(vol, "lossy", False)),
      "top_share": float(np.mean(vol.hu >= HU_TOP)) if vol.hu.size else 0.0,
      "head": head.summary(), "is_head": head.is_head,
  }


def flags_of(m: dict) -> list[str]:
  """The FLAGS that a `measure` dict (or a QA row) raises, in FLAGS order."""
  rows, cols = (int(v) for v in (m.get("matrix") or "0x0").split("x")) \
      if m.get("matrix") else (None, None)
  raised = {
      "not_head": m.get("is_head") is False,
      "few_slices": m.get("slices") is not None and int(m["slices"]) < FEW_SLICES,
      "small_matrix": rows is not None and min(rows, cols) < SMALL_MATRIX_PX,
      "gap": bool(m.get("gap")),
      "uneven_spacing": bool(m.get("uneven_spacing")),
      "gantry_tilt": (m.get("tilt_deg") or 0) > TILT_FLAG_DEG,
      "oblique": (m.get("oblique_deg") or 0) > OBLIQUE_FLAG_DEG,
      "orientation_unknown": bool(m.get("orientation_unknown")),
      "lossy": bool(m.get("lossy")),
      "pixel_range": (m.get("top_share") or 0) > PIXEL_RANGE_SHARE,
      "duplicate_position": bool(m.get("duplicate_positions")),
      "bad_intercept": bool(m.get("intercept_fixed") or m.get("invalid_rescale")),
      "missing_rescale": bool(m.get("missing_rescale")),
      "skipped_slices": (m.get("skipped") or 0) > (m.get("duplicate_positions") or 0),
      "failed": bool(m.get("failed")),
      "patient_is_scan": bool(m.get("patient_is_scan")),
  }
  return [f for f in FLAGS if raised[f]]


def flags(vol: Any, *, head: Optional[headcheck.HeadVerdict] = None) -> list[str]:
  """The QA flags of a `ctjax.data.dicom.Volume` (see the module docstring), in FLAGS order."""
  return flags_of(measure(vol, head=head))


def series_record(vol: Any, info: dict, *, scan_id: str, patient_id: str,
                  num_files: int) -> dict[str, Any]:
  """The QA row of one decoded series (`vol` a `ctjax.data.dicom.Volume`; `info` the scan
  record's `info`: identity, selection reason, label source)."""
  m = measure(vol)
  h = vol.header
  row = {
      "scan_id": scan_id, "patient_id": patient_id, "study": info.get("study", patient_id),
      "series_uid": vol.series_uid,
      "description": h.get("SeriesDescription", "") or info.get("description", ""),
      "kernel": h.get("ConvolutionKernel", "") or info.get("kernel", ""),
      "thickness_mm": _float(h.get("SliceThickness")) or info.get("thickness_mm"),
      "study_date": h.get("StudyDate", "") or info.get("study_date", ""),
      "kept": True, "reason": info.get("selection", "the layout's series"),
      "label_source": info.get("label_source", ""), "files": int(num_files),
      "skip_reasons": "; ".join(f"{k}: {v}" for k, v in sorted(m["skip_kinds"].items())),
      **{k: m[k] for k in ("slices", "skipped", "matrix", "spacing_mm", "max_gap_deviation_mm",
                           "duplicate_positions", "tilt_deg", "oblique_deg", "intercept_fixed",
                           "invalid_rescale", "missing_rescale", "lossy", "head")},
  }
  row["flags"] = ";".join(flags_of({**m, "patient_is_scan": info.get("patient_is_scan")}))
  return row


def failed_record(info: dict, *, scan_id: str, patient_id: str, num_files: int,
                  error: str) -> dict[str, Any]:
  """The QA row of a series that could not be read at all (lenient mode)."""
  row = _blank(scan_id=scan_id, patient_id=patient_id, study=info.get("study", patient_id),
               series_uid=info.get("series_uid", ""), description=info.get("description", ""),
               kernel=info.get("kernel", ""), thickness_mm=info.get("thickness_mm"),
               study_date=info.get("study_date", ""), kept=False,
               reason=f"failed to read: {error}", label_source=info.get("label_source", ""),
               files=num_files)
  row["flags"] = "failed"
  return row


def excluded_record(entry: dict) -> dict[str, Any]:
  """The QA row of a series the series policy left out (`Dataset.report["series"]` entry)."""
  return _blank(**{k: entry.get(k) for k in ("scan_id", "patient_id", "study", "series_uid",
                                             "description", "kernel", "thickness_mm",
                                             "study_date", "reason")},
                kept=False, files=entry.get("num_files", 0))


def _blank(**values) -> dict[str, Any]:
  row = {c: None for c in COLUMNS}
  row.update(values)
  row["flags"] = row.get("flags") or ""
  return row


def _float(text) -> Optional[float]:
  try:
    return float(text)
  except (TypeError, ValueError):
    return None


def write(rows: Iterable[dict], folder: pathlib.Path) -> int:
  """qa.jsonl and qa.csv in `folder` (written to temporary names, then renamed)."""
  folder = pathlib.Path(folder)
  tmp_j, tmp_c = folder / "qa.tmp.jsonl", folder / "qa.tmp.csv"
  n = 0
  with open(tmp_j, "w") as fj, open(tmp_c, "w", newline="") as fc:
    w = csv.DictWriter(fc, COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in rows:
      fj.write(json.dumps(row) + "\n")
      w.writerow({k: _cell(row.get(k)) for k in COLUMNS})
      n += 1
  tmp_j.replace(folder / "qa.jsonl")
  tmp_c.replace(folder / "qa.csv")
  return n


def _cell(v) -> str:
  if v is None:
    return ""
  if isinstance(v, bool):
    return "1" if v else "0"
  return str(v)


def read(folder: pathlib.Path) -> list[dict]:
  path = pathlib.Path(folder) / "qa.jsonl"
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def to_csv(rows: Sequence[dict]) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
  w.writeheader()
  for row in rows:
    w.writerow({k: _cell(row.get(k)) for k in COLUMNS})
  return buf.getvalue()


TABLE = (("scan_id", 34), ("kept", 4), ("description", 18), ("kernel", 9), ("thickness_mm", 5),
         ("slices", 6), ("matrix", 9), ("skipped", 4), ("spacing_mm", 7), ("tilt_deg", 5),
         ("flags", 32), ("reason", 48))


def format_table(rows: Sequence[dict]) -> str:
  """A fixed-width text table (one line per series) and a summary line of flag counts."""
  def fmt(v, width):
    text = "" if v is None else ("yes" if v is True else "no" if v is False else str(v))
    return (text if len(text) <= width else text[:width - 1] + "…").ljust(width)
  head = " ".join(fmt({"thickness_mm": "mm", "spacing_mm": "dz mm", "tilt_deg": "tilt",
                       "skipped": "skip"}.get(k, k), w) for k, w in TABLE)
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(" ".join(fmt(r.get(k), w) for k, w in TABLE).rstrip())
  counts = {f: sum(f in (r.get("flags") or "").split(";") for r in rows) for f in FLAGS}
  kept = sum(bool(r.get("kept")) for r in rows)
  lines.append(f"{len(rows)} series, {kept} kept; flags: "
               + (", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"))
  return "\n".join(lines)
