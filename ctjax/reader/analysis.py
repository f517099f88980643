"""Table 8 of the DrCT2 paper (section VI.B) from a study's reads, and the paired statistics.

Accuracy is **macro-averaged over labels**: precision, recall and F1 per label from the reader's
binary answers against the truth, then the unweighted mean of each over the study's labels
(`ctjax.eval.metrics.multilabel_report`, equal to scikit-learn's `average="macro"` with
`zero_division=0`). The paper chose macro-F1 as its metric (section VI.A.1, "we choose Macro F1
as our evaluation metrics"), and Table 8 agrees: in every column its F1 is below both its
precision and its recall (e.g. 0.7295 vs 0.7411 / 0.7364), which a micro average (F1 = harmonic
mean of the pooled P and R, always between them) cannot give, and a mean of per-label F1s can.

Times are the server's: a scan's reading time runs from its first display to the diagnosis;
the confidence step is not counted (VI.B). The model's row uses the same scans, thresholds of
the run, and the time `create` measured per report (read, sample, model, render; compiled).

Paired statistics per reader, assisted vs alone, on the scans the reader read in both arms:
* the F1 difference (assisted − alone) with a percentile bootstrap CI over scans,
  `ctjax.eval.stats.paired_bootstrap` (both arms resampled with the same scan indices, drawn
  from `numpy.random.default_rng(seed)` as `scipy.stats.bootstrap(method="percentile")` draws
  them; every resample kept, since macro-F1 with zero_division = 0 is defined on each);
* the Wilcoxon signed-rank test on the per-scan reading times, `scipy.stats.wilcoxon`
  (two-sided, zeros dropped) with the method its "auto" picks, named in the output: exact null
  distribution without ties or zeros up to 50 scans, exact sign-flip enumeration with ties or
  zeros up to 13, else the normal approximation with the tie correction.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import pathlib
from typing import Optional, Sequence

import numpy as np
from scipy import stats as sps

from ctjax.eval.metrics import multilabel_report
from ctjax.eval.stats import PairedBootstrapCI, paired_bootstrap
from ctjax.reader import clock as clock_lib
from ctjax.reader.db import ReadInfo
from ctjax.reader.study import Study

log = logging.getLogger(__name__)

MODEL_READER = "model"
DEFAULT_RESAMPLES = 9999
CONFIDENCE_LEVEL = 0.95


# ---------------------------------------------------------------------------- statistics


def macro_prf(truth: np.ndarray, pred: np.ndarray, labels: Sequence[str]
              ) -> tuple[float, float, float]:
  """Macro precision, recall, F1 of binary answers [n, L] against truth [n, L]."""
  rep = multilabel_report(np.asarray(truth, np.float64), np.asarray(pred, np.float64),
                          list(labels), threshold=0.5)
  return rep["macro_precision"], rep["macro_recall"], rep["macro_f1"]


def _macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
  """Macro F1 of binary answers [n, L] (zero_division = 0): the bootstrap's metric, from counts
  (`macro_prf`'s value, without its per-label report on each of thousands of resamples)."""
  t = np.asarray(truth) > 0
  p = np.asarray(pred) > 0
  tp = np.sum(t & p, axis=0)
  den = 2 * tp + np.sum(~t & p, axis=0) + np.sum(t & ~p, axis=0)
  return float(np.mean(np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)))


def paired_bootstrap_f1_difference(truth, pred_alone, pred_assisted, *,
                                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                                   level: float = CONFIDENCE_LEVEL) -> PairedBootstrapCI:
  """Macro-F1(assisted) − macro-F1(alone) with a percentile bootstrap CI over scans."""
  truth = np.asarray(truth)
  if truth.ndim != 2 or truth.shape[0] == 0:
    raise ValueError(f"no paired scans (truth of shape {truth.shape})")
  return paired_bootstrap(_macro_f1, truth, np.asarray(pred_assisted), np.asarray(pred_alone),
                          n_boot=int(n_resamples), seed=int(seed), alpha=1.0 - float(level),
                          method="percentile", skip_degenerate=False)


