"""The report's fixed highlight scale of a DrCT run: fitted once, on one split, after training.

Every report of a run draws its highlighted area (DrCT2 paper, Figure 2) on one scale, stored as
`<workdir>/highlight_scale.json` (`ctjax.eval.highlight`), so that the same value has the same
colour on every page. `python -m ctjax.train` calls `fit_after_training` when a DrCT run ends
(on `config.evals.highlight_scale_split`, "val" by default); `python -m ctjax.evaluate --split val
--fit_highlight_scale` fits it for a run trained without it.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Mapping, Optional

import jax

from ctjax.errors import CTJaxError
from ctjax.eval import highlight
from ctjax.inference import runs

log = logging.getLogger(__name__)


def draws_highlight(config) -> bool:
  """A DrCT run whose model draws a highlight (a DrCT1 model fusion does not)."""
  return (config.get("task") == "drct"
          and not tuple(config.model.get("hires_slices", ()) or ()))


def fit(run: runs.Run | str | os.PathLike, split: str = "val", *, prepare: bool = False,
        outputs: Optional[Mapping[str, Any]] = None) -> highlight.HighlightScale:
  """Predicts `split` with the run (its best, else latest, checkpoint), fits the scale
  (`ctjax.eval.highlight.fit_scale`) and writes it to `<workdir>/highlight_scale.json` (process
  0). Needs the run's prepared data; `prepare` builds what is missing. Returns the scale.

  `outputs`: this run's `runs.predict_split(run, split)` already in hand (`ctjax.evaluate
  --fit_highlight_scale`): fitted from them, with no second prediction pass over the split,
  when they hold the highlight maps."""
  if not isinstance(run, runs.Run):
    run = runs.load_run(run, require_task="drct")
  if not draws_highlight(run.config):
    raise CTJaxError(f"{run.workdir}: this model draws no highlight (DrCT1 model fusion)")
  if outputs is not None and "highlight" in outputs:
    return _fit_outputs(run, split, outputs)
  fc = run.config.get("features", {})
  if fc.get("enabled", False) and not fc.get("store_maps", False):
    # Stored features without maps give no highlight: predict this split end to end.
    run = runs.load_run(run.workdir, run.step, config_overrides={"features.enabled": False},
                        task=run.task)
  return _fit_outputs(run, split, runs.predict_split(run, split, prepare=prepare))


def _fit_outputs(run: runs.Run, split: str, outputs: Mapping[str, Any]
                 ) -> highlight.HighlightScale:
  scale = highlight.fit_scale(outputs["highlight"], outputs["slice_attention"],
                              outputs["labels"], split=split, step=run.step)
  if jax.process_index() == 0:
    path = highlight.save_scale(run.workdir, scale)
    log.info("highlight scale %.4g (floor %.2f) from %d %s scans written to %s",
             scale.reference, scale.floor, scale.num_positive + scale.num_negative, split, path)
  return scale


def fit_after_training(workdir: str | os.PathLike) -> Optional[highlight.HighlightScale]:
  """The end of a training run: fits the scale of a DrCT run on
  `config.evals.highlight_scale_split` ("" skips it) with the state reports load (the best
  checkpoint, else the latest). Training is done and saved by then, so a failure is a warning
  naming the command that fits it later, not an error. None when nothing was fitted."""
  from ctjax.train import checkpoint
  workdir = pathlib.Path(workdir)
  config = checkpoint.load_config(workdir)
  split = config.get("evals", {}).get("highlight_scale_split", "val")
  if not split or not draws_highlight(config):
    return None
  try:
    return fit(runs.load_run(workdir), split)
  except (CTJaxError, ValueError) as e:
    log.warning("highlight scale not fitted (%s); reports of %s draw no highlight until "
                "python -m ctjax.evaluate --workdir %s --split %s --fit_highlight_scale runs",
                e, workdir, workdir, split)
    return None
