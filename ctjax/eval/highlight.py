"""The highlighted area on one scale for every scan, and how well it points at the lesion.

DrCT's highlighted area (DrCT2 paper, section V.A and Figure 2) is, per sampled slice,
`ReLU(Σ_c f_c · A_c)`: the last conv block's activation A weighted by the slice's feature
attention f (eq. 3; ctjax.models.drct). It is label-agnostic (one map per slice for all labels)
and it is not multiplied by the slice attention: that is a softmax over the scan's own slices,
so it would lift the key slices of any scan, negative or not, merely for being its most attended
ones (the attention chooses which slices the report shows and is printed beside each). The map's
values are in the model's units, so it means "look here" only relative to a reference that is
the same for every scan:

* `reference`: the median, over the positive validation scans (any label positive), of the
  scan's peak highlight on its key slices (the `keyslice.TOP_K` most attended). A drawn value
  of 1.0 is "as strong as a typical positive scan at its peak".
* `floor` (in reference units): the median of the same peak over the negative validation
  scans, kept in [FLOOR_MIN, FLOOR_MAX]. Below it nothing is drawn, so about half of the
  negative validation scans show no highlight at all.

`fit_scale` computes both from a split's predictions (host numpy); the run stores them in
`<workdir>/highlight_scale.json` (`SCALE_FILE`, written when training ends: the drct task's
`after_training`), and every report of the run draws with it (`ctjax.inference.report_html`).

`pointing_game` scores the map against truth boxes (phantom scans carry the bleeding lesions'
per-slice boxes): on each key slice that shows a lesion, the share of the upsampled map's mass
inside the boxes (`mass`), whether its peak lies inside (`hit`), and the boxes' share of the
image (`chance`: what a uniform map would score).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Mapping, Optional

import numpy as np
from PIL import Image

from ctjax.errors import CheckpointError
from ctjax.eval import keyslice

SCALE_FILE = "highlight_scale.json"
FLOOR_MIN = 0.05       # the floor never hides less than this …
FLOOR_MAX = 0.8        # … nor more than this (a map that does not separate the classes)
DEFAULT_FLOOR = 0.25   # without negative scans to fit it on


@dataclasses.dataclass(frozen=True)
class HighlightScale:
  """The run's fixed highlight scale: `reference` in raw map units ↦ 1.0; `floor` in those
  relative units (nothing drawn below)."""
  reference: float
  floor: float
  basis: str = ""              # what the reference and floor are, in words (shown on the page)
  split: str = "val"
  step: Optional[int] = None   # the checkpoint step whose predictions fitted it
  num_positive: int = 0
  num_negative: int = 0
  top_k: int = keyslice.TOP_K

  def __post_init__(self):
    if not (math.isfinite(self.reference) and self.reference > 0):
      raise ValueError(f"highlight reference {self.reference!r} must be finite and > 0")
    if not 0.0 <= self.floor < 1.0:
      raise ValueError(f"highlight floor {self.floor!r} must be in [0, 1)")

  def relative(self, highlight: Any) -> np.ndarray:
    """Raw highlight → reference units (1.0 = the reference)."""
    return np.asarray(highlight, np.float32) / np.float32(self.reference)

  def drawn(self, highlight: Any) -> np.ndarray:
    """Raw highlight → drawn intensity in [0, 1]: 0 at or below the floor, 1 at ≥ reference."""
    return np.clip((self.relative(highlight) - self.floor) / (1.0 - self.floor), 0.0, 1.0)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def key_slice_peaks(highlight: Any, attention: Any, k: int = keyslice.TOP_K) -> np.ndarray:
  """highlight [N, m, h, w], attention [N, m] → float64 [N]: each scan's peak on its key slices."""
  hl = np.asarray(highlight, np.float64)
  top = keyslice.top_k_indices(np.asarray(attention), k)                  # [N, k]
  per_slice = hl.reshape(hl.shape[:2] + (-1,)).max(axis=-1)             # [N, m]
  return np.take_along_axis(per_slice, top, axis=1).max(axis=1)


def key_slice_sums(highlight: Any, attention: Any, k: int = keyslice.TOP_K) -> np.ndarray:
  """highlight [N, m, h, w] (raw or drawn), attention [N, m] → [N]: summed over key slices."""
  hl = np.asarray(highlight, np.float64)
  top = keyslice.top_k_indices(np.asarray(attention), k)
  per_slice = hl.reshape(hl.shape[:2] + (-1,)).sum(axis=-1)
  return np.take_along_axis(per_slice, top, axis=1).sum(axis=1)


