"""ctjax.inference.model_card: the card of a run says what the run's files say — its model, data
(size and fingerprint of the prepared cache), test figures with the CIs `ctjax.evaluate` wrote,
thresholds, intended use, limitations and the data set's terms — and the train, evaluate and
export commands write it."""

import hashlib
import json
import pathlib

import pytest

from ctjax.commands import evaluate as evaluate_cli
from ctjax.commands import export as export_cli
from ctjax.inference import model_card
from tests.support.run_folders import write_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """`configs/drct2_phantom.py:runlocal` saved as training leaves it (random weights), its
  phantom data prepared, and a best.json / final_metrics.json as the loop writes them."""
  from configs import drct2_phantom
  from ctjax.data import cache
  tmp = tmp_path_factory.mktemp("card")
  c = drct2_phantom.get_config("runlocal")
  c.data.root = str(tmp / "data")
  c.data.synth.num_scans = 12
  c.data.synth.size = 64
  c.log.progress_bar = False
  write_run(tmp / "run", c, seed=2)
  cache.ensure_cache(c, str(tmp / "run"), progress=False)
  best = tmp / "run" / "checkpoints" / "best"
  best.mkdir(parents=True, exist_ok=True)
  (best / "best.json").write_text(json.dumps({"metric": "val/macro_f1", "value": 0.25,
                                              "step": 3}))
  (tmp / "run" / "final_metrics.json").write_text(json.dumps({
      "step": 3, "wall_seconds": 81.5, "metrics": {},
      "reports": {"test": {"per_class": {"any": {"f1": 0.5, "auc": 0.75, "support": 2,
                                                 "precision": 0.4, "recall": 0.6,
                                                 "specificity": 0.9}},
                           "macro_f1": 0.41, "macro_auc": 0.62, "num_examples": 3}}}))
  return tmp / "run"


def test_card_of_a_workdir_says_what_its_files_say(run_dir):
  card = model_card.build_card(run_dir)
  m, d, e = card["model"], card["training_data"], card["evaluation"]
  assert m["name"] == "DrCT2 (vgg16 backbone)" and m["checkpoint_step"] == 3
  assert m["checkpoint"] == "the best checkpoint by val/macro_f1 = 0.2500 (validation split)"
  # Training data: the prepared cache's size and a hash of its source record.
  manifest = next(p for p in pathlib.Path(d["root"]).rglob("manifest.json")
                  if p.parent.name.startswith("phantom_"))
  cached = json.loads(manifest.read_text())
  assert (d["scans"], d["slices"]) == (cached["num_scans"], cached["num_slices"]) == (12, d["slices"])
  assert d["fingerprint"] == hashlib.sha256(json.dumps(cached["source"], sort_keys=True)
                                            .encode()).hexdigest()[:16]
  assert sum(d["split_scans"].values()) == 12 and d["synthetic"] is True
  # No evaluate report yet: the test figures of the final state, without CIs, and why.
  assert e["source"].startswith("final_metrics.json") and e["step"] == 3
  assert {r["metric"]: r["value"] for r in e["headline"]} == {"macro_f1": 0.41,
                                                              "macro_auc": 0.62}
  assert all(r["ci95"] is None for r in e["headline"])
  assert e["per_class"][0]["metrics"]["f1"]["value"] == 0.5
  assert card["thresholds"]["values"] == dict.fromkeys(card["label_classes"], 0.5)
  assert "fixed before training" in card["thresholds"]["how_chosen"]
  assert "Not a medical device" in card["intended_use"]
  assert any("synthetic phantoms" in x for x in card["limitations"])
  assert any("random" in x for x in card["limitations"])           # the runlocal backbone
  assert card["licence"]["code"] == "Apache-2.0" and "phantoms" in card["licence"]["weights"]
  md = model_card.render_markdown(card)
  assert md.startswith("---\nlicense: apache-2.0\n")
  for s in ("## Model details", "## Uses", "### Out-of-scope use",
            "## Bias, risks, and limitations", "## How to get started with the model",
            "## Training details", "### Training data", "## Evaluation", "### Thresholds",
            "## Licence", "## Citation", "| macro_f1 | 0.4100 |",
            f"`{d['fingerprint']}`", "Research use only — not a medical device"):
    assert s in md, s


