"""End to end in Chromium (Playwright): a scripted reader reads 3 cases alone, one of them
across a page reload, waits out the washout on the study clock, reads 3 cases assisted; then
`python -m ctjax.reader analyze` gives Table 8's figures computed here from the script.
"""

import csv
import io
import shutil
import socket
import threading

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
  from playwright.sync_api import sync_playwright
except ImportError:   # pragma: no cover - depends on the environment
  sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None,
                       reason="playwright is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install "
                       "chromium; .ci/run does)"),
]

T0 = 1_636_000_000.0
DAY = 86400.0
# The script, by position in each arm: (labels ticked, seconds until submit, confidence).
ALONE = [(["any", "subdural"], 40.0, "2"), ([], 35.0, "1"),
         (["any", "epidural", "intraparenchymal"], 30.0, "3")]
ASSISTED_SECONDS = [20.0, 15.0, 12.5]
ASSISTED_CONFIDENCE = ["3", "2", "3"]
RATING_SECONDS = 9.0            # time on the confidence step: never counted


@pytest.fixture
def live(study_dir):
  from werkzeug.serving import make_server
  from ctjax.reader import clock as clock_lib
  from ctjax.reader import server
  clock = clock_lib.ManualClock(T0)
  app = server.create_app(study_dir, clock=clock)
  db = app.extensions["ctjax_reader"]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  httpd = make_server("127.0.0.1", port, app, threaded=True)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{port}", clock, db
  finally:
    httpd.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def browser():
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
      yield b
    finally:
      b.close()


def _ready(page):
  page.wait_for_selector("#viewer[data-ready='1']", timeout=15000)


def _answer(page, labels):
  for name in labels:
    page.check(f"input[name=label][value='{name}']")
  page.click("#submit-answer")
  page.wait_for_selector("#confidence-form")


def _rate(page, level):
  page.check(f"input[name=confidence][value='{level}']")
  page.click("#submit-confidence")
  page.wait_for_selector("#home")


def _overflow(frame) -> int:
  return frame.evaluate("() => document.documentElement.scrollHeight - window.innerHeight")


def _check_assisted_layout(page, slice_index):
  """At 1400 x 900: nothing scrolls, the report sits beside the viewer, every thumbnail of the
  strip is readable, the five key slices lie inside the frame's window, and a click on a
  thumbnail shows that slice in the viewer."""
  report = page.locator("#report")
  frame = report.element_handle().content_frame()
  assert _overflow(page.main_frame) <= 0 and _overflow(frame) <= 0
  viewer, box = page.locator("#viewer").bounding_box(), report.bounding_box()
  assert box["x"] >= viewer["x"] + viewer["width"] and box["width"] >= 700
  assert box["height"] >= 750                              # the window's height, not a slot
  thumbs = frame.evaluate("() => Array.from(document.querySelectorAll('.thumb'), "
                          "t => t.getBoundingClientRect().width)")
  assert len(thumbs) == len(slice_index) and min(thumbs) >= 48, thumbs
  keys = frame.evaluate("() => Array.from(document.querySelectorAll('.key-slice'), k => {"
                        " const r = k.getBoundingClientRect(); return [r.top, r.bottom]; })")
  height = frame.evaluate("() => window.innerHeight")
  assert len(keys) == 5 and all(0 <= top and bottom <= height for top, bottom in keys), keys
  for sampled in (0, len(slice_index) - 1):
    page.frame_locator("#report").locator(f".thumb[data-slice='{sampled}']").click()
    page.wait_for_function(f"() => document.getElementById('viewer').dataset.slice === "
                           f"'{slice_index[sampled]}'", timeout=5000)
  page.keyboard.press("Home")                              # the keys are the viewer's again
  assert page.get_attribute("#viewer", "data-slice") == "0"


