"""`python -m ctjax.synth --layout rsna|cq500|blend --scans N --seed S --out DIR [--size PX]`.

Writes synthetic head-CT DICOM series with full truth (ctjax.data.phantom.write_dataset) and,
with --montage PNG, a sheet of one phantom per finding class in the brain window.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ctjax.errors import CTJaxError


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m ctjax.synth", description=__doc__.splitlines()[0])
  p.add_argument("--layout", choices=("rsna", "cq500", "blend"), default="rsna")
  p.add_argument("--scans", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="")
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--prevalence", type=float, default=None)
  p.add_argument("--difficult-fraction", type=float, default=None)
  p.add_argument("--reader-disagreement", type=float, default=None)
  p.add_argument("--slices", default="", help="slice-count range lo,hi (default per layout)")
  p.add_argument("--workers", type=int, default=None,
                 help="worker processes (default min(cpus, 4); 0 = in-process)")
  p.add_argument("--montage", default="", help="also write a montage PNG here")
  p.add_argument("--montage-size", type=int, default=256)
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  from ctjax.data import phantom
  opts = {}
  if args.prevalence is not None:
    opts["prevalence"] = args.prevalence
  if args.difficult_fraction is not None:
    opts["difficult_fraction"] = args.difficult_fraction
  if args.reader_disagreement is not None:
    opts["reader_disagreement"] = args.reader_disagreement
  try:
    if args.slices:
      lo, _, hi = args.slices.partition(",")
      opts["slice_range"] = (int(lo), int(hi or lo))
    if not args.out and not args.montage:
      raise CTJaxError("give --out DIR (and/or --montage PNG)")
    if args.out:
      path = phantom.write_dataset(args.out, layout=args.layout, num_scans=args.scans,
                                   seed=args.seed, size=args.size,
                                   num_workers=args.workers, **opts)
      t = json.loads(path.read_text())["timing"]
      print(f"wrote {path} ({args.scans} scans, {t['slices']} slices, {t['seconds']:.1f}s wall, "
            f"{t['cpu_seconds']:.1f} CPU-s, {t['num_workers']} workers: {t['slices_per_s']:.0f} "
            f"slices/s wall, {t['slices_per_cpu_s']:.0f} slices/CPU-s)")
    if args.montage:
      print(f"wrote {phantom.write_montage(args.montage, seed=args.seed, size=args.montage_size)}")
  except (CTJaxError, ValueError) as e:
    print(f"ctjax.synth: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
