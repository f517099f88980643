"""ctjax.data.datasets: public layouts on tiny trees, k-fold by patient."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ctjax import errors
from ctjax.data import labels
from ctjax.data import datasets, dicom
from tests.support.ctdicom_helpers import (write_blend_tree, write_cq500_tree, write_rsna_tree, write_series,
                             ramp_volume)


def test_rsna_layout(tmp_path):
  truth = write_rsna_tree(tmp_path, num_scans=3, slices=4)
  ds = datasets.load("rsna", tmp_path)
  assert ds.labels == labels.RSNA_LABELS and ds.has_slice_labels
  assert [s.scan_id for s in ds.scans] == sorted(truth)
  sdh = labels.RSNA_LABELS.index("subdural")
  for rec in ds.scans:
    assert len(rec.files) == 4 and rec.patient_id.startswith("ID_pat")
    want = [x for _, x in truth[rec.scan_id]]
    assert rec.labels[0] == rec.labels[sdh] == max(want)
    vol = dicom.read_series(rec.files, series_uid=rec.series_uid)
    got = [int(rec.slice_labels[f][sdh]) for f in vol.files]
    assert got == want                                   # per-slice labels in slice order
    assert vol.sop_uids == [sop for sop, _ in truth[rec.scan_id]]


def test_rsna_bad_csv_row(tmp_path):
  write_rsna_tree(tmp_path, num_scans=1, slices=2)
  with open(tmp_path / "stage_2_train.csv", "a") as f:
    f.write("garbage,1\n")
  with pytest.raises(errors.DatasetLayoutError, match="ID_<sop>"):
    datasets.load("rsna", tmp_path)


def test_cq500_layout_majority_and_series_choice(tmp_path):
  """The old tiny tree (thin, bone, one 5 mm slice): the bone series is never a scan."""
  votes = [{"ICH": (1, 1, 0), "SDH": (1, 0, 0), "CalvarialFracture": (0, 1, 1),
            "Fracture": (0, 1, 1)},
           {"MidlineShift": (1, 1, 1), "MassEffect": (0, 0, 1)}]
  write_cq500_tree(tmp_path, votes)
  ds = datasets.load("cq500", tmp_path)
  assert ds.labels == labels.CQ500_LABELS and not ds.has_slice_labels
  lab = {s.scan_id: s.labels for s in ds.scans}
  names = list(labels.CQ500_LABELS)
  assert sorted(lab) == ["CQ500-CT-0/CT 5mm", "CQ500-CT-0/CT PLAIN THIN", "CQ500-CT-1/CT 5mm",
                         "CQ500-CT-1/CT PLAIN THIN"]
  np.testing.assert_array_equal(
      lab["CQ500-CT-0/CT PLAIN THIN"], [n in ("ich", "fracture") for n in names])
  np.testing.assert_array_equal(lab["CQ500-CT-1/CT 5mm"], [n == "midline_shift" for n in names])
  rec = next(s for s in ds.scans if s.scan_id == "CQ500-CT-0/CT PLAIN THIN")
  assert all("CT PLAIN THIN" in f for f in rec.files) and len(rec.files) == 3
  assert rec.patient_id == "CQ500-CT-0"
  vol = dicom.read_series(rec.files)
  np.testing.assert_array_equal(vol.hu[:, 0, 0], [0, 1, 2])
  one = datasets.load("cq500", tmp_path, options=datasets.LoadOptions(
      series={"policy": "one_per_study"}))
  assert [s.scan_id for s in one.scans] == ["CQ500-CT-0/CT PLAIN THIN",
                                            "CQ500-CT-1/CT PLAIN THIN"]


def test_cq500_missing_columns(tmp_path):
  (tmp_path / "reads.csv").write_text("name,Category,R1:ICH\nCQ500-CT-0,B1,1\n")
  with pytest.raises(errors.LabelError, match="column"):
    datasets.load("cq500", tmp_path)


def test_blend_layout(tmp_path):
  write_blend_tree(tmp_path, num_scans=2, slices=3)
  ds = datasets.load("blend", tmp_path)
  assert ds.labels == labels.BLEND_CLASSES and len(ds.scans) == 2
  rec = ds.scans[1]
  classes = [rec.slice_class[f] for f in sorted(rec.files)]
  assert classes == [1, 2, 0]
  box2 = rec.boxes[sorted(rec.files)[1]]
  np.testing.assert_array_equal(box2, [[1, 2, 5, 6], [1, 0, 4, 4]])
  assert rec.boxes[sorted(rec.files)[2]].shape == (0, 4)
  np.testing.assert_array_equal(rec.labels, [1, 1, 1])


def test_folder_layout(tmp_path):
  write_series(tmp_path / "a", ramp_volume(3, 16))
  write_series(tmp_path / "b", ramp_volume(2, 16))
  (tmp_path / "labels.csv").write_text("scan_id,patient_id,bleed,fracture\na,p1,1,0\nb,p2,0,1\n")
  ds = datasets.load("folder", tmp_path)
  assert ds.labels == ("bleed", "fracture")
  assert [len(s.files) for s in ds.scans] == [3, 2]
  np.testing.assert_array_equal(ds.scans[1].labels, [0, 1])


def test_missing_layout_pieces(tmp_path):
  with pytest.raises(errors.DatasetLayoutError, match="stage_2_train.csv") as e:
    datasets.load("rsna", tmp_path)
  # The user is sent to the README's description of the layouts, not into the source.
  assert 'README\'s section "Real data"' in str(e.value) and "ctjax.data" not in str(e.value)
  (tmp_path / "stage_2_train.csv").write_text("ID,Label\nID_a_any,0\nID_a_epidural,0\n"
                                              "ID_a_intraparenchymal,0\nID_a_intraventricular,0\n"
                                              "ID_a_subarachnoid,0\nID_a_subdural,0\n")
  with pytest.raises(errors.DatasetLayoutError, match='stage_2_train/.*"Real data"'):
    datasets.load("rsna", tmp_path)
  with pytest.raises(errors.DatasetLayoutError, match='reads.csv.*"Real data"'):
    datasets.load("cq500", tmp_path)
  with pytest.raises(errors.DatasetLayoutError, match="config.data.root"):
    datasets.load("rsna", tmp_path / "nope")
  with pytest.raises(errors.ConfigError):
    datasets.load("kaggle", tmp_path)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 60), k=st.integers(3, 7), seed=st.integers(0, 1000),
       fold=st.integers(0, 6))
def test_kfold_by_patient_properties(n, k, seed, fold):
  fold = fold % k
  rng = np.random.default_rng(seed)
  patients = [f"p{rng.integers(0, max(1, n // 2))}" for _ in range(n)]
  folds = datasets.kfold_by_patient(patients, k, seed)
  for p in set(patients):          # no patient in two folds
    assert len({f for q, f in zip(patients, folds) if q == p}) == 1
  sizes = np.bincount([folds[patients.index(p)] for p in set(patients)], minlength=k)
  assert sizes.max() - sizes.min() <= 1
  np.testing.assert_array_equal(folds, datasets.kfold_by_patient(patients, k, seed))
  sp = datasets.split_indices(patients, num_folds=k, fold=fold, seed=seed)
  allidx = np.concatenate([sp["train"], sp["val"], sp["test"]])
  assert sorted(allidx.tolist()) == list(range(n))
  assert set(folds[sp["test"]]) <= {fold} and set(folds[sp["val"]]) <= {(fold + 1) % k}
