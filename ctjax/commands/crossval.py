"""`python -m ctjax.crossval --config configs/X.py --workdir DIR [--folds 0,1] [--split test]`.

k-fold cross-validation (ctjax.experiments.kfold): trains fold f in DIR/fold_<f>, evaluates its
best checkpoint on the split, prints the per-fold table with mean ± std and writes
DIR/crossval.json.
"""

from __future__ import annotations

import sys

from absl import flags

from ctjax.commands import cli


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("folds", None, "comma-separated folds (default: all)", flag_values=fv)
  flags.DEFINE_string("split", "test", "split each fold is scored on", flag_values=fv)
  cli.distributed_flags(fv)


def _crossval(fv, config, _args) -> int:
  from ctjax.train import parallel
  from ctjax.experiments import kfold
  parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
  folds = None if not fv.folds else [int(f) for f in fv.folds.split(",") if f.strip()]
  result = kfold.run_crossval(config, fv.workdir, folds=folds, split=fv.split)
  import jax
  if jax.process_index() == 0:
    print(kfold.format_summary(result))
  return 0


def main(argv=None) -> int:
  return cli.run(_crossval, argv, prog="ctjax.crossval", config=cli.REQUIRED,
                 extra_flags=_flags)


if __name__ == "__main__":
  sys.exit(main())
