"""Orbax checkpoints of the TrainState together with the Grain iterator state.

Layout under the workdir:
  checkpoints/latest/<step>/{state,data}   async, keep `config.checkpoint.keep`: for resuming;
                                            `data` = one JSON file of iterator state per process.
  checkpoints/best/<step>/state            the state with the best `config.checkpoint.best_metric`
                                            (e.g. "val/macro_f1", higher is better; a name ending
                                            in "loss" is minimised); only when that is set.
`load_config` reads a workdir's config.json (older field names upgraded, ctjax.configs.upgrade);
`saved_config_errors` turns a field missing from an older config.json into one ConfigError line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import re
from typing import Any, Iterator, Optional

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import serialization

from ctjax.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

LATEST = "latest"
BEST = "best"


def _abstract(state: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of the state's checkpointed pytree."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, serialization.to_state_dict(state))


def _lower_is_better(metric: str) -> bool:
  return metric.rsplit("/", 1)[-1].endswith("loss")


class Checkpointer:
  """Latest-N (resume) and best-by-metric managers for one workdir."""

  def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict):
    root = pathlib.Path(workdir).absolute() / "checkpoints"
    self.best_metric = str(config.checkpoint.best_metric or "")
    self.latest = ocp.CheckpointManager(
        root / LATEST, item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max(1, int(config.checkpoint.keep)),
            enable_async_checkpointing=bool(config.checkpoint.async_save), create=True))
    self.best = None
    self.best_value = None
    if self.best_metric:
      sign = -1.0 if _lower_is_better(self.best_metric) else 1.0
      self.best = ocp.CheckpointManager(
          root / BEST, item_names=("state",),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, best_fn=lambda m: sign * float(m[self.best_metric]),
              best_mode="max", enable_async_checkpointing=bool(config.checkpoint.async_save),
              create=True))
      info = _read_best_info(root / BEST)
      self.best_value = None if info is None else info.get("value")

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, step: int, state: Any, iterator: Any, force: bool = False) -> None:
    args = {"state": ocp.args.StandardSave(serialization.to_state_dict(state))}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(iterator)
    self.latest.save(step, args=ocp.args.Composite(**args), force=force)

  def maybe_save_best(self, step: int, state: Any, metrics: dict[str, float]) -> bool:
    """Saves `state` as the best if `metrics[best_metric]` beats the best so far."""
    if self.best is None or self.best_metric not in metrics:
      return False
    value = float(metrics[self.best_metric])
    if math.isnan(value):
      return False
    lower = _lower_is_better(self.best_metric)
    if self.best_value is not None and (value >= self.best_value if lower
                                        else value <= self.best_value):
      return False
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(serialization.to_state_dict(state))),
                   metrics={self.best_metric: value}, force=True)
    self.best_value = value
    if jax.process_index() == 0:
      path = pathlib.Path(self.best.directory) / "best.json"
      path.write_text(json.dumps({"metric": self.best_metric, "value": value, "step": step}))
    return True

  def restore(self, state: Any, iterator: Any, step: Optional[int] = None) -> Any:
    """(state, iterator) from the latest (or `step`) checkpoint; the iterator is set in place."""
    step = self.latest.latest_step() if step is None else step
    args = {"state": ocp.args.StandardRestore(_abstract(state))}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = self.latest.restore(step, args=ocp.args.Composite(**args))
    return serialization.from_state_dict(state, restored.state)

  def restore_iterator(self, iterator: Any, step: int) -> None:
    """Sets `iterator` to its position saved at `step` (after `restore` of the state)."""
    self.latest.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(iterator)))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    if self.best is not None:
      self.best.close()


def _read_best_info(directory: pathlib.Path) -> Optional[dict]:
  path = directory / "best.json"
  return json.loads(path.read_text()) if path.exists() else None


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise CheckpointError(f"{path}: no config.json; is this a `python -m ctjax.train` workdir?")
  from ctjax.configs.upgrade import upgrade
  try:
    saved = json.loads(path.read_text())
  except ValueError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}); restore it from a copy") from e
  return ml_collections.ConfigDict(upgrade(saved))


def restore_state(workdir: str | os.PathLike, state: Any, step: Optional[int] = None,
                  which: str = "auto") -> tuple[Any, int]:
  """Restores `state`'s structure from `workdir`: `which` = "best", "latest" or "auto" (best if
  saved, else latest); an explicit `step` looks in latest, then best. Returns (state, step)."""
  root = pathlib.Path(workdir).absolute() / "checkpoints"
  candidates = {"best": [BEST], "latest": [LATEST], "auto": [BEST, LATEST]}[which]
  if step is not None:
    candidates = [LATEST, BEST]
  for name in candidates:
    directory = root / name
    if not directory.exists():
      continue
    mngr = ocp.CheckpointManager(directory, item_names=("state", "data"))
    try:
      steps = mngr.all_steps()
      chosen = step if step is not None else (mngr.latest_step() if steps else None)
      if chosen is None or chosen not in steps:
        continue
      restored = mngr.restore(chosen, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(state))))
      return serialization.from_state_dict(state, restored.state), int(chosen)
    finally:
      mngr.close()
  what = f"step {step}" if step is not None else "any checkpoint"
  raise CheckpointError(f"{root}: {what} not found; train first with `python -m ctjax.train`")


def _missing_field_name(error: BaseException) -> Optional[str]:
  """The field name when `error` is ml_collections' "no such field" error, else None.

  `ConfigDict.__getattr__` raises AttributeError(KeyError("'name'…")) (maybe with a "Did you
  mean" line); a plain dict's KeyError('name') or an ordinary AttributeError (a bug) does not match.
  """
  e: Any = error
  if isinstance(e, AttributeError) and e.args and isinstance(e.args[0], KeyError):
    e = e.args[0]
  if not isinstance(e, KeyError) or not e.args or not isinstance(e.args[0], str):
    return None
  m = re.match(r"'([^'\s]+)'(\n|$)", e.args[0])
  return m.group(1) if m else None


def _leaf_paths(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_leaf_paths(value, f"{prefix}{key}."))
    out[f"{prefix}{key}"] = value
  return out


def _current_defaults(task: str) -> list[dict[str, Any]]:
  """Dotted fields → values of the library's config builders for `task` (as plain JSON)."""
  from ctjax.configs import blend, common, drct
  if task == "drct":
    configs = [drct.drct_config(dataset=d, variant="drct2") for d in ("rsna", "cq500")]
  elif task == "blend":
    configs = [blend.blend_config()]
  else:
    configs = [common.base_config()]
  return [_leaf_paths(json.loads(c.to_json_best_effort())) for c in configs]


def missing_field_error(workdir: str | os.PathLike, error: BaseException
                        ) -> Optional[ConfigError]:
  """A one-line ConfigError when `error` is a config field absent from `workdir`'s config.json
  (a run saved before the field was added), naming the field's dotted path and its current
  defaults; None for any other error."""
  name = _missing_field_name(error)
  if name is None:
    return None
  path = pathlib.Path(workdir) / "config.json"
  try:
    saved = _leaf_paths(json.loads(path.read_text()))
  except (OSError, ValueError):
    saved = {}
  fields, values = [], []
  for defaults in _current_defaults(str(saved.get("task", ""))):
    for dotted, value in defaults.items():
      if dotted.rsplit(".", 1)[-1] == name and dotted not in saved:
        if dotted not in fields:
          fields.append(dotted)
        text = json.dumps(value)
        text = text if len(text) <= 40 else text[:37] + "..."
        if text not in values:
          values.append(text)
  where = " or ".join(f"config.{f}" for f in fields) if fields else f"config field {name!r}"
  hint = f" (current configs: {' / '.join(values[:4])})" if values else ""
  return ConfigError(f"{path} has no {where}: the run was saved before that field existed; "
                     f"add it to {path} with the value the run used{hint}")


@contextlib.contextmanager
def saved_config_errors(workdir: str | os.PathLike) -> Iterator[None]:
  """Around code that reads a workdir's saved config: ml_collections' bare AttributeError for a
  field the (older) config.json lacks becomes `missing_field_error`'s ConfigError."""
  try:
    yield
  except (AttributeError, KeyError) as e:
    err = missing_field_error(workdir, e)
    if err is None:
      raise
    raise err from e
