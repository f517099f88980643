"""Pretrains a 1/8-width backbone on blend phantom slices: the blend-sign detector's ImageNet.

  python -m ctjax.train --config configs/pretrain_blend_phantom.py --workdir runs/pretrain_blend
  # Table 4's other backbones, shipped as <backbone>_w0125_blend_phantom.npz: the same recipe at
  # half the steps, to fit 2 CPU cores (steps=6000 is the ResNet-50's schedule):
  python -m ctjax.train --config configs/pretrain_blend_phantom.py:backbone=vgg16,steps=3000 \
      --workdir W
  python -m ctjax.train --config \
      configs/pretrain_blend_phantom.py:backbone=inception_v3,steps=3000 --workdir W

writes runs/pretrain_blend/backbone.npz (1.6 MB: params and BatchNorm statistics;
`config.pretrain.export_path`, default `<workdir>/backbone.npz`): the file shipped as
ctjax/assets/resnet50_w0125_blend_phantom.npz, the backbone configs/blend_phantom.py fine-tunes
(`--config.model.backbone_weights=FILE` to use a new one). 1,000 blend-layout scans (41k
slices) at 128 px, 6,000 steps of 32 slices (about 6 epochs of the class-balanced training
slices), the best state by validation macro-AUC exported (step 5,000: slice-level val AUC
non-ICH 0.990 / normal ICH 0.978 / blend sign 0.998, macro-F1 0.943 on 200 held-out scans).
Measured: 1 h 20 min wall on 2 CPU cores at load 5-8 (2,700 user CPU-s). A 600-scan,
3,000-step pilot reached 0.982 / 0.959 / 0.991; fine-tuning from it stayed below 0.95 for
normal ICH on blend_phantom's validation fold, hence the larger set and schedule.
The VGG16 stand-in (vgg16_w0125_blend_phantom.npz, 0.9 MB, BatchNorm folded): the same 1,000
scans, 3,000 steps; best state step 3,000, val AUC 0.991 / 0.979 / 0.999, macro-F1 0.965;
46 min wall on 2 CPU cores shared with other runs. The Inception v3 stand-in
(inception_v3_w0125_blend_phantom.npz, 1.5 MB): the same, best state step 3,000, val AUC
0.983 / 0.967 / 0.997, macro-F1 0.914 (still rising: 0.745 at step 1,000, 0.910 at 2,000);
17 min wall.
Re-export from a finished workdir:
`python -m ctjax.weights export --workdir runs/pretrain_blend --out FILE`.

Why: the blend-sign paper ("Pre-trained networks") fine-tunes an ImageNet-pretrained ResNet-50;
no ImageNet weights can be fetched here, so the small backbone first learns head-CT features
from single slices. Data and labels, as configs/pretrain_phantom.py does for DrCT's VGG16: the
downstream task's own phantom layout and vocabulary ("blend": every slice non-ICH / normal ICH /
blend sign, one-hot, as multi-label BCE), on a separately seeded, larger phantom set (seed
104729, never the blend_phantom evaluation scans of seed 0: a scan is a pure function of (seed,
index)). The RSNA layout was not used: its phantoms carry no blend sign, and its subtype labels
would teach nothing about the hypodense component that separates the two ICH classes.
Arguments: `backbone` (resnet50, the default; vgg16, trained with BatchNorm that the export folds
into a plain VGG16, as configs/pretrain_phantom.py does; inception_v3), `runlocal` (a
seconds-long smoke run), `num_scans`, `size`, `steps`, e.g.
`--config configs/pretrain_blend_phantom.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from ctjax.configs import common
from ctjax.data.labels import BLEND_CLASSES

SEED = 104729      # the 10,000th prime: not the seed of any DrCT or blend phantom set.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, backbone="resnet50", runlocal=False, num_scans=1000, size=128,
                       steps=6000)
  c = common.base_config()
  c.task = "pretrain"
  c.seed = 0

  c.train.batch_size = 32
  c.train.num_epochs = 1000            # bounded by max_steps.
  c.train.max_steps = 4 if a.runlocal else a.steps
  c.train.log_every_steps = 2 if a.runlocal else 50

  # Input: single slices of blend-layout phantoms (record type "pretrain": slice_labels, the
  # one-hot slice class), the blend-sign paper's input windows.
  c.data.layout = "phantom"
  c.data.root = ""                     # generated under <workdir>/data
  c.data.labels = BLEND_CLASSES
  c.data.image_size = a.size
  c.data.num_slices = 1
  c.data.windows = "blend3"            # tissue 40/40, brain 50/100, blood 60/40 (as blend).
  c.data.num_folds = 5
  c.data.fold = 0
  # ICH slices are rare (blend sign ~4 %, normal ICH ~12 % of phantom slices): each class's
  # slices are repeated to ~20 % of an epoch (ctjax.data.cache.CacheSource.balanced).
  c.data.balance_share = 0.2
  c.data.augment = ml_collections.ConfigDict()
  c.data.synth = ml_collections.ConfigDict()
  c.data.synth.layout = "blend"
  c.data.synth.num_scans = 10 if a.runlocal else a.num_scans
  c.data.synth.seed = SEED
  c.data.synth.size = a.size

  c.model.backbone = a.backbone        # ResNet-50: the blend-sign paper's (Table 3).
  # VGG16 has no BatchNorm of its own; trained with it (as DrCT's stand-in), exported folded.
  c.model.batch_norm = a.backbone == "vgg16"
  c.model.backbone_width = 0.125       # 1/8 of ResNet-50's channels: 2048 → 256 features.
  c.model.dropout_rate = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.pos_weight = ()               # classes balanced by sampling (data.balance_share).

  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.schedule = "cosine"      # warm-up + cosine decay to 1 % of the peak
  c.optimizer.warmup_steps = 100
  c.optimizer.final_lr_fraction = 0.01
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip = 1.0

  c.pretrain = ml_collections.ConfigDict()
  # The blend-sign paper's augmentation ("Data pre-processing and augmentation"), as the blend
  # task applies it (ctjax.train.tasks.blend.augment): flip, shifts, rotation ±10°, scaling
  # 0.9-1.1, each with probability 0.5. Without it a 200-scan pilot fitted its training slices
  # (label accuracy 0.996) while validation AUC fell after 1,500 steps.
  c.pretrain.flip = False              # the affine flips already.
  c.pretrain.affine = ml_collections.ConfigDict(
      dict(prob=0.5, max_rotation=10.0, scale=(0.9, 1.1), max_shift=0.1))
  c.pretrain.zoom_sizes = ()           # blend fine-tunes at one size: no scale split.
  c.pretrain.export_path = ""          # "" → <workdir>/backbone.npz

  c.evals.threshold = 0.5
  c.evals.val = ml_collections.ConfigDict()
  c.evals.val.split = "val"
  c.evals.val.every_steps = 2 if a.runlocal else 1000
  c.checkpoint.every_steps = 500
  c.checkpoint.best_metric = "val/macro_auc"
  c.log.progress_bar = True
  if a.runlocal:                       # seconds, not minutes: 32 px (80 for Inception v3, least 75)
    c.data.image_size = c.data.synth.size = 80 if a.backbone == "inception_v3" else 32
  return c
