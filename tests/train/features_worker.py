"""One process of the feature-store tests (spawned by test_features.py).

argv: `build SPEC` — build the store of test_features.small_config(SPEC["cache"]) on one
process with 4 CPU devices (SPEC["delay"]: seconds of sleep after each shard is written, and
SPEC["signal_file"] touched after the first, so the test can SIGKILL it mid-build); or
`ADDRESS NPROC PID WORKDIR SPEC` — one of NPROC processes × 2 devices training DrCT on the
store (SPEC["overrides"]) through the real pipeline.
"""

import json
import os
import sys
import time

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4" if sys.argv[1] == "build"
                           else "--xla_force_host_platform_device_count=2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))


def build(spec):
  import test_features as tf
  from ctjax.data import cache
  from ctjax.models import pretrained
  from ctjax.train import features
  from ctjax.train.tasks.drct import TASK
  config = tf.small_config(spec["cache"], **{"features.store_maps": True})
  from ctjax.data import fake
  scans = cache.CachedScans(fake.cache_path_for(config))
  model = TASK.build_model(config)
  from ctjax.train.tasks import drct
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
  if spec.get("delay"):
    write = features._write_shard

    def slow(*args, **kwargs):
      write(*args, **kwargs)
      open(spec["signal_file"], "w").close()
      time.sleep(spec["delay"])

    features._write_shard = slow
  features.build_store(config, scans, model, variables)


def train(address, nproc, pid, workdir, spec):
  from ctjax.train import loop, parallel
  parallel.initialize_distributed(address, int(nproc), int(pid))
  import jax
  assert jax.process_count() == int(nproc) and jax.device_count() == 2 * int(nproc)
  import test_features as tf
  loop.train_and_evaluate(tf.small_config(spec["cache"], **spec["overrides"]), workdir)


if __name__ == "__main__":
  if sys.argv[1] == "build":
    build(json.loads(sys.argv[2]))
  else:
    train(*sys.argv[1:5], json.loads(sys.argv[5]))
