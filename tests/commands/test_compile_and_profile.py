"""The persistent compilation cache of every command (ctjax/train/compilation.py) and `--profile`
traces (ctjax/train/profiling.py), through `python -m ctjax.train` on the tiny stand-in task in
subprocesses (tests/commands/train_worker.py)."""

from __future__ import annotations

import glob
import gzip
import json
import os
import pathlib
import subprocess
import sys

import pytest

from ctjax.errors import ConfigError, StorageError
from ctjax.train import compilation, profiling

WORKER = str(pathlib.Path(__file__).with_name("train_worker.py"))


def _train(workdir, *flags, env=None):
  r = subprocess.run([sys.executable, WORKER, "--workdir", str(workdir), *flags],
                     env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                     timeout=600)
  return r


def _metrics_steps(workdir) -> list[int]:
  lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
  return sorted({json.loads(ln)["step"] for ln in lines if "train/loss" in ln})


def test_resolve_the_cache_folder():
  env = {"XDG_CACHE_HOME": "/x"}
  assert compilation.resolve("", env) == pathlib.Path("/x/ctjax/jax")
  assert compilation.resolve("", {"HOME": "/h"}).parts[-3:] == (".cache", "ctjax", "jax")
  assert compilation.resolve("", dict(env, **{compilation.ENV: "/e"})) == pathlib.Path("/e")
  assert compilation.resolve("/c", dict(env, **{compilation.ENV: "/e"})) == pathlib.Path("/c")
  assert compilation.resolve("none", env) is None
  assert compilation.resolve("", {compilation.ENV: "none"}) is None


def test_an_unwritable_cache_folder_is_one_typed_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(StorageError, match="file.*compilation cache folder"):
    compilation.configure(str(tmp_path / "file"))


def test_the_second_start_loads_the_train_step_from_the_cache(tmp_path):
  cache = tmp_path / "cache"
  flags = (f"--config.compile.cache_dir={cache}", "--config.compile.min_compile_secs=0")
  first = _train(tmp_path / "a", *flags)
  assert first.returncode == 0, first.stderr[-2000:]
  line = next(ln for ln in first.stdout.splitlines() if ln.startswith("compilation: "))
  assert "train_step compiled in" in line and f"({cache})" in line, line
  assert any(cache.iterdir())
  second = _train(tmp_path / "b", *flags)
  assert second.returncode == 0, second.stderr[-2000:]
  line = next(ln for ln in second.stdout.splitlines() if ln.startswith("compilation: "))
  assert "train_step loaded in" in line and "from the persistent compilation cache" in line
  # The train step's own saving can round to 0.0 s on a tiny program under load (JAX reports
  # its compile time minus the retrieval); all programs together save measurably.
  step_saved = float(line.split("compile saved")[0].rsplit("(", 1)[1].split(" s")[0])
  total_saved = float(line.rsplit(", ", 1)[1].split(" s saved")[0])
  assert step_saved >= 0 and total_saved > 0, line
  assert _metrics_steps(tmp_path / "a") == _metrics_steps(tmp_path / "b") == list(range(1, 7))


def test_none_turns_the_cache_off(tmp_path):
  r = _train(tmp_path / "w", "--config.compile.cache_dir=none",
             env={compilation.ENV: str(tmp_path / "default"), "XDG_CACHE_HOME": str(tmp_path)})
  assert r.returncode == 0, r.stderr[-2000:]
  assert "no persistent compilation cache" in r.stdout
  assert not (tmp_path / "default").exists() and not (tmp_path / "ctjax").exists()


def _trace_steps(folder) -> tuple[list[str], list[int]]:
  files = glob.glob(str(folder / "plugins" / "profile" / "*" / "*"))
  traces = [f for f in files if f.endswith(".trace.json.gz")]
  events = json.load(gzip.open(traces[0]))["traceEvents"] if traces else []
  steps = sorted({int(e["args"]["step_num"]) for e in events
                  if e.get("name") == "train" and "step_num" in e.get("args", {})})
  return files, steps


def test_profile_traces_the_steady_steps_only(tmp_path):
  r = _train(tmp_path / "w", "--profile", str(tmp_path / "prof"), "--profile_steps", "2")
  assert r.returncode == 0, r.stderr[-2000:]
  files, steps = _trace_steps(tmp_path / "prof")
  assert any(f.endswith(".xplane.pb") for f in files), files
  assert steps == [2, 3]                         # not the first, compiling step
  assert _metrics_steps(tmp_path / "w") == list(range(1, 7))   # the loop's steps unchanged


@pytest.mark.parametrize("bad", ["file", "readonly"])
def test_a_bad_profile_folder_is_one_line(tmp_path, bad):
  target = tmp_path / "prof"
  if bad == "file":
    target.write_text("")
  else:
    if os.geteuid() == 0:
      pytest.skip("root writes into read-only folders")
    target.mkdir()
    target.chmod(0o500)
  r = _train(tmp_path / "w", "--profile", str(target))
  assert r.returncode == 1
  assert r.stderr.strip().splitlines() == [r.stderr.strip()]   # one line
  assert r.stderr.startswith(f"error: {target}: --profile folder") and "Traceback" not in r.stderr


def test_step_trace_counts_the_loops_steps(tmp_path):
  import jax
  import jax.numpy as jnp
  f = jax.jit(lambda x: x + 1)
  trace = profiling.StepTrace(tmp_path / "p", count=2, skip=1, name="predict")
  x = jnp.zeros(3)
  for step in range(10, 15):
    with trace.step(step):
      x = f(x)
    trace.done(x)
  trace.close()
  assert trace.traced == [11, 12] and not trace._open
  assert profiling.StepTrace(None).logdir is None
  with pytest.raises(ConfigError):
    profiling.StepTrace(tmp_path / "q", count=0)
