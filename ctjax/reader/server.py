"""The reading web app (Flask): one page per step, every answer committed when posted.

Routes (TOKEN is the reader's link secret; CASE a study case id):

```
GET  /                               the study's name; readers open their own link
GET  /r/TOKEN/                       where the reader stands (progress, washout, next case)
GET  /r/TOKEN/case                   the open case: viewer (+ the model's report when assisted)
                                     or, once diagnosed, its confidence step
GET  /r/TOKEN/case/CASE/volume       the case's HU, int16 little-endian [S, H, W] (open case)
GET  /r/TOKEN/case/CASE/report       the model's report (open case, assisted arm only), as
                                     stored; ?embed=1: laid out for the frame beside the
                                     viewer (`embedded_report`)
POST /r/TOKEN/case/CASE/answer       form fields `label` (repeated): the positive labels
POST /r/TOKEN/case/CASE/confidence   form field `confidence`: 0–3
```

Pages are plain HTML forms posted and redirected (so a reload never re-sends an answer); the
only script is the slice viewer. A refused request (unknown link, another case, a second
answer, the washout, an unknown label or confidence) answers with its HTTP status and one
sentence, as HTML, or as JSON `{"error": …}` when the client asks for JSON.

What is posted must be the page's form, whole: form-encoded (a JSON body is refused), parsed
strictly (a multipart body cut short is refused, not read as no fields) and, for the diagnosis,
ending with the form's last field `form_end` — an empty diagnosis is "no finding", so a body
that lost its fields must not pass for one. Refusals store nothing (HTTP 400); a body over
`MAX_BODY_BYTES` is refused before it is read (413). A full disk or a busy database is a
one-sentence 503 page (nothing of that step is stored; earlier answers are kept), any other
failure a one-sentence 500 page with the traceback in the server's log only.

`serve` runs the app under waitress (a production WSGI server: a pool of `threads` worker
threads, request bodies capped at the same limit) with an access log without tokens.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import sqlalchemy as sa
from flask import Flask, Request, Response, jsonify, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from ctjax import errors, fileio
from ctjax.reader import clock as clock_lib
from ctjax.reader.db import StudyDB
from ctjax.reader.study import CONFIDENCE_LEVELS, Study

log = logging.getLogger(__name__)

# The pages load nothing from elsewhere; the report (self-contained, inline script and images)
# is shown in a sandboxed frame with its own, narrower policy.
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'")
REPORT_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
              "script-src 'unsafe-inline'; sandbox allow-scripts")
# The forms post a few hundred bytes; a body beyond this is refused unread (413).
MAX_BODY_BYTES = 64 * 1024
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
FORM_END = "form_end"   # the answer form's last field: present only if the body came whole
DEFAULT_THREADS = 8


class _StrictFormParser(FormDataParser):
  """Werkzeug's parser, but a malformed or truncated body raises instead of reading as empty."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.silent = False


class _Request(Request):
  form_data_parser_class = _StrictFormParser


def _posted_form(*, whole: bool) -> MultiDict:
  """The posted form, or ReadRefusedError (400) if it is not the page's form, whole."""
  if request.mimetype not in FORM_TYPES:
    raise errors.ReadRefusedError(
        "nothing was recorded: send the page's form, not a body of type "
        f"{request.mimetype or '(none)'}", 400)
  try:
    form = request.form
  except ValueError as e:   # the parser's words go to the log (the refusal handler's line)
    raise errors.ReadRefusedError("nothing was recorded: the form arrived damaged; submit it "
                                  "again", 400) from e
  if whole and form.get(FORM_END) != "1":
    raise errors.ReadRefusedError("nothing was recorded: the form arrived incomplete (its last "
                                  "field is missing); submit it again", 400)
  return form


