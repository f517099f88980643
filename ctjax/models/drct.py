"""DrCT1 and DrCT2 (DrCT2 paper, section V; Figure 4).

Axes: B scans, m sampled slices, S×S primary input, C backbone channels, D sequence feature dim,
L labels. Input: windowed, ImageNet-normalised slices `x [B, m, S, S, 3]` (the task does the
windowing on device); optional `native [B, m, Hn, Wn, 3]` for the APS native-resolution option.

- Primary network (DrCT1, V.A): frozen backbone per slice → pooled C-d vector (adaptive max pool)
  → feature attention (eq. 3) → BiGRU + Dense (eq. 4) → slice attention (eqs. 5-6) →
  Σ_t w_t ŷ_t → three FC layers (ReLU, dropout 0.5, sigmoid).
- APS network (V.B): top-mkey slices by slice attention, kept in anatomical order, zoomed
  S→aps_size bilinearly (eq. 8) → the same frozen backbone (eq. 9) → BatchNorm → FC → BiGRU +
  Dense → mean over the key slices → three FC layers.
- Knowledge fusion (V.C): primary feature + APS feature (same D) → three FC layers.

The paper's "feature matrices" must be summed although the primary sees m slices and the APS
mkey; we read them as the per-scan D-vectors both networks feed their FC heads (the slice-
attention-weighted sum for the primary, the mean over key slices for the APS).

Parameter groups (top-level names, used for per-module learning rates and freezing):
`backbone`, `primary`, `aps`, `fusion`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax.models.sequence import DependencyLearning, FeatureAttention, SliceAttention

Dtype = Any

SELECTIONS = ("attention", "random")
APS_SOURCES = ("zoom", "native")


class Head(nn.Module):
  """Three FC layers: ReLU + dropout after the first two; returns logits (sigmoid outside)."""
  widths: Sequence[int]
  num_labels: int
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i, w in enumerate(self.widths):
      x = nn.Dense(w, dtype=self.dtype, param_dtype=self.param_dtype, name=f"fc{i + 1}")(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_labels, dtype=self.dtype, param_dtype=self.param_dtype,
                 name=f"fc{len(self.widths) + 1}")(x)
    return x.astype(jnp.float32)


class PrimaryNetwork(nn.Module):
  """Decoder of DrCT1 on the backbone's per-slice vectors (section V.A)."""
  num_labels: int
  gru_hidden: int
  seq_dim: int
  seq_activation: str
  fc_widths: Sequence[int]
  dropout_rate: float
  feature_attention_rescale: bool = False
  feature_norm: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    if self.feature_norm == "batchnorm":   # as the APS network's BN (V.B); not in V.A
      z = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=jnp.float32,
                       param_dtype=self.param_dtype, name="bn")(z.astype(jnp.float32))
    elif self.feature_norm != "none":
      raise ValueError(f"feature_norm={self.feature_norm!r}; expected 'none' or 'batchnorm'")
    x, fw = FeatureAttention(rescale=self.feature_attention_rescale)(z)
    y = DependencyLearning(self.gru_hidden, self.seq_dim, self.seq_activation, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="dependencies")(x)
    yw, sw = SliceAttention(dtype=self.dtype, param_dtype=self.param_dtype,
                            name="slice_attention")(y)
    feature = yw.sum(axis=1)
    logits = Head(self.fc_widths, self.num_labels, self.dropout_rate, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="head")(feature, train=train)
    return {"feature": feature, "logits": logits, "feature_attention": fw,
            "slice_attention": sw}


