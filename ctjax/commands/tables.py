"""`python -m ctjax.tables NAME [NAME …] --workdir DIR [--preset cpu|paper|smoke] [--folds 0,1]`.

Trains and evaluates every cell the named tables need (finished cells skipped, a killed cell
resumed from its checkpoint) and writes each table as Markdown + CSV (+ PNG figures) with our
figures, their 95 % CIs and the paper's numbers side by side, to DIR/tables (or --out).

  python -m ctjax.tables --list [--preset cpu]    # the tables, their cells, the cpu wall times
  python -m ctjax.tables drct2_table3 --preset cpu --workdir runs/tables
  python -m ctjax.tables drct2 --preset paper --workdir runs/paper \
      --rsna_root /data/rsna --cq500_root /data/cq500 \
      --override model.backbone_weights=weights/vgg16.npz
  python -m ctjax.tables report --workdir runs/tables --docs docs # tables → docs/RESULTS.md
  python -m ctjax.tables departures --docs docs                  # → docs/departures.md

Each cell's config is built by the library (`ctjax.configs.named`: the builder behind
configs/<name>.py), so the command runs from an installed package in any directory.
"""

from __future__ import annotations

import ast
import pathlib
import sys

from absl import flags

from ctjax.commands import cli


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("preset", "cpu", ["cpu", "paper", "smoke"],
                    "cpu: phantoms on a CPU; paper: the papers' settings on your data; smoke: "
                    "seconds-long cells checking the machinery", flag_values=fv)
  flags.DEFINE_string("folds", None, "comma-separated folds (default: every fold the preset "
                      "runs)", flag_values=fv)
  flags.DEFINE_string("out", None, "where the tables go (default: WORKDIR/tables)",
                      flag_values=fv)
  flags.DEFINE_string("rsna_root", None, "RSNA data root (paper preset)", flag_values=fv)
  flags.DEFINE_string("cq500_root", None, "CQ500 data root (paper preset)", flag_values=fv)
  flags.DEFINE_string("blend_root", None, "blend-sign data root (paper preset)",
                      flag_values=fv)
  flags.DEFINE_multi_string("override", [], "config field for every cell, key=value "
                            "(e.g. model.backbone_weights=weights/vgg16.npz)", flag_values=fv)
  flags.DEFINE_integer("n_boot", 1000, "bootstrap resamples of each CI", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed of the bootstrap resampling", flag_values=fv)
  flags.DEFINE_string("docs", None, "report: the docs folder to write (its RESULTS.md and "
                      "tables/); required by report", flag_values=fv)
  flags.DEFINE_bool("list", False, "list the tables, their cells under --preset and (cpu) "
                    "the estimated wall time, then exit", flag_values=fv)
  flags.DEFINE_bool("compile_cache", True, "share compiled programs between cells and runs "
                    "(the persistent compilation cache of every command, "
                    "ctjax.train.compilation); --nocompile_cache turns it off", flag_values=fv)
  cli.distributed_flags(fv)


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _overrides(items) -> dict:
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise cli.UsageError(f"--override {item!r}: expected key=value")
    out[key] = _value(value)
  return out


def _command(fv, name: str) -> str:
  parts = [f"python -m ctjax.tables {name} --preset {fv.preset} --workdir {fv.workdir}"]
  if fv.folds:
    parts.append(f"--folds {fv.folds}")
  for flag in ("rsna_root", "cq500_root", "blend_root"):
    if getattr(fv, flag):
      parts.append(f"--{flag} {getattr(fv, flag)}")
  parts += [f"--override {o}" for o in fv.override]
  return " ".join(parts)


def _main(fv, _config, args) -> int:
  from ctjax import tables
  if fv.list or args == ["list"]:
    return _list(fv, tables)
  if not args:
    raise cli.UsageError("name a table (python -m ctjax.tables --list)")
  if args[0] == "departures":   # docs/departures.md: no cells, no workdir
    if not fv.docs:
      raise cli.UsageError("departures writes into a docs folder: name it with --docs DIR")
    from ctjax.tables import departures
    print(departures.write(fv.docs))
    return 0
  if not fv.workdir:
    raise cli.UsageError("--workdir DIR is required")
  workdir = pathlib.Path(fv.workdir)
  out = pathlib.Path(fv.out) if fv.out else workdir / "tables"
  if args[0] == "report":
    if not fv.docs:
      raise cli.UsageError("report writes into a docs folder: name it with --docs DIR")
    from ctjax.tables import publish
    paths = publish.write_docs(out, pathlib.Path(fv.docs))
    print("\n".join(str(p) for p in paths))
    return 0
  from ctjax.tables.grid import Context
  from ctjax.train import parallel
  parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
  folds = None
  if fv.folds:
    try:
      folds = [int(f) for f in fv.folds.split(",") if f.strip()]
    except ValueError as e:
      raise cli.UsageError(f"--folds {fv.folds!r}: expected comma-separated integers") from e
  roots = {k: v for k, v in (("rsna", fv.rsna_root), ("cq500", fv.cq500_root),
                             ("blend", fv.blend_root)) if v}
  if fv.preset == "paper":
    names = tables.expand(args)
    need = sorted({c.dataset for n in names
                   for c in tables.SPECS[n](Context(workdir, "paper"), "").cells}
                  - set(roots))
    if need:
      raise cli.UsageError(f"--preset paper needs the data: --{need[0]}_root DIR (missing: "
                           f"{', '.join(need)})")
  ctx = Context(workdir, fv.preset, roots, _overrides(fv.override),
                n_boot=fv.n_boot, seed=fv.seed)
  if not fv.compile_cache:
    from ctjax.train import compilation
    compilation.disable_cache()
  made = tables.make_tables(args, ctx, out, lambda n: _command(fv, n), folds=folds)
  for t in made:
    print(out / f"{t.name}.md")
  return 0


def _list(fv, tables) -> int:
  """Each table: what it is, its cells under --preset, and for cpu the estimated wall time."""
  from ctjax.tables.grid import Context
  ctx = Context(pathlib.Path(fv.workdir or "runs/tables"), fv.preset)
  folds = [int(f) for f in fv.folds.split(",")] if fv.folds else None
  for name, make in tables.SPECS.items():
    line = f"{name:16s} {(make.__doc__ or '').strip()}"
    spec = make(ctx, "", chosen=folds)
    if fv.preset == "cpu":
      line += f"\n{'':16s} --preset cpu: {tables.cpu_estimate(spec, ctx)}"
    else:
      line += f"\n{'':16s} --preset {fv.preset}: {len(set(spec.cells))} cells"
    print(line)
  for group, names in tables.GROUPS.items():
    print(f"{group:16s} {' '.join(names)}")
  return 0


def main(argv=None) -> int:
  return cli.run(_main, argv, prog="ctjax.tables", workdir=cli.OPTIONAL, extra_flags=_flags,
                 positional=True, workdir_help="tables workdir (data/, cells/, tables/)")


if __name__ == "__main__":
  sys.exit(main())
