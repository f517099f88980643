"""The library's jitted programs with abstract, sharded arguments, for ahead-of-time compilation.

Each builder returns the very jitted function the library runs — the train step of
`ctjax.train` (`steps.compile_steps`), the eval step behind evaluation and prediction
(`steps.compile_eval_step` over `Task.predict`), the feature-store build pass
(`features.backbone_program`) — with `jax.ShapeDtypeStruct` arguments on the shardings of the
library's mesh (`parallel.make_mesh`). `program.lower().compile()` then builds the executable
for that mesh: the host's devices, or a compile-only topology's
(`jax.experimental.topologies.get_topology_desc`) with no such hardware present, as maxtext's
`train_compile.py` does. Nothing is allocated and nothing runs.

The batches are the data pipeline's (`ctjax.data.pipeline`, ARCHITECTURE.md "Shapes and
dtypes"): DrCT examples come from the pipeline's own example builder
(`ctjax.data.examples`, which needs no Grain); with
`config.features.enabled`, from the store's rows (`features.stored_arrays`) in its dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ctjax.train import features as features_lib
from ctjax.train import optim, parallel
from ctjax.train import steps as steps_lib
from ctjax.train.tasks import get_task


@dataclasses.dataclass(frozen=True)
class Program:
  """A jitted function and the abstract arguments one call of it takes."""
  fn: Any                    # the jitted function (`jax.jit` object)
  args: tuple[Any, ...]      # ShapeDtypeStructs (pytrees) carrying their shardings
  items: int                 # examples one call processes (scans, or slices for the store)
  mesh: Mesh

  def lower(self) -> Any:
    return self.fn.lower(*self.args)


def mesh_for(config: ml_collections.ConfigDict,
             devices: Optional[Sequence[Any]] = None) -> Mesh:
  """The library's mesh over `devices` (default: this host's); `config.parallel.num_devices`
  is pinned to the mesh's size so that the model's chunk layout (`data_shards`) matches it."""
  mesh = parallel.make_mesh(config, devices)
  config.parallel.num_devices = int(mesh.devices.size)
  return mesh


def _abstract(tree: Any, sharding: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _state(config: ml_collections.ConfigDict, mesh: Mesh, steps_per_epoch: int):
  """(task, model, state template on the mesh, its sharding) as `ctjax.train` builds them."""
  from ctjax.train.state import abstract_state   # the trainer's own state template
  task = get_task(config.task)
  task.validate_config(config)
  model = task.build_model(config)
  tx, _ = optim.make_optimizer(config, optim.total_steps(config, steps_per_epoch),
                               steps_per_epoch, lambda p: task.param_groups(config, p))
  template, sharding = abstract_state(task, model, config, mesh, tx)
  return task, model, template, sharding


def _batched(example: dict, batch: int, mesh: Mesh) -> dict:
  """One host example → the global batch's ShapeDtypeStructs split on the data axis."""
  sharding = parallel.data_sharding(mesh)
  out = {}
  for key, value in example.items():
    value = np.asarray(value)
    if value.dtype.kind in "OUS":   # strings stay on the host (`parallel.host_to_global`)
      continue
    out[key] = jax.ShapeDtypeStruct((batch,) + value.shape, value.dtype, sharding=sharding)
  return out


def store_rows(config: ml_collections.ConfigDict, model: Any, variables: Any,
               num_slices: int) -> dict[str, jax.ShapeDtypeStruct]:
  """{store array name: ShapeDtypeStruct [num_slices, …]} of the rows a store of `config`
  holds, in its dtype (the build pass traced abstractly)."""
  from ctjax.models.drct import DrCT
  names = features_lib.stored_arrays(config)
  hu = jax.ShapeDtypeStruct((num_slices,) + (int(config.data.image_size),) * 2, jnp.int16)
  out = jax.eval_shape(
      lambda v, x: model.clone(backbone_chunk=0).apply(
          v, x, x if "aps_pooled" in names else None, want_map="feature_map" in names,
          method=DrCT.backbone_features), variables, hu)
  dtype = jnp.dtype(features_lib.store_dtype(config))
  return {name: jax.ShapeDtypeStruct(out[name].shape, dtype) for name in names}


