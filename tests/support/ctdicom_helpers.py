"""Writes tiny CT DICOM slices with pydicom for tests (32×32 by default)."""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_slice(path, hu: np.ndarray, *, position: Optional[Sequence[float]] = (0, 0, 0),
                orientation: Optional[Sequence[float]] = (1, 0, 0, 0, 1, 0),
                instance: Optional[int] = 1, sop_uid: Optional[str] = None,
                series_uid: str = "1.2.3.4", study_uid: str = "1.2.3", patient_id: str = "P0",
                slope: float = 1.0, intercept: float = -1024.0, modality: str = "CT",
                pixel_spacing=(0.5, 0.5), thickness: float = 5.0, description: str = "AXIAL",
                header_slope=None, header_intercept=None, **extra) -> pathlib.Path:
  """One CT slice; HU are stored as int16 (hu - intercept) / slope.

  `header_slope` / `header_intercept` (any DS value, e.g. float("nan"), "inf", 0) replace what
  the header says without changing the stored pixels: a corrupt header over sane pixels."""
  cfg = pydicom.config.settings
  old = cfg.writing_validation_mode, cfg.reading_validation_mode
  cfg.writing_validation_mode = cfg.reading_validation_mode = pydicom.config.IGNORE
  try:
    return _write_slice(path, hu, position=position, orientation=orientation, instance=instance,
                        sop_uid=sop_uid, series_uid=series_uid, study_uid=study_uid,
                        patient_id=patient_id, slope=slope, intercept=intercept,
                        modality=modality, pixel_spacing=pixel_spacing, thickness=thickness,
                        description=description, header_slope=header_slope,
                        header_intercept=header_intercept, **extra)
  finally:
    cfg.writing_validation_mode, cfg.reading_validation_mode = old


def _write_slice(path, hu, *, position, orientation, instance, sop_uid, series_uid, study_uid,
                 patient_id, slope, intercept, modality, pixel_spacing, thickness, description,
                 header_slope, header_intercept, **extra):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  sop_uid = sop_uid or generate_uid()
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = CT_IMAGE_STORAGE
  ds.SOPInstanceUID = sop_uid
  ds.SeriesInstanceUID = series_uid
  ds.StudyInstanceUID = study_uid
  ds.PatientID = patient_id
  ds.Modality = modality
  ds.SeriesDescription = description
  ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
  if position is not None:
    ds.ImagePositionPatient = [float(v) for v in position]
  if orientation is not None:
    ds.ImageOrientationPatient = [float(v) for v in orientation]
  if instance is not None:
    ds.InstanceNumber = int(instance)
  ds.PixelSpacing = [float(v) for v in pixel_spacing]
  ds.SliceThickness = thickness
  ds.RescaleSlope = slope if header_slope is None else header_slope
  ds.RescaleIntercept = intercept if header_intercept is None else header_intercept
  stored = np.round((np.asarray(hu, np.float64) - intercept) / slope).astype(np.int16)
  ds.Rows, ds.Columns = stored.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME2"
  ds.BitsAllocated = 16
  ds.BitsStored = 16
  ds.HighBit = 15
  ds.PixelRepresentation = 1
  ds.PixelData = stored.tobytes()
  for k, v in extra.items():
    setattr(ds, k, v)
  ds.save_as(path, enforce_file_format=True)
  return path


def ramp_volume(num_slices: int, size: int = 32) -> np.ndarray:
  """HU volume whose slice k is filled with 10*k (+ a small in-plane ramp): order is visible."""
  base = np.arange(size)[None, :] + np.zeros((size, 1))
  return np.stack([np.full((size, size), 10.0 * k) + base for k in range(num_slices)])


def pattern_volume(num_slices: int, rows: int = 6, cols: int = 5) -> np.ndarray:
  """HU [S, rows, cols] with every voxel distinct (up to 10 slices of up to 10 columns):
  10·k + column + 100·row, so order, flips and transposes are all visible."""
  k, i, j = np.meshgrid(np.arange(num_slices), np.arange(rows), np.arange(cols), indexing="ij")
  return (10.0 * k + j + 100.0 * i).astype(np.float64)


def write_series(folder, hu: np.ndarray, *, spacing: float = 5.0,
                 orientation=(1, 0, 0, 0, 1, 0), origin=(0.0, 0.0, 0.0),
                 step: Optional[Sequence[float]] = None, names: Optional[Sequence[str]] = None,
                 instances: Optional[Sequence[int]] = None, **kw) -> list[pathlib.Path]:
  """Slices k at origin + k*step (default: spacing along the normal) in `folder`."""
  folder = pathlib.Path(folder)
  o = np.asarray(orientation, np.float64)
  normal = np.cross(o[:3], o[3:])
  step = np.asarray(step if step is not None else normal * spacing, np.float64)
  paths = []
  for k in range(hu.shape[0]):
    name = names[k] if names is not None else f"IM{k:04d}.dcm"
    inst = instances[k] if instances is not None else k + 1
    paths.append(write_slice(folder / name, hu[k], position=np.asarray(origin) + k * step,
                             orientation=orientation, instance=inst, **kw))
  return paths


