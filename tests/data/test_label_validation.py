"""Labels validated in every adapter: one changed cell or file at a time (issue: nothing
silently wrong). Each case: the typed error and its one line naming the file, row and column."""

import os

import pytest

from ctjax import errors
from ctjax.data import datasets
from tests.support.ctdicom_helpers import (write_blend_tree, write_cq500_tree, write_rsna_tree, write_series,
                             ramp_volume)


def _one_line(e: Exception, *parts: str) -> None:
  text = str(e)
  assert "\n" not in text, text
  for p in parts:
    assert p in text, (p, text)


def _set_cell(path, line: int, column: str, value: str) -> None:
  rows = path.read_text().splitlines()
  header = rows[0].split(",")
  cells = rows[line - 1].split(",")
  cells[header.index(column)] = value
  rows[line - 1] = ",".join(cells)
  path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def rsna(tmp_path):
  write_rsna_tree(tmp_path, num_scans=3, slices=3, size=8)
  return tmp_path


@pytest.mark.parametrize("value", ["2", "0.7", "-1", "yes", "nan", ""])
def test_rsna_label_values(rsna, value):
  csv = rsna / "stage_2_train.csv"
  _set_cell(csv, 5, "Label", value)
  with pytest.raises(errors.LabelError) as e:
    datasets.load("rsna", rsna)
  _one_line(e.value, str(csv), "row 5", "'Label'")


def test_rsna_missing_column_and_subtype_rows(rsna):
  csv = rsna / "stage_2_train.csv"
  text = csv.read_text()
  csv.write_text(text.replace("ID,Label", "ID,Lable", 1))
  with pytest.raises(errors.LabelError) as e:
    datasets.load("rsna", rsna)
  _one_line(e.value, str(csv), "lacks column(s) ['Label']")
  lines = text.splitlines()
  csv.write_text("\n".join(lines[:3] + lines[4:]) + "\n")      # one subtype row of a SOP gone
  sop, sub = lines[3].split(",")[0].rsplit("_", 1)
  with pytest.raises(errors.LabelError) as e:
    datasets.load("rsna", rsna)
  _one_line(e.value, str(csv), sop, f"['{sub}']")


def test_rsna_duplicates_identical_counted_conflicting_refused(rsna):
  csv = rsna / "stage_2_train.csv"
  row = csv.read_text().splitlines()[2]
  ident, value = row.split(",")
  with open(csv, "a") as f:
    f.write(row + "\n")
  ds = datasets.load("rsna", rsna)
  assert ds.report["duplicate_rows"] == 1
  with open(csv, "a") as f:
    f.write(f"{ident},{1 - int(value)}\n")
  with pytest.raises(errors.LabelError) as e:
    datasets.load("rsna", rsna)
  n = len(csv.read_text().splitlines())
  _one_line(e.value, str(csv), f"row {n}", ident, "conflicting duplicate")


def test_rsna_unlabelled_dicom_and_labels_without_dicom(rsna):
  img = rsna / "stage_2_train"
  first = sorted(img.iterdir())[0]
  extra = img / "ID_ffffffff.dcm"
  extra.write_bytes(first.read_bytes())
  # 1 of 10 files unlabelled: above the default 1% → an error naming it.
  with pytest.raises(errors.LabelCoverageError) as e:
    datasets.load("rsna", rsna)
  _one_line(e.value, "1 of 10 DICOM file(s) have no label row", "ID_ffffffff.dcm")
  ds = datasets.load("rsna", rsna, options=datasets.LoadOptions(max_unlabelled=0.2))
  assert ds.report["unlabelled_files"] == 1 and ds.report["unlabelled_files_examples"] == [
      "ID_ffffffff.dcm"]
  assert sum(len(s.files) for s in ds.scans) == 9
  extra.unlink()
  os.remove(first)
  ds = datasets.load("rsna", rsna, options=datasets.LoadOptions(max_unlabelled=0.2))
  assert ds.report["labels_without_dicom"] == 1
  assert ds.report["labels_without_dicom_examples"] == [first.name]
  with pytest.raises(errors.LabelCoverageError, match="strict_labels"):
    datasets.load("rsna", rsna, options=datasets.LoadOptions(max_unlabelled=0.2,
                                                            strict_labels=True))


@pytest.mark.parametrize("content", [b"", b"this is not DICOM\n"])
def test_rsna_header_scan_strict_error_lenient_skip(rsna, content):
  bad = sorted((rsna / "stage_2_train").iterdir())[1]
  bad.write_bytes(content)
  with pytest.raises(errors.NotDicomError) as e:
    datasets.load("rsna", rsna)
  _one_line(e.value, str(bad), "config.data.lenient=True")
  ds = datasets.load("rsna", rsna, options=datasets.LoadOptions(lenient=True))
  assert ds.report["skipped"] == 1 and ds.report["skipped_by_error"] == {"NotDicomError": 1}
  assert ds.report["skipped_examples"][0]["path"] == str(bad)
  assert sum(len(s.files) for s in ds.scans) == 8 and str(bad) not in ds.scans[0].files


