"""ctjax's typed errors.

Library code raises these; entry points (`python -m ctjax.X`) catch `CTJaxError`, print one
line and exit non-zero. A message names the file, what was expected and what to do.
"""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class CTJaxError(Exception):
  """Root of every error ctjax raises on purpose."""


class ConfigError(CTJaxError, ValueError):
  """A config value is missing, out of range or inconsistent with another."""


class CheckpointError(CTJaxError):
  """A checkpoint or workdir is missing, incomplete or from another config."""


class WeightsError(CTJaxError):
  """A pretrained-weights file is missing or does not match the architecture."""


class StorageError(CTJaxError):
  """A file or folder cannot be written (read-only, not a folder, no permission). `path` names
  it when known; `ctjax.fileio` turns OSErrors into these."""

  def __init__(self, message: str, path: Optional[PathLike] = None):
    self.path = None if path is None else os.fspath(path)
    super().__init__(f"{self.path}: {message}" if self.path else message)


class DiskFullError(StorageError):
  """No space left on the device (ENOSPC) or quota exceeded (EDQUOT); the message says how much
  was needed and how much is free."""


class LockedError(StorageError):
  """Another process holds the lock of a workdir or output (`ctjax.fileio.exclusive_lock`): the
  message names its pid, host and start time."""


class PeerProcessError(CTJaxError):
  """Another process of a multi-process run stopped (a collective failed)."""


class CTDataError(CTJaxError):
  """Bad input data. `path` names the offending file or folder when known."""

  def __init__(self, message: str, path: Optional[PathLike] = None):
    self.path = None if path is None else os.fspath(path)
    super().__init__(f"{self.path}: {message}" if self.path else message)


class NotDicomError(CTDataError):
  """The file is not DICOM (no preamble/meta, text, image, empty)."""


class UnreadableFileError(CTDataError):
  """The operating system refuses to read a file or folder (permission denied, I/O error): the
  message carries the OS's reason."""


class TruncatedDicomError(CTDataError):
  """The file ends before its declared content (pixel data cut short)."""


class MissingPixelDataError(CTDataError):
  """The dataset has no Pixel Data element."""


class NotCTError(CTDataError):
  """The modality is not CT (MR, PT, …) or the SOP class is not a CT image."""


class UnsupportedTransferSyntaxError(CTDataError):
  """Compressed pixel data without an installed decoder; the message names the package."""


class InconsistentSeriesError(CTDataError):
  """Slices of one series disagree (shape, spacing, orientation) beyond tolerance."""


class MixedSeriesError(CTDataError):
  """Several series in one folder and no selector given."""


class EmptySeriesError(CTDataError):
  """No usable slice found."""


class DatasetLayoutError(CTDataError):
  """A data set root does not follow its declared public layout (missing CSV, folders)."""


class InvalidDicomValueError(CTDataError):
  """A header value needed to decode the image cannot be parsed (e.g. IS '1A' in Rows/Frames)."""


class UnsupportedDicomError(CTDataError):
  """Valid DICOM that ctjax does not read (Enhanced multi-frame CT, colour images, oversized)."""


class NotAxialError(UnsupportedDicomError):
  """The series' slice plane is sagittal or coronal (its normal more than
  `ctjax.data.dicom.AXIAL_MAX_DEG` from the patient's head-foot axis): ctjax reads axial CT and
  does not resample other planes."""


class PixelDataSizeError(InvalidDicomValueError):
  """The Pixel Data element is longer than Rows × Columns × frames × samples × BitsAllocated
  (native) or than any compressed form of that image: refused before anything is decoded."""


class PixelRepresentationError(InvalidDicomValueError):
  """Stored values that only make sense with the other PixelRepresentation (signed data declared
  unsigned): most voxels land at the top of the HU range."""


class NotHeadCTError(CTDataError):
  """The pixels do not show a head CT (`ctjax.data.headcheck`): no skull ring around brain-range
  tissue, a field of view or z coverage no head has."""


class InvalidRescaleError(CTDataError):
  """RescaleSlope / RescaleIntercept unparseable, not finite, non-positive (slope) or outside the
  bounds of real CT images (`ctjax.data.dicom.RESCALE_SLOPE_RANGE`, `MAX_ABS_RESCALE_INTERCEPT`):
  the slice's HU cannot be trusted."""


class ForeignSliceError(CTDataError):
  """A slice inside one series carries another PatientID or StudyInstanceUID than the rest."""


class DuplicateSliceError(CTDataError):
  """Two files at one slice position (or with one SOPInstanceUID) whose pixels differ."""


class CorruptPixelDataError(InvalidDicomValueError):
  """Pixel data present but undecodable (a broken JPEG / JPEG 2000 codestream)."""


class LabelError(DatasetLayoutError):
  """A label file's value, cell, column or row is missing, not a value the layout defines, or in
  conflict with another row; the message names the file, the row and the column."""


class LabelCoverageError(DatasetLayoutError):
  """Too many DICOM files without labels, or labelled names without DICOM (or any of them, with
  `config.data.strict_labels`)."""


class StaleCacheError(CTDataError):
  """The prepared cache was built from other label files or DICOM files than the data root holds
  now, and `config.data.stale_cache` says not to rebuild it."""


class CacheNotPreparedError(CTDataError):
  """Evaluation, prediction or a report needs a prepared cache (or feature store) that is
  absent, unfinished, stale or damaged, and was not told to build it."""


class CacheCorruptError(CTDataError):
  """A prepared cache shard is missing, truncated or altered (size or checksum differs from the
  manifest): re-run `python -m ctjax.prepare` with the same config to rebuild it."""


class StudyError(CTJaxError):
  """A reader-study folder is missing, incomplete or inconsistent (`ctjax.reader`)."""


class ReadRefusedError(StudyError):
  """A reader's request is refused (unknown link, wrong case, second answer, washout, bad input).

  `status` is the HTTP status the study server answers with.
  """

  def __init__(self, message: str, status: int = 400):
    self.status = int(status)
    super().__init__(message)
