"""ctjax.data.dicom on pydicom's real files and on series built here."""

import logging
import os
import pathlib
import shutil
import sys
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from hypothesis import HealthCheck, given, settings, strategies as st

from ctjax import errors
from ctjax.data import dicom
from tests.support.ctdicom_helpers import (pattern_volume, ramp_volume, write_oriented_series,
                                           write_series, write_slice)

DIRTESTS = pathlib.Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"


def _reference_hu(path, clip=True):
  ds = pydicom.dcmread(path)
  hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
  return np.clip(hu, -1024, 3071) if clip else hu


# ---------------------------------------------------------------- real files nobody here wrote


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_UNCR.dcm"])
def test_real_ct_hu_matches_pydicom_modality_lut(name):
  path = get_testdata_file(name)
  vol = dicom.read_series([path], clip_hu=False)
  np.testing.assert_array_equal(vol.hu[0], _reference_hu(path, clip=False).astype(np.float32))
  vol = dicom.read_series([path])
  np.testing.assert_array_equal(vol.hu[0], _reference_hu(path).astype(np.float32))
  ds = pydicom.dcmread(path)
  assert vol.hu.dtype == np.float32 and vol.hu.shape == (1, ds.Rows, ds.Columns)
  assert vol.sop_uids == [ds.SOPInstanceUID]
  assert vol.spacing[1:] == (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
  assert vol.header["PatientID"] == str(ds.PatientID)


def test_693_padding_becomes_air_by_clipping():
  vol = dicom.read_series([get_testdata_file("693_UNCR.dcm")], clip_hu=False)
  assert vol.hu.min() == -3024.0          # stored -2000 padding, intercept -1024
  vol = dicom.read_series([get_testdata_file("693_UNCR.dcm")])
  assert vol.hu.min() == -1024.0 and vol.hu.max() <= 3071


def test_dicomdir_series_with_gap_is_ordered_and_reported():
  folder = DIRTESTS / "77654033" / "CT2"
  vol = dicom.read_series(folder)
  z = vol.positions[:, 2]
  assert np.all(np.diff(z) > 0) and vol.ordered_by == "position"
  np.testing.assert_allclose(vol.spacing[0], 1.25, atol=1e-3)   # median step, gap ignored
  assert any("uneven" in n for n in vol.notes)
  assert vol.instance_numbers == [18, 180, 181, 182]
  for f, hu in zip(vol.files, vol.hu):
    np.testing.assert_array_equal(hu, _reference_hu(f).astype(np.float32))


def test_dicomdir_instance_number_against_position():
  vol = dicom.read_series(DIRTESTS / "98892001" / "CT5N")
  assert np.all(np.diff(vol.positions[:, 2]) > 0)        # by position, not by number
  assert vol.instance_numbers == [10, 9, 8, 7, 6]


def test_dicomdir_orthogonal_localizers_in_one_series():
  with pytest.raises(errors.InconsistentSeriesError, match="orientations"):
    dicom.read_series(DIRTESTS / "98892001" / "CT2N")


def test_dicomdir_three_series_in_one_folder():
  folder = DIRTESTS / "98892003" / "MR2"
  with pytest.raises(errors.MixedSeriesError, match="3 series"):
    dicom.read_series(folder)
  with pytest.raises(errors.NotCTError):    # the selector works; then the modality is wrong
    dicom.read_series(folder, series_uid=dicom.largest_series)


def test_dicomdir_header_only_files():
  folder = DIRTESTS / "TINY_ALPHA" / "PT000000" / "ST000000" / "SE000000"
  with pytest.raises(errors.MissingPixelDataError) as e:
    dicom.read_series(folder)
  assert e.value.path.startswith(str(folder))
  with pytest.raises(errors.EmptySeriesError):
    dicom.read_series(folder, lenient=True)


@pytest.mark.parametrize("name,err,words", [
    ("MR_truncated.dcm", errors.TruncatedDicomError, "truncated"),
    ("badVR.dcm", errors.InvalidDicomValueError, "1A"),
    ("no_meta.dcm", errors.NotDicomError, "not a DICOM"),
    ("MR_small.dcm", errors.NotCTError, "modality MR"),
    ("eCT_Supplemental.dcm", errors.UnsupportedDicomError, "multi-frame"),
    ("dicomdirtests/DICOMDIR-empty.dcm", errors.NotDicomError, "DICOMDIR"),
])
def test_malformed_real_files_give_typed_errors(name, err, words):
  path = get_testdata_file(name)
  with pytest.raises(err, match=words) as e:
    dicom.read_series([path])
  assert isinstance(e.value, errors.CTDataError)
  assert e.value.path == path and path in str(e.value)
  vol = None
  with pytest.raises(errors.EmptySeriesError):    # lenient records, then nothing is left
    vol = dicom.read_series([path], lenient=True)
  assert vol is None


def test_folder_with_strays_and_lenient_skip(tmp_path):
  shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "a.dcm")
  (tmp_path / "notes.txt").write_text("hello")
  (tmp_path / "empty.dcm").write_bytes(b"")
  (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
  (tmp_path / "preamble.dcm").write_bytes(b"\0" * 128 + b"DICM")
  shutil.copy(get_testdata_file("dicomdirtests/DICOMDIR-empty.dcm"), tmp_path / "DICOMDIR")
  vol = dicom.read_series(tmp_path)
  assert vol.num_slices == 1
  assert {os.path.basename(s.path) for s in vol.skipped} == {
      "notes.txt", "empty.dcm", "img.png", "preamble.dcm", "DICOMDIR"}
  shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "b.dcm")
  with pytest.raises(errors.TruncatedDicomError):
    dicom.read_series(tmp_path)
  vol = dicom.read_series(tmp_path, lenient=True)
  assert vol.num_slices == 1
  assert any(s.error == "TruncatedDicomError" for s in vol.skipped)


