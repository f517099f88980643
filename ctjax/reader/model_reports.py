"""The reader study's only access to the model: restore a run, report one scan.

Everything the study needs from a trained DrCT run goes through the functions here, so
that the model side can change without touching the study:

* `open_run(workdir, step)` → `ctjax.eval.report.load_model` (config, labels, step, predict);
* `run_config(run)` → the run's config (its data split, for the default sample of scans);
* `run_info(run)` → what the study records about the run (labels, model, step);
* `report_case(run, scan_dir, series_uid, out_html)` → `ctjax.eval.report.report_for_scan`
  (the HTML report of DrCT2 paper, Figure 2) plus the model's outputs as data.

`ReportResult` carries predictions and key slices but not the slice attention or the
sampled→source slice map, so `report_case` keeps the one output dict and batch of the
`LoadedModel.predict` call that `report_for_scan` makes (keys `probs`, `slice_attention`, batch
key `slice_index`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CaseOutput:
  """The model's output on one case, stored with the study as `model.json`."""
  probabilities: list[float]
  thresholds: list[float]
  slice_attention: list[float]      # [m] over the sampled slices
  slice_index: list[int]            # [m] sampled → source slice (0-based)
  key_slices: list[int]             # sampled indices, most attended first
  seconds: float                    # read + sample + model + render, compiled model
  num_source_slices: int
  series_uid: str

  @property
  def predicted(self) -> list[int]:
    return [int(p >= t) for p, t in zip(self.probabilities, self.thresholds)]

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "predicted": self.predicted}


@dataclasses.dataclass
class Run:
  """A restored run (opaque to the study)."""
  loaded: Any
  workdir: str


def open_run(workdir: str | os.PathLike, step: Optional[int] = None) -> Run:
  """Restores a `python -m ctjax.train` DrCT workdir (best checkpoint, else latest)."""
  from ctjax.eval import report
  return Run(report.load_model(workdir, step=step), os.fspath(workdir))


def run_config(run: Run) -> Any:
  """The run's resolved config (for its data split and label order)."""
  return run.loaded.config


_VARIANTS = {"drct1": "DrCT1", "drct2": "DrCT2"}


def run_info(run: Run) -> dict[str, Any]:
  """What the study records about the run; thresholds come with each case's report."""
  cfg = run.loaded.config
  variant = str(cfg.model.variant)
  return {
      "workdir": str(pathlib.Path(run.workdir).absolute()),
      "step": run.loaded.step,
      "labels": [str(n) for n in cfg.data.labels],
      "model": f"{_VARIANTS.get(variant, variant)} ({cfg.model.backbone} backbone)",
      "config_name": str(cfg.get("name", "") or ""),
  }


def report_case(run: Run, scan_dir: str | os.PathLike, series_uid: Optional[str],
                out_html: str | os.PathLike) -> CaseOutput:
  """Writes the case's HTML report to `out_html` and returns the model's outputs."""
  from ctjax.eval import report
  lm = run.loaded
  seen: list[tuple[dict, dict]] = []
  predict = type(lm).predict

  def keep(batch):
    out = predict(lm, batch)
    seen.append((batch, out))
    return out

  lm.predict = keep   # an instance attribute: this call only, removed below
  try:
    r = report.report_for_scan(lm, scan_dir, out_html, series_uid=series_uid)
  finally:
    del lm.predict
  if len(seen) != 1:
    raise RuntimeError(f"report_for_scan made {len(seen)} predict calls, expected 1")
  batch, out = seen[0]
  return CaseOutput(
      probabilities=[float(p.probability) for p in r.predictions], thresholds=[float(p.threshold) for p in r.predictions],
      slice_attention=[float(a) for a in np.asarray(out["slice_attention"][0])],
      slice_index=[int(i) for i in np.asarray(batch["slice_index"][0])],
      key_slices=[int(i) for i in r.key_slices], seconds=float(r.seconds),
      num_source_slices=int(r.num_source_slices), series_uid=str(r.series_uid))
