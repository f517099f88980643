"""The cells of a paper table: each one a normal `python -m ctjax.train` (or `ctjax.distill`)
workdir, trained once, evaluated once, shared by every table that needs it, resumable.

Layout under the tables workdir W:

  W/data/<data set>/            one generated phantom set per data set (paper preset: the
                                user's data roots); its prepared cache and DrCT feature store
                                (ctjax.train.features) live beside it, so every fold and
                                variant with the same data and backbone reads one store
  W/cells/<data set>/<variant>/fold_<k>/
      config.json, checkpoints/, metrics.jsonl, …   the trainer's workdir (distill: round_<r>/)
      evaluation.json           the test split's report + bootstrap CIs (+ calibration), as
                                `python -m ctjax.evaluate --json` writes it
      predictions.npz           the test split's per-scan outputs (probabilities, labels, slice
                                attention, slice labels, …), sorted by example index
      cell.json                 written last: the cell is finished (command, wall time, the
                                config's identity); a cell without it is trained again, and the
                                trainer resumes from its latest checkpoint
  W/tables/<table>.md|.csv|*.png   what `ctjax.tables.render` writes
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from ctjax.errors import ConfigError, CTJaxError

log = logging.getLogger(__name__)

CELL_MARKER = "cell.json"
# Per-example outputs kept for the tables (whatever of these the task predicts).
PREDICTION_KEYS = ("example_index", "labels", "probs", "probs_primary", "probs_aps",
                   "slice_attention", "slice_labels", "key_indices", "slice_index",
                   "num_source_slices", "label")


@dataclasses.dataclass(frozen=True)
class Cell:
  """One trained model: a config file (by name, in the config folder) with its argument and
  overrides, on one data set and fold. `runner`: "train" (`python -m ctjax.train`) or
  "distill" (`python -m ctjax.distill`: teacher + self-distilled students)."""
  dataset: str
  variant: str
  fold: int
  config_file: str
  config_arg: str = ""
  overrides: tuple[tuple[str, Any], ...] = ()
  runner: str = "train"

  @property
  def key(self) -> str:
    return f"{self.dataset}/{self.variant}/fold_{self.fold}"

  def config_spec(self) -> str:
    return self.config_file + (f":{self.config_arg}" if self.config_arg else "")


@dataclasses.dataclass
class Context:
  """Where and how cells run: the tables workdir, the preset's name, data roots by data set (empty: generated phantoms under W/data), overrides applied to
  every cell, the bootstrap's resamples and seed."""
  workdir: pathlib.Path
  preset: str = "cpu"
  data_roots: Mapping[str, str] = dataclasses.field(default_factory=dict)
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  n_boot: int = 1000
  seed: int = 0
  progress_bar: Optional[bool] = None

  def cell_dir(self, cell: Cell) -> pathlib.Path:
    return self.workdir / "cells" / cell.key

  def data_root(self, dataset: str) -> str:
    return self.data_roots.get(dataset) or str((self.workdir / "data" / dataset).resolve())


@dataclasses.dataclass
class Spec:
  """A table: its cells, and `render(results by cell key, output folder) -> render.Table`."""
  name: str
  title: str
  cells: list
  render: Callable[[Mapping[str, Any], pathlib.Path], Any]


@dataclasses.dataclass
class CellResult:
  """A finished cell: its evaluation report (with CIs), per-example test outputs, metadata."""
  cell: Cell
  path: pathlib.Path
  report: dict[str, Any]
  predictions: dict[str, np.ndarray]
  meta: dict[str, Any]

  def scalar(self, key: str) -> float:
    """A report figure by flatten_scalars name (`macro_f1`, `per_class/ich/auc`, …)."""
    value: Any = self.report
    for part in key.split("/"):
      if not isinstance(value, Mapping) or part not in value:
        return float("nan")
      value = value[part]
    try:
      return float(value)
    except (TypeError, ValueError):
      return float("nan")

  def ci(self, key: str) -> tuple[float, float]:
    got = (self.report.get("ci95") or {}).get(key)
    return (float(got["lo"]), float(got["hi"])) if got else (float("nan"), float("nan"))


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  from ctjax.configs.common import set_dotted
  try:
    with config.unlocked():
      set_dotted(config, {dotted: value})
  except TypeError as e:   # ml_collections' type safety: a str for an int field, …
    raise ConfigError(f"override {dotted}={value!r}: {e}") from e


