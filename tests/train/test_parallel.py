"""ctjax.train.parallel: mesh/sharding helpers and 2 processes × 2 devices ≡ 1 process × 4."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import stand_ins
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


@pytest.mark.slow   # two JAX processes start, connect and compile: ~1-2 min on a busy 2-core box
def test_two_processes_match_one_process(reference_run, tmp_path):
  """2 processes × 2 CPU devices (jax.distributed on localhost, gloo) give the losses of the
  1 process × 4 devices reference run for the first 3 steps."""
  ref_dir, _, _ = reference_run
  overrides = {"train.num_epochs": 1, "train.max_steps": 3, "evals.val.every_steps": -1,
               "checkpoint.best_metric": "", "log.tensorboard": False}
  env = {k: v for k, v in os.environ.items() if not k.startswith("CTJAX_")}
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, WORKER, address, "2", str(i), str(tmp_path),
                             json.dumps(overrides)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  got = stand_ins.read_losses(tmp_path)
  ref = stand_ins.read_losses(ref_dir)
  assert sorted(got) == [1, 2, 3]
  np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [ref[s] for s in (1, 2, 3)],
                             rtol=1e-5)
  # Both processes wrote their iterator state into the final checkpoint.
  data_dir = tmp_path / "checkpoints" / "latest" / "3" / "data"
  assert sorted(p.name for p in data_dir.iterdir() if p.suffix == ".json") == [
      "process_0-of-2.json", "process_1-of-2.json"]