def positive_scans(labels: Any, threshold: float = 0.5) -> np.ndarray:
  """bool [N]: any label positive."""
  labels = np.asarray(labels)
  return (labels > threshold).any(axis=-1) if labels.ndim > 1 else labels > threshold


def fit_scale(highlight: Any, attention: Any, labels: Any, *, k: int = keyslice.TOP_K,
              split: str = "val", step: Optional[int] = None) -> HighlightScale:
  """The fixed scale from a split's raw maps [N, m, h, w], slice attention [N, m] and labels
  [N, L] (see the module docstring)."""
  peaks = key_slice_peaks(highlight, attention, k)
  pos = positive_scans(labels)
  if peaks.size == 0:
    raise ValueError("no scans to fit the highlight scale on")
  if pos.any():
    reference, what = float(np.median(peaks[pos])), (
        f"1.0 = the median peak highlight on the {k} key slices of the {int(pos.sum())} "
        f"{split} scans with a positive label")
  else:
    reference, what = float(np.median(peaks)), (
        f"1.0 = the median peak highlight on the {k} key slices of all {peaks.size} {split} "
        "scans (none has a positive label)")
  if not (math.isfinite(reference) and reference > 0):   # every map zero: nothing to draw
    reference, what = 1.0, f"every {split} map is zero; 1.0 = raw value 1"
  if (~pos).any():
    floor = float(np.clip(np.median(peaks[~pos]) / reference, FLOOR_MIN, FLOOR_MAX))
    what += (f"; nothing is drawn below {floor:.2f}, the median peak of the "
             f"{int((~pos).sum())} {split} scans without (kept in [{FLOOR_MIN}, {FLOOR_MAX}])")
  else:
    floor = DEFAULT_FLOOR
    what += f"; nothing is drawn below {floor:.2f} (no negative {split} scan to fit it on)"
  return HighlightScale(reference=reference, floor=floor, basis=what, split=split,
                        step=None if step is None else int(step), num_positive=int(pos.sum()),
                        num_negative=int((~pos).sum()), top_k=int(k))


def scale_path(workdir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(workdir) / SCALE_FILE


def save_scale(workdir: str | os.PathLike, scale: HighlightScale) -> pathlib.Path:
  """Writes `<workdir>/highlight_scale.json` atomically."""
  path = scale_path(workdir)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(scale.to_json(), indent=2))
  os.replace(tmp, path)
  return path


def load_scale(workdir: str | os.PathLike) -> Optional[HighlightScale]:
  """The run's stored scale; None when the run has none (trained before it was stored)."""
  path = scale_path(workdir)
  if not path.is_file():
    return None
  try:
    raw = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(HighlightScale)}
    return HighlightScale(**{k: v for k, v in raw.items() if k in fields})
  except (ValueError, TypeError) as e:   # JSONDecodeError is a ValueError
    raise CheckpointError(f"{path}: not a highlight scale ({e}); delete it and refit it with "
                          "python -m ctjax.evaluate --split val --fit_highlight_scale") from e


def upsample(highlight: Any, size_hw: tuple[int, int]) -> np.ndarray:
  """One map [h, w] → float32 [H, W], bilinear (as the report draws it)."""
  hm = np.nan_to_num(np.asarray(highlight, np.float32))
  if hm.shape == tuple(size_hw):
    return hm
  return np.asarray(Image.fromarray(hm).resize((int(size_hw[1]), int(size_hw[0])),
                                               Image.Resampling.BILINEAR), np.float32)


def box_mask(boxes: Any, size_hw: tuple[int, int]) -> np.ndarray:
  """bool [H, W]: the union of boxes [K, 4] (x0, y0, x1, y1 pixels, x1/y1 exclusive; rows
  with negative coordinates are padding)."""
  mask = np.zeros(size_hw, bool)
  for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
    if min(x0, y0, x1, y1) < 0:
      continue
    r0, r1 = int(math.floor(y0)), int(math.ceil(y1))
    c0, c1 = int(math.floor(x0)), int(math.ceil(x1))
    mask[max(r0, 0):max(r1, 0), max(c0, 0):max(c1, 0)] = True
  return mask


