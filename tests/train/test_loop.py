"""ctjax.train.loop: workdir contents, resume after a stop (metrics.jsonl without repeated
steps), an unwritable workdir, evaluation of the best state."""

import json

import numpy as np
import pytest

from tests.support import stand_ins
from ctjax.errors import CheckpointError, ConfigError
from ctjax.train import loop


def test_workdir_contents(reference_run):
  workdir, config, final = reference_run
  assert json.loads((workdir / "config.json").read_text())["train"]["batch_size"] == 8
  losses = stand_ins.read_losses(workdir)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(v) for v in losses.values())
  assert final["step"] == 6 and "val/macro_f1" in final and final["train/scans_per_s"] > 0
  assert sorted(p.name for p in (workdir / "checkpoints" / "latest").iterdir()
                if p.name.isdigit()) == ["4", "6"]   # saved at 2, 4, 6; keep=2
  assert list((workdir / "tensorboard").iterdir())
  evals = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()
           if "val/macro_f1" in l]
  assert [e["step"] for e in evals] == [3, 6]
  done = json.loads((workdir / "final_metrics.json").read_text())
  assert done["step"] == 6 and done["metrics"]["val/macro_f1"] == final["val/macro_f1"]
  assert done["wall_seconds"] > 0 and done["resumed_from_step"] is None


def test_resume_after_stop_matches_uninterrupted(reference_run, tmp_path):
  """Ctrl-C while step 4's batch is fetched (checkpoints at 2, 4, 6), restart: steps 3-6
  repeat the uninterrupted losses (the poly schedule, momentum and data order resume)."""
  ref_dir, config, _ = reference_run
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(config, tmp_path, task=stand_ins.TinyTask(),
                            data=stand_ins.MemoryData(interrupt_at=4))
  assert sorted(stand_ins.read_losses(tmp_path)) == [1, 2, 3]
  loop.train_and_evaluate(config, tmp_path, task=stand_ins.TinyTask(),
                          data=stand_ins.MemoryData())
  ref = stand_ins.read_losses(ref_dir)
  got = stand_ins.read_losses(tmp_path)
  assert sorted(got) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)],
                             rtol=1e-6)
  # Step 3 ran twice (before the stop and after the resume from step 2) but is logged once.
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
  assert json.loads((tmp_path / "final_metrics.json").read_text())["resumed_from_step"] == 2


def test_metrics_writer_is_idempotent_over_a_resume(tmp_path):
  """From step 2: later records (and a line cut by a kill) are dropped; a record at step 2
  with the keys of one already there replaces it (a final evaluation run again)."""
  lines = [{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.9},
           {"step": 2, "val/f1": 0.1}, {"step": 3, "train/loss": 0.8}]
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "tra')
  config = stand_ins.tiny_config(**{"log.tensorboard": False})
  writer = loop._Writer(tmp_path, config, start=2)
  writer.write(2, {"val/f1": 0.2})
  writer.write(3, {"train/loss": 0.7})
  writer.close()
  got = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert got == [{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.9},
                 {"step": 2, "val/f1": 0.2}, {"step": 3, "train/loss": 0.7}]
  # A fresh start (no checkpoint) re-runs every step: nothing of the old log stays.
  loop._Writer(tmp_path, config, start=0).close()
  assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_workdir_that_cannot_be_written(tmp_path):
  import pathlib
  import sys
  from tests.support import storage_helpers
  from ctjax.errors import StorageError
  config = stand_ins.tiny_config()
  afile = tmp_path / "afile"
  afile.write_text("x")
  for workdir, message in ((afile, "--workdir is a file, not a folder"),
                           (afile / "run", f"{afile} is a file, not a folder")):
    with pytest.raises(StorageError, match=message) as info:
      loop.train_and_evaluate(config, workdir, task=stand_ins.TinyTask(),
                              data=stand_ins.MemoryData())
    assert str(info.value).startswith(str(workdir))
  with storage_helpers.readonly_dir(tmp_path / "ro") as ro:
    with pytest.raises(StorageError, match="--workdir is not writable") as info:
      loop.train_and_evaluate(config, ro, task=stand_ins.TinyTask(),
                              data=stand_ins.MemoryData())
  assert str(info.value).startswith(str(ro))


def test_resume_refuses_another_configs_checkpoints(reference_run, tmp_path):
  """A workdir is resumed only by the config that wrote it (schedule length may change)."""
  _, config, _ = reference_run
  stopped = config.copy_and_resolve_references()
  stopped.train.max_steps = 1
  loop.train_and_evaluate(stopped, tmp_path, task=stand_ins.TinyTask(),
                          data=stand_ins.MemoryData())
  other = config.copy_and_resolve_references()
  other.seed = int(config.seed) + 1
  with pytest.raises(CheckpointError, match=r"another config \(seed: "):
    loop.train_and_evaluate(other, tmp_path, task=stand_ins.TinyTask(),
                            data=stand_ins.MemoryData())
  loop.check_resumable(config, tmp_path)      # longer schedule, same experiment: allowed


