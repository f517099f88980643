"""ctjax.train.peers: when one process of a run dies, the others exit within seconds, one line.

The watchdog's rounds on a fake key-value store; the stderr relay that turns JAX's fatal abort
into one line, fed a recorded abort; and two real CPU processes (jax.distributed + gloo, as
test_parallel.py) where one is killed with SIGKILL mid-training.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ctjax.train import peers

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mp_worker.py")


class FakeClient:
  """The three key-value calls of jax's DistributedRuntimeClient that the watchdog uses."""

  def __init__(self):
    self.kv, self.down = {}, False

  def _check(self):
    if self.down:
      raise RuntimeError("UNAVAILABLE: failed to connect to all addresses; Socket closed")

  def key_value_set(self, key, value, allow_overwrite=False):
    self._check()
    self.kv[key] = value

  def key_value_dir_get(self, prefix):
    self._check()
    return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]

  def key_value_try_get(self, key):
    self._check()
    if key not in self.kv:
      raise KeyError(key)
    return self.kv[key]


def test_watchdog_rounds():
  client = FakeClient()
  dog = peers.Watchdog(client, 1, 3, timeout_s=5.0, interval_s=0.01)
  seen = {}
  client.kv[f"{peers.HEARTBEAT_KEY}0"] = "1"
  client.kv[f"{peers.HEARTBEAT_KEY}2"] = "1"
  assert dog.check(1, seen, now=100.0) is None
  assert client.kv[f"{peers.HEARTBEAT_KEY}1"] == "1"           # its own heartbeat
  client.kv[f"{peers.HEARTBEAT_KEY}0"] = "2"                     # process 0 alive, 2 silent
  assert dog.check(2, seen, now=104.0) is None                   # 4 s: not yet
  reason = dog.check(3, seen, now=105.5)
  assert reason.startswith("process 2 stopped (no heartbeat for 6 s)")
  client.kv[f"{peers.HEARTBEAT_KEY}2"] = peers.DONE              # finished normally: fine
  client.kv[f"{peers.HEARTBEAT_KEY}0"] = "3"
  assert dog.check(4, seen, now=200.0) is None
  client.kv[f"{peers.HEARTBEAT_KEY}0"] = "4"
  client.kv[peers.ABORT_KEY] = "process 3 stopped (no heartbeat for 10 s)"
  assert dog.check(5, seen, now=201.0) == ("process 3 stopped (no heartbeat for 10 s) "
                                           "(reported by process 0); exiting.")
  client.down = True
  assert dog.check(6, seen, now=202.0).startswith("lost the coordination service on process 0")


def test_process_0_leaves_the_reason_for_the_others_and_stop_marks_done():
  client, exits = FakeClient(), []
  client.kv[f"{peers.HEARTBEAT_KEY}1"] = "7"                     # never moves: dead
  client.kv[f"{peers.HEARTBEAT_KEY}2"] = peers.DONE
  client.kv[f"{peers.HEARTBEAT_KEY}3"] = "1"                     # alive: must be told
  dog = peers.Watchdog(client, 0, 4, timeout_s=0.05, interval_s=0.01, exit_fn=exits.append)
  dog.start()
  deadline = time.time() + 10
  while not exits and time.time() < deadline:
    time.sleep(0.01)
  assert exits and exits[0].startswith("process") and " stopped" in exits[0]
  assert client.kv[peers.ABORT_KEY].startswith("process")
  dog.stop()
  assert client.kv[f"{peers.HEARTBEAT_KEY}0"] == peers.DONE
  # With no other live process there is nobody to tell: no abort key, no wait.
  client, exits = FakeClient(), []
  client.kv[f"{peers.HEARTBEAT_KEY}1"] = "7"
  dog = peers.Watchdog(client, 0, 2, timeout_s=0.05, interval_s=0.01, exit_fn=exits.append)
  seen = {}
  assert dog.check(1, seen, now=0.0) is None
  t0 = time.time()
  assert dog.check(2, seen, now=1.0).startswith("process 1 stopped")
  assert time.time() - t0 < 0.5 and peers.ABORT_KEY not in client.kv


def _relay(data: bytes) -> str:
  proc = subprocess.run([sys.executable, "-c", peers._FILTER, "1", "2",
                         peers.FATAL_MARKER.decode()], input=data, capture_output=True,
                        timeout=60)
  return proc.stdout.decode()