@pytest.fixture
def cq500(tmp_path):
  write_cq500_tree(tmp_path, [{"ICH": (1, 1, 0)}, {"SDH": (0, 1, 1)}], slices=2, size=8)
  return tmp_path


@pytest.mark.parametrize("value", ["2", "", "0.5", "x"])
def test_cq500_vote_values(cq500, value):
  csv = cq500 / "reads.csv"
  _set_cell(csv, 3, "R2:SDH", value)
  with pytest.raises(errors.LabelError) as e:
    datasets.load("cq500", cq500)
  _one_line(e.value, str(csv), "row 3", "'R2:SDH'")


def test_cq500_names_inside_the_root_and_missing_name(cq500):
  csv = cq500 / "reads.csv"
  text = csv.read_text()
  _set_cell(csv, 2, "name", "../CQ500-CT-0")
  with pytest.raises(errors.LabelError) as e:
    datasets.load("cq500", cq500)
  _one_line(e.value, str(csv), "row 2", "'name'", "outside the data root")
  csv.write_text(text.replace("name,Category", "nom,Category", 1))
  with pytest.raises(errors.LabelError) as e:
    datasets.load("cq500", cq500)
  _one_line(e.value, str(csv), "lacks column(s) ['name']")
  csv.write_text(text)
  _set_cell(csv, 2, "name", "")
  with pytest.raises(errors.LabelError) as e:
    datasets.load("cq500", cq500)
  _one_line(e.value, "row 2, column 'name': empty cell")


def test_cq500_duplicate_rows(cq500):
  csv = cq500 / "reads.csv"
  row = csv.read_text().splitlines()[1]
  with open(csv, "a") as f:
    f.write(row + "\n")
  assert datasets.load("cq500", cq500).report["duplicate_rows"] == 1
  with open(csv, "a") as f:
    f.write(row.replace(",1,", ",0,", 1) + "\n")
  with pytest.raises(errors.LabelError) as e:
    datasets.load("cq500", cq500)
  _one_line(e.value, "row 5", "CQ500-CT-0 appears again (row 2)", "conflicting duplicate")


def test_cq500_study_without_row_and_row_without_study(cq500):
  csv = cq500 / "reads.csv"
  lines = csv.read_text().splitlines()
  csv.write_text("\n".join(lines + [lines[1].replace("CQ500-CT-0", "CQ500-CT-7")]) + "\n")
  with pytest.raises(errors.LabelCoverageError) as e:       # 1 of 3 rows has no study folder
    datasets.load("cq500", cq500)
  _one_line(e.value, str(csv), "CQ500-CT-7")
  ds = datasets.load("cq500", cq500, options=datasets.LoadOptions(max_unlabelled=0.5))
  assert ds.report["labels_without_dicom"] == 1


def test_folder_layout_cells_and_paths(tmp_path):
  write_series(tmp_path / "a", ramp_volume(2, 8))
  csv = tmp_path / "labels.csv"
  csv.write_text("scan_id,patient_id,bleed\na,p1,3\n")
  with pytest.raises(errors.LabelError) as e:
    datasets.load("folder", tmp_path)
  _one_line(e.value, str(csv), "row 2", "'bleed'", "'3'")
  csv.write_text("scan_id,patient_id,folder,bleed\na,p1,../a,1\n")
  with pytest.raises(errors.LabelError) as e:
    datasets.load("folder", tmp_path)
  _one_line(e.value, "row 2", "'folder'", "outside the data root")


def test_blend_labels_values_and_conflicts(tmp_path):
  write_blend_tree(tmp_path, num_scans=2, slices=3, size=8)
  csv = tmp_path / "blend_labels.csv"
  text = csv.read_text()
  _set_cell(csv, 3, "label", "3")
  with pytest.raises(errors.LabelError) as e:
    datasets.load("blend", tmp_path)
  _one_line(e.value, str(csv), "row 3", "'label'", "0/1/2")
  lines = text.splitlines()
  cells = lines[2].split(",")
  cells[4] = str((int(cells[4]) + 1) % 3)
  csv.write_text("\n".join(lines + [",".join(cells)]) + "\n")
  with pytest.raises(errors.LabelError) as e:
    datasets.load("blend", tmp_path)
  _one_line(e.value, f"row {len(lines) + 1}", "conflicting duplicate")
  csv.write_text(text)
  (tmp_path / "scans" / "S0" / "IM0000.dcm").unlink()        # a labelled slice without DICOM
  ds = datasets.load("blend", tmp_path, options=datasets.LoadOptions(max_unlabelled=0.5))
  assert ds.report["labels_without_dicom"] == 1
  with pytest.raises(errors.LabelCoverageError):
    datasets.load("blend", tmp_path, options=datasets.LoadOptions(strict_labels=True))