def build_config(cell: Cell, ctx: Context) -> ml_collections.ConfigDict:
  """The cell's config: configs/<file>'s `get_config(arg)` as the library builds it
  (`ctjax.configs.named`), the cell's overrides, then the context's (data root, user
  overrides), as `--config file:arg --config.k=v` would give it."""
  from ctjax.configs import named
  config = named.get_config(cell.config_file, cell.config_arg or None)
  for key, value in cell.overrides:
    _set(config, key, value)
  _set(config, "data.root", ctx.data_root(cell.dataset))
  for key, value in ctx.overrides.items():
    _set(config, key, value)
  if ctx.progress_bar is not None:
    _set(config, "log.progress_bar", bool(ctx.progress_bar))
  return config


def _identity(config: ml_collections.ConfigDict) -> str:
  """Hash of the resolved config without the fields a resumed run may change."""
  from ctjax.train.loop import experiment_identity
  blob = json.dumps(experiment_identity(json.loads(config.to_json_best_effort(sort_keys=True))),
                    sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def command(cell: Cell, ctx: Context, cell_dir: pathlib.Path) -> str:
  """The shell commands that make this cell by hand (train, then evaluate)."""
  over = list(cell.overrides) + [("data.root", ctx.data_root(cell.dataset))]
  over += list(ctx.overrides.items())
  flags = " ".join(f"--config.{k}={_flag_value(v)}" for k, v in over)
  prog = "ctjax.train" if cell.runner == "train" else "ctjax.distill"
  cfg = f"configs/{cell.config_spec()}"
  run = f"python -m {prog} --config {cfg} --workdir {cell_dir} {flags}".strip()
  ev = cell_dir if cell.runner == "train" else f"{cell_dir}/round_<last>"
  return f"{run} && python -m ctjax.evaluate --workdir {ev} --split test --json evaluation.json"


def _flag_value(v: Any) -> str:
  if isinstance(v, (tuple, list)):
    return "'(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")'"
  return str(v)


def is_done(cell: Cell, ctx: Context) -> bool:
  return (ctx.cell_dir(cell) / CELL_MARKER).is_file()


def load_result(cell: Cell, ctx: Context) -> CellResult:
  path = ctx.cell_dir(cell)
  try:
    meta = json.loads((path / CELL_MARKER).read_text())
    report = json.loads((path / "evaluation.json").read_text())
    with np.load(path / "predictions.npz") as z:
      preds = {k: z[k] for k in z.files}
  except (OSError, ValueError, KeyError) as e:
    raise CTJaxError(f"{path}: unreadable finished cell ({e}); delete {path / CELL_MARKER} "
                     "to evaluate it again") from e
  return CellResult(cell, path, report, preds, meta)


def _final_workdir(cell: Cell, config: ml_collections.ConfigDict, path: pathlib.Path
                   ) -> pathlib.Path:
  if cell.runner == "distill":
    rounds = int(config.get("distill", {}).get("rounds", 0))
    return path / f"round_{rounds}"
  return path


