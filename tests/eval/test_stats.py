"""ctjax.eval.stats against scipy, statsmodels, scikit-learn, brute force and published values."""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps
from sklearn import calibration as skcal
from sklearn import metrics as skm
from statsmodels.stats import inter_rater

from ctjax import errors
from ctjax.data.labels import CQ500_COLUMNS, CQ500_LABELS, CQ500_READERS, RSNA_LABELS
from ctjax.eval import metrics
from ctjax.eval import stats

NAMES6 = ("a", "b", "c", "d", "e", "f")
BLEND = ("non_ich", "normal_ich", "blend_sign")


def test_module_imports_no_jax_nor_training_code():
  code = ("import sys, ctjax.eval.stats; bad = [m for m in sys.modules if m.split('.')[0] in "
          "('jax', 'flax') or m.startswith('ctjax.train')]; print(bad); assert not bad")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------- format_ci


def test_format_ci():
  assert stats.format_ci(0.88523, 0.85151, 0.91349) == "0.885 [0.852, 0.913]"
  assert stats.format_ci(0.5, 0.25, 0.75, digits=2) == "0.50 [0.25, 0.75]"
  assert stats.format_ci(0.5, float("nan"), 0.7) == "0.500 [n/a]"
  assert stats.format_ci(float("nan"), 0.1, 0.2) == "n/a"


# --------------------------------------------------------------------------- paired t-test


def _check_against_ttest_rel(a, b, alpha=0.05):
  ours = stats.paired_t_test(a, b, alpha=alpha)
  ref = sps.ttest_rel(a, b)
  ci = ref.confidence_interval(1 - alpha)
  np.testing.assert_allclose([ours.t, ours.p], [ref.statistic, ref.pvalue], rtol=1e-12)
  np.testing.assert_allclose([ours.ci_low, ours.ci_high], [ci.low, ci.high], rtol=1e-12)
  assert ours.df == ref.df == len(a) - 1
  np.testing.assert_allclose(ours.mean_diff, np.mean(np.subtract(a, b)), rtol=1e-12)
  return ours


@pytest.mark.parametrize("seed,n,alpha", [(0, 5, 0.05), (1, 10, 0.05), (2, 10, 0.1), (3, 2, 0.05)])
def test_paired_t_test_matches_scipy(seed, n, alpha):
  rng = np.random.default_rng(seed)
  a = rng.normal(0.9, 0.03, n)
  _check_against_ttest_rel(a, a - rng.normal(0.01, 0.02, n), alpha)


