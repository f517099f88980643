"""One DICOM CT series → an HU volume in ctjax's canonical orientation.

`read_series(path_or_files, *, series_uid=None, lenient=False) -> Volume` is the only door from
DICOM into ctjax. What it does, and why:

- Files are read with pydicom without `force=True` (so text/PNG/empty files and headerless
  junk are rejected, not parsed as garbage), with pydicom's value validation off and its
  warnings silenced (RSNA's non-UID `ID_…` identifiers would otherwise flood the log). Pixel
  Data larger than `DEFER_BYTES` is not read with the header (pydicom's deferred read): its
  declared length is checked against Rows × Columns × frames × samples × BitsAllocated first
  (`PixelDataSizeError` when longer, `TruncatedDicomError` when the file or the element is
  shorter), so an oversized element is refused without being read or decoded.
- Non-image files in a folder (DICOMDIR, README, non-DICOM strays) are skipped and recorded in
  `Volume.skipped`; broken image files raise a typed `ctjax.errors.CTDataError` naming the file
  and the fix, or, with `lenient=True`, are skipped and recorded. Nothing is dropped silently.
- Several series in the input need a selector: `series_uid` is a UID string or a callable
  `(list[SeriesSummary]) -> uid` (e.g. `largest_series`, `prefer_description("PLAIN THIN")`).
- Within the series, localizers (ImageType LOCALIZER, or slices whose orientation differs from
  the majority) are skipped and recorded.
- **Canonical orientation.** Every axial series becomes the same array however it was stored
  (rows or columns flipped, rows and columns transposed, slices in any order): `Volume.hu[k, i,
  j]` has rows running anterior → posterior (patient +y), columns running patient right → left
  (patient +x; the radiological convention: the patient's right on the viewer's left) and
  slices running inferior → superior (patient +z), as DICOM's standard axial orientation
  ImageOrientationPatient [1, 0, 0, 0, 1, 0] stores them (`CANONICAL_ORIENTATION`). The
  stored pixels are transposed and/or flipped (`Volume.reoriented` says which), pixel spacing
  follows the transpose, and slices are ordered by their position along the canonical slice
  normal n = row × column of the canonical orientation (ImagePositionPatient · n), so gantry
  tilt, reversed orientation and InstanceNumber running against position come out right.
  A slice plane whose normal lies more than `AXIAL_MAX_DEG` from the patient's head-foot axis
  (sagittal or coronal acquisitions) is refused with `NotAxialError` — ctjax does not resample;
  oblique and gantry-tilted axial series within that tolerance are read and their angles kept
  (`Volume.oblique_deg`, `Volume.tilt_deg`) for the QA flags (`ctjax.data.qa`). Only flips and
  transposes are applied: an oblique plane stays oblique. `Volume.positions` and
  `Volume.orientation` describe the canonical array (the patient position of voxel [k, 0, 0]
  and the canonical row/column directions); `Volume.stored_orientation` keeps the files' own.
  Only when positions or orientation are missing does it fall back to InstanceNumber, then to
  file order, with the pixels as stored, and says so in `Volume.notes`.
- A series is one patient's one study: a slice whose PatientID or StudyInstanceUID differs from
  the series' majority raises `ForeignSliceError` (lenient: skipped and recorded).
- Duplicates (same SOPInstanceUID, or positions along the normal closer than
  `duplicate_tolerance_mm`: `DUPLICATE_FRACTION` of the series' slice step, at least
  `SAME_POSITION_MM`) are compared by their HU: identical → one kept, the others recorded in
  `skipped` and counted in `notes`; different → `DuplicateSliceError` naming both files
  (lenient: every slice at that position is dropped and recorded — which one is the series'
  own is unknown, and file names are no evidence).
- HU = stored × RescaleSlope + RescaleIntercept on pydicom's `pixel_array` (which honours
  PixelRepresentation and BitsStored), or pydicom's Modality LUT Sequence when present. Slope and
  intercept are validated first (`check_rescale`: finite, slope in `RESCALE_SLOPE_RANGE`,
  |intercept| <= `MAX_ABS_RESCALE_INTERCEPT`) → `InvalidRescaleError` (lenient: skipped); when
  absent, identity is assumed and said in `notes`. The
  RSNA files with BitsStored 12 / PixelRepresentation 0 / intercept > -100 get the community fix
  (stored + 1000 wrapped at 4096, intercept -1000). Other unsigned data whose values only make
  sense signed (more than `SIGNED_AS_UNSIGNED_SHARE` of the voxels above `HU_MAX` read unsigned,
  almost none read as two's complement) raise `PixelRepresentationError` (lenient: skipped). HU
  is clipped to [-1024, 3071] by default, which also maps padding / out-of-field fill (-2000,
  -3024 HU) to air without matching the padding value exactly.
- Lossy compression (LossyImageCompression "01", or a lossy-only transfer syntax) is recorded
  in `Volume.lossy`; compressed files without an installed decoder raise
  `UnsupportedTransferSyntaxError` naming the `ctjax[codecs]` extra.
- Memory is bounded from Rows × Columns × frames before any pixel is decoded.
- pydicom's own warnings and log records (a decoder's traceback on a broken JPEG 2000 stream,
  "End of file reached …") are silenced while ctjax reads: ctjax turns those failures into one
  typed, one-line error itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pathlib
import re
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ctjax import errors

log = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024.0, 3071.0
# Per-file bound on decoded pixels (Rows × Columns × frames × samples) and per-series voxels.
MAX_PIXELS_PER_FILE = 4096 * 4096
MAX_SERIES_VOXELS = 1024 * 1024 * 1024
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
CT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",
                  "1.2.840.10008.5.1.4.1.1.2.2")
ENHANCED_CT_SOP_CLASSES = CT_SOP_CLASSES[1:]
# Header fields copied into `Volume.header` for reports.
HEADER_FIELDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription",
                 "StudyDate", "Manufacturer", "ManufacturerModelName", "ConvolutionKernel",
                 "KVP", "SliceThickness", "BodyPartExamined", "InstitutionName")
# The `codecs` extra of pyproject.toml: pylibjpeg with its libjpeg (JPEG lossless, JPEG-LS) and
# openjpeg (JPEG 2000) plugins, checked on pydicom's own test files with pydicom 3.
_DECODER_PACKAGES = ("pip install 'ctjax[codecs]' (pylibjpeg, pylibjpeg-libjpeg, "
                     "pylibjpeg-openjpeg; python-gdcm also works)")
# Bounds on the CT modality rescale HU = stored × RescaleSlope + RescaleIntercept (DICOM PS3.3
# C.8.2.1, CT Image Module, Table C.8-3; both attributes Type 1). Values outside them come from
# corrupt or hand-edited headers, not from scanners; every CT file in pydicom's and pydicom-data's
# test sets (a CQ500 slice among them) has slope 1 and intercept -1024 or 0.
# - Slope lower bound: CT pixels are 16-bit (PS3.3 C.8.2.1.1.4: Bits Allocated is 16), at most
#   65,536 stored levels; a slope below 4096 / 65536 = 1/16 HU per level cannot span the 4096-HU
#   range [HU_MIN, HU_MAX] that ctjax keeps (so 0, negative and 1e-30 slopes fail here).
# - Slope upper bound: 10 HU per level leaves 8 grey levels in the 80-HU brain window and 4 in the
#   40-HU tissue/blood windows (`ctjax.data.windows`); coarser than that the image is no
#   diagnostic CT (and 1e30 fails).
# - Intercept: 2**15 is the largest shift a 16-bit store needs (int16 HU re-stored as uint16 with
#   intercept -32768); scanners use 0, -1000 or -1024.
RESCALE_SLOPE_RANGE = (1.0 / 16.0, 10.0)
MAX_ABS_RESCALE_INTERCEPT = 32768.0
# Two slices closer than `duplicate_tolerance_mm` along the slice normal are at the same
# position: DUPLICATE_FRACTION of the series' slice step (the median of the steps longer than
# MIN_SLICE_STEP_MM; no CT reconstructs slices closer than that), at least SAME_POSITION_MM.
# Positions written with 2-10 µm of rounding noise are duplicates at any real slice step
# (0.5 mm → 25 µm); a deliberate overlap of reconstructions is far larger than 5 % of a step.
SAME_POSITION_MM = 1e-3
DUPLICATE_FRACTION = 0.05
MIN_SLICE_STEP_MM = 0.1
# DICOM's standard axial orientation (PS3.3 C.7.6.2.1.1): rows along patient +x (towards the
# patient's left), columns along +y (posterior); slices are stacked along +z (superior).
CANONICAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# A slice normal more than this from the patient's z axis is a sagittal or coronal plane (gantry
# tilts of head CT, up to about 30°, stay axial); ctjax.data.series_policy uses the same rule.
AXIAL_MAX_DEG = 45.0
# Angles (degrees) from which an oblique plane / a gantry tilt is noted (and flagged by qa).
OBLIQUE_NOTE_DEG = 0.5
TILT_NOTE_DEG = 0.5
# Unsigned data read as signed (`PixelRepresentationError`): more than this share of the voxels
# above HU_MAX as unsigned, and under a tenth of that as two's complement. A real CT slice has
# metal at most above 3071 HU (a few percent of the voxels of a dental or coil artefact slice).
SIGNED_AS_UNSIGNED_SHARE = 0.1
# Pixel Data larger than this is not read with the header (pydicom's deferred read); its
# declared length is checked before anything is read or decoded.
DEFER_BYTES = 64 * 1024
# Encapsulated (compressed) Pixel Data longer than this many times the decoded image (+ 1 MiB of
# headers and tables) is no compressed form of that image.
MAX_COMPRESSED_RATIO = 2.0
# Transfer syntaxes that are always lossy (JPEG baseline/extended, JPEG-LS near-lossless); the
# others that may be lossy (JPEG 2000, HTJ2K) say so in LossyImageCompression (PS3.3 C.7.6.1.1.5).
LOSSY_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                           "1.2.840.10008.1.2.4.81")
# What a cache built by this reader holds changes with this number (ctjax.data.cache puts it in
# its source fingerprint, so caches of an older reader are rebuilt). 2: canonical orientation.
READER_VERSION = 2
# Header fields that must agree across the slices of one series (DICOM's Patient → Study →
# Series hierarchy, PS3.3 A.1.2: a series belongs to one study of one patient).
SERIES_IDENTITY_FIELDS = ("PatientID", "StudyInstanceUID")

PathLike = Union[str, "os.PathLike[str]"]
# `Volume.reoriented` names, in the order they are applied to the stored [S, rows, columns].
REORIENT_STEPS = ("transpose", "flip_rows", "flip_columns")


@dataclasses.dataclass(frozen=True)
class Skip:
  """A file (or slice) left out of the volume, and why."""
  path: str
  reason: str
  error: str = ""   # the ctjax error type name when it came from an error


@dataclasses.dataclass
class SliceHeader:
  """What the reader needs from one file before decoding its pixels."""
  path: str
  ds: Any
  sop_uid: str
  series_uid: str
  modality: str
  rows: int
  columns: int
  position: Optional[np.ndarray]      # ImagePositionPatient [3] (mm) or None
  orientation: Optional[np.ndarray]   # ImageOrientationPatient [6] or None
  instance_number: Optional[int]
  pixel_spacing: Optional[tuple[float, float]]
  slope: float                        # 1.0 when absent; NaN when present but not one number
  intercept: float                    # 0.0 when absent; NaN when present but not one number
  is_localizer: bool
  series_description: str = ""
  sop_class: str = ""
  frames: int = 1
  samples: int = 1
  slope_text: str = ""                # the header's RescaleSlope as written ("" when absent)
  intercept_text: str = ""            # the header's RescaleIntercept as written
  transfer_syntax: str = ""           # the file's TransferSyntaxUID
  lossy: bool = False                 # lossy-compressed now or before (see `_is_lossy`)


@dataclasses.dataclass(frozen=True)
class SeriesSummary:
  """One series found in the input (for selectors and error messages)."""
  series_uid: str
  num_files: int
  description: str
  modality: str
  slice_thickness: Optional[float]


@dataclasses.dataclass
class Volume:
  """A CT series in HU in the canonical orientation (see the module docstring): rows anterior →
  posterior, columns patient right → left, slices inferior → superior. Every per-slice list
  follows the slice order of `hu`."""
  hu: np.ndarray                 # float32 [S, H, W]
  spacing: tuple[float, float, float]   # (z, y, x) mm of `hu`; z = median step along the normal
  positions: np.ndarray          # float64 [S, 3] patient position of voxel [k, 0, 0] (NaN: none)
  sop_uids: list[str]
  files: list[str]
  instance_numbers: list[Optional[int]]
  series_uid: str
  orientation: Optional[np.ndarray]   # [6] row and column directions of `hu`, or None
  header: dict[str, str]
  skipped: list[Skip] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  ordered_by: str = "position"   # position | instance_number | file_order
  tilt_deg: float = 0.0          # angle between the slice normal and the slice-to-slice step
  stored_orientation: Optional[np.ndarray] = None   # [6] ImageOrientationPatient of the files
  reoriented: tuple[str, ...] = ()   # applied to the stored pixels, in order: REORIENT_STEPS
  oblique_deg: float = 0.0       # angle between the slice normal and the patient's z axis
  lossy: bool = False            # some slice is or was lossy-compressed

  @property
  def num_slices(self) -> int:
    return int(self.hu.shape[0])


@contextlib.contextmanager
def _quiet_pydicom():
  """No validation, no warnings, no pydicom log records: RSNA's non-UID identifiers are
  expected, not news, and a decoder's traceback or "End of file reached" would be printed
  before the one-line typed error ctjax raises for the same failure."""
  cfg = pydicom.config.settings
  old = cfg.reading_validation_mode
  cfg.reading_validation_mode = pydicom.config.IGNORE
  # Children (pydicom.pixels.decoders.base, …) inherit the parent's level unless they set their
  # own; those that do are disabled outright.
  root = logging.getLogger("pydicom")
  old_level = root.level
  children = [lg for name, lg in logging.root.manager.loggerDict.items()
              if name.startswith("pydicom.") and isinstance(lg, logging.Logger)
              and lg.level != logging.NOTSET and not lg.disabled]
  root.setLevel(logging.CRITICAL + 1)
  for lg in children:
    lg.disabled = True
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      yield
  finally:
    cfg.reading_validation_mode = old
    root.setLevel(old_level)
    for lg in children:
      lg.disabled = False


def _raw(ds, keyword: str):
  """The element's value without pydicom's VR conversion errors (None when absent/broken)."""
  try:
    return ds.get(keyword)
  except Exception:  # noqa: BLE001 — invalid DS/IS raise on access in some modes
    try:
      tag = pydicom.datadict.tag_for_keyword(keyword)
      elem = ds.get_item(tag)
      return None if elem is None else elem.value
    except Exception:  # noqa: BLE001
      return None


def _floats(value, n: int) -> Optional[np.ndarray]:
  if value is None:
    return None
  try:
    if isinstance(value, (bytes, str)):
      text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
      parts = [p for p in re.split(r"\\", text.strip()) if p.strip()]
    else:
      parts = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) \
          else [value]
    out = np.asarray([float(p) for p in parts], np.float64)
  except (TypeError, ValueError):
    return None
  if out.shape != (n,) or not np.all(np.isfinite(out)):
    return None
  return out


def _float(value, default: Optional[float]) -> Optional[float]:
  got = _floats(value, 1)
  return default if got is None else float(got[0])


def _int(value) -> Optional[int]:
  got = _floats(value, 1)
  if got is None or got[0] != np.round(got[0]):
    return None
  return int(got[0])


def _text(value) -> str:
  """A header value as clean text (raw bytes decoded, UI NUL padding stripped)."""
  if value is None:
    return ""
  if isinstance(value, bytes):
    value = value.decode("latin-1")
  if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
    return "\\".join(_text(v) for v in value)
  return str(value).strip().strip("\0").strip()


def _header_text(ds, keyword: str) -> str:
  return _text(_raw(ds, keyword))


def _rescale_field(ds, keyword: str, default: float) -> tuple[float, str]:
  """(value, text as written): `default` when absent or empty, NaN when not one number; NaN
  and inf written in the header stay NaN and inf (for `check_rescale` to refuse)."""
  text = _header_text(ds, keyword)
  if not text:
    return default, ""
  parts = [p for p in text.split("\\") if p.strip()]
  try:
    return (float(parts[0]) if len(parts) == 1 else math.nan), text
  except ValueError:
    return math.nan, text


def read_header(path: PathLike, *, max_pixels: int = MAX_PIXELS_PER_FILE,
                check: bool = True) -> SliceHeader:
  """Reads one file (pixels stay encoded) and checks it can become a CT slice.

  Integrity comes before meaning: not DICOM, DICOMDIR, no pixel data, unparseable sizes,
  compressed without decoder, truncated, oversized; then (with `check`) not CT, multi-frame,
  colour.
  """
  with _quiet_pydicom():
    try:
      return _read_header(path, max_pixels=max_pixels, check=check)
    except errors.CTDataError:
      raise
    except Exception as e:  # noqa: BLE001 — every failure becomes a typed error with the path
      raise errors.InvalidDicomValueError(
          f"unreadable header ({type(e).__name__}: {e}); re-export the file", path) from e


def _read_header(path: PathLike, *, max_pixels: int, check: bool) -> SliceHeader:
  path = os.fspath(path)
  try:
    if os.path.getsize(path) == 0:
      raise errors.NotDicomError("empty file, expected a DICOM slice", path)
  except OSError as e:
    raise errors.UnreadableFileError(f"cannot read it ({e.strerror or e})", path) from e
  with _quiet_pydicom():
    try:
      ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except OSError as e:
      if e.errno is None:   # pydicom's own OSErrors (no errno): the file ends too early
        raise errors.TruncatedDicomError(f"file ends inside the header ({e}); re-export or "
                                         "re-download it", path) from e
      # The operating system's refusal (permission denied, I/O error) is not a damaged file.
      raise errors.UnreadableFileError(f"cannot read it ({e.strerror or e})", path) from e
    except InvalidDicomError as e:
      raise errors.NotDicomError(
          "not a DICOM file (no 'DICM' prefix / file meta); ctjax does not force-read "
          "headerless files — convert it or remove it from the folder", path) from e
    except EOFError as e:
      raise errors.TruncatedDicomError(f"file ends inside the header ({e}); re-export or "
                                       "re-download it", path) from e
    except Exception as e:  # noqa: BLE001 — pydicom raises many types on junk
      raise errors.NotDicomError(f"pydicom cannot parse it ({type(e).__name__}: {e})",
                                 path) from e
  if len(ds) == 0:
    if _ends_inside_an_element(path):
      raise errors.TruncatedDicomError(
          "file ends inside an undefined-length element (e.g. encapsulated pixel data); "
          "re-download or re-export it", path)
    raise errors.NotDicomError("DICOM preamble/meta but no data elements (preamble-only file)",
                               path)
  meta = getattr(ds, "file_meta", None)
  sop_class = _text(_raw(ds, "SOPClassUID") or (meta and _raw(meta, "MediaStorageSOPClassUID"))
                    or "")
  if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
    raise errors.NotDicomError("a DICOMDIR index, not an image", path)
  if "PixelData" not in ds:
    raise errors.MissingPixelDataError(
        "no Pixel Data element (header only, or pixel data dropped by a bad length); "
        "re-export the slice or drop it (lenient=True records the skip)", path)
  rows, cols = _int(_raw(ds, "Rows")), _int(_raw(ds, "Columns"))
  frames_raw = _raw(ds, "NumberOfFrames")
  frames = 1 if frames_raw in (None, "") else _int(frames_raw)
  samples = _int(_raw(ds, "SamplesPerPixel")) or 1
  bits = _int(_raw(ds, "BitsAllocated"))
  if rows is None or cols is None or frames is None or bits is None:
    raise errors.InvalidDicomValueError(
        f"unparseable image size (Rows={_raw(ds, 'Rows')!r}, Columns={_raw(ds, 'Columns')!r}, "
        f"NumberOfFrames={frames_raw!r}, BitsAllocated={_raw(ds, 'BitsAllocated')!r}); the "
        "header is corrupt — re-export the file", path)
  if rows * cols * frames * samples > max_pixels:
    raise errors.UnsupportedDicomError(
        f"{rows}x{cols}x{frames} frames x{samples} samples exceeds the per-file bound of "
        f"{max_pixels} pixels (raise max_pixels if this is intended)", path)
  tsyntax = meta and _raw(meta, "TransferSyntaxUID")
  uid = pydicom.uid.UID(_text(tsyntax)) if tsyntax is not None else None
  if uid is not None and uid.is_compressed:
    try:
      from pydicom.pixels import get_decoder
      decoder = get_decoder(uid)
      available = decoder.is_available
      missing = "; ".join(getattr(decoder, "missing_dependencies", []) or [])
    except NotImplementedError:
      available, missing = False, "no pydicom decoder for this transfer syntax"
    if not available:
      raise errors.UnsupportedTransferSyntaxError(
          f"compressed pixel data ({uid.name}) and no decoder installed ({missing}); "
          f"install the decoders: {_DECODER_PACKAGES}", path)
  if uid is not None and uid.is_transfer_syntax:
    _check_pixel_data_size(ds, path, uid, rows * cols * frames * samples * bits // 8,
                           f"{rows} x {cols} x {frames} frame(s) x {samples} sample(s) x "
                           f"{bits} bits")
  modality = _header_text(ds, "Modality")
  image_type = _header_text(ds, "ImageType").upper()
  spacing = _floats(_raw(ds, "PixelSpacing"), 2)
  slope, slope_text = _rescale_field(ds, "RescaleSlope", 1.0)
  intercept, intercept_text = _rescale_field(ds, "RescaleIntercept", 0.0)
  h = SliceHeader(
      path=path, ds=ds, sop_uid=_header_text(ds, "SOPInstanceUID"),
      series_uid=_header_text(ds, "SeriesInstanceUID"), modality=modality,
      rows=rows, columns=cols,
      position=_floats(_raw(ds, "ImagePositionPatient"), 3),
      orientation=_floats(_raw(ds, "ImageOrientationPatient"), 6),
      instance_number=_int(_raw(ds, "InstanceNumber")),
      pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
      slope=slope, intercept=intercept, slope_text=slope_text, intercept_text=intercept_text,
      is_localizer="LOCALIZER" in image_type,
      series_description=_header_text(ds, "SeriesDescription"),
      sop_class=sop_class, frames=frames, samples=samples,
      transfer_syntax=str(uid or ""), lossy=_is_lossy(ds, uid))
  if check:
    check_ct_image(h)
  return h


_PIXEL_DATA_TAG = 0x7FE00010
# Native Pixel Data may carry a pad byte and, in some exports, a little trailing excess (pydicom
# trims it); more than this share of the image is not padding.
PIXEL_DATA_EXCESS = 0.01


def _pixel_data_bytes(ds, path: str) -> int:
  """Length of the Pixel Data value, without reading it when pydicom deferred it (an
  undefined-length, encapsulated one: the rest of the file); `TruncatedDicomError` when the file
  ends before a declared length."""
  elem = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
  if isinstance(elem, pydicom.dataelem.RawDataElement) and elem.value is None:
    n = int(elem.length)         # deferred: only its offset and declared length are known
    start = getattr(elem, "value_tell", None)
    size = os.path.getsize(path)
    if n == 0xFFFFFFFF:          # undefined length (encapsulated): at most the rest of the file
      return size - (start or 0)
    if start is not None and start + n > size:
      raise errors.TruncatedDicomError(
          f"the file ends {size - start} bytes into its {n}-byte Pixel Data; the file is "
          "truncated — re-download or re-export it", path)
    return n
  value = elem.value if elem is not None else None
  return 0 if value is None else len(value)


def _check_pixel_data_size(ds, path: str, uid, expected: int, shape: str) -> None:
  """Pixel Data's length against the image the header declares, before any pixel is read."""
  got = _pixel_data_bytes(ds, path)
  if uid.is_compressed:
    bound = int(expected * MAX_COMPRESSED_RATIO) + (1 << 20)
    if got > bound:
      raise errors.PixelDataSizeError(
          f"compressed Pixel Data of {got} bytes for a {shape} image ({expected} bytes "
          f"decoded; more than {MAX_COMPRESSED_RATIO:g}x that is no compressed form of it); "
          "not decoded — re-export the file", path)
    return
  if got < expected:
    raise errors.TruncatedDicomError(
        f"pixel data has {got} bytes, {expected} expected from Rows/Columns/Bits; the "
        "file is truncated — re-download or re-export it", path)
  if got > expected + max(1, int(expected * PIXEL_DATA_EXCESS)):
    raise errors.PixelDataSizeError(
        f"Pixel Data has {got} bytes, {expected} expected from {shape} ({got - expected} "
        "bytes more); not decoded — the header or the pixel data is wrong, re-export the "
        "file", path)


