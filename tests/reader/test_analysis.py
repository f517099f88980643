"""Table 8's figures and the paired statistics, checked against scikit-learn and scipy."""

import csv
import io
import zlib

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score, precision_score, recall_score

from ctjax.reader import analysis
from ctjax.reader import study as study_lib
from ctjax.reader.db import ReadInfo

LABELS = ("a", "b", "c", "d")


def _random_answers(rng, n, flip=0.25):
  truth = (rng.random((n, len(LABELS))) < 0.4).astype(int)
  truth[0, 3] = 0
  pred = np.where(rng.random(truth.shape) < flip, 1 - truth, truth)
  return truth, pred


def test_macro_prf_equals_scikit_learn():
  rng = np.random.default_rng(1)
  for n in (3, 10, 57):
    truth, pred = _random_answers(rng, n)
    pred[:, 3] = 0   # never answered: precision 0/0 → 0, as scikit-learn's zero_division=0
    p, r, f1 = analysis.macro_prf(truth, pred, LABELS)
    kw = dict(average="macro", zero_division=0)
    assert p == pytest.approx(precision_score(truth, pred, **kw), abs=1e-12)
    assert r == pytest.approx(recall_score(truth, pred, **kw), abs=1e-12)
    assert f1 == pytest.approx(f1_score(truth, pred, **kw), abs=1e-12)


def test_macro_f1_is_not_the_harmonic_mean_of_macro_p_and_r():
  """Why Table 8's F1 can sit below both P and R: it is the mean of per-label F1s."""
  # Label x: 5 positives, 1 found (P 1, R 0.2); label y: 1 positive, 5 called (P 0.2, R 1).
  truth = np.zeros((10, 2), int)
  pred = np.zeros((10, 2), int)
  truth[:5, 0] = 1
  pred[:1, 0] = 1
  truth[5, 1] = 1
  pred[5:, 1] = 1
  p, r, f1 = analysis.macro_prf(truth, pred, ("x", "y"))
  assert (p, r) == pytest.approx((0.6, 0.6)) and f1 == pytest.approx(1 / 3)
  assert f1 < min(p, r)
  # Micro averaging pools the counts: its F1 is the harmonic mean of the pooled P and R.
  mp, mr = precision_score(truth, pred, average="micro"), recall_score(truth, pred,
                                                                       average="micro")
  mf = f1_score(truth, pred, average="micro")
  assert mf == pytest.approx(2 * mp * mr / (mp + mr)) and min(mp, mr) <= mf <= max(mp, mr)


@pytest.mark.parametrize("n,seed", [(12, 0), (148, 2)])
def test_paired_bootstrap_equals_scipy_percentile_bootstrap(n, seed):
  rng = np.random.default_rng(seed)
  truth, alone = _random_answers(rng, n, flip=0.35)
  assisted = np.where(rng.random(truth.shape) < 0.15, 1 - truth, truth)
  got = analysis.paired_bootstrap_f1_difference(truth, alone, assisted, n_resamples=199,
                                                seed=seed + 10)

  def diff(i, axis=-1):
    i = np.atleast_2d(i)
    return np.array([f1_score(truth[k], assisted[k], average="macro", zero_division=0)
                     - f1_score(truth[k], alone[k], average="macro", zero_division=0)
                     for k in i])

  want = stats.bootstrap((np.arange(n),), diff, vectorized=True, n_resamples=199,
                         method="percentile", rng=np.random.default_rng(seed + 10))
  assert got.lo == pytest.approx(want.confidence_interval.low, abs=1e-12)
  assert got.hi == pytest.approx(want.confidence_interval.high, abs=1e-12)
  assert got.value == pytest.approx(diff(np.arange(n))[0], abs=1e-12)
  assert got.lo <= got.value <= got.hi
  assert got.n_valid == got.n_boot == 199       # macro-F1 is defined on every resample


def _sign_flip_pvalue(d):
  """Two-sided P of W+ over all 2^n sign patterns of the non-zero differences' ranks."""
  import itertools
  nz = d[d != 0]
  r = stats.rankdata(np.abs(nz))
  w = r[nz > 0].sum()
  null = np.array(list(itertools.product((0.0, 1.0), repeat=nz.size))) @ r
  eps = 1e-9
  return min(1.0, 2 * min(np.mean(null >= w - eps), np.mean(null <= w + eps)))


@pytest.mark.parametrize("case", ["exact", "large", "ties_small", "zeros_small", "ties_mid",
                                  "zeros_mid", "all_one_side", "one"])
