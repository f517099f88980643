"""The reading web app (Flask): one page per step, every answer committed when posted.

Routes (TOKEN is the reader's link secret; CASE a study case id):

```
GET  /                               the study's name; readers open their own link
GET  /r/TOKEN/                       where the reader stands (progress, washout, next case)
GET  /r/TOKEN/case                   the open case: viewer (+ the model's report when assisted)
                                     or, once diagnosed, its confidence step
GET  /r/TOKEN/case/CASE/volume       the case's HU, int16 little-endian [S, H, W] (open case)
GET  /r/TOKEN/case/CASE/report       the model's report (open case, assisted arm only)
POST /r/TOKEN/case/CASE/answer       form fields `label` (repeated): the positive labels
POST /r/TOKEN/case/CASE/confidence   form field `confidence`: 0–3
```

Pages are plain HTML forms posted and redirected (so a reload never re-sends an answer); the
only script is the slice viewer. A refused request (unknown link, another case, a second
answer, the washout, an unknown label or confidence) answers with its HTTP status and one
sentence, as HTML, or as JSON `{"error": …}` when the client asks for JSON.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
from flask import Flask, Response, jsonify, redirect, render_template, request, url_for

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


def create_app(study_dir: str | os.PathLike, *, clock: Optional[clock_lib.Clock] = None
               ) -> Flask:
  """The study's app; `clock` (default the system's) times every read and the washout."""
  study = Study(study_dir)
  db = StudyDB(study, clock)
  app = Flask(__name__)
  app.extensions["ctjax_reader"] = db
  windows = _view_windows(study)

  @app.after_request
  def _headers(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"     # the link's token never leaves
    resp.headers["Cache-Control"] = "no-store"
    return resp

  @app.errorhandler(errors.ReadRefusedError)
  def _refused(e: errors.ReadRefusedError):
    log.info("refused %s %s: %s", request.method, _redact(request.path), e)
    if request.accept_mimetypes.best == "application/json":
      return jsonify(error=str(e)), e.status
    return render_template("message.html", study=study, title="Refused", message=str(e),
                           back=request.view_args.get("token") if request.view_args else None
                           ), e.status

  @app.errorhandler(404)
  def _not_found(_e):
    return render_template("message.html", study=study, title="Not found",
                           message="no such page", back=None), 404

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
    return render_template("case.html", assisted=st.arm == "assisted", windows=windows,
                           labels=study.labels, **step)

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
    resp = Response(study.report_path(case_id).read_bytes(), mimetype="text/html")
    resp.headers["Content-Security-Policy"] = REPORT_CSP
    return resp

  @app.post("/r/<token>/case/<case_id>/answer")
  def answer(token: str, case_id: str):
    reader = reader_of(token)
    db.answer(reader.id, case_id, request.form.getlist("label"))
    if request.accept_mimetypes.best == "application/json":
      return jsonify(ok=True, next=url_for("case", token=token))
    return redirect(url_for("case", token=token), 303)

  @app.post("/r/<token>/case/<case_id>/confidence")
  def confidence(token: str, case_id: str):
    reader = reader_of(token)
    db.rate(reader.id, case_id, request.form.get("confidence", ""))
    if request.accept_mimetypes.best == "application/json":
      return jsonify(ok=True, next=url_for("home", token=token))
    return redirect(url_for("home", token=token), 303)

  return app


def _view_windows(study: Study) -> list[list]:
  """[[name, level, width], …] in the study's order (a list: JSON objects lose key order)."""
  from ctjax.data.windows import PRESETS
  return [[name, *PRESETS[name][0]] for name in study.meta.get("view_windows", ["brain"])]


def _redact(path: str) -> str:
  parts = path.split("/")
  if len(parts) > 2 and parts[1] == "r":
    parts[2] = "…"
  return "/".join(parts)


def serve(study_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765) -> None:
  """Runs the app until interrupted (werkzeug's threaded server; a study is a few readers)."""
  from werkzeug.serving import WSGIRequestHandler, run_simple

  class _RedactingHandler(WSGIRequestHandler):
    """Request log lines without the readers' tokens."""

    def log_request(self, code="-", size="-"):
      self.path = _redact(self.path)   # werkzeug logs self.path; the response is sent
      super().log_request(code, size)

  app = create_app(study_dir)
  if host not in ("127.0.0.1", "localhost", "::1"):
    log.warning("serving on %s: anyone who can reach it and holds a reader link can answer; "
                "the links are the only credential", host)
  run_simple(host, int(port), app, threaded=True, use_reloader=False, use_debugger=False,
             request_handler=_RedactingHandler)