def test_empty_folder(tmp_path):
  with pytest.raises(errors.EmptySeriesError):
    dicom.read_series(tmp_path)
  with pytest.raises(errors.EmptySeriesError):
    dicom.read_series(tmp_path / "missing")


# ------------------------------------------------------------------- series built in the test


def test_shuffled_file_names(tmp_path):
  ref = ramp_volume(6)
  names = [f"{n}.dcm" for n in ("q", "b", "z", "a", "m", "c")]
  write_series(tmp_path, ref, names=names, instances=[3, 1, 6, 2, 5, 4])
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))
  assert vol.spacing == (5.0, 0.5, 0.5)


def test_reversed_positions_and_reversed_orientation(tmp_path):
  ref = pattern_volume(5, 8, 7)
  write_series(tmp_path / "a", ref, step=(0, 0, -2.5))        # z runs down with k
  vol = dicom.read_series(tmp_path / "a")
  np.testing.assert_array_equal(vol.hu, ref[::-1].astype(np.float32))
  np.testing.assert_allclose(vol.spacing[0], 2.5)
  assert vol.reoriented == ()
  # Column direction -y (rows stored posterior → anterior) and the normal -z: slice k moves down
  # in z, so the canonical volume is reversed in slices and in rows.
  write_series(tmp_path / "b", ref, orientation=(1, 0, 0, 0, -1, 0), spacing=2.5)
  vol = dicom.read_series(tmp_path / "b")
  np.testing.assert_array_equal(vol.hu, ref[::-1, ::-1, :].astype(np.float32))
  assert vol.reoriented == ("flip_rows",) and np.all(np.diff(vol.positions[:, 2]) > 0)
  np.testing.assert_array_equal(vol.orientation, dicom.CANONICAL_ORIENTATION)
  np.testing.assert_array_equal(vol.stored_orientation, (1, 0, 0, 0, -1, 0))
  assert any("made canonical: rows flipped" in n for n in vol.notes)


# The eight axis-aligned ways to store an axial slice: (direction of increasing column index,
# direction of increasing row index) as patient axes (x left, y posterior).
LAYOUTS = [(a, b) for a in ("+x", "-x", "+y", "-y") for b in ("+x", "-x", "+y", "-y")
           if a[1] != b[1]]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", range(8))
def test_every_axial_storage_gives_the_canonical_array(tmp_path, layout, reverse):
  """A volume known in patient space (rows +y, columns +x, slices +z) stored in each of the
  eight in-plane layouts and both slice directions reads back as that volume; the stored
  pixels are looked up voxel by voxel from their patient positions (write_oriented_series)."""
  dz, dy, dx = 2.0, 0.7, 0.5
  truth = pattern_volume(4, 6, 5)                    # [k, i (y), j (x)]
  origin = np.array([-10.0, 20.0, 30.0])
  columns_along, rows_along = LAYOUTS[layout]
  write_oriented_series(tmp_path, truth, columns_along=columns_along, rows_along=rows_along,
                        reverse=reverse, spacing=(dz, dy, dx), origin=origin,
                        sop_uids=[f"1.2.7.{k}" for k in range(4)], seed=layout)
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, truth.astype(np.float32))
  assert vol.spacing == (dz, dy, dx)
  np.testing.assert_allclose(vol.positions, origin + np.arange(4)[:, None] * dz * np.eye(3)[2],
                             atol=1e-9)
  np.testing.assert_allclose(vol.orientation, dicom.CANONICAL_ORIENTATION, atol=1e-12)
  assert vol.sop_uids == [f"1.2.7.{k}" for k in range(4)]      # UIDs follow their slices
  assert vol.oblique_deg == 0.0 and vol.tilt_deg < 1e-6
  assert (vol.reoriented == ()) == (LAYOUTS[layout] == ("+x", "+y"))   # only DICOM's default


@pytest.mark.parametrize("orientation,plane", [
    ((0, 1, 0, 0, 0, -1), "sagittal"), ((1, 0, 0, 0, 0, -1), "coronal"),
    ((1, 0, 0, 0, np.cos(np.radians(50)), np.sin(np.radians(50))), "coronal"),
])
def test_non_axial_series_is_refused_in_one_line(tmp_path, orientation, plane):
  write_series(tmp_path, ramp_volume(3, 8), orientation=orientation)
  with pytest.raises(errors.NotAxialError) as e:
    dicom.read_series(tmp_path, lenient=True)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"{tmp_path}: {plane} slices") and "axial" in msg
  assert isinstance(e.value, errors.CTDataError)


