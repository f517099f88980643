"""ctjax.tables.departures: docs/departures.md is generated from the configs and covers every
field where `--preset cpu` differs from `--preset paper`; each named field and switch exists."""

import pathlib
import re

import pytest

from ctjax.configs.common import load_config_file
from ctjax.tables import departures

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
REGENERATE = "python -m ctjax.tables departures --docs docs"


def test_docs_departures_is_the_generated_document():
  want = departures.markdown()
  got = (ROOT / "docs" / "departures.md").read_text()
  assert got == want, f"docs/departures.md is stale; regenerate it: {REGENERATE}"


def test_every_field_that_differs_from_the_paper_preset_has_an_entry():
  assert departures.uncovered() == []
  # The check bites: a cpu-only change of a field no entry names is reported.
  pair = departures.preset_pairs()[0]
  paper = load_config_file(CONFIGS / pair.paper[0], pair.paper[1] or None)
  cpu = load_config_file(CONFIGS / pair.cpu[0], pair.cpu[1] or None)
  cpu.model.dropout_rate = 0.3                   # V.A.3: 0.5 in both presets
  diff = departures.differences(paper, cpu)
  assert ("model.dropout_rate", 0.5, 0.3) in diff
  assert not departures.covering("model.dropout_rate", departures.DRCT2)
  assert departures.covering("data.synth.seed", departures.DRCT2)[0].key == "phantom_data"
  assert not departures.covering("data.input_norm", departures.DRCT2)   # a blend entry


def test_the_issues_departures_are_all_there():
  keys = {d.key for d in departures.DEPARTURES}
  assert {"fold_protocol_drct", "fold_protocol_blend", "feature_attention", "pos_weight",
          "schedule_drct", "batch_rsna", "aps_backbone", "input_norm", "centre_loss",
          "det_normalize", "table3_loss", "lr_blend"} <= keys
  assert len(keys) == len(departures.DEPARTURES)


def _all_fields():
  fields = set()
  for pair in departures.preset_pairs():
    for spec in (pair.paper, pair.cpu):
      fields |= set(departures.fields_of(load_config_file(CONFIGS / spec[0], spec[1] or None)))
  return fields


def test_named_fields_and_switches_exist():
  fields = _all_fields()
  import fnmatch
  for d in departures.DEPARTURES:
    for pattern in d.fields:
      assert any(fnmatch.fnmatchcase(f, pattern) for f in fields), (d.key, pattern)
    assert d.switch or d.no_switch, d.key
    for dotted in re.findall(r"--config\.([\w.]+)=", d.switch):
      assert dotted in fields, (d.key, dotted)


@pytest.mark.parametrize("key,override,field,value", [
    ("input_norm", "data.input_norm", "data.input_norm", "unit"),
    ("centre_loss", "loss.centre_loss", "loss.centre_loss", "log"),
    ("det_normalize", "loss.det_normalize", "loss.det_normalize", "input_pixels"),
    ("fold_protocol_blend", "data.fold_protocol", "data.fold_protocol", "k_minus_1"),
])
def test_blend_switches_give_a_valid_config(key, override, field, value):
  from ctjax.train.tasks.blend import TASK
  (d,) = [d for d in departures.DEPARTURES if d.key == key]
  assert f"--config.{override}={value}" in d.switch
  c = load_config_file(CONFIGS / "blend_phantom.py")
  with c.unlocked():
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  TASK.validate_config(c)


def test_each_preset_splits_by_its_papers_protocol(tmp_path):
  """--preset paper: RSNA by the first-place KFold, CQ500 and blend on the other k − 1 folds;
  --preset cpu: the protocol its figures were measured with."""
  from ctjax.tables import blend, drct2
  from ctjax.tables.grid import Context, build_config
  want = {"paper": {"rsna": "rsna1", "cq500": "k_minus_1", "blend": "k_minus_1"},
          "cpu": {"rsna": "val_next_fold", "cq500": "val_next_fold", "blend": "val_next_fold"}}
  for preset, protocols in want.items():
    ctx = Context(tmp_path, preset)
    for name in ("rsna", "cq500"):
      ds = drct2.dataset(ctx, name)
      for variant in ("drct2", "drct1", "drct1_bce", "bce"):
        cfg = build_config(drct2.variant_cell(ctx, ds, variant, 1), ctx)
        assert cfg.data.fold_protocol == protocols[name], (preset, name, variant)
      assert cfg.data.stratify == (preset == "paper" and name == "cq500")
    cfg = build_config(blend.cell(ctx, "wce_at_skd", "resnet50", 1), ctx)
    assert cfg.data.fold_protocol == protocols["blend"]