@pytest.mark.parametrize("layout,terms", [
    ("rsna", "non-commercial research under RSNA's terms"), ("cq500", "CC BY-NC-SA 4.0"),
    ("folder", "a data set of your own")])
def test_the_data_set_terms_follow_the_layout(run_dir, layout, terms):
  from ctjax.train.checkpoint import load_config
  config = load_config(run_dir)
  config.data.layout = layout
  card = model_card.build_card(run_dir, config=config)
  assert terms in card["licence"]["weights"] and "check the data set's terms" in \
      card["licence"]["weights"]
  assert card["training_data"]["prepared"] is False          # not that data set's cache


def test_evaluate_json_refreshes_the_card_with_cis(run_dir, capsys):
  out = run_dir / "eval_test.json"
  assert evaluate_cli.main(["--workdir", str(run_dir), "--split", "test", "--json", str(out),
                            "--n_boot", "200"]) == 0
  assert f"model card: {run_dir / 'MODEL_CARD.md'}" in capsys.readouterr().out
  report = json.loads(out.read_text())
  card = model_card.build_card(run_dir)
  e = card["evaluation"]
  assert e["source"].startswith("python -m ctjax.evaluate --split test --json (eval_test.json)")
  assert "200 bootstrap resamples" in e["source"] and e["step"] == report["step"]
  rows = {r["metric"]: r for r in e["headline"]}
  for key, ci in report["ci95"].items():
    assert rows[key]["value"] == report[key]
    if ci["lo"] is None:   # withheld by the bootstrap (random weights, a handful of scans)
      assert rows[key]["ci95"] is None and rows[key]["ci_status"] == ci["status"] != "ok"
    else:
      assert rows[key]["ci95"] == [ci["lo"], ci["hi"]] and "ci_status" not in rows[key]
  md = (run_dir / "MODEL_CARD.md").read_text()
  f1 = report["ci95"]["macro_f1"]
  interval = (f"[{f1['status']}]" if f1["lo"] is None else f"[{f1['lo']:.4f}, {f1['hi']:.4f}]")
  assert f"| macro_f1 | {report['macro_f1']:.4f} {interval} |" in md


def test_export_writes_the_card_into_the_folder_and_manifest(run_dir, tmp_path, capsys):
  from ctjax.inference import serving
  assert export_cli.main(["--workdir", str(run_dir), "--out", str(tmp_path / "model"),
                          "--platforms", "cpu"]) == 0
  assert "model card" in capsys.readouterr().out
  model = serving.load(tmp_path / "model")
  card = model.manifest["model_card"]
  assert card["model"]["checkpoint_step"] == model.manifest["checkpoint_step"] == 3
  assert card["network_data_format"]["inputs"]["hu"]["shape"] == model.manifest["input"]["shape"]
  assert card["evaluation"]["source"].startswith("python -m ctjax.evaluate")
  md = (tmp_path / "model" / "MODEL_CARD.md").read_text()
  assert "## Technical specifications" in md and 'serving.load("model")' in md
  assert model.manifest["sha256"]["model_card"] == hashlib.sha256(md.encode()).hexdigest()


def test_card_rows_carry_an_interval_or_the_reason_it_was_withheld():
  report = {"macro_f1": 0.8, "macro_auc": 0.9,
            "ci95": {"macro_f1": {"value": 0.8, "lo": 0.7, "hi": 0.9, "status": "ok"},
                     "macro_auc": {"value": 0.9, "lo": None, "hi": None,
                                   "status": "too few positives"}}}
  head, _ = model_card._metric_rows(report, [], "drct")
  rows = {r["metric"]: r for r in head}
  assert rows["macro_f1"]["ci95"] == [0.7, 0.9] and "ci_status" not in rows["macro_f1"]
  assert rows["macro_auc"]["ci95"] is None
  assert rows["macro_auc"]["ci_status"] == "too few positives"
  assert model_card._ci(rows["macro_f1"]) == "0.8000 [0.7000, 0.9000]"
  assert model_card._ci(rows["macro_auc"]) == "0.9000 [too few positives]"
