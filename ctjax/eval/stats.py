"""Uncertainty and agreement statistics for the papers' tables (host-side numpy/scipy only).

- `paired_t_test`: fold-wise comparison of two models (DrCT2 paper, section VII: "t-test with a
  threshold of 0.05", P = 0.01940 / 0.04971 / 0.02634 for DrCT1 vs DrCT2 precision / recall / F1).
- `corrected_t_test`: the same comparison with Nadeau & Bengio's corrected resampled t-test
  (the folds' training sets overlap, so the plain test's variance is too small); what the
  tables call a difference "resolved" by.
- `fold_interval`: a k-fold table's mean ± sample sd over the folds and the t-based 95 % CI of
  the mean (mean ± t_{n-1, 1-alpha/2} · sd / sqrt(n)), clipped to a bounded metric's range.
- `bootstrap_ci`, `paired_bootstrap` and the report wrappers (`multilabel_bootstrap`, …): 95 %
  confidence intervals by resampling scans, with the metric definitions of `ctjax.eval.metrics`;
  no interval ("too few positives") when too many resamples lose a label's every positive.
- `delong_test`: two correlated AUCs on the same scans (DeLong et al. 1988, Biometrics 44:837;
  the fast algorithm of Sun & Xu 2014, IEEE Signal Processing Letters 21(11):1389).
- `fleiss_kappa` and `cq500_reader_kappa`: agreement of several readers (blend-sign paper,
  Table 2; CQ500's three readers per label).
- `reliability_data`, `expected_calibration_error`, `plot_reliability_diagram`: calibration.
- `rsna_weighted_log_loss`: the RSNA 2019 Intracranial Hemorrhage challenge metric.

Inputs are validated: a shape mismatch or empty input raises `ctjax.errors.ConfigError` with a
one-line message. Nothing here imports jax or the training code.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
from scipy import stats as sps
from scipy.special import ndtr, ndtri

from ctjax import errors
from ctjax.data.labels import CQ500_COLUMNS, CQ500_LABELS, CQ500_READERS, RSNA_LABELS
from ctjax.eval import metrics

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Headline figures of a multi-label report (DrCT2 paper, Tables 2-4: precision, recall, F1; AUC).
MULTILABEL_HEADLINE_KEYS = ("macro_f1", "macro_precision", "macro_recall", "macro_auc")
# Per-class figures of the 3-class blend task (blend-sign paper, Tables 3-4).
MULTICLASS_HEADLINE_METRICS = ("sensitivity", "specificity", "auc")
# Guo et al. 2017, "On Calibration of Modern Neural Networks" (ICML), section 2: M = 15 bins.
DEFAULT_CALIBRATION_BINS = 15
# Kaggle's log-loss evaluation clips every probability to [1e-15, 1 - 1e-15].
KAGGLE_LOG_LOSS_EPS = 1e-15
# RSNA 2019 challenge: weight 2 for `any`, 1 for each subtype, in RSNA_LABELS order.
RSNA_LABEL_WEIGHTS = tuple(2.0 if name == "any" else 1.0 for name in RSNA_LABELS)
# More distinct truth values than this in a column: not categorical (degenerate check off).
_MAX_TRUTH_CATEGORIES = 256
# Index rows drawn per block; bounds the [rows, n] index array of a bootstrap to ~32 MiB.
_INDEX_BLOCK_ELEMENTS = 1 << 22
# A bootstrap whose skipped (degenerate or undefined) resamples exceed this share gives no
# interval: the kept resamples all hold some label's only positive (or negative) scan, so the
# interval is conditional on it — a difference can then be the same in every kept resample (a
# zero-width "interval"). A label with one positive scan loses (1 - 1/n)^n ≈ e^-1 = 37 % of
# the resamples, one with two 13.5 %, three 5 %: 20 % flags a single positive, or several
# labels with two.
MAX_DEGENERATE_SHARE = 0.2
TOO_FEW_POSITIVES = "too few positives"
# The range of the metrics the tables report (precision, recall, F1, AUC, sensitivity, …).
UNIT_RANGE = (0.0, 1.0)


# ------------------------------------------------------------------------------ validation


def _fail(message: str):
  raise errors.ConfigError(message)


def _as_float(x, name: str, ndim: Optional[int] = None) -> np.ndarray:
  try:
    arr = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError):
    _fail(f"{name} must be numeric")
  if ndim is not None and arr.ndim != ndim:
    _fail(f"{name} must be {ndim}-D; got shape {arr.shape}")
  if arr.size == 0:
    _fail(f"{name} is empty")
  if not np.all(np.isfinite(arr)):
    _fail(f"{name} holds NaN or inf")
  return arr


def _check_alpha(alpha: float):
  if not 0.0 < float(alpha) < 1.0:
    _fail(f"alpha must lie in (0, 1); got {alpha}")


def _check_probs(p: np.ndarray, name: str):
  if p.min() < 0.0 or p.max() > 1.0:
    _fail(f"{name} must lie in [0, 1]; got {p.min():.4g}..{p.max():.4g}")


def _check_binary(y: np.ndarray, name: str):
  if not np.all((y == 0) | (y == 1)):
    _fail(f"{name} must hold 0/1 values only")


def degenerate_status(n_boot: int, n_valid: int,
                      max_degenerate: float = MAX_DEGENERATE_SHARE) -> str:
  """"ok", or `TOO_FEW_POSITIVES` when more than `max_degenerate` of `n_boot` resamples were
  skipped (also for an interval stored without a status: its n_boot and n_valid decide)."""
  if n_boot <= 0:
    return "ok"
  return TOO_FEW_POSITIVES if (n_boot - n_valid) > max_degenerate * n_boot else "ok"


def ci_text(value: float, lo: float, hi: float, status: str = "ok", digits: int = 3,
            signed: bool = False) -> str:
  """`format_ci`, or "0.210 [too few positives]" for an interval withheld by its status;
  `signed` prints differences with their sign ("+0.043 [-0.008, +0.109]")."""
  if value is None or not math.isfinite(value):
    return "n/a"
  f = f"{{:{'+' if signed else ''}.{digits}f}}"
  if status != "ok":
    return f"{f.format(value)} [{status}]"
  if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
    return f"{f.format(value)} [n/a]"
  return f"{f.format(value)} [{f.format(lo)}, {f.format(hi)}]"


def format_ci(value: float, lo: float, hi: float, digits: int = 3) -> str:
  """"0.885 [0.852, 0.913]" for tables; "n/a" for an undefined value, "[n/a]" for a missing CI."""
  if value is None or not math.isfinite(value):
    return "n/a"
  head = f"{value:.{digits}f}"
  if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
    return f"{head} [n/a]"
  return f"{head} [{lo:.{digits}f}, {hi:.{digits}f}]"


# --------------------------------------------------------------------------- paired t-test


@dataclasses.dataclass(frozen=True)
class PairedTTest:
  """Result of `paired_t_test` (`method` "plain") or `corrected_t_test` ("corrected", with the
  factor that multiplies the sample variance of the differences in place of 1/n);
  `mean_diff` and its CI are of a - b."""
  t: float
  p: float
  mean_diff: float
  ci_low: float
  ci_high: float
  df: int
  n: int
  method: str = "plain"
  variance_factor: float = float("nan")


def paired_t_test(a, b, *, alpha: float = 0.05) -> PairedTTest:
  """Student's paired t-test over folds: two models' per-fold metrics, same folds in order.

  d = a - b, t = mean(d) / (sd(d) / sqrt(n)) with sd's ddof = 1, df = n - 1, two-sided
  P = 2 * T_df.sf(|t|); CI = mean(d) ± T_df.ppf(1 - alpha/2) * sd(d) / sqrt(n). Equal to
  `scipy.stats.ttest_rel(a, b)` and its `confidence_interval()` (tested), including its edge
  cases: identical models (d all 0) give t = P = NaN; a constant non-zero d gives t = ±inf, P = 0.
  """
  _check_alpha(alpha)
  d = _diffs(a, b)
  return _t_result(d, 1.0 / d.size, alpha, "plain")


def _diffs(a, b) -> np.ndarray:
  a = _as_float(a, "a (per-fold metrics)", ndim=1)
  b = _as_float(b, "b (per-fold metrics)", ndim=1)
  if a.shape != b.shape:
    _fail(f"a has {a.size} folds but b has {b.size}; a paired test needs the same folds")
  if a.size < 2:
    _fail(f"a paired t-test needs at least 2 folds; got {a.size}")
  return a - b


def corrected_variance_factor(n: int, test_train_ratio, groups: Optional[Sequence] = None
                              ) -> float:
  """The factor c with Var(mean d) ≈ c · s², s² the sample variance of n fold differences.

  Nadeau & Bengio 2003 ("Inference for the Generalization Error", Machine Learning 52:239;
  the "corrected resampled t-test", used for k-fold cross-validation by Bouckaert & Frank
  2004, PAKDD): c = 1/n + n_test/n_train in place of the plain test's 1/n. It follows from a
  correlation rho = n_test / (n_test + n_train) between the folds' differences (their
  training sets overlap): Var(mean d) = sigma² (1/n + rho (n - 1)/n) and E[s²] =
  (1 - rho) sigma², so c = (1/n + rho (n - 1)/n) / (1 - rho) = 1/n + rho / (1 - rho).

  `test_train_ratio`: n_test / n_train, one number or one per fold. `groups` (one per fold,
  e.g. the data set): folds correlate only within a group (two data sets share no training
  scan). The same derivation with rho_ij = the mean of the two folds' rho within a group and 0
  across gives c = (1/n + S/n²) / (1 - S/(n (n - 1))), S = sum over ordered pairs i != j of
  rho_ij; with one group and one ratio this is exactly 1/n + n_test/n_train (tested).
  """
  n = int(n)
  if n < 2:
    _fail(f"the corrected t-test needs at least 2 folds; got {n}")
  ratio = np.asarray(test_train_ratio, np.float64).ravel()
  if ratio.size == 1:
    ratio = np.full(n, float(ratio[0]))
  if ratio.size != n:
    _fail(f"test_train_ratio needs one value or one per fold ({n}); got {ratio.size}")
  if not np.all(np.isfinite(ratio)) or np.any(ratio < 0):
    _fail(f"test_train_ratio must be finite and >= 0; got {ratio.tolist()}")
  if groups is None:
    g = np.zeros(n, np.int64)
  else:
    if len(groups) != n:
      _fail(f"groups has {len(groups)} entries for {n} folds")
    g = np.unique(np.asarray([str(x) for x in groups]), return_inverse=True)[1].ravel()
  rho = ratio / (1.0 + ratio)
  same = (g[:, None] == g[None, :]) & ~np.eye(n, dtype=bool)
  total = float(np.sum(((rho[:, None] + rho[None, :]) / 2.0) * same))
  return (1.0 / n + total / n ** 2) / (1.0 - total / (n * (n - 1)))


def corrected_t_test(a, b, *, test_train_ratio, groups: Optional[Sequence] = None,
                     alpha: float = 0.05) -> PairedTTest:
  """Nadeau & Bengio's corrected resampled t-test of two models' per-fold metrics.

  d = a - b over the same n folds, s² its sample variance (ddof 1), c =
  `corrected_variance_factor(test_train_ratio, groups)` (1/n + n_test/n_train for one data
  set), t = mean(d) / sqrt(c s²), df = n - 1, two-sided P = 2 T_df.sf(|t|), CI = mean(d) ±
  T_df.ppf(1 - alpha/2) sqrt(c s²). With n_test/n_train = 0 it is `paired_t_test`. Edge cases
  as `paired_t_test` (d all 0: t = P = NaN; constant non-zero d: t = ±inf, P = 0).
  """
  _check_alpha(alpha)
  d = _diffs(a, b)
  return _t_result(d, corrected_variance_factor(d.size, test_train_ratio, groups), alpha,
                   "corrected")


def _t_result(d: np.ndarray, factor: float, alpha: float, method: str) -> PairedTTest:
  n, df = d.size, d.size - 1
  mean = float(d.mean())
  se = math.sqrt(factor) * float(d.std(ddof=1))
  if se > 0.0:
    t = mean / se
  else:
    t = float("nan") if mean == 0.0 else math.copysign(math.inf, mean)
  p = float(2.0 * sps.t.sf(abs(t), df)) if not math.isnan(t) else float("nan")
  half = float(sps.t.ppf(1.0 - alpha / 2.0, df)) * se
  return PairedTTest(t=float(t), p=p, mean_diff=mean, ci_low=mean - half, ci_high=mean + half,
                     df=df, n=n, method=method, variance_factor=float(factor))


# ------------------------------------------------------------- across-fold interval


@dataclasses.dataclass(frozen=True)
class FoldInterval:
  """A metric over k folds: mean, sample sd (ddof 1), and the t-based CI of the mean;
  `clipped`: the t-interval passed the metric's range and [lo, hi] was cut at its bound."""
  mean: float
  sd: float
  n: int
  lo: float
  hi: float
  alpha: float = 0.05
  clipped: bool = False

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


