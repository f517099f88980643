"""`python -m ctjax.evaluate --workdir DIR [--split test] [--json OUT] [--step N] [--n_boot 1000]`.
`python -m ctjax.evaluate compare DrCT2=eval2.json [DrCT1=eval1.json]`.

Restores the workdir's best (else latest) checkpoint (`ctjax.inference.runs`), predicts the split and
prints `task.summarize`'s report as a table (per class: precision, recall, specificity, F1, AUC;
macro row), then each headline figure with its seeded bootstrap 95 % CI over the split's scans
(DrCT: macro precision / recall / F1 / AUC; blend: per-class sensitivity / specificity / F1 /
AUC; `ctjax.eval.uncertainty`), and for DrCT runs the calibration (per-label ECE, and the RSNA
challenge's weighted log loss on RSNA labels). --json writes the full report with the CIs
(`ci95`) and calibration (`calibration`); a --json report of the test split refreshes the
workdir's model card (MODEL_CARD.md, `ctjax.inference.model_card`) with these figures and their
CIs. --reliability writes a reliability-diagram PNG.
Data location and layout come from the workdir's config.json; --data_root / --data_layout
point it at another data set in a public layout. Evaluation reads the run's prepared cache (and
a DrCT run's feature store) and writes nothing there: when one is missing it says so in one
line, and --prepare builds it. --fit_highlight_scale (DrCT) also fits the report's highlight
scale on the split and stores it in the workdir (runs trained before it was stored).
`compare` prints the key-slice tasks of `--json` outputs beside the DrCT2 paper's Tables 5-6
(`ctjax.eval.keyslice.format_paper_comparison`).
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags

from ctjax.commands import cli

# The splits of a run's fold (test = the fold; val and train by config.data.fold_protocol).
SPLITS = ("train", "val", "test")


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("split", "test", SPLITS, "which split to evaluate", flag_values=fv)
  flags.DEFINE_string("json", None, "write the report here as JSON", flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: best, else latest)",
                       flag_values=fv)
  flags.DEFINE_string("data_root", None, "override config.data.root", flag_values=fv)
  flags.DEFINE_string("data_layout", None, "override config.data.layout", flag_values=fv)
  flags.DEFINE_integer("n_boot", 1000, "bootstrap resamples of each CI (0: no CIs)",
                       flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed of the bootstrap resampling", flag_values=fv)
  flags.DEFINE_string("reliability", None, "write a reliability diagram (PNG) here (DrCT)",
                      flag_values=fv)
  flags.DEFINE_bool("prepare", False, "prepare the data cache (and a DrCT run's feature store) "
                    "when missing, instead of stopping", flag_values=fv)
  flags.DEFINE_bool("fit_highlight_scale", False, "DrCT: fit the report's highlight scale on "
                    "this split and store it in the workdir", flag_values=fv)
  cli.distributed_flags(fv)


def _evaluate(fv, _config, args) -> int:
  if args:
    if args[0] != "compare":
      raise cli.UsageError(f"unknown arguments {args}; usage: python -m ctjax.evaluate --workdir "
                           "DIR or python -m ctjax.evaluate compare NAME=EVAL.json …")
    return _compare(args[1:])
  if not fv.workdir:
    raise cli.UsageError("--workdir DIR is required")
  from ctjax import fileio
  if fv.json:   # before the restore: a read-only --json path fails now, not after the work
    fileio.writable_file(fv.json, "--json file")
  if fv.reliability:
    fileio.writable_file(fv.reliability, "--reliability file")
  from ctjax.eval.metrics import format_table
  from ctjax.jsonable import to_jsonable
  from ctjax.train import parallel
  parallel.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
  overrides = {}
  if fv.data_root is not None:
    overrides["data.root"] = fv.data_root
  if fv.data_layout is not None:
    overrides["data.layout"] = fv.data_layout
  if fv.n_boot < 0:
    raise cli.UsageError(f"--n_boot={fv.n_boot} must be >= 0")
  from ctjax.inference import runs
  from ctjax.eval import uncertainty
  run = runs.load_run(fv.workdir, fv.step, config_overrides=overrides)
  if fv.fit_highlight_scale and run.config.task != "drct":
    raise cli.UsageError("--fit_highlight_scale needs a DrCT run")
  outputs = runs.predict_split(run, fv.split, prepare=fv.prepare)
  report = runs.summarize(run, outputs, fv.split)
  uncertainty.add_uncertainty(report, outputs, run.config, n_boot=fv.n_boot, seed=fv.seed)
  import jax
  if jax.process_index() == 0:
    print(f"{fv.workdir}: split {fv.split}, step {report.get('step')}")
    print(format_table({k: v for k, v in report.items() if k not in ("ci95", "calibration")}))
    extra = uncertainty.format_uncertainty(report)
    if extra:
      print(extra)
    if fv.json:
      fileio.atomic_write_text(fv.json, json.dumps(to_jsonable(report), indent=2),
                               "writing the --json report")
      if fv.split == "test" and not overrides:   # the run's own test split: the card's figures
        from ctjax.inference import model_card
        print(f"model card: {model_card.write_card(fv.workdir, evaluations=[fv.json])}")
    if fv.reliability:
      if run.config.task != "drct":
        raise cli.UsageError("--reliability needs a DrCT run (multi-label probabilities)")
      from ctjax.eval import stats
      curves = uncertainty.reliability_curves(outputs, list(run.config.data.labels))
      stats.plot_reliability_diagram(curves, fv.reliability,
                                     title=f"{pathlib.Path(fv.workdir).name}: {fv.split}")
  if fv.fit_highlight_scale:
    from ctjax.inference import highlight_scale
    highlight_scale.fit(run, fv.split, prepare=fv.prepare, outputs=outputs)
  return 0


def _compare(pairs) -> int:
  """The key-slice tasks of several `--json` evaluations beside the paper's Tables 5-6."""
  from ctjax.errors import CTJaxError
  from ctjax.eval import keyslice
  if not pairs or any("=" not in a for a in pairs):
    raise cli.UsageError("usage: python -m ctjax.evaluate compare NAME=EVAL.json "
                         "[NAME=EVAL.json …]")
  measured, per = {}, {}
  for arg in pairs:
    name, path = arg.split("=", 1)
    try:
      with open(path, encoding="utf-8") as f:
        tasks, diseases = keyslice.from_metrics(json.load(f))
    except (OSError, ValueError) as e:
      raise CTJaxError(f"{path}: {e}") from e
    if not tasks:
      raise CTJaxError(f"{path}: no keyslice/… metrics (a data set without per-slice labels?)")
    measured[name], per[name] = tasks, diseases
  print(keyslice.format_paper_comparison(measured, per))
  return 0


def main(argv=None) -> int:
  return cli.run(_evaluate, argv, prog="ctjax.evaluate", extra_flags=_flags,
                 workdir=cli.OPTIONAL, positional=True,
                 workdir_help="a `python -m ctjax.train` workdir")


if __name__ == "__main__":
  sys.exit(main())
