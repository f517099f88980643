"""One process of the multi-process trainer test (spawned by test_parallel.py).

argv: coordinator_address ("-": a single process with 4 devices) num_processes process_id
workdir overrides_json (config overrides; "_delay": seconds of sleep per training batch;
"_real": true trains `stand_ins.TinySliceTask` on the real ctjax.data.pipeline).
"""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4" if sys.argv[1] == "-"
                           else "--xla_force_host_platform_device_count=2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
  import json
  address, nproc, pid, workdir, overrides = sys.argv[1:6]
  from ctjax.train import parallel
  if address != "-":
    parallel.initialize_distributed(address, int(nproc), int(pid))
    import jax
    assert jax.process_count() == int(nproc) and jax.device_count() == 2 * int(nproc)
  from tests.support import stand_ins
  from ctjax.train import loop
  overrides = json.loads(overrides)
  delay = overrides.pop("_delay", 0.0)
  real = overrides.pop("_real", False)
  config = stand_ins.tiny_config(**overrides)
  if real:
    loop.train_and_evaluate(config, workdir, task=stand_ins.TinySliceTask())
  else:
    loop.train_and_evaluate(config, workdir, task=stand_ins.TinyTask(),
                            data=stand_ins.MemoryData(delay=delay))


if __name__ == "__main__":
  main()