def test_paired_t_test_fold_wise_comparison_like_drct2_section_vii():
  # DrCT2 paper, section VII compares DrCT1 and DrCT2 by a t-test over cross-validation folds
  # (k = 10 on CQ500, section VI) and reports P = 0.01940 / 0.04971 / 0.02634. The paper gives no
  # fold-wise values; these illustrative fold-wise F1s give a P of the same size.
  drct1 = [0.921, 0.930, 0.918, 0.925, 0.933, 0.920, 0.927, 0.929, 0.916, 0.923]
  drct2 = [0.936, 0.936, 0.914, 0.944, 0.935, 0.933, 0.925, 0.941, 0.925, 0.924]
  res = _check_against_ttest_rel(drct2, drct1)
  assert res.p == pytest.approx(0.0173983, abs=1e-7)     # scipy.stats.ttest_rel's value
  assert res.p < 0.05 and res.ci_low > 0                  # significant at the paper's threshold
  # by hand: d = drct2 - drct1 has mean 0.0071 and sd 0.0077237 (ddof 1); t = mean / (sd / √10)
  assert res.mean_diff == pytest.approx(0.0071, abs=1e-12)
  assert res.t == pytest.approx(0.0071 / (0.0077237009 / math.sqrt(10)), rel=1e-8)


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_paired_t_test_edge_cases_follow_scipy():
  a = np.array([0.9, 0.8, 0.85])
  same = stats.paired_t_test(a, a)                     # identical models
  assert math.isnan(same.t) and math.isnan(same.p) and same.mean_diff == 0.0
  ref = sps.ttest_rel(a, a)
  assert math.isnan(ref.statistic) and math.isnan(ref.pvalue)
  shifted = stats.paired_t_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])   # constant difference
  ref = sps.ttest_rel([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
  assert shifted.t == ref.statistic == math.inf and shifted.p == ref.pvalue == 0.0


@pytest.mark.parametrize("a,b,match", [([0.1, 0.2], [0.1], "folds"), ([0.1], [0.2], "at least 2"),
                                       ([], [], "empty"), ([0.1, np.nan], [0.1, 0.2], "NaN")])
def test_paired_t_test_bad_input(a, b, match):
  with pytest.raises(errors.ConfigError, match=match):
    stats.paired_t_test(a, b)


# --------------------------------------------------------------- corrected resampled t-test


def test_corrected_t_test_by_hand_from_nadeau_bengio():
  """Nadeau & Bengio 2003: t = mean(d) / sqrt((1/J + n_test/n_train) s²), df = J - 1.

  d = (0.02, 0.05, -0.01, 0.04, 0.03): mean 0.026; deviations -0.006, 0.024, -0.036, 0.014,
  0.004, squares summing to 0.00212, s² = 0.00212 / 4 = 0.00053. Five folds of which three
  train (n_test/n_train = 1/3): variance (1/5 + 1/3) · 0.00053 = 0.00028266…, t = 0.026 /
  0.0168127 = 1.546451; the plain test's (1/5) · 0.00053 gives t = 2.525343.
  """
  a = np.array([0.82, 0.85, 0.79, 0.84, 0.83])
  b = a - np.array([0.02, 0.05, -0.01, 0.04, 0.03])
  res = stats.corrected_t_test(a, b, test_train_ratio=1 / 3)
  var = (1 / 5 + 1 / 3) * 0.00053
  assert res.method == "corrected" and res.df == 4 and res.n == 5
  assert res.mean_diff == pytest.approx(0.026, abs=1e-12)
  assert res.variance_factor == pytest.approx(1 / 5 + 1 / 3, rel=1e-12)
  assert res.t == pytest.approx(0.026 / math.sqrt(var), rel=1e-9)
  assert res.t == pytest.approx(1.546451, rel=1e-6)
  assert res.p == pytest.approx(2 * sps.t.sf(0.026 / math.sqrt(var), 4), rel=1e-9)
  half = sps.t.ppf(0.975, 4) * math.sqrt(var)
  assert (res.ci_low, res.ci_high) == pytest.approx((0.026 - half, 0.026 + half), rel=1e-9)
  plain = stats.paired_t_test(a, b)
  assert plain.t == pytest.approx(0.026 / math.sqrt(0.00053 / 5), rel=1e-9)
  assert plain.t == pytest.approx(2.525343, rel=1e-6)
  assert plain.p < 0.07 and res.p > 0.19           # the correction more than doubles P
  assert res.ci_low < plain.ci_low and res.ci_high > plain.ci_high


def test_corrected_t_test_with_ratio_zero_is_the_plain_one():
  rng = np.random.default_rng(4)
  a, b = rng.normal(0.8, 0.03, 6), rng.normal(0.78, 0.03, 6)
  c, p = stats.corrected_t_test(a, b, test_train_ratio=0.0), stats.paired_t_test(a, b)
  ref = sps.ttest_rel(a, b)
  assert c.t == pytest.approx(ref.statistic, rel=1e-12) and c.p == pytest.approx(ref.pvalue)
  assert (c.ci_low, c.ci_high) == pytest.approx((p.ci_low, p.ci_high), rel=1e-12)


def test_corrected_variance_factor_over_two_data_sets():
  """Folds correlate within a data set only: c = (1/n + S/n²) / (1 - S/(n(n-1))), S the sum of
  rho over ordered within-group pairs, rho = r/(1 + r)."""
  # One group: exactly Nadeau & Bengio's 1/n + n_test/n_train.
  assert stats.corrected_variance_factor(5, 1 / 3) == pytest.approx(1 / 5 + 1 / 3, rel=1e-12)
  assert stats.corrected_variance_factor(10, 1 / 8, ["a"] * 10) == pytest.approx(
      1 / 10 + 1 / 8, rel=1e-12)
  # Two data sets of 5 folds: RSNA-like r = 1/3 (rho 1/4), CQ500-like r = 1/8 (rho 1/9).
  # S = 20 · 1/4 + 20 · 1/9 = 65/9; c = (1/10 + (65/9)/100) / (1 - (65/9)/90).
  s_ = 20 / 4 + 20 / 9
  want = (1 / 10 + s_ / 100) / (1 - s_ / 90)
  got = stats.corrected_variance_factor(10, [1 / 3] * 5 + [1 / 8] * 5, ["r"] * 5 + ["c"] * 5)
  assert got == pytest.approx(want, rel=1e-12)
  # Independent groups correlate less than one pooled group of the same folds.
  assert got < stats.corrected_variance_factor(10, [1 / 3] * 5 + [1 / 8] * 5)
  with pytest.raises(errors.ConfigError, match="one per fold"):
    stats.corrected_variance_factor(5, [0.1, 0.2])
  with pytest.raises(errors.ConfigError, match="groups has 3"):
    stats.corrected_variance_factor(5, 0.1, ["a", "b", "c"])
  with pytest.raises(errors.ConfigError, match=">= 0"):
    stats.corrected_variance_factor(5, -0.5)


def test_fold_interval_of_a_bounded_metric_is_clipped_and_marked():
  values = [0.99, 1.0, 0.97]
  raw = sps.ttest_1samp(values, 0.0).confidence_interval(0.95)
  got = stats.fold_interval(values, bounds=stats.UNIT_RANGE)
  assert raw.high > 1.0 and got.hi == 1.0 and got.clipped
  assert got.lo == pytest.approx(raw.low, rel=1e-12)
  free = stats.fold_interval(values)
  assert free.hi == pytest.approx(raw.high) and not free.clipped
  inside = stats.fold_interval([0.5, 0.6, 0.55], bounds=stats.UNIT_RANGE)
  assert not inside.clipped and inside.hi == pytest.approx(
      sps.ttest_1samp([0.5, 0.6, 0.55], 0.0).confidence_interval().high)
  with pytest.raises(errors.ConfigError, match="lo < hi"):
    stats.fold_interval(values, bounds=(1.0, 0.0))


# ------------------------------------------------------------------------------- bootstrap


def _auc_data(seed=0, n=60):
  rng = np.random.default_rng(seed)
  y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
  s = np.round(y * 0.8 + rng.random(n), 1)        # rounded: ties
  return y, s


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_ci_equals_scipy_bootstrap(method):
  y, s = _auc_data()
  n_boot, seed = 300, 7
  ours = stats.bootstrap_ci(metrics.binary_auc, y, s, n_boot=n_boot, seed=seed, method=method)
  ref = sps.bootstrap((np.arange(y.size),), lambda i: metrics.binary_auc(y[i], s[i]),
                      n_resamples=n_boot, vectorized=False, method=method.replace("bca", "BCa"),
                      rng=np.random.default_rng(seed))
  assert ours.n_valid == n_boot            # 30 + 30 scans: no resample loses a class
  np.testing.assert_allclose(ours.samples, ref.bootstrap_distribution, rtol=1e-12)
  np.testing.assert_allclose([ours.lo, ours.hi],
                             [ref.confidence_interval.low, ref.confidence_interval.high],
                             rtol=1e-12)
  assert ours.value == metrics.binary_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
  assert ours.lo < ours.value < ours.hi


def test_bootstrap_ci_alpha_seed_and_mapping():
  y, s = _auc_data(1)
  a = stats.bootstrap_ci(metrics.binary_auc, y, s, n_boot=200, seed=3)
  b = stats.bootstrap_ci(metrics.binary_auc, y, s, n_boot=200, seed=3)
  c = stats.bootstrap_ci(metrics.binary_auc, y, s, n_boot=200, seed=4)
  wide = stats.bootstrap_ci(metrics.binary_auc, y, s, n_boot=200, seed=3, alpha=0.01)
  assert (a.lo, a.hi) == (b.lo, b.hi) and (a.lo, a.hi) != (c.lo, c.hi)
  assert wide.lo <= a.lo and wide.hi >= a.hi
  np.testing.assert_allclose([a.lo, a.hi], np.quantile(a.samples, [0.025, 0.975]), rtol=1e-12)
  both = stats.bootstrap_ci(lambda t, p: {"auc": metrics.binary_auc(t, p), "mean": p.mean()},
                            y, s, n_boot=200, seed=3, progress=True)
  assert set(both) == {"auc", "mean"}
  np.testing.assert_array_equal(both["auc"].samples, a.samples)
  assert str(a) == stats.format_ci(a.value, a.lo, a.hi)


def _manual_resamples(y, n_boot, seed):
  """The resample rows and the non-degenerate mask, recomputed the obvious way."""
  idx = np.random.default_rng(seed).integers(0, y.shape[0], (n_boot, y.shape[0]))
  cols = y.reshape(y.shape[0], -1)
  keep = np.array([all(set(np.unique(cols[i, j])) == set(np.unique(cols[:, j]))
                       for j in range(cols.shape[1])) for i in idx])
  return idx, keep


def _multilabel_case(seed=0, n=80):
  rng = np.random.default_rng(seed)
  y = (rng.random((n, 6)) < [0.3, 0.5, 0.2, 0.4, 0.0, 0.3]).astype(np.int64)  # e: no positives
  y[:, 5] = 0
  y[:3, 5] = 1                                            # f: 3 positives → degenerate resamples
  p = np.clip(0.4 * y + rng.random((n, 6)) * 0.6, 0, 1)
  p[:10] = np.round(p[:10], 1)
  return y, p


def test_multilabel_bootstrap_uses_the_report_and_skips_degenerate_resamples():
  y, p = _multilabel_case()
  n_boot, seed = 150, 11
  res = stats.multilabel_bootstrap(y, p, NAMES6, n_boot=n_boot, seed=seed)
  assert tuple(res) == stats.MULTILABEL_HEADLINE_KEYS
  full = metrics.multilabel_report(y, p, NAMES6)
  idx, keep = _manual_resamples(y, n_boot, seed)
  assert 0 < (~keep).sum() < n_boot // 2          # label f loses its 3 positives sometimes
  for key, ci in res.items():
    assert ci.value == full[key]
    assert ci.n_valid == keep.sum()
    assert np.all(np.isnan(ci.samples[~keep]))
    expect = [metrics.multilabel_report(y[i], p[i], NAMES6)[key] for i in idx[keep]]
    np.testing.assert_allclose(ci.samples[keep], expect, rtol=1e-12)
    assert ci.lo <= ci.hi and math.isfinite(ci.lo)
  # one resample against scikit-learn directly (label e never positive: F1 0, AUC undefined)
  i = idx[np.argmax(keep)]
  yt, pp = y[i], p[i]
  sk_f1 = skm.f1_score(yt, pp >= 0.5, average="macro", zero_division=0)
  sk_auc = np.mean([skm.roc_auc_score(yt[:, j], pp[:, j]) for j in (0, 1, 2, 3, 5)])
  first = int(np.argmax(keep))
  assert res["macro_f1"].samples[first] == pytest.approx(sk_f1, rel=1e-12)
  assert res["macro_auc"].samples[first] == pytest.approx(sk_auc, rel=1e-12)


def test_multilabel_bootstrap_per_class_keys_and_errors():
  y, p = _multilabel_case(1)
  res = stats.multilabel_bootstrap(y, p, NAMES6, keys=("per_class/a/auc", "micro_f1"),
                                   n_boot=50, seed=0, threshold=0.6)
  full = metrics.multilabel_report(y, p, NAMES6, threshold=0.6)
  assert res["per_class/a/auc"].value == full["per_class"]["a"]["auc"]
  assert res["micro_f1"].value == full["micro_f1"]
  with pytest.raises(errors.ConfigError, match="unknown report keys"):
    stats.multilabel_bootstrap(y, p, NAMES6, keys=("macro_fi",), n_boot=5)
  with pytest.raises(errors.ConfigError, match="must both be"):
    stats.multilabel_bootstrap(y[:, :5], p, NAMES6, n_boot=5)
  with pytest.raises(errors.ConfigError, match="n_boot"):
    stats.multilabel_bootstrap(y, p, NAMES6, n_boot=0)
  with pytest.raises(errors.ConfigError, match="method"):
    stats.multilabel_bootstrap(y, p, NAMES6, n_boot=5, method="basic")
  with pytest.raises(errors.ConfigError, match="alpha"):
    stats.multilabel_bootstrap(y, p, NAMES6, n_boot=5, alpha=1.0)
  with pytest.raises(errors.ConfigError, match="rows"):
    stats.bootstrap_ci(metrics.binary_auc, y[:, 0], p[:-1, 0], n_boot=5)


def _blend_case(seed=0, n=90):
  rng = np.random.default_rng(seed)
  y = rng.choice(3, n, p=[0.6, 0.3, 0.1])
  logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
  prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return y, prob


def test_multiclass_bootstrap_per_class_sensitivity_specificity_auc():
  y, prob = _blend_case()
  n_boot, seed = 120, 5
  res = stats.multiclass_bootstrap(y, prob, BLEND, n_boot=n_boot, seed=seed, method="bca")
  assert tuple(res) == stats.multiclass_headline_keys(BLEND)
  assert len(res) == 9
  full = metrics.multiclass_report(y, prob, BLEND)
  idx, keep = _manual_resamples(y, n_boot, seed)
  for key, ci in res.items():
    _, name, metric = key.split("/")
    assert ci.value == full["per_class"][name][metric]
    expect = [metrics.multiclass_report(y[i], prob[i], BLEND)["per_class"][name][metric]
              for i in idx[keep]]
    np.testing.assert_allclose(ci.samples[keep], expect, rtol=1e-12)
    assert ci.method == "bca" and ci.lo <= ci.hi
  with pytest.raises(errors.ConfigError, match="class ids"):
    stats.multiclass_bootstrap(np.r_[y[:-1], 3], prob, BLEND, n_boot=5)


def test_bootstrap_1000_resamples_of_300_scans_is_fast():
  import time
  rng = np.random.default_rng(0)
  y = (rng.random((300, 6)) < 0.25).astype(int)
  p = np.clip(0.3 * y + rng.random((300, 6)) * 0.7, 0, 1)
  t0 = time.perf_counter()
  res = stats.multilabel_bootstrap(y, p, NAMES6, n_boot=1000, seed=0)
  elapsed = time.perf_counter() - t0
  assert res["macro_f1"].n_valid == 1000
  assert elapsed < 10.0, elapsed   # ~1 s measured on one core; loose for a shared machine


def test_paired_bootstrap_difference_and_identical_models():
  y, pa = _multilabel_case(2)
  pb = np.clip(pa + np.random.default_rng(9).normal(0, 0.15, pa.shape), 0, 1)
  n_boot, seed = 120, 4
  res = stats.paired_multilabel_bootstrap(y, pa, pb, NAMES6, n_boot=n_boot, seed=seed)
  alone_a = stats.multilabel_bootstrap(y, pa, NAMES6, n_boot=n_boot, seed=seed)
  alone_b = stats.multilabel_bootstrap(y, pb, NAMES6, n_boot=n_boot, seed=seed)
  for key, ci in res.items():
    assert ci.value_a == alone_a[key].value and ci.value_b == alone_b[key].value
    assert ci.value == ci.value_a - ci.value_b
    np.testing.assert_array_equal(ci.samples, alone_a[key].samples - alone_b[key].samples)
    d = ci.samples[np.isfinite(ci.samples)]
    assert ci.p_value == min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    assert ci.n_valid == d.size
  same = stats.paired_multilabel_bootstrap(y, pa, pa, NAMES6, n_boot=50, seed=0)
  for ci in same.values():
    assert ci.value == ci.lo == ci.hi == 0.0 and ci.p_value == 1.0
  yc, prob = _blend_case(3)
  worse = np.roll(prob, 1, axis=0)                                  # an uninformative model
  mc = stats.paired_multiclass_bootstrap(yc, prob, worse, BLEND, n_boot=200, seed=1,
                                         keys=("macro_auc",))
  assert mc["macro_auc"].lo > 0 and mc["macro_auc"].p_value < 0.05
  with pytest.raises(errors.ConfigError, match="prob_b"):
    stats.paired_multilabel_bootstrap(y, pa, pb[:, :5], NAMES6, n_boot=5)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_paired_bootstrap_equals_scipy_bootstrap_of_the_difference(method):
  y, s = _auc_data(2)
  s2 = np.round(s + np.random.default_rng(5).normal(0, 0.3, s.size), 1)
  res = stats.paired_bootstrap(metrics.binary_auc, y, s, s2, n_boot=250, seed=2, method=method)
  ref = sps.bootstrap((np.arange(y.size),),
                      lambda i: metrics.binary_auc(y[i], s[i]) - metrics.binary_auc(y[i], s2[i]),
                      n_resamples=250, vectorized=False, method=method.replace("bca", "BCa"),
                      rng=np.random.default_rng(2))
  np.testing.assert_allclose([res.lo, res.hi],
                             [ref.confidence_interval.low, ref.confidence_interval.high],
                             rtol=1e-12)


def test_bootstrap_continuous_truth_needs_skip_degenerate_off():
  x = np.linspace(0, 1, 300)
  with pytest.raises(errors.ConfigError, match="skip_degenerate=False"):
    stats.bootstrap_ci(lambda t, p: np.corrcoef(t, p)[0, 1], x, x ** 2, n_boot=5)
  res = stats.bootstrap_ci(lambda t, p: np.corrcoef(t, p)[0, 1], x, x ** 2, n_boot=50,
                           skip_degenerate=False)
  assert res.n_valid == 50 and res.lo <= res.value <= res.hi


def test_bootstrap_metric_nan_is_skipped_not_fatal():
  y = np.r_[np.ones(3), np.zeros(20)]
  s = np.linspace(0, 1, y.size)
  res = stats.bootstrap_ci(metrics.binary_auc, y, s, n_boot=200, seed=0, skip_degenerate=False)
  # without the class check the resamples with no positive give NaN AUC: skipped, not fatal
  idx = np.random.default_rng(0).integers(0, y.size, (200, y.size))
  no_pos = y[idx].sum(1) == 0
  assert no_pos.any() and res.n_valid == 200 - no_pos.sum()
  assert np.all(np.isnan(res.samples[no_pos])) and math.isfinite(res.lo)


# ---------------------------------------------------------------------------------- DeLong


def _psi(x, y):
  return np.where(x > y, 1.0, np.where(x == y, 0.5, 0.0))


def _delong_brute_force(y, scores):
  """DeLong et al. 1988 by definition: psi over every (positive, negative) pair."""
  pos, neg = y == 1, y == 0
  v10, v01, aucs = [], [], []
  for s in scores:
    pairs = _psi(s[pos][:, None], s[neg][None, :])          # [m, n]
    v10.append(pairs.mean(axis=1))
    v01.append(pairs.mean(axis=0))
    aucs.append(pairs.mean())
  v10, v01, aucs = np.array(v10), np.array(v01), np.array(aucs)
  m, n = pos.sum(), neg.sum()
  s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
  s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
  return aucs, s10 / m + s01 / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_brute_force_and_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  y = (rng.random(40) < 0.4).astype(float)
  scores = np.stack([np.round(y * 0.5 + rng.random(40), 1),       # many ties
                     np.round(y * 0.2 + rng.random(40), 2),
                     rng.integers(0, 3, 40).astype(float)])        # ordinal scale
  aucs, cov = stats.delong_covariance(y, scores)
  ref_aucs, ref_cov = _delong_brute_force(y, scores)
  np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
  np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-15)
  for k in range(3):
    assert aucs[k] == pytest.approx(skm.roc_auc_score(y, scores[k]), rel=1e-12)
    assert aucs[k] == pytest.approx(metrics.binary_auc(y, scores[k]), rel=1e-12)
  test = stats.delong_test(y, scores[0], scores[1])
  var = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
  z = (ref_aucs[0] - ref_aucs[1]) / math.sqrt(var)
  assert test.z == pytest.approx(z, rel=1e-10)
  assert test.p == pytest.approx(2 * sps.norm.sf(abs(z)), rel=1e-10)
  assert test.ci_low == pytest.approx(test.diff - 1.959963984540054 * math.sqrt(var), rel=1e-10)
  single = stats.delong_auc_ci(y, scores[0])
  assert single.se == pytest.approx(math.sqrt(ref_cov[0, 0]), rel=1e-10)
  assert single.lo == pytest.approx(max(0, single.auc - 1.959963984540054 * single.se))


def test_delong_hand_example():
  # 3 positives, 2 negatives. Model 1 separates perfectly (AUC 1, zero variance); model 2:
  # positives 0.2, 0.7, 0.9 vs negatives 0.3, 0.6 → V10 = (0, 1, 1), V01 = (2/3, 2/3),
  # AUC 2/3, var = var(V10)/3 = (1/3)/3 = 1/9; z = (1 - 2/3)/(1/3) = 1, P = 2(1 - Phi(1)).
  y = np.array([1, 1, 1, 0, 0])
  a = np.array([0.6, 0.7, 0.8, 0.1, 0.2])
  b = np.array([0.2, 0.7, 0.9, 0.3, 0.6])
  aucs, cov = stats.delong_covariance(y, np.stack([a, b]))
  np.testing.assert_allclose(aucs, [1.0, 2 / 3])
  np.testing.assert_allclose(cov, [[0, 0], [0, 1 / 9]], atol=1e-15)
  res = stats.delong_test(y, a, b)
  assert res.z == pytest.approx(1.0) and res.p == pytest.approx(0.3173105078629141)


def test_delong_published_iris_variance():
  # yandexdataschool/roc_comparison, test.py (TestIris.test_variance_const): iris, target
  # "class 1", train_test_split(test_size=0.8, random_state=42), LogisticRegression(lbfgs)
  # → DeLong variance 0.0015359814789736538 and AUC = roc_auc_score.
  from sklearn import datasets, linear_model, model_selection
  data = datasets.load_iris()
  x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
      data.data, (data.target == 1).astype(int), test_size=0.8, random_state=42)
  pred = linear_model.LogisticRegression(solver="lbfgs").fit(x_tr, y_tr).predict_proba(x_te)[:, 1]
  aucs, cov = stats.delong_covariance(y_te, pred)
  assert aucs[0] == pytest.approx(skm.roc_auc_score(y_te, pred), rel=1e-12)
  assert cov[0, 0] == pytest.approx(0.0015359814789736538, rel=1e-9)


