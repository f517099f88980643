"""Every place ctjax departs from the two papers or fills a gap they leave: docs/departures.md.

Each `Departure` quotes the paper (section cited), says what ctjax does and why, names the
config fields it concerns and the override that gives the paper's variant where one can exist.
`markdown()` writes the document from these entries and from the configs themselves:
for each data set of `python -m ctjax.tables --preset paper` beside its `--preset cpu`
analogue, every config field whose value differs, with both values and the entry that explains
it. tests/tables/test_departures.py checks that docs/departures.md is this function's output
and that no differing field lacks an entry, so the document cannot drift from the configs:

  python -c "from ctjax.tables import departures; departures.write('configs', 'docs/departures.md')"
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import pathlib
from typing import Any, Iterable, Optional

DRCT2 = "DrCT2 paper"
BLEND = "Blend-sign paper"
BOTH = "Both papers"


@dataclasses.dataclass(frozen=True)
class Departure:
  """One departure or filled gap. `fields`: the config fields it concerns (fnmatch patterns,
  e.g. "data.synth.*"); `switch`: the overrides that give the paper's variant ("" when none
  can exist, `no_switch` says why); `presets`: where ctjax departs ("paper", "cpu" or both)."""
  key: str
  paper: str
  title: str
  quote: str
  ctjax: str
  why: str
  fields: tuple[str, ...]
  switch: str = ""
  no_switch: str = ""
  presets: tuple[str, ...] = ("paper", "cpu")


DEPARTURES: tuple[Departure, ...] = (
    # ---------------------------------------------------------------------------- DrCT2
    Departure(
        "fold_protocol_drct", DRCT2, "Fold protocol",
        "\"We use k-fold cross-validation (k equal to 10 for the CQ500 dataset, and 5 for the "
        "RSNA dataset). We keep the same data distribution as the first place solution in the "
        "RSNA challenge for comparison reasons.\" (VI.A.1); no validation set is named.",
        "`--preset paper`: RSNA folds as the RSNA 2019 first-place code deals them "
        "(`fold_protocol=rsna1`: scikit-learn's shuffled 5-fold KFold with its seed 48, "
        "SeuTao/RSNA2019_Intracranial-Hemorrhage-Detection, SequenceModel/main.py), CQ500 "
        "plain k-fold training on the other k − 1 folds (`k_minus_1`); both carve validation "
        "(the best checkpoint's choice) from the training folds: 1/10 of their patients "
        "(`data.val_fraction`). `--preset cpu`: test fold k, validation fold k + 1, training "
        "the other k − 2 (`val_next_fold`), as the phantom figures were measured.",
        "The first-place split cannot be copied exactly: the code shuffles the unique "
        "StudyInstanceUIDs of a CSV that ships only in an external archive, so their order "
        "(and the folds) is unknown; ctjax shuffles sorted patient ids with the same KFold and "
        "seed, and keeps a patient's scans in one fold (SeuTao groups by study). The cpu "
        "preset keeps its own protocol so that its figures stay reproducible; it trains on "
        "60 % of the data where the paper's protocol trains on 72-80 %.",
        ("data.fold_protocol", "data.val_fraction"),
        "`--config.data.fold_protocol=rsna1` (RSNA) or `k_minus_1` (CQ500); "
        "`--config.data.val_fraction=0` selects the checkpoint on the held-out fold itself, as "
        "the first-place SequenceModel/main.py does"),
    Departure(
        "stratified_folds", DRCT2, "CQ500 folds stratified over the labels",
        "\"k-fold cross-validation\" (VI.A.1); Table 1: EDH has 20 positive scans of 1,181.",
        "CQ500's folds (paper preset) are dealt by patient and stratified over the 9 labels "
        "(iterative stratification, Sechidis et al. 2011); RSNA's are the first-place KFold "
        "(unstratified); the phantoms' are dealt round-robin by patient.",
        "A round-robin deal of 20 EDH scans over 10 folds leaves folds without a positive, so "
        "their per-label F1 is undefined.",
        ("data.stratify",),
        "`--config.data.stratify=False`", presets=("paper",)),
    Departure(
        "feature_attention", DRCT2, "Feature attention: BatchNorm and a ×C rescale",
        "Eq. (3): \"w_i = exp(z_i) / Σ_j exp(z_j)\" over the 512 values of a slice vector, "
        "which \"merge with the assigned weights\" into x_t (V.A.1).",
        "`--preset cpu`: BatchNorm on the slice vectors before eq. (3) "
        "(`model.feature_norm=batchnorm`) and the weights multiplied by C, the vector's width "
        "(`model.feature_attention_rescale=True`). The paper preset follows eq. (3) as written.",
        "Eq. (3)'s weights average 1/C, so x_t is the slice vector shrunk by about C (64 on "
        "the CPU model) before the GRU; × C makes uniform attention the identity. BatchNorm "
        "puts the max-pooled values on one scale before the softmax (as the APS network's "
        "BatchNorm, V.B). Chosen for the small CPU model; the two were not measured apart.",
        ("model.feature_norm", "model.feature_attention_rescale"),
        "`--config.model.feature_norm=none --config.model.feature_attention_rescale=False`",
        presets=("cpu",)),
    Departure(
        "pos_weight", DRCT2, "Positive-class weights",
        "Eqs. (12)-(13): unweighted MSE and BCE (V.D).",
        "`--preset cpu`: each label's positives weighted by about sqrt(negatives / positives) "
        "of the phantom generator's prevalence (`loss.pos_weight`).",
        "The phantom runs are short (100 epochs of 1,280 or 300 scans on CPU); rare labels "
        "(epidural 5 %) otherwise stay at F1 0. Paper preset: unweighted.",
        ("loss.pos_weight",), "`--config.loss.pos_weight='()'`", presets=("cpu",)),
    Departure(
        "schedule_drct", DRCT2, "Learning-rate schedule and rate",
        "\"We trained for 100 epochs and used the Adam optimizer … 0.0003 for APS and 0.0005 "
        "for the primary network and fusion network.\" (VI.A.1); no schedule is named.",
        "`--preset cpu`: peak 1e-3 (APS 6e-4, the paper's 0.6 ratio), 1 epoch of linear "
        "warm-up then cosine decay to 5 % (`optimizer.*`). Paper preset: constant 5e-4 / "
        "3e-4.",
        "A short CPU schedule on a 1/8-width model: twice the rate and a decay reach the "
        "plateau within 100 epochs of a small set.",
        ("optimizer.lr", "optimizer.schedule", "optimizer.warmup_epochs",
         "optimizer.final_lr_fraction"),
        "`--config.optimizer.lr=5e-4 --config.optimizer.schedule=constant "
        "--config.optimizer.warmup_epochs=0 --config.optimizer.final_lr_fraction=0`",
        presets=("cpu",)),
    Departure(
        "batch_rsna", DRCT2, "Batch size of the RSNA runs",
        "\"The batch size is 32 for the CQ500 dataset and 256 for the RSNA dataset.\" "
        "(VI.A.1)",
        "`--preset cpu`, RSNA layout: 32.",
        "The RSNA-layout phantom has 1,280 scans; at 256 a fold's training split is 3 steps "
        "an epoch.",
        ("train.batch_size",), "`--config.train.batch_size=256`", presets=("cpu",)),
    Departure(
        "shrunk_drct", DRCT2, "Model and input sizes on CPU",
        "VGG16 on 224 × 224 slices, 512-d slice vectors (V.A); key slices zoomed \"from "
        "224×224 to 512×512\" (V.B).",
        "`--preset cpu`: a 1/8-width VGG16 (64-d vectors) on 128 px slices, the APS zoom to "
        "192 px, small GRU / FC widths; the paper preset has the paper's sizes.",
        "To train on 2 CPU cores in minutes. 192 px (× 1.5, the paper's × 2.3) is the size the "
        "stand-in backbone was pretrained at besides 128.",
        ("data.image_size", "model.backbone_width", "model.primary_size", "model.aps_size",
         "model.gru_hidden", "model.seq_dim", "model.fc_widths", "model.aps_fc_dim"),
        "the paper preset (configs/drct2_rsna.py, configs/drct2_cq500.py)", presets=("cpu",)),
    Departure(
        "unstated_widths", DRCT2, "Widths the paper does not give",
        "The BGRU, eq. (4)'s output ŷ and its activation g, the three FC layers and the APS "
        "network's FC after BatchNorm are named without sizes (V.A.2, V.A.3, V.B).",
        "Paper preset: GRU hidden 256, ŷ width 256 with tanh, FC widths 256 and 128, APS FC "
        "256 (`model.gru_hidden`, `seq_dim`, `seq_activation`, `fc_widths`, `aps_fc_dim`).",
        "Round sizes of the order of the 512-d input; any choice fills the gap.",
        ("model.gru_hidden", "model.seq_dim", "model.seq_activation", "model.fc_widths",
         "model.aps_fc_dim"),
        no_switch="the paper gives no value", presets=("paper",)),
    Departure(
        "backbone_weights_drct", DRCT2, "Backbone weights",
        "\"We used the VGG16 model pre-trained on ImageNet … We froze the convolutional "
        "layers\" (V.A).",
        "`--preset cpu`: a 1/8-width VGG16 pretrained on separately seeded phantom slices "
        "(configs/pretrain_phantom.py, shipped as `asset:vgg16_w0125_phantom.npz`), frozen. "
        "The paper preset expects converted ImageNet weights.",
        "No ImageNet weights can be fetched by the tests and the CPU job; the stand-in "
        "learned head-CT features from slices that are never evaluation scans.",
        ("model.backbone_weights",),
        "`--config.model.backbone_weights=FILE` (`python -m ctjax.weights convert` of "
        "torchvision's VGG16)", presets=("cpu",)),
    Departure(
        "aps_backbone", DRCT2, "The APS network's VGG16",
        "\"The function P is the VGG16 model pre-trained on ImageNet.\" (V.B, eq. 9); whether "
        "it is the primary network's frozen VGG16 or a second copy is not said.",
        "The APS network uses the primary network's frozen VGG16 (one set of weights); with "
        "frozen ImageNet weights a second frozen copy computes the same features.",
        "One backbone in memory and one feature store for both networks.",
        (), no_switch="a separately trained APS backbone is not implemented (both frozen, "
        "the two are the same function)"),
    Departure(
        "table3_loss", DRCT2, "Table 3 compares two losses as well as two models",
        "\"Loss_primary and Loss_aps is the mean square error (MSE)\"; \"Loss_fusion is the "
        "binary cross entropy error (BCE)\" (V.D). DrCT1 is the primary network alone (V.A), "
        "so its output is MSE-trained; DrCT2's output is the BCE-trained fusion head.",
        "As the paper. `python -m ctjax.tables drct2_table3` adds the row \"DrCT1, BCE head\": "
        "DrCT1 with its output trained by BCE, the loss of DrCT2's output.",
        "Without it, DrCT2 − DrCT1 mixes the APS network's effect with the output loss's.",
        ("loss.primary",),
        "`:drct1 --config.loss.primary=bce` (the tables' `drct1_bce` cell)",
        presets=()),
    Departure(
        "windows_drct", DRCT2, "Input windows",
        "Not stated.",
        "Brain, subdural and bone windows as RGB (`data.windows=rsna3`); for CQ500 (paper "
        "preset) a wider bone window 600/2800 for the calvarial-fracture label "
        "(`drct_cq500`); the CQ500-layout phantom keeps `rsna3`, the windows its stand-in "
        "backbone was pretrained on.",
        "The RSNA challenge's usual windows; the fracture label needs bone detail.",
        ("data.windows",), no_switch="the paper gives no windows"),
    Departure(
        "cq500_series", DRCT2, "Which CQ500 series are scans, and their labels",
        "Table 1: 1,181 scans of 490 patients, \"Number of scans 32-396\" slices; the series "
        "rule and the label rule over CQ500's three readers are not stated.",
        "Paper preset: every soft-tissue axial series with at least 32 slices "
        "(`data.series.policy=soft_tissue_axial`), labels by majority of the three readers "
        "(`data.reader_rule=majority`), fracture = reads.csv's CalvarialFracture. The "
        "CQ500-layout phantom: one series per study (`one_per_study`).",
        "The policy reproduces Table 1's slice range; `python -m ctjax.prepare --qa` prints "
        "what each policy keeps.",
        ("data.series.policy", "data.series.min_slices", "data.reader_rule"),
        no_switch="the paper's rule is unknown; `data.series.policy` and `data.reader_rule` "
        "offer the alternatives"),
    Departure(
        "selection_drct", DRCT2, "Which epoch is scored, at which threshold",
        "\"We trained for 100 epochs\"; \"we used the Macro-F1 score as our evaluation metric\" "
        "(VI.A.1); neither the scored epoch nor a threshold is stated.",
        "The checkpoint with the best validation macro-F1 (`checkpoint.best_metric`), "
        "evaluated every epoch (paper preset) or every 4 epochs (`--preset cpu`, "
        "`evals.val.every_epochs`), thresholded at 0.5 (`evals.threshold`).",
        "Model selection on a held-out validation split, never on the test fold.",
        ("checkpoint.best_metric", "evals.val.every_epochs", "evals.threshold"),
        "`--config.checkpoint.best_metric=` (empty: the last epoch's state)"),
    Departure(
        "feature_store", DRCT2, "Frozen backbone computed once (exact)",
        "The backbone is frozen (V.A).",
        "`--preset cpu`: the frozen backbone's per-slice outputs are computed once into a "
        "feature store and the heads train on them (`features.enabled`, `store_maps`); "
        "equality with the end-to-end model is tested.",
        "Speed only: the figures are those of the end-to-end model.",
        ("features.enabled", "features.store_maps"), "`--config.features.enabled=False`",
        presets=("cpu",)),
    # ------------------------------------------------------------------------ blend sign
    Departure(
        "fold_protocol_blend", BLEND, "Fold protocol",
        "\"For each fold, we choose one partition as the validation set and train a model on "
        "the remaining K-1 partitions. The final score would then be the average of K "
        "validation scores.\" (Evaluation protocol)",
        "`--preset paper`: training on the other four partitions and scoring the held-out "
        "one (`fold_protocol=k_minus_1`); the checkpoint is chosen on 1/10 of the training "
        "partitions' patients (`data.val_fraction`), since the paper names no other "
        "validation set. `--preset cpu`: test fold k, validation fold k + 1, training the "
        "other three (`val_next_fold`).",
        "The cpu preset keeps the protocol its figures were measured with.",
        ("data.fold_protocol", "data.val_fraction"),
        "`--config.data.fold_protocol=k_minus_1`; `--config.data.val_fraction=0` selects on "
        "the scored partition (the paper's \"validation set\")"),
    Departure(
        "input_norm", BLEND, "Input scaling",
        "\"we convert all pixels from CT slices into floating point tensors and rescale the "
        "pixels values (between 0 and 255) into the [0, 1] interval\" (Data pre-processing "
        "and augmentation).",
        "The three windows give [0, 1] values (not quantised to 256 levels), then ImageNet "
        "mean/std normalisation (`data.input_norm=imagenet`).",
        "The pretrained backbones expect ImageNet-normalised input: torchvision's and the "
        "phantom stand-ins, which were pretrained so.",
        ("data.input_norm",), "`--config.data.input_norm=unit`"),
    Departure(
        "centre_loss", BLEND, "Centre loss of the detection branch",
        "\"L_cls is log loss over two classes (center point vs. not center point) … Following "
        "Duan et al. (2019), we perform Gaussian rendering for all ground truth p\" "
        "(Detection branch).",
        "CenterNet's penalty-reduced focal loss on the Gaussian-rendered targets (α = 2, "
        "β = 4; `loss.centre_loss=focal`).",
        "CenterNet (Duan et al. 2019), which the paper follows for the targets, trains its "
        "heatmap with this loss; the plain log loss is dominated by the many near-zero cells.",
        ("loss.centre_loss", "loss.focal_alpha", "loss.focal_beta"),
        "`--config.loss.centre_loss=log` (the log loss against the rendered targets)"),
    Departure(
        "det_normalize", BLEND, "The detection loss's N",
        "\"N is the number of pixels in an input image.\" (Detection branch)",
        "The sum over the detection map divided by its number of cells "
        "(`loss.det_normalize=pixels`: pixels of the map, each stride² input pixels).",
        "The sums run over the detection map, whose cells are what the loss sees; divided by "
        "the input's pixels instead, the detection term (weighted λ2 = 10, Optimization) is "
        "stride² times smaller (1,024 at ResNet-50's stride 32). Which N the paper's code "
        "used cannot be told from the text.",
        ("loss.det_normalize",), "`--config.loss.det_normalize=input_pixels`"),
    Departure(
        "skd_loss", BLEND, "Self-knowledge distillation's student loss",
        "\"we train a student model by minimizing the distance between the predictions from "
        "the teacher and the student\" with the KL divergence (Self-knowledge distillation); "
        "no weight, temperature or number of rounds is given.",
        "(1 − α) · weighted CE + α · KL(teacher ‖ student), α = 0.5, temperature 1, one "
        "round (`distill.alpha`, `distill.temperature`, `distill.rounds`).",
        "Self-knowledge distillation as Zhang et al. 2021 (which the paper cites) mixes the "
        "label loss and the teacher's; one round is the figure's teacher → student.",
        ("distill.alpha", "distill.temperature", "distill.rounds"),
        "`--config.distill.alpha=1.0` (the KL term only)"),
    Departure(
        "augment", BLEND, "Augmentation ranges",
        "\"random rotations (up to 10 degrees), and random scaling (0.9 to 1.1)\" (Data "
        "pre-processing and augmentation) but \"re-scaling (from 2 to 0.5)\" (Training "
        "details); the shift amount is not given.",
        "Scaling 0.9-1.1, shifts up to 10 % of the size, each operation with probability "
        "0.5 (`data.augment.*`).",
        "The first statement is the detailed one (its Figure 3 shows 0.9 and 1.1).",
        ("data.augment.scale", "data.augment.max_shift", "data.augment.prob"),
        "`--config.data.augment.scale='(0.5,2.0)'` for the other reading"),
    Departure(
        "selection_blend", BLEND, "Which state is scored",
        "\"the training epoch number is 50\" (Training details); no model selection is "
        "described.",
        "The checkpoint with the best validation blend-sign F1 (`checkpoint.best_metric`), "
        "evaluated every 500 steps (paper preset) or 250 (`--preset cpu`, "
        "`evals.every_steps`).",
        "Selection on the carved validation split; the test partition is scored once.",
        ("checkpoint.best_metric", "evals.every_steps"),
        "`--config.checkpoint.best_metric=` (the last state)"),
    Departure(
        "lr_blend", BLEND, "Learning rate and length of the CPU run",
        "\"We set the base learning rate (base−lr) as 0.01 … the training epoch number is "
        "50\" (Training details).",
        "`--preset cpu`: 1e-3 (SGD, poly decay and momentum kept) for 1,500 steps of 16 "
        "slices (`optimizer.lr`, `train.max_steps`).",
        "At 0.01 the pretrained stand-in's features are lost in the first few hundred steps "
        "(validation macro-AUC 0.80-0.83 against 0.96-0.97 at 1e-3); 1,500 steps fit 2 CPU "
        "cores.",
        ("optimizer.lr", "train.max_steps", "train.num_epochs"),
        "`--config.optimizer.lr=0.01 --config.train.max_steps=-1 --config.train.num_epochs=50`",
        presets=("cpu",)),
    Departure(
        "shrunk_blend", BLEND, "Model and input sizes on CPU",
        "\"the input size is 512 × 512\" (Training details); ResNet-50 (Pre-trained networks); "
        "\"two convolutional layers for the detection branch\" of unstated width.",
        "`--preset cpu`: a 1/8-width ResNet-50 on 128 px slices, detection convolutions of 32 "
        "channels; the paper preset: 512 px, full width, 256 channels "
        "(`model.det_hidden`, not given in the paper).",
        "To train on 2 CPU cores in minutes.",
        ("data.image_size", "model.backbone_width", "model.det_hidden"),
        "the paper preset (configs/blend_resnet50.py)", presets=("cpu",)),
    Departure(
        "backbone_weights_blend", BLEND, "Backbone weights",
        "\"These architectures are pre-trained on one subset of ImageNet dataset … Then we "
        "fine-tune the pre-trained backbone\" (Pre-trained networks).",
        "`--preset cpu`: each backbone's 1/8-width stand-in pretrained on separately seeded "
        "blend phantoms (configs/pretrain_blend_phantom.py, shipped as "
        "`asset:<backbone>_w0125_blend_phantom.npz`), fine-tuned.",
        "No ImageNet weights can be fetched by the tests and the CPU job.",
        ("model.backbone_weights",),
        "`--config.model.backbone_weights=FILE` (converted ImageNet weights)",
        presets=("cpu",)),
    # ------------------------------------------------------------------ both: the data
    Departure(
        "phantom_data", BOTH, "The data",
        "RSNA, CQ500 (DrCT2, Table 1) and the blend-sign data set (Blend-sign paper, "
        "Table 1).",
        "`--preset cpu`: generated head-CT phantoms with full truth in the RSNA, CQ500 and "
        "blend layouts (`data.layout=phantom`, `data.synth.*`): 1,280, 300 and 150 scans.",
        "The public data sets cannot be downloaded by the tests and the CPU job; the "
        "phantoms exercise every reader, label rule and metric.",
        ("data.layout", "data.root", "data.synth.*"),
        "the paper preset with `--rsna_root`, `--cq500_root`, `--blend_root`",
        presets=("cpu",)),
    Departure(
        "bookkeeping", BOTH, "Run bookkeeping (no effect on the figures)",
        "—",
        "How often checkpoints are written and kept, logging, progress bars, and the "
        "cpu config's own end-of-run test evaluation (the tables evaluate every cell's test "
        "split themselves).",
        "Disk and log volume of short runs.",
        ("checkpoint.every_steps", "checkpoint.keep", "checkpoint.async_save", "log.*",
         "train.log_every_steps", "evals.test.*"),
        no_switch="nothing to switch", presets=("cpu",)),
)


def fields_of(config: Any, prefix: str = "") -> dict[str, Any]:
  """{dotted field: value} of a ConfigDict (or mapping), leaves only."""
  out: dict[str, Any] = {}
  for k, v in config.items():
    if hasattr(v, "items"):
      out.update(fields_of(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def covering(field: str, paper: Optional[str] = None,
             entries: Iterable[Departure] = DEPARTURES) -> list[Departure]:
  """The entries (of `paper` and of both papers, when given) whose `fields` match `field`."""
  return [d for d in entries if (paper is None or d.paper in (paper, BOTH))
          and any(fnmatch.fnmatchcase(field, p) for p in d.fields)]


ABSENT = "(absent)"


def differences(paper: Any, cpu: Any) -> list[tuple[str, Any, Any]]:
  """(field, paper preset value, cpu preset value) of every field that differs."""
  a, b = fields_of(paper), fields_of(cpu)
  return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
          if a.get(k, ABSENT) != b.get(k, ABSENT)]


@dataclasses.dataclass(frozen=True)
class Pair:
  """A data set of `--preset paper` and its `--preset cpu` analogue (config file + argument)."""
  label: str
  source: str                     # DRCT2 or BLEND: whose entries explain its fields
  paper: tuple[str, str]
  cpu: tuple[str, str]


def preset_pairs() -> list[Pair]:
  """The tables' presets side by side: DrCT2 (RSNA, CQ500; DrCT2 and DrCT1) and blend."""
  from ctjax.tables import blend, drct2
  out = []
  for name in ("rsna", "cq500"):
    p, c = drct2.DATASETS["paper"][name], drct2.DATASETS["cpu"][name]
    for variant, arg in (("DrCT2", ""), ("DrCT1", "drct1")):
      join = lambda *xs: ",".join(x for x in xs if x)   # noqa: E731
      out.append(Pair(f"{p.label}, {variant}", DRCT2, (p.config_file, join(p.config_arg, arg)),
                      (c.config_file, join(c.config_arg, arg))))
  p, c = blend.PRESETS["paper"], blend.PRESETS["cpu"]
  out.append(Pair("Blend sign, WCE + AT + SKD", BLEND, (p.config_file, p.config_arg),
                  (c.config_file, c.config_arg)))
  return out