def pointing_game(highlight: Any, attention: Any, boxes: Any, image_size: int, *,
                  k: int = keyslice.TOP_K, scale: Optional[HighlightScale] = None
                  ) -> dict[str, float]:
  """The map against truth boxes on the key slices that show a lesion.

  highlight [N, m, h, w] raw maps; attention [N, m]; boxes [N, m, K, 4] in pixels of the
  `image_size` square image (-1 padded). `scale`: score the drawn map (floor applied) instead
  of the raw one. Returns means over the scored slices: `mass` (share of the map inside the
  boxes), `hit` (its peak inside), `chance` (the boxes' share of the image), and `slices`,
  `scans` (how many were scored; NaN means when none).
  """
  hl = np.asarray(highlight, np.float32)
  boxes = np.asarray(boxes, np.float32)
  if hl.ndim != 4 or boxes.ndim != 4 or boxes.shape[:2] != hl.shape[:2] or boxes.shape[-1] != 4:
    raise ValueError(f"highlight {hl.shape} and boxes {boxes.shape} must be [N, m, h, w] and "
                     "[N, m, K, 4]")
  size = (int(image_size), int(image_size))
  top = keyslice.top_k_indices(np.asarray(attention), k)
  mass, hit, chance, scans = [], [], [], set()
  for n in range(hl.shape[0]):
    for t in top[n]:
      mask = box_mask(boxes[n, t], size)
      if not mask.any():
        continue
      up = upsample(hl[n, t], size)   # as the report draws it: upsampled, then the floor
      up = scale.drawn(up) if scale is not None else np.maximum(up, 0.0)
      total = float(up.sum())
      chance.append(float(mask.mean()))
      scans.add(n)
      if total <= 0:           # nothing drawn on this slice: no mass in the box, no peak
        mass.append(0.0)
        hit.append(0.0)
        continue
      mass.append(float(up[mask].sum()) / total)
      hit.append(float(mask.flat[int(np.argmax(up))]))
  mean = (lambda v: float(np.mean(v)) if v else float("nan"))
  return {"mass": mean(mass), "hit": mean(hit), "chance": mean(chance),
          "slices": len(mass), "scans": len(scans)}


def highlight_metrics(outputs: Mapping[str, Any], *, image_size: Optional[int] = None,
                      scale: Optional[HighlightScale] = None, k: int = keyslice.TOP_K,
                      prefix: str = "highlight/") -> dict[str, float]:
  """Flat figures for `Task.summarize` from concatenated predict outputs (`highlight`,
  `slice_attention`, `labels`; `lesion_boxes` [N, m, K, 4] where the data has them), all on the
  drawn map (floor applied) under `scale`, by default the scale these outputs fit (on the
  validation split: the one the run stores, for the same state):

  `reference`, `floor`: that scale; `key_sum_positive` / `key_sum_negative`: the mean over
  positive / negative scans of the drawn map summed over the key slices, `key_sum_ratio`
  (negative / positive; 0: nothing drawn on negatives); `pointing/{mass,hit,chance,slices,
  scans}`: `pointing_game` on the positive scans' key slices with a lesion box.
  """
  hl, att = np.asarray(outputs["highlight"]), np.asarray(outputs["slice_attention"])
  out: dict[str, float] = {}
  if hl.ndim != 4 or not hl.shape[0]:
    return out
  if scale is None:
    scale = fit_scale(hl, att, outputs["labels"], k=k)
  out[f"{prefix}reference"], out[f"{prefix}floor"] = scale.reference, scale.floor
  pos = positive_scans(outputs["labels"])
  sums = key_slice_sums(scale.drawn(hl), att, k)
  if pos.any():
    out[f"{prefix}key_sum_positive"] = float(sums[pos].mean())
  if (~pos).any():
    out[f"{prefix}key_sum_negative"] = float(sums[~pos].mean())
  if pos.any() and (~pos).any() and sums[pos].mean() > 0:
    out[f"{prefix}key_sum_ratio"] = float(sums[~pos].mean() / sums[pos].mean())
  boxes = outputs.get("lesion_boxes")
  if boxes is not None and np.asarray(boxes).size and image_size:
    pg = pointing_game(hl, att, boxes, int(image_size), k=k, scale=scale)
    out.update({f"{prefix}pointing/{name}": v for name, v in pg.items()})
  return out