def fold_interval(values: Sequence[float], *, alpha: float = 0.05,
                  bounds: Optional[tuple[float, float]] = None) -> FoldInterval:
  """mean ± t_{n-1, 1 - alpha/2} · sd / sqrt(n) over the finite `values` (one per fold); equal
  to `scipy.stats.ttest_1samp(values, 0).confidence_interval(1 - alpha)` (tested). With one
  value: sd 0 and no interval (NaN bounds); with none: everything NaN.

  `bounds` (lo, hi): the metric's range (`UNIT_RANGE` for precision, recall, F1, AUC, …). A
  t-interval reaching past it is clipped there and marked `clipped` (the symmetric t-interval
  of a mean near a bound is not a valid interval beyond it; the tables say so).
  """
  v = np.asarray([x for x in values if x is not None and math.isfinite(float(x))], np.float64)
  nan = float("nan")
  if v.size == 0:
    return FoldInterval(nan, nan, 0, nan, nan, alpha)
  mean = float(v.mean())
  if v.size == 1:
    return FoldInterval(mean, 0.0, 1, nan, nan, alpha)
  sd = float(v.std(ddof=1))
  half = float(sps.t.ppf(1 - alpha / 2, v.size - 1)) * sd / math.sqrt(v.size)
  lo, hi = mean - half, mean + half
  clipped = False
  if bounds is not None:
    b_lo, b_hi = float(bounds[0]), float(bounds[1])
    if b_lo >= b_hi:
      _fail(f"bounds must be (lo, hi) with lo < hi; got {bounds}")
    clipped = lo < b_lo or hi > b_hi
    lo, hi = max(lo, b_lo), min(hi, b_hi)
  return FoldInterval(mean, sd, int(v.size), lo, hi, alpha, clipped)