def _is_lossy(ds, uid) -> bool:
  """Lossy-compressed now (a lossy-only transfer syntax) or before (LossyImageCompression
  "01", PS3.3 C.7.6.1.1.5: set by whoever compressed it, kept when decompressed)."""
  return _header_text(ds, "LossyImageCompression") == "01" or \
      (uid is not None and str(uid) in LOSSY_TRANSFER_SYNTAXES)


def _ends_inside_an_element(path: str) -> bool:
  """Whether pydicom, told to raise, hits the end of the file: with validation off it instead
  returns an empty dataset when the file is cut inside encapsulated pixel data."""
  cfg = pydicom.config.settings
  old = cfg.reading_validation_mode
  cfg.reading_validation_mode = pydicom.config.RAISE
  try:
    pydicom.dcmread(path)
  except EOFError:
    return True
  except Exception:  # noqa: BLE001 — any other failure: not evidence of truncation
    return False
  finally:
    cfg.reading_validation_mode = old
  return False


def check_rescale(h: SliceHeader) -> None:
  """RescaleSlope/RescaleIntercept usable for HU (bounds and their source: RESCALE_SLOPE_RANGE).

  Skipped when a Modality LUT Sequence maps stored values to HU instead (PS3.3 C.11.1: the two
  are exclusive)."""
  if "ModalityLUTSequence" in h.ds:
    return
  lo, hi = RESCALE_SLOPE_RANGE
  tests = (
      ("RescaleSlope", h.slope_text, not math.isfinite(h.slope), "is not a finite number"),
      ("RescaleSlope", h.slope_text, h.slope <= 0,
       "is not positive (HU = stored x slope + intercept needs slope > 0)"),
      ("RescaleSlope", h.slope_text, not lo <= h.slope <= hi,
       f"is outside [{lo:g}, {hi:g}], the range of real CT images (16-bit stored values "
       "spanning the HU range at a usable resolution)"),
      ("RescaleIntercept", h.intercept_text, not math.isfinite(h.intercept),
       "is not a finite number"),
      ("RescaleIntercept", h.intercept_text, abs(h.intercept) > MAX_ABS_RESCALE_INTERCEPT,
       f"is outside [-{MAX_ABS_RESCALE_INTERCEPT:g}, {MAX_ABS_RESCALE_INTERCEPT:g}], the "
       "largest shift a 16-bit CT store needs"),
  )
  for field, text, failed, why in tests:
    if failed:
      raise errors.InvalidRescaleError(
          f"{field} {text!r} {why}; fix the header or remove the file (lenient=True skips the "
          "slice)", h.path)


