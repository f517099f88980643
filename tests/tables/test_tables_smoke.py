"""`python -m ctjax.tables` end to end in CI size: DrCT2 Table 3 (+ Tables 5-6 and 7, Figure 7,
read from the same cells) and blend-sign Table 3 (+ Figure 6) on the smoke preset's tiny
phantoms write their Markdown, CSV and PNG files; a second run re-uses every finished cell; a
finished cell made with another config is refused.

Each cell's training is replaced by a checkpoint of random weights of the model's shapes (what
`python -m ctjax.train` leaves in a workdir: config.json + checkpoints/), so everything else runs
as it does for a trained cell — data generation and caching, `ctjax.inference.runs` restoring and
predicting the test split, the bootstrap CIs, calibration, the paired comparisons and the
rendering — in seconds rather than minutes of compilation. The same tables with trained cells
(and resuming a killed cell): tests/tables/test_tables_trained.py (slow).
"""

import json
import pathlib
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

from ctjax.commands import tables as tables_main

DRCT = ["drct2_table3", "drct2_table5_6", "drct2_table7", "drct2_figure7", "drct2_per_label",
        "drct2_table1", "drct2_table2", "drct2_table4", "drct2_figure5", "drct2_figure6"]
BLEND = ["blend_table3", "blend_figure6", "blend_table4"]


