"""One way to open a trained run and predict with it, on the mesh.

    run = load_run("runs/drct2_phantom")            # config.json + best (else latest) state
    outputs = predict_split(run, "test")            # Task.predict over a split, host numpy
    report = evaluate("runs/drct2_phantom", "test")  # Task.summarize of that
    out = predict_batch(run, batch)                 # one host batch (reports, predictions)

Every consumer of a trained run opens it here: `ctjax.evaluate`, `ctjax.predict`
(`ctjax.inference.archive`), `ctjax.report` (`ctjax.inference.scan_reports`), `ctjax.export`
(`ctjax.inference.model_export`), the reader study, the tables and the highlight-scale fit.
A run is restored from its checkpoint only: no pretrained-weights file is read and nothing is
trained, so a run whose backbone file was deleted still loads. The state is replicated over
`parallel.make_mesh(config)`; batches are sharded on its data axis.

Predicting a split reads the run's prepared cache (and, for DrCT runs trained on stored
features, its feature store) and writes nothing: a cache or store that is missing raises
CacheNotPreparedError, unless the caller passes `prepare=True` (`ctjax.evaluate --prepare`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Callable, Mapping, Optional

import jax
import ml_collections
import numpy as np

from ctjax.errors import ConfigError
from ctjax.train import checkpoint, optim, parallel, steps
from ctjax.train import state as state_lib
from ctjax.train.evaluation import split_outputs
from ctjax.train.tasks import Task, default_data_module, get_task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
  """A restored `python -m ctjax.train` workdir, ready to predict."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  task: Task
  model: Any
  state: state_lib.TrainState
  step: int
  mesh: Any
  state_sharding: Any
  _compiled: dict = dataclasses.field(default_factory=dict)

  def variables(self) -> dict[str, Any]:
    return self.state.variables()

  def host_variables(self) -> dict[str, Any]:
    return parallel.replicated_to_host(self.state.variables())

  def predict_step(self, fn: Optional[Callable] = None) -> Callable:
    """`Task.predict` (or `fn(model, variables, batch, config)`) jitted once for this run's
    mesh (cached per function)."""
    if fn not in self._compiled:
      self._compiled[fn] = steps.compile_eval_step(self.task, self.model, self.config,
                                                   self.mesh, self.state_sharding, fn=fn)
    return self._compiled[fn]


def load_run(workdir: str | os.PathLike, step: Optional[int] = None, *, which: str = "auto",
             config_overrides: Optional[Mapping[str, Any]] = None,
             task: Optional[Task] = None, require_task: Optional[str] = None) -> Run:
  """Restores `workdir`'s config and its best (else latest) state; `step` picks one.

  `config_overrides` ({"data.root": …}) change the saved config before the model is built
  (data location, devices); `task` replaces `get_task(config.task)` (tests); `require_task`
  ("drct") refuses a run of another task in one line.
  """
  from ctjax.configs.common import set_dotted
  workdir = pathlib.Path(workdir)
  config = checkpoint.load_config(workdir)
  if require_task is not None and config.get("task") != require_task:
    raise ConfigError(f"{workdir}: config.task={config.get('task')!r}; this needs a "
                      f"{require_task!r} run")
  if config_overrides:
    set_dotted(config, dict(config_overrides))
  with checkpoint.saved_config_errors(workdir):
    task = task if task is not None else get_task(config.task)
    task.validate_config(config)
    model = task.build_model(config)
    mesh = parallel.make_mesh(config)
    template, sharding = state_lib.abstract_state(task, model, config, mesh)
  state, restored = checkpoint.restore_state(workdir, template, step=step, which=which)
  log.info("restored %s at step %d", workdir, restored)
  return Run(workdir, config, task, model, state, int(restored), mesh, sharding)


def make_run(config: ml_collections.ConfigDict, variables: Mapping[str, Any], *,
             task: Optional[Task] = None, model: Any = None, step: int = 0,
             workdir: str | os.PathLike = ".") -> Run:
  """A `Run` of in-memory variables (no checkpoint): tests, freshly exported models."""
  task = task if task is not None else get_task(config.task)
  model = model if model is not None else task.build_model(config)
  mesh = parallel.make_mesh(config)
  tx, _ = optim.make_optimizer(config, 1, 1, lambda p: task.param_groups(config, p))
  repl = parallel.replicated(mesh)
  state = jax.jit(lambda v: state_lib.state_from_variables(task, config, v,
                                                           jax.random.PRNGKey(0), tx),
                  out_shardings=repl)(parallel.put_replicated(dict(variables), mesh))
  sharding = jax.tree.map(lambda _: repl, state)
  return Run(pathlib.Path(workdir), config, task, model, state, int(step), mesh, sharding)


def split_data(run: Run, data: Any = None, *, prepare: bool = False) -> tuple[Any, Any]:
  """(data module as the steps read it, splits) for `run`: its prepared cache, and DrCT's
  stored features when the run trained on them. Read only unless `prepare` (then a missing
  cache or store is built, on every process as training builds it)."""
  data = default_data_module(data)
  if prepare:
    splits = parallel.process_zero_first(
        lambda: data.build_splits(run.config, str(run.workdir)), "ctjax_build_splits")
  else:
    splits = data.build_splits(run.config, str(run.workdir), build=False)
  data = run.task.wrap_data(run.config, data, splits, run.model, run.host_variables(),
                            workdir=run.workdir, build=prepare)
  return data, splits


def predict_split(run: Run, split: str, *, data: Any = None, splits: Any = None,
                  prepare: bool = False) -> dict[str, np.ndarray]:
  """`Task.predict` outputs + batch fields of every example of `split` (host numpy)."""
  if splits is None:
    data, splits = split_data(run, data, prepare=prepare)
  return split_outputs(run.predict_step(), run.state, run.config, data, splits, split,
                       run.mesh)


def summarize(run: Run, outputs: Mapping[str, np.ndarray], split: str) -> dict[str, Any]:
  """`Task.summarize` of `outputs`, with the run's step and the split recorded."""
  report = dict(run.task.summarize(outputs, run.config))
  report.setdefault("step", run.step)
  report.setdefault("split", split)
  return report


def evaluate(workdir: str | os.PathLike, split: str = "test", *, step: Optional[int] = None,
             data: Any = None, config_overrides: Optional[Mapping[str, Any]] = None,
             task: Optional[Task] = None, prepare: bool = False) -> dict[str, Any]:
  """`Task.summarize` report of a run's best (else latest) state on `split`."""
  run = load_run(workdir, step, config_overrides=config_overrides, task=task)
  return summarize(run, predict_split(run, split, data=data, prepare=prepare), split)


def predict_batch(run: Run, batch: Mapping[str, np.ndarray], *,
                  fn: Optional[Callable] = None) -> dict[str, np.ndarray]:
  """Predictions for one host batch of this process (leading axis = examples), padded to the
  mesh and trimmed back. `fn(model, variables, batch, config)` replaces `Task.predict`."""
  arrays = {k: np.asarray(v) for k, v in batch.items()
            if np.asarray(v).dtype.kind not in "OUS"}
  n = len(next(iter(arrays.values())))
  local = len(run.mesh.local_devices) if hasattr(run.mesh, "local_devices") else 1
  pad = (-n) % max(local, 1)
  if pad:
    arrays = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in arrays.items()}
  out = run.predict_step(fn)(run.state, parallel.host_to_global(arrays, run.mesh))
  start = jax.process_index() * (n + pad)   # this process's rows of the global batch
  return {k: np.asarray(v)[start:start + n] for k, v in parallel.to_host(out).items()}
