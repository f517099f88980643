"""ctjax.data.dicom with and without the `codecs` extra, on pydicom's real compressed files.

pydicom and pydicom-data ship some images in several encodings: the CQ500 head slice 693 as
JPEG 2000 lossless (693_J2KR) and uncompressed (693_UNCR), its lossy JPEG 2000 (693_J2KI) with
the decoded reference (693_UNCI); MR_small as JPEG-LS lossless and uncompressed. No CT file
there is JPEG lossless (process 14) with an uncompressed twin, so CT_small is re-stored that
way by a codestream writer of the tests (ctdicom_helpers.encode_jpeg_lossless_sv1), whose
output libjpeg decodes.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from ctjax import errors
from ctjax.data import dicom
from tests.support.ctdicom_helpers import write_jpeg_lossless_copy

REPO = pathlib.Path(__file__).resolve().parents[2]
# Import names of every decoder pydicom 3 can use for these transfer syntaxes except Pillow
# (a core dependency of ctjax, which decodes JPEG 2000 only).
DECODER_MODULES = ("pylibjpeg", "libjpeg", "openjpeg", "gdcm", "jpeg_ls")
HAVE_CODECS = all(importlib.util.find_spec(m) is not None
                  for m in ("pylibjpeg", "libjpeg", "openjpeg"))
needs_codecs = pytest.mark.skipif(
    not HAVE_CODECS, reason="the ctjax[codecs] decoders are not installed "
    "(pip install 'ctjax[codecs]')")


def _real(name):
  path = get_testdata_file(name, download=False)
  if path is None:
    pytest.skip(f"{name} is not installed (pydicom-data)")
  return path


def _decode(path):
  """HU of one slice through ctjax's per-slice door (for the MR twins read_series refuses)."""
  return dicom.decode_hu(dicom.read_header(path, check=False), clip=False)


def test_without_decoders_each_compressed_file_is_one_line_naming_the_extra(tmp_path):
  """With every decoder package hidden (as on an install without the extra), JPEG lossless and
  JPEG-LS files raise UnsupportedTransferSyntaxError naming `ctjax[codecs]`; JPEG 2000 still
  reads through Pillow."""
  p14 = write_jpeg_lossless_copy(_real("CT_small.dcm"), tmp_path / "ct_p14.dcm")
  names = {"JPEG-LL.dcm": _real("JPEG-LL.dcm"), "bad_sequence.dcm": _real("bad_sequence.dcm"),
           "JPEGLSNearLossless_16.dcm": _real("JPEGLSNearLossless_16.dcm"),
           "MR_small_jpeg_ls_lossless.dcm": _real("MR_small_jpeg_ls_lossless.dcm"),
           "ct_p14.dcm": str(p14), "693_J2KR.dcm": _real("693_J2KR.dcm")}
  script = f"""
import json, sys
for m in {DECODER_MODULES!r}:
  sys.modules[m] = None          # import fails: the package is absent
from ctjax import errors
from ctjax.data import dicom
out = {{}}
for name, path in {names!r}.items():
  try:
    vol = dicom.read_series([path])
    out[name] = ["read", list(vol.hu.shape)]
  except errors.CTDataError as e:
    out[name] = [type(e).__name__, str(e), e.path]
print(json.dumps(out))
"""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out.pop("693_J2KR.dcm") == ["read", [1, 512, 512]]
  for name, (kind, message, path) in out.items():
    assert kind == "UnsupportedTransferSyntaxError", (name, kind, message)
    assert path == names[name] and message.startswith(f"{path}: compressed pixel data (")
    assert "\n" not in message and "pip install 'ctjax[codecs]'" in message, message


@needs_codecs
@pytest.mark.parametrize("compressed,reference", [
    ("693_J2KR.dcm", "693_UNCR.dcm"),      # JPEG 2000 lossless: the CQ500 head slice
    ("693_J2KI.dcm", "693_UNCI.dcm"),      # JPEG 2000 lossy and its decoded reference
])
def test_jpeg2000_ct_equals_its_uncompressed_twin(compressed, reference):
  a = dicom.read_series([_real(compressed)], clip_hu=False)
  b = dicom.read_series([_real(reference)], clip_hu=False)
  np.testing.assert_array_equal(a.hu, b.hu)
  assert a.hu.min() < -2000 and a.hu.max() > 1000          # padding and skull, unclipped
  assert a.lossy == b.lossy == ("J2KI" in compressed)


@needs_codecs
def test_jpeg_ls_lossless_equals_its_uncompressed_twin():
  a = _decode(_real("MR_small_jpeg_ls_lossless.dcm"))
  b = _decode(_real("MR_small.dcm"))
  assert a.shape == (64, 64) and b.min() < b.max()
  np.testing.assert_array_equal(a, b)


@needs_codecs
def test_jpeg_lossless_process14_ct_equals_the_uncompressed_file(tmp_path):
  src = _real("CT_small.dcm")
  p14 = write_jpeg_lossless_copy(src, tmp_path / "ct_p14.dcm")
  assert p14.stat().st_size < pathlib.Path(src).stat().st_size    # really compressed
  a = dicom.read_series([p14], clip_hu=False)
  b = dicom.read_series([src], clip_hu=False)
  np.testing.assert_array_equal(a.hu, b.hu)
  assert not a.lossy


@needs_codecs
def test_real_jpeg_lossless_neck_slice_reads():
  """bad_sequence.dcm: a real neck CT slice in JPEG lossless process 14 (12 bits unsigned,
  intercept -1024); air and bone where a neck has them."""
  vol = dicom.read_series([_real("bad_sequence.dcm")])
  assert vol.hu.shape == (1, 512, 512) and vol.notes == ["single slice"]
  assert -1024 <= vol.hu.min() < -900 and vol.hu.max() > 1000
  with pytest.raises(errors.CTDataError):       # the per-slice door checks the same header
    dicom.read_series([_real("bad_sequence.dcm")], max_pixels=1000)
