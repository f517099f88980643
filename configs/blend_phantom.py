"""Blend-sign detector on generated `blend` phantoms, small enough for 2 CPU cores (minutes).

  python -m ctjax.train --config configs/blend_phantom.py --workdir runs/blend_phantom
  python -m ctjax.evaluate --workdir runs/blend_phantom --json runs/blend_phantom/eval.json
  # Table 3 ablation (each a few minutes on 2 CPU cores):
  python -m ctjax.distill --config configs/blend_phantom.py:variant=wce --workdir runs/abl_wce
  python -m ctjax.distill --config configs/blend_phantom.py:variant=wce_at --workdir runs/abl_at
  python -m ctjax.distill --config configs/blend_phantom.py:variant=wce_at_skd --workdir runs/abl_skd

The paper's configuration (configs/blend_resnet50.py, `ctjax.configs.blend`) shrunk: ResNet-50 at 1/8 width, 96 px
slices, a few hundred steps; every paper hyper-parameter (class weights, λ's, optimizer,
schedule, augmentation, SKD) is unchanged. Arguments as blend_resnet50.py plus `size`,
`num_scans`, `steps`.
"""

from __future__ import annotations

import ml_collections

from ctjax.configs import blend, common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, variant="wce_at_skd", backbone="resnet50", fold=0, rounds=1,
                       size=96, num_scans=60, steps=300, width=0.125)
  c = blend.blend_config(variant=a.variant, backbone=a.backbone, fold=a.fold, rounds=a.rounds)
  c.train.batch_size = 16
  c.train.num_epochs = 1000           # bounded by max_steps.
  c.train.max_steps = a.steps
  c.train.log_every_steps = 25

  c.data.layout = "phantom"
  c.data.root = ""                    # generated under <workdir>/data (shared across rounds).
  c.data.image_size = a.size
  c.data.synth = ml_collections.ConfigDict()
  c.data.synth.layout = "blend"
  c.data.synth.num_scans = a.num_scans
  c.data.synth.seed = 0
  c.data.synth.size = a.size

  c.model.backbone_width = a.width
  c.model.det_hidden = 32
  c.model.backbone_weights = ""       # no downloads: trained from scratch on phantoms.

  c.evals.every_steps = 100
  c.checkpoint.every_steps = 100
  c.checkpoint.async_save = False
  c.log.progress_bar = False
  return c
