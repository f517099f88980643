"""`create`: the study folder, its cases (the run's test split), images, reports and orders."""

import json
import pathlib
import sys

import numpy as np
import pytest

from ctjax import errors
from ctjax.reader import db as db_lib
from ctjax.reader import study as study_lib

from tests.support import ctdicom_helpers  # noqa: E402  (the DICOM writer of the data tests)


def test_cases_are_a_seeded_sample_of_the_runs_test_split(study_dir, tiny_run):
  from ctjax.data import datasets
  from ctjax.train.checkpoint import load_config
  s = study_lib.Study(study_dir)
  assert len(s.cases) == 3 and s.labels == list(datasets.RSNA_LABELS)
  # The run's test split, independently: every scan of the phantom set, split by patient.
  cfg = load_config(tiny_run)
  ds = datasets.load("phantom", tiny_run / "data")
  recs = sorted(ds.scans, key=lambda r: r.scan_id)
  test = datasets.split_indices([r.patient_id for r in recs], num_folds=cfg.data.num_folds,
                                fold=cfg.data.fold, seed=cfg.data.split_seed)["test"]
  test_ids = {recs[i].scan_id for i in test}
  assert {c.scan_id for c in s.cases} <= test_ids and len(test_ids) > 3
  by_id = {r.scan_id: r for r in recs}
  for c in s.cases:
    assert c.truth == [int(v) for v in by_id[c.scan_id].labels]
  assert s.meta["source"]["kind"] == "test_split"
  assert s.meta["source"]["num_available"] == len(test_ids)


def test_each_case_stores_every_slice_in_hu_and_the_models_report(study_dir, tiny_model):
  from ctjax.data import cache, dicom
  from ctjax.data.sampling import uniform_indices
  from ctjax.inference import runs
  from ctjax.eval import keyslice
  from ctjax.inference.scan_reports import scan_batch
  s = study_lib.Study(study_dir)
  for c in s.cases:
    vol = dicom.read_series(s.case_dir(c.case_id) / "dicom", series_uid=c.series_uid)
    hu = np.load(s.hu_path(c.case_id))
    assert hu.dtype == np.int16 and list(hu.shape) == c.shape == list(vol.hu.shape)
    np.testing.assert_array_equal(hu, np.clip(np.rint(vol.hu), cache.HU_MIN, cache.HU_MAX))
    out = s.model_output(c.case_id)
    batch, _ = scan_batch(vol, tiny_model.config)
    want = runs.predict_batch(tiny_model, batch)
    np.testing.assert_allclose(out["probabilities"], want["probs"][0], atol=1e-6)
    np.testing.assert_allclose(out["slice_attention"], want["slice_attention"][0], atol=1e-6)
    assert out["slice_index"] == [int(i) for i in uniform_indices(c.num_slices, 8)]
    assert out["key_slices"] == [int(i) for i in keyslice.top_k_indices(
        np.asarray(out["slice_attention"]))]
    assert out["predicted"] == [int(p >= 0.5) for p in out["probabilities"]]
    assert 0 < out["seconds"] < 30
    page = s.report_path(c.case_id).read_text()
    assert page.count('class="key-slice"') == 5 and c.series_uid in page
    for p in out["probabilities"]:
      assert f'<td class="num">{p:.3f}</td>' in page


def test_case_ids_are_random_and_the_study_is_reproducible(study_dir, tiny_run, tiny_model,
                                                           tmp_path):
  s = study_lib.Study(study_dir)
  ids = [c.case_id for c in s.cases]
  assert len(set(ids)) == 3 and all(len(i) == 8 for i in ids)
  again = study_lib.create_study(tmp_path / "again", tiny_run, num_scans=3, seed=0,
                                 run=tiny_model, progress=False)
  assert [(c.case_id, c.scan_id, c.truth) for c in again.cases] == [
      (c.case_id, c.scan_id, c.truth) for c in s.cases]
  other = study_lib.create_study(tmp_path / "other", tiny_run, num_scans=2, seed=5,
                                 run=tiny_model, progress=False)
  assert len(other.cases) == 2 and {c.case_id for c in other.cases}.isdisjoint(ids)