def test_delong_variance_matches_monte_carlo_spread():
  # DeLong's variance estimates the sampling variance of the AUC (same check as the
  # reference above, with fewer trials): 7 positives ~ N(0.5, 1), 14 negatives ~ N(-0.5, 1).
  rng = np.random.default_rng(1234)
  y = np.r_[np.ones(7), np.zeros(14)]
  trials = 2000
  aucs, variances = np.empty(trials), np.empty(trials)
  for t in range(trials):
    s = np.r_[rng.normal(0.5, 1, 7), rng.normal(-0.5, 1, 14)]
    a, c = stats.delong_covariance(y, s)
    aucs[t], variances[t] = a[0], c[0, 0]
  assert variances.mean() == pytest.approx(aucs.var(), rel=0.1)


def test_delong_identical_models_and_errors():
  y, s = _auc_data(3)
  same = stats.delong_test(y, s, s)
  assert same.diff == 0.0 and same.z == 0.0 and same.p == 1.0
  assert same.ci_low == same.ci_high == 0.0
  perfect = stats.delong_test(y, y + 0.1, y * 2.0)              # both AUC 1, zero variance
  assert perfect.auc_a == perfect.auc_b == 1.0 and perfect.p == 1.0
  with pytest.raises(errors.ConfigError, match=">= 2 positives"):
    stats.delong_test(np.r_[1, np.zeros(9)], np.arange(10.0), np.arange(10.0))
  with pytest.raises(errors.ConfigError, match="scans"):
    stats.delong_test(y, s, s[:-1])
  with pytest.raises(errors.ConfigError, match="0/1"):
    stats.delong_covariance(y * 2, s)