# ------------------------------------------------------------------------------- bootstrap


@dataclasses.dataclass(frozen=True)
class BootstrapCI:
  """A metric on the full sample (`value`) and its bootstrap interval [lo, hi].

  `samples` holds the metric of every resample, NaN where the resample was skipped as
  degenerate; `n_valid` counts the others (the interval uses only those). `status`
  `TOO_FEW_POSITIVES`: more than `max_degenerate` of the resamples were skipped, so [lo, hi]
  is NaN (no interval; see `MAX_DEGENERATE_SHARE`); else "ok".
  """
  value: float
  lo: float
  hi: float
  alpha: float
  method: str
  n_boot: int
  n_valid: int
  samples: np.ndarray = dataclasses.field(repr=False, compare=False)
  status: str = "ok"

  def __str__(self) -> str:
    return ci_text(self.value, self.lo, self.hi, self.status)


@dataclasses.dataclass(frozen=True)
class PairedBootstrapCI(BootstrapCI):
  """`value` = metric(a) - metric(b) on the full sample; `p_value`: two-sided bootstrap P of 0."""
  value_a: float = float("nan")
  value_b: float = float("nan")
  p_value: float = float("nan")


MetricFn = Callable[[np.ndarray, np.ndarray], Any]


def _metric_vector(out: Any, keys: Optional[tuple]) -> tuple[Optional[tuple], np.ndarray]:
  """A metric_fn result (float or {name: float}) → (keys, float vector)."""
  if isinstance(out, Mapping):
    got = tuple(out)
    if keys is not None and got != keys:
      _fail(f"metric_fn returned keys {got[:4]}… but {keys[:4]}… on the full sample")
    return got, np.array([float(out[k]) for k in got], dtype=np.float64)
  try:
    value = float(out)
  except (TypeError, ValueError):
    _fail(f"metric_fn must return a float or a mapping of floats; got {type(out).__name__}")
  if keys is not None:
    _fail("metric_fn returned a float but a mapping on the full sample")
  return None, np.array([value])


def _category_indicator(y_true: np.ndarray) -> np.ndarray:
  """[n, C] 0/1: one column per (column of y_true, value it takes) — the classes to keep."""
  cols = y_true.reshape(y_true.shape[0], -1)
  blocks = []
  for j in range(cols.shape[1]):
    values, codes = np.unique(cols[:, j], return_inverse=True)
    if values.size > _MAX_TRUTH_CATEGORIES:
      _fail(f"y_true column {j} takes {values.size} distinct values; for a non-categorical "
            f"truth pass skip_degenerate=False")
    blocks.append(np.eye(codes.max() + 1, dtype=np.float64)[codes.ravel()])
  return np.concatenate(blocks, axis=1)


def _index_blocks(n: int, n_boot: int, seed: int):
  """Resample index arrays [rows, n], drawn from `np.random.default_rng(seed)`.

  With n_boot * n <= 2**22 this is one `rng.integers(0, n, (n_boot, n))` call, the same draw as
  `scipy.stats.bootstrap(..., rng=np.random.default_rng(seed))` (tested).
  """
  rng = np.random.default_rng(seed)
  rows = max(1, _INDEX_BLOCK_ELEMENTS // n)
  for start in range(0, n_boot, rows):
    yield rng.integers(0, n, (min(rows, n_boot - start), n))


def _check_bootstrap_args(y_true, scores: Sequence, n_boot: int, alpha: float, method: str
                          ) -> tuple[np.ndarray, list[np.ndarray]]:
  _check_alpha(alpha)
  if int(n_boot) != n_boot or n_boot < 1:
    _fail(f"n_boot must be a positive integer; got {n_boot}")
  if method not in ("percentile", "bca"):
    _fail(f"method must be 'percentile' or 'bca'; got {method!r}")
  y_true = np.asarray(y_true)
  if y_true.ndim == 0 or y_true.shape[0] == 0:
    _fail("y_true is empty")
  arrays = []
  for name, s in scores:
    s = np.asarray(s)
    if s.ndim == 0 or s.shape[0] != y_true.shape[0]:
      _fail(f"{name} has {s.shape[0] if s.ndim else 0} rows but y_true has {y_true.shape[0]}")
    arrays.append(s)
  return y_true, arrays


def _bootstrap_samples(metric_fn: MetricFn, y_true: np.ndarray, scores: list[np.ndarray],
                       n_boot: int, seed: int, skip_degenerate: bool, progress: bool
                       ) -> tuple[Optional[tuple], list[np.ndarray], np.ndarray]:
  """Full-sample values and the [n_boot, K] resampled values per score array."""
  n = y_true.shape[0]
  keys = None
  full = []
  for s in scores:
    keys, v = _metric_vector(metric_fn(y_true, s), keys)
    full.append(v)
  boot = [np.full((n_boot, full[0].size), np.nan) for _ in scores]
  indicator = _category_indicator(y_true) if skip_degenerate else None
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=n_boot, desc="bootstrap", unit="resample")
  row = 0
  for idx in _index_blocks(n, n_boot, seed):
    keep = np.ones(idx.shape[0], bool)
    if indicator is not None:
      offsets = (idx + n * np.arange(idx.shape[0])[:, None]).ravel()
      mult = np.bincount(offsets, minlength=idx.size).reshape(idx.shape).astype(np.float64)
      keep = np.all(mult @ indicator > 0, axis=1)
    for r in range(idx.shape[0]):
      if keep[r]:
        yt = y_true[idx[r]]
        for out, s in zip(boot, scores):
          out[row + r] = _metric_vector(metric_fn(yt, s[idx[r]]), keys)[1]
    row += idx.shape[0]
    if bar is not None:
      bar.update(idx.shape[0])
  if bar is not None:
    bar.close()
  return keys, full, boot


