"""Blend-sign network: a backbone's last block feeding a classifier and a centre-heatmap detector.

Figure 4 of the blend-sign paper ("Overview of the proposed method"): an ImageNet backbone (ResNet-50 by default; VGG16 or Inception v3 in Table 4) gives the
feature maps of its last convolutional block ("Block L"); the classification branch is global
average pooling + one linear layer (3 classes: non-ICH, normal ICH, blend sign); the detection
branch is two convolutional layers giving 5 channels per feature-map cell: the centre logit and
the left/right/top/bottom distances of the box, in feature-map cells (CenterNet/FCOS style).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax.errors import ConfigError
from ctjax.models.backbones import FEATURE_BACKBONES, build_backbone

NUM_DET_CHANNELS = 5   # centre logit + (left, right, top, bottom) distances.
# Prior probability of a centre at init (CenterNet's focal-loss bias trick: -log((1-p)/p)).
CENTRE_PRIOR = 0.01


class BlendNet(nn.Module):
  """Backbone → {classification logits [B, 3], detection map [B, h, w, 5]}.

  `backbone` is any module called as `backbone(x, train=...)` returning a dict with
  "feature_map" [B, h, w, C] (NHWC). The feature map goes through `self.perturb("feature_map")`
  so that Grad-CAM can take gradients with respect to it (a no-op in ordinary calls).
  """
  backbone: nn.Module
  num_classes: int = 3           # paper: non-ICH, normal ICH, blend sign.
  det_hidden: int = 256          # channels of the first detection conv (CenterNet head: 256).
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
    assert x.ndim == 4 and x.shape[-1] == 3, f"expected [B, H, W, 3], got {x.shape}"
    fmap = self.backbone(x, train=train)["feature_map"]
    fmap = self.perturb("feature_map", fmap)
    # Classification branch: GAP + linear (paper, "Pre-trained networks").
    pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="classifier")(pooled.astype(self.dtype))
    # Detection branch: two conv layers on Block L (paper, "Pre-trained networks").
    h = nn.Conv(self.det_hidden, (3, 3), padding="SAME", dtype=self.dtype,
                param_dtype=self.param_dtype, name="det_conv1")(fmap)
    h = nn.relu(h)
    det = nn.Conv(NUM_DET_CHANNELS, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
                  bias_init=_det_bias_init, name="det_conv2")(h)
    return {"logits": logits.astype(jnp.float32), "det": det.astype(jnp.float32),
            "feature_map": fmap}


def _det_bias_init(key, shape, dtype=jnp.float32):
  """Centre channel starts at the prior CENTRE_PRIOR, distances at 0."""
  del key
  prior = -jnp.log((1.0 - CENTRE_PRIOR) / CENTRE_PRIOR)
  return jnp.zeros(shape, dtype).at[0].set(prior)


def build_blendnet(model_config) -> BlendNet:
  """BlendNet from `config.model`: the backbone from `backbone` / `backbone_width`, the other
  keys (num_classes, det_hidden, dtype, param_dtype) are BlendNet's own field names."""
  from ctjax.models import compute_dtype
  dtype = compute_dtype(model_config.get("dtype", "float32"))
  param_dtype = compute_dtype(model_config.get("param_dtype", "float32"))
  if model_config.backbone not in FEATURE_BACKBONES:
    raise ConfigError(f"config.model.backbone={model_config.backbone!r}; expected one of "
                      f"{FEATURE_BACKBONES}")
  backbone = build_backbone(model_config.backbone,
                            width=model_config.get("backbone_width", 1.0), dtype=dtype,
                            param_dtype=param_dtype)
  return BlendNet(backbone=backbone, num_classes=model_config.get("num_classes", 3),
                  det_hidden=model_config.get("det_hidden", 256), dtype=dtype,
                  param_dtype=param_dtype)


