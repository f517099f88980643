"""docs/real_ct.md is what python -m tests.support.real_ct prints: the table cannot drift from the code."""

import importlib.util
import pathlib

import pytest

from tests.support import real_ct

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "real_ct.md"


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("pylibjpeg", "libjpeg",
                                                                  "openjpeg")),
                    reason="the table is generated with the ctjax[codecs] decoders")
def test_docs_table_is_current():
  assert DOC.read_text() == real_ct.render(), (
      "docs/real_ct.md is stale: python -m tests.support.real_ct docs/real_ct.md")


def test_table_says_what_the_issue_asks():
  """Non-head real CT refused or flagged; the CQ500 head slice accepted in every encoding."""
  rows = {line.split(" | ")[0].strip("| `"): line for line in real_ct.render().splitlines()
          if line.startswith("| `")}
  for name in ("693_UNCR.dcm", "693_J2KR.dcm", "693_J2KI.dcm", "693_UNCI.dcm",
               "J2K_pixelrep_mismatch.dcm"):
    assert "| yes |" in rows[name], rows[name]
  for name in ("CT_small.dcm", "explicit_VR-UN.dcm", "dicomdirtests/77654033/CT2",
               "dicomdirtests/98892001/CT5N"):
    assert "| no: " in rows[name] and "`not_head`" in rows[name], rows[name]
  assert "refused: `NotAxialError`" in rows["dicomdirtests/98892001/CT2N/6924"]
  import pydicom
  text = real_ct.render()                 # names only: no folder of this installation
  assert str(pathlib.Path(pydicom.__file__).parent) not in text and "site-packages" not in text
