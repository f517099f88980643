"""Speed tied to accuracy: a trained DrCT run's split predicted in float32 and in bfloat16.

  python -m benchmarks.precision --workdir runs/drct2_phantom [--split test] \
      [--json benchmarks/results/precision-<platform>.json]

The run's best (else latest) checkpoint is restored twice, once with `model.dtype=float32` and
once with `bfloat16` (parameters stay float32; activations and matmul/convolution inputs are
bfloat16, accumulation float32, as the paper configs compute on GPU/TPU), and the split is
predicted end to end from the prepared HU cache: the feature store is turned off, so that the
backbone runs in the compute dtype too. Printed and written: macro-F1 and macro-AUC of each,
and the per-label probability differences (max and mean |Δp|, calls that flip at the run's
thresholds). On XLA:CPU a bfloat16 convolution is computed in float32 from bfloat16 inputs and
rounded to bfloat16; cuDNN and the TPU accumulate in float32 too, but their rounding points can
differ, so the CPU figure is indicative and the GPU run's is the one to quote for a GPU.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

DTYPES = ("float32", "bfloat16")


def predict(workdir: str, split: str, dtype: str
            ) -> tuple[dict[str, Any], np.ndarray, list[float], float]:
  """(report, probabilities [n, L] of the split's scans in example order, the run's
  thresholds, seconds) of `split` in `dtype`."""
  from ctjax.inference import report_html, runs
  run = runs.load_run(workdir, config_overrides={"model.dtype": dtype,
                                                 "features.enabled": False},
                      require_task="drct")
  start = time.perf_counter()
  outputs = runs.predict_split(run, split)
  seconds = time.perf_counter() - start
  valid = np.asarray(outputs.get("valid", np.ones(len(outputs["probs"]), bool)), bool)
  index = np.asarray(outputs["example_index"])[valid]
  probs = np.asarray(outputs["probs"], np.float64)[valid][np.argsort(index)]
  thresholds = report_html.thresholds(run.config, probs.shape[1])
  return runs.summarize(run, outputs, split), probs, thresholds, seconds


def compare(reports: dict[str, dict], probs: dict[str, np.ndarray],
            thresholds: Sequence[float]) -> dict[str, Any]:
  """The figures of the table: each dtype's macro-F1/AUC, and bfloat16 against float32."""
  ref, low = probs["float32"], probs["bfloat16"]
  if ref.shape != low.shape:
    raise ValueError(f"the two passes predicted {ref.shape} and {low.shape}")
  diff = np.abs(low - ref)
  thr = np.asarray(thresholds, np.float64)
  flips = (ref >= thr) != (low >= thr)
  return {
      "macro_f1": {d: float(reports[d]["macro_f1"]) for d in DTYPES},
      "macro_auc": {d: float(reports[d]["macro_auc"]) for d in DTYPES},
      "max_abs_dp": float(diff.max()), "mean_abs_dp": float(diff.mean()),
      "calls_flipped": int(flips.sum()), "calls": int(flips.size),
      "scans": int(ref.shape[0]),
  }


def format_table(summary: dict[str, Any], seconds: dict[str, float]) -> str:
  lines = ["| dtype | macro-F1 | macro-AUC | max \\|Δp\\| vs float32 | mean \\|Δp\\| | calls "
           "flipped | predict s |", "|---|---:|---:|---:|---:|---:|---:|"]
  for d in DTYPES:
    vs = ("—", "—", "—") if d == "float32" else (
        f"{summary['max_abs_dp']:.4f}", f"{summary['mean_abs_dp']:.5f}",
        f"{summary['calls_flipped']} of {summary['calls']}")
    lines.append(f"| {d} | {summary['macro_f1'][d]:.3f} | {summary['macro_auc'][d]:.3f} | "
                 f"{vs[0]} | {vs[1]} | {vs[2]} | {seconds[d]:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="a trained DrCT run")
  ap.add_argument("--split", default="test", choices=("train", "val", "test"))
  ap.add_argument("--json", default=None, help="write the figures here")
  args = ap.parse_args(argv)
  import jax
  from ctjax import errors
  try:
    reports, probs, seconds = {}, {}, {}
    for d in DTYPES:
      reports[d], probs[d], thresholds, seconds[d] = predict(args.workdir, args.split, d)
      print(f"{d}: {probs[d].shape[0]} scans predicted in {seconds[d]:.1f} s", file=sys.stderr)
  except errors.CTJaxError as e:
    print(f"benchmarks.precision: {e}", file=sys.stderr)
    return 1
  summary = compare(reports, probs, thresholds)
  sys.stdout.write(format_table(summary, seconds))
  if args.json:
    from benchmarks.common import environment
    from ctjax.jsonable import to_jsonable
    import json
    record = {"workdir": pathlib.Path(args.workdir).name, "split": args.split,
              "step": reports["float32"].get("step"), "platform": jax.default_backend(),
              "seconds": seconds, **summary, "environment": environment(include_torch=False)}
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(to_jsonable(record), indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