def test_tilted_axial_within_tolerance_is_read_and_noted(tmp_path):
  t = np.radians(30.0)
  ref = pattern_volume(3, 6, 5)
  write_series(tmp_path, ref, orientation=(1, 0, 0, 0, np.cos(t), np.sin(t)), spacing=3.0)
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))
  assert vol.oblique_deg == pytest.approx(30.0) and vol.tilt_deg < 1e-6
  assert any(n.startswith("oblique slice plane: normal 30.0 degrees") for n in vol.notes)


def test_gantry_tilt_from_iop_and_ipp(tmp_path):
  t = np.radians(20.0)
  ref = ramp_volume(5)
  orientation = (1, 0, 0, 0, np.cos(t), np.sin(t))
  names = ["e.dcm", "a.dcm", "d.dcm", "b.dcm", "c.dcm"]
  write_series(tmp_path, ref, orientation=orientation, step=(0, 0, 5.0), names=names,
               instances=[5, 4, 3, 2, 1])
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))
  np.testing.assert_allclose(vol.tilt_deg, 20.0, atol=1e-4)
  np.testing.assert_allclose(vol.spacing[0], 5.0 * np.cos(t), rtol=1e-6)
  assert any("tilt" in n for n in vol.notes)


def test_missing_slice_and_duplicates(tmp_path):
  ref = ramp_volume(6)
  paths = write_series(tmp_path, ref)
  os.remove(paths[3])
  shutil.copy(paths[1], tmp_path / "copy_of_1.dcm")               # same SOPInstanceUID
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, ref[[0, 1, 2, 4, 5]].astype(np.float32))
  assert vol.spacing[0] == 5.0 and any("uneven" in n for n in vol.notes)
  assert [s.reason.split(" ")[1] for s in vol.skipped] == ["SOPInstanceUID"]
  # Another image at slice 2's position: neither file is picked by its name.
  write_slice(tmp_path / "other_at_2.dcm", ref[2] + 7, position=(0, 0, 10.0), instance=99)
  with pytest.raises(errors.DuplicateSliceError):
    dicom.read_series(tmp_path)
  vol = dicom.read_series(tmp_path, lenient=True)
  np.testing.assert_array_equal(vol.hu, ref[[0, 1, 4, 5]].astype(np.float32))
  reasons = sorted(s.reason.split(" ")[1] for s in vol.skipped)
  assert reasons == ["ImagePositionPatient", "ImagePositionPatient", "SOPInstanceUID"]


def test_two_series_need_a_selector(tmp_path):
  write_series(tmp_path, ramp_volume(4), series_uid="1.2.3.1", description="PLAIN THIN")
  write_series(tmp_path, ramp_volume(2) + 100, series_uid="1.2.3.2", description="BONE",
               names=["x0.dcm", "x1.dcm"])
  with pytest.raises(errors.MixedSeriesError, match="series_uid"):
    dicom.read_series(tmp_path)
  vol = dicom.read_series(tmp_path, series_uid="1.2.3.2")
  assert vol.num_slices == 2 and vol.series_uid == "1.2.3.2" and len(vol.skipped) == 4
  assert dicom.read_series(tmp_path, series_uid=dicom.largest_series).num_slices == 4
  assert dicom.read_series(tmp_path, series_uid=dicom.prefer_description("bone")
                           ).series_uid == "1.2.3.2"
  with pytest.raises(errors.MixedSeriesError, match="not found"):
    dicom.read_series(tmp_path, series_uid="9.9")


def test_mixed_shapes(tmp_path):
  write_series(tmp_path, ramp_volume(3))
  write_slice(tmp_path / "small.dcm", np.zeros((16, 16)), position=(0, 0, 99.0))
  with pytest.raises(errors.InconsistentSeriesError, match="shape"):
    dicom.read_series(tmp_path)
  vol = dicom.read_series(tmp_path, lenient=True)
  assert vol.num_slices == 3 and vol.skipped[0].path.endswith("small.dcm")


def test_missing_positions_fall_back_to_instance_number_and_say_so(tmp_path):
  ref = ramp_volume(4)
  for k, inst in enumerate([2, 4, 1, 3]):
    write_slice(tmp_path / f"s{k}.dcm", ref[inst - 1], position=None, orientation=None,
                instance=inst)
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))
  assert vol.ordered_by == "instance_number" and "InstanceNumber" in vol.notes[0]


def test_rsna_ids_and_sign_fix_without_warnings(tmp_path, caplog):
  hu = np.array([[-1000, -20], [40, 3000]] * 16, np.float64).repeat(16, axis=1)
  p = write_slice(tmp_path / "ID_0a1b2c.dcm", hu, sop_uid="ID_0a1b2c", series_uid="ID_ser1",
                  patient_id="ID_pat")
  ds = pydicom.dcmread(p)
  stored = np.mod(hu.astype(np.int64), 4096).astype(np.uint16)   # 12-bit wrap, as in RSNA
  ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
  ds.RescaleIntercept = 0
  ds.PixelData = stored.tobytes()
  ds.save_as(p)
  caplog.clear()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    vol = dicom.read_series(tmp_path)
  assert not [r for r in caplog.records if r.name.startswith("pydicom")]   # no log flood
  assert vol.sop_uids == ["ID_0a1b2c"] and vol.series_uid == "ID_ser1"
  np.testing.assert_array_equal(vol.hu[0], hu.astype(np.float32))
  assert "RSNA BitsStored-12 sign fix applied to 1 slice(s)" in vol.notes


