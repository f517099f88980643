"""Writing files: early checks of output locations, atomic writes, OSError → one-line error;
one writer per output (`exclusive_lock`); and opening .npy memory maps from several threads
(`open_npy`).

Every command writes somewhere (a workdir, a cache, a report); a read-only folder, a file where a
folder is expected or a full disk must end in one line naming the path (`StorageError`,
`DiskFullError` with the space needed and free), not in a traceback from deep inside a writer.
Tensorstore (Orbax checkpoints) reports a full disk as `ValueError("RESOURCE_EXHAUSTED: … No
space left on device [os_error_code='28']")`, so `is_disk_full` reads the text as well.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import re
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Optional, Union

import numpy as np

from ctjax.errors import DiskFullError, LockedError, StorageError

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# numpy's tofile/np.save reports a short write without an errno: "16384 requested and 12224
# written" (a regular file is written short only when the disk is full).
# SQLite says "database or disk is full" (SQLITE_FULL).
_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os_error_code='28'|"
                        r"\d+ requested and \d+ written|database or disk is full")


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


def file_mode() -> int:
  """The mode a new file gets here (0o666 less the process's umask)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return 0o666 & ~mask


_RENAME_EXCHANGE = 2   # renameat2 flag (Linux >= 3.15)


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
  """Swaps two paths in one step (renameat2 RENAME_EXCHANGE); False where unsupported."""
  import ctypes
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd = -100
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
    return False
  raise OSError(err, os.strerror(err), os.fspath(b))


def replace_dir(new: PathLike, target: PathLike) -> str:
  """Puts the finished folder `new` at `target` (same file system) and returns how: a rename
  when `target` is absent; else the two swapped in one step (Linux renameat2 exchange) and the
  old folder removed, so that `target` always holds one whole folder, the old or the new. Where
  no exchange exists, `target` is renamed aside first: it is then absent (never mixed) for the
  instant between the two renames."""
  new, target = pathlib.Path(new), pathlib.Path(target)
  if not target.exists():
    os.rename(new, target)
    return "created"
  if _exchange(new, target):
    shutil.rmtree(new, ignore_errors=True)      # `new` now names the old folder
    return "replaced atomically"
  aside = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
  os.rename(target, aside)
  os.rename(new, target)
  shutil.rmtree(aside, ignore_errors=True)
  return "replaced"


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



# ------------------------------------------------------------------------------ one writer
#
# A lock file holds its holder's record (JSON: pid, host, start time, command). It is created
# whole, atomically: the record is written to a private file that is then hard-linked to the
# lock's name (link() fails if the name exists, also over NFS), so the name never holds half a
# record. Two ways a holder can be gone:
# - on this host (same host name, boot and pid namespace): its pid no longer runs, or runs
#   another program (the process start time differs) — decided at once;
# - on another host, whose pids cannot be checked here: the holder refreshes the file's mtime
#   every LOCK_REFRESH_S, and a lock silent for LOCK_STALE_S (well above any clock skew between
#   the hosts of a shared file system) is stale.
# A stale lock is removed under flock() of that very file, after checking that the name still
# holds the record judged stale, so that two processes breaking it at once cannot delete each
# other's new lock; then the link is tried again.

LOCK_REFRESH_S = 60.0
LOCK_STALE_S = 600.0
_LOCK_ATTEMPTS = 5


def _read_first_line(path: str) -> Optional[str]:
  try:
    with open(path) as f:
      return f.readline().strip() or None
  except OSError:
    return None


def _proc_start(pid: int) -> Optional[int]:
  """The process's start time (clock ticks after boot, /proc/PID/stat field 22) or None."""
  try:
    with open(f"/proc/{int(pid)}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[19])
  except (OSError, IndexError, ValueError):
    return None


def _pid_namespace() -> Optional[str]:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


def _this_process(what: str) -> dict[str, Any]:
  now = time.time()
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
          "pid_ns": _pid_namespace(), "proc_start": _proc_start(os.getpid()),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now)),
          "started_unix": round(now, 3), "what": what,
          "command": _command_line()}


def _command_line(limit: int = 160) -> str:
  """This process's command line (`python -m ctjax.train --config …`), shortened."""
  argv = list(getattr(sys, "orig_argv", None) or ["python"] + sys.argv)
  text = " ".join(shlex.join([os.path.basename(argv[0])] + argv[1:]).split())   # one line
  return text if len(text) <= limit else text[:limit - 1] + "…"


def _same_host(holder: dict[str, Any], me: dict[str, Any]) -> bool:
  """The holder's pid can be checked here (same host name, boot and pid namespace)."""
  return all(holder.get(k) == me[k] for k in ("host", "boot_id", "pid_ns"))


def _holder_running(holder: dict[str, Any]) -> bool:
  """The holder's pid (of this host) runs, and is the same process (not a reused pid)."""
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # another user's process: it exists
    pass
  want, got = holder.get("proc_start"), _proc_start(pid)
  return want is None or got is None or want == got


def _read_lock(path: pathlib.Path) -> tuple[Optional[dict[str, Any]], Optional[os.stat_result]]:
  """(record, stat) of a lock file; (None, None) if it is gone; ({}, stat) if unreadable."""
  try:
    st = path.stat()
    text = path.read_text()
  except FileNotFoundError:
    return None, None
  except OSError:
    return {}, None
  try:
    record = json.loads(text)
  except ValueError:
    return {}, st
  return (record if isinstance(record, dict) else {}), st


