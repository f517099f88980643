"""Inception v3 (torchvision's `inception_v3`) in Flax Linen.

Outputs of `InceptionV3.__call__(x [B,H,W,3]) -> dict`:
  "feature_map"  [B, h, w, 2048·width]: `Mixed_7c`, the last inception block (8×8 at 299 px).
  "pooled"       [B, 2048·width]: global average pool of "feature_map" (torchvision's avgpool).
  "logits"       [B, num_classes] only when `include_fc` (torchvision's `fc`).
  "aux_logits"   [B, num_classes] only when `include_fc and aux_logits` and training (or at
                 init, so the parameters exist): torchvision's `AuxLogits` head on `Mixed_6e`.

Names mirror torchvision exactly ("Conv2d_1a_3x3"/"conv"|"bn", "Mixed_5b"/"branch1x1"/…,
"AuxLogits", "fc"), so the importer only renames leaves. BatchNorm epsilon is 1e-3 as in
torchvision's BasicConv2d.

Minimum input: 75×75 px, the same as torchvision (the stem and the two stride-2 reductions
leave a 1×1 map at 75 px; smaller inputs have no valid `Mixed_7a`). The auxiliary head needs
`Mixed_6e` ≥ 17×17, i.e. about 299 px, as in torchvision.

`transform_input=True` reproduces torchvision's pretrained behaviour: inputs are ImageNet-
normalised, and the Google weights expect (x − 0.5)/0.5, so each channel is re-scaled first.
Input: NHWC.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ctjax.errors import ConfigError
from ctjax.models.vgg import scale_channels

Dtype = Any

MIN_SIZE = 75
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(v) -> tuple:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """Conv (no bias) → BatchNorm(eps 1e-3) → ReLU, torchvision's building block."""
  features: int
  kernel_size: Any
  strides: int = 1
  padding: Any = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x)
    return nn.relu(x)


class _Block(nn.Module):
  """Shared plumbing of the Mixed_* blocks: a scaled BasicConv2d factory and pooling."""
  width: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def conv(self, name: str, features: int, kernel_size, strides=1, padding=0) -> BasicConv2d:
    return BasicConv2d(scale_channels(features, self.width), kernel_size, strides, padding,
                       dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @staticmethod
  def avg3(x):  # torch avg_pool2d(3, stride 1, padding 1), count_include_pad=True.
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)

  @staticmethod
  def max3s2(x):
    return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(_Block):
  pool_features: int = 32

  @nn.compact
  def __call__(self, x, *, train):
    b1 = self.conv("branch1x1", 64, 1)(x, train=train)
    b5 = self.conv("branch5x5_1", 48, 1)(x, train=train)
    b5 = self.conv("branch5x5_2", 64, 5, padding=2)(b5, train=train)
    b3 = self.conv("branch3x3dbl_1", 64, 1)(x, train=train)
    b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3, train=train)
    b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3, train=train)
    bp = self.conv("branch_pool", self.pool_features, 1)(self.avg3(x), train=train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):

  @nn.compact
  def __call__(self, x, *, train):
    b3 = self.conv("branch3x3", 384, 3, strides=2)(x, train=train)
    bd = self.conv("branch3x3dbl_1", 64, 1)(x, train=train)
    bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd, train=train)
    bd = self.conv("branch3x3dbl_3", 96, 3, strides=2)(bd, train=train)
    return jnp.concatenate([b3, bd, self.max3s2(x)], axis=-1)


