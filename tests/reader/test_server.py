"""The study server (Flask test client and a real `serve` process): the study's rules."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import pathlib

import numpy as np
import pytest

from ctjax.reader import clock as clock_lib
from ctjax.reader import server
from ctjax.reader import study as study_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
T0 = 1_636_000_000.0      # 2021-11-04, the study clock's start in these tests
DAY = 86400.0


def answer_form(labels):
  """The diagnosis form as the page posts it: the ticked labels, then its last field."""
  return {"label": list(labels), "form_end": "1"}


class Harness:
  def __init__(self, study_dir):
    self.clock = clock_lib.ManualClock(T0)
    self.app = server.create_app(study_dir, clock=self.clock)
    self.client = self.app.test_client()
    self.db = self.app.extensions["ctjax_reader"]
    self.study = self.db.study

  def reader(self, name="A"):
    info, token = self.db.add_reader(name)
    return info, token

  def case_id(self, info):
    return self.db.state(info.id).case_id

  def read(self, token, info, labels, confidence, seconds=10.0, rating_seconds=3.0):
    """Opens the next case, answers after `seconds`, rates after `rating_seconds`."""
    r = self.client.get(f"/r/{token}/case")
    assert r.status_code == 200, r.text
    cid = self.case_id(info)
    self.clock.advance(seconds)
    r = self.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(list(labels)))
    assert r.status_code == 303, r.text
    self.clock.advance(rating_seconds)
    r = self.client.post(f"/r/{token}/case/{cid}/confidence", data={"confidence": confidence})
    assert r.status_code == 303, r.text
    return cid


def test_a_read_records_answer_confidence_and_exact_time(study_dir):
  h = Harness(study_dir)
  info, token = h.reader()
  page = h.client.get(f"/r/{token}/")
  assert page.status_code == 200 and "0 of 3 cases read" in page.text
  r = h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  assert cid == h.db.order(info.id, "alone")[0]
  assert 'id="viewer"' in r.text and 'id="report"' not in r.text      # alone: images only
  assert f"/r/{token}/case/{cid}/volume" in r.text
  for name in h.study.labels:
    assert f'value="{name}"' in r.text
  h.clock.advance(42.5)
  r = h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["subdural", "any"]))
  assert r.status_code == 303 and r.headers["Location"].endswith(f"/r/{token}/case")
  conf = h.client.get(f"/r/{token}/case")
  assert 'id="confidence-form"' in conf.text and "any, subdural" in conf.text
  h.clock.advance(30)                    # the confidence step is not reading time
  r = h.client.post(f"/r/{token}/case/{cid}/confidence", data={"confidence": "2"})
  assert r.status_code == 303 and r.headers["Location"].endswith(f"/r/{token}/")
  (read,) = h.db.reads()
  assert read.reading_seconds == 42.5 and read.answer == ["any", "subdural"]
  assert read.confidence == 2 and read.shown_at == T0 and read.confidence_at == T0 + 72.5
  assert "1 of 3 cases read" in h.client.get(f"/r/{token}/").text


def test_a_case_cannot_be_answered_twice(study_dir):
  h = Harness(study_dir)
  info, token = h.reader()
  h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  assert h.client.post(f"/r/{token}/case/{cid}/answer",
                       data=answer_form(["any"])).status_code == 303
  again = h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["epidural"]))
  assert again.status_code == 409 and "already answered" in again.text
  h.client.post(f"/r/{token}/case/{cid}/confidence", data={"confidence": "3"})
  twice = h.client.post(f"/r/{token}/case/{cid}/confidence", data={"confidence": "0"})
  assert twice.status_code == 409 and "cannot be changed" in twice.text
  h.client.get(f"/r/{token}/case")        # the next case is open now
  late = h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form([]))
  assert late.status_code == 409 and "already answered" in late.text
  first = [r for r in h.db.reads() if r.case_id == cid]
  assert len(first) == 1 and first[0].answer == ["any"] and first[0].confidence == 3
  # The database itself refuses a second read of one case in one arm.
  import sqlalchemy as sa
  from ctjax.reader import db as db_lib
  with pytest.raises(sa.exc.IntegrityError):
    with h.db.Session.begin() as s:
      s.add(db_lib.Read(reader_id=info.id, arm="alone", position=2, case_id=cid, shown_at=T0))


def test_unknown_token_is_refused(study_dir):
  h = Harness(study_dir)
  info, token = h.reader()
  h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  bogus = ("y" if token[0] == "x" else "x") + token[1:]   # never the token itself
  for r in (h.client.get(f"/r/{bogus}/"), h.client.get(f"/r/{bogus}/case"),
            h.client.get(f"/r/{bogus}/case/{cid}/volume"),
            h.client.post(f"/r/{bogus}/case/{cid}/answer", data=answer_form(["any"]))):
    assert r.status_code == 404 and "unknown reader link" in r.text
  assert h.db.reads()[0].answered_at is None
  js = h.client.get(f"/r/{bogus}/", headers={"Accept": "application/json"})
  assert js.status_code == 404 and "unknown reader link" in js.get_json()["error"]
  # The token is not stored, only its hash.
  raw = (study_dir / study_lib.DB_FILE).read_bytes()
  assert token.encode() not in raw


def test_bad_label_or_confidence_is_refused_with_a_clear_message(study_dir):
  h = Harness(study_dir)
  info, token = h.reader()
  h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  r = h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["any", "haematoma"]))
  assert r.status_code == 400
  assert ("unknown label &#39;haematoma&#39;; the labels are: any, epidural, intraparenchymal, "
          "intraventricular, subarachnoid, subdural") in r.text
  js = h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["Any"]),
                     headers={"Accept": "application/json"})
  assert js.status_code == 400 and js.get_json()["error"].startswith("unknown label 'Any'")
  assert h.db.state(info.id).status == "case"       # nothing committed
  h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["any"]))
  for bad in ("4", "-1", "1.5", "two", ""):
    r = h.client.post(f"/r/{token}/case/{cid}/confidence", data={"confidence": bad},
                      headers={"Accept": "application/json"})
    assert r.status_code == 400, bad
    assert r.get_json()["error"] == (
        f"confidence {bad!r} is not one of 0 (completely uncertain), 1 (slightly certain), "
        "2 (high probability), 3 (full confidence)")
  assert h.db.state(info.id).status == "confidence"
  assert h.client.post(f"/r/{token}/case/{cid}/confidence",
                       data={"confidence": " 0 "}).status_code == 303
  assert h.db.reads()[0].confidence == 0


def test_images_and_report_only_for_the_readers_open_case(study_dir):
  h = Harness(study_dir)
  a, ta = h.reader("A")
  b, tb = h.reader("B")
  all_ids = [c.case_id for c in h.study.cases]
  h.client.get(f"/r/{ta}/case")
  open_a = h.case_id(a)
  vol = h.client.get(f"/r/{ta}/case/{open_a}/volume")
  hu = np.load(h.study.hu_path(open_a))
  assert vol.status_code == 200 and vol.headers["X-Volume-Shape"] == ",".join(map(str, hu.shape))
  np.testing.assert_array_equal(np.frombuffer(vol.data, "<i2").reshape(hu.shape), hu)
  assert hu.shape[0] == h.study.case(open_a).num_slices      # every slice of the series
  # Not the report while reading alone; no other case's images; not another reader's case.
  r = h.client.get(f"/r/{ta}/case/{open_a}/report")
  assert r.status_code == 403 and "assisted arm only" in r.text
  for cid in all_ids:
    if cid != open_a:
      assert h.client.get(f"/r/{ta}/case/{cid}/volume").status_code == 403
      assert h.client.get(f"/r/{ta}/case/{cid}/report").status_code == 403
  assert h.client.get(f"/r/{tb}/case/{open_a}/volume").status_code == 403   # B has no open case
  assert h.client.get(f"/r/{ta}/case/nosuchcase/volume").status_code == 403
  # Assisted arm: the report of the open case only, with its own narrow policy.
  h.client.post(f"/r/{ta}/case/{open_a}/answer", data=answer_form([]))
  h.client.post(f"/r/{ta}/case/{open_a}/confidence", data={"confidence": "1"})
  for _ in range(2):
    h.read(ta, a, [], "1")
  h.clock.advance(8 * DAY)
  page = h.client.get(f"/r/{ta}/case")
  cid = h.case_id(a)
  assert 'id="report"' in page.text and f"/r/{ta}/case/{cid}/report" in page.text
  rep = h.client.get(f"/r/{ta}/case/{cid}/report")
  assert rep.status_code == 200 and rep.mimetype == "text/html"
  assert rep.data == h.study.report_path(cid).read_bytes()
  assert "sandbox" in rep.headers["Content-Security-Policy"]
  for other in all_ids:
    if other != cid:
      assert h.client.get(f"/r/{ta}/case/{other}/report").status_code == 403
  assert h.client.get(f"/r/{tb}/case/{cid}/report").status_code == 403


def test_the_assisted_arm_waits_for_the_washout(study_dir):
  h = Harness(study_dir)
  info, token = h.reader()
  for _ in range(3):
    h.read(token, info, ["any"], "2", seconds=20)
    h.clock.advance(DAY)                    # one case a day: the washout counts from the first
  st = h.db.state(info.id)
  assert st.status == "washout" and st.available_at == T0 + 7 * DAY
  home = h.client.get(f"/r/{token}/")
  assert "opens on" in home.text and clock_lib.iso(T0 + 7 * DAY) in home.text
  r = h.client.get(f"/r/{token}/case")
  assert r.status_code == 403 and "opens on" in r.text
  first = h.db.order(info.id, "assisted")[0]
  r = h.client.post(f"/r/{token}/case/{first}/answer", data=answer_form(["any"]))
  assert r.status_code in (403, 409) and len(h.db.reads()) == 3
  h.clock.set(T0 + 7 * DAY - 1)
  assert h.client.get(f"/r/{token}/case").status_code == 403
  h.clock.set(T0 + 7 * DAY)
  page = h.client.get(f"/r/{token}/case")
  assert page.status_code == 200 and 'id="report"' in page.text
  assert h.case_id(info) == first


def test_orders_are_seeded_permutations_per_reader_and_arm(study_dir):
  h = Harness(study_dir)
  ids = [c.case_id for c in h.study.cases]
  orders = []
  for k, name in enumerate(("A", "B", "C"), start=1):
    info, _ = h.reader(name)
    for a, arm in enumerate(h.study.arms):
      got = h.db.order(info.id, arm)
      want = [ids[i] for i in np.random.default_rng([h.study.seed, k, a]).permutation(3)]
      assert got == want and sorted(got) == sorted(ids)
      orders.append(tuple(got))
  assert len(set(orders)) > 1


def test_a_reload_keeps_the_clock_running_and_counts_views(study_dir):
  h = Harness(study_dir)
  info, token = h.reader()
  h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  h.clock.advance(5)
  h.client.get(f"/r/{token}/case")          # reload: same case, same start
  assert h.case_id(info) == cid
  h.clock.advance(7)
  h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["any"]))
  (r,) = h.db.reads()
  assert r.views == 2 and r.reading_seconds == 12.0


# ---------------------------------------------------------------------------------------------
# A real server process, killed with SIGKILL and restarted.

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
  def redirect_request(self, *args, **kwargs):
    return None


_OPEN = urllib.request.build_opener(_NoRedirect)


def _http(method, url, data=None):
  body = None if data is None else urllib.parse.urlencode(data, doseq=True).encode()
  req = urllib.request.Request(url, data=body, method=method)
  try:
    with _OPEN.open(req, timeout=10) as r:
      return r.status, r.read().decode("utf-8", "replace")
  except urllib.error.HTTPError as e:
    return e.code, e.read().decode("utf-8", "replace")


def _start(study_dir, port, *flags):
  proc = subprocess.Popen(
      [sys.executable, "-m", "ctjax.reader", "serve", "--workdir", str(study_dir),
       "--port", str(port), *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      env={**os.environ, "PYTHONPATH": str(ROOT)})
  deadline = time.time() + 30
  while time.time() < deadline:
    try:
      if _http("GET", f"http://127.0.0.1:{port}/")[0] == 200:
        return proc
    except OSError:
      pass
    if proc.poll() is not None:
      raise AssertionError(proc.stdout.read().decode())
    time.sleep(0.1)
  proc.kill()
  raise AssertionError("the server did not start in 30 s")


def test_a_killed_server_loses_no_committed_answer(study_dir):
  from ctjax.reader import db as db_lib
  s = study_lib.Study(study_dir)
  d = db_lib.StudyDB(s)
  info, token = d.add_reader("A")
  d.close()
  port = _free_port()
  base = f"http://127.0.0.1:{port}/r/{token}"
  proc = _start(study_dir, port)
  try:
    answered = []
    for labels, conf in ((["any", "subdural"], "3"), ([], "1")):
      assert _http("GET", f"{base}/case")[0] == 200
      cid = re.search(r"/case/([0-9a-f]+)/volume", _http("GET", f"{base}/case")[1]).group(1)
      assert _http("POST", f"{base}/case/{cid}/answer", answer_form(labels))[0] == 303
      assert _http("POST", f"{base}/case/{cid}/confidence", {"confidence": conf})[0] == 303
      answered.append(cid)
    _http("GET", f"{base}/case")
    third = re.search(r"/case/([0-9a-f]+)/volume", _http("GET", f"{base}/case")[1]).group(1)
    assert _http("POST", f"{base}/case/{third}/answer", answer_form(["epidural"]))[0] == 303
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
  assert proc.returncode == -signal.SIGKILL
  log = proc.stdout.read().decode()
  assert "POST /r/…/case/" in log and token not in log     # request lines without the token
  proc = _start(study_dir, port)
  try:
    # Resumes where the reader was: the third case's confidence step.
    status, page = _http("GET", f"{base}/case")
    assert status == 200 and 'id="confidence-form"' in page and "epidural" in page
    assert _http("POST", f"{base}/case/{answered[0]}/answer", answer_form([]))[0] == 409
    assert _http("POST", f"{base}/case/{third}/confidence", {"confidence": "2"})[0] == 303
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
  d = db_lib.StudyDB(study_lib.Study(study_dir))
  reads = d.reads()
  d.close()
  got = [(r.case_id, r.answer, r.confidence) for r in reads]
  assert got == [(answered[0], ["any", "subdural"], 3), (answered[1], [], 1),
                 (third, ["epidural"], 2)]
  assert all(r.reading_seconds is not None and r.reading_seconds >= 0 for r in reads)


# ---------------------------------------------------------------------------------------------
# Hostile and unlucky requests: malformed bodies, double clicks, huge bodies, a full disk.

def _multipart(fields, boundary="ctjaxB0undary"):
  parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
           for k, v in fields]
  return ("".join(parts) + f"--{boundary}--\r\n").encode(), \
      f"multipart/form-data; boundary={boundary}"


def test_a_malformed_body_is_refused_and_stores_nothing(study_dir):
  h = Harness(study_dir)
  info, token = h.reader()
  h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  url = f"/r/{token}/case/{cid}/answer"
  whole, ctype = _multipart([("label", "any"), ("label", "subdural"), ("form_end", "1")])
  bad = {
      "JSON instead of the form": dict(json={"label": ["any"], "form_end": "1"}),
      "a multipart body cut short": dict(data=whole[:-20], content_type=ctype),
      "a multipart body cut inside a field": dict(data=whole[:70], content_type=ctype),
      "a form without its last field": dict(data={"label": ["any"]}),
      "an empty form": dict(data={}),
      "a plain-text body": dict(data=b"label=any&form_end=1", content_type="text/plain"),
  }
  for what, kwargs in bad.items():
    r = h.client.post(url, **kwargs)
    assert r.status_code == 400, (what, r.status_code)
    assert "nothing was recorded" in r.text, what
    assert h.db.state(info.id).status == "case" and h.db.reads()[0].answered_at is None, what
  js = h.client.post(url, json={"label": []}, headers={"Accept": "application/json"})
  assert js.status_code == 400 and js.get_json()["error"] == (
      "nothing was recorded: send the page's form, not a body of type application/json")
  r = h.client.post(url, data=whole, content_type=ctype)            # the whole multipart form
  assert r.status_code == 303 and h.db.reads()[0].answer == ["any", "subdural"]
  r = h.client.post(f"/r/{token}/case/{cid}/confidence", json={"confidence": "2"})
  assert r.status_code == 400 and h.db.reads()[0].confidence is None


def test_request_bodies_are_capped_before_they_are_read(study_dir):
  h = Harness(study_dir)
  info, token = h.reader()
  h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  big = "x" * (20 << 20)                                   # 20 MB
  body, ctype = _multipart([("label", "any"), ("form_end", "1"), ("blob", big)])
  for kwargs in (dict(json={"label": ["any"], "form_end": "1", "blob": big}),
                 dict(data=body, content_type=ctype),
                 dict(data={"label": ["any"], "form_end": "1", "blob": big})):
    r = h.client.post(f"/r/{token}/case/{cid}/answer", **kwargs)
    assert r.status_code == 413 and "larger than the 64 KB this study accepts" in r.text
  assert h.db.reads()[0].answered_at is None
  assert server.MAX_BODY_BYTES == 64 * 1024


def _at_once(n, fn):
  """`fn(i)` in n threads released together; their results in order."""
  import threading
  gate = threading.Barrier(n)
  out = [None] * n

  def run(i):
    gate.wait()
    out[i] = fn(i)

  threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  return out


@pytest.fixture
def slow_state(monkeypatch):
  """Widens the window between a step's read of the state and its write (as a loaded server
  would), so that concurrent requests overlap there."""
  from ctjax.reader import db as db_lib
  real = db_lib.StudyDB._state

  def slow(self, *args, **kwargs):
    got = real(self, *args, **kwargs)
    time.sleep(0.05)
    return got

  monkeypatch.setattr(db_lib.StudyDB, "_state", slow)


def test_opening_a_case_is_idempotent_under_concurrent_requests(study_dir, slow_state):
  h = Harness(study_dir)
  info, token = h.reader()
  clients = [h.app.test_client() for _ in range(8)]
  codes = _at_once(8, lambda i: clients[i].get(f"/r/{token}/case").status_code)
  assert codes == [200] * 8
  (read,) = h.db.reads()
  assert read.views == 8 and read.position == 0 and read.answered_at is None


def test_a_double_submit_records_one_answer_and_one_confidence(study_dir, slow_state):
  h = Harness(study_dir)
  info, token = h.reader()
  h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  clients = [h.app.test_client() for _ in range(4)]
  h.clock.advance(12.0)
  codes = _at_once(4, lambda i: clients[i].post(f"/r/{token}/case/{cid}/answer",
                                               data=answer_form(["epidural"])).status_code)
  assert codes == [303] * 4
  h.clock.advance(5.0)
  codes = _at_once(4, lambda i: clients[i].post(f"/r/{token}/case/{cid}/confidence",
                                               data={"confidence": "1"}).status_code)
  assert codes == [303] * 4
  (read,) = h.db.reads()
  assert read.answer == ["epidural"] and read.reading_seconds == 12.0 and read.confidence == 1
  # A different answer or confidence is still refused: an answer cannot be changed.
  assert h.client.post(f"/r/{token}/case/{cid}/answer",
                       data=answer_form(["any"])).status_code == 409
  assert h.client.post(f"/r/{token}/case/{cid}/confidence",
                       data={"confidence": "3"}).status_code == 409
  assert h.db.reads()[0].answer == ["epidural"] and h.db.reads()[0].confidence == 1


def test_a_full_disk_is_a_one_sentence_503_and_loses_nothing(study_dir, monkeypatch):
  import errno
  from ctjax.reader import db as db_lib
  h = Harness(study_dir)
  info, token = h.reader()
  h.client.get(f"/r/{token}/case")
  cid = h.case_id(info)
  real = db_lib.StudyDB.answer

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(db_lib.StudyDB, "answer", full)
  r = h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["any"]))
  assert r.status_code == 503
  assert ("The study&#39;s disk is full, so this step was not recorded; tell the study owner "
          "(your earlier answers are kept).") in r.text
  assert "Traceback" not in r.text and f"/r/{token}/" in r.text        # a way back
  js = h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["any"]),
                     headers={"Accept": "application/json"})
  assert js.status_code == 503 and js.get_json()["error"].startswith("The study's disk is full")
  monkeypatch.setattr(db_lib.StudyDB, "answer", real)   # space freed: the same step works
  assert h.client.post(f"/r/{token}/case/{cid}/answer",
                       data=answer_form(["any"])).status_code == 303
  assert h.db.reads()[0].answer == ["any"]


def test_a_real_full_disk_under_the_database_is_a_503(study_template, tmp_path):
  """The study on a small tmpfs, filled: SQLite's own "database or disk is full"."""
  import shutil
  from tests.support import storage_helpers
  size = sum(p.stat().st_size for p in study_template.rglob("*") if p.is_file())
  with storage_helpers.small_disk(tmp_path / "disk", f"{size // 1024 + 512}k") as disk:
    shutil.copytree(study_template, disk / "study", symlinks=True)
    h = Harness(disk / "study")
    info, token = h.reader()
    assert h.client.get(f"/r/{token}/case").status_code == 200
    cid = h.case_id(info)
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:           # every free block taken
      try:
        while True:
          f.write(b"\0" * 4096)
      except OSError:
        pass
    r = h.client.post(f"/r/{token}/case/{cid}/answer", data=answer_form(["subdural"]))
    assert r.status_code == 503 and "disk is full" in r.text
    assert h.db.reads()[0].answered_at is None
    filler.unlink()
    assert h.client.post(f"/r/{token}/case/{cid}/answer",
                         data=answer_form(["subdural"])).status_code == 303
    assert h.db.reads()[0].answer == ["subdural"]
    h.db.close()


