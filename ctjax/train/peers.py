"""When one process of a multi-process run dies, the others exit within seconds with one line.

Without this, a survivor blocks in its next collective until JAX's coordination service misses
the dead process's heartbeats for 100 s, then aborts with a C++ stack dump. Two parts, started by
`ctjax.train.parallel.initialize_distributed` once `jax.distributed` is up:

- `Watchdog`: a daemon thread that publishes this process's heartbeat (a counter) in the
  coordination service's key-value store every `HEARTBEAT_INTERVAL_S` and reads every peer's.
  A peer whose counter has not moved for `PEER_TIMEOUT_S` (`CTJAX_PEER_TIMEOUT`) is dead: this
  process prints `error: process i of N: process k stopped …` and exits with status 1. Process 0
  (which hosts the service) first leaves the reason under `ctjax/abort`, so that the others print
  their own line and exit before the service goes away with it. A process that ends normally
  marks itself `done` (at exit) so that its silence is not taken for a death.
- `guard_stderr`: when process 0 itself dies, the survivors' JAX client aborts within a second
  on its own (C++ `LOG(QFATAL)`; jaxlib's `missed_heartbeat_callback` cannot take a Python
  function: its status argument does not convert, std::bad_cast). The abort cannot be caught, so
  file descriptor 2 is routed through a small filter process that passes everything through and
  replaces JAX's fatal message and stack dump by one `error:` line.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Optional

log = logging.getLogger(__name__)

PEER_TIMEOUT_S = 10.0        # silence after which a peer is taken as dead
HEARTBEAT_INTERVAL_S = 1.0
EXIT_PEER_FAILURE = 1
HEARTBEAT_KEY = "ctjax/heartbeat/"
ABORT_KEY = "ctjax/abort"
DONE = "done"


class Watchdog:
  """Heartbeats in the coordination service's key-value store (see the module docstring).

  `client`: jax's DistributedRuntimeClient (`key_value_set`, `key_value_dir_get`,
  `key_value_try_get`); `exit_fn(message)` ends the process (tests replace it).
  """

  def __init__(self, client: Any, process_id: int, num_processes: int,
               timeout_s: float = PEER_TIMEOUT_S, interval_s: float = HEARTBEAT_INTERVAL_S,
               exit_fn: Optional[Any] = None):
    self.client, self.pid, self.n = client, int(process_id), int(num_processes)
    self.timeout_s, self.interval_s = float(timeout_s), float(interval_s)
    self.exit_fn = exit_fn or self._exit
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="ctjax-peer-watchdog", daemon=True)

  def start(self) -> "Watchdog":
    self._thread.start()
    return self

  def stop(self) -> None:
    """Stops the heartbeat and marks this process finished for its peers."""
    if self._stop.is_set():
      return
    self._stop.set()
    if self._thread.is_alive() and self._thread is not threading.current_thread():
      self._thread.join(timeout=2 * self.interval_s + 1)
    try:
      self.client.key_value_set(f"{HEARTBEAT_KEY}{self.pid}", DONE, allow_overwrite=True)
    except Exception:   # the service may be gone already at exit: nobody left to tell
      pass

  def _exit(self, message: str) -> None:
    try:
      sys.stdout.flush()
      sys.stderr.write(f"error: process {self.pid} of {self.n}: {message}\n")
      sys.stderr.flush()
    finally:
      os._exit(EXIT_PEER_FAILURE)

  def check(self, beat: int, seen: dict[int, tuple[str, float]], now: float) -> Optional[str]:
    """One heartbeat round: publish `beat`, read the peers; the reason to exit, or None."""
    try:
      self.client.key_value_set(f"{HEARTBEAT_KEY}{self.pid}", str(beat), allow_overwrite=True)
      values = dict(self.client.key_value_dir_get(HEARTBEAT_KEY))
      abort = values.get(ABORT_KEY) or _try_get(self.client, ABORT_KEY)
    except Exception as e:   # the coordination service (in process 0) is gone
      text = " ".join(str(e).split())[:160]
      return (f"lost the coordination service on process 0 ({type(e).__name__}: {text}); "
              "exiting. See process 0's log for why it stopped.")
    if abort:
      return f"{abort} (reported by process 0); exiting."
    for peer in range(self.n):
      if peer == self.pid:
        continue
      value = values.get(f"{HEARTBEAT_KEY}{peer}", "")   # "": not published yet, alive
      if value == DONE:
        continue
      last = seen.get(peer)
      if last is None or last[0] != value:
        seen[peer] = (value, now)
      elif now - last[1] > self.timeout_s:
        reason = f"process {peer} stopped (no heartbeat for {now - last[1]:.0f} s)"
        others = [p for p in range(1, self.n) if p != peer and values.get(
            f"{HEARTBEAT_KEY}{p}") != DONE]
        if self.pid == 0 and others:   # tell them before the service goes down with process 0
          try:
            self.client.key_value_set(ABORT_KEY, reason, allow_overwrite=True)
            time.sleep(2 * self.interval_s + 0.5)
          except Exception:
            pass
        return f"{reason}; exiting. See that process's log for why."
    return None

  def _run(self) -> None:
    beat = 0
    seen: dict[int, tuple[str, float]] = {}
    while not self._stop.wait(self.interval_s if beat else 0.0):
      beat += 1
      reason = self.check(beat, seen, time.monotonic())
      if reason is not None and not self._stop.is_set():
        self.exit_fn(reason)
        return


def _try_get(client: Any, key: str) -> str:
  try:
    return client.key_value_try_get(key)
  except Exception:   # NOT_FOUND: no abort recorded
    return ""


# ------------------------------------------------------------------- JAX's own fatal abort

FATAL_MARKER = b"Terminating process because the JAX distributed service detected fatal errors"

# Runs in its own small process: copies its stdin to its stdout (the real stderr) as it comes,
# holds back the coordination service's C++ log lines for a moment, and when JAX's fatal message
# arrives, drops those and everything after it (the stack dump) for one `error:` line (none when
# ctjax's own `error:` line, e.g. a failed collective, came just before).
_FILTER = r'''
import os, re, select, sys, time
pid, n, marker = sys.argv[1], sys.argv[2], sys.argv[3].encode()
out = sys.stdout.buffer
cpp = re.compile(rb"[EWF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ "
                 rb"[\w.]*(coordination|client\.h|distributed|preemption)")
maybe_cpp = re.compile(rb"[EWF](\d{0,4}|\d{4} [\d:. ]*)$")   # a header cut by the read
held, tail, fatal, held_since, said = [], b"", False, None, -1e9
def write(data):
  try:
    out.write(data); out.flush()
  except OSError:
    pass
while True:
  wait = None if held_since is None else max(0.0, held_since + 1.0 - time.monotonic())
  ready, _, _ = select.select([0], [], [], wait)
  if held_since is not None and time.monotonic() > held_since + 1.0:
    write(b"".join(held)); held, held_since = [], None
  if not ready:
    continue
  chunk = os.read(0, 65536)
  if not chunk:
    break
  if fatal:
    continue
  lines = (tail + chunk).split(b"\n")
  tail = lines.pop()
  for line in lines:
    m = cpp.search(line)
    if marker in line:
      if m is not None and line[:m.start()].strip():
        write(line[:m.start()] + b"\n")
      fatal = True
      if time.monotonic() - said > 5.0:   # ctjax's own error line already said it
        write(("error: process %s of %s: the JAX coordination service reported a fatal error "
               "(another process stopped, most likely process 0, which hosts the service); "
               "exiting. See the other processes' logs for why.\n" % (pid, n)).encode())
      break
    if line.startswith(b"error: "):   # ctjax's one line: at once, ahead of held C++ lines
      write(line + b"\n")
      said = time.monotonic()
    elif held:
      held.append(line + b"\n")
    elif m is not None:
      if m.start():
        write(line[:m.start()] + b"\n")
      held.append(line[m.start():] + b"\n")
      held_since = time.monotonic()
    else:
      write(line + b"\n")
  if not fatal and tail and not held:   # progress bars (\r updates) pass through at once
    m = maybe_cpp.search(tail) or cpp.search(tail)
    cut = m.start() if m is not None else len(tail)
    write(tail[:cut]); tail = tail[cut:]
if not fatal:
  write(b"".join(held) + tail)
'''

_GUARD: Optional[subprocess.Popen] = None


def guard_stderr(process_id: int, num_processes: int) -> None:
  """Routes this process's file descriptor 2 through the `_FILTER` process (see above)."""
  global _GUARD
  if _GUARD is not None:
    return
  try:
    sys.stderr.flush()
    real = os.dup(2)
    proc = subprocess.Popen(
        [sys.executable, "-c", _FILTER, str(process_id), str(num_processes),
         FATAL_MARKER.decode()],
        stdin=subprocess.PIPE, stdout=real, stderr=real, close_fds=True,
        start_new_session=True)   # a Ctrl-C in the terminal must not stop the relay first
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()            # fd 2 now holds the pipe; EOF when this process ends
    os.close(real)
    _GUARD = proc
  except OSError as e:
    log.warning("stderr not guarded against JAX's fatal abort (%s)", e)


_WATCHDOG: Optional[Watchdog] = None


def start(process_id: int, num_processes: int, timeout_s: Optional[float] = None) -> None:
  """Starts the stderr guard and the heartbeat watchdog (after jax.distributed.initialize)."""
  global _WATCHDOG
  if num_processes < 2 or _WATCHDOG is not None:
    return
  import atexit
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  if client is None:
    return
  if timeout_s is None:
    timeout_s = float(os.environ.get("CTJAX_PEER_TIMEOUT") or PEER_TIMEOUT_S)
  guard_stderr(process_id, num_processes)
  _WATCHDOG = Watchdog(client, process_id, num_processes, timeout_s).start()
  atexit.register(stop)   # runs before jax's own atexit shutdown (registered at import)


def stop() -> None:
  """Marks this process finished for its peers (a normal end, not a death)."""
  if _WATCHDOG is not None:
    _WATCHDOG.stop()
