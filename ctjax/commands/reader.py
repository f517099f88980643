"""`python -m ctjax.reader COMMAND --workdir STUDY …`: the reader study of DrCT2, Table 8.

  create      --workdir STUDY --run RUN [--num_scans 148 --seed 0 --washout_days 7]
              [--data_layout L --data_root R | --scans DIR] [--readers "A,B,C"] [--view_size N]
  add-reader  --workdir STUDY --name NAME        prints the reader's link (shown once)
  new-token   --workdir STUDY --name NAME        a new link for a reader (the old one stops)
  readers     --workdir STUDY                    readers and where each stands
  serve       --workdir STUDY [--host 127.0.0.1 --port 8765 --threads 8]
  export      --workdir STUDY [--out STUDY/reads.csv]
  analyze     --workdir STUDY [--out STUDY/analysis --n_resamples 9999 --seed 0]

`--workdir` is the study folder; `create --run` is the trained `python -m ctjax.train` DrCT
workdir whose reports the assisted arm shows. Every command goes through `ctjax.commands.cli.run`:
errors are one line `error: …` on stderr, exit status 1 (2: a missing flag or command).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from absl import flags

from ctjax.commands import cli

STUDY_HELP = "the study folder (made by `create`)"


def _base_url(fv) -> str:
  return fv.base_url.rstrip("/")


def _link_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("base_url", "http://127.0.0.1:8765",
                      "where `serve` runs, for the printed links", flag_values=fv)


def _create_flags(fv: flags.FlagValues) -> None:
  from ctjax.reader import study
  flags.DEFINE_string("run", None, "trained DrCT run (a python -m ctjax.train workdir)",
                      flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: best, else latest)",
                       flag_values=fv)
  flags.DEFINE_integer("num_scans", study.DEFAULT_NUM_SCANS,
                       "scans in the study, a seeded random sample (0: all); the paper's 148",
                       flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seeds the scan sample, the case ids and every reader's "
                       "orders", flag_values=fv)
  flags.DEFINE_float("washout_days", study.DEFAULT_WASHOUT_DAYS,
                     "minimum days between a reader's first read of each arm", flag_values=fv)
  flags.DEFINE_string("name", "", "study title (default: the folder's name)", flag_values=fv)
  flags.DEFINE_string("data_layout", None, "read scans from this data set layout "
                      "(rsna | cq500 | folder | phantom) instead of the run's test split",
                      flag_values=fv)
  flags.DEFINE_string("data_root", None, "root of --data_layout", flag_values=fv)
  flags.DEFINE_string("scans", None, "a folder of DICOM series without labels (no accuracy)",
                      flag_values=fv)
  flags.DEFINE_list("readers", [], "readers to add now (comma-separated names)", flag_values=fv)
  flags.DEFINE_integer("view_size", 0, "resize stored slices to N×N (0: source size)",
                       flag_values=fv)
  _link_flags(fv)


def _create(fv: flags.FlagValues) -> int:
  from ctjax.reader import db, study
  if not fv.run:
    raise cli.UsageError("--run RUN (the trained DrCT workdir) is required")
  scans = None
  if fv.scans and fv.data_layout:
    raise cli.UsageError("give --scans or --data_layout/--data_root, not both")
  if fv.data_layout or fv.data_root:
    if not (fv.data_layout and fv.data_root):
      raise cli.UsageError("--data_layout and --data_root go together")
    scans = study.dataset_scans(fv.data_layout, fv.data_root, fv.num_scans, fv.seed)
  elif fv.scans:
    scans = study.folder_scans(fv.scans, fv.num_scans, fv.seed)
  s = study.create_study(fv.workdir, fv.run, scans=scans, num_scans=fv.num_scans,
                         seed=fv.seed, washout_days=fv.washout_days, name=fv.name,
                         step=fv.step, view_size=fv.view_size)
  print(f"{fv.workdir}: study of {len(s.cases)} cases, labels {', '.join(s.labels)}, "
        f"washout {s.washout_days:g} days (model reports in {s.meta['create_seconds']:.1f} s)")
  if fv.readers:
    d = db.StudyDB(s)
    for name in fv.readers:
      reader, token = d.add_reader(name)
      print(f"reader {reader.name}: {_base_url(fv)}/r/{token}/")
    d.close()
  return 0


def _name_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("name", None, "the reader's name", flag_values=fv)
  _link_flags(fv)


def _add_reader(fv: flags.FlagValues) -> int:
  from ctjax.reader import db, study
  if not fv.name:
    raise cli.UsageError("--name NAME is required")
  d = db.StudyDB(study.Study(fv.workdir))
  reader, token = d.add_reader(fv.name)
  d.close()
  print(f"reader {reader.name}: {_base_url(fv)}/r/{token}/  (only its hash is kept: "
        "give the link to the reader now)")
  return 0


def _new_token(fv: flags.FlagValues) -> int:
  from ctjax.reader import db, study
  if not fv.name:
    raise cli.UsageError("--name NAME is required")
  d = db.StudyDB(study.Study(fv.workdir))
  token = d.new_token(fv.name)
  d.close()
  print(f"reader {fv.name}: {_base_url(fv)}/r/{token}/  (the previous link no longer works)")
  return 0


def _readers(fv: flags.FlagValues) -> int:
  from ctjax.reader import clock, db, study
  d = db.StudyDB(study.Study(fv.workdir))
  for r in d.readers():
    st = d.state(r.id)
    where = {"finished": "finished",
             "washout": f"{st.arm} arm opens {clock.iso(st.available_at)}"}.get(
                 st.status, f"{st.arm}: {st.position} of {st.total} read")
    print(f"{r.number:3d}  {r.name}: {where}")
  d.close()
  return 0


def _serve_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("host", "127.0.0.1", "address to bind (loopback by default)",
                      flag_values=fv)
  flags.DEFINE_integer("port", 8765, "port", flag_values=fv)
  from ctjax.reader.server import DEFAULT_THREADS
  flags.DEFINE_integer("threads", DEFAULT_THREADS, "requests served at once (waitress worker "
                       "threads)", lower_bound=1, flag_values=fv)


def _serve(fv: flags.FlagValues) -> int:
  from ctjax.reader import server, study
  s = study.Study(fv.workdir)   # a missing study is one line before the server starts
  print(f"serving study {s.name!r} ({len(s.cases)} cases) on http://{fv.host}:{fv.port}/ — "
        "readers open their own links; Ctrl-C stops", flush=True)
  try:
    server.serve(fv.workdir, fv.host, fv.port, threads=fv.threads)
  except KeyboardInterrupt:
    return 0
  except OSError as e:   # the port is taken, the address is not this machine's
    from ctjax import errors
    raise errors.StudyError(f"cannot serve on {fv.host}:{fv.port} ({e.strerror or e})") from e
  return 0


def _export_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("out", None, "CSV path (default STUDY/reads.csv)", flag_values=fv)


def _study_reads(workdir: str):
  """(the study folder, every read recorded in it)."""
  from ctjax.reader import db, study
  s = study.Study(workdir)
  d = db.StudyDB(s)
  try:
    return s, d.reads()
  finally:
    d.close()


def _export(fv: flags.FlagValues) -> int:
  import pathlib
  from ctjax.reader import analysis
  s, reads = _study_reads(fv.workdir)
  out = pathlib.Path(fv.out or pathlib.Path(fv.workdir) / "reads.csv")
  out.parent.mkdir(parents=True, exist_ok=True)
  analysis.export_csv(s, reads, out)
  print(f"{out}: {len(reads)} reads")
  return 0


def _analyze_flags(fv: flags.FlagValues) -> None:
  from ctjax.reader import analysis
  flags.DEFINE_string("out", None, "output folder (default STUDY/analysis)", flag_values=fv)
  flags.DEFINE_integer("n_resamples", analysis.DEFAULT_RESAMPLES, "bootstrap resamples",
                       flag_values=fv)
  flags.DEFINE_integer("seed", 0, "bootstrap seed (reader k uses seed + k)", flag_values=fv)


def _analyze(fv: flags.FlagValues) -> int:
  import pathlib
  from ctjax.reader import analysis
  s, reads = _study_reads(fv.workdir)
  out = pathlib.Path(fv.out or pathlib.Path(fv.workdir) / "analysis")
  paths = analysis.write_analysis(s, reads, out, n_resamples=fv.n_resamples, seed=fv.seed)
  print(paths["markdown"].read_text(encoding="utf-8"), end="")
  print(f"written: {', '.join(str(p) for p in paths.values())}")
  return 0


COMMANDS = {
    "create": (_create, _create_flags),
    "add-reader": (_add_reader, _name_flags),
    "new-token": (_new_token, _name_flags),
    "readers": (_readers, None),
    "serve": (_serve, _serve_flags),
    "export": (_export, _export_flags),
    "analyze": (_analyze, _analyze_flags),
}


def _dispatch(fv: flags.FlagValues, _config, args: list[str]) -> int:
  """`cli.run`'s function: the sub-command is the one positional argument."""
  if len(args) > 1:
    raise cli.UsageError(f"{args[0]}: unexpected arguments {args[1:]}")
  return COMMANDS[args[0]][0](fv)


def _no_command(_fv, _config, args: list[str]) -> int:
  if args and args[0] in COMMANDS:
    raise cli.UsageError(f"put the command before its flags: python -m ctjax.reader {args[0]} "
                         "--workdir STUDY …")
  got = f" (got {args[0]!r})" if args else ""
  raise cli.UsageError(f"give a command{got}: {' | '.join(COMMANDS)}; e.g. python -m "
                       "ctjax.reader create --workdir STUDY --run RUN")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`argv` without the program name; its first element is the sub-command, whose flags are
  the only ones defined (so `--help` and unknown-flag errors are the command's own)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  name = argv[0] if argv and argv[0] in COMMANDS else None
  if name is None:   # no command, or not first: one usage line (exit 2) through cli.run
    return cli.run(_no_command, argv, prog="ctjax.reader", workdir=cli.OPTIONAL,
                   workdir_help=STUDY_HELP, positional=True)
  return cli.run(_dispatch, argv, prog=f"ctjax.reader {name}", workdir=cli.REQUIRED,
                 extra_flags=COMMANDS[name][1], workdir_help=STUDY_HELP, positional=True)


if __name__ == "__main__":
  sys.exit(main())