# ---------------------------------------------------------------------------- Fleiss' kappa

# Fleiss 1971 (Psychological Bulletin 76:378), Table 1: 30 patients, 6 psychiatrists, 5
# diagnoses (1 depression, 2 personality disorder, 3 schizophrenia, 4 neurosis, 5 other).
FLEISS_1971 = np.array([
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5],
    [2, 2, 2, 4, 4, 4], [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4],
    [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5], [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4],
    [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5], [3, 3, 3, 3, 3, 5],
    [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4],
    [1, 4, 4, 4, 4, 5], [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4],
    [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5]])


def test_fleiss_kappa_published_example():
  # Overall kappa 0.430 (Fleiss 1971; R irr::kappam.fleiss gives 0.4302445) and the
  # per-category kappas 0.245, 0.245, 0.520, 0.471, 0.566 (Fleiss 1971, Table 2).
  counts, cats = stats.category_counts(FLEISS_1971)
  assert cats.tolist() == [1, 2, 3, 4, 5]
  assert stats.fleiss_kappa(counts) == pytest.approx(0.4302445, abs=5e-8)
  assert stats.fleiss_kappa_from_labels(FLEISS_1971) == stats.fleiss_kappa(counts)
  np.testing.assert_allclose(stats.fleiss_category_kappa(counts),
                             [0.245, 0.245, 0.520, 0.471, 0.566], atol=5e-4)


