"""Findings of the synthetic head CT: haemorrhages, blend sign and mimics, fractures, calcifications.

Each finding is drawn in physical millimetres (head frame of `phantom_anatomy`) as a partial-volume
occupancy on the slices it can touch, together with the HU it paints. The truth mask of a finding
is occupancy >= 0.5, so boxes and slice labels follow exactly the pixels that show it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from ctjax.data import phantom_anatomy as pa

F32 = np.float32
BLEEDS = ("iph", "ivh", "sdh", "edh", "sah")
MIMICS = ("gradient", "halo", "low_contrast")
MASK_THRESHOLD = 0.5


@dataclasses.dataclass
class Lesion:
  """One rendered finding on the slab of slices `idx`."""
  type: str
  idx: np.ndarray                 # slice indices of the slab
  occ: np.ndarray                 # float32 [s,H,W] occupancy in [0, 1]
  hu: np.ndarray | float          # HU painted where occupied ([s,H,W] or scalar)
  hu_range: tuple[float, float]
  blend: bool = False
  mimic: Optional[str] = None
  side: int = 0                   # -1 right, +1 left, 0 midline/both
  halo: Optional[tuple[np.ndarray, float]] = None   # (occupancy, HU) of an oedema rim
  hypo: Optional[np.ndarray] = None                 # blend sign: hypodense component occupancy
  extra: dict = dataclasses.field(default_factory=dict)


def _wrap(a):
  return (a + np.pi) % (2 * np.pi) - np.pi


def slice_center_w(grid: pa.Grid, rng: np.random.Generator, w_lo: float, w_hi: float,
                   v: float) -> float:
  """A head-frame w on a slice centre (at in-plane position v) within [w_lo, w_hi]."""
  zz = grid.z - grid.cz + v * float(grid.tan_pitch)
  ok = np.nonzero((zz >= w_lo) & (zz <= w_hi))[0]
  k = int(rng.choice(ok)) if ok.size else int(np.argmin(np.abs(zz - 0.5 * (w_lo + w_hi))))
  return float(zz[k] + rng.uniform(-0.2, 0.2) * grid.g.thickness)


def sample_iph(grid: pa.Grid, rng: np.random.Generator, *, difficult: bool,
               blend: bool = False) -> dict:
  """Centre, size and density of a parenchymal haematoma (mm, HU).

  blend: the blend sign is a hyperacute finding (first hours), when perihaematomal oedema is
  still thin and rarer, so its rim is drawn narrower than an older clot's.
  """
  g = grid.g
  A, B, C = g.semi_axes
  site = rng.choice(["ganglia", "thalamus", "lobar", "lobar", "cerebellum"],
                    p=[0.3, 0.15, 0.25, 0.2, 0.1])
  side = float(rng.choice([-1.0, 1.0]))
  if site == "ganglia":
    c = (side * rng.uniform(14, 24), rng.uniform(-2, 14), rng.uniform(-0.05, 0.15) * C)
  elif site == "thalamus":
    c = (side * rng.uniform(8, 14), rng.uniform(-14, -4), rng.uniform(-0.05, 0.1) * C)
  elif site == "cerebellum":
    c = (side * rng.uniform(12, 24), -rng.uniform(0.38, 0.5) * B, -rng.uniform(0.42, 0.5) * C)
  else:
    ang = rng.uniform(0, 2 * np.pi)
    r = rng.uniform(0.35, 0.6)
    c = (side * abs(math.cos(ang)) * r * A, math.sin(ang) * r * B * 0.9, rng.uniform(0.05, 0.55) * C)
  if difficult:
    lo = max(3.5, 0.6 * g.pixel_spacing)
    axes = (rng.uniform(lo, lo + 3), rng.uniform(lo, lo + 3), rng.uniform(0.35, 1.0) * g.thickness)
    c = (c[0], c[1], slice_center_w(grid, rng, c[2] - 15, c[2] + 15, c[1]))
  else:
    s = rng.uniform(9, 22)
    axes = (s * rng.uniform(0.7, 1.0), s * rng.uniform(0.8, 1.3),
            max(s * rng.uniform(0.7, 1.1), 3.2 * g.thickness))
  base = rng.uniform(58, 84)
  oedema = (not difficult) and rng.random() < (0.35 if blend else 0.5)
  return dict(center=c, axes=axes, angle=rng.uniform(0, np.pi), lobes=rng.uniform(0, 0.15),
              lobe_phase=rng.uniform(0, 2 * np.pi), hu=base, side=int(side), site=str(site),
              oedema=oedema, oedema_hu=rng.uniform(15, 22) if blend else rng.uniform(12, 20),
              oedema_mm=rng.uniform(1.5, 3.5) if blend else rng.uniform(3, 8))


def _blob(grid: pa.Grid, p: dict, grow: float = 0.0):
  """Slab indices and signed depth (mm) of an irregular rotated ellipsoid `p` grown by `grow`."""
  cu, cv, cw = p["center"]
  a, b, c = (x + grow for x in p["axes"])
  idx = grid.slice_range(cw - c, cw + c, v_extent=abs(cv) + b)
  w = grid.w(idx)
  ca, sa = math.cos(p["angle"]), math.sin(p["angle"])
  du, dv = grid.u - cu, grid.v - cv
  ru = (ca * du + sa * dv)[None]
  rv = (-sa * du + ca * dv)[None]
  lobes = 1.0 + p["lobes"] * np.cos(3 * np.arctan2(rv, ru) + p["lobe_phase"])
  depth = pa.ellipsoid_depth(ru / lobes, rv / lobes, w - cw, a, b, c)
  return idx, depth, (ru, rv, w - cw)


def render_iph(grid: pa.Grid, fields: dict, p: dict, rng: np.random.Generator, *,
               blend: bool = False, mimic: Optional[str] = None) -> Lesion:
  """Hyperdense blob (50–90 HU); blend sign adds a hypodense part behind a sharp margin."""
  pw = grid.g.pixel_spacing
  grow = p["oedema_mm"] if (p["oedema"] or mimic == "halo") else 0.0
  idx, depth, (ru, rv, rw) = _blob(grid, p, grow=grow)
  depth = depth - grow if grow else depth
  brain = fields["brain"][idx]
  occ = (pa.inside(depth, pw) * brain).astype(F32)
  hu = np.full(occ.shape, p["hu"], F32)
  lo, hi = p["hu"], p["hu"]
  les = Lesion("iph", idx, occ, hu, (lo, hi), side=p["side"])
  a = p["axes"]
  if blend or mimic in ("gradient", "low_contrast"):
    # A second compartment, partly wrapped by the clot: a sphere off-centre inside it.
    ang = rng.uniform(0, 2 * np.pi)
    off = np.array([math.cos(ang) * a[0], math.sin(ang) * a[1]]) * rng.uniform(0.3, 0.55)
    r = rng.uniform(0.45, 0.65) * min(a[0], a[1])
    d2 = pa.ellipsoid_depth(ru - off[0], rv - off[1], rw, r, r, max(a[2] * 0.8, r))
    if mimic == "gradient":
      # Smooth density ramp across the clot: heterogeneous but no margin.
      t = np.clip(((ru * off[0] + rv * off[1]) / (np.hypot(*off) + 1e-6)) / (a[0] + a[1]) + 0.5, 0, 1)
      hyper, hypo = p["hu"], p["hu"] - rng.uniform(15, 25)
      hu[...] = hyper + (hypo - hyper) * t
    else:
      if blend:
        # Blend sign (Li et al. 2015): >= 18 HU between the parts. The hypodense part (fresh,
        # unclotted blood, ~44–54 HU) stays denser than brain, so both parts read against it.
        hypo = rng.uniform(44, 54)
        hyper = min(hypo + rng.uniform(20, 34), 90.0)
      else:
        hyper = max(p["hu"], 62.0)
        hypo = hyper - rng.uniform(5, 11)
      comp = pa.inside(d2, pw)
      hu[...] = hyper + (hypo - hyper) * comp
      if blend:
        les.hypo = (comp * occ).astype(F32)
    hyper, hypo = max(hyper, hypo), min(hyper, hypo)
    les.hu_range = (float(np.floor(hypo)), float(np.ceil(hyper)))
    les.extra["components"] = [float(hypo), float(hyper)]
  if grow:
    ring = (pa.inside(depth + grow, pw) * brain - occ).clip(0, 1).astype(F32)
    les.halo = (ring, p["oedema_hu"])
  les.blend, les.mimic = blend, mimic
  les.extra.update(site=p["site"], oedema=bool(grow))
  return les


def render_ivh(grid: pa.Grid, fields: dict, rng: np.random.Generator, *, difficult: bool) -> Lesion:
  """Blood layering in the dependent (posterior) ventricles, or a small clot in one horn."""
  g = grid.g
  B, C = g.semi_axes[1], g.semi_axes[2]
  vent = fields["ventricle"]
  side = int(rng.choice([-1, 0, 1]))
  level = rng.uniform(-0.2, 0.05) * B if not difficult else -0.3 * B
  dep = pa.inside(level - grid.v, g.pixel_spacing)[None]
  if side:
    dep = dep * pa.inside(side * grid.u, g.pixel_spacing)[None]
  occ = vent * dep
  if difficult:
    wc = slice_center_w(grid, rng, -0.05 * C, 0.15 * C, -0.3 * B)
    occ = occ * (np.abs(grid.w() - wc) <= rng.uniform(0.4, 1.2) * g.thickness)
  idx = np.nonzero(occ.reshape(len(occ), -1).max(1) > 0)[0]
  hu = rng.uniform(48, 75)
  return Lesion("ivh", idx, occ[idx].astype(F32), hu, (hu, hu), side=side)


def render_extra_axial(grid: pa.Grid, fields: dict, rng: np.random.Generator, *, kind: str,
                       difficult: bool, side: Optional[int] = None,
                       wc: Optional[float] = None) -> Lesion:
  """SDH (crescent along the inner table) or EDH (biconvex lens limited by sutures)."""
  g = grid.g
  C = g.semi_axes[2]
  pw = g.pixel_spacing
  side = int(rng.choice([-1, 1])) if side is None else side
  phi0 = (0.0 if side > 0 else np.pi) + rng.uniform(-0.9, 0.9)
  if kind == "sdh":
    half_phi = rng.uniform(0.25, 0.45) if difficult else rng.uniform(0.7, 1.2)
    depth_mm = (rng.uniform(2.8, 4.5) + 0.5 * g.pixel_spacing) if difficult else rng.uniform(5.0, 13.0)
    hu = rng.uniform(50, 78)
  else:
    half_phi = rng.uniform(0.2, 0.3) if difficult else rng.uniform(0.28, 0.45)
    depth_mm = (rng.uniform(3.5, 6.0) + 0.5 * g.pixel_spacing) if difficult else rng.uniform(10.0, 22.0)
    hu = rng.uniform(55, 88)
  if difficult:
    wc = slice_center_w(grid, rng, 0.0, 0.5 * C, 0.0)
    half_w = rng.uniform(0.5, 1.3) * g.thickness
  else:
    wc = rng.uniform(0.05, 0.45) * C if wc is None else wc
    half_w = max(rng.uniform(0.22, 0.4) * C if kind == "sdh" else rng.uniform(0.15, 0.25) * C,
                 3.2 * g.thickness)
  idx = grid.slice_range(wc - half_w, wc + half_w)
  w = grid.w(idx)
  dphi = _wrap(fields["phi"] - phi0)[None] / half_phi
  dw = (w - wc) / half_w
  if kind == "sdh":
    prof = np.sqrt(pa.bell(dphi) * pa.bell(dw))
  else:
    prof = np.sqrt(np.clip(1.0 - dphi ** 2 - dw ** 2, 0.0, 1.0))
  d_in = fields["depth"][idx] - fields["t_inner"]
  occ = pa.inside(d_in, pw) * pa.inside(depth_mm * prof - d_in, pw) * (prof > 0)
  occ = (occ * np.clip(fields["cavity"][idx] * 1.0, 0, 1)).astype(F32)
  return Lesion(kind, idx, occ, hu, (hu, hu), side=side, extra=dict(phi=float(phi0)))


def _segment_distance(u, v, p0, p1):
  """In-plane distance (mm) of every pixel to the segment p0-p1 (head frame)."""
  (u0, v0), (u1, v1) = p0, p1
  du, dv = u1 - u0, v1 - v0
  t = np.clip(((u - u0) * du + (v - v0) * dv) / (du * du + dv * dv + 1e-9), 0.0, 1.0)
  return np.hypot(u - (u0 + t * du), v - (v0 + t * dv))


def render_sah(grid: pa.Grid, fields: dict, rng: np.random.Generator, *, difficult: bool) -> Lesion:
  """Thin hyperdense lines: blood filling (and slightly widening) the sulci of a sector of the
  convexity and/or the basal cisterns with the Sylvian and anterior interhemispheric fissures.

  Only the subarachnoid spaces take blood, so on a slice it reads as serpiginous 1–4 mm lines
  following the gyri (a partial-volume grey smear at coarse pixel sizes), never a surface patch.
  """
  g = grid.g
  A, B, C = g.semi_axes
  pw = g.pixel_spacing
  side = int(rng.choice([-1, 1]))
  phi0 = (0.0 if side > 0 else np.pi) + rng.uniform(-1.0, 1.0)
  half_phi = rng.uniform(0.35, 0.6) if difficult else rng.uniform(0.6, 1.3)
  if difficult:
    wc = slice_center_w(grid, rng, 0.1 * C, 0.6 * C, 0.0)
    half_w = rng.uniform(0.5, 1.2) * g.thickness
  else:
    wc = rng.uniform(0.0, 0.5) * C
    half_w = max(rng.uniform(0.2, 0.4) * C, 3.2 * g.thickness)
  w = grid.w()
  region = (pa.bell(_wrap(fields["phi"] - phi0)[None] / half_phi) > 0.2) & (np.abs(w - wc) <= half_w)
  # Blood fills the sulcus (sulcal <= 0) and widens it by `spread` mm on each side.
  spread = rng.uniform(0.5, 1.1)
  occ = (pa.inside(spread - fields["sulcal"], pw) * fields["brain"] * region).astype(F32)
  if not difficult and rng.random() < 0.5:
    # Basal cisterns: the suprasellar cistern, both Sylvian fissures running laterally and the
    # anterior interhemispheric fissure, each a 1.5–3 mm band of blood.
    wcis = -0.27 * C
    slab = np.abs(w - wcis) <= max(0.09 * C, 1.6 * g.thickness)
    lines = np.zeros(grid.u.shape, F32)
    for s_ in (-1.0, 1.0):
      # Sylvian fissure: laterally and forwards from the cistern, then bending back round the
      # insula; the blood band tapers towards its lateral end.
      pts = [(s_ * 8.0, 0.05 * B), (s_ * rng.uniform(0.25, 0.32) * A, rng.uniform(0.1, 0.18) * B),
             (s_ * rng.uniform(0.42, 0.5) * A, rng.uniform(0.02, 0.1) * B),
             (s_ * rng.uniform(0.55, 0.65) * A, rng.uniform(-0.12, -0.02) * B)]
      width = rng.uniform(0.8, 1.5)
      for j, (p0, p1) in enumerate(zip(pts, pts[1:])):
        d = _segment_distance(grid.u, grid.v, p0, p1)
        lines = np.maximum(lines, pa.coverage(d, width * (1.0 - 0.25 * j), pw))
    d = _segment_distance(grid.u, grid.v, (0.0, 0.1 * B), (0.0, 0.55 * B))
    lines = np.maximum(lines, pa.coverage(d, rng.uniform(0.6, 1.1), pw))
    cis = np.maximum(fields["cisterns"], lines[None] * slab)
    occ = np.maximum(occ, (cis * fields["brain"]).astype(F32))
    side = 0
  idx = np.nonzero(occ.reshape(len(occ), -1).max(1) > 0)[0]
  hu = rng.uniform(55, 75)
  return Lesion("sah", idx, occ[idx].astype(F32), hu, (hu, hu), side=side)


def render_fracture(grid: pa.Grid, fields: dict, rng: np.random.Generator,
                    phi0: Optional[float] = None) -> Lesion:
  """A lucent break through both tables of the calvarium (soft-tissue HU in the gap)."""
  g = grid.g
  C = g.semi_axes[2]
  R = 0.5 * (g.semi_axes[0] + g.semi_axes[1])
  if phi0 is None:
    phi0 = rng.uniform(-np.pi, np.pi)
  width = max(rng.uniform(2.5, 4.0), 0.8 * g.pixel_spacing)
  wc = rng.uniform(0.1, 0.55) * C
  half_w = max(rng.uniform(12, 30), 2.2 * g.thickness)
  idx = grid.slice_range(wc - half_w, wc + half_w)
  w = grid.w(idx)
  tilt = rng.uniform(-0.3, 0.3)
  arc = (_wrap(fields["phi"] - phi0)[None] + tilt * (w - wc) / R) * R
  depth = fields["depth"][idx]
  bone = pa.inside(depth - fields["t_skin"], g.pixel_spacing) * pa.inside(
      fields["t_inner"] - depth, g.pixel_spacing)
  occ = (pa.coverage(arc, width / 2, g.pixel_spacing) * bone * (np.abs(w - wc) <= half_w)
         * (fields["cavity_above"][idx] > 0.5)).astype(F32)
  side = 1 if math.cos(phi0) > 0.3 else (-1 if math.cos(phi0) < -0.3 else 0)
  return Lesion("fracture", idx, occ, 30.0, (30.0, 30.0), side=side, extra=dict(phi=float(phi0)))


def render_calcification(grid: pa.Grid, fields: dict, rng: np.random.Generator,
                         kind: str) -> list[Lesion]:
  """Pineal (midline) or choroid-plexus (both atria) calcifications: >100 HU, a few mm."""
  g = grid.g
  B, C = g.semi_axes[1], g.semi_axes[2]
  out = []
  if kind == "pineal":
    centers = [(g.midline_shift, -0.13 * B, 0.03 * C)]
    r, hu = rng.uniform(2.0, 3.5), rng.uniform(180, 600)
  else:
    centers = [(s * 17.0 + g.midline_shift * 0.9, -0.27 * B, 0.08 * C) for s in (-1, 1)]
    r, hu = rng.uniform(2.0, 3.2), rng.uniform(140, 400)
  for cu, cv, cw in centers:
    p = dict(center=(cu, cv, cw), axes=(r, r, r), angle=0.0, lobes=0.0, lobe_phase=0.0)
    idx, depth, _ = _blob(grid, p)
    occ = pa.inside(depth, g.pixel_spacing).astype(F32)
    out.append(Lesion(kind, idx, occ, hu, (hu, hu), side=int(np.sign(cu)) if kind != "pineal" else 0))
  return out


def composite(hu: np.ndarray, les: Lesion) -> None:
  """Paints a lesion (and its oedema rim) into the HU volume in place."""
  sub = hu[les.idx]
  if les.halo is not None:
    ring, val = les.halo
    sub += (val - sub) * ring
  sub += (les.hu - sub) * les.occ
  hu[les.idx] = sub


def mask_of(les: Lesion) -> np.ndarray:
  """Pixels that show the lesion: at least half occupied, or for a lesion smaller than a pixel
  everywhere (coarse grids), the pixels holding at least half of its peak occupancy."""
  peak = float(les.occ.max()) if les.occ.size else 0.0
  return les.occ >= min(MASK_THRESHOLD, max(0.2, 0.5 * peak))


def truth_of(les: Lesion, *, offset: tuple[int, int] = (0, 0)) -> dict:
  """Manifest entry: slices, per-slice boxes [x0,y0,x1,y1) and centres in stored-image pixels
  (`offset` = the rendered box's (column, row) in the stored image, pa.Grid.offset)."""
  m = mask_of(les)
  ox, oy = offset
  slices, boxes, centers = [], {}, {}
  for j, k in enumerate(les.idx):
    if not m[j].any():
      continue
    rows = np.nonzero(m[j].any(1))[0]
    cols = np.nonzero(m[j].any(0))[0]
    box = [int(cols[0]) + ox, int(rows[0]) + oy, int(cols[-1]) + 1 + ox, int(rows[-1]) + 1 + oy]
    slices.append(int(k))
    boxes[str(int(k))] = box
    centers[str(int(k))] = [0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])]
  out = {"type": les.type, "slices": slices, "boxes": boxes, "centers": centers,
         "blend": bool(les.blend), "hu": [float(les.hu_range[0]), float(les.hu_range[1])],
         "side": les.side}
  if les.mimic:
    out["mimic"] = les.mimic
  out.update({k: v for k, v in les.extra.items()})
  return out
