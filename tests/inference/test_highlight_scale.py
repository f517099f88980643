"""The highlighted area of a trained run: one stored scale, silent on negatives, on the lesion.

One small run trains in-process (module fixture, ~30 s of CPU): DrCT1 on 30 easy phantom scans
(RSNA layout, 128 px, 10-14 slices, half positive, no "difficult" lesions) with the shipped
phantom-pretrained backbone, its heads on the stored features for 10 epochs. The heads barely
learn in that time, but the highlight comes from the frozen backbone and the feature attention
(ctjax.eval.highlight), which is what these tests are about.
"""

import json
import logging
import pathlib
import re
import sys

import numpy as np
import pytest

from ctjax.eval import highlight as H
from ctjax.inference import highlight_scale, runs, scan_reports

from tests.support.html_parse import parse as _parse  # noqa: E402

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from configs import drct2_phantom
  from ctjax.data import phantom
  from ctjax.train import loop
  tmp = tmp_path_factory.mktemp("highlight_run")
  phantom.write_dataset(tmp / "data", layout="rsna", num_scans=30, seed=1, size=128,
                        num_workers=0, slice_range=(10, 14), prevalence=0.5,
                        difficult_fraction=0.0)
  c = drct2_phantom.get_config("drct1,num_scans=30,epochs=10")
  c.data.root = str(tmp / "data")
  c.data.num_slices = 8
  c.data.num_folds = 3            # 10 scans per split
  c.train.batch_size = 8
  c.evals.val.every_epochs = 0    # once, at the end
  c.evals.test.every_steps = -1
  c.checkpoint.every_steps = 0
  c.checkpoint.async_save = False
  c.log.progress_bar = False
  c.log.tensorboard = False
  loop.train_and_evaluate(c, tmp / "run")
  highlight_scale.fit_after_training(tmp / "run")   # as `python -m ctjax.train` does
  run = runs.load_run(tmp / "run")
  return tmp, run


def test_the_scale_is_fitted_on_validation_and_stored_with_the_run(trained):
  tmp, run = trained
  stored = json.loads((tmp / "run" / H.SCALE_FILE).read_text())
  scale = scan_reports.highlight_scale(run)
  assert scale is not None and scale.to_json() == stored
  # The same scale again from the validation split, with the state that reports load.
  val = runs.predict_split(run, "val")
  again = H.fit_scale(val["highlight"], val["slice_attention"], val["labels"])
  assert scale.reference == pytest.approx(again.reference, rel=1e-5)
  assert scale.floor == pytest.approx(again.floor, rel=1e-5)
  assert scale.split == "val" and scale.num_positive + scale.num_negative == len(val["labels"])
  assert scale.step == run.step                      # the checkpoint reports restore
  assert scale.num_positive > 0 and scale.num_negative > 0


def test_negative_scans_draw_far_less_than_positive_ones(trained):
  """Held-out scans on the stored (validation) scale: the drawn highlight summed over each
  scan's 5 key slices, mean over negative / positive scans. Measured 0.041 here (2 negative,
  8 positive test scans) and 0.09-0.12 on the test splits of two similar runs; the bound is
  conservative."""
  _, run = trained
  scale = scan_reports.highlight_scale(run)
  out = runs.predict_split(run, "test")
  pos = H.positive_scans(out["labels"])
  assert pos.sum() >= 2 and (~pos).sum() >= 2
  drawn = H.key_slice_sums(scale.drawn(out["highlight"]), out["slice_attention"])
  ratio = drawn[~pos].mean() / drawn[pos].mean()
  log.info("drawn key-slice highlight, negative / positive: %.3f (%d / %d scans)", ratio,
           (~pos).sum(), pos.sum())
  assert ratio < 0.35, (ratio, drawn[pos], drawn[~pos])
  # And the raw peaks: a positive scan's key slices reach the reference, a negative's less.
  peaks = H.key_slice_peaks(out["highlight"], out["slice_attention"]) / scale.reference
  assert np.median(peaks[~pos]) < 0.6 * np.median(peaks[pos])


