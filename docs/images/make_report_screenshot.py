"""Regenerates docs/images/report_screenshot.png: the report page for a phantom scan.

  python docs/images/make_report_screenshot.py [--html OUT.html]

The scan is a synthetic phantom (ctjax.data.phantom); the attention, highlight maps and
probabilities are SYNTHETIC stand-ins built from the phantom's lesion truth (no trained model is
involved), so the picture shows the layout, not a model's quality. Needs headless Chromium.
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ctjax.data.labels import RSNA_LABELS  # noqa: E402
from ctjax.data import phantom  # noqa: E402
from ctjax.data.sampling import uniform_indices  # noqa: E402
from ctjax.data.windows import apply_windows  # noqa: E402
from ctjax.inference import report_html
from ctjax.eval.highlight import HighlightScale  # noqa: E402

# The synthetic maps peak at 1.0; drawn on a fixed scale like a run's (ctjax.eval.highlight).
SCALE = HighlightScale(reference=1.0, floor=0.2, basis="synthetic demo maps: 1.0 = their peak; "
                       "nothing is drawn below 0.20")


def demo_inputs(seed: int = 3, m: int = 28, feat: int = 14):
  rng = np.random.default_rng(seed)
  hu, truth = phantom.generate_scan(rng, size=256, num_slices=40, findings=["iph", "ivh"])
  idx = uniform_indices(hu.shape[0], m)
  images = apply_windows(hu[idx].astype(np.float32), "brain")[..., 0]
  score = rng.normal(0.0, 0.3, m)
  highlight = np.zeros((m, feat, feat), np.float32)
  yy, xx = np.mgrid[:feat, :feat] + 0.5
  for les in truth["lesions"]:
    for j, s in enumerate(idx):
      box = les["boxes"].get(str(int(s)))
      if box is None:
        continue
      score[j] += 2.0 if les["type"] == "iph" else 1.2
      x0, y0, x1, y1 = (v * feat / hu.shape[-1] for v in box)
      cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2 + 0.3
      highlight[j] = np.maximum(highlight[j], np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) /
                                                    (2 * r * r)))
  highlight = np.maximum(highlight, 0.08 * rng.random(highlight.shape).astype(np.float32))
  highlight /= highlight.max(axis=(1, 2), keepdims=True)
  attention = np.exp(score) / np.exp(score).sum()
  probs = dict(zip(RSNA_LABELS, (0.94, 0.03, 0.88, 0.71, 0.12, 0.06)))
  preds = [report_html.Prediction(n, p, 0.5) for n, p in probs.items()]
  prov = report_html.Provenance(
      scan_path="phantom/rsna/stage_2_train (series of 40 slices)",
      series_uid="1.2.826.0.1.3680043.8.498.10253412871629382711",
      study_uid="1.2.826.0.1.3680043.8.498.77",
      num_source_slices=hu.shape[0], slice_index=[int(i) for i in idx],
      spacing_mm=(truth["thickness"], truth["pixel_spacing"], truth["pixel_spacing"]),
      source_shape=hu.shape,
      model_windows=report_html.describe_windows("rsna3"),
      display_window=report_html.describe_windows("brain"),
      model_input=f"{m} × 224 × 224 HU → 224 px", config_name="configs/drct2_phantom.py",
      model_name="DrCT2 (vgg16 backbone)", checkpoint_step=1200, workdir="runs/drct2_phantom",
      report_seconds=0.84, created="(synthetic demo: attention and maps are not model outputs)")
  return images, attention, highlight, preds, prov


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--html", default=None)
  ap.add_argument("--out", default=str(ROOT / "docs/images/report_screenshot.png"))
  args = ap.parse_args()
  page = report_html.render_report_html(*demo_inputs(), scale=SCALE)
  with tempfile.TemporaryDirectory() as tmp:
    html = pathlib.Path(args.html or pathlib.Path(tmp) / "report.html")
    html.write_text(page, encoding="utf-8")
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars",
                    f"--user-data-dir={tmp}/profile", "--window-size=1280,1720",
                    f"--screenshot={args.out}", html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
  print(args.out)


if __name__ == "__main__":
  main()