class InceptionC(_Block):
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x, *, train):
    c7 = self.channels_7x7
    b1 = self.conv("branch1x1", 192, 1)(x, train=train)
    b7 = self.conv("branch7x7_1", c7, 1)(x, train=train)
    b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7, train=train)
    b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7, train=train)
    bd = self.conv("branch7x7dbl_1", c7, 1)(x, train=train)
    bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd, train=train)
    bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd, train=train)
    bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd, train=train)
    bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd, train=train)
    bp = self.conv("branch_pool", 192, 1)(self.avg3(x), train=train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):

  @nn.compact
  def __call__(self, x, *, train):
    b3 = self.conv("branch3x3_1", 192, 1)(x, train=train)
    b3 = self.conv("branch3x3_2", 320, 3, strides=2)(b3, train=train)
    b7 = self.conv("branch7x7x3_1", 192, 1)(x, train=train)
    b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7, train=train)
    b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7, train=train)
    b7 = self.conv("branch7x7x3_4", 192, 3, strides=2)(b7, train=train)
    return jnp.concatenate([b3, b7, self.max3s2(x)], axis=-1)


class InceptionE(_Block):

  @nn.compact
  def __call__(self, x, *, train):
    b1 = self.conv("branch1x1", 320, 1)(x, train=train)
    b3 = self.conv("branch3x3_1", 384, 1)(x, train=train)
    b3 = jnp.concatenate([
        self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3, train=train),
        self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3, train=train)], axis=-1)
    bd = self.conv("branch3x3dbl_1", 448, 1)(x, train=train)
    bd = self.conv("branch3x3dbl_2", 384, 3, padding=1)(bd, train=train)
    bd = jnp.concatenate([
        self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd, train=train),
        self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd, train=train)], axis=-1)
    bp = self.conv("branch_pool", 192, 1)(self.avg3(x), train=train)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(_Block):
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.avg_pool(x, (5, 5), (3, 3))
    x = self.conv("conv0", 128, 1)(x, train=train)
    x = self.conv("conv1", 768, 5)(x, train=train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="fc")(x)


class InceptionV3(nn.Module):
  """torchvision's inception_v3; `width` scales every channel count (min 1)."""
  width: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  include_fc: bool = False
  num_classes: int = 1000
  aux_logits: bool = False
  transform_input: bool = False
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False) -> dict:
    assert x.ndim == 4, f"InceptionV3 expects NHWC images, got shape {x.shape}"
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ConfigError(f"InceptionV3 needs images of at least {MIN_SIZE}×{MIN_SIZE} px "
                        f"(as torchvision's); got {x.shape[1]}×{x.shape[2]}")
    if self.transform_input:
      mean, std = jnp.asarray(_IMAGENET_MEAN), jnp.asarray(_IMAGENET_STD)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = x.astype(self.dtype)
    kw = dict(width=self.width, dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda name, f, k, s=1, p=0: BasicConv2d(  # noqa: E731
        scale_channels(f, self.width), k, s, p, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)
    x = conv("Conv2d_1a_3x3", 32, 3, 2)(x, train=train)
    x = conv("Conv2d_2a_3x3", 32, 3)(x, train=train)
    x = conv("Conv2d_2b_3x3", 64, 3, 1, 1)(x, train=train)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = conv("Conv2d_3b_1x1", 80, 1)(x, train=train)
    x = conv("Conv2d_4a_3x3", 192, 3)(x, train=train)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x, train=train)
    x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x, train=train)
    x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x, train=train)
    x = InceptionB(name="Mixed_6a", **kw)(x, train=train)
    x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x, train=train)
    x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x, train=train)
    x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x, train=train)
    x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x, train=train)
    out = {}
    if self.include_fc and self.aux_logits and (train or self.is_initializing()):
      out["aux_logits"] = InceptionAux(num_classes=self.num_classes, name="AuxLogits",
                                       **kw)(x, train=train)
    x = InceptionD(name="Mixed_7a", **kw)(x, train=train)
    x = InceptionE(name="Mixed_7b", **kw)(x, train=train)
    x = InceptionE(name="Mixed_7c", **kw)(x, train=train)
    out["feature_map"] = x
    out["pooled"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
    if self.include_fc:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(out["pooled"])
      out["logits"] = nn.Dense(self.num_classes, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="fc")(y)
    return out
