"""ctjax.data.headcheck on real CT nobody here wrote (pydicom / pydicom-data) and on phantoms."""

import pathlib

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from ctjax import errors
from ctjax.data import datasets, dicom, headcheck, phantom

DIRTESTS = pathlib.Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"


def _read(name):
  path = get_testdata_file(name, download=False)
  if path is None:
    pytest.skip(f"{name} is not installed (pydicom-data)")
  try:
    return dicom.read_series([path])
  except errors.UnsupportedTransferSyntaxError as e:
    pytest.skip(f"{name}: {e}")


# (file, why it is not a head, a reason the verdict must give)
NON_HEAD = [
    ("explicit_VR-UN.dcm", "abdomen (pancreas), 440 mm field", "no skull around brain-range"),
    ("CT_small.dcm", "chest (vertebra), 85 mm field", "field of view 85 x 85 mm"),
    ("bad_sequence.dcm", "neck (JPEG lossless), 147 mm field", "no skull around brain-range"),
]
HEAD = ["693_UNCR.dcm", "693_J2KR.dcm", "693_J2KI.dcm", "693_UNCI.dcm",
        "J2K_pixelrep_mismatch.dcm"]


@pytest.mark.parametrize("name,what,reason", NON_HEAD)
def test_real_non_head_slices_are_not_head(name, what, reason):
  verdict = headcheck.check_volume(_read(name))
  assert not verdict.is_head, (name, what)
  assert any(r.startswith(reason) for r in verdict.reasons), verdict.reasons


@pytest.mark.parametrize("folder", ["77654033/CT2", "98892001/CT5N"])
def test_real_16px_series_are_not_head(folder):
  """The 16 px copies of a head (CT2) and a cardiac calcium-score series (CT5N) keep their
  original pixel spacing: a field of 8 mm holds no head."""
  verdict = headcheck.check_volume(dicom.read_series(DIRTESTS / folder))
  assert not verdict.is_head
  assert verdict.reasons[0] == "field of view 8 x 8 mm is smaller than a head (100 mm)"
  assert verdict.measures["fov_mm"] == [7.8, 7.8]


@pytest.mark.parametrize("name", HEAD)
def test_real_head_slices_are_head(name):
  """The CQ500 head slice in four encodings and a tilted head slice at the skull base."""
  verdict = headcheck.check_volume(_read(name))
  assert verdict.is_head and verdict.reasons == ()
  ring = verdict.measures["rings"][0]
  assert ring["coverage"] >= 0.95 and ring["area_mm2"] > 9000 and ring["brain_share"] > 0.85


def test_skull_removed_from_a_real_head_is_not_head():
  """The same slice with its bone replaced by soft tissue: the ring test alone refuses it."""
  vol = _read("693_UNCR.dcm")
  hu = np.where(vol.hu > 200, 40.0, vol.hu).astype(np.float32)
  verdict = headcheck.check(hu, vol.spacing)
  assert not verdict.is_head and len(verdict.reasons) == 1
  assert verdict.reasons[0].startswith("no skull around brain-range tissue on 1 of 1")


def test_a_stack_longer_than_a_head_is_not_head():
  vol = _read("693_UNCR.dcm")
  hu = np.repeat(vol.hu, 3, axis=0)
  assert headcheck.check(hu, (5.0, *vol.spacing[1:])).is_head          # 10 mm of z
  verdict = headcheck.check(hu, (200.0, *vol.spacing[1:]))              # 400 mm of z
  assert verdict.reasons == ("z coverage 400 mm exceeds a head's (320 mm)",)


@pytest.mark.parametrize("size", [16, 64])
@pytest.mark.parametrize("layout", phantom.LAYOUTS)
def test_every_phantom_layout_is_head(tmp_path, layout, size):
  """Phantom series as the adapters read them (every layout, 16 and 64 px): no refusal."""
  phantom.write_dataset(tmp_path, layout=layout, num_scans=4, seed=11, size=size,
                        num_workers=0)
  ds = datasets.load(layout, tmp_path)
  assert len(ds.scans) >= 4
  for rec in ds.scans:
    vol = dicom.read_series(rec.files, series_uid=rec.series_uid)
    verdict = headcheck.check_volume(vol)
    assert verdict.is_head, (rec.scan_id, verdict.summary())


def test_bone_threshold_follows_the_pixel_size():
  assert headcheck.bone_threshold_hu(0.5) == headcheck.BONE_HU
  assert headcheck.bone_threshold_hu(12.0) == pytest.approx(150.0)
  assert headcheck.bone_threshold_hu(40.0) == headcheck.MIN_BONE_HU > headcheck.BRAIN_HU[1]


def test_require_head_is_one_line_naming_the_series():
  path = get_testdata_file("explicit_VR-UN.dcm")
  vol = dicom.read_series([path])
  with pytest.raises(errors.NotHeadCTError) as e:
    headcheck.require_head(vol)
  msg = str(e.value)
  assert "\n" not in msg and e.value.path == str(pathlib.Path(path).parent)
  assert "no skull around brain-range tissue" in msg and "config.data.require_head=False" in msg
  assert headcheck.require_head(_read("693_UNCR.dcm")).is_head
  verdict = headcheck.check_volume(vol)               # a verdict computed once is reused
  with pytest.raises(errors.NotHeadCTError, match="^series: "):
    headcheck.require_head(vol, label="series", verdict=verdict)
