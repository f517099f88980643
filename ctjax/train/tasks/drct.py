"""The `drct` task: DrCT1 / DrCT2 on scan records (DrCT2 paper, sections V and VI.A.1).

On device, inside the jitted step: HU int16 [B, m, H, W] → `ctjax.models.drct.DrCT`, which
windows (`config.data.windows`, default "rsna3"), ImageNet-normalises and resizes the slices to
`config.model.primary_size` (224 in the paper) chunk by chunk inside its backbone pass
(`preprocess_slices`, `config.model.backbone_chunk` slices at a time). Losses (eq. 11): primary + APS + fusion, MSE /
MSE / BCE by default (Table 2's switch: `config.loss.{primary,aps,fusion}`), optional per-label
positive pretrained. Adam with per-module learning rates (VI.A.1: APS 3e-4, primary and fusion
5e-4) over the parameter groups `backbone`, `primary`, `aps`, `fusion` (`param_groups`, fed to
`ctjax.train.optim`); the frozen backbone is outside the optimizer (the trainer splits it off by
`trainable_mask`) and behind `stop_gradient` in the model. With `config.features.enabled` the
heads train on the frozen backbone's stored per-slice outputs (`ctjax.train.features`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ctjax.errors import ConfigError
from ctjax.models import compute_dtype
from ctjax.models.drct import APS_SOURCES, SELECTIONS, DrCT
from ctjax.train import features as features_lib
from ctjax.train.data_modules import WrappedData
from ctjax.train.tasks import Task

log = logging.getLogger(__name__)

LOSSES = ("mse", "bce")
GROUPS = ("backbone", "primary", "aps", "fusion")
# Module fields set from the config or by the task itself (not config.model keys).
_BUILT_FIELDS = ("backbone", "num_labels", "slice_preprocess", "data_shards", "parent", "name")


def _dtype(name: str):
  try:
    return compute_dtype(name)
  except TypeError as e:
    raise ConfigError(f"config.model dtype {name!r} is not a dtype (float32, bfloat16)") from e


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails at start with one clear line on inconsistent DrCT settings."""
  mc = config.model
  if not isinstance(mc.get("aps"), bool):
    raise ConfigError(f"config.model.aps={mc.get('aps')!r} must be True (DrCT2) or False "
                      "(DrCT1)")
  if mc.backbone != "vgg16":
    raise ConfigError(f"config.model.backbone={mc.backbone!r}; DrCT uses 'vgg16' (V.A)")
  if mc.selection not in SELECTIONS:
    raise ConfigError(f"config.model.selection={mc.selection!r}; expected one of {SELECTIONS}")
  if mc.aps_source not in APS_SOURCES:
    raise ConfigError(f"config.model.aps_source={mc.aps_source!r}; expected one of "
                      f"{APS_SOURCES}")
  m = config.data.num_slices
  if mc.aps and not 0 < mc.mkey <= m:
    raise ConfigError(f"config.model.mkey={mc.mkey} must be in [1, config.data.num_slices={m}]")
  hires = tuple(mc.get("hires_slices", ()) or ())
  if hires and (len(hires) != 2 or not 0 <= int(hires[0]) < int(hires[1]) <= m):
    raise ConfigError(f"config.model.hires_slices={hires} must be (start, stop) with "
                      f"0 <= start < stop <= config.data.num_slices={m} (Table 4's model "
                      "fusion: (15, 22) = the 16th-22nd sampled slices)")
  if mc.primary_size < 32 or mc.aps_size < 32:
    raise ConfigError(f"config.model.primary_size={mc.primary_size} and aps_size={mc.aps_size} "
                      "must be >= 32 (VGG16 halves the image 5 times)")
  for head in ("primary", "aps", "fusion"):
    if config.loss[head] not in LOSSES:
      raise ConfigError(f"config.loss.{head}={config.loss[head]!r}; expected one of {LOSSES}")
  from ctjax.data.windows import resolve_windows
  if len(resolve_windows(config.data.windows)) != 3:
    raise ConfigError(f"config.data.windows={config.data.windows!r} must give 3 windows "
                      "(the backbone takes RGB)")
  pw = tuple(config.loss.pos_weight)
  if pw and len(pw) != len(config.data.labels):
    raise ConfigError(f"config.loss.pos_weight has {len(pw)} values; expected one per label "
                      f"({len(config.data.labels)}) or none")
  if mc.feature_norm not in ("none", "batchnorm"):
    raise ConfigError(f"config.model.feature_norm={mc.feature_norm!r}; expected none|batchnorm")
  if mc.get("gru_kernel", "auto") not in ("auto", "xla"):
    raise ConfigError(f"config.model.gru_kernel={mc.gru_kernel!r}; expected auto|xla")
  if not 0.0 <= mc.dropout_rate < 1.0:
    raise ConfigError(f"config.model.dropout_rate={mc.dropout_rate} must be in [0, 1)")
  if features_lib.enabled(config):
    if not mc.freeze_backbone:
      raise ConfigError("config.features.enabled=True needs config.model.freeze_backbone=True "
                        "(stored backbone features are only exact for a frozen backbone)")
    aug = config.data.get("augment") or {}
    if float(aug.get("hflip", 0.0) or 0.0) > 0:
      raise ConfigError("config.features.enabled=True needs config.data.augment.hflip=0 "
                        "(flipped slices are not in the feature store)")


