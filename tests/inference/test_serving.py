"""ctjax.inference.serving: a model folder that breaks its contract, or was altered after export,
fails with one clear line naming the file; DICOM series become the model's input as training
built them, with none of the training code."""

import dataclasses
import errno
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ctjax.inference import model_export
from ctjax.inference import runs
from ctjax.inference import serving

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(**model):
  from ctjax.configs.drct import drct_config, runlocal_overrides
  c = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  c.data.num_slices, c.data.image_size = 4, 32
  c.model.primary_size, c.model.aps_size, c.model.mkey = 32, 32, 2
  for k, v in model.items():
    setattr(c.model if k != "threshold" else c.evals, k, v)
  return c


def _run(c, workdir, seed=0):
  from ctjax.models import pretrained
  from ctjax.train.tasks import drct, get_task
  task = get_task("drct")
  model = task.build_model(c)
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(c), seed=seed)
  return runs.make_run(c, variables, task=task, model=model, step=1, workdir=workdir)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """A tiny DrCT2 exported from in-memory weights (no checkpoint: tracing only), a second run
  of the same architecture (other weights), and a third with other thresholds."""
  tmp = tmp_path_factory.mktemp("serving")
  (tmp / "wd").mkdir()
  out = {}
  for name, cfg, seed in (("model", _config(), 0), ("other", _config(), 1),
                          ("thresholds", _config(threshold=0.3), 0)):
    run = _run(cfg, tmp / "wd", seed)
    model_export.export_run(run, tmp / name, platforms=("cpu",))
    out[name] = tmp / name
  out["run"] = run
  return out


@pytest.fixture(scope="module")
def model_dir(exports):
  return exports["model"]


def _copy(model_dir, tmp_path, name="m"):
  dst = tmp_path / name
  shutil.copytree(model_dir, dst)
  return dst


def _manifest(m):
  return json.loads((m / "manifest.json").read_text())


def _write_manifest(m, manifest, rehash=False):
  """`rehash`: recompute the meaning hash as a careful editor would (the weights' own copy of
  it stays: that is what catches it)."""
  if rehash:
    manifest["meaning_sha256"] = serving.meaning_sha256(manifest)
  (m / "manifest.json").write_text(json.dumps(manifest))


def _one_line(e):
  msg = str(e.value)
  assert "\n" not in msg and len(msg) < 600, msg
  return msg


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
  manifest = _manifest(m)
  _write_manifest(m, {**manifest, "format_version": 99})
  with pytest.raises(serving.ServingError, match="version 99"):
    serving.load(m)
  (m / "manifest.json").write_text("{not json")
  with pytest.raises(serving.ServingError, match="not valid JSON"):
    serving.load(m)
  _write_manifest(m, manifest)
  (m / "model.jaxexport").write_bytes(b"garbage")
  with pytest.raises(serving.ServingError, match=r"model.jaxexport: SHA-256 .* differs from the "
                     r"manifest's sha256.program"):
    serving.load(m)
  (m / "model.jaxexport").unlink()
  with pytest.raises(serving.ServingError, match="model.jaxexport: missing"):
    serving.load(m)


