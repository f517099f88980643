"""The benchmark harness on its `tiny` preset: JSON schema, finite positive figures, the
ratio/FLOP-fraction arithmetic, and that the torch reference does the same work as ctjax."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, run  # repository root on sys.path: see conftest.py

FIELDS = {"name", "device", "value", "unit", "torch_value", "ratio_vs_torch", "flop_fraction",
          "roofline_fraction", "compile_s"}


def test_time_fn_median_and_bound():
  calls = []

  def fn():
    calls.append(1)
    return jnp.ones(4) * len(calls)

  t = common.time_fn(fn, warmup=2, repeats=5)
  assert len(calls) == 7 and t.n == 5
  assert t.median == sorted(t.times)[2] and t.median > 0
  # max_seconds=0 still gives exactly one timed call after the warm-up.
  calls.clear()
  t = common.time_fn(fn, warmup=1, repeats=50, max_seconds=0.0)
  assert len(calls) == 2 and t.n == 1


def test_speed_record_arithmetic():
  r = common.speed_record("x", seconds=2.0, items=8, unit="scans/s", torch_seconds=4.0,
                          flops=1e9, peak=1e9, device="cpu")
  assert r.value == 4.0 and r.torch_value == 2.0
  assert r.ratio_vs_torch == 2.0          # ctjax twice as fast as torch
  assert r.flop_fraction == pytest.approx(0.5)   # 1e9 FLOP in 2 s against a 1e9 FLOP/s peak
  lat = common.latency_record("y", seconds_per_item=0.5, torch_seconds_per_item=1.0,
                              device="cpu")
  assert lat.ratio_vs_torch == 2.0
  assert set(r.as_json()) == FIELDS


def test_xla_flops_counts_a_matmul():
  a = jnp.ones((32, 48))
  b = jnp.ones((48, 16))
  assert common.xla_flops(lambda x, y: x @ y, a, b) == pytest.approx(2 * 32 * 48 * 16)


def test_override_rejects_unknown_field():
  import ml_collections
  from ctjax.errors import ConfigError
  c = ml_collections.ConfigDict({"a": {"b": 1}})
  assert common.override(c, {"a.b": 2}).a.b == 2
  with pytest.raises(ConfigError):
    common.override(c, {"a.c": 2})


def test_tiny_suite_cli_writes_schema(tmp_path, capsys):
  out = tmp_path / "bench.json"
  rc = run.main(["--preset", "tiny", "--only", "drct2.infer", "--json", str(out),
                 "--workdir", str(tmp_path)])
  assert rc == 0
  printed = capsys.readouterr().out
  assert "drct2/infer/fp32" in printed and "ctjax/torch" in printed
  payload = json.loads(out.read_text())
  header, records = payload["header"], payload["records"]
  env = header["environment"]
  assert env["jax"] == jax.__version__ and env["torch"] and env["device"].startswith("cpu")
  for dtype in ("float32", "bfloat16"):
    assert header["matmul_peak_flops"][dtype]["peak"] > 0
  names = {r["name"] for r in records}
  assert names == {"drct2/infer/fp32", "drct2/s_per_scan/fp32"}
  assert not header["skipped"]
  for r in records:
    assert set(r) == FIELDS, r
    for key in ("value", "torch_value", "ratio_vs_torch"):
      assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r)
    if r["unit"].endswith("/s"):   # throughput: ratio is the speed ratio
      assert r["ratio_vs_torch"] == pytest.approx(r["value"] / r["torch_value"])
      assert 0 < r["flop_fraction"] < 10
      # Compilation timed on its own, not the first execution (which is in the details).
      details = header["details"][r["name"]]
      assert r["compile_s"] > 0 and details["first_call_s"] > 0
    else:                          # latency: ratio is still ctjax speed / torch speed
      assert r["ratio_vs_torch"] == pytest.approx(r["torch_value"] / r["value"])
      assert r["flop_fraction"] is None
    assert r["name"] in header["details"]
  assert header["details"]["drct2/s_per_scan/fp32"]["paper_s_per_scan"] == 0.82


def test_torch_reference_does_the_same_work(tmp_path):
  """FLOPs of TorchDrCT2 (torch's counter) ≈ XLA's count of ctjax's DrCT2 predict.

  A reference that skipped the APS pass or used other widths would be off by ≥ 2×; the
  remaining gap is elementwise work (windows, softmax) that only XLA counts, and the padding
  taps XLA leaves out of small feature maps.
  """
  import torch
  from benchmarks import drct2
  from tests.support.torch_models import torch_flops
  settings = run.preset_settings("tiny")
  ctx = common.Context(preset="tiny", settings=settings, workdir=pathlib.Path(tmp_path))
  config = drct2.drct_config(ctx)
  m = common.build_ctjax(config)
  batch = common.to_device(drct2.make_batch(config, 1))
  fx = common.xla_flops(m.predict, m.variables, batch)
  net = drct2.build_torch(m.model, config)
  out = net(torch.from_numpy(np.array(batch["hu"])))
  ft = torch_flops(net, torch.from_numpy(np.array(batch["hu"])))
  assert 0.8 < fx / ft < 1.25, (fx, ft)
  # Same output structure and shapes as ctjax's predict (the drct task's outputs).
  ref = m.predict(m.variables, batch)
  for key in ("probs", "probs_primary", "probs_aps", "slice_attention", "key_indices",
              "highlight", "feature_attention"):
    assert tuple(out[key].shape) == tuple(ref[key].shape), key


def test_tiny_blend_figures_run_beside_torch(tmp_path):
  """The blend-sign figures build both models from the current config fields (a renamed
  field would be caught by the suite's guard and the figure silently skipped)."""
  out = tmp_path / "blend.json"
  assert run.main(["--preset", "tiny", "--only", "blend.infer", "--json", str(out),
                   "--workdir", str(tmp_path)]) == 0
  payload = json.loads(out.read_text())
  assert not payload["header"]["skipped"], payload["header"]["skipped"]
  (record,) = [r for r in payload["records"] if r["name"].startswith("blend/infer")]
  assert record["value"] > 0 and record["torch_value"] > 0
