"""Synthetic head-CT phantoms with full ground truth, written as DICOM in RSNA / CQ500 / blend layouts.

`generate_scan` is the pure in-memory generator (HU int16 [S,H,W] + truth); `write_dataset` draws
scans deterministically by (seed, scan index), writes real CT DICOM series in the layout of a
public data set plus its label files, and a manifest.json with per-slice labels, boxes and
centres of every lesion.

Speed (the README's main job generates its data on first use): scans are drawn in spawned worker
processes (`num_workers`), only the in-plane box around the head is rendered, and each series'
DICOM header is encoded once by pydicom with the per-slice elements spliced in as bytes
(`SeriesWriter`, byte-identical to pydicom's own encoder). manifest["timing"] records the rate.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import pathlib
import struct
import time
from typing import Any, Optional, Sequence

import numpy as np

from ctjax.data import phantom_anatomy as pa
from ctjax.data.labels import (BLEND_CLASSES, CQ500_FINDINGS, CQ500_LABELS, RSNA_CSV_SUBTYPES,
                               RSNA_LABELS)
from ctjax.data import phantom_lesions as pl
from ctjax.errors import ConfigError, DatasetLayoutError, PathLike

log = logging.getLogger(__name__)

LAYOUTS = ("rsna", "cq500", "blend")
FINDINGS = ("iph", "ivh", "sdh", "edh", "sah", "fracture", "mass_effect", "midline_shift", "blend")
HU_MIN, HU_MAX = -1024, 3071
DIFFICULT_MAX_SLICES = 5          # DrCT2 Sec. IV: "five or fewer images" = difficult condition
RSNA_SUBTYPES = RSNA_CSV_SUBTYPES   # row order of stage_2_train.csv
RSNA_NAME = {"edh": "epidural", "iph": "intraparenchymal", "ivh": "intraventricular",
             "sah": "subarachnoid", "sdh": "subdural"}
# Relative frequency of each subtype among positive scans (RSNA 2019 slice counts, rounded).
SUBTYPE_WEIGHTS = {"iph": 0.26, "ivh": 0.17, "sdh": 0.3, "edh": 0.05, "sah": 0.22}

DEFAULTS = dict(
    prevalence=None,            # share of positive scans; None: rsna 0.35, cq500 0.45, blend 2/3
    difficult_fraction=0.3,     # share of positive scans whose bleeding shows on <= 3 slices
    slice_range=None,           # (lo, hi) slice count; None: rsna/blend (21, 60), cq500 (32, 300)
    reader_disagreement=0.05,   # CQ500: per reader, per finding flip probability
    pineal_rate=0.5,
    choroid_rate=0.35,
    mimic_rate=0.5,             # blend layout: share of normal-ICH scans whose clot is a mimic
    noise_sigma=None,           # None: per-scan, from voxel size
    blend_fraction=None,        # blend layout: (non_ich, normal_ich, blend) scan shares
    # CQ500 layout: reconstructions written besides "CT PLAIN THIN" (kernel STANDARD), as the
    # real studies have: "thick" (CT Plain, pairs of slices averaged, 2× thickness), "bone"
    # (CT BONE, kernel BONE), "localizer" (CT SCOUT, one coronal LOCALIZER image).
    cq500_series=("thick", "bone", "localizer"),
)
CQ500_EXTRA_SERIES = ("thick", "bone", "localizer")


# --------------------------------------------------------------------------- in-memory generator

def generate_scan(rng: np.random.Generator, *, size: int = 512, num_slices: int = 32,
                  findings: Sequence[str] = (), difficult: bool = False,
                  mimic: Optional[str] = None, calcifications: Sequence[str] = (),
                  noise_sigma: Optional[float] = None) -> tuple[np.ndarray, dict]:
  """One head CT: HU int16 [S,H,W] (slice 0 most inferior) and its truth.

  findings: names from FINDINGS ("blend" = a parenchymal haematoma with a blend sign; "mass_effect"
  and "midline_shift" come from the largest haematoma, added if none is asked for).
  difficult: bleeding lesions are tiny and span 1–3 slices. mimic: one of phantom_lesions.MIMICS,
  a heterogeneous clot that is NOT a blend sign. calcifications: "pineal", "choroid".
  """
  findings = list(dict.fromkeys(findings))
  for f in findings:
    if f not in FINDINGS:
      raise ConfigError(f"unknown finding {f!r}; known: {FINDINGS}")
  if mimic is not None and mimic not in pl.MIMICS:
    raise ConfigError(f"unknown mimic {mimic!r}; known: {pl.MIMICS}")
  g = pa.sample_geometry(rng, size=size, num_slices=num_slices, noise_sigma=noise_sigma)
  grid = pa.Grid(g)
  wants_mass = "mass_effect" in findings or "midline_shift" in findings
  if wants_mass and not {"iph", "sdh", "edh", "blend"} & set(findings):
    findings.insert(0, str(rng.choice(["iph", "sdh"])))
  if mimic and "iph" not in findings:
    findings.insert(0, "iph")

  # Parenchymal clots are sampled first: mass effect and midline shift deform the anatomy.
  iph_params = {}
  for f in ("blend", "iph"):
    if f in findings:
      iph_params[f] = pl.sample_iph(grid, rng, difficult=difficult and f == "iph",
                                    blend=f == "blend")
  cause_side, cause_w = int(rng.choice([-1, 1])), 0.2 * g.semi_axes[2]
  if iph_params:
    p = next(iter(iph_params.values()))
    cause_side, cause_w = p["side"], p["center"][2]
  if wants_mass:
    g.compress_side = cause_side
    g.compress_factor = float(rng.uniform(0.35, 0.6))
  if "midline_shift" in findings:
    g.midline_shift = float(-cause_side * rng.uniform(4.0, 11.0))
    g.shift_level = float(cause_w)
  hu, fields = pa.render_anatomy(grid, rng)

  lesions: list[pl.Lesion] = []
  calcs: list[pl.Lesion] = []
  for kind in calcifications:
    calcs += pl.render_calcification(grid, fields, rng, kind)
  for f in findings:
    if f == "sah":
      lesions.append(pl.render_sah(grid, fields, rng, difficult=difficult))
    elif f == "ivh":
      lesions.append(pl.render_ivh(grid, fields, rng, difficult=difficult))
    elif f in ("sdh", "edh"):
      side = cause_side if (wants_mass and not iph_params) else None
      lesions.append(pl.render_extra_axial(grid, fields, rng, kind=f, difficult=difficult,
                                           side=side, wc=cause_w if side else None))
  for f, p in iph_params.items():
    lesions.append(pl.render_iph(grid, fields, p, rng, blend=f == "blend",
                                 mimic=mimic if f == "iph" else None))
  if "fracture" in findings:
    edh = [l for l in lesions if l.type == "edh"]
    lesions.append(pl.render_fracture(grid, fields, rng, edh[0].extra["phi"] if edh else None))
  for les in calcs + lesions:
    pl.composite(hu, les)
  del fields
  hu = grid.paste(hu, pa.HU_AIR)

  if g.noise_sigma > 0:
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(g.noise_sigma)
  out = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
  truth = _truth(grid, lesions, calcs, findings)
  return out, truth


def _truth(grid: pa.Grid, lesions: list, calcs: list, findings: list) -> dict:
  g = grid.g
  S = g.num_slices
  entries = []
  slice_class = [0] * S
  for les in lesions:
    t = pl.truth_of(les, offset=grid.offset)
    if not t["slices"]:
      continue
    if les.type in pl.BLEEDS:
      for k in t["slices"]:
        slice_class[k] = max(slice_class[k], 1)
    if les.blend and les.hypo is not None:
      m = pl.mask_of(les)
      hypo = (les.hypo >= pl.MASK_THRESHOLD) & m
      bs = []
      for j, k in enumerate(les.idx):
        n_all, n_hypo = int(m[j].sum()), int(hypo[j].sum())
        need = max(2, int(0.1 * n_all))
        if n_hypo >= need and n_all - n_hypo >= need:
          bs.append(int(k))
          slice_class[k] = 2
      t["blend_slices"] = bs
      t["blend"] = bool(bs)
    entries.append(t)
  # Mass effect and midline shift are drawn on the slices of the haematoma that causes them.
  bleeds = [e for e in entries if e["type"] in ("iph", "sdh", "edh")]
  cause = max(bleeds, key=lambda e: len(e["slices"])) if bleeds else None
  if cause is not None and "mass_effect" in findings and g.compress_side:
    entries.append(dict(cause, type="mass_effect", blend=False, hu=[0.0, 0.0]))
  if cause is not None and "midline_shift" in findings and g.midline_shift:
    entries.append(_midline_truth(grid, cause))
  calc_entries = [dict(pl.truth_of(c, offset=grid.offset), blend=False) for c in calcs]
  return {
      "num_slices": S, "pixel_spacing": g.pixel_spacing, "thickness": g.thickness,
      "z": [float(z) for z in grid.z], "noise_sigma": g.noise_sigma,
      "origin_xy": [-(g.size - 1) / 2 * g.pixel_spacing] * 2,
      "lesions": entries, "calcifications": calc_entries, "slice_class": slice_class,
      "midline_shift_mm": g.midline_shift,
  }


def _midline_truth(grid: pa.Grid, cause: dict) -> dict:
  g = grid.g
  B = g.semi_axes[1]
  slices, boxes, centers = [], {}, {}
  for k in cause["slices"]:
    s = g.midline_shift * float(pa.bell((grid.z[k] - grid.cz - g.shift_level) / (0.55 * g.semi_axes[2])))
    if abs(s) < 2.0:
      continue
    corners = [grid.to_pixels(u, v) for u in (min(0.0, s) - 3, max(0.0, s) + 3)
               for v in (-0.6 * B, 0.6 * B)]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    box = [max(0, int(math.floor(min(xs)))), max(0, int(math.floor(min(ys)))),
           min(g.size, int(math.ceil(max(xs)))), min(g.size, int(math.ceil(max(ys))))]
    slices.append(int(k))
    boxes[str(k)] = box
    centers[str(k)] = list(grid.to_pixels(s, 0.0))
  return {"type": "midline_shift", "slices": slices, "boxes": boxes, "centers": centers,
          "blend": False, "hu": [0.0, 0.0], "side": -int(np.sign(g.midline_shift)),
          "shift_mm": abs(g.midline_shift)}


def is_difficult(truth: dict) -> bool:
  """DrCT2's difficult condition: bleeding visible on 1..5 slices."""
  n = len(bleed_slices(truth))
  return 0 < n <= DIFFICULT_MAX_SLICES


