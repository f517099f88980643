"""Every table and figure of the two papers as one command (`python -m ctjax.tables NAME`).

`ctjax.tables.drct2` (DrCT2 paper, section VI.A: Tables 1-7, Figures 5-7) and
`ctjax.tables.blend` (blend-sign paper: Tables 3-4, Figure 6) define each table's grid of
cells and how its rows are read from them; `ctjax.tables.grid` trains and evaluates the cells
(resumable, shared between tables); `ctjax.tables.render` writes the Markdown + CSV + PNG with
our figures, their 95 % CIs and the paper's numbers side by side; `ctjax.tables.publish` gathers
the written tables into docs/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Callable, Optional, Sequence

from ctjax.errors import ConfigError
from ctjax.tables import blend, drct2
from ctjax.tables.grid import Context, Spec, run_cells

log = logging.getLogger(__name__)

SPECS: dict[str, Callable[..., Spec]] = {**drct2.SPECS, **blend.SPECS}
GROUPS = {"drct2": tuple(drct2.SPECS), "blend": tuple(blend.SPECS),
          "all": tuple(drct2.SPECS) + tuple(blend.SPECS)}
RUN_LOG = "run_log.jsonl"


@dataclasses.dataclass(frozen=True)
class CpuCost:
  """Measured wall time of `--preset cpu` on 2 CPU cores: once per data set (phantom
  generation, DICOM → int16 cache, the frozen backbone's feature store, shared by every fold
  and variant), then per cell (training the heads, its evaluations, the test split's
  bootstrap). None: not measured."""
  setup_s: Optional[float]
  cell_s: Optional[float]
  measured: str


# From cells/*/cell.json and the logs of `python -m ctjax.tables drct2_table3 --preset cpu`
# (docs/tables.md), the 2 cores under load throughout.
CPU_COSTS = {
    "cq500": CpuCost(1200.0, 110.0, "300 scans, m = 32: setup 20 min (feature store 14 min), "
                     "cells 107-112 s"),
    "rsna": CpuCost(2455.0, 100.0, "1,280 scans, m = 28: setup 41 min (feature store 25 min), "
                    "cells 91-100 s"),
    # blend_table3's cells (runs/tables_blend, docs/tables.md): WCE 737 s with the setup,
    # WCE + AT 329 s (one model), WCE + AT + SKD 817 s (teacher and student), ResNet-50.
    "blend": CpuCost(410.0, 575.0, "150 scans at 128 px: setup ~7 min (generation, cache), "
                     "ResNet-50 cells 5.5 min (one model) to 13.6 min (+ SKD: two)"),
}


def cpu_estimate(spec: Spec, ctx: Context) -> str:
  """"N cells: ~T" from CPU_COSTS for the cells not finished in ctx.workdir (a data set's setup
  counted once, unless its data folder is there), or what is not measured."""
  cells = list(dict.fromkeys(spec.cells))
  if not cells:
    return "no cells (reads the prepared data sets)"
  from ctjax.tables.grid import is_done
  per, todo = {}, {}
  for c in cells:
    per[c.dataset] = per.get(c.dataset, 0) + 1
    todo[c.dataset] = todo.get(c.dataset, 0) + (not is_done(c, ctx))
  total, unknown = 0.0, []
  for name, n in todo.items():
    cost = CPU_COSTS.get(name)
    if cost is None or cost.setup_s is None or cost.cell_s is None:
      unknown.append(name)
      continue
    prepared = (ctx.workdir / "data" / name).is_dir()
    total += (0.0 if prepared or not n else cost.setup_s) + n * cost.cell_s
  plural = "s" if len(cells) > 1 else ""
  text = f"{len(cells)} cell{plural} ({', '.join(f'{k} {v}' for k, v in per.items())})"
  finished = len(cells) - sum(todo.values())
  if finished:
    text += f", {finished} finished"
  if unknown:
    return text + f"; not measured on {', '.join(unknown)}" + (
        f" (the rest ~{total / 60:.0f} min)" if total else "")
  return text + f": ~{total / 60:.0f} min on 2 CPU cores"


def expand(names: Sequence[str]) -> list[str]:
  """Table names with the groups (drct2, blend, all) expanded, in order, once each."""
  out = []
  for name in names:
    if name in GROUPS:
      out += GROUPS[name]
    elif name in SPECS:
      out.append(name)
    else:
      raise ConfigError(f"unknown table {name!r}; known: {', '.join(SPECS)} or a group "
                        f"({', '.join(GROUPS)})")
  return list(dict.fromkeys(out))


def make_tables(names: Sequence[str], ctx: Context, out_dir: pathlib.Path,
                command_for: Callable[[str], str], *, folds: Optional[Sequence[int]] = None,
                progress: bool = True) -> list:
  """Runs the cells of every named table (finished ones skipped), then writes each table to
  `out_dir`; returns the `render.Table`s. `command_for(name)` is the command line shown above
  a table; `folds` keeps only those folds of each grid."""
  t0 = time.perf_counter()
  specs = [SPECS[n](ctx, command_for(n), chosen=folds) for n in expand(names)]
  cells = [c for s in specs for c in s.cells]
  before = sum(1 for c in dict.fromkeys(cells) if (ctx.cell_dir(c) / "cell.json").is_file())
  results = run_cells(cells, ctx, progress=progress)
  tables = []
  for spec in specs:
    table = spec.render(results, out_dir)
    table.wall_seconds = time.perf_counter() - t0
    table.write(out_dir)
    tables.append(table)
    log.info("wrote %s", out_dir / f"{spec.name}.md")
  wall = time.perf_counter() - t0
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / RUN_LOG, "a") as f:
    f.write(json.dumps({"tables": [s.name for s in specs], "preset": ctx.preset,
                        "command": command_for(" ".join(names)),
                        "cells": len(set(cells)), "cells_reused": before,
                        "wall_seconds": round(wall, 1),
                        "finished": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
  return tables
