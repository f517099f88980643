"""ctjax.eval.detection: detection quality of decoded boxes on a hand-computed case."""

import numpy as np

from ctjax.eval import detection


def test_detection_quality_hand_case():
  # Slice 0: top-1 centre outside the only box, the second (score 0.6) inside; slice 1: no box.
  scores = np.array([[0.9, 0.6], [0.9, 0.1]])
  centres = np.array([[[50, 50], [12, 12]], [[5, 5], [6, 6]]], np.float32)
  pred = np.array([[[40, 40, 60, 60], [10, 10, 20, 20]], [[0, 0, 1, 1], [0, 0, 1, 1]]],
                  np.float32)
  truth = np.array([[[10, 10, 20, 20]], [[-1, -1, -1, -1]]], np.float32)
  q = detection.detection_quality(scores, centres, pred, truth, np.array([1, 0]),
                                  score_threshold=0.5)
  assert q["centre_hit_rate"] == 0.0
  assert q["box_recall"] == 1.0 and q["recall_iou50"] == 1.0 and q["num_slices"] == 1
