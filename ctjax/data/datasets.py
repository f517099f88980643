"""Data-set adapters: public layouts → a list of `ScanRecord`s, and k-fold splits by patient.

Layouts (`config.data.layout`, root `config.data.root`):
- `rsna`: ROOT/stage_2_train.csv (rows `ID_<sop>_<subtype>,Label`, 6 subtypes incl. `any`) and
  ROOT/stage_2_train/ID_<sop>.dcm (Kaggle's `stage_2_train_images/` also accepted). Slices are
  grouped into scans by SeriesInstanceUID; scan label = any slice positive; per-slice labels kept.
  The stage-2 training set (752,803 files) is read in bounded memory: the CSV is streamed into a
  uint8 table, the image folder is streamed (`os.scandir`), headers are read without pixels
  (`ctjax.data.headers`, optionally in `num_workers` processes, with a progress bar and ETA), and
  a file keeps only its path and a shared, read-only label vector.
- `cq500`: ROOT/reads.csv (name, Category, R1:ICH … R3:MidlineShift) and the study folders
  ROOT/CQ500-CT-<n>/ or, as the download unpacks, ROOT/CQ500CT<n> CQ500CT<n>/Unknown Study/
  <series>/CT*.dcm. Every series of a study is described from its headers and kept or not by
  `config.data.series` (`ctjax.data.series_policy`: by default every soft-tissue axial
  reconstruction, each one scan record with its study's labels; the decision and its reason are
  recorded per series). Labels: the 9 of DrCT2's Table 1 from the readers R1–R3 by
  `config.data.reader_rule` (`majority` of three, the default; `any` reader; or one reader
  `R1`/`R2`/`R3`); the fracture label is reads.csv's `CalvarialFracture` (Table 1: "Calvarial
  fracture"), not its `Fracture` (any fracture). CQ500 has no per-slice labels.
- `folder`: ROOT/labels.csv with columns scan_id, [patient_id], [folder], then one 0/1 column per
  label; DICOM under ROOT/<folder or scan_id>/. Without patient_id each scan is its own patient
  (a warning, `report["patient_is_scan"]`, and the QA flag `patient_is_scan` on every series).
- `blend`: ROOT/blend_labels.csv (scan_id, patient_id, sop_uid, file, label, boxes) with label in
  {0 non_ich, 1 normal_ich, 2 blend_sign} per slice and boxes "x0 y0 x1 y1;…"; DICOM under
  ROOT/scans/<scan_id>/.
- `phantom`: ROOT/manifest.json written by `ctjax.data.phantom.write_dataset`; read with the
  adapter of the manifest's `layout`, per-slice truth from the manifest where the layout has none
  (labels; the bleeding lesions' boxes, which the highlight's pointing game scores against).

Labels are validated in every adapter: only the values the layout defines (RSNA and CQ500 0/1,
blend 0/1/2), every needed column and cell present, duplicate rows identical (a conflict is an
error) — each failure a `ctjax.errors.LabelError` naming the file, the row and the column. Names
in label files are resolved inside the data root only. DICOM files without labels and labelled
names without DICOM are counted in `Dataset.report`; more than `max_unlabelled` of either (or any,
with `strict_labels`) is a `LabelCoverageError`. With `lenient`, unreadable files met in a header
scan are skipped and counted with their reasons (`report["skipped"]`); otherwise they raise.

Per-slice truth is keyed by absolute file path, because `ctjax.data.dicom.read_series` re-orders
files by position.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import math
import os
import pathlib
import re
from typing import Any, Optional, Sequence

import numpy as np

from ctjax import errors
from ctjax.data.labels import (BLEND_CLASSES, CQ500_COLUMNS, CQ500_LABELS, CQ500_READERS,
                               RSNA_LABELS)

log = logging.getLogger(__name__)

LAYOUTS = ("rsna", "cq500", "folder", "blend", "phantom")
READER_RULES = ("majority", "any") + CQ500_READERS
# Share of files without labels (or of labelled names without DICOM) tolerated with a warning.
# RSNA's stage-2 training set has a label row for every file; CQ500's reads.csv one per study.
MAX_UNLABELLED = 0.01
EXAMPLES = 5          # names quoted in messages and reports


@dataclasses.dataclass
class LoadOptions:
  """How an adapter reads its layout (config.data fields of the same names)."""
  lenient: bool = False                 # skip unreadable files met in a header scan (counted)
  strict_labels: bool = False           # any unlabelled file / label without DICOM is an error
  max_unlabelled: float = MAX_UNLABELLED
  series: Optional[dict] = None         # ctjax.data.series_policy options (CQ500)
  reader_rule: str = "majority"         # CQ500 labels from R1–R3
  num_workers: int = 0                  # header-scan processes
  progress: bool = False                # tqdm bars for header scans


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
  info: dict[str, Any] = dataclasses.field(default_factory=dict)   # identity, selection, labels


@dataclasses.dataclass
class Dataset:
  layout: str
  root: str
  labels: tuple[str, ...]
  scans: list[ScanRecord]
  has_slice_labels: bool
  # Counts and reasons: label file, unlabelled files, labels without DICOM, skipped files, the
  # series decisions and policy counts (CQ500).
  report: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def patient_ids(self) -> list[str]:
    return [s.patient_id for s in self.scans]


# -------------------------------------------------------------------------- label validation


class _Table:
  """A label CSV streamed row by row, with the file and line number for messages."""

  def __init__(self, path: pathlib.Path, required: Sequence[str]):
    if not path.is_file():
      raise errors.DatasetLayoutError(f"missing {path.name}; the README's section \"Real data\" "
                                      "shows the files each layout expects", path)
    self.path = path
    self._f = open(path, newline="", encoding="utf-8-sig")
    self._reader = csv.reader(self._f)
    header = next(self._reader, None)
    if header is None:
      self._f.close()
      raise errors.LabelError("empty file (no header row)", path)
    self.columns = [h.strip() for h in header]
    missing = [c for c in required if c not in self.columns]
    if missing:
      self._f.close()
      more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
      raise errors.LabelError(f"header lacks column(s) {missing[:4]}{more}", path)
    self.col = {c: i for i, c in enumerate(self.columns)}

  def __iter__(self):
    try:
      for row in self._reader:
        if not any(cell.strip() for cell in row):
          continue
        yield self._reader.line_num, row
    finally:
      self._f.close()

  def cell(self, row: list[str], line: int, column: str, *, required: bool = True) -> str:
    i = self.col.get(column)
    value = row[i].strip() if i is not None and i < len(row) else None
    if (value is None or value == "") and required:
      raise errors.LabelError(f"row {line}, column {column!r}: empty cell", self.path)
    return value or ""

  def binary(self, row: list[str], line: int, column: str, allowed: Sequence[int] = (0, 1)
             ) -> int:
    """The cell as one of `allowed` integers ("1", "1.0"); anything else names row and column."""
    text = self.cell(row, line, column)
    try:
      v = float(text)
    except ValueError:
      v = math.nan
    if not (math.isfinite(v) and v == int(v) and int(v) in allowed):
      raise errors.LabelError(f"row {line}, column {column!r}: {text!r} is not one of "
                              f"{'/'.join(map(str, allowed))}", self.path)
    return int(v)


def _inside(root: pathlib.Path, rel: str, *, what: str, path: pathlib.Path, line: int,
            column: str) -> pathlib.Path:
  """ROOT/rel, refused when it resolves outside ROOT (`../`, absolute paths, links out)."""
  cand = (root / rel)
  try:
    resolved = cand.resolve()
    inside = resolved == root.resolve() or root.resolve() in resolved.parents
  except OSError:
    inside = False
  if os.path.isabs(rel) or not inside or ".." in pathlib.PurePath(rel).parts:
    raise errors.LabelError(f"row {line}, column {column!r}: {what} {rel!r} resolves outside the "
                            "data root; names are resolved inside config.data.root only", path)
  return cand


def _coverage(report: dict, opts: LoadOptions, path: pathlib.Path, *, labelled: int,
              files: int) -> None:
  """Counts of unlabelled DICOM and labels without DICOM: warned, or an error (module doc)."""
  no_dicom, no_label = report.get("labels_without_dicom", 0), report.get("unlabelled_files", 0)
  if not (no_dicom or no_label):
    return
  parts = []
  if no_dicom:
    parts.append(f"{no_dicom} of {labelled} labelled name(s) have no DICOM (e.g. "
                 f"{', '.join(report['labels_without_dicom_examples'][:3])})")
  if no_label:
    parts.append(f"{no_label} of {files} DICOM file(s) have no label row (e.g. "
                 f"{', '.join(report['unlabelled_files_examples'][:3])})")
  text = "; ".join(parts)
  share = max(no_dicom / max(labelled, 1), no_label / max(files, 1))
  if opts.strict_labels or share > opts.max_unlabelled:
    why = ("config.data.strict_labels is set" if opts.strict_labels else
           f"more than config.data.max_unlabelled={opts.max_unlabelled:g} of them")
    raise errors.LabelCoverageError(f"{text}: {why}; fix the label file or the DICOM folder",
                                    path)
  log.warning("%s: %s (left out; config.data.strict_labels=True makes this an error)", path, text)


def _note(report: dict, key: str, example: str) -> None:
  report[key] = report.get(key, 0) + 1
  ex = report.setdefault(f"{key}_examples", [])
  if len(ex) < EXAMPLES:
    ex.append(example)


def _skip(report: dict, path: str, err: Exception) -> None:
  """A file left out in lenient mode: counted by error type, a few reasons kept."""
  report["skipped"] = report.get("skipped", 0) + 1
  kinds = report.setdefault("skipped_by_error", {})
  kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
  ex = report.setdefault("skipped_examples", [])
  if len(ex) < 10:
    ex.append({"path": path, "reason": str(err), "error": type(err).__name__})


# -------------------------------------------------------------------------------------- RSNA

_RSNA_ID = re.compile(r"^(ID_[0-9A-Za-z]+)_(%s)$" % "|".join(RSNA_LABELS))
_ALL_SUBTYPES = (1 << len(RSNA_LABELS)) - 1


def _shared_vector(cache: dict, row: np.ndarray) -> np.ndarray:
  """One read-only array per distinct label vector (≤ 64 for RSNA), shared by every file."""
  key = row.tobytes()
  vec = cache.get(key)
  if vec is None:
    vec = cache[key] = row.copy()
    vec.flags.writeable = False
  return vec


def load_rsna(root, *, labels_csv: str = "stage_2_train.csv",
              options: Optional[LoadOptions] = None) -> Dataset:
  opts = options or LoadOptions()
  root = pathlib.Path(root)
  csv_path = root / labels_csv
  table = _Table(csv_path, ("ID", "Label"))
  report: dict[str, Any] = {"label_file": labels_csv}
  index: dict[str, int] = {}
  values = np.zeros((1024, len(RSNA_LABELS)), np.uint8)
  seen = np.zeros(1024, np.uint8)                 # bit j: a row for subtype j was read
  column = {name: j for j, name in enumerate(RSNA_LABELS)}
  for line, row in table:
    ident = table.cell(row, line, "ID")
    m = _RSNA_ID.match(ident)
    if not m:
      raise errors.LabelError(f"row {line}, column 'ID': {ident!r} is not ID_<sop>_<subtype> "
                              f"with a subtype of {RSNA_LABELS}", csv_path)
    v = table.binary(row, line, "Label")
    i = index.setdefault(m.group(1), len(index))
    if i >= len(seen):
      values = np.concatenate([values, np.zeros_like(values)])
      seen = np.concatenate([seen, np.zeros_like(seen)])
    j = column[m.group(2)]
    if seen[i] >> j & 1:
      if values[i, j] != v:
        raise errors.LabelError(f"row {line}, column 'Label': {ident} is {v} here but "
                                f"{values[i, j]} in an earlier row (conflicting duplicate)",
                                csv_path)
      report["duplicate_rows"] = report.get("duplicate_rows", 0) + 1
    values[i, j] = v
    seen[i] |= 1 << j
  n = len(index)
  values, seen = values[:n], seen[:n]
  incomplete = np.flatnonzero(seen != _ALL_SUBTYPES)
  if incomplete.size:
    sops = list(index)
    first = int(incomplete[0])
    lacking = [name for j, name in enumerate(RSNA_LABELS) if not seen[first] >> j & 1]
    raise errors.LabelError(
        f"{sops[first]} has no row for subtype(s) {lacking} (column 'ID' "
        f"{sops[first]}_<subtype>); {incomplete.size} SOP(s) lack rows — every slice needs all "
        f"{len(RSNA_LABELS)}", csv_path)

  image_dir = next((root / d for d in ("stage_2_train", "stage_2_train_images")
                    if (root / d).is_dir()), None)
  if image_dir is None:
    raise errors.DatasetLayoutError("missing stage_2_train/ (ID_<sop>.dcm files; the README's "
                                    "section \"Real data\" shows the rsna layout)", root)
  found = np.zeros(n, bool)
  paths: list[str] = []
  num_files = 0
  with os.scandir(image_dir) as it:
    for entry in it:
      if entry.name.startswith(".") or not entry.name.endswith(".dcm") or not entry.is_file():
        continue
      num_files += 1
      i = index.get(entry.name[:-4])
      if i is None:
        _note(report, "unlabelled_files", entry.name)
        continue
      found[i] = True
      paths.append(os.path.join(image_dir, entry.name))
  paths.sort()
  if not found.all():
    sops = list(index)
    report["labels_without_dicom_examples"] = [sops[int(i)] + ".dcm"
                                               for i in np.flatnonzero(~found)[:EXAMPLES]]
  report["labels_without_dicom"] = int((~found).sum())
  report["labelled"], report["files"] = n, num_files
  _coverage(report, opts, csv_path, labelled=n, files=num_files)

  from ctjax.data import headers
  shared: dict[bytes, np.ndarray] = {}
  scans: dict[str, ScanRecord] = {}
  for path, got, err in headers.scan(paths, ("SeriesInstanceUID", "PatientID"),
                                     workers=opts.num_workers, progress=opts.progress,
                                     total=len(paths), desc="rsna headers"):
    if err is None and not got["SeriesInstanceUID"]:
      err = errors.InvalidDicomValueError("no SeriesInstanceUID in the header", path)
    if err is not None:
      if not opts.lenient:
        raise type(err)(f"{str(err).removeprefix(path + ': ')} (config.data.lenient=True skips "
                        "unreadable files and counts them)", path)
      _skip(report, path, err)
      continue
    series, patient = got["SeriesInstanceUID"], got["PatientID"]
    rec = scans.get(series)
    if rec is None:
      rec = scans[series] = ScanRecord(series, patient or series, [],
                                       np.zeros(len(RSNA_LABELS), np.float32), series_uid=series)
    vec = _shared_vector(shared, values[index[os.path.basename(path)[:-4]]])
    rec.files.append(path)
    rec.slice_labels[path] = vec
    rec.labels = np.maximum(rec.labels, vec)
  if report.get("skipped"):
    log.warning("rsna: %d unreadable file(s) skipped (%s), e.g. %s", report["skipped"],
                report["skipped_by_error"], report["skipped_examples"][0]["reason"])
  if not scans:
    raise errors.DatasetLayoutError("no labelled slice found", image_dir)
  for rec in scans.values():
    rec.labels = rec.labels.astype(np.float32)
    rec.info = {"label_source": f"{labels_csv}: per-slice rows, scan = any slice positive"}
  return Dataset("rsna", str(root), RSNA_LABELS, [scans[k] for k in sorted(scans)], True, report)


# ------------------------------------------------------------------------------------- CQ500

_CQ500_NAME = re.compile(r"^CQ500-?CT-?(\d+)$", re.IGNORECASE)


def _cq500_folder(root: pathlib.Path, name: str, *, path: pathlib.Path, line: int
                  ) -> Optional[pathlib.Path]:
  """The study folder of reads.csv's `name` (CQ500-CT-<n>), inside root only."""
  m = _CQ500_NAME.match(name)
  if not m:
    _inside(root, name, what="name", path=path, line=line, column="name")
    raise errors.LabelError(f"row {line}, column 'name': {name!r} is not a CQ500 scan name "
                            "(CQ500-CT-<n>)", path)
  n = m.group(1)
  for cand in (name, f"CQ500-CT-{n}", f"CQ500CT{n} CQ500CT{n}", f"CQ500CT{n}"):
    folder = root / cand
    if folder.is_dir():
      return _inside(root, cand, what="folder", path=path, line=line, column="name")
  return None


