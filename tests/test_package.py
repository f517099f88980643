"""The package stands on its own: layering rules checked on the source, configs that load from
any directory, and a finished run that evaluates and reports without its backbone file."""

import ast
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ctjax"


def _imports(path: pathlib.Path) -> list[str]:
  """Every module name a file imports (absolute, at any depth of the file)."""
  names = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.append(node.module)
      names += [f"{node.module}.{a.name}" for a in node.names]
  return names


def test_eval_is_host_side_and_never_imports_training():
  for path in sorted((PACKAGE / "eval").rglob("*.py")):
    bad = [n for n in _imports(path) if n.startswith(("ctjax.train", "ctjax.inference",
                                                      "ctjax.reporting"))]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_library_does_not_read_the_checkout():
  for path in sorted(PACKAGE.rglob("*.py")):
    imports = _imports(path)
    assert not [n for n in imports if n == "configs" or n.startswith("configs.")], path
    text = path.read_text()
    for needle in ("REPO_ROOT", "parents[2]", "parents[3]", '/ "configs"', '("configs")'):
      assert needle not in text, f"{path.relative_to(ROOT)} contains {needle!r}"


def test_config_files_import_only_the_package():
  for path in sorted((ROOT / "configs").glob("*.py")):
    bad = [n for n in _imports(path)
           if not n.startswith(("ctjax", "ml_collections", "__future__"))]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_every_config_loads_by_path_from_another_directory(tmp_path):
  script = ("import sys\nfrom ctjax.configs.common import load_config_file\n"
            "for p in sys.argv[1:]:\n"
            "  for arg in (None, 'runlocal'):\n"
            "    try:\n      c = load_config_file(p, arg)\n"
            "    except Exception as e:\n"
            "      if arg is None or 'runlocal' not in str(e): raise\n"
            "      continue\n"
            "    print(p.rsplit('/', 1)[-1], arg, c.task)\n")
  files = [str(p) for p in sorted((ROOT / "configs").glob("*.py")) if p.name != "__init__.py"]
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  r = subprocess.run([sys.executable, "-c", script, *files], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  loaded = {ln.split()[0] for ln in r.stdout.splitlines()}
  assert loaded == {pathlib.Path(f).name for f in files}


def test_shipped_asset_is_read_through_the_package():
  from ctjax.models import weights
  path = weights.resolve_weights_path("asset:vgg16_w0125_phantom.npz")
  assert path.is_file() and path.parent.name == "assets"
  assert weights.load_variables(path)["params"]["conv0"]["kernel"].shape == (3, 3, 3, 8)
  with pytest.raises(weights.WeightsError, match="no such asset"):
    weights.resolve_weights_path("asset:nope.npz")


def test_finished_run_evaluates_and_reports_without_its_backbone_file(tmp_path):
  """The backbone file is read once, when the run starts; evaluate and report restore the run
  from its checkpoint alone (nothing is trained or read from the weights path)."""
  import jax.numpy as jnp
  from configs import drct2_phantom
  from ctjax import inference, reporting
  from ctjax.data import phantom
  from ctjax.models import weights
  from ctjax.models.vgg import VGG16
  from ctjax.train import loop
  backbone = tmp_path / "backbone.npz"
  weights.save_variables(backbone, weights.random_variables(
      VGG16(width=0.125), jnp.zeros((1, 32, 32, 3)), seed=3))
  c = drct2_phantom.get_config("runlocal")
  c.model.backbone_weights = str(backbone)
  c.data.root = str(tmp_path / "data")
  c.log.progress_bar = False
  c.log.tensorboard = False
  loop.train_and_evaluate(c, tmp_path / "run")
  saved = weights.load_variables(backbone)["params"]
  backbone.unlink()
  run = inference.load_run(tmp_path / "run")
  restored = run.host_variables()["params"]["backbone"]
  np.testing.assert_array_equal(restored["conv7"]["kernel"], saved["conv7"]["kernel"])
  report = inference.evaluate(tmp_path / "run", "test")
  assert report["split"] == "test" and 0.0 <= report["macro_f1"] <= 1.0
  phantom.write_dataset(tmp_path / "scans", layout="cq500", num_scans=1, seed=5, size=64,
                        num_workers=0)
  series = reporting.find_series(tmp_path / "scans")
  r = reporting.report_for_scan(reporting.load_run(tmp_path / "run"), series[0][0],
                                tmp_path / "r.html", series_uid=series[0][1])
  assert pathlib.Path(r.out_path).read_text().count('class="key-slice"') == 5