def test_unparseable_ds_value_is_tolerated(tmp_path):
  p = write_slice(tmp_path / "a.dcm", np.zeros((32, 32)))
  raw = p.read_bytes()      # patch the encoded values: pydicom refuses to write them
  thick = b"\x18\x00\x50\x00DS\x04\x005.0 "
  inst = b"\x20\x00\x13\x00IS\x02\x001 "
  assert thick in raw and inst in raw
  p.write_bytes(raw.replace(thick, thick[:8] + b"1A  ").replace(inst, inst[:8] + b"1A"))
  vol = dicom.read_series([p])
  assert vol.hu.shape == (1, 32, 32) and vol.header["SliceThickness"] == "1A"
  assert vol.instance_numbers == [None]


def test_memory_bound_before_decoding(tmp_path):
  p = write_slice(tmp_path / "a.dcm", np.zeros((32, 32)))
  with pytest.raises(errors.UnsupportedDicomError, match="bound"):
    dicom.read_series([p], max_pixels=100)


def test_j2k_compressed_ct_matches_pydicom():
  path = get_testdata_file("693_J2KI.dcm")
  vol = dicom.read_series([path], clip_hu=False)
  np.testing.assert_array_equal(vol.hu[0], _reference_hu(path, clip=False).astype(np.float32))


def test_orthogonal_localizer_in_axial_series_is_dropped(tmp_path):
  ref = ramp_volume(4)
  write_series(tmp_path, ref)
  write_slice(tmp_path / "scout.dcm", np.zeros((32, 32)), position=(0, 0, 7.0),
              orientation=(1, 0, 0, 0, 0, -1), instance=0)   # coronal, same series UID
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))
  assert [os.path.basename(s.path) for s in vol.skipped] == ["scout.dcm"]
  assert "orientation" in vol.skipped[0].reason


def test_single_slice_and_spacing_change(tmp_path):
  vol = dicom.read_series([write_slice(tmp_path / "one.dcm", np.zeros((32, 32)))])
  assert vol.num_slices == 1 and vol.spacing[0] == 5.0 and "single slice" in vol.notes
  write_series(tmp_path / "s", ramp_volume(3))
  write_slice(tmp_path / "s" / "x.dcm", np.zeros((32, 32)), position=(0, 0, 50.0),
              pixel_spacing=(0.7, 0.7))
  with pytest.raises(errors.InconsistentSeriesError, match="pixel spacing"):
    dicom.read_series(tmp_path / "s")


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_files_only_raise_typed_errors(tmp_path, data):
  """Truncation or byte flips anywhere in a real file: a result or a CTDataError, nothing else."""
  raw = bytearray(pathlib.Path(get_testdata_file("CT_small.dcm")).read_bytes())
  if data.draw(st.booleans()):
    raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
  else:
    for _ in range(data.draw(st.integers(1, 8))):
      raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
  path = tmp_path / "x.dcm"
  path.write_bytes(bytes(raw))
  try:
    vol = dicom.read_series([path])
  except errors.CTDataError as e:
    assert e.path is not None
  else:
    assert vol.hu.shape == (1, 128, 128) and vol.hu.dtype == np.float32


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), spacing=st.floats(0.5, 6.0), n=st.integers(2, 6))
def test_order_recovered_for_any_axial_orientation_and_file_order(tmp_path, seed, spacing, n):
  """Any rotation whose slice normal stays within 40° of the patient's z axis, in-plane
  rotation included: slices come back in order along +z, each the stored image brought to the
  canonical layout by the reported steps."""
  rng = np.random.default_rng(seed)
  a = rng.uniform(-np.pi, np.pi)                      # in-plane rotation
  b = np.radians(rng.uniform(-40, 40))                # tilt about x
  rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
  q = (rx @ rz).T                                     # rows: row and column directions, normal
  if rng.integers(2):
    q[1] = -q[1]                                      # a mirrored storage (normal -z)
  orientation = tuple(q[0]) + tuple(q[1])
  normal = np.cross(q[0], q[1])
  ref = pattern_volume(n, 7, 6)
  folder = tmp_path / f"s{seed}_{n}_{spacing:.3f}"
  names = [f"f{k}.dcm" for k in rng.permutation(n)]
  write_series(folder, ref, orientation=orientation, spacing=spacing, names=names,
               instances=list(rng.permutation(n) + 1), origin=tuple(rng.normal(size=3) * 50))
  vol = dicom.read_series(folder)
  expected = ref if normal[2] > 0 else ref[::-1]
  np.testing.assert_array_equal(vol.hu, dicom.to_canonical(expected, vol.reoriented)
                                .astype(np.float32))
  np.testing.assert_allclose(vol.spacing[0], spacing, rtol=1e-4)
  assert np.all(np.diff(vol.positions[:, 2]) > 0)
  assert vol.tilt_deg < 0.01 and vol.oblique_deg == pytest.approx(abs(np.degrees(b)), abs=1e-6)


