"""The reader study of the DrCT2 paper (section VI.B, Table 8) as a tool.

Radiologists read a seeded random sample of a trained run's test scans alone, then — after a
washout, in a new random order — with the model's report beside the images; the diagnosis per
label, a confidence of 0–3 and the reading time are recorded for every scan, and `analyze`
gives Table 8 (precision / recall / F1, confidence, times, per reader and arm, beside the
model's row) with paired statistics.

Modules: `study` (the study folder, made once by `create`), `model_reports` (what the study
takes from the run: its description, one case's report), `db` (SQLite through SQLAlchemy: readers, orders, answers, the study's rules),
`server` (the Flask app), `analysis` (Table 8, bootstrap CI, Wilcoxon), `clock` (injectable
time). Command: `python -m ctjax.reader` (`ctjax.commands.reader`).
"""
