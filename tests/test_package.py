"""The package stands on its own: the layer order of ARCHITECTURE.md checked on the source,
commands apart from the library, no read of the checkout's layout, no words about how the code
was made, configs that load from any directory, and a finished run that evaluates and reports
without its backbone file."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ctjax"

# The layers, lowest first: a module imports its own layer and lower ones, never a layer of the
# same rank or above (ARCHITECTURE.md, "Who imports whom").
RANKS = {"errors": 0, "jsonable": 0,
         "fileio": 1,
         "data": 2, "models": 2,
         "eval": 3, "configs": 3,
         "train": 4,
         "inference": 5,
         "experiments": 6,
         "tables": 7, "reader": 7,
         "commands": 8}
ROOT_LIBRARY = {"__init__", "errors", "fileio", "jsonable"}   # the package root's own modules
# One module per task family (config.task) may stand in each layer that has one (the model, its
# task, its config builder, its tables): the folder tells them apart.
FAMILY_MODULES = {"drct", "blend", "pretrain"}


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


def _layer(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[0] == "ctjax" else ""


def _commands() -> set[str]:
  return {p.stem for p in (PACKAGE / "commands").glob("*.py") if p.stem not in ("__init__", "cli")}


def _is_command_shim(path: pathlib.Path, name: str) -> bool:
  """`python -m ctjax.<name>`: a docstring, `import sys`, the command's main, and its call."""
  body = ast.parse(path.read_text()).body
  code = [ast.unparse(n) for n in body if not (isinstance(n, ast.Expr)
                                               and isinstance(n.value, ast.Constant))]
  return code == ["import sys", f"from ctjax.commands.{name} import main",
                  "if __name__ == '__main__':\n    sys.exit(main())"]


def test_layers_import_downward_only():
  bad = []
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE)
    if rel.name == "__main__.py" or (len(rel.parts) == 1 and rel.stem not in ROOT_LIBRARY):
      continue   # command shims, checked below
    own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    if own == "__init__.py":
      continue
    for name in _imports(path):
      other = _layer(name)
      if other in RANKS and other != own and RANKS[other] >= RANKS[own]:
        bad.append(f"{rel} ({own}) imports {name} ({other})")
  assert not bad, "\n".join(bad)


def test_train_imports_nothing_after_training():
  """The training layer never reaches the post-training layer (it used to reload its own run
  through `ctjax.inference` to predict again): one arrow, not a cycle."""
  for path in sorted((PACKAGE / "train").rglob("*.py")):
    if path.name == "__main__.py":
      continue
    bad = [n for n in _imports(path) if _layer(n) in ("inference", "experiments", "tables",
                                                       "reader", "commands")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_commands_live_in_one_place():
  """The package root holds the shared base modules and one three-line shim per command; every
  `python -m ctjax.X` is a command module in ctjax/commands."""
  commands = _commands()
  for path in sorted(PACKAGE.glob("*.py")):
    if path.stem in ROOT_LIBRARY:
      continue
    assert path.stem in commands, f"{path.relative_to(ROOT)}: neither base module nor command"
    assert _is_command_shim(path, path.stem), f"{path.relative_to(ROOT)} is more than a shim"
  for package in ("train", "tables", "reader"):
    assert _is_command_shim(PACKAGE / package / "__main__.py", package)
  assert commands >= {"train", "evaluate", "prepare", "synth", "predict", "report", "export",
                      "tables", "reader", "crossval", "distill", "weights", "backbone_probe"}


def test_no_two_library_modules_share_a_name_or_pair_with_a_command():
  commands = _commands()
  seen: dict[str, list[str]] = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE)
    if rel.parts[0] == "commands" or rel.stem in ("__init__", "__main__") or len(rel.parts) == 1:
      continue
    seen.setdefault(rel.stem, []).append(str(rel))
  pairs = {k: v for k, v in seen.items() if len(v) > 1 and k not in FAMILY_MODULES}
  assert not pairs, pairs
  for name in seen:
    for command in commands:
      assert name != command and not re.fullmatch(rf"{command}(ing|ion|s)", name), (
          f"library module {seen[name]} pairs with the command {command}")