def test_duplicate_sop_without_positions(tmp_path):
  ref = ramp_volume(3)
  for k in range(3):
    write_slice(tmp_path / f"s{k}.dcm", ref[k], position=None, orientation=None, instance=k + 1,
                sop_uid=f"1.2.9.{k}")
  write_slice(tmp_path / "again.dcm", ref[1], position=None, orientation=None, instance=2,
              sop_uid="1.2.9.1")
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))
  assert [s.reason.split(" ")[:2] for s in vol.skipped] == [["duplicate", "SOPInstanceUID"]]
  assert any("identical pixels" in n for n in vol.notes)


# ------------------------------------------------- headers that would give silently wrong HU

# Every real CT file of pydicom's and pydicom-data's test sets that read before header
# validation (measured by walking both folders): each must still read, with pydicom's HU, in
# the canonical orientation (explicit_VR-UN, an abdominal slice, is stored with its rows running
# posterior → anterior), with the reader's notes on what it is.
REAL_CT_FILES = {
    "CT_small.dcm": (), "693_J2KI.dcm": ("lossy compression",), "693_J2KR.dcm": (),
    "J2K_pixelrep_mismatch.dcm": ("oblique slice plane: normal 22.0 degrees",),
    "693_UNCI.dcm": ("lossy compression",), "693_UNCR.dcm": (),
    "explicit_VR-UN.dcm": ("stored orientation [1, 0, 0, 0, -1, 0] made canonical: rows "
                           "flipped",),
    **{f"dicomdirtests/77654033/CT2/{n}": () for n in ("17106", "17136", "17166", "17196")},
    **{f"dicomdirtests/98892001/CT5N/{n}": () for n in ("2062", "2392", "2693", "3023", "3353")},
}
STORED_FLIPPED_ROWS = ("explicit_VR-UN.dcm",)


@pytest.mark.parametrize("name", sorted(REAL_CT_FILES))
def test_every_real_ct_file_still_reads(name):
  path = get_testdata_file(name)
  vol = dicom.read_series([path], clip_hu=False)
  ref = _reference_hu(path, clip=False).astype(np.float32)
  if name in STORED_FLIPPED_ROWS:
    ref = ref[::-1]
  np.testing.assert_array_equal(vol.hu[0], ref)
  assert vol.skipped == [] and vol.notes[0] == "single slice"
  assert len(vol.notes) == 1 + len(REAL_CT_FILES[name])
  for note, start in zip(vol.notes[1:], REAL_CT_FILES[name]):
    assert note.startswith(start), (note, start)
  assert vol.lossy == ("lossy compression" in REAL_CT_FILES[name])


