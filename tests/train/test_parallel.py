"""ctjax.train.parallel: mesh/sharding helpers and 2 processes × 2 devices ≡ 1 process × 4."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.support import stand_ins
from ctjax.errors import ConfigError
from ctjax.train import parallel

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mp_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_mesh_and_host_to_global():
  config = stand_ins.tiny_config()
  mesh = parallel.make_mesh(config)
  assert mesh.axis_names == ("data",) and mesh.devices.size == 4
  batch = {"hu": np.arange(8 * 3, dtype=np.int16).reshape(8, 3), "ids": np.array(["a"] * 8)}
  out = parallel.host_to_global(batch, mesh)
  assert set(out) == {"hu"}                          # strings stay on the host
  assert out["hu"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert [s.data.shape for s in out["hu"].addressable_shards] == [(2, 3)] * 4
  np.testing.assert_array_equal(parallel.to_host(out)["hu"], batch["hu"])
  config.parallel.num_devices = 2
  assert parallel.make_mesh(config).devices.size == 2
  config.parallel.num_devices = 5
  with pytest.raises(ConfigError, match="num_devices"):
    parallel.make_mesh(config)
  with pytest.raises(ConfigError, match="divisible"):
    parallel.local_batch_size(6, mesh)


def test_initialize_distributed_argument_errors(monkeypatch):
  for var in ("CTJAX_COORDINATOR_ADDRESS", "CTJAX_NUM_PROCESSES", "CTJAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize_distributed() is False      # single process: nothing to start
  with pytest.raises(ConfigError, match="coordinator"):
    parallel.initialize_distributed(num_processes=2, process_id=0)
  with pytest.raises(ConfigError, match="process_id"):
    parallel.initialize_distributed("127.0.0.1:1", num_processes=2, process_id=2)


SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "2",
              "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


@pytest.fixture
def fake_initialize(monkeypatch):
  """jax.distributed.initialize replaced by a recorder (nothing is started)."""
  calls = []
  monkeypatch.setattr(parallel, "_INITIALIZED", False)
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *args, **kwargs: calls.append((args, kwargs)))
  for var in ("CTJAX_COORDINATOR_ADDRESS", "CTJAX_NUM_PROCESSES", "CTJAX_PROCESS_ID",
              "CTJAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "OMPI_MCA_orte_hnp_uri",
              *SLURM_STEP):
    monkeypatch.delenv(var, raising=False)
  return calls


def test_a_slurm_step_joins_the_cluster_without_flags(fake_initialize, monkeypatch):
  """As in JAX's own cluster tests: the variables srun sets for a 2-task step."""
  for k, v in SLURM_STEP.items():
    monkeypatch.setenv(k, v)
  assert parallel.cluster_environment() == "SLURM"
  assert parallel.initialize_distributed() is True
  assert fake_initialize == [((None,), {"num_processes": None, "process_id": None})]


def test_cluster_discovery_rules(fake_initialize, monkeypatch):
  assert parallel.cluster_environment() is None and not parallel.initialize_distributed()
  for k, v in {**SLURM_STEP, "SLURM_NTASKS": "1"}.items():   # a one-task allocation
    monkeypatch.setenv(k, v)
  assert parallel.cluster_environment() is None
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "123.0;tcp://10.0.0.1:5000")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
  assert parallel.cluster_environment() == "Open MPI"
  monkeypatch.setenv("CTJAX_DISTRIBUTED", "off")
  assert parallel.cluster_environment() is None
  monkeypatch.delenv("CTJAX_DISTRIBUTED")
  # Explicit arguments win over the discovered cluster.
  assert parallel.initialize_distributed("127.0.0.1:9", 2, 1) is True
  assert fake_initialize == [(("127.0.0.1:9",), {"num_processes": 2, "process_id": 1})]


def _real_overrides(root) -> dict:
  """Tiny model on the real pipeline: phantom RSNA slices ("pretrain" records), 3 steps of
  global batch 8, val evaluated once at the end (every_steps=0)."""
  return {"task": "pretrain", "data.layout": "phantom", "data.root": str(root),
          "data.image_size": 32, "train.num_epochs": 1, "train.max_steps": 3,
          "evals.val.every_steps": 0, "checkpoint.every_steps": -1,
          "checkpoint.best_metric": "", "checkpoint.async_save": False,
          "log.tensorboard": False}


def test_two_processes_match_one_process_real_pipeline(tmp_path):
  """2 processes × 2 CPU devices (jax.distributed on localhost, gloo) through the REAL
  ctjax.data.pipeline (ProcessRows: process p takes rows [p*b,(p+1)*b) of one global stream)
  give the training losses and the val predictions of 1 process × 4 devices."""
  from ctjax.data import phantom, pipeline
  from ctjax.train import loop
  root = tmp_path / "data"
  phantom.write_dataset(root, layout="rsna", num_scans=5, seed=3, size=32, num_workers=0,
                        slice_range=(8, 12))
  overrides = _real_overrides(root)
  config = stand_ins.tiny_config(**overrides)
  splits = pipeline.build_splits(config, str(tmp_path))   # prepares the cache once, here
  assert len(splits["train"]) >= 3 * 8 and len(splits["val"]) % 8   # padded last val batch
  ref_dir = tmp_path / "one"
  ref = loop.train_and_evaluate(config, ref_dir, task=stand_ins.TinySliceTask())
  two_dir = tmp_path / "two"
  env = {k: v for k, v in os.environ.items() if not k.startswith("CTJAX_")}
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, WORKER, address, "2", str(i), str(two_dir),
                             json.dumps({**overrides, "_real": True})], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  got, want = stand_ins.read_losses(two_dir), stand_ins.read_losses(ref_dir)
  assert sorted(got) == sorted(want) == [1, 2, 3]
  np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [want[s] for s in (1, 2, 3)],
                             rtol=1e-5)
  # The val pass saw every example once (padding dropped) and predicted the same.
  two = json.loads((two_dir / "final_metrics.json").read_text())["metrics"]
  n = len(splits["val"])
  assert ref["val/count"] == two["val/count"] == n
  assert ref["val/index_sum"] == two["val/index_sum"] == n * (n - 1) / 2
  assert ref["val/positives"] == two["val/positives"]
  np.testing.assert_allclose(two["val/mean_prob"], ref["val/mean_prob"], rtol=1e-5)
  # Both processes wrote their iterator state into the final checkpoint.
  data_dir = two_dir / "checkpoints" / "latest" / "3" / "data"
  assert sorted(p.name for p in data_dir.iterdir() if p.suffix == ".json") == [
      "process_0-of-2.json", "process_1-of-2.json"]
