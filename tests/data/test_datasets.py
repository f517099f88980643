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


def test_folder_layout_without_patient_column_warns_and_flags(tmp_path, caplog):
  write_series(tmp_path / "a", ramp_volume(3, 16))
  write_series(tmp_path / "b", ramp_volume(2, 16))
  (tmp_path / "labels.csv").write_text("scan_id,bleed\na,1\nb,0\n")
  with caplog.at_level("WARNING", logger="ctjax.data.datasets"):
    ds = datasets.load("folder", tmp_path)
  assert "no patient_id column" in caplog.text
  assert ds.report["patient_is_scan"] is True
  assert [s.patient_id for s in ds.scans] == ["a", "b"]
  assert all(s.info["patient_is_scan"] for s in ds.scans)
  from ctjax.data import qa
  vol = dicom.read_series(ds.scans[0].files)
  row = qa.series_record(vol, ds.scans[0].info, scan_id="a", patient_id="a", num_files=3)
  assert "patient_is_scan" in row["flags"].split(";")
  assert "patient_is_scan 1" in qa.format_table([row]).splitlines()[-1]
  caplog.clear()
  (tmp_path / "labels.csv").write_text("scan_id,patient_id,bleed\na,p1,1\nb,p1,0\n")
  with caplog.at_level("WARNING", logger="ctjax.data.datasets"):
    ds = datasets.load("folder", tmp_path)
  assert "no patient_id" not in caplog.text and "patient_is_scan" not in ds.report
  assert "patient_is_scan" not in qa.flags_of({"patient_is_scan": False})


# ------------------------------------------------------------------------- fold protocols


def _patients(n, seed):
  """n scans of n // 2 patients (each with 1-3 scans) in random order, and 3 labels."""
  rng = np.random.default_rng(seed)
  ids = [f"p{i % (n // 2):03d}" for i in rng.permutation(n)]
  return ids, (rng.random((n, 3)) < 0.3).astype(np.float32)


def _check_split(sp, patients, n):
  train, val, test = (set(sp[k].tolist()) for k in ("train", "val", "test"))
  assert train and test
  assert not (train & test) and not (train & val)
  assert sorted(train | val | test) == list(range(n))
  whole = {}
  for name, idx in sp.items():     # every patient's scans in one split (val may be test)
    for i in idx:
      whole.setdefault(patients[i], set()).add(name)
  assert all(s <= {"train"} or s <= {"val"} or s <= {"test"} or s == {"val", "test"}
             for s in whole.values())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(24, 80), k=st.integers(3, 6), seed=st.integers(0, 1000),
       fold=st.integers(0, 5), stratify=st.booleans(),
       protocol=st.sampled_from(datasets.FOLD_PROTOCOLS),
       val_fraction=st.sampled_from([0.0, 0.1, 0.2, 0.25]))
def test_every_fold_protocol_keeps_patients_whole_and_splits_disjoint(
    n, k, seed, fold, stratify, protocol, val_fraction):
  fold = fold % k
  patients, y = _patients(n, seed)
  stratify = stratify and protocol != "rsna1"
  sp = datasets.split_indices(patients, num_folds=k, fold=fold, seed=seed, labels=y,
                              stratify=stratify, protocol=protocol, val_fraction=val_fraction)
  _check_split(sp, patients, n)
  again = datasets.split_indices(patients, num_folds=k, fold=fold, seed=seed, labels=y,
                                 stratify=stratify, protocol=protocol, val_fraction=val_fraction)
  for key in sp:
    np.testing.assert_array_equal(sp[key], again[key])
  # The k test folds are disjoint and cover every scan once.
  tests = [datasets.split_indices(patients, num_folds=k, fold=f, seed=seed, labels=y,
                                  stratify=stratify, protocol=protocol,
                                  val_fraction=val_fraction)["test"] for f in range(k)]
  assert sorted(np.concatenate(tests).tolist()) == list(range(n))
  if protocol == "val_next_fold":
    assert not (set(sp["val"].tolist()) & set(sp["test"].tolist()))
    np.testing.assert_array_equal(sp["val"], tests[(fold + 1) % k])
  elif val_fraction == 0:
    np.testing.assert_array_equal(sp["val"], sp["test"])    # selection on the scored fold
  else:                           # validation carved from the other K − 1 folds
    rest = sorted(set(range(n)) - set(tests[fold].tolist()))
    assert sorted(sp["train"].tolist() + sp["val"].tolist()) == rest
    assert sp["val"].size > 0 and not (set(sp["val"].tolist()) & set(tests[fold].tolist()))


