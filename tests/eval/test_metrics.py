"""ctjax.eval.metrics against scikit-learn, including degenerate classes."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ctjax.eval import metrics

NAMES = ("a", "b", "c", "d")


def _sk_binary(truth, pred, prob):
  out = {
      "precision": skm.precision_score(truth, pred, zero_division=0),
      "recall": skm.recall_score(truth, pred, zero_division=0),
      "specificity": skm.recall_score(truth, pred, pos_label=0, zero_division=0),
      "f1": skm.f1_score(truth, pred, zero_division=0),
  }
  out["auc"] = (skm.roc_auc_score(truth, prob) if 0 < truth.sum() < truth.size
                else float("nan"))
  return out


def _multilabel_case(seed, n=37):
  rng = np.random.default_rng(seed)
  y = (rng.random((n, 4)) < [0.3, 0.5, 0.0, 1.0]).astype(np.int64)   # c: no positives, d: all
  prob = np.clip(0.35 * y + rng.random((n, 4)) * 0.7, 0, 1)
  prob[:5] = np.round(prob[:5], 1)   # ties
  prob[:, 2] = rng.random(n) * 0.4   # c: never predicted → 0/0 everywhere
  return y, prob


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_report_matches_sklearn(seed):
  y, prob = _multilabel_case(seed)
  rep = metrics.multilabel_report(y, prob, NAMES, threshold=0.5)
  pred = (prob >= 0.5).astype(int)
  for j, name in enumerate(NAMES):
    ref = _sk_binary(y[:, j], pred[:, j], prob[:, j])
    got = rep["per_class"][name]
    for key, value in ref.items():
      np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12, err_msg=(name, key))
    assert got["sensitivity"] == got["recall"]
    assert got["support"] == y[:, j].sum()
  np.testing.assert_allclose(
      rep["macro_f1"], skm.f1_score(y, pred, average="macro", zero_division=0), rtol=1e-12)
  np.testing.assert_allclose(
      rep["macro_precision"], skm.precision_score(y, pred, average="macro", zero_division=0),
      rtol=1e-12)
  np.testing.assert_allclose(
      rep["macro_recall"], skm.recall_score(y, pred, average="macro", zero_division=0),
      rtol=1e-12)
  np.testing.assert_allclose(
      rep["micro_f1"], skm.f1_score(y, pred, average="micro", zero_division=0), rtol=1e-12)
  # AUC undefined for c (no positives) and d (no negatives); macro over a and b.
  assert np.isnan(rep["per_class"]["c"]["auc"]) and np.isnan(rep["per_class"]["d"]["auc"])
  np.testing.assert_allclose(
      rep["macro_auc"], skm.roc_auc_score(y[:, :2], prob[:, :2], average="macro"), rtol=1e-12)


def test_multilabel_threshold_and_shape_errors():
  y = np.array([[1], [0], [1]])
  p = np.array([[0.3], [0.1], [0.9]])
  assert metrics.multilabel_report(y, p, ["x"], threshold=0.25)["per_class"]["x"]["recall"] == 1.0
  assert metrics.multilabel_report(y, p, ["x"], threshold=0.5)["per_class"]["x"]["recall"] == 0.5
  with pytest.raises(ValueError):
    metrics.multilabel_report(y, p, ["x", "y"])


@pytest.mark.parametrize("seed", [0, 3])
def test_multiclass_report_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  n, names = 50, ("non_ich", "normal_ich", "blend_sign")
  y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
  logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
  prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  rep = metrics.multiclass_report(y, prob, names)
  pred = prob.argmax(1)
  np.testing.assert_array_equal(rep["confusion_matrix"],
                                skm.confusion_matrix(y, pred, labels=[0, 1, 2]))
  for c, name in enumerate(names):
    ref = _sk_binary((y == c).astype(int), (pred == c).astype(int), prob[:, c])
    for key, value in ref.items():
      np.testing.assert_allclose(rep["per_class"][name][key], value, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(rep["macro_f1"],
                             skm.f1_score(y, pred, average="macro", zero_division=0), rtol=1e-12)
  np.testing.assert_allclose(rep["accuracy"], skm.accuracy_score(y, pred), rtol=1e-12)
  np.testing.assert_allclose(rep["macro_auc"],
                             skm.roc_auc_score(y, prob, multi_class="ovr", average="macro"),
                             rtol=1e-12)


def test_multiclass_absent_class():
  """A class with no truth and no prediction: zero scores like sklearn, AUC undefined."""
  y = np.array([0, 1, 0, 1, 0])
  prob = np.array([[.8, .1, .1], [.2, .7, .1], [.4, .5, .1], [.6, .3, .1], [.9, .05, .05]])
  rep = metrics.multiclass_report(y, prob, ("a", "b", "c"))
  pred = prob.argmax(1)
  assert rep["per_class"]["c"]["f1"] == 0.0 and np.isnan(rep["per_class"]["c"]["auc"])
  np.testing.assert_allclose(rep["macro_f1"], skm.f1_score(y, pred, labels=[0, 1, 2],
                                                           average="macro", zero_division=0))
  np.testing.assert_array_equal(rep["confusion_matrix"],
                                skm.confusion_matrix(y, pred, labels=[0, 1, 2]))
  np.testing.assert_allclose(rep["per_class"]["c"]["specificity"], 1.0)


def test_roc_curve_matches_sklearn():
  rng = np.random.default_rng(5)
  y = rng.random(40) < 0.4
  s = np.round(rng.random(40), 1)
  fpr, tpr, thr = metrics.roc_curve(y, s)
  rf, rt, rth = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, rf)
  np.testing.assert_allclose(tpr, rt)
  np.testing.assert_allclose(thr[1:], rth[1:])
  np.testing.assert_allclose(np.trapezoid(tpr, fpr), skm.roc_auc_score(y, s))


def test_flatten_and_table():
  rep = metrics.multilabel_report(np.array([[1, 0], [0, 1]]), np.array([[.9, .2], [.1, .8]]),
                                  ["p", "q"])
  flat = metrics.flatten_scalars(rep, prefix="val/")
  assert flat["val/macro_f1"] == 1.0 and flat["val/per_class/q/tp"] == 1.0
  table = metrics.format_table(rep)
  assert "macro" in table and table.splitlines()[1].startswith("p")


def test_markdown_summary_rows_and_undefined_values():
  y = np.array([[1, 0], [0, 0], [1, 0]])        # label q has no positive: AUC undefined
  p = np.array([[.9, .1], [.6, .7], [.2, .3]])
  rep = metrics.multilabel_report(y, p, ["p", "q"])
  lines = metrics.markdown_summary(rep, title="test (3 scans)", row="DrCT2").splitlines()
  f1p = skm.f1_score(y[:, 0], p[:, 0] >= .5)
  assert lines == ["| test (3 scans) | p | q | macro-F1 | macro-AUC |", "|---|---|---|---|---|",
                   f"| DrCT2 | {f1p:.3f} | 0.000 | {f1p / 2:.3f} | "
                   f"{skm.roc_auc_score(y[:, 0], p[:, 0]):.3f} |"]
