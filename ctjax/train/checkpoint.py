"""Orbax checkpoints of the TrainState together with the Grain iterator state.

Layout under the workdir:
  checkpoints/latest/<step>/{state,data}   async, keep `config.checkpoint.keep`: for resuming;
                                            `data` = one JSON file of iterator state per process.
  checkpoints/best/<step>/state            the state with the best `config.checkpoint.best_metric`
                                            (e.g. "val/macro_f1", higher is better; a name ending
                                            in "loss" is minimised); only when that is set.
`load_config` reads a workdir's config.json (older field names upgraded, ctjax.configs.upgrade);
`saved_config_errors` turns a field missing from an older config.json into one ConfigError line.

A step that fails to restore (a truncated or corrupted array file: tensorstore's OUT_OF_RANGE,
DATA_LOSS, …) is not the end of a run. The rule, for training resume
(`Checkpointer.restore_latest`) and for evaluation/reports (`restore_state`): steps are tried
newest first; the failures are logged in one line and the next older intact step is used (its
step number is returned and logged). Resuming also moves the unreadable newer steps to
`checkpoints/unreadable/<step>`, so that the re-run steps can be saved again (nothing is
deleted). When no step restores, or an explicit `--step` does not, a CheckpointError lists the
saved steps with each one's problem and says how to pick one. A checkpoint written by another
number of processes is refused before anything is restored or moved (its data iterator states
are per process). A full disk while saving is a DiskFullError naming the step's folder, the space
one checkpoint takes and the space free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import re
import sys
from typing import Any, Callable, Iterator, Optional

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import serialization

from ctjax import fileio
from ctjax.errors import CheckpointError, ConfigError, CTJaxError, DiskFullError

log = logging.getLogger(__name__)

LATEST = "latest"
BEST = "best"
UNREADABLE = "unreadable"   # checkpoints/unreadable/<step>: steps that failed to restore


def _short(e: BaseException, limit: int = 240) -> str:
  """One line for a restore/save failure: tensorstore's code, the file named last and the final
  reason (not its JSON spec); other errors' first line."""
  text = " ".join(str(e).split(" [tensorstore_spec")[0].split())
  m = re.match(r"([A-Z_]{4,}): ", text)
  if m:
    files = re.findall(r'local file "([^"]+)"', text)
    tail = text.rsplit(": ", 1)[-1]
    text = f"{m.group(1)}: {files[-1] + ': ' if files else ''}{tail}"
  text = text or type(e).__name__
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _state_bytes(tree: Any) -> int:
  return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))


def _writer_counts(step_dir: pathlib.Path) -> set[int]:
  """Process counts N of the step's data iterator files (data/process_<i>-of-<N>.json)."""
  counts = set()
  for f in (step_dir / "data").glob("process_*-of-*.json"):
    m = re.fullmatch(r"process_\d+-of-(\d+)\.json", f.name)
    if m:
      counts.add(int(m.group(1)))
  return counts


def check_process_count(step_dir: pathlib.Path) -> None:
  """CheckpointError when the step's data iterator states were written by another number of
  processes than this run has (their positions cannot be matched to this run's processes)."""
  counts = _writer_counts(step_dir)
  here = jax.process_count()
  if counts and here not in counts:
    n = max(counts)
    raise CheckpointError(
        f"{step_dir} was written by {n} processes (data/process_0-of-{n}.json …) and this run "
        f"has {here}: the data iterator states do not match; resume it with --num_processes "
        f"{n} as it was started, or start a new --workdir")


def _data_state_error(step_dir: pathlib.Path) -> Optional[str]:
  """Why this process's iterator state at `step_dir` cannot be read, or None."""
  path = step_dir / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  try:
    json.loads(path.read_text())
  except FileNotFoundError:
    return f"{path}: missing"
  except (OSError, ValueError) as e:
    return f"{path}: {_short(e)}"
  return None


@contextlib.contextmanager
def _quiet_loop_noise() -> Iterator[None]:
  """A failed tensorstore read leaves callbacks that find their asyncio loop closed and report
  `RuntimeError('Event loop is closed')` as unraisable, one traceback each: dropped here."""
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and "Event loop is closed" in str(e):
      return
    previous(unraisable)
  sys.unraisablehook = hook
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _restore_newest(steps: list[int], restore: Callable[[int], Any]
                    ) -> tuple[Any, Optional[int], list[tuple[int, str]]]:
  """(result, step, failures) of `restore(step)` for the newest step that works, failures as
  (step, one-line reason); (None, None, failures) when none does. The caller logs."""
  failures = []
  for step in sorted(steps, reverse=True):
    try:
      with _quiet_loop_noise():
        return restore(step), step, failures
    except (KeyboardInterrupt, CTJaxError):
      raise
    except Exception as e:   # tensorstore ValueError, missing files, structure mismatch, …
      failures.append((step, _short(e)))
  return None, None, failures


