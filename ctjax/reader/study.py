"""A reader study on disk: which scans, their images, the model's reports, made once.

DrCT2 paper, section VI.B: readers read a random sample of the test split alone, then — after
a washout — in a new random order with the DrCT2 report. `create_study` fixes everything that
must not change while the study runs, up front:

```
STUDY/study.json               labels, arms, washout, seed, the run, the cases and their truth
STUDY/reads.sqlite             readers, their case orders, every answer (ctjax.reader.db)
STUDY/cases/<case_id>/hu.npy       the full series in HU, int16 [S, H, W] (all slices)
STUDY/cases/<case_id>/report.html  the model's report (ctjax.reporting), shown when assisted
STUDY/cases/<case_id>/model.json   the model's outputs as data (probabilities, attention, …)
STUDY/cases/<case_id>/dicom/       links to the case's source DICOM files (provenance)
```

The viewer gets HU, not pictures: the browser windows the int16 slices itself (any window,
the presets brain / subdural / bone of `ctjax.data.windows.PRESETS`), at 2 bytes a pixel once
per case, instead of one lossy or 3× larger PNG per slice and window. Case ids are random, so a
URL tells a reader nothing about a case's place in another order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import tempfile
import time
from typing import Any, Optional, Sequence

import numpy as np

from ctjax import errors

log = logging.getLogger(__name__)

FORMAT = 1
STUDY_FILE = "study.json"
DB_FILE = "reads.sqlite"
ARMS = ("alone", "assisted")                 # DrCT2 VI.B: Experiment 1, Experiment 2
DEFAULT_WASHOUT_DAYS = 7.0                   # VI.B "After an interval of one week"
DEFAULT_NUM_SCANS = 148                      # VI.B "148 sets of brain CT scans"
CONFIDENCE_LEVELS = {                        # VI.B: four levels, 0–3
    0: "completely uncertain", 1: "slightly certain", 2: "high probability",
    3: "full confidence"}
VIEW_WINDOWS = ("brain", "subdural", "bone")  # the viewer's presets (ctjax.data.windows)


@dataclasses.dataclass
class ScanSource:
  """One scan to put into a study."""
  scan_id: str
  patient_id: str
  files: Optional[list[str]]       # the series' files, or None: read `folder`
  folder: Optional[str]
  series_uid: Optional[str]
  truth: Optional[list[int]]       # [L] 0/1, None when the data set has no labels


@dataclasses.dataclass
class Case:
  case_id: str
  scan_id: str
  patient_id: str
  series_uid: str
  truth: Optional[list[int]]
  shape: list[int]                 # [S, H, W] of hu.npy
  spacing: list[float]             # (z, y, x) mm of the source series

  @property
  def num_slices(self) -> int:
    return int(self.shape[0])


class Study:
  """A created study folder (read-only view of study.json and the case files)."""

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)
    path = self.root / STUDY_FILE
    if not path.is_file():
      raise errors.StudyError(f"{path}: no study here (make one with python -m ctjax.reader "
                              "create)")
    try:
      self.meta = json.loads(path.read_text())
    except ValueError as e:
      raise errors.StudyError(f"{path}: not valid JSON ({e})") from e
    if self.meta.get("format") != FORMAT:
      raise errors.StudyError(f"{path}: study format {self.meta.get('format')!r}, this "
                              f"version reads {FORMAT}")
    self.cases = [Case(**c) for c in self.meta["cases"]]
    self._by_id = {c.case_id: c for c in self.cases}

  @property
  def labels(self) -> list[str]:
    return list(self.meta["labels"])

  @property
  def arms(self) -> list[str]:
    return list(self.meta["arms"])

  @property
  def washout_days(self) -> float:
    return float(self.meta["washout_days"])

  @property
  def seed(self) -> int:
    return int(self.meta["seed"])

  @property
  def name(self) -> str:
    return str(self.meta.get("name", self.root.name))

  @property
  def db_path(self) -> pathlib.Path:
    return self.root / DB_FILE

  @property
  def has_truth(self) -> bool:
    return all(c.truth is not None for c in self.cases)

  def case(self, case_id: str) -> Case:
    if case_id not in self._by_id:
      raise errors.StudyError(f"{self.root}: no case {case_id!r}")
    return self._by_id[case_id]

  def case_dir(self, case_id: str) -> pathlib.Path:
    return self.root / "cases" / self.case(case_id).case_id

  def hu_path(self, case_id: str) -> pathlib.Path:
    return self.case_dir(case_id) / "hu.npy"

  def report_path(self, case_id: str) -> pathlib.Path:
    return self.case_dir(case_id) / "report.html"

  def model_output(self, case_id: str) -> dict[str, Any]:
    return json.loads((self.case_dir(case_id) / "model.json").read_text())


# ------------------------------------------------------------------------------ scan choice


def _sample(items: Sequence[Any], num: int, seed: int, what: str) -> list[Any]:
  if num <= 0 or num >= len(items):
    if num > len(items):
      log.warning("%s has %d scans, fewer than the %d asked for; the study uses all of them",
                  what, len(items), num)
    return list(items)
  pick = np.random.default_rng(seed).choice(len(items), size=num, replace=False)
  return [items[i] for i in sorted(pick)]


def _truth(labels: np.ndarray) -> list[int]:
  return [int(v > 0.5) for v in np.asarray(labels).reshape(-1)]


def test_split_scans(config: Any, run_workdir: str | os.PathLike, num: int, seed: int, *,
                     progress: bool = True) -> tuple[dict[str, Any], list[ScanSource]]:
  """A seeded random sample of the run's test split, exactly the split the run held out.

  The split is `ctjax.data.cache.split_indices` over the run's prepared cache (the scans it
  decoded, in its order), as `ctjax.data.pipeline.build_splits` makes it for training.
  """
  from ctjax.data import cache
  path = cache.ensure_cache(config, os.fspath(run_workdir), progress=progress)
  scans = cache.CachedScans(path)
  idx = cache.split_indices(config, [s.patient_id for s in scans.scans],
                            np.stack([s.labels for s in scans.scans]))["test"]
  metas = _sample([scans.scans[int(i)] for i in idx], num, seed, "the run's test split")
  out = [ScanSource(m.scan_id, m.patient_id, list(m.info["files"]), None,
                    m.info.get("series_uid"), _truth(m.labels)) for m in metas]
  info = {"kind": "test_split", "cache": str(path), "layout": scans.manifest["layout"],
          "fold": int(cache.data_option(config, "fold")), "num_available": int(len(idx))}
  return info, out


def dataset_scans(layout: str, root: str | os.PathLike, num: int, seed: int
                  ) -> tuple[dict[str, Any], list[ScanSource]]:
  """A seeded random sample of every scan of a data set in a layout the data layer reads."""
  from ctjax.data import datasets
  ds = datasets.load(layout, root)
  recs = _sample(sorted(ds.scans, key=lambda r: r.scan_id), num, seed, f"{root}")
  out = [ScanSource(r.scan_id, r.patient_id, list(r.files), None, r.series_uid,
                    _truth(r.labels)) for r in recs]
  info = {"kind": "dataset", "layout": layout, "root": str(pathlib.Path(root).absolute()),
          "labels": list(ds.labels), "num_available": len(ds.scans)}
  return info, out


def folder_scans(folder: str | os.PathLike, num: int, seed: int
                 ) -> tuple[dict[str, Any], list[ScanSource]]:
  """Every DICOM series under a folder (no truth: accuracy needs a labelled layout)."""
  from ctjax.reporting import find_series
  found = find_series(folder)
  found = _sample(found, num, seed, f"{folder}")
  root = pathlib.Path(folder).absolute()
  out = []
  for path, uid in found:
    rel = os.path.relpath(path, root)
    scan_id = (rel if rel != "." else root.name) + (f"#{uid}" if uid else "")
    out.append(ScanSource(scan_id, scan_id, None, path, uid, None))
  return {"kind": "folder", "root": str(root), "num_available": len(found)}, out


# ---------------------------------------------------------------------------------- create


def _case_ids(n: int, seed: int) -> list[str]:
  rng = np.random.default_rng([seed, 0xC45E])
  ids: list[str] = []
  while len(ids) < n:
    cid = f"{int(rng.integers(0, 16 ** 8)):08x}"
    if cid not in ids:
      ids.append(cid)
  return ids


def _link_folder(src: ScanSource, dest: pathlib.Path) -> pathlib.Path:
  """A folder holding only this series (links), so that reading it never lists a data set."""
  if src.files is None:
    return pathlib.Path(src.folder)
  dest.mkdir(parents=True, exist_ok=True)
  for i, f in enumerate(src.files):
    link = dest / f"{i:05d}_{pathlib.Path(f).name}"
    if not link.exists():
      os.symlink(os.path.abspath(f), link)
  return dest


def _write_json(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=1))
  os.replace(tmp, path)


def create_study(study_dir: str | os.PathLike, run_workdir: str | os.PathLike, *,
                 scans: Optional[tuple[dict[str, Any], list[ScanSource]]] = None,
                 num_scans: int = DEFAULT_NUM_SCANS, seed: int = 0,
                 washout_days: float = DEFAULT_WASHOUT_DAYS, name: str = "",
                 step: Optional[int] = None, view_size: int = 0,
                 progress: Optional[bool] = None, run: Any = None) -> Study:
  """Makes the study folder: cases, images, the model's reports (once), the empty database.

  `scans` (from `dataset_scans` / `folder_scans`) overrides the default, a seeded sample of
  `num_scans` scans of the run's test split. `view_size` > 0 resizes the stored slices to that
  many pixels a side (the paper's readers saw 224 × 224); 0 keeps the source resolution.
  `run` is an already opened run (`model_reports.open_run`, a `ctjax.inference.Run`; tests
  share one). `progress` None follows
  the run's config.log.progress_bar (default on).
  """
  from ctjax.data import cache, dicom
  from ctjax.reader import db, model_reports
  root = pathlib.Path(study_dir)
  if (root / STUDY_FILE).exists():
    raise errors.StudyError(f"{root / STUDY_FILE}: a study already exists here; choose a new "
                            "folder")
  if root.exists() and any(root.iterdir()):
    raise errors.StudyError(f"{root}: folder is not empty (an interrupted create? delete it "
                            "and run create again)")
  if washout_days < 0:
    raise errors.StudyError(f"washout of {washout_days} days: must be >= 0")
  run = run if run is not None else model_reports.open_run(run_workdir, step=step)
  info = model_reports.run_info(run)
  config = model_reports.run_config(run)
  if progress is None:
    log_cfg = config.get("log") if hasattr(config, "get") else None
    progress = bool(log_cfg.get("progress_bar", True)) if log_cfg is not None else True
  if scans is None:
    scans = test_split_scans(config, run_workdir, num_scans, seed, progress=progress)
  source, picked = scans
  if not picked:
    raise errors.StudyError(f"no scans to read ({source})")
  data_labels = source.get("labels")
  if data_labels is not None and list(data_labels) != info["labels"]:
    raise errors.StudyError(f"the data set's labels {data_labels} differ from the run's "
                            f"{info['labels']}; the study compares answers with truth by label")
  root.mkdir(parents=True, exist_ok=True)
  ids = _case_ids(len(picked), seed)
  cases: list[Case] = []
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(picked), desc="study cases", unit="scan")
  t0 = time.perf_counter()
  try:
    for k, (cid, src) in enumerate(zip(ids, picked)):
      cdir = root / "cases" / cid
      cdir.mkdir(parents=True, exist_ok=True)
      folder = _link_folder(src, cdir / "dicom")
      if k == 0:   # compile the model once, so every case's time is the compiled model's
        with tempfile.TemporaryDirectory() as tmp:
          model_reports.report_case(run, folder, src.series_uid, pathlib.Path(tmp) / "w.html")
      vol = dicom.read_series(folder, series_uid=src.series_uid)
      hu = np.clip(np.rint(vol.hu), cache.HU_MIN, cache.HU_MAX).astype(np.int16)
      if view_size > 0:
        hu = cache.resize_hu(hu, int(view_size))
      np.save(cdir / "hu.npy", hu)
      out = model_reports.report_case(run, folder, src.series_uid, cdir / "report.html")
      _write_json(cdir / "model.json", out.to_json())
      if len(out.probabilities) != len(info["labels"]):
        raise errors.StudyError(f"{cdir}: {len(out.probabilities)} model outputs for "
                                f"{len(info['labels'])} labels")
      cases.append(Case(cid, src.scan_id, src.patient_id, vol.series_uid, src.truth,
                        [int(s) for s in hu.shape], [float(s) for s in vol.spacing]))
      if bar:
        bar.update()
  finally:
    if bar:
      bar.close()
  meta = {
      "format": FORMAT, "name": name or root.name,
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "seed": int(seed), "washout_days": float(washout_days), "arms": list(ARMS),
      "labels": info["labels"], "confidence_levels": {str(k): v for k, v in
                                                     CONFIDENCE_LEVELS.items()},
      "view_windows": list(VIEW_WINDOWS), "view_size": int(view_size),
      "run": info, "source": source, "create_seconds": round(time.perf_counter() - t0, 3),
      "cases": [dataclasses.asdict(c) for c in cases],
  }
  _write_json(root / STUDY_FILE, meta)
  study = Study(root)
  db.StudyDB(study).close()   # the schema, now: a study folder is complete when create returns
  log.info("study %s: %d cases, labels %s", root, len(cases), info["labels"])
  return study
