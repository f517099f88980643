"""`python -m ctjax.prepare`: builds the cache once, resumes, one-line errors."""

import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent / "data"))
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
