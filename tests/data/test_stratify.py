"""ctjax.data.stratify: patient-grouped iterative stratification (Sechidis et al. 2011)."""

import numpy as np
from hypothesis import given, settings, strategies as st

from ctjax.data import datasets, stratify


def _data(seed, n=120, patients=50, rates=(0.5, 0.15, 0.04)):
  rng = np.random.default_rng(seed)
  groups = [f"p{rng.integers(patients)}" for _ in range(n)]
  labels = (rng.random((n, len(rates))) < np.asarray(rates)).astype(np.float32)
  return groups, labels


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(3, 10))
def test_groups_intact_deterministic_and_every_fold_used(seed, k):
  groups, labels = _data(seed)
  folds = stratify.stratified_group_folds(groups, labels, k, seed)
  for g in set(groups):
    assert len({f for q, f in zip(groups, folds) if q == g}) == 1
  np.testing.assert_array_equal(folds, stratify.stratified_group_folds(groups, labels, k, seed))
  assert set(folds.tolist()) == set(range(k))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(3, 8))
def test_rare_label_reaches_every_fold_it_can(seed, k):
  groups, labels = _data(seed)
  folds = stratify.stratified_group_folds(groups, labels, k, seed)
  for j in range(labels.shape[1]):
    positive_patients = {g for g, y in zip(groups, labels[:, j]) if y}
    if len(positive_patients) >= k:
      assert {f for f, y in zip(folds, labels[:, j]) if y} == set(range(k)), j


def test_label_balance_beats_round_robin():
  """Summed deviation of per-fold positives from the ideal share, over 20 draws: stratified
  folds are closer than the patient round-robin on every label."""
  k = 5
  dev_s = np.zeros(3)
  dev_r = np.zeros(3)
  for seed in range(20):
    groups, labels = _data(seed)
    for folds, dev in ((stratify.stratified_group_folds(groups, labels, k, seed), dev_s),
                       (datasets.kfold_by_patient(groups, k, seed), dev_r)):
      per = np.stack([labels[folds == f].sum(0) for f in range(k)])
      dev += np.abs(per - labels.sum(0) / k).sum(0)
  assert np.all(dev_s < dev_r), (dev_s, dev_r)


def test_split_indices_stratified_default_off():
  groups, labels = _data(3)
  a = datasets.split_indices(groups, num_folds=5, fold=1, seed=0)
  b = datasets.split_indices(groups, num_folds=5, fold=1, seed=0, labels=labels)
  for key in a:                        # labels alone change nothing: stratify is opt-in
    np.testing.assert_array_equal(a[key], b[key])
  c = datasets.split_indices(groups, num_folds=5, fold=1, seed=0, labels=labels, stratify=True)
  assert sorted(np.concatenate(list(c.values())).tolist()) == list(range(len(groups)))
