"""ctjax.data.qa: one QA row per series in the prepared cache, a test per flag."""

import subprocess
import sys
import pathlib
import os

import dataclasses

import numpy as np
import pytest

from ctjax.data import cache, datasets, dicom, phantom, qa
from tests.support.ctdicom_helpers import ramp_volume, write_series, write_slice, write_cq500_download

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def qa_rows(tmp_path_factory):
  root = tmp_path_factory.mktemp("qa")
  vol = ramp_volume(5, 8)
  write_series(root / "plain", vol, series_uid="1.1")
  write_series(root / "tilted", vol, step=(0, 2.0, 5.0), series_uid="1.2")    # 21.8° tilt
  paths = write_series(root / "dup", vol, series_uid="1.3")
  write_slice(paths[2].with_name("IM9999.dcm"), vol[2], position=(0, 0, 10.0),
              series_uid="1.3", instance=3)                  # same position, same pixels
  for k, z in enumerate((0, 5, 10, 20, 25)):                 # a 10 mm gap after slice 2
    write_slice(root / "gap" / f"IM{k}.dcm", vol[k], position=(0, 0, z), series_uid="1.4",
                instance=k + 1)
  for k, z in enumerate((0, 5, 10, 15.6, 20.6)):             # one step of 5.6 mm
    write_slice(root / "uneven" / f"IM{k}.dcm", vol[k], position=(0, 0, z), series_uid="1.7",
                instance=k + 1)
  for k in range(3):                                         # RSNA's 12-bit unsigned quirk
    write_slice(root / "rsna12" / f"IM{k}.dcm", vol[k], position=(0, 0, 5 * k),
                series_uid="1.5", instance=k + 1, intercept=0.0, BitsStored=12, HighBit=11,
                PixelRepresentation=0)
  for k in range(3):                                         # a NaN intercept (lenient: skip)
    write_slice(root / "nan" / f"IM{k}.dcm", vol[k], position=(0, 0, 5 * k), series_uid="1.6",
                instance=k + 1, header_intercept="nan" if k == 1 else None)
  names = ["plain", "tilted", "dup", "gap", "uneven", "rsna12", "nan"]
  (root / "labels.csv").write_text("scan_id,patient_id,bleed\n"
                                   + "".join(f"{n},p_{n},0\n" for n in names))
  ds = datasets.load("folder", root)
  out = root / ".cache"
  cache.prepare(ds, out, image_size=8, lenient=True, progress=False)
  rows = {r["scan_id"]: r for r in qa.read(out)}
  return rows, out


# Every series of the fixture is 8 px, 3-5 slices of a ramp: none is a head CT.
TINY = {"not_head", "few_slices", "small_matrix"}


def _flags(row):
  return set(row["flags"].split(";")) - {""}


def test_plain_series_has_only_the_size_flags(qa_rows):
  rows, _ = qa_rows
  r = rows["plain"]
  assert _flags(r) == TINY and r["slices"] == 5 and r["spacing_mm"] == 5.0
  assert r["kept"] and r["label_source"].startswith("labels.csv row")
  assert r["matrix"] == "8x8" and r["head"].startswith("not a head CT: field of view 4 x 4 mm")


