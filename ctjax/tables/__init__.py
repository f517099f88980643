"""Every table and figure of the two papers as one command (`python -m ctjax.tables NAME`).

`ctjax.tables.drct2` (DrCT2 paper, section VI.A: Tables 1-7, Figures 5-7) and
`ctjax.tables.blend` (blend-sign paper: Tables 3-4, Figure 6) define each table's grid of
cells and how its rows are read from them; `ctjax.tables.grid` trains and evaluates the cells
(resumable, shared between tables); `ctjax.tables.render` writes the Markdown + CSV + PNG with
our figures, their 95 % CIs and the paper's numbers side by side; `ctjax.tables.report` gathers
the written tables into docs/.
"""

from __future__ import annotations

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
