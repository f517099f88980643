"""`python -m ctjax.train --config configs/X.py --workdir DIR [--config.a.b=v …]`.

(ctjax/train/ is a package, so this file is the `ctjax.train` entry point.) Trains and
evaluates via ctjax.train.loop.train_and_evaluate; a workdir with checkpoints resumes.
Several processes (multi-host, or several on one host): give every process the same
--coordinator_address host:port and --num_processes N, and its own --process_id i (or the
environment variables CTJAX_COORDINATOR_ADDRESS / CTJAX_NUM_PROCESSES / CTJAX_PROCESS_ID;
CTJAX_DISTRIBUTED=auto lets JAX discover a TPU / SLURM / MPI cluster itself).
Errors in the config or the data paths: one line on stderr, exit status 1.
"""

from __future__ import annotations

import sys

from ctjax import cli


def main(argv=None) -> int:
  return cli.run(_train, argv, needs_config=True, extra_flags=cli.distributed_flags)


def _train(flags, config) -> int:
  import json
  from ctjax.train import loop, parallel
  parallel.initialize_distributed(flags.coordinator_address, flags.num_processes,
                                  flags.process_id)
  final = loop.train_and_evaluate(config, flags.workdir)
  headline = {k: v for k, v in final.items() if k.count("/") <= 1}
  print(json.dumps(loop._json_safe(headline), sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
