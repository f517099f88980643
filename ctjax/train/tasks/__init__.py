"""One `Task` per model family; the generic loop (`ctjax.train.loop`) knows nothing else.

`config.task` names the module here (`drct`, `blend`, `pretrain`); each module exposes
`TASK: Task`. `Task` is a small base class with no-op hooks (as scenic's BaseModel): a task
overrides what it needs. Every array function is pure and jit-able; host-side ones say so.

The order in which the trainer calls the hooks (big_vision's): `validate_config` →
`build_model` (pure: builds, never reads files) → resume from a checkpoint, or else
`init_variables` (jitted, random) → `load_pretrained` (host side, only when not resuming) →
reshard onto the mesh → `wrap_data` → `loss_fn` / `predict` inside the jitted steps →
`summarize` (host) → `after_training`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol

import flax.linen as nn
import jax

if TYPE_CHECKING:   # annotations only: the blend losses load where ml_collections is absent
  import ml_collections

Batch = Mapping[str, jax.Array]
Variables = Mapping[str, Any]   # {"params": ..., "batch_stats": ...}


class DataModule(Protocol):
  """What the trainer and `ctjax.inference.runs` need of a data provider (ctjax.data.pipeline;
  tests pass in-memory stand-ins)."""

  def build_splits(self, config: ml_collections.ConfigDict, workdir: str, *,
                   build: bool = True) -> Mapping[str, Any]:
    """{"train", "val", "test"} → random-access sources (`len`, `example_info`). `build` False:
    read what was prepared, write nothing (CacheNotPreparedError when it is missing)."""

  def steps_per_epoch(self, config: ml_collections.ConfigDict, splits: Mapping[str, Any],
                      process_count: int = 1) -> int:
    """Optimizer steps per pass over the train split (the same for any topology)."""

  def train_iterator(self, config: ml_collections.ConfigDict, splits: Mapping[str, Any], *,
                     seed: int, process_index: int = 0, process_count: int = 1) -> Any:
    """Endless iterator of this process's rows of each global batch, with get/set_state."""

  def eval_batches(self, config: ml_collections.ConfigDict, splits: Mapping[str, Any],
                   split: str, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
    """One pass over `split`; the last global batch padded with `valid=False` rows."""


class Task:
  """Base class: no-op hooks, overridden by each task as needed."""
  name: str = ""

  def validate_config(self, config: ml_collections.ConfigDict) -> None:
    """One clear ConfigError line on bad values, before any data or model work."""

  def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    """The Flax module for `config.model`. Pure: no file reads, no training, no downloads."""
    raise NotImplementedError

  def init_variables(self, model: nn.Module, config: ml_collections.ConfigDict,
                     rng: jax.Array) -> Variables:
    """Random initial variables (run under jit; no host data)."""
    raise NotImplementedError

  def load_pretrained(self, config: ml_collections.ConfigDict,
                      variables: Mapping[str, Any]) -> Mapping[str, Any]:
    """Host side, only when a run starts (never on resume or for inference): `variables`
    (numpy) with pretrained weights the config names put in. Default: unchanged."""
    return variables

  def param_groups(self, config: ml_collections.ConfigDict, params: Any) -> Any:
    """Pytree of group names like `params` (for `optimizer.lr_mults`); one group by default."""
    return jax.tree.map(lambda _: "default", params)

  def trainable_mask(self, config: ml_collections.ConfigDict, params: Any) -> Any:
    """Pytree of bools like `params`: False leaves are frozen (no optimizer state, no grads)."""
    return jax.tree.map(lambda _: True, params)

  def wrap_data(self, config: ml_collections.ConfigDict, data: Any, splits: Mapping[str, Any],
                model: nn.Module, variables: Variables, *, workdir: Any,
                build: bool = True) -> Any:
    """The data module the steps read (e.g. DrCT's frozen-feature store). `build` False
    (evaluation, prediction): write nothing; a missing derived store raises
    CacheNotPreparedError. Default: `data`."""
    return data

  def loss_fn(self, model: nn.Module, params: Any, extra: Variables, batch: Batch,
              rng: jax.Array, config: ml_collections.ConfigDict,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], Variables]]:
    """(scalar loss, (metrics, updated non-param collections e.g. batch_stats)).

    Runs on device inside the jitted step: windowing, normalisation and augmentation included.
    Padding examples (`batch["valid"] == False`) contribute nothing.
    """
    raise NotImplementedError

  def predict(self, model: nn.Module, variables: Variables, batch: Batch,
              config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """Per-example eval outputs (probabilities, attention, …), leading axis = batch."""
    raise NotImplementedError

  def summarize(self, outputs: Mapping[str, Any], config: ml_collections.ConfigDict
                ) -> dict[str, Any]:
    """Host side: metrics from the concatenated `predict` outputs + batch fields of a split."""
    raise NotImplementedError

  def after_training(self, config: ml_collections.ConfigDict, workdir: str,
                     variables: Mapping[str, Any]) -> None:
    """Host side, once at the end (the best state when one was kept). Default: nothing."""


def default_data_module(data: Any = None) -> Any:
  """The data provider: `data` if given (tests, stand-ins), else ctjax.data.pipeline."""
  if data is not None:
    return data
  from ctjax.data import pipeline
  return pipeline


def get_task(name: str) -> Task:
  from ctjax.errors import ConfigError
  try:
    module = importlib.import_module(f"ctjax.train.tasks.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"ctjax.train.tasks.{name}":
      raise
    raise ConfigError(f"config.task={name!r} is not a ctjax task (drct, blend, pretrain)") from e
  return module.TASK