def test_eval_is_host_side_and_never_imports_training():
  for path in sorted((PACKAGE / "eval").rglob("*.py")):
    bad = [n for n in _imports(path) if _layer(n) in ("train", "inference", "commands")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _checkout_paths(path: pathlib.Path) -> list[str]:
  """String constants naming the checkout's folders (`configs`, `docs`, …) outside docstrings,
  flag names and help texts: a default that only works from the checkout's root."""
  tree = ast.parse(path.read_text())
  skip = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body and \
        isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
      skip.add(id(node.body[0].value))
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith("DEFINE_"):
      if node.args:
        skip.add(id(node.args[0]))   # the flag's name
      skip.update(id(a) for a in node.args[2:])   # its help text
      skip.update(id(k.value) for k in node.keywords if k.arg == "help")
    if isinstance(node, ast.JoinedStr):
      skip.update(id(v) for v in node.values)   # commands shown to the user
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
      v = node.value
      if v in ("configs", "docs", "benchmarks", "tests", "README.md") or \
          v.startswith(("configs/", "docs/", "benchmarks/", "tests/")):
        found.append(f"line {node.lineno}: {v!r}")
  return found


def test_library_does_not_read_the_checkout():
  for path in sorted(PACKAGE.rglob("*.py")):
    imports = _imports(path)
    assert not [n for n in imports if n == "configs" or n.startswith("configs.")], path
    text = path.read_text()
    for needle in ("REPO_ROOT", "parents[2]", "parents[3]", '/ "configs"', '("configs")'):
      assert needle not in text, f"{path.relative_to(ROOT)} contains {needle!r}"
    found = _checkout_paths(path)
    assert not found, f"{path.relative_to(ROOT)} names the checkout's folders: {found}"


# Words about how or where the code was made, which shipped text never holds.
# Each word written with one letter in brackets: the same pattern, but this file does not
# contain the words it bans (a repository-wide search finds none).
MAKING = re.compile(r"devic[e] machine|\bl[e]nt\b|not measured h[e]re|the issu[e]'?s\b|"
                    r"busy (CPU )?c[o]res|this s[e]ssion|no accelerator was av[a]ilable|"
                    r"/w[o]rk/|/r[o]ot/")


def test_shipped_text_speaks_of_the_product_only():
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  bad = []
  for name in files:
    path = ROOT / name
    if path.suffix not in (".py", ".md", ".toml", ".html", ".js", ".css", ".txt", ".cfg") or \
        path == pathlib.Path(__file__).resolve() or not path.is_file():
      continue
    for k, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
      if MAKING.search(line):
        bad.append(f"{name}:{k}: {line.strip()[:100]}")
  assert not bad, "\n".join(bad[:40])


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
  from ctjax.models import pretrained
  path = pretrained.resolve_weights_path("asset:vgg16_w0125_phantom.npz")
  assert path.is_file() and path.parent.name == "assets"
  assert pretrained.load_variables(path)["params"]["conv0"]["kernel"].shape == (3, 3, 3, 8)
  with pytest.raises(pretrained.WeightsError, match="no such asset"):
    pretrained.resolve_weights_path("asset:nope.npz")


def test_finished_run_evaluates_and_reports_without_its_backbone_file(tmp_path):
  """The backbone file is read once, when the run starts; evaluate and report restore the run
  from its checkpoint alone (nothing is trained or read from the weights path)."""
  import jax.numpy as jnp
  from configs import drct2_phantom
  from ctjax.inference import runs
  from ctjax.inference import scan_reports
  from ctjax.data import phantom
  from ctjax.models import pretrained
  from ctjax.models.vgg import VGG16
  from ctjax.train import loop
  backbone = tmp_path / "backbone.npz"
  pretrained.save_variables(backbone, pretrained.random_variables(
      VGG16(width=0.125), jnp.zeros((1, 32, 32, 3)), seed=3))
  c = drct2_phantom.get_config("runlocal")
  c.model.backbone_weights = str(backbone)
  c.data.root = str(tmp_path / "data")
  c.log.progress_bar = False
  c.log.tensorboard = False
  loop.train_and_evaluate(c, tmp_path / "run")
  saved = pretrained.load_variables(backbone)["params"]
  backbone.unlink()
  run = runs.load_run(tmp_path / "run")
  restored = run.host_variables()["params"]["backbone"]
  np.testing.assert_array_equal(restored["conv7"]["kernel"], saved["conv7"]["kernel"])
  report = runs.evaluate(tmp_path / "run", "test")
  assert report["split"] == "test" and 0.0 <= report["macro_f1"] <= 1.0
  phantom.write_dataset(tmp_path / "scans", layout="cq500", num_scans=1, seed=5, size=64,
                        num_workers=0)
  series = scan_reports.find_series(tmp_path / "scans")
  r = scan_reports.report_for_scan(runs.load_run(tmp_path / "run", require_task="drct"), series[0][0],
                                tmp_path / "r.html", series_uid=series[0][1])
  assert pathlib.Path(r.out_path).read_text().count('class="key-slice"') == 5
