"""`python -m ctjax.train --config configs/X.py --workdir DIR [--config.a.b=v …]`.

Trains and evaluates via ctjax.train.loop.train_and_evaluate (a workdir with checkpoints
resumes); a DrCT run then fits the report's highlight scale on its validation split
(`ctjax.inference.highlight_scale`), and every run gets its model card, <workdir>/MODEL_CARD.md
(`ctjax.inference.model_card`; `ctjax.evaluate --split test --json` refreshes it with CIs).
Several processes (multi-host, or several on one host): give every process the same
--coordinator_address host:port and --num_processes N, and its own --process_id i (or the
environment variables CTJAX_COORDINATOR_ADDRESS / CTJAX_NUM_PROCESSES / CTJAX_PROCESS_ID).
`--profile DIR` writes a jax.profiler trace of --profile_steps steady train steps (the 2nd to the
4th of this start by default; ctjax.train.profiling). Compiled programs are kept in the
persistent compilation cache (config.compile.cache_dir, ctjax.train.compilation); the line
"compilation: …" at the end says how long the train step took to compile, or to load from that
cache on a later start and the compile seconds it saved.
Errors in the config or the data paths: one line on stderr (ctjax.commands.cli).
"""

from __future__ import annotations

import sys

from ctjax.commands import cli


def _flags(fv) -> None:
  cli.distributed_flags(fv)
  cli.profile_flags(fv)


def main(argv=None) -> int:
  return cli.run(_train, argv, prog="ctjax.train", config=cli.REQUIRED, extra_flags=_flags)


def _train(flags, config, _args) -> int:
  import json
  import jax
  from ctjax.jsonable import to_jsonable
  from ctjax.train import compilation, loop, parallel
  parallel.initialize_distributed(flags.coordinator_address, flags.num_processes,
                                  flags.process_id)
  if distill_notice(config) and jax.process_index() == 0:
    print(distill_notice(config), file=sys.stderr, flush=True)
  with compilation.CompileLog(jax.config.jax_compilation_cache_dir) as compiles:
    final = loop.train_and_evaluate(config, flags.workdir, profile=flags.profile,
                                    profile_steps=flags.profile_steps)
  if jax.process_index() == 0:
    print(compiles.summary("train_step"), flush=True)
  if config.task == "drct":   # the report's highlight scale, from the state reports load
    from ctjax.inference import highlight_scale
    highlight_scale.fit_after_training(flags.workdir)
  _print_test_table(config, flags.workdir)
  if jax.process_index() == 0:
    from ctjax.inference import model_card
    print(f"model card: {model_card.write_card(flags.workdir)}")
  headline = {k: v for k, v in final.items() if k.count("/") <= 1}
  print(json.dumps(to_jsonable(headline), sort_keys=True))
  return 0


def distill_notice(config) -> str:
  """One line when the config asks for self-knowledge distillation, which this command does
  not run (it trains one model: the teacher round); "" otherwise."""
  rounds = int(config.get("distill", {}).get("rounds", 0) or 0)
  if rounds <= 0:
    return ""
  return (f"notice: config.distill.rounds={rounds} is run by python -m ctjax.distill (the "
          "teacher, then its student); python -m ctjax.train trains one model, the teacher")


def _print_test_table(config, workdir: str) -> None:
  """The test split's table as the README quotes it, when the config evaluates one: the final
  state's report, evaluated once at the end (final_metrics.json). The best checkpoint by
  validation, which `ctjax.evaluate` and the reports load, can differ."""
  import json
  import pathlib
  import jax
  from ctjax.eval.metrics import markdown_summary
  from ctjax.train.loop import evaluators
  name = next((n for n, spec in evaluators(config).items()
               if spec["split"] == "test" and spec["every_steps"] >= 0), None)
  if name is None or jax.process_index() != 0:
    return
  final = json.loads((pathlib.Path(workdir) / "final_metrics.json").read_text())
  report = final.get("reports", {}).get(name)
  if not report:
    return
  unit = "scans" if config.task == "drct" else "slices"
  row = ("DrCT2" if config.model.get("aps", True) else "DrCT1") if config.task == "drct" \
      else config.task
  print(f"\n{name} split, final state (step {final['step']}):\n")
  print(markdown_summary(report, title=f"{name} split ({report.get('num_examples')} {unit})",
                         row=row) + "\n")


if __name__ == "__main__":
  sys.exit(main())