def bleed_slices(truth: dict) -> set[int]:
  return {k for e in truth["lesions"] if e["type"] in pl.BLEEDS for k in e["slices"]}


# --------------------------------------------------------------------------- per-layout sampling

def _opts(options: dict) -> dict:
  unknown = set(options) - set(DEFAULTS)
  if unknown:
    raise ConfigError(f"unknown phantom options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
  return {**DEFAULTS, **options}


def _slice_range(layout: str, opts: dict) -> tuple[int, int]:
  return tuple(opts["slice_range"] or ((32, 300) if layout == "cq500" else (21, 60)))


CQ500_SHORT_SHARE, CQ500_SHORT_MAX = 0.7, 64


def sample_case(rng: np.random.Generator, layout: str, opts: dict) -> dict:
  """Which findings one scan of `layout` has (kwargs for generate_scan + the slice count)."""
  lo, hi = _slice_range(layout, opts)
  if layout == "cq500":   # thin-slice series dominate the long tail but most are 32–60 slices
    n = (int(rng.integers(lo, min(hi, CQ500_SHORT_MAX) + 1)) if rng.random() < CQ500_SHORT_SHARE
         else int(rng.integers(lo, hi + 1)))
  else:
    n = int(rng.integers(lo, hi + 1))
  calcs = [k for k, r in (("pineal", opts["pineal_rate"]), ("choroid", opts["choroid_rate"]))
           if rng.random() < r]
  case = dict(num_slices=n, calcifications=calcs, findings=[], difficult=False, mimic=None)
  types = list(SUBTYPE_WEIGHTS)
  weights = np.array(list(SUBTYPE_WEIGHTS.values()))
  weights = weights / weights.sum()
  if layout == "blend":
    shares = opts["blend_fraction"] or (1 / 3, 1 / 3, 1 / 3)
    cls = int(rng.choice(3, p=np.asarray(shares) / np.sum(shares)))
    if cls == 2:
      case["findings"] = ["blend"] + ([str(rng.choice(types, p=weights))] if rng.random() < 0.3 else [])
    elif cls == 1:
      case["difficult"] = bool(rng.random() < opts["difficult_fraction"])
      if rng.random() < opts["mimic_rate"]:
        case["mimic"] = str(rng.choice(pl.MIMICS))
        case["findings"] = ["iph"]
        case["difficult"] = False
      else:
        case["findings"] = [str(rng.choice(types, p=weights))]
    return case
  prevalence = opts["prevalence"]
  if prevalence is None:
    prevalence = 0.45 if layout == "cq500" else 0.35
  if rng.random() < prevalence:
    difficult = bool(rng.random() < opts["difficult_fraction"])
    k = 1 if difficult else int(rng.choice([1, 2, 3], p=[0.7, 0.22, 0.08]))
    found = list(rng.choice(types, size=k, replace=False, p=weights))
    case.update(findings=[str(f) for f in found], difficult=difficult)
    if layout == "cq500" and not difficult:
      if "edh" in found and rng.random() < 0.6:
        case["findings"].append("fracture")
      if {"iph", "sdh", "edh"} & set(found) and rng.random() < 0.5:
        case["findings"].append("mass_effect")
        if rng.random() < 0.55:
          case["findings"].append("midline_shift")
  elif layout == "cq500" and rng.random() < 0.05:
    case["findings"] = ["fracture"]
  return case


def scan_labels(truth: dict, layout: str) -> tuple[list[str], dict, list[list[int]]]:
  """(label names, scan labels, per-slice labels) of one scan in `layout`'s vocabulary."""
  S = truth["num_slices"]
  if layout == "blend":
    names = list(BLEND_CLASSES)
    sc = truth["slice_class"]
    per = [[int(c == i) for i in range(3)] for c in sc]
    top = max(sc) if sc else 0
    return names, {n: int(i == top) for i, n in enumerate(names)}, per
  if layout == "rsna":
    names = list(RSNA_LABELS)
    key = {v: k for k, v in RSNA_NAME.items()}
    typ = {n: key.get(n) for n in names}
  else:
    names = list(CQ500_LABELS)
    typ = {n: n for n in names}
  per = [[0] * len(names) for _ in range(S)]
  for e in truth["lesions"]:
    for j, n in enumerate(names):
      if typ[n] == e["type"]:
        for k in e["slices"]:
          per[k][j] = 1
  any_name = "any" if layout == "rsna" else "ich"
  ja = names.index(any_name)
  for row in per:
    row[ja] = int(any(row[j] for j, n in enumerate(names) if n != any_name and typ[n] in pl.BLEEDS))
  scan = {n: int(any(row[j] for row in per)) for j, n in enumerate(names)}
  return names, scan, per


def cq500_reads(rng: np.random.Generator, truth: dict, labels: dict, rate: float) -> list[dict]:
  """Three readers' rows in CQ500's reads.csv vocabulary; each flips a finding with p=rate."""
  sides = {e["side"] for e in truth["lesions"] if e["type"] in pl.BLEEDS}
  base = {"IPH": labels["iph"], "IVH": labels["ivh"], "SDH": labels["sdh"], "EDH": labels["edh"],
          "SAH": labels["sah"], "CalvarialFracture": labels["fracture"],
          "MassEffect": labels["mass_effect"], "MidlineShift": labels["midline_shift"]}
  reads = []
  for _ in range(3):
    r = {k: int(v ^ (rng.random() < rate)) for k, v in base.items()}
    r["ICH"] = int(any(r[k] for k in ("IPH", "IVH", "SDH", "EDH", "SAH")))
    r["BleedLocation-Left"] = int(r["ICH"] and (1 in sides or 0 in sides))
    r["BleedLocation-Right"] = int(r["ICH"] and (-1 in sides or 0 in sides))
    r["ChronicBleed"] = 0
    r["OtherFracture"] = 0
    r["Fracture"] = int(r["CalvarialFracture"] or r["OtherFracture"])
    reads.append({k: r[k] for k in CQ500_FINDINGS})
  return reads


# --------------------------------------------------------------------------- DICOM writing

def _uid(rng: np.random.Generator) -> str:
  """A DICOM UID in the 2.25 (UUID-derived) root, deterministic by rng."""
  return "2.25." + str(int.from_bytes(rng.bytes(15), "big"))


def _rsna_id(rng: np.random.Generator, n: int = 9) -> str:
  return "ID_" + rng.bytes(8).hex()[:n]


def _rsna_sop_id(rng: np.random.Generator, scan: int, slice_: int) -> str:
  """A slice's `ID_<9 hex>` (RSNA's form), unique in the data set by construction: the scan and
  slice indices fill 26 of its 36 bits (independent random draws per scan collided: 9 hex digits
  for ~50k slices is a 2 % birthday chance), 10 random bits the rest. Draws the same random bytes
  as `_rsna_id`, so the rest of the scan is unchanged. More digits beyond 2^17 scans."""
  noise = int.from_bytes(rng.bytes(8), "big") & 0x3FF
  if slice_ >= 1 << 9:
    raise ValueError(f"RSNA-layout phantoms have at most 512 slices (got slice {slice_})")
  value = (scan << 19) | (slice_ << 10) | noise
  return "ID_" + format(value, "09x")


# Per-slice elements of a series; everything else is encoded once per series (_TemplateWriter).
_VAR_TAGS = {0x00020003: "UI", 0x00080018: "UI", 0x00200013: "IS", 0x00200032: "DS",
             0x00201041: "DS", 0x7FE00010: "OW"}
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}