@pytest.mark.parametrize("seed,raters,cats", [(0, 3, 2), (1, 3, 3), (2, 5, 4), (3, 14, 5)])
def test_fleiss_kappa_matches_statsmodels(seed, raters, cats):
  rng = np.random.default_rng(seed)
  truth = rng.integers(0, cats, 40)
  labels = np.where(rng.random((40, raters)) < 0.7, truth[:, None],
                    rng.integers(0, cats, (40, raters)))
  table, _ = inter_rater.aggregate_raters(labels)
  counts, _ = stats.category_counts(labels)
  np.testing.assert_array_equal(counts, table)
  ref = inter_rater.fleiss_kappa(table, method="fleiss")
  assert stats.fleiss_kappa(counts) == pytest.approx(ref, rel=1e-12)
  assert stats.fleiss_kappa_from_labels(labels) == pytest.approx(ref, rel=1e-12)
  # per category = overall kappa of the table collapsed to (category, the rest)
  per_cat = stats.fleiss_category_kappa(counts)
  for j in range(counts.shape[1]):
    collapsed = np.stack([counts[:, j], raters - counts[:, j]], axis=1)
    assert per_cat[j] == pytest.approx(inter_rater.fleiss_kappa(collapsed), rel=1e-10)
  if cats == 2:
    np.testing.assert_allclose(per_cat, ref, rtol=1e-10)


