"""A quality record per series: what the reader did with it, written by prepare, printable.

`python -m ctjax.prepare --config X --qa` prints the table (and `--qa_csv FILE` writes it); the
cache folder always holds `qa.jsonl` and `qa.csv`. One row per series the adapter saw: kept
series (decoded) with what the volume reader did, and — for CQ500 — the series the policy left
out, with the reason. Columns (`COLUMNS`):

- identity: scan_id, patient_id, study, series_uid, description, kernel, thickness_mm,
  study_date; `kept` and `reason` (the series-policy decision), `label_source`;
- slices: files given, slices kept, slices skipped and why (`skip_reasons`: count per reason);
- geometry: median z spacing, largest deviation of a slice step from it and `irregular_gap`
  (the reader's rule: a step off the median by more than 10% + 1 µm), duplicate positions
  dropped, gantry tilt (degrees, from IOP/IPP; flagged above 0.5°, the reader's note threshold);
- HU: intercept corrections (RSNA's BitsStored-12 sign fix), slices refused for an invalid
  rescale, slices without RescaleSlope/Intercept;
- `flags`: tilt, duplicate_position, irregular_gap, bad_intercept, skipped_slices,
  missing_rescale, failed (the series could not be read; lenient mode), patient_is_scan (the
  folder layout's labels.csv has no patient_id: the scan is its own patient in the folds).
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np

GAP_RELATIVE, GAP_ABSOLUTE_MM = 0.1, 1e-3      # = ctjax.data.dicom's uneven-spacing note
TILT_FLAG_DEG = 0.5                            # = ctjax.data.dicom's gantry-tilt note
COLUMNS = ("scan_id", "patient_id", "study", "series_uid", "description", "kernel",
           "thickness_mm", "study_date", "kept", "reason", "label_source", "files",
           "slices", "skipped", "skip_reasons", "spacing_mm", "max_gap_deviation_mm",
           "irregular_gap", "duplicate_positions", "tilt_deg", "intercept_fixed",
           "invalid_rescale", "missing_rescale", "flags")
FLAGS = ("tilt", "duplicate_position", "irregular_gap", "bad_intercept", "skipped_slices",
         "missing_rescale", "failed", "patient_is_scan")
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


def series_record(vol: Any, info: dict, *, scan_id: str, patient_id: str,
                  num_files: int) -> dict[str, Any]:
  """The QA row of one decoded series (`vol` a `ctjax.data.dicom.Volume`; `info` the scan
  record's `info`: identity, selection reason, label source)."""
  skips = [s for s in vol.skipped if not s.reason.startswith("other series")]
  kinds: dict[str, int] = {}
  for s in skips:
    k = _skip_kind(s)
    kinds[k] = kinds.get(k, 0) + 1
  dup = sum(1 for s in skips if s.reason.startswith("duplicate"))
  spacing = max_dev = None
  irregular = False
  if vol.orientation is not None and vol.num_slices > 1 and np.isfinite(vol.positions).all():
    o = np.asarray(vol.orientation, np.float64)
    n = np.cross(o[:3], o[3:])
    n /= np.linalg.norm(n)
    steps = np.diff(vol.positions @ n)
    spacing = float(np.median(steps))
    dev = np.abs(steps - spacing)
    max_dev = float(dev.max())
    irregular = bool(np.any(dev > GAP_RELATIVE * spacing + GAP_ABSOLUTE_MM))
  fixed = _count(_FIX_NOTE, vol.notes)
  missing = _count(_MISSING_RESCALE_NOTE, vol.notes)
  invalid = kinds.get("InvalidRescaleError", 0)
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
      "slices": vol.num_slices, "skipped": len(skips),
      "skip_reasons": "; ".join(f"{k}: {v}" for k, v in sorted(kinds.items())),
      "spacing_mm": None if spacing is None else round(spacing, 4),
      "max_gap_deviation_mm": None if max_dev is None else round(max_dev, 4),
      "irregular_gap": irregular, "duplicate_positions": dup,
      "tilt_deg": round(float(vol.tilt_deg), 3), "intercept_fixed": fixed,
      "invalid_rescale": invalid, "missing_rescale": missing,
      "patient_is_scan": bool(info.get("patient_is_scan")),
  }
  row["flags"] = ";".join(flags_of(row))
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


def flags_of(row: dict) -> list[str]:
  out = []
  if (row.get("tilt_deg") or 0) > TILT_FLAG_DEG:
    out.append("tilt")
  if row.get("duplicate_positions"):
    out.append("duplicate_position")
  if row.get("irregular_gap"):
    out.append("irregular_gap")
  if row.get("intercept_fixed") or row.get("invalid_rescale"):
    out.append("bad_intercept")
  if (row.get("skipped") or 0) > (row.get("duplicate_positions") or 0):
    out.append("skipped_slices")
  if row.get("missing_rescale"):
    out.append("missing_rescale")
  if row.get("patient_is_scan"):
    out.append("patient_is_scan")
  return out


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
         ("slices", 6), ("skipped", 4), ("spacing_mm", 7), ("tilt_deg", 5), ("flags", 24),
         ("reason", 48))


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
               + ", ".join(f"{k} {v}" for k, v in counts.items()))
  return "\n".join(lines)