def _element(tag: int, vr: str, value: bytes) -> bytes:
  """One explicit-VR little-endian data element, padded to even length as PS3.5 7.1.2 asks."""
  if len(value) % 2:
    value += b"\0" if vr in ("UI", "OB", "UN") else b" "
  head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
  if vr in _LONG_VRS:
    return head + struct.pack("<HI", 0, len(value)) + value
  return head + struct.pack("<H", len(value)) + value


class SeriesWriter:
  """Writes one CT series: the shared header is encoded once by pydicom, each slice's own
  elements (SOP UID, instance number, position, pixels) are spliced in as bytes.

  pydicom spends ~7 ms building and encoding a 30-element Dataset per file, which dominated data
  set generation; splicing costs microseconds. `reference_write` keeps the plain pydicom path:
  tests assert both give byte-identical files.
  """

  def __init__(self, *, size: int, truth: dict, patient_id: str, study_uid: str, series_uid: str,
               encoding: int, descending_instances: bool, description: str,
               kernel: Optional[str] = None, image_type: Sequence[str] = ("ORIGINAL", "PRIMARY",
                                                                         "AXIAL"),
               orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), series_number: int = 2):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    self._pydicom = pydicom
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = CTImageStorage
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.ImageType = list(image_type)
    ds.Manufacturer = "ctjax phantom"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = series_uid if series_uid.startswith("ID_") else series_uid + ".1"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    if kernel is not None:
      ds.ConvolutionKernel = kernel
    ds.BodyPartExamined = "HEAD"
    ds.KVP = 120
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{truth['pixel_spacing']:.6f}"] * 2
    ds.SliceThickness = f"{truth['thickness']:.6f}"
    ds.ImageOrientationPatient = [v if v % 1 else int(v) for v in orientation]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if encoding != 1 else 12
    ds.HighBit = ds.BitsStored - 1
    # Encodings seen in real archives: int16 @ -1024, uint16 (12-bit) @ -1024, int16 @ 0.
    ds.PixelRepresentation = 0 if encoding == 1 else 1
    self.intercept = 0 if encoding == 2 else -1024
    ds.RescaleIntercept = self.intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 80
    self.ds = ds
    self.truth = truth
    self.descending = descending_instances
    self.dtype = np.dtype("<u2") if encoding == 1 else np.dtype("<i2")
    self._template = None

  def _values(self, k: int, sop_uid: str) -> dict:
    """The per-slice element values, as the strings/ints pydicom is given."""
    t = self.truth
    S = t["num_slices"]
    return {"SOPInstanceUID": sop_uid,
            "InstanceNumber": (S - k) if self.descending else (k + 1),
            "ImagePositionPatient": [f"{t['origin_xy'][0]:.4f}", f"{t['origin_xy'][1]:.4f}",
                                     f"{t['z'][k]:.4f}"],
            "SliceLocation": f"{t['z'][k]:.4f}"}

  def stored(self, hu: np.ndarray) -> np.ndarray:
    """HU -> stored pixel values in this series' encoding (any leading shape)."""
    stored = hu.astype(np.int32) - self.intercept
    if self.dtype.kind == "u":
      stored = np.clip(stored, 0, 4095)
    return stored.astype(self.dtype)

  def _build_template(self) -> None:
    """Encodes every constant element once: a list of byte runs and per-slice tag slots."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element, write_file_meta_info

    def enc(elem) -> bytes:
      fp = DicomBytesIO()
      fp.is_little_endian, fp.is_implicit_VR = True, False
      write_data_element(fp, elem)
      return fp.getvalue()

    fm = self.ds.file_meta
    fm.MediaStorageSOPInstanceUID = "1.2"          # fills version/impl. name as dcmwrite does
    write_file_meta_info(DicomBytesIO(), fm, enforce_standard=True)
    meta = [(el.tag, None if el.tag in _VAR_TAGS else enc(el)) for el in fm
            if el.tag != 0x00020000]
    body = [(el.tag, None if el.tag in _VAR_TAGS else enc(el)) for el in self.ds]
    tags = {t for t, _ in body}
    body += [(t, None) for t in _VAR_TAGS if t >> 16 != 2 and t not in tags]
    body.sort(key=lambda x: x[0])

    def runs(items):
      out, cur = [], b""
      for tag, b in items:
        if b is None:
          out += [cur, tag]
          cur = b""
        else:
          cur += b
      return out + [cur]

    self._template = (runs(meta), runs(body))

  def encode(self, k: int, stored_slice: np.ndarray, sop_uid: str) -> bytes:
    """The complete DICOM file of slice k (stored_slice from `stored`)."""
    if self._template is None:
      self._build_template()
    meta_runs, body_runs = self._template
    val = self._values(k, sop_uid)
    uid = sop_uid.encode("ascii")
    var = {0x00020003: _element(0x00020003, "UI", uid),
           0x00080018: _element(0x00080018, "UI", uid),
           0x00200013: _element(0x00200013, "IS", str(val["InstanceNumber"]).encode("ascii")),
           0x00200032: _element(0x00200032, "DS",
                                "\\".join(val["ImagePositionPatient"]).encode("ascii")),
           0x00201041: _element(0x00201041, "DS", val["SliceLocation"].encode("ascii")),
           0x7FE00010: _element(0x7FE00010, "OW", stored_slice.tobytes())}
    meta = b"".join(var[x] if isinstance(x, int) else x for x in meta_runs)
    body = b"".join(var[x] if isinstance(x, int) else x for x in body_runs)
    group_len = _element(0x00020000, "UL", struct.pack("<I", len(meta)))
    return b"\0" * 128 + b"DICM" + group_len + meta + body

  def write(self, path: pathlib.Path, k: int, hu_slice: np.ndarray, sop_uid: str) -> None:
    with open(path, "wb") as f:
      f.write(self.encode(k, self.stored(hu_slice), sop_uid))

  def reference_write(self, path, k: int, hu_slice: np.ndarray, sop_uid: str) -> None:
    """The same file through pydicom's own Dataset encoder (slow; the check of `encode`)."""
    import copy
    ds = copy.deepcopy(self.ds)
    for name, v in self._values(k, sop_uid).items():
      setattr(ds, name, v)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.PixelData = self.stored(hu_slice).tobytes()
    self._pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _quiet_pydicom():
  """RSNA's `ID_<hex>` UIDs are not valid UI values; keep pydicom from warning on each."""
  import pydicom.config as pc
  prev = (pc.settings.reading_validation_mode, pc.settings.writing_validation_mode)
  pc.settings.reading_validation_mode = pc.IGNORE
  pc.settings.writing_validation_mode = pc.IGNORE
  return prev


