"""DrCT1/DrCT2 defaults (DrCT2 paper, sections V and VI.A.1): the builder every DrCT config uses.

`configs/drct2_rsna.py`, `drct1_rsna.py`, `drct2_cq500.py`, `drct2_phantom.py` and
`drct1_phantom.py` call `drct_config(...)` and change only what their data set needs.
`config.model`'s keys are `ctjax.models.drct.DrCT`'s field names (plus the backbone's name,
width and weights file, and the primary input size), so the model is built from it directly.
"""

from __future__ import annotations

import ml_collections

from ctjax.configs import common
from ctjax.data.labels import CQ500_LABELS, RSNA_LABELS
from ctjax.errors import ConfigError


def drct_config(*, dataset: str, variant: str) -> ml_collections.ConfigDict:
  """`dataset` rsna | cq500 | phantom; `variant` drct2 (with the APS network) | drct1."""
  if variant not in ("drct1", "drct2"):
    raise ConfigError(f"variant={variant!r}; expected 'drct1' or 'drct2'")
  c = common.base_config()
  c.task = "drct"
  c.seed = 0

  # Schedule (VI.A.1): 100 epochs, batch 32 (CQ500) / 256 (RSNA).
  c.train.num_epochs = 100                       # VI.A.1 "We trained for 100 epochs"
  c.train.batch_size = 256 if dataset == "rsna" else 32   # VI.A.1
  c.train.log_every_steps = 20

  # Input.
  c.data.layout = dataset
  c.data.labels = RSNA_LABELS if dataset in ("rsna", "phantom") else CQ500_LABELS
  c.data.num_slices = 28 if dataset in ("rsna", "phantom") else 32   # VI.A.1 / Table 1: m
  c.data.image_size = 224          # V.A: VGG16 input 224 (the cache resolution)
  c.data.windows = "rsna3"         # brain / subdural / bone windows as RGB
  c.data.num_folds = 5 if dataset in ("rsna", "phantom") else 10     # VI.A.1 k-fold
  c.data.fold = 0
  # VI.A.1: "k-fold cross-validation … We keep the same data distribution as the first place
  # solution in the RSNA challenge": RSNA's folds are that code's (ctjax.data.datasets.
  # rsna1_folds); CQ500's plain k-fold, training on the other K − 1 folds. The paper names no
  # validation set: a tenth of the training folds' patients (data.val_fraction). The phantom
  # configs keep "val_next_fold", the protocol their published figures were measured with.
  c.data.fold_protocol = {"rsna": "rsna1", "cq500": "k_minus_1"}.get(dataset, "val_next_fold")
  # Not in the paper: CQ500's folds stratified over the labels (its EDH has 20 positives of
  # 1,181 scans, Table 1: a round-robin deal leaves folds without any). RSNA's first-place
  # KFold is unstratified; off for the phantom, whose figures were measured on round-robin folds.
  c.data.stratify = dataset == "cq500"
  if dataset == "cq500":
    c.data.windows = "drct_cq500"   # bone 600/2800 for the calvarial-fracture label
    # Table 1: CQ500 scans have 32–396 slices; every soft-tissue axial series with as many
    # (the paper does not state its series rule: ctjax.data.series_policy).
    c.data.series.min_slices = 32
    c.data.reader_rule = "majority"   # three readers, majority vote
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.resample_slices = True   # VI.A.1: unsampled slices give new CT sets

  # Model (section V).
  c.model.aps = variant == "drct2"   # True: DrCT2 (V.A-C); False: DrCT1 (V.A only; Table 3)
  c.model.backbone = "vgg16"       # V.A: VGG16 pre-trained on ImageNet, conv layers frozen
  c.model.backbone_width = 1.0
  # .npz from `python -m ctjax.weights convert …` (or "asset:<name>" for a file shipped in
  # ctjax/assets); loaded after init when a run starts, never when it resumes.
  c.model.backbone_weights = ""
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
  c.model.dropout_rate = 0.5       # V.A.3 "the dropout rate is 0.5"

  c.model.backbone_chunk = 64      # slices per backbone pass inside the step (memory ∝ chunk)
  # Compute dtype: bfloat16 on GPU/TPU, float32 on CPU (params, softmax, BN statistics and
  # losses stay float32 either way).
  c.model.dtype = "auto"

  # True: train the heads on the frozen backbone's per-slice outputs, computed once into a
  # sharded store beside the HU cache (ctjax.train.features; exact: equality with the
  # end-to-end model is tested).
  c.features = ml_collections.ConfigDict()
  c.features.enabled = False
  c.features.chunk = 128           # slices per device per call while building the store
  c.features.dtype = "auto"        # stored rows: bfloat16 on GPU/TPU, float32 on CPU
  c.features.store_maps = False    # also store the last conv block (only the report needs it)

  # Losses (V.D, Table 2): MSE primary + MSE APS + BCE fusion; "bce" everywhere for Table 2.
  c.loss = ml_collections.ConfigDict()
  c.loss.primary = "mse"
  c.loss.aps = "mse"
  c.loss.fusion = "bce"
  c.loss.pos_weight = ()           # per-label weight of positive examples; () = unweighted

  # Optimizer (VI.A.1): Adam; APS 3e-4, primary and fusion 5e-4, as multipliers of `lr` over
  # the model's parameter groups (backbone, primary, aps, fusion).
  c.optimizer.name = "adam"
  c.optimizer.lr = 5e-4            # VI.A.1: primary and fusion networks
  c.optimizer.lr_mults = ml_collections.ConfigDict(dict(
      primary=1.0, fusion=1.0,     # VI.A.1: 5e-4
      aps=0.6,                     # VI.A.1: 3e-4 = 0.6 × 5e-4
      backbone=0.02))              # 1e-5, only with freeze_backbone=False (not in the paper)
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.schedule = "constant"   # the paper names no schedule

  # Evaluation (VI.A.1): Macro-F1 is the metric; best checkpoint by validation macro-F1.
  c.evals.threshold = 0.5
  c.evals.val = ml_collections.ConfigDict()
  c.evals.val.split = "val"
  c.evals.val.every_epochs = 1
  c.checkpoint.best_metric = "val/macro_f1"
  # When training ends, the report's highlight scale (DrCT2 Figure 2's highlighted area on one
  # scale per run) is fitted on this split; "" skips it (ctjax.reporting.fit_highlight_scale
  # can run later).
  c.evals.highlight_scale_split = "val"
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
  c.features.chunk = 16
  c.checkpoint.every_steps = 2
  return c


# DrCT2 paper, section VI.A.1: CQ500 scans are sampled to m = 32 slices; Table 4's model fusion
# names its high-resolution slices on that stack (the 16th to the 22nd).
FUSION_PAPER_SLICES = 32


def model_fusion_slices(num_slices: int, first: int, last: int) -> tuple[int, int]:
  """`model.hires_slices` (0-based [start, stop)) of the 1-based inclusive `first`..`last` of
  32 sampled slices (`last` 0: through the last), scaled to a stack of `num_slices` (RSNA's 28,
  runlocal's 8) so that the same share of the scan is at high resolution."""
  lo, hi = first - 1, last or FUSION_PAPER_SLICES
  if num_slices != FUSION_PAPER_SLICES:
    lo = int(round(lo * num_slices / FUSION_PAPER_SLICES))
    hi = max(int(round(hi * num_slices / FUSION_PAPER_SLICES)), 1)
  return min(lo, hi - 1), hi

