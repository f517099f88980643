"""ctjax.eval.highlight: the fixed highlight scale, its file, and the pointing game."""

import json

import numpy as np
import pytest

from ctjax.errors import CheckpointError
from ctjax.eval import highlight as H
from ctjax.eval import keyslice


def _scans(peaks_pos, peaks_neg, m=8, hw=4, seed=0):
  """Maps whose key-slice peak is given per scan; a larger value on a non-key slice."""
  rng = np.random.default_rng(seed)
  peaks = list(peaks_pos) + list(peaks_neg)
  n = len(peaks)
  hl = rng.random((n, m, hw, hw)).astype(np.float32) * 0.01
  att = rng.random((n, m))
  att[:, -1] = -1.0                        # the last slice is never a key slice …
  for i, p in enumerate(peaks):
    key = int(keyslice.top_k_indices(att[i])[2])
    hl[i, key, 1, 2] = p
    hl[i, -1, 0, 0] = 100.0                # … so its large value must not count
  labels = np.zeros((n, 3), np.float32)
  labels[: len(peaks_pos), 1] = 1.0
  return hl, att, labels


def test_fit_scale_median_positive_peak_and_negative_floor():
  hl, att, labels = _scans([4.0, 6.0, 10.0], [1.0, 1.5, 2.0, 9.0])
  s = H.fit_scale(hl, att, labels, split="val", step=12)
  assert s.reference == pytest.approx(6.0)
  assert s.floor == pytest.approx(1.75 / 6.0)             # median of the negatives' peaks
  assert (s.num_positive, s.num_negative, s.step, s.split) == (3, 4, 12, "val")
  assert "3 val scans with a positive label" in s.basis and "0.29" in s.basis
  np.testing.assert_allclose(H.key_slice_peaks(hl, att), [4, 6, 10, 1, 1.5, 2, 9], rtol=1e-6)


def test_fit_scale_edge_cases():
  hl, att, labels = _scans([4.0, 6.0], [5.9, 6.0])
  assert H.fit_scale(hl, att, labels).floor == H.FLOOR_MAX        # negatives as strong
  hl, att, labels = _scans([4.0, 6.0], [0.0])
  assert H.fit_scale(hl, att, labels).floor == H.FLOOR_MIN
  hl, att, labels = _scans([4.0, 6.0], [])
  s = H.fit_scale(hl, att, labels)
  assert s.floor == H.DEFAULT_FLOOR and s.num_negative == 0 and "no negative" in s.basis
  hl, att, labels = _scans([], [2.0, 4.0])
  s = H.fit_scale(hl, att, labels)
  assert s.reference == pytest.approx(3.0) and "none has a positive label" in s.basis
  s = H.fit_scale(np.zeros((2, 8, 4, 4)), np.ones((2, 8)), np.ones((2, 3)))
  assert s.reference == 1.0 and "zero" in s.basis
  with pytest.raises(ValueError):
    H.HighlightScale(reference=0.0, floor=0.2)
  with pytest.raises(ValueError):
    H.HighlightScale(reference=1.0, floor=1.0)


def test_drawn_is_zero_to_the_floor_then_linear_to_the_reference():
  s = H.HighlightScale(reference=4.0, floor=0.25)
  np.testing.assert_allclose(s.drawn([0.0, 1.0, 2.5, 4.0, 8.0]), [0, 0, 0.5, 1, 1], atol=1e-6)
  np.testing.assert_allclose(s.relative([2.0]), [0.5])


def test_scale_file_round_trip_and_bad_file(tmp_path):
  assert H.load_scale(tmp_path) is None
  s = H.HighlightScale(reference=3.5, floor=0.3, basis="b", split="val", step=7,
                       num_positive=2, num_negative=5)
  path = H.save_scale(tmp_path, s)
  assert path.name == H.SCALE_FILE
  assert H.load_scale(tmp_path) == s
  assert json.loads(path.read_text())["reference"] == 3.5
  path.write_text('{"reference": -1, "floor": 0.2}')
  with pytest.raises(CheckpointError, match="not a highlight scale") as e:
    H.load_scale(tmp_path)
  assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
  path.write_text("{")
  with pytest.raises(CheckpointError):
    H.load_scale(tmp_path)