def _restore_pydicom(prev) -> None:
  import pydicom.config as pc
  pc.settings.reading_validation_mode, pc.settings.writing_validation_mode = prev


def default_workers(num_scans: int) -> int:
  """min(cpus, 4) worker processes, but none for small sets: a spawned worker costs ~0.5 CPU-s
  to import numpy and pydicom, worth it only from ~8 scans per worker."""
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count() or 1
  n = min(cpus, 4, num_scans // 8)
  return n if n >= 2 else 0


def _children_cpu() -> float:
  try:
    import resource
  except ImportError:      # not on POSIX: fall back to the workers' own per-scan clocks
    return 0.0
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _init_worker() -> None:
  _quiet_pydicom()


def _make_scan(job: tuple) -> tuple[dict, list, float, float]:
  """Draws, renders and writes scan i; depends only on (seed, i). Returns (manifest entry,
  blend_labels rows, generate CPU-s, write CPU-s)."""
  out, layout, seed, i, size, opts = job
  t0 = time.process_time()
  rng = np.random.default_rng([seed, i])
  case = sample_case(rng, layout, opts)
  hu, truth = generate_scan(rng, size=size, noise_sigma=opts["noise_sigma"], **case)
  t1 = time.process_time()
  rows: list = []
  entry = _write_scan(pathlib.Path(out), layout, i, rng, hu, truth, case, opts, rows)
  if layout == "cq500" and opts["cq500_series"]:
    # Own rng stream: the thin series and its reads are the same with or without these.
    entry["extra_series"] = _write_cq500_extra(pathlib.Path(out), entry, hu, truth, opts,
                                               np.random.default_rng([seed, i, 1]))
  return entry, rows, t1 - t0, time.process_time() - t1


# Written before the first scan: a folder being generated is recognisably a phantom set (hidden,
# so that a cache's source fingerprint ignores it).
MARKER = ".ctjax_phantom.json"
# One slice's DICOM header as SeriesWriter encodes it (as measured; UIDs differ in length).
HEADER_BYTES = {"rsna": 890, "cq500": 1040, "blend": 1030}


def estimate_bytes(layout: str, num_scans: int, size: int, **options: Any) -> int:
  """About how many bytes `write_dataset` writes: the expected slice count × (pixels + header)."""
  opts = _opts(options)
  lo, hi = _slice_range(layout, opts)
  slices = (lo + hi) / 2
  series = 1.0
  if layout == "cq500":
    slices = (CQ500_SHORT_SHARE * (lo + min(hi, CQ500_SHORT_MAX)) / 2
              + (1 - CQ500_SHORT_SHARE) * slices)
    extra = set(opts["cq500_series"])
    series += 0.5 * ("thick" in extra) + 1.0 * ("bone" in extra)
    slices = slices * series + ("localizer" in extra)
  return int(num_scans * slices * (size * size * 2 + HEADER_BYTES[layout]))


def is_phantom_set(folder: PathLike) -> bool:
  """A folder `write_dataset` wrote (manifest.json) or began to write (its marker)."""
  folder = pathlib.Path(folder)
  if (folder / MARKER).is_file():
    return True
  try:
    manifest = json.loads((folder / "manifest.json").read_text())
  except (OSError, ValueError):
    return False
  return isinstance(manifest, dict) and manifest.get("layout") in LAYOUTS and "scans" in manifest


def foreign_entries(folder: PathLike) -> list[str]:
  """Names in `folder` (hidden ones aside) that make it no place for a phantom set: none when
  the folder is absent, empty or a phantom set."""
  folder = pathlib.Path(folder)
  if not folder.is_dir() or is_phantom_set(folder):
    return []
  return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def write_dataset(out_dir: PathLike, *, layout: str, num_scans: int, seed: int, size: int = 512,
                  num_workers: Optional[int] = None, progress: bool = False,
                  allow_nonempty: bool = False, **options: Any) -> pathlib.Path:
  """Writes `num_scans` phantom scans in `layout` under out_dir; returns out_dir/manifest.json.

  Scan i depends only on (seed, i), so growing num_scans keeps the earlier scans identical and
  the output does not depend on num_workers (None: `default_workers`; 0/1: in this process;
  n: n spawned processes — spawn, not fork, because callers may already run JAX threads).
  out_dir must be absent, empty or a phantom set already (`allow_nonempty`: any folder), so that
  a data set's own files are never overwritten. `progress`: a tqdm bar over the scans.
  Options: see DEFAULTS.
  """
  if layout not in LAYOUTS:
    raise ConfigError(f"unknown phantom layout {layout!r}; expected one of {LAYOUTS}")
  if num_scans < 1 or size < 16:
    raise ConfigError(f"need num_scans >= 1 and size >= 16, got {num_scans}, {size}")
  opts = _opts(options)
  workers = default_workers(num_scans) if num_workers is None else min(int(num_workers), num_scans)
  out = pathlib.Path(out_dir)
  foreign = [] if allow_nonempty else foreign_entries(out)
  if foreign:
    raise DatasetLayoutError(
        f"not empty ({', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}) and not a "
        "ctjax phantom set; phantoms are written only into a new or empty folder: give one", out)
  out.mkdir(parents=True, exist_ok=True)
  (out / MARKER).write_text(json.dumps({"layout": layout, "seed": seed, "size": size,
                                        "num_scans": num_scans}))
  t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
  jobs = [(str(out), layout, seed, i, size, opts) for i in range(num_scans)]
  results = None
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=num_scans, desc="phantom scans", unit="scan", mininterval=0.5)
  try:
    if workers > 1:
      import concurrent.futures
      import multiprocessing
      chunk = max(1, min(8, num_scans // (8 * workers)))
      try:
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker) as pool:
          results = list(_counted(pool.map(_make_scan, jobs, chunksize=chunk), bar))
      except concurrent.futures.process.BrokenProcessPool as e:
        # Typically a script without an `if __name__ == "__main__":` guard, which spawned
        # workers re-run. Scans are pure functions of (seed, i): redo them all here.
        log.warning("phantom worker processes failed (%s); generating in-process", e)
        if bar is not None:
          bar.reset()
    if results is None:
      workers = 0
      prev = _quiet_pydicom()
      try:
        results = list(_counted(map(_make_scan, jobs), bar))
      finally:
        _restore_pydicom(prev)
  finally:
    if bar is not None:
      bar.close()
  scans = [r[0] for r in results]
  rows = [row for r in results for row in r[1]]
  t_gen, t_write = sum(r[2] for r in results), sum(r[3] for r in results)
  _write_labels(out, layout, scans, rows)
  n_slices = sum(len(s["files"]) for s in scans)
  dt = time.perf_counter() - t0
  # Workers' CPU including their start-up (they are reaped when the pool shuts down).
  cpu = (time.process_time() - c0) + (max(_children_cpu() - k0, t_gen + t_write) if workers else 0.0)
  labels = scan_labels(dict(num_slices=0, lesions=[], slice_class=[]), layout)[0]
  manifest = {"layout": layout, "seed": seed, "size": size, "labels": labels,
              "options": {k: v for k, v in opts.items()},
              "timing": {"seconds": dt, "cpu_seconds": cpu, "generate_cpu_seconds": t_gen,
                         "write_cpu_seconds": t_write, "num_workers": workers,
                         "slices": n_slices, "slices_per_s": n_slices / max(dt, 1e-9),
                         "slices_per_cpu_s": n_slices / max(cpu, 1e-9)},
              "scans": scans}
  path = out / "manifest.json"
  tmp = out / "manifest.json.tmp"
  tmp.write_text(json.dumps(manifest, indent=None, separators=(",", ":")))
  os.replace(tmp, path)
  log.info("wrote %d %s scans (%d slices) to %s in %.1fs wall, %.1f CPU-s, %d workers "
           "(%.0f slices/s)", num_scans, layout, n_slices, out, dt, cpu, workers,
           n_slices / max(dt, 1e-9))
  return path


def _counted(results, bar):
  for r in results:
    if bar is not None:
      bar.update(1)
    yield r


def _write_scan(out: pathlib.Path, layout: str, i: int, rng: np.random.Generator, hu: np.ndarray,
                truth: dict, case: dict, opts: dict, rows: list) -> dict:
  S = hu.shape[0]
  names, labels, per = scan_labels(truth, layout)
  if layout == "rsna":
    patient, study, series = _rsna_id(rng), _rsna_id(rng, 10), _rsna_id(rng, 10)
    sops = [_rsna_sop_id(rng, i, k) for k in range(S)]
    scan_id = series
    rel = [f"stage_2_train/{s}.dcm" for s in sops]
    (out / "stage_2_train").mkdir(exist_ok=True)
  elif layout == "cq500":
    scan_id = patient = f"CQ500-CT-{i}"
    study, series = _uid(rng), _uid(rng)
    sops = [_uid(rng) for _ in range(S)]
    folder = f"{_cq500_study(scan_id)}/CT PLAIN THIN"
    numbers = rng.permutation(S)      # real CQ500 file numbers do not follow slice order
    rel = [f"{folder}/CT{n:06d}.dcm" for n in numbers]
    (out / folder).mkdir(parents=True, exist_ok=True)
  else:
    scan_id, patient = f"scan{i:05d}", f"P{i:05d}"
    study, series = _uid(rng), _uid(rng)
    sops = [_uid(rng) for _ in range(S)]
    rel = [f"scans/{scan_id}/IM{k:04d}.dcm" for k in range(S)]
    (out / "scans" / scan_id).mkdir(parents=True, exist_ok=True)
  cq500 = layout == "cq500"
  writer = SeriesWriter(size=hu.shape[1], truth=truth, patient_id=patient, study_uid=study,
                        series_uid=series, encoding=int(rng.integers(0, 3)),
                        descending_instances=bool(rng.random() < 0.5),
                        description="PLAIN THIN" if cq500 else f"ctjax phantom {layout}",
                        kernel="STANDARD" if cq500 else None)
  stored = writer.stored(hu)
  for k in range(S):
    with open(out / rel[k], "wb") as f:
      f.write(writer.encode(k, stored[k], sops[k]))
  entry = {"scan_id": scan_id, "patient_id": patient, "study_uid": study, "series_uid": series,
           "sop_uids": sops, "files": rel, "labels": labels, "slice_labels": per,
           "slice_class": truth["slice_class"], "lesions": truth["lesions"],
           "calcifications": truth["calcifications"], "num_slices": S,
           "pixel_spacing": truth["pixel_spacing"], "thickness": truth["thickness"],
           "difficult": is_difficult(truth), "noise_sigma": truth["noise_sigma"],
           "rescale_intercept": writer.intercept}
  if case.get("mimic"):
    entry["mimic"] = case["mimic"]
  if layout == "cq500":
    entry["reads"] = cq500_reads(rng, truth, labels, opts["reader_disagreement"])
  if layout == "blend":
    for k in range(S):
      boxes = [e["boxes"][str(k)] for e in truth["lesions"]
               if e["type"] in pl.BLEEDS and str(k) in e["boxes"]]
      rows.append([scan_id, patient, sops[k], rel[k], truth["slice_class"][k],
                   ";".join(" ".join(str(v) for v in b) for b in boxes)])
  return entry


def _cq500_study(scan_id: str) -> str:
  """The download's study folder of CQ500-CT-<n>: `CQ500CT<n> CQ500CT<n>/Unknown Study`."""
  n = scan_id.rsplit("-", 1)[-1]
  return f"CQ500CT{n} CQ500CT{n}/Unknown Study"


def _write_cq500_extra(out: pathlib.Path, entry: dict, hu: np.ndarray, truth: dict, opts: dict,
                       rng: np.random.Generator) -> list[dict]:
  """The other reconstructions of a CQ500 study (DEFAULTS["cq500_series"]); their manifest
  entries (files, per-slice truth, what a series policy should do with them)."""
  unknown = set(opts["cq500_series"]) - set(CQ500_EXTRA_SERIES)
  if unknown:
    raise ConfigError(f"unknown cq500_series {sorted(unknown)}; known: {CQ500_EXTRA_SERIES}")
  study = _cq500_study(entry["scan_id"])
  per = np.asarray(entry["slice_labels"], np.int64)
  S = hu.shape[0]
  out_entries = []
  for number, kind in enumerate(opts["cq500_series"], start=3):
    if kind == "thick" and S < 2:
      continue
    if kind == "thick":           # pairs of slices averaged: one slab of twice the thickness
      n = S // 2
      data = np.rint(hu[:2 * n].astype(np.float32).reshape(n, 2, *hu.shape[1:]).mean(1))
      data = data.astype(np.int16)
      z = [0.5 * (truth["z"][2 * k] + truth["z"][2 * k + 1]) for k in range(n)]
      labels = per[:2 * n].reshape(n, 2, -1).max(1).tolist()
      t = dict(truth, num_slices=n, z=z, thickness=2 * truth["thickness"])
      desc, kernel, folder = "Plain", "STANDARD", "CT Plain"
      kw = {}
    elif kind == "bone":
      data, t, labels = hu, truth, per.tolist()
      desc, kernel, folder = "BONE", "BONE", "CT BONE"
      kw = {}
    else:                          # a coronal projection image of the head
      proj = hu.astype(np.float32).max(axis=1)[::-1]          # [S, W], superior row first
      rows = np.linspace(0, proj.shape[0] - 1, hu.shape[1]).round().astype(int)
      data = proj[rows][None].astype(np.int16)
      t = dict(truth, num_slices=1, z=[truth["z"][-1]])
      labels = [[0] * per.shape[1]]
      desc, kernel, folder = "SCOUT", "STANDARD", "CT SCOUT"
      kw = dict(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), orientation=(1, 0, 0, 0, 0, -1))
    series = _uid(rng)
    writer = SeriesWriter(size=hu.shape[1], truth=t, patient_id=entry["patient_id"],
                          study_uid=entry["study_uid"], series_uid=series,
                          encoding=int(rng.integers(0, 3)), descending_instances=False,
                          description=desc, kernel=kernel, series_number=number, **kw)
    (out / study / folder).mkdir(parents=True, exist_ok=True)
    stored = writer.stored(data)
    rel = []
    for k in range(data.shape[0]):
      rel.append(f"{study}/{folder}/CT{k + 1:06d}.dcm")
      with open(out / rel[-1], "wb") as f:
        f.write(writer.encode(k, stored[k], _uid(rng)))
    out_entries.append({"kind": kind, "description": desc, "kernel": kernel, "folder": folder,
                        "series_uid": series, "files": rel, "slice_labels": labels,
                        "num_slices": len(rel), "thickness": t["thickness"]})
  return out_entries


