"""Small in-memory stand-ins for the trainer tests: a data provider following the contract of
ctjax.data.pipeline (`ctjax.train.tasks.DataModule`) and a blend-like Task (BatchNorm, dropout, SGD + poly
schedule, weighted cross-entropy, a frozen stem), so the loop is tested without the real data
layer or backbones.
"""

from __future__ import annotations

import functools
import json
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ctjax.configs import common
from ctjax.data import labels
from ctjax.eval import metrics
from ctjax.train.tasks import Task

SIZE = 16
NAMES = ("non_ich", "normal_ich", "blend_sign")


class MemorySource:
  """Random-access source of slice records: hu int16 [H, W], label int32, example_index."""

  def __init__(self, num: int, seed: int):
    rng = np.random.default_rng(seed)
    self.labels = rng.integers(0, 3, size=num).astype(np.int32)
    base = rng.normal(0, 200, size=(num, SIZE, SIZE))
    # A class-dependent bright square so that the task is learnable.
    for i, y in enumerate(self.labels):
      base[i, 4:4 + 3 * (y + 1), 4:10] += 300.0 * (y + 1)
    self.hu = np.clip(base, -1024, 3071).astype(np.int16)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"hu": self.hu[i], "label": self.labels[i], "example_index": np.int32(i)}


class Splits(dict):
  labels = NAMES
  info = {}


def _sleep(seconds, batch):
  time.sleep(seconds)
  return batch


class _Interrupting:
  """A train iterator that raises KeyboardInterrupt when batch `at` is asked for (a Ctrl-C at a
  known step), with the inner iterator's checkpointable state."""

  def __init__(self, inner, at: int):
    self._inner, self._at, self._n = inner, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    self._n += 1
    if self._n == self._at:
      raise KeyboardInterrupt
    return next(self._inner)

  def get_state(self) -> bytes:   # bytes: grain's checkpoint handler for other iterators
    return json.dumps(self._inner.get_state()).encode()

  def set_state(self, state: bytes):
    self._inner.set_state(json.loads(state))


class MemoryData:
  """build_splits / train_iterator / eval_batches over MemorySource (grain, resumable)."""

  def __init__(self, num_train: int = 48, num_val: int = 20, num_test: int = 20,
               delay: float = 0.0, interrupt_at: int = 0):
    self.sizes = {"train": num_train, "val": num_val, "test": num_test}
    self.delay = delay   # seconds per training batch (to kill a run mid-way in tests)
    self.interrupt_at = interrupt_at   # > 0: Ctrl-C while fetching this (1-based) train batch

  def build_splits(self, config, workdir, *, build=True):
    seed = int(config.data.fold) * 10
    return Splits({name: MemorySource(n, seed + k)
                   for k, (name, n) in enumerate(self.sizes.items())})

  def steps_per_epoch(self, config, splits, process_count=1):
    return len(splits["train"]) // int(config.train.batch_size)

  def train_iterator(self, config, splits, *, seed, process_index=0, process_count=1):
    batch = int(config.train.batch_size)
    local = batch // process_count
    lo = process_index * local
    ds = (grain.MapDataset.source(splits["train"]).shuffle(seed=seed).repeat()
          .batch(batch, drop_remainder=True)
          .map(lambda b: {k: v[lo:lo + local] for k, v in b.items()}))
    if self.delay:
      ds = ds.map(functools.partial(_sleep, self.delay))
    it = iter(ds.to_iter_dataset())
    return _Interrupting(it, self.interrupt_at) if self.interrupt_at else it

  def eval_batches(self, config, splits, split, *, process_index=0, process_count=1):
    src = splits[split]
    batch = int(config.train.batch_size)
    local = batch // process_count
    for start in range(0, len(src), batch):
      idx = np.arange(start, start + batch)
      valid = idx < len(src)
      idx = np.where(valid, idx, 0)
      rows = [src[int(i)] for i in idx]
      b = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
      b["valid"] = valid
      lo = process_index * local
      yield {k: v[lo:lo + local] for k, v in b.items()}


class TinyNet(nn.Module):
  num_classes: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.Conv(4, (3, 3), strides=(2, 2), name="stem", dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn",
                     dtype=self.dtype)(x)
    x = nn.relu(x)
    x = nn.Conv(8, (3, 3), strides=(2, 2), name="conv", dtype=self.dtype)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="head", dtype=self.dtype)(x).astype(jnp.float32)


