"""Detection quality of the blend-sign detector's decoded boxes (host side, numpy).

Inputs are what `ctjax.models.blendnet.decode` returns (scores, centres, boxes in input
pixels) and the truth boxes of the batch (padded, with `num_boxes`).
"""

from __future__ import annotations

import numpy as np


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU [N, M] of boxes a [N, 4] and b [M, 4]."""
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)
  return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def detection_quality(scores: np.ndarray, centres: np.ndarray, pred_boxes: np.ndarray,
                      boxes: np.ndarray, num_boxes: np.ndarray, *,
                      score_threshold: float = 0.3, iou_threshold: float = 0.5
                      ) -> dict[str, float]:
  """Host-side detection quality over slices with at least one truth box.

  "centre_hit_rate": fraction of those slices whose top-1 predicted centre lies inside a truth
  box; "box_recall": fraction of truth boxes containing a predicted centre scoring ≥
  `score_threshold`; "recall_iou50": fraction of truth boxes matched by such a predicted box with
  IoU ≥ `iou_threshold`; "mean_best_iou": mean over truth boxes of the best IoU among the top-k
  predicted boxes. Inputs as `decode` returns them (numpy), truth padded with num_boxes.
  """
  scores, centres, pred_boxes = map(np.asarray, (scores, centres, pred_boxes))
  boxes, num_boxes = np.asarray(boxes, np.float32), np.asarray(num_boxes)
  hits, slices, found, matched, best, total = 0, 0, 0, 0, [], 0
  for i in range(len(scores)):
    truth = boxes[i, :int(num_boxes[i])]
    truth = truth[(truth[:, 2] > truth[:, 0]) & (truth[:, 3] > truth[:, 1])]
    if not len(truth):
      continue
    slices += 1
    cx, cy = centres[i, :, None, 0], centres[i, :, None, 1]
    inside = ((cx >= truth[None, :, 0]) & (cx <= truth[None, :, 2])
              & (cy >= truth[None, :, 1]) & (cy <= truth[None, :, 3]))     # [k, T]
    top = int(np.argmax(scores[i]))
    hits += bool(inside[top].any())
    keep = scores[i] >= score_threshold
    found += int(inside[keep].any(axis=0).sum())
    iou = _iou(truth, pred_boxes[i])                                       # [T, k]
    matched += int((iou[:, keep] >= iou_threshold).any(axis=1).sum())
    best.extend(iou.max(axis=1).tolist())
    total += len(truth)
  nan = float("nan")
  return {"centre_hit_rate": hits / slices if slices else nan,
          "box_recall": found / total if total else nan,
          "recall_iou50": matched / total if total else nan,
          "mean_best_iou": float(np.mean(best)) if best else nan,
          "num_slices": float(slices), "num_boxes": float(total)}