# ------------------------------------------------------- one volume stored in any axial layout

AXES = {"+x": np.array([1.0, 0, 0]), "-x": np.array([-1.0, 0, 0]),
        "+y": np.array([0, 1.0, 0]), "-y": np.array([0, -1.0, 0])}


def write_oriented_series(folder, truth: np.ndarray, *, columns_along: str = "+x",
                          rows_along: str = "+y", reverse: bool = False,
                          spacing=(2.0, 0.7, 0.5), origin=(-10.0, 20.0, 30.0),
                          sop_uids: Optional[Sequence[str]] = None, seed: int = 0,
                          **kw) -> list[pathlib.Path]:
  """`truth` [S, H, W] known in patient space — rows along +y (posterior), columns along +x
  (patient left), slices along +z from `origin` (the position of truth[0, 0, 0]) at `spacing`
  (z, y, x) mm — stored with the column index running along `columns_along` and the row index
  along `rows_along` (any of ±x, ±y), slices written in reverse order if `reverse`, under
  shuffled file names. Every stored pixel is looked up from its patient position (no flips or
  transposes here). `sop_uids[k]` is the UID of truth slice k in every layout."""
  folder = pathlib.Path(folder)
  r, c = AXES[columns_along], AXES[rows_along]
  assert abs(r @ c) < 0.5, "two directions along one axis"
  X, Y, Z = np.eye(3)
  s, h, w = truth.shape
  dz, dy, dx = spacing
  step = lambda d: dx if abs(d @ X) > 0.5 else dy       # noqa: E731
  count = lambda d: w if abs(d @ X) > 0.5 else h        # noqa: E731
  sr, sc, nr, nc = step(r), step(c), count(r), count(c)
  origin = np.asarray(origin, np.float64)
  corner = origin.copy()                                # every other voxel at + along r, c
  for d, n, sp in ((r, nr, sr), (c, nc, sc)):
    if d @ (X + Y) < 0:
      corner -= (n - 1) * sp * d
  b, a = np.meshgrid(np.arange(nr), np.arange(nc))      # stored (row a, column b)
  p = corner[None, None] + b[..., None] * sr * r + a[..., None] * sc * c - origin
  yi = np.rint(p @ Y / dy).astype(int)
  xi = np.rint(p @ X / dx).astype(int)
  order = list(range(s))[::-1] if reverse else list(range(s))
  names = [f"f{n:04d}.dcm" for n in np.random.default_rng(seed).permutation(s)]
  paths = []
  for f, k in enumerate(order):
    paths.append(write_slice(folder / names[f], truth[k][yi, xi],
                             position=corner + k * dz * Z, orientation=tuple(r) + tuple(c),
                             instance=f + 1, pixel_spacing=(sc, sr),
                             sop_uid=None if sop_uids is None else sop_uids[k], **kw))
  return paths


# ------------------------------------------------------------------ tiny trees in public layouts

RSNA_SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural",
                 "any")


def write_rsna_tree(root, *, num_scans=3, slices=4, size=16, patients=None):
  """RSNA stage-2 layout; scan s slice k positive for subdural iff s odd and k == 1.

  Returns {series_uid: [(sop, subdural)] in true slice order}."""
  root = pathlib.Path(root)
  rows, truth = ["ID,Label"], {}
  for s in range(num_scans):
    series = f"ID_ser{s:04x}"
    patient = (patients or [f"ID_pat{s:03x}" for s in range(num_scans)])[s]
    truth[series] = []
    order = np.random.default_rng(s).permutation(slices)   # file names unrelated to order
    for k in range(slices):
      sop = f"ID_{s:03x}{order[k]:05x}"
      sdh = int(s % 2 == 1 and k == 1)
      truth[series].append((sop, sdh))
      write_slice(root / "stage_2_train" / f"{sop}.dcm", np.full((size, size), 10.0 * k),
                  position=(0, 0, 5.0 * k), sop_uid=sop, series_uid=series, patient_id=patient,
                  instance=k + 1)
      for sub in RSNA_SUBTYPES:
        rows.append(f"{sop}_{sub},{sdh if sub in ('subdural', 'any') else 0}")
  (root / "stage_2_train.csv").write_text("\n".join(rows) + "\n")
  return truth


