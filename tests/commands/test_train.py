"""`python -m ctjax.train`: what the command does after the training loop (the loop itself:
tests/train/test_loop.py) — every finished workdir gets its model card."""

import json
import pathlib

from ctjax.commands import train as train_cli

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_finished_run_gets_its_model_card(tmp_path, monkeypatch, capsys):
  """The loop replaced by one that leaves a run folder as training does (config.json, a
  checkpoint, final_metrics.json): the command then writes MODEL_CARD.md citing them."""
  from ctjax.inference import highlight_scale
  from ctjax.train import loop
  from tests.support.run_folders import write_run

  def fake_loop(config, workdir):
    write_run(pathlib.Path(workdir), config)
    (pathlib.Path(workdir) / "final_metrics.json").write_text(json.dumps({
        "step": 3, "wall_seconds": 12.0, "metrics": {},
        "reports": {"test": {"macro_f1": 0.375, "num_examples": 3}}}))
    return {"test/macro_f1": 0.375}

  monkeypatch.setattr(loop, "train_and_evaluate", fake_loop)
  monkeypatch.setattr(highlight_scale, "fit_after_training", lambda workdir: None)
  wd = tmp_path / "run"
  assert train_cli.main(["--config", str(ROOT / "configs" / "drct2_phantom.py") + ":runlocal",
                         "--workdir", str(wd),
                         f"--config.data.root={tmp_path / 'data'}"]) == 0
  assert f"model card: {wd / 'MODEL_CARD.md'}" in capsys.readouterr().out
  md = (wd / "MODEL_CARD.md").read_text()
  assert "# Model card: DrCT2 (vgg16 backbone), step 3" in md
  assert "| macro_f1 | 0.3750 |" in md and "final_metrics.json" in md
  assert "Research use only — not a medical device" in md
