"""Writing files: early checks of output locations, atomic writes, OSError → one-line error;
and opening .npy memory maps from several threads (`open_npy`).

Every command writes somewhere (a workdir, a cache, a report); a read-only folder, a file where a
folder is expected or a full disk must end in one line naming the path (`StorageError`,
`DiskFullError` with the space needed and free), not in a traceback from deep inside a writer.
Tensorstore (Orbax checkpoints) reports a full disk as `ValueError("RESOURCE_EXHAUSTED: … No
space left on device [os_error_code='28']")`, so `is_disk_full` reads the text as well.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil
import tempfile
import threading
from typing import Optional, Union

import numpy as np

from ctjax.errors import DiskFullError, StorageError

PathLike = Union[str, "os.PathLike[str]"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# numpy's tofile/np.save reports a short write without an errno: "16384 requested and 12224
# written" (a regular file is written short only when the disk is full).
_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os_error_code='28'|"
                        r"\d+ requested and \d+ written")


def human_bytes(n: Optional[float]) -> str:
  if n is None:
    return "?"
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if abs(n) < 1024 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024.0
  return f"{n:.1f} TB"


def free_bytes(path: PathLike) -> Optional[int]:
  """Free bytes on the file system holding `path` (its nearest existing parent)."""
  p = pathlib.Path(path).absolute()
  while not p.exists() and p != p.parent:
    p = p.parent
  try:
    return int(shutil.disk_usage(p).free)
  except OSError:
    return None


def is_disk_full(e: BaseException) -> bool:
  """An OSError ENOSPC/EDQUOT, or a wrapped one (tensorstore's text), anywhere in the chain."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, DiskFullError):
      return True
    if isinstance(e, OSError) and e.errno in _FULL:
      return True
    if _FULL_TEXT.search(str(e)):
      return True
    e = e.__cause__ or e.__context__
  return False


def _failed_write_size(e: BaseException) -> Optional[int]:
  m = re.search(r"Failed to write (\d+) bytes|(\d+) requested and \d+ written", str(e))
  return int(m.group(1) or m.group(2)) if m else None


def disk_full_error(path: PathLike, needed: Optional[int] = None, what: str = "writing",
                    cause: Optional[BaseException] = None, needed_note: str = ""
                    ) -> DiskFullError:
  """`DiskFullError` for `path`: what was being written, how much it needs (`needed_note` says
  how that was estimated), how much is free."""
  free = free_bytes(path)
  parts = [f"disk full while {what}"]
  if needed is not None:
    parts.append(f"needs about {human_bytes(needed)}" +
                 (f" ({needed_note})" if needed_note else ""))
  if cause is not None and _failed_write_size(cause) is not None:
    parts.append(f"a write of {human_bytes(_failed_write_size(cause))} failed")
  parts.append(f"{human_bytes(free)} free on that file system")
  return DiskFullError(", ".join(parts) + "; free some space or write elsewhere", path)


def tree_bytes(path: PathLike) -> int:
  """Bytes of the files under `path` (0 if absent)."""
  p = pathlib.Path(path)
  if p.is_file():
    return p.stat().st_size
  return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def storage_error(e: OSError, path: Optional[PathLike] = None, what: str = "writing",
                  needed: Optional[int] = None) -> StorageError:
  """The one-line error for an OSError met while writing `path` (e.filename when given)."""
  target = e.filename if getattr(e, "filename", None) else path
  if is_disk_full(e):
    return disk_full_error(target or ".", needed, what, cause=e)
  reason = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.ENOTDIR: "a parent is not a folder",
            errno.EISDIR: "is a folder, expected a file",
            errno.EEXIST: "exists and is not a folder"}.get(e.errno, e.strerror or str(e))
  return StorageError(f"cannot write ({reason}) while {what}", target)


def writable_dir(path: PathLike, what: str = "output folder") -> pathlib.Path:
  """Creates `path` if needed and proves it writable (a probe file, as permission bits do not
  stop root and say nothing of read-only mounts); StorageError naming it otherwise."""
  p = pathlib.Path(path)
  if p.exists() and not p.is_dir():
    raise StorageError(f"{what} is a file, not a folder", p)
  for parent in p.absolute().parents:
    if parent.exists():
      if not parent.is_dir():
        raise StorageError(f"{what}: {parent} is a file, not a folder", p)
      break
  try:
    p.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".ctjax_write_probe_", dir=p)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise StorageError(f"{what} is not writable ({_reason(e)})", p) from e
  return p


def writable_file(path: PathLike, what: str = "output file") -> pathlib.Path:
  """`path` can be written as a file: not a folder, its folder created and writable."""
  p = pathlib.Path(path)
  if p.is_dir():
    raise StorageError(f"{what} is a folder, expected a file name", p)
  writable_dir(p.parent if str(p.parent) else ".", f"folder of the {what}")
  if p.exists() and not os.access(p, os.W_OK):
    raise StorageError(f"{what} exists and is not writable", p)
  return p


def _reason(e: OSError) -> str:
  if is_disk_full(e):
    return "disk full"
  return {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
          errno.EPERM: "operation not permitted"}.get(e.errno, e.strerror or str(e))


def atomic_write_text(path: PathLike, text: str, what: str = "writing") -> pathlib.Path:
  """Writes `text` to a temporary file next to `path` and renames it over `path` (a reader never
  sees half a file); OSError → StorageError / DiskFullError naming `path`."""
  p = pathlib.Path(path)
  tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
  try:
    tmp.write_text(text)
    os.replace(tmp, p)
  except OSError as e:
    try:
      tmp.unlink()
    except OSError:
      pass
    raise storage_error(e, p, what, needed=len(text.encode())) from e
  return p


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
  """Hex digest of a file's bytes, read in 1 MB blocks (any hashlib algorithm name)."""
  import hashlib
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


# np.load parses a .npy header with ast.literal_eval, and on CPython 3.11 AST construction in
# several threads at once can fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905). The input pipeline's reader threads map shards lazily: one at a time.
_NPY_OPEN = threading.Lock()


def open_npy(path: PathLike, mmap_mode: Optional[str] = "r") -> np.ndarray:
  """`np.load(path, mmap_mode=...)`, serialised across threads (see `_NPY_OPEN`)."""
  with _NPY_OPEN:
    return np.load(path, mmap_mode=mmap_mode)

