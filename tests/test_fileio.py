"""ctjax.fileio.open_npy: .npy memory maps opened from many threads, one header parse at a time
(CPython 3.11's AST construction is not safe across threads: python/cpython#106905), and the
stores that the input pipeline's reader threads read through it."""

import concurrent.futures
import threading
import time

import numpy as np

from ctjax import fileio


def test_open_npy_serialises_header_parsing_across_threads(tmp_path, monkeypatch):
  paths = []
  for i in range(8):
    paths.append(tmp_path / f"a{i}.npy")
    np.save(paths[-1], np.full((3, 4), i, np.int16))
  real_load, inside, most = np.load, [0], [0]
  lock = threading.Lock()

  def slow_load(path, mmap_mode=None):   # widens the window two parses could overlap in
    with lock:
      inside[0] += 1
      most[0] = max(most[0], inside[0])
    time.sleep(0.02)
    try:
      return real_load(path, mmap_mode=mmap_mode)
    finally:
      with lock:
        inside[0] -= 1

  monkeypatch.setattr(np, "load", slow_load)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    arrays = list(pool.map(fileio.open_npy, paths))
  assert most[0] == 1
  for i, a in enumerate(arrays):
    assert isinstance(a, np.memmap) and a.shape == (3, 4) and int(a[0, 0]) == i


def test_the_stores_map_their_shards_through_open_npy(tmp_path, monkeypatch):
  from ctjax.data import cache, fake
  from ctjax.train import features
  opened = []
  real = fileio.open_npy
  monkeypatch.setattr(fileio, "open_npy", lambda p, *a, **k: (opened.append(p.name),
                                                              real(p, *a, **k))[1])
  manifest = fake.write_random_cache(tmp_path / "cache", num_scans=4, slices=(3, 4), size=8,
                                     scans_per_shard=2, seed=0)
  scans = cache.CachedScans(manifest.parent)
  scans.hu(1)
  assert opened and opened[-1].startswith("shard_")
  store_dir = tmp_path / "store"
  store_dir.mkdir()
  features._write_shard(store_dir, 0, {"pooled": np.ones((7, 2), np.float32)}, "float32")
  (store_dir / "manifest.json").write_text(
      '{"dtype": "float32", "arrays": ["pooled"], "shards": [{"rows": 7}]}')
  store = features.FeatureStore(store_dir, scans)
  assert store.array(0, "pooled").shape == (7, 2)
  assert opened[-1] == "shard_00000.pooled.npy"


# ----------------------------------------------------------------------- exclusive_lock

import json
import logging
import os
import subprocess
import sys

import pytest

from ctjax import errors

HOLD = ("import sys, time\n"
        "from ctjax import fileio\n"
        "lock = fileio.exclusive_lock(sys.argv[1], 'the test folder', refresh_s=0)\n"
        "print('held', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n")


def _holder(path, seconds=60.0):
  """A process that takes the lock `path` and sleeps (killed by the test)."""
  p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def _record(path, **fields):
  """A lock record as another process would have written it (this host unless told)."""
  rec = fileio._this_process("the test folder")
  rec.update(fields)
  path.write_text(json.dumps(rec))
  return rec


def test_a_held_lock_refuses_in_one_line_naming_the_holder(tmp_path):
  lock = tmp_path / "run" / "train.lock"
  lock.parent.mkdir()
  holder = _holder(lock)
  try:
    with pytest.raises(errors.LockedError) as e:
      fileio.exclusive_lock(lock, "--workdir", target=lock.parent, advice="use another one")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{lock.parent}: --workdir is in use by ")
    assert f"pid {holder.pid} on host {os.uname().nodename}" in msg and "since 20" in msg
    assert f"lock file {lock}" in msg and msg.endswith("; use another one")
    assert "-c" in msg                                 # the holder's command line
    assert json.loads(lock.read_text())["pid"] == holder.pid   # the holder's lock untouched
  finally:
    holder.kill()
    holder.wait()


