"""`python -m ctjax.prepare`: builds the cache once, resumes, one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent / "data"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from ctdicom_helpers import write_rsna_tree  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(config: pathlib.Path, *extra):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "ctjax.prepare", "--config", str(config), *extra],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_prepare_cli(tmp_path):
  write_rsna_tree(tmp_path / "rsna", num_scans=3, slices=3, size=16)
  cfg = tmp_path / "cfg.py"
  cfg.write_text(
      "from ctjax.configs.common import base_config\n"
      "def get_config():\n"
      "  c = base_config()\n"
      "  c.task = 'drct'\n"
      "  c.data.layout = 'rsna'\n"
      f"  c.data.root = {str(tmp_path / 'rsna')!r}\n"
      f"  c.data.cache_dir = {str(tmp_path / 'cache')!r}\n"
      "  c.data.image_size = 8\n"
      "  return c\n")
  r = _run(cfg)
  assert r.returncode == 0, r.stderr
  assert "3 scans, 9 slices at 8 px" in r.stdout
  (manifest,) = (tmp_path / "cache").glob("*/manifest.json")
  m = json.loads(manifest.read_text())
  assert m["complete"] and m["num_slices"] == 9
  stamp = manifest.stat().st_mtime_ns
  from ctjax.data import pipeline                 # complete: found and left alone
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", cfg)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert pipeline.ensure_cache(mod.get_config()) == manifest.parent
  assert manifest.stat().st_mtime_ns == stamp
  r = _run(cfg, "--config.data.root=" + str(tmp_path / "missing"))
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "config.data.root" in lines[0]


RSS_BOUND_MB = 100   # measured 57 MB at 10,000 files of 16 px (benchmarks/results/prepare_memory.json)


@pytest.mark.slow
def test_rsna_prepare_peak_rss_is_bounded(tmp_path):
  """10,000 RSNA-layout files (the size the memory question asks for; ~40 s on 2 busy cores,
  hence slow): label CSV stream, header scan, decode, shards and QA stay under RSS_BOUND_MB.
  A record that kept 5 KB per file more than today would cross it."""
  from benchmarks import prepare_memory
  (row,) = prepare_memory.run([10_000], 16)
  print(f"peak RSS {row['peak_rss_mb']} MB for {row['files']} files, "
        f"{row['files_per_cpu_s']} files/CPU-s")
  assert row["files"] == 10_000 and row["scans"] == 250
  assert row["peak_rss_mb"] < RSS_BOUND_MB


def test_prepare_cli_bad_label_cell_one_line(tmp_path):
  write_rsna_tree(tmp_path / "rsna", num_scans=2, slices=2, size=8)
  csv = tmp_path / "rsna" / "stage_2_train.csv"
  lines = csv.read_text().splitlines()
  lines[3] = lines[3].rsplit(",", 1)[0] + ",2"
  csv.write_text("\n".join(lines) + "\n")
  cfg = tmp_path / "cfg.py"
  cfg.write_text(
      "from ctjax.configs.common import base_config\n"
      "def get_config():\n"
      "  c = base_config()\n"
      "  c.data.layout = 'rsna'\n"
      f"  c.data.root = {str(tmp_path / 'rsna')!r}\n"
      f"  c.data.cache_dir = {str(tmp_path / 'cache')!r}\n"
      "  c.data.image_size = 8\n"
      "  return c\n")
  r = _run(cfg)
  assert r.returncode == 1
  lines = [ln for ln in r.stderr.strip().splitlines() if not ln[:4].isdigit()]   # log lines
  assert len(lines) == 1 and lines[0].startswith("error: ")
  assert f"{csv}: row 4, column 'Label': '2' is not one of 0/1" in lines[0]


def test_prepare_cli_lenient_skips_text_dcm(tmp_path):
  write_rsna_tree(tmp_path / "rsna", num_scans=2, slices=2, size=8)
  bad = sorted((tmp_path / "rsna" / "stage_2_train").iterdir())[0]
  bad.write_text("not a DICOM file\n")
  cfg = tmp_path / "cfg.py"
  cfg.write_text(
      "from ctjax.configs.common import base_config\n"
      "def get_config():\n"
      "  c = base_config()\n"
      "  c.data.layout = 'rsna'\n"
      f"  c.data.root = {str(tmp_path / 'rsna')!r}\n"
      f"  c.data.cache_dir = {str(tmp_path / 'cache')!r}\n"
      "  c.data.image_size = 8\n"
      "  return c\n")
  r = _run(cfg)
  assert r.returncode == 1 and str(bad) in r.stderr and "lenient" in r.stderr
  r = _run(cfg, "--config.data.lenient=True")
  assert r.returncode == 0, r.stderr
  assert "skipped 1 unreadable file(s) (lenient): NotDicomError 1" in r.stdout
  assert "2 scans, 3 slices" in r.stdout