def test_evaluate_restores_best(reference_run):
  from ctjax.inference import runs
  workdir, _, _ = reference_run
  best = json.loads((workdir / "checkpoints" / "best" / "best.json").read_text())
  report = runs.evaluate(workdir, "val", task=stand_ins.TinyTask(),
                              data=stand_ins.MemoryData())
  assert report["step"] == best["step"]
  assert report["macro_f1"] == pytest.approx(best["value"], abs=1e-9)
  assert report["num_examples"] == 20   # padding of the last eval batch dropped


def test_frozen_params_unchanged_and_trainable_moved(reference_run):
  from ctjax.train import checkpoint
  workdir, config, _ = reference_run
  task, model = stand_ins.TinyTask(), stand_ins.TinyNet()
  import jax
  from ctjax.train import state as state_lib
  from ctjax.train import optim
  tx, _ = optim.make_optimizer(config, 6, 3, lambda p: task.param_groups(config, p))
  init = jax.jit(lambda r: state_lib.create_state(task, model, config, r, tx))(
      jax.random.PRNGKey(config.seed))
  trained, step = checkpoint.restore_state(workdir, init, which="latest")
  assert step == 6
  assert set(init.frozen) == {"stem"} and "stem" not in init.params
  np.testing.assert_array_equal(trained.frozen["stem"]["kernel"], init.frozen["stem"]["kernel"])
  assert not np.allclose(trained.params["head"]["kernel"], init.params["head"]["kernel"])
  assert not np.allclose(trained.extra["batch_stats"]["bn"]["mean"],
                         init.extra["batch_stats"]["bn"]["mean"])


@pytest.mark.parametrize("override, message", [
    ({"train.batch_size": 0}, "batch_size"),
    ({"data.fold": 5}, "fold"),
    ({"model.dtype": "float64"}, "dtype"),
    ({"checkpoint.best_metric": "test/macro_f1"}, "best_metric"),
    ({"data.layout": "rsna", "data.root": "/no/such/dir"}, "/no/such/dir"),
    ({"optimizer.lr": float("nan")}, r"config.optimizer.lr=nan: not a finite number"),
    ({"optimizer.lr": float("inf")}, r"config.optimizer.lr=inf: not a finite number"),
    ({"optimizer.weight_decay": float("-inf")}, r"config.optimizer.weight_decay=-inf"),
])
def test_bad_config_fails_at_start(tmp_path, override, message):
  config = stand_ins.tiny_config(**override)
  with pytest.raises(ConfigError, match=message) as info:
    loop.train_and_evaluate(config, tmp_path, task=stand_ins.TinyTask(),
                            data=stand_ins.MemoryData())
  assert "\n" not in str(info.value)
  assert not (tmp_path / "metrics.jsonl").exists()


def test_batch_not_divisible_by_devices(tmp_path):
  config = stand_ins.tiny_config(**{"train.batch_size": 6})   # 4 devices
  with pytest.raises(ConfigError, match="divisible"):
    loop.train_and_evaluate(config, tmp_path, task=stand_ins.TinyTask(),
                            data=stand_ins.MemoryData())


def test_evaluators_both_config_forms():
  c = stand_ins.tiny_config()
  assert loop.evaluators(c) == {"val": {"split": "val", "every_steps": 4}}
  del c.evals["val"]
  c.evals.split = "val"
  c.evals.every_epochs = 2
  c.evals.threshold = 0.5
  assert loop.evaluators(c, steps_per_epoch=5) == {"val": {"split": "val", "every_steps": 10}}


@pytest.mark.slow   # two subprocess runs: ~1 min on a busy 2-core machine
def test_resume_after_sigkill_matches_uninterrupted(reference_run, tmp_path):
  """SIGKILL a run after step 3 is logged (checkpoints every step, async); the restarted run
  resumes from its last complete checkpoint and logs the uninterrupted run's losses."""
  import os
  import signal
  import subprocess
  import sys
  import time
  worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mp_worker.py")
  base = {"train.num_epochs": 1, "evals.val.every_steps": 3, "checkpoint.every_steps": 1}
  env = {k: v for k, v in os.environ.items() if not k.startswith("CTJAX_")}
  cmd = [sys.executable, worker, "-", "1", "0", str(tmp_path)]
  proc = subprocess.Popen(cmd + [json.dumps({**base, "_delay": 1.0})], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if (tmp_path / "metrics.jsonl").exists() and 3 in stand_ins.read_losses(tmp_path):
        break
      time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  killed_at = max(stand_ins.read_losses(tmp_path))
  assert killed_at < 6
  subprocess.run(cmd + [json.dumps(base)], env=env, check=True, timeout=300,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ref = stand_ins.read_losses(reference_run[0])
  got = stand_ins.read_losses(tmp_path)   # the last value logged for each step
  assert sorted(got) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)],
                             rtol=1e-6)


# ---------------------------------------------------------------- one run per workdir

HOLD = ("import sys, time\n"
        "from ctjax import fileio\n"
        "lock = fileio.exclusive_lock(sys.argv[1], '--workdir', refresh_s=0)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")


