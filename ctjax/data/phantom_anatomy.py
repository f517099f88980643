"""Analytic head anatomy for the synthetic head-CT phantoms.

Every structure is a field evaluated on the voxel grid in physical millimetres (head frame), so
a phantom looks the same at 64 px and at 512 px and numpy does all the work in a few whole-array
operations. Partial volume comes from exact 1-D pixel coverage of each boundary (in-plane width
= pixel spacing; the skull-base floor also uses the slice thickness), which is what makes the
skull base show the small bright partial-volume spots a radiologist expects.

Head frame: u = patient left (+), v = anterior (+), w = superior (+), origin at the head centre.
Patient frame (DICOM LPS): x = left, y = posterior, z = superior; image rows run along +y and
columns along +x (ImageOrientationPatient 1,0,0,0,1,0), so anterior is at the top of the image.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

F32 = np.float32

# Attenuation (HU) of the tissues; per-scan jitter is added in `sample_geometry`.
HU_AIR = -1000.0
HU_FAT = -90.0
HU_SOFT = 35.0
HU_CSF = 6.0
HU_GREY = 40.0
HU_WHITE = 26.0
HU_DEEP_GREY = 37.0
HU_FALX = 85.0


@dataclasses.dataclass
class Geometry:
  """Per-scan acquisition and head-shape parameters (all lengths in mm)."""
  size: int
  num_slices: int
  pixel_spacing: float
  thickness: float          # slice spacing == thickness (contiguous axial series)
  z0: float                 # patient z of slice 0 (most inferior)
  cz: float                 # patient z of the head centre
  center_xy: tuple[float, float]  # head centre in patient x, y
  angle: float              # in-plane rotation (rad)
  pitch: float              # gantry-like tilt of the head (rad): w depends on v
  semi_axes: tuple[float, float, float]  # outer skin ellipsoid A (LR), B (AP), C (SI)
  harmonics: tuple[float, float, float, float]  # shape perturbation a2, phase2, a3, phase3
  scalp: float
  outer_table: float
  diploe: float
  inner_table: float
  csf_gap: float            # extra-axial CSF between inner table and cortex
  cortex: float
  atrophy: float            # 0 (young) … 1 (old): ventricle and sulcal size
  hu_grey: float
  hu_white: float
  hu_bone: float
  hu_diploe: float
  noise_sigma: float
  sulcus_waves: tuple  # (ku, kv, kw, phase) plane waves whose sum's zero set are the sulci
  # Filled from findings before rendering:
  midline_shift: float = 0.0        # mm, + towards patient left
  shift_level: float = 10.0         # w of the maximum shift
  compress_side: int = 0            # -1 right, +1 left, 0 none (mass effect)
  compress_factor: float = 1.0      # ipsilateral ventricle scale

  @property
  def fov(self) -> float:
    return self.size * self.pixel_spacing


def sample_geometry(rng: np.random.Generator, *, size: int, num_slices: int,
                    noise_sigma: float | None = None) -> Geometry:
  """Draws a head and an acquisition: shape, pose, spacing, thickness, noise."""
  A = rng.uniform(66.0, 78.0)
  B = rng.uniform(86.0, 100.0)
  C = rng.uniform(92.0, 106.0)
  fov = rng.uniform(2.25, 2.6) * B           # the head fills ~75–90% of the field of view
  spacing = fov / size
  # Axial series from the posterior fossa floor to the vertex.
  w_lo = -0.62 * C + rng.uniform(-4.0, 4.0)
  w_hi = 0.9 * C + rng.uniform(-3.0, 3.0)
  thickness = (w_hi - w_lo) / num_slices
  if noise_sigma is None:
    # Quantum noise scales as 1/sqrt(voxel volume); referenced to 3.5 HU at 0.5 x 0.5 x 5 mm.
    noise_sigma = float(np.clip(rng.uniform(2.5, 4.5) * math.sqrt(1.25 / (spacing ** 2 * thickness)),
                                1.2, 9.0))
  cz = rng.uniform(-20.0, 20.0)
  return Geometry(
      size=size, num_slices=num_slices, pixel_spacing=float(spacing), thickness=float(thickness),
      z0=float(cz + w_lo + thickness / 2), cz=float(cz), center_xy=(rng.uniform(-0.05, 0.05) * fov,
                                                       rng.uniform(-0.05, 0.05) * fov),
      angle=float(np.deg2rad(rng.uniform(-12, 12))), pitch=float(np.deg2rad(rng.uniform(-6, 6))),
      semi_axes=(A, B, C),
      harmonics=(rng.uniform(0.0, 0.04), rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.025),
                 rng.uniform(0, 2 * np.pi)),
      scalp=rng.uniform(4.0, 7.0), outer_table=rng.uniform(1.6, 2.6), diploe=rng.uniform(2.0, 4.0),
      inner_table=rng.uniform(1.2, 2.0), csf_gap=rng.uniform(0.8, 2.5), cortex=rng.uniform(2.6, 3.6),
      atrophy=rng.uniform(0.0, 1.0), hu_grey=rng.uniform(37.0, 43.0), hu_white=rng.uniform(23.0, 29.0),
      hu_bone=rng.uniform(1300.0, 1800.0), hu_diploe=rng.uniform(450.0, 850.0),
      noise_sigma=float(noise_sigma), sulcus_waves=_sulcus_waves(rng))


def _sulcus_waves(rng: np.random.Generator, n: int = 7, period: float = 26.0) -> tuple:
  """Random plane waves (wavelength ~period mm) whose sum has gyral-sized zero-set cells."""
  k = 2 * np.pi / period
  dirs = rng.normal(size=(n, 3))
  dirs[:, 2] *= 0.6                     # gyri run more vertically than horizontally
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  ks = dirs * k * rng.uniform(0.8, 1.25, size=(n, 1))
  return tuple((float(a), float(b), float(c), float(p))
               for (a, b, c), p in zip(ks, rng.uniform(0, 2 * np.pi, n)))


def coverage(dist, half_width, pixel):
  """Fraction of a pixel of width `pixel` covered by a band |dist| <= half_width (1-D)."""
  hi = np.minimum(dist + half_width, pixel / 2)
  lo = np.maximum(dist - half_width, -pixel / 2)
  return np.clip((hi - lo) / pixel, 0.0, 1.0)


def inside(depth, pixel):
  """Partial-volume occupancy of a region given the signed depth inside its boundary (mm)."""
  return np.clip(depth / pixel + 0.5, 0.0, 1.0)


def bell(x):
  """Smooth bump: 1 at 0, 0 beyond |x| >= 1."""
  x = np.clip(np.abs(x), 0.0, 1.0)
  return 0.5 * (1.0 + np.cos(np.pi * x))


def head_shape(g: Geometry, u, v):
  """(phi, shape factor, squared normalised radius qa) of the skin outline in-plane [H,W]."""
  A, B = g.semi_axes[0], g.semi_axes[1]
  phi = np.arctan2(v, u)
  a2, p2, a3, p3 = g.harmonics
  shape = (1.0 + a2 * np.cos(2 * phi + p2) + a3 * np.cos(3 * phi + p3)).astype(F32)
  # Occipital fullness: the head is wider behind than in front.
  shape = shape * (1.0 - 0.04 * (v / B)).astype(F32)
  qa = (u / (A * shape)) ** 2 + (v / (B * shape)) ** 2
  return phi, shape, qa


class Grid:
  """Head-frame coordinates of the pixel grid, shared by anatomy and lesions.

  Only the in-plane box around the head is rendered (about half the image: the rest is air),
  rows r0:r1 and columns c0:c1 of the stored image; `offset` = (c0, r0) maps array indices back
  to stored-image pixels.
  """

  def __init__(self, g: Geometry):
    self.g = g
    n = g.size
    idx = (np.arange(n, dtype=F32) - (n - 1) / 2) * g.pixel_spacing
    x = idx[None, :] - g.center_xy[0]      # patient left
    y = idx[:, None] - g.center_xy[1]      # patient posterior
    ca, sa = math.cos(g.angle), math.sin(g.angle)
    u = (ca * x - sa * (-y)).astype(F32)   # rotate (left, anterior) by angle
    v = (sa * x + ca * (-y)).astype(F32)
    u, v = np.broadcast_to(u, (n, n)), np.broadcast_to(v, (n, n))
    # Every slice's cross-section lies inside the w = 0 outline (qa <= 1); 2 px of margin keep
    # the skin's partial-volume pixels in.
    rows, cols = np.nonzero(head_shape(g, u, v)[2] <= 1.0)
    if rows.size:
      self.r0, self.r1 = max(0, int(rows.min()) - 2), min(n, int(rows.max()) + 3)
      self.c0, self.c1 = max(0, int(cols.min()) - 2), min(n, int(cols.max()) + 3)
    else:
      self.r0, self.r1, self.c0, self.c1 = 0, n, 0, n
    self.offset = (self.c0, self.r0)
    self.u = u[self.r0:self.r1, self.c0:self.c1].copy()
    self.v = v[self.r0:self.r1, self.c0:self.c1].copy()
    self.z = (g.z0 + np.arange(g.num_slices) * g.thickness).astype(F32)
    self.cz = float(g.cz)
    self.tan_pitch = F32(math.tan(g.pitch))

  def paste(self, crop: np.ndarray, fill: float) -> np.ndarray:
    """The full [S,size,size] volume holding `crop` [S,h,w] in its box and `fill` elsewhere."""
    n = self.g.size
    out = np.full((crop.shape[0], n, n), fill, crop.dtype)
    out[:, self.r0:self.r1, self.c0:self.c1] = crop
    return out

  def w(self, slices=slice(None)):
    """Superior coordinate [S,H,W] for the selected slices."""
    zz = self.z[slices] - self.cz
    return zz[:, None, None] + self.v[None] * self.tan_pitch

  def slice_range(self, w_lo: float, w_hi: float, v_extent: float = 100.0) -> np.ndarray:
    """Indices of slices that may intersect the head-frame slab w in [w_lo, w_hi]."""
    slack = abs(float(self.tan_pitch)) * v_extent
    zz = self.z - self.cz
    return np.nonzero((zz >= w_lo - slack - self.g.thickness) &
                      (zz <= w_hi + slack + self.g.thickness))[0]

  def to_pixels(self, u: float, v: float) -> tuple[float, float]:
    """Head-frame (u, v) -> image (col, row) in pixels."""
    g = self.g
    ca, sa = math.cos(g.angle), math.sin(g.angle)
    x = ca * u + sa * v
    a = -sa * u + ca * v        # anterior
    y = -a
    col = (x + g.center_xy[0]) / g.pixel_spacing + (g.size - 1) / 2
    row = (y + g.center_xy[1]) / g.pixel_spacing + (g.size - 1) / 2
    return col, row


def midline(grid: Grid, w):
  """u of the (possibly shifted) midline at every voxel [S,H,W]."""
  g = grid.g
  if g.midline_shift == 0.0:
    return np.zeros((1, 1, 1), F32)
  B, C = g.semi_axes[1], g.semi_axes[2]
  prof = bell(grid.v / (0.75 * B))[None] * bell((w - g.shift_level) / (0.55 * C))
  return (g.midline_shift * prof).astype(F32)


def skull_floor(grid: Grid):
  """w of the cranial floor under every pixel [H,W]: anterior, middle and posterior fossae."""
  g = grid.g
  A, B, C = g.semi_axes
  un, vn = grid.u / A, grid.v / B
  # Posterior fossa bowl.
  floor = -0.66 * C + 0.30 * C * (un ** 2 + (vn + 0.55) ** 2)
  # Middle cranial fossae (temporal lobes) and anterior fossa (orbital roofs) step up.
  middle = -0.52 * C + 0.18 * C * np.maximum(0.0, vn - 0.1) + 0.2 * C * np.maximum(0.0, 0.35 - np.abs(un))
  floor = np.where(vn > -0.12 - 0.15 * np.abs(un), np.maximum(floor, middle), floor)
  anterior = -0.26 * C - 0.08 * C * np.abs(un)
  floor = np.where(vn > 0.42, np.maximum(floor, anterior), floor)
  # Petrous ridges: oblique bony crests between middle and posterior fossae.
  for s in (-1.0, 1.0):
    d = (s * un * 0.55 + (vn + 0.05) * 0.84) - 0.12          # distance-like to an oblique line
    along = np.abs(un) > 0.18
    ridge = -0.40 * C - 8.0 * np.abs(d) / 0.05
    floor = np.where(along & (s * un > 0), np.maximum(floor, ridge), floor)
  return floor.astype(F32)


def ellipsoid_depth(du, dv, dw, a, b, c):
  """Signed distance (mm, + inside) to an axis-aligned ellipsoid, first-order accurate."""
  qa, qb, qc = du / a, dv / b, dw / c
  q = np.sqrt(qa * qa + qb * qb + qc * qc) + F32(1e-6)
  grad = np.sqrt((qa / a) ** 2 + (qb / b) ** 2 + (qc / c) ** 2) / q + F32(1e-6)
  return ((1.0 - q) / grad).astype(F32)


def ellipsoid_occupancy(grid: Grid, w, cu: float, cv: float, cw: float, a: float, b: float,
                        c: float) -> np.ndarray:
  """Partial-volume occupancy [S,H,W] of an ellipsoid, evaluated only on the slices it touches."""
  out = np.zeros(w.shape, F32)
  idx = grid.slice_range(cw - c, cw + c, v_extent=abs(cv) + b)
  if idx.size:
    d = ellipsoid_depth(grid.u[None] - cu, grid.v[None] - cv, w[idx] - cw, a, b, c)
    out[idx] = inside(d, grid.g.pixel_spacing)
  return out


def sulcus_field(grid: Grid) -> np.ndarray:
  """Sum of the sulcus plane waves sin(k.(u, v, w) + phase) on the grid [S,H,W].

  w = z_s + v tan(pitch) splits every phase into an in-plane part a[H,W] and a per-slice part
  b[S]; sin(a + b) = sin a cos b + cos a sin b turns the sum into one [S,2n] x [2n,H*W] matrix
  contraction instead of n full-volume sines (the hottest line of the generator before).
  """
  g = grid.g
  waves = np.asarray(g.sulcus_waves, np.float64)          # [n, 4]: ku, kv, kw, phase
  u, v = grid.u.astype(np.float64), grid.v.astype(np.float64)
  tp = float(grid.tan_pitch)
  a = (waves[:, 0, None, None] * u + (waves[:, 1] + waves[:, 2] * tp)[:, None, None] * v
       + waves[:, 3, None, None])                          # [n,H,W]
  b = waves[None, :, 2] * (grid.z.astype(np.float64) - grid.cz)[:, None]   # [S,n]
  basis = np.concatenate([np.sin(a), np.cos(a)]).reshape(2 * len(waves), -1).astype(F32)
  coef = np.concatenate([np.cos(b), np.sin(b)], axis=1).astype(F32)
  # einsum's own loop, not BLAS: a threaded sgemm spins idle cores for this small product.
  return np.einsum("sj,jp->sp", coef, basis).reshape(len(grid.z), *u.shape)


def render_anatomy(grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
  """Noise-free HU volume [S,H,W] float32 and the fields lesions need (masks in [0, 1])."""
  g = grid.g
  A, B, C = g.semi_axes
  pw = g.pixel_spacing
  u, v = grid.u, grid.v
  w = grid.w()
  phi, shape, qa = head_shape(g, u, v)                           # [H,W]
  q = qa[None] + (w / C) ** 2
  rho = np.sqrt(q) + F32(1e-6)
  grad = np.sqrt(qa[None] * (1.0 / (0.5 * (A + B) * shape[None])) ** 2 + (w / C ** 2) ** 2) / rho
  depth = (1.0 - rho) / (grad + F32(1e-6))                     # mm inside the skin
  depth = depth.astype(F32)
  del q, grad

  t1 = 1.5
  t2 = g.scalp
  t3 = t2 + g.outer_table
  t4 = t3 + g.diploe
  t5 = t4 + g.inner_table
  t6 = t5 + g.csf_gap * (1.0 + 1.2 * g.atrophy)
  hu = np.full(depth.shape, HU_AIR, F32)
  hu += (HU_SOFT - HU_AIR) * inside(depth, pw)
  hu += (HU_FAT - HU_SOFT) * 0.35 * coverage(depth - 0.5 * (t1 + t2 - 1.2), 0.5 * (t2 - 1.2 - t1), pw)
  hu += (g.hu_bone - HU_SOFT) * inside(depth - t2, pw)
  hu += (g.hu_diploe - g.hu_bone) * inside(depth - t3, pw)
  hu += (g.hu_bone - g.hu_diploe) * inside(depth - t4, pw)

  # Cranial cavity: inside the inner table and above the skull-base floor (thickness blurs it).
  floor = skull_floor(grid)
  above = np.clip((w - floor[None]) / max(g.thickness, pw) + 0.5, 0.0, 1.0).astype(F32)
  cavity = inside(depth - t5, pw) * above
  # Skull base below the floor: bone plate then soft tissue with air sinuses further down.
  below = 1.0 - above
  base_bone = np.clip(1.0 - ((floor[None] - w) - 3.0) / 3.0, 0.0, 1.0) * below
  soft_deep = below - base_bone
  vn = v / B
  sinus = np.zeros_like(w)
  for cu, cv, cw, ru, rv, rw in ((0.0, 0.55, -0.45, 0.25, 0.2, 0.12),     # sphenoid / ethmoid
                                 (-0.8, -0.2, -0.5, 0.1, 0.12, 0.1),      # mastoid air cells
                                 (0.8, -0.2, -0.5, 0.1, 0.12, 0.1)):
    sinus = np.maximum(sinus, ellipsoid_occupancy(grid, w, cu * A, cv * B, cw * C,
                                                  ru * A, rv * B, rw * C))
  inner = inside(depth - t5, pw)
  # Orbits (fat with globes) in front, muscle elsewhere, air in the sinuses.
  orbit = np.zeros_like(w)
  globe = np.zeros_like(w)
  for s_ in (-1.0, 1.0):
    orbit = np.maximum(orbit, ellipsoid_occupancy(grid, w, s_ * 0.42 * A, 0.72 * B, -0.5 * C,
                                                  0.3 * A, 0.25 * B, 0.16 * C))
    globe = np.maximum(globe, ellipsoid_occupancy(grid, w, s_ * 0.42 * A, 0.78 * B, -0.5 * C,
                                                  11.5, 11.5, 11.5))
  deep_hu = HU_SOFT + (HU_FAT - HU_SOFT) * orbit
  deep_hu = deep_hu + (12.0 - deep_hu) * globe
  deep_hu = deep_hu + (HU_AIR - deep_hu) * sinus
  base_hu = base_bone * g.hu_bone * 0.85 + soft_deep * deep_hu

  # Brain proper. Sulci are the zero set of a smooth random field (curvy, gyral pattern); the pial
  # surface follows them, so grey matter lines every sulcus over the white matter.
  d_brain = depth - t6
  mid = midline(grid, w)
  du = u[None] - mid
  brain = inside(d_brain, pw)
  field = sulcus_field(grid)
  kmag = float(np.sqrt((np.asarray(g.sulcus_waves)[:, :3] ** 2).sum(1)).mean())
  sul_dist = np.abs(field) / (1.4 * kmag * math.sqrt(len(g.sulcus_waves) / 2.0))
  half = 0.3 + 0.7 * g.atrophy
  sul_depth = 9.0 + 6.0 * g.atrophy
  if g.compress_side:   # effaced sulci on the side of a mass
    sul_depth = np.where(du * g.compress_side > 0, 3.0, sul_depth)
  in_band = np.clip((sul_depth - d_brain) / 4.0, 0.0, 1.0)
  sulcal = np.where(in_band > 0, sul_dist - half * in_band, 1e3).astype(F32)   # mm to a sulcus
  pial = np.minimum(d_brain, sulcal)
  sulcus = inside(-pial, pw) * brain
  grey = inside(g.cortex - pial, pw)
  hu_brain = (g.hu_white + (g.hu_grey - g.hu_white) * grey).astype(F32)
  # Interhemispheric fissure above the corpus callosum and in front/behind it, with the falx.
  cc = bell(v / (0.38 * B))[None] * bell((w - 0.18 * C) / (0.28 * C))
  fissure = coverage(du, 0.6 + 1.0 * g.atrophy, pw) * (1.0 - cc)
  falx = coverage(du, 0.45, pw) * (1.0 - cc) * inside(w + 0.15 * C, 6.0)
  csf = np.maximum(sulcus, fissure) * brain

  # Ventricles (lateral bodies, atria/occipital horns, third and fourth) and basal cisterns.
  vs = 0.8 + 0.7 * g.atrophy
  vent = np.zeros_like(depth)
  for s in (-1.0, 1.0):
    scale = g.compress_factor if s == g.compress_side else 1.0
    sx = s * g.midline_shift * 0.9
    body = ellipsoid_occupancy(grid, w, s * 7.0 * vs + sx, 4.0, 0.15 * C,
                               4.5 * vs * scale, 0.30 * B, 0.11 * C * scale)
    horn = ellipsoid_occupancy(grid, w, s * 17.0 + sx, -0.26 * B, 0.08 * C,
                               4.0 * vs * scale, 0.16 * B, 0.09 * C * scale)
    temporal = ellipsoid_occupancy(grid, w, s * 0.36 * A, -0.02 * B, -0.18 * C,
                                   2.0 * vs * scale, 0.12 * B, 0.05 * C)
    vent = np.maximum(vent, np.maximum(np.maximum(body, horn), temporal))
  third = ellipsoid_occupancy(grid, w, g.midline_shift, -0.02 * B, -0.02 * C,
                              1.6 * vs, 0.14 * B, 0.10 * C)
  fourth = ellipsoid_occupancy(grid, w, 0.0, -0.45 * B, -0.42 * C, 4.0, 3.0, 0.08 * C)
  suprasellar = ellipsoid_occupancy(grid, w, 0.0, 0.05 * B, -0.27 * C, 9.0, 7.0, 0.04 * C)
  vent = np.maximum(np.maximum(vent, third), fourth)
  # Deep grey nuclei (thalami, basal ganglia) flanking the third ventricle.
  deep = np.zeros_like(depth)
  for s in (-1.0, 1.0):
    deep = np.maximum(deep, ellipsoid_occupancy(grid, w, s * 13.0 + g.midline_shift * 0.7,
                                                -0.02 * B, -0.02 * C, 9.0, 0.2 * B, 0.1 * C))
  hu_brain = hu_brain + (HU_DEEP_GREY - hu_brain) * deep
  csf = np.maximum(csf, np.maximum(vent, suprasellar) * brain)
  hu_brain = hu_brain + (HU_CSF - hu_brain) * csf
  hu_brain = hu_brain + (HU_FALX - hu_brain) * falx * brain * 0.9
  intracranial = hu_brain * brain + HU_CSF * (1.0 - brain)

  hu = (hu * (1.0 - inner) + inner * (above * intracranial + below * base_hu)).astype(F32)
  fields = dict(depth=depth, cavity=cavity.astype(F32), brain=(brain * above).astype(F32),
                d_brain=d_brain, ventricle=(vent * brain * above).astype(F32),
                sulcus=(sulcus * brain * above).astype(F32), midline=mid, t_inner=t5, t_skin=t2,
                t_csf=t6, floor=floor, pial=pial.astype(F32), sulcal=sulcal, cavity_above=above, cisterns=(suprasellar * above).astype(F32), phi=phi)
  return hu, fields