def _load(spec: tuple[str, str]):
  """A preset's config as the library builds it (`ctjax.configs.named`)."""
  from ctjax.configs import named
  return named.get_config(spec[0], spec[1] or None)


def _value(v: Any) -> str:
  if v is ABSENT:
    return "absent"
  text = repr(v) if not isinstance(v, str) else (f"'{v}'" if v else "''")
  return text.replace("|", "\\|")


def uncovered() -> list[tuple[str, str]]:
  """(pair label, field) of every differing field no entry names: must be empty."""
  out = []
  for pair in preset_pairs():
    for field, _, _ in differences(_load(pair.paper), _load(pair.cpu)):
      if not covering(field, pair.source):
        out.append((pair.label, field))
  return out


def markdown() -> str:
  """docs/departures.md from `DEPARTURES` and the configs (as the library builds them)."""
  out = ["# Where ctjax departs from the papers",
         "",
         "Generated by `python -m ctjax.tables departures --docs docs` from the entries of "
         "`ctjax.tables.departures` and the configs (do not edit; "
         "tests/tables/test_departures.py fails when this file and the configs disagree). `--preset paper` is `python -m ctjax.tables … --preset paper`: the "
         "papers' settings on the user's data (configs/drct2_rsna.py, configs/drct2_cq500.py, "
         "configs/blend_resnet50.py); `--preset cpu` its analogue on generated phantoms "
         "(configs/drct2_phantom.py, configs/blend_phantom.py), which every published figure "
         "of ctjax comes from. Each entry: the paper's words, what ctjax does, why, the "
         "config fields, and the overrides (`--config.…` of `python -m ctjax.train`, or "
         "`--override …` of `python -m ctjax.tables`) that give the paper's variant.",
         ""]
  for paper in (DRCT2, BLEND, BOTH):
    out += [f"## {paper}", ""]
    for d in (d for d in DEPARTURES if d.paper == paper):
      where = {(): "neither preset departs (the paper's own design, with ctjax's addition)",
               ("paper",): "the paper preset (a gap the paper leaves)",
               ("cpu",): "the cpu preset", ("paper", "cpu"): "both presets"}[d.presets]
      out += [f"### {d.title}", "",
              f"- **Paper:** {d.quote}",
              f"- **ctjax:** {d.ctjax}",
              f"- **Why:** {d.why}",
              f"- **Where:** {where}."]
      if d.fields:
        out.append("- **Fields:** " + ", ".join(f"`{f}`" for f in d.fields) + ".")
      out.append(f"- **The paper's variant:** {d.switch}." if d.switch else
                 f"- **The paper's variant:** none ({d.no_switch}).")
      out.append("")
  out += ["## Field by field: `--preset paper` beside `--preset cpu`", "",
          "Every config field whose value differs between the two presets' configs, and the "
          "entry above that explains it.", ""]
  for pair in preset_pairs():
    spec = lambda s: f"configs/{s[0]}" + (f":{s[1]}" if s[1] else "")   # noqa: E731
    out += [f"### {pair.label}: `{spec(pair.paper)}` / `{spec(pair.cpu)}`", "",
            "| field | paper preset | cpu preset | entry |", "|---|---|---|---|"]
    for field, a, b in differences(_load(pair.paper), _load(pair.cpu)):
      entries = covering(field, pair.source)
      names = "; ".join(d.title for d in entries) if entries else "**none**"
      out.append(f"| `{field}` | {_value(a)} | {_value(b)} | {names} |")
    out.append("")
  return "\n".join(out).rstrip() + "\n"


def write(docs: str | os.PathLike) -> pathlib.Path:
  """Writes `markdown()` to `<docs>/departures.md`."""
  path = pathlib.Path(docs) / "departures.md"
  path.write_text(markdown())
  return path
