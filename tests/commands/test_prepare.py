"""`python -m ctjax.prepare`: builds the cache once, resumes, one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.support.ctdicom_helpers import write_rsna_tree  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(config: pathlib.Path, *extra):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "ctjax.prepare", "--config", str(config), *extra],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def _config_file(tmp_path, root, cache, workers=0, layout="rsna", image_size=16):
  cfg = tmp_path / "cfg.py"
  cfg.write_text(
      "from ctjax.configs.common import base_config\n"
      "def get_config():\n"
      "  c = base_config()\n"
      "  c.task = 'drct'\n"
      f"  c.data.layout = {layout!r}\n"
      f"  c.data.root = {str(root)!r}\n"
      f"  c.data.cache_dir = {str(cache)!r}\n"
      f"  c.data.image_size = {image_size}\n"
      f"  c.data.num_workers = {workers}\n"
      "  c.log.progress_bar = False\n"
      "  return c\n")
  return cfg


def test_prepare_cli(tmp_path):
  write_rsna_tree(tmp_path / "rsna", num_scans=3, slices=3, size=16)
  cfg = _config_file(tmp_path, tmp_path / "rsna", tmp_path / "cache", image_size=8)
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
  """10,000 RSNA-layout files (the size the memory question asks for; ~40 s on 2 CPU cores,
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
  cfg = _config_file(tmp_path, tmp_path / "rsna", tmp_path / "cache", image_size=8)
  r = _run(cfg)
  assert r.returncode == 1
  lines = [ln for ln in r.stderr.strip().splitlines() if not ln[:4].isdigit()]   # log lines
  assert len(lines) == 1 and lines[0].startswith("error: ")
  assert f"{csv}: row 4, column 'Label': '2' is not one of 0/1" in lines[0]


def test_prepare_cli_lenient_skips_text_dcm(tmp_path):
  write_rsna_tree(tmp_path / "rsna", num_scans=2, slices=2, size=8)
  bad = sorted((tmp_path / "rsna" / "stage_2_train").iterdir())[0]
  bad.write_text("not a DICOM file\n")
  cfg = _config_file(tmp_path, tmp_path / "rsna", tmp_path / "cache", image_size=8)
  r = _run(cfg)
  assert r.returncode == 1 and str(bad) in r.stderr and "lenient" in r.stderr
  r = _run(cfg, "--config.data.lenient=True")
  assert r.returncode == 0, r.stderr
  assert "skipped 1 unreadable file(s) (lenient): NotDicomError 1" in r.stdout
  assert "2 scans, 3 slices" in r.stdout


# ------------------------------------------------------- disk full, Ctrl-C, a corrupt slice

import errno  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.support import storage_helpers  # noqa: E402
from ctjax.commands import cli
from ctjax.commands import prepare as prepare_cli


def _error_lines(text):
  return [ln for ln in text.splitlines() if ln.startswith("error:") or "Traceback" in ln]


def test_disk_full_names_the_cache_and_the_space(tmp_path, monkeypatch, capsys):
  """The second shard's write fails with ENOSPC: one line naming the cache folder, the space
  the whole cache needs (10 scans × 2 slices × 16² × 2 bytes) and the space free."""
  write_rsna_tree(tmp_path / "rsna", num_scans=10, slices=2, size=16)
  cfg = _config_file(tmp_path, tmp_path / "rsna", tmp_path / "cache")
  real_save, calls = np.save, []

  def save(path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(path, *args, **kwargs)
  monkeypatch.setattr(np, "save", save)
  rc = prepare_cli.main(["--config", str(cfg)])
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
  assert rc == cli.EXIT_ERROR and len(err) == 1, err
  (cache,) = (tmp_path / "cache").iterdir()
  assert err[0].startswith(f"error: {cache}: disk full while writing the prepared cache")
  assert "needs about 10.0 KB" in err[0] and "free on that file system" in err[0]
  assert (cache / "shard_00000.json").is_file()       # the finished shard is kept


def test_real_full_disk_during_prepare(tmp_path):
  """The cache on a 24 KB tmpfs (the cache needs ~40 KB): one line, exit status 1."""
  write_rsna_tree(tmp_path / "rsna", num_scans=10, slices=8, size=16)
  with storage_helpers.small_disk(tmp_path / "small", "24k") as small:
    r = _run(_config_file(tmp_path, tmp_path / "rsna", small / "cache"))
  assert r.returncode == 1, r.stderr[-2000:]
  lines = _error_lines(r.stderr)
  assert len(lines) == 1 and "disk full while writing the prepared cache" in lines[0], lines
  assert str(small / "cache") in lines[0] and "needs about" in lines[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_keeps_finished_shards(tmp_path, workers):
  """SIGINT to the process group (as a terminal's Ctrl-C) once the first shard is written:
  status 130, one line, no traceback (workers' included); a re-run keeps that shard and
  completes the cache."""
  from ctjax.data import phantom
  root = tmp_path / "phantom"
  phantom.write_dataset(root, layout="rsna", num_scans=32, seed=1, size=64, num_workers=0,
                        slice_range=(24, 28))
  cfg = _config_file(tmp_path, root, tmp_path / "cache", workers=workers, layout="phantom")
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  # As from a terminal: a shell without job control (nohup, a CI runner's background job)
  # starts its children with SIGINT ignored, and an ignored SIGINT survives exec.
  proc = subprocess.Popen([sys.executable, "-m", "ctjax.prepare", "--config", str(cfg)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      if list((tmp_path / "cache").glob("*/shard_0000[0-9].json")):
        break
      time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == cli.EXIT_INTERRUPTED, err[-2000:]
  assert _error_lines(err) == [f"error: {cli.INTERRUPTED}"], err[-2000:]
  (cache,) = (tmp_path / "cache").iterdir()
  kept = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard_*.json")}
  assert kept and not (cache / "manifest.json").exists()
  r = _run(cfg)
  assert r.returncode == 0, r.stderr[-2000:]
  assert all(cache.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())
  assert json.loads((cache / "manifest.json").read_text())["num_scans"] == 32


def test_corrupt_jpeg2000_slice_is_one_line_end_to_end(tmp_path, capfd):
  """A half JPEG 2000 codestream in a folder-layout scan: prepare prints one line naming the
  file, and nothing of pydicom's own (no traceback, no pydicom log)."""
  import pydicom
  from pydicom.data import get_testdata_file
  from pydicom.encaps import encapsulate, generate_frames
  root = tmp_path / "folder"
  paths = []
  for k in range(3):
    ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.9.{k}"
    ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
    ds.InstanceNumber = k + 1
    if k == 1:
      frame = next(generate_frames(ds.PixelData, number_of_frames=1))
      ds.PixelData = encapsulate([frame[:len(frame) // 2]])
    p = root / "s1" / f"J{k}.dcm"
    p.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(p)
    paths.append(p)
  (root / "labels.csv").write_text("scan_id,any\ns1,1\n")
  cfg = _config_file(tmp_path, root, tmp_path / "cache", layout="folder")
  capfd.readouterr()
  rc = prepare_cli.main(["--config", str(cfg)])
  out, err = capfd.readouterr()
  assert rc == cli.EXIT_ERROR
  lines = [ln for ln in err.splitlines() if ln.strip() and " INFO " not in ln]
  assert len(lines) == 1 and lines[0].startswith(f"error: {paths[1]}"), err
  assert "PixelData" in lines[0]
  assert "pydicom" not in out + err.replace(str(paths[1]), "") and "Traceback" not in err


def test_prepare_qa_flags_one_slice_small_matrix_and_non_head(tmp_path):
  """`--qa` flags a single-slice series (few_slices), a 16 px matrix (small_matrix) and
  pydicom's abdominal slice (not_head); a phantom head of 20 slices at 256 px has no flag."""
  import shutil
  import numpy as np
  from pydicom.data import get_testdata_file
  from ctjax.data import phantom
  from tests.support.ctdicom_helpers import write_series
  root = tmp_path / "data"
  for name, size, slices in (("head", 256, 20), ("one_slice", 256, 1), ("tiny", 16, 20)):
    hu, truth = phantom.generate_scan(np.random.default_rng(5), size=size, num_slices=20)
    hu = hu[10:11] if slices == 1 else hu
    d = truth["pixel_spacing"]
    write_series(root / name, hu, spacing=truth["thickness"], pixel_spacing=(d, d),
                 series_uid=f"1.2.{size}.{slices}")
  (root / "abdomen").mkdir()
  shutil.copy(get_testdata_file("explicit_VR-UN.dcm"), root / "abdomen" / "IM0.dcm")
  (root / "labels.csv").write_text(                           # patient_id: no patient_is_scan flag
      "scan_id,patient_id,bleed\nhead,p1,0\none_slice,p2,0\ntiny,p3,0\nabdomen,p4,0\n")
  cfg = _config_file(tmp_path, root, tmp_path / "cache", layout="folder", image_size=16)
  r = _run(cfg, "--qa", "--qa_csv", str(tmp_path / "qa.csv"))
  assert r.returncode == 0, r.stderr
  assert "QA: 3 of 4 series flagged: not_head 1, few_slices 2, small_matrix 1" in r.stdout
  import csv
  with open(tmp_path / "qa.csv", newline="") as f:
    flags = {row["scan_id"]: row["flags"] for row in csv.DictReader(f)}
  assert flags == {"head": "", "one_slice": "few_slices", "tiny": "small_matrix",
                   "abdomen": "not_head;few_slices"}
  table = r.stdout.splitlines()
  assert any(line.startswith("abdomen") and "not_head;few_slices" in line for line in table)
