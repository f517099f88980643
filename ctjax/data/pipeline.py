"""Grain pipelines over the prepared cache → local numpy batches.

    splits = build_splits(config, workdir)          # generates phantoms / prepares the cache
    it = train_iterator(config, splits, seed=config.seed)   # endless; it.get_state()/set_state()
    for batch in eval_batches(config, splits, "val"): ...   # one pass, last batch padded

Config fields read (defaults used when a field is absent; `ctjax.configs.common.base_config`
holds most):
  data.layout ("phantom"), data.root (""), data.cache_dir (""), data.image_size (256),
  data.num_slices (28; DrCT scans are sampled to this many slices), data.windows ("rsna3";
  recorded in `Splits.info`, applied on device by the task), data.num_folds (5), data.fold (0),
  data.split_seed (0), data.stratify (False: patients dealt round-robin; True: folds also
  stratified over the scan labels, `ctjax.data.stratify`), data.labels (optional: must equal the data set's label names and order,
  checked for drct/pretrain), data.num_workers (0: in-process; >0: Grain `mp_prefetch` worker processes,
  also the `prepare` process count), data.prefetch (2: batches buffered per worker / prefetch
  thread), data.lenient (False: a broken slice aborts prepare; True: skipped and recorded),
  data.max_boxes (8: blend boxes per slice, padded with -1), data.eval_batch_size (0: same as
  train.batch_size), data.balance_share (0: off; > 0, slice records only: training repeats each
  label's positive slices so that it makes up about this share of an epoch,
  `CacheSource.balanced`), data.augment.resample_slices (True: training re-draws the m slices
  from the unsampled ones, as DrCT2), data.augment.hflip (0.0: probability of a left-right flip),
  data.synth.{layout ("rsna"), num_scans (24), seed (0), size (64)} for layout "phantom";
  train.batch_size (global), task ("drct" → scan records, "blend" / "pretrain" → slice records).

Batches (ARCHITECTURE.md "Shapes and dtypes"), every field with leading local batch axis B:
  drct:     hu int16 [B,m,H,W], labels float32 [B,L], slice_labels uint8 [B,m,L],
            slice_index int32 [B,m], num_source_slices int32 [B], valid bool [B],
            example_index int32 [B]
  blend:    hu int16 [B,H,W], label int32 [B], boxes float32 [B,K,4] (-1 padded),
            num_boxes int32 [B], valid, example_index
  pretrain: hu int16 [B,H,W], labels float32 [B,L] (per-slice), slice_index int32 [B], valid,
            example_index
`example_index` indexes the split's `CacheSource` (`-1` on padding); string ids stay on the
host: `splits[split].example_info(i)`.

Speed (benchmarks/input_pipeline.py, 2 CPU cores at load ~15, 256 px, m=28): in-process
Grain feeds ~200-250 DrCT scans/s, the same as a plain numpy loop over the same examples, and
~3000-3700 single-slice records/s (own `stack` batch_fn: Grain's small-record batching slow path
is not hit); `num_workers=2` (mp_prefetch) was 4-7x SLOWER here (each ~15 MB batch crosses
shared memory), so keep `num_workers=0` unless host-side work per example grows. Grain's
`shuffle` is replaced by `EpochShuffle` (see there).

Multi-host: every process walks the same globally shuffled endless stream and `train_iterator`
gives process p rows [p*b, (p+1)*b) of each global batch (`ProcessRows`), so the global batches
— and the losses — are the same for any number of processes. `eval_batches` lays global batch g out as process p's slice [p*b, (p+1)*b), so batches
concatenated in process order are the global batch.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import logging
import math
import sys
from typing import Any, Iterator, Optional

import grain
import numpy as np

from ctjax import errors
from ctjax.data import cache
# Re-exported: the one builder of DrCT examples lives in a Grain-free module.
from ctjax.data.examples import drct_example  # noqa: F401
from ctjax.data.examples import flip as _flip
# Re-exported: callers configure and prepare data through the pipeline module.
from ctjax.data.cache import (DEFAULTS, _get, data_option, ensure_cache,  # noqa: F401
                              resolve_root)

log = logging.getLogger(__name__)

AUGMENT_DEFAULTS = {"resample_slices": True, "hflip": 0.0}
RECORDS = {"drct": "scan", "blend": "slice", "pretrain": "slice"}


def _augment(config, name: str):
  data = config.get("data")
  aug = data.get("augment") if data is not None else None
  return _get(aug, name, AUGMENT_DEFAULTS)


@dataclasses.dataclass
class Splits(collections.abc.Mapping):
  """"train"/"val"/"test" → `CacheSource`; `labels` names; `info` (cache path, sizes, …)."""
  sources: dict[str, cache.CacheSource]
  labels: tuple[str, ...]
  info: dict[str, Any]

  def __getitem__(self, key: str) -> cache.CacheSource:
    return self.sources[key]

  def __iter__(self):
    return iter(self.sources)

  def __len__(self) -> int:
    return len(self.sources)


def _task_kind(config) -> str:
  task = config.get("task", "") or "drct"
  if task not in RECORDS:
    raise errors.ConfigError(f"config.task={task!r}: the data pipeline knows {sorted(RECORDS)}")
  return task


def build_splits(config, workdir: Optional[str] = None, *, build: bool = True) -> Splits:
  """Cache → k-fold-by-patient splits of `CacheSource`s. `build`: prepare the cache when it is
  absent or stale (training, `ctjax.prepare`); False: read only, else CacheNotPreparedError."""
  kind = _task_kind(config)
  path = cache.ensure_cache(config, workdir, build=build)
  scans = cache.CachedScans(path)
  idx = cache.split_indices(config, [s.patient_id for s in scans.scans],
                            np.stack([s.labels for s in scans.scans]))
  data = config.get("data")
  if kind != "blend" and data is not None and data.get("labels") and \
      tuple(data.labels) != tuple(scans.labels):
    raise errors.ConfigError(
        f"config.data.labels {tuple(data.labels)} differ from the data set's labels "
        f"{scans.labels} (layout {scans.manifest['layout']}); fix the config's label order")
  record = RECORDS[kind]
  sources = {k: cache.CacheSource(scans, v, record) for k, v in idx.items()}
  share = float(data_option(config, "balance_share"))
  if share > 0:
    if record != "slice":
      raise errors.ConfigError(f"config.data.balance_share={share} needs slice records "
                               f"(task pretrain/blend), not task {kind!r}")
    n = len(sources["train"])
    sources["train"] = sources["train"].balanced(share)
    log.info("balanced training slices: %d → %d (balance_share=%g)", n, len(sources["train"]),
             share)
  info = {"cache": str(path), "layout": scans.manifest["layout"], "record": record,
          "task": kind, "image_size": scans.image_size,
          "has_slice_labels": scans.manifest.get("has_slice_labels", False),
          "windows": data_option(config, "windows"),
          "sizes": {k: len(v) for k, v in sources.items()},
          "scans": {k: len(v) for k, v in idx.items()}}
  return Splits(sources, scans.labels, info)


# ------------------------------------------------------------------------- example builders


class EpochShuffle(grain.MapDataset):
  """Endless dataset: epoch e is `parent` permuted by numpy's Generator((seed, e)).

  Replaces `MapDataset.shuffle(seed).repeat()` because Grain's `index_shuffle` (a Feistel
  cipher with cycle walking) costs ~17 ms an element on a 4-element data set and ~0.7 ms at
  100 elements (measured here, grain 0.2.18), which dominates small splits; a cached numpy
  permutation costs O(n) once per epoch. Pure function of (seed, index): resumable and
  identical in every worker process.
  """

  def __init__(self, parent: grain.MapDataset, *, seed: int):
    super().__init__(parent)
    self._seed = int(seed)
    self._n = len(parent)
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self._seed})"

  def permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      if len(self._perms) > 2:
        self._perms.clear()
      perm = np.random.default_rng((self._seed, epoch)).permutation(self._n)
      self._perms[epoch] = perm
    return perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, pos = divmod(int(index), self._n)
    return self._parents[0][int(self.permutation(epoch)[pos])]


class ProcessRows(grain.MapDataset):
  """Process p's view of an endless stream cut into global batches: local element j is global
  element (j // b) * G + p * b + j % b, i.e. rows [p*b, (p+1)*b) of every global batch."""

  def __init__(self, parent: grain.MapDataset, *, global_batch: int, local_batch: int,
               process_index: int):
    super().__init__(parent)
    self._g, self._b, self._p = int(global_batch), int(local_batch), int(process_index)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"ProcessRows(G={self._g}, b={self._b}, p={self._p})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    g, r = divmod(int(index), self._b)
    return self._parents[0][g * self._g + self._p * self._b + r]


def _drct_example(el, rng, *, scans: cache.CachedScans, m: int, resample: bool,
                  hflip: float, features: Any = None) -> dict:
  meta = scans.scans[el["scan"]]
  if features is not None:   # stored backbone rows in place of HU: no HU read
    read = functools.partial(features.rows, el["scan"])
  else:
    read = functools.partial(scans.scan_hu, el["scan"])
  return drct_example(read, meta.num_slices, meta.labels, meta.slice_labels, m=m, rng=rng,
                      resample=resample, hflip=hflip, example_index=el["example_index"])


def _slice_example(el, rng, *, scans: cache.CachedScans, kind: str, max_boxes: int,
                   hflip: float) -> dict:
  meta = scans.scans[el["scan"]]
  k = el["slice"]
  hu, flipped = _flip(scans.scan_hu(el["scan"], [k])[0], rng, hflip)
  out = {"hu": hu, "valid": np.bool_(True), "example_index": np.int32(el["example_index"])}
  if kind == "blend":
    if meta.slice_class is None:
      raise errors.ConfigError("task 'blend' needs a blend-layout cache (per-slice classes)")
    boxes = np.asarray(meta.boxes[k], np.float32).reshape(-1, 4)[:max_boxes]
    if flipped:
      w = hu.shape[-1]
      boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], -1)
    padded = np.full((max_boxes, 4), -1.0, np.float32)
    padded[:len(boxes)] = boxes
    out.update(label=np.int32(meta.slice_class[k]), boxes=padded,
               num_boxes=np.int32(len(boxes)))
  else:
    out.update(labels=meta.slice_labels[k].astype(np.float32), slice_index=np.int32(k))
  return out