def no_bootstrap(level: float = CONFIDENCE_LEVEL) -> PairedBootstrapCI:
  """The CI of a study without truth: no accuracy, so nothing to resample."""
  nan = float("nan")
  return PairedBootstrapCI(value=nan, lo=nan, hi=nan, alpha=1.0 - float(level),
                           method="percentile", n_boot=0, n_valid=0, samples=np.zeros(0))


@dataclasses.dataclass(frozen=True)
class WilcoxonResult:
  statistic: float      # min(W+, W−), scipy's two-sided statistic
  pvalue: float
  n: int                # non-zero differences
  method: str           # exact | permutation | asymptotic | none


# scipy.stats.wilcoxon's "auto": exact up to this many pairs without ties or zeros; with them,
# enumerate every sign pattern up to this many (2**13 < its 9999 permutation resamples).
EXACT_MAX_PAIRS = 50
PERMUTATION_MAX_PAIRS = 13


def wilcoxon_signed_rank(x, y) -> WilcoxonResult:
  """Two-sided Wilcoxon signed-rank test of the paired differences x − y (zeros dropped)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim != 1 or x.shape != y.shape:
    raise ValueError(f"paired samples must be 1-D of one length, got {x.shape} and {y.shape}")
  d = x - y
  n = int(np.count_nonzero(d))
  if n == 0:
    return WilcoxonResult(0.0, float("nan"), 0, "none")
  ties = np.unique(np.abs(d[d != 0])).size < n
  if d.size <= EXACT_MAX_PAIRS and not ties and n == d.size:
    method, arg = "exact", "exact"
  elif d.size <= PERMUTATION_MAX_PAIRS:
    method, arg = "permutation", sps.PermutationMethod()
  else:
    method, arg = "asymptotic", "asymptotic"
  res = sps.wilcoxon(x, y, zero_method="wilcox", correction=False, alternative="two-sided",
                     method=arg)
  return WilcoxonResult(float(res.statistic), float(res.pvalue), n, method)


# ----------------------------------------------------------------------------- the table


@dataclasses.dataclass
class ArmRow:
  """One column of Table 8: a reader in an arm, or the model."""
  reader: str
  arm: str
  num_scans: int
  precision: float
  recall: float
  f1: float
  confidence: float            # mean 0–3 (NaN for the model)
  total_seconds: float
  seconds_per_scan: float
  first_day: str
  last_day: str


@dataclasses.dataclass
class PairedRow:
  reader: str
  num_paired: int
  f1_alone: float
  f1_assisted: float
  f1_difference: PairedBootstrapCI   # value = F1(assisted) − F1(alone), lo / hi, p_value
  bootstrap_seed: int
  median_seconds_alone: float
  median_seconds_assisted: float
  mean_seconds_difference: float
  wilcoxon: WilcoxonResult


def _matrix(study: Study, case_ids: Sequence[str], answers: Sequence[Sequence[str]]
            ) -> tuple[np.ndarray, np.ndarray]:
  labels = study.labels
  truth = np.asarray([study.case(c).truth for c in case_ids], np.int64).reshape(-1, len(labels))
  pred = np.asarray([[int(n in a) for n in labels] for a in answers], np.int64
                    ).reshape(-1, len(labels))
  return truth, pred


def completed(reads: Sequence[ReadInfo]) -> list[ReadInfo]:
  """The reads with a diagnosis (a missing confidence only leaves the mean confidence out)."""
  return [r for r in reads if r.answered_at is not None]


def table8(study: Study, reads: Sequence[ReadInfo]) -> list[ArmRow]:
  """Rows per reader and arm (arm order first, as Table 8), then the model's row."""
  nan = float("nan")
  done = completed(reads)
  rows = []
  readers = sorted({(r.reader_number, r.reader) for r in done})
  for arm in study.arms:
    for _, name in readers:
      mine = [r for r in done if r.reader == name and r.arm == arm]
      if not mine:
        continue
      if study.has_truth:
        truth, pred = _matrix(study, [r.case_id for r in mine], [r.answer for r in mine])
        p, rc, f1 = macro_prf(truth, pred, study.labels)
      else:
        p = rc = f1 = nan
      conf = [r.confidence for r in mine if r.confidence is not None]
      secs = [float(r.reading_seconds) for r in mine]
      rows.append(ArmRow(name, arm, len(mine), p, rc, f1,
                         float(np.mean(conf)) if conf else nan, float(np.sum(secs)),
                         float(np.mean(secs)), clock_lib.day(min(r.shown_at for r in mine)),
                         clock_lib.day(max(r.answered_at for r in mine))))
  rows.append(model_row(study))
  return rows


