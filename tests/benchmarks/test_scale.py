"""benchmarks.scale: random caches at two N, the store stage in its own process, records in the
suite's schema and the RSNA extrapolation."""

import json

from benchmarks import scale


def test_smoke_store_stage_writes_records_in_the_suite_schema(tmp_path):
  out = tmp_path / "scale.json"
  assert scale.main(["--smoke", "--scans", "8,16", "--stages", "store", "--json", str(out),
                     "--workdir", str(tmp_path)]) == 0
  doc = json.loads(out.read_text())
  names = [r["name"] for r in doc["records"]]
  assert names == ["scale/store/n8", "scale/store/n8/peak_rss", "scale/store/n16",
                   "scale/store/n16/peak_rss", "scale/store/rss_slope"]
  for r in doc["records"]:
    assert set(r) >= {"name", "device", "value", "unit", "torch_value", "ratio_vs_torch",
                      "flop_fraction"}
  store = [r for r in doc["records"] if r["name"] == "scale/store/n16"][0]
  assert store["unit"] == "slices/s" and store["value"] > 0
  assert store["details"]["slices"] >= 16 * 8 and store["details"]["peak_rss_mb"] > 50
  s = doc["summary"]["store"]
  assert s["rsna_build_hours"] == round(scale.RSNA_SLICES / s["rate_at_largest_n"] / 3600, 3)


def test_summary_extrapolates_from_the_per_scan_slope():
  rows = [{"stage": "heads", "scans": n, "value": 100.0, "unit": "scans/s",
           "peak_rss_mb": 500.0 + 0.01 * n} for n in (1000, 2000)]
  s = scale.summarize(rows)["heads"]
  assert s["rss_mb_per_1k_scans"] == 10.0
  assert abs(s["rss_at_rsna_mb"] - (500 + 0.01 * scale.RSNA_SCANS)) < 1e-6
  assert s["rsna_epoch_hours"] == round(scale.RSNA_SCANS / 100.0 / 3600, 3)


def test_a_childs_peak_memory_is_its_own_not_its_parents():
  """`ru_maxrss` survives fork + exec: a child of a 1.6 GB process would report 1.6 GB. The
  benchmarks' peak is the child's own address space (VmHWM)."""
  import subprocess
  import sys
  import numpy as np
  big = np.ones(100_000_000, np.float64)              # 800 MB resident in this process
  big[::4096] = 2.0
  code = "from benchmarks.prepare_memory import peak_rss_mb; print(peak_rss_mb())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert float(out.stdout.strip()) < 300, out.stdout
  del big
