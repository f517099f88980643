"""Regenerates docs/images/report_positive.png and report_negative.png: a trained DrCT2's
reports of two phantom scans it never saw, one with a haemorrhage and one without, both drawn
on the run's fixed highlight scale (ctjax.eval.highlight; the colour bar on the page).

  python -m ctjax.train --config configs/drct2_phantom.py --workdir runs/drct2_phantom
  python docs/images/make_report_screenshots.py --workdir runs/drct2_phantom

The scans are the README's demo scans (`python -m ctjax.synth --layout cq500 --scans 6 --seed 5
--size 256`, generated here into a temporary folder); the first with a bleeding lesion on one
side of the head and the first without, by the phantom's truth. The page draws the canonical
orientation in radiological convention (the patient's right on the viewer's left, marked R):
the script prints the positive scan's lesion side from the phantom's truth and where its box
lies in the image, which must agree with the markers. A run trained before the scale was
stored gets it fitted on its validation split first (`ctjax.inference.highlight_scale.fit`).
Needs headless Chromium.

The committed images come from the README job's run itself (its best checkpoint).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ctjax.inference import highlight_scale, runs, scan_reports  # noqa: E402
from ctjax.data import phantom  # noqa: E402
from ctjax.data.phantom_lesions import BLEEDS  # noqa: E402


def screenshot(html: pathlib.Path, png: pathlib.Path, tmp: str) -> None:
  subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  f"--user-data-dir={tmp}/profile", "--window-size=1280,1600",
                  f"--screenshot={png}", html.resolve().as_uri()],
                 check=True, capture_output=True, timeout=120)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True, help="a trained DrCT run (the README job's)")
  ap.add_argument("--out", default=str(ROOT / "docs/images"))
  ap.add_argument("--keep_html", default=None, help="also keep the two pages in this folder")
  args = ap.parse_args()
  run = runs.load_run(args.workdir, require_task="drct")
  scale = scan_reports.highlight_scale(run) or highlight_scale.fit(run)
  out = pathlib.Path(args.out).absolute()
  pages = pathlib.Path(args.keep_html).absolute() if args.keep_html else None
  home = os.getcwd()
  with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)   # the pages show the scans' folders relative to it, as `scans/CQ500-CT-0/…`
    try:
      manifest = json.loads(phantom.write_dataset("scans", layout="cq500", num_scans=6, seed=5,
                                                  size=256, num_workers=0).read_text())
      scans = {s["scan_id"]: s for s in manifest["scans"]}
      sided = {k: [e for e in s["lesions"] if e["type"] in BLEEDS and e.get("side")]
               for k, s in scans.items()}
      picks = {"positive": next(k for k, v in sided.items() if v),
               "negative": next(k for k, s in scans.items()
                                if not any(e["type"] in BLEEDS for e in s["lesions"]))}
      les = sided[picks["positive"]][0]
      x0, _, x1, _ = next(iter(les["boxes"].values()))
      where = (x0 + x1) / 2 / manifest["size"]
      side = {-1: "right", 1: "left"}[les["side"]]
      print(f"{picks['positive']}: {les['type']} in the patient's {side} hemisphere (truth), its "
            f"box centred at {where:.2f} of the image width: drawn on the viewer's "
            f"{'left' if where < 0.5 else 'right'}, the {'R' if where < 0.5 else 'L'} marker's "
            "side")
      assert (where < 0.5) == (side == "right"), "radiological convention broken"
      for kind, scan_id in picks.items():
        # the study's thin soft-tissue series (the one training reads; ctjax.data.series_policy)
        folder = pathlib.Path("scans", phantom._cq500_study(scan_id), "CT PLAIN THIN")  # noqa: SLF001
        html = (pages or pathlib.Path(tmp)) / f"report_{kind}.html"
        r = scan_reports.report_for_scan(run, folder, html, scale=scale)
        png = out / f"report_{kind}.png"
        screenshot(html, png, tmp)
        above = [f"{p.name} {p.probability:.2f}" for p in r.predictions if p.above]
        print(f"{png}: {scan_id} ({kind} by the phantom's truth), key slices "
              f"{[i + 1 for i in r.key_slices]}, above threshold: {', '.join(above) or 'none'}")
    finally:
      os.chdir(home)


if __name__ == "__main__":
  main()
