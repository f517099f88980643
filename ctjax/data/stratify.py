"""Folds grouped by patient and stratified over multi-label targets.

Iterative stratification (Sechidis, Tsoumakas and Vlahavas, "On the stratification of
multi-label data", ECML PKDD 2011, Algorithm 1), applied to patients instead of examples so that
every series of a patient lands in one fold: a patient counts as many examples as it has scans
and carries, per label, the number of its scans with that label. The rarest label (fewest
remaining positive scans) is dealt first, so that labels with only a few positives (CQ500's EDH:
20 of 1,181 scans) are spread over the folds before the common ones fill them.

The implementations on PyPI (`iterative-stratification`, `scikit-multilearn`) stratify
examples, not groups, and bring scikit-learn as a run-time dependency; this is the paper's
algorithm with group weights, ~40 lines.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ctjax import errors


def stratified_group_folds(groups: Sequence[str], labels: np.ndarray, num_folds: int,
                           seed: int) -> np.ndarray:
  """int32 [N] fold of each example; `groups` [N] (patient ids), `labels` [N, L] (0/1).

  Deterministic in (groups, labels, num_folds, seed); no group spans two folds.
  """
  if num_folds < 1:
    raise errors.ConfigError(f"num_folds must be >= 1, got {num_folds}")
  labels = np.asarray(labels, np.float64).reshape(len(groups), -1) > 0
  names = sorted(set(groups))
  index = {g: i for i, g in enumerate(names)}
  gid = np.asarray([index[g] for g in groups], np.int64)
  size = np.bincount(gid, minlength=len(names)).astype(np.float64)          # scans per patient
  counts = np.zeros((len(names), labels.shape[1]), np.float64)               # positives per patient
  np.add.at(counts, gid, labels.astype(np.float64))
  rng = np.random.default_rng(seed)

  # Desired examples per fold (equal shares) and desired positives per fold and label.
  want = np.full(num_folds, size.sum() / num_folds)
  want_label = np.tile(counts.sum(0) / num_folds, (num_folds, 1))
  fold_of = np.full(len(names), -1, np.int64)
  left = counts.copy()
  tie_break = rng.permutation(len(names))                                    # random order

  def place(g: int, label: int | None) -> None:
    if label is None:
      score = (want, )
    else:
      score = (want_label[:, label], want)
    best = np.arange(num_folds)
    for s in score:
      best = best[s[best] == s[best].max()]
    f = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
    fold_of[g] = f
    want[f] -= size[g]
    want_label[f] -= counts[g]
    left[g] = 0

  while True:
    remaining = left.sum(0)
    present = np.flatnonzero(remaining > 0)
    if not present.size:
      break
    label = int(present[np.argmin(remaining[present])])   # ties: the first label
    members = np.flatnonzero((left[:, label] > 0) & (fold_of < 0))
    for g in members[np.argsort(tie_break[members])]:
      place(int(g), label)
  for g in np.flatnonzero(fold_of < 0)[np.argsort(tie_break[fold_of < 0])]:
    place(int(g), None)                                    # patients without any positive
  return fold_of[gid].astype(np.int32)