def _jackknife(metric_fn: MetricFn, y_true: np.ndarray, scores: list[np.ndarray],
               keys: Optional[tuple]) -> list[np.ndarray]:
  """Leave-one-scan-out values [n, K] per score array (for BCa's acceleration)."""
  n = y_true.shape[0]
  outs = [np.empty((n, 1 if keys is None else len(keys))) for _ in scores]
  everyone = np.arange(n)
  for i in range(n):
    idx = np.delete(everyone, i)
    for out, s in zip(outs, scores):
      out[i] = _metric_vector(metric_fn(y_true[idx], s[idx]), keys)[1]
  return outs


def _interval(theta: float, boot: np.ndarray, jack: Optional[np.ndarray], alpha: float,
              method: str) -> tuple[float, float]:
  """Percentile or BCa interval of one metric from its finite bootstrap values."""
  valid = boot[np.isfinite(boot)]
  if valid.size == 0 or not math.isfinite(theta):
    return float("nan"), float("nan")
  q = np.array([alpha / 2.0, 1.0 - alpha / 2.0])
  if method == "bca":
    # Efron & Tibshirani 1993, "An Introduction to the Bootstrap", 14.3 and eq. 14.15.
    pct = (np.count_nonzero(valid < theta) + np.count_nonzero(valid <= theta)) / (2 * valid.size)
    z0 = float(ndtri(pct))
    jk = jack[np.isfinite(jack)] if jack is not None else np.zeros(0)
    dev = jk.mean() - jk if jk.size else jk
    den = float(np.sum(dev ** 2))
    accel = float(np.sum(dev ** 3)) / (6.0 * den ** 1.5) if den > 0 else 0.0
    z = ndtri(q)
    bca_q = ndtr(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))
    if np.all(np.isfinite(bca_q)):
      q = bca_q
    else:
      log.warning("BCa interval undefined (bootstrap values all on one side of the estimate); "
                  "using the percentile interval")
  lo, hi = np.quantile(valid, q)
  return float(lo), float(hi)


def _log_skipped(n_boot: int, n_valid: int):
  if n_valid < n_boot:
    level = logging.WARNING if n_valid < 0.9 * n_boot else logging.INFO
    log.log(level, "bootstrap: %d of %d resamples skipped as degenerate", n_boot - n_valid,
            n_boot)


def bootstrap_ci(metric_fn: MetricFn, y_true, y_score, *, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, method: str = "percentile", skip_degenerate: bool = True,
                 progress: bool = False, max_degenerate: float = MAX_DEGENERATE_SHARE
                 ) -> Union[BootstrapCI, dict[str, BootstrapCI]]:
  """Bootstrap (1 - alpha) CI of `metric_fn(y_true, y_score)` by resampling scans (rows).

  Each of `n_boot` resamples draws n rows with replacement (`np.random.default_rng(seed)`), so
  the same seed gives the same intervals. `metric_fn` returns a float, or a mapping name → float
  (one CI per name, all from the same resamples).

  Methods (Efron & Tibshirani 1993, chapters 13-14): "percentile" = the alpha/2 and 1 - alpha/2
  quantiles (linear interpolation) of the resampled values; "bca" = bias-corrected and
  accelerated percentiles, acceleration from the n leave-one-out values (n more evaluations).
  Both equal `scipy.stats.bootstrap` with the same generator when n_boot * n <= 2**22 (one
  index draw; tested). `progress` shows a tqdm bar (rate, ETA) for long runs.

  Degenerate resamples: with `skip_degenerate` (the default; y_true must then be categorical), a
  resample in which some column of y_true lacks a value it takes on the full sample (a class with
  no positives, or no negatives) is skipped, as is any resample where metric_fn returns NaN. The
  interval uses the `n_valid` others; `samples` keeps NaN for the skipped ones. When more than
  `max_degenerate` of the resamples are skipped the result has no interval (NaN bounds, status
  `TOO_FEW_POSITIVES`): the kept resamples would all hold the rare label's few scans.
  """
  y_true, (y_score,) = _check_bootstrap_args(y_true, [("y_score", y_score)], n_boot, alpha,
                                             method)
  keys, (full,), (boot,) = _bootstrap_samples(metric_fn, y_true, [y_score], n_boot, seed,
                                              skip_degenerate, progress)
  jack = _jackknife(metric_fn, y_true, [y_score], keys)[0] if method == "bca" else None
  results = []
  for k in range(full.size):
    lo, hi = _interval(full[k], boot[:, k], None if jack is None else jack[:, k], alpha, method)
    n_valid = int(np.count_nonzero(np.isfinite(boot[:, k])))
    status = degenerate_status(n_boot, n_valid, max_degenerate)
    if status != "ok":
      lo = hi = float("nan")
    results.append(BootstrapCI(value=float(full[k]), lo=lo, hi=hi, alpha=alpha, method=method,
                               n_boot=n_boot, n_valid=n_valid, samples=boot[:, k].copy(),
                               status=status))
  _log_skipped(n_boot, min(r.n_valid for r in results))
  return results[0] if keys is None else dict(zip(keys, results))