def _list_failures(failures: list[tuple[int, str]]) -> str:
  return "; ".join(f"step {s}: {why}" for s, why in failures)


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
    self._needed: Optional[int] = None   # bytes of the state's arrays being saved
    self._failed = False

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def _space_needed(self) -> tuple[Optional[int], str]:
    """(bytes, how estimated) one checkpoint takes: the newest complete step on disk, else the
    state's arrays (compression and metadata change the real size)."""
    directory = pathlib.Path(self.latest.directory)
    steps = sorted((int(p.name) for p in directory.glob("*") if p.name.isdigit()), reverse=True)
    for step in steps:
      size = fileio.tree_bytes(directory / str(step))
      if size:
        return size, f"the size of step {step} on disk"
    if self._needed:
      return self._needed, "the state's arrays before compression and metadata"
    return None, ""

  def _storage_error(self, e: BaseException, directory: Any, what: str) -> BaseException:
    """A full disk or an unwritable folder while saving → one-line error; others unchanged."""
    self._failed = True
    text = str(e)
    m = re.search(r'local file "([^"]*?/(?:latest|best)/\d+)', text)
    where = pathlib.Path(m.group(1)) if m else pathlib.Path(directory)
    if fileio.is_disk_full(e):
      needed, note = self._space_needed()
      return fileio.disk_full_error(where, needed, f"writing {what}", cause=e,
                                    needed_note=note)
    if isinstance(e, OSError):
      return fileio.storage_error(e, where, "writing a checkpoint")
    if re.match(r"(PERMISSION_DENIED|RESOURCE_EXHAUSTED|UNAVAILABLE|INTERNAL): ", text):
      return CheckpointError(f"{where}: writing the checkpoint failed ({_short(e)})")
    return e

  @contextlib.contextmanager
  def _writing(self, directory: Any, what: str) -> Iterator[None]:
    try:
      yield
    except (KeyboardInterrupt, CTJaxError):
      raise
    except Exception as e:
      err = self._storage_error(e, directory, what)
      if err is e:
        raise
      raise err from e

  def save(self, step: int, state: Any, iterator: Any, force: bool = False) -> None:
    state_dict = serialization.to_state_dict(state)
    self._needed = _state_bytes(state_dict)
    args = {"state": ocp.args.StandardSave(state_dict)}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(iterator)
    with self._writing(self.latest.directory, f"checkpoint step {step}"):
      self.latest.save(step, args=ocp.args.Composite(**args), force=force)

  def restore_latest(self, template: Any) -> tuple[Any, Optional[int]]:
    """(state, step) of the newest latest/ step that restores (None, None without any).

    Unreadable newer steps are logged, moved to checkpoints/unreadable/<step> and the next older
    one is used; a checkpoint of another process count is refused (CheckpointError) first.
    """
    directory = pathlib.Path(self.latest.directory)
    steps = list(self.latest.all_steps())
    if not steps:
      return None, None
    check_process_count(directory / str(max(steps)))

    def restore(step: int) -> Any:
      check_process_count(directory / str(step))
      problem = _data_state_error(directory / str(step))
      if problem:
        raise ValueError(f"data iterator state {problem}")
      return self.restore(template, None, step=step)

    state, step, failures = _restore_newest(steps, restore)
    if step is None:
      raise CheckpointError(
          f"{directory}: no checkpoint step restores ({_list_failures(failures)}); restore "
          "the folder from a copy, or start a new --workdir")
    if failures:
      moved = self._set_aside([s for s, _ in failures])
      log.warning("checkpoint %s cannot be restored (%s); resuming from step %d (moved to %s)",
                  directory, _list_failures(failures), step, moved)
    return state, step

  def _set_aside(self, steps: list[int]) -> pathlib.Path:
    """Moves unreadable steps out of latest/ (process 0; the others wait), so they can be
    saved again; nothing is deleted."""
    directory = pathlib.Path(self.latest.directory)
    target = directory.parent / UNREADABLE
    if jax.process_index() == 0:
      target.mkdir(parents=True, exist_ok=True)
      for step in steps:
        dest = target / str(step)
        k = 1
        while dest.exists():
          dest, k = target / f"{step}.{k}", k + 1
        os.replace(directory / str(step), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("ctjax_checkpoint_set_aside")
    self.latest.reload()
    return target

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
    with self._writing(self.best.directory, f"best checkpoint step {step}"):
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(serialization.to_state_dict(state))),
                     metrics={self.best_metric: value}, force=True)
    self.best_value = value
    if jax.process_index() == 0:
      path = pathlib.Path(self.best.directory) / "best.json"
      try:
        fileio.atomic_write_text(
            path, json.dumps({"metric": self.best_metric, "value": value, "step": step}),
            "recording the best checkpoint")
      except DiskFullError as e:   # the checkpoint being written is what needs the space
        self._failed = True
        needed, note = self._space_needed()
        raise fileio.disk_full_error(path.parent, needed,
                                     f"writing the best checkpoint (step {step})",
                                     needed_note=note) from e
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
    """Waits for in-flight (async) saves; their errors surface here."""
    with self._writing(self.latest.directory, "checkpoint"):
      self.latest.wait_until_finished()
    if self.best is not None:
      with self._writing(self.best.directory, "best checkpoint"):
        self.best.wait_until_finished()

  def close(self) -> None:
    """Finishes in-flight saves and closes the managers. After a failed save the managers are
    closed without raising again (the first error is the one reported)."""
    try:
      if not self._failed:
        self.wait()
    finally:
      for mngr in (self.latest, self.best):
        if mngr is None:
          continue
        try:
          mngr.close()
        except Exception as e:
          if not self._failed:
            raise
          log.debug("closing %s after a failed save: %s", mngr.directory, _short(e))


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


