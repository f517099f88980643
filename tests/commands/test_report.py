"""`python -m ctjax.report` (ctjax/report.py): exit codes, messages, single and batch modes.

The model here is a numpy stand-in (the model glue is tested with a real DrCT2 in
tests/eval/test_report.py); the slow test runs the whole command on an Orbax checkpoint.
"""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ctjax.inference import runs
from ctjax.inference import scan_reports
from ctjax.commands import report as cli

from tests.support import ctdicom_helpers  # noqa: E402  (the tests' DICOM writer)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _stand_in_predict(run, batch):
  """Attention peaks at the brightest sampled slice; probabilities fixed."""
  hu = batch["hu"].astype(np.float32)
  m = hu.shape[1]
  score = hu.mean(axis=(2, 3))
  att = np.exp(score - score.max(axis=1, keepdims=True))
  att /= att.sum(axis=1, keepdims=True)
  return {"probs": np.tile(np.linspace(0.1, 0.9, len(run.config.data.labels)), (1, 1)),
          "slice_attention": att, "highlight": np.ones((1, m, 4, 4), np.float32)}


@pytest.fixture
def stand_in(monkeypatch):
  from ctjax.configs.drct import drct_config, runlocal_overrides
  config = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  config.data.require_head = False     # the scans here are no heads (see the head-check test)
  run = runs.Run(pathlib.Path("runs/x"), config, None, None, None, 11, None, None)
  monkeypatch.setattr(runs, "load_run", lambda workdir, step=None, **kw: run)
  monkeypatch.setattr(runs, "predict_batch", _stand_in_predict)
  return run


def _scan(folder, num=10, uid="1.2.3.77"):
  hu = np.stack([np.full((24, 24), 10.0 * k) for k in range(num)])   # slice k brighter with k
  ctdicom_helpers.write_series(folder, hu, series_uid=uid)


def test_single_scan(stand_in, tmp_path, capsys):
  _scan(tmp_path / "scan")
  rc = cli.main(["--workdir", "runs/x", "--scan", str(tmp_path / "scan"),
                 "--out", str(tmp_path / "r.html")])
  out = capsys.readouterr().out
  assert rc == 0
  assert "reported in" in out and " s " in out
  page = (tmp_path / "r.html").read_text()
  # The brightest sampled slices (the last ones) are the key slices, most attended first.
  assert page.index('data-slice="7"', page.index("key-slices")) < page.index(
      'data-slice="6"', page.index("key-slices"))
  assert "1.2.3.77" in page


