"""Key-slice report files for DICOM series from a trained DrCT run (DrCT2 paper, Figure 2).

Reads each DICOM folder (`ctjax.data.dicom.read_series`), samples and resizes it exactly as the
data pipeline does (`scan_batch`), predicts with the restored run (`ctjax.inference.runs`), and
renders the page with `ctjax.inference.report_html.render_report_html` (pure, tested on its own).

    run = runs.load_run("runs/drct2_phantom", require_task="drct")
    report_for_scan(run, "scans/CQ500-CT-0", "reports/ct0.html")
    report_for_folder(run, "scans", "reports")      # + reports/index.html

`report_for_scan` = `read_scan` → `scan_batch` → `runs.predict_batch` →
`render_scan_report`; the last needs only the batch, the outputs and a `ScanInfo`, so
`ctjax.inference.archive` writes the pages of series it has already predicted in batches.

The highlighted area is drawn on the run's fixed scale, `<workdir>/highlight_scale.json`
(`highlight_scale(run)`; written when training ends, `ctjax.inference.highlight_scale`), so
every report of a run — batch reports, predictions' reports, the reader study's assisted arm —
shows the same value in the same colour.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import pathlib
import time
from typing import Any, Optional

import numpy as np

from ctjax.eval import highlight as highlight_lib
from ctjax.eval import keyslice
from ctjax.inference import runs
from ctjax.inference.report_html import (Prediction, Provenance, describe_windows,
                                         render_index_html, render_report_html, thresholds)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ReportResult:
  """What one report run produced (for logs, the batch index page and tests)."""
  scan_path: str
  out_path: str
  series_uid: str
  seconds: float
  key_slices: list[int]            # sampled indices, rank order
  predictions: list[Prediction]
  num_source_slices: int
  slice_index: list[int] = dataclasses.field(default_factory=list)       # [m] sampled → source
  slice_attention: list[float] = dataclasses.field(default_factory=list)  # [m] sampled order


def highlight_scale(run: runs.Run) -> Optional[highlight_lib.HighlightScale]:
  """The run's stored highlight scale (`<workdir>/highlight_scale.json`), None if it has none."""
  return highlight_lib.load_scale(run.workdir)


def read_scan(scan_dir: Any, series_uid: Any = None):
  """`read_series` with one clear message when the folder (or list of files: a data-set
  layout's scan) is not a usable CT series."""
  from ctjax.data.dicom import read_series
  from ctjax.errors import CTDataError
  try:
    return read_series(scan_dir, series_uid=series_uid)
  except CTDataError as e:
    detail = str(e)
    if isinstance(scan_dir, (str, os.PathLike)):
      where = os.fspath(scan_dir)
    else:
      files = [os.fspath(f) for f in scan_dir]
      where = os.path.commonpath(files) if files else "<no files>"
    if detail.startswith(where + ": "):
      detail = detail[len(where) + 2:]
    elif detail.startswith(where + os.sep):      # a file of the series: its name suffices
      detail = detail[len(where) + 1:]
    raise type(e)(f"not a usable CT series ({detail})", where) from e