def test_tilted_series(qa_rows):
  r = qa_rows[0]["tilted"]
  assert _flags(r) == TINY | {"gantry_tilt"}
  assert r["tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.4)), abs=1e-3)
  assert r["oblique_deg"] == 0.0


def test_duplicate_position(qa_rows):
  r = qa_rows[0]["dup"]
  assert _flags(r) == TINY | {"duplicate_position"}
  assert r["duplicate_positions"] == 1 and r["slices"] == 5 and "duplicate" in r["skip_reasons"]


def test_gap_and_uneven_spacing(qa_rows):
  r = qa_rows[0]["gap"]
  assert _flags(r) == TINY | {"gap"} and r["max_gap_deviation_mm"] == 5.0
  r = qa_rows[0]["uneven"]
  assert _flags(r) == TINY | {"uneven_spacing"}
  assert r["max_gap_deviation_mm"] == pytest.approx(0.6)


def test_bad_intercept(qa_rows):
  rows, _ = qa_rows
  assert "bad_intercept" in _flags(rows["rsna12"]) and rows["rsna12"]["intercept_fixed"] == 3
  r = rows["nan"]
  assert {"bad_intercept", "skipped_slices"} <= _flags(r)
  assert r["invalid_rescale"] == 1 and r["slices"] == 2 and "InvalidRescaleError: 1" in \
      r["skip_reasons"]


def test_table_and_csv(qa_rows):
  rows, out = qa_rows
  table = qa.format_table(list(rows.values()))
  assert table.splitlines()[-1] == (
      "7 series, 7 kept; flags: not_head 7, few_slices 7, small_matrix 7, gap 1, "
      "uneven_spacing 1, gantry_tilt 1, duplicate_position 1, bad_intercept 2, "
      "skipped_slices 1")
  csv_text = (out / "qa.csv").read_text().splitlines()
  assert csv_text[0].split(",") == list(qa.COLUMNS) and len(csv_text) == 8


# ------------------------------------------------------------------ flags of a Volume directly


@pytest.fixture(scope="module")
def head():
  """A phantom head CT at 256 px, 20 slices, as the reader returns it: no flag at all."""
  hu, truth = phantom.generate_scan(np.random.default_rng(3), size=256, num_slices=20)
  dz, d = truth["thickness"], truth["pixel_spacing"]
  s = hu.shape[0]
  return dicom.Volume(
      hu=hu.astype(np.float32), spacing=(dz, d, d),
      positions=np.stack([np.zeros(s), np.zeros(s), dz * np.arange(s)], axis=1),
      sop_uids=[f"1.2.{k}" for k in range(s)], files=[f"s/{k}.dcm" for k in range(s)],
      instance_numbers=list(range(1, s + 1)), series_uid="1.2",
      orientation=np.asarray(dicom.CANONICAL_ORIENTATION), header={})


def test_phantom_head_has_no_flag(head):
  assert qa.flags(head) == []


@pytest.mark.parametrize("change,flag", [
    (lambda v: dataclasses.replace(v, hu=v.hu[:1], positions=v.positions[:1]), "few_slices"),
    (lambda v: dataclasses.replace(v, lossy=True), "lossy"),
    (lambda v: dataclasses.replace(v, oblique_deg=12.0), "oblique"),
    (lambda v: dataclasses.replace(v, tilt_deg=12.0), "gantry_tilt"),
    (lambda v: dataclasses.replace(v, orientation=None), "orientation_unknown"),
    (lambda v: dataclasses.replace(v, hu=np.where(np.arange(256)[None, :, None] < 8, 3071.0,
                                                  v.hu).astype(np.float32)), "pixel_range"),
    (lambda v: dataclasses.replace(v, positions=v.positions + [0, 0, 1] * (
        np.arange(20)[:, None] >= 10) * 20.0), "gap"),
    (lambda v: dataclasses.replace(v, hu=v.hu[:, ::8, ::8],
                                   spacing=(v.spacing[0], v.spacing[1] * 8, v.spacing[2] * 8)),
     "small_matrix"),
    (lambda v: dataclasses.replace(v, hu=np.where(v.hu > 200, 40.0, v.hu).astype(np.float32)),
     "not_head"),                                            # no skull
])
def test_each_flag_alone(head, change, flag):
  assert qa.flags(change(head)) == [flag]


def test_flags_of_real_non_head_slices():
  """pydicom's abdominal and chest slices: flagged not_head (and few_slices: one slice)."""
  from pydicom.data import get_testdata_file
  for name in ("explicit_VR-UN.dcm", "CT_small.dcm"):
    vol = dicom.read_series([get_testdata_file(name)])
    got = qa.flags(vol)
    assert got[:2] == ["not_head", "few_slices"], (name, got)


def test_prepare_qa_cli_lists_excluded_cq500_series(tmp_path):
  write_cq500_download(tmp_path / "cq500", [{"ICH": (1, 1, 0)}, {}])
  cfg = tmp_path / "cfg.py"
  cfg.write_text(
      "from ctjax.configs.drct import drct_config\n"
      "def get_config():\n"
      "  c = drct_config(dataset='cq500', variant='drct1')\n"
      f"  c.data.root = {str(tmp_path / 'cq500')!r}\n"
      f"  c.data.cache_dir = {str(tmp_path / 'cache')!r}\n"
      "  c.data.image_size = 8\n"
      "  c.data.series.min_slices = 4\n"
      "  return c\n")
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "ctjax.prepare", "--config", str(cfg), "--qa",
                      "--qa_csv", str(tmp_path / "qa.csv")], capture_output=True, text=True,
                     cwd=REPO, env=env, timeout=120)
  assert r.returncode == 0, r.stderr
  # 8 reconstructions per study: PLAIN THIN, Plain, 0.625mm kept; the others left out.
  assert "series policy soft_tissue_axial: 6 of 16 series kept; per policy: " \
         "soft_tissue_axial 6, one_per_study 2, all 16" in r.stdout
  assert "Table 1: 1,181 CQ500 scans" in r.stdout
  assert "bone kernel (ConvolutionKernel 'BONE')" in r.stdout
  import csv
  with open(tmp_path / "qa.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 16
  kept = [r for r in table if r["kept"] == "1"]
  assert len(kept) == 6 and all(r["reason"].startswith("soft-tissue axial") for r in kept)
  assert {r["description"] for r in kept} == {"PLAIN THIN", "Plain", "0.625mm"}