def paired_bootstrap(metric_fn: MetricFn, y_true, score_a, score_b, *, n_boot: int = 1000,
                     seed: int = 0, alpha: float = 0.05, method: str = "percentile",
                     skip_degenerate: bool = True, progress: bool = False,
                     max_degenerate: float = MAX_DEGENERATE_SHARE
                     ) -> Union[PairedBootstrapCI, dict[str, PairedBootstrapCI]]:
  """Bootstrap CI of metric(a) - metric(b) for two models (or readers) on the same scans.

  Both are evaluated on the same resampled rows, so the interval accounts for their
  correlation (e.g. DrCT1 vs DrCT2 on one test set; reader assisted vs alone). Resampling,
  methods and degenerate resamples as in `bootstrap_ci`. `p_value` is the two-sided percentile
  bootstrap P of "no difference": min(1, 2 * min(P*(d <= 0), P*(d >= 0))) over the valid
  resampled differences d (resolution 1 / n_valid; 1.0 for identical models). More than
  `max_degenerate` of the resamples skipped: no interval and no P (status `TOO_FEW_POSITIVES`:
  a difference that rests on a label's one or two positive scans is not an interval).
  """
  y_true, (score_a, score_b) = _check_bootstrap_args(
      y_true, [("score_a", score_a), ("score_b", score_b)], n_boot, alpha, method)
  if score_a.shape != score_b.shape:
    _fail(f"score_a {score_a.shape} and score_b {score_b.shape} must have the same shape")
  keys, (full_a, full_b), (boot_a, boot_b) = _bootstrap_samples(
      metric_fn, y_true, [score_a, score_b], n_boot, seed, skip_degenerate, progress)
  diff = boot_a - boot_b
  jack = None
  if method == "bca":
    jack_a, jack_b = _jackknife(metric_fn, y_true, [score_a, score_b], keys)
    jack = jack_a - jack_b
  results = []
  for k in range(full_a.size):
    theta = float(full_a[k] - full_b[k])
    lo, hi = _interval(theta, diff[:, k], None if jack is None else jack[:, k], alpha, method)
    d = diff[np.isfinite(diff[:, k]), k]
    p = (min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))) if d.size else float("nan"))
    status = degenerate_status(n_boot, d.size, max_degenerate)
    if status != "ok":
      lo = hi = p = float("nan")
    results.append(PairedBootstrapCI(
        value=theta, lo=lo, hi=hi, alpha=alpha, method=method, n_boot=n_boot, n_valid=d.size,
        samples=diff[:, k].copy(), status=status, value_a=float(full_a[k]),
        value_b=float(full_b[k]), p_value=float(p)))
  _log_skipped(n_boot, min(r.n_valid for r in results))
  return results[0] if keys is None else dict(zip(keys, results))


# ------------------------------------------------------- bootstrap of ctjax.eval.metrics reports


def _report_getter(key: str) -> Callable[[Mapping[str, Any]], float]:
  parts = tuple(key.split("/"))

  def get(report):
    value = report
    for part in parts:
      value = value[part]
    return float(value)
  return get


def _report_metric_fn(report_fn: Callable[..., dict], y_true, y_prob, names: Sequence[str],
                      keys: Sequence[str], **kwargs) -> MetricFn:
  """metric_fn → {key: float} picking `keys` (flatten_scalars names) of one report per call."""
  if isinstance(keys, str) or not keys:
    _fail("keys must be a non-empty sequence of report names such as 'macro_f1'")
  known = metrics.flatten_scalars(report_fn(y_true, y_prob, names, **kwargs))
  unknown = [k for k in keys if k not in known]
  if unknown:
    _fail(f"unknown report keys {unknown[:3]}; known e.g. {sorted(known)[:4]} "
          f"(per-class: 'per_class/<name>/<metric>')")
  getters = [(k, _report_getter(k)) for k in keys]

  def metric_fn(yt, yp):
    report = report_fn(yt, yp, names, **kwargs)
    return {k: get(report) for k, get in getters}
  return metric_fn


def _check_multilabel(y_true, y_prob, names, name="y_prob") -> tuple[np.ndarray, np.ndarray]:
  y_true = _as_float(y_true, "y_true", ndim=2)
  y_prob = _as_float(y_prob, name, ndim=2)
  if y_true.shape != y_prob.shape or y_true.shape[1] != len(names):
    _fail(f"y_true {y_true.shape} and {name} {y_prob.shape} must both be [N, {len(names)}]")
  _check_binary(y_true, "y_true")
  return y_true, y_prob


def _check_multiclass(y_true, y_prob, names, name="y_prob") -> tuple[np.ndarray, np.ndarray]:
  y_true = _as_float(y_true, "y_true", ndim=1)
  y_prob = _as_float(y_prob, name, ndim=2)
  if y_prob.shape != (y_true.size, len(names)):
    _fail(f"{name} {y_prob.shape} must be [{y_true.size}, {len(names)}] for {y_true.size} labels")
  if np.any(y_true != np.round(y_true)) or y_true.min() < 0 or y_true.max() >= len(names):
    _fail(f"y_true must hold class ids in [0, {len(names)})")
  return y_true.astype(np.int64), y_prob


def multiclass_headline_keys(names: Sequence[str]) -> tuple[str, ...]:
  """per_class/<name>/{sensitivity, specificity, auc} for every class, in `names` order."""
  return tuple(f"per_class/{n}/{m}" for n in names for m in MULTICLASS_HEADLINE_METRICS)


def multilabel_bootstrap(y_true, y_prob, names: Sequence[str], *,
                         keys: Sequence[str] = MULTILABEL_HEADLINE_KEYS, threshold: float = 0.5,
                         n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                         method: str = "percentile") -> dict[str, BootstrapCI]:
  """Scan-level bootstrap CIs of `metrics.multilabel_report` figures (macro-F1/-precision/
  -recall/-AUC by default; any `flatten_scalars` key, e.g. 'per_class/ich/auc').

  One report per resample; resamples where a label that has positives and negatives on the
  full set loses either are skipped (see `bootstrap_ci`), so every macro average is over the
  same labels as on the full set.
  """
  y_true, y_prob = _check_multilabel(y_true, y_prob, names)
  fn = _report_metric_fn(metrics.multilabel_report, y_true, y_prob, names, keys,
                         threshold=threshold)
  return bootstrap_ci(fn, y_true, y_prob, n_boot=n_boot, seed=seed, alpha=alpha, method=method)


def multiclass_bootstrap(y_true, y_prob, names: Sequence[str], *,
                         keys: Optional[Sequence[str]] = None, n_boot: int = 1000, seed: int = 0,
                         alpha: float = 0.05, method: str = "percentile"
                         ) -> dict[str, BootstrapCI]:
  """Scan-level bootstrap CIs of `metrics.multiclass_report` figures (default: per-class
  sensitivity, specificity and AUC, `multiclass_headline_keys(names)`).

  Resamples that lose a class present on the full set are skipped (see `bootstrap_ci`).
  """
  y_true, y_prob = _check_multiclass(y_true, y_prob, names)
  keys = multiclass_headline_keys(names) if keys is None else keys
  fn = _report_metric_fn(metrics.multiclass_report, y_true, y_prob, names, keys)
  return bootstrap_ci(fn, y_true, y_prob, n_boot=n_boot, seed=seed, alpha=alpha, method=method)