def _series_folders(study: pathlib.Path) -> list[tuple[str, list[str]]]:
  """(folder, its files) for every folder under `study` that directly holds files."""
  out = []
  for dirpath, dirnames, filenames in os.walk(study):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    files = sorted(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    if files:
      out.append((dirpath, files))
  return sorted(out)


def _reader_labels(votes: np.ndarray, rule: str) -> np.ndarray:
  """float32 [L] from votes [3, L] by `rule` (READER_RULES)."""
  if rule == "majority":
    return (votes.sum(0) >= 2).astype(np.float32)
  if rule == "any":
    return (votes.sum(0) >= 1).astype(np.float32)
  return votes[CQ500_READERS.index(rule)].astype(np.float32)


def load_cq500(root, *, options: Optional[LoadOptions] = None) -> Dataset:
  from ctjax.data import headers, series_policy
  opts = options or LoadOptions()
  if opts.reader_rule not in READER_RULES:
    raise errors.ConfigError(f"config.data.reader_rule={opts.reader_rule!r}; known: "
                             f"{READER_RULES}")
  policy = series_policy.options(opts.series)
  root = pathlib.Path(root)
  csv_path = root / "reads.csv"
  columns = [f"{r}:{c}" for r in CQ500_READERS for c in CQ500_COLUMNS]
  table = _Table(csv_path, ["name"] + columns)
  report: dict[str, Any] = {"label_file": "reads.csv", "reader_rule": opts.reader_rule,
                            "series_policy": policy["policy"]}
  studies: dict[str, dict] = {}
  for line, row in table:
    name = table.cell(row, line, "name")
    votes = np.asarray([[table.binary(row, line, f"{r}:{c}") for c in CQ500_COLUMNS]
                        for r in CQ500_READERS], np.uint8)
    if name in studies:
      if not np.array_equal(studies[name]["votes"], votes):
        raise errors.LabelError(f"row {line}, column 'name': {name} appears again (row "
                                f"{studies[name]['line']}) with other reads (conflicting "
                                "duplicate)", csv_path)
      report["duplicate_rows"] = report.get("duplicate_rows", 0) + 1
      continue
    folder = _cq500_folder(root, name, path=csv_path, line=line)
    studies[name] = {"votes": votes, "line": line, "folder": folder}
    if folder is None:
      _note(report, "labels_without_dicom", name)
  numbers = {int(_CQ500_NAME.match(n).group(1)) for n in studies}
  on_disk = 0
  for entry in sorted(os.listdir(root)):
    m = re.match(r"^CQ500-?CT-?(\d+)\b", entry, re.IGNORECASE)
    if m and (root / entry).is_dir():
      on_disk += 1
      if int(m.group(1)) not in numbers:
        _note(report, "unlabelled_files", entry)
  report["labelled"], report["files"] = len(studies), on_disk
  _coverage(report, opts, csv_path, labelled=len(studies), files=on_disk)

  # Headers of every file of every series folder, one progress bar over the whole set.
  folders = [(name, d, files) for name, st in studies.items() if st["folder"] is not None
             for d, files in _series_folders(st["folder"])]
  if not folders:
    raise errors.DatasetLayoutError("no CQ500 study folder (CQ500-CT-<n> or CQ500CT<n> "
                                    "CQ500CT<n>) with DICOM files matches reads.csv (the "
                                    "README's section \"Real data\" shows the cq500 layout)",
                                    root)
  scan = headers.scan((f for _, _, files in folders for f in files), series_policy.FIELDS,
                      workers=opts.num_workers, progress=opts.progress,
                      total=sum(len(f) for _, _, f in folders), desc="cq500 headers")
  per_study: dict[str, list] = collections.defaultdict(list)
  for name, d, files in folders:
    got = [next(scan) for _ in files]
    for s in series_policy.describe_series(files, got, d):
      per_study[name].append(s)
      for p, why in s.unreadable:
        if not opts.lenient:
          raise errors.NotDicomError(f"{why.removeprefix(p + ': ')} (in a folder of several "
                                     "series; config.data.lenient=True skips it)", p)
        _skip(report, p, errors.NotDicomError(why))
  decisions = series_policy.select(per_study, policy)
  report["policy_counts"] = series_policy.policy_counts(per_study, policy)
  report["series"] = []
  scans = []
  for d in decisions:
    st = studies[d.study]
    s = d.series
    rel = os.path.relpath(s.folder, st["folder"])
    key = f"{d.study}/{os.path.basename(s.folder)}"
    if sum(x.folder == s.folder for x in per_study[d.study]) > 1:
      key += f"#{s.series_uid}"
    entry = {"scan_id": key, "study": d.study, "patient_id": d.study, "kept": d.kept,
             "reason": d.reason, "path": os.path.relpath(s.folder, root), **s.identity()}
    entry.pop("folder")
    report["series"].append(entry)
    if not d.kept:
      continue
    labels = _reader_labels(st["votes"], opts.reader_rule)
    info = {**s.identity(), "folder": rel, "study": d.study, "selection": d.reason,
            "label_source": f"reads.csv row {st['line']}: {opts.reader_rule} of "
                            f"{', '.join(CQ500_READERS)} (fracture = CalvarialFracture)",
            "reader_votes": st["votes"].tolist()}
    scans.append(ScanRecord(key, d.study, list(s.files), labels, series_uid=s.series_uid,
                            info=info))
  log.info("cq500: %d studies, %d series; policy %s keeps %d (counts per policy: %s)",
           len(per_study), len(decisions), policy["policy"], len(scans), report["policy_counts"])
  if not scans:
    raise errors.DatasetLayoutError(
        f"no series kept by config.data.series.policy={policy['policy']!r} (of "
        f"{len(decisions)}: e.g. {decisions[0].reason})", root)
  return Dataset("cq500", str(root), CQ500_LABELS, scans, False, report)


# ------------------------------------------------------------------------------------ folder


def _dicom_files(folder: pathlib.Path) -> list[str]:
  return sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def load_folder(root, *, labels_csv: str = "labels.csv",
                options: Optional[LoadOptions] = None) -> Dataset:
  opts = options or LoadOptions()
  root = pathlib.Path(root)
  csv_path = root / labels_csv
  table = _Table(csv_path, ("scan_id",))
  names = tuple(c for c in table.columns if c not in ("scan_id", "patient_id", "folder"))
  if not names:
    raise errors.LabelError("no label column (want scan_id, [patient_id], [folder], then one "
                            "0/1 column per label)", csv_path)
  report: dict[str, Any] = {"label_file": labels_csv}
  # Without a patient column every scan is its own patient: one patient's scans can then land
  # in different folds (test and training), which the folds cannot see. Said once, and on
  # every scan's QA row (flag `patient_is_scan`).
  patient_is_scan = "patient_id" not in table.col
  if patient_is_scan:
    report["patient_is_scan"] = True
    log.warning("%s has no patient_id column: each scan counts as its own patient, so one "
                "patient's scans may fall into different folds (add patient_id to keep them "
                "together)", csv_path)
  seen: dict[str, tuple] = {}
  scans = []
  used = set()
  for line, row in table:
    sid = table.cell(row, line, "scan_id")
    labels = np.asarray([table.binary(row, line, n) for n in names], np.float32)
    rel = table.cell(row, line, "folder", required=False) or sid
    patient = table.cell(row, line, "patient_id", required=False) or sid
    if sid in seen:
      if seen[sid] != (rel, patient, labels.tobytes()):
        raise errors.LabelError(f"row {line}, column 'scan_id': {sid} appears again with other "
                                "values (conflicting duplicate)", csv_path)
      report["duplicate_rows"] = report.get("duplicate_rows", 0) + 1
      continue
    seen[sid] = (rel, patient, labels.tobytes())
    folder = _inside(root, rel, what="folder", path=csv_path, line=line,
                     column="folder" if "folder" in table.col else "scan_id")
    if not folder.is_dir() or not _dicom_files(folder):
      _note(report, "labels_without_dicom", rel)
      continue
    used.add(folder.resolve())
    info = {"label_source": f"{labels_csv} row {line}"}
    if patient_is_scan:
      info["patient_is_scan"] = True
    scans.append(ScanRecord(sid, patient, _dicom_files(folder), labels, info=info))
  others = [d.name for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and d.resolve() not in used and _dicom_files(d)]
  for name in others:
    _note(report, "unlabelled_files", name)
  report["labelled"], report["files"] = len(seen), len(used) + len(others)
  _coverage(report, opts, csv_path, labelled=len(seen), files=len(used) + len(others))
  if not scans:
    raise errors.DatasetLayoutError("no labelled scan folder found", root)
  return Dataset("folder", str(root), names, scans, False, report)


# ------------------------------------------------------------------------------------- blend


def parse_boxes(text: str) -> np.ndarray:
  """"x0 y0 x1 y1;x0 y0 x1 y1" → float32 [K, 4] (K = 0 for "")."""
  try:
    boxes = [[float(v) for v in b.split()] for b in (text or "").split(";") if b.strip()]
  except ValueError:
    boxes = [[]]
  if any(len(b) != 4 or not all(math.isfinite(v) for v in b) for b in boxes):
    raise errors.DatasetLayoutError(f"bad boxes {text!r}: want 'x0 y0 x1 y1;…'")
  return np.asarray(boxes, np.float32).reshape(-1, 4)


def load_blend(root, *, labels_csv: str = "blend_labels.csv",
               options: Optional[LoadOptions] = None) -> Dataset:
  opts = options or LoadOptions()
  root = pathlib.Path(root)
  csv_path = root / labels_csv
  table = _Table(csv_path, ("scan_id", "file", "label"))
  report: dict[str, Any] = {"label_file": labels_csv}
  scans: dict[str, ScanRecord] = {}
  rows_of: dict[str, tuple] = {}
  for line, row in table:
    sid = table.cell(row, line, "scan_id")
    rel = table.cell(row, line, "file")
    cls = table.binary(row, line, "label", allowed=tuple(range(len(BLEND_CLASSES))))
    boxes_text = table.cell(row, line, "boxes", required=False)
    try:
      boxes = parse_boxes(boxes_text)
    except errors.DatasetLayoutError as e:
      raise errors.LabelError(f"row {line}, column 'boxes': {e}", csv_path) from e
    path = _inside(root, rel, what="file", path=csv_path, line=line, column="file")
    if not path.is_file():
      path = _inside(root, os.path.join("scans", sid, rel), what="file", path=csv_path,
                     line=line, column="file")
    if not path.is_file():
      _note(report, "labels_without_dicom", rel)
      continue
    key = str(path)
    value = (sid, cls, boxes.tobytes())
    if key in rows_of:
      if rows_of[key] != value:
        raise errors.LabelError(f"row {line}, column 'file': {rel} appears again with another "
                                "scan, label or boxes (conflicting duplicate)", csv_path)
      report["duplicate_rows"] = report.get("duplicate_rows", 0) + 1
      continue
    rows_of[key] = value
    patient = table.cell(row, line, "patient_id", required=False) or sid
    rec = scans.setdefault(sid, ScanRecord(sid, patient, [],
                                           np.zeros(len(BLEND_CLASSES), np.float32),
                                           info={"label_source": f"{labels_csv}"}))
    rec.files.append(key)
    rec.slice_class[key] = cls
    rec.boxes[key] = boxes
    onehot = np.eye(len(BLEND_CLASSES), dtype=np.uint8)[cls]
    rec.slice_labels[key] = onehot
    rec.labels = np.maximum(rec.labels, onehot.astype(np.float32))
  num_files = 0
  for rec in scans.values():   # other DICOM files in a labelled scan's folders
    for folder in sorted({os.path.dirname(f) for f in rec.files}):
      for f in _dicom_files(pathlib.Path(folder)):
        num_files += 1
        if f not in rows_of:
          _note(report, "unlabelled_files", os.path.relpath(f, root))
  report["labelled"], report["files"] = len(rows_of) + report.get("labels_without_dicom", 0), \
      num_files
  _coverage(report, opts, csv_path, labelled=report["labelled"], files=num_files)
  if not scans:
    raise errors.DatasetLayoutError("no labelled slice found", root)
  return Dataset("blend", str(root), BLEND_CLASSES, [scans[k] for k in sorted(scans)], True,
                 report)


# ----------------------------------------------------------------------------------- phantom


def load_phantom(root, *, options: Optional[LoadOptions] = None) -> Dataset:
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
  ds = load(layout, root, options=options)
  truth, boxes = {}, {}
  for scan in manifest.get("scans", []):
    for series in [scan] + list(scan.get("extra_series", [])):
      for i, f in enumerate(series.get("files", [])):
        if "slice_labels" in series and i < len(series["slice_labels"]):
          truth[str((root / f).resolve())] = np.asarray(series["slice_labels"][i], np.uint8)
        boxes[str((root / f).resolve())] = _bleed_boxes(series, i)
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


def load(layout: str, root, *, options: Optional[LoadOptions] = None) -> Dataset:
  """The adapter for `layout` (one of LAYOUTS) on `root`."""
  if not root or not pathlib.Path(root).is_dir():
    raise errors.DatasetLayoutError(f"data root {root!r} is not a folder (config.data.root)",
                                    root or None)
  if layout == "rsna":
    return load_rsna(root, options=options)
  if layout == "cq500":
    return load_cq500(root, options=options)
  if layout == "folder":
    return load_folder(root, options=options)
  if layout == "blend":
    return load_blend(root, options=options)
  if layout == "phantom":
    return load_phantom(root, options=options)
  raise errors.ConfigError(f"config.data.layout={layout!r}; known: {LAYOUTS}")


# ------------------------------------------------------------------------------------ splits

# `config.data.fold_protocol`: how the k folds become the train / val / test splits of fold k.
#   val_next_fold  test = fold k, val = fold (k + 1) % K, train = the other K − 2 folds (ctjax's
#                  first protocol; the phantom presets' figures were measured with it).
#   k_minus_1      the blend-sign paper's "Evaluation protocol": train on the K − 1 other
#                  partitions and score the held-out one; the paper names no separate validation
#                  set, so validation is carved from the training partitions (`carve_validation`).
#   rsna1          the RSNA 2019 first-place solution's split (DrCT2 paper, VI.A.1: "We keep the
#                  same data distribution as the first place solution"; `rsna1_folds`), then as
#                  k_minus_1.
FOLD_PROTOCOLS = ("val_next_fold", "k_minus_1", "rsna1")
# SeuTao/RSNA2019_Intracranial-Hemorrhage-Detection, SequenceModel/main.py, train():
# `KFold(n_splits=fold_num, shuffle=True, random_state=48)` with `fold_num = 5`.
RSNA1_SEED = 48
RSNA1_FOLDS = 5


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


def rsna1_folds(patient_ids: Sequence[str], num_folds: int = RSNA1_FOLDS) -> np.ndarray:
  """Fold index per scan, as the RSNA 2019 first-place code deals its folds.

  SeuTao/RSNA2019_Intracranial-Hemorrhage-Detection, SequenceModel/main.py `train()` (and
  `valid()`, seq_dataset.py `run_check_train_data()`): `KFold(n_splits=5, shuffle=True,
  random_state=48).split(StudyInstance)` over `list(all_df['StudyInstance'].unique())` of
  `train_meta_id_seriser.csv`; the model trains on the four other folds and is scored
  (out-of-fold) on fold k. Reproduced here: scikit-learn's shuffled KFold exactly — the units
  shuffled in place by `np.random.RandomState(48)`, then cut into consecutive folds of
  n // k (+1 for the first n % k) units (equality with `sklearn.model_selection.KFold` is
  tested) — with 5 folds by default.

  Not reproducible from the repository, and what ctjax does instead:
  - the order of the units: it is the first-appearance order of StudyInstanceUID in
    `train_meta_id_seriser.csv`, which ships only in an external csv.zip (SequenceModel/
    README.md), not in the repository; ctjax shuffles the sorted unit ids, so the same seed
    gives another assignment than SeuTao's;
  - the unit: SeuTao groups by study (StudyInstanceUID); ctjax keeps every scan of a patient
    in one fold (a patient's other study in the training folds would leak into the score);
    on RSNA nearly every study is one series, so the unit is a patient's scans here;
  - the 2D CNN stage's folds (2DNet/src/train.py reads `../data/fold_5_by_study/fold<k>/
    train.txt` and `fold_5_by_study_image/fold<k>/val.txt`) come from an external data.zip,
    not in the repository; they are not reproduced.
  """
  if num_folds < 2:
    raise errors.ConfigError(f"num_folds must be >= 2, got {num_folds}")
  units = sorted(set(patient_ids))
  if len(units) < num_folds:
    raise errors.ConfigError(f"{len(units)} patients cannot fill {num_folds} folds")
  order = np.arange(len(units))
  np.random.RandomState(RSNA1_SEED).shuffle(order)
  sizes = np.full(num_folds, len(units) // num_folds, dtype=int)
  sizes[:len(units) % num_folds] += 1
  fold_of_unit = np.empty(len(units), np.int32)
  start = 0
  for k, size in enumerate(sizes):
    fold_of_unit[order[start:start + size]] = k
    start += size
  index = {u: i for i, u in enumerate(units)}
  return np.asarray([fold_of_unit[index[p]] for p in patient_ids], np.int32)


def _deal(patient_ids: Sequence[str], num_folds: int, seed: int,
          labels: Optional[np.ndarray], stratify: bool) -> np.ndarray:
  if stratify:
    if labels is None:
      raise errors.ConfigError("stratified folds need the scans' labels")
    from ctjax.data.stratify import stratified_group_folds
    return stratified_group_folds(patient_ids, labels, num_folds, seed)
  return kfold_by_patient(patient_ids, num_folds, seed)


def validation_parts(val_fraction: float) -> int:
  """How many parts the training patients are dealt into; the first is validation."""
  if not 0.0 < val_fraction < 1.0:
    raise errors.ConfigError(f"config.data.val_fraction={val_fraction}: expected 0 (validate on "
                             "the held-out fold) or a share in (0, 1)")
  return max(2, int(round(1.0 / val_fraction)))


def carve_validation(train: np.ndarray, patient_ids: Sequence[str], *, val_fraction: float,
                     seed: int, labels: Optional[np.ndarray] = None, stratify: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train, val) scan indices: the training partitions' patients dealt into
  P = round(1 / val_fraction) parts exactly as folds are dealt (round-robin by `seed`, or
  stratified over `labels`), part 0 validation. Patients stay whole; deterministic in `seed`.
  With fewer training patients than parts (tiny smoke sets) part 0 still holds one patient
  (a stratified deal that leaves it empty falls back to the round-robin one)."""
  train = np.asarray(train, np.int64)
  parts = validation_parts(val_fraction)
  sub_ids = [patient_ids[i] for i in train]
  sub_labels = None if labels is None else np.asarray(labels)[train]
  if len(set(sub_ids)) < 2:
    raise errors.ConfigError(f"{len(set(sub_ids))} training patient(s): too few to carve a "
                             f"validation part (config.data.val_fraction={val_fraction})")
  part = _deal(sub_ids, parts, seed, sub_labels, stratify)
  if not np.any(part == 0):
    part = kfold_by_patient(sub_ids, parts, seed)
  return train[part != 0], train[part == 0]


def split_indices(patient_ids: Sequence[str], *, num_folds: int, fold: int, seed: int,
                  labels: Optional[np.ndarray] = None, stratify: bool = False,
                  protocol: str = "val_next_fold", val_fraction: float = 0.1
                  ) -> dict[str, np.ndarray]:
  """{"train", "val", "test"} scan indices of fold `fold` under `protocol` (FOLD_PROTOCOLS).

  Folds group scans by patient; with `stratify` (and `labels` [N, L]) they are also stratified
  over the labels (`ctjax.data.stratify`, iterative stratification), else patients are dealt
  round-robin (`kfold_by_patient`); `rsna1` deals them as the RSNA first-place code does
  (`rsna1_folds`, unstratified, its own seed). Every protocol: test = fold `fold`.
  val_next_fold: val = fold (fold + 1) % K, train = the rest. k_minus_1 and rsna1: train = the
  K − 1 other folds less a validation part carved from them (`carve_validation`, seeded by
  `seed + 1 + fold`); `val_fraction` 0: no carving, the held-out fold validates (the checkpoint
  is then chosen on the scored fold, as SeuTao's SequenceModel/main.py does: optimistic).
  Deterministic in `seed`.
  """
  if protocol not in FOLD_PROTOCOLS:
    raise errors.ConfigError(f"config.data.fold_protocol={protocol!r}; expected one of "
                             f"{FOLD_PROTOCOLS}")
  least = 3 if protocol == "val_next_fold" else 2
  if num_folds < least:
    raise errors.ConfigError(f"config.data.num_folds={num_folds}: need >= {least} for "
                             f"fold_protocol {protocol}")
  if not 0 <= fold < num_folds:
    raise errors.ConfigError(f"config.data.fold={fold} outside [0, {num_folds})")
  if protocol == "rsna1":
    if stratify:
      raise errors.ConfigError("config.data.fold_protocol=rsna1 deals unstratified folds (the "
                               "first-place code's KFold); set config.data.stratify=False")
    folds = rsna1_folds(patient_ids, num_folds)
  else:
    folds = _deal(patient_ids, num_folds, seed, labels, stratify)
  test = np.flatnonzero(folds == fold).astype(np.int64)
  if protocol == "val_next_fold":
    val = (fold + 1) % num_folds
    return {"train": np.flatnonzero((folds != fold) & (folds != val)).astype(np.int64),
            "val": np.flatnonzero(folds == val).astype(np.int64), "test": test}
  train = np.flatnonzero(folds != fold).astype(np.int64)
  if val_fraction == 0:
    return {"train": train, "val": test.copy(), "test": test}
  train, val = carve_validation(train, patient_ids, val_fraction=val_fraction,
                                seed=seed + 1 + fold, labels=labels, stratify=stratify)
  return {"train": train, "val": val, "test": test}


def split_shares(protocol: str, num_folds: int, val_fraction: float = 0.1
                 ) -> dict[str, float]:
  """The nominal shares of the data in each split of a fold (patients dealt evenly): what the
  corrected resampled t-test's n_test / n_train is taken from (`ctjax.eval.stats`)."""
  if protocol not in FOLD_PROTOCOLS:
    raise errors.ConfigError(f"config.data.fold_protocol={protocol!r}; expected one of "
                             f"{FOLD_PROTOCOLS}")
  k = float(num_folds)
  if protocol == "val_next_fold":
    return {"train": (k - 2) / k, "val": 1 / k, "test": 1 / k}
  rest = (k - 1) / k
  if val_fraction == 0:
    return {"train": rest, "val": 1 / k, "test": 1 / k}
  carved = 1.0 / validation_parts(val_fraction)
  return {"train": rest * (1 - carved), "val": rest * carved, "test": 1 / k}


def protocol_text(protocol: str, num_folds: int, val_fraction: float = 0.1) -> str:
  """One sentence for tables and reports: how fold k's splits were made."""
  if protocol == "val_next_fold":
    return (f"{num_folds} folds by patient: test fold k, validation fold k + 1, training the "
            f"other {num_folds - 2} (`data.fold_protocol=val_next_fold`)")
  how = ("the RSNA 2019 first-place code's shuffled KFold (seed 48) by patient"
         if protocol == "rsna1" else "folds by patient")
  val = ("validation on the held-out fold itself" if val_fraction == 0 else
         f"validation 1/{validation_parts(val_fraction)} of the training patients")
  return (f"{num_folds} {how}: test fold k, training the other {num_folds - 1} less {val} "
          f"(`data.fold_protocol={protocol}`)")
