"""`python -m ctjax.predict`: one row of predictions per CT series, CSV or JSON lines.

  python -m ctjax.predict --workdir RUN --scans PATH --out preds.csv [--reports DIR]
  python -m ctjax.predict --workdir RUN --split test --out test.jsonl     # the run's own data

PATH is a folder of series folders, one series folder (or file), or a data-set root in a layout
`ctjax.data.datasets` reads (found by its index file, or --layout). Series are decoded by
--workers spawned processes while the device predicts the previous batch, on every device of
the run's mesh. A series that cannot be read, or that is no head CT (the run's
config.data.require_head; --norequire_head predicts it anyway, for research), becomes a row with
status "error"; the command still exits 0 (with a warning line) unless --fail_on_error. Every
row carries the series' QA flags (`ctjax.data.qa`). One run writes to an --out at a time
(`<out>.lock`). Rerunning skips the series already in --out, by SeriesInstanceUID (append-only:
a killed run resumes where it stopped). The columns, the sidecar `<out>.json` and the throughput
line: `ctjax.inference.archive`. `--profile DIR` writes a jax.profiler trace of the device
calls of --profile_steps batches (the 2nd to the 4th by default; ctjax.train.profiling).
"""

from __future__ import annotations

import sys
import time

from absl import flags

from ctjax.commands import cli


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("scans", None, "folder of series, one series, or a data-set root",
                      flag_values=fv)
  flags.DEFINE_string("split", None, "instead of --scans: this split (train|val|test) of the "
                      "run's own data set, read from its DICOM files", flag_values=fv)
  flags.DEFINE_string("out", None, "predictions file: .csv or .jsonl (appended to)",
                      flag_values=fv)
  flags.DEFINE_string("layout", "auto", "auto | series | rsna | cq500 | folder | blend | phantom "
                      "(auto: a data-set root by its index file, else a folder of series)",
                      flag_values=fv)
  flags.DEFINE_string("reports", None, "also write each series' HTML report into this folder",
                      flag_values=fv)
  flags.DEFINE_integer("workers", 2, "decode worker processes (0: decode in this process)",
                       flag_values=fv)
  flags.DEFINE_integer("batch_size", 0, "series per device batch (0: the run's eval batch "
                       "size, rounded up to a multiple of the device count)", flag_values=fv)
  flags.DEFINE_integer("prefetch", 2, "batches decoded ahead of the device", flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: the best kept, else the latest)",
                       flag_values=fv)
  flags.DEFINE_bool("fail_on_error", False, "exit 1 when any series of --scans could not be "
                    "read (in this run or an earlier one into --out)",
                    flag_values=fv)
  flags.DEFINE_bool("timings", True, "write the per-series timing columns (--notimings: the "
                    "file is the same in every run)", flag_values=fv)
  flags.DEFINE_bool("progress", None, "progress bar (default: the run's config.log.progress_bar)",
                    flag_values=fv)
  flags.DEFINE_bool("require_head", None, "refuse series that are no head CT (error rows); "
                    "default: the run's config.data.require_head (--norequire_head: predict "
                    "them, for research)", flag_values=fv)
  cli.profile_flags(fv, "batches")


def _predict(fv, _config, _args) -> int:
  if bool(fv.scans) == bool(fv.split):
    raise cli.UsageError("give exactly one of --scans PATH or --split NAME")
  if not fv.out:
    raise cli.UsageError("--out preds.csv|preds.jsonl is required")
  if fv.workers < 0 or fv.prefetch < 0 or fv.batch_size < 0:
    raise cli.UsageError("--workers, --prefetch and --batch_size must be >= 0")
  from ctjax.inference import archive
  from ctjax.train import profiling
  # Before the restore: a bad --out or --profile, or an --out another run writes, fails now in
  # one line.
  trace = profiling.StepTrace(fv.profile, count=fv.profile_steps, name="predict")
  with archive.output_lock(fv.out):
    return _predict_into(fv, archive, trace)


def _predict_into(fv, archive, trace) -> int:
  progress = fv.progress
  if progress is None:     # the run's config.log.progress_bar, read before restoring it
    progress = _config_progress(fv.workdir)
  t0 = time.perf_counter()
  _say(f"restoring {fv.workdir} …", progress)
  from ctjax.inference import runs
  run = runs.load_run(fv.workdir, fv.step, config_overrides=archive.ALL_DEVICES,
                      require_task="drct")
  print(f"model: {archive.model_name(run)} from {fv.workdir} (step {run.step}), "
        f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)
  t0 = time.perf_counter()
  if fv.split:
    _say(f"listing split {fv.split} of the run's data set …", progress)
    scans = archive.split_scans(run, fv.split)
  else:
    _say(f"listing the series under {fv.scans} (reading their headers) …", progress)
    scans = archive.find_scans(fv.scans, layout=fv.layout, progress=progress)
  if not scans:
    print(f"error: {fv.scans}: no series found", file=sys.stderr)
    return 1
  print(f"{len(scans)} series found in {time.perf_counter() - t0:.1f} s", flush=True)
  s = archive.predict_scans(run, scans, fv.out, batch_size=fv.batch_size or None,
                            workers=fv.workers, prefetch=fv.prefetch, reports=fv.reports,
                            progress=progress, timings=fv.timings,
                            scans_label=fv.scans or f"split {fv.split} of {fv.workdir}",
                            require_head=fv.require_head, take_lock=False, trace=trace)
  there = f"{s.skipped} already there" + (
      f" ({s.elsewhere} of them read from another folder: same SeriesInstanceUID)"
      if s.elsewhere else "")
  dups = (f", {s.duplicates} listed twice (same SeriesInstanceUID as another series: "
          "predicted once)" if s.duplicates else "")
  print(f"{fv.out}: {s.predicted} predicted, {s.failed} could not be read, {there}{dups}")
  if s.predicted:
    print(s.throughput_line())
  if s.unreadable:
    print(f"warning: {s.unreadable} of {s.total} series could not be read (status 'error' in "
          f"{fv.out}; fix or remove them and delete their rows to retry), e.g. {s.errors[0]}",
          file=sys.stderr)
    return 1 if fv.fail_on_error else 0
  return 0


def _config_progress(workdir: str) -> bool:
  """config.log.progress_bar of the run's saved config.json (True when unreadable: the restore
  then says what is wrong)."""
  import json
  import os
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      return bool(json.load(f).get("log", {}).get("progress_bar", True))
  except (OSError, ValueError, AttributeError):
    return True


def _say(message: str, progress: bool) -> None:
  """What the command does next, before a silent stretch (restoring, listing)."""
  if progress:
    print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
  return cli.run(_predict, argv, prog="ctjax.predict", extra_flags=_flags,
                 workdir_help="trained DrCT run (python -m ctjax.train)")


if __name__ == "__main__":
  sys.exit(main())
