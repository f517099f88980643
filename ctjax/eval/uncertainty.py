"""Confidence intervals and calibration next to a run's headline figures (host side).

What `python -m ctjax.evaluate` and `python -m ctjax.tables` print beside each figure, built on
`ctjax.eval.stats` (every statistic there is checked against a reference implementation):

- `headline_intervals`: seeded scan-level bootstrap 95 % CIs of the headline metrics of one
  split — DrCT's macro precision / recall / F1 / AUC (DrCT2 paper, Tables 2-4), the blend
  task's per-class sensitivity / specificity / F1 / AUC (blend-sign paper, Tables 3-4).
- `drct_calibration`: per-label and macro expected calibration error, and the RSNA 2019
  challenge's weighted log loss when the labels are RSNA's.
The statistics themselves (bootstrap, ECE, log loss, the across-fold t interval) are
`ctjax.eval.stats`'; this module only says which of them a run's report carries.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ctjax.data.labels import RSNA_LABELS
from ctjax.errors import ConfigError
from ctjax.eval import stats

DEFAULT_N_BOOT = 1000
DRCT_KEYS = ("macro_precision", "macro_recall", "macro_f1", "macro_auc")   # the tables' order
BLEND_METRICS = ("sensitivity", "specificity", "f1", "auc")


def blend_keys(names: Sequence[str]) -> tuple[str, ...]:
  """per_class/<name>/{sensitivity, specificity, f1, auc} of each class (the blend-sign paper's
  Tables 3-4 quote F1 beside `stats.multiclass_headline_keys`' three), then accuracy."""
  return tuple(f"per_class/{n}/{m}" for n in names for m in BLEND_METRICS) + ("accuracy",)


def _ci_dict(ci: stats.BootstrapCI, n: int) -> dict[str, Any]:
  return {"value": ci.value, "lo": ci.lo, "hi": ci.hi, "alpha": ci.alpha, "method": ci.method,
          "n_boot": ci.n_boot, "n_valid": ci.n_valid, "n": int(n), "status": ci.status}


def ci_status(ci: Mapping[str, Any]) -> str:
  """A stored interval's status; one written without it gets it from its n_boot and n_valid
  (`stats.degenerate_status`), so older reports are read by today's rule."""
  if "status" in ci:
    return str(ci["status"])
  return stats.degenerate_status(int(ci.get("n_boot", 0)), int(ci.get("n_valid", 0)))


def headline_intervals(kind: str, outputs: Mapping[str, Any], names: Sequence[str], *,
                       threshold: float = 0.5, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                       alpha: float = 0.05, keys: Optional[Sequence[str]] = None
                       ) -> dict[str, dict[str, Any]]:
  """{metric key: {value, lo, hi, alpha, method, n_boot, n_valid, n}} by resampling scans
  (DrCT) or slices (blend) of one split's outputs with `np.random.default_rng(seed)`.

  `kind`: "drct" (outputs `labels` [N, L], `probs` [N, L]) or "blend" (`label` [N], `probs`
  [N, K]); rows with `valid` False are dropped first. `keys`: flatten_scalars names of the
  report (default: DRCT_KEYS / blend_keys(names)).
  """
  valid = np.asarray(outputs.get("valid", np.ones(len(outputs["probs"]), bool)), bool)
  probs = np.asarray(outputs["probs"], np.float64)[valid]
  if kind == "drct":
    labels = np.asarray(outputs["labels"])[valid]
    cis = stats.multilabel_bootstrap(labels, probs, names, keys=tuple(keys or DRCT_KEYS),
                                     threshold=threshold, n_boot=n_boot, seed=seed, alpha=alpha)
  elif kind == "blend":
    labels = np.asarray(outputs["label"])[valid]
    cis = stats.multiclass_bootstrap(labels, probs, names, keys=tuple(keys or blend_keys(names)),
                                     n_boot=n_boot, seed=seed, alpha=alpha)
  else:
    raise ConfigError(f"kind={kind!r}; expected 'drct' or 'blend'")
  return {k: _ci_dict(v, len(probs)) for k, v in cis.items()}


def drct_calibration(outputs: Mapping[str, Any], names: Sequence[str], *,
                     n_bins: int = stats.DEFAULT_CALIBRATION_BINS) -> dict[str, Any]:
  """{"ece": {label: ece, "macro": mean}, "n_bins", and "rsna_weighted_log_loss" when `names`
  are RSNA's labels in their order}, of the final probabilities."""
  valid = np.asarray(outputs.get("valid", np.ones(len(outputs["probs"]), bool)), bool)
  labels = np.asarray(outputs["labels"], np.float64)[valid]
  probs = np.asarray(outputs["probs"], np.float64)[valid]
  out: dict[str, Any] = {"ece": stats.multilabel_ece(labels, probs, names, n_bins=n_bins),
                         "n_bins": int(n_bins)}
  if tuple(names) == tuple(RSNA_LABELS):
    out["rsna_weighted_log_loss"] = stats.rsna_weighted_log_loss(labels, probs)
  return out


def reliability_curves(outputs: Mapping[str, Any], names: Sequence[str], *,
                       n_bins: int = stats.DEFAULT_CALIBRATION_BINS
                       ) -> dict[str, stats.ReliabilityData]:
  """Per-label reliability data of a DrCT run (for `stats.plot_reliability_diagram`)."""
  valid = np.asarray(outputs.get("valid", np.ones(len(outputs["probs"]), bool)), bool)
  labels = np.asarray(outputs["labels"], np.float64)[valid]
  probs = np.asarray(outputs["probs"], np.float64)[valid]
  return {n: stats.reliability_data(labels[:, j], probs[:, j], n_bins=n_bins)
          for j, n in enumerate(names) if 0 < labels[:, j].sum() < len(labels)}


def format_intervals(intervals: Mapping[str, Mapping[str, Any]], digits: int = 4) -> str:
  """One line per metric: "macro_f1  0.8850 [0.8512, 0.9127]" (or "[too few positives]"),
  then how they were drawn."""
  if not intervals:
    return ""
  width = max(len(k) for k in intervals) + 2
  lines = [k.ljust(width) + stats.ci_text(v["value"], v["lo"], v["hi"], ci_status(v),
                                          digits=digits)
           for k, v in intervals.items()]
  first = next(iter(intervals.values()))
  lines.append(f"({100 * (1 - first['alpha']):.0f}% {first['method']} bootstrap CIs over "
               f"{first['n']} examples, {first['n_boot']} resamples)")
  if any(ci_status(v) != "ok" for v in intervals.values()):
    lines.append(f"({stats.TOO_FEW_POSITIVES}: more than "
                 f"{100 * stats.MAX_DEGENERATE_SHARE:.0f}% of the resamples lost every "
                 "positive or negative of some label; an interval from the rest would rest on "
                 "those few examples, so none is given)")
  return "\n".join(lines)


def add_uncertainty(report: dict[str, Any], outputs: Mapping[str, Any], config: Any, *,
                    n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict[str, Any]:
  """`report` (a task's summary of `outputs`) + "ci95" (bootstrap CIs of the headline figures;
  none with n_boot 0) and, for DrCT runs, "calibration". `config`: the run's config (its
  `task`, `data.labels`, `evals.threshold`). Returns `report`, changed in place."""
  kind = str(config.task)
  if kind == "drct":
    names = list(config.data.labels)
    if n_boot > 0:
      report["ci95"] = headline_intervals("drct", outputs, names,
                                          threshold=float(config.evals.threshold),
                                          n_boot=n_boot, seed=seed)
    report["calibration"] = drct_calibration(outputs, names)
  elif kind == "blend" and n_boot > 0:
    from ctjax.data.labels import BLEND_CLASSES
    report["ci95"] = headline_intervals("blend", outputs, BLEND_CLASSES, n_boot=n_boot,
                                        seed=seed)
  return report


def format_uncertainty(report: Mapping[str, Any]) -> str:
  """The CI lines and the calibration summary of an `add_uncertainty` report."""
  lines = []
  if report.get("ci95"):
    lines += ["", format_intervals(report["ci95"])]
  cal = report.get("calibration")
  if cal:
    ece = cal["ece"]
    lines += ["", f"calibration: macro ECE {ece['macro']:.4f} ({cal['n_bins']} equal-width "
              "bins; per label: " + ", ".join(f"{k} {v:.3f}" for k, v in ece.items()
                                             if k != "macro") + ")"]
    if "rsna_weighted_log_loss" in cal:
      lines.append(f"RSNA challenge weighted log loss: {cal['rsna_weighted_log_loss']:.4f}")
  return "\n".join(lines)