def _saved_steps(root: pathlib.Path) -> dict[str, list[int]]:
  out = {}
  for name in (LATEST, BEST):
    directory = root / name
    if directory.is_dir():
      out[name] = sorted(int(p.name) for p in directory.iterdir()
                         if p.name.isdigit() and p.is_dir())
  return out


def _steps_text(saved: dict[str, list[int]]) -> str:
  parts = [f"{name} {', '.join(map(str, steps))}" for name, steps in saved.items() if steps]
  return "; ".join(parts) or "none"


def restore_state(workdir: str | os.PathLike, state: Any, step: Optional[int] = None,
                  which: str = "auto") -> tuple[Any, int]:
  """Restores `state`'s structure from `workdir`: `which` = "best", "latest" or "auto" (best if
  saved, else latest); an explicit `step` looks in latest, then best. Returns (state, step).

  A step that fails to restore is logged and the next older one (then the other folder, for
  "auto") is used; an explicit `step` that fails, or no step that restores, is a CheckpointError
  listing the saved steps (pick one with --step)."""
  root = pathlib.Path(workdir).absolute() / "checkpoints"
  candidates = {"best": [BEST], "latest": [LATEST], "auto": [BEST, LATEST]}[which]
  if step is not None:
    candidates = [LATEST, BEST]
  saved = _saved_steps(root)
  failures: list[str] = []
  for name in candidates:
    directory = root / name
    if not directory.exists():
      continue
    mngr = ocp.CheckpointManager(directory, item_names=("state", "data"))
    try:
      steps = list(mngr.all_steps())
      if step is not None:
        if step not in steps:
          continue
        steps = [step]
      if not steps:
        continue

      def restore(s: int) -> Any:
        return mngr.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state))))

      restored, chosen, failed = _restore_newest(steps, restore)
      failures += [f"{name} step {s}: {why}" for s, why in failed]
      if chosen is not None:
        if failures:
          log.warning("checkpoint %s cannot be restored (%s); using %s step %d", root,
                      "; ".join(failures), name, chosen)
        return serialization.from_state_dict(state, restored.state), int(chosen)
      if step is not None:
        break
    finally:
      mngr.close()
  if step is not None and failures:
    raise CheckpointError(f"{root}: step {step} cannot be restored ({failures[0]}); saved "
                          f"steps: {_steps_text(saved)}; pick another with --step N")
  if step is not None:
    raise CheckpointError(f"{root}: step {step} not found; saved steps: {_steps_text(saved)}; "
                          "pick one with --step N")
  if failures:
    raise CheckpointError(f"{root}: no checkpoint restores ({'; '.join(failures)}); restore "
                          "the folder from a copy or re-train")
  raise CheckpointError(f"{root}: no checkpoint found; train first with `python -m ctjax.train`")


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