@pytest.mark.parametrize("field,value,match", [
    (None, [], "a JSON list, not an object"),
    ("labels", None, "field 'labels' is missing"),
    ("labels", "any", "field 'labels' is \"any\", not a list of distinct label names"),
    ("thresholds", [0.0] * 6, "strictly between 0 and 1"),
    ("thresholds", [0.5] * 5, "5 thresholds for 6 labels"),
    ("input", {"dtype": "int16"}, "field 'input.shape'"),
    ("files", ["model.jaxexport"], "field 'files' is"),
    ("sha256", None, "field 'sha256' is missing"),
    ("meaning_sha256", 7, "field 'meaning_sha256' is 7"),
])
def test_a_malformed_manifest_is_one_line_naming_the_field(model_dir, tmp_path, field, value,
                                                           match):
  m = _copy(model_dir, tmp_path)
  manifest = _manifest(m)
  if field is None:
    manifest = value
  elif value is None:
    del manifest[field]
  else:
    manifest[field] = value
  (m / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(serving.ServingError, match=match) as e:
    serving.load(m)
  assert _one_line(e).startswith(str(m / "manifest.json"))


@pytest.mark.parametrize("edit", ["reversed", "cut_to_3", "extended_to_7", "threshold_0.3"])
def test_an_edited_meaning_is_refused(model_dir, tmp_path, edit):
  """Labels reversed, cut, extended, thresholds changed: refused even when the editor also
  recomputed the manifest's meaning hash (the weights carry their own copy)."""
  m = _copy(model_dir, tmp_path)
  manifest = _manifest(m)
  labels = manifest["labels"]
  if edit == "reversed":
    manifest["labels"] = labels[::-1]
  elif edit == "cut_to_3":
    manifest["labels"], manifest["thresholds"] = labels[:3], manifest["thresholds"][:3]
  elif edit == "extended_to_7":
    manifest["labels"], manifest["thresholds"] = labels + ["x"], manifest["thresholds"] + [0.5]
  else:
    manifest["thresholds"] = [0.3] * len(labels)
  _write_manifest(m, manifest)
  with pytest.raises(serving.ServingError, match="meaning_sha256 does not match") as e:
    serving.load(m)
  assert _one_line(e).startswith(str(m / "manifest.json"))
  _write_manifest(m, manifest, rehash=True)
  with pytest.raises(serving.ServingError, match="exported with another manifest") as e:
    serving.load(m)
  assert _one_line(e).startswith(str(m / "weights.safetensors"))


def test_altered_or_swapped_files_are_refused(exports, tmp_path):
  model_dir, other = exports["model"], exports["other"]
  m = _copy(model_dir, tmp_path)
  blob = bytearray((m / "weights.safetensors").read_bytes())
  blob[-3] ^= 0x01                                         # one flipped bit in a weight
  (m / "weights.safetensors").write_bytes(bytes(blob))
  with pytest.raises(serving.ServingError, match=r"weights.safetensors: SHA-256 .* differs"):
    serving.load(m)
  for name in ("weights.safetensors", "model.jaxexport", "MODEL_CARD.md",
               "model.stablehlo.mlir"):
    m = _copy(model_dir, tmp_path, f"swap_{name}")
    shutil.copy(other / name, m / name)
    if (other / name).read_bytes() == (model_dir / name).read_bytes():
      continue                        # the same bytes (one architecture: one program)
    with pytest.raises(serving.ServingError, match=rf"{name}: SHA-256 .* differs"):
      serving.load(m)
  # Weights and the hashes of another export with other thresholds: the meaning differs.
  m = _copy(model_dir, tmp_path, "swap_all")
  shutil.copy(exports["thresholds"] / "weights.safetensors", m / "weights.safetensors")
  manifest = _manifest(m)
  manifest["sha256"]["weights"] = _manifest(exports["thresholds"])["sha256"]["weights"]
  _write_manifest(m, manifest)
  with pytest.raises(serving.ServingError, match="exported with another manifest"):
    serving.load(m)
  # The outputs of the two runs differ: a swap would have changed the answers.
  hu = np.random.default_rng(0).integers(-100, 100, (2, 4, 32, 32)).astype(np.int16)
  a, b = serving.load(model_dir)(hu)["probs"], serving.load(other)(hu)["probs"]
  assert np.abs(a - b).max() > 1e-4


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin"])
def test_files_outside_the_folder_are_refused(model_dir, tmp_path, name):
  m = _copy(model_dir, tmp_path)
  shutil.copy(m / "model.jaxexport", tmp_path / "outside.bin")
  manifest = _manifest(m)
  manifest["files"]["program"] = name
  _write_manifest(m, manifest)
  with pytest.raises(serving.ServingError, match="points outside the model folder") as e:
    serving.load(m)
  assert _one_line(e).startswith(str(m / "manifest.json"))
  # A symbolic link inside the folder to a file outside it is outside too.
  os.symlink(tmp_path / "outside.bin", m / "link.bin")
  manifest["files"]["program"] = "link.bin"
  _write_manifest(m, manifest)
  with pytest.raises(serving.ServingError, match="points outside the model folder"):
    serving.load(m)


def test_program_for_another_platform_is_refused(model_dir, tmp_path):
  import jax
  m = _copy(model_dir, tmp_path)
  manifest = _manifest(m)
  exported = jax.export.deserialize(bytearray((m / "model.jaxexport").read_bytes()))
  assert list(exported.platforms) == manifest["platforms"] == ["cpu"]
  other = dataclasses.replace(exported, platforms=("tpu",))
  blob = other.serialize()
  (m / "model.jaxexport").write_bytes(blob)
  manifest["sha256"]["program"] = hashlib.sha256(blob).hexdigest()
  _write_manifest(m, manifest)
  with pytest.raises(serving.ServingError, match="exported with another program"):
    serving.load(m)


def test_export_replaces_a_folder_whole_or_leaves_it(exports, tmp_path, monkeypatch):
  """An export writes a new folder beside the target and renames it into place: a failure (a
  full disk) leaves the earlier export whole and loadable, and no partial folder; every file
  gets one mode; a folder that is not an export is refused."""
  from ctjax import fileio
  from ctjax.errors import DiskFullError, StorageError
  run = exports["run"]
  target = tmp_path / "model"
  model_export.export_run(run, target, platforms=("cpu",))
  mode = fileio.file_mode()
  modes = {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()}
  assert set(modes.values()) == {mode} and len(modes) == 5, modes
  assert target.stat().st_mode & 0o777 == mode | ((mode & 0o444) >> 2)
  before = {p.name: p.read_bytes() for p in target.iterdir()}
  calls = {"n": 0}
  real_fsync = os.fsync

  def fsync(fd):
    calls["n"] += 1
    if calls["n"] == 3:                      # the third file: the disk is full
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_fsync(fd)

  monkeypatch.setattr(model_export.os, "fsync", fsync)
  other = dataclasses.replace(run, step=9)
  with pytest.raises(DiskFullError) as e:
    model_export.export_run(other, target, platforms=("cpu",))
  assert _one_line(e).startswith(f"{target}: disk full while writing the exported model")
  monkeypatch.undo()
  assert {p.name: p.read_bytes() for p in target.iterdir()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]     # no staging folder left
  assert serving.load(target).manifest["checkpoint_step"] == 1
  # A successful re-export replaces it whole.
  model_export.export_run(other, target, platforms=("cpu",))
  assert serving.load(target).manifest["checkpoint_step"] == 9
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
  # Not an export: refused, untouched.
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "thesis.tex").write_text("x")
  with pytest.raises(StorageError, match="exists and is not a ctjax.export model folder"):
    model_export.export_run(run, tmp_path / "notes", platforms=("cpu",))
  assert (tmp_path / "notes" / "thesis.tex").read_text() == "x"


