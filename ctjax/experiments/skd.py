"""Self-knowledge distillation for the blend-sign detector, and its evaluation figures.

  summary = run(config, "runs/skd")   # python -m ctjax.distill --config C --workdir runs/skd

Blend-sign paper ("Self-knowledge distillation", Figure 5): train a teacher
on the labels; predict soft labels (class probabilities, no augmentation) for every training
slice; train a student on KL(teacher ‖ student) together with the labels; the student is the
next round's teacher. `config.distill.rounds` students follow the teacher (0 = plain training,
which is how the "WCE" and "WCE+AT" rows of Table 3 run through the same command).

Layout: DIR/round_0 (teacher), DIR/round_1, … each a `python -m ctjax.train` workdir; soft labels
in DIR/round_<r>/soft_labels.npz (example_index, probs) are read by the task through
`config.distill.soft_labels_path`. DIR/distill.json holds each round's test report; the final
round's ROC / confusion-matrix PNGs and Grad-CAM panels go to DIR/figures/.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from ctjax.inference import runs


def predict_splits(workdir: str, split_names, config: ml_collections.ConfigDict | None = None
                   ) -> tuple[dict[str, dict[str, np.ndarray]], Any]:
  """{split: `Task.predict` outputs + batch fields} of a trained round (`ctjax.inference.runs`),
  padding rows dropped; also returns the restored run. `config` replaces the saved config's
  data location (the rounds' shared data set)."""
  overrides = None if config is None else {"data.root": config.data.root}
  run = runs.load_run(workdir, config_overrides=overrides)
  data, splits = runs.split_data(run, prepare=True)   # the rounds train: they prepare
  return ({name: runs.predict_split(run, name, data=data, splits=splits)
           for name in split_names}, run)


def _data_workdir(round_dir: str) -> str:
  """Rounds share the parent's generated phantom data (root "" → <parent>/data)."""
  return os.path.dirname(os.path.abspath(round_dir))


def run(config: ml_collections.ConfigDict, workdir: str, *, figures: bool = True
        ) -> dict[str, Any]:
  """Teacher + `config.distill.rounds` students; returns {"rounds": [test reports], "final"}."""
  from ctjax.train import loop
  from ctjax.train.tasks import blend

  os.makedirs(workdir, exist_ok=True)
  base = copy.deepcopy(config)
  if not base.data.root and base.data.layout == "phantom":
    base.data.root = os.path.join(os.path.abspath(workdir), "data")   # one data set, all rounds
  rounds = int(base.get("distill", {}).get("rounds", 0))
  soft_path = ""
  results = []
  for r in range(rounds + 1):
    cfg = copy.deepcopy(base)
    with cfg.unlocked():
      cfg.distill.soft_labels_path = soft_path
      cfg.seed = base.seed + r
    round_dir = os.path.join(workdir, f"round_{r}")
    logging.info("SKD round %d/%d (%s) in %s", r, rounds, "teacher" if r == 0 else "student",
                 round_dir)
    loop.train_and_evaluate(cfg, round_dir)
    need = ["test"] + (["train"] if r < rounds else [])
    outs, run = predict_splits(round_dir, need, cfg)
    cfg_r, task, model, variables = run.config, run.task, run.model, run.host_variables()
    report = task.summarize(outs["test"], cfg_r)
    report["round"] = r
    results.append(report)
    logging.info("round %d test: blend-sign sensitivity %.3f, macro F1 %.3f", r,
                 report["per_class"]["blend_sign"]["sensitivity"], report["macro_f1"])
    if figures and r == rounds:
      fig_dir = os.path.join(workdir, "figures")
      blend.write_figures(outs["test"], report, fig_dir, title=cfg.get("variant", ""))
      _grad_cam_examples(cfg_r, model, variables, round_dir, fig_dir)
    if r < rounds:
      soft_path = os.path.join(round_dir, "soft_labels.npz")
      blend.save_soft_labels(soft_path, outs["train"]["example_index"], outs["train"]["probs"])
      logging.info("wrote %d soft labels to %s", len(outs["train"]["probs"]), soft_path)
  summary = {"variant": config.get("variant", ""), "rounds": results, "final": results[-1]}
  with open(os.path.join(workdir, "distill.json"), "w") as f:
    json.dump(summary, f, indent=1, default=float)
  return summary


def _grad_cam_examples(config, model, variables, round_dir, fig_dir, per_class=2):
  """Grad-CAM panels for the first `per_class` test slices of each class."""
  from ctjax.data import pipeline
  from ctjax.train.tasks import blend

  want = {c: per_class for c in range(3)}
  hu, labels, boxes = [], [], []
  splits = pipeline.build_splits(config, _data_workdir(round_dir))
  for batch in pipeline.eval_batches(config, splits, "test"):
    for i in range(len(batch["label"])):
      c = int(batch["label"][i])
      if batch["valid"][i] and want.get(c, 0) > 0:
        want[c] -= 1
        hu.append(batch["hu"][i])
        labels.append(c)
        boxes.append(batch["boxes"][i])
    if not any(want.values()):
      break
  if hu:
    blend.write_grad_cam(model, variables, np.stack(hu), config,
                         os.path.join(fig_dir, "grad_cam.png"), labels, np.stack(boxes))


def format_ablation(summaries: dict[str, dict]) -> str:
  """Table 3 style: per class sensitivity / specificity / F1 / AUC for each variant."""
  from ctjax.data.labels import BLEND_CLASSES
  lines = [f"{'variant':<16}{'class':<12}{'sens':>8}{'spec':>8}{'F1':>8}{'AUC':>8}"]
  rows = []
  for name, summary in summaries.items():
    rounds = summary.get("rounds") or [summary.get("final", summary)]
    for r, report in enumerate(rounds):
      rows.append((name if len(rounds) == 1 else f"{name}/r{r}", report))
  for name, report in rows:
    for c in BLEND_CLASSES:
      row = report["per_class"][c]
      lines.append(f"{name:<16}{c:<12}" + "".join(
          f"{row[k]:>8.3f}" for k in ("sensitivity", "specificity", "f1", "auc")))
    det = report.get("detection")
    if det:
      lines.append(f"{name:<16}{'detection':<12}centre hit rate {det['centre_hit_rate']:.3f}, "
                   f"box recall {det['box_recall']:.3f}, mean best IoU {det['mean_best_iou']:.3f}")
  return "\n".join(lines)