def _write_labels(out: pathlib.Path, layout: str, scans: list, rows: list) -> None:
  if layout == "rsna":
    with open(out / "stage_2_train.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["ID", "Label"])
      for s in scans:
        names = list(RSNA_LABELS)
        for sop, per in zip(s["sop_uids"], s["slice_labels"]):
          for sub in RSNA_SUBTYPES:
            w.writerow([f"{sop}_{sub}", per[names.index(sub)]])
  elif layout == "cq500":
    with open(out / "reads.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["name", "Category"] + [f"R{r}:{c}" for r in (1, 2, 3) for c in CQ500_FINDINGS])
      for i, s in enumerate(scans):
        w.writerow([s["scan_id"], "B1" if i % 2 == 0 else "B2"] +
                   [rd[c] for rd in s["reads"] for c in CQ500_FINDINGS])
  else:
    with open(out / "blend_labels.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["scan_id", "patient_id", "sop_uid", "file", "label", "boxes"])
      w.writerows(rows)


# --------------------------------------------------------------------------- montage

MONTAGE_CASES = (
    ("normal", dict(findings=[])),
    ("IPH + oedema", dict(findings=["iph"])),
    ("IVH", dict(findings=["ivh"])),
    ("SDH", dict(findings=["sdh"])),
    ("EDH + fracture", dict(findings=["edh", "fracture"])),
    ("SAH", dict(findings=["sah"])),
    ("mass effect + midline shift", dict(findings=["sdh", "mass_effect", "midline_shift"])),
    ("blend sign", dict(findings=["blend"])),
    ("mimic: gradient", dict(findings=["iph"], mimic="gradient")),
    ("mimic: low contrast", dict(findings=["iph"], mimic="low_contrast")),
    ("calcifications (not blood)", dict(findings=[], calcifications=["pineal", "choroid"])),
    ("difficult IPH (1-3 slices)", dict(findings=["iph"], difficult=True)),
)


def key_slice(truth: dict, kind: Optional[str] = None) -> int:
  """The slice with the largest box of the first lesion (of `kind`), else mid-ventricle level."""
  cands = [e for e in truth["lesions"] + truth["calcifications"]
           if e["slices"] and (kind is None or e["type"] == kind)]
  if not cands:
    return int(0.55 * truth["num_slices"])
  e = cands[0]
  if e.get("blend_slices"):
    return e["blend_slices"][len(e["blend_slices"]) // 2]
  area = {int(k): (b[2] - b[0]) * (b[3] - b[1]) for k, b in e["boxes"].items()}
  return max(area, key=area.get)


def write_montage(path: PathLike, *, seed: int = 0, size: int = 256, num_slices: int = 32,
                  window: tuple[float, float] = (40.0, 80.0), draw_boxes: bool = False) -> pathlib.Path:
  """PNG grid, one phantom per finding class at its key slice, in the brain window."""
  from PIL import Image, ImageDraw
  tiles = []
  for j, (title, kw) in enumerate(MONTAGE_CASES):
    rng = np.random.default_rng([seed, 1000 + j])
    if "oedema" in title or title == "blend sign":
      # Keep drawing until the clot carries an oedema rim (half of them do) / until the blend
      # clot is big enough to read at thumbnail size.
      for _ in range(8):
        hu, truth = generate_scan(rng, size=size, num_slices=num_slices, **kw)
        if "oedema" in title and any(e.get("oedema") for e in truth["lesions"]):
          break
        blend = [e for e in truth["lesions"] if e.get("blend_slices")]
        if blend and max(b[2] - b[0] for b in blend[0]["boxes"].values()) >= 0.12 * size:
          break
    else:
      hu, truth = generate_scan(rng, size=size, num_slices=num_slices, **kw)
    kind = {"EDH + fracture": "edh", "mass effect + midline shift": "sdh"}.get(title)
    k = key_slice(truth, kind)
    c, w = window
    img = (np.clip((hu[k].astype(np.float32) - (c - w / 2)) / w, 0, 1) * 255).astype(np.uint8)
    tile = Image.fromarray(img).convert("RGB")
    d = ImageDraw.Draw(tile)
    if draw_boxes:
      for e in truth["lesions"]:
        if str(k) in e["boxes"]:
          d.rectangle(e["boxes"][str(k)], outline=(255, 80, 80))
    d.text((4, 3), title, fill=(255, 220, 0))
    d.text((4, size - 13), f"slice {k + 1}/{truth['num_slices']}  W{int(w)} L{int(c)}",
           fill=(180, 180, 180))
    tiles.append(tile)
  cols = 4
  rows = math.ceil(len(tiles) / cols)
  sheet = Image.new("RGB", (cols * size, rows * size))
  for j, t in enumerate(tiles):
    sheet.paste(t, ((j % cols) * size, (j // cols) * size))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(path)
  return path