def test_abdominal_slice_stored_upside_down_reads_spine_down():
  """explicit_VR-UN.dcm (pancreas) as pydicom stores it has the spine at the top; canonical
  rows run anterior → posterior, so the vertebral body (the bone nearest the body's centre
  line) lies below the middle."""
  vol = dicom.read_series([get_testdata_file("explicit_VR-UN.dcm")])
  hu = vol.hu[0]
  h, w = hu.shape
  bone = np.argwhere(hu[:, w // 2 - 20:w // 2 + 20] > 300)
  assert bone[:, 0].mean() > 0.6 * h
  stored = _reference_hu(get_testdata_file("explicit_VR-UN.dcm"))
  bone = np.argwhere(stored[:, w // 2 - 20:w // 2 + 20] > 300)
  assert bone[:, 0].mean() < 0.4 * h


@pytest.mark.parametrize("name", ["6293", "6924"])
def test_real_scouts_are_not_axial(name):
  path = get_testdata_file(f"dicomdirtests/98892001/CT2N/{name}")
  with pytest.raises(errors.NotAxialError, match="(sagittal|coronal) slices") as e:
    dicom.read_series([path])
  assert e.value.path == os.path.dirname(path)     # a series-level error names the series


SLOPE, INTERCEPT = 0.5, -1000.0     # the good slices' rescale: exercises the float path


def _true_hu(path) -> np.ndarray:
  """stored × slope + intercept from pydicom's own reading of the header, then clipped."""
  ds = pydicom.dcmread(path)
  hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  return np.clip(hu, -1024, 3071).astype(np.float32)


def _series_with_one_bad_slice(folder, bad=2, **bad_kw):
  """Four slices; slice `bad` gets `bad_kw` (header overrides, another PatientID, …)."""
  ref = ramp_volume(4)
  paths = []
  for k in range(4):
    kw = dict(bad_kw) if k == bad else {}
    paths.append(write_slice(folder / f"IM{k:04d}.dcm", ref[k], position=(0, 0, 5.0 * k),
                             instance=k + 1, slope=SLOPE, intercept=INTERCEPT, **kw))
  return ref, paths


def _assert_true_hu(vol, expected_files, ref=None):
  assert vol.files == [str(p) for p in expected_files]
  for f, hu in zip(vol.files, vol.hu):
    np.testing.assert_array_equal(hu, _true_hu(f))
  if ref is not None:
    np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))


def _one_line_naming(e, path, *words):
  msg = str(e)
  assert "\n" not in msg and e.path == str(path) and msg.startswith(f"{path}: ")
  for w in words:
    assert w in msg, (w, msg)


@pytest.mark.parametrize("field,value,shown", [
    ("slope", float("nan"), "nan"), ("slope", float("inf"), "inf"), ("slope", 0.0, "0.0"),
    ("slope", -1.0, "-1.0"), ("slope", 1e30, "1e+30"), ("slope", 1e-3, "0.001"),
    ("intercept", float("nan"), "nan"), ("intercept", float("inf"), "inf"),
    ("intercept", float("-inf"), "-inf"), ("intercept", 1e6, "1000000.0"),
])
def test_bad_rescale_is_refused_or_skipped(tmp_path, field, value, shown):
  ref, paths = _series_with_one_bad_slice(tmp_path, **{f"header_{field}": value})
  keyword = "RescaleSlope" if field == "slope" else "RescaleIntercept"
  with pytest.raises(errors.InvalidRescaleError) as e:
    dicom.read_series(tmp_path)
  _one_line_naming(e.value, paths[2], f"{keyword} '{shown}'", "lenient=True")
  vol = dicom.read_series(tmp_path, lenient=True)
  _assert_true_hu(vol, [paths[0], paths[1], paths[3]], ref[[0, 1, 3]])
  assert [(s.path, s.error) for s in vol.skipped] == [(str(paths[2]), "InvalidRescaleError")]
  assert keyword in vol.skipped[0].reason
  with pytest.raises(errors.InvalidRescaleError):     # the per-slice door refuses it too
    dicom.decode_hu(dicom.read_header(paths[2], check=False))


def test_unparseable_rescale_slope(tmp_path):
  ref, paths = _series_with_one_bad_slice(tmp_path)
  raw = paths[2].read_bytes()
  slope = b"\x28\x00\x53\x10DS\x04\x000.5 "
  assert slope in raw
  paths[2].write_bytes(raw.replace(slope, slope[:8] + b"1A  "))
  with pytest.raises(errors.InvalidRescaleError) as e:
    dicom.read_series(tmp_path)
  _one_line_naming(e.value, paths[2], "RescaleSlope '1A'")
  _assert_true_hu(dicom.read_series(tmp_path, lenient=True), [paths[0], paths[1], paths[3]])


def test_rescale_bounds_admit_real_ct_conventions(tmp_path):
  """Slopes and intercepts real stores use read as written (uint16 with intercept -32768)."""
  hu = ramp_volume(1)[0] - 1000
  for name, slope, intercept in (("a", 1.0, -1024.0), ("b", 1.0, 0.0), ("c", 1 / 16, -1024.0),
                                 ("d", 10.0, -1000.0), ("e", 1.0, -32768.0)):
    p = write_slice(tmp_path / f"{name}.dcm", hu, slope=slope, intercept=intercept)
    if name == "e":
      ds = pydicom.dcmread(p)
      ds.PixelRepresentation = 0
      ds.PixelData = (hu + 32768).astype(np.uint16).tobytes()
      ds.save_as(p)
    vol = dicom.read_series([p])
    np.testing.assert_array_equal(vol.hu[0], _true_hu(p))


def test_missing_rescale_is_noted(tmp_path):
  p = write_slice(tmp_path / "a.dcm", np.zeros((32, 32)), intercept=0.0)
  ds = pydicom.dcmread(p)
  del ds.RescaleSlope, ds.RescaleIntercept
  ds.save_as(p)
  vol = dicom.read_series([p])
  assert vol.hu.max() == 0 and any("RescaleSlope/RescaleIntercept missing" in n
                                   for n in vol.notes)


@pytest.mark.parametrize("field,kw,value", [
    ("PatientID", {"patient_id": "P9"}, "'P9'"),
    ("StudyInstanceUID", {"study_uid": "1.2.99"}, "'1.2.99'"),
])
def test_foreign_slice_in_series(tmp_path, field, kw, value):
  ref, paths = _series_with_one_bad_slice(tmp_path, bad=1, **kw)
  with pytest.raises(errors.ForeignSliceError) as e:
    dicom.read_series(tmp_path)
  theirs = "'P0'" if field == "PatientID" else "'1.2.3'"
  _one_line_naming(e.value, paths[1], f"{field} {value}", theirs, "lenient=True")
  vol = dicom.read_series(tmp_path, lenient=True)
  _assert_true_hu(vol, [paths[0], paths[2], paths[3]], ref[[0, 2, 3]])
  assert [(s.path, s.error) for s in vol.skipped] == [(str(paths[1]), "ForeignSliceError")]
  assert field in vol.skipped[0].reason and value in vol.skipped[0].reason


def test_foreign_slice_tie_has_no_majority(tmp_path):
  write_slice(tmp_path / "a.dcm", np.zeros((32, 32)), position=(0, 0, 0), patient_id="P0")
  write_slice(tmp_path / "b.dcm", np.zeros((32, 32)), position=(0, 0, 5), patient_id="P1")
  with pytest.raises(errors.ForeignSliceError, match="equally common"):
    dicom.read_series(tmp_path, lenient=True)


def test_identical_duplicate_kept_once_with_a_note(tmp_path):
  ref, paths = _series_with_one_bad_slice(tmp_path)
  # Same HU at slice 2's position, stored differently (slope 1, intercept -1024), another UID.
  dup = write_slice(tmp_path / "A_dup.dcm", ref[2], position=(0, 0, 10.0), instance=3)
  for lenient in (False, True):
    vol = dicom.read_series(tmp_path, lenient=lenient)
    assert vol.num_slices == 4
    for f, hu in zip(vol.files, vol.hu):
      np.testing.assert_array_equal(hu, _true_hu(f))
    np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))
    assert len(vol.skipped) == 1 and vol.skipped[0].path in (str(dup), str(paths[2]))
    assert "identical pixels" in vol.skipped[0].reason
    assert "1 duplicate slice(s) with identical pixels dropped" in " ".join(vol.notes)


