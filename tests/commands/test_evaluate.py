"""`python -m ctjax.evaluate` on a workdir whose config.json predates a field: one line, exit 1."""

import json

from configs import drct2_rsna
from ctjax.commands import evaluate


def test_old_config_is_one_line_error(tmp_path, capsys):
  config = json.loads(drct2_rsna.get_config("runlocal").to_json_best_effort())
  del config["model"]["feature_norm"]   # as if saved before the field existed
  (tmp_path / "config.json").write_text(json.dumps(config))
  rc = evaluate.main(["--workdir", str(tmp_path)])
  err = capsys.readouterr().err.strip()
  assert rc == 1
  assert len(err.splitlines()) == 1 and err.startswith("error: ")
  assert str(tmp_path / "config.json") in err and "config.model.feature_norm" in err


def test_negative_resample_count_is_a_usage_error(tmp_path, capsys):
  rc = evaluate.main(["--workdir", str(tmp_path), "--n_boot", "-1"])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and err == "error: --n_boot=-1 must be >= 0"


# ----------------------------------------- a run folder is data: nothing in it is executed

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from ctjax.commands import report

from tests.support import ctdicom_helpers  # noqa: E402


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
  """A DrCT2 runlocal workdir (random weights saved by the trainer's Checkpointer) whose
  config.json names Python files: the dropped `model.backbone_pretrain_config`, the backbone
  weights, an unknown top-level field. Each file, if executed or imported, leaves a marker."""
  import jax
  import numpy as np
  from ctjax.configs.drct import drct_config, runlocal_overrides
  from ctjax.data import phantom
  from ctjax.models import pretrained
  from ctjax.train import optim
  from ctjax.train import state as state_lib
  from ctjax.train.checkpoint import Checkpointer
  from ctjax.train.tasks import get_task
  base = tmp_path_factory.mktemp("hostile")
  markers = base / "markers"
  scripts = {}
  for name in ("pretrain_config", "weights", "hook"):
    scripts[name] = base / f"{name}.py"
    scripts[name].write_text(f"import pathlib\npathlib.Path({str(markers)!r}).mkdir("
                             f"exist_ok=True)\n(pathlib.Path({str(markers)!r}) / {name!r})"
                             ".write_text('ran')\ndef get_config(arg=None):\n  return {}\n")
  c = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  c.checkpoint.async_save = False
  c.data.root = str(base / "data")
  phantom.write_dataset(c.data.root, layout="rsna", num_scans=6, seed=2, size=64,
                        num_workers=0, slice_range=(8, 10))
  task = get_task("drct")
  model = task.build_model(c)
  from ctjax.train.tasks import drct
  # Numpy weights of init's shapes: no 10 s Flax init.
  variables = dict(pretrained.random_variables(drct.init_model(model), drct.init_input(c)))
  tx, _ = optim.make_optimizer(c, 1, 1, lambda p: task.param_groups(c, p))
  state = state_lib.state_from_variables(task, c, variables, jax.random.PRNGKey(0), tx)
  wd = base / "run"
  ck = Checkpointer(wd, c)
  ck.save(3, state, None, force=True)
  ck.close()
  saved = json.loads(c.to_json_best_effort())
  saved["model"]["backbone_pretrain_config"] = str(scripts["pretrain_config"])
  saved["model"]["backbone_weights"] = str(scripts["weights"])
  saved["hook"] = str(scripts["hook"])
  (wd / "config.json").write_text(json.dumps(saved))
  scan = base / "scan"
  hu = np.stack([np.full((24, 24), 10.0 * k) for k in range(10)])
  ctdicom_helpers.write_series(scan, hu, series_uid="1.2.3.99")
  return wd, scan, markers


def test_evaluate_writes_no_cache_unless_told(hostile_run, tmp_path, capsys):
  """Evaluation reads the prepared cache and writes nothing: without one it stops in one line
  naming the command that prepares it; --prepare builds it."""
  wd, _, _ = hostile_run
  data = pathlib.Path(json.loads((wd / "config.json").read_text())["data"]["root"])
  assert evaluate.main(["--workdir", str(wd), "--split", "test"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "no prepared cache" in err and "ctjax.prepare" in err
  assert not (data / ".ctjax_cache").exists()
  assert evaluate.main(["--workdir", str(wd), "--split", "test", "--prepare"]) == 0
  assert (data / ".ctjax_cache").is_dir()


def test_evaluate_and_report_never_execute_the_run_folder(hostile_run, tmp_path, capsys):
  wd, scan, markers = hostile_run
  assert evaluate.main(["--workdir", str(wd), "--split", "test", "--prepare",
                        "--json", str(tmp_path / "r.json")]) == 0
  assert json.loads((tmp_path / "r.json").read_text())["step"] == 3
  assert report.main(["--workdir", str(wd), "--scan", str(scan),     # a 12 mm phantom: no head
                      "--out", str(tmp_path / "r.html"), "--norequire_head"]) == 0
  assert (tmp_path / "r.html").is_file()
  assert not markers.exists(), sorted(p.name for p in markers.iterdir())
