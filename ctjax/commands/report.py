"""`python -m ctjax.report`: self-contained HTML key-slice reports for DICOM CT series.

  python -m ctjax.report --workdir RUN --scan DICOM_DIR --out report.html
  python -m ctjax.report --workdir RUN --scans FOLDER --out OUTDIR      # + OUTDIR/index.html

RUN is a `python -m ctjax.train` workdir of a DrCT run. The report reads the DICOM folder
directly, samples and resizes as the run's config says, and shows the model's slice attention,
key slices with their highlighted area and per-label probabilities
(`ctjax.inference.scan_reports`), with the series' QA flags (`ctjax.data.qa`). A research tool,
not a diagnosis. Prints the per-scan report time; exits non-zero (one line on stderr) when a
folder is not a usable CT series, is no head CT (the run's config.data.require_head;
--norequire_head reports it anyway, for research), or the run cannot be restored. In batch mode
such series are failure entries of the index page.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from ctjax.commands import cli


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("scan", None, "one folder holding one DICOM CT series", flag_values=fv)
  flags.DEFINE_string("scans", None, "a folder of scan folders (batch mode)", flag_values=fv)
  flags.DEFINE_string("out", None, "report .html (with --scan) or output folder (with --scans)",
                      flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: the best kept, else the latest)",
                       flag_values=fv)
  flags.DEFINE_string("series_uid", None, "with --scan: which series when the folder holds "
                      "several ('largest' takes the one with most files)", flag_values=fv)
  flags.DEFINE_bool("require_head", None, "refuse series that are no head CT; default: the "
                    "run's config.data.require_head (--norequire_head: report them, for "
                    "research)", flag_values=fv)


def _report(fv, _config, _args) -> int:
  if bool(fv.scan) == bool(fv.scans):
    raise cli.UsageError("give exactly one of --scan DICOM_DIR or --scans FOLDER")
  if not fv.out:
    raise cli.UsageError("--out is required (a .html file with --scan, a folder with --scans)")
  from ctjax import fileio
  from ctjax.inference import runs, scan_reports
  # Before the model is restored: a read-only or misplaced --out fails now, in one line.
  if fv.scan:
    fileio.writable_file(fv.out, "--out report file")
  else:
    fileio.writable_dir(fv.out, "--out folder")
  t0 = time.perf_counter()
  run = runs.load_run(fv.workdir, fv.step, require_task="drct")
  print(f"model: {'DrCT2' if run.config.model.aps else 'DrCT1'} from {fv.workdir} "
        f"(step {run.step}), loaded in {time.perf_counter() - t0:.1f} s")
  if fv.scan:
    uid = fv.series_uid
    if uid == "largest":
      from ctjax.data.dicom import largest_series
      uid = largest_series
    r = scan_reports.report_for_scan(run, fv.scan, fv.out, series_uid=uid,
                                     require=fv.require_head)
    print(f"{r.out_path}: {r.scan_path} ({r.num_source_slices} slices) reported in "
          f"{r.seconds:.2f} s (first scan includes compilation)")
    return 0
  results = scan_reports.report_for_folder(run, fv.scans, fv.out, require=fv.require_head)
  failed = 0
  for r in results:
    if isinstance(r, scan_reports.ReportFailure):
      failed += 1
      print(f"error: {r.message}", file=sys.stderr)
    else:
      print(f"{r.out_path}: {r.scan_path} ({r.num_source_slices} slices) reported in "
            f"{r.seconds:.2f} s")
  print(f"{len(results) - failed} report(s), {failed} failed; index: {fv.out}/index.html")
  if not results:
    print(f"error: {fv.scans}: no scan folders found", file=sys.stderr)
    return 1
  return 1 if failed else 0


def main(argv=None) -> int:
  return cli.run(_report, argv, prog="ctjax.report", extra_flags=_flags,
                 workdir_help="trained DrCT run (python -m ctjax.train)")


if __name__ == "__main__":
  sys.exit(main())
