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
  # The tests' random volumes are no heads; the head-CT check has tests of its own below.
  c.data.require_head = False
  return c


def write_head(folder, *, lesion_side="right", columns_along="+x", rows_along="+y",
               reverse=False, uid="1.2.826.0.1.55", size=64):
  """A phantom head (`ctjax.data.phantom`) with a bright 14 px disc in the patient's right (or
  left) hemisphere on every slice, stored in any axial layout (`write_oriented_series`: the
  array is patient space, columns along +x, toward the patient's left). Returns the HU."""
  from ctjax.data import phantom
  hu, truth = phantom.generate_scan(np.random.default_rng(0), size=size, num_slices=12)
  hu = hu.astype(np.float32)
  yy, xx = np.mgrid[:size, :size]
  cx = size * (0.33 if lesion_side == "right" else 0.67)
  hu[:, (yy - size / 2) ** 2 + (xx - cx) ** 2 < (0.11 * size) ** 2] = 75.0
  ps = truth["pixel_spacing"]
  ctdicom_helpers.write_oriented_series(folder, hu, columns_along=columns_along,
                                        rows_along=rows_along, reverse=reverse,
                                        spacing=(truth["thickness"], ps, ps), series_uid=uid,
                                        description="HEAD", patient_id="PH-1",
                                        StudyDate="20240102")
  return hu


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
    """(page, the iso-line levels its overlays reach: indices into report_html.LEVELS)."""
    from ctjax.inference import report_html
    r = scan_reports.report_for_scan(run, tmp_path / "scan", tmp_path / f"{name}.html")
    page = pathlib.Path(r.out_path).read_text(encoding="utf-8")
    over = [a["src"] for t, a in _parse(page).tags if t == "img" and a.get("class") == "overlay"]
    colours = [tuple((c * 255 + 0.5).astype(np.uint8)) for c in report_html.level_colours()]
    drawn = set()
    for u in over:
      rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))))
      drawn |= {colours.index(tuple(c)) for c in rgba[rgba[..., 3] > 0][:, :3]}
    return page, drawn

  page, alpha = page_alpha("none")
  assert scan_reports.highlight_scale(run) is None and alpha == set()
  assert "stores no highlight scale" in page
  batch, _ = scan_reports.scan_batch(scan_reports.read_scan(tmp_path / "scan"), run.config)
  raw = runs.predict_batch(run, batch)["highlight"][0]
  peak = float(raw.max())
  assert peak > 0
  highlight.save_scale(run.workdir, highlight.HighlightScale(reference=peak, floor=0.1))
  strong_page, strong = page_alpha("strong")
  highlight.save_scale(run.workdir, highlight.HighlightScale(reference=4 * peak, floor=0.1))
  weak_page, weak = page_alpha("weak")
  # Reference = the peak: lines up to the third level (0.7) at least; 4 × the reference: the
  # peak is 0.25 of it, only the floor's line (0.1) is drawn.
  assert max(strong) >= 2 and weak == {0}
  assert f"1.0 = {peak:.4g} (model units)" in strong_page and 'class="colorbar"' in weak_page
  results = scan_reports.report_for_folder(run, tmp_path / "scan", tmp_path / "batch")
  assert f"1.0 = {4 * peak:.4g}" in pathlib.Path(results[0].out_path).read_text()


def test_non_head_series_is_refused_in_one_line_and_failed_in_batch(tiny_model, tmp_path):
  """config.data.require_head (on by default, and for runs saved before it existed): a series
  that is no head CT gets no report; batch mode lists it as a failure."""
  import dataclasses
  from ctjax.errors import NotHeadCTError
  _write_scan(tmp_path / "scans" / "noise", num=9, uid="1.2.3.9.7")    # random HU: no skull
  write_head(tmp_path / "scans" / "head")
  run = dataclasses.replace(tiny_model, config=tiny_model.config.copy_and_resolve_references())
  run.config.data.require_head = True
  with pytest.raises(NotHeadCTError) as e:
    scan_reports.report_for_scan(run, tmp_path / "scans" / "noise", tmp_path / "r.html")
  msg = str(e.value)
  assert msg.startswith(str(tmp_path / "scans" / "noise") + ": not a head CT (")
  assert "\n" not in msg and "--norequire_head" in msg and not (tmp_path / "r.html").exists()
  # A run saved without the field reads it as True.
  del run.config.data["require_head"]
  with pytest.raises(NotHeadCTError):
    scan_reports.report_for_scan(run, tmp_path / "scans" / "noise", tmp_path / "r.html")
  results = scan_reports.report_for_folder(run, tmp_path / "scans", tmp_path / "out")
  bad = [r for r in results if isinstance(r, scan_reports.ReportFailure)]
  assert [pathlib.Path(r.scan_path).name for r in bad] == ["noise"]
  assert "not a head CT" in bad[0].message
  index = (tmp_path / "out" / "index.html").read_text()
  assert "1 reported, 1 failed" in index and "not reported: " in index
  # --norequire_head: reported, with the verdict and the not_head flag on the page.
  r = scan_reports.report_for_scan(run, tmp_path / "scans" / "noise", tmp_path / "n.html",
                                   require=False)
  page = pathlib.Path(r.out_path).read_text()
  assert "<code>not_head</code>" in page and "The model was trained on head CT" in page


def test_report_header_qa_flags_and_sides_of_a_phantom(tiny_model, tmp_path):
  """A phantom head with a lesion in the patient's right hemisphere, stored with columns
  running toward the patient's right (flipped) and rows flipped: the page's images show it on
  the viewer's left, beside the R marker (radiological convention), and the header names the
  patient, the study date and the series."""
  import base64
  import io
  from PIL import Image
  run = tiny_model
  for side in ("right", "left"):
    folder = tmp_path / side
    hu = write_head(folder, lesion_side=side, columns_along="-x", rows_along="-y")
    vol = scan_reports.read_scan(folder)
    np.testing.assert_array_equal(vol.hu, np.clip(np.rint(hu), -1024, 3071))
    r = scan_reports.report_for_scan(run, folder, tmp_path / f"{side}.html")
    page = pathlib.Path(r.out_path).read_text(encoding="utf-8")
    doc = _parse(page)
    base = [a["src"] for t, a in doc.tags if t == "img" and a.get("class") == "base"]
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(base[0].split(",", 1)[1]))),
                     np.float64)
    w = img.shape[1]
    # The disc (75 HU: near white in the brain window) in the middle rows of the image.
    band = img[int(0.4 * w):int(0.6 * w)]
    left, right = band[:, :w // 2].mean(), band[:, w // 2:].mean()
    assert (left > right + 20) if side == "right" else (right > left + 20), (side, left, right)
    card = page[page.index('class="key-slice"'):]
    assert card.index('class="mk mk-r"') < card.index('class="mk mk-l"')
  header = page[page.index("<header>"):page.index("</header>")]
  assert "PH-1" in header and "2024-01-02" in header and "HEAD" in header
  text = " ".join(doc.text)
  assert "few_slices" in text and "small_matrix" in text and "head CT" in text
  assert "radiological: the patient's right on the viewer's left" in text
