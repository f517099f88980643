"""ResNet-50 (torchvision's v1.5: stride on the 3×3 conv) in Flax Linen.

Outputs of `ResNet50.__call__(x [B,H,W,3]) -> dict`:
  "feature_map"  [B, ⌈H/32⌉, ⌈W/32⌉, 2048·width]: the last bottleneck stage (`layer4`), the
                 blend-sign paper's "Block L" that feeds both its classification and detection
                 branches.
  "pooled"       [B, 2048·width]: global average pool of "feature_map" (torchvision's avgpool).
  "logits"       [B, num_classes] only when `include_fc` (torchvision's `fc`).

Names mirror torchvision: "conv1", "bn1", "layer{1..4}_{j}" each with "conv1..3", "bn1..3"
and, on the first block of a stage, "downsample_conv"/"downsample_bn"; "fc".
Padding is explicit and symmetric (as torch's), so any input size ≥ 32 px matches torchvision
exactly, odd sizes included. Input: NHWC, ImageNet-normalised.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ctjax.models.vgg import scale_channels

Dtype = Any

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4


class Bottleneck(nn.Module):
  """1×1 → 3×3 (strided) → 1×1 with a projection shortcut when the shape changes."""
  features: int
  strides: int
  downsample: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    conv = lambda f, k, s, p, name: nn.Conv(  # noqa: E731
        f, (k, k), strides=(s, s), padding=((p, p), (p, p)), use_bias=False,
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    norm = lambda name: nn.BatchNorm(  # noqa: E731
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    y = nn.relu(norm("bn1")(conv(self.features, 1, 1, 0, "conv1")(x)))
    y = nn.relu(norm("bn2")(conv(self.features, 3, self.strides, 1, "conv2")(y)))
    y = norm("bn3")(conv(self.features * EXPANSION, 1, 1, 0, "conv3")(y))
    if self.downsample:
      x = norm("downsample_bn")(
          conv(self.features * EXPANSION, 1, self.strides, 0, "downsample_conv")(x))
    return nn.relu(x + y)


class ResNet50(nn.Module):
  """torchvision's resnet50; `width` scales every channel count (min 1) for small CPU runs."""
  width: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  include_fc: bool = False
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> dict:
    assert x.ndim == 4, f"ResNet50 expects NHWC images, got shape {x.shape}"
    x = x.astype(self.dtype)
    x = nn.Conv(scale_channels(64, self.width), (7, 7), strides=(2, 2),
                padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="bn1")(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, (features, blocks, stride) in enumerate(STAGES):
      for j in range(blocks):
        x = Bottleneck(scale_channels(features, self.width), stride if j == 0 else 1,
                       downsample=j == 0, dtype=self.dtype, param_dtype=self.param_dtype,
                       name=f"layer{s + 1}_{j}")(x, train=train)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)  # f32 accumulation.
    out = {"feature_map": x, "pooled": pooled}
    if self.include_fc:
      out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="fc")(out["pooled"])
    return out
