"""A tiny DrCT2 run (random weights in a real Orbax checkpoint) and a 3-case study of it.

Built once per session: a 12-scan phantom data set (RSNA layout, 64 px), a runlocal DrCT2 at
32 px whose checkpoint the trainer's `Checkpointer` writes (no training: no assertion depends on
the weights), and a study of 3 scans of its test split. Tests get a fresh copy of the study.
"""

import pathlib
import shutil

import pytest


def tiny_config(data_root: str):
  from ctjax.configs.drct import drct_config, runlocal_overrides
  c = runlocal_overrides(drct_config(dataset="phantom", variant="drct2"))
  c.data.root = data_root
  c.data.num_slices = 8
  c.data.image_size = 32
  c.data.num_folds = 3
  c.model.primary_size = 32
  c.model.aps_size = 32
  c.model.mkey = 3
  c.checkpoint.async_save = False
  c.log.progress_bar = False
  return c


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> pathlib.Path:
  import jax
  from ctjax.data import phantom
  from ctjax.models import pretrained
  from ctjax.train import optim
  from ctjax.train import state as state_lib
  from ctjax.train.checkpoint import Checkpointer
  from ctjax.train.tasks import get_task
  wd = tmp_path_factory.mktemp("run")
  phantom.write_dataset(wd / "data", layout="rsna", num_scans=12, seed=0, size=64,
                        num_workers=0)
  c = tiny_config(str(wd / "data"))
  task = get_task("drct")
  model = task.build_model(c)
  # Numpy weights of init's shapes: the jitted Flax init of the VGG16 compiles for ~10 s.
  from ctjax.train.tasks import drct
  variables = dict(pretrained.random_variables(drct.init_model(model), drct.init_input(c)))
  tx, _ = optim.make_optimizer(c, 1, 1, lambda p: task.param_groups(c, p))
  state = state_lib.state_from_variables(task, c, variables, jax.random.PRNGKey(0), tx)
  ck = Checkpointer(wd, c)
  ck.save(3, state, None, force=True)
  ck.close()
  (wd / "config.json").write_text(c.to_json_best_effort(indent=2))
  from ctjax.data import cache
  cache.ensure_cache(c, str(wd), progress=False)   # prepared, as training leaves it
  return wd


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
  from ctjax.inference import runs
  return runs.load_run(tiny_run, require_task="drct")


@pytest.fixture(scope="session")
def study_template(tiny_run, tiny_model, tmp_path_factory) -> pathlib.Path:
  from ctjax.reader import study
  root = tmp_path_factory.mktemp("template") / "study"
  study.create_study(root, tiny_run, num_scans=3, seed=0, name="phantom study",
                     run=tiny_model, progress=False)
  return root


@pytest.fixture
def study_dir(study_template, tmp_path) -> pathlib.Path:
  dest = tmp_path / "study"
  shutil.copytree(study_template, dest, symlinks=True)
  return dest