def preprocess_slices(hu: jax.Array, size: Optional[int], *, windows: Any) -> jax.Array:
  """HU slices [n, H, W] → windowed, ImageNet-normalised float32 [n, size, size, 3], resized
  bilinearly to `size` (None: native) — the model's per-chunk input (DrCT.slice_preprocess)."""
  from ctjax.data.windows import apply_windows, imagenet_normalize
  x = imagenet_normalize(apply_windows(hu, windows))
  if size and x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), method="bilinear",
                         precision=jax.lax.Precision.DEFAULT)
  return x


def slice_preprocess(config: ml_collections.ConfigDict):
  """`preprocess_slices` bound to the config's windows (a hashable, static model field)."""
  windows = config.data.windows
  if not isinstance(windows, str):
    windows = tuple(tuple(float(v) for v in w) for w in windows)
  return functools.partial(preprocess_slices, windows=windows)


def _per_example_loss(kind: str, logits: jax.Array, labels: jax.Array,
                      weights: jax.Array) -> jax.Array:
  """[B, L] logits, labels, weights → [B] (mean over labels)."""
  if kind == "mse":   # eq. (12) on the sigmoid outputs
    per = jnp.square(jax.nn.sigmoid(logits) - labels)
  else:               # eq. (13), computed from logits for stability
    per = optax.sigmoid_binary_cross_entropy(logits, labels)
  return (per * weights).mean(axis=-1)


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`DrCT`'s fields from `config.model` (same names), dtypes resolved."""
  mc = config.model
  fields = {f.name for f in dataclasses.fields(DrCT)} - set(_BUILT_FIELDS)
  kwargs = {k: mc[k] for k in fields if k in mc}
  kwargs["fc_widths"] = tuple(kwargs.get("fc_widths", ()))
  kwargs["hires_slices"] = tuple(int(v) for v in kwargs.get("hires_slices", ()) or ())
  kwargs["dtype"], kwargs["param_dtype"] = _dtype(mc.dtype), _dtype(mc.param_dtype)
  return kwargs


def init_model(model: nn.Module) -> nn.Module:
  """The model `init_variables` initialises: parameter shapes do not depend on the image size
  (pooled features), so 32 px images — a full-size VGG16 pass would cost seconds to minutes."""
  return model.clone(aps_size=32, primary_size=32) if isinstance(model, DrCT) else model


def init_input(config: ml_collections.ConfigDict) -> jax.Array:
  """The HU input of `init_model`: one scan of m 32 px slices."""
  return jnp.zeros((1, int(config.data.num_slices), 32, 32), jnp.int16)