def test_wilcoxon_equals_scipy(case):
  rng = np.random.default_rng(zlib.crc32(case.encode()))
  x = {"exact": rng.normal(60, 10, 15), "large": rng.normal(60, 10, 80),
       "ties_small": np.round(rng.normal(60, 10, 9)), "zeros_small": rng.normal(60, 10, 11),
       "ties_mid": np.round(rng.normal(60, 5, 30)), "zeros_mid": rng.normal(60, 10, 25),
       "all_one_side": rng.normal(60, 10, 8), "one": np.array([3.0])}[case]
  y = x + {"all_one_side": rng.uniform(1, 5, x.size)}.get(case, rng.normal(-4, 8, x.size))
  if case == "ties_small" or case == "ties_mid":
    y = np.round(y)
  if case.startswith("zeros"):
    y[:3] = x[:3]
  got = analysis.wilcoxon_signed_rank(x, y)
  want = stats.wilcoxon(x, y)     # scipy's defaults: method "auto"
  assert got.statistic == pytest.approx(float(want.statistic), abs=1e-9)
  assert got.pvalue == pytest.approx(float(want.pvalue), rel=1e-9, abs=1e-12)
  if x.size <= 15:                # and by hand, over every sign pattern of the ranks
    assert got.pvalue == pytest.approx(_sign_flip_pvalue(x - y), rel=1e-9, abs=1e-12)
  assert got.method == {"exact": "exact", "all_one_side": "exact", "one": "exact",
                        "large": "asymptotic", "ties_mid": "asymptotic",
                        "zeros_mid": "asymptotic"}.get(case, "permutation")


def test_wilcoxon_with_no_difference():
  got = analysis.wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0])
  assert got.n == 0 and np.isnan(got.pvalue)


def test_duration_is_written_as_table_8_writes_it():
  assert analysis.duration(3 * 3600 + 9 * 60 + 27) == "3h9m27s"
  assert analysis.duration(121.4) == "2m1s"
  assert analysis.duration(59.6) == "1m0s"
  assert analysis.duration(7) == "7s"


# ---------------------------------------------------------------------------------------------
# Table 8 from hand-made reads on the session's 3-case study.

def _read(name, number, arm, pos, cid, shown, secs, answer, conf):
  return ReadInfo(name, number, arm, pos, cid, shown, 1, shown + secs, secs, answer, conf,
                  shown + secs + 2)


def test_table8_and_export_from_hand_made_reads(study_dir, tmp_path):
  s = study_lib.Study(study_dir)
  c = s.cases
  truth = np.array([x.truth for x in c])
  t0 = 1_636_000_000.0
  # Reader A answers the truth exactly when assisted, and nothing at all alone.
  reads = [_read("A", 1, "alone", k, c[k].case_id, t0 + 100 * k, 10.0 * (k + 1), [], k)
           for k in range(3)]
  reads += [_read("A", 1, "assisted", k, c[k].case_id, t0 + 8 * 86400 + 100 * k, 5.0,
                  [n for n, v in zip(s.labels, c[k].truth) if v], 3) for k in range(3)]
  rows = analysis.table8(s, reads)
  assert [(r.reader, r.arm) for r in rows] == [("A", "alone"), ("A", "assisted"),
                                               ("model", "model")]
  alone, assisted, model = rows
  assert (alone.precision, alone.recall, alone.f1) == (0.0, 0.0, 0.0)
  present = truth.any(axis=0).mean()     # labels never positive score 0 (zero_division=0)
  assert assisted.f1 == pytest.approx(present) and assisted.precision == pytest.approx(present)
  assert alone.confidence == 1.0 and assisted.confidence == 3.0
  assert alone.total_seconds == 60.0 and alone.seconds_per_scan == 20.0
  assert assisted.total_seconds == 15.0 and assisted.seconds_per_scan == 5.0
  assert alone.first_day == "2021-11-04" and assisted.first_day == "2021-11-12"
  outs = [s.model_output(x.case_id) for x in c]
  kw = dict(average="macro", zero_division=0)
  assert model.f1 == pytest.approx(f1_score(truth, np.array([o["predicted"] for o in outs]),
                                            **kw))
  assert model.total_seconds == pytest.approx(sum(o["seconds"] for o in outs))
  (pair,) = analysis.paired(s, reads, n_resamples=200, seed=0)
  assert pair.num_paired == 3 and pair.f1_difference.value == pytest.approx(present)
  assert pair.bootstrap_seed == 1 and pair.f1_difference.n_boot == 200
  assert pair.mean_seconds_difference == pytest.approx(5.0 - 20.0)
  want = stats.wilcoxon([5.0] * 3, [10.0, 20.0, 30.0])
  assert pair.wilcoxon.pvalue == pytest.approx(want.pvalue)
  paths = analysis.write_analysis(s, reads, tmp_path / "out", n_resamples=200)
  md = paths["markdown"].read_text()
  assert "| F1-score | 0.0000 | " in md and "| Total time | 1m0s | 15s |" in md
  assert "macro averages over the labels" in md
  table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
  assert [r["reader"] for r in table] == ["A", "A", "model"]
  assert float(table[1]["f1"]) == pytest.approx(present)
  from PIL import Image
  img = np.asarray(Image.open(paths["figure"]))
  assert img.shape[0] > 300 and img.std() > 5
  text = analysis.export_csv(s, reads, tmp_path / "reads.csv")
  rows_ = list(csv.DictReader(io.StringIO(text)))
  assert len(rows_) == 6 and rows_[3]["arm"] == "assisted"
  assert [int(rows_[3][f"answer_{n}"]) for n in s.labels] == c[0].truth
  assert [int(rows_[3][f"truth_{n}"]) for n in s.labels] == c[0].truth
  assert float(rows_[0]["reading_seconds"]) == 10.0 and rows_[0]["shown_at"] == \
      "2021-11-04T04:26:40Z"
