"""One `Task` per model family; the generic loop (`ctjax.train.loop`) knows nothing else.

`config.task` names the module here (`drct`, `blend`, `pretrain`); each module exposes
`TASK: Task`. Every array function below is pure and jit-able; host-side ones say so.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Protocol

import flax.linen as nn
import jax
import ml_collections
import optax

Batch = Mapping[str, jax.Array]
Variables = Mapping[str, Any]   # {"params": ..., "batch_stats": ...}


class Task(Protocol):
  name: str

  def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    """The Flax module for `config.model`."""

  def init_variables(self, model: nn.Module, config: ml_collections.ConfigDict,
                     rng: jax.Array) -> Variables:
    """Initial variables, with pretrained backbone weights loaded where the config names them."""

  def trainable_mask(self, config: ml_collections.ConfigDict, params: Any) -> Any:
    """Pytree of bools like `params`: False leaves are frozen (no optimizer state, no grads)."""

  def make_optimizer(self, config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer over the trainable params (per-module learning rates, schedules)."""

  def loss_fn(self, model: nn.Module, params: Any, extra: Variables, batch: Batch,
              rng: jax.Array, config: ml_collections.ConfigDict,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], Variables]]:
    """(scalar loss, (metrics, updated non-param collections e.g. batch_stats)).

    Runs on device inside the jitted step: windowing, normalisation and augmentation included.
    Padding examples (`batch["valid"] == False`) contribute nothing.
    """

  def predict(self, model: nn.Module, variables: Variables, batch: Batch,
              config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """Per-example eval outputs (probabilities, attention, …), leading axis = batch."""

  def summarize(self, outputs: Mapping[str, Any], config: ml_collections.ConfigDict
                ) -> dict[str, Any]:
    """Host side: metrics from the concatenated `predict` outputs + batch fields of a split."""


def get_task(name: str) -> Task:
  from ctjax.errors import ConfigError
  try:
    module = importlib.import_module(f"ctjax.train.tasks.{name}")
  except ModuleNotFoundError as e:
    raise ConfigError(f"config.task={name!r} is not a ctjax task (drct, blend, pretrain)") from e
  return module.TASK
