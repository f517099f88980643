"""ctjax.inference.serving: a model folder that breaks its contract fails with one clear line."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from ctjax.inference import model_export
from ctjax.inference import runs
from ctjax.inference import serving


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A tiny DrCT2 exported from in-memory weights (no checkpoint: tracing only)."""
  from ctjax.configs.drct import drct_config, runlocal_overrides
  from ctjax.models import pretrained
  from ctjax.train.tasks import get_task
  c = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  c.data.num_slices, c.data.image_size = 4, 32
  c.model.primary_size, c.model.aps_size, c.model.mkey = 32, 32, 2
  task = get_task("drct")
  model = task.build_model(c)
  from ctjax.train.tasks import drct
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(c))
  run = runs.make_run(c, variables, task=task, model=model, step=1)
  out = tmp_path_factory.mktemp("serving") / "model"
  model_export.export_run(run, out, platforms=("cpu",))
  return out


def _copy(model_dir, tmp_path):
  dst = tmp_path / "m"
  shutil.copytree(model_dir, dst)
  return dst


def test_input_contract_is_checked_before_running(model_dir):
  model = serving.load(model_dir)
  assert model.input_shape == ("b", 4, 32, 32)
  assert model.labels[0] == "any" and len(model.thresholds) == len(model.labels)
  with pytest.raises(serving.ServingError, match="int16"):
    model(np.zeros((2, 4, 32, 32), np.float32))
  with pytest.raises(serving.ServingError, match=r"\(2, 5, 32, 32\).*\('b', 4, 32, 32\)"):
    model(np.zeros((2, 5, 32, 32), np.int16))
  with pytest.raises(serving.ServingError, match="shape"):
    model(np.zeros((4, 32, 32), np.int16))
  with pytest.raises(serving.ServingError, match="empty batch"):
    model(np.zeros((0, 4, 32, 32), np.int16))


def test_broken_model_folders_fail_with_one_line(model_dir, tmp_path):
  with pytest.raises(serving.ServingError, match="no manifest.json"):
    serving.load(tmp_path)
  m = _copy(model_dir, tmp_path)
  manifest = json.loads((m / "manifest.json").read_text())
  (m / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
  with pytest.raises(serving.ServingError, match="version 99"):
    serving.load(m)
  (m / "manifest.json").write_text("{not json")
  with pytest.raises(serving.ServingError, match="not valid JSON"):
    serving.load(m)
  (m / "manifest.json").write_text(json.dumps(manifest))
  (m / "model.jaxexport").write_bytes(b"garbage")
  with pytest.raises(serving.ServingError, match="cannot deserialize"):
    serving.load(m)
  (m / "model.jaxexport").unlink()
  with pytest.raises(serving.ServingError, match="missing"):
    serving.load(m)


def test_weights_must_match_the_program(model_dir, tmp_path):
  from safetensors.numpy import load_file, save_file
  m = _copy(model_dir, tmp_path)
  flat = load_file(str(m / "weights.safetensors"))
  key = sorted(flat)[0]
  save_file({k: v for k, v in flat.items() if k != key}, str(m / "weights.safetensors"))
  with pytest.raises(serving.ServingError, match="missing"):
    serving.load(m)
  flat[key] = np.zeros(np.shape(flat[key]) + (2,), flat[key].dtype)
  save_file(flat, str(m / "weights.safetensors"))
  with pytest.raises(serving.ServingError, match="the program wants"):
    serving.load(m)


def test_program_for_another_platform_is_refused(model_dir, tmp_path):
  import jax
  m = _copy(model_dir, tmp_path)
  manifest = json.loads((m / "manifest.json").read_text())
  exported = jax.export.deserialize(bytearray((m / "model.jaxexport").read_bytes()))
  assert list(exported.platforms) == manifest["platforms"] == ["cpu"]
  other = dataclasses.replace(exported, platforms=("tpu",))
  (m / "model.jaxexport").write_bytes(other.serialize())
  with pytest.raises(serving.ServingError, match="exported for"):
    serving.load(m)
