"""Backbone pretraining on phantom slices: the stand-in for ImageNet weights on CPU.

DrCT2's design is a pretrained, frozen VGG16; the blend-sign paper fine-tunes an ImageNet
ResNet-50. No ImageNet weights can be downloaded here, so a small-width backbone
(`config.model.backbone`: "vgg16", ctjax.models.vgg; "resnet50", ctjax.models.resnet; or
"inception_v3", ctjax.models.inception) is
trained with a linear multi-label head on single phantom slices and their slice-level truth (a
separately seeded phantom set, never the evaluation data): `configs/pretrain_phantom.py` (VGG16
for DrCT, shipped as ctjax/assets/vgg16_w0125_phantom.npz), `configs/pretrain_blend_phantom.py`
(the blend-sign detector's ResNet-50, ctjax/assets/resnet50_w0125_blend_phantom.npz, and its
Table 4 backbones VGG16 and Inception v3, `<backbone>_w0125_blend_phantom.npz`). The
backbone's variables are written with `ctjax.models.pretrained.save_variables` to
`config.pretrain.export_path` (default `<workdir>/backbone.npz`). Re-export from a finished
workdir: `python -m ctjax.weights export --workdir DIR --out FILE`.

Augmentation (training only): `config.pretrain.flip` (left-right), `config.pretrain.affine` (a
dict for the blend task's random affine, `random_affine`; absent or empty: off),
`config.pretrain.zoom_sizes` (part of each batch zoomed, `_multi_scale`).

Batch (pipeline record type "pretrain"): hu int16 [B, H, W], labels float32 [B, L],
valid bool [B] (eval padding), example_index int32 [B].
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ctjax.errors import ConfigError
from ctjax.models import compute_dtype
from ctjax.models.backbones import FEATURE_BACKBONES
from ctjax.train.tasks import Task

log = logging.getLogger(__name__)

EXPORT_NAME = "backbone.npz"   # written into the workdir when config.pretrain.export_path is ""
BACKBONES = FEATURE_BACKBONES   # what pretraining trains and exports
# Backbones whose BatchNorm is a layer of their own (kept on export, fine-tuned downstream).
NATIVE_BATCH_NORM = ("resnet50", "inception_v3")


class BackboneClassifier(nn.Module):
  """Backbone conv stack → pooled features → linear multi-label logits.

  backbone "vgg16" (optionally with BatchNorm, folded away on export), "resnet50" or
  "inception_v3" (native BatchNorm, exported with its statistics); the backbone's variables live
  under "backbone".
  """
  num_labels: int
  backbone_width: float = 0.125
  batch_norm: bool = False
  dropout_rate: float = 0.0
  backbone: str = "vgg16"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    from ctjax.models.backbones import build_backbone
    arch = "vgg16_bn" if self.backbone == "vgg16" and self.batch_norm else self.backbone
    net = build_backbone(arch, width=self.backbone_width, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="backbone")
    feats = net(x, train=train)["pooled"]
    feats = nn.Dropout(self.dropout_rate, deterministic=not train)(feats)
    logits = nn.Dense(self.num_labels, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="head")(feats)
    return logits.astype(jnp.float32)


def preprocess(hu: jax.Array, config: ml_collections.ConfigDict, rng=None) -> jax.Array:
  """int16 HU [B, H, W] → ImageNet-normalised windows [B, H, W, 3]; random left-right flips
  when `rng` is given (training)."""
  from ctjax.data.windows import apply_windows, imagenet_normalize
  x = imagenet_normalize(apply_windows(hu, config.data.windows))
  if rng is not None and config.pretrain.flip:
    flip = jax.random.bernoulli(rng, 0.5, (x.shape[0], 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  return x


def random_affine(hu: jax.Array, rng: jax.Array, aug: Mapping[str, Any]) -> jax.Array:
  """The blend task's per-slice random affine (ctjax.train.tasks.blend.augment: flip, shift,
  rotation, scaling, each with probability aug["prob"]) on HU [B, H, W], without boxes."""
  from ctjax.train.tasks.blend import augment
  no_boxes = jnp.zeros((hu.shape[0], 1, 4), jnp.float32)   # x1 <= x0: padding, left as is
  return augment(hu, no_boxes, rng, dict(aug))[0]


def _multi_scale(x: jax.Array, zoom_sizes: tuple) -> list[jax.Array]:
  """Splits a batch into 1 + len(zoom_sizes) equal parts; part i > 0 is zoomed bilinearly to
  zoom_sizes[i-1] px (whole field of view, objects larger). ImageNet training's scale
  augmentation is what lets DrCT2 feed a frozen backbone the APS zoom (224 → 512); this is the
  phantom stand-in's equivalent, so the backbone is trained at the sizes it is used at."""
  parts = np.array_split(np.arange(x.shape[0]), len(zoom_sizes) + 1)
  out = [x[parts[0]]]
  for size, idx in zip(zoom_sizes, parts[1:]):
    out.append(jax.image.resize(x[idx], (len(idx), size, size, x.shape[-1]), "bilinear"))
  return out


def _names(config) -> tuple:
  return tuple(config.data.labels)


def _backbone(config) -> str:
  return str(config.model.get("backbone", "vgg16"))


