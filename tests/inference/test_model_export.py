"""ctjax.export / ctjax.inference.serving: the exported program gives the in-process model's outputs.

Runs (DrCT2, DrCT1, blend-sign) are written as `python -m ctjax.train` leaves them (config.json
+ an Orbax checkpoint) from random He-scaled weights, exported with the command, and served in
a fresh Python process that must not import the training code, the models or the configs.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ctjax.commands import export as export_cli
from ctjax.inference import runs
from tests.support.run_folders import write_run

ROOT = pathlib.Path(__file__).resolve().parents[2]
BATCH_SIZES = (1, 3)
# Modules the serving process must not load (the loader needs jax, numpy, safetensors only).
FORBIDDEN = ("ctjax.train", "ctjax.configs", "ctjax.models", "ctjax.data", "ctjax.commands",
             "ctjax.inference.runs", "ctjax.inference.scan_reports", "ctjax.inference.archive",
             "ctjax.inference.model_export", "flax", "ml_collections", "orbax", "grain", "optax")


def drct_config(aps: bool):
  from ctjax.configs.drct import drct_config as build, runlocal_overrides
  c = runlocal_overrides(build(dataset="phantom", variant="drct2" if aps else "drct1"))
  c.data.num_slices = 6
  c.data.image_size = 32
  c.model.primary_size = 32
  c.model.aps_size = 48
  c.model.mkey = 3
  return c


def blend_config():
  from ctjax.configs.blend import blend_config as build
  c = build(variant="wce_at", backbone="vgg16")
  c.data.image_size = 32
  c.model.backbone_width = 0.125
  c.model.det_hidden = 8
  c.train.batch_size = 4
  return c


def hu_inputs(shape, seed):
  rng = np.random.default_rng(seed)
  hu = rng.normal(30, 60, size=shape)
  hu[..., 4:12, 6:14] += 80            # a bright block on every slice
  return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


SERVE = """
import json, sys
import numpy as np
from ctjax.inference import serving
spec = json.loads(sys.argv[1])
for name, model_dir in spec["models"].items():
  model = serving.load(model_dir)
  with np.load(spec["inputs"][name]) as z:
    outs = {f"{b}/{k}": v for b in z.files for k, v in model(z[b]).items()}
  np.savez(spec["outputs"][name], **outs)
print(json.dumps(sorted(m for m in sys.modules
                        if m.split(".")[0] in ("ctjax", "flax", "ml_collections", "orbax",
                                               "grain", "optax"))))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """{name: (run, model_dir, inputs {batch size: hu})} for DrCT2, DrCT1 and blend, exported
  through `python -m ctjax.export`."""
  tmp = tmp_path_factory.mktemp("export")
  out = {}
  for i, (name, config) in enumerate((("drct2", drct_config(True)), ("drct1", drct_config(False)),
                                      ("blend", blend_config()))):
    write_run(tmp / name, config, seed=i)
    assert export_cli.main(["--workdir", str(tmp / name), "--out", str(tmp / f"{name}_model"),
                            "--platforms", "cpu,cuda"]) == 0
    run = runs.load_run(tmp / name)
    size = int(config.data.image_size)
    per = (config.data.num_slices, size, size) if config.task == "drct" else (size, size)
    inputs = {b: hu_inputs((b,) + per, seed=10 * i + b) for b in BATCH_SIZES}
    out[name] = (run, tmp / f"{name}_model", inputs)
  return tmp, out


