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
  # ctjax/assets); loaded after init when a run starts, never when it resumes. "" (unset) is
  # refused at start-up while the backbone is frozen (V.A: ImageNet weights, frozen): a random
  # frozen VGG16 is no reproduction; RANDOM_BACKBONE ("random") asks for one explicitly.
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
  c.model.gru_kernel = "auto"      # BiGRU recurrence: "auto" one Pallas (Triton) kernel a
                                   # direction on NVIDIA GPUs, XLA elsewhere; "xla" everywhere
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
  # scale per run) is fitted on this split; "" skips it (`python -m ctjax.evaluate --split val
  # --fit_highlight_scale` fits it later).
  c.evals.highlight_scale_split = "val"
  return c


# `model.backbone_weights` value that keeps the initialised (random) backbone on purpose.
RANDOM_BACKBONE = "random"


def check_backbone_weights(config: ml_collections.ConfigDict) -> None:
  """One-line ConfigError when a frozen backbone would stay random without being asked to."""
  mc = config.model
  if mc.get("freeze_backbone", True) and not str(mc.get("backbone_weights", "") or ""):
    raise ConfigError(
        "config.model.backbone_weights is empty and the backbone is frozen (DrCT2 V.A: "
        "ImageNet VGG16, frozen): pass --config.model.backbone_weights=FILE.npz (made once "
        "with python -m ctjax.weights convert …), or "
        f"--config.model.backbone_weights={RANDOM_BACKBONE} to train on a random frozen "
        "backbone on purpose")


