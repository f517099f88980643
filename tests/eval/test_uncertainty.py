"""ctjax.eval.uncertainty: the CIs and calibration printed beside the headline figures, checked
against scipy and the reference-checked ctjax.eval.stats functions they wrap."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from ctjax.data.labels import BLEND_CLASSES, RSNA_LABELS
from ctjax.errors import ConfigError
from ctjax.eval import stats, uncertainty


def _drct_outputs(n=60, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, 6)) < 0.4).astype(np.float32)
  probs = np.clip(labels * 0.6 + rng.random((n, 6)) * 0.5, 0, 1)
  valid = np.ones(n, bool)
  valid[-3:] = False   # padding rows of a last batch
  return {"labels": labels, "probs": probs, "valid": valid}


def test_fold_interval_is_scipy_one_sample_t_interval():
  values = [0.81, 0.86, 0.79, 0.9, 0.84]
  got = stats.fold_interval(values)
  ci = sps.ttest_1samp(values, 0.0).confidence_interval(0.95)
  assert got.n == 5 and math.isclose(got.mean, np.mean(values))
  assert math.isclose(got.sd, np.std(values, ddof=1))
  np.testing.assert_allclose([got.lo, got.hi], [ci.low, ci.high], rtol=1e-12)
  one = stats.fold_interval([0.5, float("nan")])
  assert one.n == 1 and one.mean == 0.5 and math.isnan(one.lo)
  assert stats.fold_interval([]).n == 0


def test_drct_intervals_are_the_scan_bootstrap_of_the_valid_rows():
  out = _drct_outputs()
  got = uncertainty.headline_intervals("drct", out, RSNA_LABELS, n_boot=200, seed=3)
  keep = out["valid"]
  want = stats.multilabel_bootstrap(out["labels"][keep], out["probs"][keep], RSNA_LABELS,
                                    n_boot=200, seed=3, keys=uncertainty.DRCT_KEYS)
  assert list(got) == list(uncertainty.DRCT_KEYS)
  for k, ci in want.items():
    assert (got[k]["value"], got[k]["lo"], got[k]["hi"]) == (ci.value, ci.lo, ci.hi)
    assert got[k]["n"] == keep.sum() and got[k]["lo"] <= got[k]["value"] <= got[k]["hi"]
  again = uncertainty.headline_intervals("drct", out, RSNA_LABELS, n_boot=200, seed=3)
  assert again == got   # seeded


def test_blend_intervals_per_class():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 3, 90)
  probs = rng.dirichlet(np.ones(3), 90)
  probs[np.arange(90), label] += 0.5
  probs /= probs.sum(1, keepdims=True)
  got = uncertainty.headline_intervals("blend", {"label": label, "probs": probs},
                                       BLEND_CLASSES, n_boot=100, seed=0)
  assert "per_class/blend_sign/sensitivity" in got and "accuracy" in got
  want = stats.multiclass_bootstrap(label, probs, BLEND_CLASSES, n_boot=100, seed=0,
                                    keys=uncertainty.blend_keys(BLEND_CLASSES))
  assert got["accuracy"]["hi"] == want["accuracy"].hi


def test_calibration_and_rsna_log_loss():
  out = _drct_outputs()
  keep = out["valid"]
  got = uncertainty.drct_calibration(out, RSNA_LABELS)
  want = stats.multilabel_ece(out["labels"][keep], out["probs"][keep], RSNA_LABELS)
  assert got["ece"] == want
  assert got["rsna_weighted_log_loss"] == stats.rsna_weighted_log_loss(out["labels"][keep],
                                                                       out["probs"][keep])
  other = uncertainty.drct_calibration(out, [f"l{j}" for j in range(6)])
  assert "rsna_weighted_log_loss" not in other   # only for RSNA's labels


def test_add_uncertainty_and_its_text():
  class Cfg(dict):
    __getattr__ = dict.__getitem__

  config = Cfg(task="drct", data=Cfg(labels=RSNA_LABELS), evals=Cfg(threshold=0.5))
  report = uncertainty.add_uncertainty({"macro_f1": 0.5}, _drct_outputs(), config, n_boot=50)
  assert set(report) == {"macro_f1", "ci95", "calibration"}
  text = uncertainty.format_uncertainty(report)
  assert "macro_f1" in text and "50 resamples" in text and "weighted log loss" in text
  none = uncertainty.add_uncertainty({}, _drct_outputs(), config, n_boot=0)
  assert "ci95" not in none and "calibration" in none
  with pytest.raises(ConfigError, match="kind"):
    uncertainty.headline_intervals("other", _drct_outputs(), RSNA_LABELS)


def test_too_few_positives_is_stored_and_printed_instead_of_an_interval():
  out = _drct_outputs()
  out["labels"][:, 1] = 0
  out["labels"][4, 1] = 1                      # epidural: one positive scan of 57
  got = uncertainty.headline_intervals("drct", out, RSNA_LABELS, n_boot=100, seed=0)
  f1 = got["macro_f1"]
  assert f1["status"] == stats.TOO_FEW_POSITIVES and math.isnan(f1["lo"])
  assert f1["n_valid"] < 0.8 * f1["n_boot"]
  text = uncertainty.format_intervals(got)
  assert "macro_f1" in text and "[too few positives]" in text
  assert "lost every positive or negative of some label" in text
  # Stored without a status (an older evaluation.json): its counts decide.
  assert uncertainty.ci_status({"n_boot": 1000, "n_valid": 377}) == stats.TOO_FEW_POSITIVES
  assert uncertainty.ci_status({"n_boot": 1000, "n_valid": 869}) == "ok"   # 13 % lost
  fine = uncertainty.headline_intervals("drct", _drct_outputs(), RSNA_LABELS, n_boot=100)
  assert all(v["status"] == "ok" for v in fine.values())
  assert "too few" not in uncertainty.format_intervals(fine)