def test_fold_protocol_sizes_on_a_thousand_single_scan_patients():
  """1,000 patients of one scan each: the split sizes each protocol states."""
  patients = [f"p{i:04d}" for i in range(1000)]
  got = {}
  for protocol in datasets.FOLD_PROTOCOLS:
    sp = datasets.split_indices(patients, num_folds=5, fold=2, seed=0, protocol=protocol,
                                val_fraction=0.1)
    got[protocol] = tuple(sp[k].size for k in ("train", "val", "test"))
    shares = datasets.split_shares(protocol, 5, 0.1)
    assert sp["test"].size == 200 == round(1000 * shares["test"])
    assert sp["train"].size == round(1000 * shares["train"])
  assert got == {"val_next_fold": (600, 200, 200), "k_minus_1": (720, 80, 200),
                 "rsna1": (720, 80, 200)}
  assert datasets.split_shares("val_next_fold", 5)["test"] / datasets.split_shares(
      "val_next_fold", 5)["train"] == pytest.approx(1 / 3)
  assert datasets.split_shares("k_minus_1", 5, 0.0) == pytest.approx(
      {"train": 0.8, "val": 0.2, "test": 0.2})


def test_rsna1_folds_are_scikit_learns_kfold_with_the_first_place_seed():
  """SeuTao's SequenceModel/main.py: KFold(n_splits=5, shuffle=True, random_state=48) over the
  units; here the units are the sorted patient ids."""
  from sklearn.model_selection import KFold
  patients, _ = _patients(97, 3)
  units = sorted(set(patients))
  want = np.empty(len(units), np.int32)
  for k, (_, test) in enumerate(KFold(n_splits=5, shuffle=True, random_state=48).split(units)):
    want[test] = k
  folds = datasets.rsna1_folds(patients)
  np.testing.assert_array_equal(folds, [want[units.index(p)] for p in patients])
  # Its own seed: split_seed does not move it, and it refuses stratification.
  a = datasets.split_indices(patients, num_folds=5, fold=1, seed=0, protocol="rsna1")
  b = datasets.split_indices(patients, num_folds=5, fold=1, seed=7, protocol="rsna1")
  np.testing.assert_array_equal(a["test"], b["test"])
  with pytest.raises(errors.ConfigError, match="stratify=False"):
    datasets.split_indices(patients, num_folds=5, fold=1, seed=0, protocol="rsna1",
                           labels=np.zeros((97, 2)), stratify=True)


def test_fold_protocol_errors_are_one_line_config_errors():
  p = [f"p{i}" for i in range(20)]
  with pytest.raises(errors.ConfigError, match="fold_protocol='loo'"):
    datasets.split_indices(p, num_folds=5, fold=0, seed=0, protocol="loo")
  with pytest.raises(errors.ConfigError, match="need >= 3"):
    datasets.split_indices(p, num_folds=2, fold=0, seed=0)
  assert datasets.split_indices(p, num_folds=2, fold=1, seed=0, protocol="k_minus_1")[
      "test"].size == 10
  with pytest.raises(errors.ConfigError, match="val_fraction=1.5"):
    datasets.split_indices(p, num_folds=5, fold=0, seed=0, protocol="k_minus_1",
                           val_fraction=1.5)
  assert "test fold k, validation fold k + 1" in datasets.protocol_text("val_next_fold", 5)
  assert "shuffled KFold (seed 48)" in datasets.protocol_text("rsna1", 5, 0.1)
