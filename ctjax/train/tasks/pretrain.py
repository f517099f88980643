"""Backbone pretraining on phantom slices: the stand-in for ImageNet weights on CPU.

DrCT2's design is a pretrained, frozen VGG16. No ImageNet weights can be downloaded here, so
`configs/pretrain_phantom.py` trains the small-width VGG16 (ctjax.models.vgg) with a linear
multi-label head on single phantom slices and their slice-level truth (a separately seeded
phantom set, never DrCT2's evaluation data), then writes the backbone's variables with
`ctjax.models.weights.save_variables` to `config.pretrain.export_path` (default
`<workdir>/backbone.npz`; the shipped ctjax/assets/vgg16_w0125_phantom.npz is such a file).
Re-export from a finished workdir: `python -m ctjax.weights export --workdir DIR --out FILE`.

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
from ctjax.train.tasks import Task

log = logging.getLogger(__name__)

EXPORT_NAME = "backbone.npz"   # written into the workdir when config.pretrain.export_path is ""


class BackboneClassifier(nn.Module):
  """VGG16 conv stack → pooled features → linear multi-label logits."""
  num_labels: int
  backbone_width: float = 0.125
  batch_norm: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    from ctjax.models.vgg import VGG16
    feats = VGG16(width=self.backbone_width, batch_norm=self.batch_norm, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="backbone")(x, train=train)["pooled"]
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


class PretrainTask(Task):
  name = "pretrain"

  def validate_config(self, config: ml_collections.ConfigDict) -> None:
    if not config.data.get("labels"):
      raise ConfigError("config.data.labels must list the slice label names")
    if config.model.get("backbone", "vgg16") != "vgg16":
      raise ConfigError(f"config.model.backbone={config.model.backbone!r}; the pretraining task "
                        "trains 'vgg16'")
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
                              dtype=compute_dtype(config.model.dtype),
                              param_dtype=compute_dtype(config.model.param_dtype))

  def init_variables(self, model, config, rng) -> dict:
    # Parameter shapes do not depend on the image size: initialise on 32 px.
    variables = model.init({"params": rng}, jnp.zeros((1, 32, 32, 3)), train=False)
    return {k: v for k, v in variables.items()}

  def loss_fn(self, model, params, extra, batch, rng, config, train):
    aug_rng, drop_rng = jax.random.split(rng)
    x = preprocess(batch["hu"], config, aug_rng if train else None)
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
      out = export_backbone(variables, path)
      log.info("backbone variables written to %s (%.2f MB)", out, out.stat().st_size / 1e6)


def export_backbone(variables: Mapping[str, Any], path: str) -> pathlib.Path:
  """{"params": plain VGG16 backbone params} → .npz via ctjax.models.weights.save_variables.

  A backbone trained with BatchNorm (`config.model.batch_norm`) is written with its BN layers
  folded into the convolutions (`ctjax.models.vgg.fold_batch_norm`, exact in inference mode),
  so the file is always the plain VGG16 that DrCT loads frozen."""
  from ctjax.models.vgg import fold_batch_norm
  from ctjax.models.weights import save_variables
  backbone = {"params": jax.tree.map(np.asarray, dict(variables["params"]["backbone"]))}
  stats = variables.get("batch_stats", {}).get("backbone")
  if stats is not None:
    backbone = fold_batch_norm({"params": backbone["params"],
                                "batch_stats": jax.tree.map(np.asarray, dict(stats))})
  return save_variables(path, backbone)


TASK = PretrainTask()
