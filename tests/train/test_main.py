"""`python -m ctjax.train`: bad config values and missing data paths fail at start, one line."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "ctjax.train", "--config",
                         "configs/pretrain_phantom.py:runlocal", "--workdir",
                         str(tmp_path / "w"), *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)


@pytest.mark.parametrize("args, needle, code", [
    (["--config.train.batch_size=0"], "config.train.batch_size=0 must be > 0", 1),
    (["--config.data.layout=rsna", "--config.data.root=/no/such/rsna"], "/no/such/rsna", 1),
    (["--config.train.no_such_field=1"], "unknown config field 'no_such_field'", 2),
])
def test_cli_bad_config_one_line(tmp_path, args, needle, code):
  proc = _run(args, tmp_path)
  assert proc.returncode == code, proc.stderr[-2000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
  assert not (tmp_path / "w" / "metrics.jsonl").exists()
