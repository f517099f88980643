"""The `drct` task: DrCT1 / DrCT2 on scan records (DrCT2 paper, sections V and VI.A.1).

On device, inside the jitted step: HU int16 [B, m, H, W] → windows (`config.data.windows`,
default "rsna3") → ImageNet normalisation → bilinear resize to `config.model.primary_size`
(224 in the paper) → `ctjax.models.drct.DrCT`. Losses (eq. 11): primary + APS + fusion, MSE /
MSE / BCE by default (Table 2's switch: `config.loss.{primary,aps,fusion}`), optional per-label
positive weights. Adam with per-module learning rates (VI.A.1: APS 3e-4, primary and fusion
5e-4) through `optax.multi_transform`; the frozen backbone is outside the optimizer (the trainer
splits it off by `trainable_mask`) and behind `stop_gradient` in the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import tempfile
import zipfile
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ctjax.errors import ConfigError, WeightsError
from ctjax.models.drct import APS_SOURCES, SELECTIONS, DrCT

log = logging.getLogger(__name__)

LOSSES = ("mse", "bce")
GROUPS = ("backbone", "primary", "aps", "fusion")
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def _dtype(name: str):
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise ConfigError(f"config.model dtype {name!r} is not a dtype (float32, bfloat16)") from e


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails at start with one clear line on inconsistent DrCT settings."""
  mc = config.model
  if mc.variant not in ("drct1", "drct2"):
    raise ConfigError(f"config.model.variant={mc.variant!r}; expected 'drct1' or 'drct2'")
  if mc.selection not in SELECTIONS:
    raise ConfigError(f"config.model.selection={mc.selection!r}; expected one of {SELECTIONS}")
  if mc.aps_source not in APS_SOURCES:
    raise ConfigError(f"config.model.aps_source={mc.aps_source!r}; expected one of "
                      f"{APS_SOURCES}")
  m = config.data.num_slices
  if mc.variant == "drct2" and not 0 < mc.mkey <= m:
    raise ConfigError(f"config.model.mkey={mc.mkey} must be in [1, config.data.num_slices={m}]")
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
  if not 0.0 <= mc.dropout < 1.0:
    raise ConfigError(f"config.model.dropout={mc.dropout} must be in [0, 1)")
  if mc.get("feature_cache", False):
    if not mc.freeze_backbone:
      raise ConfigError("config.model.feature_cache=True needs config.model.freeze_backbone=True "
                        "(cached backbone features are only exact for a frozen backbone)")
    aug = config.data.get("augment") or {}
    if float(aug.get("hflip", 0.0) or 0.0) > 0:
      raise ConfigError("config.model.feature_cache=True needs config.data.augment.hflip=0 "
                        "(flipped slices are not in the feature cache)")


def preprocess(hu: jax.Array, config: ml_collections.ConfigDict, size: int) -> jax.Array:
  """HU [B, m, H, W] → windowed, ImageNet-normalised float32 [B, m, size, size, 3] (jit-able)."""
  from ctjax.data.windows import apply_windows, imagenet_normalize
  x = imagenet_normalize(apply_windows(hu, config.data.windows))
  if x.shape[2:4] != (size, size):
    x = jax.image.resize(x, x.shape[:2] + (size, size, x.shape[-1]), method="bilinear")
  return x


def _model_inputs(batch, config):
  x = preprocess(batch["hu"], config, config.model.primary_size)
  native = None
  if config.model.variant == "drct2" and config.model.aps_source == "native":
    native = preprocess(batch["hu"], config, batch["hu"].shape[-1])
  return x, native


def _per_example_loss(kind: str, logits: jax.Array, labels: jax.Array,
                      weights: jax.Array) -> jax.Array:
  """[B, L] logits, labels, weights → [B] (mean over labels)."""
  if kind == "mse":   # eq. (12) on the sigmoid outputs
    per = jnp.square(jax.nn.sigmoid(logits) - labels)
  else:               # eq. (13), computed from logits for stability
    per = optax.sigmoid_binary_cross_entropy(logits, labels)
  return (per * weights).mean(axis=-1)


def resolve_path(path: str) -> pathlib.Path:
  """A relative path as given if it exists from the working directory, else from the repo."""
  p = pathlib.Path(path)
  if not p.is_absolute() and not p.exists() and (_REPO_ROOT / p).exists():
    return _REPO_ROOT / p
  return p