def scan_batch(volume: Any, config: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """A DICOM volume → (a one-scan model batch exactly as the data pipeline builds it, display
  images of the sampled source slices in the brain window).

  Evaluation sampling and `ctjax.data.pipeline.drct_example` (the pipeline's own builder);
  slices resized to config.data.image_size by the cache's `resize_hu` (same pixels as training).
  """
  from ctjax.data.cache import resize_hu
  from ctjax.data.pipeline import drct_example, stack
  from ctjax.data.windows import apply_windows
  num_labels = len(config.data.labels)
  size = int(config.data.image_size)
  example = drct_example(lambda idx: resize_hu(volume.hu[idx], size), volume.num_slices,
                         np.zeros(num_labels, np.float32),
                         np.zeros((volume.num_slices, num_labels), np.uint8),
                         m=int(config.data.num_slices))
  display = apply_windows(volume.hu[example["slice_index"]], "brain")[..., 0]
  return stack([example]), display


@dataclasses.dataclass
class ScanInfo:
  """What a report or a prediction row needs of a series besides its pixels: small enough to
  cross a process boundary (the prediction command decodes series in worker processes)."""
  series_uid: str
  num_slices: int
  source_shape: tuple[int, ...]      # (S, H, W) of the decoded volume
  spacing: tuple[float, ...]         # (z, y, x) mm
  header: dict[str, str]
  notes: list[str]
  skipped: list[Any]                 # ctjax.data.dicom.Skip
  qa_flags: list[str] = dataclasses.field(default_factory=list)   # ctjax.data.qa.FLAGS order
  head: Optional[bool] = None        # ctjax.data.headcheck's verdict (None: not checked)
  head_reasons: tuple[str, ...] = ()   # why not, when `head` is False

  @classmethod
  def of(cls, volume: Any) -> "ScanInfo":
    """The series' identity, geometry, head-CT verdict and QA flags (`ctjax.data.qa.flags`)."""
    from ctjax.data import headcheck, qa
    verdict = headcheck.check_volume(volume)
    return cls(volume.series_uid, volume.num_slices, tuple(int(n) for n in volume.hu.shape),
               tuple(float(v) for v in volume.spacing), dict(volume.header),
               list(volume.notes), list(volume.skipped), qa.flags(volume, head=verdict),
               bool(verdict.is_head), tuple(verdict.reasons))


def require_head(config: Any, override: Optional[bool] = None) -> bool:
  """Whether non-head series are refused: `override` (a command's --require_head), else the
  run's config.data.require_head (True for runs saved before the field existed)."""
  if override is not None:
    return bool(override)
  from ctjax.data.cache import data_option
  return bool(data_option(config, "require_head"))


def check_head(info: ScanInfo, where: Any, required: bool) -> None:
  """`NotHeadCTError` (one line naming `where` and the verdict's reasons) when `required` and
  the series is no head CT (`ctjax.data.headcheck`)."""
  if required and info.head is False:
    from ctjax.errors import NotHeadCTError
    raise NotHeadCTError(
        f"not a head CT ({'; '.join(info.head_reasons)}); the run reads head CT only "
        "(config.data.require_head): --norequire_head reads it anyway, for research", where)


def report_for_scan(run: runs.Run, scan_dir: str | os.PathLike, out_path: str | os.PathLike,
                    *, series_uid: Any = None,
                    scale: Optional[highlight_lib.HighlightScale] = None,
                    require: Optional[bool] = None) -> ReportResult:
  """Reads `scan_dir`, runs the model, writes one self-contained HTML report to `out_path`.
  `scale`: the highlight scale (default: the run's stored one, `highlight_scale`); `require`:
  refuse a series that is no head CT (`NotHeadCTError`; default: the run's
  config.data.require_head)."""
  t0 = time.perf_counter()
  if scale is None:
    scale = highlight_scale(run)
  volume = read_scan(scan_dir, series_uid)
  info = ScanInfo.of(volume)
  check_head(info, scan_dir, require_head(run.config, require))
  batch, display = scan_batch(volume, run.config)
  out = runs.predict_batch(run, batch)
  return render_scan_report(run, scan_dir, info, batch, display, out, out_path,
                            analysis_seconds=time.perf_counter() - t0, scale=scale)


def render_scan_report(run: runs.Run, scan_dir: str | os.PathLike, info: ScanInfo,
                       batch: dict[str, np.ndarray], display: np.ndarray,
                       out: dict[str, np.ndarray], out_path: str | os.PathLike, *,
                       analysis_seconds: float,
                       scale: Optional[highlight_lib.HighlightScale] = None) -> ReportResult:
  """The page of one scan from its model batch (`scan_batch`), display images and the model's
  outputs for it (`runs.predict_batch`, leading axis 1): no model call, so batch
  prediction can write reports of what it already predicted. `analysis_seconds` (read, sample,
  model) is shown on the page; `scale` is the run's highlight scale (default: its stored one)."""
  t0 = time.perf_counter()
  if scale is None:
    scale = highlight_scale(run)
  names = list(run.config.data.labels)
  probs = out["probs"][0]
  preds = [Prediction(n, float(p), t) for n, p, t in zip(names, probs,
                                                        thresholds(run.config, len(names)))]
  attention = out["slice_attention"][0]
  highlight = out["highlight"][0]
  cfg = run.config
  size = int(cfg.data.image_size)
  extra = {}
  if "key_indices" in out:
    extra["APS key slices (sampled, m_key)"] = ", ".join(
        str(int(i) + 1) for i in sorted(out["key_indices"][0]))
  if info.notes:
    extra["Reader notes"] = "; ".join(info.notes)
  skipped = [k for k in info.skipped if not k.reason.startswith("other series")]
  if skipped:   # files of the other series of a flat folder are not news
    extra["Skipped files"] = f"{len(skipped)} (e.g. {skipped[0].path}: {skipped[0].reason})"
  hdr = info.header
  prov = Provenance(
      scan_path=os.fspath(scan_dir), series_uid=info.series_uid,
      patient_id=hdr.get("PatientID", ""), qa_flags=list(info.qa_flags),
      head="" if info.head is None else ("head CT" if info.head else
                                         "not a head CT: " + "; ".join(info.head_reasons)),
      study_uid=hdr.get("StudyInstanceUID", ""),
      series_description=hdr.get("SeriesDescription", ""),
      kernel=hdr.get("ConvolutionKernel", ""), slice_thickness=hdr.get("SliceThickness", ""),
      study_date=hdr.get("StudyDate", ""), num_source_slices=info.num_slices,
      slice_index=[int(i) for i in batch["slice_index"][0]], spacing_mm=info.spacing,
      source_shape=info.source_shape, model_windows=describe_windows(cfg.data.windows),
      display_window=describe_windows("brain"),
      model_input=f"{cfg.data.num_slices} × {size} × {size} HU → {cfg.model.primary_size} px",
      config_name=str(cfg.get("name", "") or pathlib.Path(run.workdir, "config.json")),
      model_name=f"{'DrCT2' if cfg.model.aps else 'DrCT1'} ({cfg.model.backbone} backbone)",
      checkpoint_step=run.step, workdir=os.fspath(run.workdir),
      created=_dt.datetime.now().isoformat(timespec="seconds"), extra=extra)
  # The page shows the analysis time (read, sample, model); the caller prints the total.
  prov.report_seconds = analysis_seconds
  page = render_report_html(display, attention, highlight, preds, prov, scale=scale)
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text(page, encoding="utf-8")
  seconds = analysis_seconds + time.perf_counter() - t0
  return ReportResult(os.fspath(scan_dir), os.fspath(out_path), info.series_uid, seconds,
                      [int(i) for i in keyslice.top_k_indices(attention)], preds,
                      info.num_slices, prov.slice_index,
                      [float(a) for a in np.asarray(attention)])


@dataclasses.dataclass
class ReportFailure:
  scan_path: str
  series_uid: str
  message: str


@dataclasses.dataclass
class ReportSkipped:
  """A series the run's series policy leaves out (as training does): not reported."""
  scan_path: str
  series_uid: str
  reason: str


def select_series(found: list[tuple[str, Optional[str]]], config: Any
                  ) -> tuple[list[tuple[str, Optional[str]]], list[ReportSkipped]]:
  """`found` (from `find_series`) split by the run's series policy (`config.data.series`, the
  rule its training data were chosen by; `ctjax.data.series_policy`): (series to report,
  series left out with the reason). Series are grouped into studies by StudyInstanceUID (for
  `one_per_study`); a folder without a readable series stays in the first list, so that its
  report fails with the reader's message."""
  from ctjax.data import series_policy
  from ctjax.data.cache import series_options
  opts = series_options(config)
  described: dict[str, list] = {}
  studies: dict[str, list] = {}
  key_of: dict[tuple[str, Optional[str]], Any] = {}
  for path, uid in found:
    if path not in described:
      described[path] = series_policy.describe_folder(path)
    match = [s for s in described[path] if s.series_uid and (uid is None or s.series_uid == uid)]
    if len(match) == 1:
      s = match[0]
      studies.setdefault(s.study_uid or path, []).append(s)
      key_of[(path, uid)] = s
  decided = {id(d.series): d for d in series_policy.select(studies, opts)}
  keep, skipped = [], []
  for path, uid in found:
    s = key_of.get((path, uid))
    d = decided.get(id(s)) if s is not None else None
    if d is None or d.kept:
      keep.append((path, uid))
    else:
      skipped.append(ReportSkipped(path, uid or s.series_uid, d.reason))
  return keep, skipped


def find_series(folder: str | os.PathLike, exclude: Optional[str | os.PathLike] = None,
                *, uids: Optional[dict[str, str]] = None,
                progress: Optional[Any] = None) -> list[tuple[str, Optional[str]]]:
  """(folder, series UID or None) for every folder under `folder` that directly holds files.

  A folder with several series (RSNA's flat layout) gives one entry per series; a leaf folder
  with files but no DICOM series gives (folder, None), which reports as a failure naming it; a
  folder with subfolders and no series of its own (a data set root with its CSV) is skipped. A
  folder that cannot be listed (permission denied) is an entry too: reading it gives the OS's
  reason. `uids`, when given, receives {folder: its one series' UID} for the single-series
  folders (read from the headers already, so callers can key series without reading again);
  `progress(n)` is called after each folder looked at.
  """
  from ctjax.data.dicom import list_series
  from ctjax.errors import CTDataError
  root = pathlib.Path(folder).absolute()
  exclude = None if exclude is None else pathlib.Path(exclude).absolute()
  if not root.is_dir():
    raise CTDataError("not a folder of scans", folder)
  out = []
  for d in sorted([root] + [p for p in root.rglob("*") if p.is_dir()]):
    if progress is not None:
      progress(1)
    if any(part.startswith(".") for part in d.relative_to(root).parts) or (
        exclude is not None and (d == exclude or exclude in d.parents)):
      continue
    try:
      entries = list(d.iterdir())
    except OSError:        # unreadable: an entry of its own, whose read says why
      out.append((os.fspath(d), None))
      continue
    if not any(f.is_file() and not f.name.startswith(".") for f in entries):
      continue
    try:
      series = list_series(d)
    except CTDataError:
      series = []
    if len(series) > 1:
      out += [(os.fspath(d), s.series_uid) for s in series]
    elif series or not any(p.is_dir() and not p.name.startswith(".") for p in entries):
      out.append((os.fspath(d), None))
      if series and uids is not None:
        uids[os.fspath(d)] = series[0].series_uid
    # else: a container folder whose files are metadata (manifest.json, labels CSV): skipped.
  return out


def _slug(text: str) -> str:
  keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")
  return keep[-80:] or "scan"


def report_for_folder(run: runs.Run, folder: str | os.PathLike, out_dir: str | os.PathLike,
                      *, require: Optional[bool] = None) -> list[ReportResult | ReportFailure]:
  """One report per series under `folder` into `out_dir`, plus `out_dir/index.html`.

  The series are chosen by the run's series policy (`select_series`: the training rule, so a
  bone or localizer series of a CQ500 study is not reported); those left out are logged and
  listed on the index page with the reason. A series that cannot be read, or is no head CT
  (`require`, default the run's config.data.require_head), is a failure entry."""
  from ctjax.errors import CTDataError
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  root = pathlib.Path(folder).absolute()
  results: list[ReportResult | ReportFailure] = []
  used: set[str] = set()
  scale = highlight_scale(run)   # once: every page of the batch on the same scale
  found, skipped = select_series(find_series(folder, exclude=out_dir), run.config)
  for s in skipped:
    log.info("%s: not reported (series policy): %s", s.scan_path, s.reason)
  for path, uid in found:
    rel = os.path.relpath(path, root)
    name = _slug(rel if rel != "." else root.name) + (f"_{_slug(uid)[-24:]}" if uid else "")
    while name in used:
      name += "_"
    used.add(name)
    try:
      results.append(report_for_scan(run, path, out_dir / f"{name}.html", series_uid=uid,
                                     scale=scale, require=require))
      log.info("%s: %.2f s", path, results[-1].seconds)
    except CTDataError as e:
      results.append(ReportFailure(path, uid or "", str(e)))
  (out_dir / "index.html").write_text(render_index_html(results, out_dir, skipped),
                                      encoding="utf-8")
  return results
