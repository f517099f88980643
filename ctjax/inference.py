"""One way to load a trained run and predict with it, on the mesh.

    run = load_run("runs/drct2_phantom")            # config.json + best (else latest) state
    outputs = predict_split(run, "test")            # Task.predict over a split, host numpy
    report = evaluate("runs/drct2_phantom", "test")  # Task.summarize of that
    out = predict_batch(run, batch)                 # one host batch (reports, predictions)

`ctjax.evaluate`, `ctjax.crossval`, `ctjax.distill`, `ctjax.report` and the backbone probe all
predict through here, and the training loop's periodic evaluation uses `collect_outputs`.
A run is restored from its checkpoint only: no pretrained-weights file is read and nothing is
trained, so a run whose backbone file was deleted still loads. The state is replicated over
`parallel.make_mesh(config)`; batches are sharded on its data axis.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import ml_collections
import numpy as np

from ctjax.errors import CTJaxError
from ctjax.train import checkpoint, optim, parallel, steps
from ctjax.train import state as state_lib
from ctjax.train.tasks import Task, default_data_module, get_task

log = logging.getLogger(__name__)

# Batch entries that stay on device after prediction (images, stored features); everything else
# (labels, ids, valid, boxes, slice maps) comes back to the host next to the predictions.
IMAGE_KEYS = ("hu", "image", "images", "feat_pooled", "feat_map", "feat_aps")


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


def abstract_state(task: Task, model: Any, config: ml_collections.ConfigDict, mesh: Any,
                   tx: Any = None) -> tuple[Any, Any]:
  """(state template of ShapeDtypeStructs on the mesh, the state's sharding): no compute.
  `tx` None: an optimizer of the config's structure (enough to restore a checkpoint)."""
  if tx is None:
    tx, _ = optim.make_optimizer(config, 1, 1, lambda p: task.param_groups(config, p))
  shapes = jax.eval_shape(lambda rng: state_lib.create_state(task, model, config, rng, tx),
                          jax.random.PRNGKey(0))
  repl = parallel.replicated(mesh)
  sharding = jax.tree.map(lambda _: repl, shapes)
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          shapes)
  return template, sharding


def load_run(workdir: str | os.PathLike, step: Optional[int] = None, *, which: str = "auto",
             config_overrides: Optional[Mapping[str, Any]] = None,
             task: Optional[Task] = None) -> Run:
  """Restores `workdir`'s config and its best (else latest) state; `step` picks one.

  `config_overrides` ({"data.root": …}) change the saved config before the model is built
  (data location); `task` replaces `get_task(config.task)` (tests).
  """
  from ctjax.configs.common import set_dotted
  workdir = pathlib.Path(workdir)
  config = checkpoint.load_config(workdir)
  if config_overrides:
    set_dotted(config, dict(config_overrides))
  with checkpoint.saved_config_errors(workdir):
    task = task if task is not None else get_task(config.task)
    task.validate_config(config)
    model = task.build_model(config)
    mesh = parallel.make_mesh(config)
    template, sharding = abstract_state(task, model, config, mesh)
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


def collect_outputs(predict_step: Callable, state: Any, batches: Iterable[Mapping[str, Any]],
                    mesh: Any) -> dict[str, np.ndarray]:
  """Concatenated predictions + host batch fields over `batches` (padding rows dropped).

  Every process gets the whole split's outputs (all-gathered).
  """
  chunks = []
  for batch in batches:
    device_batch = parallel.host_to_global(batch, mesh)
    preds = predict_step(state, device_batch)
    keep = {k: v for k, v in device_batch.items() if k not in IMAGE_KEYS}
    chunks.append(parallel.to_host({**keep, **preds}))
  if not chunks:
    raise CTJaxError("the split is empty; nothing to predict")
  outputs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  if "valid" in outputs:
    valid = outputs.pop("valid").astype(bool)
    outputs = {k: v[valid] for k, v in outputs.items()}
  return outputs


def split_data(run: Run, data: Any = None) -> tuple[Any, Any]:
  """(data module as the steps read it, splits) for `run` (its prepared cache; DrCT's stored
  features from the store beside the HU cache when the run trained on them)."""
  data = default_data_module(data)
  splits = parallel.process_zero_first(lambda: data.build_splits(run.config, str(run.workdir)),
                                       "ctjax_build_splits")
  data = run.task.wrap_data(run.config, data, splits, run.model, run.host_variables(),
                            workdir=run.workdir)
  return data, splits


def predict_split(run: Run, split: str, *, data: Any = None, splits: Any = None
                  ) -> dict[str, np.ndarray]:
  """`Task.predict` outputs + batch fields of every example of `split` (host numpy)."""
  if splits is None:
    data, splits = split_data(run, data)
  if split not in splits:
    raise CTJaxError(f"split {split!r} does not exist; splits: {', '.join(splits)}")
  batches = data.eval_batches(run.config, splits, split, process_index=jax.process_index(),
                              process_count=jax.process_count())
  try:
    return collect_outputs(run.predict_step(), run.state, batches, run.mesh)
  except CTJaxError as e:
    raise CTJaxError(f"split {split!r}: {e}") from e


def evaluate(workdir: str | os.PathLike, split: str = "test", *, step: Optional[int] = None,
             data: Any = None, config_overrides: Optional[Mapping[str, Any]] = None,
             task: Optional[Task] = None) -> dict[str, Any]:
  """`Task.summarize` report of a run's best (else latest) state on `split`."""
  run = load_run(workdir, step, config_overrides=config_overrides, task=task)
  outputs = predict_split(run, split, data=data)
  report = dict(run.task.summarize(outputs, run.config))
  report.setdefault("step", run.step)
  report.setdefault("split", split)
  return report


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
