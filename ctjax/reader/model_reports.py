"""What the reader study takes from a trained run: its description and one case's report.

The run is opened as every consumer opens one (`ctjax.inference.runs.load_run`); from it:

* `run_info(run)` → what the study records about the run (labels, model, step);
* `report_case(run, scan_dir, series_uid, out_html)` → `ctjax.inference.scan_reports.report_for_scan`
  (the HTML report of DrCT2 paper, Figure 2) plus the model's outputs as data, from the same
  single model call (`ReportResult` carries the probabilities, the slice attention and the
  sampled→source slice map).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:   # jax is imported only when a run is opened
  from ctjax.inference.runs import Run


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


def run_info(run: Run) -> dict[str, Any]:
  """What the study records about the run; thresholds come with each case's report."""
  cfg = run.config
  return {
      "workdir": str(pathlib.Path(run.workdir).absolute()),
      "step": int(run.step),
      "labels": [str(n) for n in cfg.data.labels],
      "model": f"{'DrCT2' if cfg.model.aps else 'DrCT1'} ({cfg.model.backbone} backbone)",
      "config_name": str(cfg.get("name", "") or ""),
  }


def report_case(run: Run, scan_dir: str | os.PathLike, series_uid: Optional[str],
                out_html: str | os.PathLike) -> CaseOutput:
  """Writes the case's HTML report to `out_html` and returns the model's outputs."""
  from ctjax.inference import scan_reports
  r = scan_reports.report_for_scan(run, scan_dir, out_html, series_uid=series_uid)
  return CaseOutput(
      probabilities=[float(p.probability) for p in r.predictions],
      thresholds=[float(p.threshold) for p in r.predictions],
      slice_attention=[float(a) for a in r.slice_attention],
      slice_index=[int(i) for i in r.slice_index],
      key_slices=[int(i) for i in r.key_slices], seconds=float(r.seconds),
      num_source_slices=int(r.num_source_slices), series_uid=str(r.series_uid))
