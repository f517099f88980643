"""Blend-sign detector defaults: the builder of `configs/blend_resnet50.py` and
`configs/blend_phantom.py` (blend-sign paper: ResNet-50 + detection branch + self-knowledge
distillation; "Training details", "Optimization", Table 3).

`config.model`'s keys are `ctjax.models.blendnet.BlendNet`'s field names plus the backbone's
name, width and weights file.
"""

from __future__ import annotations

import ml_collections

from ctjax.configs import common
from ctjax.errors import ConfigError

VARIANTS = ("wce", "wce_at", "wce_at_skd")


def blend_config(*, variant: str = "wce_at_skd", backbone: str = "resnet50", fold: int = 0,
                 rounds: int = 1, data_root: str = "") -> ml_collections.ConfigDict:
  """The paper's configuration.

  variant   Table 3 ablation: "wce" (weighted CE only), "wce_at" (+ auxiliary detection task),
            "wce_at_skd" (+ self-knowledge distillation; run with `python -m ctjax.distill`).
  backbone  resnet50 | vgg16 | inception_v3 (Table 4).
  fold      test fold of the 5-fold cross-validation.
  rounds    SKD rounds (students trained after the teacher) for variant wce_at_skd.
  """
  if variant not in VARIANTS:
    raise ConfigError(f"variant={variant!r}; expected one of {VARIANTS}")
  c = common.base_config()
  c.task = "blend"
  c.seed = 0
  c.variant = variant

  c.train.num_epochs = 50      # paper, "Training details": "the training epoch number is 50".
  c.train.batch_size = 16      # paper, "Training details": "The mini-batch size is 16".
  c.train.log_every_steps = 50

  c.data.layout = "blend"      # DIR/blend_labels.csv + DIR/scans/… (ctjax.data.datasets)
  c.data.root = data_root
  c.data.image_size = 512      # paper: "we reshape all CT slices to size 512×512".
  c.data.windows = "blend3"    # paper: tissue 40/40 (R), brain 50/100 (G), blood 60/40 (B).
  c.data.num_folds = 5         # paper, "Evaluation protocol": 5-fold cross-validation.
  c.data.fold = fold
  # paper, "Evaluation protocol": "train a model on the remaining K-1 partitions" and score the
  # held-out one; it names no other validation set: a tenth of the training partitions'
  # patients validates (data.val_fraction; 0 = select on the held-out partition).
  c.data.fold_protocol = "k_minus_1"
  # Input scaling after the windows: "imagenet" (ctjax: the ImageNet mean/std the pretrained
  # backbone was trained with) | "unit" (paper, "Data pre-processing": pixel values "into the
  # [0, 1] interval", nothing more).
  c.data.input_norm = "imagenet"
  c.data.max_boxes = 8         # boxes per slice kept in the batch (padded with -1).
  # Augmentation on the device inside the step (ctjax.train.tasks.blend.augment); paper, "Data
  # pre-processing and augmentation": each operation randomly chosen per slice.
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.enabled = True
  c.data.augment.on_device = True  # the Grain pipeline leaves blend slices un-augmented.
  c.data.augment.prob = 0.5        # chance of each operation (the paper: "randomly choose").
  c.data.augment.max_rotation = 10.0   # paper: "random rotations (up to 10 degrees)".
  c.data.augment.scale = (0.9, 1.1)    # paper: "random scaling (0.9 to 1.1)".
  c.data.augment.max_shift = 0.1       # paper: left-right / up-down shifting (amount unstated).

  c.model.backbone = backbone      # paper: ResNet-50 (Table 3); VGG16 / Inception v3 (Table 4).
  c.model.backbone_width = 1.0
  # ImageNet weights (.npz from `python -m ctjax.weights convert`, or "asset:<name>"); loaded
  # after init when a run starts, never when it resumes.
  c.model.backbone_weights = ""
  c.model.num_classes = 3          # non-ICH, normal ICH, blend sign.
  c.model.det_hidden = 256         # first of the detection branch's two convs (CenterNet head).

  c.loss = ml_collections.ConfigDict()
  c.loss.class_weights = (1.0, 2.0, 20.0)  # paper, "Classification branch": w = 1, 2, 20.
  c.loss.cls_weight = 1.0                  # paper, "Optimization": λ1 = 1.
  # paper, "Optimization": λ2 = 10; 0 turns the auxiliary task off (Table 3 "WCE").
  c.loss.det_weight = 0.0 if variant == "wce" else 10.0
  # Centre loss: "focal" (ctjax: CenterNet's penalty-reduced focal loss, Duan et al. 2019,
  # exponents below) | "log" (paper, "Detection branch": "L_cls is log loss over two classes
  # (center point vs. not center point)", on the Gaussian-rendered targets).
  c.loss.centre_loss = "focal"
  c.loss.focal_alpha = 2.0
  c.loss.focal_beta = 4.0
  c.loss.min_overlap = 0.7         # CornerNet/CenterNet Gaussian radius rule.
  # The detection loss's N: "pixels" (ctjax: pixels of the detection map, i.e. its cells,
  # stride² input pixels each) | "input_pixels" (paper: "N is the number of pixels in an input
  # image") | "centres" (CenterNet: the number of box centres).
  c.loss.det_normalize = "pixels"

  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.01            # paper, "Training details": base-lr 0.01.
  c.optimizer.schedule = "poly"    # paper: "poly" decay lr · (1 - iter/max_iter)^power …
  c.optimizer.power = 0.9          # … with power 0.9.
  c.optimizer.momentum = 0.9       # paper: SGD with momentum 0.9.
  c.optimizer.weight_decay = 5e-4  # paper: weight decay 0.0005.

  c.distill = ml_collections.ConfigDict()
  # paper, "Self-knowledge distillation": teacher → soft labels → student → next teacher.
  c.distill.rounds = rounds if variant == "wce_at_skd" else 0
  c.distill.alpha = 0.5             # weight of KL(teacher‖student) vs the weighted CE (unstated).
  c.distill.temperature = 1.0       # unstated in the paper; 1 = the teacher's own probabilities.
  c.distill.soft_labels_path = ""   # set per round by ctjax.distill.

  c.evals.split = "val"
  c.evals.every_steps = 500
  c.evals.det_top_k = 10
  c.evals.det_score_threshold = 0.3
  c.checkpoint.best_metric = "val/per_class/blend_sign/f1"
  return c


