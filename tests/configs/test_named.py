"""ctjax.configs.named: every file of configs/ is its docstring over a library builder, and the
library builds the same config by the file's name (what `python -m ctjax.tables` uses)."""

import pathlib

import pytest

from ctjax.configs import named
from ctjax.configs.common import load_config_file
from ctjax.errors import ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
FILES = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem != "__init__")


def test_every_config_file_has_its_builder_and_no_builder_lacks_a_file():
  assert sorted(named.BUILDERS) == FILES


@pytest.mark.parametrize("name", FILES)
def test_the_file_and_the_library_build_the_same_config(name):
  args = [None] + (["runlocal"] if "runlocal" in (CONFIGS / f"{name}.py").read_text() else [])
  for arg in args:
    from_file = load_config_file(CONFIGS / f"{name}.py", arg)
    assert from_file.to_dict() == named.get_config(name, arg).to_dict()
    assert from_file.to_dict() == named.get_config(f"{name}.py", arg).to_dict()


def test_an_unknown_name_is_one_line():
  with pytest.raises(ConfigError, match="no config named 'drct3'; known: blend_phantom"):
    named.get_config("drct3")
