"""Blend-sign losses' detection targets vs hand-computed cases and CenterNet's own numpy code;
exact decoding of perfect predictions (ctjax.models.blendnet.decode); detection quality."""

import math

import numpy as np
import pytest

from ctjax.eval import detection
from ctjax.models.blendnet import decode
from ctjax.train.tasks import blend_losses as losses


# --- CenterNet's reference code (xingyizhou/CenterNet, src/lib/utils/image.py), verbatim logic.
def ref_gaussian_radius(det_size, min_overlap=0.7):
  height, width = det_size
  a1, b1 = 1, (height + width)
  c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
  r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
  a2, b2 = 4, 2 * (height + width)
  c2 = (1 - min_overlap) * width * height
  r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
  a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
  c3 = (min_overlap - 1) * width * height
  r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
  return min(r1, r2, r3)


def ref_draw_umich_gaussian(heatmap, center, radius):
  diameter = 2 * radius + 1
  sigma = diameter / 6
  m = n = radius
  y, x = np.ogrid[-m:m + 1, -n:n + 1]
  gaussian = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
  x, y = int(center[0]), int(center[1])
  height, width = heatmap.shape[0:2]
  left, right = min(x, radius), min(width - x, radius + 1)
  top, bottom = min(y, radius), min(height - y, radius + 1)
  masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
  masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
  np.maximum(masked_heatmap, masked_gaussian, out=masked_heatmap)
  return heatmap


@pytest.mark.parametrize("hw", [(4, 4), (10, 6), (1, 30), (2.5, 7.25), (64, 64)])
def test_gaussian_radius_matches_centernet(hw):
  assert float(losses.gaussian_radius(*hw)) == pytest.approx(ref_gaussian_radius(hw), 1e-5)


def test_hand_computed_small_case():
  # One 16×32 px box at (8, 8)-(24, 40), stride 8: 2×4 cells, centre (16, 24) px → cell (2, 3)
  # (x, y); radius floor(r(4, 2)) = 0 so only the centre is lit; reference point (2.5, 3.5)
  # cells → left 1.5, right 0.5, top 2.5, bottom 1.5.
  boxes = np.array([[[8, 8, 24, 40], [-1, -1, -1, -1]]], np.float32)
  t = losses.render_targets(boxes, np.array([1]), (8, 8), 8)
  assert int(np.floor(ref_gaussian_radius((4, 2)))) == 0
  heat = np.zeros((8, 8))
  heat[3, 2] = 1
  np.testing.assert_array_equal(t["heatmap"][0], heat)
  np.testing.assert_array_equal(t["centre_mask"][0], heat)
  np.testing.assert_allclose(t["distances"][0, 3, 2], [1.5, 0.5, 2.5, 1.5])
  assert np.count_nonzero(np.asarray(t["distances"])) == 4


def test_gaussians_match_centernet_drawing():
  # Two overlapping boxes and one at the border; stride 4 on a 16×16 map.
  boxes = np.array([[[4, 4, 36, 36], [20, 10, 60, 30], [0, 40, 10, 64], [-1, -1, -1, -1]]],
                   np.float32)
  t = losses.render_targets(boxes, np.array([3]), (16, 16), 4)
  want = np.zeros((16, 16), np.float32)
  for x0, y0, x1, y1 in boxes[0, :3] / 4:
    r = max(0, int(ref_gaussian_radius((math.ceil(y1 - y0), math.ceil(x1 - x0)))))
    ref_draw_umich_gaussian(want, (int((x0 + x1) / 2), int((y0 + y1) / 2)), r)
  assert want[5, 5] == 1 and want.max() == 1
  np.testing.assert_allclose(t["heatmap"][0], want, atol=1e-6)
  assert np.asarray(t["centre_mask"]).sum() == 3