def _failure(e: BaseException) -> tuple[str, int]:
  """(one sentence, HTTP status) for an unexpected failure while serving a step."""
  if fileio.is_disk_full(e):
    return ("The study's disk is full, so this step was not recorded; tell the study owner "
            "(your earlier answers are kept).", 503)
  if isinstance(e, sa.exc.OperationalError) and "database is locked" in str(e):
    return ("The study's database is busy, so this step was not recorded; try again in a "
            "moment.", 503)
  return ("Something went wrong on the server and this step was not recorded; tell the study "
          "owner (your earlier answers are kept).", 500)


def create_app(study_dir: str | os.PathLike, *, clock: Optional[clock_lib.Clock] = None
               ) -> Flask:
  """The study's app; `clock` (default the system's) times every read and the washout."""
  study = Study(study_dir)
  db = StudyDB(study, clock)
  app = Flask(__name__)
  app.request_class = _Request
  app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
  app.config["MAX_FORM_MEMORY_SIZE"] = MAX_BODY_BYTES
  app.extensions["ctjax_reader"] = db
  windows = _view_windows(study)

  def message(title: str, text: str, status: int):
    if request.accept_mimetypes.best == "application/json":
      return jsonify(error=text), status
    return render_template("message.html", study=study, title=title, message=text,
                           back=request.view_args.get("token") if request.view_args else None
                           ), status

  @app.before_request
  def _body_size():
    if (request.content_length or 0) > MAX_BODY_BYTES:   # refused before a byte is read
      raise RequestEntityTooLarge()

  @app.after_request
  def _headers(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"     # the link's token never leaves
    resp.headers["Cache-Control"] = "no-store"
    return resp

  @app.errorhandler(errors.ReadRefusedError)
  def _refused(e: errors.ReadRefusedError):
    log.info("refused %s %s: %s%s", request.method, _redact(request.path), e,
             f" ({e.__cause__})" if e.__cause__ else "")
    return message("Refused", str(e), e.status)

  @app.errorhandler(404)
  def _not_found(_e):
    return render_template("message.html", study=study, title="Not found",
                           message="no such page", back=None), 404

  @app.errorhandler(413)
  def _too_large(_e):
    return message("Refused", f"nothing was recorded: the request is larger than the "
                   f"{MAX_BODY_BYTES // 1024} KB this study accepts", 413)

  @app.errorhandler(Exception)
  def _failed(e: Exception):
    if isinstance(e, HTTPException):
      return e
    text, status = _failure(e)
    log.error("%s %s: %s", request.method, _redact(request.path), " ".join(str(e).split()),
              exc_info=status == 500)
    return message("Not recorded" if status == 503 else "Server error", text, status)

  def reader_of(token: str):
    return db.reader_for_token(token)

  @app.get("/")
  def index():
    return render_template("index.html", study=study)

  @app.get("/r/<token>/")
  def home(token: str):
    reader = reader_of(token)
    st = db.state(reader.id)
    return render_template("home.html", study=study, reader=reader, st=st, token=token,
                           opens=clock_lib.iso(st.available_at))

  @app.get("/r/<token>/case")
  def case(token: str):
    reader = reader_of(token)
    st = db.open_case(reader.id)
    if st.status == "finished":
      return redirect(url_for("home", token=token), 303)
    case = study.case(st.case_id)
    step = dict(study=study, reader=reader, st=st, token=token, case=case,
                number=st.position + 1, arm_number=study.arms.index(st.arm) + 1)
    if st.status == "confidence":
      read = db.get_read(reader.id, st.arm, case.case_id)
      return render_template("confidence.html", levels=CONFIDENCE_LEVELS, answer=read.answer,
                             **step)
    assisted = st.arm == "assisted"
    slice_index = study.model_output(case.case_id)["slice_index"] if assisted else []
    return render_template("case.html", assisted=assisted, windows=windows,
                           labels=study.labels, slice_index=slice_index, **step)

  @app.get("/r/<token>/case/<case_id>/volume")
  def volume(token: str, case_id: str):
    reader = reader_of(token)
    db.current_read(reader.id, case_id)
    hu = fileio.open_npy(study.hu_path(case_id))   # requests run in threads
    body = np.ascontiguousarray(hu, dtype="<i2").tobytes()
    return Response(body, mimetype="application/octet-stream",
                    headers={"X-Volume-Shape": ",".join(str(s) for s in hu.shape)})

  @app.get("/r/<token>/case/<case_id>/report")
  def report(token: str, case_id: str):
    reader = reader_of(token)
    st = db.current_read(reader.id, case_id)
    if st.arm != "assisted":
      raise errors.ReadRefusedError("the model's report is shown in the assisted arm only", 403)
    body = study.report_path(case_id).read_bytes()
    if request.args.get("embed") == "1":
      body = embedded_report(body)
    resp = Response(body, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = REPORT_CSP
    return resp

  @app.post("/r/<token>/case/<case_id>/answer")
  def answer(token: str, case_id: str):
    reader = reader_of(token)
    db.answer(reader.id, case_id, _posted_form(whole=True).getlist("label"))
    if request.accept_mimetypes.best == "application/json":
      return jsonify(ok=True, next=url_for("case", token=token))
    return redirect(url_for("case", token=token), 303)

  @app.post("/r/<token>/case/<case_id>/confidence")
  def confidence(token: str, case_id: str):
    reader = reader_of(token)
    db.rate(reader.id, case_id, _posted_form(whole=False).get("confidence", ""))
    if request.accept_mimetypes.best == "application/json":
      return jsonify(ok=True, next=url_for("home", token=token))
    return redirect(url_for("home", token=token), 303)

  return app


def embedded_report(page: bytes) -> bytes:
  """The report page with the frame's layout (static/report_embed.{css,js}) inlined: the
  report's policy allows inline style and script only, and the frame's origin is opaque."""
  from importlib import resources
  static = resources.files("ctjax.reader") / "static"
  css = (static / "report_embed.css").read_bytes()
  js = (static / "report_embed.js").read_bytes()
  if b"</head>" not in page or b"</body>" not in page:
    return page
  page = page.replace(b"</head>", b"<style>" + css + b"</style></head>", 1)
  head, _, tail = page.rpartition(b"</body>")
  return head + b"<script>" + js + b"</script></body>" + tail


def _view_windows(study: Study) -> list[list]:
  """[[name, level, width], …] in the study's order (a list: JSON objects lose key order)."""
  from ctjax.data.windows import PRESETS
  return [[name, *PRESETS[name][0]] for name in study.meta.get("view_windows", ["brain"])]


def _redact(path: str) -> str:
  parts = path.split("/")
  if len(parts) > 2 and parts[1] == "r":
    parts[2] = "…"
  return "/".join(parts)


def serve(study_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765, *,
          threads: int = DEFAULT_THREADS) -> None:
  """Runs the app under waitress until interrupted; `threads` requests are served at once."""
  import waitress

  app = create_app(study_dir)
  if host not in ("127.0.0.1", "localhost", "::1"):
    log.warning("serving on %s: anyone who can reach it and holds a reader link can answer; "
                "the links are the only credential", host)
  if int(threads) < 1:
    raise errors.StudyError(f"threads={threads}: serve with at least 1 thread")
  server = waitress.create_server(_AccessLog(app), host=host, port=int(port),
                                  threads=int(threads), max_request_body_size=MAX_BODY_BYTES,
                                  ident="ctjax-reader", clear_untrusted_proxy_headers=True)
  log.info("waitress: %d threads on %s:%d", int(threads), host, int(port))
  try:
    server.run()
  finally:
    server.close()


class _AccessLog:
  """WSGI middleware: one log line per request (method, path without the token, status)."""

  def __init__(self, app):
    self.app = app

  def __call__(self, environ, start_response):
    def start(status, headers, exc_info=None):
      log.info("%s %s %s", environ.get("REQUEST_METHOD"), _redact(environ.get("PATH_INFO", "")),
               status.split(" ", 1)[0])
      return start_response(status, headers, exc_info)
    return self.app(environ, start)