# ------------------------------------------------- the experiments of configs/*.py
# Each configs/<name>.py file is a docstring over one of these (ctjax.configs.named).

# configs/pretrain_blend_phantom.py's exports (`backbone=…`), shipped in ctjax/assets.
PRETRAINED = {b: f"asset:{b}_w0125_blend_phantom.npz"
              for b in ("resnet50", "vgg16", "inception_v3")}
PRETRAINED_WIDTH = 0.125


def phantom(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/blend_phantom.py: the blend-sign detector on blend-layout phantoms (2 CPU cores)."""
  a = common.parse_arg(arg, variant="wce_at_skd", backbone="resnet50", fold=0, rounds=1,
                       size=128, num_scans=150, steps=1500, width=PRETRAINED_WIDTH)
  c = blend_config(variant=a.variant, backbone=a.backbone, fold=a.fold, rounds=a.rounds)
  c.train.batch_size = 16
  c.train.num_epochs = 1000           # bounded by max_steps.
  c.train.max_steps = a.steps
  c.train.log_every_steps = 50

  c.data.layout = "phantom"
  c.data.root = ""                    # generated under <workdir>/data (shared across rounds).
  c.data.image_size = a.size
  c.data.synth = ml_collections.ConfigDict()
  c.data.synth.layout = "blend"
  c.data.synth.num_scans = a.num_scans
  c.data.synth.seed = 0               # configs/pretrain_blend_phantom.py uses another seed.
  c.data.synth.size = a.size
  # Test fold k, validation fold k + 1, training the other three: the protocol this config's
  # figures (and the blend tables' `--preset cpu`) were measured with. The paper's (training
  # on the four other folds): --config.data.fold_protocol=k_minus_1.
  c.data.fold_protocol = "val_next_fold"

  c.model.backbone_width = a.width
  c.model.det_hidden = 32
  # The stand-in for ImageNet weights (no downloads here): see the module docstring.
  pretrained = a.backbone in PRETRAINED and a.width == PRETRAINED_WIDTH
  c.model.backbone_weights = PRETRAINED[a.backbone] if pretrained else ""

  # Fine-tuning a pretrained backbone: 1/10 of the paper's base-lr 0.01 (SGD, poly decay kept).
  # At 0.01 the shipped backbone's features are lost early: val macro-AUC 0.80-0.83 over steps
  # 250-750 (vs 0.96-0.97 at 1e-3). From scratch (other widths) the paper's 0.01.
  if pretrained:
    c.optimizer.lr = 1e-3

  c.evals.every_steps = 250
  c.checkpoint.every_steps = 250
  c.checkpoint.async_save = False
  c.log.progress_bar = False
  return c


def paper(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/blend_resnet50.py: the blend-sign paper's configuration."""
  a = common.parse_arg(arg, variant="wce_at_skd", backbone="resnet50", fold=0, rounds=1,
                       data_root="")
  return blend_config(variant=a.variant, backbone=a.backbone, fold=a.fold,
                            rounds=a.rounds, data_root=a.data_root)
