"""CQ500 as the download has it: several series per study, all the reads.csv columns.

The loader keeps exactly the soft-tissue axial series, labels follow the readers' majority on
`CalvarialFracture`, every series of a patient shares a fold, and rare labels reach every fold.
"""

import numpy as np
import pytest

from ctjax.data import datasets, labels, series_policy
from tests.support.ctdicom_helpers import CQ500_SERIES, write_cq500_download

NUM_STUDIES = 10


def _votes():
  """Study n: EDH (rare) on n in {0, 2, 4, 6, 8} by majority; fracture columns that disagree:
  n % 3 == 0 a calvarial fracture (2 of 3 readers), n % 3 == 1 only an *other* fracture (the
  `Fracture` column 1, `CalvarialFracture` 0)."""
  out = []
  for n in range(NUM_STUDIES):
    v = {"ICH": (1, 1, 0) if n % 2 == 0 else (0, 0, 1)}
    if n % 2 == 0:
      v["EDH"] = (1, 0, 1)
    if n % 3 == 0:
      v["CalvarialFracture"] = (1, 1, 0)
      v["Fracture"] = (1, 1, 0)
    elif n % 3 == 1:
      v["OtherFracture"] = (1, 1, 1)
      v["Fracture"] = (1, 1, 1)
    out.append(v)
  return out


@pytest.fixture(scope="module")
def download(tmp_path_factory):
  root = tmp_path_factory.mktemp("cq500")
  # Studies get different subsets of the reconstructions, as the real ones do.
  def series_of(n):
    return [s for j, s in enumerate(CQ500_SERIES) if j < 5 or (n + j) % 3 == 0]
  layout = write_cq500_download(root, _votes(), series_of=series_of)
  return root, layout


def test_loader_keeps_exactly_the_soft_tissue_axial_series(download):
  root, layout = download
  ds = datasets.load("cq500", root)
  want = sorted(f"{name}/{folder}" for name, ss in layout.items() for folder, keep in ss if keep)
  assert sorted(s.scan_id for s in ds.scans) == want
  decisions = {e["scan_id"]: e for e in ds.report["series"]}
  assert len(decisions) == sum(len(ss) for ss in layout.values())
  reasons = {e["path"].split("/")[-1]: e["reason"] for e in ds.report["series"] if not e["kept"]}
  assert reasons["CT BONE"].startswith("bone kernel (ConvolutionKernel 'BONE')")
  assert reasons["CT Thin Bone"].startswith("bone kernel (ConvolutionKernel 'H70h')")
  assert reasons["CT SCOUT"].startswith("localizer")
  if "CT COR" in reasons:
    assert reasons["CT COR"].startswith("derived/secondary image")
  if "CT POST CONTRAST" in reasons:
    assert reasons["CT POST CONTRAST"].startswith("post-contrast (ContrastBolusAgent")
  for s in ds.scans:       # every kept series is one scan record with its study's labels
    assert s.patient_id == s.scan_id.split("/")[0]
    assert s.info["selection"].startswith("soft-tissue axial: axial, kernel ")
    assert s.info["description"] and s.info["kernel"] in ("STANDARD", "SOFT")


def test_policy_counts_and_alternatives(download):
  root, layout = download
  ds = datasets.load("cq500", root)
  total = sum(len(ss) for ss in layout.values())
  soft = sum(keep for ss in layout.values() for _, keep in ss)
  assert ds.report["policy_counts"] == {"soft_tissue_axial": soft, "one_per_study": NUM_STUDIES,
                                        "all": total}
  one = datasets.load("cq500", root, options=datasets.LoadOptions(
      series={"policy": "one_per_study"}))
  assert len(one.scans) == NUM_STUDIES
  for s in one.scans:      # the thinnest soft-tissue series: 0.625 mm, most slices → PLAIN THIN
    assert s.scan_id.endswith("/CT PLAIN THIN")
  every = datasets.load("cq500", root, options=datasets.LoadOptions(series={"policy": "all"}))
  assert len(every.scans) == total
  few = datasets.load("cq500", root, options=datasets.LoadOptions(series={"min_slices": 5}))
  assert not any(s.scan_id.endswith("/CT Plain") for s in few.scans)    # 4 slices < 5


def test_labels_majority_of_calvarial_fracture(download):
  root, _ = download
  names = list(labels.CQ500_LABELS)
  ds = datasets.load("cq500", root)
  for s in ds.scans:
    n = int(s.scan_id.split("/")[0].rsplit("-", 1)[1])
    assert s.labels[names.index("fracture")] == (n % 3 == 0)     # not the `Fracture` column
    assert s.labels[names.index("edh")] == (n % 2 == 0)
    assert s.labels[names.index("ich")] == (n % 2 == 0)          # (1,1,0) yes, (0,0,1) no
    assert "CalvarialFracture" in s.info["label_source"]
  anyr = datasets.load("cq500", root, options=datasets.LoadOptions(reader_rule="any"))
  assert all(s.labels[names.index("ich")] == 1 for s in anyr.scans)   # one reader is enough
  r3 = datasets.load("cq500", root, options=datasets.LoadOptions(reader_rule="R3"))
  for s in r3.scans:
    n = int(s.scan_id.split("/")[0].rsplit("-", 1)[1])
    assert s.labels[names.index("ich")] == (n % 2 == 1)          # R3's own vote
    assert s.labels[names.index("fracture")] == 0


def test_folds_group_patients_and_spread_rare_labels(download):
  root, _ = download
  ds = datasets.load("cq500", root)
  y = np.stack([s.labels for s in ds.scans])
  edh = list(labels.CQ500_LABELS).index("edh")
  k = 5                            # 5 EDH studies, 5 folds: one in each
  for seed in range(4):
    test_of = np.full(len(ds.scans), -1)
    for fold in range(k):
      sp = datasets.split_indices(ds.patient_ids, num_folds=k, fold=fold, seed=seed, labels=y,
                                  stratify=True)
      test_of[sp["test"]] = fold
    for p in set(ds.patient_ids):  # every series of a patient in one fold
      assert len({test_of[i] for i, q in enumerate(ds.patient_ids) if q == p}) == 1
    for fold in range(k):
      assert y[test_of == fold, edh].sum() > 0, (seed, fold)


def test_series_policy_options_are_checked():
  with pytest.raises(Exception, match="policy"):
    series_policy.options({"policy": "thinnest"})
  with pytest.raises(Exception, match="unknown fields"):
    series_policy.options({"polcy": "all"})