def check_ct_image(h: SliceHeader) -> None:
  """Meaning checks, run after series selection (other series may be MR, SR, …)."""
  path, modality, sop_class, frames, samples = h.path, h.modality, h.sop_class, h.frames, \
      h.samples
  if modality != "CT" and not (modality == "" and sop_class in CT_SOP_CLASSES):
    raise errors.NotCTError(f"modality {modality or '?'} (SOP class {sop_class or '?'}), "
                            "expected a CT image; select the CT series", path)
  if frames != 1 or sop_class in ENHANCED_CT_SOP_CLASSES:
    raise errors.UnsupportedDicomError(
        f"multi-frame / Enhanced CT ({frames} frames) is not read by ctjax; split it into "
        "single-frame slices first (e.g. dcm2niix or dcmtk's emf2sf)", path)
  if samples != 1:
    raise errors.UnsupportedDicomError(f"{samples} samples per pixel, expected grayscale CT",
                                       path)
  check_rescale(h)


def needs_rsna_fix(h: SliceHeader) -> bool:
  """RSNA's known bad files: 12 bits stored, unsigned, yet intercept > -100."""
  bits_stored = _int(_raw(h.ds, "BitsStored"))
  pixel_rep = _int(_raw(h.ds, "PixelRepresentation"))
  return bits_stored == 12 and pixel_rep == 0 and h.intercept > -100