def paired_multilabel_bootstrap(y_true, prob_a, prob_b, names: Sequence[str], *,
                                keys: Sequence[str] = MULTILABEL_HEADLINE_KEYS,
                                threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
                                alpha: float = 0.05, method: str = "percentile"
                                ) -> dict[str, PairedBootstrapCI]:
  """CIs of report(a) - report(b) figures for two multi-label models on the same scans."""
  y_true, prob_a = _check_multilabel(y_true, prob_a, names, "prob_a")
  _, prob_b = _check_multilabel(y_true, prob_b, names, "prob_b")
  fn = _report_metric_fn(metrics.multilabel_report, y_true, prob_a, names, keys,
                         threshold=threshold)
  return paired_bootstrap(fn, y_true, prob_a, prob_b, n_boot=n_boot, seed=seed, alpha=alpha,
                          method=method)


def paired_multiclass_bootstrap(y_true, prob_a, prob_b, names: Sequence[str], *,
                                keys: Optional[Sequence[str]] = None, n_boot: int = 1000,
                                seed: int = 0, alpha: float = 0.05, method: str = "percentile"
                                ) -> dict[str, PairedBootstrapCI]:
  """CIs of report(a) - report(b) figures for two multiclass models on the same scans."""
  y_true, prob_a = _check_multiclass(y_true, prob_a, names, "prob_a")
  _, prob_b = _check_multiclass(y_true, prob_b, names, "prob_b")
  keys = multiclass_headline_keys(names) if keys is None else keys
  fn = _report_metric_fn(metrics.multiclass_report, y_true, prob_a, names, keys)
  return paired_bootstrap(fn, y_true, prob_a, prob_b, n_boot=n_boot, seed=seed, alpha=alpha,
                          method=method)


# ---------------------------------------------------------------------------------- DeLong


@dataclasses.dataclass(frozen=True)
class DeLongTest:
  """Two correlated AUCs: `cov` is their 2 × 2 DeLong covariance; diff = auc_a - auc_b."""
  auc_a: float
  auc_b: float
  diff: float
  cov: np.ndarray = dataclasses.field(compare=False)
  z: float = float("nan")
  p: float = float("nan")
  ci_low: float = float("nan")
  ci_high: float = float("nan")


class AUCInterval(NamedTuple):
  auc: float
  lo: float
  hi: float
  se: float


