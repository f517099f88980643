"""ctjax.train.checkpoint: a workdir whose config.json predates a config field fails with one
ConfigError line naming the workdir and the field (not ml_collections' bare AttributeError);
config.json files of the earlier field names load under the current ones."""

import json

import pytest

from configs import drct2_rsna
from ctjax.errors import ConfigError
from ctjax.train import checkpoint


def old_workdir(tmp_path, *dotted):
  """A workdir holding only config.json: drct2_rsna runlocal with `dotted` fields deleted."""
  config = json.loads(drct2_rsna.get_config("runlocal").to_json_best_effort())
  for field in dotted:
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
      node = node[p]
    del node[leaf]
  workdir = tmp_path / "old_run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(config))
  return workdir


def test_load_run_names_missing_field(tmp_path):
  from ctjax import inference
  workdir = old_workdir(tmp_path, "model.feature_norm")
  with pytest.raises(ConfigError) as info:
    inference.load_run(workdir)
  text = str(info.value)
  assert "\n" not in text
  assert str(workdir / "config.json") in text and "config.model.feature_norm" in text
  assert '"none"' in text   # drct2_rsna's current value, as a hint


def test_missing_field_error_only_for_config_fields(tmp_path):
  workdir = old_workdir(tmp_path, "model.feature_norm")
  assert checkpoint.missing_field_error(workdir, AttributeError("'NoneType' has no 'x'")) is None
  assert checkpoint.missing_field_error(workdir, KeyError("feature_norm")) is None
  import ml_collections
  c = ml_collections.ConfigDict({"model": {"feature_norms": 1}})
  with pytest.raises(AttributeError) as info:   # with ml_collections' "Did you mean" line
    c.model.feature_norm
  err = checkpoint.missing_field_error(workdir, info.value)
  assert isinstance(err, ConfigError) and "config.model.feature_norm" in str(err)
  # Unrelated errors pass through the context manager unchanged.
  with pytest.raises(AttributeError, match="has no 'x'"):
    with checkpoint.saved_config_errors(workdir):
      raise AttributeError("'NoneType' has no 'x'")
  with pytest.raises(ConfigError, match="config.model.feature_norm"):
    with checkpoint.saved_config_errors(workdir):
      c.model.feature_norm


def test_unknown_field_still_named(tmp_path):
  """A field no current config file has (renamed since): the bare name, still one line."""
  workdir = old_workdir(tmp_path)
  import ml_collections
  with pytest.raises(ConfigError, match=r"config field 'gone_field'"):
    with checkpoint.saved_config_errors(workdir):
      ml_collections.ConfigDict({"a": 1}).gone_field


def test_earlier_field_names_load_as_current(tmp_path):
  """A DrCT config.json written before the renames (variant, dropout, lr_primary/…,
  feature_cache, backbone_pretrain_config, the asset path) reads as today's config."""
  from configs import drct2_phantom
  current = json.loads(drct2_phantom.get_config().to_json_best_effort())
  old = json.loads(json.dumps(current))
  m, o = old["model"], old["optimizer"]
  m["variant"] = "drct2" if m.pop("aps") else "drct1"
  m["dropout"] = m.pop("dropout_rate")
  m["feature_cache"] = old.pop("features")["enabled"]
  m["backbone_pretrain_config"] = "configs/pretrain_phantom.py"
  m["backbone_weights"] = "ctjax/assets/vgg16_w0125_phantom.npz"
  lr = o.pop("lr")
  mults = o.pop("lr_mults")
  for group in ("primary", "aps", "fusion", "backbone"):
    o[f"lr_{group}"] = lr * mults[group]
  (tmp_path / "config.json").write_text(json.dumps(old))
  loaded = json.loads(checkpoint.load_config(tmp_path).to_json_best_effort())
  assert loaded["model"]["aps"] is True and loaded["model"]["dropout_rate"] == 0.5
  assert loaded["features"] == {"enabled": True}
  assert "backbone_pretrain_config" not in loaded["model"]
  assert loaded["model"]["backbone_weights"] == "asset:vgg16_w0125_phantom.npz"
  assert loaded["optimizer"]["lr"] == lr
  assert loaded["optimizer"]["lr_mults"] == pytest.approx(mults)
  for section in ("model", "data", "train", "loss"):
    assert loaded[section] == current[section], section