def test_evaluate_reports_the_pointing_game(trained):
  tmp, _ = trained
  rep = runs.evaluate(tmp / "run", "test")
  pg = {k.split("/")[-1]: v for k, v in rep.items() if k.startswith("highlight/pointing/")}
  log.info("pointing game on the test split: %s", pg)
  assert pg["slices"] > 0 and pg["scans"] > 0
  # Share of the drawn map inside the lesion boxes against a uniform map's: measured 0.173
  # against 0.044 (14 key slices with a lesion on 7 scans).
  assert pg["mass"] > 2 * pg["chance"], pg
  assert "keyslice/comprehensive" in rep and "highlight/key_sum_ratio" in rep


def _overlay_alpha(page):
  import base64
  import io
  from PIL import Image
  doc = _parse(page)
  total = 0.0
  for t, a in doc.tags:
    if t == "img" and a.get("class") == "overlay":
      png = base64.b64decode(a["src"].split(",", 1)[1])
      total += float(np.asarray(Image.open(io.BytesIO(png)))[..., 3].astype(np.float64).sum())
  return total


def test_reports_draw_on_the_run_scale(trained, tmp_path):
  """report_for_scan (the path of ctjax.report and the reader study) draws with the stored
  scale: a negative scan's page shows far less highlight than a positive one's."""
  tmp, run = trained
  from ctjax.data import pipeline
  splits = pipeline.build_splits(run.config, str(tmp / "run"))
  manifest = json.loads((tmp / "data" / "manifest.json").read_text())
  by_id = {s["scan_id"]: s for s in manifest["scans"]}
  test_ids = splits["test"].scan_ids
  scale = scan_reports.highlight_scale(run)
  alpha = {}
  for kind, want in (("positive", True), ("negative", False)):
    sid = next(i for i in test_ids if any(by_id[i]["labels"].values()) == want)
    r = scan_reports.report_for_scan(run, tmp / "data" / "stage_2_train", tmp_path / f"{kind}.html",
                                  series_uid=by_id[sid]["series_uid"])
    page = pathlib.Path(r.out_path).read_text()
    text = re.sub(r"\s+", " ", " ".join(_parse(page).text))
    assert f"1.0 = {scale.reference:.4g} (model units), floor {scale.floor:.2f}" in text
    assert "label-agnostic evidence" in text and 'class="colorbar"' in page
    alpha[kind] = _overlay_alpha(page)
  log.info("overlay alpha mass, negative / positive page: %.3f", alpha["negative"] /
           max(alpha["positive"], 1e-9))
  assert alpha["positive"] > 0 and alpha["negative"] < 0.35 * alpha["positive"], alpha


def test_the_fit_after_training_can_be_switched_off(tmp_path, caplog):
  """config.evals.highlight_scale_split="" skips the fit (no prediction, no file, no warning);
  the default fits on "val", here warning that the folder holds no checkpoint, with the command
  that fits it later."""
  from configs import drct2_rsna
  config = drct2_rsna.get_config()
  assert config.evals.highlight_scale_split == "val"
  with caplog.at_level(logging.WARNING, logger="ctjax.inference.highlight_scale"):
    config.evals.highlight_scale_split = ""
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    assert highlight_scale.fit_after_training(tmp_path) is None
    assert not caplog.records and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    config.evals.highlight_scale_split = "val"
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    assert highlight_scale.fit_after_training(tmp_path) is None
  (record,) = caplog.records
  assert "highlight scale not fitted" in record.getMessage()
  assert "--fit_highlight_scale" in record.getMessage()


def test_evaluate_fits_the_scale_from_its_own_prediction_pass(trained, monkeypatch, capsys):
  """`ctjax.evaluate --split val --fit_highlight_scale` predicts the split once (the scale from
  the evaluation's own outputs), and stores the very scale a separate fit predicts for."""
  from ctjax.commands import evaluate as evaluate_cli
  tmp, run = trained
  path = tmp / "run" / H.SCALE_FILE
  highlight_scale.fit(run, "val")                  # its own prediction pass (as before)
  separate = path.read_text()
  path.unlink()
  calls = []
  predict = runs.predict_split
  monkeypatch.setattr(runs, "predict_split",
                      lambda *a, **k: calls.append(a[1:2]) or predict(*a, **k))
  assert evaluate_cli.main(["--workdir", str(tmp / "run"), "--split", "val", "--n_boot", "0",
                            "--fit_highlight_scale"]) == 0
  assert calls == [("val",)]
  assert path.read_text() == separate
