"""Real unwritable and full folders for the tests of one-line storage errors.

A read-only folder: permission bits for an ordinary user; root ignores those, so for root a
read-only tmpfs is mounted instead. A full disk: a tmpfs of a few KB (root only). Where neither
works the test is skipped with the reason, never passed silently.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess

import pytest


def _mount(path: pathlib.Path, options: str) -> None:
  path.mkdir(parents=True, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")


def _umount(path: pathlib.Path) -> None:
  subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@contextlib.contextmanager
def readonly_dir(path) -> pathlib.Path:
  """An existing, empty folder nothing can be written into."""
  path = pathlib.Path(path)
  if os.geteuid() == 0:
    _mount(path, "ro,size=64k")
    try:
      yield path
    finally:
      _umount(path)
  else:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
      yield path
    finally:
      path.chmod(0o755)


@contextlib.contextmanager
def small_disk(path, size: str) -> pathlib.Path:
  """A tmpfs of `size` (e.g. "80k") at `path`: writes beyond it fail with ENOSPC."""
  path = pathlib.Path(path)
  if os.geteuid() != 0:
    pytest.skip("a real full disk needs a tmpfs mount (root)")
  _mount(path, f"size={size}")
  try:
    yield path
  finally:
    _umount(path)