def test_exchange_replaces_in_one_step(tmp_path):
  from ctjax import fileio
  (tmp_path / "new").mkdir()
  (tmp_path / "new" / "a").write_text("new")
  (tmp_path / "target").mkdir()
  (tmp_path / "target" / "a").write_text("old")
  (tmp_path / "target" / "b").write_text("old only")
  how = fileio.replace_dir(tmp_path / "new", tmp_path / "target")
  assert how in ("replaced atomically", "replaced")
  assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["a"]
  assert (tmp_path / "target" / "a").read_text() == "new" and not (tmp_path / "new").exists()


# ------------------------------------------------------------------ a DICOM series → the model


HIDE = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("flax", "orbax", "grain", "ml_collections", "optax") or \\
        name.startswith(("ctjax.train", "ctjax.models", "ctjax.configs")):
      raise ImportError(f"{name} is made unimportable for this test")
sys.meta_path.insert(0, Refuse())
"""

SERVE_SERIES = HIDE + """
import json
import numpy as np
from ctjax.inference import serving
model = serving.load(sys.argv[1])
r = model.predict_series(sys.argv[2])
hu, info = model.series_input(sys.argv[2])
np.save(sys.argv[3], hu)
print(json.dumps({"probs": r["probs"].tolist(), "calls": r["calls"].tolist(),
                  "qa_flags": r["qa_flags"], "is_head": r["is_head"],
                  "slice_index": r["slice_index"], "labels": r["labels"],
                  "modules": sorted(m for m in sys.modules if m.startswith("ctjax"))}))
