"""Header-only DICOM scans over many files: selected fields, no pixel data, bounded memory.

Data-set adapters need a few header fields of every file before anything is decoded (RSNA: which
series and patient a slice belongs to; CQ500: which reconstruction a series is). `read_fields`
reads one file with pydicom's `stop_before_pixels` and `specific_tags` (the pixel data are never
read); `scan` does it for an iterable of files, in-process or in `workers` spawned processes,
with a tqdm bar (rate and ETA), keeping nothing per file beyond what it yields. An unreadable
file (empty, text, truncated header) is yielded with its typed error, never raised here: the
caller decides (strict: raise; lenient: skip and count).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import os
from typing import Iterable, Iterator, Optional, Sequence

from ctjax import errors

log = logging.getLogger(__name__)

# Files handed to one worker task: large enough to amortise the inter-process hop (~50 µs),
# small enough that the bar moves.
CHUNK = 256


def read_fields(path: str, fields: Sequence[str]) -> dict[str, str]:
  """{keyword: text} of `fields` in `path`'s header ('' when absent); typed error if unreadable."""
  import pydicom
  from ctjax.data import dicom
  with dicom._quiet_pydicom():  # noqa: SLF001 — the reader's own quiet mode
    try:
      if os.path.getsize(path) == 0:
        raise errors.NotDicomError("empty file, expected a DICOM slice", path)
      ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(fields))
    except errors.CTDataError:
      raise
    except pydicom.errors.InvalidDicomError as e:
      raise errors.NotDicomError("not a DICOM file (no 'DICM' prefix / file meta)", path) from e
    except Exception as e:  # noqa: BLE001 — pydicom raises many types on junk
      raise errors.NotDicomError(f"cannot read the header ({type(e).__name__}: {e})",
                                 path) from e
    if len(ds) == 0:
      raise errors.NotDicomError("no data elements in the header", path)
    return {f: dicom._header_text(ds, f) for f in fields}  # noqa: SLF001


def _read_chunk(job: tuple[list[str], tuple[str, ...]]) -> list[tuple[str, Optional[dict],
                                                                     Optional[str], str]]:
  """Worker: (path, fields or None, error type name, message) per file (errors pickle as text)."""
  paths, fields = job
  out = []
  for p in paths:
    try:
      out.append((p, read_fields(p, fields), None, ""))
    except errors.CTDataError as e:
      out.append((p, None, type(e).__name__, str(e)))
  return out


def _as_error(kind: Optional[str], message: str, path: str) -> Optional[errors.CTDataError]:
  if kind is None:
    return None
  cls = getattr(errors, kind, errors.NotDicomError)
  e = cls.__new__(cls)
  Exception.__init__(e, message)
  e.path = path
  return e


def scan(paths: Iterable[str], fields: Sequence[str], *, workers: int = 0,
         progress: bool = False, total: Optional[int] = None, desc: str = "DICOM headers"
         ) -> Iterator[tuple[str, Optional[dict[str, str]], Optional[errors.CTDataError]]]:
  """(path, {field: text} or None, error or None) for every path, in input order.

  `workers` > 1 reads in that many spawned processes, with at most 2 × workers chunks in flight
  (memory stays bounded however many files there are)."""
  fields = tuple(fields)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="file", mininterval=0.5)
  it = iter(paths)
  chunks = iter(lambda: list(itertools.islice(it, CHUNK)), [])
  try:
    if workers > 1:
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending: list[concurrent.futures.Future] = []
        for chunk in itertools.chain(chunks, [None]):
          if chunk is not None:
            pending.append(pool.submit(_read_chunk, (chunk, fields)))
          while pending and (chunk is None or len(pending) >= 2 * workers):
            for p, got, kind, msg in pending.pop(0).result():
              if bar is not None:
                bar.update()
              yield p, got, _as_error(kind, msg, p)
    else:
      for chunk in chunks:
        for p in chunk:
          try:
            got, err = read_fields(p, fields), None
          except errors.CTDataError as e:
            got, err = None, e
          if bar is not None:
            bar.update()
          yield p, got, err
  finally:
    if bar is not None:
      bar.close()
