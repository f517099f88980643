"""TrainState: the whole training state as one pytree (checkpointed as is).

Parameters are split once by `Task.trainable_mask` into `params` (trainable: optimizer state,
gradients) and `frozen` (e.g. a pretrained backbone: no optimizer state, not differentiated),
so frozen weights cost neither optimizer memory nor backward compute. `merge_params` rebuilds
the full tree the model applies.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from ctjax.errors import ConfigError


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: optimizer steps taken.
  params: Any                # trainable parameters (nested dict).
  frozen: Any                # frozen parameters (nested dict, possibly empty).
  extra: Any                 # non-parameter collections, e.g. {"batch_stats": ...}.
  opt_state: Any             # optimizer state over `params` only.
  rng: jax.Array             # base key; step keys are fold_in(rng, step).
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def variables(self) -> dict[str, Any]:
    """Full Flax variables {"params": trainable ∪ frozen, **extra} for `model.apply`."""
    return {"params": merge_params(self.params, self.frozen), **self.extra}

  def apply_gradients(self, grads: Any, extra: Any) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, extra=extra)


def _to_dict(tree: Any) -> dict:
  return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else dict(tree)


def partition_params(params: Any, mask: Any) -> tuple[dict, dict]:
  """(trainable, frozen) nested dicts from `params` and a bool pytree (or one bool) `mask`."""
  flat = traverse_util.flatten_dict(_to_dict(params))
  if isinstance(mask, bool):
    flat_mask = {k: mask for k in flat}
  else:
    flat_mask = traverse_util.flatten_dict(_to_dict(mask))
    if set(flat_mask) != set(flat):
      missing = sorted("/".join(k) for k in set(flat) ^ set(flat_mask))[:3]
      raise ConfigError(f"trainable_mask does not match the parameters (e.g. {missing})")
  trainable = {k: v for k, v in flat.items() if bool(flat_mask[k])}
  frozen = {k: v for k, v in flat.items() if not bool(flat_mask[k])}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge_params(trainable: Any, frozen: Any) -> dict:
  """Inverse of `partition_params`."""
  flat = traverse_util.flatten_dict(_to_dict(frozen))
  flat.update(traverse_util.flatten_dict(_to_dict(trainable)))
  return traverse_util.unflatten_dict(flat)


def state_from_variables(task, config: ml_collections.ConfigDict, variables: Any,
                         rng: jax.Array, tx: optax.GradientTransformation) -> TrainState:
  """The initial TrainState of `variables` (jit it with the state's out_shardings)."""
  variables = _to_dict(variables)
  params = _to_dict(variables.pop("params"))
  trainable, frozen = partition_params(params, task.trainable_mask(config, params))
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen,
                    extra=variables, opt_state=tx.init(trainable), rng=rng, tx=tx)


def split_init_rng(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(key for `Task.init_variables`, the state's base key) from the run's seed key."""
  init_rng, state_rng = jax.random.split(rng)
  return init_rng, state_rng


def create_state(task, model, config: ml_collections.ConfigDict, rng: jax.Array,
                 tx: optax.GradientTransformation) -> TrainState:
  """Random initial state without pretrained weights (for shapes: `jax.eval_shape` it)."""
  init_rng, state_rng = split_init_rng(rng)
  variables = task.init_variables(model, config, init_rng)
  return state_from_variables(task, config, variables, state_rng, tx)


def param_count(tree: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def abstract_state(task, model, config: ml_collections.ConfigDict, mesh: Any,
                   tx: Any = None) -> tuple[Any, Any]:
  """(state template of ShapeDtypeStructs on the mesh, the state's sharding): no compute.
  `tx` None: an optimizer of the config's structure (enough to restore a checkpoint)."""
  from ctjax.train import optim, parallel
  if tx is None:
    tx, _ = optim.make_optimizer(config, 1, 1, lambda p: task.param_groups(config, p))
  shapes = jax.eval_shape(lambda rng: create_state(task, model, config, rng, tx),
                          jax.random.PRNGKey(0))
  repl = parallel.replicated(mesh)
  sharding = jax.tree.map(lambda _: repl, shapes)
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          shapes)
  return template, sharding