def test_box_mask_union_and_padding():
  m = H.box_mask([[1, 2, 3, 4], [2, 2, 5, 3], [-1, -1, -1, -1]], (6, 6))
  want = np.zeros((6, 6), bool)
  want[2:4, 1:3] = True
  want[2:3, 2:5] = True
  np.testing.assert_array_equal(m, want)


def test_pointing_game_by_hand():
  n, m, size = 2, 6, 16
  att = np.tile(np.linspace(1, 0, m), (n, 1))             # key slices 0..4, slice 5 not
  hl = np.zeros((n, m, 4, 4), np.float32)
  boxes = np.full((n, m, 2, 4), -1.0, np.float32)
  boxes[0, 0, 0] = [0, 0, 8, 8]                           # top-left quarter of the image
  hl[0, 0, :2, :2] = 1.0                                  # map inside it …
  boxes[0, 1, 0] = [8, 8, 16, 16]
  hl[0, 1] = 1.0                                          # … a uniform map
  boxes[1, 5, 0] = [0, 0, 16, 16]                         # not a key slice: not scored
  hl[1, 5] = 1.0
  boxes[1, 2, 0] = [0, 0, 4, 4]                           # key slice with a box, empty map
  pg = H.pointing_game(hl, att, boxes, size)
  assert (pg["slices"], pg["scans"]) == (3, 2)
  up = H.upsample(hl[0, 0], (size, size))
  inside = up[:8, :8].sum() / up.sum()
  assert 0.8 < inside < 1.0                               # bilinear spill over the edge
  assert pg["mass"] == pytest.approx((inside + 0.25 + 0.0) / 3, rel=1e-5)
  assert pg["chance"] == pytest.approx((0.25 + 0.25 + 1 / 16) / 3)
  # Peaks: slice 0 inside; uniform slice 1: argmax is the first pixel, outside [8, 16); empty: 0.
  assert pg["hit"] == pytest.approx(1 / 3)
  drawn = H.pointing_game(hl * 0.1, att, boxes, size, scale=H.HighlightScale(1.0, 0.5))
  assert drawn["mass"] == 0 and drawn["hit"] == 0          # all under the floor
  none = H.pointing_game(hl, att, np.full_like(boxes, -1), size)
  assert none["slices"] == 0 and np.isnan(none["mass"])
  with pytest.raises(ValueError, match="boxes"):
    H.pointing_game(hl, att, boxes[:, :3], size)


def test_highlight_metrics_on_the_drawn_map():
  hl, att, labels = _scans([4.0, 6.0, 8.0], [1.0, 2.0])
  scale = H.HighlightScale(reference=4.0, floor=0.25)
  out = H.highlight_metrics({"highlight": hl, "slice_attention": att, "labels": labels},
                            scale=scale)
  drawn = H.key_slice_sums(scale.drawn(hl), att)
  assert out["highlight/key_sum_positive"] == pytest.approx(drawn[:3].mean())
  assert out["highlight/key_sum_negative"] == pytest.approx(drawn[3:].mean())
  assert out["highlight/key_sum_negative"] == pytest.approx((0 + (0.5 - 0.25) / 0.75) / 2, abs=1e-3)
  assert out["highlight/key_sum_ratio"] == pytest.approx(drawn[3:].mean() / drawn[:3].mean())
  assert out["highlight/reference"] == 4.0 and "highlight/pointing/mass" not in out
  fitted = H.highlight_metrics({"highlight": hl, "slice_attention": att, "labels": labels})
  assert fitted["highlight/reference"] == pytest.approx(6.0)
