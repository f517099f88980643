"""ctjax.inference.scan_reports: DICOM folder + a (tiny, random-initialised) DrCT2 run → report files."""

import pathlib
import sys

import numpy as np
import pytest

from ctjax.inference import runs, scan_reports
from ctjax.eval import keyslice
from tests.support.html_parse import parse as _parse
from tests.support import ctdicom_helpers  # noqa: E402  (the tests' DICOM writer)


def tiny_config():
  from ctjax.configs.drct import drct_config, runlocal_overrides
  c = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  c.data.num_slices = 8
  c.data.image_size = 32
  c.model.primary_size = 32
  c.model.aps_size = 32
  c.model.mkey = 3
  return c


@pytest.fixture(scope="module")
def tiny_model():
  from ctjax.models import pretrained
  from ctjax.train.tasks import get_task
  config = tiny_config()
  task = get_task("drct")
  model = task.build_model(config)
  # Random He-scaled numpy weights of init's shapes: the jitted Flax init of the VGG16 would
  # compile for ~15 s on 2 CPU cores, and no assertion depends on the initialiser.
  from ctjax.train.tasks import drct
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
  from ctjax.inference import runs
  return runs.make_run(config, variables, task=task, model=model, step=7,
                            workdir="runs/tiny")


def _write_scan(folder, num=13, size=40, uid="1.2.826.0.1.99"):
  rng = np.random.default_rng(num)
  hu = rng.normal(30, 40, size=(num, size, size))
  hu[:, 10:20, 22:30] += 60      # a bright "lesion" block on every slice
  ctdicom_helpers.write_series(folder, hu, series_uid=uid)
  return hu


def test_report_for_scan_shows_what_the_model_predicts(tiny_model, tmp_path):
  from ctjax.data.cache import resize_hu
  from ctjax.data.sampling import uniform_indices
  hu = _write_scan(tmp_path / "scan")
  r = scan_reports.report_for_scan(tiny_model, tmp_path / "scan", tmp_path / "out" / "r.html")
  page = pathlib.Path(r.out_path).read_text(encoding="utf-8")
  # Independently: the same sampling and resize, straight through Task.predict.
  idx = uniform_indices(13, 8)
  np.testing.assert_array_equal(idx, np.floor((np.arange(8) + 0.5) * 13 / 8).astype(int))
  batch = {"hu": resize_hu(np.clip(np.round(hu[idx]), -1024, 3071), 32)[None],
           "slice_index": idx[None].astype(np.int32), "valid": np.ones(1, bool)}
  out = tiny_model.task.predict(tiny_model.model, tiny_model.host_variables(), batch,
                                tiny_model.config)
  probs = np.asarray(out["probs"][0])
  assert [p.name for p in r.predictions] == list(tiny_model.config.data.labels)
  np.testing.assert_allclose([p.probability for p in r.predictions], probs, atol=1e-5)
  want_top = [int(i) for i in keyslice.top_k_indices(np.asarray(out["slice_attention"][0]))]
  assert r.key_slices == want_top
  doc = _parse(page)
  got = [int(a["data-slice"]) for t, a in doc.tags if t == "figure" and "key-slice" in
         a.get("class", "")]
  assert got == want_top
  text = " ".join(doc.text)
  for s in ("1.2.826.0.1.99", "Checkpoint step", "7", "brain 40/80", "13",
            "5 × 0.5 × 0.5 mm", "DrCT2"):
    assert s in text, s
  assert f"source slices {', '.join(str(i + 1) for i in idx)}" in text
  assert r.seconds > 0 and r.num_source_slices == 13
  # The model's view as data: the sampled → source map and the slice attention.
  assert r.slice_index == [int(i) for i in idx]
  assert len(r.slice_attention) == 8 and all(isinstance(a, float) for a in r.slice_attention)
  np.testing.assert_allclose(r.slice_attention, np.asarray(out["slice_attention"][0]),
                             atol=1e-5)
  assert r.key_slices == [int(i) for i in keyslice.top_k_indices(np.asarray(r.slice_attention))]


def test_not_a_ct_series_is_one_clear_error(tmp_path):
  from ctjax.errors import CTDataError
  bad = tmp_path / "notes"
  bad.mkdir()
  (bad / "readme.txt").write_text("not DICOM")
  with pytest.raises(CTDataError, match="not a usable CT series") as e:
    scan_reports.read_scan(bad)
  assert str(e.value).startswith(str(bad))
  assert "\n" not in str(e.value)


def test_batch_mode_writes_index_and_records_failures(tiny_model, tmp_path):
  _write_scan(tmp_path / "scans" / "a", num=9, uid="1.2.3.9.1")
  _write_scan(tmp_path / "scans" / "b" / "series", num=11, uid="1.2.3.9.2")
  (tmp_path / "scans" / "junk").mkdir()
  (tmp_path / "scans" / "junk" / "x.txt").write_text("hello")
  results = scan_reports.report_for_folder(tiny_model, tmp_path / "scans", tmp_path / "out")
  ok = [r for r in results if isinstance(r, scan_reports.ReportResult)]
  bad = [r for r in results if isinstance(r, scan_reports.ReportFailure)]
  assert sorted(r.series_uid for r in ok) == ["1.2.3.9.1", "1.2.3.9.2"]
  assert len(bad) == 1 and bad[0].scan_path.endswith("junk")
  assert "not a usable CT series" in bad[0].message
  index = (tmp_path / "out" / "index.html").read_text()
  links = [a["href"] for t, a in _parse(index).tags if t == "a"]
  assert len(links) == 2 and all((tmp_path / "out" / h).exists() for h in links)
  assert "1 failed" in index