def test_padded_and_empty_boxes_give_no_target():
  boxes = np.array([[[5, 5, 5, 9], [1, 1, 9, 9]], [[1, 1, 9, 9], [0, 0, 0, 0]]], np.float32)
  t = losses.render_targets(boxes, np.array([1, 0]), (4, 4), 4)
  assert np.asarray(t["heatmap"]).sum() == 0 and np.asarray(t["centre_mask"]).sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decoding_a_perfect_prediction_gives_the_truth_boxes(seed):
  rng = np.random.default_rng(seed)
  size, stride, k = 128, 8, 4
  boxes = np.full((3, 6, 4), -1, np.float32)
  num = np.array([4, 1, 0])
  for b in range(3):
    cells = rng.choice(16 * 16, size=num[b], replace=False)   # distinct centre cells
    for j, c in enumerate(cells):
      cy, cx = divmod(int(c), 16)
      ctr = (np.array([cx, cy]) + rng.uniform(0, 1, 2)) * stride
      half = rng.uniform(3, 30, 2)
      boxes[b, j] = [ctr[0] - half[0], ctr[1] - half[1], ctr[0] + half[0], ctr[1] + half[1]]
  t = losses.render_targets(boxes, num, (size // stride,) * 2, stride)
  dec = decode(t["heatmap"], t["distances"], stride, top_k=k)
  for b in range(3):
    keep = np.asarray(dec["scores"][b]) > 0.5
    got = np.asarray(dec["boxes"][b])[keep]
    want = boxes[b, :num[b]]
    assert len(got) == num[b]
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(order(got), order(want), atol=1e-4)
  q = detection.detection_quality(dec["scores"], dec["centres"], dec["boxes"], boxes, num,
                                  score_threshold=0.5)
  assert q["centre_hit_rate"] == 1.0 and q["recall_iou50"] == 1.0
  assert q["mean_best_iou"] == pytest.approx(1.0)
  assert q["num_slices"] == 2 and q["num_boxes"] == 5


def test_focal_loss_hand_computed():
  # 1×2 map: a centre with p = 0.8, a negative with target 0.5 and p = 0.4.
  logits = np.log(np.array([[[0.8 / 0.2, 0.4 / 0.6]]], np.float32))
  heat = np.array([[[1.0, 0.5]]], np.float32)
  mask = np.array([[[1.0, 0.0]]], np.float32)
  got = float(losses.centre_focal_loss(logits, heat, mask)[0])
  want = -(0.2 ** 2 * np.log(0.8)) - (0.5 ** 4 * 0.4 ** 2 * np.log(0.6))
  assert got == pytest.approx(want, rel=1e-5)
  plain = float(losses.centre_focal_loss(logits, heat, mask, alpha=0.0, beta=0.0)[0])
  assert plain == pytest.approx(-np.log(0.8) - np.log(0.6), rel=1e-5)   # the paper's log loss


def test_smooth_l1_at_centres_only():
  pred = np.zeros((1, 2, 2, 4), np.float32)
  target = np.zeros((1, 2, 2, 4), np.float32)
  target[0, 0, 1] = [0.5, 2.0, 0, 0]
  target[0, 1, 1] = [9, 9, 9, 9]          # not a centre: ignored
  mask = np.array([[[0, 1], [0, 0]]], np.float32)
  got = float(losses.distance_loss(pred, target, mask)[0])
  assert got == pytest.approx(0.5 * 0.25 + (2.0 - 0.5))


def test_centre_log_loss_is_the_papers_log_loss_on_rendered_targets():
  """Blend-sign paper, Detection branch: "L_cls is log loss over two classes", Gaussian-rendered
  targets: -[t log p + (1 - t) log(1 - p)] summed over cells (config.loss.centre_loss=log)."""
  logits = np.log(np.array([[[0.8 / 0.2, 0.4 / 0.6]]], np.float32))
  heat = np.array([[[1.0, 0.5]]], np.float32)
  got = float(losses.centre_log_loss(logits, heat)[0])
  want = -np.log(0.8) - (0.5 * np.log(0.4) + 0.5 * np.log(0.6))
  assert got == pytest.approx(want, rel=1e-5)
  import torch
  ref = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.tensor(logits), torch.tensor(heat), reduction="sum")
  assert got == pytest.approx(float(ref), rel=1e-5)


def _det_case():
  rng = np.random.default_rng(0)
  det = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
  boxes = np.full((2, 2, 4), -1, np.float32)
  boxes[0, 0] = [10, 12, 40, 50]
  num = np.array([1, 0], np.int32)
  mask = np.ones(2, np.float32)
  return det, boxes, num, mask


def test_detection_loss_switches_centre_loss_and_n():
  det, boxes, num, mask = _det_case()
  cfg = dict(min_overlap=0.7, focal_alpha=2.0, focal_beta=4.0, det_normalize="pixels",
             centre_loss="focal")
  stride = 16.0                                   # 64 px input, 4 × 4 map
  _, parts = losses.detection_loss(det, boxes, num, stride, mask, cfg)
  targets = losses.render_targets(boxes, num, (4, 4), stride, 0.7)
  focal = losses.centre_focal_loss(det[..., 0], targets["heatmap"], targets["centre_mask"])
  assert float(parts["det_centre_loss"]) == pytest.approx(float(focal.sum()) / 32, rel=1e-6)
  # N = input pixels (the paper's): the map's 2 × 16 cells × stride² = 8,192.
  _, px = losses.detection_loss(det, boxes, num, stride, mask, {**cfg,
                                                                "det_normalize": "input_pixels"})
  assert float(px["det_centre_loss"]) == pytest.approx(float(focal.sum()) / 8192, rel=1e-6)
  assert float(px["det_box_loss"]) == pytest.approx(float(parts["det_box_loss"]) / 256,
                                                    rel=1e-6)
  _, log = losses.detection_loss(det, boxes, num, stride, mask, {**cfg, "centre_loss": "log"})
  want = float(losses.centre_log_loss(det[..., 0], targets["heatmap"]).sum()) / 32
  assert float(log["det_centre_loss"]) == pytest.approx(want, rel=1e-6)
  assert float(log["det_box_loss"]) == pytest.approx(float(parts["det_box_loss"]), rel=1e-6)
  from ctjax.errors import ConfigError
  with pytest.raises(ConfigError, match="centre_loss='l2'"):
    losses.detection_loss(det, boxes, num, stride, mask, {**cfg, "centre_loss": "l2"})
