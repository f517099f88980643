"""`python -m ctjax.train --config configs/X.py --workdir DIR [--config.a.b=v …]`.

(ctjax/train/ is a package, so this file is the `ctjax.train` entry point.) Trains and
evaluates via ctjax.train.loop.train_and_evaluate; a workdir with checkpoints resumes.
Several processes (multi-host, or several on one host): give every process the same
--coordinator_address host:port and --num_processes N, and its own --process_id i (or the
environment variables CTJAX_COORDINATOR_ADDRESS / CTJAX_NUM_PROCESSES / CTJAX_PROCESS_ID).
Errors in the config or the data paths: one line on stderr (ctjax.cli).
"""

from __future__ import annotations

import sys

from ctjax import cli


def main(argv=None) -> int:
  return cli.run(_train, argv, prog="ctjax.train", config=cli.REQUIRED,
                 extra_flags=cli.distributed_flags)


def _train(flags, config, _args) -> int:
  import json
  from ctjax.jsonable import to_jsonable
  from ctjax.train import loop, parallel
  parallel.initialize_distributed(flags.coordinator_address, flags.num_processes,
                                  flags.process_id)
  final = loop.train_and_evaluate(config, flags.workdir)
  headline = {k: v for k, v in final.items() if k.count("/") <= 1}
  print(json.dumps(to_jsonable(headline), sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
