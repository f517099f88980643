"""The generic training loop: `train_and_evaluate(config, workdir) -> dict`.

It knows only the `Task` base class (ctjax.train.tasks) and the data contract of
ctjax.data.pipeline (`build_splits`, `steps_per_epoch`, `train_iterator`, `eval_batches`), so
DrCT, the blend-sign classifier and backbone pretraining share it unchanged.

Start-up order (big_vision's): build the model (pure) → resume from the latest checkpoint, or
else initialise (jitted), load pretrained weights on the host (`Task.load_pretrained`) and
place them with the state's sharding → wrap the data (`Task.wrap_data`) → restore the data
iterator's position when resuming → compile the steps.

Workdir: config.json (resolved config), checkpoints/ (Orbax: latest + best), metrics.jsonl (one
JSON object per logged step or eval), tensorboard/ (tensorboardX), final_metrics.json. A run that
finds checkpoints in its workdir resumes from the latest one with the same data order.

Evaluators: `config.evals.<name>` = {split: str = name, every_steps: int (<= 0: only at the
end)}; with none configured, "val" runs at the end. Their metrics are logged as "<name>/<key>".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import sys
import time
from typing import Any, Mapping, Optional

import jax
import ml_collections
import numpy as np

from ctjax import fileio
from ctjax.errors import CheckpointError, CTJaxError, ConfigError
from ctjax.eval import metrics as metrics_lib
from ctjax.jsonable import to_jsonable
from ctjax.train import evaluation, optim, parallel, profiling
from ctjax.train import state as state_lib
from ctjax.train import steps as steps_lib
from ctjax.train.checkpoint import Checkpointer, restore_state
from ctjax.train.tasks import Task, default_data_module, get_task

log = logging.getLogger(__name__)

from ctjax.models import DTYPES as _DTYPES  # noqa: E402


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


def non_finite_fields(node: Any, prefix: str = "config") -> list[str]:
  """`prefix.a.b=nan` for every NaN or infinite float in a config (lists included)."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    return [bad for key, value in node.items()
            for bad in non_finite_fields(value, f"{prefix}.{key}")]
  if isinstance(node, (list, tuple)):
    return [bad for i, value in enumerate(node)
            for bad in non_finite_fields(value, f"{prefix}[{i}]")]
  if isinstance(node, float) and not math.isfinite(node):
    return [f"{prefix}={node}"]
  return []


def validate_config(config: ml_collections.ConfigDict, task: Any = None) -> None:
  """Raises ConfigError (one line) on values that would fail later or silently mislead."""
  def check(ok, message):
    if not ok:
      raise ConfigError(message)

  bad = non_finite_fields(config)
  check(not bad, f"{', '.join(bad[:4])}{' …' if len(bad) > 4 else ''}: not a finite number "
        "(NaN and infinity are refused in every config field)")
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
  fileio.atomic_write_text(workdir / "config.json",
                           config.to_json_best_effort(indent=2, sort_keys=True),
                           "saving the run's config")


# Fields a resumed run may change (schedule length, logging, I/O); any other difference means the
# checkpoint belongs to another experiment and resuming it would silently mix the two.
_RESUMABLE_CHANGES = ("train.num_epochs", "train.max_steps", "train.log_every_steps",
                      "data.num_workers", "data.prefetch", "data.cache_dir",
                      "data.require_head", "log", "checkpoint", "evals", "parallel",
                      "compile")


def experiment_identity(config_json: dict) -> dict:
  """The config (as JSON) without the fields a resumed run may change: equal identities are the
  same experiment."""
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
  saved = experiment_identity(json.loads(saved_path.read_text()))
  current = experiment_identity(json.loads(config.to_json_best_effort(sort_keys=True)))
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


