"""Shared trainer fixtures: one uninterrupted tiny run reused by several tests."""

import os
import sys

import pytest


from tests.support import stand_ins  # noqa: E402


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """6 steps (1 epoch) of the tiny task on 4 CPU devices, uninterrupted; val eval every 3,
  checkpoints every 2, keep 2."""
  from ctjax.train import loop
  workdir = tmp_path_factory.mktemp("reference")
  config = stand_ins.tiny_config(**{"train.num_epochs": 1, "evals.val.every_steps": 3,
                                    "checkpoint.every_steps": 2, "checkpoint.keep": 2})
  final = loop.train_and_evaluate(config, workdir, task=stand_ins.TinyTask(),
                                  data=stand_ins.MemoryData())
  return workdir, config, final


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(compile_cache_dir):
  """Runs of the same tiny config compile identical programs: share them within the session
  (the 2-core test machine spends most of a tiny run compiling)."""
  import jax
  jax.config.update("jax_compilation_cache_dir", str(compile_cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield
  jax.config.update("jax_compilation_cache_dir", None)
