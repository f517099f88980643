"""Task "blend": the blend-sign detector (classification + centre-heatmap detection + SKD).

Blend-sign paper ("Methods", "Training details"). Per step, on device: int16 HU → random affine
augmentation (left-right flip, shifts, rotation ±10°, scaling 0.9–1.1; image AND boxes, pure in
(batch, rng)) → `blend3` windows (tissue 40/40, brain 50/100, blood 60/40) → ImageNet
normalisation (or none: `config.data.input_norm`) → BlendNet → weighted CE (weights 1, 2,
20) [+ KL to the teacher's soft labels under self-knowledge distillation] + λ2 · detection loss
(centre focal or log loss on Gaussian targets, `config.loss.centre_loss`, + smooth-L1 on the
box distances at centres).

Batch (ARCHITECTURE.md): hu int16 [B, H, W], label int32 [B], boxes float32 [B, K, 4] (padded
with -1), num_boxes int32 [B], valid bool [B], example_index int32 [B]; optional soft_labels
float32 [B, 3] under self-knowledge distillation (added on the host by `wrap_data` from
`config.distill.soft_labels_path`).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctjax.data import windows as windows_lib
from ctjax.data.labels import BLEND_CLASSES
from ctjax.errors import ConfigError
from ctjax.eval import detection
from ctjax.models import blendnet, compute_dtype
from ctjax.models.backbones import FEATURE_BACKBONES
from ctjax.train.tasks import Task
from ctjax.train.tasks.blend_losses import (CENTRE_LOSSES, DET_NORMALIZE, detection_loss,
                                            distillation_kl, weighted_cross_entropy)

log = logging.getLogger(__name__)

AIR_HU = -1024.0   # fill value of pixels that augmentation brings in from outside the image.


# ----------------------------------------------------------------------------- augmentation


def augment(hu: jax.Array, boxes: jax.Array, rng: jax.Array,
            aug: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  """Random affine per example, applied to the image [B, H, W] and its boxes [B, K, 4].

  Each operation is drawn independently with probability aug["prob"] (paper, "Data
  pre-processing and augmentation": "randomly choose the above augmentation operations for each
  slice"): left-right flip, shift (up to aug["max_shift"] of the size per axis), rotation
  (±aug["max_rotation"] degrees), scaling (aug["scale"] range). Boxes become the axis-aligned
  hull of their transformed corners, clipped to the image (a box pushed out becomes empty).
  Pure in (inputs, rng): same rng, same output.
  """
  b, h, w = hu.shape
  keys = jax.random.split(rng, 8)
  p = aug["prob"]
  use = lambda k: jax.random.bernoulli(k, p, (b,))  # noqa: E731
  flip = jnp.where(use(keys[0]), -1.0, 1.0)
  max_rot = math.radians(aug["max_rotation"])
  theta = jnp.where(use(keys[1]), jax.random.uniform(keys[2], (b,), minval=-max_rot,
                                                     maxval=max_rot), 0.0)
  lo, hi = aug["scale"]
  scale = jnp.where(use(keys[3]), jax.random.uniform(keys[4], (b,), minval=lo, maxval=hi), 1.0)
  shift = jax.random.uniform(keys[6], (b, 2), minval=-1.0, maxval=1.0) * aug["max_shift"]
  shift = jnp.where(use(keys[5])[:, None], shift * jnp.array([w, h], jnp.float32), 0.0)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # Forward map on continuous (x, y) (pixel i spans [i, i+1)): out = A (in - c) + c + t.
  a = jnp.stack([jnp.stack([scale * cos * flip, -scale * sin], -1),
                 jnp.stack([scale * sin * flip, scale * cos], -1)], -2)       # [B, 2, 2]
  centre = jnp.array([w / 2.0, h / 2.0], jnp.float32)
  a_inv = jnp.linalg.inv(a)

  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                        jnp.arange(w, dtype=jnp.float32) + 0.5, indexing="ij")
  out_xy = jnp.stack([xs, ys], -1)                                           # [H, W, 2]

  def warp(img, a_inv_i, t_i):
    src = jnp.einsum("ij,hwj->hwi", a_inv_i, out_xy - centre - t_i) + centre - 0.5
    return jax.scipy.ndimage.map_coordinates(img, [src[..., 1], src[..., 0]], order=1,
                                             mode="constant", cval=AIR_HU)

  hu_out = jax.vmap(warp)(hu.astype(jnp.float32), a_inv, shift)

  x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
  corners = jnp.stack([jnp.stack([x0, y0], -1), jnp.stack([x1, y0], -1),
                       jnp.stack([x0, y1], -1), jnp.stack([x1, y1], -1)], -2)  # [B, K, 4, 2]
  moved = (jnp.einsum("bij,bkcj->bkci", a, corners - centre) + centre
           + shift[:, None, None, :])
  lo_xy = jnp.clip(jnp.min(moved, axis=2), 0.0, jnp.array([w, h], jnp.float32))
  hi_xy = jnp.clip(jnp.max(moved, axis=2), 0.0, jnp.array([w, h], jnp.float32))
  boxes_out = jnp.concatenate([lo_xy, hi_xy], -1)
  padded = boxes[..., 2] <= boxes[..., 0]
  boxes_out = jnp.where(padded[..., None], boxes, boxes_out)
  return hu_out, boxes_out


def load_soft_labels(path: str) -> tuple[np.ndarray, np.ndarray]:
  """A teacher's soft labels (.npz with example_index [N], probs [N, 3]) → dense table
  (probs [M, 3], present bool [M]) indexed by example_index (M = max index + 1)."""
  if not os.path.exists(path):
    raise ConfigError(f"config.distill.soft_labels_path={path!r} does not exist; run "
                      "`python -m ctjax.distill` to produce it")
  with np.load(path, allow_pickle=False) as f:
    idx, probs = f["example_index"].astype(np.int64), f["probs"].astype(np.float32)
  table = np.zeros((int(idx.max(initial=-1)) + 1, probs.shape[1]), np.float32)
  present = np.zeros(table.shape[0], bool)
  table[idx], present[idx] = probs, True
  return table, present


def add_soft_labels(batch: dict, table: np.ndarray, present: np.ndarray) -> dict:
  """Host side: `soft_labels` float32 [B, 3] by `example_index` (zeros where the teacher has
  none and on padding rows, which the loss then leaves out)."""
  idx = np.asarray(batch["example_index"]).astype(np.int64)
  inside = (idx >= 0) & (idx < len(table))
  safe = np.where(inside, idx, 0)
  keep = (inside & present[safe])[:, None]
  return {**batch, "soft_labels": np.where(keep, table[safe], 0.0).astype(np.float32)}


def save_soft_labels(path: str, example_index: np.ndarray, probs: np.ndarray) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, example_index=np.asarray(example_index, np.int32),
           probs=np.asarray(probs, np.float32))


# ----------------------------------------------------------------------------- the task


INPUT_NORMS = ("imagenet", "unit")


def preprocess(hu: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """int16/float HU [B, H, W] → `blend3` RGB [B, H, W, 3] in the model's dtype: the windows'
  [0, 1] values ImageNet-normalised (`config.data.input_norm` "imagenet") or as they are
  ("unit", the paper's "[0, 1] interval")."""
  x = windows_lib.apply_windows(jnp.asarray(hu), config.data.get("windows", "blend3"))
  if config.data.get("input_norm", "imagenet") == "imagenet":
    x = windows_lib.imagenet_normalize(x)
  return x.astype(compute_dtype(config.model.dtype))


def _stride(image_hw, det_hw) -> float:
  return float(image_hw[0]) / float(det_hw[0])


class BlendTask(Task):
  name = "blend"

  def validate_config(self, config: ml_collections.ConfigDict) -> None:
    """One-line ConfigErrors for blend settings that would fail deep inside the step."""
    loss = config.loss
    if len(loss.class_weights) != config.model.get("num_classes", 3):
      raise ConfigError(f"config.loss.class_weights={tuple(loss.class_weights)} needs one "
                        f"weight per class ({config.model.get('num_classes', 3)})")
    if loss.det_normalize not in DET_NORMALIZE:
      raise ConfigError(f"config.loss.det_normalize={loss.det_normalize!r}; expected one of "
                        f"{DET_NORMALIZE}")
    if loss.get("centre_loss", "focal") not in CENTRE_LOSSES:
      raise ConfigError(f"config.loss.centre_loss={loss.centre_loss!r}; expected one of "
                        f"{CENTRE_LOSSES}")
    if config.data.get("input_norm", "imagenet") not in INPUT_NORMS:
      raise ConfigError(f"config.data.input_norm={config.data.input_norm!r}; expected one of "
                        f"{INPUT_NORMS}")
    if not 0.0 <= config.distill.alpha <= 1.0 or config.distill.temperature <= 0:
      raise ConfigError(f"config.distill.alpha={config.distill.alpha} must lie in [0, 1] and "
                        f"temperature={config.distill.temperature} be > 0")
    if config.model.backbone not in FEATURE_BACKBONES:
      raise ConfigError(f"config.model.backbone={config.model.backbone!r}; expected one of "
                        f"{FEATURE_BACKBONES}")

  def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    return blendnet.build_blendnet(config.model)

  def init_variables(self, model, config, rng):
    size = config.data.image_size
    x = jnp.zeros((1, size, size, 3), compute_dtype(config.model.dtype))
    return blendnet.strip_perturbations(model.init(rng, x, train=False))

  def load_pretrained(self, config, variables):
    """The backbone from `config.model.backbone_weights` (host side, when a run starts)."""
    spec = config.model.get("backbone_weights", "")
    if not spec:
      return variables
    from ctjax.models import pretrained
    like = {col: tree["backbone"] for col, tree in variables.items() if "backbone" in tree}
    loaded = pretrained.load_backbone_like(spec, config.model.backbone, like,
                                        full_width=float(config.model.backbone_width) == 1.0)
    out = dict(variables)
    for col, tree in loaded.items():
      out[col] = {**dict(variables[col]), "backbone": tree}
    log.info("loaded pretrained %s backbone from %s", config.model.backbone, spec)
    return out

  def wrap_data(self, config, data, splits, model, variables, *, workdir=None, build=True):
    """Under self-knowledge distillation, training batches carry the teacher's `soft_labels`
    (looked up on the host by example_index; the jitted loss gets them as batch data)."""
    path = config.get("distill", {}).get("soft_labels_path", "")
    if not path:
      return data
    from ctjax.train.data_modules import MappedData
    table, present = load_soft_labels(path)
    train = splits["train"]
    return MappedData(data, lambda batch, source: (
        add_soft_labels(batch, table, present) if source is train else batch))

  def loss_fn(self, model, params, extra, batch, rng, config, train):
    hu, boxes = batch["hu"], batch["boxes"].astype(jnp.float32)
    if train and config.data.augment.get("enabled", False):
      hu, boxes = augment(hu, boxes, rng, config.data.augment)
    x = preprocess(hu, config)
    variables = {"params": params, **extra}
    if train:
      out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
      out, updates = model.apply(variables, x, train=False), dict(extra)
    mask = batch["valid"].astype(jnp.float32)
    labels = batch["label"].astype(jnp.int32)
    loss_cfg = config.loss
    weights = jnp.asarray(loss_cfg.class_weights, jnp.float32)
    cls = weighted_cross_entropy(out["logits"], labels, weights, mask)
    metrics = {"wce": cls}
    teacher = self._teacher_probs(batch, config)
    if teacher is not None:
      t_probs, t_present = teacher
      alpha = config.distill.alpha
      kl = distillation_kl(out["logits"], t_probs, mask * t_present, config.distill.temperature)
      cls = (1.0 - alpha) * cls + alpha * kl
      metrics["kl"] = kl
    total = loss_cfg.cls_weight * cls
    if loss_cfg.det_weight > 0:
      stride = _stride(x.shape[1:3], out["det"].shape[1:3])
      det, det_metrics = detection_loss(out["det"], boxes, batch["num_boxes"], stride, mask,
                                        loss_cfg)
      total = total + loss_cfg.det_weight * det
      metrics.update(det_loss=det, **det_metrics)
    correct = (jnp.argmax(out["logits"], -1) == labels).astype(jnp.float32)
    metrics.update(loss=total, cls_loss=cls,
                   accuracy=jnp.sum(correct * mask) / jnp.maximum(jnp.sum(mask), 1.0))
    return total, (metrics, updates)

  def _teacher_probs(self, batch, config):
    """(teacher probs [B, 3], present float [B]) under SKD, else None."""
    if "soft_labels" not in batch:
      return None
    probs = batch["soft_labels"].astype(jnp.float32)
    return probs, (jnp.sum(probs, -1) > 0).astype(jnp.float32)

  def predict(self, model, variables, batch, config):
    x = preprocess(batch["hu"], config)
    out = model.apply(blendnet.strip_perturbations(variables), x, train=False)
    stride = _stride(x.shape[1:3], out["det"].shape[1:3])
    dec = blendnet.decode(jax.nn.sigmoid(out["det"][..., 0]), out["det"][..., 1:], stride,
                           top_k=config.evals.get("det_top_k", 10))
    result = {"probs": jax.nn.softmax(out["logits"], -1), "logits": out["logits"],
              "det_scores": dec["scores"], "det_centres": dec["centres"],
              "det_boxes": dec["boxes"]}
    for key in ("label", "boxes", "num_boxes", "valid", "example_index"):
      if key in batch:
        result[key] = batch[key]
    return result

  def summarize(self, outputs, config):
    """Per-class sensitivity/specificity/F1/AUC + confusion matrix, and detection quality."""
    from ctjax.eval import metrics as metrics_lib
    valid = np.asarray(outputs.get("valid", np.ones(len(outputs["probs"]), bool)), bool)
    pick = lambda k: np.asarray(outputs[k])[valid]  # noqa: E731
    report = metrics_lib.multiclass_report(pick("label"), pick("probs"), BLEND_CLASSES)
    if "boxes" in outputs:
      report["detection"] = detection.detection_quality(
          pick("det_scores"), pick("det_centres"), pick("det_boxes"), pick("boxes"),
          pick("num_boxes"), score_threshold=config.evals.get("det_score_threshold", 0.3))
    return report


TASK = BlendTask()


# ----------------------------------------------------------------------------- figures


def write_figures(outputs: Mapping[str, Any], report: Mapping[str, Any], out_dir: str,
                  names=BLEND_CLASSES, title: str = "") -> list[str]:
  """ROC curves (one per class, one-vs-rest) and the confusion matrix as PNGs; returns paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from ctjax.eval import metrics as metrics_lib

  os.makedirs(out_dir, exist_ok=True)
  valid = np.asarray(outputs.get("valid", np.ones(len(outputs["probs"]), bool)), bool)
  y = np.asarray(outputs["label"])[valid]
  probs = np.asarray(outputs["probs"])[valid]
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  for c, name in enumerate(names):
    if 0 < np.sum(y == c) < len(y):
      fpr, tpr, _ = metrics_lib.roc_curve(y == c, probs[:, c])
      auc = report["per_class"][name]["auc"]
      ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title or "ROC")
  ax.legend(loc="lower right", fontsize=8)
  roc_path = os.path.join(out_dir, "roc.png")
  fig.tight_layout()
  fig.savefig(roc_path, dpi=100)
  plt.close(fig)

  cm = np.asarray(report["confusion_matrix"], np.float64)          # rows = truth
  frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(4.5, 4))
  ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      ax.text(j, i, f"{int(cm[i, j])}\n{frac[i, j]:.2f}", ha="center", va="center",
              color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
  ax.set_xticks(range(len(names)), names, fontsize=8)
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.set(xlabel="predicted", ylabel="truth", title=title or "confusion matrix")
  cm_path = os.path.join(out_dir, "confusion.png")
  fig.tight_layout()
  fig.savefig(cm_path, dpi=100)
  plt.close(fig)
  return [roc_path, cm_path]


def write_grad_cam(model, variables, hu: np.ndarray, config, out_path: str,
                   labels=None, boxes=None) -> str:
  """Grad-CAM of the predicted class over the brain-window slice, one panel per slice [N,H,W]
  (title: truth → prediction; truth boxes in green)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  x = preprocess(jnp.asarray(hu), config)
  cams, logits = blendnet.grad_cam_and_logits(model, variables, x)   # one pass gives both
  cams, pred = np.asarray(cams), np.asarray(jnp.argmax(logits, -1))
  brain = windows_lib.apply_windows(np.asarray(hu), "brain")[..., 0]
  n = len(hu)
  fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
  for i in range(n):
    ax = axes[0, i]
    ax.imshow(brain[i], cmap="gray")
    ax.imshow(cams[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
    if boxes is not None:
      for b in np.asarray(boxes[i]):
        if b[2] > b[0] and b[3] > b[1]:
          ax.add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="lime"))
    truth = f"{BLEND_CLASSES[int(labels[i])]} → " if labels is not None else ""
    ax.set_title(f"{truth}{BLEND_CLASSES[int(pred[i])]}", fontsize=8)
    ax.axis("off")
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
  return out_path
