"""Shared pytest setup: CPU only, several host devices, slow tests opt-in."""

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