CQ500_COLS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left",
              "BleedLocation-Right", "ChronicBleed", "Fracture", "CalvarialFracture",
              "OtherFracture", "MassEffect", "MidlineShift")


def write_cq500_tree(root, votes, *, slices=3, size=16):
  """CQ500 layout; votes[n] = {column: (r1, r2, r3)} (missing columns 0). Each scan also has a
  bone series and a 5 mm plain series that the adapter must not pick."""
  root = pathlib.Path(root)
  header = ["name", "Category"] + [f"{r}:{c}" for r in ("R1", "R2", "R3") for c in CQ500_COLS]
  lines = [",".join(header)]
  for n, v in enumerate(votes):
    vals = [f"CQ500-CT-{n}", "B1"]
    for r in range(3):
      vals += [str(v.get(c, (0, 0, 0))[r]) for c in CQ500_COLS]
    lines.append(",".join(vals))
    study = root / f"CQ500-CT-{n}" / "Unknown Study"
    for series, count, uid in (("CT PLAIN THIN", slices, f"1.2.{n}.1"),
                               ("CT BONE", slices + 2, f"1.2.{n}.2"),
                               ("CT 5mm", 1, f"1.2.{n}.3")):
      for k in range(count):
        write_slice(study / series / f"CT{k:06d}.dcm", np.full((size, size), float(k)),
                    position=(0, 0, 0.625 * k), series_uid=uid, patient_id=f"CQ500-CT-{n}",
                    instance=count - k, description=series)
  (root / "reads.csv").write_text("\n".join(lines) + "\n")


def write_blend_tree(root, *, num_scans=2, slices=3, size=16):
  """Blend layout: scan s slice k label (s + k) % 3, a box on labels 1 and 2."""
  root = pathlib.Path(root)
  lines = ["scan_id,patient_id,sop_uid,file,label,boxes"]
  for s in range(num_scans):
    for k in range(slices):
      sop = f"1.9.{s}.{k}"
      rel = f"scans/S{s}/IM{k:04d}.dcm"
      write_slice(root / rel, np.full((size, size), float(k)), position=(0, 0, 5.0 * k),
                  sop_uid=sop, series_uid=f"1.9.{s}", patient_id=f"P{s // 2}", instance=k + 1)
      label = (s + k) % 3
      boxes = "" if label == 0 else f"1 2 5 6;{k} 0 {k + 3} 4" if label == 2 else "0 0 8 8"
      lines.append(f"S{s},P{s // 2},{sop},{rel},{label},{boxes}")
  (root / "blend_labels.csv").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------ the CQ500 download's structure