def _random_like(shapes, seed: int = 0):
  """Numpy values of `shapes` (He-scaled kernels, BatchNorm mean 0 / var 1): no Flax init."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, s in traverse_util.flatten_dict(shapes).items():
    if key[-1] == "kernel":
      v = rng.standard_normal(s.shape) * np.sqrt(2.0 / max(int(np.prod(s.shape[:-1])), 1))
    elif key[-1] in ("scale", "var"):
      v = np.ones(s.shape)
    else:
      v = np.zeros(s.shape)
    flat[key] = v.astype(s.dtype)
  return traverse_util.unflatten_dict(flat)


def _untrained_run(config, workdir) -> None:
  """A trainer's workdir holding step 1 of random weights."""
  from ctjax.train import optim
  from ctjax.train import state as state_lib
  from ctjax.train.checkpoint import Checkpointer
  from ctjax.train.tasks import get_task
  task = get_task(config.task)
  model = task.build_model(config)
  shapes = jax.eval_shape(lambda: task.init_variables(model, config, jax.random.PRNGKey(0)))
  variables = _random_like(shapes)
  tx, _ = optim.make_optimizer(config, 1, 1, lambda p: task.param_groups(config, p))
  state = state_lib.state_from_variables(task, config, variables, jax.random.PRNGKey(0), tx)
  wd = pathlib.Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  config.checkpoint.async_save = False
  ck = Checkpointer(wd, config)
  ck.save(1, state, None, force=True)
  ck.close()
  (wd / "config.json").write_text(config.to_json_best_effort())
  # The trainer's log: a train record (steps per epoch) and two validation evaluations.
  evals = [{"step": 2, "train/epoch": 1.0, "train/loss": 1.0}]
  evals += [{"step": s, "val/macro_precision": p, "val/macro_recall": r, "val/macro_f1": f}
            for s, p, r, f in ((2, 0.5, 0.4, 0.44), (4, 0.6, 0.5, 0.55))]
  (wd / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
  """Patches the trainer and the distiller of every cell with `_untrained_run`."""
  from ctjax.experiments import skd
  from ctjax.train import loop
  mp = pytest.MonkeyPatch()
  made = []

  def train(config, workdir, **_):
    made.append(str(workdir))
    _untrained_run(config, workdir)

  def distill_run(config, workdir, **_):
    rounds = int(config.get("distill", {}).get("rounds", 0))
    made.append(str(workdir))
    _untrained_run(config, pathlib.Path(workdir) / f"round_{rounds}")

  mp.setattr(loop, "train_and_evaluate", train)
  mp.setattr(skd, "run", distill_run)
  yield made
  mp.undo()


def _run(workdir, names, *extra):
  return tables_main.main([*names, "--preset", "smoke", "--workdir", str(workdir),
                           "--n_boot", "20", "--folds", "0",
                           *extra])


@pytest.fixture(scope="module")
def tables_run(untrained, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tables")
  t0 = time.perf_counter()
  assert _run(workdir, DRCT + BLEND) == 0
  return workdir, time.perf_counter() - t0


def test_drct2_table3_files(tables_run, untrained):
  workdir, _ = tables_run
  out = workdir / "tables"
  for name in DRCT:
    assert (out / f"{name}.md").is_file() and (out / f"{name}.csv").is_file(), name
  md = (out / "drct2_table3.md").read_text()
  assert "python -m ctjax.tables drct2_table3 blend_table3" not in md   # each its own command
  assert "python -m ctjax.tables drct2_table3 --preset smoke" in md
  assert md.count("| DrCT1 |") == 2 and md.count("| DrCT2 |") == 2
  assert "0.9370" in md and "0.8650" in md   # the paper's F1s beside ours
  assert "DrCT2 vs DrCT1 over the 2 folds of both data sets" in md   # one fold of each
  assert md.count("| DrCT1, BCE head |") == 2 and "corrected" in md
  assert (out / "drct2_figure7.png").stat().st_size > 1000
  assert (out / "drct2_table3_reliability_rsna.png").stat().st_size > 1000
  cells = (out / "drct2_table3_cells.csv").read_text().splitlines()
  assert len(cells) == 1 + 6 and "macro_f1_lo" in cells[0] and "macro_f1_status" in cells[0]
  report = json.loads((workdir / "cells/rsna/drct2/fold_0/evaluation.json").read_text())
  assert {"ci95", "calibration"} <= set(report)
  assert "rsna_weighted_log_loss" in report["calibration"]
  # Table 3's 6 cells, Table 2's BCE pair, Table 4's 4 variants, Figure 6's other mkeys.
  assert sum("/cells/" in m and "blend" not in m for m in untrained) == 14


def test_the_other_drct2_tables_and_figures(tables_run):
  workdir, _ = tables_run
  out = workdir / "tables"
  t2 = (out / "drct2_table2.md").read_text()
  assert t2.count("| BCE |") == 2 and t2.count("| MSE |") == 2 and "0.9360" in t2
  t4 = (out / "drct2_table4.md").read_text()
  assert "model fusion" in t4 and "high-resolution input" in t4 and "0.9179" in t4
  f6 = (out / "drct2_figure6.md").read_text()
  rows = [ln for ln in f6.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
  assert rows and "Best mkey with attention here" in f6
  assert (out / "drct2_figure6.png").stat().st_size > 1000
  f5 = (out / "drct2_figure5.md").read_text()
  # The cell's logged validation figures by epoch (2 steps an epoch in the stand-in log).
  assert "| 1 | 0.500 ± 0.000 | 0.400 ± 0.000 | 0.440 ± 0.000 |" in f5
  assert "| 2 | 0.600 ± 0.000 | 0.500 ± 0.000 | 0.550 ± 0.000 |" in f5
  assert (out / "drct2_figure5.png").stat().st_size > 1000
  assert "Fleiss" in (out / "drct2_table1.md").read_text()


def test_figure5_of_a_cell_without_its_log_is_one_line(tables_run, capsys):
  workdir, _ = tables_run
  log = workdir / "cells/cq500/drct2/fold_0/metrics.jsonl"
  saved = log.read_text()
  log.unlink()
  try:
    assert _run(workdir, ["drct2_figure5"]) == 1
  finally:
    log.write_text(saved)
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and len(err.splitlines()) == 1
  assert "metrics.jsonl: missing" in err and "cell.json" in err


def test_drct2_per_label_rows_are_the_cells_report(tables_run):
  """One row per label with its bootstrap CI, the macro row as Table 3's DrCT2 row, the heads,
  key-slice tasks and calibration, all from the RSNA DrCT2 cell Table 3 made."""
  from configs import drct2_phantom
  workdir, _ = tables_run
  out = workdir / "tables"
  md = (out / "drct2_per_label.md").read_text()
  report = json.loads((workdir / "cells/rsna/drct2/fold_0/evaluation.json").read_text())
  labels = list(drct2_phantom.get_config("runlocal").data.labels)
  rows = [line for line in md.splitlines()
          if line.startswith("| ") and line.split("|")[1].strip().split(" (")[0] in labels]
  assert [r.split("|")[1].strip().split(" (")[0] for r in rows] == labels
  pc = report["per_class"]
  for r, name in zip(rows, labels):
    cols = [c.strip() for c in r.split("|")[2:6]]
    assert f"({pc[name]['support']})" in r
    for col, m in zip(cols, ("precision", "recall", "f1", "auc")):
      value = pc[name][m]
      assert col.startswith("—" if value is None else f"{value:.3f}"), (name, m, col)
  macro = next(line for line in md.splitlines() if line.startswith("| **macro** |"))
  t3 = (out / "drct2_table3.md").read_text()
  t3_row = next(line for line in t3.splitlines() if line.startswith("| RSNA") and "DrCT2" in line)
  assert macro.split("|")[2:6] == t3_row.split("|")[3:7]   # the same cell's P / R / F1 / AUC
  assert "Macro-F1 of each head" in md and "fusion" in md and "Key-slice tasks" in md
  assert "weighted log loss" in md
  import csv
  with open(out / "drct2_per_label.csv") as f:
    got = {r["row"]: r for r in csv.DictReader(f)}
  assert set(got["any"]) == set(got["**macro**"])   # one set of columns
  assert float(got["head fusion"]["F1_mean"]) == pytest.approx(report["macro_f1"], abs=1e-6)


def test_blend_table3_and_figure6_files(tables_run):
  workdir, _ = tables_run
  out = workdir / "tables"
  md = (out / "blend_table3.md").read_text()
  assert md.count("| WCE + AT + SKD |") == 3 and "0.845" in md   # the paper's blend sensitivity
  assert (out / "blend_table3.csv").is_file() and (out / "blend_figure6.png").is_file()
  assert (workdir / "cells/blend/wce_at_skd/fold_0/round_1/config.json").is_file()
  assert (workdir / "cells/blend/wce_at_skd/fold_0/evaluation.json").is_file()


def test_blend_table4_compares_each_backbone_with_resnet50(tables_run):
  workdir, _ = tables_run
  md = (workdir / "tables/blend_table4.md").read_text()
  for label in ("VGG16", "ResNet-50", "Inception v3"):
    assert md.count(f"| {label} |") == 3, label   # one row per class
  assert "**VGG16 − ResNet-50.**" in md and "**Inception v3 − ResNet-50.**" in md
  # Table 3's WCE + AT + SKD cell is Table 4's ResNet-50 row: made once.
  assert (workdir / "cells/blend/wce_at_skd_vgg16/fold_0/cell.json").is_file()
  assert not (workdir / "cells/blend/wce_at_skd_resnet50").exists()


def test_second_run_reuses_finished_cells(tables_run, untrained):
  workdir, first = tables_run
  marker = workdir / "cells/cq500/drct2/fold_0/cell.json"
  before, trained = marker.stat().st_mtime_ns, len(untrained)
  t0 = time.perf_counter()
  assert _run(workdir, ["drct2_table3"]) == 0
  assert marker.stat().st_mtime_ns == before and len(untrained) == trained
  log = [json.loads(line) for line in (workdir / "tables/run_log.jsonl").read_text().splitlines()]
  assert log[-1]["cells"] == log[-1]["cells_reused"] == 6
  assert time.perf_counter() - t0 < first


def test_changed_config_of_a_finished_cell_is_refused(tables_run, capsys):
  workdir, _ = tables_run
  rc = _run(workdir, ["drct2_table7"], "--override", "model.gru_hidden=32")
  err = capsys.readouterr().err.strip()
  assert rc == 1 and err.startswith("error: ") and len(err.splitlines()) == 1
  assert "another config" in err


def test_usage_errors_are_one_line(tmp_path, capsys):
  assert tables_main.main(["nope", "--workdir", str(tmp_path)]) == 1
  assert capsys.readouterr().err.startswith("error: unknown table 'nope'")
  assert tables_main.main(["drct2_table3", "--preset", "paper", "--workdir",
                           str(tmp_path)]) == 2
  assert "--cq500_root" in capsys.readouterr().err
  assert tables_main.main(["drct2_table3", "--workdir", str(tmp_path), "--folds", "5",
                           "--preset", "smoke"]) == 1
  assert "fold 5 is not in 0..4" in capsys.readouterr().err


def test_list_states_cells_and_cpu_times(capsys):
  assert tables_main.main(["--list", "--preset", "cpu"]) == 0
  out = capsys.readouterr().out
  assert "drct2_table3" in out and "4 cells (cq500 2, rsna 2)" in out
  assert "drct2_figure6" in out and "14 cells (cq500 14)" in out