def grad_cam(model: BlendNet, variables: Mapping[str, Any], x: jax.Array,
             class_index: jax.Array | int | None = None) -> jax.Array:
  """Grad-CAM (Selvaraju et al. 2017) heat maps [B, H, W] in [0, 1] at the input's resolution.

  Weights each feature-map channel by the spatial mean of d(logit of `class_index`)/d(channel)
  and keeps the ReLU of the weighted sum. `class_index` None → the predicted class per example.
  """
  return grad_cam_and_logits(model, variables, x, class_index)[0]


def grad_cam_and_logits(model: BlendNet, variables: Mapping[str, Any], x: jax.Array,
                        class_index: jax.Array | int | None = None
                        ) -> tuple[jax.Array, jax.Array]:
  """(`grad_cam` maps [B, H, W], the logits [B, classes]) from one forward pass and its
  backward pass: the gradient w.r.t. the feature map is the pass's own VJP, seeded with the
  class's one-hot."""
  variables = strip_perturbations(variables)

  def forward(perturbations):
    out = model.apply({**variables, "perturbations": perturbations}, x, train=False)
    return out["logits"], out["feature_map"]

  shape = jax.eval_shape(lambda: model.apply(variables, x, train=False))["feature_map"]
  zeros = {"feature_map": jnp.zeros(shape.shape, shape.dtype)}
  logits, vjp, fmap = jax.vjp(forward, zeros, has_aux=True)
  if class_index is None:
    cls = jnp.argmax(logits, axis=-1)
  else:
    cls = jnp.broadcast_to(jnp.asarray(class_index, jnp.int32), logits.shape[:1])
  grads = vjp(jax.nn.one_hot(cls, logits.shape[-1], dtype=logits.dtype))[0]["feature_map"]
  weights = jnp.mean(grads.astype(jnp.float32), axis=(1, 2), keepdims=True)   # [B, 1, 1, C]
  cam = nn.relu(jnp.sum(weights * fmap.astype(jnp.float32), axis=-1))         # [B, h, w]
  cam = jax.image.resize(cam, (cam.shape[0],) + x.shape[1:3], method="bilinear")
  return cam / jnp.maximum(jnp.max(cam, axis=(1, 2), keepdims=True), 1e-12), logits


def strip_perturbations(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Drops the "perturbations" collection that `init` creates for Grad-CAM."""
  return {k: v for k, v in variables.items() if k != "perturbations"}


def decode(centre_probs: jax.Array, distances: jax.Array, stride: float, *,
           top_k: int = 10) -> dict[str, jax.Array]:
  """CenterNet decoding: 3×3 max-pool peaks, top-k, boxes from the distances at each peak.

  centre_probs [B, h, w] (sigmoid of the centre channel), distances [B, h, w, 4] in cells.
  Cells follow ctjax.train.tasks.blend_losses's conventions. Returns "scores" [B, k], "centres" [B, k, 2] (x, y input pixels) and "boxes" [B, k, 4]
  (x0, y0, x1, y1 input pixels), best first. Keep those above a score threshold.
  """
  b, h, w = centre_probs.shape
  pooled = jax.lax.reduce_window(centre_probs, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1),
                                 "SAME")
  peaks = jnp.where(centre_probs >= pooled, centre_probs, 0.0).reshape(b, h * w)
  k = min(top_k, h * w)
  scores, idx = jax.lax.top_k(peaks, k)
  ys = (idx // w).astype(jnp.float32)
  xs = (idx % w).astype(jnp.float32)
  d = jnp.take_along_axis(distances.reshape(b, h * w, 4), idx[..., None], axis=1)
  ref_x = (xs + 0.5) * stride
  ref_y = (ys + 0.5) * stride
  boxes = jnp.stack([ref_x - d[..., 0] * stride, ref_y - d[..., 2] * stride,
                     ref_x + d[..., 1] * stride, ref_y + d[..., 3] * stride], axis=-1)
  return {"scores": scores, "centres": jnp.stack([ref_x, ref_y], axis=-1), "boxes": boxes}
