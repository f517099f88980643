"""ctjax.data.series_policy: exclusions from header values, policies, header-only reading."""

import numpy as np
import pytest

from ctjax.data import series_policy as sp
from tests.support.ctdicom_helpers import write_series

OPTS = sp.options(None)


def _s(**kw):
  kw.setdefault("plane", "axial")
  kw.setdefault("image_type", "ORIGINAL\\PRIMARY\\AXIAL")
  kw.setdefault("modality", "CT")
  files = kw.pop("n", 40)
  return sp.SeriesInfo(folder=kw.pop("folder", "/x/CT s"), series_uid=kw.pop("uid", "1"),
                       files=[f"f{i}" for i in range(files)], **kw)


@pytest.mark.parametrize("kernel,desc,first", [
    ("STANDARD", "PLAIN THIN", None), ("SOFT", "0.625mm", None), ("H30s", "Head 5mm", None),
    ("Hr38", "Plain", None), ("DETAIL", "Thin Details", None), ("UB", "Brain", None),
    ("BONE", "PLAIN THIN", "bone kernel"), ("BONEPLUS", "x", "bone kernel"),
    ("H70h", "Thin", "bone kernel"), ("J70h", "x", "bone kernel"), ("Hr64", "x", "bone kernel"),
    ("B60f", "x", "bone kernel"), ("", "CT Thin Bone", "bone reconstruction"),
    ("STANDARD", "LT THIN BONE", "bone reconstruction"),
    ("STANDARD", "SCOUT", "localizer"), ("STANDARD", "Topogram 0.6 T20s", "localizer"),
    ("STANDARD", "COR MPR", "reformat"), ("STANDARD", "POST CONTRAST", "post-contrast"),
    ("STANDARD", "PRE CONTRAST THIN", None), ("STANDARD", "4cc sec 150cc D3D on", None),
])
def test_kernels_and_descriptions(kernel, desc, first):
  why = sp.exclusions(_s(kernel=kernel, description=desc), OPTS)
  assert (why[0].split(" (")[0] if why else None) == first, why


def test_image_type_plane_contrast_and_slices():
  assert sp.exclusions(_s(image_type="DERIVED\\SECONDARY\\REFORMATTED"), OPTS)[0].startswith(
      "derived/secondary")
  assert sp.exclusions(_s(plane="coronal", normal_deg=90.0), OPTS)[0].startswith("non-axial")
  assert sp.exclusions(_s(contrast_agent="OMNIPAQUE"), OPTS)[0].startswith("post-contrast")
  assert sp.exclusions(_s(contrast_agent="OMNIPAQUE"), {**OPTS, "exclude_contrast": False}) == []
  assert sp.exclusions(_s(n=31), {**OPTS, "min_slices": 32}) == ["31 slices < min_slices 32"]
  assert sp.exclusions(_s(modality="MR"), OPTS)[0] == "not CT (Modality MR)"
  assert sp.exclusions(_s(kernel="D", description="x"),
                       {**OPTS, "bone_kernels": r"^D$"})[0].startswith("bone kernel")


def test_plane_from_orientation():
  assert sp._plane("1\\0\\0\\0\\1\\0") == ("axial", 0.0)
  plane, deg = sp._plane(f"1\\0\\0\\0\\{np.cos(0.4)}\\{np.sin(0.4)}")   # 22.9° gantry tilt
  assert plane == "axial" and deg == pytest.approx(np.degrees(0.4))
  assert sp._plane("1\\0\\0\\0\\0\\-1")[0] == "coronal"
  assert sp._plane("0\\1\\0\\0\\0\\-1")[0] == "sagittal"
  assert sp._plane("")[0] == "unknown"


def test_one_per_study_takes_the_thinnest():
  study = [_s(uid="a", thickness=5.0, n=40), _s(uid="b", thickness=0.625, n=200),
           _s(uid="c", thickness=0.625, n=240), _s(uid="d", kernel="BONE", thickness=0.5)]
  got = {d.series.series_uid: d for d in sp.select({"s": study}, {**OPTS,
                                                                  "policy": "one_per_study"})}
  assert [u for u, d in got.items() if d.kept] == ["c"]
  assert "not the thinnest" in got["a"].reason and got["d"].reason.startswith("bone kernel")
  assert sp.policy_counts({"s": study}, OPTS) == {"soft_tissue_axial": 3, "one_per_study": 1,
                                                  "all": 4}


def test_describe_folder_reads_headers_only(tmp_path, monkeypatch):
  write_series(tmp_path, np.zeros((3, 8, 8)), series_uid="1.7", ConvolutionKernel="BONE",
               description="Thin Bone")
  import pydicom
  read = pydicom.dcmread
  seen = []
  def spy(path, **kw):
    seen.append(kw)
    return read(path, **kw)
  monkeypatch.setattr(pydicom, "dcmread", spy)
  (info,) = sp.describe_folder(str(tmp_path))
  assert seen and all(kw.get("stop_before_pixels") for kw in seen)
  assert info.kernel == "BONE" and info.num_slices == 3 and info.thickness == 5.0
  assert info.plane == "axial" and info.series_uid == "1.7"