def _read_jsonl(path: pathlib.Path) -> tuple[list[dict], int]:
  """(records, number of unreadable lines) of a metrics.jsonl; a kill can cut the last line."""
  records, broken = [], 0
  lines = path.read_text().splitlines() if path.exists() else []
  for line in lines:
    try:
      rec = json.loads(line)
    except ValueError:
      rec = None
    if isinstance(rec, dict) and isinstance(rec.get("step"), int):
      records.append(rec)
    else:
      broken += 1
  return records, broken


class _Writer:
  """metrics.jsonl + TensorBoard, on process 0 only.

  Idempotent over a resume from step `start` (0: a fresh start): records of later steps, which
  the run is about to repeat, are dropped from metrics.jsonl first (TensorBoard: `purge_step`),
  and a record at `start` with the same keys as one already there replaces it (the final
  evaluation of a run that stopped after its last checkpoint).
  """

  def __init__(self, workdir: pathlib.Path, config: ml_collections.ConfigDict, start: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"
    self.start = int(start)
    self.jsonl = None
    self.tb = None
    self._kept: list[dict] = []
    if not self.enabled:
      return
    records, broken = _read_jsonl(self.path)
    self._kept = [r for r in records if r["step"] <= self.start]
    if broken or len(self._kept) != len(records):
      log.info("metrics.jsonl: %d record(s) after step %d dropped (they are re-run), %d "
               "unreadable line(s)", len(records) - len(self._kept), self.start, broken)
      self._rewrite()
    self.jsonl = open(self.path, "a")
    if config.log.get("tensorboard", True):
      from tensorboardX import SummaryWriter
      purge = {"purge_step": self.start + 1} if self.start > 0 else {}
      self.tb = SummaryWriter(str(workdir / "tensorboard"), **purge)

  def _rewrite(self) -> None:
    fileio.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self._kept),
                             "rewriting metrics.jsonl")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in scalars.items()}
    record = {"step": step, **clean}
    if step == self.start and self._kept:
      same = [r for r in self._kept if r["step"] == step and set(r) == set(record)]
      if same:
        self._kept = [r for r in self._kept if r not in same]
        self.jsonl.close()
        self._rewrite()
        self.jsonl = open(self.path, "a")
    try:
      self.jsonl.write(json.dumps(record) + "\n")
      self.jsonl.flush()
    except OSError as e:
      raise fileio.storage_error(e, self.path, "writing metrics.jsonl") from e
    if self.tb is not None:
      for key, value in scalars.items():
        if isinstance(value, (int, float)) and not math.isnan(value):
          self.tb.add_scalar(key, value, step)

  def close(self) -> None:
    try:
      if self.jsonl:
        self.jsonl.close()
    finally:
      if self.tb is not None:
        self.tb.close()


def _close_all(*closers) -> None:
  """Calls every closer. While an exception propagates (a `finally`), a closer's own error is
  logged in one line and dropped, so the first error is the one reported; otherwise the first
  closer's error is raised after the others ran."""
  propagating = sys.exc_info()[1] is not None
  first: Optional[BaseException] = None
  for close in closers:
    try:
      close()
    except Exception as e:
      if propagating:
        log.debug("closing after an error: %s: %s", type(e).__name__, e)
      elif first is None:
        first = e
  if first is not None:
    raise first


def evaluate_split(eval_step, state, task, config: ml_collections.ConfigDict, data: Any,
                   splits: Any, split: str, mesh) -> dict[str, Any]:
  """`task.summarize` of the predictions on one split (every process gets the same report)."""
  outputs = evaluation.split_outputs(eval_step, state, config, data, splits, split, mesh)
  return task.summarize(outputs, config)


