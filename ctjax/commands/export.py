"""`python -m ctjax.export --workdir RUN --out MODEL_DIR [--platforms cpu,cuda,tpu] [--step N]`.
`python -m ctjax.export --check MODEL_DIR`: verifies an exported folder as serving loads it.

Writes the run's inference program (StableHLO via `jax.export`, any batch size), its weights
(safetensors), the model card (MODEL_CARD.md: intended use, training data, test figures with
their 95 % CIs where the workdir has `ctjax.evaluate --split test --json` reports, or --eval_json,
thresholds, limitations, licence) and a manifest of the input contract with every file's SHA-256
into MODEL_DIR (`ctjax.inference.model_export`). The folder is written beside MODEL_DIR and
renamed into place: an earlier export there is replaced whole, any other non-empty folder is
refused. Serve it with `ctjax.inference.serving.load(MODEL_DIR)` (it verifies the folder and needs
neither the training code nor the configs; `.predict_series(DICOM_DIR)` reads a series too).
DrCT1/DrCT2 runs (sampled slice stacks) and blend-sign runs (single slices). --check loads a
model folder received from elsewhere exactly as `serving.load` does (manifest fields, every
file's SHA-256, the meaning hash in the weights, program and weights) and prints one line.
"""

from __future__ import annotations

import sys

from absl import flags

from ctjax.commands import cli


def _flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("out", None, "model folder to write", flag_values=fv)
  flags.DEFINE_string("check", None, "instead of exporting: verify this exported model folder "
                      "(as ctjax.inference.serving.load does) and print one line",
                      flag_values=fv)
  flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "platforms the program is lowered "
                    "for (one program serves on each)", flag_values=fv)
  flags.DEFINE_integer("step", None, "checkpoint step (default: the best kept, else the latest)",
                       flag_values=fv)
  flags.DEFINE_multi_string("eval_json", [], "a `python -m ctjax.evaluate --split test --json` "
                            "report for the model card's test figures (besides the workdir's "
                            "*.json)", flag_values=fv)


def _export(fv, _config, _args) -> int:
  if fv.check:
    if fv.workdir or fv.out:
      raise cli.UsageError("--check MODEL_DIR verifies a folder: give it alone")
    from ctjax.inference import serving
    model = serving.load(fv.check)
    m = model.manifest
    print(f"{fv.check}: ok — {m['model_name']} step {m['checkpoint_step']}, labels "
          f"{', '.join(model.labels)}; {len(m['files'])} files match their SHA-256, the manifest "
          "matches the meaning hash its weights carry")
    return 0
  if not fv.workdir:
    raise cli.UsageError("--workdir RUN is required (or --check MODEL_DIR)")
  if not fv.out:
    raise cli.UsageError("--out MODEL_DIR is required")
  from ctjax.inference import model_export
  from ctjax.inference import runs
  run = runs.load_run(fv.workdir, fv.step)
  m = model_export.export_run(run, fv.out, platforms=fv.platforms or None,
                              evaluations=fv.eval_json)
  shape = " × ".join(str(d) for d in m["input"]["shape"])
  print(f"{fv.out}: {m['model_name']} step {m['checkpoint_step']}, input int16 [{shape}], "
        f"outputs {', '.join(m['outputs'])}; platforms {', '.join(m['platforms'])}; "
        f"{m['num_parameters']:,} parameters; model card {fv.out}/MODEL_CARD.md")
  return 0


def main(argv=None) -> int:
  return cli.run(_export, argv, prog="ctjax.export", extra_flags=_flags, workdir=cli.OPTIONAL,
                 workdir_help="trained run (python -m ctjax.train)")


if __name__ == "__main__":
  sys.exit(main())
