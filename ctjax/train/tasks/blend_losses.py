"""Losses of the blend-sign detector (blend-sign paper, "Classification branch", "Detection
branch", "Optimization", "Self-knowledge distillation"): weighted cross-entropy, the KL term of
self-knowledge distillation, and the centre-heatmap detection loss with its training targets.

Detection conventions (CenterNet, Duan et al. 2019 / Zhou et al. 2019; FCOS):
- The detection map has `h × w` cells of `stride` input pixels; cell (i, j) has the reference
  point ((j + 0.5)·stride, (i + 0.5)·stride) in input pixels.
- A box (x0, y0, x1, y1) in input pixels puts its centre at cell (floor(cy/stride),
  floor(cx/stride)). The heatmap target there is 1, surrounded by a Gaussian of radius r from the
  CornerNet rule (`gaussian_radius` on the box size in cells, min_overlap 0.7), sigma =
  (2r + 1) / 6, truncated to the (2r+1)² window, max over boxes (CenterNet's draw_umich_gaussian).
- Distance targets at the centre cell are (left, right, top, bottom) from the reference point
  to the box sides, in cells: left = (ref_x - x0) / stride, right = (x1 - ref_x) / stride, ….
  `ctjax.models.blendnet.decode` inverts this exactly, so a perfect prediction decodes to the
  truth boxes.
All functions are jnp (jit-able, accept numpy input).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ctjax.errors import ConfigError

MIN_OVERLAP = 0.7     # CornerNet/CenterNet radius rule.
FOCAL_ALPHA = 2.0     # CenterNet's penalty-reduced focal loss exponents.
FOCAL_BETA = 4.0
# config.loss.centre_loss and config.loss.det_normalize (`detection_loss`).
CENTRE_LOSSES = ("focal", "log")
DET_NORMALIZE = ("pixels", "input_pixels", "centres")


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


def centre_log_loss(logits: jax.Array, heatmap: jax.Array) -> jax.Array:
  """Per-example sum [B] of the plain log loss of every cell against its Gaussian-rendered
  target (the blend-sign paper's L_cls: "log loss over two classes (center point vs. not
  center point)", targets rendered as Duan et al. 2019): -[t log p + (1 - t) log(1 - p)]."""
  logits = logits.astype(jnp.float32)
  t = heatmap.astype(jnp.float32)
  return -jnp.sum(t * jax.nn.log_sigmoid(logits) + (1 - t) * jax.nn.log_sigmoid(-logits),
                  axis=(1, 2))


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * ax ** 2 / beta, ax - 0.5 * beta)


def distance_loss(pred: jax.Array, target: jax.Array, centre_mask: jax.Array) -> jax.Array:
  """Per-example sum [B] of smooth-L1 over the 4 distances at centre cells (paper's L_reg)."""
  return jnp.sum(smooth_l1(pred.astype(jnp.float32) - target) * centre_mask[..., None],
                 axis=(1, 2, 3))


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, class_weights: jax.Array,
                           mask: jax.Array) -> jax.Array:
  """PyTorch's CrossEntropyLoss(weight=w): sum_i w[y_i]·CE_i / sum_i w[y_i] over masked i."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  wy = class_weights[labels] * mask
  return jnp.sum(wy * nll) / jnp.maximum(jnp.sum(wy), 1e-12)


def distillation_kl(logits: jax.Array, teacher_probs: jax.Array, mask: jax.Array,
                    temperature: float = 1.0) -> jax.Array:
  """Mean over masked examples of KL(teacher ‖ student) at `temperature` (× T², Hinton)."""
  logq = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  t = teacher_probs.astype(jnp.float32)
  if temperature != 1.0:
    t = jax.nn.softmax(jnp.log(jnp.clip(t, 1e-8, 1.0)) / temperature, axis=-1)
  kl = jnp.sum(jnp.where(t > 0, t * (jnp.log(jnp.clip(t, 1e-12, 1.0)) - logq), 0.0), axis=-1)
  return temperature ** 2 * jnp.sum(kl * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def detection_loss(det: jax.Array, boxes: jax.Array, num_boxes: jax.Array, stride: float,
                   mask: jax.Array, loss_cfg: Mapping[str, Any]) -> tuple[jax.Array, dict]:
  """Paper's L_det: centre log/focal loss on Gaussian targets + smooth-L1 on the distances.

  `loss_cfg["centre_loss"]`: "focal" (CenterNet's penalty-reduced focal loss, `focal_alpha`,
  `focal_beta`) or "log" (`centre_log_loss`, the paper's). `loss_cfg["det_normalize"]` (N):
  "pixels" divides by the number of detection-map pixels (cells) of the masked examples;
  "input_pixels" by their input pixels (the paper's "N is the number of pixels in an input
  image": cells × stride²); "centres" by the number of centres (CenterNet).
  """
  targets = render_targets(boxes, num_boxes, det.shape[1:3], stride,
                                     loss_cfg["min_overlap"])
  centre = targets["centre_mask"] * mask[:, None, None]
  kind = loss_cfg.get("centre_loss", "focal")
  if kind == "focal":
    centre_loss = centre_focal_loss(det[..., 0], targets["heatmap"], targets["centre_mask"],
                                    loss_cfg["focal_alpha"], loss_cfg["focal_beta"])
  elif kind == "log":
    centre_loss = centre_log_loss(det[..., 0], targets["heatmap"])
  else:
    raise ConfigError(f"config.loss.centre_loss={kind!r}; expected one of {CENTRE_LOSSES}")
  reg = distance_loss(det[..., 1:], targets["distances"], targets["centre_mask"])
  cells = jnp.sum(mask) * det.shape[1] * det.shape[2]
  if loss_cfg["det_normalize"] == "pixels":
    norm = jnp.maximum(cells, 1.0)
  elif loss_cfg["det_normalize"] == "input_pixels":
    norm = jnp.maximum(cells * stride * stride, 1.0)
  elif loss_cfg["det_normalize"] == "centres":
    norm = jnp.maximum(jnp.sum(centre), 1.0)
  else:
    raise ConfigError(f"config.loss.det_normalize={loss_cfg['det_normalize']!r}; "
                      f"expected one of {DET_NORMALIZE}")
  l_cls = jnp.sum(centre_loss * mask) / norm
  l_reg = jnp.sum(reg * mask) / norm
  return l_cls + l_reg, {"det_centre_loss": l_cls, "det_box_loss": l_reg}
