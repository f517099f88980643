"""`python -m ctjax.report`: self-contained HTML key-slice reports for DICOM CT series.

  python -m ctjax.report --workdir RUN --scan DICOM_DIR --out report.html
  python -m ctjax.report --workdir RUN --scans FOLDER --out OUTDIR      # + OUTDIR/index.html

RUN is a `python -m ctjax.train` workdir of a DrCT run. The report reads the DICOM folder
directly, samples and resizes as the run's config says, and shows the model's slice attention,
key slices with their highlighted area and per-label probabilities. A research tool, not a
diagnosis. Prints the per-scan report time; exits non-zero (one line on stderr) when a folder
is not a usable CT series or the run cannot be restored.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Optional, Sequence

from ctjax.errors import CTJaxError


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m ctjax.report", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="trained DrCT run (python -m ctjax.train)")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--scan", help="one folder holding one DICOM CT series")
  src.add_argument("--scans", help="a folder of scan folders (batch mode)")
  p.add_argument("--out", required=True,
                 help="report .html (with --scan) or output folder (with --scans)")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step (default: the best kept, else the latest)")
  p.add_argument("--series-uid", default=None,
                 help="with --scan: which series when the folder holds several ('largest' "
                      "takes the one with most files)")
  p.add_argument("-v", "--verbose", action="store_true")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                      format="%(levelname)s %(name)s: %(message)s")
  from ctjax.eval import report
  from ctjax.train.checkpoint import saved_config_errors
  try:
    # saved_config_errors: a field missing from an older run's config.json → one line.
    with saved_config_errors(args.workdir):
      t0 = time.perf_counter()
      lm = report.load_model(args.workdir, args.step)
      print(f"model: {lm.config.model.variant} from {args.workdir} (step {lm.step}), "
            f"loaded in {time.perf_counter() - t0:.1f} s")
      if args.scan:
        uid = args.series_uid
        if uid == "largest":
          from ctjax.data.dicom import largest_series
          uid = largest_series
        r = report.report_for_scan(lm, args.scan, args.out, series_uid=uid)
        print(f"{r.out_path}: {r.scan_path} ({r.num_source_slices} slices) reported in "
              f"{r.seconds:.2f} s (first scan includes compilation)")
        return 0
      results = report.report_for_folder(lm, args.scans, args.out)
  except CTJaxError as e:
    print(f"ctjax.report: error: {e}", file=sys.stderr)
    return 1
  failed = 0
  for r in results:
    if isinstance(r, report.ReportFailure):
      failed += 1
      print(f"ctjax.report: error: {r.message}", file=sys.stderr)
    else:
      print(f"{r.out_path}: {r.scan_path} ({r.num_source_slices} slices) reported in "
            f"{r.seconds:.2f} s")
  print(f"{len(results) - failed} report(s), {failed} failed; index: {args.out}/index.html")
  if not results:
    print(f"ctjax.report: error: {args.scans}: no scan folders found", file=sys.stderr)
    return 1
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
