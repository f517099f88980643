"""`create`: the study folder, its cases (the run's test split), images, reports and orders."""

import json

import numpy as np
import pytest

from ctjax import errors
from ctjax.reader import db as db_lib
from ctjax.reader import study as study_lib


def test_cases_are_a_seeded_sample_of_the_runs_test_split(study_dir, tiny_run):
  from ctjax.data import datasets
  from ctjax.train.checkpoint import load_config
  s = study_lib.Study(study_dir)
  assert len(s.cases) == 3 and s.labels == list(datasets.RSNA_LABELS)
  # The run's test split, independently: every scan of the phantom set, split by patient.
  cfg = load_config(tiny_run)
  ds = datasets.load("phantom", tiny_run / "data")
  recs = sorted(ds.scans, key=lambda r: r.scan_id)
  test = datasets.split_indices([r.patient_id for r in recs], num_folds=cfg.data.num_folds,
                                fold=cfg.data.fold, seed=cfg.data.split_seed)["test"]
  test_ids = {recs[i].scan_id for i in test}
  assert {c.scan_id for c in s.cases} <= test_ids and len(test_ids) > 3
  by_id = {r.scan_id: r for r in recs}
  for c in s.cases:
    assert c.truth == [int(v) for v in by_id[c.scan_id].labels]
  assert s.meta["source"]["kind"] == "test_split"
  assert s.meta["source"]["num_available"] == len(test_ids)
  print(s.meta["source"], [c.scan_id for c in s.cases])
