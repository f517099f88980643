"""Blend-sign detector, paper defaults: ResNet-50 + detection branch + self-knowledge distillation.

  python -m ctjax.train --config configs/blend_resnet50.py --workdir runs/blend_r50   # one model
  python -m ctjax.distill --config configs/blend_resnet50.py --workdir runs/blend_r50_skd

Paper ("Blend sign" detector; "Training details"): 50 epochs of batch 16 at 512×512 on one
GTX 1080 Ti; on one modern GPU expect hours per fold per round. Needs ImageNet ResNet-50 weights
converted once with `python -m ctjax.weights convert …` (`--config.model.backbone_weights=FILE`).

Arguments (`--config configs/blend_resnet50.py:variant=wce_at,fold=2`):
  variant   Table 3 ablation: "wce" (weighted CE only), "wce_at" (+ auxiliary detection task),
            "wce_at_skd" (+ self-knowledge distillation; run with `python -m ctjax.distill`).
  backbone  resnet50 | vgg16 | inception_v3 (Table 4).
  fold      test fold of the 5-fold cross-validation.
  rounds    SKD rounds (students trained after the teacher) for variant wce_at_skd.
  data_root the data set (blend layout: blend_labels.csv + scans/).
"""

from ctjax.configs import blend


def get_config(arg=None):
  return blend.paper(arg)
