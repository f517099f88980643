"""ctjax.train.programs: the library's own programs with abstract arguments — the batches are the
pipeline's, the programs compile for the mesh and run on real batches and states."""


import jax
import numpy as np
import pytest

from tests.support import ctdicom_helpers, stand_ins
from ctjax.configs import named
from ctjax.data import fake, pipeline
from ctjax.models import pretrained
from ctjax.train import features as F
from ctjax.train import programs
from ctjax.train import state as state_lib
from ctjax.train.tasks import drct



def _spec(batch):
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in batch.items()
          if np.dtype(v.dtype).kind not in "OUS"}


@pytest.fixture(scope="module")
def drct_setup(tmp_path_factory):
  config = stand_ins.small_drct_config(tmp_path_factory.mktemp("cache"))
  fake.write_random_cache_for(config, num_scans=8, slices=(5, 9), scans_per_shard=4)
  return config


def test_drct_batches_are_the_pipelines(drct_setup):
  config = drct_setup.copy_and_resolve_references()
  mesh = programs.mesh_for(config)
  splits = pipeline.build_splits(config)
  # HU batches
  config.features.enabled = False
  real = next(pipeline.train_iterator(config, splits, seed=0))
  assert _spec(programs.batch_spec(config, config.train.batch_size, mesh)) == _spec(real)
  # rows of the feature store, in its dtype
  config.features.enabled = True
  model = drct.TASK.build_model(config)
  variables = pretrained.random_variables(drct.init_model(model), drct.init_input(config))
  store = F.build_store(config, splits["train"].scans, model, variables)
  data = F.FeatureData(pipeline, store)
  real = next(data.train_iterator(config, splits, seed=0))
  got = programs.batch_spec(config, config.train.batch_size, mesh, model=model,
                            variables=variables)
  assert "feat_pooled" in got and "hu" not in got
  assert _spec(got) == _spec(real)
  for key, value in got.items():
    assert value.sharding.spec[0] == config.parallel.data_axis, key


def test_train_program_compiles_and_runs_on_a_real_state(drct_setup):
  """The compiled train step takes the state `ctjax.train` makes and a batch of the declared
  layout (a drifted argument would fail the call)."""
  config = drct_setup.copy_and_resolve_references()
  config.features.enabled = False
  mesh = programs.mesh_for(config)
  program = programs.train_program(config, mesh)
  assert program.items == config.train.batch_size == 4 and mesh.devices.size == 4
  compiled = program.lower().compile()
  state_abs, batch_abs, rng_abs = program.args
  task = drct.TASK
  model = task.build_model(config)
  state = jax.jit(lambda r: state_lib.create_state(task, model, config, r, state_abs.tx),
                  out_shardings=jax.tree.map(lambda a: a.sharding, state_abs))(
                      jax.random.PRNGKey(0))
  batch = {k: jax.device_put(np.zeros(v.shape, v.dtype), v.sharding)
           for k, v in batch_abs.items()}
  new_state, metrics = compiled(state, batch, jax.random.PRNGKey(1))
  assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_eval_and_store_programs(drct_setup):
  config = drct_setup.copy_and_resolve_references()
  mesh = programs.mesh_for(config)
  infer = programs.eval_program(config, mesh, 4)
  out = jax.eval_shape(infer.fn, *infer.args)
  assert out["probs"].shape == (4, len(config.data.labels))
  store = programs.store_program(config, mesh)
  assert store.items == F.chunk_per_device(config) * 4
  rows = jax.eval_shape(store.fn, *store.args)
  assert set(rows) == set(F.stored_arrays(config))
  assert rows["pooled"].shape[0] == store.items


def test_blend_batches_are_the_pipelines(tmp_path):
  ctdicom_helpers.write_blend_tree(tmp_path / "b", num_scans=6, slices=3, size=16)
  config = named.get_config("blend_resnet50", "variant=wce_at")
  config.data.layout = "blend"
  config.data.root = str(tmp_path / "b")
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.image_size = 16
  config.data.num_folds = 3
  config.data.max_boxes = 3
  config.train.batch_size = 4
  splits = pipeline.build_splits(config)
  real = next(pipeline.train_iterator(config, splits, seed=0))
  mesh = programs.mesh_for(config)
  assert _spec(programs.batch_spec(config, 4, mesh)) == _spec(real)


def test_mesh_over_given_devices():
  config = stand_ins.small_drct_config("/nonexistent")
  config.parallel.num_devices = -1
  mesh = programs.mesh_for(config, jax.devices()[:2])
  assert mesh.devices.size == 2 and config.parallel.num_devices == 2