def ensure_backbone_weights(config: ml_collections.ConfigDict) -> None:
  """Runs `config.model.backbone_pretrain_config` once when `backbone_weights` is missing.

  The phantom configs' stand-in for ImageNet weights: the pretraining config exports the
  backbone to the same path (host side, before the DrCT model is built).
  """
  mc = config.model
  path, pre = mc.backbone_weights, mc.get("backbone_pretrain_config", "")
  if not path or resolve_path(path).exists():
    return
  if not pre:
    raise WeightsError(f"{path}: backbone weights not found; run `python -m ctjax.weights "
                       "convert …` or set config.model.backbone_pretrain_config")
  from ctjax.train.loop import train_and_evaluate

  spec_path = resolve_path(pre)
  spec = importlib.util.spec_from_file_location("_ctjax_pretrain_config", spec_path)
  if spec is None or spec.loader is None or not spec_path.exists():
    raise ConfigError(f"config.model.backbone_pretrain_config={pre!r}: no such config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  pconfig = module.get_config(None)
  export = resolve_path(pconfig.pretrain.export_path)
  want = resolve_path(path)
  if export.resolve() != want.resolve():
    raise ConfigError(f"{pre} exports {export}, but config.model.backbone_weights is {path}")
  workdir = pathlib.Path(os.environ.get("CTJAX_PRETRAIN_WORKDIR", "runs/pretrain_phantom"))
  log.warning("%s is missing: pretraining the backbone first (%s → %s)", path, pre, workdir)
  train_and_evaluate(pconfig, workdir)
  if not want.exists():
    raise WeightsError(f"{path}: pretraining in {workdir} did not write the weights file")


class DrCTTask:
  name = "drct"

  def validate_config(self, config: ml_collections.ConfigDict) -> None:
    """Called by the trainer before any data or model work: one clear line on bad values."""
    check_config(config)

  def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    check_config(config)
    ensure_backbone_weights(config)
    mc = config.model
    dtype, param_dtype = _dtype(mc.dtype), _dtype(mc.param_dtype)
    if mc.backbone != "vgg16":
      raise ConfigError(f"config.model.backbone={mc.backbone!r}; DrCT uses 'vgg16' (V.A)")
    from ctjax.models.vgg import VGG16
    backbone = VGG16(width=mc.backbone_width, dtype=dtype, param_dtype=param_dtype)
    return DrCT(backbone=backbone, num_labels=len(config.data.labels),
                aps=mc.variant == "drct2", freeze_backbone=mc.freeze_backbone,
                feature_attention_rescale=mc.feature_attention_rescale,
                feature_norm=mc.feature_norm,
                gru_hidden=mc.gru_hidden, seq_dim=mc.seq_dim, seq_activation=mc.seq_activation,
                fc_widths=tuple(mc.fc_widths), dropout_rate=mc.dropout, mkey=mc.mkey,
                selection=mc.selection, aps_size=mc.aps_size, aps_source=mc.aps_source,
                aps_fc_dim=mc.aps_fc_dim, dtype=dtype, param_dtype=param_dtype)

  def init_variables(self, model: nn.Module, config: ml_collections.ConfigDict,
                     rng: jax.Array) -> dict:
    # Parameter shapes do not depend on the image size (pooled features), so initialise on
    # 32 px images: a full-size forward pass of a VGG16 would cost seconds to minutes on CPU.
    m = config.data.num_slices
    small = model.clone(aps_size=32) if isinstance(model, DrCT) else model
    x = jnp.zeros((1, m, 32, 32, 3), jnp.float32)
    p_rng, d_rng, a_rng = jax.random.split(rng, 3)
    variables = jax.jit(lambda r: small.init({"params": r, "dropout": d_rng, "aps": a_rng}, x)
                        )(p_rng)
    variables = jax.tree.map(lambda a: a, dict(variables))   # plain, mutable dicts
    variables["params"] = dict(variables["params"])
    path = config.model.backbone_weights
    if path:
      variables["params"]["backbone"] = self._load_backbone(
          path, variables["params"]["backbone"], config.model.backbone_width == 1.0)
    elif config.model.freeze_backbone:
      log.warning("config.model.backbone_weights is empty: the frozen backbone stays random")
    return variables

  def _load_backbone(self, path: str, like: Any, full_width: bool) -> Any:
    p = resolve_path(path)
    from ctjax.models import weights
    if not p.exists():
      raise WeightsError(f"{p}: backbone weights not found")
    # Full-width files may be torchvision state dicts (converted on load); reduced-width ones
    # (the phantom pretraining) are ctjax .npz variables, shape-checked below.
    loaded = (weights.load_backbone(os.fspath(p), "vgg16") if full_width
              else weights.load_variables(os.fspath(p)))
    params = loaded["params"] if "params" in loaded else loaded
    want = jax.tree.map(np.shape, like)
    got = jax.tree.map(np.shape, params)
    if want != got:
      raise WeightsError(f"{p}: backbone weights do not match config.model.backbone_width "
                         f"(shapes {got} vs {want})")
    return jax.tree.map(jnp.asarray, params)

  def trainable_mask(self, config: ml_collections.ConfigDict, params: Any) -> Any:
    frozen = config.model.freeze_backbone
    return {k: jax.tree.map(lambda _: not (frozen and k == "backbone"), v)
            for k, v in params.items()}

  def make_optimizer(self, config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
    oc = config.optimizer
    total = max(1, config.train.num_epochs * steps_per_epoch)
    if config.train.max_steps > 0:
      total = min(total, config.train.max_steps)
    warmup = int(oc.warmup_epochs * steps_per_epoch)

    def schedule(lr: float):
      if oc.schedule == "constant":
        return optax.constant_schedule(lr) if warmup == 0 else optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
      if oc.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1),
                                                  end_value=lr * oc.final_lr_fraction)
      raise ConfigError(f"config.optimizer.schedule={oc.schedule!r}; expected constant|cosine")

    def adam(lr: float):
      chain = []
      if oc.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(oc.grad_clip))
      chain.append(optax.adam(schedule(lr), b1=oc.b1, b2=oc.b2))
      if oc.weight_decay > 0:
        chain.insert(len(chain) - 1, optax.add_decayed_weights(oc.weight_decay))
      return optax.chain(*chain)

    transforms = {"primary": adam(oc.lr_primary), "aps": adam(oc.lr_aps),
                  "fusion": adam(oc.lr_fusion), "backbone": adam(oc.lr_backbone)}

    def labels(params):
      for k in params:
        if k not in GROUPS:
          raise ConfigError(f"parameter group {k!r} has no learning rate ({GROUPS})")
      return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}

    return optax.multi_transform(transforms, labels)

  def _apply(self, model, variables, batch, config, *, train, rngs=None, mutable=False):
    if FEATURE_KEYS[0] in batch:   # the feature cache (FeatureCacheData): no backbone pass
      feats = {k: batch[f] for k, f in zip(("pooled", "feature_map", "aps_pooled"), FEATURE_KEYS)
               if f in batch}
      return model.apply(variables, None, features=feats, train=train, rngs=rngs,
                         mutable=mutable)
    x, native = _model_inputs(batch, config)
    return model.apply(variables, x, native=native, train=train, rngs=rngs, mutable=mutable)

  def wrap_data(self, config: ml_collections.ConfigDict, data: Any, splits: Any,
                model: nn.Module, variables: Mapping[str, Any],
                workdir: Optional[str | os.PathLike] = None) -> Any:
    """Host side, called by the trainer once the state exists: with
    `config.model.feature_cache`, the data module whose batches carry the frozen backbone's
    per-slice features instead of HU (`FeatureCacheData`); otherwise `data` unchanged.
    With `workdir`, the features are kept in `<workdir>/feature_cache/` and reused by later
    starts and by `python -m ctjax.evaluate` (see `build_feature_cache`)."""
    if not config.model.get("feature_cache", False):
      return data
    cache_dir = None if workdir is None else pathlib.Path(workdir) / FEATURE_CACHE_DIR
    return FeatureCacheData(data, build_feature_cache(config, splits, model, variables,
                                                      cache_dir=cache_dir))

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
    if config.model.variant == "drct2":
      metrics["loss_aps"] = head_loss(config.loss.aps, out["logits_aps"])
      metrics["loss_fusion"] = head_loss(config.loss.fusion, out["logits"])
      loss = loss + metrics["loss_aps"] + metrics["loss_fusion"]
    metrics["loss"] = loss
    pred = (out["logits"] > 0).astype(jnp.float32)
    metrics["accuracy"] = ((pred == labels).astype(jnp.float32).mean(-1) * valid).sum() / denom
    return loss, (metrics, dict(new_extra) if new_extra else {})

  def predict(self, model: nn.Module, variables: Mapping[str, Any], batch,
              config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """BRIEF interface 4: probs, probs_primary, probs_aps, slice/feature attention, highlight,
    key_indices (the last two DrCT2 only)."""
    out = self._apply(model, variables, batch, config, train=False)
    res = {"probs": jax.nn.sigmoid(out["logits"]),
           "probs_primary": jax.nn.sigmoid(out["logits_primary"]),
           "slice_attention": out["slice_attention"].astype(jnp.float32),
           "feature_attention": out["feature_attention"].astype(jnp.float32),
           "highlight": out["highlight"].astype(jnp.float32)}
    if "logits_aps" in out:
      res["probs_aps"] = jax.nn.sigmoid(out["logits_aps"])
      res["key_indices"] = out["key_indices"].astype(jnp.int32)
    return res

  def summarize(self, outputs: Mapping[str, Any], config: ml_collections.ConfigDict
                ) -> dict[str, Any]:
    """Host side: the paper's metrics (macro-F1 first) + key-slice tasks where slice labels exist.

    `outputs`: concatenated `predict` outputs and batch fields (`labels`, `valid`, optionally
    `slice_labels`). Returns `multilabel_report`'s dict for the final prediction (`per_class`,
    `macro_f1`, …) plus flat `primary/…`, `aps/…` and `keyslice/…` scalars.
    """
    from ctjax.eval.metrics import flatten_scalars, multilabel_report
    names = list(config.data.labels)
    labels = np.asarray(outputs["labels"])
    valid = np.asarray(outputs.get("valid", np.ones(labels.shape[0], bool)), bool)
    thr = config.evals.threshold
    report = multilabel_report(labels[valid], np.asarray(outputs["probs"])[valid], names, thr)
    for head in ("primary", "aps"):
      key = f"probs_{head}"
      if key in outputs and config.model.variant == "drct2":
        sub = multilabel_report(labels[valid], np.asarray(outputs[key])[valid], names, thr)
        report.update({f"{head}/{k}": v for k, v in flatten_scalars(sub).items()
                       if k.startswith("macro_") or k == "micro_f1"})
    sl = outputs.get("slice_labels")
    if sl is not None and np.asarray(sl).size and "slice_attention" in outputs:
      from ctjax.eval.keyslice import key_slice_metrics
      report.update(key_slice_metrics(np.asarray(outputs["slice_attention"]), np.asarray(sl),
                                      names, valid=valid))
    return report


# Batch keys of the feature cache: pooled [B,m,C], feature map [B,m,h,w,C], APS pooled [B,m,C].
FEATURE_KEYS = ("feat_pooled", "feat_map", "feat_aps")


FEATURE_CACHE_DIR = "feature_cache"
_FEATURE_CACHE_VERSION = 1


def _sha256_file(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _data_identity(scans: Any) -> dict[str, Any]:
  """What fixes the HU rows: a prepared cache's manifest.json (its bytes) and the size and
  mtime of its shard files (a rebuilt cache gets new ones); without a manifest (in-memory
  stand-ins), the HU bytes themselves."""
  counts = [int(s.num_slices) for s in scans.scans]
  out: dict[str, Any] = {"num_slices": counts,
                         "scan_ids": [str(getattr(s, "scan_id", "")) for s in scans.scans]}
  path = getattr(scans, "path", None)
  manifest = None if path is None else pathlib.Path(path) / "manifest.json"
  if manifest is not None and manifest.is_file():
    out["manifest_sha256"] = _sha256_file(manifest)
    shards = []
    for shard in json.loads(manifest.read_text()).get("shards", []):
      st = (pathlib.Path(path) / shard["file"]).stat()
      shards.append([shard["file"], st.st_size, st.st_mtime_ns])
    out["shards"] = shards
  else:
    h = hashlib.sha256()
    for i in range(len(scans.scans)):
      hu = np.ascontiguousarray(scans.scan_hu(i))
      h.update(f"{hu.dtype}{hu.shape}".encode())
      h.update(hu.tobytes())
    out["hu_sha256"] = h.hexdigest()
  return out


def _tree_sha256(tree: Any) -> str:
  """Hash of a parameter tree's paths, shapes, dtypes and bytes (the weights actually used)."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def feature_cache_key(config: ml_collections.ConfigDict, scans: Any, model: nn.Module,
                      backbone_params: Any) -> tuple[str, dict[str, Any]]:
  """(hex key, the description it hashes) of everything the cached rows depend on.

  The rows cover every scan of the cache (all splits), so the split indices are not part of
  the key: another fold of the same data and backbone reuses them. The backbone is hashed by
  its parameter values (whichever file or seed they came from) plus the module's settings
  (width, dtypes), and the JAX backend that computed the rows.
  """
  mc = config.model
  want_aps = mc.variant == "drct2"
  windows = config.data.get("windows", "rsna3")
  desc = {"version": _FEATURE_CACHE_VERSION,
          "data": _data_identity(scans),
          "backbone_sha256": _tree_sha256(backbone_params),
          "backbone_module": repr(getattr(model, "backbone", None)),
          "backbone_weights": str(mc.get("backbone_weights", "")),
          "backbone_width": float(mc.backbone_width),
          "windows": windows if isinstance(windows, str) else [list(w) for w in windows],
          "primary_size": int(mc.primary_size),
          "aps": want_aps,
          "aps_size": int(getattr(model, "aps_size", mc.aps_size)) if want_aps else None,
          "aps_source": str(mc.aps_source) if want_aps else None,
          "dtype": str(mc.dtype), "param_dtype": str(mc.param_dtype),
          "model_dtype": str(getattr(model, "dtype", None)),
          # CPU and GPU convolutions round differently: rows from one are not the other's.
          "backend": jax.default_backend()}
  blob = json.dumps(desc, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:24], desc


def _load_feature_cache(path: pathlib.Path, desc: Mapping[str, Any]
                        ) -> Optional[dict[str, np.ndarray]]:
  """The stored arrays if `path` holds a complete file written for `desc`, else None."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      stored = json.loads(str(f["__key__"]))
      if stored != json.loads(json.dumps(desc, sort_keys=True, default=str)):
        log.warning("feature cache %s was written for other inputs; recomputing", path)
        return None
      return {k: np.asarray(f[k]) for k in f.files if k != "__key__"}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:   # never trusted
    log.warning("feature cache %s is unreadable (%s); recomputing", path, e)
    return None


def _save_feature_cache(path: pathlib.Path, cache: Mapping[str, np.ndarray],
                        desc: Mapping[str, Any]) -> None:
  """Writes to a private temporary file in the same folder, then renames it over `path`: a
  run killed mid-write leaves only a `.tmp` file, never a partial `<key>.npz`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, __key__=np.asarray(json.dumps(desc, sort_keys=True, default=str)), **cache)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)   # mkstemp's 0600 would hide the cache from other users of the run
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def build_feature_cache(config: ml_collections.ConfigDict, splits: Any, model: nn.Module,
                        variables: Mapping[str, Any], chunk: int = 128,
                        cache_dir: Optional[str | os.PathLike] = None) -> dict[str, Any]:
  """Host side: the frozen backbone's outputs for every slice of every cached scan, once.

  With the backbone frozen, a slice's pooled vector and feature map (primary input) and its
  APS vector (the same slice zoomed to aps_size: a per-slice, deterministic operation) do not
  depend on training, so DrCT's heads can be trained on these rows exactly (the model's
  `features=` path; equality with the full model is tested). Returns {"offsets" int64 [scans],
  "pooled", "feature_map", "aps_pooled" (DrCT2) float32 [rows, ...]}.

  With `cache_dir` (the trainer passes `<workdir>/feature_cache`), the arrays are stored as
  `<cache_dir>/<key>.npz` and reused while `feature_cache_key` (data, backbone weights, sizes,
  windows, dtype) is unchanged; any change gives a new key and a recomputation.
  """
  scans = splits["train"].scans   # every split's CacheSource shares the CachedScans
  path = None
  if cache_dir is not None:
    key, desc = feature_cache_key(config, scans, model, variables["params"]["backbone"])
    path = pathlib.Path(cache_dir) / f"{key}.npz"
    stored = _load_feature_cache(path, desc)
    if stored is not None:
      log.info("feature cache: reusing %s (%d slices)", path, len(stored["pooled"]))
      return stored
  cache = _compute_feature_cache(config, scans, model, variables, chunk)
  if path is not None:
    _save_feature_cache(path, cache, desc)
    log.info("feature cache: stored in %s", path)
  return cache


def _compute_feature_cache(config: ml_collections.ConfigDict, scans: Any, model: nn.Module,
                           variables: Mapping[str, Any], chunk: int) -> dict[str, Any]:
  """The backbone pass over all slices, `chunk` slices per call (one compiled shape)."""
  mc = config.model
  want_aps = mc.variant == "drct2"
  native = want_aps and mc.aps_source == "native"
  from ctjax.models.drct import DrCT
  params = {"params": {"backbone": variables["params"]["backbone"]}}

  @jax.jit
  def run(hu):
    x = preprocess(hu[None], config, mc.primary_size)[0]
    aps_src = None
    if want_aps:
      aps_src = preprocess(hu[None], config, hu.shape[-1])[0] if native else x
    return model.apply(params, x, aps_src, method=DrCT.backbone_features)

  counts = np.asarray([s.num_slices for s in scans.scans], np.int64)
  offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
  total = int(counts.sum())
  out: dict[str, list] = {}
  rows = [np.asarray(scans.scan_hu(i)) for i in range(len(scans.scans))]
  flat = np.concatenate(rows) if rows else np.zeros((0, 1, 1), np.int16)
  for start in range(0, total, chunk):
    part = flat[start:start + chunk]
    n = len(part)
    if n < chunk:   # one compiled shape
      part = np.concatenate([part, np.zeros((chunk - n,) + part.shape[1:], part.dtype)])
    res = jax.device_get(run(jnp.asarray(part)))
    for k, v in res.items():
      out.setdefault(k, []).append(np.asarray(v, np.float32)[:n])
  cache = {k: np.concatenate(v) for k, v in out.items()}
  cache["offsets"] = offsets
  log.info("feature cache: %d slices of %d scans (%s)", total, len(counts),
           ", ".join(f"{k} {v.shape[1:]}" for k, v in cache.items() if k != "offsets"))
  return cache


def _add_features(batch: dict, source: Any, cache: Mapping[str, Any]) -> dict:
  """Replaces a DrCT batch's HU by the cached features of its (scan, slice) pairs."""
  ex = np.asarray(batch["example_index"]).astype(np.int64)
  scan = np.asarray(source.indices)[np.maximum(ex, 0)]
  rows = cache["offsets"][scan][:, None] + np.asarray(batch["slice_index"], np.int64)
  out = {k: v for k, v in batch.items() if k != "hu"}
  for key, name in zip(FEATURE_KEYS, ("pooled", "feature_map", "aps_pooled")):
    if name in cache:
      out[key] = cache[name][rows]
  return out


class _FeatureIterator:
  """Wraps the pipeline's train iterator (same order, same checkpointable state)."""

  def __init__(self, inner: Any, source: Any, cache: Mapping[str, Any]):
    self._inner, self._source, self._cache = inner, source, cache

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return _add_features(next(self._inner), self._source, self._cache)

  def get_state(self) -> bytes:   # bytes: grain's checkpoint handler for non-Grain iterators
    state = self._inner.get_state()
    return state if isinstance(state, bytes) else json.dumps(state).encode()

  def set_state(self, state: bytes) -> None:
    try:
      self._inner.set_state(json.loads(state))
    except (TypeError, ValueError, AttributeError):
      self._inner.set_state(state)

  def start_prefetch(self) -> None:
    if hasattr(self._inner, "start_prefetch"):
      self._inner.start_prefetch()


class FeatureCacheData:
  """The trainer's data module with cached backbone features in place of HU (DrCT only)."""

  def __init__(self, inner: Any, cache: Mapping[str, Any]):
    self._inner, self.cache = inner, cache

  def __getattr__(self, name: str) -> Any:   # build_splits, steps_per_epoch, …
    return getattr(self._inner, name)

  def train_iterator(self, config, splits, **kwargs):
    return _FeatureIterator(self._inner.train_iterator(config, splits, **kwargs),
                            splits["train"], self.cache)

  def eval_batches(self, config, splits, split, **kwargs):
    for batch in self._inner.eval_batches(config, splits, split, **kwargs):
      yield _add_features(batch, splits[split], self.cache)


TASK = DrCTTask()