def model_row(study: Study) -> ArmRow:
  outs = [study.model_output(c.case_id) for c in study.cases]
  nan = float("nan")
  if study.has_truth:
    truth = np.asarray([c.truth for c in study.cases], np.int64)
    pred = np.asarray([o["predicted"] for o in outs], np.int64)
    p, rc, f1 = macro_prf(truth, pred, study.labels)
  else:
    p = rc = f1 = nan
  secs = [float(o["seconds"]) for o in outs]
  created = str(study.meta.get("created", ""))[:10]
  return ArmRow(MODEL_READER, "model", len(outs), p, rc, f1, nan, float(np.sum(secs)),
                float(np.mean(secs)), created, created)


def paired(study: Study, reads: Sequence[ReadInfo], *, n_resamples: int = DEFAULT_RESAMPLES,
           seed: int = 0, level: float = CONFIDENCE_LEVEL) -> list[PairedRow]:
  """Assisted vs alone per reader, on the scans read in both arms."""
  done = completed(reads)
  first, second = study.arms[0], study.arms[1]
  out = []
  for number, name in sorted({(r.reader_number, r.reader) for r in done}):
    a = {r.case_id: r for r in done if r.reader == name and r.arm == first}
    b = {r.case_id: r for r in done if r.reader == name and r.arm == second}
    both = [c.case_id for c in study.cases if c.case_id in a and c.case_id in b]
    if not both:
      continue
    ta = np.asarray([a[c].reading_seconds for c in both], np.float64)
    tb = np.asarray([b[c].reading_seconds for c in both], np.float64)
    nan = float("nan")
    if study.has_truth:
      truth, pa = _matrix(study, both, [a[c].answer for c in both])
      _, pb = _matrix(study, both, [b[c].answer for c in both])
      f1a = macro_prf(truth, pa, study.labels)[2]
      f1b = macro_prf(truth, pb, study.labels)[2]
      ci = paired_bootstrap_f1_difference(truth, pa, pb, n_resamples=n_resamples,
                                          seed=seed + number, level=level)
    else:
      f1a = f1b = nan
      ci = no_bootstrap(level)
    out.append(PairedRow(name, len(both), f1a, f1b, ci, seed + number, float(np.median(ta)),
                         float(np.median(tb)), float(np.mean(tb - ta)),
                         wilcoxon_signed_rank(tb, ta)))
  return out


# ------------------------------------------------------------------------------- output


def duration(seconds: float) -> str:
  """3h9m27s, as Table 8 writes total times (rounded to the second)."""
  if seconds != seconds:
    return "—"
  s = int(round(seconds))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  if h:
    return f"{h}h{m}m{sec}s"
  if m:
    return f"{m}m{sec}s"
  return f"{sec}s"


def _f(x: float, digits: int = 4) -> str:
  return "—" if x != x else f"{x:.{digits}f}"


def _column(row: ArmRow) -> str:
  return "model" if row.arm == "model" else f"{row.reader} ({row.arm})"


