"""`python -m ctjax.evaluate` on a workdir whose config.json predates a field: one line, exit 1."""

import json

from configs import drct2_rsna
from ctjax import evaluate


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
