"""Key-slice report files for DICOM series from a trained DrCT run (DrCT2 paper, Figure 2).

Reads each DICOM folder (`ctjax.data.dicom.read_series`), samples and resizes it exactly as the
data pipeline does (`scan_batch`), predicts with the restored run (`ctjax.inference`), and
renders the page with `ctjax.eval.report.render_report_html` (pure, tested on its own).

    run = load_run("runs/drct2_phantom")
    report_for_scan(run, "scans/CQ500-CT-0", "reports/ct0.html")
    report_for_folder(run, "scans", "reports")      # + reports/index.html

The highlighted area is drawn on the run's fixed scale, `<workdir>/highlight_scale.json`
(`highlight_scale(run)`; written when training ends, `fit_highlight_scale` for older runs), so
every report of a run, and anything else that renders through `render_report_html` with it,
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

from ctjax import inference
from ctjax.errors import ConfigError
from ctjax.eval import highlight as highlight_lib
from ctjax.eval import keyslice
from ctjax.eval.report import (Prediction, Provenance, describe_windows, render_index_html,
                               render_report_html, thresholds)

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




def load_run(workdir: str | os.PathLike, step: Optional[int] = None) -> inference.Run:
  """A restored DrCT run (`ctjax.inference.load_run`) for reports."""
  run = inference.load_run(workdir, step)
  if run.config.task != "drct":
    raise ConfigError(f"{workdir}: config.task={run.config.task!r}; the key-slice report needs "
                      "a DrCT run (task 'drct')")
  return run


def highlight_scale(run: inference.Run) -> Optional[highlight_lib.HighlightScale]:
  """The run's stored highlight scale (`<workdir>/highlight_scale.json`), None if it has none."""
  return highlight_lib.load_scale(run.workdir)


def fit_highlight_scale(run: inference.Run | str | os.PathLike, split: str = "val"
                        ) -> highlight_lib.HighlightScale:
  """Fits and stores the run's highlight scale on `split` (runs trained before it was stored
  at the end of training); needs the run's data. Returns the scale."""
  from ctjax.train.tasks.drct import fit_highlight_scale as fit
  if not isinstance(run, inference.Run):
    run = load_run(run)
  return fit(run, split)


def read_scan(scan_dir: str | os.PathLike, series_uid: Any = None):
  """`read_series` with one clear message when the folder is not a usable CT series."""
  from ctjax.data.dicom import read_series
  from ctjax.errors import CTDataError
  try:
    return read_series(scan_dir, series_uid=series_uid)
  except CTDataError as e:
    detail = str(e)
    where = os.fspath(scan_dir)
    if detail.startswith(where):
      detail = detail[len(where):].lstrip(": ")
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


def report_for_scan(run: inference.Run, scan_dir: str | os.PathLike, out_path: str | os.PathLike,
                    *, series_uid: Any = None,
                    scale: Optional[highlight_lib.HighlightScale] = None) -> ReportResult:
  """Reads `scan_dir`, runs the model, writes one self-contained HTML report to `out_path`.
  `scale`: the highlight scale (default: the run's stored one, `highlight_scale`)."""
  t0 = time.perf_counter()
  if scale is None:
    scale = highlight_scale(run)
  volume = read_scan(scan_dir, series_uid)
  batch, display = scan_batch(volume, run.config)
  out = inference.predict_batch(run, batch)
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
  if volume.notes:
    extra["Reader notes"] = "; ".join(volume.notes)
  skipped = [k for k in volume.skipped if not k.reason.startswith("other series")]
  if skipped:   # files of the other series of a flat folder are not news
    extra["Skipped files"] = f"{len(skipped)} (e.g. {skipped[0].path}: {skipped[0].reason})"
  prov = Provenance(
      scan_path=os.fspath(scan_dir), series_uid=volume.series_uid,
      study_uid=volume.header.get("StudyInstanceUID", ""), num_source_slices=volume.num_slices,
      slice_index=[int(i) for i in batch["slice_index"][0]], spacing_mm=volume.spacing,
      source_shape=volume.hu.shape, model_windows=describe_windows(cfg.data.windows),
      display_window=describe_windows("brain"),
      model_input=f"{cfg.data.num_slices} × {size} × {size} HU → {cfg.model.primary_size} px",
      config_name=str(cfg.get("name", "") or pathlib.Path(run.workdir, "config.json")),
      model_name=f"{'DrCT2' if cfg.model.aps else 'DrCT1'} ({cfg.model.backbone} backbone)",
      checkpoint_step=run.step, workdir=os.fspath(run.workdir),
      created=_dt.datetime.now().isoformat(timespec="seconds"), extra=extra)
  # The page shows the analysis time (read, sample, model); the caller prints the total.
  prov.report_seconds = time.perf_counter() - t0
  page = render_report_html(display, attention, highlight, preds, prov, scale=scale)
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_text(page, encoding="utf-8")
  seconds = time.perf_counter() - t0
  return ReportResult(os.fspath(scan_dir), os.fspath(out_path), volume.series_uid, seconds,
                      [int(i) for i in keyslice.top_k_indices(attention)], preds,
                      volume.num_slices)