def _check_auc_inputs(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
  y_true = _as_float(y_true, "y_true", ndim=1)
  _check_binary(y_true, "y_true")
  scores = _as_float(scores, "scores")
  if scores.ndim == 1:
    scores = scores[None]
  if scores.ndim != 2 or scores.shape[1] != y_true.size:
    _fail(f"scores {scores.shape} must be [n] or [k, n] with n = {y_true.size} (y_true)")
  m = int(y_true.sum())
  if m < 2 or y_true.size - m < 2:
    _fail(f"DeLong's variance needs >= 2 positives and >= 2 negatives; got {m} and "
          f"{y_true.size - m}")
  return y_true.astype(bool), scores


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
  """AUCs [k] and their DeLong covariance [k, k] for k score vectors on the same scans.

  With X the m positives' and Y the n negatives' scores, psi(x, y) = 1 if x > y, 1/2 if equal,
  0 else: structural components V10_i = mean_j psi(X_i, Y_j), V01_j = mean_i psi(X_i, Y_j),
  AUC = mean(V10), S = cov(V10)/m + cov(V01)/n (sample covariances, ddof = 1; DeLong et al.
  1988, eqs. 2-5). Computed from midranks in O(k (m + n) log(m + n)) (Sun & Xu 2014, Algorithm 2):
  V10_i = (R_i - R^X_i)/n and V01_j = 1 - (R_j - R^Y_j)/m, R the midrank among all scores,
  R^X / R^Y among the positives / negatives only. The AUC equals `metrics.binary_auc`.
  """
  truth, scores = _check_auc_inputs(y_true, scores)
  pos, neg = scores[:, truth], scores[:, ~truth]
  m, n = pos.shape[1], neg.shape[1]
  ranks = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
  v10 = (ranks[:, :m] - sps.rankdata(pos, axis=1)) / n
  v01 = 1.0 - (ranks[:, m:] - sps.rankdata(neg, axis=1)) / m
  aucs = v10.mean(axis=1)
  cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
  return aucs, cov


def delong_test(y_true, score_a, score_b, *, alpha: float = 0.05) -> DeLongTest:
  """DeLong's test of AUC(a) = AUC(b) on the same scans, and the CI of AUC(a) - AUC(b).

  z = (A_a - A_b) / sqrt(S_aa + S_bb - 2 S_ab), two-sided P = 2 (1 - Phi(|z|)), CI = diff ±
  Phi^-1(1 - alpha/2) sqrt(var). Zero variance (e.g. identical scores, or both AUCs exactly 1):
  z = 0, P = 1 when the AUCs are equal, else z = ±inf, P = 0.
  """
  _check_alpha(alpha)
  a = _as_float(score_a, "score_a", ndim=1)
  b = _as_float(score_b, "score_b", ndim=1)
  if a.shape != b.shape:
    _fail(f"score_a has {a.size} scans but score_b has {b.size}")
  aucs, cov = delong_covariance(y_true, np.stack([a, b]))
  diff = float(aucs[0] - aucs[1])
  var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
  if var <= 1e-14 * max(float(cov[0, 0] + cov[1, 1]), 1e-300):   # cancellation to ~0
    var = 0.0
  if var > 0.0:
    z = diff / math.sqrt(var)
  else:
    z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
  p = float(2.0 * sps.norm.sf(abs(z)))
  half = float(ndtri(1.0 - alpha / 2.0)) * math.sqrt(var)
  return DeLongTest(auc_a=float(aucs[0]), auc_b=float(aucs[1]), diff=diff, cov=cov, z=float(z),
                    p=p, ci_low=diff - half, ci_high=diff + half)


def delong_auc_ci(y_true, y_score, *, alpha: float = 0.05) -> AUCInterval:
  """AUC with its DeLong standard error and normal (1 - alpha) CI, clipped to [0, 1]."""
  _check_alpha(alpha)
  aucs, cov = delong_covariance(y_true, _as_float(y_score, "y_score", ndim=1))
  se = math.sqrt(max(float(cov[0, 0]), 0.0))
  half = float(ndtri(1.0 - alpha / 2.0)) * se
  auc = float(aucs[0])
  return AUCInterval(auc=auc, lo=max(0.0, auc - half), hi=min(1.0, auc + half), se=se)


# ---------------------------------------------------------------------------- Fleiss' kappa


def category_counts(labels, categories: Optional[Sequence] = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """[subjects, raters] labels → ([subjects, categories] counts, categories).

  Categories default to the sorted distinct labels (as statsmodels' `aggregate_raters`); pass
  them to keep a category nobody used.
  """
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.size == 0:
    _fail(f"labels must be a non-empty [subjects, raters] array; got shape {labels.shape}")
  if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
    _fail("labels hold NaN (a missing rating); Fleiss' kappa needs every rater on every subject")
  cats = np.unique(labels) if categories is None else np.asarray(categories)
  if cats.ndim != 1 or cats.size == 0 or np.unique(cats).size != cats.size:
    _fail("categories must be a non-empty sequence of distinct values")
  counts = (labels[:, :, None] == cats[None, None, :]).sum(axis=1)
  if np.any(counts.sum(axis=1) != labels.shape[1]):
    _fail(f"labels hold values outside categories {cats.tolist()[:6]}")
  return counts.astype(np.int64), cats


def _check_counts(counts) -> np.ndarray:
  table = _as_float(counts, "counts", ndim=2)
  if np.any(table < 0) or np.any(table != np.round(table)):
    _fail("counts must be non-negative integers")
  totals = table.sum(axis=1)
  if np.any(totals != totals[0]):
    _fail("every subject must be rated by the same number of raters (row sums differ)")
  if totals[0] < 2:
    _fail(f"Fleiss' kappa needs at least 2 raters per subject; got {int(totals[0])}")
  return table


def fleiss_kappa(counts) -> float:
  """Fleiss' kappa from a [subjects, categories] table of how many raters chose each category.

  Fleiss 1971 (Psychological Bulletin 76:378): with N subjects, n raters each, n_ij counts,
  P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P_bar = mean_i P_i, p_j = sum_i n_ij / (N n),
  P_e = sum_j p_j^2, kappa = (P_bar - P_e) / (1 - P_e). Equals statsmodels' `fleiss_kappa`
  (tested). NaN when undefined: every rating in one category (P_e = 1).
  """
  table = _check_counts(counts)
  n = table[0].sum()
  p_i = (np.sum(table ** 2, axis=1) - n) / (n * (n - 1))
  p_j = table.sum(axis=0) / table.sum()
  p_e = float(np.sum(p_j ** 2))
  if p_e >= 1.0 - 1e-15:
    return float("nan")
  return float((p_i.mean() - p_e) / (1.0 - p_e))


def fleiss_category_kappa(counts) -> np.ndarray:
  """Fleiss' kappa of each category (category vs the rest), [categories].

  Fleiss 1971, eq. 9: kappa_j = 1 - sum_i n_ij (n - n_ij) / (N n (n - 1) p_j (1 - p_j)), the
  overall kappa of the table collapsed to (j, not j). NaN for a category nobody or everybody
  chose. For per-class agreement such as the blend-sign paper's Table 2.
  """
  table = _check_counts(counts)
  big_n, n = table.shape[0], table[0].sum()
  p_j = table.sum(axis=0) / table.sum()
  den = big_n * n * (n - 1) * p_j * (1.0 - p_j)
  num = np.sum(table * (n - table), axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):
    out = 1.0 - num / den
  out[den <= 0] = np.nan
  return out


def fleiss_kappa_from_labels(labels, categories: Optional[Sequence] = None) -> float:
  """Fleiss' kappa from a [subjects, raters] label matrix (see `fleiss_kappa`)."""
  return fleiss_kappa(category_counts(labels, categories)[0])


def cq500_reader_kappa(reads: Union[PathLike, Iterable[Mapping[str, str]]]) -> dict[str, float]:
  """Fleiss' kappa of CQ500's three readers for each of its 9 labels, from reads.csv.

  `reads` is the path of reads.csv (columns `R1:ICH` … `R3:MidlineShift`, values 0/1) or its
  rows as mappings. Returns {label: kappa} keyed by `CQ500_LABELS` (`ich`, …), the reads.csv
  stem of each in `CQ500_COLUMNS`; NaN for a label every reader marks the same way on every
  scan (kappa undefined). A missing column or a value other than 0/1 raises
  `DatasetLayoutError` naming the file.
  """
  path = None
  if isinstance(reads, (str, os.PathLike)):
    path = pathlib.Path(reads)
    if not path.is_file():
      raise errors.DatasetLayoutError("reads.csv not found", path)
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  else:
    rows = list(reads)
  if not rows:
    raise errors.DatasetLayoutError("reads.csv has no rows", path)
  needed = [f"{r}:{c}" for c in CQ500_COLUMNS for r in CQ500_READERS]
  missing = [c for c in needed if c not in rows[0]]
  if missing:
    raise errors.DatasetLayoutError(f"reads.csv lacks columns {missing[:4]}", path)
  out = {}
  for label, stem in zip(CQ500_LABELS, CQ500_COLUMNS):
    votes = np.empty((len(rows), len(CQ500_READERS)), np.int64)
    for i, row in enumerate(rows):
      for j, reader in enumerate(CQ500_READERS):
        col = f"{reader}:{stem}"
        raw = str(row[col]).strip()
        try:
          value = float(raw)
        except ValueError:
          value = -1.0
        if value not in (0.0, 1.0):
          raise errors.DatasetLayoutError(f"row {i + 1}: {col} = {raw!r} is not 0 or 1", path)
        votes[i, j] = int(value)
    out[label] = fleiss_kappa_from_labels(votes, categories=(0, 1))
  return out


# ------------------------------------------------------------------------------ calibration


@dataclasses.dataclass(frozen=True)
class ReliabilityData:
  """Equal-width bins over [0, 1]: `edges` [M + 1]; per bin `confidence` (mean predicted
  probability), `accuracy` (observed frequency) — NaN in empty bins — and `counts`."""
  edges: np.ndarray
  confidence: np.ndarray
  accuracy: np.ndarray
  counts: np.ndarray

  @property
  def ece(self) -> float:
    """sum_b (|B_b| / N) |accuracy_b - confidence_b| over non-empty bins."""
    filled = self.counts > 0
    return float(np.sum(self.counts[filled] * np.abs(self.accuracy[filled]
                                                     - self.confidence[filled]))
                 / self.counts.sum())


def _reliability(correct: np.ndarray, confidence: np.ndarray, n_bins: int) -> ReliabilityData:
  if int(n_bins) != n_bins or n_bins < 1:
    _fail(f"n_bins must be a positive integer; got {n_bins}")
  edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
  # Bin b holds (edges[b], edges[b+1]]; bin 0 also holds 0 (scikit-learn's calibration_curve).
  bins = np.searchsorted(edges[1:-1], confidence)
  counts = np.bincount(bins, minlength=n_bins)
  sum_conf = np.bincount(bins, weights=confidence, minlength=n_bins)
  sum_true = np.bincount(bins, weights=correct, minlength=n_bins)
  with np.errstate(divide="ignore", invalid="ignore"):
    conf = np.where(counts > 0, sum_conf / counts, np.nan)
    acc = np.where(counts > 0, sum_true / counts, np.nan)
  return ReliabilityData(edges=edges, confidence=conf, accuracy=acc, counts=counts)


def reliability_data(y_true, y_prob, *, n_bins: int = DEFAULT_CALIBRATION_BINS
                     ) -> ReliabilityData:
  """Reliability-diagram data of a binary label: y_true [N] 0/1, y_prob [N] P(y = 1).

  Bin b = (b/M, (b+1)/M] (0 in the first); accuracy = fraction of positives in the bin, as
  scikit-learn's `calibration_curve(strategy="uniform")` (tested).
  """
  y_true = _as_float(y_true, "y_true", ndim=1)
  y_prob = _as_float(y_prob, "y_prob", ndim=1)
  if y_true.shape != y_prob.shape:
    _fail(f"y_true has {y_true.size} values but y_prob has {y_prob.size}")
  _check_binary(y_true, "y_true")
  _check_probs(y_prob, "y_prob")
  return _reliability(y_true, y_prob, n_bins)


def expected_calibration_error(y_true, y_prob, *, n_bins: int = DEFAULT_CALIBRATION_BINS
                               ) -> float:
  """ECE of a binary label: sum_b (|B_b| / N) |frac_pos(B_b) - mean_prob(B_b)| (equal-width bins;
  Naeini et al. 2015, AAAI; Guo et al. 2017, eq. 3)."""
  return reliability_data(y_true, y_prob, n_bins=n_bins).ece


def multilabel_ece(y_true, y_prob, names: Sequence[str], *,
                   n_bins: int = DEFAULT_CALIBRATION_BINS) -> dict[str, float]:
  """ECE of each label of a multi-label model ({name: ece}) and their mean under "macro"."""
  y_true, y_prob = _check_multilabel(y_true, y_prob, names)
  _check_probs(y_prob, "y_prob")
  out = {name: _reliability(y_true[:, j], y_prob[:, j], n_bins).ece
         for j, name in enumerate(names)}
  out["macro"] = float(np.mean(list(out.values())))
  return out


def top_label_reliability(y_true, y_prob, *, n_bins: int = DEFAULT_CALIBRATION_BINS
                          ) -> ReliabilityData:
  """Reliability data of a multiclass model's top label (Guo et al. 2017, section 2):
  confidence = max_k p_k, accuracy = fraction whose argmax (first on ties) is the truth."""
  y_prob = _as_float(y_prob, "y_prob", ndim=2)
  y_true, y_prob = _check_multiclass(y_true, y_prob, [str(k) for k in range(y_prob.shape[1])])
  _check_probs(y_prob, "y_prob")
  pred = np.argmax(y_prob, axis=1)
  return _reliability((pred == y_true).astype(np.float64), y_prob.max(axis=1), n_bins)


def top_label_ece(y_true, y_prob, *, n_bins: int = DEFAULT_CALIBRATION_BINS) -> float:
  """Top-label ECE of a multiclass model (see `top_label_reliability`)."""
  return top_label_reliability(y_true, y_prob, n_bins=n_bins).ece


def plot_reliability_diagram(data: Union[ReliabilityData, Mapping[str, ReliabilityData]],
                             path: PathLike, *, title: str = "") -> pathlib.Path:
  """Reliability diagram as a PNG: accuracy vs confidence per bin (bars for one curve, lines
  for several, each labelled with its ECE), the diagonal, and bin counts below."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  curves = {"": data} if isinstance(data, ReliabilityData) else dict(data)
  if not curves:
    _fail("plot_reliability_diagram needs at least one ReliabilityData")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig = Figure(figsize=(4.5, 5.5))
  FigureCanvasAgg(fig)
  ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
  for name, d in curves.items():
    centres = (d.edges[:-1] + d.edges[1:]) / 2.0
    width = np.diff(d.edges)
    filled = d.counts > 0
    label = f"{name + ' ' if name else ''}(ECE {d.ece:.3f})"
    if len(curves) == 1:
      ax.bar(d.edges[:-1][filled], d.accuracy[filled], width=width[filled], align="edge",
             edgecolor="k", alpha=0.7, label=label)
      ax_n.bar(d.edges[:-1], d.counts, width=width, align="edge", edgecolor="k", alpha=0.7)
    else:
      ax.plot(d.confidence[filled], d.accuracy[filled], "o-", ms=3, label=label)
      ax_n.plot(centres, d.counts, drawstyle="steps-mid")
  ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency", title=title or "reliability")
  ax.legend(loc="upper left", fontsize=7)
  ax_n.set(xlabel="predicted probability", ylabel="count")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


# ------------------------------------------------------------------- RSNA challenge log loss


def rsna_weighted_log_loss(y_true, y_prob, *, eps: float = KAGGLE_LOG_LOSS_EPS) -> float:
  """The RSNA 2019 Intracranial Hemorrhage challenge metric: weighted multi-label log loss.

  y_true, y_prob: [N, 6] in `RSNA_LABELS` order (any, epidural, intraparenchymal,
  intraventricular, subarachnoid, subdural); weights w = 2 for `any`, 1 for each subtype.
  p is clipped to [eps, 1 - eps] (Kaggle's log-loss convention, eps = 1e-15), then
  L = -sum_ij w_j [y_ij log p_ij + (1 - y_ij) log(1 - p_ij)] / (N sum_j w_j): the per-image
  weighted mean of the six binary log losses, averaged over images. Equals scikit-learn's
  `log_loss` of the flattened labels with sample weights w (tested).
  """
  y_true, y_prob = _check_multilabel(y_true, y_prob, RSNA_LABELS)
  _check_probs(y_prob, "y_prob")
  if not 0.0 < eps < 0.5:
    _fail(f"eps must lie in (0, 0.5); got {eps}")
  w = np.asarray(RSNA_LABEL_WEIGHTS)
  p = np.clip(y_prob, eps, 1.0 - eps)
  ll = -(y_true * np.log(p) + (1.0 - y_true) * np.log1p(-p))
  return float(np.sum(ll * w) / (y_true.shape[0] * w.sum()))
