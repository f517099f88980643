"""`python -m ctjax.train` (ctjax/commands/train.py): what the command does after the training loop
(the loop itself: tests/train/test_loop.py): the test split's table printed, the run's model card
written, and a whole tiny run's terminal output (no log record glued to a bar, no warning)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sklearn.metrics as skm

from ctjax.commands import train as train_cli
from ctjax.data.labels import BLEND_CLASSES, RSNA_LABELS
from ctjax.eval import metrics
from tests.support import terminal

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUNLOCAL = str(ROOT / "configs" / "drct2_phantom.py") + ":runlocal"


def _drct_report(seed: int = 0):
  rng = np.random.default_rng(seed)
  y = (rng.random((40, len(RSNA_LABELS))) < 0.4).astype(int)
  p = np.clip(y * 0.55 + rng.random(y.shape) * 0.6, 0, 1)
  return y, p, metrics.multilabel_report(y, p, RSNA_LABELS)


def test_end_of_training_prints_the_test_split_f1_row(tmp_path, capsys, monkeypatch):
  from ctjax.inference import highlight_scale
  from ctjax.train import loop
  y, p, report = _drct_report()

  def trained(config, workdir, **_):   # the loop's output file, with a report of known numbers
    pathlib.Path(workdir).mkdir(parents=True)
    (pathlib.Path(workdir) / "final_metrics.json").write_text(json.dumps(
        {"step": 7, "metrics": {}, "reports": {"test": report, "val": {"macro_f1": 0.1}}}))
    return {"test/macro_f1": report["macro_f1"]}

  from ctjax.inference import model_card
  monkeypatch.setattr(loop, "train_and_evaluate", trained)
  monkeypatch.setattr(highlight_scale, "fit_after_training", lambda workdir: None)
  monkeypatch.setattr(model_card, "write_card", lambda workdir: "MODEL_CARD.md")   # below
  assert train_cli.main(["--config", RUNLOCAL, "--workdir", str(tmp_path / "w"),
                         "--config.evals.test.every_steps=0"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert "test split, final state (step 7):" in out
  header = out.index("| test split (40 scans) | " + " | ".join(RSNA_LABELS)
                     + " | macro-F1 | macro-AUC |")
  cells = out[header + 2].strip("| ").split(" | ")
  f1 = skm.f1_score(y, p >= 0.5, average=None, zero_division=0)
  auc = skm.roc_auc_score(y, p, average="macro")
  assert cells == ["DrCT2", *(f"{v:.3f}" for v in f1), f"{f1.mean():.3f}", f"{auc:.3f}"]
  assert json.loads(out[-1]) == {"test/macro_f1": report["macro_f1"]}   # still the last line

  # A config that never evaluates its test split (runlocal as shipped) prints no table.
  assert train_cli.main(["--config", RUNLOCAL, "--workdir", str(tmp_path / "w2")]) == 0
  assert "| macro-F1 |" not in capsys.readouterr().out


def test_blend_runs_print_the_per_class_table(tmp_path, capsys):
  from ctjax.configs.common import load_config_file
  config = load_config_file(str(ROOT / "configs" / "blend_phantom.py"))
  config.unlock()
  config.evals = {"test": {"split": "test", "every_steps": 0}}
  rng = np.random.default_rng(1)
  y = rng.integers(0, 3, 60)
  p = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y] * 0.5
  p /= p.sum(1, keepdims=True)
  report = metrics.multiclass_report(y, p, BLEND_CLASSES)
  (tmp_path / "final_metrics.json").write_text(json.dumps(
      {"step": 1500, "reports": {"test": report}}))
  train_cli._print_test_table(config, str(tmp_path))
  out = capsys.readouterr().out.splitlines()
  assert "| test split (60 slices) | precision | recall | specificity | F1 | AUC |" in out
  pred = p.argmax(1)
  prec = skm.precision_score(y, pred, average=None, zero_division=0)
  rec = skm.recall_score(y, pred, average=None, zero_division=0)
  f1 = skm.f1_score(y, pred, average=None, zero_division=0)
  for c, name in enumerate(BLEND_CLASSES):
    auc = skm.roc_auc_score(y == c, p[:, c])
    spec = np.mean(pred[y != c] != c)
    assert f"| {name} | {prec[c]:.3f} | {rec[c]:.3f} | {spec:.3f} | {f1[c]:.3f} | {auc:.3f} |" \
        in out
  assert f"macro-F1 {f1.mean():.3f}, accuracy {np.mean(pred == y):.3f}" in out


@pytest.mark.slow
def test_a_tiny_run_prints_bars_logs_and_the_table_cleanly(tmp_path):
  """The documented smoke run, with validation while the bar is drawn and the test split at the
  end: no line shows a bar and a log record together, nothing is a warning (the random backbone
  is asked for), the data set's size is said before it is written, and the printed table is
  final_metrics.json's."""
  workdir = tmp_path / "w"
  r = subprocess.run([sys.executable, "-m", "ctjax.train", "--config", RUNLOCAL, "--workdir",
                      str(workdir), "--config.evals.val.every_epochs=1",
                      "--config.evals.test.every_steps=0"], cwd=tmp_path,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, timeout=900)
  err, out = r.stderr.decode(), r.stdout.decode()
  assert r.returncode == 0, err[-3000:]
  assert terminal.glued_lines(err) == []
  shown = terminal.rendered_lines(err)
  records = [ln for ln in shown if terminal.RECORD.match(ln)]
  assert not [ln for ln in records if " WARNING " in ln or " ERROR " in ln], records
  said = [ln for ln in records if "phantom head-CT scans" in ln]
  assert len(said) == 1 and f"generating 12 phantom head-CT scans (rsna layout, 128 px, seed 1) " \
      f"into {workdir / 'data'}: about" in said[0]
  assert any(terminal.BAR.search(ln) and ln.startswith("phantom scans") and "12/12" in ln
             for ln in shown)
  assert any("step 1 val:" in ln for ln in records)
  # The stretches that once showed nothing: label and header reads, the model's compilation.
  for said in ("reading the labels and DICOM headers of", "initialising the model",
               "model initialised in"):
    assert any(said in ln for ln in records), said
  report = json.loads((workdir / "final_metrics.json").read_text())["reports"]["test"]
  row = next(ln for ln in out.splitlines() if ln.startswith("| DrCT2 |"))
  assert row.strip("| ").split(" | ")[1:] == [
      *(metrics._short(report["per_class"][k]["f1"]) for k in RSNA_LABELS),
      metrics._short(report["macro_f1"]), metrics._short(report["macro_auc"])]


