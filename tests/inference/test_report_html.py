"""The HTML report renderer: content, self-containment, and a real headless-Chromium load."""

import base64
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ctjax.eval import keyslice
from ctjax.inference import report_html
from ctjax.eval.highlight import HighlightScale

from tests.support.html_parse import parse as _parse  # noqa: E402

M, H = 12, 48
NAMES = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
# Raw maps in the model's units: 2.0 = the reference; nothing drawn below 0.2 × 2.0.
SCALE = HighlightScale(reference=2.0, floor=0.2, basis="1.0 = the median peak of 7 positives",
                       split="val", step=40, num_positive=7, num_negative=9)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((M, H, H)).astype(np.float32)
  attention = rng.random(M)
  attention[3] = attention[7] = attention.max() + 1.0   # a tie at the top: 3 ranks before 7
  attention /= attention.sum()
  highlight = np.zeros((M, 6, 6), np.float32)
  highlight[:, 1, 4] = 2.0                              # one hot spot (= the reference), upper right
  probs = [0.91, 0.02, 0.66, 0.49, 0.5, 0.1]
  preds = [report_html.Prediction(n, p, 0.5) for n, p in zip(NAMES, probs)]
  prov = report_html.Provenance(
      scan_path="/data/scan <01>", series_uid="1.2.3.4.<script>alert(1)</script>",
      num_source_slices=30, slice_index=list(range(0, 24, 2)), spacing_mm=(5.0, 0.5, 0.5),
      source_shape=(30, 512, 512), model_windows="rsna3", config_name="drct2_phantom",
      model_name="DrCT2", checkpoint_step=123, workdir="runs/x", report_seconds=0.5)
  return images, attention, highlight, preds, prov


def _decode(uri):
  assert uri.startswith("data:image/png;base64,")
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_page_is_self_contained_and_complete():
  images, attention, highlight, preds, prov = _inputs()
  page = report_html.render_report_html(images, attention, highlight, preds, prov, scale=SCALE)
  doc = _parse(page)
  imgs = [a for t, a in doc.tags if t == "img"]
  assert len(imgs) == M + 2 * 5 + 1                   # strip + (base, overlay) per key slice
                                                      # + the colour bar
  assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
  # No external resource of any kind: every src/href is inline.
  for _, a in doc.tags:
    for k in ("src", "href"):
      if k in a:
        assert a[k].startswith("data:"), a
  assert "http://" not in page and "https://" not in page
  # Key slices: the top 5 by attention, rank order, tie broken to the lower slice.
  want = [int(i) for i in keyslice.top_k_indices(attention)]
  assert want[:2] == [3, 7]
  got = [int(a["data-slice"]) for t, a in doc.tags if t == "figure" and "key-slice" in
         a.get("class", "")]
  assert got == want
  # Histogram: one bar per slice, the key ones marked, heights proportional to attention.
  rects = [a for t, a in doc.tags if t == "rect"]
  assert len(rects) == M
  assert sorted(int(a["data-slice"]) for a in rects if "key" in a["class"]) == sorted(want)
  heights = np.array([float(a["height"]) for a in rects])
  np.testing.assert_allclose(heights, 100 * attention / attention.max(), atol=2e-3)
  # Predictions: probability and threshold per label, the call follows the threshold.
  text = " ".join(doc.text)
  for p in preds:
    assert p.name in text
  rows = re.findall(r'<tr class="(above|below)"><td>([a-z]+)</td><td class="num">([0-9.]+)</td>',
                    page)
  assert [(c, n, float(v)) for c, n, v in rows] == [
      ("above" if p.probability >= 0.5 else "below", p.name, round(p.probability, 3))
      for p in preds]
  assert "Research tool — not a diagnosis" in text
  # Provenance, escaped.
  assert "<script>alert(1)</script>" not in page
  assert "1.2.3.4.<script>alert(1)</script>" in text   # shown as text
  for s in ("123", "drct2_phantom", "5 × 0.5 × 0.5 mm", "0.50 s", "peak highlight 1.00",
            "1.0 = 2 (model units), floor 0.20; fitted on 16 val scans at step 40"):
    assert s in text, s
  assert "source slice 7" in page                      # slice 3 → source index 6 → "7"


