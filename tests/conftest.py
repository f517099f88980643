"""Shared pytest setup: CPU only, several host devices, slow tests opt-in, and the persistent
compilation cache of the commands in a temporary folder (never the user's cache)."""

import os

# Several host devices so that sharding code runs as it would on a multi-device host.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="run tests marked slow (minutes each)")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow") or os.environ.get("CTJAX_SLOW") == "1":
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow or CTJAX_SLOW=1")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def compile_cache_dir(tmp_path_factory):
  """The commands' default persistent compilation cache (`ctjax.train.compilation`), in-process
  and in the subprocesses the tests start: a temporary folder of its own."""
  from ctjax.train import compilation
  path = tmp_path_factory.mktemp("jax_cache")
  before = os.environ.get(compilation.ENV)
  os.environ[compilation.ENV] = str(path)
  yield path
  if before is None:
    os.environ.pop(compilation.ENV, None)
  else:
    os.environ[compilation.ENV] = before