def _check_signedness(h: SliceHeader, stored: np.ndarray, hu: np.ndarray) -> None:
  """`PixelRepresentationError` when unsigned stored values only make sense signed (see
  SIGNED_AS_UNSIGNED_SHARE): e.g. int16 air (-1000) written with PixelRepresentation 0 reads
  64536 and would become a slice of 3071 HU."""
  if stored.dtype.kind != "u":
    return
  top = float(np.mean(hu > HU_MAX))
  if top <= SIGNED_AS_UNSIGNED_SHARE:
    return
  bits = _int(_raw(h.ds, "BitsStored")) or stored.dtype.itemsize * 8
  signed = stored.astype(np.int64)
  signed[signed >= (1 << (bits - 1))] -= 1 << bits
  top_signed = float(np.mean(signed * h.slope + h.intercept > HU_MAX))
  if top_signed < top / 10:
    raise errors.PixelRepresentationError(
        f"PixelRepresentation 0 (unsigned) but {top:.0%} of the voxels lie above {HU_MAX:g} HU "
        f"read unsigned and {top_signed:.0%} read signed ({bits} bits stored): the values are "
        "signed — set PixelRepresentation to 1 or re-export the file (lenient=True skips the "
        "slice)", h.path)


def decode_hu(h: SliceHeader, *, clip: bool = True) -> np.ndarray:
  """float32 [H, W] HU of one slice (see the module docstring for the rules)."""
  check_rescale(h)
  try:
    with _quiet_pydicom():
      arr = h.ds.pixel_array
      if needs_rsna_fix(h):
        raw = arr.astype(np.int32) + 1000
        raw[raw >= 4096] -= 4096
        hu = raw.astype(np.float64) * h.slope - 1000.0
      elif "ModalityLUTSequence" in h.ds:
        from pydicom.pixels import apply_modality_lut
        hu = np.asarray(apply_modality_lut(arr, h.ds), np.float64)
      elif h.slope == 1.0 and float(h.intercept).is_integer():
        hu = arr.astype(np.float32)         # exact: integers below 2**24
        hu += np.float32(h.intercept)
      else:
        hu = arr.astype(np.float64) * h.slope + h.intercept
      if "ModalityLUTSequence" not in h.ds and not needs_rsna_fix(h):
        _check_signedness(h, arr, hu)
  except errors.CTDataError:
    raise
  except Exception as e:  # noqa: BLE001
    msg = " ".join(str(e).split())   # pydicom lists each plugin's failure on its own line
    if "missing" in msg.lower() and "plugin" in msg.lower():
      raise errors.UnsupportedTransferSyntaxError(
          f"{str(e).splitlines()[0]}; install the decoders: {_DECODER_PACKAGES}", h.path) from e
    if "less than expected" in msg:
      raise errors.TruncatedDicomError(msg, h.path) from e
    raise errors.CorruptPixelDataError(
        f"PixelData cannot be decoded ({type(e).__name__}: {msg}); the image data is damaged — "
        "re-export or re-download the file (lenient=True skips the slice)", h.path) from e
  if hu.shape != (h.rows, h.columns):
    raise errors.InconsistentSeriesError(
        f"decoded shape {hu.shape} != Rows x Columns {(h.rows, h.columns)}", h.path)
  if clip:
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
  return hu.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------ series rules