def test_fleiss_kappa_agreement_edge_cases():
  agree = np.repeat(np.array([[0], [1], [1], [2]]), 3, axis=1)      # all raters agree
  assert stats.fleiss_kappa_from_labels(agree) == 1.0
  assert inter_rater.fleiss_kappa(inter_rater.aggregate_raters(agree)[0]) == pytest.approx(1.0)
  one_cat = np.zeros((5, 3), int)                                   # nobody ever says "yes"
  assert math.isnan(stats.fleiss_kappa_from_labels(one_cat))
  with np.errstate(invalid="ignore", divide="ignore"):
    assert math.isnan(inter_rater.fleiss_kappa(inter_rater.aggregate_raters(one_cat)[0]))
  counts, _ = stats.category_counts(one_cat, categories=(0, 1))
  assert counts.tolist() == [[3, 0]] * 5
  assert math.isnan(stats.fleiss_category_kappa(counts)[1])
  # worst disagreement with 2 raters and 2 categories: kappa = -1
  assert stats.fleiss_kappa([[1, 1]] * 4) == pytest.approx(-1.0)


@pytest.mark.parametrize("counts,match", [([[1, 2], [2, 2]], "same number"), ([[1, 0]], "2 raters"),
                                          ([[-1, 3]], "non-negative"), ([[]], "empty")])
def test_fleiss_kappa_bad_counts(counts, match):
  with pytest.raises(errors.ConfigError, match=match):
    stats.fleiss_kappa(counts)


def test_fleiss_labels_errors():
  with pytest.raises(errors.ConfigError, match="outside categories"):
    stats.category_counts([[0, 1], [2, 1]], categories=(0, 1))
  with pytest.raises(errors.ConfigError, match="missing rating"):
    stats.category_counts([[0.0, np.nan]])
  with pytest.raises(errors.ConfigError, match="subjects, raters"):
    stats.category_counts([0, 1, 1])


def _write_reads(path, votes):
  """votes [scans, readers, labels] → a reads.csv with CQ500's columns."""
  fields = ["name", "Category"] + [f"{r}:{c}" for r in CQ500_READERS for c in CQ500_COLUMNS]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for i, scan in enumerate(votes):
      row = {"name": f"CQ500-CT-{i}", "Category": "B1"}
      row.update({f"{r}:{c}": str(scan[ri, ci]) for ri, r in enumerate(CQ500_READERS)
                  for ci, c in enumerate(CQ500_COLUMNS)})
      w.writerow(row)