def runlocal_overrides(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """big_vision's `runlocal`: the same experiment shrunk to seconds on a CPU (on a random
  backbone, said explicitly: a smoke run checks the machinery, not the numbers)."""
  c.train.batch_size = 4
  c.train.num_epochs = 1
  c.train.max_steps = 4
  c.train.log_every_steps = 1
  c.data.num_slices = 8
  c.data.image_size = 64
  c.model.backbone_width = 0.125
  c.model.backbone_weights = RANDOM_BACKBONE
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


# ------------------------------------------------- the experiments of configs/*.py
# Each configs/<name>.py file is a docstring over one of these (ctjax.configs.named finds them by
# the file's name), so a config runs the same from the file or from the library.

# Shipped with the package (ctjax/assets); configs/pretrain_phantom.py's recipe made it.
PHANTOM_BACKBONE = "asset:vgg16_w0125_phantom.npz"


def phantom(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/drct2_phantom.py: DrCT2 on the built-in phantom set (the README's CPU run)."""
  a = common.parse_arg(arg, runlocal=False, drct1=False, num_scans=1280, epochs=100, fold=0,
                       layout="rsna")
  c = drct_config(dataset="phantom", variant="drct1" if a.drct1 else "drct2")
  c.seed = 0

  c.train.num_epochs = a.epochs
  c.train.batch_size = 32          # VI.A.1 (CQ500's batch; RSNA's 256 > this whole set)
  c.train.log_every_steps = 4

  # Input: phantom scans in the RSNA layout, generated into <workdir>/data on first use.
  c.data.layout = "phantom"
  c.data.root = ""
  c.data.labels = RSNA_LABELS
  c.data.num_slices = 28           # VI.A.1: m = 28 for RSNA
  c.data.image_size = 128          # shrunk from 224 for CPU
  c.data.num_folds = 5             # VI.A.1: 5-fold for RSNA
  c.data.fold = a.fold
  # Test fold k, validation fold k + 1, training the other folds: the protocol of the README's
  # and the tables' `--preset cpu` figures. The paper's: --config.data.fold_protocol=rsna1
  # (RSNA layout) or k_minus_1 (CQ500 layout); ctjax.data.datasets.FOLD_PROTOCOLS.
  c.data.fold_protocol = "val_next_fold"
  c.data.synth = ml_collections.ConfigDict()
  c.data.synth.layout = "rsna"
  c.data.synth.num_scans = a.num_scans
  c.data.synth.seed = 1            # not pretrain_phantom's 7919: the backbone never saw these
  c.data.synth.size = 128

  c.model.backbone_width = 0.125   # = pretrain_phantom's c.model.width
  c.model.backbone_weights = PHANTOM_BACKBONE
  c.model.primary_size = 128       # paper 224
  c.model.aps_size = 192           # paper 512 (×2.3); ×1.5 here, the backbone's zoom size
  c.model.mkey = 16                # VI.A.3
  c.model.gru_hidden = 64
  c.model.seq_dim = 64
  c.model.fc_widths = (64, 32)
  c.model.aps_fc_dim = 64
  # Not in the paper: BatchNorm on the slice vectors (as the APS network's V.B) so that the
  # softmax of eq. (3) sees unit-scale values, and weights × C so uniform attention keeps them.
  c.model.feature_norm = "batchnorm"
  c.model.feature_attention_rescale = True
  # The backbone is frozen: its per-slice outputs (primary, and the APS zoom of each slice) are
  # computed once and the heads train on them exactly (ctjax.train.features; equality with the
  # full model is tested). False: the end-to-end path, same results, slower.
  c.features.enabled = True
  # The last conv block too (4 KB a slice here): evaluation then draws the highlight and
  # reports its pointing game without a second backbone pass.
  c.features.store_maps = True

  # Positive weights ≈ sqrt(negatives / positives) of the generator's label prevalence
  # (35% positive scans; subtype shares iph .26, ivh .17, sdh .30, edh .05, sah .22):
  # order any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural.
  c.loss.pos_weight = (1.4, 5.0, 3.2, 4.0, 3.5, 2.9)

  c.optimizer.schedule = "cosine"  # not in the paper: warm-up + cosine for a short run
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.final_lr_fraction = 0.05
  c.optimizer.lr = 1e-3            # 2 × the paper's 5e-4 (short schedule); APS 0.6 × = 6e-4

  c.evals.val.every_epochs = 4
  # Held-out test fold, once at the end on the final state (never used for any choice).
  c.evals.test = ml_collections.ConfigDict()
  c.evals.test.split = "test"
  c.evals.test.every_steps = 0
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 2

  if a.layout == "cq500":
    c.data.synth.layout = "cq500"
    c.data.labels = CQ500_LABELS
    c.data.num_slices = 32         # VI.A.1: m = 32 for CQ500
    c.data.num_folds = 10          # VI.A.1: 10-fold for CQ500
    c.data.reader_rule = "majority"   # the phantom's three readers, majority vote
    c.data.series.policy = "one_per_study"   # not the paper's: the thinnest series, 1 a study
    c.data.series.min_slices = 32
    # sqrt(negatives / positives) of the generator's CQ500 prevalences (45% positive studies;
    # 20,000 draws of ctjax.data.phantom.sample_case): ich .45, iph .14, ivh .10, sdh .17,
    # edh .03, sah .13, fracture .04, mass effect .12, midline shift .06.
    c.loss.pos_weight = (1.1, 2.4, 3.0, 2.2, 5.7, 2.6, 4.9, 2.8, 3.8)
  elif a.layout != "rsna":
    from ctjax.errors import ConfigError
    raise ConfigError(f"layout={a.layout!r}; expected rsna or cq500")

  if a.runlocal:
    runlocal_overrides(c)
    c.data.synth.num_scans = 12
    c.data.num_slices = 8
    c.data.image_size = 64
    c.model.primary_size = 64
    c.model.aps_size = 96
    c.model.backbone_weights = RANDOM_BACKBONE   # a smoke run: no weights file read
    c.features.enabled = False
    c.evals.val.every_epochs = 0
    c.evals.test.every_steps = -1
  return c


def _paper(dataset: str, arg: str | None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, runlocal=False, fold=0, drct1=False)
  c = drct_config(dataset=dataset, variant="drct1" if a.drct1 else "drct2")
  c.data.fold = a.fold
  if a.runlocal:
    runlocal_overrides(c)
  return c


def rsna(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/drct2_rsna.py: DrCT2 on RSNA ICH (DrCT2 paper, Tables 2-3)."""
  return _paper("rsna", arg)


def cq500(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/drct2_cq500.py: DrCT2 on CQ500 (DrCT2 paper, Tables 2-3)."""
  return _paper("cq500", arg)


def drct1_phantom(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/drct1_phantom.py: DrCT1 on the phantom set (`phantom("drct1")`)."""
  arg = f"{arg},drct1" if arg else "drct1"
  return phantom(arg)


def drct1_rsna(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/drct1_rsna.py: DrCT1 on RSNA ICH (`rsna("drct1")`)."""
  arg = f"{arg},drct1" if arg else "drct1"
  return rsna(arg)


FUSION_BASES = {"cq500": ("cq500", ""), "phantom": ("phantom", "layout=cq500")}


def fusion(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/drct1_fusion.py: DrCT1 model fusion (DrCT2 paper, section VI.A.3, Table 4)."""
  a, rest = common.split_arg(arg, base="cq500", first=16, last=22)
  if a.base not in FUSION_BASES:
    raise ConfigError(f"base={a.base!r}; expected one of {sorted(FUSION_BASES)}")
  name, fixed = FUSION_BASES[a.base]
  if "layout=" in rest:   # an explicit phantom layout wins over the default
    fixed = ""
  c = {"cq500": cq500, "phantom": phantom}[name](",".join(x for x in (fixed, rest, "drct1") if x))
  # VI.A.3: the 16th-22nd of 32 sampled slices at high resolution, on m slices the same share.
  c.model.hires_slices = model_fusion_slices(int(c.data.num_slices), a.first, a.last)
  return c


def hires(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/drct1_hires.py: DrCT1 on high-resolution input (DrCT2 paper, section VI.A.3, Table 4)."""
  for item in (arg or "").split(","):
    if item.partition("=")[0] in ("first", "last"):
      raise ConfigError(f"drct1_hires takes no {item.partition('=')[0]!r} (every slice is "
                        "high-resolution); see configs/drct1_fusion.py")
  arg = ",".join(x for x in (arg, "first=1,last=0") if x)
  return fusion(arg)
