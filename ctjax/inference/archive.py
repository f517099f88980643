"""Batch prediction over CT series: one machine-readable row per series (CSV or JSON lines).

    run = runs.load_run("runs/drct2_phantom", config_overrides=ALL_DEVICES,
                        require_task="drct")   # on every device of this host
    scans = find_scans("archive/")                      # folder of series, one series, a layout
    summary = predict_scans(run, scans, "preds.csv", workers=2)
    print(summary.throughput_line())

Each series goes through exactly the code the reports use: `ctjax.inference.scan_reports.read_scan` +
`ctjax.inference.scan_reports.scan_batch` (the pipeline's own `drct_example`) in a pool of spawned worker
processes (the parent has JAX loaded), while the device predicts the previous batch with
`ctjax.inference.runs.predict_batch` on a mesh of every device (batches are a multiple of the device
count, padded to one fixed size: one compilation). A series that cannot be read is a row with
status "error" and its one-line message; the batch goes on.

The output is append-only and resumable: rows are written a whole batch at a time, in the
order of `scans`, and a rerun skips the series already in the file (a half-written last line
from a killed run is dropped first), so a killed run resumed gives the same file as an
uninterrupted one. Timing columns (`decode_s`, `device_s`) are the only ones that differ
between runs; `timings=False` leaves them out. A sidecar `<out>.json` records the run, the
labels and thresholds, the columns and the throughput of the latest invocation.

Row schema (`columns(labels)`): scan (the row's key: relative folder [+ "#" series UID], or a
layout's scan id), path, status ("ok" | "error"), error, patient_id, study_uid, series_uid,
series_description, num_source_slices, prob_<label> and call_<label> (1 if prob >= the run's
threshold of that label, `ctjax.inference.report_html.thresholds`) per label in the run's order,
key_slices (the 5 most attended distinct slices, rank order, 0-based source indices into the
series ordered along the slice normal), key_sop_uids (their SOPInstanceUIDs), decode_s (read +
sample + resize in the worker), device_s (the series' share of its batch's predict call). CSV
cells: lists space-separated, empty cells for missing values; JSON lines: lists and nulls.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import pathlib
import time
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ctjax.errors import ConfigError, CTDataError, CTJaxError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
# Layout files at a data-set root (`ctjax.data.datasets`), in the order they are looked for.
LAYOUT_FILES = (("manifest.json", "phantom"), ("stage_2_train.csv", "rsna"),
                ("reads.csv", "cq500"), ("blend_labels.csv", "blend"), ("labels.csv", "folder"))
NUM_KEY_SLICES = 5      # the report's key slices (DrCT2 paper, Figure 2)
IDENTITY = ("scan", "path", "status", "error", "patient_id", "study_uid", "series_uid",
            "series_description", "num_source_slices")
TIMING = ("decode_s", "device_s")


class OutputMismatchError(CTJaxError):
  """An existing output file was written with other columns, format or model."""


@dataclasses.dataclass(frozen=True)
class SeriesRef:
  """One series to predict: a folder (+ series UID when it holds several) or a list of files."""
  key: str                                  # unique and stable: what a resumed run matches on
  path: str                                 # folder shown in the row and the report
  files: Optional[tuple[str, ...]] = None   # a data-set layout's files; None: read `path`
  series_uid: Optional[str] = None          # selector for folders holding several series


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


def find_scans(path: str | os.PathLike, *, layout: str = "auto") -> list[SeriesRef]:
  """Every series under `path`: a data-set root (`layout`, or "auto" = by its index file), a
  folder of series folders (`ctjax.inference.scan_reports.find_series`), one series folder or one file."""
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
  refs = []
  for folder, uid in find_series(p):
    rel = pathlib.Path(os.path.relpath(folder, root)).as_posix()
    key = root.name if rel == "." else rel
    refs.append(SeriesRef(key + (f"#{uid}" if uid else ""), folder, None, uid))
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
  return " ".join(str(e).split()) or type(e).__name__


def decode_series(ref: SeriesRef, config: Any, with_display: bool = False) -> Decoded:
  """Worker: one series → its model batch exactly as the reports build it (or the reason not).

  Runs in a spawned process (top-level, picklable arguments); returns small arrays only.
  """
  from ctjax.inference import scan_reports
  t0 = time.perf_counter()
  try:
    volume = scan_reports.read_scan(list(ref.files) if ref.files else ref.path, ref.series_uid)
    batch, display = scan_reports.scan_batch(volume, config)
  except (CTDataError, OSError) as e:
    return Decoded(ref, time.perf_counter() - t0, error=_one_line(e))
  sampled = batch["slice_index"][0]
  return Decoded(ref, time.perf_counter() - t0, batch=batch,
                 display=display if with_display else None, info=scan_reports.ScanInfo.of(volume),
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


class Output:
  """The append-only output file: existing keys, whole-batch appends, one format."""

  def __init__(self, path: str | os.PathLike, cols: Sequence[str]):
    self.path = pathlib.Path(path)
    self.format = output_format(self.path)
    self.columns = list(cols)
    self.keys: set[str] = set()
    self.rows: list[dict[str, Any]] = []
    if self.path.exists():
      self._read_existing()

  def _read_existing(self) -> None:
    raw = self.path.read_bytes()
    if raw and not raw.endswith(b"\n"):      # a run killed mid-write: drop the partial line
      cut = raw.rfind(b"\n") + 1
      log.warning("%s: dropping a half-written last line (%d bytes)", self.path, len(raw) - cut)
      with open(self.path, "r+b") as f:
        f.truncate(cut)
      raw = raw[:cut]
    text = raw.decode("utf-8")
    if not text:
      return
    if self.format == "csv":
      reader = csv.reader(io.StringIO(text))
      header = next(reader)
      if header != self.columns:
        raise OutputMismatchError(
            f"{self.path}: its columns differ from this run's ({len(header)} vs "
            f"{len(self.columns)}, e.g. {sorted(set(header) ^ set(self.columns))[:3]}); write "
            "to another --out")
      for values in reader:
        self.rows.append(dict(zip(header, values)))
    else:
      for n, line in enumerate(text.splitlines(), 1):
        try:
          row = json.loads(line)
        except ValueError as e:
          raise OutputMismatchError(f"{self.path}: line {n} is not JSON ({e})") from e
        if list(row) != self.columns:
          raise OutputMismatchError(f"{self.path}: line {n} has other fields than this run's "
                                    "rows; write to another --out")
        self.rows.append(row)
    self.keys = {r["scan"] for r in self.rows}

  def append(self, rows: Sequence[dict[str, Any]]) -> None:
    """Writes `rows` in one call and flushes them to disk (whole lines only)."""
    if not rows:
      return
    buf = io.StringIO()
    new_file = not self.path.exists() or self.path.stat().st_size == 0
    if self.format == "csv":
      writer = csv.writer(buf, lineterminator="\n")
      if new_file:
        writer.writerow(self.columns)
      for r in rows:
        writer.writerow([_csv_cell(r[c]) for c in self.columns])
    else:
      for r in rows:
        buf.write(json.dumps({c: r[c] for c in self.columns}) + "\n")
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a", encoding="utf-8", newline="") as f:
      f.write(buf.getvalue())
      f.flush()
      os.fsync(f.fileno())
    self.rows.extend(rows)
    self.keys.update(r["scan"] for r in rows)


def _csv_cell(v: Any) -> str:
  if v is None:
    return ""
  if isinstance(v, (list, tuple)):
    return " ".join(str(x) for x in v)
  return str(v)


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
  header = d.info.header if d.info is not None else {}
  row: dict[str, Any] = {
      "scan": d.ref.key, "path": d.ref.path, "status": "error" if d.error else "ok",
      "error": d.error, "patient_id": header.get("PatientID"),
      "study_uid": header.get("StudyInstanceUID"),
      "series_uid": d.info.series_uid if d.info is not None else d.ref.series_uid,
      "series_description": header.get("SeriesDescription"),
      "num_source_slices": d.info.num_slices if d.info is not None else None}
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
  skipped: int = 0             # already in the output
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
  except ValueError:
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


def predict_scans(run: Any, scans: Sequence[SeriesRef], out: str | os.PathLike, *,
                  batch_size: Optional[int] = None, workers: int = 2, prefetch: int = 2,
                  reports: Optional[str | os.PathLike] = None, progress: bool = True,
                  timings: bool = True, stop_after_batches: Optional[int] = None,
                  scans_label: str = "") -> Summary:
  """Predicts every series of `scans` not yet in `out` and appends their rows (see the module
  docstring). `workers` decode processes (0: decode in this process, no overlap), `prefetch`
  batches decoded ahead of the device; `reports` also writes each series' HTML page there.
  `stop_after_batches` ends the call early, as an interruption would (tests)."""
  from ctjax.inference import runs
  from ctjax.inference import scan_reports
  from ctjax.inference.report_html import thresholds
  if run.config.task != "drct":
    raise ConfigError(f"{run.workdir}: config.task={run.config.task!r}; ctjax.predict predicts "
                      "DrCT runs (task 'drct')")
  keys = [s.key for s in scans]
  dup = [k for k, n in collections.Counter(keys).items() if n > 1]
  if dup:
    raise CTDataError(f"series key {dup[0]!r} appears twice in the list of scans")
  out = pathlib.Path(out)
  labels = list(run.config.data.labels)
  thr = thresholds(run.config, len(labels))
  _check_sidecar(out, run)
  output = Output(out, columns(labels, timings))
  devices = int(run.mesh.devices.size)
  bs = int(batch_size or default_batch_size(run))
  if bs % devices:
    raise ConfigError(f"batch size {bs} is not a multiple of the {devices} devices of the mesh")
  todo = [s for s in scans if s.key not in output.keys]
  summary = Summary(os.fspath(out), total=len(scans), skipped=len(scans) - len(todo),
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
        pending.append([pool.submit(decode_series, r, config, bool(reports)) for r in refs])
      else:
        pending.append(refs)
      submitted += 1

  t_start = time.perf_counter()
  try:
    if workers > 0 and todo:
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
      decoded = (_results(job) if pool is not None
                 else [decode_series(r, config, bool(reports)) for r in job])
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
        pred = runs.predict_batch(run, batch)
        dt = time.perf_counter() - td
        summary.device_s += dt
        device_share = dt / len(ok)
        for i, d in enumerate(ok):
          outs[id(d)] = {k: v[i] for k, v in pred.items()}
      rows = [_row(d, labels, thr, outs.get(id(d)), device_share if d.error is None else None,
                   timings) for d in decoded]
      output.append(rows)
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
        bar.update(len(decoded))
        if summary.failed:
          bar.set_postfix(errors=summary.failed, refresh=False)
  finally:
    if bar is not None:
      bar.close()
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
    wanted = set(keys)
    failed_rows = [r for r in output.rows if r["scan"] in wanted and r["status"] == "error"]
    summary.unreadable = len(failed_rows)
    if failed_rows and not summary.errors:
      summary.errors = [r["error"] for r in failed_rows[:1]]
    _write_sidecar(out, run, labels, thr, output, summary, scans_label)
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
          "scans": scans_label,
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
  side = sidecar_path(out)
  tmp = side.with_name(side.name + ".tmp")
  tmp.write_text(json.dumps(meta, indent=1, default=str))
  os.replace(tmp, side)


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of a prediction file, values typed as in the JSON-lines form (CSV parsed back)."""
  path = pathlib.Path(path)
  fmt = output_format(path)
  if fmt == "jsonl":
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  return [{k: _parse_cell(k, v) for k, v in r.items()} for r in rows]


def _parse_cell(column: str, value: str) -> Any:
  if value == "":
    return None
  if column in ("key_slices",):
    return [int(v) for v in value.split()]
  if column == "key_sop_uids":
    return value.split()
  if column.startswith("prob_") or column in TIMING:
    return float(value)
  if column.startswith("call_") or column == "num_source_slices":
    return int(value)
  return value


def rows_by_key(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  return {r["scan"]: r for r in rows}