def test_cq500_reader_kappa_from_reads_csv(tmp_path):
  rng = np.random.default_rng(0)
  truth = rng.random((25, 1, 9)) < 0.3
  votes = np.where(rng.random((25, 3, 9)) < 0.85, truth, ~truth).astype(int)
  votes[:, :, 7] = 1                          # mass effect: all readers always agree on "yes"
  votes[:, :, 8] = votes[:, :1, 8]            # midline shift: all three agree every time
  path = tmp_path / "reads.csv"
  _write_reads(path, votes)
  out = stats.cq500_reader_kappa(path)
  assert tuple(out) == CQ500_LABELS
  for j, label in enumerate(CQ500_LABELS[:7]):
    table, _ = inter_rater.aggregate_raters(votes[:, :, j])
    assert out[label] == pytest.approx(inter_rater.fleiss_kappa(table), rel=1e-12)
  assert math.isnan(out["mass_effect"]) and out["midline_shift"] == 1.0
  with open(path, newline="") as f:
    assert stats.cq500_reader_kappa(list(csv.DictReader(f))) == pytest.approx(out, nan_ok=True)


def test_cq500_reader_kappa_errors(tmp_path):
  path = tmp_path / "reads.csv"
  path.write_text("name,R1:ICH,R2:ICH\nCQ500-CT-0,1,0\n")
  with pytest.raises(errors.DatasetLayoutError, match=r"reads\.csv.*lacks columns"):
    stats.cq500_reader_kappa(path)
  votes = np.zeros((2, 3, 9), int)
  _write_reads(path, votes)
  text = path.read_text().splitlines()
  text[2] = text[2].replace(",0,", ",2,", 1)
  path.write_text("\n".join(text) + "\n")
  with pytest.raises(errors.DatasetLayoutError, match="row 2: .* is not 0 or 1"):
    stats.cq500_reader_kappa(path)
  with pytest.raises(errors.DatasetLayoutError, match="not found"):
    stats.cq500_reader_kappa(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------ calibration


def _ece_loop(correct, conf, n_bins):
  """Independent ECE: loop over bins (lo, hi], the first closed at 0."""
  edges = np.linspace(0, 1, n_bins + 1)
  total = 0.0
  for b in range(n_bins):
    lo, hi = edges[b], edges[b + 1]
    mask = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
    if mask.any():
      total += mask.sum() * abs(correct[mask].mean() - conf[mask].mean())
  return total / conf.size


def test_ece_hand_computation():
  # 2 bins: [0, .5] holds .1 .2 .4 (mean .2333, 1 of 3 positive), (.5, 1] holds .6 .8 .9
  # (mean .7667, 2 of 3 positive) → ECE = .5 * |1/3 - .2333| + .5 * |2/3 - .7667| = 0.1.
  y = np.array([0, 0, 1, 1, 1, 0])
  p = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 0.9])
  assert stats.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.1)
  d = stats.reliability_data(y, p, n_bins=2)
  np.testing.assert_allclose(d.edges, [0, 0.5, 1])
  np.testing.assert_allclose(d.confidence, [0.7 / 3, 2.3 / 3])
  np.testing.assert_allclose(d.accuracy, [1 / 3, 2 / 3])
  assert d.counts.tolist() == [3, 3]
  # perfectly calibrated in every bin → 0; boundary values 0, .5 and 1 land in bins 0, 0, 1
  d = stats.reliability_data([0, 1, 0, 1], [0.0, 0.5, 0.5, 1.0], n_bins=2)
  assert d.counts.tolist() == [3, 1]


@pytest.mark.parametrize("seed,n_bins", [(0, 10), (1, 15), (2, 7)])
def test_ece_matches_loop_and_sklearn_calibration_curve(seed, n_bins):
  rng = np.random.default_rng(seed)
  p = rng.random(200) ** 2
  p[:20] = np.round(p[:20], 1)                      # values on bin edges
  y = (rng.random(200) < p ** 0.8).astype(int)
  d = stats.reliability_data(y, p, n_bins=n_bins)
  assert d.ece == pytest.approx(_ece_loop(y.astype(float), p, n_bins), rel=1e-12)
  assert stats.expected_calibration_error(y, p, n_bins=n_bins) == d.ece
  prob_true, prob_pred = skcal.calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
  filled = d.counts > 0
  np.testing.assert_allclose(d.accuracy[filled], prob_true, rtol=1e-12)
  np.testing.assert_allclose(d.confidence[filled], prob_pred, rtol=1e-12)
  assert np.all(np.isnan(d.accuracy[~filled])) and d.counts.sum() == 200


def test_multilabel_and_top_label_ece():
  y, p = _multilabel_case(4)
  out = stats.multilabel_ece(y, p, NAMES6, n_bins=10)
  for j, name in enumerate(NAMES6):
    assert out[name] == pytest.approx(_ece_loop(y[:, j].astype(float), p[:, j], 10), rel=1e-12)
  assert out["macro"] == pytest.approx(np.mean([out[n] for n in NAMES6]))
  yc, prob = _blend_case(5)
  correct = (prob.argmax(1) == yc).astype(float)
  assert stats.top_label_ece(yc, prob, n_bins=10) == pytest.approx(
      _ece_loop(correct, prob.max(1), 10), rel=1e-12)
  d = stats.top_label_reliability(yc, prob, n_bins=10)
  assert d.counts[:3].sum() == 0                    # max of 3 probabilities is > 1/3
  # hand: two scans, confidences 0.9 (right) and 0.6 (wrong), 10 bins → (0.1 + 0.6) / 2
  assert stats.top_label_ece([0, 1], [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1]],
                             n_bins=10) == pytest.approx(0.35)


def test_calibration_errors():
  with pytest.raises(errors.ConfigError, match=r"\[0, 1\]"):
    stats.expected_calibration_error([0, 1], [0.2, 1.2])
  with pytest.raises(errors.ConfigError, match="2 values"):
    stats.expected_calibration_error([0, 1], [0.2, 0.3, 0.4])
  with pytest.raises(errors.ConfigError, match="n_bins"):
    stats.expected_calibration_error([0, 1], [0.2, 0.3], n_bins=0)
  with pytest.raises(errors.ConfigError, match="empty"):
    stats.expected_calibration_error([], [])


