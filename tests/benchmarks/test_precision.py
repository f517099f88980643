"""benchmarks.precision: a trained DrCT run's split in float32 and bfloat16, compared."""

import json

import numpy as np

from benchmarks import precision
from ctjax.inference import runs
from tests.support.run_folders import write_run


def test_compare_counts_differences_and_flipped_calls():
  ref = np.array([[0.10, 0.60], [0.49, 0.90]])
  low = np.array([[0.12, 0.40], [0.51, 0.90]])
  reports = {d: {"macro_f1": f, "macro_auc": a}
             for d, f, a in (("float32", 0.8, 0.9), ("bfloat16", 0.7, 0.85))}
  out = precision.compare(reports, {"float32": ref, "bfloat16": low}, [0.5, 0.5])
  assert out["max_abs_dp"] == np.float64(0.2).item() or abs(out["max_abs_dp"] - 0.2) < 1e-12
  assert abs(out["mean_abs_dp"] - (0.02 + 0.2 + 0.02 + 0.0) / 4) < 1e-12
  assert (out["calls_flipped"], out["calls"], out["scans"]) == (2, 4, 2)
  assert out["macro_f1"] == {"float32": 0.8, "bfloat16": 0.7}
  table = precision.format_table(out, {"float32": 1.0, "bfloat16": 2.0})
  assert "| bfloat16 | 0.700 | 0.850 | 0.2000 | 0.06000 | 2 of 4 | 2.0 |" in table


def test_a_run_predicted_in_both_dtypes(tmp_path):
  from ctjax.configs.drct import drct_config, runlocal_overrides
  config = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  config.data.num_slices, config.data.image_size = 6, 32
  config.model.primary_size, config.model.aps_size, config.model.mkey = 32, 48, 3
  config.data.root = str(tmp_path / "data")
  config.data.cache_dir = str(tmp_path / "cache")
  workdir = tmp_path / "run"
  write_run(workdir, config)
  runs.split_data(runs.load_run(workdir), prepare=True)      # the cache the command reads
  out = tmp_path / "precision.json"
  assert precision.main(["--workdir", str(workdir), "--json", str(out)]) == 0
  rec = json.loads(out.read_text())
  test_scans = len(runs.split_data(runs.load_run(workdir))[1]["test"])
  assert rec["scans"] == test_scans > 0 and rec["calls"] == test_scans * len(config.data.labels)
  assert 0.0 < rec["max_abs_dp"] < 0.2            # bfloat16 rounds, and only rounds
  assert set(rec["macro_f1"]) == {"float32", "bfloat16"} and rec["platform"] == "cpu"
