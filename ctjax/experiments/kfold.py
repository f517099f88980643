"""k-fold cross-validation over `config.data.fold` (DrCT2: 10-fold CQ500, 5-fold RSNA).

Fold f trains in <workdir>/fold_<f> (fold f = test; validation and training as
`config.data.fold_protocol` assigns them, `ctjax.data.datasets.FOLD_PROTOCOLS`), then its best (else last) checkpoint is evaluated on the test split. The
summary (mean ± std over folds of every scalar) is printed as a table and written with the
per-fold reports to <workdir>/crossval.json. Folds already finished are not retrained.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pathlib
from typing import Any, Iterable, Optional

import numpy as np
import ml_collections

from ctjax.errors import ConfigError
from ctjax.eval.metrics import flatten_scalars
from ctjax.inference import highlight_scale, runs
from ctjax.jsonable import to_jsonable
from ctjax.train import loop

log = logging.getLogger(__name__)

HEADLINE = ("macro_precision", "macro_recall", "macro_f1", "macro_auc", "macro_sensitivity",
            "macro_specificity", "accuracy")


def run_crossval(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                 folds: Optional[Iterable[int]] = None, split: str = "test",
                 task: Any = None, data: Any = None) -> dict[str, Any]:
  """Trains and evaluates each fold; returns {"folds": {f: report}, "summary": {key: {mean,
  std, n}}}."""
  workdir = pathlib.Path(workdir)
  k = int(config.data.num_folds)
  folds = list(range(k)) if folds is None else [int(f) for f in folds]
  bad = [f for f in folds if not 0 <= f < k]
  if bad:
    raise ConfigError(f"folds {bad} outside [0, config.data.num_folds={k})")
  reports: dict[int, dict] = {}
  for f in folds:
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
      cfg.data.fold = f
      if cfg.data.layout == "phantom" and not cfg.data.root:
        cfg.data.root = str(workdir / "data")   # one generated data set for every fold.
    fold_dir = workdir / f"fold_{f}"
    log.info("cross-validation fold %d of %d → %s", f, k, fold_dir)
    loop.train_and_evaluate(cfg, fold_dir, task=task, data=data)
    if task is None:   # as `python -m ctjax.train` does (a stand-in task draws nothing)
      highlight_scale.fit_after_training(fold_dir)
    report = runs.evaluate(fold_dir, split, task=task, data=data, prepare=True)
    reports[f] = report
  summary = summarize_folds({f: flatten_scalars(r) for f, r in reports.items()})
  out = {"split": split, "num_folds": k, "folds": {str(f): r for f, r in reports.items()},
         "summary": summary}
  import jax
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "crossval.json").write_text(json.dumps(to_jsonable(out), indent=2))
  return out


def summarize_folds(per_fold: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
  """Mean, sample std (ddof=1; 0 with one fold) and count of each scalar over the folds
  (NaNs, e.g. an undefined AUC, are left out)."""
  keys = sorted({k for m in per_fold.values() for k in m})
  out = {}
  for key in keys:
    vals = np.array([m[key] for m in per_fold.values() if key in m], dtype=np.float64)
    vals = vals[~np.isnan(vals)]
    if not vals.size:
      continue
    out[key] = {"mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0, "n": int(vals.size)}
  return out


def format_summary(result: dict[str, Any], keys: Iterable[str] = HEADLINE) -> str:
  """Table: one row per fold, then mean ± std, for the headline metrics present."""
  summary = result["summary"]
  keys = [k for k in keys if k in summary]
  rows = ["fold".ljust(8) + "".join(k.rjust(20) for k in keys)]
  for f, report in result["folds"].items():
    flat = flatten_scalars(report)
    rows.append(str(f).ljust(8) + "".join(f"{flat.get(k, float('nan')):20.4f}" for k in keys))
  rows.append("mean±std".ljust(8) + "".join(
      f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}".rjust(20) for k in keys))
  return "\n".join(rows)
