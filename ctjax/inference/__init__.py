"""After training: one way to open a trained run, and what is done with it.

`runs` (open a run, predict a split or a batch, evaluate), `highlight_scale` (the report's
fixed scale, fitted once after training), `scan_reports` (DICOM series → HTML key-slice
report) over `report_html` (pure rendering), `archive` (predictions over an archive of series,
one row each), `model_card` (MODEL_CARD.md of a run: data, test figures with CIs, intended
use, limitations, licence), `model_export` (a run as a StableHLO model folder with its card) and
`serving` (that folder verified, loaded and run — on HU or on a DICOM series — with none of the
training code). This package imports `ctjax.train`; nothing
in `ctjax.train` imports it. Import the modules themselves: this file imports nothing, so that
`serving` loads without JAX's training stack.
"""