def _colours(rgba):
  """The set of RGB colours of the opaque overlay pixels."""
  return {tuple(int(v) for v in c) for c in rgba[rgba[..., 3] > 0][:, :3]}


def _level_rgb():
  return [tuple(int(v) for v in (c * 255.0 + 0.5).astype(np.uint8))
          for c in report_html.level_colours()]


def test_images_and_overlay_pixels():
  images, attention, highlight, preds, prov = _inputs()
  page = report_html.render_report_html(images, attention, 1.25 * highlight, preds, prov,
                                        scale=SCALE)
  doc = _parse(page)
  base = [a["src"] for t, a in doc.tags if t == "img" and a.get("class") == "base"]
  over = [a["src"] for t, a in doc.tags if t == "img" and a.get("class") == "overlay"]
  top = int(keyslice.top_k_indices(attention)[0])
  big = _decode(base[0])
  assert big.shape == (report_html.KEY_PX, report_html.KEY_PX)
  want = np.asarray(Image.fromarray((images[top] * 255 + 0.5).astype(np.uint8)).resize(
      (report_html.KEY_PX, report_html.KEY_PX), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(big, want)
  rgba = _decode(over[0])
  assert rgba.shape == (report_html.KEY_PX, report_html.KEY_PX, 4)
  # Iso-lines around the hot spot (row 1, column 4 of 6): opaque, centred on it, nothing far off.
  alpha = rgba[..., 3]
  assert set(np.unique(alpha)) == {0, 255}
  ys, xs = np.nonzero(alpha)
  assert 1 * 64 <= ys.mean() < 2 * 64 and 4 * 64 <= xs.mean() < 5 * 64
  assert ys.min() >= 0 and ys.max() < 3 * 64 and xs.min() >= 3 * 64
  # Lines, not a fill: the hot spot's centre and most of its cell show the anatomy.
  assert alpha[96, 288] == 0 and (alpha[64:128, 256:320] > 0).mean() < 0.3
  # 2.5 raw = 1.25 × the reference: every level is reached, each line in its own colour.
  assert _colours(rgba) == set(_level_rgb())
  assert alpha[0, 0] == 0


def test_pure_and_validates_shapes():
  a = report_html.render_report_html(*_inputs(), scale=SCALE)
  b = report_html.render_report_html(*_inputs(), scale=SCALE)
  assert a == b
  images, attention, highlight, preds, prov = _inputs()
  with pytest.raises(ValueError, match="one m"):
    report_html.render_report_html(images, attention[:-1], highlight, preds, prov)
  rgb = np.repeat(images[..., None], 3, axis=-1)
  page = report_html.render_report_html((rgb * 255).astype(np.uint8), attention, highlight, preds, prov,
                                   scale=SCALE)
  assert page.count('class="key-slice"') == 5


def _overlays(page):
  over = [a["src"] for t, a in _parse(page).tags if t == "img" and a.get("class") == "overlay"]
  return np.stack([_decode(u) for u in over])


def test_one_scale_across_pages_no_per_slice_normalisation():
  """The same raw value is drawn the same on every page; a weak map stays weak (the old
  renderer stretched each slice to its own maximum, so any map looked like a strong one)."""
  images, attention, highlight, preds, prov = _inputs()
  levels = report_html.level_values(SCALE)
  np.testing.assert_allclose(levels, [0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0])
  colours = _level_rgb()

  def drawn(factor):
    return _colours(_overlays(report_html.render_report_html(
        images, attention, factor * highlight, preds, prov, scale=SCALE)))

  # Peaks (reference units, bilinear never exceeds the source): 1.25, 0.6, 0.3, 0.15.
  assert drawn(1.25) == set(colours)
  assert drawn(0.6) == set(colours[:2])       # above 0.2 and 0.467, below 0.733
  assert drawn(0.3) == set(colours[:1])
  assert drawn(0.15) == set()                 # under the floor: nothing drawn
  page = report_html.render_report_html(images, attention, 0.15 * highlight, preds, prov,
                                        scale=SCALE)
  assert "peak highlight 0.15 (below the floor: none drawn)" in " ".join(_parse(page).text)


def test_colour_bar_is_the_overlay_scale():
  """Every colour of the overlay is on the bar, at its level: lines are opaque, so no anatomy
  under them (a white clot, a black ventricle) changes the colour seen."""
  images, attention, highlight, preds, prov = _inputs()
  page = report_html.render_report_html(images, attention, 1.25 * highlight, preds, prov,
                                        scale=SCALE)
  doc = _parse(page)
  bar = [a["src"] for t, a in doc.tags if t == "img" and a.get("class") == "colorbar"]
  assert len(bar) == 1
  rgb = _decode(bar[0])
  w = rgb.shape[1]
  assert rgb.shape == (report_html.COLORBAR_PX[1], w, 3)
  row = [tuple(int(v) for v in c) for c in rgb[0]]
  grey = int(255 * report_html.COLORBAR_GREY + 0.5)
  at = lambda v: row[int(report_html.colorbar_position(v, SCALE) * w)]   # noqa: E731
  assert set(row[:int(report_html.colorbar_position(0.19, SCALE) * w)]) == {(grey,) * 3}
  colours = _level_rgb()
  end = 1.0 + 0.8 / 3                                    # the bar's end: one band past 1.0
  for level, colour, nxt in zip(report_html.level_values(SCALE), colours,
                                list(report_html.level_values(SCALE)[1:]) + [end]):
    assert at(level + 0.01) == colour and at(nxt - 0.01) == colour
  assert row[-1] == colours[-1]                           # the "≥ 1.0" band
  assert _colours(_overlays(page)) <= set(row)
  text = " ".join(doc.text)
  for s in ("0.20 floor", "0.47", "0.73", "≥ 1.0", "the same scale on every scan",
            "median peak of 7 positives"):
    assert s in text, s


def test_header_orientation_markers_and_qa_flags():
  images, attention, highlight, preds, prov = _inputs()
  prov.patient_id, prov.study_date, prov.series_description = "P-0042", "20170412", "PLAIN THIN"
  prov.qa_flags, prov.head = ["few_slices", "lossy"], "head CT"
  page = report_html.render_report_html(images, attention, highlight, preds, prov, scale=SCALE)
  header = page[page.index("<header>"):page.index("</header>")]
  text = _text(header)
  assert "Patient ID P-0042" in text and "Study date 2017-04-12" in text
  assert "Series PLAIN THIN" in text and "1.2.3.4.&lt;script&gt;" in header
  # Radiological view: R on the viewer's left, L on the right, A at the top, on every key slice.
  for side in ("mk-r", "mk-l", "mk-a", "mk-p"):
    assert page.count(f'class="mk {side}"') == 5
  card = page[page.index('class="key-slice"'):]
  assert card.index(">R<") < card.index(">L<")
  css = report_html._CSS
  assert ".mk-r{left:" in css and ".mk-l{right:" in css and ".mk-a{top:" in css
  qa = page[page.index('id="qa-flags"'):]
  qa = _text(qa[:qa.index("</div>")])
  assert "few_slices (fewer slices than a head CT has)" in qa and "lossy (lossy-compressed" in qa
  assert "not a head CT" not in page
  # Unknown orientation: drawn as stored, no markers; a failed head check is said first.
  prov.qa_flags, prov.head = ["orientation_unknown", "not_head"], "not a head CT: no skull"
  page = report_html.render_report_html(images, attention, highlight, preds, prov, scale=SCALE)
  assert 'class="mk ' not in page and "Orientation unknown: drawn as stored" in _text(page)
  assert "not a head CT: no skull. The model was trained on head CT" in _text(page)
  prov.qa_flags = []
  assert "Series QA: no flags" in _text(report_html.render_report_html(
      images, attention, highlight, preds, prov, scale=SCALE))


def _text(page):
  return re.sub(r"\s+", " ", " ".join(_parse(page).text))


def test_label_agnostic_evidence_and_no_call_are_said():
  images, attention, highlight, preds, prov = _inputs()
  text = _text(report_html.render_report_html(images, attention, highlight, preds, prov, scale=SCALE))
  assert "label-agnostic evidence" in text and "not a map of any single label" in text
  assert "Highest-probability label: any (0.910, above its threshold 0.50)" in text
  assert "No label is above its threshold" not in text
  negative = [report_html.Prediction(n, p, 0.5) for n, p in zip(NAMES, (0.2, 0.01, 0.3, 0, 0, 0))]
  text = _text(report_html.render_report_html(images, attention, highlight, negative, prov,
                                          scale=SCALE))
  assert "No label is above its threshold" in text and "same fixed scale" in text
  assert "Highest-probability label: intraparenchymal (0.300, below" in text


def test_without_a_scale_nothing_is_drawn_and_the_page_says_why():
  images, attention, highlight, preds, prov = _inputs()
  page = report_html.render_report_html(images, attention, highlight, preds, prov)
  doc = _parse(page)
  assert not [a for t, a in doc.tags if t == "img" and a.get("class") in ("overlay", "colorbar")]
  text = " ".join(doc.text)
  assert "stores no highlight scale" in text and "fit_highlight_scale" in text
  assert page.count('class="key-slice"') == 5 and "peak highlight — (no scale)" in text


# ---------------------------------------------------------------------------------------------
# Headless Chromium.

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(apt-get install chromium; .ci/run does)")

# Injected into a copy of the page under test: flips the checkbox through the page's own JS
# handler, so the dumped DOM shows whether the toggle works.
_TOGGLE = ("<script>var b=document.getElementById('toggle-highlight');b.checked=false;"
           "b.dispatchEvent(new Event('change'));document.body.setAttribute('data-toggled',"
           "document.body.classList.contains('hide-highlight')?'hidden':'shown');</script>")


def _chromium(tmp_path, page_file, *extra):
  """Runs headless Chromium on a file; returns (stdout, console lines from its log)."""
  cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", *extra, page_file.resolve().as_uri()]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
  console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]
  return r, console


@needs_chromium
def test_console_error_detector_sees_errors(tmp_path):
  bad = tmp_path / "bad.html"
  bad.write_text("<html><body><script>nope();</script></body></html>")
  _, console = _chromium(tmp_path, bad, "--dump-dom")
  assert any("nope is not defined" in ln for ln in console), console


@needs_chromium
def test_report_in_headless_chromium(tmp_path):
  images, attention, highlight, preds, prov = _inputs()
  page = report_html.render_report_html(images, attention, highlight, preds, prov, scale=SCALE)
  path = tmp_path / "report.html"
  path.write_text(page, encoding="utf-8")
  shot = tmp_path / "report.png"
  r, console = _chromium(tmp_path, path, f"--screenshot={shot}", "--window-size=1280,1600")
  assert console == [], console
  assert shot.exists(), r.stderr[-2000:]
  png = np.asarray(Image.open(shot))
  assert png.shape[:2] == (1600, 1280) and png.std() > 10     # a rendered page, not blank
  # The DOM after scripts ran: 5 key slices with image + overlay, the histogram, the toggle.
  probe = tmp_path / "probe.html"
  probe.write_text(page.replace("</body>", _TOGGLE + "</body>"), encoding="utf-8")
  r, console = _chromium(tmp_path, probe, "--dump-dom")
  assert console == [], console
  dom = _parse(r.stdout)
  keys = [a for t, a in dom.tags if t == "figure" and "key-slice" in a.get("class", "")]
  assert len(keys) == 5
  assert sum(1 for t, a in dom.tags if t == "img" and a.get("class") == "overlay") == 5
  assert any(t == "svg" and a.get("id") == "attention-histogram" for t, a in dom.tags)
  assert sum(1 for t, _ in dom.tags if t == "rect") == M
  body = [a for t, a in dom.tags if t == "body"][0]
  assert body.get("data-toggled") == "hidden" and "hide-highlight" in body.get("class", "")
