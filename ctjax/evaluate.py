"""`python -m ctjax.evaluate --workdir DIR [--split test] [--json OUT] [--step N]`.

Restores the workdir's best (else latest) checkpoint (`ctjax.inference`), predicts the split and
prints `task.summarize`'s report as a table (per class: precision, recall, specificity, F1, AUC;
macro row); --json writes the full report. Data location and layout come from the workdir's
config.json; --data_root / --data_layout point it at another data set in a public layout.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from ctjax import cli

# The splits `ctjax.data.datasets.split_indices` makes (fold = test, the next fold = val).
SPLITS = ("train", "val", "test")


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("split", "test", SPLITS, "which split to evaluate", flag_values=fv)
  flags.DEFINE_string("json", None, "write the report here as JSON", flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: best, else latest)",
                       flag_values=fv)
  flags.DEFINE_string("data_root", None, "override config.data.root", flag_values=fv)
  flags.DEFINE_string("data_layout", None, "override config.data.layout", flag_values=fv)
  cli.distributed_flags(fv)


def _evaluate(fv, _config, _args) -> int:
  from ctjax import fileio, inference
  if fv.json:   # before the restore: a read-only --json path fails now, not after the work
    fileio.writable_file(fv.json, "--json file")
  from ctjax.eval.metrics import format_table
  from ctjax.jsonable import to_jsonable
  from ctjax.train import parallel
  parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
  overrides = {}
  if fv.data_root is not None:
    overrides["data.root"] = fv.data_root
  if fv.data_layout is not None:
    overrides["data.layout"] = fv.data_layout
  report = inference.evaluate(fv.workdir, fv.split, step=fv.step, config_overrides=overrides)
  import jax
  if jax.process_index() == 0:
    print(f"{fv.workdir}: split {fv.split}, step {report.get('step')}")
    print(format_table(report))
    if fv.json:
      fileio.atomic_write_text(fv.json, json.dumps(to_jsonable(report), indent=2),
                               "writing the --json report")
  return 0


def main(argv=None) -> int:
  return cli.run(_evaluate, argv, prog="ctjax.evaluate", extra_flags=_flags,
                 workdir_help="a `python -m ctjax.train` workdir")


if __name__ == "__main__":
  sys.exit(main())
