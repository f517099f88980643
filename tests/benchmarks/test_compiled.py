"""benchmarks.compiled: the table, the results file, the target checks everywhere; one tiny
program of the library compiled for a GPU and a TPU target where the `aot` extra is installed."""

import json

import pytest

from benchmarks import compiled

HAS_CUDA = compiled.installed("cuda")
HAS_TPU = compiled.installed("tpu")
NEEDS = "needs the aot extra (pip install -e '.[aot]': JAX's CUDA plugin and libtpu, ~5 GB)"

RECORD = {"target": "h100", "device": "NVIDIA H100 80GB HBM3", "chips": 1,
          "program": "drct2/train_store", "variant": "b256", "batch": 256, "items": 256,
          "unit": "scans", "dtype": "bfloat16", "peak_bytes": 2.5 * compiled.GIB, "fits": True,
          "launches": 191, "flops": 80.2e9, "bytes_accessed": 1.12e9, "floor_s": 3.36e-4,
          "items_per_s_floor": 761386.0, "memory_bound_share": 0.97, "compile_s": 45.0}


def test_the_table_says_compiled_estimates():
  table = compiled.render([RECORD, {"target": "h200", "program": "blend/train",
                                    "variant": "b64-bf16", "batch": 64, "dtype": "bfloat16",
                                    "error": "JaxRuntimeError: boom"}])
  assert table.startswith("**Compiled estimates**") and "no time measured" in table
  row = [line for line in table.splitlines() if "drct2/train_store b256" in line][0]
  assert "| 2.50 GiB | yes | 191 | 0.080 | 1.12 | 0.336 ms | 761,386 scans/s | 97 % |" in row
  assert "failed: JaxRuntimeError: boom" in table


def test_results_merge_replaces_a_rerun_program_only(tmp_path):
  path = tmp_path / "compiled-h100.jsonl"
  other = dict(RECORD, program="drct2/infer", variant="b32", launches=1)
  compiled.merge_results(path, [other, RECORD])
  compiled.merge_results(path, [dict(RECORD, launches=150)])
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [(r["program"], r["variant"], r["launches"]) for r in rows] == [
      ("drct2/infer", "b32", 1), ("drct2/train_store", "b256", 150)]


def test_programs_are_the_issues_list():
  keys = {c.key for c in compiled.cases()}
  assert {"drct2/infer-b1", "drct2/infer-b32", "drct2/infer-b256",
          "drct2/train_e2e-b256-chunk16", "drct2/train_e2e-b256-chunk64",
          "drct2/train_store-b256", "drct2/store_build-hu224", "drct2/store_build-hu512",
          "blend/train-b16-bf16", "blend/train-b16-fp32", "blend/train-b64-bf16",
          "blend/train-b64-fp32", "blend/infer-b1", "blend/infer-b64",
          "drct2/train_e2e-b256-chunk64-xla_gru", "drct2/train_store-b256-xla_gru"} == keys


def test_unknown_target_is_one_line(capsys):
  assert compiled.main(["--targets", "h100,x999"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "x999" in err[0]


def _tiny_case():
  """DrCT2's runlocal config training from the store at batch 16 (a whole block of rows for
  the GRU kernels): seconds to compile."""
  def config():
    c = compiled._config("drct2_rsna", "runlocal")
    c.train.batch_size = 16
    c.model.dtype = "bfloat16"
    c.features.enabled = True
    c.features.dtype = "bfloat16"
    return c
  return compiled.Case("drct2/train_store", "runlocal", 16, "bfloat16", "scans",
                       compiled._train(config))


@pytest.mark.skipif(not HAS_CUDA, reason=NEEDS)
def test_a_tiny_program_compiles_for_h100(tmp_path):
  target = compiled.TARGETS["h100"]
  rec = compiled.compile_case(target, _tiny_case(), compiled.topology_devices(target), tmp_path)
  assert rec["device"] == "NVIDIA H100 80GB HBM3" and rec["chips"] == 1
  assert rec["launches"] > 0 and rec["flops"] > 0 and rec["fits"]
  assert rec["launches_by_kind"].get("pallas") == 4   # the GRUs: forward and backward, twice
  assert (tmp_path / rec["hlo"]).read_text().startswith("HloModule")


@pytest.mark.skipif(not HAS_TPU, reason=NEEDS)
def test_a_tiny_program_compiles_sharded_for_eight_tpu_chips(tmp_path):
  target = compiled.TARGETS["tpu-v5e-8"]
  rec = compiled.compile_case(target, _tiny_case(), compiled.topology_devices(target), tmp_path)
  assert rec["chips"] == 8 and rec["items"] == 16
  assert rec["collective_bytes"] > 0   # the gradients' cross-chip reduction
  assert rec["xla_flops"] > 0 and "pallas" not in rec["launches_by_kind"]
