"""DrCT's frozen-backbone feature store: the backbone's per-slice outputs, computed once.

With the backbone frozen, a slice's pooled vector (primary input) and its APS vector (the same
slice zoomed to aps_size: a per-slice, deterministic operation) do not depend on training, so
DrCT's heads train on stored rows exactly (the model's `features=` path; equality with the
end-to-end model is tested). Enabled by `config.features.enabled`.

The store is a prepared, sharded stage beside the HU cache: `<cache>/features/<key>/`, one
feature shard per HU shard (same scans, same row order: scan i's slice k is row
`offset_i + k` of shard `shard_i`), each array a memory-mappable `.npy` per shard, in
`config.features.dtype` ("auto": bfloat16 on GPU/TPU, float32 on CPU; bfloat16 is stored as
its uint16 bit pattern). The key hashes what the rows depend on: the cache's manifest and
shard files, the backbone's parameter bytes and module settings, sizes, windows, dtypes and the
JAX backend. Feature maps (`feature_map`, for the report's highlight) are stored only with
`config.features.store_maps`; the report computes its own from the checkpoint's backbone.

Building (`build_store`) is data-parallel over every device of every process: each process
takes its own disjoint shards, feeds `config.features.chunk` slices per device per call
through one jitted, mesh-sharded program (global batches via the mesh), and writes each shard
atomically as soon as its rows are done — host memory O(chunk + shard), never O(data set);
a killed build resumes from the finished shards. Process 0 writes the manifest last.
Training reads rows from the mapped store through the same Grain pipeline (`FeatureData` →
`ctjax.data.pipeline`'s `features=`): no HU is read on that path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from ctjax import fileio
from ctjax.train.data_modules import WrappedData
from ctjax.errors import CTDataError

log = logging.getLogger(__name__)

STORE_DIR = "features"
STORE_VERSION = 2
# Batch keys of the store's arrays (what DrCT's `features=` path reads).
FEATURE_KEYS = ("feat_pooled", "feat_map", "feat_aps")
ARRAYS = {"pooled": "feat_pooled", "feature_map": "feat_map", "aps_pooled": "feat_aps"}


def enabled(config: ml_collections.ConfigDict) -> bool:
  features = config.get("features")
  return bool(features is not None and features.get("enabled", False))


def _option(config, name: str, default: Any) -> Any:
  features = config.get("features")
  return features.get(name, default) if features is not None else default


def chunk_per_device(config: ml_collections.ConfigDict) -> int:
  """Slices each device takes per call of the build (`config.features.chunk`)."""
  return max(1, int(_option(config, "chunk", 128)))


def store_dtype(config: ml_collections.ConfigDict) -> str:
  """"float32" | "bfloat16": `config.features.dtype` ("auto": bfloat16 on GPU/TPU)."""
  name = str(_option(config, "dtype", "auto"))
  if name == "auto":
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
  if name not in ("float32", "bfloat16"):
    from ctjax.errors import ConfigError
    raise ConfigError(f"config.features.dtype={name!r}; expected auto, float32 or bfloat16")
  return name


def _data_identity(scans: Any) -> dict[str, Any]:
  """What fixes the HU rows: the prepared cache's manifest.json (its bytes) and the size and
  mtime of its shard files (a rebuilt cache gets new ones)."""
  path = pathlib.Path(scans.path)
  out: dict[str, Any] = {"manifest_sha256": fileio.file_digest(path / "manifest.json")}
  shards = []
  for shard in scans.manifest.get("shards", []):
    st = (path / shard["file"]).stat()
    shards.append([shard["file"], st.st_size, st.st_mtime_ns])
  out["shards"] = shards
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


def store_key(config: ml_collections.ConfigDict, scans: Any, model: nn.Module,
              backbone_params: Any) -> tuple[str, dict[str, Any]]:
  """(hex key, the description it hashes) of everything the stored rows depend on.

  The rows cover every scan of the cache (all splits), so the split indices are not part of
  the key: another fold of the same data and backbone reuses them. The backbone is hashed by
  its parameter values (whichever file or seed they came from) plus the module's settings.
  """
  mc = config.model
  want_aps = bool(mc.aps)
  windows = config.data.get("windows", "rsna3")
  desc = {"version": STORE_VERSION,
          "data": _data_identity(scans),
          "backbone_sha256": _tree_sha256(backbone_params),
          "backbone_module": repr(getattr(model, "backbone", None)),
          "windows": windows if isinstance(windows, str) else [list(w) for w in windows],
          "primary_size": int(mc.primary_size),
          "aps": want_aps,
          "aps_size": int(getattr(model, "aps_size", mc.aps_size)) if want_aps else None,
          "aps_source": str(mc.aps_source) if want_aps else None,
          "model_dtype": str(getattr(model, "dtype", None)),
          "param_dtype": str(mc.param_dtype),
          "store_dtype": store_dtype(config),
          "store_maps": bool(_option(config, "store_maps", False)),
          # CPU and GPU convolutions round differently: rows from one are not the other's.
          "backend": jax.default_backend()}
  blob = json.dumps(desc, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:24], desc


def _to_storage(a: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "bfloat16":
    import ml_dtypes
    return np.asarray(a).astype(ml_dtypes.bfloat16).view(np.uint16)
  return np.asarray(a, np.float32)


def _from_storage(a: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == "bfloat16":
    import ml_dtypes
    return a.view(ml_dtypes.bfloat16)
  return a


def _shard_stem(path: pathlib.Path, index: int) -> pathlib.Path:
  return path / f"shard_{index:05d}"


def _shard_problem(path: pathlib.Path, index: int) -> Optional[str]:
  """Why shard `index` is not whole on disk: no done-marker, or a file of another size than
  the marker recorded (truncated or replaced); None when it is whole."""
  stem = _shard_stem(path, index)
  marker = stem.with_suffix(".done.json")
  try:
    sizes = json.loads(marker.read_text())["bytes"]
  except FileNotFoundError:
    return "not built"
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"{marker.name} unreadable ({type(e).__name__})"
  for name, want in sizes.items():
    f = stem.with_name(f"{stem.name}.{name}.npy")
    try:
      got = f.stat().st_size
    except FileNotFoundError:
      return f"{f.name} missing"
    if got != want:
      return f"{f.name}: {got} bytes, {want} expected (truncated or replaced)"
  return None


def _shard_done(path: pathlib.Path, index: int) -> bool:
  return _shard_problem(path, index) is None


def damaged_shards(path: pathlib.Path, num_shards: int) -> list[tuple[int, str]]:
  """(shard, what is wrong) for every shard of a finished store that is not whole on disk."""
  found = ((j, _shard_problem(path, j)) for j in range(num_shards))
  return [(j, why) for j, why in found if why is not None]


def _write_shard(path: pathlib.Path, index: int, arrays: Mapping[str, np.ndarray],
                 dtype: str) -> None:
  """Each array to a temporary name then renamed; the `.done.json` marker is written last, so
  a killed build never leaves a shard that looks finished."""
  stem = _shard_stem(path, index)
  sizes = {}
  for name, value in arrays.items():
    final = stem.with_name(f"{stem.name}.{name}.npy")
    tmp = stem.with_name(f"{stem.name}.{name}.tmp.npy")
    np.save(tmp, _to_storage(value, dtype))
    os.replace(tmp, final)
    sizes[name] = final.stat().st_size
  marker = stem.with_suffix(".tmp.json")
  marker.write_text(json.dumps({"index": index, "rows": int(len(next(iter(arrays.values())))),
                                "bytes": sizes}))
  os.replace(marker, stem.with_suffix(".done.json"))


class FeatureStore:
  """A complete store, memory-mapped per shard (lazily, per process)."""

  def __init__(self, path: str | os.PathLike, scans: Any):
    self.path = pathlib.Path(path)
    manifest = self.path / "manifest.json"
    if not manifest.is_file():
      raise CTDataError("no complete feature store here; it is built by `python -m "
                        "ctjax.train` (config.features.enabled)", manifest)
    self.manifest = json.loads(manifest.read_text())
    self.dtype = self.manifest["dtype"]
    self.names = tuple(self.manifest["arrays"])
    self.scans = scans
    self._maps: dict[tuple[int, str], np.ndarray] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_maps"] = {}      # memory maps are reopened in each worker process
    return state

  def array(self, shard: int, name: str) -> np.ndarray:
    key = (shard, name)
    arr = self._maps.get(key)
    if arr is None:
      file = _shard_stem(self.path, shard).with_name(f"shard_{shard:05d}.{name}.npy")
      try:
        arr = _from_storage(fileio.open_npy(file), self.dtype)
      except (OSError, ValueError) as e:
        raise CTDataError(f"unreadable feature shard ({e}); delete {self.path} to rebuild it",
                          file) from e
      self._maps[key] = arr
    return arr

  def rows(self, scan: int, slices: np.ndarray) -> dict[str, np.ndarray]:
    """{batch key: [len(slices), …]} of scan `scan` (an index into the cache's scans)."""
    meta = self.scans.scans[scan]
    idx = meta.offset + np.asarray(slices, np.int64)
    return {ARRAYS[name]: np.asarray(self.array(meta.shard, name)[idx]) for name in self.names}


def store_path(scans: Any, key: str) -> pathlib.Path:
  return pathlib.Path(scans.path) / STORE_DIR / key


def build_store(config: ml_collections.ConfigDict, scans: Any, model: nn.Module,
                variables: Mapping[str, Any], *, progress: Optional[bool] = None,
                build: bool = True) -> FeatureStore:
  """The complete store for (config, scans, backbone), built now where shards are missing
  (`build` False: a store that is not complete raises CacheNotPreparedError instead).

  Every process of the run must call this (it runs sharded over the global mesh). `scans` is
  the HU cache (`ctjax.data.cache.CachedScans`); `variables` the full DrCT variables (host).
  """
  from ctjax.train import parallel
  key, desc = store_key(config, scans, model, variables["params"]["backbone"])
  path = store_path(scans, key)
  num_shards = len(scans.manifest["shards"])
  if (path / "manifest.json").is_file():
    # Every process judges the same files before any of them writes (writes follow the
    # barrier below), so all take the same branch.
    damaged = damaged_shards(path, num_shards)
    if not damaged:
      log.info("feature store: reusing %s", path)
      return FeatureStore(path, scans)
  else:
    damaged = []
  if not build:
    from ctjax.errors import CacheNotPreparedError
    what = (f"feature store shard {damaged[0][0]}: {damaged[0][1]} ({len(damaged)} damaged "
            "shard(s))" if damaged else
            "no complete feature store of this run's backbone for this data")
    raise CacheNotPreparedError(f"{what}; training builds it (or pass --prepare to build it "
                                "now)", path)
  if progress is None:
    progress = bool(config.get("log", {}).get("progress_bar", True))
  dtype = store_dtype(config)
  path.mkdir(parents=True, exist_ok=True)
  parallel.barrier("ctjax_features_start")
  problems = [(j, _shard_problem(path, j)) for j in range(num_shards)]
  todo = [j for j, why in problems if why is not None]
  damaged = [(j, why) for j, why in problems if why not in (None, "not built")]
  if damaged:   # a done-marker whose files were cut or replaced since: built again
    log.warning("feature store %s: rebuilding %d damaged shard(s): %s", path, len(damaged),
                "; ".join(f"shard {j}: {why}" for j, why in damaged[:3]))
  pcount, pid = jax.process_count(), jax.process_index()
  rows = _shard_rows(scans)
  assigned = [todo[p::pcount] for p in range(pcount)]   # disjoint shards per process
  mesh = parallel.make_mesh(config)
  local_chunk = chunk_per_device(config) * len(mesh.local_devices)
  calls = max((-(-sum(rows[j] for j in a) // local_chunk) for a in assigned), default=0)
  log.info("feature store %s: %d of %d shards to build (%d slices), %d calls of %d slices "
           "per process", path, len(todo), num_shards, sum(rows[j] for j in todo), calls,
           local_chunk)
  if calls:
    params = parallel.put_replicated({"params": {"backbone": variables["params"]["backbone"]}},
                                     mesh)
    run = backbone_program(config, model, mesh)
    _build_local(run, params, scans, assigned[pid], rows, calls, local_chunk, mesh, path,
                 dtype, progress and pid == 0, sum(rows[j] for j in todo))
  parallel.barrier("ctjax_features_built")
  if pid == 0:
    manifest = {"version": STORE_VERSION, "complete": True, "key": key, "desc": desc,
                "dtype": dtype, "arrays": list(stored_arrays(config)),
                "shards": [{"index": j, "rows": rows[j]} for j in range(num_shards)]}
    tmp = path / "manifest.tmp.json"
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(tmp, path / "manifest.json")
  parallel.barrier("ctjax_features_manifest")
  return FeatureStore(path, scans)


def stored_arrays(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Names of the arrays a store of `config` holds per slice (keys of `ARRAYS`)."""
  return (("pooled",) + (("feature_map",) if _option(config, "store_maps", False) else ())
          + (("aps_pooled",) if config.model.aps else ()))


def backbone_program(config: ml_collections.ConfigDict, model: nn.Module, mesh: Any) -> Any:
  """The build's one jitted pass: ({"params": {"backbone": …}}, hu [n, H, W] int16 split on
  the mesh's data axis) → `DrCT.backbone_features` of those slices, `stored_arrays(config)`
  (one call = one chunk of `chunk_per_device(config)` slices per device)."""
  from ctjax.models.drct import DrCT
  from ctjax.train import parallel
  names = stored_arrays(config)
  want_aps, want_map = "aps_pooled" in names, "feature_map" in names
  bb = model.clone(backbone_chunk=0)
  return jax.jit(
      lambda p, hu: bb.apply(p, hu, hu if want_aps else None, want_map=want_map,
                             method=DrCT.backbone_features),
      in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
      out_shardings=parallel.data_sharding(mesh))


def _shard_rows(scans: Any) -> list[int]:
  rows = [0] * len(scans.manifest["shards"])
  for meta in scans.scans:
    rows[meta.shard] = max(rows[meta.shard], meta.offset + meta.num_slices)
  return rows


def _build_local(run, params, scans, shards, rows, calls, local_chunk, mesh, path, dtype,
                 show_bar: bool, total_slices: int) -> None:
  """This process's part: its shards' slices streamed in `local_chunk` windows (padded to
  the same number of calls on every process), each shard written when its rows are done."""
  from ctjax.train import parallel

  def stream():
    for j in shards:
      hu = scans.hu(j)
      for start in range(0, rows[j], local_chunk):
        yield j, start, np.asarray(hu[start:start + local_chunk])
      del hu
      scans.release(j)   # unmap the shard: resident memory stays O(shard), not O(data set)

  source = stream()
  pending: list[tuple[int, int, np.ndarray]] = []   # (shard, start, hu) not yet fed
  buffers: dict[int, dict[str, np.ndarray]] = {}
  filled: dict[int, int] = {}
  size = int(scans.image_size)
  bar = None
  if show_bar:
    from tqdm import tqdm
    bar = tqdm(total=total_slices, unit="slice", desc="feature store", dynamic_ncols=True)
  t0 = time.perf_counter()
  try:
    for _ in range(calls):
      parts, need = [], local_chunk
      while need > 0:
        if not pending:
          nxt = next(source, None)
          if nxt is None:
            break
          pending.append(nxt)
        j, start, hu = pending[0]
        take = hu[:need]
        parts.append((j, start, take))
        if len(take) < len(hu):
          pending[0] = (j, start + len(take), hu[len(take):])
        else:
          pending.pop(0)
        need -= len(take)
      fed = sum(len(t) for _, _, t in parts)
      chunk = np.zeros((local_chunk, size, size), np.int16)
      if fed:
        chunk[:fed] = np.concatenate([t for _, _, t in parts])
      out = run(params, parallel.host_to_global({"hu": chunk}, mesh)["hu"])
      local = {k: _local_rows(v) for k, v in out.items()}
      at = 0
      for j, start, take in parts:
        buf = buffers.setdefault(j, {k: np.empty((rows[j],) + v.shape[1:], v.dtype)
                                     for k, v in local.items()})
        for k, v in local.items():
          buf[k][start:start + len(take)] = v[at:at + len(take)]
        at += len(take)
        filled[j] = filled.get(j, 0) + len(take)
        if filled[j] == rows[j]:
          _write_shard(path, j, buffers.pop(j), dtype)
      if bar is not None:
        bar.update(fed * jax.process_count())
  finally:
    if bar is not None:
      bar.close()
  log.info("feature store: %d slices in %.1f s on this process", sum(rows[j] for j in shards),
           time.perf_counter() - t0)


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


class FeatureData(WrappedData):
  """The trainer's data module with stored backbone features in place of HU (DrCT only):
  the pipeline reads each example's rows from the memory-mapped store."""

  def __init__(self, inner: Any, store: FeatureStore):
    super().__init__(inner)
    self.store = store

  def train_iterator(self, config, splits, **kwargs):
    return self.inner.train_iterator(config, splits, features=self.store, **kwargs)

  def eval_batches(self, config, splits, split, **kwargs):
    return self.inner.eval_batches(config, splits, split, features=self.store, **kwargs)
