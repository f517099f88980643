"""After training: one way to open a trained run, and what is done with it.

`runs` (open a run, predict a split or a batch, evaluate), `highlight_scale` (the report's
fixed scale, fitted once after training), `scan_reports` (DICOM series → HTML key-slice
report) over `report_html` (pure rendering), `archive` (predictions over an archive of series,
one row each), `model_export` (a run as a StableHLO model folder) and `serving` (that folder
loaded and run with none of the training code). This package imports `ctjax.train`; nothing
in `ctjax.train` imports it. Import the modules themselves: this file imports nothing, so that
`serving` loads without JAX's training stack.
"""