class PretrainTask(Task):
  name = "pretrain"

  def validate_config(self, config: ml_collections.ConfigDict) -> None:
    if not config.data.get("labels"):
      raise ConfigError("config.data.labels must list the slice label names")
    if _backbone(config) not in BACKBONES:
      raise ConfigError(f"config.model.backbone={_backbone(config)!r}; the pretraining task "
                        f"trains {' or '.join(map(repr, BACKBONES))}")
    if float(config.model.backbone_width) <= 0:
      raise ConfigError(f"config.model.backbone_width={config.model.backbone_width} must be > 0")
    pw = tuple(config.loss.pos_weight)
    if pw and len(pw) != len(_names(config)):
      raise ConfigError(f"config.loss.pos_weight has {len(pw)} values for "
                        f"{len(_names(config))} labels")

  def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    return BackboneClassifier(num_labels=len(_names(config)),
                              backbone_width=float(config.model.backbone_width),
                              batch_norm=bool(config.model.get("batch_norm", False)),
                              dropout_rate=float(config.model.dropout_rate),
                              backbone=_backbone(config),
                              dtype=compute_dtype(config.model.dtype),
                              param_dtype=compute_dtype(config.model.param_dtype))

  def init_variables(self, model, config, rng) -> dict:
    # Parameter shapes do not depend on the image size: initialise on the smallest input the
    # backbone takes (32 px; Inception v3's stem needs 75).
    from ctjax.models.inception import MIN_SIZE
    size = MIN_SIZE if _backbone(config) == "inception_v3" else 32
    variables = model.init({"params": rng}, jnp.zeros((1, size, size, 3)), train=False)
    return {k: v for k, v in variables.items()}

  def loss_fn(self, model, params, extra, batch, rng, config, train):
    aug_rng, drop_rng = jax.random.split(rng)
    hu = batch["hu"]
    affine = config.get("pretrain", {}).get("affine")
    if train and affine:
      hu = random_affine(hu, jax.random.fold_in(rng, 2), affine)
    x = preprocess(hu, config, aug_rng if train else None)
    zoom = tuple(config.pretrain.get("zoom_sizes", ())) if train else ()
    parts = _multi_scale(x, zoom) if zoom else [x]
    logits = []
    for i, part in enumerate(parts):   # one apply per image size (BN statistics per size)
      rngs = {"dropout": jax.random.fold_in(drop_rng, i)}
      if train and "batch_stats" in extra:
        out, updates = model.apply({"params": params, **extra}, part, train=True, rngs=rngs,
                                   mutable=["batch_stats"])
        extra = {**extra, **updates}
      else:
        out = model.apply({"params": params, **extra}, part, train=train, rngs=rngs)
      logits.append(out)
    logits = jnp.concatenate(logits) if len(logits) > 1 else logits[0]
    labels = batch["labels"].astype(jnp.float32)
    pw = tuple(config.loss.pos_weight)
    weight = jnp.where(labels > 0.5, jnp.asarray(pw, jnp.float32), 1.0) if pw else 1.0
    bce = optax.sigmoid_binary_cross_entropy(logits, labels) * weight
    mask = batch.get("valid", jnp.ones(labels.shape[0], bool)).astype(jnp.float32)
    loss = jnp.sum(bce.mean(-1) * mask) / jnp.maximum(mask.sum(), 1.0)
    acc = jnp.sum(((logits > 0) == (labels > 0.5)).mean(-1) * mask) / jnp.maximum(mask.sum(), 1)
    return loss, ({"loss": loss, "label_accuracy": acc}, extra)

  def predict(self, model, variables, batch, config) -> dict:
    logits = model.apply(variables, preprocess(batch["hu"], config), train=False)
    return {"probs": jax.nn.sigmoid(logits)}

  def summarize(self, outputs: Mapping[str, Any], config) -> dict:
    from ctjax.eval.metrics import multilabel_report
    return multilabel_report(outputs["labels"], outputs["probs"], _names(config),
                             threshold=float(config.evals.get("threshold", 0.5)))

  def after_training(self, config, workdir: str, variables: Mapping[str, Any]) -> None:
    """Writes the backbone variables to config.pretrain.export_path, default
    `<workdir>/backbone.npz` (process 0)."""
    path = str(config.get("pretrain", {}).get("export_path", "") or "")
    path = path or os.path.join(workdir, EXPORT_NAME)
    if jax.process_index() == 0:
      out = export_backbone(variables, path, backbone=_backbone(config))
      log.info("backbone variables written to %s (%.2f MB)", out, out.stat().st_size / 1e6)


def export_backbone(variables: Mapping[str, Any], path: str, *,
                    backbone: str = "vgg16") -> pathlib.Path:
  """The backbone's variables → .npz via ctjax.models.pretrained.save_variables.

  A VGG16 trained with BatchNorm (`config.model.batch_norm`) is written with its BN layers
  folded into the convolutions (`ctjax.models.vgg.fold_batch_norm`, exact in inference mode),
  so the file is always the plain VGG16 that DrCT loads frozen. A ResNet-50 or Inception v3
  keeps its BatchNorm
  (part of the architecture, fine-tuned by the blend task): its file holds "params/…" and
  "batch_stats/…", what `ctjax.models.pretrained.load_backbone_like` gives the blend task."""
  from ctjax.models.vgg import fold_batch_norm
  from ctjax.models.pretrained import save_variables
  if backbone not in BACKBONES:
    raise ConfigError(f"backbone={backbone!r}; exports {' or '.join(map(repr, BACKBONES))}")
  params = jax.tree.map(np.asarray, dict(variables["params"]["backbone"]))
  out = {"params": params}
  stats = variables.get("batch_stats", {}).get("backbone")
  if stats is not None:
    stats = jax.tree.map(np.asarray, dict(stats))
    if backbone in NATIVE_BATCH_NORM:    # BatchNorm stays a layer of its own.
      out["batch_stats"] = stats
    else:
      out = fold_batch_norm({"params": params, "batch_stats": stats})
  return save_variables(path, out)


TASK = PretrainTask()
