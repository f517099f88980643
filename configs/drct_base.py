"""Shared DrCT1/DrCT2 defaults (DrCT2 paper, sections V and VI.A.1); not an experiment itself.

`configs/drct1_rsna.py`, `drct2_rsna.py`, `drct2_cq500.py`, `drct2_phantom.py` and
`drct1_phantom.py` call `drct_config(...)` and change only what their data set needs.
"""

from __future__ import annotations

import ml_collections

from configs import common


def drct_config(*, dataset: str, variant: str) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "drct"
  c.seed = 0

  # Schedule (VI.A.1): 100 epochs, batch 32 (CQ500) / 256 (RSNA).
  c.train.num_epochs = 100                       # VI.A.1 "We trained for 100 epochs"
  c.train.batch_size = 256 if dataset == "rsna" else 32   # VI.A.1
  c.train.log_every_steps = 20

  # Input.
  c.data.layout = dataset
  c.data.labels = common.RSNA_LABELS if dataset in ("rsna", "phantom") else common.CQ500_LABELS
  c.data.num_slices = 28 if dataset in ("rsna", "phantom") else 32   # VI.A.1 / Table 1: m
  c.data.image_size = 224          # V.A: VGG16 input 224 (the cache resolution)
  c.data.windows = "rsna3"         # brain / subdural / bone windows as RGB
  c.data.num_folds = 5 if dataset in ("rsna", "phantom") else 10     # VI.A.1 k-fold
  c.data.fold = 0
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.resample_slices = True   # VI.A.1: unsampled slices give new CT sets

  # Model (section V).
  c.model.variant = variant        # "drct2" (V.A-C) | "drct1" (V.A only; Table 3 ablation)
  c.model.backbone = "vgg16"       # V.A: VGG16 pre-trained on ImageNet, conv layers frozen
  c.model.backbone_width = 1.0
  c.model.backbone_weights = ""    # .npz from `python -m ctjax.weights convert …`
  c.model.backbone_pretrain_config = ""   # config that writes backbone_weights when absent
  c.model.freeze_backbone = True   # V.A "We froze the convolutional layers"
  c.model.primary_size = 224       # V.B: key images zoomed "from 224 × 224 …"
  c.model.aps_size = 512           # V.B: "… to 512 × 512" (Figure/Table of VI.A.3: 224|512)
  c.model.aps_source = "zoom"      # "zoom": bilinear up-sampling (paper) | "native": cache pixels
  c.model.mkey = 16                # VI.A.3 "we set mkey = 16 as the default setting"
  c.model.selection = "attention"  # VI.A.3 / Figure 6: "attention" | "random"
  c.model.feature_attention_rescale = False   # eq. (3) as written; True: weights × C
  c.model.feature_norm = "none"    # "batchnorm": BN on the slice vectors before eq. (3)
  c.model.gru_hidden = 256         # not given in the paper
  c.model.seq_dim = 256            # width of ŷ (eq. 4); not given in the paper
  c.model.seq_activation = "tanh"  # g of eq. (4); not given in the paper
  c.model.fc_widths = (256, 128)   # hidden widths of the three FC layers; not given
  c.model.aps_fc_dim = 256         # V.B: the FC after BatchNorm; width not given
  c.model.dropout = 0.5            # V.A.3 "the dropout rate is 0.5"
  c.model.feature_cache = False    # True: train the heads on cached frozen-backbone features

  # Losses (V.D, Table 2): MSE primary + MSE APS + BCE fusion; "bce" everywhere for Table 2.
  c.loss = ml_collections.ConfigDict()
  c.loss.primary = "mse"
  c.loss.aps = "mse"
  c.loss.fusion = "bce"
  c.loss.pos_weight = ()           # per-label weight of positive examples; () = unweighted

  # Optimizer (VI.A.1): Adam; APS 3e-4, primary and fusion 5e-4.
  c.optimizer.name = "adam"
  c.optimizer.lr_primary = 5e-4    # VI.A.1
  c.optimizer.lr_aps = 3e-4        # VI.A.1
  c.optimizer.lr_fusion = 5e-4     # VI.A.1
  c.optimizer.lr_backbone = 1e-5   # only used with freeze_backbone=False (not in the paper)
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.schedule = "constant"   # the paper names no schedule
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.final_lr_fraction = 0.0
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 0.0

  # Evaluation (VI.A.1): Macro-F1 is the metric; best checkpoint by validation macro-F1.
  c.evals.threshold = 0.5
  c.evals.val = ml_collections.ConfigDict()
  c.evals.val.split = "val"
  c.evals.val.every_epochs = 1
  c.checkpoint.best_metric = "val/macro_f1"
  return c


def runlocal_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """big_vision's `runlocal`: the same experiment shrunk to seconds on a CPU."""
  c.train.batch_size = 4
  c.train.num_epochs = 1
  c.train.max_steps = 4
  c.train.log_every_steps = 1
  c.data.num_slices = 8
  c.data.image_size = 64
  c.model.backbone_width = 0.125
  c.model.primary_size = 64
  c.model.aps_size = 96
  c.model.mkey = 4
  c.model.gru_hidden = 16
  c.model.seq_dim = 16
  c.model.fc_widths = (16, 16)
  c.model.aps_fc_dim = 16
  c.checkpoint.every_steps = 2
  return c
