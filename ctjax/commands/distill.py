"""`python -m ctjax.distill --config C --workdir DIR` | `python -m ctjax.distill table DIR [DIR …]`.

Self-knowledge distillation of the blend-sign detector (`ctjax.experiments.skd`): a teacher and
`config.distill.rounds` students in DIR/round_<r>, each round's test report in DIR/distill.json,
the final round's figures in DIR/figures/. `table` prints Table 3 of the blend-sign paper
(sensitivity / specificity / F1 / AUC per class) from finished runs' distill.json.
"""

from __future__ import annotations

import json
import os
import sys

from ctjax.commands import cli


def _main(flags, config, args) -> int:
  from ctjax.errors import CTJaxError
  from ctjax.experiments import skd
  if args:
    if args[0] != "table" or len(args) < 2:
      raise cli.UsageError(f"unknown arguments {args}; usage: `python -m ctjax.distill --config "
                           "C --workdir DIR` or `python -m ctjax.distill table DIR [DIR …]`")
    summaries = {}
    for d in args[1:]:
      path = os.path.join(d, "distill.json")
      try:
        with open(path) as f:
          s = json.load(f)
      except (OSError, ValueError) as e:
        raise CTJaxError(f"{path}: cannot read a distill summary ({e})") from e
      summaries[s.get("variant") or os.path.basename(d.rstrip("/"))] = s
    print(skd.format_ablation(summaries))
    return 0
  if config is None or not flags.workdir:
    raise cli.UsageError("--config C and --workdir DIR are required")
  summary = skd.run(config, flags.workdir)
  print(skd.format_ablation({summary["variant"] or "run": summary}))
  return 0


def main(argv=None) -> int:
  """`python -m ctjax.distill --config C --workdir DIR` or `python -m ctjax.distill table DIR…`."""
  return cli.run(_main, argv, prog="ctjax.distill", config=cli.OPTIONAL, workdir=cli.OPTIONAL,
                 positional=True, workdir_help="output folder (round_<r>/ inside)")


if __name__ == "__main__":
  sys.exit(main())
