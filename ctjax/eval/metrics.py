"""Classification metrics as plain dicts of floats, equal to scikit-learn's (tested).

Written in numpy (scikit-learn is a test-only dependency). Conventions follow scikit-learn with
`zero_division=0`: precision, recall (= sensitivity), specificity and F1 are 0.0 where their
denominator is 0. AUC is undefined (NaN) for a class whose truth holds one value only; the macro
AUC averages the classes where it is defined (and is NaN when none is).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.stats import rankdata


def _safe_div(num: float, den: float) -> float:
  return float(num) / float(den) if den else 0.0


def binary_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
  """ROC AUC by the Mann-Whitney U statistic (ties count one half); NaN with one class only."""
  y_true = np.asarray(y_true).astype(bool).ravel()
  y_score = np.asarray(y_score, dtype=np.float64).ravel()
  n_pos = int(y_true.sum())
  n_neg = y_true.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = rankdata(y_score)   # average ranks for ties
  u = ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def _binary_counts(truth: np.ndarray, pred: np.ndarray) -> dict[str, int]:
  truth = truth.astype(bool)
  pred = pred.astype(bool)
  return {"tp": int(np.sum(truth & pred)), "fp": int(np.sum(~truth & pred)),
          "fn": int(np.sum(truth & ~pred)), "tn": int(np.sum(~truth & ~pred))}


def _binary_scores(counts: dict[str, int]) -> dict[str, float]:
  tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
  precision = _safe_div(tp, tp + fp)
  recall = _safe_div(tp, tp + fn)
  return {
      "precision": precision,
      "recall": recall,
      "sensitivity": recall,
      "specificity": _safe_div(tn, tn + fp),
      # F1 from counts (= scikit-learn's 2tp / (2tp + fp + fn), 0 when that is 0/0).
      "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
  }


def _macro(per_class: dict[str, dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
  out = {}
  for key in keys:
    values = np.array([per_class[n][key] for n in per_class], dtype=np.float64)
    defined = values[~np.isnan(values)]
    out[f"macro_{key}"] = float(defined.mean()) if defined.size else float("nan")
  return out


_MACRO_KEYS = ("precision", "recall", "sensitivity", "specificity", "f1", "auc")


def multilabel_report(y_true, y_prob, names: Sequence[str], threshold: float = 0.5
                      ) -> dict[str, Any]:
  """Per-label and macro metrics of independent binary labels (DrCT2: sigmoid outputs).

  y_true: [N, L] in {0, 1}; y_prob: [N, L] probabilities; a label is predicted when
  prob >= threshold. Returns {"per_class": {name: {precision, recall, sensitivity, specificity,
  f1, auc, support, tp, fp, fn, tn}}, "macro_<metric>": float, "micro_f1", "num_examples"}.
  """
  y_true = np.asarray(y_true)
  y_prob = np.asarray(y_prob, dtype=np.float64)
  if y_true.ndim != 2 or y_true.shape != y_prob.shape or y_true.shape[1] != len(names):
    raise ValueError(f"y_true {y_true.shape} and y_prob {y_prob.shape} must be [N, {len(names)}]")
  y_true = y_true > 0.5
  y_pred = y_prob >= threshold
  per_class: dict[str, dict[str, Any]] = {}
  totals = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
  for j, name in enumerate(names):
    counts = _binary_counts(y_true[:, j], y_pred[:, j])
    for k in totals:
      totals[k] += counts[k]
    per_class[name] = {**_binary_scores(counts), "auc": binary_auc(y_true[:, j], y_prob[:, j]),
                       "support": int(y_true[:, j].sum()), **counts}
  return {"per_class": per_class, **_macro(per_class, _MACRO_KEYS),
          "micro_f1": _binary_scores(totals)["f1"], "num_examples": int(y_true.shape[0])}


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
  """[K, K] counts, rows = truth, columns = prediction (scikit-learn's layout)."""
  cm = np.zeros((num_classes, num_classes), dtype=np.int64)
  np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
  return cm


def multiclass_report(y_true, y_prob, names: Sequence[str]) -> dict[str, Any]:
  """One-vs-rest per-class metrics of a softmax classifier (blend sign: 3 classes).

  y_true: [N] int class ids; y_prob: [N, K] class probabilities; prediction = argmax.
  Returns {"per_class": {name: {precision, recall, sensitivity, specificity, f1, auc, support,
  tp, fp, fn, tn}}, "macro_<metric>", "accuracy", "confusion_matrix": [[int]] (rows = truth),
  "num_examples"}.
  """
  y_true = np.asarray(y_true).astype(np.int64).ravel()
  y_prob = np.asarray(y_prob, dtype=np.float64)
  k = len(names)
  if y_prob.ndim != 2 or y_prob.shape != (y_true.size, k):
    raise ValueError(f"y_prob {y_prob.shape} must be [{y_true.size}, {k}]")
  if y_true.size and (y_true.min() < 0 or y_true.max() >= k):
    raise ValueError(f"class ids must lie in [0, {k}); got {y_true.min()}..{y_true.max()}")
  y_pred = np.argmax(y_prob, axis=1)
  per_class: dict[str, dict[str, Any]] = {}
  for c, name in enumerate(names):
    truth = y_true == c
    counts = _binary_counts(truth, y_pred == c)
    per_class[name] = {**_binary_scores(counts), "auc": binary_auc(truth, y_prob[:, c]),
                       "support": int(truth.sum()), **counts}
  return {"per_class": per_class, **_macro(per_class, _MACRO_KEYS),
          "accuracy": _safe_div(np.sum(y_pred == y_true), y_true.size),
          "confusion_matrix": confusion_matrix(y_true, y_pred, k).tolist(),
          "num_examples": int(y_true.size)}


def roc_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) at every distinct score, highest first, starting at (0, 0).

  Like scikit-learn's `roc_curve(..., drop_intermediate=False)`; for ROC plots.
  """
  y_true = np.asarray(y_true).astype(bool).ravel()
  y_score = np.asarray(y_score, dtype=np.float64).ravel()
  order = np.argsort(-y_score, kind="mergesort")
  y_true, y_score = y_true[order], y_score[order]
  last = np.r_[np.nonzero(np.diff(y_score))[0], y_true.size - 1]
  tps = np.cumsum(y_true)[last].astype(np.float64)
  fps = (last + 1 - tps).astype(np.float64)
  tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
  thresholds = np.r_[np.inf, y_score[last]]
  n_pos, n_neg = tps[-1], fps[-1]
  fpr = fps / n_neg if n_neg else np.full_like(fps, np.nan)
  tpr = tps / n_pos if n_pos else np.full_like(tps, np.nan)
  return fpr, tpr, thresholds


def flatten_scalars(report: dict[str, Any], prefix: str = "") -> dict[str, float]:
  """{"a": {"b": 1.0}} → {"a/b": 1.0}: the scalar leaves of a report, for logs and tables."""
  out: dict[str, float] = {}
  for key, value in report.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten_scalars(value, prefix=f"{name}/"))
    elif isinstance(value, (bool, int, float, np.integer, np.floating)):
      out[name] = float(value)
    elif isinstance(value, np.ndarray) and value.ndim == 0:
      out[name] = float(value)
  return out


def format_table(report: dict[str, Any],
                 columns: Sequence[str] = ("precision", "recall", "specificity", "f1", "auc",
                                           "support")) -> str:
  """A plain-text table: one row per class, then the macro row and other scalars."""
  per_class = report.get("per_class", {})
  lines = []
  if per_class:
    width = max(12, *(len(n) for n in per_class)) + 2
    lines.append("class".ljust(width) + "".join(c.rjust(12) for c in columns))
    for name, row in per_class.items():
      lines.append(name.ljust(width) + "".join(_cell(row.get(c)) for c in columns))
    lines.append("macro".ljust(width)
                 + "".join(_cell(report.get(f"macro_{c}")) for c in columns))
  for key, value in report.items():
    if key == "per_class" or key.startswith("macro_"):
      continue
    if isinstance(value, (int, float, np.integer, np.floating)):
      lines.append(f"{key}: {_cell(value).strip()}")
    elif key == "confusion_matrix":
      lines.append("confusion_matrix (rows = truth):")
      lines.extend("  " + " ".join(f"{int(v):6d}" for v in row) for row in value)
  return "\n".join(lines)


def markdown_summary(report: dict[str, Any], *, title: str, row: str = "F1") -> str:
  """A split's report as the Markdown tables the README quotes (3 decimals; "n/a" where a value is
  undefined, e.g. the AUC of a label without positives).

  A multi-label report (DrCT): one row `row` of F1 per label, then macro-F1 and macro-AUC. A
  multi-class report (it has "accuracy": the blend sign): one row per class of precision,
  recall, specificity, F1 and AUC, then a line with macro-F1 and accuracy. `title` heads the
  first column."""
  per_class = report.get("per_class", {})
  if "accuracy" not in report:
    head = [title, *per_class, "macro-F1", "macro-AUC"]
    cells = [row, *(_short(v.get("f1")) for v in per_class.values()),
             _short(report.get("macro_f1")), _short(report.get("macro_auc"))]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                       "| " + " | ".join(cells) + " |"])
  columns = ("precision", "recall", "specificity", "f1", "auc")
  lines = [f"| {title} | precision | recall | specificity | F1 | AUC |",
           "|" + "---|" * (len(columns) + 1)]
  for name, values in per_class.items():
    lines.append(f"| {name} | " + " | ".join(_short(values.get(c)) for c in columns) + " |")
  lines.append(f"\nmacro-F1 {_short(report.get('macro_f1'))}, accuracy "
               f"{_short(report.get('accuracy'))}")
  return "\n".join(lines)


def _short(value) -> str:
  if value is None or not np.isfinite(float(value)):
    return "n/a"
  return f"{float(value):.3f}"


def _cell(value) -> str:
  if value is None:
    return "-".rjust(12)
  if isinstance(value, (int, np.integer)):
    return f"{int(value):12d}"
  return f"{float(value):12.4f}"