class DrCTTask(Task):
  name = "drct"

  def validate_config(self, config: ml_collections.ConfigDict) -> None:
    """Called by the trainer before any data or model work: one clear line on bad values."""
    check_config(config)
    from ctjax.configs.drct import check_backbone_weights
    check_backbone_weights(config)

  def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    check_config(config)
    mc = config.model
    from ctjax.models.vgg import VGG16
    backbone = VGG16(width=mc.backbone_width, dtype=_dtype(mc.dtype),
                     param_dtype=_dtype(mc.param_dtype))
    from ctjax.train import parallel
    return DrCT(backbone=backbone, num_labels=len(config.data.labels),
                slice_preprocess=slice_preprocess(config),
                data_shards=parallel.mesh_size(config), **model_kwargs(config))

  def init_variables(self, model: nn.Module, config: ml_collections.ConfigDict,
                     rng: jax.Array) -> dict:
    p_rng, d_rng, a_rng = jax.random.split(rng, 3)
    return init_model(model).init({"params": p_rng, "dropout": d_rng, "aps": a_rng},
                                  init_input(config))

  def load_pretrained(self, config: ml_collections.ConfigDict,
                      variables: Mapping[str, Any]) -> Mapping[str, Any]:
    """The backbone from `config.model.backbone_weights` (host side, when a run starts)."""
    mc = config.model
    from ctjax.configs.drct import RANDOM_BACKBONE, check_backbone_weights
    check_backbone_weights(config)
    if mc.backbone_weights == RANDOM_BACKBONE or not mc.backbone_weights:
      log.info("config.model.backbone_weights=%r: the backbone keeps its random initialisation",
               mc.backbone_weights)
      return variables
    from ctjax.models import pretrained
    like = {"params": variables["params"]["backbone"]}
    loaded = pretrained.load_backbone_like(mc.backbone_weights, "vgg16", like,
                                        full_width=float(mc.backbone_width) == 1.0)
    out = dict(variables)
    out["params"] = {**dict(variables["params"]), "backbone": loaded["params"]}
    return out

  def param_groups(self, config: ml_collections.ConfigDict, params: Any) -> Any:
    for k in params:
      if k not in GROUPS:
        raise ConfigError(f"parameter group {k!r} has no learning rate ({GROUPS})")
    return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}

  def trainable_mask(self, config: ml_collections.ConfigDict, params: Any) -> Any:
    frozen = config.model.freeze_backbone
    return {k: jax.tree.map(lambda _: not (frozen and k == "backbone"), v)
            for k, v in params.items()}

  def _apply(self, model, variables, batch, config, *, train, rngs=None, mutable=False):
    if features_lib.FEATURE_KEYS[0] in batch:   # stored features: no backbone pass
      feats = {k: batch[f] for k, f in zip(("pooled", "feature_map", "aps_pooled"),
                                           features_lib.FEATURE_KEYS) if f in batch}
      return model.apply(variables, None, features=feats, train=train, rngs=rngs,
                         mutable=mutable)
    return model.apply(variables, batch["hu"], train=train, rngs=rngs, mutable=mutable)

  def wrap_data(self, config: ml_collections.ConfigDict, data: Any, splits: Any,
                model: nn.Module, variables: Mapping[str, Any], *, workdir: Any = None,
                build: bool = True) -> Any:
    """Host side, once the state exists: the data module whose evaluation batches carry the
    sampled slices' lesion boxes where the cache has them (`WithLesionBoxes`) and, with
    `config.features.enabled`, the frozen backbone's stored per-slice features instead of HU
    (the store is built beside the HU cache, sharded over every device of every process, when
    missing — `ctjax.train.features.build_store`; `build` False: a missing store raises
    CacheNotPreparedError instead)."""
    data = WithLesionBoxes(data, config)   # truth for the highlight's pointing game
    if not features_lib.enabled(config):
      return data
    mc = config.model
    store_config, aps_is_primary = config, False
    if has_hires_slices(config) and not mc.aps:
      # DrCT1 model fusion reads the APS-size vectors of its high-resolution slices: the store
      # of a DrCT2 with the same sizes (the same rows, so the same key and files).
      store_config = ml_collections.ConfigDict(config.to_dict())
      store_config.model.aps = True
    elif (mc.aps and mc.aps_source == "zoom" and int(mc.aps_size) == int(mc.primary_size)
          and not has_hires_slices(config)):
      # Table 4's DrCT2 "APS: 224×224": the zoom to the primary size is the identity, so each
      # slice's APS vector is its primary vector; the primary-only store (DrCT1's) serves both.
      store_config = ml_collections.ConfigDict(config.to_dict())
      store_config.model.aps = False
      aps_is_primary = True
    scans = splits["train"].scans
    store = None if store_config.model.aps else superset_store(store_config, scans, model,
                                                               variables)
    if store is None:
      store = features_lib.build_store(store_config, scans, model, variables, build=build)
    data = features_lib.FeatureData(data, store)
    if aps_is_primary:
      from ctjax.train.data_modules import MappedData
      data = MappedData(data, _aps_rows_from_primary)
    return data

  def loss_fn(self, model: nn.Module, params: Any, extra: Mapping[str, Any], batch,
              rng: jax.Array, config: ml_collections.ConfigDict, train: bool):
    d_rng, a_rng = jax.random.split(rng)
    variables = {"params": params, **extra}
    mutable = ["batch_stats"] if (train and "batch_stats" in extra) else False
    res = self._apply(model, variables, batch, config, train=train,
                      rngs={"dropout": d_rng, "aps": a_rng}, mutable=mutable)
    out, new_extra = (res if mutable else (res, extra))
    labels = batch["labels"].astype(jnp.float32)
    valid = batch["valid"].astype(jnp.float32) if "valid" in batch else jnp.ones(labels.shape[0])
    pw = tuple(config.loss.pos_weight)
    weights = jnp.ones_like(labels)
    if pw:
      weights = jnp.where(labels > 0.5, jnp.asarray(pw, jnp.float32), 1.0)
    denom = jnp.maximum(valid.sum(), 1.0)

    def head_loss(kind, logits):
      return (_per_example_loss(kind, logits, labels, weights) * valid).sum() / denom

    metrics = {"loss_primary": head_loss(config.loss.primary, out["logits_primary"])}
    loss = metrics["loss_primary"]
    if config.model.aps:
      metrics["loss_aps"] = head_loss(config.loss.aps, out["logits_aps"])
      metrics["loss_fusion"] = head_loss(config.loss.fusion, out["logits"])
      loss = loss + metrics["loss_aps"] + metrics["loss_fusion"]
    metrics["loss"] = loss
    pred = (out["logits"] > 0).astype(jnp.float32)
    metrics["accuracy"] = ((pred == labels).astype(jnp.float32).mean(-1) * valid).sum() / denom
    return loss, (metrics, dict(new_extra) if new_extra else {})

  def predict(self, model: nn.Module, variables: Mapping[str, Any], batch,
              config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """probs, probs_primary, slice/feature attention, highlight (raw: the model's units, drawn
    against the run's stored scale, ctjax.eval.highlight; absent on stored features without
    maps); DrCT2 also probs_aps and key_indices."""
    out = self._apply(model, variables, batch, config, train=False)
    res = {"probs": jax.nn.sigmoid(out["logits"]),
           "probs_primary": jax.nn.sigmoid(out["logits_primary"]),
           "slice_attention": out["slice_attention"].astype(jnp.float32),
           "feature_attention": out["feature_attention"].astype(jnp.float32)}
    if "highlight" in out:   # not on stored features without feature maps
      res["highlight"] = out["highlight"].astype(jnp.float32)
    if "logits_aps" in out:
      res["probs_aps"] = jax.nn.sigmoid(out["logits_aps"])
      res["key_indices"] = out["key_indices"].astype(jnp.int32)
    return res

  def summarize(self, outputs: Mapping[str, Any], config: ml_collections.ConfigDict
                ) -> dict[str, Any]:
    """Host side: the paper's metrics (macro-F1 first) + key-slice tasks where slice labels exist.

    `outputs`: concatenated `predict` outputs and batch fields (`labels`, `valid`, optionally
    `slice_labels`, `lesion_boxes`). Returns `multilabel_report`'s dict for the final
    prediction (`per_class`, `macro_f1`, …) plus flat `primary/…`, `aps/…`, `keyslice/…` and
    `highlight/…` scalars (`ctjax.eval.highlight.highlight_metrics`: key-slice sums on negative
    and positive scans, the pointing game where the data has lesion boxes).
    """
    from ctjax.eval.metrics import flatten_scalars, multilabel_report
    names = list(config.data.labels)
    labels = np.asarray(outputs["labels"])
    valid = np.asarray(outputs.get("valid", np.ones(labels.shape[0], bool)), bool)
    thr = config.evals.threshold
    report = multilabel_report(labels[valid], np.asarray(outputs["probs"])[valid], names, thr)
    for head in ("primary", "aps"):
      key = f"probs_{head}"
      if key in outputs and config.model.aps:
        sub = multilabel_report(labels[valid], np.asarray(outputs[key])[valid], names, thr)
        report.update({f"{head}/{k}": v for k, v in flatten_scalars(sub).items()
                       if k.startswith("macro_") or k == "micro_f1"})
    sl = outputs.get("slice_labels")
    if sl is not None and np.asarray(sl).size and "slice_attention" in outputs:
      from ctjax.eval.keyslice import key_slice_metrics
      report.update(key_slice_metrics(np.asarray(outputs["slice_attention"]), np.asarray(sl),
                                      names, valid=valid))
    if "highlight" in outputs and "slice_attention" in outputs:
      from ctjax.eval.highlight import highlight_metrics
      keep = {k: np.asarray(outputs[k])[valid] for k in
              ("highlight", "slice_attention", "labels", "lesion_boxes") if k in outputs}
      report.update(highlight_metrics(keep, image_size=int(config.data.image_size)))
    return report


# Store description fields that only say which APS rows a store holds besides the primary ones.
_APS_DESC = ("aps", "aps_size", "aps_source")


def superset_store(config: ml_collections.ConfigDict, scans: Any, model: nn.Module,
                   variables: Mapping[str, Any]) -> Optional[features_lib.FeatureStore]:
  """A complete store beside the cache holding every row a model without APS rows reads: its
  own, or a DrCT2 store of the same data, backbone and primary size (the same primary rows plus
  APS rows), so DrCT1 and Table 4's "APS 224" reuse the DrCT2 run's store. None: none yet."""
  key, desc = features_lib.store_key(config, scans, model, variables["params"]["backbone"])
  own = features_lib.store_path(scans, key)
  if (own / "manifest.json").is_file():
    return None   # build_store reuses it
  want = {k: v for k, v in desc.items() if k not in _APS_DESC}
  root = own.parent
  for manifest in sorted(root.glob("*/manifest.json")) if root.is_dir() else ():
    try:
      other = json.loads(manifest.read_text())
    except (OSError, ValueError):
      continue
    got = json.loads(json.dumps(other.get("desc", {}), default=str))
    if {k: v for k, v in got.items() if k not in _APS_DESC} == json.loads(
        json.dumps(want, default=str)) and other.get("complete") and not \
        features_lib.damaged_shards(manifest.parent, len(scans.manifest["shards"])):
      log.info("feature store: reusing %s (its primary rows are this model's)", manifest.parent)
      return features_lib.FeatureStore(manifest.parent, scans)
  return None


def _aps_rows_from_primary(batch: Mapping[str, Any], _source: Any) -> dict:
  return {**batch, features_lib.FEATURE_KEYS[2]: batch[features_lib.FEATURE_KEYS[0]]}


def has_hires_slices(config: ml_collections.ConfigDict) -> bool:
  """Table 4's DrCT1 model fusion: some sampled slices enter the backbone at aps_size."""
  return bool(tuple(config.model.get("hires_slices", ()) or ()))


class WithLesionBoxes(WrappedData):
  """A data module whose evaluation batches gain `lesion_boxes` float32 [B, m, K, 4]: the
  boxes (pixels of the cached image, -1 padded, K = config.data.max_boxes) on each sampled
  slice, when every scan of the split's cache has per-slice boxes (phantoms; blend). Training
  batches are unchanged."""

  def __init__(self, inner: Any, config: ml_collections.ConfigDict):
    from ctjax.data.cache import data_option
    super().__init__(inner)
    self._max_boxes = int(data_option(config, "max_boxes"))

  def eval_batches(self, config, splits, split, **kwargs):
    source = splits[split]
    scans = getattr(getattr(source, "scans", None), "scans", None)
    has = scans is not None and len(source) > 0 and all(
        scans[source[i]["scan"]].boxes is not None for i in range(len(source)))
    for batch in self.inner.eval_batches(config, splits, split, **kwargs):
      yield add_lesion_boxes(batch, source, self._max_boxes) if has else batch


def add_lesion_boxes(batch: Mapping[str, np.ndarray], source: Any, max_boxes: int) -> dict:
  """`batch` + `lesion_boxes` [B, m, max_boxes, 4] from `source` (a `CacheSource`)."""
  ex, idx = np.asarray(batch["example_index"]), np.asarray(batch["slice_index"])
  out = np.full(idx.shape + (max_boxes, 4), -1.0, np.float32)
  for b in range(idx.shape[0]):
    if ex[b] < 0:   # padding row
      continue
    meta = source.scans.scans[source[int(ex[b])]["scan"]]
    for j, k in enumerate(idx[b]):
      boxes = np.asarray(meta.boxes[int(k)], np.float32).reshape(-1, 4)[:max_boxes]
      out[b, j, :len(boxes)] = boxes
  return {**batch, "lesion_boxes": out}


TASK = DrCTTask()
