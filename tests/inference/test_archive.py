"""ctjax.predict: rows per series, read errors recorded, resumable, equal to ctjax.evaluate.

The run is `configs/drct2_phantom.py:runlocal` (phantom RSNA-layout data generated in tmp) saved
as training leaves it (config.json + checkpoint) from random He-scaled weights: what is tested
is the prediction path, not what the model learnt.
"""

import json
import pathlib
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
                             "--batch_size", "4", "--noprogress"])
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
                           "--noprogress", "--fail_on_error"]) == 1
  captured = capsys.readouterr()
  assert "0 predicted, 0 could not be read, 7 already there" in captured.out
  assert "warning: 1 of 7 series could not be read" in captured.err
  assert len(archive.read_rows(out)) == 7


def test_killed_run_resumed_gives_the_same_file(run, scans, tmp_path):
  refs = archive.find_scans(scans)
  whole = tmp_path / "whole.jsonl"
  s = archive.predict_scans(run, refs, whole, batch_size=4, workers=1, progress=False,
                               timings=False)
  assert (s.predicted, s.failed) == (6, 1)
  part = tmp_path / "part.jsonl"
  with pytest.raises(KeyboardInterrupt):
    archive.predict_scans(run, refs, part, batch_size=4, workers=0, progress=False,
                             timings=False, stop_after_batches=1)
  first = part.read_text().splitlines()
  assert len(first) == 4
  with open(part, "a") as f:              # killed in the middle of writing the next row
    f.write('{"scan": "b", "pa')
  s = archive.predict_scans(run, refs, part, batch_size=4, workers=0, progress=False,
                               timings=False)
  assert (s.skipped, s.predicted + s.failed) == (4, 3)
  assert part.read_bytes() == whole.read_bytes()
  # With the timing columns the files differ only there.
  timed = tmp_path / "timed.csv"
  with pytest.raises(KeyboardInterrupt):
    archive.predict_scans(run, refs, timed, batch_size=4, workers=0, progress=False,
                             stop_after_batches=1)
  archive.predict_scans(run, refs, timed, batch_size=4, workers=0, progress=False)
  strip = lambda rows: [{k: v for k, v in r.items() if k not in archive.TIMING}  # noqa: E731
                        for r in rows]
  assert strip(archive.read_rows(timed)) == strip(archive.read_rows(whole))


def test_output_of_other_columns_or_model_is_refused(run, scans, tmp_path):
  refs = archive.find_scans(scans)[:1]
  out = tmp_path / "p.csv"
  out.write_text("scan,prob_x\nq,0.5\n")
  with pytest.raises(archive.OutputMismatchError, match="columns differ"):
    archive.predict_scans(run, refs, out, workers=0, progress=False)
  out = tmp_path / "p.jsonl"
  archive.predict_scans(run, refs, out, workers=0, progress=False)
  side = archive.sidecar_path(out)
  meta = json.loads(side.read_text())
  meta["run"]["step"] = 999
  side.write_text(json.dumps(meta))
  with pytest.raises(archive.OutputMismatchError, match="step 999"):
    archive.predict_scans(run, refs, out, workers=0, progress=False)
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