# (folder, SeriesDescription, ConvolutionKernel, thickness mm, slices, extra header, soft-tissue
# axial?) — the kinds of reconstruction a real CQ500 study holds.
CQ500_SERIES = (
    ("CT PLAIN THIN", "PLAIN THIN", "STANDARD", 0.625, 8, {}, True),
    ("CT Plain", "Plain", "STANDARD", 5.0, 4, {}, True),
    ("CT BONE", "BONE", "BONE", 0.625, 8, {}, False),
    ("CT Thin Bone", "Thin Bone", "H70h", 0.625, 8, {}, False),
    ("CT SCOUT", "SCOUT", "STANDARD", 1.0, 1,
     {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, False),
    ("CT 0.625mm", "0.625mm", "SOFT", 0.625, 6, {}, True),
    ("CT COR", "COR", "STANDARD", 2.0, 4,
     {"ImageType": ["DERIVED", "SECONDARY", "REFORMATTED"]}, False),
    ("CT POST CONTRAST", "POST CONTRAST", "STANDARD", 5.0, 4, {"ContrastBolusAgent": "IODINE"},
     False),
)


def write_cq500_download(root, votes, *, series_of=None, size=8):
  """ROOT/reads.csv (every real column, R1–R3) + `CQ500CT<n> CQ500CT<n>/Unknown Study/<series>/
  CT*.dcm` per study n; votes[n] = {column: (r1, r2, r3)} (missing columns 0); series_of(n) →
  the CQ500_SERIES entries of study n (default: all). Slice k of a series holds HU 10·k, so
  slice order is visible. Returns {study name: [(folder, soft_tissue_axial)]}."""
  root = pathlib.Path(root)
  header = ["name", "Category"] + [f"{r}:{c}" for r in ("R1", "R2", "R3") for c in CQ500_COLS]
  lines = [",".join(header)]
  layout = {}
  for n, v in enumerate(votes):
    name = f"CQ500-CT-{n}"
    vals = [name, "B1" if n % 2 else "B2"]
    for r in range(3):
      vals += [str(v.get(c, (0, 0, 0))[r]) for c in CQ500_COLS]
    lines.append(",".join(vals))
    study = root / f"CQ500CT{n} CQ500CT{n}" / "Unknown Study"
    study_uid = f"1.2.840.99.{n}"
    layout[name] = []
    series = CQ500_SERIES if series_of is None else series_of(n)
    for j, (folder, desc, kernel, thick, count, extra, keep) in enumerate(series):
      coronal = "LOCALIZER" in extra.get("ImageType", []) or folder == "CT COR"
      orientation = (1, 0, 0, 0, 0, -1) if coronal else (1, 0, 0, 0, 1, 0)
      numbers = np.random.default_rng([n, j]).permutation(count)   # names unrelated to order
      for k in range(count):
        position = (0, thick * k, 0) if coronal else (0, 0, thick * k)
        write_slice(study / folder / f"CT{numbers[k]:06d}.dcm", np.full((size, size), 10.0 * k),
                    position=position, orientation=orientation, series_uid=f"{study_uid}.{j}",
                    study_uid=study_uid, patient_id=name, instance=k + 1, description=desc,
                    thickness=thick, ConvolutionKernel=kernel, StudyDate="20170101", **extra)
      layout[name].append((folder, keep))
  (root / "reads.csv").write_text("\n".join(lines) + "\n")
  return layout


# ------------------------------------------------------------ JPEG lossless (process 14, SV1)

def encode_jpeg_lossless_sv1(image: np.ndarray, precision: int = 16) -> bytes:
  """One grey frame [rows, columns] (its bits read unsigned, as DICOM stores them) as a JPEG
  lossless codestream: SOF3, predictor 1 (left), point transform 0 — ITU-T T.81 Annex H, the
  transfer syntax 1.2.840.10008.1.2.4.70. One Huffman table gives each difference category
  0–16 a 5-bit code (T.81 C: canonical codes by length; no all-ones code)."""
  img = np.asarray(image).astype(np.int64) & ((1 << precision) - 1)
  rows, cols = img.shape
  pred = np.empty_like(img)
  pred[0, 0] = 1 << (precision - 1)                 # H.1.2.1: the first sample of the scan
  pred[0, 1:] = img[0, :-1]                         # first line: left (Ra)
  pred[1:, 0] = img[:-1, 0]                         # first column: above (Rb)
  pred[1:, 1:] = img[1:, :-1]                       # predictor 1: Ra
  diff = (img - pred) % 65536                       # H.1.2.1: modulo 2^16
  diff = np.where(diff >= 32768, diff - 65536, diff)
  bits, nbits, out = 0, 0, bytearray()

  def put(value: int, length: int):
    nonlocal bits, nbits
    bits = (bits << length) | (value & ((1 << length) - 1))
    nbits += length
    while nbits >= 8:
      byte = (bits >> (nbits - 8)) & 0xFF
      out.append(byte)
      if byte == 0xFF:
        out.append(0x00)                            # byte stuffing (F.1.2.3)
      nbits -= 8
    bits &= (1 << nbits) - 1

  for d in diff.ravel().tolist():
    if d == -32768:
      put(16, 5)                                    # category 16: no extra bits (H.1.2.2)
      continue
    size = abs(d).bit_length()
    put(size, 5)
    if size:
      put(d if d > 0 else d - 1, size)
  if nbits:
    put((1 << (8 - nbits)) - 1, 8 - nbits)          # pad with 1-bits
  sof = bytes([0xFF, 0xC3, 0, 11, precision, rows >> 8, rows & 255, cols >> 8, cols & 255, 1, 1,
               0x11, 0])
  counts = [0] * 16
  counts[4] = 17                                    # 17 codes of length 5
  dht = bytes([0xFF, 0xC4, 0, 2 + 1 + 16 + 17, 0x00, *counts, *range(17)])
  sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0])   # Ss = 1: predictor 1
  return b"\xff\xd8" + sof + dht + sos + bytes(out) + b"\xff\xd9"


def write_jpeg_lossless_copy(src, dst) -> pathlib.Path:
  """`src` (an uncompressed single-frame file) re-stored as JPEG lossless SV1 at `dst`."""
  from pydicom.encaps import encapsulate
  from pydicom.uid import JPEGLosslessSV1
  ds = pydicom.dcmread(src)
  frame = encode_jpeg_lossless_sv1(ds.pixel_array.view(np.uint16) if ds.pixel_array.dtype ==
                                   np.int16 else ds.pixel_array, int(ds.BitsStored))
  ds.PixelData = encapsulate([frame])
  ds["PixelData"].VR = "OB"
  ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
  dst = pathlib.Path(dst)
  ds.save_as(dst, enforce_file_format=True)
  return dst