def largest_series(series: Sequence[SeriesSummary]) -> str:
  """Selector: the series with most files (ties: the thinnest slices, then the UID)."""
  best = max(series, key=lambda s: (s.num_files, -(s.slice_thickness or 1e9), s.series_uid))
  return best.series_uid


def prefer_description(*patterns: str) -> Callable[[Sequence[SeriesSummary]], str]:
  """Selector: the first pattern (case-insensitive regex) matching a SeriesDescription wins;
  falls back to `largest_series`. CQ500: prefer_description("PLAIN.*THIN", "PLAIN")."""
  def select(series: Sequence[SeriesSummary]) -> str:
    for pattern in patterns:
      hits = [s for s in series if re.search(pattern, s.description, re.IGNORECASE)]
      if hits:
        return largest_series(hits)
    return largest_series(series)
  return select


SeriesSelector = Union[None, str, Callable[[Sequence[SeriesSummary]], str]]


def _list_files(path_or_files) -> tuple[list[str], bool, str]:
  """(files, from_folder, label for messages)."""
  if isinstance(path_or_files, (str, os.PathLike)):
    p = pathlib.Path(path_or_files)
    if p.is_dir():
      try:
        files = sorted(str(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
      except OSError as e:   # e.g. permission denied: the OS's reason, naming the folder
        raise errors.UnreadableFileError(f"cannot list the folder ({e.strerror or e})", p) from e
      return files, True, str(p)
    if p.is_file():
      return [str(p)], False, str(p)
    raise errors.EmptySeriesError("no such file or folder", p)
  files = [os.fspath(f) for f in path_or_files]
  return files, False, (os.path.dirname(files[0]) if files else "<empty list>")


def _summaries(groups: dict[str, list[SliceHeader]]) -> list[SeriesSummary]:
  out = []
  for uid, hs in groups.items():
    out.append(SeriesSummary(uid, len(hs), hs[0].series_description, hs[0].modality,
                             _float(_raw(hs[0].ds, "SliceThickness"), None)))
  return sorted(out, key=lambda s: s.series_uid)


def _majority(items: list, key) -> tuple[Any, list, list, bool]:
  """(majority key, kept, rest, tie) grouping `items` by `key`."""
  groups: dict[Any, list] = {}
  for it in items:
    groups.setdefault(key(it), []).append(it)
  ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
  tie = len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1])
  kept = ranked[0][1]
  rest = [it for k, v in ranked[1:] for it in v]
  return ranked[0][0], kept, rest, tie


def _drop_foreign_slices(headers: list[SliceHeader], lenient: bool, skipped: list[Skip],
                         label: str) -> list[SliceHeader]:
  """Slices whose SERIES_IDENTITY_FIELDS differ from the series' majority: an error, or (lenient)
  skipped. A tie has no majority and is an error either way."""
  for field in SERIES_IDENTITY_FIELDS:
    key = lambda h, f=field: _header_text(h.ds, f)  # noqa: E731
    value, kept, rest, tie = _majority(headers, key)
    if not rest:
      continue
    bad = rest[0]
    if not lenient or tie:
      fix = ("the two values are equally common, so which slices belong is unknown — pass the "
             "series' own files" if tie else
             "remove that file from the series (lenient=True skips it)")
      raise errors.ForeignSliceError(
          f"{field} {key(bad)!r} differs from {value!r} of {len(kept)} other slice(s) of series "
          f"{bad.series_uid} (e.g. {kept[0].path}); a slice of another "
          f"{'patient' if field == 'PatientID' else 'study'} — {fix}", bad.path)
    skipped.extend(Skip(h.path, f"{field} {key(h)!r} differs from the series' {value!r}",
                        "ForeignSliceError") for h in rest)
    log.debug("%s: %d slice(s) of another %s skipped", label, len(rest), field)
    headers = kept
  return headers


