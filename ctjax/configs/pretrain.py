"""Slice-level pretraining of the stand-in backbones (ctjax's ImageNet): the experiments of
configs/pretrain_phantom.py (VGG16 for DrCT) and configs/pretrain_blend_phantom.py (ResNet-50,
VGG16 or Inception v3 for the blend-sign detector), whose docstrings say why and how long."""

from __future__ import annotations

import ml_collections

from ctjax.configs import common
from ctjax.data.labels import BLEND_CLASSES, RSNA_LABELS


def _slice_pretraining(a, *, max_steps: int, log_every: int, labels, windows: str,
                       balance_share: float, synth_layout: str, synth_scans: int,
                       synth_seed: int) -> ml_collections.ConfigDict:
  """What both stand-in pretrainings share: single generated phantom slices (record type
  "pretrain"), classes balanced by sampling (ctjax.data.cache.CacheSource.balanced)."""
  c = common.base_config()
  c.task = "pretrain"
  c.seed = 0
  c.train.batch_size = 32
  c.train.num_epochs = 1000            # bounded by max_steps.
  c.train.max_steps = max_steps
  c.train.log_every_steps = log_every
  c.data.layout = "phantom"
  c.data.root = ""                     # generated under <workdir>/data
  c.data.labels = labels
  c.data.image_size = a.size
  c.data.num_slices = 1
  c.data.windows = windows
  c.data.num_folds = 5
  c.data.fold = 0
  c.data.balance_share = balance_share
  c.data.augment = ml_collections.ConfigDict()
  c.data.synth = ml_collections.ConfigDict()
  c.data.synth.layout = synth_layout
  c.data.synth.num_scans = synth_scans
  c.data.synth.seed = synth_seed
  c.data.synth.size = a.size
  return c


def phantom(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/pretrain_phantom.py: the 1/8-width VGG16 on phantom slices."""
  a = common.parse_arg(arg, runlocal=False, num_scans=800, size=128, steps=4000)
  # Input: single phantom slices in the RSNA layout, slice-level labels (record type
  # "pretrain"), the DrCT input windows (brain / subdural / bone). Positive slices are rare
  # (epidural: ~0.3 % of slices): each label's positives are repeated to ~8 % of an epoch.
  c = _slice_pretraining(a, max_steps=20 if a.runlocal else a.steps,
                         log_every=5 if a.runlocal else 25, labels=RSNA_LABELS,
                         windows="rsna3", balance_share=0.08, synth_layout="rsna",
                         synth_scans=8 if a.runlocal else a.num_scans,
                         synth_seed=7919)      # not the seed of any DrCT/blend phantom set.

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


BLEND_SEED = 104729      # the 10,000th prime: not the seed of any DrCT or blend phantom set.


def blend_phantom(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/pretrain_blend_phantom.py: a 1/8-width backbone on blend phantom slices."""
  a = common.parse_arg(arg, backbone="resnet50", runlocal=False, num_scans=1000, size=128,
                       steps=6000)
  # Input: single slices of blend-layout phantoms (record type "pretrain": slice_labels, the
  # one-hot slice class), the blend-sign paper's windows (tissue 40/40, brain 50/100, blood
  # 60/40). ICH slices are rare (blend sign ~4 %, normal ICH ~12 % of phantom slices): each
  # class's slices are repeated to ~20 % of an epoch.
  c = _slice_pretraining(a, max_steps=4 if a.runlocal else a.steps,
                         log_every=2 if a.runlocal else 50, labels=BLEND_CLASSES,
                         windows="blend3", balance_share=0.2, synth_layout="blend",
                         synth_scans=10 if a.runlocal else a.num_scans, synth_seed=BLEND_SEED)

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