def test_create_refuses_an_existing_study_or_a_used_folder(study_dir, tiny_run, tiny_model,
                                                          tmp_path):
  with pytest.raises(errors.StudyError, match="a study already exists here"):
    study_lib.create_study(study_dir, tiny_run, run=tiny_model, progress=False)
  used = tmp_path / "used"
  used.mkdir()
  (used / "notes.txt").write_text("x")
  with pytest.raises(errors.StudyError, match="not empty"):
    study_lib.create_study(used, tiny_run, run=tiny_model, progress=False)


def test_any_layout_and_a_plain_folder_of_series(tiny_run, tiny_model, tmp_path):
  from ctjax.data import datasets
  scans = study_lib.dataset_scans("phantom", tiny_run / "data", 2, seed=1)
  s = study_lib.create_study(tmp_path / "ds", tiny_run, scans=scans, run=tiny_model,
                             progress=False, view_size=24)
  ds = {r.scan_id: r for r in datasets.load("phantom", tiny_run / "data").scans}
  assert s.meta["source"]["kind"] == "dataset" and len(s.cases) == 2
  for c in s.cases:
    assert c.truth == [int(v) for v in ds[c.scan_id].labels]
    assert c.shape[1:] == [24, 24] and np.load(s.hu_path(c.case_id)).shape[1:] == (24, 24)
  # A folder of series without labels: a study without truth (phantom heads: the model's
  # reports refuse series that are no head CT, config.data.require_head).
  from tests.inference.test_scan_reports import write_head
  for k in range(2):
    write_head(tmp_path / "plain" / f"s{k}", uid=f"1.2.3.{k}", size=32)
  s = study_lib.create_study(tmp_path / "plain_study", tiny_run,
                             scans=study_lib.folder_scans(tmp_path / "plain", 0, 0),
                             run=tiny_model, progress=False)
  assert not s.has_truth and sorted(c.scan_id for c in s.cases) == ["s0", "s1"]
  from ctjax.reader import analysis
  rows = analysis.table8(s, [])
  assert len(rows) == 1 and np.isnan(rows[0].f1) and rows[0].num_scans == 2


def test_a_data_set_with_other_labels_is_refused(tiny_run, tiny_model, tmp_path):
  from ctjax.data import phantom
  phantom.write_dataset(tmp_path / "cq", layout="cq500", num_scans=2, seed=0, size=32,
                        num_workers=0)
  scans = study_lib.dataset_scans("phantom", tmp_path / "cq", 0, 0)
  with pytest.raises(errors.StudyError, match="differ from the run's"):
    study_lib.create_study(tmp_path / "s", tiny_run, scans=scans, run=tiny_model,
                           progress=False)


def test_the_database_belongs_to_its_study(study_dir, tmp_path):
  import shutil
  other = tmp_path / "other"
  shutil.copytree(study_dir, other, symlinks=True)
  meta = json.loads((other / study_lib.STUDY_FILE).read_text())
  meta["seed"] = 99
  (other / study_lib.STUDY_FILE).write_text(json.dumps(meta))
  with pytest.raises(errors.StudyError, match="belongs to another study"):
    db_lib.StudyDB(study_lib.Study(other))


def test_the_sampled_scans_are_the_runs_own_test_split(tiny_run):
  """The study samples the split the run held out, as the pipeline made it, stratification
  included (an unstratified split of the same cache put training scans before the readers)."""
  from ctjax.data import pipeline
  from ctjax.train.checkpoint import load_config
  config = load_config(tiny_run)
  config.data.stratify = True
  want = set(pipeline.build_splits(config, str(tiny_run), build=False)["test"].scan_ids)
  info, picked = study_lib.test_split_scans(config, tiny_run, 100, 0)
  assert {s.scan_id for s in picked} == want and info["num_available"] == len(want)
  config.data.stratify = False
  plain = set(pipeline.build_splits(config, str(tiny_run), build=False)["test"].scan_ids)
  assert plain != want   # the two partitions differ on this data set: the check can fail


def test_a_run_whose_data_was_never_prepared_is_one_line(tiny_run, tmp_path):
  from ctjax.errors import CacheNotPreparedError
  from ctjax.train.checkpoint import load_config
  config = load_config(tiny_run)
  config.data.root = str(tmp_path / "elsewhere")
  (tmp_path / "elsewhere").mkdir()
  with pytest.raises(CacheNotPreparedError, match="ctjax.prepare"):
    study_lib.test_split_scans(config, tiny_run, 3, 0)
  assert not list((tmp_path / "elsewhere").iterdir())