class _Setup:
  """Everything `train_and_evaluate` builds before the first step."""

  def __init__(self, config, workdir: pathlib.Path, task, data, mesh, ckpt: Checkpointer):
    self.task = task if task is not None else get_task(config.task)
    validate_config(config, self.task)
    data = default_data_module(data)
    # Generated / prepared once, by process 0, while the others wait (then only read it).
    self.splits = parallel.process_zero_first(
        lambda: data.build_splits(config, str(workdir)), "ctjax_build_splits")
    self.model = self.task.build_model(config)
    parallel.local_batch_size(int(config.train.batch_size), mesh)   # divisibility check
    # The data module knows its per-process sharding.
    spe = int(data.steps_per_epoch(config, self.splits, jax.process_count()))
    self.steps_per_epoch = max(1, spe)
    self.num_steps = optim.total_steps(config, self.steps_per_epoch)
    self.tx, self.schedule = optim.make_optimizer(
        config, self.num_steps, self.steps_per_epoch,
        lambda params: self.task.param_groups(config, params))
    template, self.state_sharding = state_lib.abstract_state(self.task, self.model, config,
                                                             mesh, self.tx)
    # The newest step that restores; unreadable newer ones are logged and set aside.
    self.state, self.resume_step = ckpt.restore_latest(template)
    if self.resume_step is not None:
      log.info("resumed from %s at step %d", workdir / "checkpoints", self.resume_step)
    else:
      self.state = self._initial_state(config, mesh)
    self.data = self.task.wrap_data(config, data, self.splits, self.model,
                                    parallel.replicated_to_host(self.state.variables()),
                                    workdir=workdir)
    self.train_step, self.eval_step = steps_lib.compile_steps(
        self.task, self.model, config, mesh, self.state_sharding)

  def _initial_state(self, config, mesh) -> state_lib.TrainState:
    """init (jitted, random) → pretrained weights loaded on the host → state on the mesh."""
    task, model, repl = self.task, self.model, parallel.replicated(mesh)
    init_rng, state_rng = state_lib.split_init_rng(jax.random.PRNGKey(int(config.seed)))
    # XLA compiles the whole model's initialisation first (half a minute on 2 CPU cores for the
    # README's DrCT2): say so, as nothing else moves meanwhile.
    started = time.perf_counter()
    log.info("initialising the model (compiling its initialisation)")
    variables = jax.jit(lambda r: task.init_variables(model, config, r),
                        out_shardings=repl)(init_rng)
    jax.block_until_ready(variables)
    log.info("model initialised in %.1f s", time.perf_counter() - started)
    host = parallel.replicated_to_host(variables)
    loaded = task.load_pretrained(config, host)
    if loaded is not host:
      variables = parallel.put_replicated(loaded, mesh)
    make = jax.jit(lambda v, r: state_lib.state_from_variables(task, config, v, r, self.tx),
                   out_shardings=self.state_sharding)
    return make(variables, state_rng)


WORKDIR_LOCK = "train.lock"