def _example_fn(config, splits: Splits, *, train: bool, features: Any = None):
  kind = splits.info["task"]
  scans = next(iter(splits.sources.values())).scans
  hflip = float(_augment(config, "hflip")) if train else 0.0
  if kind == "drct":
    return functools.partial(_drct_example, scans=scans, m=int(data_option(config, "num_slices")),
                             resample=bool(_augment(config, "resample_slices")), hflip=hflip,
                             features=features)
  if features is not None:
    raise errors.ConfigError("a feature store is only read for DrCT scan records")
  return functools.partial(_slice_example, scans=scans, kind=kind,
                           max_boxes=int(data_option(config, "max_boxes")), hflip=hflip)


def stack(examples) -> dict[str, np.ndarray]:
  """Batch function: stacks each field (one np.stack per key, no tree utilities)."""
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _local_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise errors.ConfigError(f"batch size {global_batch} is not divisible by "
                             f"{process_count} processes")
  return global_batch // process_count


def _finish(ds: grain.MapDataset, config) -> grain.IterDataset:
  # Grain's default ReadOptions prefetch 500 elements on 16 threads: here an element is a whole
  # batch, so that is ~1 s of start-up and memory for nothing; `prefetch` batches are enough.
  workers = int(data_option(config, "num_workers"))
  prefetch = int(data_option(config, "prefetch"))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, min(prefetch, 4)),
                                            prefetch_buffer_size=max(1, prefetch)))
  if workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():   # Grain's workers read absl flags; scripts/tests may not
      flags.FLAGS.mark_as_parsed()    # have parsed them (UnparsedFlagAccessError otherwise).
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=max(1, prefetch)))
  return it