@pytest.fixture
def held_workdir(tmp_path):
  """A workdir whose lock another live process holds (as a running `ctjax.train` would)."""
  import subprocess
  import sys
  workdir = tmp_path / "run"
  workdir.mkdir()
  p = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir / loop.WORKDIR_LOCK)],
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  yield workdir, p.pid
  p.kill()
  p.wait()


def test_a_second_run_on_a_held_workdir_stops_at_once_naming_the_holder(held_workdir):
  import os
  import time
  from ctjax.errors import LockedError
  workdir, pid = held_workdir
  t0 = time.perf_counter()
  with pytest.raises(LockedError) as info:
    loop.train_and_evaluate(stand_ins.tiny_config(), workdir, task=stand_ins.TinyTask(),
                            data=stand_ins.MemoryData())
  assert time.perf_counter() - t0 < 5                  # before any data, model or compile
  msg = str(info.value)
  assert "\n" not in msg and msg.startswith(f"{workdir}: --workdir is in use by pid {pid} ")
  assert f"on host {os.uname().nodename} since " in msg and "another --workdir" in msg
  assert sorted(p.name for p in workdir.iterdir()) == [loop.WORKDIR_LOCK]   # nothing written


def test_the_command_on_a_held_workdir_is_one_line(held_workdir, tmp_path):
  import pathlib
  import subprocess
  import sys
  workdir, pid = held_workdir
  root = pathlib.Path(__file__).resolve().parents[2]
  r = subprocess.run([sys.executable, "-m", "ctjax.train", "--config",
                      str(root / "configs" / "drct2_phantom.py") + ":runlocal",
                      "--workdir", str(workdir), f"--config.data.root={tmp_path / 'data'}"],
                     capture_output=True, text=True, timeout=120, cwd=tmp_path)
  assert r.returncode == 1, r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {workdir}: --workdir is in use by "
                                                 f"pid {pid} "), r.stderr
  assert not (tmp_path / "data").exists()              # no phantom data generated


def test_a_stale_workdir_lock_is_taken_over_and_a_run_releases_its_lock(tmp_path, caplog):
  import logging
  from ctjax import fileio
  workdir = tmp_path / "run"
  workdir.mkdir()
  rec = fileio._this_process("--workdir")
  rec["pid"], rec["proc_start"] = 2 ** 22 + 1, None   # above pid_max: never running
  (workdir / loop.WORKDIR_LOCK).write_text(json.dumps(rec))
  config = stand_ins.tiny_config(**{"train.max_steps": 1, "checkpoint.every_steps": -1,
                                    "evals.val.every_steps": -1, "checkpoint.best_metric": ""})
  with caplog.at_level(logging.WARNING, logger="ctjax.fileio"):
    final = loop.train_and_evaluate(config, workdir, task=stand_ins.TinyTask(),
                                    data=stand_ins.MemoryData())
  assert final["step"] == 1
  assert f"taking over the lock of pid {rec['pid']}" in caplog.text
  assert not (workdir / loop.WORKDIR_LOCK).exists()


LOCK_WORKER = """
import os, pathlib, sys
os.environ["JAX_PLATFORMS"] = "cpu"
from ctjax.errors import LockedError
from ctjax.train import loop, parallel
parallel.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
# The outcome goes to a file: Gloo's C++ writes to stdout can land inside a printed line.
result = pathlib.Path(sys.argv[4])
try:
  lock = loop.lock_workdir(pathlib.Path(sys.argv[3]))
except LockedError as e:
  result.write_text(f"refused {e}")
else:
  result.write_text(f"locked {type(lock).__name__}")
  parallel.barrier("checked")
  lock.__exit__(None, None, None)
"""


def test_every_process_of_a_run_gets_the_refusal_of_process_0(held_workdir, tmp_path):
  """2 processes (jax.distributed on localhost): process 0 alone takes the lock; on a held
  workdir both end with the line that names the holder; on a free one only process 0 holds."""
  import socket
  import subprocess
  import sys
  workdir, pid = held_workdir

  def run(wd):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTJAX_")}
    results = [tmp_path / f"{wd.name}_{i}.txt" for i in range(2)]
    for r in results:
      r.unlink(missing_ok=True)
    procs = [subprocess.Popen([sys.executable, "-c", LOCK_WORKER, address, str(i), str(wd),
                               str(results[i])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for i in range(2)]
    done = [p.communicate(timeout=120) for p in procs]
    assert all(r.is_file() for r in results), [(p.returncode, err[-800:])
                                               for p, (_, err) in zip(procs, done)]
    return [r.read_text() for r in results]

  import os
  for i, line in enumerate(run(workdir)):
    assert line.startswith("refused"), line
    assert f"--workdir is in use by pid {pid} " in line
    assert (f"process {i} of 2: " in line) == (i == 1)
  free = tmp_path / "free"
  free.mkdir()
  assert run(free) == ["locked FileLock", "locked nullcontext"]
  assert not (free / loop.WORKDIR_LOCK).exists()