def test_serve_runs_waitress_with_the_given_threads_and_body_cap(study_dir, monkeypatch):
  import waitress
  seen = {}

  class Fake:
    def run(self):
      seen["ran"] = True

    def close(self):
      seen["closed"] = True

  def create_server(app, **kwargs):
    seen.update(kwargs)
    return Fake()

  monkeypatch.setattr(waitress, "create_server", create_server)
  server.serve(study_dir, "127.0.0.1", 9999, threads=3)
  assert seen["threads"] == 3 and seen["port"] == 9999 and seen["ran"] and seen["closed"]
  assert seen["max_request_body_size"] == server.MAX_BODY_BYTES


def test_the_served_study_runs_on_waitress_without_the_development_banner(study_dir):
  port = _free_port()
  proc = _start(study_dir, port, "--threads", "3")
  try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
      assert r.headers["Server"] == "ctjax-reader"
  finally:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
  log = proc.stdout.read().decode()
  assert "development server" not in log.lower() and "GET / 200" in log
  assert f"waitress: 3 threads on 127.0.0.1:{port}" in log


def test_the_documented_window_presets_are_the_served_ones(study_dir):
  """docs/reader.md names the viewer's presets as level/width; they are the ones served."""
  doc = " ".join((ROOT / "docs" / "reader.md").read_text(encoding="utf-8").split())
  h = Harness(study_dir)
  served = server._view_windows(h.study)
  assert [w[0] for w in served] == ["brain", "subdural", "bone"]
  said = re.search(r"brain (\S+), subdural (\S+) and bone (\S+) \(level/width in HU", doc)
  assert said, "docs/reader.md no longer lists the presets"
  assert list(said.groups()) == [f"{level:g}/{width:g}" for _, level, width in served]
