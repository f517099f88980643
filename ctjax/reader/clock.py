"""The study clock: every time the study records (reading time, washout) comes from one object.

Reading times and the washout are measured on the server, never in the browser, so that they
cannot be edited by a page and so that tests can replace the clock (`ManualClock`) and get
exact times and a washout that passes on demand.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from typing import Protocol


class Clock(Protocol):
  def now(self) -> float:
    """Seconds since the Unix epoch (UTC)."""


class SystemClock:
  """The machine's wall clock."""

  def now(self) -> float:
    return time.time()


class ManualClock:
  """A clock that moves only when told (tests, demos): `set(t)`, `advance(seconds)`."""

  def __init__(self, start: float = 1_700_000_000.0):
    self._t = float(start)
    self._lock = threading.Lock()

  def now(self) -> float:
    with self._lock:
      return self._t

  def set(self, t: float) -> None:
    with self._lock:
      self._t = float(t)

  def advance(self, seconds: float) -> float:
    with self._lock:
      self._t += float(seconds)
      return self._t


def iso(t: float | None) -> str:
  """Epoch seconds → '2021-11-03T09:15:00Z' ('' for None)."""
  if t is None:
    return ""
  return _dt.datetime.fromtimestamp(float(t), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def day(t: float | None) -> str:
  """Epoch seconds → '2021-11-03' (UTC; '' for None)."""
  return iso(t)[:10]