def test_a_finished_run_gets_its_model_card(tmp_path, monkeypatch, capsys):
  """The loop replaced by one that leaves a run folder as training does (config.json, a
  checkpoint, final_metrics.json): the command then writes MODEL_CARD.md citing them."""
  from ctjax.inference import highlight_scale
  from ctjax.train import loop
  from tests.support.run_folders import write_run

  def fake_loop(config, workdir, **_):
    write_run(pathlib.Path(workdir), config)
    (pathlib.Path(workdir) / "final_metrics.json").write_text(json.dumps({
        "step": 3, "wall_seconds": 12.0, "metrics": {},
        "reports": {"test": {"macro_f1": 0.375, "num_examples": 3}}}))
    return {"test/macro_f1": 0.375}

  monkeypatch.setattr(loop, "train_and_evaluate", fake_loop)
  monkeypatch.setattr(highlight_scale, "fit_after_training", lambda workdir: None)
  wd = tmp_path / "run"
  assert train_cli.main(["--config", str(ROOT / "configs" / "drct2_phantom.py") + ":runlocal",
                         "--workdir", str(wd),
                         f"--config.data.root={tmp_path / 'data'}"]) == 0
  assert f"model card: {wd / 'MODEL_CARD.md'}" in capsys.readouterr().out
  md = (wd / "MODEL_CARD.md").read_text()
  assert "# Model card: DrCT2 (vgg16 backbone), step 3" in md
  assert "| macro_f1 | 0.3750 |" in md and "final_metrics.json" in md
  assert "Research use only — not a medical device" in md


def test_a_distillation_config_says_train_runs_the_teacher_only(tmp_path, monkeypatch, capsys):
  """Table 3's WCE + AT + SKD config through `ctjax.train` trains one model; the command says
  so in one line (ctjax.distill runs the rounds), and plain configs print nothing of it."""
  from ctjax.configs import named
  from ctjax.inference import model_card
  from ctjax.train import loop
  skd = named.get_config("blend_resnet50", "variant=wce_at_skd")
  assert "ctjax.distill" in train_cli.distill_notice(skd)
  assert train_cli.distill_notice(named.get_config("blend_resnet50", "variant=wce_at")) == ""

  def fake_loop(config, workdir, **_):
    pathlib.Path(workdir).mkdir(parents=True)
    (pathlib.Path(workdir) / "final_metrics.json").write_text(json.dumps({"step": 1}))
    return {}
  monkeypatch.setattr(loop, "train_and_evaluate", fake_loop)
  monkeypatch.setattr(model_card, "write_card", lambda workdir: "MODEL_CARD.md")
  blend = str(ROOT / "configs" / "blend_phantom.py")
  assert train_cli.main(["--config", blend, "--workdir", str(tmp_path / "a"),
                         "--config.distill.rounds=1"]) == 0
  err = capsys.readouterr().err
  assert err.count("notice: config.distill.rounds=1") == 1
  assert train_cli.main(["--config", blend, "--workdir", str(tmp_path / "b"),
                         "--config.distill.rounds=0"]) == 0
  assert "notice:" not in capsys.readouterr().err
