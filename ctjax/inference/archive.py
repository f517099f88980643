"""Batch prediction over CT series: one machine-readable row per series (CSV or JSON lines).

    run = runs.load_run("runs/drct2_phantom", config_overrides=ALL_DEVICES,
                        require_task="drct")   # on every device of this host
    scans = find_scans("archive/")                      # folder of series, one series, a layout
    summary = predict_scans(run, scans, "preds.csv", workers=2)
    print(summary.throughput_line())

Each series goes through exactly the code the reports use: `ctjax.inference.scan_reports.read_scan`
+ `ScanInfo.of` (head-CT verdict and QA flags) + `scan_batch` (the pipeline's own `drct_example`)
in a pool of spawned worker processes (the parent has JAX loaded), while the device predicts the
previous batch with `ctjax.inference.runs.predict_batch` on a mesh of every device (batches are a
multiple of the device count, padded to one fixed size: one compilation). A series that cannot
be read (damaged, or refused by the operating system: the row carries its reason), or that is
no head CT while the run's `config.data.require_head` holds, is a row with status "error" and
its one-line message; the batch goes on.

One writer per output: `predict_scans` holds `<out>.lock` (`ctjax.fileio.exclusive_lock`: the
holder's pid, host and command; a second run stops in one line, a lock left by a dead process
is taken over). The output is append-only and resumable: rows are written a whole batch at a
time, in the order of `scans`. A series is identified by its SeriesInstanceUID (by its resolved
folder when it has none, e.g. an unreadable folder): a rerun skips the series already in the
file, a series met again under another path is not predicted twice, and another archive whose
folders have the same names is predicted. On resume the file is parsed (the csv module, or one
JSON object a line); a last row that does not parse whole (a run killed mid-write) is dropped,
damage before it is refused. So a killed run resumed gives the same file as an uninterrupted
one. Timing columns (`decode_s`, `device_s`) are the only ones that differ between runs;
`timings=False` leaves them out. A sidecar `<out>.json` records the run, the labels and
thresholds, the columns and the throughput of the latest invocation.

Row schema (`columns(labels)`): scan (the series' name: relative folder [+ "#" series UID], or a
layout's scan id), path (its folder, resolved), status ("ok" | "error"), error, patient_id,
study_uid, series_uid, series_description, num_source_slices, head (1 if
`ctjax.data.headcheck` says head CT, 0 if not, empty when unread), qa_flags (the series'
`ctjax.data.qa` flags in `qa.FLAGS` order; ["failed"] when it could not be read), prob_<label>
and call_<label> (1 if prob >= the run's threshold of that label,
`ctjax.inference.report_html.thresholds`) per label in the run's order, key_slices (the 5 most
attended distinct slices, rank order, 0-based source indices into the series in canonical
slice order), key_sop_uids (their SOPInstanceUIDs), decode_s (read + checks + sample + resize
in the worker), device_s (the series' share of its batch's predict call).

CSV cells: lists (qa_flags, key_slices, key_sop_uids) space-separated, empty cells for missing
values; a text cell that a spreadsheet would run as a formula (first character `=`, `+`, `-`,
`@`, tab or carriage return: OWASP's CSV-injection list) or that starts with `'` is written with
a leading `'`, which `read_rows` removes. JSON lines: lists and nulls, text as read.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import csv
import dataclasses
import io
import itertools
import json
import logging
import multiprocessing
import os
import pathlib
import sys
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from ctjax import fileio
from ctjax.errors import ConfigError, CTDataError, CTJaxError, StorageError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
# Layout files at a data-set root (`ctjax.data.datasets`), in the order they are looked for.
LAYOUT_FILES = (("manifest.json", "phantom"), ("stage_2_train.csv", "rsna"),
                ("reads.csv", "cq500"), ("blend_labels.csv", "blend"), ("labels.csv", "folder"))
NUM_KEY_SLICES = 5      # the report's key slices (DrCT2 paper, Figure 2)
IDENTITY = ("scan", "path", "status", "error", "patient_id", "study_uid", "series_uid",
            "series_description", "num_source_slices", "head", "qa_flags")
TIMING = ("decode_s", "device_s")
# A spreadsheet runs a cell starting with one of these as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LIST_COLUMNS = ("qa_flags", "key_slices", "key_sop_uids")


class OutputMismatchError(CTJaxError):
  """An existing output file was written with other columns, format or model."""


@dataclasses.dataclass(frozen=True)
class SeriesRef:
  """One series to predict: a folder (+ series UID when it holds several) or a list of files."""
  key: str                                  # its name in the rows and report pages (unique)
  path: str                                 # folder shown in the row and the report
  files: Optional[tuple[str, ...]] = None   # a data-set layout's files; None: read `path`
  series_uid: Optional[str] = None          # selector for folders holding several series
  uid: Optional[str] = None                 # its SeriesInstanceUID when known before reading

  @property
  def known_uid(self) -> Optional[str]:
    return self.uid or self.series_uid

  def identity(self) -> tuple[str, str]:
    """What a resumed run matches rows on (`row_identity`): the UID when known, else the
    resolved folder."""
    return _identity(self.known_uid, os.path.realpath(self.path))


def _identity(uid: Optional[str], path: Optional[str]) -> tuple[str, str]:
  return ("uid", uid) if uid else ("path", str(path or ""))


def row_identity(row: dict[str, Any]) -> tuple[str, str]:
  return _identity(row.get("series_uid"), row.get("path"))


@dataclasses.dataclass
class Decoded:
  """A worker's result for one series: the model batch, or the one-line reason it has none."""
  ref: SeriesRef
  seconds: float
  batch: Optional[dict[str, np.ndarray]] = None     # `scan_batch`'s one-scan batch
  display: Optional[np.ndarray] = None              # brain-window images (reports only)
  info: Any = None                                  # ctjax.inference.scan_reports.ScanInfo
  sop_uids: Optional[list[str]] = None              # of the sampled slices
  error: Optional[str] = None


