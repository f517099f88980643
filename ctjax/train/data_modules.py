"""Data modules over other data modules (the trainer's data contract,
`ctjax.train.tasks.DataModule`): what a task's `wrap_data` returns.

`WrappedData` forwards the four calls explicitly and is what every wrapper subclasses;
`MappedData` passes each batch through a host function (a teacher's soft labels, DrCT's APS rows
from its primary rows); `ctjax.train.features.FeatureData` reads stored backbone features in
place of HU.
"""

from __future__ import annotations

import json
from typing import Any


class _MappedIterator:
  """A train iterator whose batches pass through `fn`: same order, same checkpointable state."""

  def __init__(self, inner: Any, fn):
    self._inner, self._fn = inner, fn

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return self._fn(next(self._inner))

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


class WrappedData:
  """A data module over another (`inner`): the four calls of the trainer's data contract
  (`ctjax.train.tasks.DataModule`) forwarded one by one; subclasses override what they change."""

  def __init__(self, inner: Any):
    self.inner = inner

  def build_splits(self, config, workdir, **kwargs):
    return self.inner.build_splits(config, workdir, **kwargs)

  def steps_per_epoch(self, config, splits, process_count: int = 1) -> int:
    return self.inner.steps_per_epoch(config, splits, process_count)

  def train_iterator(self, config, splits, **kwargs):
    return self.inner.train_iterator(config, splits, **kwargs)

  def eval_batches(self, config, splits, split, **kwargs):
    return self.inner.eval_batches(config, splits, split, **kwargs)


class MappedData(WrappedData):
  """A data module (this module, or a stand-in) whose batches pass through
  `fn(batch, source) -> batch` on the host, `source` being the batch's split (its
  `CacheSource`): DrCT's stored features in place of HU, a teacher's soft labels (SKD)."""

  def __init__(self, inner: Any, fn):
    super().__init__(inner)
    self._fn = fn

  def train_iterator(self, config, splits, **kwargs):
    source = splits["train"]
    return _MappedIterator(self.inner.train_iterator(config, splits, **kwargs),
                           lambda batch: self._fn(batch, source))

  def eval_batches(self, config, splits, split, **kwargs):
    for batch in self.inner.eval_batches(config, splits, split, **kwargs):
      yield self._fn(batch, splits[split])
