"""Centre-heatmap detection for the blend-sign detector: targets, losses, decoding, quality.

Conventions (paper, "Detection branch"; CenterNet, Duan et al. 2019 / Zhou et al. 2019; FCOS):
- The detection map has `h × w` cells of `stride` input pixels; cell (i, j) has the reference
  point ((j + 0.5)·stride, (i + 0.5)·stride) in input pixels.
- A box (x0, y0, x1, y1) in input pixels puts its centre at cell (floor(cy/stride),
  floor(cx/stride)). The heatmap target there is 1, surrounded by a Gaussian of radius r from the
  CornerNet rule (`gaussian_radius` on the box size in cells, min_overlap 0.7), sigma =
  (2r + 1) / 6, truncated to the (2r+1)² window, max over boxes (CenterNet's draw_umich_gaussian).
- Distance targets at the centre cell are (left, right, top, bottom) from the reference point
  to the box sides, in cells: left = (ref_x - x0) / stride, right = (x1 - ref_x) / stride, ….
  Decoding inverts this exactly, so a perfect prediction decodes to the truth boxes.

Array functions are jnp (jit-able, work on numpy input); quality metrics are numpy, host side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MIN_OVERLAP = 0.7     # CornerNet/CenterNet radius rule.
FOCAL_ALPHA = 2.0     # CenterNet's penalty-reduced focal loss exponents.
FOCAL_BETA = 4.0


def gaussian_radius(height, width, min_overlap: float = MIN_OVERLAP):
  """CornerNet's radius (as in CenterNet's code): the smallest of the three quadratic roots.

  A pair of corners within this radius of the truth still gives a box with IoU ≥ min_overlap.
  Works elementwise on numpy or jax arrays.
  """
  xp = jnp if isinstance(height, jax.Array) or isinstance(width, jax.Array) else np
  height = xp.asarray(height, dtype=xp.float32)
  width = xp.asarray(width, dtype=xp.float32)
  b1 = height + width
  c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
  r1 = (b1 + xp.sqrt(b1 ** 2 - 4 * c1)) / 2
  b2 = 2 * (height + width)
  c2 = (1 - min_overlap) * width * height
  r2 = (b2 + xp.sqrt(b2 ** 2 - 16 * c2)) / 2
  a3 = 4 * min_overlap
  b3 = -2 * min_overlap * (height + width)
  c3 = (min_overlap - 1) * width * height
  r3 = (b3 + xp.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
  return xp.minimum(xp.minimum(r1, r2), r3)


def box_mask(boxes: jax.Array, num_boxes: jax.Array) -> jax.Array:
  """bool [B, K]: the first `num_boxes` boxes that have positive width and height."""
  k = jnp.arange(boxes.shape[1])[None, :]
  return ((k < jnp.asarray(num_boxes)[:, None]) & (boxes[..., 2] > boxes[..., 0])
          & (boxes[..., 3] > boxes[..., 1]))


def render_targets(boxes: jax.Array, num_boxes: jax.Array, grid_hw: tuple[int, int],
                   stride: float, min_overlap: float = MIN_OVERLAP) -> dict[str, jax.Array]:
  """Training targets of the detection branch.

  boxes float [B, K, 4] (x0, y0, x1, y1 input pixels, padded), num_boxes int [B].
  Returns "heatmap" float32 [B, h, w] (Gaussian-rendered centres, 1 at centres),
  "distances" float32 [B, h, w, 4] (left, right, top, bottom in cells, at centre cells, 0
  elsewhere) and "centre_mask" float32 [B, h, w] (1 at centre cells). A later box wins a cell
  that two centres share.
  """
  h, w = grid_hw
  boxes = jnp.asarray(boxes, jnp.float32)
  valid = box_mask(boxes, num_boxes)                                        # [B, K]
  x0, y0, x1, y1 = (boxes[..., i] / stride for i in range(4))             # cells
  cx_int = jnp.clip(jnp.floor((x0 + x1) / 2), 0, w - 1)
  cy_int = jnp.clip(jnp.floor((y0 + y1) / 2), 0, h - 1)
  radius = jnp.maximum(0.0, jnp.floor(gaussian_radius(jnp.ceil(y1 - y0), jnp.ceil(x1 - x0),
                                                      min_overlap)))
  sigma = (2 * radius + 1) / 6
  xs = jnp.arange(w, dtype=jnp.float32)
  ys = jnp.arange(h, dtype=jnp.float32)
  dx = xs[None, None, None, :] - cx_int[..., None, None]                   # [B, K, 1, w]
  dy = ys[None, None, :, None] - cy_int[..., None, None]                   # [B, K, h, 1]
  r = radius[..., None, None]
  s2 = 2 * sigma[..., None, None] ** 2
  g = jnp.exp(-(dx ** 2 + dy ** 2) / s2) * (jnp.abs(dx) <= r) * (jnp.abs(dy) <= r)
  g = jnp.where(valid[..., None, None], g, 0.0)                            # [B, K, h, w]
  heatmap = jnp.max(g, axis=1) if boxes.shape[1] else jnp.zeros((boxes.shape[0], h, w))

  at_centre = (dx == 0) & (dy == 0) & valid[..., None, None]               # [B, K, h, w]
  ref_x = cx_int + 0.5
  ref_y = cy_int + 0.5
  dist = jnp.stack([ref_x - x0, x1 - ref_x, ref_y - y0, y1 - ref_y], axis=-1)  # [B, K, 4]
  # The last box whose centre falls in a cell owns that cell.
  k_idx = jnp.arange(boxes.shape[1])[None, :, None, None]
  owner = jnp.max(jnp.where(at_centre, k_idx, -1), axis=1)                 # [B, h, w]
  centre_mask = (owner >= 0).astype(jnp.float32)
  own = jax.nn.one_hot(owner, boxes.shape[1], dtype=jnp.float32)           # [B, h, w, K]
  distances = jnp.einsum("bhwk,bkc->bhwc", own, dist)
  return {"heatmap": heatmap.astype(jnp.float32), "distances": distances,
          "centre_mask": centre_mask}


def centre_focal_loss(logits: jax.Array, heatmap: jax.Array, centre_mask: jax.Array,
                      alpha: float = FOCAL_ALPHA, beta: float = FOCAL_BETA) -> jax.Array:
  """Per-example sum [B] of CenterNet's penalty-reduced focal loss (a log loss over centre vs
  not-centre, paper's L_cls, with Gaussian-softened negatives). alpha = 0 gives the plain log
  loss down-weighted near centres by (1 - target)^beta. Divide by the number of centres."""
  logits = logits.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  log_p = jax.nn.log_sigmoid(logits)
  log_1mp = jax.nn.log_sigmoid(-logits)
  pos = centre_mask * (1 - p) ** alpha * log_p
  neg = (1 - centre_mask) * (1 - heatmap) ** beta * p ** alpha * log_1mp
  return -jnp.sum(pos + neg, axis=(1, 2))


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * ax ** 2 / beta, ax - 0.5 * beta)


def distance_loss(pred: jax.Array, target: jax.Array, centre_mask: jax.Array) -> jax.Array:
  """Per-example sum [B] of smooth-L1 over the 4 distances at centre cells (paper's L_reg)."""
  return jnp.sum(smooth_l1(pred.astype(jnp.float32) - target) * centre_mask[..., None],
                 axis=(1, 2, 3))


def decode(centre_probs: jax.Array, distances: jax.Array, stride: float, *,
           top_k: int = 10) -> dict[str, jax.Array]:
  """CenterNet decoding: 3×3 max-pool peaks, top-k, boxes from the distances at each peak.

  centre_probs [B, h, w] (sigmoid of the centre channel), distances [B, h, w, 4] in cells.
  Returns "scores" [B, k], "centres" [B, k, 2] (x, y input pixels) and "boxes" [B, k, 4]
  (x0, y0, x1, y1 input pixels), best first. Keep those above a score threshold.
  """
  b, h, w = centre_probs.shape
  pooled = jax.lax.reduce_window(centre_probs, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1),
                                 "SAME")
  peaks = jnp.where(centre_probs >= pooled, centre_probs, 0.0).reshape(b, h * w)
  k = min(top_k, h * w)
  scores, idx = jax.lax.top_k(peaks, k)
  ys = (idx // w).astype(jnp.float32)
  xs = (idx % w).astype(jnp.float32)
  d = jnp.take_along_axis(distances.reshape(b, h * w, 4), idx[..., None], axis=1)
  ref_x = (xs + 0.5) * stride
  ref_y = (ys + 0.5) * stride
  boxes = jnp.stack([ref_x - d[..., 0] * stride, ref_y - d[..., 2] * stride,
                     ref_x + d[..., 1] * stride, ref_y + d[..., 3] * stride], axis=-1)
  return {"scores": scores, "centres": jnp.stack([ref_x, ref_y], axis=-1), "boxes": boxes}


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


def boxes_from_strings(spec: str) -> np.ndarray:
  """"x0 y0 x1 y1;x0 y0 x1 y1" (blend_labels.csv) → float32 [K, 4]; "" → [0, 4]."""
  spec = (spec or "").strip()
  if not spec:
    return np.zeros((0, 4), np.float32)
  return np.array([[float(v) for v in part.split()] for part in spec.split(";") if part.strip()],
                  np.float32).reshape(-1, 4)