def train_iterator(config, splits: Splits, *, seed: int, process_index: int = 0,
                   process_count: int = 1, features: Any = None) -> grain.DatasetIterator:
  """Endless iterator of local training batches; `get_state()`/`set_state()` for checkpoints.
  `features` (a `ctjax.train.features.FeatureStore`): DrCT examples carry its rows, not HU."""
  src = splits["train"]
  local = _local_batch(int(config.train.batch_size), process_count)
  n_even = (len(src) // process_count) * process_count
  if n_even // process_count < local:
    raise errors.ConfigError(
        f"train split has {len(src)} examples: fewer than one local batch of {local} per "
        f"process ({process_count} processes); lower train.batch_size or add data")
  seed = int(seed) % 2**32
  # Every process walks the same global, endless, per-epoch-shuffled stream (augmentation rng a
  # function of the global position) and takes its rows of each global batch: so P processes
  # together see exactly the batches of one process, and losses agree across topologies.
  ds = EpochShuffle(grain.MapDataset.source(src), seed=seed)
  ds = ds.random_map(_example_fn(config, splits, train=True, features=features), seed=seed)
  ds = ProcessRows(ds, global_batch=int(config.train.batch_size), local_batch=local,
                   process_index=process_index)
  ds = ds.batch(local, drop_remainder=True, batch_fn=stack)
  return iter(_finish(ds, config))


def steps_per_epoch(config, splits: Splits, process_count: int = 1) -> int:
  del process_count   # the stream is global: the same number of steps for any topology.
  return len(splits["train"]) // int(config.train.batch_size)


def _eval_element(j: int, *, src, n: int, global_batch: int, local: int, process_index: int,
                  example):
  g, r = divmod(int(j), local)
  gi = g * global_batch + process_index * local + r
  if gi < n:
    return example(src[gi], None)
  out = example(src[0], None)
  out["valid"] = np.bool_(False)
  out["example_index"] = np.int32(-1)
  return out


def eval_batches(config, splits: Splits, split: str, *, process_index: int = 0,
                 process_count: int = 1, features: Any = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Local batches covering `split` once (uniform slice sampling, no augmentation); the last
  global batch is padded with `valid=False` examples (`example_index` -1)."""
  src = splits[split]
  global_batch = int(data_option(config, "eval_batch_size") or config.train.batch_size)
  local = _local_batch(global_batch, process_count)
  n = len(src)
  if n == 0:
    return iter(())
  num_batches = math.ceil(n / global_batch)
  element = functools.partial(_eval_element, src=src, n=n, global_batch=global_batch,
                              local=local, process_index=process_index,
                              example=_example_fn(config, splits, train=False,
                                                  features=features))
  ds = grain.MapDataset.range(num_batches * local).map(element)
  ds = ds.batch(local, drop_remainder=True, batch_fn=stack)
  return iter(_finish(ds, config))
