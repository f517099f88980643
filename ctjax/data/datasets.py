"""Data-set adapters: public layouts → a list of `ScanRecord`s, and k-fold splits by patient.

Layouts (`config.data.layout`, root `config.data.root`):
- `rsna`: ROOT/stage_2_train.csv (rows `ID_<sop>_<subtype>,Label`, 6 subtypes incl. `any`) and
  ROOT/stage_2_train/ID_<sop>.dcm (Kaggle's `stage_2_train_images/` also accepted). Slices are
  grouped into scans by SeriesInstanceUID; scan label = any slice positive; per-slice labels kept.
- `cq500`: ROOT/reads.csv (name, Category, R1:ICH … R3:MidlineShift); scans in
  ROOT/CQ500-CT-<n>/<study>/<series>/*.dcm (the download's `CQ500CT<n> CQ500CT<n>` folder names
  are accepted too). Labels: the 9 of DrCT2's Table 1 by majority of the three readers. The
  series is chosen by SeriesDescription/folder name: PLAIN THIN, then THIN, then PLAIN, then the
  largest (`CQ500_SERIES_PREFERENCE`). CQ500 has no per-slice labels (`has_slice_labels` False).
- `folder`: ROOT/labels.csv with columns scan_id, [patient_id], [folder], then one 0/1 column per
  label; DICOM under ROOT/<folder or scan_id>/.
- `blend`: ROOT/blend_labels.csv (scan_id, patient_id, sop_uid, file, label, boxes) with label in
  {0 non_ich, 1 normal_ich, 2 blend_sign} per slice and boxes "x0 y0 x1 y1;…"; DICOM under
  ROOT/scans/<scan_id>/.
- `phantom`: ROOT/manifest.json written by `ctjax.data.phantom.write_dataset`; read with the
  adapter of the manifest's `layout`, per-slice truth from the manifest where the layout has none
  (labels; the bleeding lesions' boxes, which the highlight's pointing game scores against).

Per-slice truth is keyed by absolute file path, because `ctjax.data.dicom.read_series` re-orders
files by position.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import pathlib
import re
from typing import Optional, Sequence

import numpy as np

from ctjax import errors
from ctjax.data.labels import (BLEND_CLASSES, CQ500_COLUMNS, CQ500_LABELS, CQ500_READERS,
                               RSNA_LABELS)

log = logging.getLogger(__name__)

CQ500_SERIES_PREFERENCE = (r"PLAIN.*THIN", r"THIN", r"PLAIN")
LAYOUTS = ("rsna", "cq500", "folder", "blend", "phantom")


@dataclasses.dataclass
class ScanRecord:
  """One scan (one series) and its truth."""
  scan_id: str
  patient_id: str
  files: list[str]                       # absolute paths, any order
  labels: np.ndarray                     # float32 [L] scan-level labels
  slice_labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # path → [L]
  slice_class: dict[str, int] = dataclasses.field(default_factory=dict)  # blend: path → class
  # path → [K, 4] lesion boxes (blend; phantoms of every layout: the bleeding lesions)
  boxes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  series_uid: Optional[str] = None       # for read_series(series_uid=…); None: the only one


@dataclasses.dataclass
class Dataset:
  layout: str
  root: str
  labels: tuple[str, ...]
  scans: list[ScanRecord]
  has_slice_labels: bool

  @property
  def patient_ids(self) -> list[str]:
    return [s.patient_id for s in self.scans]


def _read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  if not path.is_file():
    raise errors.DatasetLayoutError(f"missing {path.name}; see ctjax.data.datasets for the "
                                    "expected layout", path)
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _header_ids(path: str) -> tuple[str, str]:
  """(SeriesInstanceUID, PatientID) from the header only (pixel problems surface in prepare)."""
  import pydicom
  from ctjax.data import dicom
  with dicom._quiet_pydicom():  # noqa: SLF001 — the reader's own quiet mode
    try:
      ds = pydicom.dcmread(path, stop_before_pixels=True,
                           specific_tags=["SeriesInstanceUID", "PatientID"])
    except Exception as e:  # noqa: BLE001
      raise errors.NotDicomError(f"cannot read the header ({type(e).__name__}: {e})",
                                 path) from e
    return (dicom._header_text(ds, "SeriesInstanceUID"),  # noqa: SLF001
            dicom._header_text(ds, "PatientID"))  # noqa: SLF001


# -------------------------------------------------------------------------------------- RSNA


def load_rsna(root, *, labels_csv: str = "stage_2_train.csv") -> Dataset:
  root = pathlib.Path(root)
  rows = _read_csv(root / labels_csv)
  per_sop: dict[str, np.ndarray] = {}
  index = {name: i for i, name in enumerate(RSNA_LABELS)}
  pattern = re.compile(r"^(ID_[0-9A-Za-z]+)_(%s)$" % "|".join(RSNA_LABELS))
  for row in rows:
    m = pattern.match(row.get("ID", ""))
    if not m:
      raise errors.DatasetLayoutError(f"row {row!r} is not `ID_<sop>_<subtype>,Label`",
                                      root / labels_csv)
    vec = per_sop.setdefault(m.group(1), np.zeros(len(RSNA_LABELS), np.uint8))
    vec[index[m.group(2)]] = max(vec[index[m.group(2)]], int(float(row["Label"])))
  image_dir = next((root / d for d in ("stage_2_train", "stage_2_train_images")
                    if (root / d).is_dir()), None)
  if image_dir is None:
    raise errors.DatasetLayoutError("missing stage_2_train/ (ID_<sop>.dcm files)", root)
  scans: dict[str, ScanRecord] = {}
  missing = 0
  for sop in sorted(per_sop):
    path = image_dir / f"{sop}.dcm"
    if not path.is_file():
      missing += 1
      continue
    series, patient = _header_ids(str(path))
    rec = scans.get(series)
    if rec is None:
      rec = scans[series] = ScanRecord(series, patient or series, [],
                                       np.zeros(len(RSNA_LABELS), np.float32), series_uid=series)
    rec.files.append(str(path))
    rec.slice_labels[str(path)] = per_sop[sop]
    rec.labels = np.maximum(rec.labels, per_sop[sop].astype(np.float32))
  if missing:
    log.warning("rsna: %d labelled slices have no file under %s", missing, image_dir)
  if not scans:
    raise errors.DatasetLayoutError("no labelled slice found", image_dir)
  return Dataset("rsna", str(root), RSNA_LABELS, [scans[k] for k in sorted(scans)], True)


# ------------------------------------------------------------------------------------- CQ500


def _cq500_folder(root: pathlib.Path, name: str) -> Optional[pathlib.Path]:
  m = re.search(r"(\d+)$", name)
  if not m:
    return None
  n = m.group(1)
  for cand in (root / name, root / f"CQ500-CT-{n}", root / f"CQ500CT{n} CQ500CT{n}",
               root / f"CQ500CT{n}"):
    if cand.is_dir():
      return cand
  return None


def _pick_series_folder(scan_dir: pathlib.Path, preference: Sequence[str]) -> pathlib.Path:
  """The series folder (a leaf folder with files) by name preference, then size."""
  leaves = sorted({p.parent for p in scan_dir.rglob("*") if p.is_file()
                   and not p.name.startswith(".")})
  if not leaves:
    raise errors.DatasetLayoutError("no series folder with files", scan_dir)
  for pattern in preference:
    hits = [d for d in leaves if re.search(pattern, d.name, re.IGNORECASE)]
    if hits:
      return max(hits, key=lambda d: (len(list(d.iterdir())), d.name))
  return max(leaves, key=lambda d: (len(list(d.iterdir())), d.name))


def load_cq500(root, *, series_preference: Sequence[str] = CQ500_SERIES_PREFERENCE) -> Dataset:
  root = pathlib.Path(root)
  rows = _read_csv(root / "reads.csv")
  needed = [f"{r}:{c}" for r in CQ500_READERS for c in CQ500_COLUMNS]
  if rows and (missing := [c for c in needed if c not in rows[0]]):
    raise errors.DatasetLayoutError(f"reads.csv lacks columns {missing[:4]}…", root / "reads.csv")
  scans = []
  for row in rows:
    name = row["name"]
    scan_dir = _cq500_folder(root, name)
    if scan_dir is None:
      log.warning("cq500: no folder for %s under %s", name, root)
      continue
    votes = np.asarray([[float(row[f"{r}:{c}"]) for c in CQ500_COLUMNS] for r in CQ500_READERS])
    labels = (votes.sum(0) >= 2).astype(np.float32)      # majority of three readers
    series_dir = _pick_series_folder(scan_dir, series_preference)
    files = sorted(str(p) for p in series_dir.iterdir() if p.is_file()
                   and not p.name.startswith("."))
    scans.append(ScanRecord(name, name, files, labels))
  if not scans:
    raise errors.DatasetLayoutError("no CQ500-CT-<n> folder matches reads.csv", root)
  return Dataset("cq500", str(root), CQ500_LABELS, scans, False)


# ------------------------------------------------------------------------------------ folder


def load_folder(root, *, labels_csv: str = "labels.csv") -> Dataset:
  root = pathlib.Path(root)
  rows = _read_csv(root / labels_csv)
  if not rows or "scan_id" not in rows[0]:
    raise errors.DatasetLayoutError("labels.csv needs a scan_id column", root / labels_csv)
  names = tuple(c for c in rows[0] if c not in ("scan_id", "patient_id", "folder"))
  scans = []
  for row in rows:
    folder = root / (row.get("folder") or row["scan_id"])
    if not folder.is_dir():
      raise errors.DatasetLayoutError(f"scan {row['scan_id']}: folder missing", folder)
    files = sorted(str(p) for p in folder.iterdir() if p.is_file()
                   and not p.name.startswith("."))
    labels = np.asarray([float(row[n]) for n in names], np.float32)
    scans.append(ScanRecord(row["scan_id"], row.get("patient_id") or row["scan_id"], files,
                            labels))
  return Dataset("folder", str(root), names, scans, False)


# ------------------------------------------------------------------------------------- blend


def parse_boxes(text: str) -> np.ndarray:
  """"x0 y0 x1 y1;x0 y0 x1 y1" → float32 [K, 4] (K = 0 for "")."""
  boxes = [[float(v) for v in b.split()] for b in (text or "").split(";") if b.strip()]
  if any(len(b) != 4 for b in boxes):
    raise errors.DatasetLayoutError(f"bad boxes {text!r}: want 'x0 y0 x1 y1;…'")
  return np.asarray(boxes, np.float32).reshape(-1, 4)


def load_blend(root, *, labels_csv: str = "blend_labels.csv") -> Dataset:
  root = pathlib.Path(root)
  rows = _read_csv(root / labels_csv)
  scans: dict[str, ScanRecord] = {}
  for row in rows:
    sid = row["scan_id"]
    path = root / row["file"]
    if not path.is_file():
      path = root / "scans" / sid / row["file"]
    if not path.is_file():
      raise errors.DatasetLayoutError(f"slice {row['file']} of scan {sid} missing", path)
    rec = scans.setdefault(sid, ScanRecord(sid, row.get("patient_id") or sid, [],
                                           np.zeros(len(BLEND_CLASSES), np.float32)))
    cls = int(row["label"])
    if cls not in (0, 1, 2):
      raise errors.DatasetLayoutError(f"label {cls} not in 0/1/2", root / labels_csv)
    rec.files.append(str(path))
    rec.slice_class[str(path)] = cls
    rec.boxes[str(path)] = parse_boxes(row.get("boxes", ""))
    onehot = np.eye(len(BLEND_CLASSES), dtype=np.uint8)[cls]
    rec.slice_labels[str(path)] = onehot
    rec.labels = np.maximum(rec.labels, onehot.astype(np.float32))
  return Dataset("blend", str(root), BLEND_CLASSES, [scans[k] for k in sorted(scans)], True)


# ----------------------------------------------------------------------------------- phantom


def load_phantom(root) -> Dataset:
  """A `ctjax.data.phantom.write_dataset` tree: its layout's adapter + manifest slice truth."""
  root = pathlib.Path(root)
  path = root / "manifest.json"
  if not path.is_file():
    raise errors.DatasetLayoutError("missing manifest.json (generate with python -m ctjax.synth)",
                                    path)
  manifest = json.loads(path.read_text())
  layout = manifest.get("layout")
  if layout not in ("rsna", "cq500", "blend"):
    raise errors.DatasetLayoutError(f"manifest layout {layout!r} not rsna/cq500/blend", path)
  ds = load(layout, root)
  truth, boxes = {}, {}
  for scan in manifest.get("scans", []):
    for i, f in enumerate(scan.get("files", [])):
      if "slice_labels" in scan and i < len(scan["slice_labels"]):
        truth[str((root / f).resolve())] = np.asarray(scan["slice_labels"][i], np.uint8)
      boxes[str((root / f).resolve())] = _bleed_boxes(scan, i)
  if not ds.has_slice_labels and truth:
    for rec in ds.scans:
      found = {f: truth.get(str(pathlib.Path(f).resolve())) for f in rec.files}
      if all(v is not None and len(v) == len(ds.labels) for v in found.values()):
        rec.slice_labels = found
    ds.has_slice_labels = all(rec.slice_labels for rec in ds.scans)
  for rec in ds.scans:   # layouts without boxes of their own (rsna, cq500): the manifest's
    found = {f: boxes.get(str(pathlib.Path(f).resolve())) for f in rec.files}
    if not rec.boxes and all(v is not None for v in found.values()):
      rec.boxes = found
  ds.layout = f"phantom:{layout}"
  return ds


