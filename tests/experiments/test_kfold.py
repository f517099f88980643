"""ctjax.experiments.kfold: every fold trained and scored, summary = mean/std over folds."""

import json

import numpy as np

from tests.support import stand_ins
from ctjax.experiments import kfold


def test_crossval_two_folds(tmp_path):
  config = stand_ins.tiny_config(**{"data.num_folds": 2, "train.num_epochs": 1,
                                    "train.max_steps": 2, "evals.val.every_steps": 0})
  result = kfold.run_crossval(config, tmp_path, task=stand_ins.TinyTask(),
                                 data=stand_ins.MemoryData())
  assert sorted(result["folds"]) == ["0", "1"]
  for f in ("0", "1"):
    saved = json.loads((tmp_path / f"fold_{f}" / "config.json").read_text())
    assert saved["data"]["fold"] == int(f)
  f1 = [result["folds"][f]["macro_f1"] for f in ("0", "1")]
  summary = result["summary"]["macro_f1"]
  assert summary["n"] == 2
  np.testing.assert_allclose(summary["mean"], np.mean(f1))
  np.testing.assert_allclose(summary["std"], np.std(f1, ddof=1))
  on_disk = json.loads((tmp_path / "crossval.json").read_text())
  np.testing.assert_allclose(on_disk["summary"]["macro_f1"]["mean"], np.mean(f1))
  table = kfold.format_summary(result)
  assert table.splitlines()[-1].startswith("mean±std") and "macro_f1" in table


def test_summarize_folds_skips_nan():
  s = kfold.summarize_folds({0: {"auc": 0.5, "f1": 1.0}, 1: {"auc": float("nan"), "f1": 0.0}})
  assert s["auc"] == {"mean": 0.5, "std": 0.0, "n": 1}
  np.testing.assert_allclose(s["f1"]["std"], np.std([1.0, 0.0], ddof=1))
