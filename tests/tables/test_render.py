"""ctjax.tables.render and ctjax.tables.publish on hand-made cell results: the fold statistics
equal scipy's, orderings are read from the CIs, files are written, docs keep what is theirs."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from ctjax.eval import metrics
from ctjax.tables import render
from ctjax.tables import publish
from ctjax.tables.grid import Cell, CellResult

NAMES = ("a", "b", "c")


def _result(variant, fold, quality, seed):
  """A DrCT-like cell: its test predictions (the same 40 scans per fold for every variant) and
  the report computed from them, as a finished cell holds them."""
  rng = np.random.default_rng(100 + fold)      # the fold's scans: shared by variants
  labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
  noise = np.random.default_rng(seed).random((40, 3))
  probs = np.clip(quality * labels + (1 - quality) * noise, 0, 1)
  rep = metrics.multilabel_report(labels, probs, NAMES)
  cell = Cell("ds", variant, fold, "x.py")
  preds = {"labels": labels, "probs": probs, "example_index": np.arange(40) + 40 * fold}
  return CellResult(cell, None, rep, preds, {"wall_seconds": 1.0})


@pytest.fixture
def rows():
  good = [_result("good", f, 0.6, 10 + f) for f in range(4)]
  bad = [_result("bad", f, 0.3, 20 + f) for f in range(4)]
  return good, bad


def test_figure_is_mean_sd_and_t_interval(rows):
  good, _ = rows
  fig = render.figure(good, "macro_f1")
  values = [r.report["macro_f1"] for r in good]
  ci = sps.ttest_1samp(values, 0).confidence_interval()
  assert fig.fold.n == 4
  np.testing.assert_allclose([fig.fold.mean, fig.fold.sd, fig.fold.lo, fig.fold.hi],
                             [np.mean(values), np.std(values, ddof=1), ci.low, ci.high])
  assert fig.text().startswith(f"{np.mean(values):.3f} ± ")


def test_compare_is_scipy_paired_t_and_a_paired_bootstrap(rows):
  good, bad = rows
  (c,) = render.compare(good, bad, ("macro_f1",), kind="drct", names=NAMES, n_boot=200,
                        test_train_ratio=0.5)
  a = [r.report["macro_f1"] for r in good]
  b = [r.report["macro_f1"] for r in bad]
  want = sps.ttest_rel(a, b)
  assert math.isclose(c.t_test.p, want.pvalue, rel_tol=1e-9)
  # The corrected test beside it: variance × (1/4 + 0.5) instead of × 1/4.
  d = np.subtract(a, b)
  t_corr = d.mean() / math.sqrt((1 / 4 + 0.5) * d.var(ddof=1))
  assert c.corrected.t == pytest.approx(t_corr, rel=1e-12)
  assert c.corrected.p == pytest.approx(2 * sps.t.sf(abs(t_corr), 3), rel=1e-9)
  assert c.corrected.p > c.t_test.p
  assert c.boot is not None and c.boot.value == pytest.approx(
      metrics.multilabel_report(*_pooled(good), NAMES)["macro_f1"]
      - metrics.multilabel_report(*_pooled(bad), NAMES)["macro_f1"])
  assert c.sign() == 1
  text = render.comparison_text("good", "bad", [c], {"macro_f1": "F1"},
                                paper={"macro_f1": 0.01})
  assert "same order as the paper (corrected t-test CI excludes 0)" in text
  assert "paired t-test" in text and "corrected t-test" in text
  text = render.comparison_text("good", "bad", [c], {"macro_f1": "F1"},
                                paper={"macro_f1": -0.01})
  assert "order differs from the paper" in text
  (same,) = render.compare(good, good, ("macro_f1",), kind="drct", names=NAMES, n_boot=50,
                           test_train_ratio=0.5)
  assert same.sign() == 0 and "not resolved here" in render.ordering(same, 0.01, "x", "y")


def test_resolved_is_read_from_the_corrected_test_not_the_plain_one():
  """Differences whose plain t-CI excludes 0 but whose corrected CI does not: unresolved."""
  def cell(variant, fold, f1):
    return CellResult(Cell("ds", variant, fold, "x.py"), None, {"macro_f1": f1}, {}, {})
  a = [cell("a", f, v) for f, v in enumerate((0.80, 0.84, 0.79, 0.83, 0.81))]
  b = [cell("b", f, v) for f, v in enumerate((0.78, 0.79, 0.78, 0.81, 0.79))]
  (c,) = render.compare(a, b, ("macro_f1",), kind="drct", names=NAMES, n_boot=0,
                        test_train_ratio=1 / 3)
  assert c.t_test.ci_low > 0 and c.corrected.ci_low < 0 < c.corrected.ci_high
  assert c.sign() == 0
  assert "not resolved here (corrected t-test CI includes 0" in render.ordering(c, 0.01, "a", "b")
  (c0,) = render.compare(a, b, ("macro_f1",), kind="drct", names=NAMES, n_boot=0,
                         test_train_ratio=0.0)   # ratio 0: the corrected test is the plain one
  assert c0.corrected.p == pytest.approx(c0.t_test.p) and c0.sign() == 1


def test_p_values_near_005_are_not_rounded_onto_it():
  assert render.p_text(0.0499) == "= 0.0499"
  assert render.p_text(0.0038) == "= 0.0038"
  assert render.p_text(0.28) == "= 0.28"
  assert render.p_text(0.0004) == "< 0.001"


def test_bounded_t_interval_is_clipped_and_said_so():
  res = [CellResult(Cell("ds", "v", f, "x.py"), None, {"f1": v}, {}, {})
         for f, v in enumerate((1.0, 0.96, 1.0))]
  fig = render.figure(res, "f1")
  raw = sps.ttest_1samp([1.0, 0.96, 1.0], 0).confidence_interval()
  assert raw.high > 1.0 and fig.fold.hi == 1.0 and fig.fold.lo == pytest.approx(raw.low)
  assert fig.text().endswith("1.000]" + render.CLIPPED) and fig.note() == "clipped"
  assert not render.figure(res, "f1", bounds=None).fold.clipped
  t = render.Table("x", "X", "cmd", "smoke", ["F1"], rows=[[fig.text()]])
  assert render.CLIPPED_NOTE in t.markdown()


def test_one_fold_bootstrap_with_too_few_positives_gives_no_interval():
  r = _result("good", 0, 0.8, 1)
  # Stored without a status (an older report): its n_valid decides (623 of 1,000 lost).
  r.report["ci95"] = {"macro_f1": {"value": r.report["macro_f1"], "lo": 0.2, "hi": 0.2,
                                   "n_boot": 1000, "n_valid": 377}}
  fig = render.figure([r], "macro_f1")
  assert fig.text() == f"{r.report['macro_f1']:.3f} [too few positives]"
  assert math.isnan(fig.boot[0]) and fig.note() == "too few positives"
  t = render.Table("x", "X", "cmd", "smoke", ["F1"], rows=[[fig.text()]])
  assert render.TOO_FEW_NOTE in t.markdown()
  row = render.cell_rows([r])[0]
  assert row["macro_f1_status"] == "too few positives" and row["macro_f1_lo"] is None


def _pooled(results):
  return (np.concatenate([r.predictions["labels"] for r in results]),
          np.concatenate([r.predictions["probs"] for r in results]))


def test_one_fold_uses_the_cells_bootstrap_interval():
  r = _result("good", 0, 0.8, 1)
  r.report["ci95"] = {"macro_f1": {"value": r.report["macro_f1"], "lo": 0.1, "hi": 0.9,
                                   "n_boot": 1000, "n_valid": 990, "status": "ok"}}
  fig = render.figure([r], "macro_f1")
  assert fig.text() == f"{r.report['macro_f1']:.3f} [0.100, 0.900]"


def test_table_files_and_docs_section(tmp_path, rows):
  good, bad = rows
  t = render.Table("demo_table", "Demo", "python -m ctjax.tables demo_table", "smoke",
                   ["model", "F1"], about="About.")
  for name, res in (("good", good), ("bad", bad)):
    t.rows.append([name, render.figure(res, "macro_f1").text()])
    t.csv_rows.append({"row": name, **render.csv_figure("f1", render.figure(res, "macro_f1"))})
    t.cells += res
  fig, ax = render.new_figure()
  ax.plot([0, 1], [0, 1])
  t.figures.append(render.save(fig, tmp_path / "out" / "demo.png"))
  paths = t.write(tmp_path / "out")
  assert {p.name for p in paths} == {"demo_table.md", "demo_table.csv",
                                     "demo_table_cells.csv", "demo.png"}
  md = (tmp_path / "out" / "demo_table.md").read_text()
  assert md.startswith("## Demo") and "python -m ctjax.tables demo_table" in md
  assert "![demo.png](demo.png)" in md
  csv = (tmp_path / "out" / "demo_table.csv").read_text().splitlines()
  assert csv[0].startswith("row,f1_mean,f1_sd,f1_lo,f1_hi,f1_folds,f1_ci_note") and len(csv) == 3
  docs = tmp_path / "docs"
  docs.mkdir()
  (docs / "RESULTS.md").write_text("# README job\n\nfigures of the README job\n")
  publish.write_docs(tmp_path / "out", docs)
  text = (docs / "RESULTS.md").read_text()
  assert text.startswith("# README job\n\nfigures of the README job\n")
  assert publish.BEGIN in text and "![demo.png](tables/demo.png)" in text
  assert (docs / "tables" / "demo.png").is_file()
  # Regenerating replaces the section only.
  (docs / "RESULTS.md").write_text(text + "\nafter\n")
  publish.write_docs(tmp_path / "out", docs)
  again = (docs / "RESULTS.md").read_text()
  assert again.count(publish.BEGIN) == 1 and again.rstrip().endswith("after")
  # A second workdir's table joins the first's; the run logs merge, each command once.
  (tmp_path / "out" / "run_log.jsonl").write_text(json.dumps(_log("a")) + "\n")
  publish.write_docs(tmp_path / "out", docs)
  other = tmp_path / "other"
  other.mkdir()
  (other / "other_table.md").write_text("## Other\n")
  (other / "run_log.jsonl").write_text(json.dumps(_log("a")) + "\n" + json.dumps(_log("b")) + "\n")
  publish.write_docs(other, docs)
  both = (docs / "RESULTS.md").read_text()
  assert "## Demo" in both and "## Other" in both
  assert [json.loads(ln)["command"] for ln in
          (docs / "tables" / "run_log.jsonl").read_text().splitlines()] == ["a", "b"]


def _log(command):
  return {"command": command, "cells": 1, "cells_reused": 0, "wall_seconds": 1.0,
          "finished": "2026-01-01T00:00:00"}
