"""ctjax.experiments.skd and `python -m ctjax.distill`: the ablation table, its CLI, and (slow) a teacher → student round end to end."""

import json
import os

import numpy as np
import pytest

from configs import blend_phantom, blend_resnet50
from ctjax.configs import blend as blend_config
from ctjax.commands import distill
from ctjax.experiments import skd
from ctjax.errors import ConfigError
from ctjax.train.tasks import blend


def _report(sens_blend):
  per = {c: {"sensitivity": 0.5, "specificity": 0.9, "f1": 0.6, "auc": 0.8}
         for c in blend.BLEND_CLASSES}
  per["blend_sign"]["sensitivity"] = sens_blend
  return {"per_class": per, "detection": {"centre_hit_rate": 0.25, "box_recall": 0.5,
                                          "mean_best_iou": 0.125}}


def test_ablation_table_lists_every_round(tmp_path, capsys):
  for name, rounds in (("wce", [_report(0.25)]), ("wce_at_skd", [_report(0.5), _report(0.75)])):
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "distill.json", "w") as f:
      json.dump({"variant": name, "rounds": rounds, "final": rounds[-1]}, f)
  assert distill.main(["table", str(tmp_path / "wce"),
                       str(tmp_path / "wce_at_skd")]) == 0
  lines = capsys.readouterr().out.splitlines()
  blend_rows = [ln.split() for ln in lines if "blend_sign" in ln]
  assert [(r[0], float(r[2])) for r in blend_rows] == [
      ("wce", 0.25), ("wce_at_skd/r0", 0.5), ("wce_at_skd/r1", 0.75)]
  assert any("centre hit rate 0.250" in ln for ln in lines)


def test_ablation_variants_switch_the_paper_components():
  wce, at, skd = (blend_resnet50.get_config(f"variant={v}") for v in blend_config.VARIANTS)
  assert (wce.loss.det_weight, at.loss.det_weight, skd.loss.det_weight) == (0.0, 10.0, 10.0)
  assert (wce.distill.rounds, at.distill.rounds, skd.distill.rounds) == (0, 0, 1)
  assert tuple(skd.loss.class_weights) == (1.0, 2.0, 20.0)
  assert (skd.train.batch_size, skd.data.image_size, skd.train.num_epochs) == (16, 512, 50)
  small = blend_phantom.get_config("variant=wce_at_skd,rounds=2")
  assert small.distill.rounds == 2 and small.data.synth.layout == "blend"
  with pytest.raises(ValueError, match="variant"):
    blend_resnet50.get_config("variant=skd")


def test_validate_config_rejects_bad_blend_settings():
  c = blend_phantom.get_config()
  blend.TASK.validate_config(c)
  c.loss.class_weights = (1.0, 2.0)
  with pytest.raises(ConfigError, match="class_weights"):
    blend.TASK.validate_config(c)


@pytest.mark.slow
def test_teacher_then_student_end_to_end(tmp_path):
  c = blend_phantom.get_config("variant=wce_at_skd,size=64,num_scans=6,steps=3")
  c.evals.every_steps = 0
  summary = skd.run(c, str(tmp_path))
  assert len(summary["rounds"]) == 2
  soft = np.load(tmp_path / "round_0" / "soft_labels.npz")
  np.testing.assert_allclose(soft["probs"].sum(-1), 1.0, rtol=1e-5)
  assert len(np.unique(soft["example_index"])) == len(soft["example_index"])
  with open(tmp_path / "round_1" / "config.json") as f:
    assert json.load(f)["distill"]["soft_labels_path"].endswith("soft_labels.npz")
  for name in ("roc.png", "confusion.png", "grad_cam.png"):
    assert (tmp_path / "figures" / name).stat().st_size > 1000
