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
  (c,) = render.compare(good, bad, ("macro_f1",), kind="drct", names=NAMES, n_boot=200)
  a = [r.report["macro_f1"] for r in good]
  b = [r.report["macro_f1"] for r in bad]
  want = sps.ttest_rel(a, b)
  assert math.isclose(c.t_test.p, want.pvalue, rel_tol=1e-9)
  assert c.boot is not None and c.boot.value == pytest.approx(
      metrics.multilabel_report(*_pooled(good), NAMES)["macro_f1"]
      - metrics.multilabel_report(*_pooled(bad), NAMES)["macro_f1"])
  assert c.sign() == 1
  text = render.comparison_text("good", "bad", [c], {"macro_f1": "F1"},
                                paper={"macro_f1": 0.01})
  assert "same order as the paper" in text and "paired t-test" in text
  text = render.comparison_text("good", "bad", [c], {"macro_f1": "F1"},
                                paper={"macro_f1": -0.01})
  assert "order differs from the paper" in text
  (same,) = render.compare(good, good, ("macro_f1",), kind="drct", names=NAMES, n_boot=50)
  assert same.sign() == 0 and "does not resolve" in render.ordering(same, 0.01, "x", "y")


def _pooled(results):
  return (np.concatenate([r.predictions["labels"] for r in results]),
          np.concatenate([r.predictions["probs"] for r in results]))


def test_one_fold_uses_the_cells_bootstrap_interval():
  r = _result("good", 0, 0.8, 1)
  r.report["ci95"] = {"macro_f1": {"value": r.report["macro_f1"], "lo": 0.1, "hi": 0.9}}
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
  assert csv[0].startswith("row,f1_mean,f1_sd,f1_lo,f1_hi,f1_folds") and len(csv) == 3
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
