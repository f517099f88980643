"""The generic training loop: `train_and_evaluate(config, workdir) -> dict`.

It knows only the `Task` protocol (ctjax.train.tasks) and the data contract of
ctjax.data.pipeline (`build_splits`, `train_iterator`, `eval_batches`), so DrCT, the blend-sign
classifier and backbone pretraining share it unchanged.

Workdir: config.json (resolved config), checkpoints/ (Orbax: latest + best), metrics.jsonl (one
JSON object per logged step or eval), tensorboard/ (tensorboardX), final_metrics.json. A run that
finds checkpoints in its workdir resumes from the latest one with the same data order.

Evaluators: `config.evals.<name>` = {split: str = name, every_steps: int (<= 0: only at the
end)}; with none configured, "val" runs at the end. Their metrics are logged as "<name>/<key>".
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctjax.errors import CheckpointError, CTJaxError, ConfigError
from ctjax.eval import metrics as metrics_lib
from ctjax.train import parallel
from ctjax.train import state as state_lib
from ctjax.train import steps as steps_lib
from ctjax.train.checkpoint import Checkpointer, restore_state

log = logging.getLogger(__name__)

# Batch entries that stay on device during evaluation (images); everything else (labels, ids,
# valid, boxes, slice maps) comes back to the host next to the predictions for `summarize`.
IMAGE_KEYS = ("hu", "image", "images", "feat_pooled", "feat_map", "feat_aps")
_DTYPES = ("float32", "bfloat16", "float16")


def get_data_module(data: Any = None) -> Any:
  """The data provider: `data` if given (tests, stand-ins), else ctjax.data.pipeline."""
  if data is not None:
    return data
  try:
    from ctjax.data import pipeline
  except ImportError as e:
    raise CTJaxError(f"ctjax.data.pipeline is not available ({e})") from e
  return pipeline


def evaluators(config: ml_collections.ConfigDict, steps_per_epoch: int = 1
               ) -> dict[str, dict[str, Any]]:
  """{name: {"split", "every_steps"}} from config.evals.

  Two forms: named sub-dicts (`evals.val = {split, every_steps | every_epochs}`), or one flat
  evaluator (`evals.split`, `evals.every_steps | every_epochs` next to task options such as
  `evals.threshold`) named after its split. `every_* == 0`: only at the end; `every_steps < 0`:
  never (smoke runs, benchmarks). Default: "val" at the end.
  """
  def period(spec) -> int:
    steps = int(spec.get("every_steps", 0) or 0)
    epochs = float(spec.get("every_epochs", 0) or 0)
    if steps == 0 and epochs > 0:
      steps = max(1, int(round(epochs * steps_per_epoch)))
    return steps

  evals = config.get("evals") or ml_collections.ConfigDict()
  out = {}
  for name, spec in evals.items():
    if isinstance(spec, (ml_collections.ConfigDict, dict)):
      out[name] = {"split": spec.get("split", name) or name, "every_steps": period(spec)}
  if not out and any(k in evals for k in ("split", "every_steps", "every_epochs")):
    split = evals.get("split", "val") or "val"
    out[split] = {"split": split, "every_steps": period(evals)}
  return out or {"val": {"split": "val", "every_steps": 0}}


def validate_config(config: ml_collections.ConfigDict, task: Any = None) -> None:
  """Raises ConfigError (one line) on values that would fail later or silently mislead."""
  def check(ok, message):
    if not ok:
      raise ConfigError(message)

  check(isinstance(config.get("task"), str) and config.task,
        "config.task must name a task (drct, blend, pretrain)")
  t = config.train
  check(int(t.batch_size) > 0, f"config.train.batch_size={t.batch_size} must be > 0")
  check(int(t.num_epochs) > 0 or int(t.max_steps) > 0,
        f"config.train.num_epochs={t.num_epochs} must be > 0 (or set train.max_steps > 0)")
  check(int(t.log_every_steps) > 0,
        f"config.train.log_every_steps={t.log_every_steps} must be > 0")
  check(str(config.model.dtype) in _DTYPES,
        f"config.model.dtype={config.model.dtype!r} must be one of {_DTYPES}")
  check(str(config.model.param_dtype) in _DTYPES,
        f"config.model.param_dtype={config.model.param_dtype!r} must be one of {_DTYPES}")
  d = config.data
  check(int(d.num_folds) >= 2, f"config.data.num_folds={d.num_folds} must be >= 2")
  check(0 <= int(d.fold) < int(d.num_folds),
        f"config.data.fold={d.fold} must lie in [0, num_folds={d.num_folds})")
  if d.get("root") and d.layout != "phantom":
    check(os.path.exists(d.root),
          f"config.data.root={d.root!r}: no such file or folder (layout {d.layout!r})")
  check(int(config.checkpoint.keep) >= 1,
        f"config.checkpoint.keep={config.checkpoint.keep} must be >= 1")
  best = str(config.checkpoint.best_metric or "")
  if best:
    names = evaluators(config)
    check(best.split("/", 1)[0] in names,
          f"config.checkpoint.best_metric={best!r} names no evaluator of config.evals "
          f"({sorted(names)})")
  if task is not None and hasattr(task, "validate_config"):
    task.validate_config(config)


def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


# Fields a resumed run may change (schedule length, logging, I/O); any other difference means the
# checkpoint belongs to another experiment and resuming it would silently mix the two.
_RESUMABLE_CHANGES = ("train.num_epochs", "train.max_steps", "train.log_every_steps",
                      "data.num_workers", "data.prefetch", "data.cache_dir", "log", "checkpoint",
                      "evals", "parallel")


def _identity(config_json: dict) -> dict:
  out = json.loads(json.dumps(config_json))
  for dotted in _RESUMABLE_CHANGES:
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
      node = node.get(key, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.pop(leaf, None)
  return out


def check_resumable(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Raises CheckpointError if `workdir` holds checkpoints of a different config."""
  saved_path = workdir / "config.json"
  if not saved_path.exists() or not (workdir / "checkpoints").exists():
    return
  saved = _identity(json.loads(saved_path.read_text()))
  current = _identity(json.loads(config.to_json_best_effort(sort_keys=True)))
  if saved == current:
    return
  diffs = []

  def walk(a, b, prefix):
    for key in sorted(set(a) | set(b)):
      x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
      if isinstance(x, dict) and isinstance(y, dict):
        walk(x, y, f"{prefix}{key}.")
      elif x != y:
        diffs.append(f"{prefix}{key}: {x!r} -> {y!r}")

  walk(saved, current, "")
  raise CheckpointError(
      f"{workdir} holds checkpoints of another config ({'; '.join(diffs[:4])}"
      f"{'; …' if len(diffs) > 4 else ''}); use a new --workdir or remove its checkpoints/")


