"""VGG16 (and VGG16-BN) in Flax Linen, laid out so torchvision's weights import exactly.

Outputs of `VGG16.__call__(x [B,H,W,3]) -> dict`:
  "feature_map"  [B, H/32, W/32, 512·width]: torchvision's `model.features(x)`, i.e. the conv
                 stack *including* its final 2×2 max-pool (512×7×7 at 224 px).
  "pooled"       [B, 512·width]: the maximum over every spatial position of "feature_map".
                 DrCT2 (section V.A) compresses the 512×7×7 map with adaptive max-pooling to
                 1×1; torchvision's 7×7 adaptive *average* pool is not applied first, so at any
                 input size this is `AdaptiveMaxPool2d(1)(model.features(x))` (at 224 px the two
                 readings agree).
  "logits"       [B, num_classes] only when `include_fc`: torchvision's head (adaptive average
                 pool to 7×7, flatten, 4096-4096-classes with dropout).

Layer names: "conv0" … "conv12" (and "bn0" … "bn12" with `batch_norm`), "fc0" … "fc2".
Input: NHWC, already ImageNet-normalised (`ctjax.data.windows.imagenet_normalize`); any size
≥ 32 px (five 2×2 pools). Outputs are in the compute `dtype`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Dtype = Any

# torchvision's configuration "D" (VGG16): channels, "M" = 2×2 max-pool.
VGG16_LAYERS: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                       512, 512, 512, "M")


def scale_channels(channels: int, width: float) -> int:
  """Channel count under a width multiplier (at least 1), shared by every ctjax backbone."""
  return max(1, int(round(channels * width)))


def adaptive_avg_pool(x: jnp.ndarray, output_size: Sequence[int]) -> jnp.ndarray:
  """torch's AdaptiveAvgPool2d on NHWC: bin i spans [floor(i·H/o), ceil((i+1)·H/o))."""
  _, h, w, _ = x.shape
  oh, ow = output_size
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:  # uniform bins: one reduce_window.
    kh, kw = h // oh, w // ow
    return nn.avg_pool(x, (kh, kw), (kh, kw))
  rows = []
  for i in range(oh):
    h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
    cols = []
    for j in range(ow):
      w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
      cols.append(jnp.mean(x[:, h0:h1, w0:w1, :], axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


class VGG16(nn.Module):
  """VGG16 conv stack (+ optional classifier head); `batch_norm=True` is torchvision's vgg16_bn."""
  width: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  batch_norm: bool = False
  include_fc: bool = False
  num_classes: int = 1000
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> dict:
    assert x.ndim == 4, f"VGG16 expects NHWC images, got shape {x.shape}"
    x = x.astype(self.dtype)
    i = 0
    for v in VGG16_LAYERS:
      if v == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      x = nn.Conv(scale_channels(v, self.width), (3, 3), padding=((1, 1), (1, 1)),
                  dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv{i}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, param_dtype=self.param_dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
      i += 1
    out = {"feature_map": x, "pooled": jnp.max(x, axis=(1, 2))}
    if self.include_fc:
      y = adaptive_avg_pool(x, (7, 7))
      y = y.reshape(y.shape[0], -1)  # (h, w, c) order; the importer permutes torch's (c, h, w).
      for k, units in enumerate((4096, 4096)):
        y = nn.Dense(scale_channels(units, self.width), dtype=self.dtype,
                     param_dtype=self.param_dtype, name=f"fc{k}")(y)
        y = nn.relu(y)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
      out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                               name="fc2")(y)
    return out


def fold_batch_norm(variables: dict, epsilon: float = 1e-5) -> dict:
  """VGG16-BN variables {"params", "batch_stats"} → plain VGG16 {"params"} computing the same
  function in inference mode: BN(conv(x)) = conv'(x) with kernel' = kernel·s and
  bias' = (bias − mean)·s + beta, s = scale / sqrt(var + eps), per output channel.

  Lets a backbone be *trained* with BatchNorm (VGG16 from scratch trains far better so) and then
  used frozen as the paper's plain VGG16. The classifier layers (fc*) are copied unchanged.
  """
  params, stats = variables["params"], variables.get("batch_stats", {})
  out = {}
  for name, p in params.items():
    if name.startswith("bn"):
      continue
    p = {k: np.asarray(v, np.float32) for k, v in p.items()}
    bn = "bn" + name[len("conv"):] if name.startswith("conv") else None
    if bn is not None and bn in params:
      mean = np.asarray(stats[bn]["mean"], np.float64)
      var = np.asarray(stats[bn]["var"], np.float64)
      s = np.asarray(params[bn]["scale"], np.float64) / np.sqrt(var + epsilon)
      p = {"kernel": (p["kernel"] * s).astype(np.float32),
           "bias": ((p["bias"] - mean) * s + np.asarray(params[bn]["bias"])).astype(np.float32)}
    out[name] = p
  return {"params": out}