def _duplicate_field(h: SliceHeader, ref: SliceHeader) -> str:
  """What `h` shares with `ref`, as '<field> <value>' for messages."""
  if h.sop_uid and h.sop_uid == ref.sop_uid:
    return f"SOPInstanceUID {h.sop_uid!r}"
  if h.position is not None:
    return "ImagePositionPatient [" + ", ".join(f"{v:g}" for v in h.position) + "]"
  return "SOPInstanceUID / position"


def duplicate_tolerance_mm(depth: Sequence[float]) -> float:
  """Distance along the normal under which two slices are at one position: DUPLICATE_FRACTION
  of the slice step (median of the sorted steps longer than MIN_SLICE_STEP_MM), at least
  SAME_POSITION_MM."""
  steps = np.diff(np.sort(np.asarray(depth, np.float64)))
  steps = steps[steps > MIN_SLICE_STEP_MM]
  step = float(np.median(steps)) if steps.size else 0.0
  return max(SAME_POSITION_MM, DUPLICATE_FRACTION * step)


def _deduplicate(headers: list[SliceHeader], depth: Optional[np.ndarray], *, lenient: bool,
                 clip: bool, skipped: list[Skip], notes: list[str],
                 decoded: dict[int, np.ndarray]) -> list[int]:
  """Indices of `headers` (sorted along the normal) to keep, one per position / SOPInstanceUID.

  Files that share a position (closer than `duplicate_tolerance_mm` along the normal) or a
  SOPInstanceUID are decoded and compared by the HU the volume would hold (clipped when `clip`):
  identical → the first in slice order is kept, the others recorded; different →
  `DuplicateSliceError`, or (lenient) all of them dropped — the series' own slice cannot be told
  from a stray, and a file name is no evidence. Decoded HU of kept slices are left in `decoded`
  (keyed by id(header)) for the caller.
  """
  groups: list[list[int]] = []
  group_of_uid: dict[str, int] = {}
  same = None if depth is None else duplicate_tolerance_mm(depth)
  for i, h in enumerate(headers):
    g = group_of_uid.get(h.sop_uid) if h.sop_uid else None
    if g is None and depth is not None and groups and \
        abs(depth[i] - depth[groups[-1][0]]) < same:
      g = len(groups) - 1
    if g is None:
      groups.append([i])
      g = len(groups) - 1
    else:
      groups[g].append(i)
    if h.sop_uid:
      group_of_uid.setdefault(h.sop_uid, g)

  keep: list[int] = []
  identical = conflicts = dropped = 0
  for group in groups:
    if len(group) == 1:
      keep.append(group[0])
      continue
    members = []
    for i in group:
      try:
        decoded[id(headers[i])] = decode_hu(headers[i], clip=clip)
        members.append(i)
      except errors.CTDataError as e:
        if not lenient:
          raise
        skipped.append(Skip(headers[i].path, str(e), type(e).__name__))
    if not members:
      continue
    classes: list[list[int]] = []          # members with equal HU
    for i in members:
      for c in classes:
        if np.array_equal(decoded[id(headers[c[0]])], decoded[id(headers[i])]):
          c.append(i)
          break
      else:
        classes.append([i])
    first = headers[members[0]]
    if len(classes) == 1:
      keep.append(members[0])
      for i in members[1:]:
        h = headers[i]
        skipped.append(Skip(h.path, f"duplicate {_duplicate_field(h, first)} of "
                                    f"{os.path.basename(first.path)}, identical pixels (that "
                                    "one kept)"))
        decoded.pop(id(h))
        identical += 1
      continue
    a, b = headers[classes[0][0]], headers[classes[1][0]]
    if not lenient:
      raise errors.DuplicateSliceError(
          f"{_duplicate_field(b, a)} is also that of {b.path}, whose pixels differ "
          f"({len(members)} files, {len(classes)} different images); which one belongs to the "
          "series is unknown — remove the wrong file(s) (lenient=True drops all of them)", a.path)
    names = ", ".join(os.path.basename(headers[i].path) for i in members)
    for i in members:
      h = headers[i]
      skipped.append(Skip(h.path, f"duplicate {_duplicate_field(h, a if h is not a else b)} "
                                  f"with different pixels among {names}: all dropped",
                          "DuplicateSliceError"))
      decoded.pop(id(h))
    conflicts += 1
    dropped += len(members)
  if identical:
    notes.append(f"{identical} duplicate slice(s) with identical pixels dropped (same "
                 "SOPInstanceUID or position as a kept slice)")
  if conflicts:
    notes.append(f"{conflicts} position(s) held duplicates with different pixels: all "
                 f"{dropped} slice(s) there dropped (which one belongs to the series is unknown)")
  return keep


def read_series(path_or_files: Union[PathLike, Iterable[PathLike]], *,
                series_uid: SeriesSelector = None, lenient: bool = False,
                clip_hu: bool = True, max_pixels: int = MAX_PIXELS_PER_FILE,
                max_voxels: int = MAX_SERIES_VOXELS) -> Volume:
  """Reads one CT series from a folder (non-recursive) or a list of files.

  Args:
    path_or_files: a folder, one file, or an iterable of files.
    series_uid: None (exactly one series must be present), a SeriesInstanceUID, or a callable
      choosing a UID from `SeriesSummary`s (`largest_series`, `prefer_description(...)`).
    lenient: skip broken slices (recorded in `Volume.skipped`) instead of raising.
    clip_hu: clip HU to [-1024, 3071] (padding / out-of-field fill becomes air).
  Raises:
    ctjax.errors.CTDataError subclasses, each naming the file and the fix.
  """
  with _quiet_pydicom():
    return _read_series(path_or_files, series_uid=series_uid, lenient=lenient,
                        clip_hu=clip_hu, max_pixels=max_pixels, max_voxels=max_voxels)