def run_cell(cell: Cell, ctx: Context) -> CellResult:
  """Trains (or resumes) and evaluates one cell unless it is finished; returns its result.

  A finished cell whose saved config identity differs from the one asked for now is an error:
  its figures would belong to another experiment.
  """
  path = ctx.cell_dir(cell)
  config = build_config(cell, ctx)
  ident = _identity(config)
  if is_done(cell, ctx):
    result = load_result(cell, ctx)
    if result.meta.get("identity") != ident:
      raise ConfigError(f"{path} was made with another config ({result.meta.get('config')}); "
                        "use another --workdir or delete that cell folder")
    return result
  from ctjax.inference import runs
  from ctjax.eval import uncertainty
  from ctjax.jsonable import to_jsonable
  import jax
  t0 = time.perf_counter()
  log.info("cell %s: %s", cell.key, cell.config_spec())
  if cell.runner == "train":   # the training loop alone: the tables draw no report highlight
    from ctjax.train import loop
    loop.train_and_evaluate(config, path)
  elif cell.runner == "distill":
    from ctjax.experiments import skd
    skd.run(config, str(path), figures=False)
  else:
    raise ConfigError(f"cell runner {cell.runner!r}; expected train or distill")
  t_train = time.perf_counter() - t0
  final = _final_workdir(cell, config, path)
  run = runs.load_run(final)
  outputs = runs.predict_split(run, "test", prepare=True)   # it trained: it prepares
  report = runs.summarize(run, outputs, "test")
  uncertainty.add_uncertainty(report, outputs, run.config, n_boot=ctx.n_boot, seed=ctx.seed)
  order = np.argsort(np.asarray(outputs["example_index"]), kind="stable")
  preds = {k: np.asarray(outputs[k])[order] for k in PREDICTION_KEYS if k in outputs}
  wall = time.perf_counter() - t0
  if jax.process_index() == 0:
    path.mkdir(parents=True, exist_ok=True)
    _atomic_write(path / "evaluation.json", json.dumps(to_jsonable(report), indent=1))
    tmp = path / "predictions.tmp.npz"
    np.savez_compressed(tmp, **preds)
    os.replace(tmp, path / "predictions.npz")
    meta = {"cell": dataclasses.asdict(cell), "config": cell.config_spec(),
            "identity": ident, "command": command(cell, ctx, path),
            "train_seconds": t_train, "wall_seconds": wall, "step": int(run.step),
            "evaluated": str(final.relative_to(path)) if final != path else "."}
    _atomic_write(path / CELL_MARKER, json.dumps(to_jsonable(meta), indent=1))
  jax.clear_caches()
  log.info("cell %s done in %.0f s: macro F1 %.4f", cell.key, wall,
           float(report.get("macro_f1", float("nan"))))
  return load_result(cell, ctx) if jax.process_index() == 0 else CellResult(
      cell, path, report, preds, {})


def _atomic_write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def run_cells(cells: Sequence[Cell], ctx: Context, *, progress: bool = True
              ) -> dict[str, CellResult]:
  """Every cell, in order (a data set's first cell generates and prepares its data and builds
  its feature store; later ones reuse them), finished ones skipped. {cell.key: result}."""
  unique = list(dict.fromkeys(cells))
  todo = [c for c in unique if not is_done(c, ctx)]
  log.info("%d cells: %d finished, %d to run", len(unique), len(unique) - len(todo), len(todo))
  bar = None
  if progress and todo:
    from tqdm import tqdm
    bar = tqdm(total=len(todo), unit="cell", desc="table cells", dynamic_ncols=True)
  out = {}
  try:
    for cell in unique:
      was_done = is_done(cell, ctx)
      out[cell.key] = run_cell(cell, ctx)
      if bar is not None and not was_done:
        bar.update(1)
        bar.set_postfix(cell=cell.key)
  finally:
    if bar is not None:
      bar.close()
  return out


def folds_of(default: Iterable[int], chosen: Optional[Sequence[int]],
             num_folds: Optional[int] = None) -> list[int]:
  """The preset's default folds, or the --folds chosen (each in [0, num_folds) when given)."""
  if chosen is None:
    return list(default)
  if num_folds is not None:
    bad = [f for f in chosen if not 0 <= int(f) < num_folds]
    if bad:
      raise ConfigError(f"--folds {','.join(map(str, chosen))}: fold {bad[0]} is not in "
                        f"0..{num_folds - 1} (the data set's {num_folds} folds)")
  return [int(f) for f in dict.fromkeys(chosen)]
