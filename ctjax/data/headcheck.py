"""Is this a head CT? A verdict from the pixels and the geometry, not from header tags.

BodyPartExamined, StudyDescription and SeriesDescription are often blank or wrong, so
`check(hu, spacing)` looks at what a head CT is:

- field of view (pixel spacing × matrix) between `MIN_FOV_MM` and `MAX_FOV_MM` on both axes:
  a smaller field cannot hold a head, a larger one is no CT reconstruction;
- z coverage ((slices - 1) × slice step) at most `MAX_Z_COVERAGE_MM`: a series reaching further
  is a neck, chest or body scan (a single slice has no coverage and passes this test);
- a skull on the middle slices: on up to `RING_SLICES` slices spread over the middle half of
  the stack (slices `RING_RANGE` of the way up), `RING_RAYS` rays are cast from the centre of
  the body (the largest connected region above `BODY_HU`) to the edge of the image. A ray
  *hits the skull* when it meets bone (HU above `bone_threshold_hu`). A slice shows a skull
  when at least `MIN_SKULL_COVERAGE` of the rays hit it, the region inside the first hits has
  an area of at least `MIN_INTRACRANIAL_MM2` (the polar area of the hit radii: a spinal canal
  or a rib gap is ~300 mm², a head's cranial cavity ≥ 6000 mm² at any level above the orbits)
  and at least `MIN_BRAIN_SHARE` of what the rays cross before `INNER_FRACTION` of the way to
  the hit lies in `BRAIN_HU` (CSF, grey and white matter, blood; fat, air, contrast-enhanced
  organs and bowel fall outside). The series shows a skull when at least `MIN_RING_SHARE` of
  the checked slices do. Rays (not a filled bone mask) tolerate sutures, burr holes and the
  partial-volume gaps of a coarse matrix.
- `bone_threshold_hu`: `BONE_HU` at a fine matrix; a skull of `SKULL_MM` in a pixel wider
  than itself is partial-volumed towards soft tissue, so coarse pixels use
  BONE_HU × SKULL_MM / pixel size, never below `MIN_BONE_HU` (above any brain or blood HU).

The verdict is pure (numbers in, `HeadVerdict` out); `qa.flags` turns a failure into the
`not_head` flag, and `require_head` raises `NotHeadCTError` with the reasons for the commands
that refuse a series (`config.data.require_head`, on by default; off for research on other
anatomy).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import numpy as np

from ctjax import errors

MIN_FOV_MM, MAX_FOV_MM = 100.0, 500.0    # a neonate's head is ~110 mm wide; bores are 500-800
MAX_Z_COVERAGE_MM = 320.0     # vertex to the foramen magnum ~150-200 mm (head CTA from the arch)
BODY_HU = -300.0              # skin and soft tissue against air
BONE_HU, MIN_BONE_HU, SKULL_MM = 300.0, 120.0, 6.0
BRAIN_HU = (-15.0, 100.0)
RING_SLICES, RING_RANGE, RING_RAYS = 5, (0.25, 0.75), 72
INNER_FRACTION = 0.85
MIN_SKULL_COVERAGE = 0.7
MIN_INTRACRANIAL_MM2 = 3000.0
MIN_BRAIN_SHARE = 0.6
MIN_RING_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class HeadVerdict:
  """`is_head` and, when False, one reason per failed test; `measures` holds the numbers."""
  is_head: bool
  reasons: tuple[str, ...]
  measures: dict[str, Any]

  def summary(self) -> str:
    return "head CT" if self.is_head else "not a head CT: " + "; ".join(self.reasons)


def bone_threshold_hu(pixel_mm: float) -> float:
  """HU above which a pixel counts as skull (see the module docstring)."""
  return float(max(MIN_BONE_HU, min(BONE_HU, BONE_HU * SKULL_MM / max(pixel_mm, 1e-6))))


def ring_slices(num_slices: int) -> np.ndarray:
  """Indices of the slices the skull test looks at (middle half of the stack)."""
  lo, hi = RING_RANGE
  return np.unique(np.linspace((num_slices - 1) * lo, (num_slices - 1) * hi,
                               RING_SLICES).round().astype(int))


def _largest_component(mask: np.ndarray) -> np.ndarray:
  from scipy import ndimage
  labels, n = ndimage.label(mask)
  if n == 0:
    return mask
  sizes = np.bincount(labels.ravel())[1:]
  return labels == int(np.argmax(sizes)) + 1


def skull_ring(hu: np.ndarray, dy: float, dx: float) -> dict[str, float]:
  """Skull-ring measures of one slice [H, W] (HU; dy, dx mm): the share of rays that hit
  bone, the area inside the hits (mm²) and the brain-range share inside."""
  h, w = hu.shape
  body = _largest_component(hu > BODY_HU)
  if not body.any():
    return {"coverage": 0.0, "area_mm2": 0.0, "brain_share": 0.0}
  cy, cx = np.argwhere(body).mean(axis=0)
  angles = np.linspace(0.0, 2 * np.pi, RING_RAYS, endpoint=False)
  t = np.arange(0.0, float(np.hypot(h, w)), 0.5)              # pixels along each ray
  ys = cy + np.sin(angles)[:, None] * t[None]
  xs = cx + np.cos(angles)[:, None] * t[None]
  inside = (ys > -0.5) & (ys < h - 0.5) & (xs > -0.5) & (xs < w - 0.5)
  values = np.where(inside, hu[np.clip(np.rint(ys), 0, h - 1).astype(int),
                               np.clip(np.rint(xs), 0, w - 1).astype(int)], -1024.0)
  bone = values >= bone_threshold_hu(max(dy, dx))
  hit = bone.any(axis=1)
  first = np.where(hit, bone.argmax(axis=1), 0)
  mm_per_step = 0.5 * np.hypot(np.sin(angles) * dy, np.cos(angles) * dx)
  radius = np.where(hit, first * mm_per_step, 0.0)
  area = float(0.5 * np.sum(radius ** 2) * (2 * np.pi / RING_RAYS))
  inner = (np.arange(t.size)[None] < (INNER_FRACTION * first)[:, None]) & hit[:, None]
  crossed = values[inner]
  lo, hi = BRAIN_HU
  brain = float(np.mean((crossed >= lo) & (crossed <= hi))) if crossed.size else 0.0
  return {"coverage": float(hit.mean()), "area_mm2": area, "brain_share": brain}


def shows_skull(ring: dict[str, float]) -> bool:
  return (ring["coverage"] >= MIN_SKULL_COVERAGE and ring["area_mm2"] >= MIN_INTRACRANIAL_MM2
          and ring["brain_share"] >= MIN_BRAIN_SHARE)


def check(hu: np.ndarray, spacing: Sequence[float]) -> HeadVerdict:
  """The verdict on a volume: `hu` [S, H, W] in HU, `spacing` (z, y, x) mm."""
  hu = np.asarray(hu)
  if hu.ndim != 3 or 0 in hu.shape:
    raise ValueError(f"expected HU [slices, rows, columns], got shape {hu.shape}")
  s, h, w = hu.shape
  dz, dy, dx = (float(v) for v in spacing)
  fov = (h * dy, w * dx)
  coverage = (s - 1) * abs(dz)
  rings = {int(k): skull_ring(np.asarray(hu[k], np.float32), dy, dx) for k in ring_slices(s)}
  with_skull = [k for k, r in rings.items() if shows_skull(r)]
  reasons = []
  if min(fov) < MIN_FOV_MM:
    reasons.append(f"field of view {fov[0]:.0f} x {fov[1]:.0f} mm is smaller than a head "
                   f"({MIN_FOV_MM:.0f} mm)")
  if max(fov) > MAX_FOV_MM:
    reasons.append(f"field of view {fov[0]:.0f} x {fov[1]:.0f} mm exceeds any CT "
                   f"reconstruction ({MAX_FOV_MM:.0f} mm)")
  if coverage > MAX_Z_COVERAGE_MM:
    reasons.append(f"z coverage {coverage:.0f} mm exceeds a head's ({MAX_Z_COVERAGE_MM:.0f} mm)")
  if len(with_skull) < MIN_RING_SHARE * len(rings):
    best = max(rings.values(), key=lambda r: (r["coverage"], r["area_mm2"]))
    reasons.append(
        f"no skull around brain-range tissue on {len(rings) - len(with_skull)} of "
        f"{len(rings)} middle slice(s) (best: bone on {best['coverage']:.0%} of the rays, "
        f"{best['area_mm2'] / 100:.0f} cm² inside, {best['brain_share']:.0%} of it in "
        f"{BRAIN_HU[0]:g}..{BRAIN_HU[1]:g} HU)")
  measures = {"fov_mm": [round(v, 1) for v in fov], "z_coverage_mm": round(coverage, 1),
              "slices": s, "ring_slices": sorted(rings), "slices_with_skull": with_skull,
              "rings": {k: {m: round(v, 3) for m, v in r.items()} for k, r in rings.items()}}
  return HeadVerdict(not reasons, tuple(reasons), measures)


def check_volume(vol: Any) -> HeadVerdict:
  """`check` of a `ctjax.data.dicom.Volume` (any object with `hu` and `spacing`)."""
  return check(vol.hu, vol.spacing)


def require_head(vol: Any, *, label: Optional[str] = None,
                 verdict: Optional[HeadVerdict] = None) -> HeadVerdict:
  """The verdict, or `NotHeadCTError` (one line naming the series and the reasons) when the
  volume is no head CT. `label` names the series (default: the folder of its first file);
  `verdict`: one already computed for `vol` (e.g. the one given to `qa.flags`)."""
  verdict = verdict if verdict is not None else check_volume(vol)
  if not verdict.is_head:
    files = getattr(vol, "files", None) or []
    where = label or (os.path.dirname(files[0]) if files else None)
    raise errors.NotHeadCTError(
        "; ".join(verdict.reasons) + " — ctjax's models read head CT; set "
        "config.data.require_head=False to read other anatomy anyway (research)", where)
  return verdict