def test_the_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path, caplog):
  lock = tmp_path / "train.lock"
  holder = _holder(lock)
  holder.kill()
  holder.wait()
  with caplog.at_level(logging.WARNING, logger="ctjax.fileio"):
    with fileio.exclusive_lock(lock, "--workdir", refresh_s=0) as got:
      assert json.loads(lock.read_text())["pid"] == os.getpid() == got.record["pid"]
  assert not lock.exists()                             # released
  (line,) = [r.getMessage() for r in caplog.records]
  assert f"taking over the lock of pid {holder.pid}" in line and "no longer running" in line


def test_a_reused_pid_is_not_the_holder(tmp_path, caplog):
  """The record's pid runs, but its start time is another process's: the holder is gone."""
  lock = tmp_path / "train.lock"
  rec = _record(lock, proc_start=fileio._proc_start(os.getpid()) + 12345)
  with caplog.at_level(logging.WARNING, logger="ctjax.fileio"):
    fileio.exclusive_lock(lock, "--workdir", refresh_s=0).release()
  assert f"taking over the lock of pid {rec['pid']}" in caplog.text
  _record(lock)                                        # the same process: held
  with pytest.raises(errors.LockedError, match=f"pid {os.getpid()}"):
    fileio.exclusive_lock(lock, "--workdir", refresh_s=0)


def test_a_holder_on_another_host_is_judged_by_its_refresh(tmp_path, caplog):
  lock = tmp_path / "train.lock"
  _record(lock, host="gpu-node-7", pid=4242, boot_id="other")
  with pytest.raises(errors.LockedError) as e:
    fileio.exclusive_lock(lock, "--workdir", refresh_s=0)
  assert "pid 4242 on host gpu-node-7" in str(e.value)
  assert "cannot be checked from here" in str(e.value)
  assert "delete the lock file" in str(e.value) and "\n" not in str(e.value)
  old = time.time() - fileio.LOCK_STALE_S - 5           # silent for longer than the lease
  os.utime(lock, (old, old))
  with caplog.at_level(logging.WARNING, logger="ctjax.fileio"):
    fileio.exclusive_lock(lock, "--workdir", refresh_s=0).release()
  assert "pid 4242 on host gpu-node-7" in caplog.text and "not been refreshed for 10 min" \
      in caplog.text


def test_the_holder_refreshes_its_lock(tmp_path):
  lock = tmp_path / "train.lock"
  with fileio.exclusive_lock(lock, "--workdir", refresh_s=0.05):
    old = time.time() - 1000
    os.utime(lock, (old, old))
    deadline = time.time() + 5
    while lock.stat().st_mtime < old + 500 and time.time() < deadline:
      time.sleep(0.02)
    assert lock.stat().st_mtime > time.time() - 60


def test_an_unreadable_lock_is_refused_and_a_replaced_one_not_removed(tmp_path):
  lock = tmp_path / "train.lock"
  lock.write_text("{half a rec")
  with pytest.raises(errors.LockedError, match="cannot be read; delete it"):
    fileio.exclusive_lock(lock, "--workdir", refresh_s=0)
  lock.unlink()
  held = fileio.exclusive_lock(lock, "--workdir", refresh_s=0)
  lock.unlink()                                        # someone removed it and took it
  other = _record(lock, pid=1)
  held.release()
  assert json.loads(lock.read_text()) == other         # not ours: left alone


RACE = ("import sys, time\n"
        "from ctjax import errors, fileio\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "try:\n"
        "  lock = fileio.exclusive_lock(sys.argv[1], 'x', refresh_s=0)\n"
        "except errors.LockedError:\n"
        "  print('refused', flush=True)\n"
        "else:\n"
        "  print('won', flush=True)\n"
        "  time.sleep(2)\n")


def test_one_of_many_processes_breaking_a_stale_lock_at_once_wins(tmp_path):
  lock = tmp_path / "train.lock"
  dead = _holder(lock)
  dead.kill()
  dead.wait()
  start = time.time() + 4.0                            # all start spinning before this
  procs = [subprocess.Popen([sys.executable, "-c", RACE, str(lock), str(start)],
                            stdout=subprocess.PIPE, text=True) for _ in range(4)]
  outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
  assert outcomes == ["refused", "refused", "refused", "won"], outcomes