def table8_markdown(study: Study, rows: Sequence[ArmRow], pairs: Sequence[PairedRow]) -> str:
  cols = [_column(r) for r in rows]
  lines = [f"# Reader study: {study.name}", "",
           "Table 8 of the DrCT2 paper (section VI.B): each reader alone, then assisted by the "
           "model's report, and the model on the same scans. Precision, recall and F1 are "
           "macro averages over the labels " + ", ".join(study.labels) + "; times exclude the "
           "confidence step.", "",
           "| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]

  def line(name, values):
    lines.append(f"| {name} | " + " | ".join(values) + " |")

  line("Date", [r.first_day if r.first_day == r.last_day else f"{r.first_day} – {r.last_day}"
                for r in rows])
  line("Scans", [str(r.num_scans) for r in rows])
  line("Precision", [_f(r.precision) for r in rows])
  line("Recall", [_f(r.recall) for r in rows])
  line("F1-score", [_f(r.f1) for r in rows])
  line("Confidence", [_f(r.confidence, 2) for r in rows])
  line("Total time", [duration(r.total_seconds) for r in rows])
  line("Time/scan (s)", [f"{r.seconds_per_scan:.2f}s" for r in rows])
  if pairs:
    ci = pairs[0].f1_difference
    lines += ["", f"Assisted vs alone per reader, on the scans read in both arms: ΔF1 = "
              f"F1(assisted) − F1(alone) with a {1 - ci.alpha:.0%} percentile bootstrap CI over "
              f"scans ({ci.n_boot} resamples, seed {pairs[0].bootstrap_seed} for the "
              "first reader, +1 per reader); Wilcoxon signed-rank test (two-sided) on the "
              "per-scan reading times.", "",
              "| reader | paired scans | F1 alone | F1 assisted | ΔF1 | CI low | CI high | "
              "median s alone | median s assisted | mean Δs | Wilcoxon W | p | test |",
              "|---|" + "---:|" * 11 + "---|"]
    for p in pairs:
      w = p.wilcoxon
      lines.append(
          f"| {p.reader} | {p.num_paired} | {_f(p.f1_alone)} | {_f(p.f1_assisted)} | "
          f"{_f(p.f1_difference.value)} | {_f(p.f1_difference.lo)} | "
          f"{_f(p.f1_difference.hi)} | {p.median_seconds_alone:.2f} | "
          f"{p.median_seconds_assisted:.2f} | {p.mean_seconds_difference:+.2f} | "
          f"{w.statistic:g} | {_f(w.pvalue)} | {w.method} |")
  if not study.has_truth:
    lines += ["", "The scans have no truth (a plain folder of series): accuracy is not given."]
  return "\n".join(lines) + "\n"


ROW_FIELDS = ("reader", "arm", "num_scans", "precision", "recall", "f1", "confidence",
              "total_seconds", "seconds_per_scan", "first_day", "last_day")
PAIRED_FIELDS = ("reader", "num_paired", "f1_alone", "f1_assisted", "f1_difference",
                 "ci_low", "ci_high", "ci_level", "n_resamples", "bootstrap_seed",
                 "median_seconds_alone", "median_seconds_assisted", "mean_seconds_difference",
                 "wilcoxon_statistic", "wilcoxon_p", "wilcoxon_n", "wilcoxon_method")


def rows_csv(rows: Sequence[ArmRow]) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(ROW_FIELDS)
  for r in rows:
    w.writerow([getattr(r, k) for k in ROW_FIELDS])
  return buf.getvalue()


def paired_csv(pairs: Sequence[PairedRow]) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(PAIRED_FIELDS)
  for p in pairs:
    c, t = p.f1_difference, p.wilcoxon
    w.writerow([p.reader, p.num_paired, p.f1_alone, p.f1_assisted, c.value, c.lo, c.hi,
                round(1.0 - c.alpha, 12), c.n_boot, p.bootstrap_seed, p.median_seconds_alone,
                p.median_seconds_assisted, p.mean_seconds_difference, t.statistic, t.pvalue, t.n,
                t.method])
  return buf.getvalue()


def figure(rows: Sequence[ArmRow], path: pathlib.Path, title: str) -> None:
  """Two panels: macro P/R/F1 and time per scan, per reader and arm, the model beside them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  readers = [r for r in rows if r.arm != "model"]
  model = [r for r in rows if r.arm == "model"]
  names = list(dict.fromkeys(r.reader for r in readers))
  arms = list(dict.fromkeys(r.arm for r in readers))
  colors = {"alone": "#8aa7c9", "assisted": "#d9480f"}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
  x = np.arange(len(names))
  width = 0.8 / max(1, len(arms))
  for j, arm in enumerate(arms):
    by = {r.reader: r for r in readers if r.arm == arm}
    f1 = [by[n].f1 if n in by else np.nan for n in names]
    tps = [by[n].seconds_per_scan if n in by else np.nan for n in names]
    off = (j - (len(arms) - 1) / 2) * width
    axes[0].bar(x + off, f1, width, label=arm, color=colors.get(arm))
    axes[1].bar(x + off, tps, width, label=arm, color=colors.get(arm))
  if model:
    axes[0].axhline(model[0].f1, color="#16213a", ls="--", lw=1.2,
                    label=f"model {_f(model[0].f1, 3)}")
    axes[1].axhline(model[0].seconds_per_scan, color="#16213a", ls="--", lw=1.2,
                    label=f"model {model[0].seconds_per_scan:.2f} s")
  axes[0].set_ylabel("macro F1")
  axes[0].set_ylim(0, 1)
  axes[1].set_ylabel("reading time per scan (s)")
  for ax in axes:
    ax.set_xticks(x, names)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_analysis(study: Study, reads: Sequence[ReadInfo], out_dir: str | pathlib.Path, *,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, pathlib.Path]:
  """table8.md, table8.csv, paired.csv and table8.png under out_dir; returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = table8(study, reads)
  pairs = paired(study, reads, n_resamples=n_resamples, seed=seed)
  paths = {"markdown": out / "table8.md", "csv": out / "table8.csv",
           "paired": out / "paired.csv", "figure": out / "table8.png"}
  paths["markdown"].write_text(table8_markdown(study, rows, pairs), encoding="utf-8")
  paths["csv"].write_text(rows_csv(rows), encoding="utf-8")
  paths["paired"].write_text(paired_csv(pairs), encoding="utf-8")
  figure(rows, paths["figure"], f"{study.name}: readers alone / assisted, and the model")
  return paths


# -------------------------------------------------------------------------------- export


def export_csv(study: Study, reads: Sequence[ReadInfo], path: Optional[str | pathlib.Path]
               ) -> str:
  """Every read, one row: times (UTC), answer and truth per label, the model's call."""
  labels = study.labels
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["reader", "reader_number", "arm", "position", "case_id", "scan_id", "patient_id",
              "shown_at", "answered_at", "confidence_at", "reading_seconds", "views",
              "confidence", "complete"] + [f"answer_{n}" for n in labels]
             + [f"truth_{n}" for n in labels] + [f"model_{n}" for n in labels])
  model = {c.case_id: study.model_output(c.case_id)["predicted"] for c in study.cases}
  for r in reads:
    case = study.case(r.case_id)
    ans = [""] * len(labels) if r.answer is None else [int(n in r.answer) for n in labels]
    truth = [""] * len(labels) if case.truth is None else list(case.truth)
    w.writerow([r.reader, r.reader_number, r.arm, r.position + 1, r.case_id, case.scan_id,
                case.patient_id, clock_lib.iso(r.shown_at), clock_lib.iso(r.answered_at),
                clock_lib.iso(r.confidence_at),
                "" if r.reading_seconds is None else repr(float(r.reading_seconds)), r.views,
                "" if r.confidence is None else r.confidence,
                int(r.answered_at is not None and r.confidence is not None)]
               + ans + truth + list(model[r.case_id]))
  text = buf.getvalue()
  if path is not None:
    pathlib.Path(path).write_text(text, encoding="utf-8")
  return text