def test_plot_reliability_diagram(tmp_path):
  rng = np.random.default_rng(0)
  p = rng.random(100)
  y = (rng.random(100) < p).astype(int)
  one = stats.plot_reliability_diagram(stats.reliability_data(y, p), tmp_path / "one.png",
                                       title="any")
  many = stats.plot_reliability_diagram(
      {"a": stats.reliability_data(y, p), "b": stats.reliability_data(1 - y, p)},
      tmp_path / "sub" / "many.png")
  for path in (one, many):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape == (550, 450) and img.std() > 10      # something drawn on white


# ------------------------------------------------------------------- RSNA challenge log loss


def test_rsna_weighted_log_loss_matches_sklearn():
  assert RSNA_LABELS[0] == "any" and stats.RSNA_LABEL_WEIGHTS == (2, 1, 1, 1, 1, 1)
  rng = np.random.default_rng(0)
  y = (rng.random((50, 6)) < 0.3).astype(int)
  p = np.clip(0.5 * y + rng.random((50, 6)) * 0.5, 0.01, 0.99)
  w = np.tile(stats.RSNA_LABEL_WEIGHTS, 50)
  ref = skm.log_loss(y.ravel(), p.ravel(), sample_weight=w, labels=[0, 1])
  assert stats.rsna_weighted_log_loss(y, p) == pytest.approx(ref, rel=1e-12)


def test_rsna_weighted_log_loss_weights_and_clipping():
  y = np.zeros((4, 6))
  p = np.zeros((4, 6))
  p[0, 0] = 0.5                       # one 'any' at 0.5 counts twice
  assert stats.rsna_weighted_log_loss(y, p) == pytest.approx(2 * math.log(2) / (4 * 7))
  p[0, 0] = 0.0
  p[1, 3] = 0.5                       # one subtype at 0.5 counts once
  assert stats.rsna_weighted_log_loss(y, p) == pytest.approx(math.log(2) / (4 * 7))
  # certain and wrong: clipped at eps = 1e-15 (finite), both directions
  y1 = np.ones((1, 6))
  p1 = np.zeros((1, 6))
  assert stats.rsna_weighted_log_loss(y1, p1) == pytest.approx(-math.log(1e-15))
  assert stats.rsna_weighted_log_loss(1 - y1, 1 - p1) == pytest.approx(
      -math.log(1 - (1 - 1e-15)))
  assert stats.rsna_weighted_log_loss(y1, p1, eps=1e-6) == pytest.approx(-math.log(1e-6))
  with pytest.raises(errors.ConfigError, match=r"\[N, 6\]"):
    stats.rsna_weighted_log_loss(y[:, :5], p[:, :5])
  with pytest.raises(errors.ConfigError, match="0/1"):
    stats.rsna_weighted_log_loss(y + 0.5, p)


# ---------------------------------------------------------------------- too few positives


def test_paired_bootstrap_resting_on_one_positive_is_too_few_positives():
  """One scan of label 'rare' is positive; model a finds it, model b does not. The resamples
  that keep it (about 1 - e^-1 of them) all give the same difference: no interval."""
  rng = np.random.default_rng(0)
  n = 40
  y = np.zeros((n, 2))
  y[:, 0] = rng.random(n) < 0.5
  y[7, 1] = 1
  a = np.clip(y * 0.7 + rng.random((n, 2)) * 0.3, 0, 1)
  b = a.copy()
  b[7, 1] = 0.1                                  # b misses the only positive
  res = stats.paired_multilabel_bootstrap(y, a, b, ("common", "rare"),
                                          keys=("per_class/rare/f1",), n_boot=400, seed=1)
  r = res["per_class/rare/f1"]
  assert r.value == 1.0 and r.status == stats.TOO_FEW_POSITIVES
  assert 0.28 < 1 - r.n_valid / r.n_boot < 0.45  # lost: (1 - 1/40)^40 = 0.363
  kept = r.samples[np.isfinite(r.samples)]
  assert np.all(kept == 1.0)                      # the zero-width "interval" it used to print
  assert math.isnan(r.lo) and math.isnan(r.hi) and math.isnan(r.p_value)
  assert str(r) == "1.000 [too few positives]"
  # The skipped resamples are those of the call (every figure of it is conditioned on every
  # label being present): the common label alone keeps its interval.
  single = stats.paired_multilabel_bootstrap(y[:, :1], a[:, :1], b[:, :1], ("common",),
                                             keys=("macro_f1",), n_boot=400, seed=1)
  assert single["macro_f1"].status == "ok" and math.isfinite(single["macro_f1"].lo)


def test_bootstrap_status_threshold_and_stored_intervals():
  assert stats.degenerate_status(1000, 800) == "ok"
  assert stats.degenerate_status(1000, 799) == stats.TOO_FEW_POSITIVES
  assert stats.degenerate_status(1000, 940, max_degenerate=0.05) == stats.TOO_FEW_POSITIVES
  y, s = _auc_data()
  ci = stats.bootstrap_ci(metrics.binary_auc, y, s, n_boot=200, seed=0)
  assert ci.status == "ok" and ci.n_valid == 200
  y1 = np.zeros(30)
  y1[3] = 1                                      # one positive: most resamples lose it
  few = stats.bootstrap_ci(metrics.binary_auc, y1, np.linspace(0, 1, 30), n_boot=200, seed=0)
  assert few.status == stats.TOO_FEW_POSITIVES and math.isnan(few.lo)
  lax = stats.bootstrap_ci(metrics.binary_auc, y1, np.linspace(0, 1, 30), n_boot=200, seed=0,
                           max_degenerate=1.0)
  assert lax.status == "ok" and math.isfinite(lax.lo)
  assert stats.ci_text(0.5, 0.4, 0.6, "ok", signed=True) == "+0.500 [+0.400, +0.600]"