# A run opened for prediction uses every device of this host, whatever it trained on
# (`runs.load_run(..., config_overrides=ALL_DEVICES)`): prediction batches are split over all.
ALL_DEVICES = {"parallel.num_devices": -1}


# ----------------------------------------------------------------------------- series lists


def detect_layout(root: str | os.PathLike) -> Optional[str]:
  """The data-set layout whose index file sits at `root`, else None (a folder of series)."""
  root = pathlib.Path(root)
  for name, layout in LAYOUT_FILES:
    if (root / name).is_file():
      return layout
  return None


def layout_scans(layout: str, root: str | os.PathLike,
                 scan_ids: Optional[Sequence[str]] = None) -> list[SeriesRef]:
  """The scans of a data-set layout (`ctjax.data.datasets.load`), keyed by scan id, in the
  data set's order (or `scan_ids`' order)."""
  from ctjax.data import datasets
  ds = datasets.load(layout, root)
  by_id = {r.scan_id: r for r in ds.scans}
  if scan_ids is None:
    scan_ids = [r.scan_id for r in ds.scans]
  missing = [i for i in scan_ids if i not in by_id]
  if missing:
    raise CTDataError(f"scans {missing[:3]} are not in the {layout} data set", root)
  refs = []
  for sid in scan_ids:
    rec = by_id[sid]
    files = tuple(sorted(rec.files))
    folder = os.path.commonpath(files) if files else os.fspath(root)
    if len(files) == 1:
      folder = os.path.dirname(folder)
    refs.append(SeriesRef(sid, folder, files, rec.series_uid))
  return refs


def find_scans(path: str | os.PathLike, *, layout: str = "auto",
               progress: bool = False) -> list[SeriesRef]:
  """Every series under `path`: a data-set root (`layout`, or "auto" = by its index file), a
  folder of series folders (`ctjax.inference.scan_reports.find_series`: their headers are read
  to split and identify series; `progress` shows a bar over the folders), one series folder or
  one file."""
  from ctjax.inference.scan_reports import find_series
  p = pathlib.Path(path)
  if p.is_file():
    return [SeriesRef(p.name, os.fspath(p.parent), (os.fspath(p),))]
  if not p.is_dir():
    raise CTDataError("no such file or folder", p)
  if layout == "auto":
    layout = detect_layout(p) or "series"
  if layout != "series":
    return layout_scans(layout, p)
  root = p.absolute()
  refs, uids = [], {}
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(unit="folder", desc="find series", leave=False)
  try:
    found = find_series(p, uids=uids, progress=bar.update if bar is not None else None)
  finally:
    if bar is not None:
      bar.close()
  for folder, uid in found:
    rel = pathlib.Path(os.path.relpath(folder, root)).as_posix()
    key = root.name if rel == "." else rel
    refs.append(SeriesRef(key + (f"#{uid}" if uid else ""), folder, None, uid,
                          uid or uids.get(folder)))
  return refs


def split_scans(run: Any, split: str) -> list[SeriesRef]:
  """The series of a split of the run's own data set (config.data.layout / root), in the
  split's order: the examples `ctjax.evaluate` predicts, read again from their DICOM files."""
  from ctjax.data import pipeline
  layout, root = pipeline.resolve_root(run.config, str(run.workdir), generate=False)
  splits = pipeline.build_splits(run.config, str(run.workdir), build=False)
  if split not in splits:
    raise ConfigError(f"split {split!r} does not exist; splits: {', '.join(splits)}")
  return layout_scans(layout, root, splits[split].scan_ids)