def test_stderr_relay_turns_jax_fatal_abort_into_one_line():
  abort = (b"step 3 loss=0.4\n"
           b"\rtrain:  40%|####      | 2/5 [00:01<00:01]"
           b"E1201 08:57:33.321337   13311 coordination_service_agent.cc:289] Polled an error "
           b"from coordination service (this can be an error from this or another task).\n"
           b"F1201 08:57:33.321390   13311 client.h:80] " + peers.FATAL_MARKER +
           b". This most likely indicates that another task died\n"
           b":UNKNOWN:Error received from peer {grpc_message:\"Socket closed\"}\n"
           b"*** Check failure stack trace: ***\n"
           b"    @     0x7fe857840634  absl::log_internal::LogMessage::SendToLog()\n")
  out = _relay(abort)
  lines = out.split("\n")
  assert lines[0] == "step 3 loss=0.4"
  assert "2/5" in lines[1]                                       # the progress bar passed
  errors = [ln for ln in lines if "error:" in ln]
  assert len(errors) == 1 and errors[0].endswith(
      "error: process 1 of 2: the JAX coordination service reported a fatal error (another "
      "process stopped, most likely process 0, which hosts the service); exiting. See the "
      "other processes' logs for why.")
  assert "Check failure" not in out and "Polled an error" not in out and "0x7fe8" not in out
  # ctjax's own line (a failed collective) just before: it stays the only one.
  out = _relay(b"W1201 09:47:52.257657    6816 preemption_sync_manager.cc:147] Failed\n"
               b"error: a collective failed (Gloo all-reduce failed)\n"
               b"F1201 09:47:52.3 6816 client.h:80] " + peers.FATAL_MARKER + b"\n*** Check\n")
  assert out == "error: a collective failed (Gloo all-reduce failed)\n"
  # Without the fatal message, held C++ lines and a last partial line are passed on.
  calm = (b"E1201 08:00:00.000000   1 coordination_service_agent.cc:1] a warning\n"
          b"more text\npartial")
  assert _relay(calm) == calm.decode()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _kill_one_of_two(tmp_path, victim: int):
  """Two processes train the tiny task (1 s per batch); once step 2 is logged, `victim` gets
  SIGKILL. Returns (survivor's exit status, seconds it took to exit, its output)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("CTJAX_")}
  env["CTJAX_PEER_TIMEOUT"] = "3"
  overrides = json.dumps({"train.num_epochs": 4, "checkpoint.every_steps": -1,
                          "evals.val.every_steps": -1, "checkpoint.best_metric": "",
                          "log.tensorboard": False, "_delay": 1.0})
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, WORKER, address, "2", str(i), str(tmp_path),
                             overrides], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    deadline = time.time() + 240
    metrics = tmp_path / "metrics.jsonl"
    while time.time() < deadline and all(p.poll() is None for p in procs):
      if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
        break
      time.sleep(0.1)
    assert all(p.poll() is None for p in procs), [p.communicate()[0][-2000:] for p in procs]
    procs[victim].kill()
    killed = time.time()
    survivor = procs[1 - victim]
    out = survivor.communicate(timeout=120)[0]
    return survivor.returncode, time.time() - killed, out
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def _error_lines(out):
  return [ln for ln in out.splitlines()
          if ln.startswith("error:") or "Traceback" in ln or "Check failure" in ln
          or ln.startswith(("F1", "E1", "*** "))]


def test_survivor_exits_when_process_1_dies(tmp_path):
  """Process 1 killed: process 0 exits by itself after the 3 s peer timeout, status 1, one
  line naming process 1 (without the watchdog it waited ~90 s, then a C++ stack dump)."""
  rc, seconds, out = _kill_one_of_two(tmp_path, victim=1)
  assert rc == peers.EXIT_PEER_FAILURE, out[-3000:]
  assert seconds < 15, seconds
  assert _error_lines(out) == ["error: process 0 of 2: process 1 stopped (no heartbeat for "
                               f"{out.split('no heartbeat for ')[1].split(' s)')[0]} s); "
                               "exiting. See that process's log for why."], out[-3000:]


@pytest.mark.slow   # two more JAX processes: ~40 s on a busy 2-core machine
def test_survivor_exits_when_the_coordinator_dies(tmp_path):
  """Process 0 (the coordination service) killed: process 1's JAX client aborts within a second
  on its own; its output ends in one line instead of JAX's fatal message and stack dump."""
  rc, seconds, out = _kill_one_of_two(tmp_path, victim=0)
  assert rc != 0
  assert seconds < 10, seconds
  lines = _error_lines(out)
  assert len(lines) == 1 and lines[0].startswith("error: process 1 of 2: "), out[-3000:]