def test_find_series_splits_flat_folders_and_skips_container_files(tmp_path):
  ctdicom_helpers.write_series(tmp_path / "root" / "flat", np.zeros((3, 8, 8)), series_uid="1.1",
                               names=["a1.dcm", "a2.dcm", "a3.dcm"])
  ctdicom_helpers.write_series(tmp_path / "root" / "flat", np.zeros((2, 8, 8)), series_uid="1.2",
                               names=["b1.dcm", "b2.dcm"])
  (tmp_path / "root" / "labels.csv").write_text("id,label\n")
  (tmp_path / "root" / "leaf").mkdir()
  (tmp_path / "root" / "leaf" / "notes.txt").write_text("x")
  found = scan_reports.find_series(tmp_path / "root")
  names = [(pathlib.Path(p).name, uid) for p, uid in found]
  assert sorted(names, key=str) == sorted([("flat", "1.1"), ("flat", "1.2"), ("leaf", None)],
                                          key=str)


def test_provenance_names_the_series_read(tiny_model, tmp_path):
  ctdicom_helpers.write_series(tmp_path / "scan", np.zeros((9, 16, 16)), series_uid="1.2.9",
                               description="PLAIN THIN", thickness=0.625,
                               ConvolutionKernel="STANDARD", StudyDate="20170412")
  r = scan_reports.report_for_scan(tiny_model, tmp_path / "scan", tmp_path / "r.html")
  doc = _parse(pathlib.Path(r.out_path).read_text(encoding="utf-8"))
  cells = dict(zip(doc.text[::1], doc.text[1::1]))
  for key, value in (("Series description", "PLAIN THIN"), ("Reconstruction kernel", "STANDARD"),
                     ("Slice thickness", "0.625 mm"), ("Study date", "2017-04-12"),
                     ("Slices in series", "9")):
    assert cells.get(key) == value, (key, cells.get(key))


def test_batch_mode_follows_the_series_policy(tiny_model, tmp_path):
  """A CQ500 study: the thin soft-tissue series is reported, its bone and localizer series are
  not (the training rule), and the index says why."""
  keep = [s for s in ctdicom_helpers.CQ500_SERIES if s[0] in ("CT PLAIN THIN", "CT BONE",
                                                              "CT SCOUT")]
  ctdicom_helpers.write_cq500_download(tmp_path / "cq500", [{}], series_of=lambda n: keep)
  results = scan_reports.report_for_folder(tiny_model, tmp_path / "cq500", tmp_path / "out")
  assert [pathlib.Path(r.scan_path).name for r in results] == ["CT PLAIN THIN"]
  assert isinstance(results[0], scan_reports.ReportResult)
  index = (tmp_path / "out" / "index.html").read_text()
  assert "1 reported, 0 failed,\n2 left out by the series policy" in index
  assert "bone kernel (ConvolutionKernel &#x27;BONE&#x27;)" in index
  assert "localizer (ImageType LOCALIZER)" in index


def test_reports_draw_with_the_run_stored_highlight_scale(tiny_model, tmp_path):
  """The page draws the raw map against `<workdir>/highlight_scale.json`: a larger reference
  draws the same scan fainter; a run without the file draws nothing and says so."""
  import base64
  import dataclasses
  import io
  from PIL import Image
  from ctjax.eval import highlight
  _write_scan(tmp_path / "scan")
  run = dataclasses.replace(tiny_model, workdir=tmp_path / "run")
  (tmp_path / "run").mkdir()

  def page_alpha(name):
    r = scan_reports.report_for_scan(run, tmp_path / "scan", tmp_path / f"{name}.html")
    page = pathlib.Path(r.out_path).read_text(encoding="utf-8")
    over = [a["src"] for t, a in _parse(page).tags if t == "img" and a.get("class") == "overlay"]
    alpha = sum(float(np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))))
                      [..., 3].sum()) for u in over)
    return page, alpha

  page, alpha = page_alpha("none")
  assert scan_reports.highlight_scale(run) is None and alpha == 0
  assert "stores no highlight scale" in page
  batch, _ = scan_reports.scan_batch(scan_reports.read_scan(tmp_path / "scan"), run.config)
  raw = runs.predict_batch(run, batch)["highlight"][0]
  peak = float(raw.max())
  assert peak > 0
  highlight.save_scale(run.workdir, highlight.HighlightScale(reference=peak, floor=0.1))
  strong_page, strong = page_alpha("strong")
  highlight.save_scale(run.workdir, highlight.HighlightScale(reference=4 * peak, floor=0.1))
  weak_page, weak = page_alpha("weak")
  assert strong > 0 and 0 < weak < 0.5 * strong
  assert f"1.0 = {peak:.4g} (model units)" in strong_page and 'class="colorbar"' in weak_page
  results = scan_reports.report_for_folder(run, tmp_path / "scan", tmp_path / "batch")
  assert f"1.0 = {4 * peak:.4g}" in pathlib.Path(results[0].out_path).read_text()
