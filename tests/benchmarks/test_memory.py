"""benchmarks.memory: with the backbone chunked, the compiled train step's temporaries stay
nearly flat from batch 8 to 256; without chunking they grow with the batch.

Run as the command (its own process), since the CPU flag that makes every activation a counted
buffer must be set before the XLA backend starts.
"""

import json
import os
import pathlib
import subprocess
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _rows(tmp_path, batches, chunks):
  out = tmp_path / f"m_{batches}_{chunks}.json".replace(",", "-")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "CTJAX_DISTRIBUTED": "off"}
  subprocess.run([sys.executable, "-m", "benchmarks.memory", "--small", "--batches", batches,
                  "--chunks", chunks, "--json", str(out)], cwd=_ROOT, env=env, check=True,
                 capture_output=True, timeout=600)
  return {(r["batch"], r["backbone_chunk"]): r for r in json.loads(out.read_text())["rows"]}


def test_chunked_train_step_memory_scales_with_the_chunk_not_the_batch(tmp_path):
  rows = _rows(tmp_path, "8,256", "16,0")
  assert all(r["uncounted_fusions"] == 0 and r["devices"] == 4 for r in rows.values()), rows
  small, large, unchunked = rows[8, 16], rows[256, 16], rows[256, 0]
  # The small config per device at batch 256: 64 scans × 8 slices at 32² and 64 × 4 zoomed
  # slices at 48²; VGG16 at 1/16 width has 4 channels after conv1 (float32).
  conv1_out = 64 * 8 * 32 * 32 * 4 * 4 + 64 * 4 * 48 * 48 * 4 * 4      # 17.8 MB
  # Measured here (4 CPU devices, per device): chunked 0.7 MB at batch 8, 3.2 MB at 256;
  # unchunked 20.4 MB at 256.
  assert unchunked["temp_bytes"] >= conv1_out, unchunked
  assert large["temp_bytes"] < conv1_out / 4, large
  assert large["temp_bytes"] < 6 * small["temp_bytes"], (small, large)    # for 32× the batch