try:
  model.predict_series(sys.argv[4])
except Exception as e:
  print(json.dumps({"refused": type(e).__name__ + ": " + str(e)}))
"""


def test_a_dicom_series_served_without_the_training_code(model_dir, exports, tmp_path):
  """`predict_series` in a process where ctjax.train, the models, the configs, flax, orbax,
  grain, optax and ml_collections cannot be imported: the same input bit for bit, and the same
  probabilities, as the report path (`scan_reports.read_scan` + `scan_batch`) of the run."""
  from tests.inference.test_scan_reports import write_head
  from tests.support import ctdicom_helpers
  from ctjax.inference import scan_reports
  write_head(tmp_path / "head", columns_along="-x", reverse=True)
  rng = np.random.default_rng(1)
  ctdicom_helpers.write_series(tmp_path / "noise", rng.normal(30, 40, size=(6, 40, 40)),
                               series_uid="1.2.826.0.99.1")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, "-c", SERVE_SERIES, str(model_dir), str(tmp_path / "head"),
                      str(tmp_path / "hu.npy"), str(tmp_path / "noise")], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  got, refused = [json.loads(ln) for ln in r.stdout.strip().splitlines()[-2:]]
  assert not [m for m in got["modules"] if m.startswith(("ctjax.train", "ctjax.models",
                                                         "ctjax.configs"))], got["modules"]
  assert "ctjax.data.dicom" in got["modules"] and "ctjax.data.resize" in got["modules"]
  run = exports["run"]
  vol = scan_reports.read_scan(tmp_path / "head")
  batch, _ = scan_reports.scan_batch(vol, run.config)
  np.testing.assert_array_equal(np.load(tmp_path / "hu.npy"), batch["hu"])
  assert got["slice_index"] == [int(i) for i in batch["slice_index"][0]]
  run0 = _run(_config(), tmp_path, seed=0)       # the weights model_dir was exported from
  want = runs.predict_batch(run0, batch)["probs"][0]
  np.testing.assert_allclose(got["probs"], want, atol=1e-5)
  assert got["calls"] == [int(p >= 0.5) for p in got["probs"]]
  assert got["is_head"] is True and got["qa_flags"] == ["few_slices", "small_matrix"]
  assert got["labels"] == list(run.config.data.labels)
  assert refused["refused"].startswith(f"NotHeadCTError: {tmp_path / 'noise'}: not a head CT (")


def test_export_check_verifies_a_folder_in_one_line(model_dir, tmp_path, capsys):
  from ctjax.commands import export as export_cli
  assert export_cli.main(["--check", str(model_dir)]) == 0
  out = capsys.readouterr().out.strip()
  assert out.startswith(f"{model_dir}: ok — DrCT2 (vgg16 backbone) step 1, labels any, ")
  m = _copy(model_dir, tmp_path)
  manifest = _manifest(m)
  manifest["labels"] = manifest["labels"][::-1]
  _write_manifest(m, manifest)
  assert export_cli.main(["--check", str(m)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: {m / 'manifest.json'}: its labels")
  assert export_cli.main(["--check", str(m), "--out", str(tmp_path / "x")]) == 2