@dataclasses.dataclass
class ReportFailure:
  scan_path: str
  series_uid: str
  message: str


def find_series(folder: str | os.PathLike, exclude: Optional[str | os.PathLike] = None
                ) -> list[tuple[str, Optional[str]]]:
  """(folder, series UID or None) for every folder under `folder` that directly holds files.

  A folder with several series (RSNA's flat layout) gives one entry per series; a leaf folder
  with files but no DICOM series gives (folder, None), which reports as a failure naming it; a
  folder with subfolders and no series of its own (a data set root with its CSV) is skipped.
  """
  from ctjax.data.dicom import list_series
  from ctjax.errors import CTDataError
  root = pathlib.Path(folder).absolute()
  exclude = None if exclude is None else pathlib.Path(exclude).absolute()
  if not root.is_dir():
    raise CTDataError("not a folder of scans", folder)
  out = []
  for d in sorted([root] + [p for p in root.rglob("*") if p.is_dir()]):
    if any(part.startswith(".") for part in d.relative_to(root).parts) or (
        exclude is not None and (d == exclude or exclude in d.parents)):
      continue
    if not any(f.is_file() and not f.name.startswith(".") for f in d.iterdir()):
      continue
    try:
      series = list_series(d)
    except CTDataError:
      series = []
    if len(series) > 1:
      out += [(os.fspath(d), s.series_uid) for s in series]
    elif series or not any(p.is_dir() and not p.name.startswith(".") for p in d.iterdir()):
      out.append((os.fspath(d), None))
    # else: a container folder whose files are metadata (manifest.json, labels CSV): skipped.
  return out


def _slug(text: str) -> str:
  keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")
  return keep[-80:] or "scan"


def report_for_folder(run: inference.Run, folder: str | os.PathLike, out_dir: str | os.PathLike,
                      ) -> list[ReportResult | ReportFailure]:
  """One report per series under `folder` into `out_dir`, plus `out_dir/index.html`."""
  from ctjax.errors import CTDataError
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  root = pathlib.Path(folder).absolute()
  results: list[ReportResult | ReportFailure] = []
  used: set[str] = set()
  scale = highlight_scale(run)   # once: every page of the batch on the same scale
  for path, uid in find_series(folder, exclude=out_dir):
    rel = os.path.relpath(path, root)
    name = _slug(rel if rel != "." else root.name) + (f"_{_slug(uid)[-24:]}" if uid else "")
    while name in used:
      name += "_"
    used.add(name)
    try:
      results.append(report_for_scan(run, path, out_dir / f"{name}.html", series_uid=uid,
                                     scale=scale))
      log.info("%s: %.2f s", path, results[-1].seconds)
    except CTDataError as e:
      results.append(ReportFailure(path, uid or "", str(e)))
  (out_dir / "index.html").write_text(render_index_html(results, out_dir), encoding="utf-8")
  return results