def _read_series(path_or_files, *, series_uid, lenient, clip_hu, max_pixels,
                 max_voxels) -> Volume:
  """`read_series` with pydicom quiet."""
  files, from_folder, label = _list_files(path_or_files)
  skipped: list[Skip] = []
  notes: list[str] = []
  headers: list[SliceHeader] = []
  for f in files:
    try:
      headers.append(read_header(f, max_pixels=max_pixels, check=False))
    except errors.CTDataError as e:
      stray = isinstance(e, errors.NotDicomError) and from_folder
      if not (lenient or stray):
        raise
      skipped.append(Skip(f, str(e), type(e).__name__))
      log.debug("skipped %s: %s", f, e)
  if not headers:
    raise errors.EmptySeriesError(
        f"no readable CT slice among {len(files)} file(s)"
        + (f" (skipped: {skipped[0].reason} …)" if skipped else ""), label)

  groups: dict[str, list[SliceHeader]] = {}
  for h in headers:
    groups.setdefault(h.series_uid, []).append(h)
  if len(groups) > 1 or (isinstance(series_uid, str) and series_uid not in groups):
    summaries = _summaries(groups)
    listing = "; ".join(f"{s.series_uid} ({s.num_files} files, {s.description!r})"
                        for s in summaries)
    if series_uid is None:
      raise errors.MixedSeriesError(
          f"{len(groups)} series in one input: {listing}; pass series_uid=<uid> or a selector "
          "such as ctjax.data.dicom.largest_series", label)
    chosen = series_uid if isinstance(series_uid, str) else series_uid(summaries)
    if chosen not in groups:
      raise errors.MixedSeriesError(f"series {chosen!r} not found; present: {listing}", label)
    for uid, hs in groups.items():
      if uid != chosen:
        skipped.extend(Skip(h.path, f"other series {uid}") for h in hs)
    notes.append(f"selected series {chosen} of {len(groups)}")
    headers = groups[chosen]

  checked = []
  for h in headers:
    try:
      check_ct_image(h)
      checked.append(h)
    except errors.CTDataError as e:
      if not lenient:
        raise
      skipped.append(Skip(h.path, str(e), type(e).__name__))
  if not checked:
    raise errors.EmptySeriesError(
        "no CT slice in the selected series"
        + (f" (skipped: {skipped[-1].reason} …)" if skipped else ""), label)
  headers = _drop_foreign_slices(checked, lenient, skipped, label)

  # Localizers, then orientation: keep the axial stack.
  if any(not h.is_localizer for h in headers):
    for h in headers:
      if h.is_localizer:
        skipped.append(Skip(h.path, "localizer (ImageType LOCALIZER)"))
    headers = [h for h in headers if not h.is_localizer]
  with_iop = [h for h in headers if h.orientation is not None]
  if with_iop:
    key = lambda h: tuple(np.round(h.orientation, 3))  # noqa: E731
    orient, kept, rest, tie = _majority(with_iop, key)
    if tie:
      raise errors.InconsistentSeriesError(
          f"slices of series {headers[0].series_uid} have {len({key(h) for h in with_iop})} "
          "orientations in equal numbers (localizers?); pass the axial files explicitly", label)
    skipped.extend(Skip(h.path, f"orientation {key(h)} differs from the stack's {orient}")
                   for h in rest)
    headers = kept + [h for h in headers if h.orientation is None]

  # Shapes and pixel spacing must agree.
  for what, key in (("shape", lambda h: (h.rows, h.columns)),
                    ("pixel spacing", lambda h: None if h.pixel_spacing is None
                     else tuple(np.round(h.pixel_spacing, 3)))):
    value, kept, rest, tie = _majority(headers, key)
    if rest:
      if not lenient or tie:
        bad = rest[0]
        raise errors.InconsistentSeriesError(
            f"{what} changes within the series ({key(bad)} in {bad.path} vs {value} in "
            f"{len(kept)} others); use lenient=True to keep the majority", label)
      skipped.extend(Skip(h.path, f"{what} {key(h)} differs from the series' {value}")
                     for h in rest)
      headers = kept

  # Canonical orientation, then order along the canonical slice normal.
  stored_orientation = headers[0].orientation
  have_pos = all(h.position is not None for h in headers) and stored_orientation is not None
  h0 = headers[0]
  dy, dx = h0.pixel_spacing if h0.pixel_spacing is not None else (1.0, 1.0)
  canon = None
  if stored_orientation is not None:
    _check_orientation(stored_orientation, h0.path)
    plane, oblique = slice_plane(stored_orientation)
    if plane != "axial":
      raise errors.NotAxialError(
          f"{plane} slices (slice normal {oblique:.0f} degrees from the patient's head-foot "
          f"axis, ImageOrientationPatient {_vector_text(stored_orientation)}); ctjax reads "
          "axial CT and does not resample — select the axial series or reformat it axially",
          label)
    canon = canonical_geometry(stored_orientation, (h0.rows, h0.columns), (dy, dx))
  if have_pos:
    normal = canon.normal
    depth = np.asarray([h.position @ normal for h in headers])
    inst = np.asarray([h.instance_number if h.instance_number is not None else 0
                       for h in headers])
    order = np.lexsort((inst, depth))
    ordered_by = "position"
  elif all(h.instance_number is not None for h in headers):
    order = np.argsort([h.instance_number for h in headers], kind="stable")
    depth = None
    ordered_by = "instance_number"
    notes.append("ImagePositionPatient/ImageOrientationPatient missing: ordered by "
                 "InstanceNumber")
  else:
    order = np.arange(len(headers))
    depth = None
    ordered_by = "file_order"
    notes.append("positions and InstanceNumber missing: slices kept in file-name order")
  if stored_orientation is None:
    notes.append("ImageOrientationPatient missing: pixels kept as stored (orientation unknown)")
  headers = [headers[i] for i in order]
  depth = None if depth is None else depth[order]
  decoded: dict[int, np.ndarray] = {}    # id(header) → HU decoded while deduplicating
  if len(headers) > 1:
    keep = _deduplicate(headers, depth, lenient=lenient, clip=clip_hu, skipped=skipped,
                        notes=notes, decoded=decoded)
    if not keep:
      raise errors.EmptySeriesError(
          "every slice was dropped as a conflicting duplicate"
          + (f" (skipped: {skipped[-1].reason} …)" if skipped else ""), label)
    headers = [headers[i] for i in keep]
    depth = None if depth is None else depth[keep]

  s = len(headers)
  if s * h0.rows * h0.columns > max_voxels:
    raise errors.UnsupportedDicomError(
        f"{s} slices of {h0.rows}x{h0.columns} exceed the bound of {max_voxels} voxels", label)

  tilt = 0.0
  if depth is not None and s > 1:
    steps = np.diff(depth)
    dz = float(np.median(steps))
    if np.any(np.abs(steps - dz) > 0.1 * dz + 1e-3):
      gaps = [i for i, st in enumerate(steps) if abs(st - dz) > 0.1 * dz + 1e-3]
      notes.append(f"uneven slice spacing (median {dz:.3f} mm; irregular after sorted slices "
                   f"{gaps[:10]})")
    disp = headers[-1].position - headers[0].position
    cosang = abs(disp @ canon.normal) / max(np.linalg.norm(disp), 1e-9)
    tilt = float(np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0))))
    if tilt > TILT_NOTE_DEG:
      notes.append(f"gantry tilt {tilt:.1f} degrees (from IOP/IPP)")
  else:
    dz = _float(_raw(h0.ds, "SpacingBetweenSlices"), None) or \
        _float(_raw(h0.ds, "SliceThickness"), None) or 1.0
    if s == 1:
      notes.append("single slice")
  if h0.pixel_spacing is None:
    notes.append("PixelSpacing missing: 1 mm assumed")

  hu = np.empty((s, h0.rows, h0.columns), np.float32)
  kept_headers: list[SliceHeader] = []
  for h in headers:
    try:
      done = decoded.pop(id(h), None)
      hu[len(kept_headers)] = decode_hu(h, clip=clip_hu) if done is None else done
    except errors.CTDataError as e:
      if not lenient:
        raise
      skipped.append(Skip(h.path, str(e), type(e).__name__))
      continue
    kept_headers.append(h)
  if not kept_headers:
    raise errors.EmptySeriesError("every slice failed to decode", label)
  hu = hu[:len(kept_headers)]
  headers = kept_headers
  num_fixed = sum(needs_rsna_fix(h) for h in headers)
  if num_fixed:
    notes.append(f"RSNA BitsStored-12 sign fix applied to {num_fixed} slice(s)")
  no_rescale = [h for h in headers if "ModalityLUTSequence" not in h.ds
                and not (h.slope_text and h.intercept_text)]
  if no_rescale:
    notes.append(f"RescaleSlope/RescaleIntercept missing in {len(no_rescale)} slice(s) (e.g. "
                 f"{os.path.basename(no_rescale[0].path)}): slope 1 / intercept 0 assumed there")
  positions = np.asarray([h.position if h.position is not None else np.full(3, np.nan)
                          for h in headers], np.float64)
  spacing = (float(dz), float(dy), float(dx))
  orientation, reoriented, oblique = stored_orientation, (), 0.0
  if canon is not None:
    hu = to_canonical(hu, canon.steps)
    positions = positions + canon.origin_shift
    spacing = (float(dz), *canon.spacing)
    orientation, reoriented, oblique = canon.orientation, canon.steps, canon.oblique_deg
    if reoriented:
      notes.append(f"stored orientation {_vector_text(stored_orientation)} made canonical: "
                   + ", ".join(_STEP_WORDS[k] for k in reoriented))
    if oblique > OBLIQUE_NOTE_DEG:
      notes.append(f"oblique slice plane: normal {oblique:.1f} degrees from the patient's "
                   "head-foot axis")
  lossy = [h for h in headers if h.lossy]
  if lossy:
    notes.append(f"lossy compression in {len(lossy)} slice(s) (e.g. "
                 f"{os.path.basename(lossy[0].path)}: {_lossy_words(lossy[0])})")
  for n in notes:
    log.debug("%s: %s", label, n)
  return Volume(
      hu=hu, spacing=spacing, positions=positions,
      sop_uids=[h.sop_uid for h in headers], files=[h.path for h in headers],
      instance_numbers=[h.instance_number for h in headers], series_uid=h0.series_uid,
      orientation=orientation, header={k: _header_text(h0.ds, k) for k in HEADER_FIELDS},
      skipped=skipped, notes=notes, ordered_by=ordered_by, tilt_deg=tilt,
      stored_orientation=stored_orientation, reoriented=reoriented, oblique_deg=oblique,
      lossy=bool(lossy))