def test_conflicting_duplicate_is_refused_or_all_dropped(tmp_path):
  ref, paths = _series_with_one_bad_slice(tmp_path)
  # Sorts first by name and by InstanceNumber: the old reader kept it and dropped the real slice.
  stray = write_slice(tmp_path / "A_stray.dcm", ref[2] + 7, position=(0, 0, 10.0), instance=1)
  with pytest.raises(errors.DuplicateSliceError) as e:
    dicom.read_series(tmp_path)
  msg = str(e.value)
  assert "\n" not in msg and "ImagePositionPatient [0, 0, 10]" in msg
  assert {e.value.path, str(stray), str(paths[2])} == {str(stray), str(paths[2])}
  assert str(stray) in msg and str(paths[2]) in msg
  vol = dicom.read_series(tmp_path, lenient=True)
  _assert_true_hu(vol, [paths[0], paths[1], paths[3]], ref[[0, 1, 3]])
  assert sorted((s.path, s.error) for s in vol.skipped) == sorted(
      [(str(stray), "DuplicateSliceError"), (str(paths[2]), "DuplicateSliceError")])
  assert any("different pixels" in n for n in vol.notes)
  assert any("uneven" in n for n in vol.notes)      # the gap it leaves is said, too


# --------------------------------------------------- a corrupt JPEG 2000 slice, said once


def _j2k_series(folder, n=3):
  """n copies of pydicom's JPEG 2000 CT slice (693_J2KI) at 5 mm steps, pixels untouched."""
  src = get_testdata_file("693_J2KI.dcm")
  paths = []
  for k in range(n):
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.9.{k}"
    ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
    ds.InstanceNumber = k + 1
    p = pathlib.Path(folder) / f"J{k}.dcm"
    ds.save_as(p)
    paths.append(p)
  return src, paths