@pytest.fixture(scope="module")
def served(exported):
  """Outputs of every exported model on its inputs, computed in a fresh Python process."""
  tmp, models = exported
  spec = {"models": {}, "inputs": {}, "outputs": {}}
  for name, (_, model_dir, inputs) in models.items():
    np.savez(tmp / f"{name}_in.npz", **{str(b): v for b, v in inputs.items()})
    spec["models"][name] = str(model_dir)
    spec["inputs"][name] = str(tmp / f"{name}_in.npz")
    spec["outputs"][name] = str(tmp / f"{name}_out.npz")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)   # one device: nothing of the test's mesh set-up
  r = subprocess.run([sys.executable, "-c", SERVE, json.dumps(spec)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  modules = json.loads(r.stdout.strip().splitlines()[-1])
  outputs = {}
  for name in models:
    with np.load(spec["outputs"][name]) as z:
      outputs[name] = {k: z[k] for k in z.files}
  return modules, outputs


def test_serving_process_loads_no_training_code(served):
  modules, _ = served
  assert "ctjax.inference.serving" in modules
  bad = [m for m in modules if m.startswith(FORBIDDEN)]
  assert not bad, bad
  assert set(modules) <= {"ctjax", "ctjax.errors", "ctjax.inference", "ctjax.inference.serving"}, \
      modules


@pytest.mark.parametrize("name", ["drct2", "drct1", "blend"])
def test_exported_outputs_equal_the_in_process_model(exported, served, name):
  _, models = exported
  run, _, inputs = models[name]
  got = served[1][name]
  for b, hu in inputs.items():
    want = runs.predict_batch(run, {"hu": hu})
    keys = sorted(k.split("/", 1)[1] for k in got if k.startswith(f"{b}/"))
    assert keys == sorted(want), (keys, sorted(want))
    for k, v in want.items():
      g = got[f"{b}/{k}"]
      assert g.shape == v.shape and g.dtype == v.dtype, (k, g.shape, v.shape, g.dtype)
      if np.issubdtype(v.dtype, np.integer):
        np.testing.assert_array_equal(g, v, err_msg=f"{name} b={b} {k}")
      else:
        np.testing.assert_allclose(g, v, rtol=0, atol=1e-5, err_msg=f"{name} b={b} {k}")
  # The outputs depend on the input (not a constant program), and rows on their own input only.
  p = got[f"{BATCH_SIZES[-1]}/probs"]
  assert np.ptp(p, axis=0).max() > 1e-4
  np.testing.assert_allclose(got["1/probs"][0],
                             runs.predict_batch(run, {"hu": inputs[1]})["probs"][0],
                             atol=1e-5)


def test_manifest_records_the_input_contract(exported):
  _, models = exported
  run, model_dir, _ = models["drct2"]
  m = json.loads((model_dir / "manifest.json").read_text())
  c = run.config
  assert m["input"]["shape"] == ["b", c.data.num_slices, c.data.image_size, c.data.image_size]
  assert m["input"]["dtype"] == "int16" and m["input"]["hu_range"] == [-1024, 3071]
  assert m["labels"] == list(c.data.labels) and m["thresholds"] == [0.5] * len(c.data.labels)
  assert m["windows"]["preset"] == "rsna3"
  assert [(w["level"], w["width"]) for w in m["windows"]["values"]] == [(40, 80), (80, 200),
                                                                        (40, 380)]
  assert m["model_name"] == "DrCT2 (vgg16 backbone)" and m["checkpoint_step"] == 3
  assert m["platforms"] == ["cpu", "cuda"]
  assert m["outputs"]["probs"] == {"dtype": "float32", "shape": ["b", len(c.data.labels)]}
  assert m["outputs"]["key_indices"]["shape"] == ["b", c.model.mkey]
  assert "stablehlo" in (model_dir / "model.stablehlo.mlir").read_text()[:20000]
  # The weights are arguments of the program, not constants baked into it.
  from safetensors.numpy import load_file
  flat = load_file(str(model_dir / "weights.safetensors"))
  assert len(flat) == m["num_weights"] and sum(v.size for v in flat.values()) == \
      m["num_parameters"]
  assert (model_dir / "model.jaxexport").stat().st_size < 0.25 * sum(v.nbytes
                                                                     for v in flat.values())
  blend = json.loads((models["blend"][1] / "manifest.json").read_text())
  assert blend["input"]["shape"] == ["b", 32, 32]
  assert blend["labels"] == ["non_ich", "normal_ich", "blend_sign"]
  assert blend["outputs"]["det_boxes"]["shape"][-1] == 4
  assert blend["windows"]["preset"] == "blend3"
  assert "DrCT" not in blend["model_name"]


def test_export_refuses_a_missing_run(tmp_path, capsys):
  assert export_cli.main(["--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "config.json" in err[0]
  assert export_cli.main(["--workdir", str(tmp_path)]) == 2
