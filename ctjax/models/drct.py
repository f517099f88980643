"""DrCT1 and DrCT2 (DrCT2 paper, section V; Figure 4).

Axes: B scans, m sampled slices, S×S primary input, C backbone channels, D sequence feature dim,
L labels. Input: windowed, ImageNet-normalised slices `x [B, m, S, S, 3]`, optionally `native
[B, m, Hn, Wn, 3]` for the APS native-resolution option; or, with `slice_preprocess` set, the
raw slices `x [B, m, H, W]` (HU), windowed and resized chunk by chunk inside the backbone pass
(`slice_preprocess(slices [n, H, W], size) -> [n, size, size, 3]`, size None = native).

Memory: the backbone runs over `backbone_chunk` slices per device at a time (`nn.scan` over
chunks laid out along the `data_shards` device blocks of the batch, so no chunk crosses
devices; each chunk preprocessed, zoomed and passed through the backbone inside the loop body,
behind `nn.remat` when the backbone is trained), so peak activation memory scales with the
chunk, not with B × m (DrCT2 at batch 256: 28 slices at 224² + 16 zoomed to 512² per scan).

- Primary network (DrCT1, V.A): frozen backbone per slice → pooled C-d vector (adaptive max pool)
  → feature attention (eq. 3) → BiGRU + Dense (eq. 4) → slice attention (eqs. 5-6) →
  Σ_t w_t ŷ_t → three FC layers (ReLU, dropout 0.5, sigmoid).
- APS network (V.B): top-mkey slices by slice attention, kept in anatomical order, zoomed
  S→aps_size bilinearly (eq. 8) → the same frozen backbone (eq. 9) → BatchNorm → FC → BiGRU +
  Dense → mean over the key slices → three FC layers.
- Knowledge fusion (V.C): primary feature + APS feature (same D) → three FC layers.
- DrCT1 "model fusion" (VI.A.3, Table 4): `hires_slices = (start, stop)` sends the sampled
  slices start..stop-1 (0-based positions on the m-slice stack; the paper's 16th–22nd of 32 =
  (15, 22)) through the backbone at `aps_size` (the APS zoom of eq. 8), the others at the
  primary size; the pooled vectors have the same width C, so the primary network is unchanged.
  Such a model outputs no highlight (its slices' feature maps differ in size).

The paper's "feature matrices" must be summed although the primary sees m slices and the APS
mkey; we read them as the per-scan D-vectors both networks feed their FC heads (the slice-
attention-weighted sum for the primary, the mean over key slices for the APS).

Parameter groups (top-level names, used for per-module learning rates and freezing):
`backbone`, `primary`, `aps`, `fusion`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

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
  gru_kernel: str = "auto"
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
    y = DependencyLearning(self.gru_hidden, self.seq_dim, self.seq_activation,
                           gru_kernel=self.gru_kernel, dtype=self.dtype,
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
  gru_kernel: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    # BatchNorm statistics in float32 whatever the compute dtype.
    f = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=jnp.float32,
                     param_dtype=self.param_dtype, name="bn")(f.astype(jnp.float32))
    f = nn.Dense(self.fc_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(f)
    y = DependencyLearning(self.gru_hidden, self.seq_dim, self.seq_activation,
                           gru_kernel=self.gru_kernel, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="dependencies")(f)
    feature = y.mean(axis=1)
    logits = Head(self.fc_widths, self.num_labels, self.dropout_rate, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="head")(feature, train=train)
    return {"feature": feature, "logits": logits}


def chunk_size(num_slices: int, shards: int, per_device: int) -> int:
  """Slices per device per backbone pass: the largest divisor of num_slices / shards that is
  at most `per_device` (so chunks tile every device's rows exactly); 0 = one pass."""
  if not isinstance(num_slices, int):   # a symbolic batch (jax.export): one pass
    return 0
  if per_device <= 0 or num_slices % shards or num_slices // shards <= per_device:
    return 0
  local = num_slices // shards
  return max(c for c in range(1, per_device + 1) if local % c == 0)


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
  gru_kernel: str = "auto"         # the BiGRU recurrence on NVIDIA GPUs: auto (Pallas) | xla
  fc_widths: Sequence[int] = (256, 128)
  dropout_rate: float = 0.5
  mkey: int = 16
  selection: str = "attention"
  aps_size: int = 512
  aps_source: str = "zoom"
  aps_fc_dim: int = 256
  hires_slices: Sequence[int] = ()   # (start, stop): these sampled slices at aps_size (Table 4)
  primary_size: int = 0          # with slice_preprocess: the primary input size (V.A: 224)
  backbone_chunk: int = 0        # slices per device per backbone pass; 0 = all at once
  data_shards: int = 1           # devices the batch is split over (the chunks follow them)
  slice_preprocess: Optional[Callable] = None   # (slices [n, H, W], size) → [n, s, s, 3]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _run_backbone(self, slices: jax.Array, prep: Callable[[jax.Array], jax.Array],
                    want_map: bool = True) -> tuple[jax.Array, Optional[jax.Array]]:
    """slices [N, ...] → (pooled [N, C], feature_map [N, h, w, C] or None): `prep` turns a
    chunk of slices into backbone images; `backbone_chunk` slices per pass (0: all at once)."""
    def one(mdl, chunk):
      out = mdl(prep(chunk).astype(self.dtype), train=False)
      return out["pooled"], (out["feature_map"] if want_map else None)

    n, d = slices.shape[0], max(1, int(self.data_shards))
    c = chunk_size(n, d, int(self.backbone_chunk))
    if c == 0:
      pooled, fmap = one(self.backbone, slices)
    else:
      # [N] = d device blocks of N/d slices → [N/(d·c), d, c]: pass k takes the k-th c slices
      # of every block, so each device only ever processes its own rows (no communication).
      rest = slices.shape[1:]
      chunks = jnp.swapaxes(slices.reshape((d, n // (d * c), c) + rest), 0, 1)
      chunks = chunks.reshape((n // (d * c), d * c) + rest)

      def body(mdl, carry, chunk):
        return carry, one(mdl, chunk)

      if not self.freeze_backbone:   # recompute each chunk in the backward pass
        body = nn.remat(body, prevent_cse=False)
      scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                     in_axes=0, out_axes=0)
      if not self.is_initializing():
        # The weights cast to the compute dtype once, before the loop, not once per chunk
        # (XLA keeps the cast of each layer inside the loop body otherwise).
        scan = nn.map_variables(scan, "params", trans_in_fn=self._compute_dtype_params)
      _, (pooled, fmap) = scan(self.backbone, None, chunks)

      def unchunk(a):
        a = a.reshape((n // (d * c), d, c) + a.shape[2:])
        return jnp.swapaxes(a, 0, 1).reshape((n,) + a.shape[3:])

      pooled = unchunk(pooled)
      fmap = unchunk(fmap) if want_map else None
    if self.freeze_backbone:
      pooled = jax.lax.stop_gradient(pooled)
      fmap = None if fmap is None else jax.lax.stop_gradient(fmap)
    return pooled, fmap

  def _compute_dtype_params(self, params: Any) -> Any:
    return jax.tree.map(
        lambda p: p.astype(self.dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)

  def _primary_prep(self, chunk: jax.Array) -> jax.Array:
    if self.slice_preprocess is None:
      return chunk
    return self.slice_preprocess(chunk, self.primary_size or None)

  def _aps_prep(self, chunk: jax.Array) -> jax.Array:
    """A chunk of key slices → the APS input, zoomed to aps_size (eq. 8), bilinear."""
    if self.slice_preprocess is not None:
      size = None if self.aps_source == "native" else (self.primary_size or None)
      chunk = self.slice_preprocess(chunk, size)
    if chunk.shape[1:3] != (self.aps_size, self.aps_size):
      chunk = jax.image.resize(chunk.astype(jnp.float32),
                               (chunk.shape[0], self.aps_size, self.aps_size, chunk.shape[-1]),
                               method="bilinear", precision=jax.lax.Precision.DEFAULT)
    return chunk

  def _features(self, images: jax.Array) -> tuple[jax.Array, Optional[jax.Array]]:
    """images (or raw slices) [B, k, …] → (pooled [B, k, C], feature_map [B, k, h, w, C];
    None with `hires_slices`)."""
    b, k = images.shape[:2]
    if self.hires_slices:
      lo, hi = self._hires_range(k)
      low = jnp.concatenate([images[:, :lo], images[:, hi:]], axis=1)
      high = images[:, lo:hi]
      p_low, _ = self._run_backbone(low.reshape((-1,) + low.shape[2:]), self._primary_prep,
                                    want_map=False)
      p_high, _ = self._run_backbone(high.reshape((-1,) + high.shape[2:]), self._aps_prep,
                                     want_map=False)
      p_low = p_low.reshape((b, k - (hi - lo)) + p_low.shape[1:])
      p_high = p_high.reshape((b, hi - lo) + p_high.shape[1:])
      return jnp.concatenate([p_low[:, :lo], p_high, p_low[:, lo:]], axis=1), None
    pooled, fmap = self._run_backbone(images.reshape((b * k,) + images.shape[2:]),
                                      self._primary_prep)
    return (pooled.reshape((b, k) + pooled.shape[1:]),
            fmap.reshape((b, k) + fmap.shape[1:]))

  def _hires_range(self, m: int) -> tuple[int, int]:
    lo, hi = (int(v) for v in self.hires_slices)
    if not 0 <= lo < hi <= m:
      raise ValueError(f"hires_slices={tuple(self.hires_slices)} must satisfy 0 <= start < "
                       f"stop <= m={m}")
    return lo, hi

  def backbone_features(self, images: jax.Array, aps_images: Optional[jax.Array] = None, *,
                        want_map: bool = True) -> dict[str, jax.Array]:
    """Per-slice frozen-backbone features for the feature store (`features=` of __call__).

    images [N, …] (the primary input, or raw slices with `slice_preprocess`) → {"pooled"
    [N, C], "feature_map" [N, h, w, C] (unless `want_map` is False)}; with `aps_images` (the
    APS source of the same slices: the same raw slices with `slice_preprocess`),
    "aps_pooled" [N, C] of those zoomed to aps_size. Every output row depends on its own slice
    only (per-slice backbone, per-slice zoom), so rows stored once equal the full model's.
    Call with `method=DrCT.backbone_features` and the full variables.
    """
    pooled, fmap = self._run_backbone(images, self._primary_prep, want_map)
    res = {"pooled": pooled}
    if want_map:
      res["feature_map"] = fmap
    if aps_images is not None:
      res["aps_pooled"], _ = self._run_backbone(aps_images, self._aps_prep, want_map=False)
    return res

  @nn.compact
  def __call__(self, x: Optional[jax.Array], *, native: Optional[jax.Array] = None,
               features: Optional[dict[str, jax.Array]] = None,
               train: bool = False) -> dict[str, jax.Array]:
    """x [B, m, S, S, 3] (or raw slices [B, m, H, W] with `slice_preprocess`), or `features`
    (a frozen backbone's stored per-slice outputs, see `backbone_features`): {"pooled"
    [B, m, C], optionally "feature_map" [B, m, h, w, C] (without it no "highlight" is
    output), and for DrCT2 "aps_pooled" [B, m, C] = the APS backbone output of every sampled
    slice, of which the key slices are gathered}. Both give the same outputs
    (tests/models/test_drct.py)."""
    if features is None:
      want = 4 if self.slice_preprocess is not None else 5
      assert x.ndim == want and (want == 4 or x.shape[-1] == 3), (
          "DrCT expects [B, m, S, S, 3] images (or [B, m, H, W] slices with "
          f"slice_preprocess), got {x.shape}")
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
      pooled, fmap = features["pooled"], features.get("feature_map")
      b, m = pooled.shape[:2]
      if self.hires_slices:   # model fusion: the stored APS-size vectors of those slices
        if "aps_pooled" not in features:
          raise ValueError("hires_slices on stored features needs their 'aps_pooled' rows")
        lo, hi = self._hires_range(m)
        hires = (jnp.arange(m) >= lo) & (jnp.arange(m) < hi)
        pooled = jnp.where(hires[None, :, None], features["aps_pooled"], pooled)
        fmap = None
    seq = dict(gru_hidden=self.gru_hidden, seq_dim=self.seq_dim, gru_kernel=self.gru_kernel,
               seq_activation=self.seq_activation, fc_widths=tuple(self.fc_widths),
               dropout_rate=self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype)
    primary = PrimaryNetwork(self.num_labels,
                             feature_attention_rescale=self.feature_attention_rescale,
                             feature_norm=self.feature_norm,
                             name="primary", **seq)(pooled, train=train)
    fw, sw = primary["feature_attention"], primary["slice_attention"]
    out = {"logits_primary": primary["logits"], "slice_attention": sw,
           "feature_attention": fw}
    if fmap is not None:
      # The "highlighted area" (Figure 2): the last conv block weighted by the slice's feature
      # attention, ReLU. Not normalised per slice, nor times the slice attention (a softmax
      # over the scan's own slices): its values compare across slices and scans, and the
      # report draws them against the run's fixed reference (ctjax.eval.highlight).
      out["highlight"] = nn.relu(jnp.einsum("bmhwc,bmc->bmhw", fmap.astype(jnp.float32), fw))
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
    idx = key_idx.reshape(key_idx.shape + (1,) * (src.ndim - 2))
    keys = jnp.take_along_axis(src, idx, axis=1)
    pooled, _ = self._run_backbone(keys.reshape((b * self.mkey,) + keys.shape[2:]),
                                   self._aps_prep, want_map=False)
    return pooled.reshape((b, self.mkey) + pooled.shape[1:])