def _describe(holder: dict[str, Any]) -> str:
  return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}"


def _command(holder: dict[str, Any]) -> str:
  return f"`{holder['command']}`; " if holder.get("command") else ""


def _break_stale(path: pathlib.Path, holder: dict[str, Any], why: str) -> None:
  """Removes `path` if it still holds `holder`'s record (serialised by flock on the file)."""
  import fcntl
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:   # no flock on this file system: the checks below still hold mostly
      pass
    try:
      st = os.stat(path)
    except FileNotFoundError:
      return
    mine = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
      return                                   # replaced meanwhile: judge the new one
    with os.fdopen(os.dup(fd)) as f:
      try:
        now = json.loads(f.read())
      except ValueError:
        now = {}
    if now != holder:
      return
    os.unlink(path)
    log.warning("%s: taking over the lock of %s: %s", path, _describe(holder), why)
  finally:
    os.close(fd)


class FileLock:
  """A held `exclusive_lock`; `release()` (or leaving the `with` block) removes the file."""

  def __init__(self, path: pathlib.Path, record: dict[str, Any], identity: tuple[int, int],
               refresh_s: float):
    self.path, self.record, self._identity = path, record, identity
    self._stop = threading.Event()
    self._thread = None
    if refresh_s > 0:
      self._thread = threading.Thread(target=self._refresh, args=(refresh_s,), daemon=True,
                                      name="ctjax-lock-refresh")
      self._thread.start()

  def _ours(self) -> bool:
    """The file at `path` is still this lock (same inode, and our record: inodes are reused)."""
    record, st = _read_lock(self.path)
    return st is not None and (st.st_dev, st.st_ino) == self._identity and record == self.record

  def _refresh(self, every: float) -> None:
    warned = False
    while not self._stop.wait(every):
      if self._ours():
        try:
          os.utime(self.path)
        except OSError:
          pass
      elif not warned:
        warned = True
        log.warning("%s: this process's lock file was removed or replaced; another process may "
                    "now write here", self.path)

  def release(self) -> None:
    if self._stop.is_set():
      return
    self._stop.set()
    if self._ours():
      try:
        os.unlink(self.path)
      except OSError:
        pass

  def __enter__(self) -> "FileLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def exclusive_lock(path: PathLike, what: str, *, target: Optional[PathLike] = None,
                   advice: str = "", refresh_s: float = LOCK_REFRESH_S,
                   stale_s: float = LOCK_STALE_S) -> FileLock:
  """Takes the lock file `path` for this process, or raises `LockedError` naming its holder.

  `what` names the locked thing for the message ("--workdir", "--out file"); `target` is the
  path the message starts with (default: `path`'s folder); `advice` ends the message when the
  holder runs. A stale lock (see above) is taken over with a warning. Use as
  `with exclusive_lock(...):` or call `.release()`; the holder's record also names it.
  """
  path = pathlib.Path(path)
  target = pathlib.Path(target) if target is not None else path.parent
  me = _this_process(what)
  text = json.dumps(me)
  private = path.with_name(f".{path.name}.{me['pid']}.{secrets.token_hex(4)}")
  try:
    private.write_text(text)
  except OSError as e:
    raise storage_error(e, path, f"taking the lock of {what}") from e
  try:
    for _ in range(_LOCK_ATTEMPTS):
      try:
        os.link(private, path)
        break
      except FileExistsError:
        pass
      except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV,
                           errno.EMLINK, errno.ENOSYS):
          raise storage_error(e, path, f"taking the lock of {what}") from e
        if _create_exclusive(path, text):   # no hard links here (some FUSE file systems)
          break
      holder, st = _read_lock(path)
      if holder is None:
        continue                                 # released meanwhile: try again
      if not holder:
        raise LockedError(f"{what} is locked by {path}, which cannot be read; delete it if no "
                          "other process uses this", target)
      if _same_host(holder, me):
        if not _holder_running(holder):
          _break_stale(path, holder, "that process is no longer running")
          continue
      elif st is not None and time.time() - st.st_mtime > stale_s:
        _break_stale(path, holder, f"its lock has not been refreshed for "
                     f"{(time.time() - st.st_mtime) / 60:.0f} min")
        continue
      else:
        raise LockedError(
            f"{what} is in use by {_describe(holder)} ({_command(holder)}lock file {path}); "
            f"that host's processes cannot be checked from here: wait for it, or if it has "
            f"ended delete the lock file (it is taken over once unrefreshed for "
            f"{stale_s / 60:g} min)", target)
      raise LockedError(f"{what} is in use by {_describe(holder)} ({_command(holder)}lock file "
                        f"{path})" + (f"; {advice}" if advice else ""), target)
    else:
      raise LockedError(f"{what}: the lock {path} kept changing hands; try again", target)
  finally:
    try:
      private.unlink()
    except OSError:
      pass
  st = os.stat(path)
  return FileLock(path, me, (st.st_dev, st.st_ino), refresh_s)


def _create_exclusive(path: pathlib.Path, text: str) -> bool:
  """O_CREAT | O_EXCL creation with `text` (where hard links are not supported)."""
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    f.write(text)
  return True
