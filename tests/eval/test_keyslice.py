"""Algorithm 1 of DrCT2 on hand-made attention vectors and against a brute-force reading."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ctjax.eval import keyslice


def _scan(m, lesion_slices, ranked):
  """Attention over m slices whose ranking is `ranked` (most attended first)."""
  att = np.zeros(m)
  for r, i in enumerate(ranked):
    att[i] = 1.0 - 0.01 * r
  les = np.zeros(m, bool)
  les[list(lesion_slices)] = True
  return att, les


def test_easy_task_counts_lesions_in_top5():
  # 8 lesion slices (0..7); the top 5 attended are 0, 1, 10, 2, 11 → 3 of 5 show a lesion.
  att, les = _scan(12, range(8), [0, 1, 10, 2, 11])
  r = keyslice.key_slice_tasks(att[None], les[None])
  assert r["easy"] == pytest.approx(3 / 5)
  assert r["num_easy"] == 1 and r["num_difficult"] == 0 and r["num_comprehensive"] == 1
  assert math.isnan(r["difficult"])
  # comprehensive: top 8 = 0,1,10,2,11 + (rest by index: 3,4,5) → 6 of 8.
  assert r["comprehensive"] == pytest.approx(6 / 8)


def test_difficult_task_is_any_lesion_in_top5():
  a1, l1 = _scan(10, [7], [7, 0, 1, 2, 3])      # found at rank 1
  a2, l2 = _scan(10, [9], [0, 1, 2, 3, 4])      # slice 9 ranks last → missed
  a3, l3 = _scan(10, [2, 8], [5, 6, 7, 0, 8])   # slice 8 at rank 5 → found
  r = keyslice.key_slice_tasks(np.stack([a1, a2, a3]), np.stack([l1, l2, l3]))
  assert r["difficult"] == pytest.approx(2 / 3)
  assert r["num_difficult"] == 3 and r["num_easy"] == 0 and math.isnan(r["easy"])
  # comprehensive: scan1 top-1 = {7} → 1; scan2 top-1 = {0} → 0; scan3 top-2 = {5,6} → 0.
  assert r["comprehensive"] == pytest.approx(1 / 3)


def test_exactly_five_lesion_slices_belong_to_easy_and_difficult():
  att, les = _scan(28, [3, 4, 5, 6, 7], [3, 20, 4, 21, 22])
  r = keyslice.key_slice_tasks(att[None], les[None])
  assert (r["num_easy"], r["num_difficult"], r["num_comprehensive"]) == (1, 1, 1)
  assert r["easy"] == pytest.approx(2 / 5)
  assert r["difficult"] == 1.0
  assert r["comprehensive"] == pytest.approx(2 / 5)   # m_select = h = 5
  # Four and six lesion slices fall on one side only.
  att4, les4 = _scan(28, [3, 4, 5, 6], [3])
  att6, les6 = _scan(28, [3, 4, 5, 6, 7, 8], [3])
  r = keyslice.key_slice_tasks(np.stack([att4, att6]), np.stack([les4, les6]))
  assert (r["num_easy"], r["num_difficult"], r["num_comprehensive"]) == (1, 1, 2)


def test_scans_without_lesions_and_padding_are_ignored():
  att, les = _scan(8, [], [0])
  r = keyslice.key_slice_tasks(att[None], les[None])
  assert all(math.isnan(r[t]) for t in keyslice.TASKS)
  assert (r["num_easy"], r["num_difficult"], r["num_comprehensive"], r["num_scans"]) == (0, 0, 0, 1)
  a1, l1 = _scan(8, [1], [1])
  a2, l2 = _scan(8, [1], [0])
  r = keyslice.key_slice_tasks(np.stack([a1, a2]), np.stack([l1, l2]), valid=[True, False])
  assert r["difficult"] == 1.0 and r["num_scans"] == 1


def test_ties_rank_lower_slice_first():
  att = np.full((1, 10), 0.1)   # all equal → ranking is 0, 1, 2, ...
  np.testing.assert_array_equal(keyslice.top_k_indices(att), [[0, 1, 2, 3, 4]])
  les = np.zeros((1, 10), bool)
  les[0, 5] = True               # rank 6 → missed by the top 5
  assert keyslice.key_slice_tasks(att, les)["difficult"] == 0.0
  les[0, 4] = True               # rank 5 → found
  assert keyslice.key_slice_tasks(att, les)["difficult"] == 1.0


def test_rejects_bad_input():
  with pytest.raises(ValueError, match="must both be"):
    keyslice.key_slice_tasks(np.zeros((2, 5)), np.zeros((2, 4), bool))
  with pytest.raises(ValueError, match="NaN"):
    keyslice.key_slice_tasks(np.full((1, 5), np.nan), np.ones((1, 5), bool))


def test_per_disease_pools_over_slices():
  names = ["any", "epidural"]
  # scan 0: any at slices 0..3 (top-4 = 0,1,9,8 → 2 hits), epidural at slice 9 (top-1 = 0 → 0).
  a0, _ = _scan(10, [], [0, 1, 9, 8])
  # scan 1: any at slices 2..9 (8 slices; top-8 = 2..9 by construction → 8 hits), no epidural.
  a1, _ = _scan(10, [], [2, 3, 4, 5, 6, 7, 8, 9])
  labels = np.zeros((2, 10, 2), np.uint8)
  labels[0, 0:4, 0] = 1
  labels[0, 9, 1] = 1
  labels[1, 2:10, 0] = 1
  r = keyslice.per_disease_accuracy(np.stack([a0, a1]), labels, names)
  assert r["any"]["accuracy"] == pytest.approx((2 + 8) / (4 + 8))
  assert r["any"]["macro"] == pytest.approx((2 / 4 + 1) / 2)
  assert (r["any"]["slices"], r["any"]["scans"]) == (12, 2)
  assert r["epidural"]["accuracy"] == 0.0 and r["epidural"]["slices"] == 1
  flat = keyslice.key_slice_metrics(np.stack([a0, a1]), labels, names)
  assert flat["keyslice/comprehensive"] == pytest.approx(r["any"]["macro"])
  assert flat["keyslice/epidural/accuracy"] == 0.0
  assert flat["keyslice/num_easy"] == 1   # scan 1 (8 lesion slices)


def test_paper_comparison_table_lists_both_models():
  att, les = _scan(28, range(6), [0, 1, 2, 20, 21])
  r = keyslice.key_slice_tasks(att[None], les[None])
  text = keyslice.format_paper_comparison({"DrCT2": r, "DrCT1": r})
  for s in ("83.92%", "62.67%", "67.15%", "81.59%", "58.76%", "65.72%", "60.00%", "6,529"):
    assert s in text, s
  pd = keyslice.per_disease_accuracy(att[None], les[None, :, None], ["any"])
  text = keyslice.format_paper_comparison({"DrCT2": r}, {"DrCT2": pd})
  assert "78.23%" in text and "83,923" in text


def _brute(attention, lesion, k=5):
  """Algorithm 1 written literally, one scan at a time, with Python sorting."""
  sums = {t: [] for t in keyslice.TASKS}
  for att, les in zip(attention, lesion):
    order = sorted(range(len(att)), key=lambda i: (-att[i], i))
    h = int(sum(les))
    top5 = order[:k]
    d5 = sum(bool(les[j]) for j in top5)
    if h >= k:
      sums["easy"].append(d5 / k)
    if 1 <= h <= k:
      sums["difficult"].append(1.0 if d5 > 0 else 0.0)
    if h >= 1:
      sums["comprehensive"].append(sum(bool(les[j]) for j in order[:h]) / h)
  return {t: (sum(v) / len(v) if v else math.nan) for t, v in sums.items()}, {
      t: len(v) for t, v in sums.items()}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(1, 30), st.data())
def test_matches_brute_force(n, m, data):
  # Attention from a small set of values so that ties are common.
  att = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]),
                                             min_size=m, max_size=m), min_size=n, max_size=n)))
  les = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=m, max_size=m),
                                    min_size=n, max_size=n)), dtype=bool)
  got = keyslice.key_slice_tasks(att, les)
  want, counts = _brute(att.tolist(), les.tolist())
  for t in keyslice.TASKS:
    assert got[f"num_{t}"] == counts[t]
    if math.isnan(want[t]):
      assert math.isnan(got[t])
    else:
      assert got[t] == pytest.approx(want[t], abs=1e-12)
      assert 0.0 <= got[t] <= 1.0


def test_comparison_command_reads_evaluate_json(tmp_path, capsys):
  import json
  att, les = _scan(28, range(6), [0, 1, 2, 20, 21])
  labels = np.stack([les, les], axis=-1)[None].astype(np.uint8)
  flat = keyslice.key_slice_metrics(att[None], labels, ["any", "subdural"])
  tasks, per = keyslice.from_metrics(flat)
  assert tasks["easy"] == pytest.approx(3 / 5) and tasks["num_easy"] == 1
  assert per["subdural"]["accuracy"] == pytest.approx(4 / 6)   # top 6: 0, 1, 2, 20, 21, then 3
  (tmp_path / "e.json").write_text(json.dumps({"macro_f1": 0.5, **flat}))
  from ctjax.commands import evaluate
  assert evaluate.main(["compare", f"DrCT2={tmp_path / 'e.json'}"]) == 0
  out = capsys.readouterr().out
  assert "60.00%" in out and "83.92%" in out and "84.84%" in out   # ours, Table 5, Table 6
  (tmp_path / "none.json").write_text("{}")
  assert evaluate.main(["compare", f"DrCT1={tmp_path / 'none.json'}"]) == 1