def batch_spec(config: ml_collections.ConfigDict, batch: int, mesh: Mesh, *,
               model: Any = None, variables: Any = None) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the data pipeline feeds the steps, as ShapeDtypeStructs on `mesh`.

  DrCT with `config.features.enabled` needs `model` and (abstract) `variables` to size the
  stored rows."""
  from ctjax.data.cache import data_option
  from ctjax.data.examples import drct_example   # the pipeline's builder, without Grain
  size = int(config.data.image_size)
  if config.task == "drct":
    m = int(config.data.num_slices)
    num_labels = len(config.data.labels)
    if features_lib.enabled(config):
      rows = store_rows(config, model, variables, m)

      def read(idx):
        return {features_lib.ARRAYS[k]: np.zeros((len(idx),) + v.shape[1:], v.dtype)
                for k, v in rows.items()}
    else:
      def read(idx):
        return np.zeros((len(idx), size, size), np.int16)
    example = drct_example(read, m, np.zeros(num_labels, np.float32),
                           np.zeros((m, num_labels), np.uint8), m=m)
  elif config.task == "blend":
    k = int(data_option(config, "max_boxes"))
    example = {"hu": np.zeros((size, size), np.int16), "valid": np.bool_(True),
               "example_index": np.int32(0), "label": np.int32(0),
               "boxes": np.zeros((k, 4), np.float32), "num_boxes": np.int32(0)}
  else:
    raise ValueError(f"no batch layout for task {config.task!r} (drct, blend)")
  return _batched(example, batch, mesh)


def train_program(config: ml_collections.ConfigDict, mesh: Mesh, *,
                  steps_per_epoch: int = 100) -> Program:
  """The train step `ctjax.train` compiles (`steps.compile_steps`, state donated) at
  `config.train.batch_size`; from the store's rows with `config.features.enabled`."""
  task, model, state, sharding = _state(config, mesh, steps_per_epoch)
  train, _ = steps_lib.compile_steps(task, model, config, mesh, sharding)
  batch = int(config.train.batch_size)
  parallel.local_batch_size(batch, mesh)
  spec = batch_spec(config, batch, mesh, model=model, variables=state.variables())
  rng = jax.ShapeDtypeStruct(state.rng.shape, state.rng.dtype,
                             sharding=parallel.replicated(mesh))
  return Program(train, (state, spec, rng), batch, mesh)


def eval_program(config: ml_collections.ConfigDict, mesh: Mesh, batch: int) -> Program:
  """The eval step behind evaluation and prediction (`steps.compile_eval_step`:
  `Task.predict` on the full variables) at `batch` examples."""
  task, model, state, sharding = _state(config, mesh, 1)
  fn = steps_lib.compile_eval_step(task, model, config, mesh, sharding)
  parallel.local_batch_size(batch, mesh)
  spec = batch_spec(config, batch, mesh, model=model, variables=state.variables())
  return Program(fn, (state, spec), batch, mesh)


def store_program(config: ml_collections.ConfigDict, mesh: Mesh) -> Program:
  """One call of the feature-store build (`features.backbone_program`):
  `features.chunk` HU slices of `data.image_size`² per device."""
  task, model, state, _ = _state(config, mesh, 1)
  fn = features_lib.backbone_program(config, model, mesh)
  n = features_lib.chunk_per_device(config) * int(mesh.devices.size)
  size = int(config.data.image_size)
  params = _abstract({"params": {"backbone": state.variables()["params"]["backbone"]}},
                     parallel.replicated(mesh))
  hu = jax.ShapeDtypeStruct((n, size, size), jnp.int16, sharding=parallel.data_sharding(mesh))
  return Program(fn, (params, hu), n, mesh)