def _bleed_boxes(scan: dict, k: int) -> np.ndarray:
  """float32 [K, 4] (x0, y0, x1, y1 source pixels) of the bleeding lesions on slice k."""
  from ctjax.data.phantom_lesions import BLEEDS
  found = [e["boxes"][str(k)] for e in scan.get("lesions", [])
           if e.get("type") in BLEEDS and str(k) in e.get("boxes", {})]
  return np.asarray(found, np.float32).reshape(-1, 4)


def load(layout: str, root) -> Dataset:
  """The adapter for `layout` (one of LAYOUTS) on `root`."""
  if not root or not pathlib.Path(root).is_dir():
    raise errors.DatasetLayoutError(f"data root {root!r} is not a folder (config.data.root)",
                                    root or None)
  if layout == "rsna":
    return load_rsna(root)
  if layout == "cq500":
    return load_cq500(root)
  if layout == "folder":
    return load_folder(root)
  if layout == "blend":
    return load_blend(root)
  if layout == "phantom":
    return load_phantom(root)
  raise errors.ConfigError(f"config.data.layout={layout!r}; known: {LAYOUTS}")


# ------------------------------------------------------------------------------------ splits


def kfold_by_patient(patient_ids: Sequence[str], num_folds: int, seed: int) -> np.ndarray:
  """Fold index per scan: patients shuffled by `seed`, dealt round-robin into folds.

  No patient spans two folds; fold sizes (in patients) differ by at most one.
  """
  if num_folds < 1:
    raise errors.ConfigError(f"num_folds must be >= 1, got {num_folds}")
  patients = sorted(set(patient_ids))
  perm = np.random.default_rng(seed).permutation(len(patients))
  fold_of = {patients[p]: i % num_folds for i, p in enumerate(perm)}
  return np.asarray([fold_of[p] for p in patient_ids], np.int32)


def split_indices(patient_ids: Sequence[str], *, num_folds: int, fold: int,
                  seed: int) -> dict[str, np.ndarray]:
  """{"train", "val", "test"} scan indices: fold = test, (fold+1) % k = val, the rest train."""
  if num_folds < 3:
    raise errors.ConfigError(f"config.data.num_folds={num_folds}: need >= 3 (test, val, train)")
  if not 0 <= fold < num_folds:
    raise errors.ConfigError(f"config.data.fold={fold} outside [0, {num_folds})")
  folds = kfold_by_patient(patient_ids, num_folds, seed)
  val = (fold + 1) % num_folds
  return {"train": np.flatnonzero((folds != fold) & (folds != val)).astype(np.int64),
          "val": np.flatnonzero(folds == val).astype(np.int64),
          "test": np.flatnonzero(folds == fold).astype(np.int64)}