class _Writer:
  """metrics.jsonl + TensorBoard, on process 0 only."""

  def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict):
    self.enabled = jax.process_index() == 0
    self.jsonl = open(workdir / "metrics.jsonl", "a") if self.enabled else None
    self.tb = None
    if self.enabled and config.log.get("tensorboard", True):
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in scalars.items()}
    self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for key, value in scalars.items():
        if isinstance(value, (int, float)) and not math.isnan(value):
          self.tb.add_scalar(key, value, step)

  def close(self) -> None:
    if self.jsonl:
      self.jsonl.close()
    if self.tb is not None:
      self.tb.close()


def evaluate_split(eval_step, state, task, config: ml_collections.ConfigDict, data: Any,
                   splits: Any, split: str, mesh) -> dict[str, Any]:
  """`task.summarize` of the predictions on one split (every process gets the same report)."""
  chunks = []
  batches: Iterable = data.eval_batches(config, splits, split,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
  for batch in batches:
    device_batch = parallel.host_to_global(batch, mesh)
    preds = eval_step(state, device_batch)
    keep = {k: v for k, v in device_batch.items() if k not in IMAGE_KEYS}
    chunks.append(parallel.to_host({**keep, **preds}))
  if not chunks:
    raise CTJaxError(f"split {split!r} is empty; nothing to evaluate")
  outputs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  if "valid" in outputs:
    valid = outputs.pop("valid").astype(bool)
    outputs = {k: v[valid] for k, v in outputs.items()}
  return task.summarize(outputs, config)


def _setup(config, workdir, task, data, mesh):
  """Task, model, splits, optimizer, initial state on the mesh and the compiled steps."""
  from ctjax.train.tasks import get_task
  task = task if task is not None else get_task(config.task)
  validate_config(config, task)
  data = get_data_module(data)
  splits = data.build_splits(config, str(workdir))
  model = task.build_model(config)
  num_train = len(splits["train"])
  global_batch = int(config.train.batch_size)
  parallel.local_batch_size(global_batch, mesh)   # divisibility check
  if hasattr(data, "steps_per_epoch"):   # the pipeline knows its per-process sharding.
    steps_per_epoch = max(1, int(data.steps_per_epoch(config, splits, jax.process_count())))
  else:
    steps_per_epoch = max(1, num_train // global_batch)
  tx = task.make_optimizer(config, steps_per_epoch)
  repl = parallel.replicated(mesh)

  def init(rng):
    return state_lib.create_state(task, model, config, rng, tx)

  shapes = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  state_sharding = jax.tree.map(lambda _: repl, shapes)
  state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(config.seed))
  if hasattr(task, "wrap_data"):   # e.g. DrCT's frozen-backbone feature cache
    data = task.wrap_data(config, data, splits, model,
                          parallel.replicated_to_host(state.variables()), workdir=workdir)
  train_step, eval_step = steps_lib.compile_steps(task, model, config, mesh, state_sharding)
  return task, data, splits, model, steps_per_epoch, state, train_step, eval_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       task: Any = None, data: Any = None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns final metrics.

  `task` / `data` replace `get_task(config.task)` / ctjax.data.pipeline (tests, stand-ins).
  """
  workdir = pathlib.Path(workdir)
  validate_config(config)
  check_resumable(config, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh(config)
  task, data, splits, model, steps_per_epoch, state, train_step, eval_step = _setup(
      config, workdir, task, data, mesh)
  if jax.process_index() == 0:
    _write_config(config, workdir)
  num_steps = steps_per_epoch * int(config.train.num_epochs)
  if int(config.train.max_steps) > 0:
    num_steps = min(num_steps, int(config.train.max_steps)) if int(
        config.train.num_epochs) > 0 else int(config.train.max_steps)
  log.info("task %s: %d trainable / %d frozen parameters, %d steps (%d per epoch), %d devices",
           task.name, state_lib.param_count(state.params), state_lib.param_count(state.frozen),
           num_steps, steps_per_epoch, mesh.devices.size)

  iterator = data.train_iterator(config, splits, seed=int(config.seed),
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  ckpt = Checkpointer(workdir, config)
  start = 0
  if ckpt.latest_step() is not None:
    start = int(ckpt.latest_step())
    state = ckpt.restore(state, iterator, step=start)
    log.info("resumed from %s at step %d", workdir / "checkpoints", start)

  evals = evaluators(config, steps_per_epoch)
  writer = _Writer(workdir, config)
  fold_rng = jax.jit(jax.random.fold_in, out_shardings=parallel.replicated(mesh))
  every_ckpt = int(config.checkpoint.every_steps)
  log_every = int(config.train.log_every_steps)
  global_batch = int(config.train.batch_size)
  bar = None
  if jax.process_index() == 0 and config.log.get("progress_bar", True):
    from tqdm import tqdm
    bar = tqdm(total=num_steps, initial=start, unit="step", dynamic_ncols=True,
               desc=f"{task.name}")
  final: dict[str, float] = {}
  reports: dict[str, Any] = {}
  pending: list = []
  window_start, window_steps = time.perf_counter(), 0

  def run_evals(step: int, at_end: bool) -> None:
    for name, spec in evals.items():
      if spec["every_steps"] < 0:
        continue
      due = spec["every_steps"] > 0 and step % spec["every_steps"] == 0
      if not (due or at_end):
        continue
      report = evaluate_split(eval_step, state, task, config, data, splits, spec["split"],
                              mesh)
      reports[name] = report
      scalars = metrics_lib.flatten_scalars(report, prefix=f"{name}/")
      writer.write(step, scalars)
      final.update(scalars)
      ckpt.maybe_save_best(step, state, scalars)
      headline = {k: v for k, v in scalars.items() if k.count("/") == 1}
      log.info("step %d %s: %s", step, name,
               ", ".join(f"{k}={v:.4f}" for k, v in sorted(headline.items())[:8]))

  try:
    step = start
    for step in range(start + 1, num_steps + 1):
      batch = parallel.host_to_global(next(iterator), mesh)
      rng = fold_rng(state.rng, step)
      state, step_metrics = train_step(state, batch, rng)
      pending.append(step_metrics)
      window_steps += 1
      if step % log_every == 0 or step == num_steps:
        host = jax.device_get(pending)
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        scalars = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
        scalars["train/scans_per_s"] = window_steps * global_batch / elapsed
        scalars["train/epoch"] = step / steps_per_epoch
        writer.write(step, scalars)
        final.update(scalars)
        if bar is not None:
          bar.set_postfix(loss=f"{scalars['train/loss']:.4f}",
                          scans_s=f"{scalars['train/scans_per_s']:.1f}")
        pending, window_start, window_steps = [], time.perf_counter(), 0
        if not all(math.isfinite(v) for v in scalars.values()):
          raise CTJaxError(f"non-finite training metrics at step {step}: {scalars}")
      if bar is not None:
        bar.update(1)
      if step < num_steps:
        run_evals(step, at_end=False)
        if every_ckpt > 0 and step % every_ckpt == 0:
          ckpt.save(step, state, iterator)
    if num_steps > start:
      ckpt.save(num_steps, state, iterator, force=True)
    run_evals(max(step, start), at_end=True)
    ckpt.wait()
    if hasattr(task, "after_training"):   # e.g. export weights: the best state when kept.
      chosen = state
      if ckpt.best_value is not None:
        chosen, best_step = restore_state(workdir, state, which="best")
        log.info("after_training: best state of step %d (%s)", best_step, ckpt.best_metric)
      task.after_training(config, str(workdir), parallel.replicated_to_host(chosen.variables()))
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    ckpt.close()
  final["step"] = float(max(num_steps, start))
  if jax.process_index() == 0:
    (workdir / "final_metrics.json").write_text(json.dumps(
        {"step": int(final["step"]), "metrics": _json_safe(final),
         "reports": _json_safe(reports)}, indent=2))
  return final


def evaluate_workdir(workdir: str | os.PathLike, split: str = "test", *,
                     step: Optional[int] = None, data: Any = None,
                     config_overrides: Optional[Mapping[str, Any]] = None,
                     task: Any = None) -> dict[str, Any]:
  """`task.summarize` report of a trained workdir's best (else latest) state on `split`."""
  from ctjax.train.checkpoint import load_config
  workdir = pathlib.Path(workdir)
  config = load_config(workdir)
  for key, value in (config_overrides or {}).items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  mesh = parallel.make_mesh(config)
  task, data, splits, model, _, state, _, eval_step = _setup(config, workdir, task, data, mesh)
  state, restored_step = restore_state(workdir, state, step=step)
  report = evaluate_split(eval_step, state, task, config, data, splits, split, mesh)
  report = dict(report)
  report.setdefault("step", restored_step)
  report.setdefault("split", split)
  return report


def _json_safe(obj: Any) -> Any:
  if isinstance(obj, Mapping):
    return {str(k): _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return _json_safe(obj.tolist())
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    return None if math.isnan(float(obj)) else float(obj)
  if isinstance(obj, jnp.ndarray):
    return _json_safe(np.asarray(obj))
  return obj
