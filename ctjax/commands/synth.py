"""`python -m ctjax.synth --layout rsna|cq500|blend --scans N --seed S --out DIR [--size PX]`.

Writes synthetic head-CT DICOM series with full truth (ctjax.data.phantom.write_dataset) and,
with --montage PNG, a sheet of one phantom per finding class in the brain window.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from ctjax.commands import cli
from ctjax.errors import CTJaxError


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("layout", "rsna", ["rsna", "cq500", "blend"], "data set layout",
                    flag_values=fv)
  flags.DEFINE_integer("scans", 8, "number of scans", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "random seed (scan i is a pure function of (seed, i))",
                       flag_values=fv)
  flags.DEFINE_string("out", "", "output folder", flag_values=fv)
  flags.DEFINE_integer("size", 512, "slice size in pixels", flag_values=fv)
  flags.DEFINE_float("prevalence", None, "share of positive scans", flag_values=fv)
  flags.DEFINE_float("difficult_fraction", None, "share of positive scans with tiny lesions",
                     flag_values=fv)
  flags.DEFINE_float("reader_disagreement", None, "CQ500: per-reader flip probability",
                     flag_values=fv)
  flags.DEFINE_string("slices", "", "slice-count range lo,hi (default per layout)",
                      flag_values=fv)
  flags.DEFINE_integer("workers", None, "worker processes (default min(cpus, 4); 0 = in-process)",
                       flag_values=fv)
  flags.DEFINE_string("montage", "", "also write a montage PNG here", flag_values=fv)
  flags.DEFINE_integer("montage_size", 256, "montage tile size", flag_values=fv)


def _synth(fv, _config, _args) -> int:
  from ctjax.data import phantom
  opts = {}
  if fv.prevalence is not None:
    opts["prevalence"] = fv.prevalence
  if fv.difficult_fraction is not None:
    opts["difficult_fraction"] = fv.difficult_fraction
  if fv.reader_disagreement is not None:
    opts["reader_disagreement"] = fv.reader_disagreement
  if fv.slices:
    lo, _, hi = fv.slices.partition(",")
    try:
      opts["slice_range"] = (int(lo), int(hi or lo))
    except ValueError as e:
      raise cli.UsageError(f"--slices={fv.slices!r}: expected lo,hi integers") from e
  if not fv.out and not fv.montage:
    raise cli.UsageError("give --out DIR (and/or --montage PNG)")
  try:
    if fv.out:
      path = phantom.write_dataset(fv.out, layout=fv.layout, num_scans=fv.scans, seed=fv.seed,
                                   size=fv.size, num_workers=fv.workers, progress=True, **opts)
      t = json.loads(path.read_text())["timing"]
      print(f"wrote {path} ({fv.scans} scans, {t['slices']} slices, {t['seconds']:.1f}s wall, "
            f"{t['cpu_seconds']:.1f} CPU-s, {t['num_workers']} workers: {t['slices_per_s']:.0f} "
            f"slices/s wall, {t['slices_per_cpu_s']:.0f} slices/CPU-s)")
    if fv.montage:
      print(f"wrote {phantom.write_montage(fv.montage, seed=fv.seed, size=fv.montage_size)}")
  except ValueError as e:   # generator parameters out of range
    raise CTJaxError(str(e)) from e
  return 0


def main(argv=None) -> int:
  return cli.run(_synth, argv, prog="ctjax.synth", workdir=None, extra_flags=_flags)


if __name__ == "__main__":
  sys.exit(main())