# ----------------------------------------------------------------------------- the worker


def _one_line(e: BaseException) -> str:
  if isinstance(e, OSError) and not isinstance(e, CTJaxError) and e.strerror:
    return f"{e.filename or ''}: cannot read ({e.strerror})".lstrip(": ")   # the OS's reason
  return " ".join(str(e).split()) or type(e).__name__


def decode_series(ref: SeriesRef, config: Any, with_display: bool = False,
                  require_head: bool = True) -> Decoded:
  """Worker: one series → its model batch exactly as the reports build it (or the reason not).

  Runs in a spawned process (top-level, picklable arguments); returns small arrays only. A
  series that is no head CT is an error when `require_head` (its info still given: the row
  shows its identity and QA flags).
  """
  from ctjax.inference import scan_reports
  t0 = time.perf_counter()
  info = None
  try:
    volume = scan_reports.read_scan(list(ref.files) if ref.files else ref.path, ref.series_uid)
    info = scan_reports.ScanInfo.of(volume)
    scan_reports.check_head(info, ref.path, require_head)
    batch, display = scan_reports.scan_batch(volume, config)
  except (CTDataError, OSError) as e:
    return Decoded(ref, time.perf_counter() - t0, info=info, error=_one_line(e))
  sampled = batch["slice_index"][0]
  return Decoded(ref, time.perf_counter() - t0, batch=batch,
                 display=display if with_display else None, info=info,
                 sop_uids=[volume.sop_uids[int(i)] for i in sampled])


def _worker_init(parent_pid: int) -> None:
  """Worker start: Ctrl-C is the parent's to handle (it shuts the pool down; no traceback per
  worker), and exit when the parent is gone (killed), instead of lingering as an orphan."""
  import signal
  import threading
  signal.signal(signal.SIGINT, signal.SIG_IGN)

  def watch() -> None:
    while os.getppid() == parent_pid:
      time.sleep(1.0)
    os._exit(1)

  threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker_ready() -> int:
  """Imports the worker's modules (spawned workers start cold) so start-up is not timed."""
  from ctjax.inference import scan_reports
  return os.getpid()


def _results(futures: Sequence[concurrent.futures.Future]) -> list[Any]:
  try:
    return [f.result() for f in futures]
  except concurrent.futures.process.BrokenProcessPool as e:
    raise CTJaxError(f"a decode worker process died ({_one_line(e)}); the rows written so far "
                     "are kept: rerun the same command to resume") from e


def _warmup_batch(config: Any) -> dict[str, np.ndarray]:
  """A batch of air built by `scan_batch` itself (same keys, dtypes, shapes as real ones)."""
  from ctjax.inference import scan_reports
  m, size = int(config.data.num_slices), int(config.data.image_size)
  air = type("Air", (), {"hu": np.full((m, size, size), -1024.0, np.float32), "num_slices": m})
  return scan_reports.scan_batch(air, config)[0]


# ----------------------------------------------------------------------------- rows & files


def columns(labels: Sequence[str], timings: bool = True) -> list[str]:
  return (list(IDENTITY) + [f"prob_{n}" for n in labels] + [f"call_{n}" for n in labels]
          + ["key_slices", "key_sop_uids"] + (list(TIMING) if timings else []))


def _f32(x: Any) -> float:
  """float32 value as the float its shortest repr reads back as (same text every run)."""
  return float(str(np.float32(x)))


def output_format(path: str | os.PathLike) -> str:
  suffix = pathlib.Path(path).suffix.lower()
  if suffix not in FORMATS:
    raise ConfigError(f"{path}: the output must end in .csv or .jsonl")
  return FORMATS[suffix]