class APSNetwork(nn.Module):
  """Decoder of the attention-proposal-slices network on the key slices' vectors (V.B)."""
  num_labels: int
  fc_dim: int
  gru_hidden: int
  seq_dim: int
  seq_activation: str
  fc_widths: Sequence[int]
  dropout_rate: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    # BatchNorm statistics in float32 whatever the compute dtype.
    f = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=jnp.float32,
                     param_dtype=self.param_dtype, name="bn")(f.astype(jnp.float32))
    f = nn.Dense(self.fc_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(f)
    y = DependencyLearning(self.gru_hidden, self.seq_dim, self.seq_activation, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="dependencies")(f)
    feature = y.mean(axis=1)
    logits = Head(self.fc_widths, self.num_labels, self.dropout_rate, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="head")(feature, train=train)
    return {"feature": feature, "logits": logits}


def select_key_slices(scores: jax.Array, mkey: int) -> jax.Array:
  """Indices of the mkey highest scores per row, re-sorted ascending (anatomical order).

  scores [B, m] → int32 [B, mkey]. Static shapes: `jax.lax.top_k` then a sort.
  """
  _, idx = jax.lax.top_k(scores, mkey)
  return jnp.sort(idx, axis=-1).astype(jnp.int32)


class DrCT(nn.Module):
  """DrCT2 (`aps=True`) or DrCT1 (`aps=False`).

  `backbone` is a Flax module with `__call__(x [N,H,W,3], *, train) -> {"feature_map",
  "pooled"}` (ctjax.models.vgg.VGG16); it is run in inference mode and, with
  `freeze_backbone`, behind `stop_gradient` so no backward pass goes through it.
  """
  backbone: nn.Module
  num_labels: int
  aps: bool = True
  freeze_backbone: bool = True
  feature_attention_rescale: bool = False
  feature_norm: str = "none"
  gru_hidden: int = 256
  seq_dim: int = 256
  seq_activation: str = "tanh"
  fc_widths: Sequence[int] = (256, 128)
  dropout_rate: float = 0.5
  mkey: int = 16
  selection: str = "attention"
  aps_size: int = 512
  aps_source: str = "zoom"
  aps_fc_dim: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _features(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, k, H, W, 3] → (pooled [B, k, C], feature_map [B, k, h, w, C])."""
    b, k = images.shape[:2]
    out = self.backbone(images.reshape((b * k,) + images.shape[2:]).astype(self.dtype),
                        train=False)
    pooled, fmap = out["pooled"], out["feature_map"]
    if self.freeze_backbone:
      pooled, fmap = jax.lax.stop_gradient(pooled), jax.lax.stop_gradient(fmap)
    return (pooled.reshape((b, k) + pooled.shape[1:]),
            fmap.reshape((b, k) + fmap.shape[1:]))

  def backbone_features(self, images: jax.Array, aps_images: Optional[jax.Array] = None
                        ) -> dict[str, jax.Array]:
    """Per-slice frozen-backbone features for the feature cache (`features=` of __call__).

    images [N, S, S, 3] (primary input) → {"pooled" [N, C], "feature_map" [N, h, w, C]} and,
    with `aps_images` [N, S', S', 3] (the APS source of the same slices), "aps_pooled" [N, C]
    of those zoomed to aps_size. Every output row depends on its own slice only (per-slice
    backbone, per-slice bilinear zoom), so rows cached once equal the full model's values.
    Call with `method=DrCT.backbone_features` and the full variables.
    """
    out = self.backbone(images.astype(self.dtype), train=False)
    res = {"pooled": out["pooled"], "feature_map": out["feature_map"]}
    if aps_images is not None:
      if aps_images.shape[1:3] != (self.aps_size, self.aps_size):
        aps_images = jax.image.resize(aps_images.astype(jnp.float32),
                                      (aps_images.shape[0], self.aps_size, self.aps_size,
                                       aps_images.shape[-1]), method="bilinear")
      res["aps_pooled"] = self.backbone(aps_images.astype(self.dtype), train=False)["pooled"]
    return res

  @nn.compact
  def __call__(self, x: Optional[jax.Array], *, native: Optional[jax.Array] = None,
               features: Optional[dict[str, jax.Array]] = None,
               train: bool = False) -> dict[str, jax.Array]:
    """x [B, m, S, S, 3], or `features` (a frozen backbone's cached per-slice outputs, see
    `backbone_features`): {"pooled" [B, m, C], "feature_map" [B, m, h, w, C], and for DrCT2
    "aps_pooled" [B, m, C] = the APS backbone output of every sampled slice, of which the
    key slices are gathered}. Both give the same outputs (tests/models/test_drct.py)."""
    if features is None:
      assert x.ndim == 5 and x.shape[-1] == 3, f"DrCT expects [B, m, S, S, 3], got {x.shape}"
    elif not self.freeze_backbone:
      raise ValueError("cached backbone features need freeze_backbone=True")
    if self.selection not in SELECTIONS:
      raise ValueError(f"selection={self.selection!r}; expected one of {SELECTIONS}")
    if self.aps_source not in APS_SOURCES:
      raise ValueError(f"aps_source={self.aps_source!r}; expected one of {APS_SOURCES}")
    if features is None:
      b, m = x.shape[:2]
      pooled, fmap = self._features(x)
    else:
      pooled, fmap = features["pooled"], features["feature_map"]
      b, m = pooled.shape[:2]
    seq = dict(gru_hidden=self.gru_hidden, seq_dim=self.seq_dim,
               seq_activation=self.seq_activation, fc_widths=tuple(self.fc_widths),
               dropout_rate=self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype)
    primary = PrimaryNetwork(self.num_labels,
                             feature_attention_rescale=self.feature_attention_rescale,
                             feature_norm=self.feature_norm,
                             name="primary", **seq)(pooled, train=train)
    fw, sw = primary["feature_attention"], primary["slice_attention"]
    # The "highlighted area" (Figure 2): the last conv block weighted by the slice's feature
    # attention, ReLU. Not normalised per slice, nor times the slice attention (a softmax over
    # the scan's own slices): its values compare across slices and scans, and the report draws
    # them against the run's fixed reference (ctjax.eval.highlight).
    hl = nn.relu(jnp.einsum("bmhwc,bmc->bmhw", fmap.astype(jnp.float32), fw))
    out = {"logits_primary": primary["logits"], "slice_attention": sw,
           "feature_attention": fw, "highlight": hl}
    if not self.aps:
      out["logits"] = primary["logits"]
      return out

    if not 0 < self.mkey <= m:
      raise ValueError(f"mkey={self.mkey} must be in [1, m={m}]")
    if self.selection == "attention":
      scores = jax.lax.stop_gradient(sw)
    else:   # ablation of Figure 6: random slices (a fixed draw when no 'aps' rng is given).
      rng = self.make_rng("aps") if self.has_rng("aps") else jax.random.key(0)
      scores = jax.random.uniform(rng, (b, m))
    key_idx = select_key_slices(scores, self.mkey)
    if features is not None:
      aps_pooled = jnp.take_along_axis(features["aps_pooled"], key_idx[:, :, None], axis=1)
    else:
      aps_pooled = self._aps_features(x, native, key_idx)
    aps = APSNetwork(self.num_labels, self.aps_fc_dim, name="aps", **seq)(aps_pooled,
                                                                          train=train)
    fused = Head(tuple(self.fc_widths), self.num_labels, self.dropout_rate, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="fusion")(
                     primary["feature"] + aps["feature"], train=train)
    out.update(logits_aps=aps["logits"], logits=fused, key_indices=key_idx)
    return out

  def _aps_features(self, x: jax.Array, native: Optional[jax.Array],
                    key_idx: jax.Array) -> jax.Array:
    """The key slices zoomed to aps_size (eq. 8) through the frozen backbone (eq. 9)."""
    b = x.shape[0]
    src = native if (self.aps_source == "native" and native is not None) else x
    keys = jnp.take_along_axis(src, key_idx[:, :, None, None, None], axis=1)
    if keys.shape[2:4] != (self.aps_size, self.aps_size):
      keys = jax.image.resize(keys.astype(jnp.float32),
                              (b, self.mkey, self.aps_size, self.aps_size, keys.shape[-1]),
                              method="bilinear")
    aps_pooled, _ = self._features(keys)
    return aps_pooled
