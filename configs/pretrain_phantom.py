"""Pretrains the 1/8-width VGG16 on phantom slices: ctjax's stand-in for ImageNet weights.

  python -m ctjax.train --config configs/pretrain_phantom.py --workdir runs/pretrain_phantom

writes runs/pretrain_phantom/backbone.npz (about 1 MB; `config.pretrain.export_path`, default
`<workdir>/backbone.npz`): the file shipped as ctjax/assets/vgg16_w0125_phantom.npz, the frozen
backbone of configs/drct2_phantom.py (`--config.model.backbone_weights=FILE` to use a new one): 800 scans at 128 px, 4000 steps of 32 slices (half of each batch
zoomed to 192 px), the best state by validation macro-AUC exported (step 2000: slice-level val
macro-F1 0.791, macro-AUC 0.973). About 45 min on 2 idle CPU cores. With it, drct2_phantom's
test macro-F1 is 0.885; with the previous file (a 2000-step run, val 0.766 / 0.973) 0.838.
See docs/HISTORY.md.
The network trains with BatchNorm; the file holds plain VGG16 convolutions with BN folded in.
Re-export from a finished workdir:
`python -m ctjax.weights export --workdir runs/pretrain_phantom --out FILE`.

Why: DrCT2 (section V.A) freezes an ImageNet-pretrained VGG16; no ImageNet weights can be
fetched here, so the small backbone first learns generic head-CT features from single slices
with their slice-level truth, on a phantom set with its own seed (never DrCT2's evaluation
scans). Argument: `runlocal` (a seconds-long smoke run), e.g.
`--config configs/pretrain_phantom.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from ctjax.configs import common
from ctjax.data.labels import RSNA_LABELS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, runlocal=False, num_scans=800, size=128, steps=4000)
  c = common.base_config()
  c.task = "pretrain"
  c.seed = 0

  c.train.batch_size = 32
  c.train.num_epochs = 1000            # bounded by max_steps.
  c.train.max_steps = 20 if a.runlocal else a.steps
  c.train.log_every_steps = 5 if a.runlocal else 25

  # Input: single phantom slices in the RSNA layout, slice-level labels (record type
  # "pretrain"), the DrCT input windows.
  c.data.layout = "phantom"
  c.data.root = ""                     # generated under <workdir>/data
  c.data.labels = RSNA_LABELS
  c.data.image_size = a.size
  c.data.num_slices = 1
  c.data.windows = "rsna3"             # as DrCT's input (brain / subdural / bone)
  c.data.num_folds = 5
  c.data.fold = 0
  # Positive slices are rare (epidural: ~0.3 % of slices): each label's positives are repeated
  # to ~8 % of an epoch (ctjax.data.cache.CacheSource.balanced).
  c.data.balance_share = 0.08
  c.data.augment = ml_collections.ConfigDict()
  c.data.synth = ml_collections.ConfigDict()
  c.data.synth.layout = "rsna"
  c.data.synth.num_scans = 8 if a.runlocal else a.num_scans
  c.data.synth.seed = 7919             # not the seed of any DrCT/blend phantom set.
  c.data.synth.size = a.size

  c.model.backbone = "vgg16"
  c.model.backbone_width = 0.125       # 1/8 of VGG16's channels: 64→8 … 512→64 features.
  # Trained with BatchNorm (VGG16 from scratch trains far better so), written with BN folded
  # into the convolutions: the exported file is a plain VGG16 (ctjax.models.vgg.fold_batch_norm).
  c.model.batch_norm = True
  c.model.dropout_rate = 0.0

  c.loss = ml_collections.ConfigDict()
  # Positive slices are rare (a few % of phantom slices): weight them up.
  c.loss.pos_weight = (8.0,) * len(RSNA_LABELS)

  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.schedule = "cosine"      # warm-up + cosine decay to 1 % of the peak
  c.optimizer.warmup_steps = 50
  c.optimizer.final_lr_fraction = 0.01
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip = 1.0

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.flip = True               # random left-right flips (heads are near-symmetric).
  # Half of each batch zoomed ×1.5 (scale augmentation, as ImageNet training's): DrCT2 feeds
  # the frozen backbone both the 128 px slices and their APS zoom to 192 px.
  c.pretrain.zoom_sizes = (int(round(a.size * 1.5)),)
  c.pretrain.export_path = ""          # "" → <workdir>/backbone.npz

  c.evals.threshold = 0.5
  c.evals.val = ml_collections.ConfigDict()
  c.evals.val.split = "val"
  c.evals.val.every_steps = 10 if a.runlocal else 1000
  c.checkpoint.every_steps = 250
  c.checkpoint.best_metric = "val/macro_auc"
  c.log.progress_bar = True
  if a.runlocal:                       # seconds, not minutes: 64 px slices, zoom to 96
    c.data.image_size = c.data.synth.size = 64
    c.pretrain.zoom_sizes = (96,)
  return c
