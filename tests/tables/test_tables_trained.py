"""`python -m ctjax.tables` end to end with trained cells (the smoke preset: runlocal cells on
tiny phantoms): DrCT2 Table 3 (+ the tables read from its cells, Figure 5's validation curves
included) and blend-sign Table 3 (+ Figure 6) write their files; a second run re-uses every
finished cell; a cell whose finish marker is gone resumes from its checkpoint without training
again; a cell equals `python -m ctjax.evaluate` on its workdir.

Slow (about 4 min of CPU on 2 cores, nearly all of it XLA compiling the 7 cells' init, train,
eval and predict programs): the default suite runs the same tables on untrained cells,
tests/tables/test_tables_smoke.py."""

import json
import pathlib
import time

import pytest

from ctjax.commands import evaluate
from ctjax.commands import tables as tables_main

pytestmark = pytest.mark.slow

DRCT = ["drct2_table3", "drct2_table5_6", "drct2_table7", "drct2_figure5", "drct2_figure7"]


def _run(workdir, names, *extra):
  return tables_main.main([*names, "--preset", "smoke", "--workdir", str(workdir),
                           "--n_boot", "50", *extra])


@pytest.fixture(scope="module")
def drct_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tables")
  t0 = time.perf_counter()
  assert _run(workdir, DRCT, "--folds", "0") == 0
  return workdir, time.perf_counter() - t0


def test_drct2_table3_files(drct_run):
  workdir, _ = drct_run
  out = workdir / "tables"
  for name in DRCT:
    assert (out / f"{name}.md").is_file() and (out / f"{name}.csv").is_file(), name
  md = (out / "drct2_table3.md").read_text()
  assert "python -m ctjax.tables drct2_table3 --preset smoke" in md
  assert md.count("| DrCT1 |") == 2 and md.count("| DrCT2 |") == 2
  assert "0.9370" in md and "0.8650" in md   # the paper's F1s beside ours
  assert (out / "drct2_figure7.png").stat().st_size > 1000
  assert (out / "drct2_figure5.png").stat().st_size > 1000
  cells = (out / "drct2_table3_cells.csv").read_text().splitlines()
  assert len(cells) == 1 + 6 and "macro_f1_lo" in cells[0]   # DrCT1, its BCE head, DrCT2 × 2 sets
  keys = json.loads((workdir / "cells/rsna/drct2/fold_0/evaluation.json").read_text())
  assert {"ci95", "calibration"} <= set(keys)
  assert "rsna_weighted_log_loss" in keys["calibration"]


def test_second_run_reuses_finished_cells(drct_run):
  workdir, first = drct_run
  marker = workdir / "cells/cq500/drct2/fold_0/cell.json"
  before = marker.stat().st_mtime_ns
  t0 = time.perf_counter()
  assert _run(workdir, ["drct2_table3"], "--folds", "0") == 0
  again = time.perf_counter() - t0
  assert marker.stat().st_mtime_ns == before
  log = [json.loads(line) for line in (workdir / "tables/run_log.jsonl").read_text().splitlines()]
  assert log[-1]["cells"] == log[-1]["cells_reused"] == 6
  assert again < first


def test_unfinished_cell_resumes_from_its_checkpoint(drct_run):
  workdir, _ = drct_run
  cell = workdir / "cells/rsna/drct1/fold_0"
  (cell / "cell.json").unlink()
  trained = (cell / "metrics.jsonl").read_text().count('"train/loss"')
  assert _run(workdir, ["drct2_table7"], "--folds", "0") == 0
  assert (cell / "cell.json").is_file()
  assert (cell / "metrics.jsonl").read_text().count('"train/loss"') == trained


def test_a_cell_is_what_evaluate_reports(drct_run, tmp_path, capsys):
  workdir, _ = drct_run
  cell = workdir / "cells/rsna/drct2/fold_0"
  out = tmp_path / "eval.json"
  assert evaluate.main(["--workdir", str(cell), "--json", str(out), "--n_boot", "50",
                        "--reliability", str(tmp_path / "rel.png")]) == 0
  printed = capsys.readouterr().out
  assert "macro_f1" in printed and "bootstrap CIs" in printed and "ECE" in printed
  got = json.loads(out.read_text())
  saved = json.loads((cell / "evaluation.json").read_text())
  assert got["ci95"] == saved["ci95"] and got["macro_f1"] == saved["macro_f1"]
  assert (tmp_path / "rel.png").stat().st_size > 1000


def test_changed_config_of_a_finished_cell_is_refused(drct_run, capsys):
  workdir, _ = drct_run
  rc = _run(workdir, ["drct2_table7"], "--folds", "0", "--override", "model.gru_hidden=32")
  err = capsys.readouterr().err.strip()
  assert rc == 1 and err.startswith("error: ") and len(err.splitlines()) == 1
  assert "another config" in err


def test_blend_table3_and_figure6(tmp_path):
  assert _run(tmp_path, ["blend_table3", "blend_figure6"]) == 0
  out = tmp_path / "tables"
  md = (out / "blend_table3.md").read_text()
  assert md.count("| WCE + AT + SKD |") == 3 and "0.845" in md   # the paper's blend sensitivity
  assert (out / "blend_table3.csv").is_file() and (out / "blend_figure6.png").is_file()
  assert (tmp_path / "cells/blend/wce_at_skd/fold_0/round_1/config.json").is_file()