def sidecar_path(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  return path.with_name(path.name + ".json")


def lock_path(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  return path.with_name(path.name + ".lock")


class Output:
  """The append-only output file: the rows already there (by identity), whole-batch appends."""

  def __init__(self, path: str | os.PathLike, cols: Sequence[str]):
    self.path = pathlib.Path(path)
    self.format = output_format(self.path)
    self.columns = list(cols)
    self.rows: list[dict[str, Any]] = []
    self.done: dict[tuple[str, str], str] = {}    # row identity → its scan name
    if self.path.exists():
      self._read_existing()

  def _read_existing(self) -> None:
    try:
      raw = self.path.read_bytes()
    except OSError as e:
      raise StorageError(f"cannot read the existing output ({e.strerror or e})", self.path) from e
    parse = _parse_csv if self.format == "csv" else _parse_jsonl
    rows, keep, problem = parse(raw, self.columns, self.path)
    if keep < len(raw):         # a run killed mid-write: its last row is not whole
      log.warning("%s: dropping a last row that is not whole (%s; %d bytes)", self.path,
                  problem, len(raw) - keep)
      try:
        with open(self.path, "r+b") as f:
          f.truncate(keep)
      except OSError as e:
        raise fileio.storage_error(e, self.path, "dropping a half-written row") from e
    self.rows = rows
    for r in rows:
      self.done.setdefault(row_identity(r), r["scan"])

  def append(self, rows: Sequence[dict[str, Any]]) -> None:
    """Writes `rows` in one call and flushes them to disk (whole lines only: a failed write is
    cut back, and reported naming this file and its file system's free space)."""
    if not rows:
      return
    buf = io.StringIO()
    existed = self.path.exists()
    try:
      size = self.path.stat().st_size
    except FileNotFoundError:
      size = 0
    if self.format == "csv":
      writer = csv.writer(buf, lineterminator="\n")
      if size == 0:
        writer.writerow(self.columns)
      for r in rows:
        writer.writerow([_csv_cell(c, r[c]) for c in self.columns])
    else:
      for r in rows:
        buf.write(json.dumps({c: r[c] for c in self.columns}) + "\n")
    data = buf.getvalue().encode("utf-8")
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with open(self.path, "ab") as f:
        try:
          f.write(data)
          f.flush()
          os.fsync(f.fileno())
        except OSError:
          f.truncate(size)      # no half row left behind
          raise
    except OSError as e:
      if not existed:         # nor an empty file this call created
        try:
          self.path.unlink()
        except OSError:
          pass
      raise fileio.storage_error(e, self.path, "writing predictions", needed=len(data)) from e
    self.rows.extend(rows)
    for r in rows:
      self.done.setdefault(row_identity(r), r["scan"])


def _kind(column: str) -> str:
  if column.startswith("prob_") or column in TIMING:
    return "float"
  if column.startswith("call_") or column in ("num_source_slices", "head"):
    return "int"
  if column == "key_slices":
    return "ints"
  if column in LIST_COLUMNS:
    return "texts"
  return "text"


def _neutral(text: str) -> str:
  """A text cell a spreadsheet shows as text: a leading `'` before a formula character (and
  before a leading `'`, so that reading removes exactly one)."""
  return "'" + text if text.startswith(FORMULA_START + ("'",)) else text


def _csv_cell(column: str, v: Any) -> str:
  if v is None:
    return ""
  kind = _kind(column)
  if isinstance(v, (list, tuple)):
    v = " ".join(str(x) for x in v)
  return _neutral(str(v)) if kind in ("text", "texts") else str(v)


def _parse_cell(column: str, value: str) -> Any:
  kind = _kind(column)
  if kind in ("text", "texts") and value.startswith("'"):
    value = value[1:]
  if value == "":
    return [] if column == "qa_flags" else None
  if kind == "float":
    return float(value)
  if kind == "int":
    return int(value)
  if kind == "ints":
    return [int(v) for v in value.split()]
  if kind == "texts":
    return value.split()
  return value


def _lines(raw: bytes, pos: list[int]) -> Iterator[str]:
  """`raw`'s lines (each with its "\n"), noting in pos[0] the offset after the last one given."""
  start = 0
  while start < len(raw):
    j = raw.find(b"\n", start)
    end = len(raw) if j < 0 else j + 1
    line = raw[start:end]
    pos[0] = start = end
    yield line.decode("utf-8")


def _parse_csv(raw: bytes, cols: Sequence[str], path: pathlib.Path
               ) -> tuple[list[dict[str, Any]], int, str]:
  """(rows, bytes to keep, why the rest is dropped): every whole record up to the first that is
  not (cut inside a quoted field, a missing newline, other field counts, a cell that does not
  parse); the first such record must be the last, else the file is refused."""
  pos = [0]
  reader = csv.reader(_lines(raw, pos), strict=True)
  rows: list[dict[str, Any]] = []
  keep, problem, header, n = 0, "", None, 0
  while True:
    try:
      values = next(reader)
    except StopIteration:
      break
    except (csv.Error, UnicodeDecodeError) as e:
      problem = f"{type(e).__name__}: {e}"
    else:
      n += 1
      problem = _record_problem(values, cols, raw, pos[0], header is None)
      if not problem:
        if header is None:
          header = values
          if header != list(cols):
            raise OutputMismatchError(
                f"{path}: its columns differ from this run's ({len(header)} vs {len(cols)}, "
                f"e.g. {sorted(set(header) ^ set(cols))[:3]}); write to another --out")
        else:
          try:
            rows.append({c: _parse_cell(c, v) for c, v in zip(cols, values)})
          except ValueError as e:
            problem = f"a cell does not parse ({e})"
      if not problem:
        keep = pos[0]
        continue
    if pos[0] < len(raw) or _more_records(reader):
      raise OutputMismatchError(
          f"{path}: record {n} (byte {keep}) is damaged ({problem}) and more follow; the file "
          "was edited or written by two processes: write to another --out")
    break
  return rows, keep, problem


def _more_records(reader) -> bool:
  try:
    next(reader)
  except StopIteration:
    return False
  except (csv.Error, UnicodeDecodeError):
    return True
  return True


def _record_problem(values: list[str], cols: Sequence[str], raw: bytes, end: int,
                    is_header: bool) -> str:
  if raw[end - 1:end] != b"\n":
    return "no newline at its end"
  if not is_header and len(values) != len(cols):
    return f"{len(values)} fields, {len(cols)} expected"
  return ""


def _parse_jsonl(raw: bytes, cols: Sequence[str], path: pathlib.Path
                 ) -> tuple[list[dict[str, Any]], int, str]:
  """As `_parse_csv`, one JSON object a line."""
  pos = [0]
  rows: list[dict[str, Any]] = []
  keep, problem = 0, ""
  lines = _lines(raw, pos)
  for n in itertools.count(1):
    try:
      line = next(lines)
    except StopIteration:
      break
    except UnicodeDecodeError as e:
      problem = f"not UTF-8 ({e})"
    else:
      if not line.endswith("\n"):
        problem = "no newline at its end"
      else:
        try:
          row = json.loads(line)
        except ValueError as e:
          problem = f"not JSON ({e})"
        else:
          if not isinstance(row, dict) or list(row) != list(cols):
            raise OutputMismatchError(f"{path}: line {n} has other fields than this run's "
                                      "rows; write to another --out")
          rows.append(row)
          keep = pos[0]
          continue
    if pos[0] < len(raw):
      raise OutputMismatchError(f"{path}: line {n} is damaged ({problem}) and more follow; the "
                                "file was edited or written by two processes: write to another "
                                "--out")
    break
  return rows, keep, problem


def key_slices(attention: Any, slice_index: Any, k: int = NUM_KEY_SLICES
               ) -> list[tuple[int, int]]:
  """(source index, sampled index) of the k most attended distinct source slices, rank order
  (`ctjax.eval.keyslice.rank_slices`; a short series samples some slices twice)."""
  from ctjax.eval.keyslice import rank_slices
  out, seen = [], set()
  for i in rank_slices(np.asarray(attention)):
    src = int(slice_index[int(i)])
    if src not in seen:
      seen.add(src)
      out.append((src, int(i)))
    if len(out) == k:
      break
  return out


def _row(d: Decoded, labels: Sequence[str], thr: Sequence[float], out: Optional[dict],
         device_s: Optional[float], timings: bool) -> dict[str, Any]:
  info = d.info
  header = info.header if info is not None else {}
  row: dict[str, Any] = {
      "scan": d.ref.key, "path": os.path.realpath(d.ref.path),
      "status": "error" if d.error else "ok", "error": d.error,
      "patient_id": header.get("PatientID"), "study_uid": header.get("StudyInstanceUID"),
      "series_uid": info.series_uid if info is not None else d.ref.known_uid,
      "series_description": header.get("SeriesDescription"),
      "num_source_slices": info.num_slices if info is not None else None,
      "head": None if info is None or info.head is None else int(info.head),
      "qa_flags": list(info.qa_flags) if info is not None else ["failed"]}
  for n in labels:
    row[f"prob_{n}"] = None
  for n in labels:
    row[f"call_{n}"] = None
  row["key_slices"] = row["key_sop_uids"] = None
  if out is not None:
    probs = [_f32(p) for p in out["probs"]]
    for n, p, t in zip(labels, probs, thr):
      row[f"prob_{n}"] = p
      row[f"call_{n}"] = int(p >= t)
    top = key_slices(out["slice_attention"], d.batch["slice_index"][0])
    row["key_slices"] = [s for s, _ in top]
    row["key_sop_uids"] = [d.sop_uids[i] for _, i in top]
  if timings:
    row["decode_s"] = round(d.seconds, 4)
    row["device_s"] = None if device_s is None else round(device_s, 4)
  return row


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Summary:
  """What one `predict_scans` call did and how fast (also written to the sidecar JSON)."""
  output: str
  total: int = 0               # series asked for
  skipped: int = 0             # already in the output (same SeriesInstanceUID, or folder)
  elsewhere: int = 0           # of those, rows of the same series read from another folder
  duplicates: int = 0          # the same SeriesInstanceUID as a series earlier in `scans`
  predicted: int = 0
  failed: int = 0
  unreadable: int = 0          # rows with status "error" in the output among `scans` (any run)
  batch_size: int = 0
  devices: int = 0
  workers: int = 0
  startup_s: float = 0.0       # worker start + compilation (not in the rates)
  wall_s: float = 0.0          # first decode submitted → last row written
  device_s: float = 0.0        # sum of the batches' predict calls
  decode_s: float = 0.0        # sum over series of the worker's read + sample + resize
  errors: list[str] = dataclasses.field(default_factory=list)

  @property
  def series_per_s(self) -> float:
    """End to end, decode included (every series handled, read errors too)."""
    done = self.predicted + self.failed
    return done / self.wall_s if self.wall_s > 0 else 0.0

  @property
  def device_series_per_s(self) -> float:
    return self.predicted / self.device_s if self.device_s > 0 else 0.0

  @property
  def decode_series_per_s(self) -> float:
    """One worker's decode rate (series per second of decode time)."""
    done = self.predicted + self.failed
    return done / self.decode_s if self.decode_s > 0 else 0.0

  def throughput_line(self) -> str:
    return (f"throughput: {self.series_per_s:.2f} series/s with decode ({self.workers} decode "
            f"worker(s)), {self.device_series_per_s:.2f} series/s device-only (batch "
            f"{self.batch_size} on {self.devices} device(s)); decode "
            f"{self.decode_series_per_s:.2f} series/s per worker")

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(series_per_s=self.series_per_s, device_series_per_s=self.device_series_per_s,
             decode_series_per_s_per_worker=self.decode_series_per_s,
             throughput=self.throughput_line())
    return d


def default_batch_size(run: Any) -> int:
  """The run's eval batch size rounded up to a multiple of the mesh's devices."""
  n = int(run.mesh.devices.size)
  b = int(run.config.data.get("eval_batch_size", 0) or run.config.train.batch_size)
  return max(n, -(-b // n) * n)


def model_name(run: Any) -> str:
  return f"{'DrCT2' if run.config.model.aps else 'DrCT1'} ({run.config.model.backbone} backbone)"


def _check_sidecar(path: pathlib.Path, run: Any) -> None:
  side = sidecar_path(path)
  if not (path.exists() and path.stat().st_size and side.is_file()):
    return
  try:
    saved = json.loads(side.read_text()).get("run", {})
  except (OSError, ValueError, AttributeError):
    return
  here = {"workdir": os.path.abspath(run.workdir), "step": int(run.step)}
  if saved and (saved.get("workdir"), saved.get("step")) != (here["workdir"], here["step"]):
    raise OutputMismatchError(
        f"{path}: written by {saved.get('workdir')} step {saved.get('step')}, not "
        f"{here['workdir']} step {here['step']}; write to another --out")


def _stack(examples: Sequence[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
  """One-scan batches → one batch of `size` rows (padded with copies of the first)."""
  pad = size - len(examples)
  return {k: np.concatenate([e[k] for e in examples] + [examples[0][k]] * pad)
          for k in examples[0]}


def _status(message: str, progress: bool) -> None:
  """A start-up step, said before it runs (the bar comes after it)."""
  if progress:
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)
  log.debug("%s", message)


def predict_scans(run: Any, scans: Sequence[SeriesRef], out: str | os.PathLike, *,
                  batch_size: Optional[int] = None, workers: int = 2, prefetch: int = 2,
                  reports: Optional[str | os.PathLike] = None, progress: bool = True,
                  timings: bool = True, stop_after_batches: Optional[int] = None,
                  scans_label: str = "", require_head: Optional[bool] = None,
                  take_lock: bool = True, trace: Any = None) -> Summary:
  """Predicts every series of `scans` not yet in `out` and appends their rows (see the module
  docstring), holding `<out>.lock` meanwhile (`take_lock` False: the caller holds it,
  `output_lock`). `workers` decode processes (0: decode in this
  process, no overlap), `prefetch` batches decoded ahead of the device; `reports` also writes
  each series' HTML page there; `require_head` overrides the run's config.data.require_head.
  `stop_after_batches` ends the call early, as an interruption would (tests). `trace`: a
  `ctjax.train.profiling.StepTrace` the device calls of the batches go through (--profile)."""
  if run.config.task != "drct":
    raise ConfigError(f"{run.workdir}: config.task={run.config.task!r}; ctjax.predict predicts "
                      "DrCT runs (task 'drct')")
  keys = [s.key for s in scans]
  dup = [k for k, n in collections.Counter(keys).items() if n > 1]
  if dup:
    raise CTDataError(f"series key {dup[0]!r} appears twice in the list of scans")
  out = pathlib.Path(out)
  lock = output_lock(out) if take_lock else None
  try:
    return _predict_locked(run, scans, out, keys, batch_size=batch_size, workers=workers,
                           prefetch=prefetch, reports=reports, progress=progress,
                           timings=timings, stop_after_batches=stop_after_batches,
                           scans_label=scans_label, require_head=require_head,
                           trace=trace)
  finally:
    if lock is not None:
      lock.release()


def output_lock(out: str | os.PathLike) -> fileio.FileLock:
  """Takes `<out>.lock` for this process (`fileio.exclusive_lock`), or raises `LockedError`
  naming the process that writes `out`; checks first that `out` can be written."""
  out = pathlib.Path(out)
  output_format(out)
  fileio.writable_file(out, "--out file")
  return fileio.exclusive_lock(lock_path(out), "--out file", target=out,
                               advice="wait for it to end, or write to another --out")


def _predict_locked(run: Any, scans: Sequence[SeriesRef], out: pathlib.Path,
                    keys: Sequence[str], *, batch_size, workers, prefetch, reports, progress,
                    timings, stop_after_batches, scans_label, require_head,
                    trace=None) -> Summary:
  from ctjax.inference import runs
  from ctjax.train import profiling
  from ctjax.inference import scan_reports
  from ctjax.inference.report_html import thresholds
  labels = list(run.config.data.labels)
  thr = thresholds(run.config, len(labels))
  head_required = scan_reports.require_head(run.config, require_head)
  _check_sidecar(out, run)
  output = Output(out, columns(labels, timings))
  devices = int(run.mesh.devices.size)
  bs = int(batch_size or default_batch_size(run))
  if bs % devices:
    raise ConfigError(f"batch size {bs} is not a multiple of the {devices} devices of the mesh")
  todo, seen, skipped, duplicates, elsewhere = [], set(), 0, 0, 0
  paths = {row_identity(r): r["path"] for r in output.rows}
  for s in scans:
    ident = s.identity()
    if ident in output.done:
      skipped += 1
      elsewhere += paths.get(ident) != os.path.realpath(s.path)
    elif ident in seen:
      duplicates += 1
      log.info("%s: the same series as one listed earlier (SeriesInstanceUID %s): not predicted "
               "twice", s.key, s.known_uid)
    else:
      seen.add(ident)
      todo.append(s)
  summary = Summary(os.fspath(out), total=len(scans), skipped=skipped, elsewhere=elsewhere,
                    duplicates=duplicates,
                    batch_size=bs, devices=devices, workers=int(workers))
  page_names = _page_names(keys) if reports else {}
  # Every page on the run's one highlight scale (ctjax.eval.highlight).
  scale = scan_reports.highlight_scale(run) if reports else None
  config = run.config
  batches = [todo[i:i + bs] for i in range(0, len(todo), bs)]
  pending: collections.deque = collections.deque()
  submitted = 0
  pool = bar = None
  warm = {"done": False, "s": 0.0}
  written = {i for i, _ in output.done.items()}   # identities with a row (this run included)

  def warm_up() -> None:
    """Compiles on a batch of air (during worker start-up, else before the first batch with a
    readable series) so that no timed predict call includes compilation."""
    if not warm["done"]:
      tw = time.perf_counter()
      runs.predict_batch(run, _stack([_warmup_batch(config)], bs))
      warm["done"], warm["s"] = True, time.perf_counter() - tw

  def top_up() -> None:
    nonlocal submitted
    while submitted < len(batches) and len(pending) < prefetch + 1:
      refs = batches[submitted]
      if pool is not None:
        pending.append([pool.submit(decode_series, r, config, bool(reports), head_required)
                        for r in refs])
      else:
        pending.append(refs)
      submitted += 1

  trace = trace if trace is not None else profiling.StepTrace(None)
  failed = False
  t_start = time.perf_counter()
  try:
    if workers > 0 and todo:
      _status(f"predict: starting {int(workers)} decode worker(s) and compiling the model for "
              f"batches of {bs} on {devices} device(s) (once)", progress)
      ctx = multiprocessing.get_context("spawn")
      pool = concurrent.futures.ProcessPoolExecutor(int(workers), mp_context=ctx,
                                                    initializer=_worker_init,
                                                    initargs=(os.getpid(),))
      ready = [pool.submit(_worker_ready) for _ in range(int(workers))]
      warm_up()       # while the workers start
      _results(ready)
    summary.startup_s = time.perf_counter() - t_start
    if progress and todo:
      from tqdm import tqdm
      bar = tqdm(total=len(todo), unit="series", desc="predict", smoothing=0.1)
    t0 = time.perf_counter()
    for bi in range(len(batches)):
      if stop_after_batches is not None and bi >= stop_after_batches:
        raise KeyboardInterrupt
      top_up()
      job = pending.popleft()
      top_up()        # keep the workers busy while the device computes this batch
      if pool is not None:
        decoded = _results(job)
      else:
        if not warm["done"] and bi == 0:
          _status(f"predict: compiling the model for batches of {bs} (once)", progress)
        decoded = [decode_series(r, config, bool(reports), head_required) for r in job]
      # A series whose UID was unknown before reading may be one already written.
      kept = []
      for d in decoded:
        if d.info is not None and d.ref.known_uid is None and \
            _identity(d.info.series_uid, None) in written:
          summary.duplicates += 1
          log.info("%s: the same series (SeriesInstanceUID %s) is already in %s: not written "
                   "twice", d.ref.key, d.info.series_uid, out)
        else:
          kept.append(d)
      decoded = kept
      ok = [d for d in decoded if d.error is None]
      outs: dict[int, dict] = {}
      device_share = None
      if ok:
        if not warm["done"]:
          warm_up()
          summary.startup_s += warm["s"]
          t0 += warm["s"]         # compilation is start-up, not throughput
        batch = _stack([d.batch for d in ok], bs)
        td = time.perf_counter()
        with trace.step(bi + 1):
          pred = runs.predict_batch(run, batch)
        trace.done(pred)
        dt = time.perf_counter() - td
        summary.device_s += dt
        device_share = dt / len(ok)
        for i, d in enumerate(ok):
          outs[id(d)] = {k: v[i] for k, v in pred.items()}
      rows = [_row(d, labels, thr, outs.get(id(d)), device_share if d.error is None else None,
                   timings) for d in decoded]
      output.append(rows)
      written.update(row_identity(r) for r in rows)
      if reports:
        for d in ok:
          one = {k: v[None] for k, v in outs[id(d)].items()}
          scan_reports.render_scan_report(run, d.ref.path, d.info, d.batch, d.display, one,
                                       pathlib.Path(reports) / f"{page_names[d.ref.key]}.html",
                                       analysis_seconds=d.seconds + device_share,
                                       scale=scale)
      summary.decode_s += sum(d.seconds for d in decoded)
      summary.predicted += len(ok)
      for d in decoded:
        if d.error is not None:
          summary.failed += 1
          summary.errors.append(d.error)
          log.warning("%s", d.error)
      summary.wall_s = time.perf_counter() - t0
      if bar is not None:
        bar.update(len(job))
        if summary.failed:
          bar.set_postfix(errors=summary.failed, refresh=False)
  except BaseException:
    failed = True
    raise
  finally:
    trace.close()
    if bar is not None:
      bar.close()
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
    wanted = {s.identity() for s in scans}
    failed_rows = [r for r in output.rows if row_identity(r) in wanted and r["status"] == "error"]
    summary.unreadable = len(failed_rows)
    if failed_rows and not summary.errors:
      summary.errors = [r["error"] for r in failed_rows[:1]]
    try:
      _write_sidecar(out, run, labels, thr, output, summary, scans_label)
    except StorageError as e:
      if not failed:
        raise
      log.warning("%s", e)   # the error already on its way says more
  return summary


def _page_names(keys: Sequence[str]) -> dict[str, str]:
  """Report file stems from the series keys, unique and the same in every run (keys order)."""
  from ctjax.inference.scan_reports import _slug
  names: dict[str, str] = {}
  used: set[str] = set()
  for k in keys:
    name = _slug(k.replace("#", "_"))
    while name in used:
      name += "_"
    used.add(name)
    names[k] = name
  return names


def _write_sidecar(out: pathlib.Path, run: Any, labels: Sequence[str], thr: Sequence[float],
                   output: Output, summary: Summary, scans_label: str) -> None:
  from ctjax import __version__
  ok = sum(r["status"] == "ok" for r in output.rows)
  meta = {"schema_version": SCHEMA_VERSION, "ctjax_version": __version__,
          "output": out.name, "format": output.format, "columns": output.columns,
          "csv_lists": "space-separated", "scans": scans_label,
          "run": {"workdir": os.path.abspath(run.workdir), "step": int(run.step),
                  "model": model_name(run), "task": run.config.task,
                  "num_slices": int(run.config.data.num_slices),
                  "image_size": int(run.config.data.image_size),
                  "windows": run.config.data.windows},
          "labels": list(labels), "thresholds": [float(t) for t in thr],
          "rows": len(output.rows), "rows_ok": ok, "rows_error": len(output.rows) - ok,
          "last_invocation": summary.to_json()}
  if not output.rows and not out.exists():
    return
  fileio.atomic_write_text(sidecar_path(out), json.dumps(meta, indent=1, default=str),
                           "writing the predictions' sidecar")


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of a prediction file, values typed as in the JSON-lines form (CSV parsed back,
  `'` of neutralised cells removed). Reads the whole records only (`Output`'s parser)."""
  path = pathlib.Path(path)
  fmt = output_format(path)
  raw = path.read_bytes()
  if fmt == "jsonl":
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
  header = next(csv.reader(io.StringIO(raw.decode("utf-8", "replace"))), None)
  if header is None:
    return []
  return _parse_csv(raw, header, path)[0]


def rows_by_key(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  return {r["scan"]: r for r in rows}