def lock_workdir(workdir: pathlib.Path) -> Any:
  """One process group per workdir: process 0 takes `workdir/train.lock` (its record names the
  holder); every process of the run raises the same one-line `LockedError` if it is held.

  Only process 0 locks, so the run's processes on other hosts need not share a lock file with it
  (a shared file system is what makes two groups on one workdir meet at the same file).
  """
  def take():
    return fileio.exclusive_lock(workdir / WORKDIR_LOCK, "--workdir", target=workdir,
                                 advice="wait for that run to end or stop it, or train in "
                                 "another --workdir")
  if jax.process_count() == 1:
    return take()
  from jax.experimental import multihost_utils
  from ctjax.errors import LockedError, StorageError
  lock, refusal, error = contextlib.nullcontext(), "", None
  if jax.process_index() == 0:
    try:
      lock = take()
    except StorageError as e:
      refusal, error = str(e), e
  size = 2048   # the refusal's bytes, broadcast from process 0 (a collective: also a barrier)
  buf = np.zeros(size, np.uint8)
  raw = refusal.encode()[:size]
  buf[:len(raw)] = np.frombuffer(raw, np.uint8)
  got = np.asarray(multihost_utils.broadcast_one_to_all(buf)).astype(np.uint8)
  text = got.tobytes().rstrip(b"\0").decode(errors="replace")
  if error is not None:
    raise error
  if text:
    raise LockedError(f"process {jax.process_index()} of {jax.process_count()}: {text}")
  return lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       task: Any = None, data: Any = None,
                       profile: Optional[str | os.PathLike] = None,
                       profile_steps: int = profiling.DEFAULT_STEPS) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns final metrics.

  `task` / `data` replace `get_task(config.task)` / ctjax.data.pipeline (tests, stand-ins).
  `profile`: a folder for a `jax.profiler` trace of `profile_steps` train steps after this
  start's first (`ctjax.train.profiling.StepTrace`).
  The workdir is locked for the run (`lock_workdir`) before anything heavy starts.
  """
  started = time.perf_counter()   # this invocation's wall time goes into final_metrics.json
  workdir = pathlib.Path(workdir)
  task = task if task is not None else get_task(config.task)
  validate_config(config, task)               # the task's own checks too: before any file
  trace = profiling.StepTrace(profile, count=profile_steps, name="train")
  fileio.writable_dir(workdir, "--workdir")   # a file or a read-only folder: one line, now
  with lock_workdir(workdir):
    return _train_and_evaluate(config, workdir, task, data, started, trace)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: pathlib.Path, task: Any,
                        data: Any, started: float,
                        trace: profiling.StepTrace) -> dict[str, float]:
  check_resumable(config, workdir)
  mesh = parallel.make_mesh(config)
  ckpt = Checkpointer(workdir, config)
  setup = _Setup(config, workdir, task, data, mesh, ckpt)
  task, data, splits, state = setup.task, setup.data, setup.splits, setup.state
  train_step, eval_step = setup.train_step, setup.eval_step
  steps_per_epoch, num_steps = setup.steps_per_epoch, setup.num_steps
  if jax.process_index() == 0:
    _write_config(config, workdir)
  log.info("task %s: %d trainable / %d frozen parameters, %d steps (%d per epoch), %d devices",
           task.name, state_lib.param_count(state.params), state_lib.param_count(state.frozen),
           num_steps, steps_per_epoch, mesh.devices.size)

  iterator = data.train_iterator(config, splits, seed=int(config.seed),
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  start = 0
  if setup.resume_step is not None:
    start = int(setup.resume_step)
    ckpt.restore_iterator(iterator, step=start)

  evals = evaluators(config, steps_per_epoch)
  writer = _Writer(workdir, config, start)
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
      with trace.step(step):
        state, step_metrics = train_step(state, batch, rng)
      trace.done((state, step_metrics))
      pending.append(step_metrics)
      window_steps += 1
      if step % log_every == 0 or step == num_steps:
        host = jax.device_get(pending)
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        scalars = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
        scalars["train/scans_per_s"] = window_steps * global_batch / elapsed
        scalars["train/epoch"] = step / steps_per_epoch
        scalars["train/lr"] = float(setup.schedule(step - 1))   # the rate of this step's update
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
    if type(task).after_training is not Task.after_training:   # e.g. export the backbone
      chosen = state
      if ckpt.best_value is not None:
        # "auto": a best checkpoint that no longer restores falls back to the latest (the
        # final state, just saved) with a warning, instead of failing a finished run.
        chosen, best_step = restore_state(workdir, state, which="auto")
        log.info("after_training: state of step %d (best by %s where it restores)", best_step,
                 ckpt.best_metric)
      task.after_training(config, str(workdir), parallel.replicated_to_host(chosen.variables()))
  finally:
    _close_all(trace.close, *([bar.close] if bar is not None else []), writer.close,
               ckpt.close)
  final["step"] = float(max(num_steps, start))
  if jax.process_index() == 0:
    fileio.atomic_write_text(workdir / "final_metrics.json", json.dumps(
        {"step": int(final["step"]), "metrics": to_jsonable(final),
         "reports": to_jsonable(reports),
         # Data setup included; a resumed run times only its last invocation.
         "wall_seconds": round(time.perf_counter() - started, 1),
         "resumed_from_step": start if setup.resume_step is not None else None},
        indent=2), "writing final_metrics.json")
  return final
