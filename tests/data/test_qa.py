"""ctjax.data.qa: one QA row per series in the prepared cache, a test per flag."""

import subprocess
import sys
import pathlib
import os

import numpy as np
import pytest

from ctjax.data import cache, datasets, qa
from ctdicom_helpers import ramp_volume, write_series, write_slice, write_cq500_download

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
  for k in range(3):                                         # RSNA's 12-bit unsigned quirk
    write_slice(root / "rsna12" / f"IM{k}.dcm", vol[k], position=(0, 0, 5 * k),
                series_uid="1.5", instance=k + 1, intercept=0.0, BitsStored=12, HighBit=11,
                PixelRepresentation=0)
  for k in range(3):                                         # a NaN intercept (lenient: skip)
    write_slice(root / "nan" / f"IM{k}.dcm", vol[k], position=(0, 0, 5 * k), series_uid="1.6",
                instance=k + 1, header_intercept="nan" if k == 1 else None)
  names = ["plain", "tilted", "dup", "gap", "rsna12", "nan"]
  (root / "labels.csv").write_text("scan_id,patient_id,bleed\n"
                                   + "".join(f"{n},p_{n},0\n" for n in names))
  ds = datasets.load("folder", root)
  out = root / ".cache"
  cache.prepare(ds, out, image_size=8, lenient=True, progress=False)
  rows = {r["scan_id"]: r for r in qa.read(out)}
  return rows, out


def _flags(row):
  return set(row["flags"].split(";")) - {""}


def test_plain_series_has_no_flag(qa_rows):
  rows, _ = qa_rows
  r = rows["plain"]
  assert _flags(r) == set() and r["slices"] == 5 and r["spacing_mm"] == 5.0
  assert r["kept"] and r["label_source"].startswith("labels.csv row")


def test_tilted_series(qa_rows):
  r = qa_rows[0]["tilted"]
  assert _flags(r) == {"tilt"} and r["tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.4)),
                                                                   abs=1e-3)


def test_duplicate_position(qa_rows):
  r = qa_rows[0]["dup"]
  assert "duplicate_position" in _flags(r) and r["duplicate_positions"] == 1 and r["slices"] == 5
  assert "duplicate" in r["skip_reasons"]


def test_irregular_gap(qa_rows):
  r = qa_rows[0]["gap"]
  assert _flags(r) == {"irregular_gap"} and r["max_gap_deviation_mm"] == 5.0


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
  assert "6 series, 6 kept; flags: tilt 1, duplicate_position 1, irregular_gap 1, " \
         "bad_intercept 2" in table
  csv_text = (out / "qa.csv").read_text().splitlines()
  assert csv_text[0].split(",") == list(qa.COLUMNS) and len(csv_text) == 7


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
