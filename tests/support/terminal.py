"""Captured stderr as a terminal shows it: each line is what remains after its carriage returns
overwrote it from the first column (how progress bars redraw themselves). Capture it as bytes:
text mode turns every carriage return into a newline."""

from __future__ import annotations

import re

# A tqdm bar: "desc:  40%|████      | 4/10 [00:01<00:02, 2.50step/s]" (or "?step/s" before a rate).
BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")
# A log record in the commands' format: "2026-01-01 12:00:00,000 INFO name: message".
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def rendered_lines(text: str) -> list[str]:
  lines = []
  for raw in text.split("\n"):
    screen: list[str] = []
    for part in raw.split("\r"):
      screen[:len(part)] = part
    lines.append("".join(screen).rstrip())
  return lines


def glued_lines(text: str) -> list[str]:
  """Lines that show both a progress bar and a log record."""
  return [ln for ln in rendered_lines(text) if BAR.search(ln) and RECORD.search(ln)]