def test_a_scripted_reader_gives_table_8(live, browser, study_dir, tmp_path):
  from ctjax.data.windows import apply_windows
  from ctjax.commands import reader as cli
  base, clock, db = live
  study = db.study
  info, token = db.add_reader("JR A")
  page = browser.new_page(viewport={"width": 1400, "height": 900})   # a laptop's window
  problems = []
  page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
  page.on("pageerror", lambda e: problems.append(str(e)))
  page.goto(f"{base}/r/{token}/")
  assert "0 of 3 cases read" in page.inner_text("#state")

  shown = []
  for k, (labels, seconds, level) in enumerate(ALONE):
    page.click("#open-case")
    _ready(page)
    cid = db.state(info.id).case_id
    shown.append(cid)
    assert page.locator("#report").count() == 0            # alone: no report
    if k == 0:
      # The viewer: every slice reachable, windows computed from HU in the page.
      hu = np.load(study.hu_path(cid))
      S = hu.shape[0]
      assert page.inner_text("#slice-number") == str(S // 2 + 1)
      page.keyboard.press("ArrowDown")
      page.keyboard.press("j")
      assert page.get_attribute("#viewer", "data-slice") == str(S // 2 + 2)
      page.keyboard.press("End")
      assert page.inner_text("#slice-number") == str(S)
      page.keyboard.press("Home")
      assert page.inner_text("#slice-number") == "1"
      page.mouse.move(300, 400)
      page.locator("#slice-canvas").hover()
      page.mouse.wheel(0, 100)
      assert page.get_attribute("#viewer", "data-slice") == "1"
      for key, name in (("3", "bone"), ("2", "subdural"), ("1", "brain")):
        page.keyboard.press(key)
        assert page.get_attribute("#viewer", "data-window") == name
        pix = np.asarray(page.evaluate(
            "() => { const c = document.getElementById('slice-canvas');"
            " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
            ".filter((_, i) => i % 4 === 0)); }"), np.float64).reshape(hu.shape[1:])
        want = apply_windows(hu[1], name)[..., 0] * 255.0
        assert np.abs(pix - want).max() <= 1.0, name
      page.screenshot(path=str(tmp_path / "alone.png"))
    if k == 1:
      clock.advance(seconds / 2)
      page.reload()                                         # the clock keeps running
      _ready(page)
      assert db.state(info.id).case_id == cid
      clock.advance(seconds / 2)
    else:
      clock.advance(seconds)
    _answer(page, labels)
    clock.advance(RATING_SECONDS)
    _rate(page, level)
    clock.advance(60.0)                                     # a break on the home page

  # The washout: refused until 7 days after the first read, on the study clock.
  assert "opens on" in page.inner_text("#state")
  assert problems == [], problems
  resp = page.goto(f"{base}/r/{token}/case")
  assert resp.status == 403 and "opens on" in page.inner_text("#message")
  assert len(problems) == 1 and "403" in problems[0]      # the refusal, as the browser saw it
  problems.clear()
  clock.set(T0 + 7 * DAY)
  page.goto(f"{base}/r/{token}/")

  truths = {c.case_id: c.truth for c in study.cases}
  assisted_shown = []
  for k in range(3):
    page.click("#open-case")
    _ready(page)
    cid = db.state(info.id).case_id
    assisted_shown.append(cid)
    frame = page.frame_locator("#report")
    frame.locator(".key-slice").first.wait_for(timeout=15000)
    assert frame.locator(".key-slice").count() == 5
    if k == 0:
      page.screenshot(path=str(tmp_path / "assisted.png"))
      _check_assisted_layout(page, study.model_output(cid)["slice_index"])
    clock.advance(ASSISTED_SECONDS[k])
    # Assisted, the scripted reader answers the truth on the first two cases, nothing on the
    # third.
    labels = [n for n, v in zip(study.labels, truths[cid]) if v] if k < 2 else []
    _answer(page, labels)
    clock.advance(RATING_SECONDS)
    _rate(page, ASSISTED_CONFIDENCE[k])
  assert "every case in both arms" in page.inner_text("#state")
  assert problems == [], problems
  assert sorted(shown) == sorted(assisted_shown) == sorted(truths)

  # analyze, through the command, against the figures computed from the script.
  out = tmp_path / "analysis"
  assert cli.main(["analyze", "--workdir", str(study_dir), "--out", str(out),
                   "--n_resamples", "500"]) == 0
  rows = {(r["reader"], r["arm"]): r for r in csv.DictReader(io.StringIO(
      (out / "table8.csv").read_text()))}
  kw = dict(average="macro", zero_division=0)

  def onehot(labels):
    return [int(n in labels) for n in study.labels]

  t_alone = np.array([truths[c] for c in shown])
  y_alone = np.array([onehot(a[0]) for a in ALONE])
  t_assist = np.array([truths[c] for c in assisted_shown])
  y_assist = np.array([list(truths[assisted_shown[0]]), list(truths[assisted_shown[1]]),
                       [0] * len(study.labels)])
  want = {
      "alone": dict(precision=precision_score(t_alone, y_alone, **kw),
                    recall=recall_score(t_alone, y_alone, **kw),
                    f1=f1_score(t_alone, y_alone, **kw), confidence=(2 + 1 + 3) / 3,
                    total_seconds=40 + 35 + 30, seconds_per_scan=35.0, num_scans=3),
      "assisted": dict(precision=precision_score(t_assist, y_assist, **kw),
                       recall=recall_score(t_assist, y_assist, **kw),
                       f1=f1_score(t_assist, y_assist, **kw), confidence=(3 + 2 + 3) / 3,
                       total_seconds=47.5, seconds_per_scan=47.5 / 3, num_scans=3)}
  for arm, w in want.items():
    got = rows[("JR A", arm)]
    for key, value in w.items():
      assert float(got[key]) == pytest.approx(value, abs=1e-12), (arm, key)
  assert rows[("JR A", "alone")]["first_day"] == "2021-11-04"
  assert rows[("JR A", "assisted")]["first_day"] == "2021-11-11"
  md = (out / "table8.md").read_text()
  assert "| Total time | 1m45s | 48s |" in md and "| Confidence | 2.00 | 2.67 |" in md
  paired = list(csv.DictReader(io.StringIO((out / "paired.csv").read_text())))
  assert len(paired) == 1 and int(paired[0]["num_paired"]) == 3
  # Wilcoxon on the per-scan times, paired by scan.
  from scipy.stats import wilcoxon
  t_by = {c: s for c, s in zip(shown, [a[1] for a in ALONE])}
  a_by = dict(zip(assisted_shown, ASSISTED_SECONDS))
  order = [c.case_id for c in study.cases]
  ref = wilcoxon([a_by[c] for c in order], [t_by[c] for c in order])
  assert float(paired[0]["wilcoxon_p"]) == pytest.approx(float(ref.pvalue))
  assert float(paired[0]["f1_difference"]) == pytest.approx(
      want["assisted"]["f1"] - want["alone"]["f1"], abs=1e-12)
  # The reload counted as a second view of the second case; every read complete.
  reads = db.reads()
  assert [r.views for r in reads if r.arm == "alone"] == [1, 2, 1]
  assert all(r.confidence is not None for r in reads) and len(reads) == 6
  from PIL import Image
  for name in ("alone.png", "assisted.png"):
    img = np.asarray(Image.open(tmp_path / name))
    assert img.shape[:2] == (900, 1400) and img.std() > 10