def test_bad_folder_is_one_line_and_nonzero(stand_in, tmp_path, capsys):
  bad = tmp_path / "photos"
  bad.mkdir()
  (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
  rc = cli.main(["--workdir", "runs/x", "--scan", str(bad), "--out", str(tmp_path / "r.html")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1
  assert len(err) == 1 and str(bad) in err[0] and "not a usable CT series" in err[0]
  assert not (tmp_path / "r.html").exists()


def test_batch_mode(stand_in, tmp_path, capsys):
  _scan(tmp_path / "scans" / "s1", uid="1.2.3.1")
  _scan(tmp_path / "scans" / "s2", num=7, uid="1.2.3.2")
  rc = cli.main(["--workdir", "runs/x", "--scans", str(tmp_path / "scans"),
                 "--out", str(tmp_path / "out")])
  assert rc == 0
  assert "2 report(s), 0 failed" in capsys.readouterr().out
  assert len(list((tmp_path / "out").glob("*.html"))) == 3   # 2 reports + index
  (tmp_path / "scans" / "empty_ish").mkdir()
  (tmp_path / "scans" / "empty_ish" / "x.txt").write_text("no")
  rc = cli.main(["--workdir", "runs/x", "--scans", str(tmp_path / "scans"),
                 "--out", str(tmp_path / "out2")])
  cap = capsys.readouterr()
  assert rc == 1 and "empty_ish" in cap.err and "2 report(s), 1 failed" in cap.out


def test_missing_workdir_is_one_line(tmp_path):
  r = subprocess.run([sys.executable, "-m", "ctjax.report", "--workdir", str(tmp_path / "nope"),
                      "--scan", str(tmp_path), "--out", str(tmp_path / "r.html")],
                     capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "config.json" in lines[0], r.stderr


def test_end_to_end_on_an_orbax_checkpoint(tmp_path, monkeypatch):
  """A random-initialised DrCT2 saved by the trainer's Checkpointer, reported by the command."""
  import jax
  from ctjax.models import pretrained
  from ctjax.configs.drct import drct_config, runlocal_overrides
  from ctjax.train import optim
  from ctjax.train import state as state_lib
  from ctjax.train.checkpoint import Checkpointer
  from ctjax.train.tasks import get_task
  c = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  c.checkpoint.async_save = False
  task = get_task("drct")
  model = task.build_model(c)
  # Numpy weights of init's shapes: the jitted Flax init of the VGG16 compiles for ~10 s.
  from ctjax.train.tasks import drct
  monkeypatch.setattr(task, "init_variables", lambda model, config, rng: dict(
      pretrained.random_variables(drct.init_model(model), drct.init_input(config))))
  tx, _ = optim.make_optimizer(c, 1, 1, lambda p: task.param_groups(c, p))
  state = state_lib.create_state(task, model, c, jax.random.PRNGKey(0), tx)
  wd = tmp_path / "run"
  ck = Checkpointer(wd, c)
  ck.save(3, state, None, force=True)
  ck.close()
  (wd / "config.json").write_text(c.to_json_best_effort(indent=2))
  _scan(tmp_path / "scan", num=12)
  r = subprocess.run([sys.executable, "-m", "ctjax.report", "--workdir", str(wd), "--scan",
                      str(tmp_path / "scan"), "--out", str(tmp_path / "r.html"),
                      "--norequire_head"],
                     capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert r.returncode == 0, r.stderr
  assert "(step 3)" in r.stdout and "reported in" in r.stdout
  page = (tmp_path / "r.html").read_text()
  assert page.count('class="key-slice"') == 5 and "1.2.3.77" in page


def test_old_config_json_is_one_line(tmp_path, capsys):
  """A run saved before a config field existed: one line naming the workdir and the field."""
  import json
  from configs import drct2_rsna
  config = json.loads(drct2_rsna.get_config("runlocal").to_json_best_effort())
  del config["model"]["feature_norm"]
  (tmp_path / "config.json").write_text(json.dumps(config))
  rc = cli.main(["--workdir", str(tmp_path), "--scan", str(tmp_path),
                 "--out", str(tmp_path / "r.html")])
  err = capsys.readouterr().err.strip()
  assert rc == 1 and len(err.splitlines()) == 1, err
  assert str(tmp_path / "config.json") in err and "config.model.feature_norm" in err


def test_non_head_series_is_refused_in_one_line(stand_in, tmp_path, capsys):
  """The run's config.data.require_head: `--scan` of a series that is no head CT exits 1 with
  one line; batch mode reports the rest and lists it as a failure on the index page."""
  from tests.inference.test_scan_reports import write_head
  stand_in.config.data.require_head = True
  _scan(tmp_path / "scans" / "flat")                     # constant slices: no skull
  write_head(tmp_path / "scans" / "head")
  rc = cli.main(["--workdir", "runs/x", "--scan", str(tmp_path / "scans" / "flat"),
                 "--out", str(tmp_path / "r.html")])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1 and not (tmp_path / "r.html").exists()
  assert err[0].startswith(f"error: {tmp_path / 'scans' / 'flat'}: not a head CT (")
  rc = cli.main(["--workdir", "runs/x", "--scans", str(tmp_path / "scans"),
                 "--out", str(tmp_path / "out")])
  cap = capsys.readouterr()
  assert rc == 1 and "1 report(s), 1 failed" in cap.out and "not a head CT" in cap.err
  index = (tmp_path / "out" / "index.html").read_text()
  assert "not reported: " in index and "not a head CT" in index
  assert cli.main(["--workdir", "runs/x", "--scan", str(tmp_path / "scans" / "flat"),
                   "--out", str(tmp_path / "r.html"), "--norequire_head"]) == 0
  assert "not_head" in (tmp_path / "r.html").read_text()