# ------------------------------------------------------------------ canonical orientation

_STEP_WORDS = {"transpose": "rows and columns transposed", "flip_rows": "rows flipped",
               "flip_columns": "columns flipped"}


def _vector_text(v) -> str:
  return "[" + ", ".join(f"{x:g}" for x in np.round(np.asarray(v, np.float64), 4)) + "]"


def _lossy_words(h: SliceHeader) -> str:
  if h.transfer_syntax in LOSSY_TRANSFER_SYNTAXES:
    return pydicom.uid.UID(h.transfer_syntax).name
  ratio = _floats(_raw(h.ds, "LossyImageCompressionRatio"), 1)
  return "LossyImageCompression 01" + (f", ratio {ratio[0]:.0f}" if ratio is not None else "")


def _check_orientation(o: np.ndarray, path: str) -> None:
  """Two (near-)unit, (near-)orthogonal directions, or InvalidDicomValueError."""
  r, c = o[:3], o[3:]
  if not (0.9 < np.linalg.norm(r) < 1.1 and 0.9 < np.linalg.norm(c) < 1.1
          and abs(r @ c) < 0.1):
    raise errors.InvalidDicomValueError(
        f"ImageOrientationPatient {_vector_text(o)} is not two orthogonal unit directions; "
        "the header is corrupt — re-export the file", path)


def slice_plane(orientation) -> tuple[str, float]:
  """("axial" | "coronal" | "sagittal", degrees between the slice normal and the patient's z
  axis) of ImageOrientationPatient [6]; axial up to AXIAL_MAX_DEG."""
  o = np.asarray(orientation, np.float64)
  n = np.cross(o[:3], o[3:])
  norm = np.linalg.norm(n)
  if norm < 1e-6:
    raise ValueError(f"ImageOrientationPatient {_vector_text(o)} has parallel directions")
  n = np.abs(n / norm)
  deg = float(np.degrees(np.arccos(min(1.0, n[2]))))
  if deg <= AXIAL_MAX_DEG:
    return "axial", deg
  return ("coronal" if n[1] >= n[0] else "sagittal"), deg


@dataclasses.dataclass(frozen=True)
class CanonicalGeometry:
  """How a stored axial slice becomes canonical (`to_canonical`), and what it then is."""
  steps: tuple[str, ...]         # REORIENT_STEPS to apply, in order
  orientation: np.ndarray        # [6] row (along columns) and column directions afterwards
  spacing: tuple[float, float]   # (y, x) mm afterwards (swapped by a transpose)
  origin_shift: np.ndarray       # [3] mm from the stored first voxel to the canonical one
  oblique_deg: float             # slice normal vs the patient's z axis

  @property
  def normal(self) -> np.ndarray:
    n = np.cross(self.orientation[:3], self.orientation[3:])
    return n / np.linalg.norm(n)


def canonical_geometry(orientation, shape: tuple[int, int],
                       pixel_spacing: tuple[float, float]) -> CanonicalGeometry:
  """The transpose/flips that bring stored pixels of ImageOrientationPatient `orientation`,
  `shape` (rows, columns) and PixelSpacing (row spacing, column spacing) to the canonical
  orientation: column index along patient +x, row index along +y.

  A stored voxel (i, j) lies at IPP + j·dx·r + i·dy·c (r, c = orientation[:3], [3:]). The axis
  whose direction is nearer patient x becomes the columns (a transpose when that is the row
  axis); an axis running against +x (columns) or +y (rows) is flipped.
  """
  o = np.asarray(orientation, np.float64)
  r, c = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
  rows, cols = shape
  dy, dx = float(pixel_spacing[0]), float(pixel_spacing[1])
  steps = []
  # (direction, spacing, count) along the canonical columns (u) and rows (v).
  if abs(r[1]) > abs(r[0]):
    steps.append("transpose")
    u, v = (c, dy, rows), (r, dx, cols)
  else:
    u, v = (r, dx, cols), (c, dy, rows)
  shift = np.zeros(3)
  if v[0][1] < 0:
    steps.append("flip_rows")
    shift += (v[2] - 1) * v[1] * v[0]
    v = (-v[0], v[1], v[2])
  if u[0][0] < 0:
    steps.append("flip_columns")
    shift += (u[2] - 1) * u[1] * u[0]
    u = (-u[0], u[1], u[2])
  _, oblique = slice_plane(o)
  return CanonicalGeometry(steps=tuple(steps), orientation=np.concatenate([u[0], v[0]]),
                           spacing=(v[1], u[1]), origin_shift=shift, oblique_deg=oblique)


def to_canonical(hu: np.ndarray, steps: Sequence[str]) -> np.ndarray:
  """Applies `CanonicalGeometry.steps` to [..., rows, columns] (a contiguous copy when any)."""
  for step in steps:
    if step == "transpose":
      hu = np.swapaxes(hu, -1, -2)
    elif step == "flip_rows":
      hu = hu[..., ::-1, :]
    elif step == "flip_columns":
      hu = hu[..., ::-1]
    else:
      raise ValueError(f"unknown step {step!r}; expected one of {REORIENT_STEPS}")
  return np.ascontiguousarray(hu) if steps else hu


def list_series(path: PathLike) -> list[SeriesSummary]:
  """Series found in a folder (headers only; unreadable files are ignored)."""
  groups: dict[str, list[SliceHeader]] = {}
  files, _, _ = _list_files(path)
  for f in files:
    try:
      h = read_header(f)
    except errors.CTDataError:
      continue
    groups.setdefault(h.series_uid, []).append(h)
  return _summaries(groups)