class TinyTask(Task):
  name = "tiny"

  def build_model(self, config):
    return TinyNet(dtype=jnp.dtype(config.model.dtype))

  def init_variables(self, model, config, rng):
    return model.init({"params": rng}, jnp.zeros((1, SIZE, SIZE, 1)), train=False)

  def trainable_mask(self, config, params):
    frozen = set(config.model.get("frozen", ()))
    return {k: jax.tree.map(lambda _: k not in frozen, v) for k, v in params.items()}

  def _images(self, batch):
    return (batch["hu"].astype(jnp.float32) / 1000.0)[..., None]

  def loss_fn(self, model, params, extra, batch, rng, config, train):
    logits, updates = model.apply({"params": params, **extra}, self._images(batch), train=train,
                                  rngs={"dropout": rng}, mutable=["batch_stats"])
    w = jnp.asarray([1.0, 2.0, 20.0])[batch["label"]]
    mask = batch.get("valid", jnp.ones_like(w, bool)).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    loss = jnp.sum(w * ce * mask) / jnp.maximum(jnp.sum(w * mask), 1e-6)
    acc = jnp.sum((logits.argmax(-1) == batch["label"]) * mask) / jnp.maximum(mask.sum(), 1)
    return loss, ({"loss": loss, "accuracy": acc}, updates)

  def predict(self, model, variables, batch, config):
    logits = model.apply(variables, self._images(batch), train=False)
    return {"probs": jax.nn.softmax(logits)}

  def summarize(self, outputs, config):
    return metrics.multiclass_report(outputs["label"], outputs["probs"], NAMES)


def set_fields(config: ml_collections.ConfigDict, values) -> None:
  """Sets `{"a.b": value}` fields in place, adding those the config lacks (tests' overrides)."""
  for dotted, value in values.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "tiny"
  c.seed = 0
  c.train.batch_size = 8
  c.train.num_epochs = 2
  c.train.log_every_steps = 1
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.05
  c.optimizer.schedule = "poly"
  c.optimizer.power = 0.9
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.model.frozen = ("stem",)
  c.evals.val = ml_collections.ConfigDict({"split": "val", "every_steps": 4})
  c.checkpoint.every_steps = 3
  c.checkpoint.best_metric = "val/macro_f1"
  c.checkpoint.async_save = True
  c.log.progress_bar = False
  c.log.tensorboard = True
  set_fields(c, overrides)
  return c


def read_losses(workdir) -> dict[int, float]:
  import json
  import pathlib
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    rec = json.loads(line)
    if "train/loss" in rec:
      out[rec["step"]] = rec["train/loss"]
  return out


class TinySliceTask(TinyTask):
  """TinyNet on the REAL pipeline's "pretrain" records (hu [B,H,W], labels float32 [B,L]):
  weighted BCE; `summarize` returns exact sums so that topologies can be compared."""
  name = "tiny_slices"

  def build_model(self, config):
    return TinyNet(num_classes=len(labels.RSNA_LABELS), dtype=jnp.dtype(config.model.dtype))

  def loss_fn(self, model, params, extra, batch, rng, config, train):
    logits, updates = model.apply({"params": params, **extra}, self._images(batch), train=train,
                                  rngs={"dropout": rng}, mutable=["batch_stats"])
    mask = batch["valid"].astype(jnp.float32)[:, None]
    bce = optax.sigmoid_binary_cross_entropy(logits, batch["labels"]) * (1 + 3 * batch["labels"])
    loss = jnp.sum(bce * mask) / jnp.maximum(mask.sum() * logits.shape[-1], 1.0)
    return loss, ({"loss": loss}, updates)

  def predict(self, model, variables, batch, config):
    return {"probs": jax.nn.sigmoid(model.apply(variables, self._images(batch), train=False))}

  def summarize(self, outputs, config):
    return {"count": float(len(outputs["example_index"])),
            "index_sum": float(outputs["example_index"].astype(np.int64).sum()),
            "positives": float(outputs["labels"].sum()),
            "mean_prob": float(outputs["probs"].mean())}


# ----------------------------------------------------------------- a small DrCT2 on a cache

DRCT_SIZE = 48


def small_drct_config(cache_dir, **over) -> ml_collections.ConfigDict:
  """DrCT2 runlocal at 48 px (primary 32, APS 48, m = 5, mkey 3) with the feature store on, on
  a cache in `cache_dir` (`ctjax.data.fake.write_random_cache_for` writes one there); `over`:
  dotted fields set, or added (e.g. Table 4's `model.hires_slices`, which DrCT2 lacks)."""
  import pathlib
  from configs import drct2_rsna
  c = drct2_rsna.get_config("runlocal")
  c.data.layout = "folder"
  c.data.root = str(pathlib.Path(cache_dir) / "root")   # empty: the cache is complete
  c.data.cache_dir = str(cache_dir)
  c.data.image_size = DRCT_SIZE
  c.data.num_slices = 5
  c.model.primary_size = 32
  c.model.aps_size = 48
  c.model.mkey = 3
  c.features.enabled = True
  c.features.chunk = 4
  c.log.progress_bar = False
  c.log.tensorboard = False
  set_fields(c, over)
  return c
