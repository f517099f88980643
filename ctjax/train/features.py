"""DrCT's frozen-backbone feature store: the backbone's per-slice outputs, computed once.

With the backbone frozen, a slice's pooled vector and feature map (primary input) and its APS
vector (the same slice zoomed to aps_size: a per-slice, deterministic operation) do not depend
on training, so DrCT's heads train on stored rows exactly (the model's `features=` path;
equality with the end-to-end model is tested). Enabled by `config.features.enabled`; stored as
`<workdir>/feature_cache/<key>.npz` and reused while `feature_cache_key` (data, backbone
weights, sizes, windows, dtype, backend) is unchanged, by later starts, other folds of the same
data and `python -m ctjax.evaluate`.
"""

from __future__ import annotations

import hashlib
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

log = logging.getLogger(__name__)

# Batch keys of the feature cache: pooled [B,m,C], feature map [B,m,h,w,C], APS pooled [B,m,C].
FEATURE_KEYS = ("feat_pooled", "feat_map", "feat_aps")


CACHE_DIR = "feature_cache"


def enabled(config: ml_collections.ConfigDict) -> bool:
  features = config.get("features")
  return bool(features is not None and features.get("enabled", False))
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
  want_aps = bool(mc.aps)
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
  want_aps = bool(mc.aps)
  native = want_aps and mc.aps_source == "native"
  from ctjax.models.drct import DrCT
  from ctjax.train.tasks.drct import preprocess
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


def add_features(batch: dict, source: Any, cache: Mapping[str, Any]) -> dict:
  """Replaces a DrCT batch's HU by the cached features of its (scan, slice) pairs."""
  ex = np.asarray(batch["example_index"]).astype(np.int64)
  scan = np.asarray(source.indices)[np.maximum(ex, 0)]
  rows = cache["offsets"][scan][:, None] + np.asarray(batch["slice_index"], np.int64)
  out = {k: v for k, v in batch.items() if k != "hu"}
  for key, name in zip(FEATURE_KEYS, ("pooled", "feature_map", "aps_pooled")):
    if name in cache:
      out[key] = cache[name][rows]
  return out


def feature_data(data: Any, cache: Mapping[str, Any]) -> Any:
  """`data` with each batch's HU replaced by the stored features of its (scan, slice) pairs."""
  from ctjax.data.pipeline import MappedData
  return MappedData(data, lambda batch, source: add_features(batch, source, cache))