def _break_codestream(path):
  from pydicom.encaps import encapsulate, generate_frames
  ds = pydicom.dcmread(path)
  frame = next(generate_frames(ds.PixelData, number_of_frames=1))
  ds.PixelData = encapsulate([frame[:len(frame) // 2]])
  ds.save_as(path)


@pytest.mark.parametrize("damage,err", [
    ("codestream", errors.CorruptPixelDataError),   # valid DICOM, half a JPEG 2000 stream
    ("truncated", errors.TruncatedDicomError),      # the file cut inside its pixel data
])
def test_corrupt_jpeg2000_slice_is_one_quiet_line(tmp_path, caplog, capfd, damage, err):
  src, paths = _j2k_series(tmp_path)
  if damage == "codestream":
    _break_codestream(paths[1])
  else:
    paths[1].write_bytes(paths[1].read_bytes()[:-500])
  handler = logging.StreamHandler(sys.stderr)    # as an entry point's logging would print
  logging.getLogger().addHandler(handler)
  caplog.set_level(logging.DEBUG)
  try:
    capfd.readouterr()
    with pytest.raises(err) as e:
      dicom.read_series(tmp_path)
    vol = dicom.read_series(tmp_path, lenient=True)
    out, errtext = capfd.readouterr()
  finally:
    logging.getLogger().removeHandler(handler)
  assert not [r for r in caplog.records if r.name.startswith("pydicom")]
  assert "pydicom" not in out + errtext and "Traceback" not in out + errtext
  _one_line_naming(e.value, paths[1], "re-")
  if damage == "codestream":
    assert "PixelData" in str(e.value)
  assert [(s.path, s.error) for s in vol.skipped] == [(str(paths[1]), err.__name__)]
  reference = _reference_hu(src).astype(np.float32)
  assert vol.files == [str(paths[0]), str(paths[2])]
  for hu in vol.hu:
    np.testing.assert_array_equal(hu, reference)


# --------------------------------------------------------------- header sanity before decoding


def _grow_pixel_data(path, extra: int) -> None:
  """Declares `extra` more bytes of Pixel Data and extends the file to hold them (a sparse
  tail of zeros: no disk is used)."""
  raw = bytearray(pathlib.Path(path).read_bytes())
  tag = b"\xe0\x7f\x10\x00OW\x00\x00"                 # (7FE0,0010) OW, explicit VR LE
  at = raw.rindex(tag)
  length = int.from_bytes(raw[at + 8:at + 12], "little")
  raw[at + 8:at + 12] = (length + extra).to_bytes(4, "little")
  pathlib.Path(path).write_bytes(bytes(raw))
  with open(path, "r+b") as f:
    f.truncate(len(raw) + extra)


def test_oversized_pixel_data_is_refused_unread(tmp_path, monkeypatch):
  """A Pixel Data element 200 MB longer than Rows × Columns × 2 bytes: one typed line naming
  the file, before a byte of it is read (pydicom's deferred read is never called)."""
  ref = ramp_volume(3, 16)
  paths = write_series(tmp_path, ref)
  _grow_pixel_data(paths[1], 200 * 2**20)
  import pydicom.filereader as fr
  def no_read(*a, **k):
    raise AssertionError("the Pixel Data was read")
  monkeypatch.setattr(fr, "read_deferred_data_element", no_read)
  monkeypatch.setattr(pydicom.dataset, "read_deferred_data_element", no_read, raising=False)
  with pytest.raises(errors.PixelDataSizeError) as e:
    dicom.read_series(tmp_path)
  _one_line_naming(e.value, paths[1], "Pixel Data has 209715712 bytes, 512 expected",
                   "16 x 16 x 1 frame(s) x 1 sample(s) x 16 bits", "not decoded")
  vol = None
  monkeypatch.undo()
  vol = dicom.read_series(tmp_path, lenient=True)
  assert vol.files == [str(paths[0]), str(paths[2])]
  assert [s.error for s in vol.skipped] == ["PixelDataSizeError"]


def test_pixel_data_padding_and_small_excess_still_read(tmp_path):
  p = write_slice(tmp_path / "a.dcm", ramp_volume(1, 32)[0])
  _grow_pixel_data(p, 2)                                 # 2 bytes of trailing padding
  np.testing.assert_array_equal(dicom.read_series([p]).hu[0], ramp_volume(1, 32)[0])


def test_deferred_pixel_data_cut_short_is_truncation(tmp_path):
  """A 256² slice (Pixel Data beyond DEFER_BYTES, so not read with the header) cut inside its
  pixels: TruncatedDicomError from the header read, not a decoder failure."""
  p = write_slice(tmp_path / "big.dcm", np.zeros((256, 256)))
  assert 256 * 256 * 2 > dicom.DEFER_BYTES
  p.write_bytes(p.read_bytes()[:-1000])
  with pytest.raises(errors.TruncatedDicomError) as e:
    dicom.read_header(p)
  _one_line_naming(e.value, p, "truncated")


def test_signed_pixels_declared_unsigned_are_refused(tmp_path):
  """int16 HU stored with intercept 0 (air is -1000) but PixelRepresentation 0: read unsigned,
  air becomes 64536 HU and the slice a sheet of 3071 HU."""
  hu = ramp_volume(3, 32) - 1000.0                       # mostly negative
  paths = []
  for k in range(3):
    p = write_slice(tmp_path / f"s{k}.dcm", hu[k], position=(0, 0, 5.0 * k), instance=k + 1,
                    intercept=0.0)
    if k == 1:
      ds = pydicom.dcmread(p)
      ds.PixelRepresentation = 0
      ds.save_as(p)
    paths.append(p)
  with pytest.raises(errors.PixelRepresentationError) as e:
    dicom.read_series(tmp_path)
  _one_line_naming(e.value, paths[1], "PixelRepresentation 0 (unsigned)",
                   "100% of the voxels lie above 3071 HU read unsigned and 0% read signed",
                   "set PixelRepresentation to 1")
  vol = dicom.read_series(tmp_path, lenient=True)
  np.testing.assert_array_equal(vol.hu, hu[[0, 2]].astype(np.float32))
  assert [(s.path, s.error) for s in vol.skipped] == [(str(paths[1]),
                                                        "PixelRepresentationError")]


def test_unsigned_pixels_with_bright_metal_are_not_refused(tmp_path):
  """Real unsigned storage (intercept -1024) with a metal streak above 3071 HU on 5% of the
  slice reads as written (clipped), not refused."""
  hu = ramp_volume(1, 40)[0]
  hu[:2] = 4000.0                                        # 2 of 40 rows: 5%
  p = write_slice(tmp_path / "a.dcm", hu)
  ds = pydicom.dcmread(p)
  ds.PixelRepresentation = 0
  ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
  ds.save_as(p)
  vol = dicom.read_series([p], clip_hu=False)
  np.testing.assert_array_equal(vol.hu[0], hu.astype(np.float32))


@pytest.mark.parametrize("offset_um", [2.0, 10.0])
def test_slices_microns_apart_are_duplicates(tmp_path, offset_um):
  """Positions 2-10 µm apart at a 5 mm step are one position (tolerance 5% of the step)."""
  ref = ramp_volume(4)
  write_series(tmp_path, ref)
  write_slice(tmp_path / "again.dcm", ref[2], position=(0, 0, 10.0 + offset_um * 1e-3),
              instance=9)
  vol = dicom.read_series(tmp_path)
  np.testing.assert_array_equal(vol.hu, ref.astype(np.float32))
  assert [s.path for s in vol.skipped] in ([str(tmp_path / "again.dcm")],
                                           [str(tmp_path / "IM0002.dcm")])
  assert dicom.duplicate_tolerance_mm([0, 5, 10, 10.002, 15]) == pytest.approx(0.25)
  write_slice(tmp_path / "other.dcm", ref[2] + 5, position=(0, 0, 10.0 - offset_um * 1e-3),
              instance=10)
  with pytest.raises(errors.DuplicateSliceError):
    dicom.read_series(tmp_path)


def test_thin_slices_are_not_duplicates(tmp_path):
  """A 0.3 mm step keeps its slices (tolerance 15 µm), a 1 µm floor holds without positions
  that vary."""
  ref = ramp_volume(5)
  write_series(tmp_path, ref, spacing=0.3)
  assert dicom.read_series(tmp_path).num_slices == 5
  assert dicom.duplicate_tolerance_mm([0, 0, 0]) == dicom.SAME_POSITION_MM
